//! The policy chain (PROTOCOL §10): stages between a handler's plan and its effects.
//!
//! Order is fixed: validate → rate limit → block list → content filter → persistence hook.
//! Why this order: malformed plans never cost a token; a throttled sender is refused before
//! any other work; block lists remove deliveries before the filter looks at what is left; and
//! persistence runs last, so it stores exactly what will be delivered.
//!
//! A stage passes the plan on (possibly altered), turns it into a refusal the sender is told
//! about (`Plan::refusal`), or rejects the whole input. A stage never does I/O: what it needs
//! from the store (block lists) is loaded before the chain runs, in one batch, and handed in
//! as [`Facts`]; a rejection by one stage is about that input only.

mod block_list;
mod content;
mod persist;
mod rate_limit;
mod rules;
mod validate;

use std::sync::Arc;

use crate::message::RejectReason;
use crate::plan::Plan;
use crate::topic::{Inbound, Topics};

pub use block_list::BlockList;
pub use content::ContentFilter;
pub use persist::PersistenceHook;
pub use rate_limit::RateLimit;
pub use rules::{Policy, PolicyError};
pub use validate::Validate;

/// What a stage decides.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Go on with this plan (the same one, or altered).
    Pass(Plan),
    /// Drop the input with this reason.
    Reject(RejectReason),
}

/// What the stages may know about the world, loaded before the chain runs.
pub struct Facts<'a> {
    /// Has `user` blocked `other`? Every receiver of the plan's deliveries is known.
    pub blocked: &'a dyn Fn(&str, &str) -> bool,
}

impl Facts<'_> {
    /// No block lists (unit tests, inputs without deliveries).
    pub fn none() -> Facts<'static> {
        Facts { blocked: &|_, _| false }
    }
}

/// Refuse a message send and tell the sender (§8): its own copy of the planned message, at its
/// own timeline's key, with `status:-100` and `error:{code: reason, reason: why}`.
fn refuse_send(topics: &Topics, input: &Inbound, plan: &Plan, reason: RejectReason, why: &str) -> Verdict {
    let Inbound::Send { app, sender, recipient } = input else {
        return Verdict::Reject(reason);
    };
    let Some(copy) = plan.publishes.iter().find_map(|p| p.copy.as_ref()) else {
        return Verdict::Reject(reason);
    };
    match topics.message_added(app, sender, recipient) {
        Ok(key) => Verdict::Pass(Plan::refusal(key, (*copy.message).clone(), reason, why)),
        Err(bad_key) => Verdict::Reject(bad_key),
    }
}

pub trait Stage: Send + Sync {
    fn apply(&self, input: &Inbound, plan: Plan, facts: &Facts) -> Verdict;
}

/// The configured stages, in §10 order.
pub struct Chain {
    stages: Vec<Box<dyn Stage>>,
    rate_limit: Option<Arc<RateLimit>>,
    content: Option<Arc<ContentFilter>>,
}

/// A stage shared with the chain's owner (for housekeeping and reloads).
impl<S: Stage> Stage for Arc<S> {
    fn apply(&self, input: &Inbound, plan: Plan, facts: &Facts) -> Verdict {
        S::apply(self, input, plan, facts)
    }
}

impl Chain {
    pub fn new(cfg: &crate::config::Config, topics: Arc<Topics>, metrics: Arc<crate::metrics::Metrics>) -> Self {
        let mut stages: Vec<Box<dyn Stage>> = vec![Box::new(Validate)];
        let rate_limit = cfg.rate_limit.map(|(per_minute, burst)| {
            Arc::new(RateLimit::new(
                per_minute,
                burst,
                cfg.trusted_senders.clone(),
                topics.clone(),
            ))
        });
        if let Some(r) = &rate_limit {
            stages.push(Box::new(r.clone()));
        }
        stages.push(Box::new(BlockList::new(metrics)));
        let content = cfg.policy.clone().map(|p| Arc::new(ContentFilter::new(p, topics)));
        if let Some(c) = &content {
            stages.push(Box::new(c.clone()));
        }
        if cfg.store.is_some() {
            stages.push(Box::new(PersistenceHook));
        }
        Chain {
            stages,
            rate_limit,
            content,
        }
    }

    /// Validate and persistence only (unit tests of other parts).
    pub fn minimal(persistence: bool) -> Self {
        let mut stages: Vec<Box<dyn Stage>> = vec![Box::new(Validate)];
        if persistence {
            stages.push(Box::new(PersistenceHook));
        }
        Chain {
            stages,
            rate_limit: None,
            content: None,
        }
    }

    pub fn run(&self, input: &Inbound, mut plan: Plan, facts: &Facts) -> Result<Plan, RejectReason> {
        for (i, stage) in self.stages.iter().enumerate() {
            // A refusal notice (§8) only has to be publishable (stage 0, validate): the other
            // stages judge and persist messages, and a refused message is neither.
            if i > 0 && plan.rejected.is_some() {
                break;
            }
            plan = match stage.apply(input, plan, facts) {
                Verdict::Pass(p) => p,
                Verdict::Reject(reason) => return Err(reason),
            };
        }
        Ok(plan)
    }

    /// Periodic upkeep: forget idle rate-limit buckets so memory follows active senders.
    pub fn housekeeping(&self) {
        if let Some(r) = &self.rate_limit {
            r.forget_idle();
        }
    }

    /// Replace the content rules (SIGHUP). Without a POLICY_FILE at start there is nothing to
    /// reload.
    pub fn reload_policy(&self, policy: Policy) -> bool {
        match &self.content {
            Some(c) => {
                c.replace(policy);
                true
            }
            None => false,
        }
    }
}
