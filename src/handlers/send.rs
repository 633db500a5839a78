//! I1, sending a message (PROTOCOL §3). Direct messages only for now: group-addressed
//! messages are rejected as `unsupported` rather than mis-delivered as direct ones.

use serde_json::{Map, Value};

use crate::message::{is_valid_id, status, RejectReason};
use crate::plan::{Context, Plan, Publish, TimelineCopy};
use crate::topic::Topics;

/// §3: a group message is one with `channel_type == "group"`, or with no `channel_type` and
/// a recipient containing `group-` (compatibility with clients that omit channel_type).
fn is_group_message(msg: &Map<String, Value>, recipient: &str) -> bool {
    match msg.get("channel_type") {
        Some(Value::String(ct)) => ct == "group",
        None | Some(Value::Null) => recipient.contains("group-"),
        Some(_) => false,
    }
}

pub(super) fn send(
    topics: &Topics,
    app: &str,
    sender: &str,
    recipient: &str,
    body: &[u8],
    ctx: &Context,
) -> Result<Plan, RejectReason> {
    let mut msg = super::json_object(body)?;
    if is_group_message(&msg, recipient) {
        return Err(RejectReason::Unsupported);
    }
    // Render both keys first: an input is either fully processed or rejected, never half.
    let sender_key = topics.message_added(app, sender, recipient)?;
    let recipient_key = topics.message_added(app, recipient, sender)?;

    stamp(&mut msg, app, sender, recipient, ctx);
    msg.insert("status".into(), status::SENT.into());
    let sender_copy = copy(sender_key, sender, recipient, false, msg.clone());
    msg.insert("status".into(), status::DELIVERED.into());
    let recipient_copy = copy(recipient_key, recipient, sender, true, msg);

    Ok(Plan {
        publishes: vec![sender_copy, recipient_copy],
        writes: Vec::new(),
    })
}

fn copy(key: String, timeline_of: &str, convers_with: &str, is_new: bool, msg: Map<String, Value>) -> Publish {
    Publish {
        key,
        body: to_vec(&msg),
        persistent: true,
        copy: Some(TimelineCopy {
            timeline_of: timeline_of.to_owned(),
            convers_with: convers_with.to_owned(),
            is_new,
            message: std::sync::Arc::new(msg),
        }),
    }
}

/// The fields the engine owns (§3), overwriting what the client sent.
fn stamp(msg: &mut Map<String, Value>, app: &str, sender: &str, recipient: &str, ctx: &Context) {
    msg.insert("sender".into(), sender.into());
    msg.insert("recipient".into(), recipient.into());
    msg.insert("app_id".into(), app.into());
    // The client's id is the idempotency key (D14): a retried publish keeps its id.
    let client_id_ok = matches!(msg.get("message_id"), Some(Value::String(id)) if is_valid_id(id));
    if !client_id_ok {
        msg.insert("message_id".into(), (ctx.fresh_id)().into());
    }
    if !msg.get("timestamp").is_some_and(Value::is_number) {
        msg.insert("timestamp".into(), ctx.now_ms.into());
    }
}

fn to_vec(msg: &Map<String, Value>) -> Vec<u8> {
    // Serializing a Map of Values cannot fail (string keys, no non-finite floats in Value).
    serde_json::to_vec(msg).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> Context<'static> {
        Context {
            now_ms: 1_700_000_000_000,
            fresh_id: &|| "fresh-uuid".to_string(),
        }
    }

    fn run(body: &str, recipient: &str) -> Result<Vec<(String, Value)>, RejectReason> {
        let t = Topics::chat21("tilechat");
        let plan = send(&t, "tilechat", "U1", recipient, body.as_bytes(), &ctx())?;
        Ok(plan
            .publishes
            .into_iter()
            .map(|p| {
                assert!(p.persistent);
                (p.key, serde_json::from_slice(&p.body).unwrap())
            })
            .collect())
    }

    #[test]
    fn direct_message_gives_sender_then_recipient_copy() {
        let out = run(
            r#"{"text":"hi","type":"text","channel_type":"direct","sender":"FORGED","app_id":"x","attributes":{"a":1},"metadata":null}"#,
            "U2",
        )
        .unwrap();
        assert_eq!(out[0].0, "apps.tilechat.users.U1.messages.U2.clientadded");
        assert_eq!(out[1].0, "apps.tilechat.users.U2.messages.U1.clientadded");
        let (a, b) = (&out[0].1, &out[1].1);
        assert_eq!(a["status"], 100);
        assert_eq!(b["status"], 150);
        for m in [a, b] {
            assert_eq!(m["sender"], "U1");
            assert_eq!(m["recipient"], "U2");
            assert_eq!(m["app_id"], "tilechat");
            assert_eq!(m["message_id"], "fresh-uuid");
            assert_eq!(m["timestamp"], 1_700_000_000_000i64);
            assert_eq!(m["text"], "hi");
            assert_eq!(m["attributes"], json!({"a":1}));
            assert_eq!(m["metadata"], Value::Null);
        }
    }

    #[test]
    fn client_message_id_and_numeric_timestamp_are_kept() {
        let out = run(r#"{"text":"x","message_id":"m-1","timestamp":42}"#, "U2").unwrap();
        assert_eq!(out[1].1["message_id"], "m-1");
        assert_eq!(out[1].1["timestamp"], 42);
        let out = run(r#"{"text":"x","message_id":"bad id","timestamp":"yesterday"}"#, "U2").unwrap();
        assert_eq!(out[1].1["message_id"], "fresh-uuid");
        assert_eq!(out[1].1["timestamp"], 1_700_000_000_000i64);
    }

    #[test]
    fn group_messages_are_not_direct() {
        assert_eq!(
            run(r#"{"text":"x","channel_type":"group"}"#, "G1").unwrap_err(),
            RejectReason::Unsupported
        );
        assert_eq!(
            run(r#"{"text":"x"}"#, "group-123").unwrap_err(),
            RejectReason::Unsupported
        );
        // An explicit direct channel wins over the compat rule.
        assert!(run(r#"{"text":"x","channel_type":"direct"}"#, "group-123").is_ok());
    }

    #[test]
    fn bad_bodies() {
        assert_eq!(run("not json", "U2").unwrap_err(), RejectReason::NotJson);
        assert_eq!(run("[1,2]", "U2").unwrap_err(), RejectReason::NotObject);
        assert_eq!(run("\"s\"", "U2").unwrap_err(), RejectReason::NotObject);
        assert_eq!(run("", "U2").unwrap_err(), RejectReason::NotJson);
    }

    #[test]
    fn overlong_keys_reject_the_whole_input() {
        let t = Topics::chat21("tilechat");
        let long = "r".repeat(128);
        let err = send(&t, "tilechat", &"s".repeat(128), &long, b"{}", &ctx()).unwrap_err();
        assert_eq!(err, RejectReason::KeyTooLong);
    }
}
