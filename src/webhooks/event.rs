//! What happened, as a webhook event (PROTOCOL §13): pure builders from what an input did —
//! the message copies it published, the refusal it got, what its commit changed — to
//! [`Event`]s with their final HTTP body, a stable id and the lane (conversation) that orders
//! them. Nothing here does I/O.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};

use crate::domain::{status, Conversation, Message, RejectReason};
use crate::plan::{Committed, PresenceChange, Publish, ReceiptNotice};
use crate::topic::{ConversationEvent, Topics};

/// The event types of §13.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventType {
    MessageSent,
    MessageDelivered,
    MessageReturnReceipt,
    ConversationArchived,
    ConversationUnarchived,
    PresenceChange,
    MessageRejected,
}

impl EventType {
    pub const ALL: [EventType; 7] = [
        EventType::MessageSent,
        EventType::MessageDelivered,
        EventType::MessageReturnReceipt,
        EventType::ConversationArchived,
        EventType::ConversationUnarchived,
        EventType::PresenceChange,
        EventType::MessageRejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::MessageSent => "message-sent",
            EventType::MessageDelivered => "message-delivered",
            EventType::MessageReturnReceipt => "message-return-receipt",
            EventType::ConversationArchived => "conversation-archived",
            EventType::ConversationUnarchived => "conversation-unarchived",
            EventType::PresenceChange => "presence-change",
            EventType::MessageRejected => "message-rejected",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// One event, as it is queued, retried and delivered: the body is final (what is POSTed,
/// byte for byte, on every try).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// Stable: the same for the same fact however often it is recorded (a redelivered input)
    /// or sent (retries) — `webhook-id`, for receivers to de-duplicate.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    /// Events of one lane (a conversation, a user's presence) are delivered one at a time,
    /// in order; different lanes go concurrently.
    pub lane: u64,
    /// When it was made (epoch ms).
    pub at: i64,
    /// Tries so far (kept when an event is requeued).
    #[serde(default)]
    pub tries: u32,
    /// Start of its retry window (epoch ms): `at`, or when it was redelivered by hand.
    #[serde(default)]
    pub from: i64,
    pub body: Box<RawValue>,
}

impl Event {
    fn new(kind: EventType, id_parts: &[&str], lane: u64, at: i64, body: &impl Serialize) -> Option<Event> {
        // Serialized straight into the raw value: what serde_json writes is JSON, no re-parse.
        let body = serde_json::value::to_raw_value(body).ok()?;
        Some(Event {
            id: event_id(kind, id_parts),
            kind,
            lane,
            at,
            tries: 0,
            from: at,
            body,
        })
    }

    /// Where its retry window starts.
    pub fn window_start(&self) -> i64 {
        if self.from > 0 {
            self.from
        } else {
            self.at
        }
    }
}

/// `evt_` and 32 hex digits of SHA-256 over the type and the fact's identity.
fn event_id(kind: EventType, parts: &[&str]) -> String {
    let mut h = Sha256::new();
    h.update(kind.as_str());
    for p in parts {
        // Length-prefixed, so ("ab","c") and ("a","bc") differ.
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    format!("evt_{}", hex::encode(&h.finalize()[..16]))
}

/// The lane of a conversation between `a` and `b` (either way round) in `app`.
fn lane(app: &str, a: &str, b: &str) -> u64 {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (app, x, y).hash(&mut h);
    h.finish()
}

#[derive(Serialize)]
struct Extras<'a> {
    topic: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

/// `message-sent`, `message-delivered`, `message-return-receipt`, `message-rejected`.
#[derive(Serialize)]
struct MessageBody<'a> {
    event_type: &'static str,
    #[serde(rename = "createdAt")]
    created_at: i64,
    app_id: &'a str,
    message_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    recipient_id: Option<&'a str>,
    delivered_to: &'a str,
    data: &'a RawValue,
    extras: Extras<'a>,
}

/// `conversation-archived`, `conversation-unarchived`.
#[derive(Serialize)]
struct ConversationBody<'a> {
    event_type: &'static str,
    #[serde(rename = "createdAt")]
    created_at: i64,
    app_id: &'a str,
    user_id: &'a str,
    recipient_id: &'a str,
    convers_with: &'a str,
    data: serde_json::Map<String, serde_json::Value>,
    extras: Extras<'a>,
}

/// `presence-change` (§7).
#[derive(Serialize)]
struct PresenceBody<'a> {
    event_type: &'static str,
    #[serde(rename = "createdAt")]
    created_at: i64,
    app_id: &'a str,
    user_id: &'a str,
    presence: &'static str,
}

