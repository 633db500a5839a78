//! The policy chain (PROTOCOL §10): stages between a handler's plan and its effects.
//!
//! Order is fixed: validate → rate limit → block list → content filter → persistence hook.
//! This version has validate and the persistence hook; the others plug in as stages
//! without touching the handlers. A stage passes the plan on (possibly altered) or rejects
//! the whole input; it never does I/O (stages that need data get it from caches).

mod persist;
mod validate;

use crate::message::RejectReason;
use crate::plan::Plan;
use crate::topic::Inbound;

pub use persist::PersistenceHook;
pub use validate::Validate;

/// What a stage decides.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Go on with this plan (the same one, or altered).
    Pass(Plan),
    /// Drop the input with this reason.
    Reject(RejectReason),
}

pub trait Stage: Send + Sync {
    fn apply(&self, input: &Inbound, plan: Plan) -> Verdict;
}

/// The configured stages, in §10 order.
pub struct Chain {
    stages: Vec<Box<dyn Stage>>,
}

impl Chain {
    /// `persistence`: whether a store is configured (DATABASE_URL not `off`).
    pub fn new(persistence: bool) -> Self {
        let mut stages: Vec<Box<dyn Stage>> = vec![Box::new(Validate)];
        if persistence {
            stages.push(Box::new(PersistenceHook));
        }
        Chain { stages }
    }

    pub fn run(&self, input: &Inbound, mut plan: Plan) -> Result<Plan, RejectReason> {
        for (i, stage) in self.stages.iter().enumerate() {
            // A refusal notice (§8) only has to be publishable (stage 0, validate): the other
            // stages judge and persist messages, and a refused message is neither.
            if i > 0 && plan.rejected.is_some() {
                break;
            }
            plan = match stage.apply(input, plan) {
                Verdict::Pass(p) => p,
                Verdict::Reject(reason) => return Err(reason),
            };
        }
        Ok(plan)
    }
}
