//! Group messages (PROTOCOL §4.1–§4.3): stored, inline ("volatile") and transient groups.
//!
//! Which one is decided by the store, not by the payload: a stored group's membership is
//! authoritative even when the payload also carries a `group` (a sender must not be able to
//! rewrite a stored group's member list); an inline `group.members` is used only for an id
//! the store does not know; with neither, the group is transient.

use crate::domain::{status, AppId, Message, RejectReason, Sealed, UserId};
use crate::plan::{Context, Plan, Publish, Rejection, TimelineCopy};
use crate::topic::Topics;

pub(super) fn send(
    topics: &Topics,
    app: &AppId,
    sender: &UserId,
    group_id: &UserId,
    mut msg: Message,
    ctx: &Context,
) -> Result<Plan, Rejection> {
    // The payload's shape first: a malformed `group` is refused whatever the store says.
    let inline = msg.inline_members()?;
    if inline
        .as_ref()
        .is_some_and(|m| m.len() > ctx.settings.max_inline_group_members)
    {
        return Err(RejectReason::TooManyMembers.into());
    }
    let stored = ctx.group.as_ref().filter(|g| &g.uid == group_id);
    msg.stamp(app, sender, group_id, ctx.fresh_id, ctx.now_ms);
    msg.mark_group();
    let members: Vec<&UserId> = match (stored, &inline) {
        (Some(g), _) => {
            if !g.is_member(sender) && !ctx.settings.trusted_senders.contains(sender) {
                // Fix D19: a non-member cannot write into a group; the sender is told.
                let key = topics.message_added(app, sender, group_id)?;
                let why = "the sender is not a member of this group";
                return Err(Rejection::refuse(key, msg, RejectReason::NotAMember, why));
            }
            g.members.iter().collect()
        }
        // Inline: the listed members plus the sender; transient: the sender alone. The group
        // timeline copy below makes "+ G itself".
        (None, inline) => {
            let mut m: Vec<&UserId> = inline.iter().flatten().collect();
            if !m.contains(&sender) {
                m.push(sender);
            }
            m
        }
    };
    let hidden_for = msg.hidden_for().map(str::to_owned);

    // Every member copy carries the same message: sealed (serialized) once, shared.
    let delivered = Sealed::new(msg.clone().with_status(status::DELIVERED));
    // Shared here, but each copy is framed for the broker and stored on its own: one message
    // must not amplify into unbounded memory and store work.
    let copies = members.len() + 1;
    if delivered.json().len().saturating_mul(copies) > ctx.settings.max_fanout_bytes {
        let key = topics.message_added(app, sender, group_id)?;
        let why = format!(
            "{copies} copies of {} bytes exceed the fan-out budget of {} bytes",
            delivered.json().len(),
            ctx.settings.max_fanout_bytes
        );
        return Err(Rejection::refuse(key, msg.identity(), RejectReason::TooLarge, &why));
    }
    let mut publishes = Vec::with_capacity(members.len() + 1);
    // Fix D1: `hiddenFor` skips that member only, not every member after it.
    for m in members
        .into_iter()
        .filter(|m| *m != group_id && Some(m.as_str()) != hidden_for.as_deref())
    {
        let copy = TimelineCopy {
            app: app.clone(),
            timeline_of: m.clone(),
            convers_with: group_id.clone(),
            is_new: m != sender,
            message: delivered.clone(),
            received_ms: ctx.now_ms,
        };
        let to = (m != sender).then(|| m.clone());
        publishes.push(Publish::copy(topics.message_added(app, m, group_id)?, copy, to));
    }
    // The group's own timeline (history replay and `message-sent` use it). The id of a group
    // the store does not know is whatever the sender wrote — possibly a user's, and that
    // timeline is that user's inbox: so the user's block list may veto it like any copy.
    let key = topics.message_added(app, group_id, group_id)?;
    let sent = Sealed::new(msg.with_status(status::SENT));
    let veto = stored.is_none().then(|| group_id.clone());
    let timeline = TimelineCopy {
        app: app.clone(),
        timeline_of: group_id.clone(),
        convers_with: group_id.clone(),
        is_new: false,
        message: sent,
        received_ms: ctx.now_ms,
    };
    publishes.push(Publish::copy(key, timeline, veto));
    Ok(Plan::publishes(publishes))
}

#[cfg(test)]
mod tests {
    use crate::domain::{Group, RejectReason};
    use crate::handlers::testing::{group, handled, settings};
    use crate::handlers::Settings;
    use crate::plan::{Plan, Rejection};
    use crate::topic::Topics;
    use serde_json::{json, Value};
    use std::sync::Arc;

    fn run_with(body: &str, sender: &str, groups: &[Arc<Group>], s: &Settings) -> Result<Plan, Rejection> {
        let t = Topics::chat21("tilechat");
        let body = match serde_json::from_str::<Value>(body) {
            // Group messages by channel, whatever the test body says.
            Ok(Value::Object(mut m)) => {
                m.entry("channel_type").or_insert("group".into());
                Value::Object(m).to_string()
            }
            _ => body.to_string(),
        };
        handled(&t, &t.outgoing(sender, "G"), &body, groups, s)
    }

