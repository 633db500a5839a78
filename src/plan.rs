//! What a handler decides, before any I/O: the effects of one input ([`Plan`]), or why it
//! has none ([`Rejection`]) — the one rejection vocabulary from handler to metrics.

use std::sync::Arc;

use crate::domain::{AppId, ClientId, Conversation, Group, Message, MessageId, RejectReason, Sealed, UserId};

/// What the body of a publish is.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// A message copy landing in a timeline: what the persistence hook stores and what the
    /// block list and content filter judge.
    Copy(TimelineCopy),
    /// Anything else (receipts, conversation events, echoes, notices), already JSON.
    Json(Arc<[u8]>),
}

/// One message to publish on `amq.topic`.
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    pub key: String,
    pub body: Body,
    /// delivery_mode 2 (survives a broker restart in durable queues). Everything is
    /// persistent except typing notifications (PROTOCOL §12).
    pub persistent: bool,
    /// The user this publish is delivered to when that user's block list may veto it
    /// (message copies to someone else, typing); None for everything else.
    pub to: Option<UserId>,
}

impl Publish {
    /// A persistent JSON notification that is not a message copy (receipts, conversation
    /// events, echoes).
    pub fn json(key: String, body: &impl serde::Serialize) -> Publish {
        let json = serde_json::to_vec(body).expect("JSON values and maps always serialize");
        Publish {
            key,
            body: Body::Json(json.into()),
            persistent: true,
            to: None,
        }
    }

    /// A persistent message copy.
    pub fn copy(key: String, copy: TimelineCopy, to: Option<UserId>) -> Publish {
        Publish {
            key,
            body: Body::Copy(copy),
            persistent: true,
            to,
        }
    }

    /// The bytes on the wire.
    pub fn bytes(&self) -> &[u8] {
        match &self.body {
            Body::Copy(c) => c.message.json(),
            Body::Json(b) => b,
        }
    }

    pub fn timeline_copy(&self) -> Option<&TimelineCopy> {
        match &self.body {
            Body::Copy(c) => Some(c),
            Body::Json(_) => None,
        }
    }
}

/// A message copy in `timeline_of`'s conversation with `convers_with`.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineCopy {
    /// The app (tenant) the timeline belongs to: part of every stored row's key.
    pub app: AppId,
    pub timeline_of: UserId,
    pub convers_with: UserId,
    /// The conversation is new/unread for this timeline (true for the recipient).
    pub is_new: bool,
    /// The message as published (status included).
    pub message: Arc<Sealed>,
    /// When the engine received the input, by its own clock (epoch ms): what orders a
    /// conversation's last message (§11). Never the client's `timestamp`, which the message
    /// keeps as sent — a client stamping the far future must not freeze a conversation.
    pub received_ms: i64,
}

impl TimelineCopy {
    pub fn message(&self) -> &Message {
        self.message.message()
    }
}

/// A store write (PROTOCOL §11). Every write is an idempotent upsert.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// The message in one timeline; a second write of the same (timeline, message_id) is a no-op.
    Message(TimelineCopy),
    /// The conversation's last message; an older message never replaces a newer one, and a
    /// new message un-archives the conversation.
    Conversation(TimelineCopy),
    /// Set a stored conversation's `is_new` flag (only where the conversation exists).
    ConversationIsNew {
        app: AppId,
        timeline_of: UserId,
        convers_with: UserId,
        is_new: bool,
    },
    /// Archive a conversation (§6); the store hands the archived conversation back so its
    /// publishes can follow the commit.
    Archive {
        app: AppId,
        timeline_of: UserId,
        convers_with: UserId,
    },
    /// A receipt by `reader` for message `message_id` of its conversation with `convers_with`
    /// (§5), applied only where the reader's own timeline holds that message in that
    /// conversation — a third party who knows a message id cannot mark it read. Then the
    /// reader's copy rises to 200 and the sender's side to 250: `convers_with`'s copy of a
    /// direct message; the group timeline and the original sender's copy of a group's (the
    /// store is what knows who sent it). Statuses only rise; who is to be told is reported back.
    Receipt {
        app: AppId,
        reader: UserId,
        convers_with: UserId,
        message_id: MessageId,
    },
    /// Create or replace a group (§4.4).
    Group(Arc<Group>),
    /// `user` blocks (`add`) or unblocks `other` (§9).
    Block {
        app: AppId,
        user: UserId,
        other: UserId,
        add: bool,
        at_ms: i64,
    },
    /// A client of `user` connected or disconnected (§7). Kept as the set of connected client
    /// ids, so a redelivered event changes nothing; the store reports online/offline
    /// transitions back.
    Presence {
        app: AppId,
        user: UserId,
        client_id: ClientId,
        connected: bool,
        at_ms: i64,
    },
}

