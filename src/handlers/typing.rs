//! I6, typing (PROTOCOL §7): `{"typing":bool}` forwarded as `{"user_id":me,"typing":…}` to the
//! other party, or to every member of a group but the typist. Transient (delivery_mode 1) and
//! never persisted: a typing indicator is worthless a few seconds later.

use serde_json::json;

use crate::domain::commands::Typing;
use crate::domain::{AppId, RejectReason, UserId};
use crate::plan::{Context, Plan, Publish};
use crate::topic::Topics;

pub(super) fn typing(
    topics: &Topics,
    app: &AppId,
    me: &UserId,
    with: &UserId,
    payload: &Typing,
    ctx: &Context,
) -> Result<Plan, RejectReason> {
    let note = json!({"user_id": me, "typing": payload.typing});
    // Transient, and subject to the receiver's block list (§9: S is left out of R's typing).
    let transient = |key: String, to: &UserId| {
        let mut p = Publish::json(key, &note);
        p.persistent = false;
        p.to = Some(to.clone());
        p
    };
    if !payload.in_group {
        return Ok(Plan::publishes(vec![transient(
            topics.typing_updated(app, with, me)?,
            with,
        )]));
    }
    let publishes = match ctx.group.as_ref().filter(|g| &g.uid == with) {
        // A transient or inline group has no one to tell beyond the typist.
        None => Vec::new(),
        Some(g) => {
            if !g.is_member(me) && !ctx.settings.trusted_senders.contains(me) {
                return Err(RejectReason::NotAMember);
            }
            g.members
                .iter()
                .filter(|m| *m != me && *m != with)
                .map(|m| Ok(transient(topics.typing_updated(app, m, with)?, m)))
                .collect::<Result<_, RejectReason>>()?
        }
    };
    Ok(Plan::publishes(publishes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::testing::{group, handled, settings};
    use crate::plan::Rejection;

    fn run(body: &str, me: &str, with: &str) -> Result<Plan, Rejection> {
        let t = Topics::chat21("t");
        let groups = [group("group-1", &["A", "B", "C"])];
        handled(&t, &t.typing("t", me, with), body, &groups, &settings())
    }

    #[test]
    fn direct_typing_is_forwarded_transient() {
        let plan = run(r#"{"typing":true}"#, "A", "B").unwrap();
        let [p] = plan.publishes.as_slice() else { panic!() };
        assert_eq!(p.key, "apps.t.users.B.typing.A.clientupdated");
        assert!(!p.persistent && p.timeline_copy().is_none());
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(p.bytes()).unwrap(),
            json!({"user_id":"A","typing":true})
        );
        assert!(plan.writes.is_empty());
    }

    #[test]
    fn group_typing_reaches_the_other_members() {
        let plan = run(r#"{"typing":false}"#, "B", "group-1").unwrap();
        let keys: Vec<&str> = plan.publishes.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "apps.t.users.A.typing.group-1.clientupdated",
                "apps.t.users.C.typing.group-1.clientupdated"
            ]
        );
        assert_eq!(
            run(r#"{"typing":true}"#, "X", "group-1").unwrap_err(),
            Rejection::Drop(RejectReason::NotAMember)
        );
        assert!(run(r#"{"typing":true}"#, "X", "group-2").unwrap().publishes.is_empty());
    }

    #[test]
    fn bad_typing() {
        for body in ["{}", r#"{"typing":"yes"}"#] {
            assert_eq!(
                run(body, "A", "B").unwrap_err(),
                Rejection::Drop(RejectReason::BadPayload)
            );
        }
    }
}
