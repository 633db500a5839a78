//! I3, conversation update (PROTOCOL §6): only `is_new` is taken from the payload (fix D7:
//! the original copied the whole payload into the conversation).

use serde_json::{json, Map, Value};

use crate::domain::{AppId, Conversation, RejectReason, UserId};
use crate::plan::{Plan, Publish, Write};
use crate::topic::{ConversationEvent, Topics};

/// A conversation as Chat21 clients read it (§6): the last message's fields plus the
/// conversation's own (`last_message_text`, `key`, `timelineOf`, `conversWith`, `is_new`,
/// `archived`).
pub fn object(conv: &Conversation) -> Map<String, Value> {
    let mut c = conv.last.fields().clone();
    let text = conv.last.fields().get("text").cloned().unwrap_or(Value::Null);
    c.insert("last_message_text".into(), text);
    c.insert("key".into(), conv.convers_with.as_str().into());
    c.insert("timelineOf".into(), conv.timeline_of.as_str().into());
    c.insert("conversWith".into(), conv.convers_with.as_str().into());
    c.insert("is_new".into(), conv.is_new.into());
    c.insert("archived".into(), conv.archived.into());
    c
}

pub(super) fn update(
    topics: &Topics,
    app: &AppId,
    me: &UserId,
    with: &UserId,
    is_new: bool,
) -> Result<Plan, RejectReason> {
    let key = topics.conversation_event(app, me, with, ConversationEvent::Updated)?;
    let update = json!({"is_new": is_new, "timelineOf": me, "conversWith": with});
    Ok(Plan {
        publishes: vec![Publish::json(key, &update)],
        writes: vec![Write::ConversationIsNew {
            app: app.clone(),
            timeline_of: me.clone(),
            convers_with: with.clone(),
            is_new,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::testing;

    fn update(t: &Topics, app: &str, me: &str, with: &str, body: &[u8]) -> Result<Plan, RejectReason> {
        let key = t.conversation_update(app, me, with);
        let body = std::str::from_utf8(body).unwrap();
        testing::handled(t, &key, body, &[], &testing::settings()).map_err(|r| r.reason())
    }

    #[test]
    fn only_is_new_is_taken() {
        let t = Topics::chat21("app");
        let p = update(
            &t,
            "app",
            "U1",
            "U2",
            br#"{"is_new":false,"text":"hijack","archived":true}"#,
        )
        .unwrap();
        assert_eq!(p.publishes[0].key, "apps.app.users.U1.conversations.U2.clientupdated");
        let body: Value = serde_json::from_slice(p.publishes[0].bytes()).unwrap();
        assert_eq!(body, json!({"is_new": false, "timelineOf": "U1", "conversWith": "U2"}));
        assert_eq!(
            p.writes,
            vec![Write::ConversationIsNew {
                app: "app".into(),
                timeline_of: "U1".into(),
                convers_with: "U2".into(),
                is_new: false
            }]
        );
        assert_eq!(
            update(&t, "app", "U1", "U2", br#"{"is_new":"no"}"#).unwrap_err(),
            RejectReason::Ignored
        );
    }
}
