//! Pure handlers: one typed input → a [`Plan`] or a [`Rejection`]. No I/O here: what a handler
//! needs to know about the world (the clock, a fresh id, the stored group it names) comes in
//! the [`Context`], looked up by the pipeline beforehand ([`Input::group_needed`]).

mod archive;
mod blocks;
pub mod conversation;
mod group;
mod group_update;
mod history;
mod presence;
mod receipt;
mod send;
mod typing;

use std::collections::HashSet;

use crate::domain::commands::{self, GroupUpdate, Typing};
use crate::domain::{Message, RejectReason, UserId};
use crate::plan::{Committed, Context, Plan, Publish, Rejection};
use crate::topic::{Inbound, Topics};

/// Publishes that depend on what a commit changed: archive and un-archive (§6), receipts of
/// group messages to their original sender (§5).
pub fn after_commit(topics: &Topics, committed: &Committed) -> Vec<Publish> {
    let mut out = archive::after_commit(topics, committed);
    out.extend(receipt::after_commit(topics, committed));
    out
}

/// Configuration the handlers apply.
#[derive(Debug, Clone)]
pub struct Settings {
    /// May write to stored groups they are not members of (`TRUSTED_SENDERS`).
    pub trusted_senders: HashSet<UserId>,
    /// Cap on an inline group's `members` (`MAX_INLINE_GROUP_MEMBERS`).
    pub max_inline_group_members: usize,
    /// Presence inputs are handled (`PRESENCE_ENABLED`).
    pub presence: bool,
    /// Largest input body (`MAX_MESSAGE_BYTES`).
    pub max_message_bytes: usize,
    /// Most bytes one message may fan out to: body size × copies (`MAX_FANOUT_BYTES`).
    pub max_fanout_bytes: usize,
    /// A store is configured: receipts are checked against the reader's stored timeline and
    /// passed on after the commit. Without one they are passed on unchecked.
    pub checked_receipts: bool,
}

/// One input: what its routing key says, and its body parsed once into what it says.
#[derive(Debug, Clone)]
pub struct Input {
    pub inbound: Inbound,
    pub payload: Payload,
}

/// A body, parsed as its input's kind reads it.
#[derive(Debug, Clone)]
pub enum Payload {
    /// I1: the message sent.
    Message(Message),
    /// I2: `{"status":200}`.
    Received,
    /// I3: the conversation's new `is_new`.
    IsNew(bool),
    /// I5: connected (true) or disconnected — or why the payload says neither, reported
    /// only when presence is on (with it off, every presence input is `Unsupported`).
    Presence(Result<bool, RejectReason>),
    /// I6.
    Typing(Typing),
    /// I8.
    GroupUpdate(GroupUpdate),
    /// I9: the message, and the body it came in (published byte for byte).
    Replay(Message, Vec<u8>),
    /// I4 archive and I7 block commands: the payload is ignored (§6, §9).
    Ignored,
}

impl Input {
    /// Parse `body` as `inbound`'s kind reads it, or the reason it is unusable.
    pub fn parse(inbound: Inbound, body: &[u8]) -> Result<Input, RejectReason> {
        let payload = match &inbound {
            Inbound::Send { .. } => Payload::Message(Message::parse(body)?),
            Inbound::Receipt { .. } => {
                commands::receipt(body)?;
                Payload::Received
            }
            Inbound::ConversationUpdate { .. } => Payload::IsNew(commands::conversation_update(body)?),
            Inbound::Presence { .. } => Payload::Presence(commands::presence(body)),
            Inbound::Typing { with, .. } => Payload::Typing(commands::typing(body, with)?),
            Inbound::GroupUpdate { .. } => Payload::GroupUpdate(commands::group_update(body)?),
            Inbound::HistoryReplay { .. } => Payload::Replay(Message::parse(body)?, body.to_vec()),
            Inbound::Archive { .. } | Inbound::Block { .. } => Payload::Ignored,
        };
        Ok(Input { inbound, payload })
    }

    /// [`Input::parse`] after the size check: a body over `MAX_MESSAGE_BYTES` is refused
    /// before it is read. A sender is told, in a notice that does not carry the body (it
    /// would be the oversized input again); other inputs are dropped.
    pub fn admit(
        topics: &Topics,
        inbound: Inbound,
        body: &[u8],
        settings: &Settings,
        now_ms: i64,
    ) -> Result<Input, Rejection> {
        if body.len() <= settings.max_message_bytes {
            return Ok(Self::parse(inbound, body)?);
        }
        let why = format!(
            "the message is {} bytes; at most {} are accepted",
            body.len(),
            settings.max_message_bytes
        );
        let empty = Message::from_fields(Default::default());
        Err(refuse_unplanned(
            topics,
            &inbound,
            empty,
            now_ms,
            RejectReason::TooLarge,
            &why,
        ))
    }

