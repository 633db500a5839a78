//! The topic grammar: the only place that builds or splits routing keys (PROTOCOL §0–§2).
//!
//! RabbitMQ's MQTT plugin turns an MQTT topic into an AMQP routing key by replacing `/` with
//! `.` (and `+` with `*` in subscriptions). Nothing else is converted, so a leading `/` is a
//! leading empty word and a `.` inside an id splits it into two words. Inputs are dispatched
//! by a full parse of every word, never by suffix matching.

mod inputs;
mod rights;

pub use rights::UserTopics;

use crate::config::TopicLayout;
use crate::domain::{AppId, ClientId, MessageId, RejectReason, UserId};

/// The broker refuses routing keys longer than this (AMQP shortstr).
pub const MAX_KEY_BYTES: usize = 255;

/// What a routing key asks the engine to do, with the ids it names (all validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// I1: user `sender` sends a message to `recipient` (a user or a group).
    Send {
        app: AppId,
        sender: UserId,
        recipient: UserId,
    },
    /// I2: `me` acknowledges message `message_id` of the conversation with `with`.
    Receipt {
        app: AppId,
        me: UserId,
        with: UserId,
        message_id: MessageId,
    },
    /// I3: `me` updates its conversation with `with`.
    ConversationUpdate { app: AppId, me: UserId, with: UserId },
    /// I4: `me` archives its conversation with `with`.
    Archive { app: AppId, me: UserId, with: UserId },
    /// I5: a client of `user` connected or disconnected.
    Presence {
        app: AppId,
        user: UserId,
        client_id: ClientId,
    },
    /// I6: `me` is typing in the conversation with `with`.
    Typing { app: AppId, me: UserId, with: UserId },
    /// I7: `me` blocks (`add == true`) or unblocks `other`.
    Block {
        app: AppId,
        me: UserId,
        other: UserId,
        add: bool,
    },
    /// I8: a trusted service created or changed a group.
    GroupUpdate { app: AppId },
    /// I9: a trusted service replays a stored message into `inbox`'s timeline.
    HistoryReplay {
        app: AppId,
        inbox: UserId,
        convers_with: UserId,
    },
}

impl Inbound {
    /// The app (tenant) the input belongs to.
    pub fn app(&self) -> &AppId {
        match self {
            Inbound::Send { app, .. }
            | Inbound::Receipt { app, .. }
            | Inbound::ConversationUpdate { app, .. }
            | Inbound::Archive { app, .. }
            | Inbound::Presence { app, .. }
            | Inbound::Typing { app, .. }
            | Inbound::Block { app, .. }
            | Inbound::GroupUpdate { app }
            | Inbound::HistoryReplay { app, .. } => app,
        }
    }

    /// Fixed label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Inbound::Send { .. } => "send",
            Inbound::Receipt { .. } => "receipt",
            Inbound::ConversationUpdate { .. } => "conversation_update",
            Inbound::Archive { .. } => "archive",
            Inbound::Presence { .. } => "presence",
            Inbound::Typing { .. } => "typing",
            Inbound::Block { .. } => "block",
            Inbound::GroupUpdate { .. } => "group_update",
            Inbound::HistoryReplay { .. } => "history_replay",
        }
    }
}

/// Which conversation list changed, and how (see [`Topics::conversation_event`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConversationEvent {
    /// `conversations.{with}.clientupdated`
    Updated,
    /// `conversations.{with}.clientdeleted` (archived: it leaves the active list)
    Deleted,
    /// `archived_conversations.{with}.clientadded`
    ArchivedAdded,
    /// `archived_conversations.{with}.clientdeleted` (un-archived)
    ArchivedDeleted,
}

/// The seed layout's prefix, already converted to AMQP words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    prefix: String,
}

