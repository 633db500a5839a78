//! What a handler decides, before any I/O: the effects of one input.

use serde_json::{Map, Value};
use std::sync::Arc;

/// One message to publish on `amq.topic`.
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    pub key: String,
    pub body: Vec<u8>,
    /// delivery_mode 2 (survives a broker restart in durable queues). Everything is
    /// persistent except typing notifications (PROTOCOL §12).
    pub persistent: bool,
    /// Set when this publish is a message copy landing in a timeline: what the persistence
    /// hook writes for it (and what later stages — block list, filters — look at).
    pub copy: Option<TimelineCopy>,
    /// The user this publish is delivered to when that user's block list may veto it
    /// (message copies to someone else, typing); None for everything else.
    pub to: Option<String>,
}

impl Publish {
    /// A persistent JSON notification that is not a message copy (receipts, conversation
    /// events).
    pub fn json(key: String, body: &impl serde::Serialize) -> Publish {
        // Serializing JSON values and maps cannot fail.
        Publish {
            key,
            body: serde_json::to_vec(body).unwrap_or_default(),
            persistent: true,
            copy: None,
            to: None,
        }
    }
}

/// A message copy in `timeline_of`'s conversation with `convers_with`.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineCopy {
    pub timeline_of: String,
    pub convers_with: String,
    /// The conversation is new/unread for this timeline (true for the recipient).
    pub is_new: bool,
    /// The message as published (status included).
    pub message: Arc<Map<String, Value>>,
}

/// A store write (PROTOCOL §11). Every write is an idempotent upsert.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// The message in one timeline; a second write of the same (timeline, message_id) is a no-op.
    Message(TimelineCopy),
    /// The conversation's last message; an older message never replaces a newer one, and a
    /// new message un-archives the conversation.
    Conversation(TimelineCopy),
    /// Raise a stored message's status (receipts): only where the row exists and its status
    /// is lower — never a stub row (fix D7).
    MessageStatus {
        timeline_of: String,
        message_id: String,
        status: i64,
    },
    /// Set a stored conversation's `is_new` flag (only where the conversation exists).
    ConversationIsNew {
        timeline_of: String,
        convers_with: String,
        is_new: bool,
    },
    /// Archive a conversation (§6); the store hands the archived conversation back so its
    /// publishes can follow the commit.
    Archive {
        app: String,
        timeline_of: String,
        convers_with: String,
    },
    /// A receipt by `reader` in its conversation with `convers_with` (§5): if the message
    /// there is a group's — its stored sender is neither `convers_with` nor the reader — raise
    /// the original sender's copy to 250 and report the sender back (to be told after the
    /// commit). The store is what knows who sent a group message.
    GroupReceipt {
        app: String,
        reader: String,
        convers_with: String,
        message_id: String,
    },
    /// Create or replace a group (§4.4).
    Group(Arc<crate::group::Group>),
    /// `user` blocks (`add`) or unblocks `other` (§9).
    Block {
        app: String,
        user: String,
        other: String,
        add: bool,
        at_ms: i64,
    },
    /// A client of `user` connected or disconnected (§7). Kept as the set of connected client
    /// ids, so a redelivered event changes nothing; the store reports online/offline
    /// transitions back.
    Presence {
        app: String,
        user: String,
        client_id: String,
        connected: bool,
        at_ms: i64,
    },
}

/// What committing one input's writes revealed, for the publishes that follow the commit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Committed {
    /// Conversations this input archived, as Chat21 conversation objects.
    pub archived: Vec<Map<String, Value>>,
    /// Archived conversations a new message of this input un-archived, as they are now.
    pub unarchived: Vec<Map<String, Value>>,
    /// Online/offline transitions this input's presence writes caused.
    pub presence: Vec<crate::events::PresenceChange>,
    /// Group messages whose original sender is to be told of a receipt.
    pub group_receipts: Vec<GroupReceipt>,
}

/// A receipt for a group message, to pass on to its original sender (§5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupReceipt {
    pub app: String,
    pub sender: String,
    pub group: String,
    pub message_id: String,
}

/// A conversation object as Chat21 clients read it: the last message's fields plus the
/// conversation's own (`last_message_text`, `key`, `timelineOf`, `conversWith`, …).
pub fn conversation_object(
    timeline_of: &str,
    convers_with: &str,
    last: &Map<String, Value>,
    is_new: bool,
    archived: bool,
) -> Map<String, Value> {
    let mut c = last.clone();
    let text = last.get("text").cloned().unwrap_or(Value::Null);
    c.insert("last_message_text".into(), text);
    c.insert("key".into(), convers_with.into());
    c.insert("timelineOf".into(), timeline_of.into());
    c.insert("conversWith".into(), convers_with.into());
    c.insert("is_new".into(), is_new.into());
    c.insert("archived".into(), archived.into());
    c
}

/// The effects of one input, in the order they must be published.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub publishes: Vec<Publish>,
    pub writes: Vec<Write>,
    /// Set when the input is refused but the sender is told (§8: its own copy with
    /// `status:-100`): the publishes are that notice, and the input counts as rejected.
    pub rejected: Option<crate::message::RejectReason>,
}

impl Plan {
    pub fn publishes(publishes: Vec<Publish>) -> Plan {
        Plan {
            publishes,
            ..Plan::default()
        }
    }

    /// The input is refused and the sender told (§8): its own copy of `msg` at `key`, with
    /// `status:-100` and `error:{code, reason}`. Not a timeline copy: a refused message is not
    /// persisted.
    pub fn refusal(key: String, mut msg: Map<String, Value>, reason: crate::message::RejectReason, text: &str) -> Plan {
        msg.insert("status".into(), crate::message::status::FAILED.into());
        msg.insert(
            "error".into(),
            serde_json::json!({"code": reason.as_str(), "reason": text}),
        );
        Plan {
            publishes: vec![Publish::json(key, &msg)],
            writes: Vec::new(),
            rejected: Some(reason),
        }
    }
}

/// Facts a handler needs from the outside world, passed in so handlers stay pure.
pub struct Context<'a> {
    /// Now, in epoch milliseconds.
    pub now_ms: i64,
    /// A fresh message id (a UUID in production, a counter in unit tests).
    pub fresh_id: &'a dyn Fn() -> String,
    /// What is known about a group without I/O (the group cache).
    pub groups: &'a dyn Fn(&str) -> crate::group::GroupLookup,
    pub settings: &'a crate::handlers::Settings,
}