    /// The group this input's handler needs to know about: the recipient of a group message,
    /// the group of group typing. The pipeline looks it up (cache, then store) first.
    pub fn group_needed(&self) -> Option<&UserId> {
        match (&self.inbound, &self.payload) {
            (Inbound::Send { recipient, .. }, Payload::Message(msg)) if msg.is_group(recipient) => Some(recipient),
            (Inbound::Typing { with, .. }, Payload::Typing(t)) if t.in_group => Some(with),
            _ => None,
        }
    }
}

/// Refuse an input before any plan exists (admission: size, rate limit). A message's sender is
/// told, with `notice` stamped as the message would have been (ids, time); any other input is
/// dropped. Planned messages are refused with `policy::refuse_send` instead.
pub fn refuse_unplanned(
    topics: &Topics,
    inbound: &Inbound,
    mut notice: Message,
    now_ms: i64,
    reason: RejectReason,
    why: &str,
) -> Rejection {
    let Inbound::Send { app, sender, recipient } = inbound else {
        return reason.into();
    };
    let Ok(key) = topics.message_added(app, sender, recipient) else {
        return reason.into();
    };
    notice.stamp(app, sender, recipient, || uuid::Uuid::new_v4().to_string(), now_ms);
    Rejection::refuse(key, notice, reason, why)
}

/// Decide what one input does. `payload` is the one [`Input::parse`] made for `inbound`.
pub fn handle(topics: &Topics, inbound: &Inbound, payload: Payload, ctx: &Context) -> Result<Plan, Rejection> {
    match (inbound, payload) {
        (Inbound::Send { app, sender, recipient }, Payload::Message(msg)) => {
            send::send(topics, app, sender, recipient, msg, ctx)
        }
        (
            Inbound::Receipt {
                app,
                me,
                with,
                message_id,
            },
            Payload::Received,
        ) => Ok(receipt::receipt(topics, app, me, with, message_id, ctx.settings)?),
        (Inbound::ConversationUpdate { app, me, with }, Payload::IsNew(is_new)) => {
            Ok(conversation::update(topics, app, me, with, is_new)?)
        }
        (Inbound::Archive { app, me, with }, Payload::Ignored) => Ok(archive::archive(app, me, with)),
        (Inbound::Typing { app, me, with }, Payload::Typing(t)) => Ok(typing::typing(topics, app, me, with, &t, ctx)?),
        (Inbound::GroupUpdate { app }, Payload::GroupUpdate(u)) => Ok(group_update::group_update(topics, app, u, ctx)?),
        (
            Inbound::HistoryReplay {
                app,
                inbox,
                convers_with,
            },
            Payload::Replay(msg, raw),
        ) => Ok(history::replay(topics, app, inbox, convers_with, msg, raw)?),
        (Inbound::Presence { app, user, client_id }, Payload::Presence(connected)) => {
            Ok(presence::presence(app, user, client_id, connected, ctx)?)
        }
        (Inbound::Block { app, me, other, add }, Payload::Ignored) => {
            Ok(blocks::block(topics, app, me, other, *add, ctx)?)
        }
        // Only a payload that `Input::parse` made for another kind of input gets here.
        _ => Err(RejectReason::BadPayload.into()),
    }
}

/// A context for unit tests: fixed clock and id, groups from a list (others not stored).
#[cfg(test)]
pub(crate) mod testing {
    use super::{Input, Settings};
    use crate::domain::{AppId, Group};
    use std::sync::Arc;

    pub fn group(uid: &str, members: &[&str]) -> Arc<Group> {
        let members: serde_json::Map<_, _> = members.iter().map(|m| (m.to_string(), 1.into())).collect();
        let obj = serde_json::json!({"uid": uid, "name": "G", "members": members});
        Arc::new(Group::from_object(&AppId::from("tilechat"), obj.as_object().unwrap(), 0).unwrap())
    }

    /// Run `f` with a context like the pipeline's: clock at 7 ms, every fresh id "id", the
    /// input's group looked up in `groups`.
    pub fn with_ctx<T>(
        input: &Input,
        groups: &[Arc<Group>],
        settings: &Settings,
        f: impl FnOnce(&crate::plan::Context) -> T,
    ) -> T {
        let fresh_id = || "id".to_string();
        let group = input
            .group_needed()
            .and_then(|uid| groups.iter().find(|g| &g.uid == uid).cloned());
        f(&crate::plan::Context {
            now_ms: 7,
            fresh_id: &fresh_id,
            group,
            settings,
        })
    }