    /// (timeline, status, is_new) of every publish.
    fn run(body: &str, sender: &str) -> Result<Vec<(String, i64, Option<bool>)>, Rejection> {
        let plan = run_with(body, sender, &[group("G", &["A", "B", "C"])], &settings())?;
        Ok(plan
            .publishes
            .iter()
            .map(|p| {
                let v: Value = serde_json::from_slice(p.bytes()).unwrap();
                let timeline = p.key.split('.').nth(3).unwrap().to_string();
                assert!(p.key.ends_with(".messages.G.clientadded"), "{}", p.key);
                (
                    timeline,
                    v["status"].as_i64().unwrap(),
                    p.timeline_copy().map(|c| c.is_new),
                )
            })
            .collect())
    }

    fn timelines(out: &[(String, i64, Option<bool>)]) -> Vec<&str> {
        out.iter().map(|(t, _, _)| t.as_str()).collect()
    }

    #[test]
    fn stored_group_fans_out_in_member_order_then_group_timeline() {
        let out = run(r#"{"text":"hi","channel_type":"group"}"#, "A").unwrap();
        assert_eq!(
            out,
            vec![
                ("A".into(), 150, Some(false)),
                ("B".into(), 150, Some(true)),
                ("C".into(), 150, Some(true)),
                ("G".into(), 100, Some(false)),
            ]
        );
    }

    #[test]
    fn copies_carry_the_engine_fields() {
        let plan = run_with(
            r#"{"text":"hi","sender":"X"}"#,
            "A",
            &[group("G", &["A", "B"])],
            &settings(),
        )
        .unwrap();
        for p in &plan.publishes {
            let v: Value = serde_json::from_slice(p.bytes()).unwrap();
            assert_eq!((v["sender"].as_str(), v["recipient"].as_str()), (Some("A"), Some("G")));
            assert_eq!(v["channel_type"], "group");
            assert_eq!(v["message_id"], "id");
            assert_eq!(v["app_id"], "tilechat");
        }
    }

    #[test]
    fn hidden_for_skips_that_member_only() {
        let out = run(r#"{"text":"hi","attributes":{"hiddenFor":"B"}}"#, "A").unwrap();
        assert_eq!(timelines(&out), vec!["A", "C", "G"]);
    }

    #[test]
    fn non_member_is_refused_and_told() {
        let refused = run_with(r#"{"text":"hi"}"#, "X", &[group("G", &["A"])], &settings()).unwrap_err();
        let Rejection::Refuse { reason, notice: p } = refused else {
            panic!("the sender is told")
        };
        assert_eq!(reason, RejectReason::NotAMember);
        assert_eq!(p.key, "apps.tilechat.users.X.messages.G.clientadded");
        assert!(p.timeline_copy().is_none(), "a refused message is not persisted");
        let v: Value = serde_json::from_slice(p.bytes()).unwrap();
        assert_eq!(v["status"], -100);
        assert_eq!(v["error"]["code"], "not_a_member");
    }

    #[test]
    fn trusted_sender_reaches_members_without_a_copy_of_its_own() {
        let out = run(r#"{"text":"hi"}"#, "system").unwrap();
        assert_eq!(timelines(&out), vec!["A", "B", "C", "G"]);
    }

    #[test]
    fn inline_group_members_plus_sender_keep_the_group_field() {
        let body = r#"{"text":"hi","group":{"members":{"P":1,"Q":1}}}"#;
        let plan = run_with(body, "S", &[], &settings()).unwrap();
        let keys: Vec<&str> = plan
            .publishes
            .iter()
            .map(|p| p.key.split('.').nth(3).unwrap())
            .collect();
        assert_eq!(keys, vec!["P", "Q", "S", "G"]);
        let v: Value = serde_json::from_slice(plan.publishes[0].bytes()).unwrap();
        assert_eq!(v["group"], json!({"members":{"P":1,"Q":1}}));
    }

    #[test]
    fn inline_members_cannot_override_a_stored_group() {
        let out = run(r#"{"text":"hi","group":{"members":{"Z":1}}}"#, "A").unwrap();
        assert_eq!(timelines(&out), vec!["A", "B", "C", "G"]);
    }

    #[test]
    fn transient_group_reaches_sender_and_group_timeline() {
        let plan = run_with(r#"{"text":"first"}"#, "S", &[], &settings()).unwrap();
        let keys: Vec<&str> = plan.publishes.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "apps.tilechat.users.S.messages.G.clientadded",
                "apps.tilechat.users.G.messages.G.clientadded"
            ]
        );
    }

    #[test]
    fn a_malformed_group_field_is_refused_whatever_the_store_says() {
        assert_eq!(
            run_with(r#"{"group":3}"#, "A", &[group("G", &["A"])], &settings()),
            Err(Rejection::Drop(RejectReason::BadGroup))
        );
    }

    #[test]
    fn bad_inline_groups() {
        let s = Settings {
            max_inline_group_members: 2,
            ..settings()
        };
        let err = |b: &str| run_with(b, "S", &[], &s).unwrap_err();
        assert_eq!(err(r#"{"group":"x"}"#), Rejection::Drop(RejectReason::BadGroup));
        assert_eq!(
            err(r#"{"group":{"members":[1]}}"#),
            Rejection::Drop(RejectReason::BadGroup)
        );
        assert_eq!(err(r#"{"group":{}}"#), Rejection::Drop(RejectReason::BadGroup));
        assert_eq!(
            err(r#"{"group":{"members":{"a.b":1}}}"#),
            Rejection::Drop(RejectReason::InvalidId)
        );
        assert_eq!(
            err(r#"{"group":{"members":{"a":1,"b":1,"c":1}}}"#),
            Rejection::Drop(RejectReason::TooManyMembers)
        );
    }
}