/// Which events to make (`WEBHOOK_EVENTS`), and the builders.
#[derive(Debug, Clone)]
pub struct Recorder {
    enabled: [bool; 7],
}

impl Recorder {
    pub fn new(events: &[EventType]) -> Recorder {
        let mut enabled = [false; 7];
        for (i, t) in EventType::ALL.iter().enumerate() {
            enabled[i] = events.contains(t);
        }
        Recorder { enabled }
    }

    fn wants(&self, t: EventType) -> bool {
        EventType::ALL
            .iter()
            .position(|x| *x == t)
            .is_some_and(|i| self.enabled[i])
    }

    /// The events of an input's published message copies: `message-sent` for a copy with
    /// status 100 (the sender's own, a group's timeline copy), `message-delivered` for one with
    /// 150 (each recipient's) — as the original observer tells them apart. Copies the block
    /// list vetoed are not among the publishes, so they fire nothing.
    pub fn of_publishes(&self, publishes: &[Publish], now_ms: i64) -> Vec<Event> {
        let mut out = Vec::new();
        for p in publishes {
            let Some(copy) = p.timeline_copy() else { continue };
            let msg = copy.message();
            let kind = match msg.status() {
                Some(status::SENT) => EventType::MessageSent,
                Some(status::DELIVERED) => EventType::MessageDelivered,
                _ => continue,
            };
            if !self.wants(kind) {
                continue;
            }
            let (app, to, with) = (copy.app.as_str(), copy.timeline_of.as_str(), copy.convers_with.as_str());
            let Some(event) = message_event(kind, msg, copy.message.json(), app, to, with, &p.key, None, now_ms) else {
                continue;
            };
            out.push(event);
        }
        out
    }

    /// `message-rejected`: a refused input whose sender is known, with the notice the sender
    /// got (status -100 and the error) as `data` and the reason's code in `extras.reason`.
    pub fn of_refusal(&self, notice: &Publish, reason: RejectReason, now_ms: i64) -> Option<Event> {
        if !self.wants(EventType::MessageRejected) {
            return None;
        }
        let bytes = notice.bytes();
        let msg = Message::parse(bytes).ok()?;
        let sender = msg.sender()?;
        let app = msg.app_id().unwrap_or_default();
        let with = msg.recipient().unwrap_or_default();
        message_event(
            EventType::MessageRejected,
            &msg,
            bytes,
            app,
            sender,
            with,
            &notice.key,
            Some(reason.as_str()),
            now_ms,
        )
    }

    /// The events of what a commit changed: return receipts to the senders, archived and
    /// un-archived conversations, presence transitions.
    pub fn of_commit(&self, topics: &Topics, c: &Committed, now_ms: i64) -> Vec<Event> {
        let mut out = Vec::new();
        if self.wants(EventType::MessageReturnReceipt) {
            out.extend(c.receipts.iter().filter_map(|r| receipt_event(topics, r, now_ms)));
        }
        if self.wants(EventType::ConversationArchived) {
            out.extend(
                c.archived
                    .iter()
                    .filter_map(|conv| conversation_event(topics, EventType::ConversationArchived, conv, now_ms)),
            );
        }
        if self.wants(EventType::ConversationUnarchived) {
            out.extend(
                c.unarchived
                    .iter()
                    .filter_map(|conv| conversation_event(topics, EventType::ConversationUnarchived, conv, now_ms)),
            );
        }
        if self.wants(EventType::PresenceChange) {
            out.extend(c.presence.iter().filter_map(presence_event));
        }
        out
    }
}

#[allow(clippy::too_many_arguments)]
fn message_event(
    kind: EventType,
    msg: &Message,
    json: &[u8],
    app: &str,
    delivered_to: &str,
    convers_with: &str,
    key: &str,
    reason: Option<&str>,
    now_ms: i64,
) -> Option<Event> {
    let message_id = msg.message_id().unwrap_or_default();
    let data: &RawValue = serde_json::from_slice(json).ok()?;
    let body = MessageBody {
        event_type: kind.as_str(),
        created_at: now_ms,
        app_id: app,
        message_id,
        recipient_id: msg.recipient(),
        delivered_to,
        data,
        extras: Extras { topic: key, reason },
    };
    let reason = reason.unwrap_or_default();
    let lane = lane(app, delivered_to, convers_with);
    Event::new(
        kind,
        &[app, delivered_to, convers_with, message_id, reason],
        lane,
        now_ms,
        &body,
    )
}