    /// Parse `key` and `body` and handle them as the pipeline does before the chain
    /// (`groups`: the stored ones), with the default settings.
    pub fn handled(
        t: &crate::topic::Topics,
        key: &str,
        body: &str,
        groups: &[Arc<Group>],
        settings: &Settings,
    ) -> Result<crate::plan::Plan, crate::plan::Rejection> {
        let input = Input::parse(t.parse(key)?, body.as_bytes())?;
        with_ctx(&input.clone(), groups, settings, |ctx| {
            super::handle(t, &input.inbound, input.payload, ctx)
        })
    }

    /// [`handled`] with the default settings, for plans that must pass; the input back too.
    pub fn plan(
        t: &crate::topic::Topics,
        key: &str,
        body: &str,
        groups: Vec<Arc<Group>>,
    ) -> (crate::topic::Inbound, crate::plan::Plan) {
        let inbound = t.parse(key).unwrap();
        let plan = handled(t, key, body, &groups, &settings()).unwrap();
        (inbound, plan)
    }

    /// The configuration defaults, with presence on.
    pub fn settings() -> Settings {
        Settings {
            trusted_senders: std::collections::HashSet::from(["system".into()]),
            max_inline_group_members: 100,
            presence: true,
            max_message_bytes: 65536,
            max_fanout_bytes: 32 << 20,
            checked_receipts: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::settings;
    use super::*;
    use crate::plan::Rejection;

    #[test]
    fn an_oversized_body_is_refused_before_it_is_read() {
        let t = Topics::chat21("tilechat");
        let s = Settings {
            max_message_bytes: 16,
            ..settings()
        };
        let at_limit = br#"{"text":"12345"}"#;
        assert_eq!(at_limit.len(), 16);
        let send = || t.parse(&t.outgoing("U1", "U2")).unwrap();
        assert!(Input::admit(&t, send(), at_limit, &s, 7).is_ok());
        // One byte more, and not even JSON: the size decides first.
        match Input::admit(&t, send(), b"{\"text\":\"1234567\"", &s, 7) {
            Err(Rejection::Refuse { reason, notice }) => {
                assert_eq!(reason, RejectReason::TooLarge);
                assert_eq!(notice.key, "apps.tilechat.users.U1.messages.U2.clientadded");
                let n: serde_json::Value = serde_json::from_slice(notice.bytes()).unwrap();
                assert_eq!(
                    (n["status"].as_i64(), n["error"]["code"].as_str()),
                    (Some(-100), Some("too_large"))
                );
                assert_eq!(
                    (n["sender"].as_str(), n["recipient"].as_str()),
                    (Some("U1"), Some("U2"))
                );
                assert!(n.get("text").is_none(), "the notice does not carry the body");
            }
            other => panic!("{other:?}"),
        }
        // Nobody to tell for other inputs.
        let receipt = t.parse(&t.receipt("tilechat", "U1", "U2", "m")).unwrap();
        assert_eq!(
            Input::admit(&t, receipt, &[b' '; 17], &s, 7).unwrap_err(),
            Rejection::Drop(RejectReason::TooLarge)
        );
    }

    #[test]
    fn a_fan_out_over_budget_is_refused_and_the_sender_told() {
        let t = Topics::chat21("tilechat");
        let body = serde_json::json!({"text": "x".repeat(100), "channel_type": "group", "group": {"members": {"A": 1, "B": 1}}});
        let body = body.to_string();
        // Sender, A, B and the group timeline: 4 copies of about 250 bytes.
        let run = |budget: usize| {
            let s = Settings {
                max_fanout_bytes: budget,
                ..settings()
            };
            testing::handled(&t, &t.outgoing("S", "G"), &body, &[], &s)
        };
        assert_eq!(run(4096).unwrap().publishes.len(), 4);
        match run(600) {
            Err(Rejection::Refuse { reason, notice }) => {
                assert_eq!(reason, RejectReason::TooLarge);
                assert_eq!(notice.key, "apps.tilechat.users.S.messages.G.clientadded");
                let n: serde_json::Value = serde_json::from_slice(notice.bytes()).unwrap();
                assert!(
                    n.get("text").is_none() && n.get("group").is_none(),
                    "without the content: {n}"
                );
                assert_eq!(n["message_id"], "id");
            }
            other => panic!("{other:?}"),
        }
    }
}