impl Seed {
    /// `path_prefix` is an MQTT topic prefix such as `/apps/tilechat/users`: levels of ASCII
    /// letters, digits, `-` and `_`, optionally a leading `/` (a leading empty word) and a
    /// trailing one. The prefix goes into every user's token scopes, which the broker
    /// URL-decodes (`%`) and expands (`{claim}`), matches with `*`, and splits at `/`: only
    /// characters with no meaning there are allowed, so a prefix means the same to the engine
    /// and to the broker.
    pub fn new(path_prefix: &str) -> Result<Self, String> {
        let trimmed = path_prefix.strip_suffix('/').unwrap_or(path_prefix);
        let levels = trimmed.strip_prefix('/').unwrap_or(trimmed);
        if levels.is_empty() {
            return Err("must not be empty".into());
        }
        let word_ok = |w: &str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !levels.split('/').all(word_ok) {
            return Err(format!(
                "{path_prefix:?}: levels of letters, digits, - and _ separated by single /, an optional leading and trailing /"
            ));
        }
        let prefix = mqtt_to_amqp(trimmed);
        Ok(Seed { prefix })
    }
}

/// Parses and renders routing keys for one configured layout.
#[derive(Debug, Clone)]
pub struct Topics {
    layout: Layout,
    /// Bind I5 (presence) — only when PRESENCE_ENABLED, so a disabled engine is not sent
    /// every connect and disconnect of every client.
    presence: bool,
}

#[derive(Debug, Clone)]
enum Layout {
    Chat21 { app: String },
    Seed { app: AppId, seed: Seed },
}

impl Topics {
    pub fn chat21(app: &str) -> Self {
        Topics {
            layout: Layout::Chat21 { app: app.to_owned() },
            presence: false,
        }
    }

    /// Also consume presence (I5).
    pub fn with_presence(mut self, presence: bool) -> Self {
        self.presence = presence;
        self
    }

    pub fn seed(app: &str, path_prefix: &str) -> Result<Self, String> {
        Ok(Topics {
            layout: Layout::Seed {
                app: AppId::parse(app).map_err(|_| format!("app id {app:?} is not a valid id"))?,
                seed: Seed::new(path_prefix)?,
            },
            presence: false,
        })
    }

    pub fn from_config(cfg: &crate::config::TopicConfig) -> Result<Self, String> {
        let topics = match cfg.layout {
            TopicLayout::Chat21 => Self::chat21(&cfg.app_id),
            TopicLayout::Seed => Self::seed(&cfg.app_id, &cfg.path_prefix)?,
        };
        Ok(topics.with_presence(cfg.presence))
    }

    /// Binding patterns on `amq.topic` for the inputs this engine handles (PROTOCOL §2).
    pub fn bindings(&self) -> Vec<String> {
        match &self.layout {
            Layout::Chat21 { app } => {
                let mut b = vec![
                    format!("apps.{app}.outgoing.users.*.messages.*.outgoing"),
                    format!("apps.{app}.users.*.messages.*.*.update"),
                    format!("apps.{app}.users.*.conversations.*.update"),
                    format!("apps.{app}.users.*.conversations.*.archive"),
                    format!("apps.{app}.users.*.typing.*"),
                    format!("apps.{app}.users.*.blocks.*.add"),
                    format!("apps.{app}.users.*.blocks.*.remove"),
                    format!("apps.observer.{app}.groups.update"),
                    format!("apps.observer.{app}.users.*.messages.*.delivered"),
                ];
                if self.presence {
                    b.push(self.presence_binding(app));
                }
                b
            }
            Layout::Seed { seed, .. } => vec![format!("{}.*.*.messages.outgoing", seed.prefix)],
        }
    }

    /// Bindings an earlier configuration may have left on the (durable) queue that this one
    /// must remove: presence after PRESENCE_ENABLED was turned off.
    pub fn retired_bindings(&self) -> Vec<String> {
        match &self.layout {
            Layout::Chat21 { app } if !self.presence => vec![self.presence_binding(app)],
            _ => Vec::new(),
        }
    }

