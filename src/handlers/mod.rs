//! Pure handlers: one typed input + its body → a [`Plan`] or a rejection. No I/O here: what a
//! handler needs to know about the world comes in the [`Context`]; when it needs a group the
//! context does not know yet, it says so ([`Halt::NeedGroup`]) and is asked again once the
//! caller has loaded it.

mod archive;
mod blocks;
mod conversation;
mod group;
mod group_update;
mod history;
mod presence;
mod receipt;
mod send;
mod typing;

use std::collections::HashSet;

use crate::message::RejectReason;
use crate::plan::{Context, Plan};
use crate::topic::{Inbound, Topics};

/// Publishes that depend on what a commit changed: archive and un-archive (§6), receipts of
/// group messages to their original sender (§5).
pub fn after_commit(topics: &Topics, committed: &crate::plan::Committed) -> Vec<crate::plan::Publish> {
    let mut out = archive::after_commit(topics, committed);
    out.extend(receipt::group_receipts(topics, committed));
    out
}

/// Configuration the handlers apply.
#[derive(Debug, Clone)]
pub struct Settings {
    /// May write to stored groups they are not members of (`TRUSTED_SENDERS`).
    pub trusted_senders: HashSet<String>,
    /// Cap on an inline group's `members` (`MAX_INLINE_GROUP_MEMBERS`).
    pub max_inline_group_members: usize,
    /// Presence inputs are handled (`PRESENCE_ENABLED`).
    pub presence: bool,
}

impl Settings {
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        Settings {
            trusted_senders: cfg.trusted_senders.clone(),
            max_inline_group_members: cfg.max_inline_group_members,
            presence: cfg.presence_enabled,
        }
    }
}

/// Why a handler stopped without a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Halt {
    /// The input is refused.
    Reject(RejectReason),
    /// The handler needs this group and the context does not know it: load it and ask again.
    NeedGroup(String),
}

impl From<RejectReason> for Halt {
    fn from(r: RejectReason) -> Self {
        Halt::Reject(r)
    }
}

/// Decide what one input does.
pub fn handle(topics: &Topics, inbound: &Inbound, body: &[u8], ctx: &Context) -> Result<Plan, Halt> {
    match inbound {
        Inbound::Send { app, sender, recipient } => send::send(topics, app, sender, recipient, body, ctx),
        Inbound::Receipt {
            app,
            me,
            with,
            message_id,
        } => Ok(receipt::receipt(topics, app, me, with, message_id, body)?),
        Inbound::ConversationUpdate { app, me, with } => Ok(conversation::update(topics, app, me, with, body)?),
        Inbound::Archive { app, me, with } => Ok(archive::archive(app, me, with)?),
        Inbound::Typing { app, me, with } => typing::typing(topics, app, me, with, body, ctx),
        Inbound::GroupUpdate { app } => Ok(group_update::group_update(topics, app, body, ctx)?),
        Inbound::HistoryReplay {
            app,
            inbox,
            convers_with,
        } => Ok(history::replay(topics, app, inbox, convers_with, body)?),
        Inbound::Presence { app, user, client_id } => Ok(presence::presence(app, user, client_id, body, ctx)?),
        Inbound::Block { app, me, other, add } => Ok(blocks::block(topics, app, me, other, *add, ctx)?),
    }
}

/// Parse a body that must be a JSON object.
pub(crate) fn json_object(body: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, RejectReason> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(RejectReason::NotObject),
        Err(_) => Err(RejectReason::NotJson),
    }
}

/// Serialize a JSON map (cannot fail: string keys, no non-finite floats in a `Value`).
pub(crate) fn to_vec(msg: &serde_json::Map<String, serde_json::Value>) -> Vec<u8> {
    serde_json::to_vec(msg).unwrap_or_default()
}

/// A context for unit tests: fixed clock and id, groups from a list (others not stored).
#[cfg(test)]
pub(crate) mod testing {
    use super::Settings;
    use crate::group::{Group, GroupLookup};
    use std::sync::Arc;

    pub fn group(uid: &str, members: &[&str]) -> Arc<Group> {
        let members: serde_json::Map<_, _> = members.iter().map(|m| (m.to_string(), 1.into())).collect();
        let obj = serde_json::json!({"uid": uid, "name": "G", "members": members});
        Arc::new(Group::from_object("tilechat", obj.as_object().unwrap(), 0).unwrap())
    }

    /// Run `f` with a context like the consumer's: clock at 7 ms, every fresh id "id".
    pub fn with_ctx<T>(
        lookup: &dyn Fn(&str) -> GroupLookup,
        settings: &Settings,
        f: impl FnOnce(&crate::plan::Context) -> T,
    ) -> T {
        let fresh_id = || "id".to_string();
        f(&crate::plan::Context {
            now_ms: 7,
            fresh_id: &fresh_id,
            groups: lookup,
            settings,
        })
    }

    /// Parse `key` and plan it as the consumer does before the chain (`groups`: the stored
    /// ones), with the default settings.
    pub fn plan(
        t: &crate::topic::Topics,
        key: &str,
        body: &str,
        groups: Vec<Arc<Group>>,
    ) -> (crate::topic::Inbound, crate::plan::Plan) {
        let input = t.parse(key).unwrap();
        let plan = with_ctx(&lookup_in(groups), &settings(), |ctx| {
            super::handle(t, &input, body.as_bytes(), ctx)
        })
        .unwrap();
        (input, plan)
    }

    pub fn lookup_in(groups: Vec<Arc<Group>>) -> impl Fn(&str) -> GroupLookup {
        move |uid| {
            groups
                .iter()
                .find(|g| g.uid == uid)
                .map_or(GroupLookup::NotStored, |g| GroupLookup::Stored(g.clone()))
        }
    }

    /// The configuration defaults, with presence on.
    pub fn settings() -> Settings {
        Settings {
            trusted_senders: std::collections::HashSet::from(["system".to_string()]),
            max_inline_group_members: 100,
            presence: true,
        }
    }
}
