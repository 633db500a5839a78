//! I4, archive (PROTOCOL §6), and what follows a commit: the archived conversation is
//! published to the user's devices, and a new message that un-archived a conversation says so.
//! Both need the stored conversation, so they are planned in two steps: the handler plans the
//! write; [`after_commit`] plans the publishes from what the commit returned.

use serde_json::Value;

use crate::message::RejectReason;
use crate::plan::{conversation_object, Committed, Plan, Publish, Write};
use crate::topic::Topics;

/// The payload is ignored (§6).
pub(super) fn archive(app: &str, me: &str, with: &str) -> Result<Plan, RejectReason> {
    Ok(Plan {
        publishes: Vec::new(),
        writes: vec![Write::Archive {
            app: app.into(),
            timeline_of: me.into(),
            convers_with: with.into(),
        }],
    })
}

/// Publishes that depend on the commit: for an archived conversation, `…conversations.{with}.clientdeleted`
/// then `…archived_conversations.{with}.clientadded`; for an un-archived one,
/// `…archived_conversations.{with}.clientdeleted` with the conversation as it is now.
pub fn after_commit(topics: &Topics, plan_publishes: &[Publish], committed: &Committed) -> Vec<Publish> {
    let mut out = Vec::new();
    let publish = |key: Result<String, RejectReason>, body: &serde_json::Map<String, Value>| {
        key.ok().map(|key| Publish {
            key,
            body: serde_json::to_vec(body).unwrap_or_default(),
            persistent: true,
            copy: None,
        })
    };
    for conv in &committed.archived {
        let field = |k: &str| conv.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
        let (app, me, with) = (field("app_id"), field("timelineOf"), field("conversWith"));
        out.extend(publish(topics.conversation_deleted(&app, &me, &with), conv));
        out.extend(publish(topics.archived_added(&app, &me, &with), conv));
    }
    for (timeline_of, convers_with) in &committed.unarchived {
        let copy = plan_publishes
            .iter()
            .filter_map(|p| p.copy.as_ref())
            .find(|c| &c.timeline_of == timeline_of && &c.convers_with == convers_with);
        if let Some(c) = copy {
            let app = c.message.get("app_id").and_then(Value::as_str).unwrap_or_default();
            let conv = conversation_object(timeline_of, convers_with, &c.message, c.is_new, false);
            out.extend(publish(topics.archived_deleted(app, timeline_of, convers_with), &conv));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Context;
    use serde_json::json;

    #[test]
    fn archived_conversation_is_deleted_then_added_to_archived() {
        let t = Topics::chat21("app");
        let last = json!({"text": "hi", "sender": "U2", "app_id": "app"});
        let conv = conversation_object("U1", "U2", last.as_object().unwrap(), false, true);
        let out = after_commit(
            &t,
            &[],
            &Committed {
                archived: vec![conv],
                unarchived: vec![],
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
        let body: Value = serde_json::from_slice(&out[0].body).unwrap();
        assert_eq!(body["last_message_text"], "hi");
        assert_eq!(body["archived"], true);
        assert_eq!(body["key"], "U2");
    }

    #[test]
    fn unarchived_conversation_leaves_the_archive() {
        let t = Topics::chat21("app");
        let input = t.parse(&t.outgoing("U1", "U2")).unwrap();
        let ctx = Context {
            now_ms: 5,
            fresh_id: &|| "id".into(),
        };
        let plan = crate::handlers::handle(&t, &input, br#"{"text":"back"}"#, &ctx).unwrap();
        let committed = Committed {
            archived: vec![],
            unarchived: vec![("U2".into(), "U1".into())],
        };
        let out = after_commit(&t, &plan.publishes, &committed);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].key, "apps.app.users.U2.archived_conversations.U1.clientdeleted");
        let body: Value = serde_json::from_slice(&out[0].body).unwrap();
        assert_eq!(body["last_message_text"], "back");
        assert_eq!(body["archived"], false);
    }
}