    fn presence_binding(&self, app: &str) -> String {
        format!("apps.{app}.users.*.presence.*")
    }

    /// Parse a routing key into a typed input. Structure mismatch → `BadTopic`; the right
    /// structure naming an invalid id → `InvalidId`.
    pub fn parse(&self, key: &str) -> Result<Inbound, RejectReason> {
        match &self.layout {
            Layout::Chat21 { .. } => parse_chat21(key),
            Layout::Seed { app, seed } => {
                let rest = key
                    .strip_prefix(seed.prefix.as_str())
                    .and_then(|r| r.strip_prefix('.'))
                    .ok_or(RejectReason::BadTopic)?;
                let w: Vec<&str> = rest.split('.').collect();
                match w.as_slice() {
                    [s, r, "messages", "outgoing"] => {
                        let (sender, recipient) = (id(s)?, id(r)?);
                        Ok(Inbound::Send {
                            app: app.clone(),
                            sender,
                            recipient,
                        })
                    }
                    _ => Err(RejectReason::BadTopic),
                }
            }
        }
    }

    /// Where a message copy lands in `timeline_of`'s inbox for the conversation with
    /// `convers_with`: `apps.{app}.users.{timeline_of}.messages.{convers_with}.clientadded`
    /// (seed: `{prefix}.{timeline_of}.{convers_with}.messages.clientadded`).
    pub fn message_added(&self, app: &str, timeline_of: &str, convers_with: &str) -> Result<String, RejectReason> {
        let key = match &self.layout {
            Layout::Chat21 { .. } => format!("apps.{app}.users.{timeline_of}.messages.{convers_with}.clientadded"),
            Layout::Seed { seed, .. } => format!("{}.{timeline_of}.{convers_with}.messages.clientadded", seed.prefix),
        };
        checked(key)
    }

    /// Where a receipt for `message_id` lands for `timeline_of` (the message's sender):
    /// `apps.{app}.users.{timeline_of}.messages.{convers_with}.{message_id}.clientupdated`.
    pub fn receipt_updated(
        &self,
        app: &str,
        timeline_of: &str,
        convers_with: &str,
        message_id: &str,
    ) -> Result<String, RejectReason> {
        checked(format!(
            "apps.{app}.users.{timeline_of}.messages.{convers_with}.{message_id}.clientupdated"
        ))
    }

    /// What the engine tells a user's devices about one of its conversations (§6):
    /// `apps.{app}.users.{timeline_of}.{conversations|archived_conversations}.{convers_with}.{event}`.
    pub fn conversation_event(
        &self,
        app: &str,
        timeline_of: &str,
        convers_with: &str,
        event: ConversationEvent,
    ) -> Result<String, RejectReason> {
        let (list, verb) = match event {
            ConversationEvent::Updated => ("conversations", "clientupdated"),
            ConversationEvent::Deleted => ("conversations", "clientdeleted"),
            ConversationEvent::ArchivedAdded => ("archived_conversations", "clientadded"),
            ConversationEvent::ArchivedDeleted => ("archived_conversations", "clientdeleted"),
        };
        checked(format!("apps.{app}.users.{timeline_of}.{list}.{convers_with}.{verb}"))
    }

    /// Where a group's new state reaches one of the users to notify (§4.4):
    /// `apps.{app}.users.{member}.groups.{uid}.clientupdated`.
    pub fn group_updated(&self, app: &str, member: &str, uid: &str) -> Result<String, RejectReason> {
        checked(format!("apps.{app}.users.{member}.groups.{uid}.clientupdated"))
    }

    /// Where `to` learns that `about` (a user, or a group for group typing) is typing (§7):
    /// `apps.{app}.users.{to}.typing.{about}.clientupdated`.
    pub fn typing_updated(&self, app: &str, to: &str, about: &str) -> Result<String, RejectReason> {
        checked(format!("apps.{app}.users.{to}.typing.{about}.clientupdated"))
    }

