//! Rate limits (PROTOCOL §10): a token bucket per user (governor, GCRA) for every input a
//! user sends — messages with `RATE_LIMIT_PER_MIN`/`RATE_LIMIT_BURST`, and each kind of
//! command (receipts, conversation updates, archives, presence, typing, blocks) with its own
//! bucket of `RATE_LIMIT_COMMANDS_PER_MIN`. Checked at admission, before the input costs any
//! other work — above all before any store read (a group lookup, block lists): a flood of
//! messages to unknown groups must not become a flood of queries. `TRUSTED_SENDERS` and the
//! trusted services' inputs (group updates, history replays) are exempt.
//!
//! Over the limit a message is not delivered: the sender gets its own copy with
//! `status:-100` and `error:{code:"rate_limited"}`. A command is dropped (counted, logged).
//!
//! Memory: one small state per user seen recently; [`RateLimit::forget_idle`] (run every
//! minute) drops the buckets that have refilled — an idle user costs nothing — so millions
//! of distinct users over a day do not accumulate.

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::Arc;

use crate::domain::{RejectReason, UserId};
use crate::handlers::{refuse_unplanned, Input, Payload};
use crate::plan::{Plan, Rejection};
use crate::topic::{Inbound, Topics};

/// The configured budgets: (per minute, burst).
#[derive(Debug, Clone, Copy, Default)]
pub struct Budgets {
    pub messages: Option<(NonZeroU32, NonZeroU32)>,
    pub commands: Option<NonZeroU32>,
}

/// Copies of one message that cost one message of the sender's budget, beyond the two every
/// direct message makes.
pub const COPIES_PER_MESSAGE: usize = 10;

/// The input kinds that are user commands, each with its own bucket.
const COMMANDS: [&str; 6] = [
    "receipt",
    "conversation_update",
    "archive",
    "presence",
    "typing",
    "block",
];

pub struct RateLimit {
    messages: Option<(DefaultKeyedRateLimiter<UserId>, NonZeroU32)>,
    /// The message bucket's size (a fan-out never costs more than a full bucket).
    burst: NonZeroU32,
    commands: HashMap<&'static str, DefaultKeyedRateLimiter<UserId>>,
    trusted: HashSet<UserId>,
    topics: Arc<Topics>,
}

