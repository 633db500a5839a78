//! Group messages (PROTOCOL §4.1–§4.3): stored, inline ("volatile") and transient groups.
//!
//! Which one is decided by the store, not by the payload: a stored group's membership is
//! authoritative even when the payload also carries a `group` (a sender must not be able to
//! rewrite a stored group's member list); an inline `group.members` is used only for an id
//! the store does not know; with neither, the group is transient.

use serde_json::{Map, Value};
use std::sync::Arc;

use super::send::stamp;
use super::Halt;
use crate::group::{member_ids, GroupLookup};
use crate::message::{status, RejectReason};
use crate::plan::{Context, Plan, Publish, TimelineCopy};
use crate::topic::Topics;

pub(super) fn send(
    topics: &Topics,
    app: &str,
    sender: &str,
    group_id: &str,
    mut msg: Map<String, Value>,
    ctx: &Context,
) -> Result<Plan, Halt> {
    // The payload's shape first: a malformed `group` is refused whatever the store says.
    let inline = match msg.get("group") {
        None | Some(Value::Null) => None,
        Some(Value::Object(g)) => {
            let members = member_ids(g.get("members").unwrap_or(&Value::Null))?;
            if members.len() > ctx.settings.max_inline_group_members {
                return Err(RejectReason::TooManyMembers.into());
            }
            Some(members)
        }
        Some(_) => return Err(RejectReason::BadGroup.into()),
    };
    let stored = match (ctx.groups)(group_id) {
        GroupLookup::Unknown => return Err(Halt::NeedGroup(group_id.to_owned())),
        GroupLookup::Stored(g) => Some(g),
        GroupLookup::NotStored => None,
    };
    stamp(&mut msg, app, sender, group_id, ctx);
    if msg.get("channel_type").is_none_or(Value::is_null) {
        // Detected by the `group-` compat rule: say so, for clients and the store.
        msg.insert("channel_type".into(), "group".into());
    }
    let members: Vec<&str> = match (&stored, &inline) {
        (Some(g), _) => {
            if !g.is_member(sender) && !ctx.settings.trusted_senders.contains(sender) {
                // Fix D19: a non-member cannot write into a group; the sender is told.
                let key = topics.message_added(app, sender, group_id)?;
                let why = "the sender is not a member of this group";
                return Ok(Plan::refusal(key, msg, RejectReason::NotAMember, why));
            }
            g.members.iter().map(String::as_str).collect()
        }
        // Inline: the listed members plus the sender; transient: the sender alone. The group
        // timeline copy below makes "+ G itself".
        (None, inline) => {
            let mut m: Vec<&str> = inline.iter().flatten().map(String::as_str).collect();
            if !m.contains(&sender) {
                m.push(sender);
            }
            m
        }
    };
    let hidden_for = msg
        .get("attributes")
        .and_then(|a| a.get("hiddenFor"))
        .and_then(Value::as_str)
        .map(str::to_owned);

    // Every member copy has the same body: serialize it once, share the parsed message.
    msg.insert("status".into(), status::DELIVERED.into());
    let body = super::to_vec(&msg);
    let delivered = Arc::new(msg.clone());
    let mut publishes = Vec::with_capacity(members.len() + 1);
    // Fix D1: `hiddenFor` skips that member only, not every member after it.
    for m in members
        .into_iter()
        .filter(|m| *m != group_id && Some(*m) != hidden_for.as_deref())
    {
        publishes.push(Publish {
            key: topics.message_added(app, m, group_id)?,
            body: body.clone(),
            persistent: true,
            to: (m != sender).then(|| m.to_owned()),
            copy: Some(TimelineCopy {
                timeline_of: m.to_owned(),
                convers_with: group_id.to_owned(),
                is_new: m != sender,
                message: delivered.clone(),
            }),
        });
    }
    // The group's own timeline (history replay and `message-sent` use it).
    msg.insert("status".into(), status::SENT.into());
    let key = topics.message_added(app, group_id, group_id)?;
    publishes.push(super::send::copy(key, group_id, group_id, false, msg, None));
    Ok(Plan::publishes(publishes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::testing::{group, lookup_in, settings, with_ctx};
    use crate::handlers::Settings;
    use serde_json::json;

    fn run_with(body: &str, sender: &str, lookup: &dyn Fn(&str) -> GroupLookup, s: &Settings) -> Result<Plan, Halt> {
        let t = Topics::chat21("tilechat");
        let msg = crate::handlers::json_object(body.as_bytes()).map_err(Halt::Reject)?;
        with_ctx(lookup, s, |ctx| send(&t, "tilechat", sender, "G", msg, ctx))
    }

    /// (timeline, status, is_new) of every publish.
    fn run(body: &str, sender: &str) -> Result<Vec<(String, i64, Option<bool>)>, Halt> {
        let lookup = lookup_in(vec![group("G", &["A", "B", "C"])]);
        let plan = run_with(body, sender, &lookup, &settings())?;
        Ok(plan
            .publishes
            .iter()
            .map(|p| {
                let v: Value = serde_json::from_slice(&p.body).unwrap();
                let timeline = p.key.split('.').nth(3).unwrap().to_string();
                assert!(p.key.ends_with(".messages.G.clientadded"), "{}", p.key);
                (
                    timeline,
                    v["status"].as_i64().unwrap(),
                    p.copy.as_ref().map(|c| c.is_new),
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
        let lookup = lookup_in(vec![group("G", &["A", "B"])]);
        let plan = run_with(r#"{"text":"hi","sender":"X"}"#, "A", &lookup, &settings()).unwrap();
        for p in &plan.publishes {
            let v: Value = serde_json::from_slice(&p.body).unwrap();
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
        let plan = run_with(
            r#"{"text":"hi"}"#,
            "X",
            &lookup_in(vec![group("G", &["A"])]),
            &settings(),
        )
        .unwrap();
        assert_eq!(plan.rejected, Some(RejectReason::NotAMember));
        assert_eq!(plan.publishes.len(), 1);
        let p = &plan.publishes[0];
        assert_eq!(p.key, "apps.tilechat.users.X.messages.G.clientadded");
        assert!(p.copy.is_none(), "a refused message is not persisted");
        let v: Value = serde_json::from_slice(&p.body).unwrap();
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
        let lookup = lookup_in(vec![]);
        let body = r#"{"text":"hi","group":{"members":{"P":1,"Q":1}}}"#;
        let plan = run_with(body, "S", &lookup, &settings()).unwrap();
        let keys: Vec<&str> = plan
            .publishes
            .iter()
            .map(|p| p.key.split('.').nth(3).unwrap())
            .collect();
        assert_eq!(keys, vec!["P", "Q", "S", "G"]);
        let v: Value = serde_json::from_slice(&plan.publishes[0].body).unwrap();
        assert_eq!(v["group"], json!({"members":{"P":1,"Q":1}}));
    }

    #[test]
    fn inline_members_cannot_override_a_stored_group() {
        let out = run(r#"{"text":"hi","group":{"members":{"Z":1}}}"#, "A").unwrap();
        assert_eq!(timelines(&out), vec!["A", "B", "C", "G"]);
    }

    #[test]
    fn transient_group_reaches_sender_and_group_timeline() {
        let plan = run_with(r#"{"text":"first"}"#, "S", &lookup_in(vec![]), &settings()).unwrap();
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
    fn unknown_group_asks_for_a_lookup() {
        let unknown = |_: &str| GroupLookup::Unknown;
        assert_eq!(
            run_with(r#"{"text":"x"}"#, "A", &unknown, &settings()),
            Err(Halt::NeedGroup("G".into()))
        );
        // A malformed group field is refused before any lookup.
        assert_eq!(
            run_with(r#"{"group":3}"#, "A", &unknown, &settings()),
            Err(Halt::Reject(RejectReason::BadGroup))
        );
    }

    #[test]
    fn bad_inline_groups() {
        let lookup = lookup_in(vec![]);
        let s = Settings {
            max_inline_group_members: 2,
            ..settings()
        };
        let err = |b: &str| run_with(b, "S", &lookup, &s).unwrap_err();
        assert_eq!(err(r#"{"group":"x"}"#), Halt::Reject(RejectReason::BadGroup));
        assert_eq!(
            err(r#"{"group":{"members":[1]}}"#),
            Halt::Reject(RejectReason::BadGroup)
        );
        assert_eq!(err(r#"{"group":{}}"#), Halt::Reject(RejectReason::BadGroup));
        assert_eq!(
            err(r#"{"group":{"members":{"a.b":1}}}"#),
            Halt::Reject(RejectReason::InvalidId)
        );
        assert_eq!(
            err(r#"{"group":{"members":{"a":1,"b":1,"c":1}}}"#),
            Halt::Reject(RejectReason::TooManyMembers)
        );
    }
}