    /// The echo of a block-list change to the user's devices (§9):
    /// `apps.{app}.users.{me}.blocks.{other}.clientadded|clientdeleted`.
    pub fn block_event(&self, app: &str, me: &str, other: &str, add: bool) -> Result<String, RejectReason> {
        let verb = if add { "clientadded" } else { "clientdeleted" };
        checked(format!("apps.{app}.users.{me}.blocks.{other}.{verb}"))
    }
}

fn parse_chat21(key: &str) -> Result<Inbound, RejectReason> {
    if key.len() > MAX_KEY_BYTES {
        return Err(RejectReason::BadTopic);
    }
    let w: Vec<&str> = key.split('.').collect();
    let app = AppId::parse;
    Ok(match w.as_slice() {
        ["apps", "observer", a, "groups", "update"] => Inbound::GroupUpdate { app: app(a)? },
        ["apps", "observer", a, "users", i, "messages", c, "delivered"] => Inbound::HistoryReplay {
            app: app(a)?,
            inbox: id(i)?,
            convers_with: id(c)?,
        },
        ["apps", a, "outgoing", "users", s, "messages", r, "outgoing"] => Inbound::Send {
            app: app(a)?,
            sender: id(s)?,
            recipient: id(r)?,
        },
        ["apps", a, "users", me, "messages", with, m, "update"] => Inbound::Receipt {
            app: app(a)?,
            me: id(me)?,
            with: id(with)?,
            message_id: MessageId::parse(m)?,
        },
        ["apps", a, "users", me, "conversations", with, "update"] => Inbound::ConversationUpdate {
            app: app(a)?,
            me: id(me)?,
            with: id(with)?,
        },
        ["apps", a, "users", me, "conversations", with, "archive"] => Inbound::Archive {
            app: app(a)?,
            me: id(me)?,
            with: id(with)?,
        },
        ["apps", a, "users", u, "presence", c] => Inbound::Presence {
            app: app(a)?,
            user: id(u)?,
            client_id: ClientId::parse(c)?,
        },
        ["apps", a, "users", me, "typing", with] => Inbound::Typing {
            app: app(a)?,
            me: id(me)?,
            with: id(with)?,
        },
        ["apps", a, "users", me, "blocks", other, verb @ ("add" | "remove")] => Inbound::Block {
            app: app(a)?,
            me: id(me)?,
            other: id(other)?,
            add: *verb == "add",
        },
        _ => return Err(RejectReason::BadTopic),
    })
}

fn id(word: &str) -> Result<UserId, RejectReason> {
    UserId::parse(word)
}

fn checked(key: String) -> Result<String, RejectReason> {
    if key.len() > MAX_KEY_BYTES {
        Err(RejectReason::KeyTooLong)
    } else {
        Ok(key)
    }
}