impl RateLimit {
    /// `None` when no budget is configured at all.
    pub fn new(budgets: Budgets, trusted: HashSet<UserId>, topics: Arc<Topics>) -> Option<Self> {
        if budgets.messages.is_none() && budgets.commands.is_none() {
            return None;
        }
        let messages = budgets.messages.map(|(per_minute, burst)| {
            (
                RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst)),
                per_minute,
            )
        });
        let commands = match budgets.commands {
            Some(per_minute) => COMMANDS
                .iter()
                .map(|kind| (*kind, RateLimiter::keyed(Quota::per_minute(per_minute))))
                .collect(),
            None => HashMap::new(),
        };
        Some(RateLimit {
            messages,
            burst: budgets.messages.map_or(NonZeroU32::MIN, |(_, burst)| burst),
            commands,
            trusted,
            topics,
        })
    }

    /// Within its user's budget, or the rejection (a message's sender is told).
    pub fn admit(&self, input: &Input, now_ms: i64) -> Result<(), Rejection> {
        let inbound = &input.inbound;
        let user = match inbound {
            Inbound::Send { sender, .. } => sender,
            Inbound::Receipt { me, .. }
            | Inbound::ConversationUpdate { me, .. }
            | Inbound::Archive { me, .. }
            | Inbound::Typing { me, .. }
            | Inbound::Block { me, .. } => me,
            Inbound::Presence { user, .. } => user,
            // Trusted services only (users cannot publish these keys).
            Inbound::GroupUpdate { .. } | Inbound::HistoryReplay { .. } => return Ok(()),
        };
        if self.trusted.contains(user) {
            return Ok(());
        }
        if let Inbound::Send { sender, .. } = inbound {
            let Some((limiter, per_minute)) = &self.messages else {
                return Ok(());
            };
            if limiter.check_key(sender).is_ok() {
                return Ok(());
            }
            let Payload::Message(msg) = &input.payload else {
                return Err(RejectReason::RateLimited.into());
            };
            let why = format!("more than {per_minute} messages a minute");
            return Err(refuse_unplanned(
                &self.topics,
                inbound,
                msg.clone(),
                now_ms,
                RejectReason::RateLimited,
                &why,
            ));
        }
        match self.commands.get(inbound.kind()) {
            Some(limiter) if limiter.check_key(user).is_err() => Err(RejectReason::RateLimited.into()),
            _ => Ok(()),
        }
    }

    /// After planning: a message that fans out costs more of its sender's budget — every
    /// [`COPIES_PER_MESSAGE`] copies beyond a direct message's two count as one more message
    /// (at most a whole bucket, so a message to a huge group can still pass a full bucket).
    /// The first message's token was taken at admission; a refusal tells the sender.
    pub fn charge_fan_out(&self, input: &Inbound, plan: &Plan) -> Result<(), Rejection> {
        let (Inbound::Send { sender, .. }, Some((limiter, per_minute))) = (input, &self.messages) else {
            return Ok(());
        };
        let copies = plan.copies().count();
        if copies <= 2 || self.trusted.contains(sender) {
            return Ok(());
        }
        let extra = (copies - 2).div_ceil(COPIES_PER_MESSAGE) as u32;
        let extra = NonZeroU32::new(extra.min(self.burst.get())).unwrap_or(NonZeroU32::MIN);
        match limiter.check_key_n(sender, extra) {
            Ok(Ok(())) => Ok(()),
            _ => {
                let why = format!(
                    "more than {per_minute} messages a minute ({copies} copies count as {})",
                    extra.get() + 1
                );
                Err(super::refuse_send(
                    &self.topics,
                    input,
                    plan,
                    RejectReason::RateLimited,
                    &why,
                ))
            }
        }
    }

    /// Charge `user`'s message budget for `messages` messages of `copies` copies each, sent on
    /// its behalf by someone exempt (the system messages and replays an HTTP group change
    /// makes): the same weight as if `user` had sent them, at most a whole bucket per call.
    /// `RateLimited` when the budget does not cover it (nothing is taken then).
    pub fn charge(&self, user: &UserId, messages: usize, copies: usize) -> Result<(), RejectReason> {
        let Some((limiter, _)) = &self.messages else {
            return Ok(());
        };
        if messages == 0 || self.trusted.contains(user) {
            return Ok(());
        }
        let each = 1 + copies.saturating_sub(2).div_ceil(COPIES_PER_MESSAGE);
        let cost = messages.saturating_mul(each).min(self.burst.get() as usize) as u32;
        match limiter.check_key_n(user, NonZeroU32::new(cost).unwrap_or(NonZeroU32::MIN)) {
            Ok(Ok(())) => Ok(()),
            _ => Err(RejectReason::RateLimited),
        }
    }

    pub fn forget_idle(&self) {
        let limiters = self.messages.iter().map(|(l, _)| l).chain(self.commands.values());
        for limiter in limiters {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.messages.iter().map(|(l, _)| l.len()).sum::<usize>()
            + self.commands.values().map(|l| l.len()).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(t: &Topics, key: &str, body: &str) -> Input {
        Input::parse(t.parse(key).unwrap(), body.as_bytes()).unwrap()
    }

    fn send(stage: &RateLimit, t: &Topics, sender: &str) -> Result<(), Rejection> {
        stage.admit(&input(t, &t.outgoing(sender, "R"), r#"{"text":"hi"}"#), 7)
    }

    fn n(v: u32) -> NonZeroU32 {
        NonZeroU32::new(v).unwrap()
    }

    fn messages(per_minute: u32, burst: u32) -> Budgets {
        Budgets {
            messages: Some((n(per_minute), n(burst))),
            commands: None,
        }
    }

    #[test]
    fn over_the_limit_the_sender_is_told_and_trusted_senders_are_exempt() {
        let t = Arc::new(Topics::chat21("t"));
        let stage = RateLimit::new(messages(60, 3), HashSet::from(["system".into()]), t.clone()).unwrap();
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
        // A token every 100 ms, bucket of one: a sender's state is back to "full" (and is
        // dropped) within two token periods of its last message.
        let stage = RateLimit::new(messages(600, 1), HashSet::new(), t.clone()).unwrap();
        assert!(send(&stage, &t, "S1").is_ok());
        assert!(send(&stage, &t, "S2").is_ok());
        stage.forget_idle();
        assert_eq!(stage.tracked(), 2, "still refilling");
        std::thread::sleep(std::time::Duration::from_millis(300));
        stage.forget_idle();
        assert_eq!(stage.tracked(), 0, "full buckets cost nothing");
    }

    #[test]
    fn every_command_kind_has_its_own_budget() {
        let t = Arc::new(Topics::chat21("t"));
        let budgets = Budgets {
            messages: None,
            commands: Some(n(2)),
        };
        let stage = RateLimit::new(budgets, HashSet::new(), t.clone()).unwrap();
        let typing = input(&t, &t.typing("t", "U", "V"), r#"{"typing":true}"#);
        let receipt = input(&t, &t.receipt("t", "U", "V", "m"), r#"{"status":200}"#);
        assert!(stage.admit(&typing, 7).is_ok() && stage.admit(&typing, 7).is_ok());
        assert_eq!(stage.admit(&typing, 7), Err(Rejection::Drop(RejectReason::RateLimited)));
        assert!(stage.admit(&receipt, 7).is_ok(), "typing's bucket is not the receipts'");
        let other = input(&t, &t.typing("t", "W", "V"), r#"{"typing":true}"#);
        assert!(stage.admit(&other, 7).is_ok(), "nor another user's");
        assert!(send(&stage, &t, "U").is_ok(), "no message budget configured");
        let update = input(
            &t,
            &t.group_update("t"),
            r#"{"group":{"uid":"g","members":{}},"notify_to":{}}"#,
        );
        for _ in 0..5 {
            assert!(stage.admit(&update, 7).is_ok(), "trusted services are exempt");
        }
        assert!(RateLimit::new(Budgets::default(), HashSet::new(), t).is_none());
    }

    #[test]
    fn a_fan_out_costs_its_copies() {
        let t = Arc::new(Topics::chat21("t"));
        let stage = RateLimit::new(messages(60, 5), HashSet::from(["system".into()]), t.clone()).unwrap();
        let members: serde_json::Map<String, serde_json::Value> =
            (0..20).map(|i| (format!("m{i}"), 1.into())).collect();
        let body =
            serde_json::json!({"text": "all", "channel_type": "group", "group": {"members": members}}).to_string();
        let (inbound, plan) = crate::handlers::testing::plan(&t, &t.outgoing("S", "G"), &body, vec![]);
        // 20 members + the sender + the group timeline = 22 copies: 1 + 2 more messages.
        assert_eq!(plan.copies().count(), 22);
        let admit = |sender: &str| stage.admit(&input(&t, &t.outgoing(sender, "G"), &body), 7);
        assert!(admit("S").is_ok());
        assert!(stage.charge_fan_out(&inbound, &plan).is_ok(), "3 of 5 tokens");
        assert!(admit("S").is_ok(), "a fourth");
        match stage.charge_fan_out(&inbound, &plan) {
            Err(Rejection::Refuse { reason, .. }) => assert_eq!(reason, RejectReason::RateLimited),
            other => panic!("{other:?}"),
        }
        // Trusted senders and direct messages are not charged for copies.
        let (system, plan_s) = crate::handlers::testing::plan(&t, &t.outgoing("system", "G"), &body, vec![]);
        for _ in 0..10 {
            assert!(stage.charge_fan_out(&system, &plan_s).is_ok());
        }
    }
}
