//! I1, sending a message (PROTOCOL §3): direct messages here, group messages in `group.rs`.

use serde_json::{Map, Value};

use super::Halt;
use crate::message::{is_valid_id, status};
use crate::plan::{Context, Plan, Publish, TimelineCopy};
use crate::topic::Topics;

/// §3: a group message is one with `channel_type == "group"`, or with no `channel_type` and
/// a recipient containing `group-` (compatibility with clients that omit channel_type).
pub(super) fn is_group_message(msg: &Map<String, Value>, recipient: &str) -> bool {
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
) -> Result<Plan, Halt> {
    let mut msg = super::json_object(body)?;
    if is_group_message(&msg, recipient) {
        return super::group::send(topics, app, sender, recipient, msg, ctx);
    }
    // Render both keys first: an input is either fully processed or rejected, never half.
    let sender_key = topics.message_added(app, sender, recipient)?;
    let recipient_key = topics.message_added(app, recipient, sender)?;

    stamp(&mut msg, app, sender, recipient, ctx);
    msg.insert("status".into(), status::SENT.into());
    let sender_copy = copy(sender_key, sender, recipient, false, msg.clone(), None);
    msg.insert("status".into(), status::DELIVERED.into());
    let recipient_copy = copy(recipient_key, recipient, sender, true, msg, Some(recipient));
    Ok(Plan::publishes(vec![sender_copy, recipient_copy]))
}

/// A message copy for `timeline_of`'s conversation with `convers_with`, published at `key`.
/// `to`: whose block list may veto it (None for the sender's own copy and group timelines).
pub(super) fn copy(
    key: String,
    timeline_of: &str,
    convers_with: &str,
    is_new: bool,
    msg: Map<String, Value>,
    to: Option<&str>,
) -> Publish {
    Publish {
        key,
        body: super::to_vec(&msg),
        persistent: true,
        to: to.map(str::to_owned),
        copy: Some(TimelineCopy {
            timeline_of: timeline_of.to_owned(),
            convers_with: convers_with.to_owned(),
            is_new,
            message: std::sync::Arc::new(msg),
        }),
    }
}

/// The fields the engine owns (§3), overwriting what the client sent.
pub(super) fn stamp(msg: &mut Map<String, Value>, app: &str, sender: &str, recipient: &str, ctx: &Context) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::handlers::testing;
    use crate::message::RejectReason;

    fn run_with(body: &str, sender: &str, recipient: &str) -> Result<Plan, Halt> {
        let t = Topics::chat21("tilechat");
        let groups = testing::lookup_in(vec![]);
        let settings = testing::settings();
        let ctx = Context {
            now_ms: 1_700_000_000_000,
            fresh_id: &|| "fresh-uuid".to_string(),
            groups: &groups,
            settings: &settings,
        };
        send(&t, "tilechat", sender, recipient, body.as_bytes(), &ctx)
    }

    fn run(body: &str, recipient: &str) -> Result<Vec<(String, Value)>, Halt> {
        let plan = run_with(body, "U1", recipient)?;
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
        let recipients =
            |body: &str, r: &str| -> Vec<String> { run(body, r).unwrap().into_iter().map(|(k, _)| k).collect() };
        // Transient groups (not stored): the sender's member copy and the group timeline.
        let group = vec![
            "apps.tilechat.users.U1.messages.G1.clientadded".to_string(),
            "apps.tilechat.users.G1.messages.G1.clientadded".to_string(),
        ];
        assert_eq!(recipients(r#"{"text":"x","channel_type":"group"}"#, "G1"), group);
        assert_eq!(recipients(r#"{"text":"x"}"#, "group-1").len(), 2);
        // An explicit direct channel wins over the compat rule.
        assert_eq!(
            recipients(r#"{"text":"x","channel_type":"direct"}"#, "group-1"),
            vec![
                "apps.tilechat.users.U1.messages.group-1.clientadded".to_string(),
                "apps.tilechat.users.group-1.messages.U1.clientadded".to_string(),
            ]
        );
    }

    #[test]
    fn bad_bodies() {
        let err = |b: &str| run(b, "U2").unwrap_err();
        assert_eq!(err("not json"), Halt::Reject(RejectReason::NotJson));
        assert_eq!(err("[1,2]"), Halt::Reject(RejectReason::NotObject));
        assert_eq!(err("\"s\""), Halt::Reject(RejectReason::NotObject));
        assert_eq!(err(""), Halt::Reject(RejectReason::NotJson));
    }

    #[test]
    fn overlong_keys_reject_the_whole_input() {
        let long = "r".repeat(128);
        let err = run_with("{}", &"s".repeat(128), &long).unwrap_err();
        assert_eq!(err, Halt::Reject(RejectReason::KeyTooLong));
    }
}