/// MQTT topic (or filter) → AMQP routing key (or binding pattern), as RabbitMQ converts it.
pub fn mqtt_to_amqp(topic: &str) -> String {
    topic
        .chars()
        .map(|c| match c {
            '/' => '.',
            '+' => '*',
            c => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_every_chat21_input() {
        let t = Topics::chat21("tilechat");
        let s = |k: &str| t.parse(k).unwrap();
        assert_eq!(
            s("apps.tilechat.outgoing.users.U1.messages.U2.outgoing"),
            Inbound::Send {
                app: "tilechat".into(),
                sender: "U1".into(),
                recipient: "U2".into()
            }
        );
        assert_eq!(s("apps.tilechat.users.U1.messages.U2.m1.update").kind(), "receipt");
        assert_eq!(
            s("apps.tilechat.users.U1.conversations.U2.update").kind(),
            "conversation_update"
        );
        assert_eq!(s("apps.tilechat.users.U1.conversations.U2.archive").kind(), "archive");
        assert_eq!(s("apps.tilechat.users.U1.presence.c1").kind(), "presence");
        assert_eq!(s("apps.tilechat.users.U1.typing.U2").kind(), "typing");
        assert_eq!(
            s("apps.tilechat.users.U1.blocks.U2.remove"),
            Inbound::Block {
                app: "tilechat".into(),
                me: "U1".into(),
                other: "U2".into(),
                add: false
            }
        );
        assert_eq!(
            s("apps.observer.tilechat.groups.update"),
            Inbound::GroupUpdate { app: "tilechat".into() }
        );
        assert_eq!(
            s("apps.observer.tilechat.users.U1.messages.g1.delivered").kind(),
            "history_replay"
        );
    }

    #[test]
    fn rejects_by_full_parse_not_suffix() {
        let t = Topics::chat21("tilechat");
        // D5: suffix matching would take these for outgoing messages.
        for k in [
            "apps.tilechat.outgoing.users.U1.messages.U2.x.outgoing",
            "x.apps.tilechat.outgoing.users.U1.messages.U2.outgoing",
            "apps.tilechat.users.U1.messages.U2.clientadded",
            "outgoing",
            "",
            ".apps.tilechat.outgoing.users.U1.messages.U2.outgoing",
        ] {
            assert_eq!(t.parse(k), Err(RejectReason::BadTopic), "{k}");
        }
        assert_eq!(
            t.parse("apps.tilechat.outgoing.users.U1.messages..outgoing"),
            Err(RejectReason::InvalidId)
        );
        assert_eq!(
            t.parse("apps.tilechat.outgoing.users.U 1.messages.U2.outgoing"),
            Err(RejectReason::InvalidId)
        );
        assert_eq!(
            t.parse("apps.tilechat.outgoing.users.U1.messages.a*b.outgoing"),
            Err(RejectReason::InvalidId)
        );
    }

    #[test]
    fn seed_layout_with_leading_slash() {
        let t = Topics::seed("tilechat", "/apps/tilechat/users").unwrap();
        assert_eq!(
            t.bindings(),
            vec![".apps.tilechat.users.*.*.messages.outgoing".to_string()]
        );
        assert_eq!(t.outgoing("S", "R"), ".apps.tilechat.users.S.R.messages.outgoing");
        assert_eq!(
            t.parse(".apps.tilechat.users.S.R.messages.outgoing").unwrap(),
            Inbound::Send {
                app: "tilechat".into(),
                sender: "S".into(),
                recipient: "R".into()
            }
        );
        assert_eq!(
            t.message_added("tilechat", "R", "S").unwrap(),
            ".apps.tilechat.users.R.S.messages.clientadded"
        );
        assert_eq!(
            t.parse("apps.tilechat.users.S.R.messages.outgoing"),
            Err(RejectReason::BadTopic)
        );
        assert!(Topics::seed("t", "").is_err());
        for bad in [
            "/", "//", "/a.b", "/a//b", "a b", "/a/%55", "/a/{sub}", "/a/*", "/a/+", "/a/#", "/a/ü",
        ] {
            assert!(Topics::seed("t", bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Topics::seed("t", "chat/").unwrap().outgoing("a", "b"),
            "chat.a.b.messages.outgoing"
        );
    }

    /// AMQP topic matching (`*` = one word; the bindings use no `#`).
    fn matches(pattern: &str, key: &str) -> bool {
        let (p, k): (Vec<&str>, Vec<&str>) = (pattern.split('.').collect(), key.split('.').collect());
        p.len() == k.len() && p.iter().zip(&k).all(|(p, k)| *p == "*" || p == k)
    }

    #[test]
    fn every_input_is_bound_and_no_output_is() {
        let t = Topics::chat21("app").with_presence(true);
        let mut inputs = t.user_inputs("app", "me", "w");
        inputs.extend([t.group_update("app"), t.history_replay("app", "i", "c")]);
        for key in &inputs {
            assert!(t.parse(key).is_ok(), "{key}");
            assert!(t.bindings().iter().any(|b| matches(b, key)), "{key} is not bound");
        }
        let outputs = [
            t.message_added("app", "a", "b").unwrap(),
            t.receipt_updated("app", "a", "b", "m").unwrap(),
            t.conversation_event("app", "a", "b", ConversationEvent::Deleted)
                .unwrap(),
            t.group_updated("app", "a", "g").unwrap(),
            t.typing_updated("app", "a", "b").unwrap(),
            t.block_event("app", "a", "b", true).unwrap(),
            t.block_event("app", "a", "b", false).unwrap(),
        ];
        for key in &outputs {
            assert!(!t.bindings().iter().any(|b| matches(b, key)), "{key} would loop back");
        }
        // Presence is bound only when enabled, and unbound when disabled.
        let off = Topics::chat21("app");
        assert!(!off.bindings().iter().any(|b| matches(b, &t.presence("app", "u", "c"))));
        assert_eq!(off.retired_bindings(), vec!["apps.app.users.*.presence.*".to_string()]);
        assert!(t.retired_bindings().is_empty());
    }

    #[test]
    fn mqtt_conversion() {
        assert_eq!(mqtt_to_amqp("/apps/t/users/+/x"), ".apps.t.users.*.x");
    }

    #[test]
    fn overlong_keys() {
        let t = Topics::chat21("tilechat");
        let long = "a".repeat(128);
        assert_eq!(t.message_added("tilechat", &long, &long), Err(RejectReason::KeyTooLong));
        assert!(t.message_added("tilechat", "a", &long).is_ok());
    }

    fn valid_id() -> impl Strategy<Value = String> {
        // Any printable text without the forbidden characters, 1..=40 chars.
        "[^./*#+%{}\u{FFFD}\\s\\p{Cc}]{1,40}".prop_filter("byte length", |s| s.len() <= 128)
    }

    fn layouts() -> impl Strategy<Value = Topics> {
        prop_oneof![
            valid_id().prop_map(|a| Topics::chat21(&a)),
            (valid_id(), "(/?[a-z]{1,8}){1,4}").prop_map(|(a, p)| Topics::seed(&a, &p).unwrap()),
        ]
    }

    proptest! {
        #[test]
        fn render_then_parse_round_trips(t in layouts(), s in valid_id(), r in valid_id()) {
            let key = t.outgoing(&s, &r);
            match t.parse(&key) {
                Ok(Inbound::Send { sender, recipient, .. }) => {
                    prop_assert_eq!(sender, s);
                    prop_assert_eq!(recipient, r);
                }
                Ok(other) => prop_assert!(false, "parsed as {:?}", other),
                Err(e) => prop_assert!(key.len() > MAX_KEY_BYTES && e == RejectReason::BadTopic, "{:?}", e),
            }
        }

        #[test]
        fn arbitrary_keys_never_panic(t in layouts(), key in "\\PC{0,300}") {
            let _ = t.parse(&key);
        }

        #[test]
        fn arbitrary_dotted_keys_never_panic(key in "(apps|observer|users|outgoing|messages|x|\\*|)(\\.(apps|tilechat|observer|users|outgoing|messages|update|add|U|\\*|#| |)){0,9}") {
            let _ = Topics::chat21("tilechat").parse(&key);
        }

        #[test]
        fn invalid_ids_always_rejected(t in layouts(), good in valid_id(), bad in "[a-z]{0,3}[./*#+%{} \\t\\x00][a-z]{0,3}|") {
            prop_assert!(t.parse(&t.outgoing(&good, &bad)).is_err());
            prop_assert!(t.parse(&t.outgoing(&bad, &good)).is_err());
        }

        #[test]
        fn outbound_keys_never_exceed_limit(t in layouts(), a in valid_id(), b in valid_id()) {
            if let Ok(k) = t.message_added("app", &a, &b) {
                prop_assert!(k.len() <= MAX_KEY_BYTES);
            }
        }
    }
}
