//! First stage: whatever a handler planned must be publishable. Handlers already render
//! keys through `topic`, so this is the guard that keeps a future handler's mistake from
//! reaching the broker (which would close the channel on an over-long key).

use super::{Facts, Stage, Verdict};
use crate::domain::RejectReason;
use crate::plan::Plan;
use crate::topic::{Inbound, MAX_KEY_BYTES};

pub struct Validate;

impl Stage for Validate {
    fn apply(&self, _input: &Inbound, plan: Plan, _facts: &Facts) -> Verdict {
        if plan
            .publishes
            .iter()
            .any(|p| p.key.is_empty() || p.key.len() > MAX_KEY_BYTES)
        {
            return Err(RejectReason::KeyTooLong.into());
        }
        Ok(plan)
    }
}
