//! Block list stage (PROTOCOL §9): a delivery to someone who blocked the sender is removed.
//! A direct message then reaches only the sender's own timeline (status 100: the sender is
//! not told), a group member who blocked the sender gets no copy, and typing is dropped. The
//! persistence hook runs after this stage, so a removed copy is not stored either.

use std::sync::Arc;

use super::{Facts, Stage, Verdict};
use crate::domain::UserId;
use crate::metrics::Metrics;
use crate::plan::Plan;
use crate::topic::Inbound;

pub struct BlockList {
    metrics: Arc<Metrics>,
}

impl BlockList {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        BlockList { metrics }
    }
}

/// Who the block lists are checked against: the author of a message or of typing.
pub fn author(input: &Inbound) -> Option<&UserId> {
    match input {
        Inbound::Send { sender, .. } => Some(sender),
        Inbound::Typing { me, .. } => Some(me),
        _ => None,
    }
}

impl Stage for BlockList {
    fn apply(&self, input: &Inbound, mut plan: Plan, facts: &Facts) -> Verdict {
        let Some(author) = author(input) else {
            return Ok(plan);
        };
        let before = plan.publishes.len();
        plan.publishes.retain(|p| match &p.to {
            Some(to) if to != author => !(facts.blocked)(to, author),
            _ => true,
        });
        let removed = before - plan.publishes.len();
        if removed > 0 {
            self.metrics.blocked(removed as u64);
        }
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::testing;
    use crate::topic::Topics;

    fn plan(t: &Topics, key: &str, body: &str) -> (Inbound, Plan) {
        testing::plan(t, key, body, vec![testing::group("group-1", &["A", "B", "C"])])
    }

    fn keys(v: Verdict) -> Vec<String> {
        v.unwrap().publishes.into_iter().map(|p| p.key).collect()
    }

    #[test]
    fn blocked_deliveries_are_removed_and_nothing_else() {
        let t = Topics::chat21("t");
        let stage = BlockList::new(Metrics::new());
        let b_blocks_a = |user: &UserId, other: &UserId| user == "B" && other == "A";
        let facts = Facts { blocked: &b_blocks_a };
        // Direct: A keeps its own copy; B's is gone.
        let (input, p) = plan(&t, &t.outgoing("A", "B"), r#"{"text":"x"}"#);
        assert_eq!(
            keys(stage.apply(&input, p, &facts)),
            vec!["apps.t.users.A.messages.B.clientadded"]
        );
        // The other way round is not blocked.
        let (input, p) = plan(&t, &t.outgoing("B", "A"), r#"{"text":"x"}"#);
        assert_eq!(keys(stage.apply(&input, p, &facts)).len(), 2);
        // Group: only B's copy is removed.
        let (input, p) = plan(&t, &t.outgoing("A", "group-1"), r#"{"text":"x"}"#);
        let got = keys(stage.apply(&input, p, &facts));
        assert_eq!(got.len(), 3);
        assert!(!got.iter().any(|k| k.contains(".users.B.")));
        // Typing.
        let (input, p) = plan(&t, &t.typing("t", "A", "B"), r#"{"typing":true}"#);
        assert!(keys(stage.apply(&input, p, &facts)).is_empty());
    }
}
