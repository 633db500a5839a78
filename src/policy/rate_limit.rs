//! Rate limit stage (PROTOCOL §10): a token bucket per sender (governor, GCRA), for message
//! sends. `TRUSTED_SENDERS` are exempt. Over the limit the message is not delivered: the
//! sender gets its own copy with `status:-100` and `error:{code:"rate_limited"}`.
//!
//! Memory: one small state per sender seen recently; [`RateLimit::forget_idle`] (run every
//! minute) drops the buckets that have refilled — an idle sender costs nothing — so millions
//! of distinct senders over a day do not accumulate.

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::Arc;

use super::{Facts, Stage, Verdict};
use crate::domain::{RejectReason, UserId};
use crate::plan::Plan;
use crate::topic::{Inbound, Topics};

pub struct RateLimit {
    limiter: DefaultKeyedRateLimiter<UserId>,
    trusted: HashSet<UserId>,
    topics: Arc<Topics>,
    per_minute: NonZeroU32,
}

impl RateLimit {
    pub fn new(per_minute: NonZeroU32, burst: NonZeroU32, trusted: HashSet<UserId>, topics: Arc<Topics>) -> Self {
        let quota = Quota::per_minute(per_minute).allow_burst(burst);
        RateLimit {
            limiter: RateLimiter::keyed(quota),
            trusted,
            topics,
            per_minute,
        }
    }

    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.limiter.len()
    }
}

impl Stage for RateLimit {
    fn apply(&self, input: &Inbound, plan: Plan, _facts: &Facts) -> Verdict {
        let Inbound::Send { sender, .. } = input else {
            return Ok(plan);
        };
        if self.trusted.contains(sender) || self.limiter.check_key(sender).is_ok() {
            return Ok(plan);
        }
        let why = format!("more than {} messages a minute", self.per_minute);
        Err(super::refuse_send(
            &self.topics,
            input,
            &plan,
            RejectReason::RateLimited,
            &why,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::testing::plan;
    use crate::plan::Rejection;

    fn send(stage: &RateLimit, t: &Topics, sender: &str) -> Verdict {
        let (input, plan) = plan(t, &t.outgoing(sender, "R"), r#"{"text":"hi"}"#, vec![]);
        stage.apply(&input, plan, &Facts::none())
    }

    #[test]
    fn over_the_limit_the_sender_is_told_and_trusted_senders_are_exempt() {
        let t = Arc::new(Topics::chat21("t"));
        let n = |v| NonZeroU32::new(v).unwrap();
        let stage = RateLimit::new(n(60), n(3), HashSet::from(["system".into()]), t.clone());
        for _ in 0..3 {
            assert!(send(&stage, &t, "S").is_ok());
        }
        let Err(Rejection::Refuse { reason, notice: p }) = send(&stage, &t, "S") else {
            panic!("refused, the sender told")
        };
        assert_eq!(reason, RejectReason::RateLimited);
        assert_eq!(p.key, "apps.t.users.S.messages.R.clientadded");
        let v: serde_json::Value = serde_json::from_slice(p.bytes()).unwrap();
        assert_eq!(
            (v["status"].as_i64(), v["error"]["code"].as_str()),
            (Some(-100), Some("rate_limited"))
        );
        assert_eq!(v["text"], "hi");
        // Another sender has its own bucket; a trusted one has none.
        assert!(send(&stage, &t, "S2").is_ok());
        for _ in 0..10 {
            assert!(send(&stage, &t, "system").is_ok());
        }
        assert_eq!(stage.tracked(), 2);
    }

    #[test]
    fn idle_senders_are_forgotten() {
        let t = Arc::new(Topics::chat21("t"));
        let n = |v| NonZeroU32::new(v).unwrap();
        // A token every 100 ms, bucket of one: a sender's state is back to "full" (and is
        // dropped) within two token periods of its last message.
        let stage = RateLimit::new(n(600), n(1), HashSet::new(), t.clone());
        assert!(send(&stage, &t, "S1").is_ok());
        assert!(send(&stage, &t, "S2").is_ok());
        stage.forget_idle();
        assert_eq!(stage.tracked(), 2, "still refilling");
        std::thread::sleep(std::time::Duration::from_millis(300));
        stage.forget_idle();
        assert_eq!(stage.tracked(), 0, "full buckets cost nothing");
    }
}