/// The sender learns its copy of `message_id` was received: `data` is the patch its devices
/// got (`{timelineOf, message_id, status: 250}`), `recipient_id` who received it (the reader,
/// or the group).
fn receipt_event(topics: &Topics, r: &ReceiptNotice, now_ms: i64) -> Option<Event> {
    let key = topics
        .receipt_updated(&r.app, &r.to, &r.convers_with, &r.message_id)
        .ok()?;
    let patch = serde_json::json!({"timelineOf": r.to, "message_id": r.message_id, "status": status::RETURN_RECEIPT});
    let data = serde_json::value::to_raw_value(&patch).ok()?;
    let (app, to, with, id) = (
        r.app.as_str(),
        r.to.as_str(),
        r.convers_with.as_str(),
        r.message_id.as_str(),
    );
    let body = MessageBody {
        event_type: EventType::MessageReturnReceipt.as_str(),
        created_at: now_ms,
        app_id: app,
        message_id: id,
        recipient_id: Some(with),
        delivered_to: to,
        data: &data,
        extras: Extras {
            topic: &key,
            reason: None,
        },
    };
    Event::new(
        EventType::MessageReturnReceipt,
        &[app, to, with, id],
        lane(app, to, with),
        now_ms,
        &body,
    )
}

fn conversation_event(topics: &Topics, kind: EventType, conv: &Conversation, now_ms: i64) -> Option<Event> {
    let app = conv.last.app_id().unwrap_or_default();
    let (me, with) = (conv.timeline_of.as_str(), conv.convers_with.as_str());
    let key_event = match kind {
        EventType::ConversationArchived => ConversationEvent::ArchivedAdded,
        _ => ConversationEvent::ArchivedDeleted,
    };
    let key = topics.conversation_event(app, me, with, key_event).ok()?;
    let body = ConversationBody {
        event_type: kind.as_str(),
        created_at: now_ms,
        app_id: app,
        user_id: me,
        recipient_id: with,
        convers_with: with,
        data: crate::handlers::conversation::object(conv),
        extras: Extras {
            topic: &key,
            reason: None,
        },
    };
    // The last message tells one archiving (or un-archiving) of a conversation from the next.
    let last = conv.last.message_id().unwrap_or_default();
    Event::new(kind, &[app, me, with, last], lane(app, me, with), now_ms, &body)
}

