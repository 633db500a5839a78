//! The policy chain (PROTOCOL §10): stages between a handler's plan and its effects.
//!
//! Order is fixed: rate limit (at admission, [`Chain::admit`]) → validate → block list →
//! content filter → persistence hook. Why this order: a throttled user is refused before any
//! other work, above all before any store read the handler would need (a group, block
//! lists); block lists remove deliveries before the filter looks at what is left; and
//! persistence runs last, so it stores exactly what will be delivered.
//!
//! A stage passes the plan on (possibly altered) or rejects the input ([`Rejection`]: dropped,
//! or refused with the sender told). A stage never does I/O: what it needs from the store
//! (block lists) is loaded before the chain runs, in one batch, and handed in as [`Facts`]; a
//! rejection by one stage is about that input only.

mod block_list;
mod content;
mod persist;
mod rate_limit;
mod rules;
mod validate;

use std::sync::Arc;

use crate::domain::{RejectReason, UserId};
use crate::plan::{Plan, Rejection};
use crate::topic::{Inbound, Topics};

pub use block_list::BlockList;
pub use content::ContentFilter;
pub use persist::PersistenceHook;
pub use rate_limit::{Budgets, RateLimit};
pub use rules::{Policy, PolicyError};
pub use validate::Validate;

/// What a stage decides: go on with this plan (the same one, or altered), or reject the input.
pub type Verdict = Result<Plan, Rejection>;

/// What the stages may know about the world, loaded before the chain runs.
pub struct Facts<'a> {
    /// Has `user` blocked `other`? Every receiver of the plan's deliveries is known.
    pub blocked: &'a dyn Fn(&UserId, &UserId) -> bool,
}

impl Facts<'_> {
    /// No block lists (unit tests, inputs without deliveries).
    pub fn none() -> Facts<'static> {
        Facts { blocked: &|_, _| false }
    }
}

/// Refuse a message send and tell the sender (§8): its own copy of the planned message, at its
/// own timeline's key, with `status:-100` and `error:{code: reason, reason: why}`.
fn refuse_send(topics: &Topics, input: &Inbound, plan: &Plan, reason: RejectReason, why: &str) -> Rejection {
    let Inbound::Send { app, sender, recipient } = input else {
        return reason.into();
    };
    let Some(copy) = plan.copies().next() else {
        return reason.into();
    };
    match topics.message_added(app, sender, recipient) {
        Ok(key) => Rejection::refuse(key, copy.message().clone(), reason, why),
        Err(bad_key) => bad_key.into(),
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

/// Which stages run, and with what: built where the engine is assembled.
pub struct ChainSettings {
    /// Rate limits per user, for messages and for each kind of command.
    pub rate_limit: Budgets,
    /// Exempt from the rate limits.
    pub trusted_senders: std::collections::HashSet<UserId>,
    /// The compiled policy file, if one is configured.
    pub policy: Option<Arc<Policy>>,
    /// A store is configured: the persistence hook runs.
    pub persistence: bool,
}

impl Chain {
    pub fn new(settings: ChainSettings, topics: Arc<Topics>, metrics: Arc<crate::metrics::Metrics>) -> Self {
        let mut stages: Vec<Box<dyn Stage>> = vec![Box::new(Validate)];
        let rate_limit =
            RateLimit::new(settings.rate_limit, settings.trusted_senders.clone(), topics.clone()).map(Arc::new);
        stages.push(Box::new(BlockList::new(metrics)));
        let content = settings.policy.map(|p| Arc::new(ContentFilter::new(p, topics)));
        if let Some(c) = &content {
            stages.push(Box::new(c.clone()));
        }
        if settings.persistence {
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

    /// The first stage, before the handler and any store read: is the input within its
    /// user's rate limits?
    pub fn admit(&self, input: &crate::handlers::Input, now_ms: i64) -> Result<(), Rejection> {
        match &self.rate_limit {
            Some(r) => r.admit(input, now_ms),
            None => Ok(()),
        }
    }

    /// After the handler: what a message's fan-out costs its sender's budget.
    pub fn charge_fan_out(&self, input: &Inbound, plan: &Plan) -> Result<(), Rejection> {
        match &self.rate_limit {
            Some(r) => r.charge_fan_out(input, plan),
            None => Ok(()),
        }
    }

    /// What messages sent on `user`'s behalf cost its budget (see [`RateLimit::charge`]).
    pub fn charge(&self, user: &crate::domain::UserId, messages: usize, copies: usize) -> Result<(), RejectReason> {
        match &self.rate_limit {
            Some(r) => r.charge(user, messages, copies),
            None => Ok(()),
        }
    }

    pub fn run(&self, input: &Inbound, mut plan: Plan, facts: &Facts) -> Verdict {
        for stage in &self.stages {
            plan = stage.apply(input, plan, facts)?;
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