/// What committing one input's writes revealed, for the publishes and events that follow
/// the commit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Committed {
    /// Conversations this input archived, as they are now.
    pub archived: Vec<Conversation>,
    /// Archived conversations a new message of this input un-archived, as they are now.
    pub unarchived: Vec<Conversation>,
    /// Online/offline transitions this input's presence writes caused.
    pub presence: Vec<PresenceChange>,
    /// Senders to be told that their message was received.
    pub receipts: Vec<ReceiptNotice>,
}

impl Committed {
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.archived.is_empty() && self.unarchived.is_empty() && self.presence.is_empty() && self.receipts.is_empty()
    }

    /// Fold another write's results into this input's.
    pub fn extend(&mut self, other: Committed) {
        self.archived.extend(other.archived);
        self.unarchived.extend(other.unarchived);
        self.presence.extend(other.presence);
        self.receipts.extend(other.receipts);
    }
}

/// A user went online (first connected client) or offline (last one gone) — PROTOCOL §7.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceChange {
    pub app_id: AppId,
    pub user_id: UserId,
    pub online: bool,
    /// Epoch milliseconds of the input that caused it (the last-seen time when offline).
    pub at_ms: i64,
}

/// A checked receipt, to pass on to the message's sender (§5): `to`'s copy of `message_id`,
/// in its conversation with `convers_with` (the reader, or the group), was received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptNotice {
    pub app: AppId,
    pub to: UserId,
    pub convers_with: UserId,
    pub message_id: MessageId,
}

/// The effects of one input, in the order they must be published.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub publishes: Vec<Publish>,
    pub writes: Vec<Write>,
}

impl Plan {
    pub fn publishes(publishes: Vec<Publish>) -> Plan {
        Plan {
            publishes,
            writes: Vec::new(),
        }
    }

    pub fn writes(writes: Vec<Write>) -> Plan {
        Plan {
            publishes: Vec::new(),
            writes,
        }
    }

    /// The message copies of this plan.
    pub fn copies(&self) -> impl Iterator<Item = &TimelineCopy> {
        self.publishes.iter().filter_map(Publish::timeline_copy)
    }
}

/// Why an input has no plan: the one way to say "rejected", from a handler or a policy stage
/// to the consumer's settlement and the metrics.
#[derive(Debug, Clone, PartialEq)]
pub enum Rejection {
    /// Logged, counted and acked; nobody is told (malformed input, or nothing to do).
    Drop(RejectReason),
    /// Refused, and the sender told (§8): `notice` is the sender's own copy of its message
    /// with `status:-100` and `error:{code, reason}`. Not a timeline copy: a refused message
    /// is not persisted. Acked once the notice is confirmed.
    Refuse { reason: RejectReason, notice: Box<Publish> },
}

impl Rejection {
    /// Refuse `msg` and tell the sender at `key` (its own timeline's key for the conversation).
    pub fn refuse(key: String, msg: Message, reason: RejectReason, why: &str) -> Rejection {
        let notice = msg.refused(reason, why);
        Rejection::Refuse {
            reason,
            notice: Box::new(Publish::json(key, notice.fields())),
        }
    }

    pub fn reason(&self) -> RejectReason {
        match self {
            Rejection::Drop(r) | Rejection::Refuse { reason: r, .. } => *r,
        }
    }
}

impl From<RejectReason> for Rejection {
    fn from(r: RejectReason) -> Self {
        Rejection::Drop(r)
    }
}

/// Facts a handler needs from the outside world, passed in so handlers stay pure.
pub struct Context<'a> {
    /// Now, in epoch milliseconds.
    pub now_ms: i64,
    /// A fresh message id (a UUID in production, fixed in unit tests).
    pub fresh_id: &'a dyn Fn() -> String,
    /// The stored group the input names, when it names one ([`crate::handlers::Input::group_needed`]):
    /// looked up by the pipeline before the handler runs. `None`: not stored (inline or
    /// transient).
    pub group: Option<Arc<Group>>,
    pub settings: &'a crate::handlers::Settings,
}
