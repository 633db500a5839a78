//! I8, a trusted service created or changed a group (PROTOCOL §4.4): store it (the caller
//! also refreshes the group cache from the write, so the next message sees the new
//! membership), then tell every `notify_to` user.

use std::sync::Arc;

use crate::domain::commands::GroupUpdate;
use crate::domain::{AppId, Group, RejectReason};
use crate::plan::{Context, Plan, Publish, Write};
use crate::topic::Topics;

pub(super) fn group_update(
    topics: &Topics,
    app: &AppId,
    update: GroupUpdate,
    ctx: &Context,
) -> Result<Plan, RejectReason> {
    let GroupUpdate {
        group: object,
        notify_to,
    } = update;
    // `notification` (what changed, for the members' devices) is told, not kept.
    let mut kept = object.clone();
    kept.remove("notification");
    let group = Group::from_object(app, &kept, ctx.now_ms)?;
    // The app is the topic's (fix D22), whatever `group.appId` says.
    let publishes = notify_to
        .iter()
        .map(|m| Ok(Publish::json(topics.group_updated(app, m, &group.uid)?, &object)))
        .collect::<Result<Vec<_>, RejectReason>>()?;
    Ok(Plan {
        publishes,
        writes: vec![Write::Group(Arc::new(group))],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::testing::{handled, settings};
    use crate::plan::Rejection;

    fn run(body: &str) -> Result<Plan, RejectReason> {
        let t = Topics::chat21("tilechat");
        handled(&t, &t.group_update("tilechat"), body, &[], &settings()).map_err(|r| r.reason())
    }

    #[test]
    fn rejections_are_dropped_not_told() {
        let t = Topics::chat21("tilechat");
        let got = handled(&t, &t.group_update("tilechat"), "{}", &[], &settings());
        assert_eq!(got, Err(Rejection::Drop(RejectReason::BadGroup)));
    }

    #[test]
    fn stores_and_notifies() {
        let plan = run(
            r#"{"group":{"uid":"g1","appId":"other","name":"N","members":{"A":1,"B":1},"notification":{"messagelabel":{"key":"MEMBER_JOINED_GROUP"}}},"notify_to":{"A":1,"C":1}}"#,
        )
        .unwrap();
        let keys: Vec<&str> = plan.publishes.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "apps.tilechat.users.A.groups.g1.clientupdated",
                "apps.tilechat.users.C.groups.g1.clientupdated"
            ]
        );
        let v: serde_json::Value = serde_json::from_slice(plan.publishes[0].bytes()).unwrap();
        assert_eq!(v["name"], "N");
        assert_eq!(v["notification"]["messagelabel"]["key"], "MEMBER_JOINED_GROUP", "told");
        let [Write::Group(g)] = plan.writes.as_slice() else {
            panic!()
        };
        assert_eq!((g.uid.as_str(), g.app_id.as_str()), ("g1", "tilechat"));
        assert_eq!(g.members, vec!["A", "B"]);
        assert!(!g.object.contains_key("notification"), "not kept");
    }

    #[test]
    fn bad_updates() {
        assert_eq!(run(r#"{"group":{"uid":"g"}}"#).unwrap_err(), RejectReason::BadGroup);
        assert_eq!(
            run(r#"{"group":{"uid":"g"},"notify_to":[]}"#).unwrap_err(),
            RejectReason::BadGroup
        );
        assert_eq!(
            run(r#"{"group":"g","notify_to":{}}"#).unwrap_err(),
            RejectReason::BadGroup
        );
        assert_eq!(
            run(r#"{"group":{"name":"x"},"notify_to":{}}"#).unwrap_err(),
            RejectReason::BadGroup
        );
        assert_eq!(
            run(r#"{"group":{"uid":"g","members":7},"notify_to":{}}"#).unwrap_err(),
            RejectReason::BadGroup
        );
        assert_eq!(
            run(r#"{"group":{"uid":"g"},"notify_to":{"a b":1}}"#).unwrap_err(),
            RejectReason::InvalidId
        );
    }
}
