//! I4, archive (PROTOCOL §6), and what follows a commit: the archived conversation is
//! published to the user's devices, and a new message that un-archived a conversation says so.
//! Both need the stored conversation, so they are planned in two steps: the handler plans the
//! write; [`after_commit`] plans the publishes from what the commit returned.

use crate::domain::{AppId, UserId};
use crate::plan::{Committed, Plan, Publish, Write};
use crate::topic::{ConversationEvent, Topics};

/// The payload is ignored (§6).
pub(super) fn archive(app: &AppId, me: &UserId, with: &UserId) -> Plan {
    Plan::writes(vec![Write::Archive {
        app: app.clone(),
        timeline_of: me.clone(),
        convers_with: with.clone(),
    }])
}

/// Publishes that depend on the commit: for an archived conversation, `…conversations.{with}.clientdeleted`
/// then `…archived_conversations.{with}.clientadded`; for an un-archived one,
/// `…archived_conversations.{with}.clientdeleted` with the conversation as it is now.
pub fn after_commit(topics: &Topics, committed: &Committed) -> Vec<Publish> {
    let events = committed
        .archived
        .iter()
        .flat_map(|c| [(c, ConversationEvent::Deleted), (c, ConversationEvent::ArchivedAdded)])
        .chain(
            committed
                .unarchived
                .iter()
                .map(|c| (c, ConversationEvent::ArchivedDeleted)),
        );
    events
        .filter_map(|(conv, event)| {
            let app = conv.last.app_id().unwrap_or_default();
            let key = topics.conversation_event(app, &conv.timeline_of, &conv.convers_with, event);
            key.ok()
                .map(|key| Publish::json(key, &super::conversation::object(conv)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Conversation, Message};
    use serde_json::{json, Value};

    fn conversation_object(t: &str, w: &str, last: &Message, is_new: bool, archived: bool) -> Conversation {
        Conversation {
            timeline_of: t.into(),
            convers_with: w.into(),
            last: last.clone(),
            is_new,
            archived,
        }
    }

    fn msg(v: Value) -> Message {
        Message::from_fields(v.as_object().unwrap().clone())
    }

    #[test]
    fn archived_conversation_is_deleted_then_added_to_archived() {
        let t = Topics::chat21("app");
        let last = json!({"text": "hi", "sender": "U2", "app_id": "app"});
        let conv = conversation_object("U1", "U2", &msg(last), false, true);
        let out = after_commit(
            &t,
            &Committed {
                archived: vec![conv],
                ..Committed::default()
            },
        );
        let keys: Vec<&str> = out.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "apps.app.users.U1.conversations.U2.clientdeleted",
                "apps.app.users.U1.archived_conversations.U2.clientadded"
            ]
        );
        let body: Value = serde_json::from_slice(out[0].bytes()).unwrap();
        assert_eq!(body["last_message_text"], "hi");
        assert_eq!(body["archived"], true);
        assert_eq!(body["key"], "U2");
    }

    #[test]
    fn unarchived_conversation_leaves_the_archive() {
        let t = Topics::chat21("app");
        let last = json!({"text": "back", "sender": "U1", "app_id": "app"});
        let conv = conversation_object("U2", "U1", &msg(last), true, false);
        let out = after_commit(
            &t,
            &Committed {
                unarchived: vec![conv],
                ..Committed::default()
            },
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].key, "apps.app.users.U2.archived_conversations.U1.clientdeleted");
        let body: Value = serde_json::from_slice(out[0].bytes()).unwrap();
        assert_eq!(body["last_message_text"], "back");
        assert_eq!(body["archived"], false);
    }
}
