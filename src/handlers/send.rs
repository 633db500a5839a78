//! I1, sending a message (PROTOCOL §3): direct messages here, group messages in `group.rs`.

use crate::domain::{status, AppId, Message, Sealed, UserId};
use crate::plan::{Context, Plan, Publish, Rejection, TimelineCopy};
use crate::topic::Topics;

pub(super) fn send(
    topics: &Topics,
    app: &AppId,
    sender: &UserId,
    recipient: &UserId,
    mut msg: Message,
    ctx: &Context,
) -> Result<Plan, Rejection> {
    if !ctx.settings.trusted_senders.contains(sender) {
        msg.strip_system_attributes();
    }
    if msg.is_group(recipient) {
        return super::group::send(topics, app, sender, recipient, msg, ctx);
    }
    // Render both keys first: an input is either fully processed or rejected, never half.
    let sender_key = topics.message_added(app, sender, recipient)?;
    let recipient_key = topics.message_added(app, recipient, sender)?;

    msg.stamp(app, sender, recipient, ctx.fresh_id, ctx.now_ms);
    let copy = |timeline_of: &UserId, convers_with: &UserId, is_new, message| TimelineCopy {
        app: app.clone(),
        timeline_of: timeline_of.clone(),
        convers_with: convers_with.clone(),
        is_new,
        message,
        received_ms: ctx.now_ms,
    };
    let sent = Sealed::new(msg.clone().with_status(status::SENT));
    let sender_copy = Publish::copy(sender_key, copy(sender, recipient, false, sent), None);
    let delivered = Sealed::new(msg.with_status(status::DELIVERED));
    // The recipient's block list may veto its copy (§9); the sender's own copy, never.
    let recipient_copy = Publish::copy(
        recipient_key,
        copy(recipient, sender, true, delivered),
        Some(recipient.clone()),
    );
    Ok(Plan::publishes(vec![sender_copy, recipient_copy]))
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use crate::domain::RejectReason;
    use crate::handlers::testing;
    use crate::plan::{Plan, Rejection};
    use crate::topic::Topics;

    fn run_with(body: &str, sender: &str, recipient: &str) -> Result<Plan, Rejection> {
        let t = Topics::chat21("tilechat");
        let key = t.outgoing(sender, recipient);
        let input = crate::handlers::Input::parse(t.parse(&key)?, body.as_bytes())?;
        let settings = testing::settings();
        let ctx = crate::plan::Context {
            now_ms: 1_700_000_000_000,
            fresh_id: &|| "fresh-uuid".to_string(),
            group: None,
            settings: &settings,
        };
        crate::handlers::handle(&t, &input.inbound, input.payload, &ctx)
    }

    fn run(body: &str, recipient: &str) -> Result<Vec<(String, Value)>, Rejection> {
        let plan = run_with(body, "U1", recipient)?;
        Ok(plan
            .publishes
            .into_iter()
            .map(|p| {
                assert!(p.persistent);
                (p.key.clone(), serde_json::from_slice(p.bytes()).unwrap())
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
        assert_eq!(err("not json"), Rejection::Drop(RejectReason::NotJson));
        assert_eq!(err("[1,2]"), Rejection::Drop(RejectReason::NotObject));
        assert_eq!(err("\"s\""), Rejection::Drop(RejectReason::NotObject));
        assert_eq!(err(""), Rejection::Drop(RejectReason::NotJson));
    }

    #[test]
    fn overlong_keys_reject_the_whole_input() {
        // The seed layout's inbox key is 3 bytes longer than its outgoing key: an input that
        // fits can still name copies that do not.
        let t = Topics::seed("tilechat", "/p").unwrap();
        let (s, r) = ("s".repeat(116), "r".repeat(116));
        let got = testing::handled(&t, &t.outgoing(&s, &r), "{}", &[], &testing::settings());
        assert_eq!(got.unwrap_err(), Rejection::Drop(RejectReason::KeyTooLong));
    }

    #[test]
    fn only_trusted_senders_send_system_style_messages() {
        let body = r#"{"text":"U2 joined","attributes":{"subtype":"info","messagelabel":{"key":"MEMBER_JOINED_GROUP"},"a":1}}"#;
        let forged = run_with(body, "U1", "U2").unwrap();
        let m: Value = serde_json::from_slice(forged.publishes[1].bytes()).unwrap();
        assert_eq!(m["attributes"], json!({"a": 1}), "stripped from a user");
        let system = run_with(body, "system", "U2").unwrap();
        let m: Value = serde_json::from_slice(system.publishes[1].bytes()).unwrap();
        assert_eq!(m["attributes"]["subtype"], "info", "kept from a trusted sender");
        assert_eq!(m["attributes"]["messagelabel"]["key"], "MEMBER_JOINED_GROUP");
        let other = run_with(r#"{"attributes":{"subtype":"custom"}}"#, "U1", "U2").unwrap();
        let m: Value = serde_json::from_slice(other.publishes[1].bytes()).unwrap();
        assert_eq!(
            m["attributes"]["subtype"], "custom",
            "other subtypes are the client's own"
        );
    }
}