fn presence_event(p: &PresenceChange) -> Option<Event> {
    let (app, user) = (p.app_id.as_str(), p.user_id.as_str());
    let presence = if p.online { "online" } else { "offline" };
    let body = PresenceBody {
        event_type: EventType::PresenceChange.as_str(),
        created_at: p.at_ms,
        app_id: app,
        user_id: user,
        presence,
    };
    let at = p.at_ms.to_string();
    Event::new(
        EventType::PresenceChange,
        &[app, user, presence, &at],
        lane(app, user, user),
        p.at_ms,
        &body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::testing;
    use serde_json::{json, Value};

    fn body(e: &Event) -> Value {
        serde_json::from_str(e.body.get()).unwrap()
    }

    fn direct(t: &Topics) -> Vec<Publish> {
        let key = t.outgoing("U1", "U2");
        let body = r#"{"text":"hi","message_id":"m1","sender_fullname":"One"}"#;
        testing::handled(t, &key, body, &[], &testing::settings())
            .unwrap()
            .publishes
    }

    #[test]
    fn a_direct_message_is_sent_for_its_sender_and_delivered_to_its_recipient() {
        let t = Topics::chat21("tilechat");
        let events = Recorder::new(&EventType::ALL).of_publishes(&direct(&t), 1_000);
        assert_eq!(events.len(), 2);
        let (sent, delivered) = (body(&events[0]), body(&events[1]));
        assert_eq!(events[0].kind, EventType::MessageSent);
        assert_eq!(sent["event_type"], "message-sent");
        assert_eq!(sent["createdAt"], 1_000);
        assert_eq!(sent["app_id"], "tilechat");
        assert_eq!(sent["message_id"], "m1");
        assert_eq!(sent["recipient_id"], "U2");
        assert_eq!(sent["delivered_to"], "U1");
        assert_eq!(sent["data"]["text"], "hi");
        assert_eq!(sent["data"]["status"], 100);
        assert_eq!(
            sent["extras"]["topic"],
            "apps.tilechat.users.U1.messages.U2.clientadded"
        );
        let keys: Vec<&str> = sent.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "event_type",
                "createdAt",
                "app_id",
                "message_id",
                "recipient_id",
                "delivered_to",
                "data",
                "extras"
            ]
        );
        assert_eq!(delivered["event_type"], "message-delivered");
        assert_eq!(delivered["delivered_to"], "U2");
        assert_eq!(delivered["data"]["status"], 150);
        assert_eq!(
            delivered["extras"]["topic"],
            "apps.tilechat.users.U2.messages.U1.clientadded"
        );
        // One conversation, one lane; two facts, two ids.
        assert_eq!(events[0].lane, events[1].lane);
        assert_ne!(events[0].id, events[1].id);
    }

    #[test]
    fn a_group_message_is_sent_for_the_group_timeline_and_delivered_to_each_member() {
        let t = Topics::chat21("tilechat");
        let groups = [testing::group("G", &["A", "B", "C"])];
        let plan = testing::handled(
            &t,
            &t.outgoing("A", "G"),
            r#"{"text":"hi","channel_type":"group","message_id":"g1"}"#,
            &groups,
            &testing::settings(),
        )
        .unwrap();
        let events = Recorder::new(&EventType::ALL).of_publishes(&plan.publishes, 1);
        let got: Vec<(EventType, String)> = events
            .iter()
            .map(|e| (e.kind, body(e)["delivered_to"].as_str().unwrap().to_owned()))
            .collect();
        assert_eq!(
            got,
            [
                (EventType::MessageDelivered, "A".to_owned()),
                (EventType::MessageDelivered, "B".to_owned()),
                (EventType::MessageDelivered, "C".to_owned()),
                (EventType::MessageSent, "G".to_owned()),
            ]
        );
        assert!(events.iter().all(|e| body(e)["recipient_id"] == "G"));
    }

    #[test]
    fn ids_are_stable_and_only_enabled_types_are_made() {
        let t = Topics::chat21("tilechat");
        let a = Recorder::new(&EventType::ALL).of_publishes(&direct(&t), 1_000);
        let b = Recorder::new(&EventType::ALL).of_publishes(&direct(&t), 9_000);
        assert_eq!(a[0].id, b[0].id, "a redelivered input records the same event");
        assert!(a[0].id.starts_with("evt_") && a[0].id.len() == 36);
        let only = Recorder::new(&[EventType::MessageDelivered]).of_publishes(&direct(&t), 1_000);
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].kind, EventType::MessageDelivered);
    }

    #[test]
    fn a_refusal_names_its_reason() {
        let msg = Message::from_fields(
            json!({"text":"x","message_id":"m9","sender":"U1","recipient":"U2","app_id":"tilechat"})
                .as_object()
                .unwrap()
                .clone(),
        );
        let key = "apps.tilechat.users.U1.messages.U2.clientadded".to_owned();
        let crate::plan::Rejection::Refuse { notice, reason } =
            crate::plan::Rejection::refuse(key, msg, RejectReason::TooLarge, "blocked")
        else {
            unreachable!()
        };
        let e = Recorder::new(&EventType::ALL).of_refusal(&notice, reason, 5).unwrap();
        let b = body(&e);
        assert_eq!(b["event_type"], "message-rejected");
        assert_eq!(b["delivered_to"], "U1");
        assert_eq!(b["data"]["status"], -100);
        assert_eq!(b["extras"]["reason"], RejectReason::TooLarge.as_str());
    }

    #[test]
    fn presence_and_archive_bodies() {
        let t = Topics::chat21("tilechat");
        let last = Message::from_fields(
            json!({"text":"hi","message_id":"m1","sender":"U2","app_id":"tilechat"})
                .as_object()
                .unwrap()
                .clone(),
        );
        let c = Committed {
            archived: vec![Conversation {
                timeline_of: "U1".into(),
                convers_with: "U2".into(),
                last,
                is_new: false,
                archived: true,
            }],
            presence: vec![PresenceChange {
                app_id: "tilechat".into(),
                user_id: "U1".into(),
                online: true,
                at_ms: 42,
            }],
            ..Committed::default()
        };
        let events = Recorder::new(&EventType::ALL).of_commit(&t, &c, 7);
        assert_eq!(events.len(), 2);
        let a = body(&events[0]);
        assert_eq!(a["event_type"], "conversation-archived");
        assert_eq!(a["user_id"], "U1");
        assert_eq!(a["convers_with"], "U2");
        assert_eq!(a["recipient_id"], "U2");
        assert_eq!(a["data"]["archived"], true);
        assert_eq!(
            a["extras"]["topic"],
            "apps.tilechat.users.U1.archived_conversations.U2.clientadded"
        );
        let p = body(&events[1]);
        assert_eq!(
            p,
            json!({"event_type":"presence-change","createdAt":42,"app_id":"tilechat","user_id":"U1","presence":"online"})
        );
    }
}
