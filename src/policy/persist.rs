//! Persistence hook (§11): every message copy that will be published lands in its timeline,
//! and in its conversation unless the message says `attributes.updateconversation: false`.
//! Runs last, so copies removed by earlier stages (block list) are not persisted either.

use super::{Facts, Stage, Verdict};
use crate::plan::{Plan, Write};
use crate::topic::Inbound;

pub struct PersistenceHook;

impl Stage for PersistenceHook {
    fn apply(&self, _input: &Inbound, mut plan: Plan, _facts: &Facts) -> Verdict {
        let mut writes = Vec::new();
        for copy in plan.copies() {
            writes.push(Write::Message(copy.clone()));
            if copy.message().updates_conversation() {
                writes.push(Write::Conversation(copy.clone()));
            }
        }
        plan.writes.extend(writes);
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::Topics;

    fn plan(body: &str) -> (Inbound, Plan) {
        let t = Topics::chat21("app");
        crate::handlers::testing::plan(&t, &t.outgoing("A", "B"), body, vec![])
    }

    #[test]
    fn both_timelines_and_conversations() {
        let (input, p) = plan(r#"{"text":"hi"}"#);
        let p = PersistenceHook.apply(&input, p, &Facts::none()).unwrap();
        assert_eq!(p.writes.len(), 4);
        let convs: Vec<_> = p
            .writes
            .iter()
            .filter_map(|w| match w {
                Write::Conversation(c) => Some((c.timeline_of.as_str(), c.is_new)),
                _ => None,
            })
            .collect();
        assert_eq!(convs, vec![("A", false), ("B", true)]);
    }

    #[test]
    fn updateconversation_false_leaves_conversations_alone() {
        let (input, p) = plan(r#"{"text":"hi","attributes":{"updateconversation":false}}"#);
        let p = PersistenceHook.apply(&input, p, &Facts::none()).unwrap();
        assert!(p.writes.iter().all(|w| matches!(w, Write::Message(_))));
        assert_eq!(p.writes.len(), 2);
    }

    #[test]
    fn chain_order_validate_then_persist() {
        let (input, mut p) = plan(r#"{"text":"hi"}"#);
        p.publishes[0].key = "k".repeat(300);
        assert_eq!(
            super::super::Chain::minimal(true).run(&input, p, &super::super::Facts::none()),
            Err(crate::domain::RejectReason::KeyTooLong.into())
        );
    }
}
