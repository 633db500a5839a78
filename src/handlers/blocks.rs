//! I7, block list commands (PROTOCOL §9): `…users.{me}.blocks.{other}.add|remove`, payload
//! ignored. Stored, applied to the block cache when planned (so the very next message is
//! judged by it), and echoed to the user's devices.

use serde_json::json;

use crate::domain::{AppId, RejectReason, UserId};
use crate::plan::{Context, Plan, Publish, Write};
use crate::topic::Topics;

pub(super) fn block(
    topics: &Topics,
    app: &AppId,
    me: &UserId,
    other: &UserId,
    add: bool,
    ctx: &Context,
) -> Result<Plan, RejectReason> {
    let key = topics.block_event(app, me, other, add)?;
    let echo = json!({"user_id": me, "blocked_user_id": other, "blocked": add, "timestamp": ctx.now_ms});
    Ok(Plan {
        publishes: vec![Publish::json(key, &echo)],
        writes: vec![Write::Block {
            app: app.clone(),
            user: me.clone(),
            other: other.clone(),
            add,
            at_ms: ctx.now_ms,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::testing::{handled, settings};

    #[test]
    fn block_is_stored_and_echoed() {
        let t = Topics::chat21("t");
        for (add, verb) in [(true, "clientadded"), (false, "clientdeleted")] {
            let plan = handled(&t, &t.block("t", "me", "x", add), "", &[], &settings()).unwrap();
            assert_eq!(plan.publishes[0].key, format!("apps.t.users.me.blocks.x.{verb}"));
            assert!(matches!(&plan.writes[..], [Write::Block { add: a, .. }] if *a == add));
        }
    }
}
