//! One batch of writes, sorted by what applies them: one row per key as the upserts would
//! leave them (one body per message, the first copy of a message in a timeline — later ones
//! are no-ops —, the newest message of a conversation), and the single-row updates in input
//! order. Every row keeps the index of
//! the write it came from, so what a statement reveals is handed back to that write.

use std::collections::{HashMap, HashSet};

use super::messages::BodyKey;
use crate::plan::{TimelineCopy, Write};

/// A write's place in its batch.
pub type WriteIndex = usize;

#[derive(Default)]
pub(super) struct Batch<'a> {
    /// One per message body key: a group message's hundred copies share one body.
    pub bodies: Vec<&'a TimelineCopy>,
    pub messages: Vec<(WriteIndex, &'a TimelineCopy)>,
    /// PostgreSQL refuses one statement that touches the same conversation row twice.
    pub conversations: Vec<(WriteIndex, &'a TimelineCopy)>,
    pub updates: Vec<(WriteIndex, &'a Write)>,
}

impl<'a> Batch<'a> {
    pub fn of(writes: &[&'a Write]) -> Batch<'a> {
        let mut b = Batch::default();
        let mut seen = HashSet::new();
        let mut bodies = HashSet::new();
        let mut conv_index: HashMap<(&str, &str, &str), usize> = HashMap::new();
        for (i, w) in writes.iter().enumerate() {
            match w {
                Write::Message(c) => {
                    // The timestamp is left out on purpose: a message redelivered within the
                    // batch may be stamped again, and is still the same.
                    let k = BodyKey::of(c);
                    if seen.insert((k, c.timeline_of.as_str(), c.convers_with.as_str())) {
                        b.messages.push((i, c));
                    }
                    if bodies.insert(k) {
                        b.bodies.push(c);
                    }
                }
                Write::Conversation(c) => {
                    // A conversation's last message has its body even without a timeline row.
                    if bodies.insert(BodyKey::of(c)) {
                        b.bodies.push(c);
                    }
                    match conv_index.get(&(c.app.as_str(), c.timeline_of.as_str(), c.convers_with.as_str())) {
                        Some(&at) => {
                            let current: &TimelineCopy = b.conversations[at].1;
                            if c.received_ms >= current.received_ms {
                                b.conversations[at] = (i, c);
                            }
                        }
                        None => {
                            conv_index.insert(
                                (c.app.as_str(), c.timeline_of.as_str(), c.convers_with.as_str()),
                                b.conversations.len(),
                            );
                            b.conversations.push((i, c));
                        }
                    }
                }
                _ => b.updates.push((i, w)),
            }
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Message, Sealed};

    fn copy(id: &str, ts: i64, text: &str) -> TimelineCopy {
        let m = serde_json::json!({"message_id": id, "timestamp": ts, "text": text});
        TimelineCopy {
            app: "a".into(),
            timeline_of: "A".into(),
            convers_with: "B".into(),
            is_new: true,
            message: Sealed::new(Message::from_fields(m.as_object().unwrap().clone())),
            received_ms: m["timestamp"].as_i64().unwrap_or(1),
        }
    }

    #[test]
    fn keeps_first_message_and_newest_conversation_with_their_write_index() {
        let (a, b, c) = (copy("m1", 1, "one"), copy("m2", 3, "two"), copy("m3", 2, "three"));
        let writes = [
            Write::Message(a.clone()),
            Write::Message(a.clone()),
            Write::Conversation(a),
            Write::Conversation(b),
            Write::Conversation(c),
            Write::Archive {
                app: "t".into(),
                timeline_of: "A".into(),
                convers_with: "B".into(),
            },
        ];
        let refs: Vec<&Write> = writes.iter().collect();
        let batch = Batch::of(&refs);
        assert_eq!(batch.messages.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![0]);
        assert_eq!(batch.conversations.len(), 1);
        assert_eq!(batch.conversations[0].0, 3, "the newest message's write");
        assert_eq!(batch.conversations[0].1.message().text(), Some("two"));
        assert_eq!(batch.updates.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![5]);
    }
}
