//! Content filter stage (PROTOCOL §10): the text of a message a user sends is judged by the
//! rules of the policy file (see `rules.rs`): too long or a `reject` pattern → refused, the
//! sender told (`content_rejected`); `mask` patterns → the text is replaced in every copy and
//! the message delivered. The rules can be swapped at run time (SIGHUP) without a pause: a
//! message is judged by the rules in force when it is planned.

use std::sync::{Arc, PoisonError, RwLock};

use super::rules::{Judgement, Policy};
use super::{Facts, Stage, Verdict};
use crate::domain::{RejectReason, Sealed};
use crate::plan::{Body, Plan};
use crate::topic::{Inbound, Topics};

pub struct ContentFilter {
    policy: RwLock<Arc<Policy>>,
    topics: Arc<Topics>,
}

impl ContentFilter {
    pub fn new(policy: Arc<Policy>, topics: Arc<Topics>) -> Self {
        ContentFilter {
            policy: RwLock::new(policy),
            topics,
        }
    }

    pub fn replace(&self, policy: Policy) {
        *self.policy.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(policy);
    }

    fn current(&self) -> Arc<Policy> {
        self.policy.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl Stage for ContentFilter {
    fn apply(&self, input: &Inbound, mut plan: Plan, _facts: &Facts) -> Verdict {
        let Inbound::Send { app, .. } = input else {
            return Ok(plan);
        };
        // Every copy of a message carries the same text.
        let Some(text) = plan.copies().next().and_then(|c| c.message().text()) else {
            return Ok(plan);
        };
        match self.current().rules(app).judge(text) {
            Judgement::Pass => Ok(plan),
            Judgement::Reject(why) => Err(super::refuse_send(
                &self.topics,
                input,
                &plan,
                RejectReason::ContentRejected,
                &why,
            )),
            Judgement::Mask(masked) => {
                // Copies share their message (a group fan-out has one for all members): reseal
                // each distinct message once.
                let mut resealed: Vec<(Arc<Sealed>, Arc<Sealed>)> = Vec::new();
                for p in &mut plan.publishes {
                    let Body::Copy(copy) = &mut p.body else { continue };
                    let done = resealed.iter().find(|(old, _)| Arc::ptr_eq(old, &copy.message));
                    let new = match done {
                        Some((_, new)) => new.clone(),
                        None => {
                            let mut m = copy.message().clone();
                            m.set_text(masked.clone());
                            let new = Sealed::new(m);
                            resealed.push((copy.message.clone(), new.clone()));
                            new
                        }
                    };
                    copy.message = new;
                }
                Ok(plan)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::testing::{group, plan};
    use crate::plan::Rejection;
    use serde_json::Value;

    fn run(filter: &ContentFilter, t: &Topics, to: &str, body: &str) -> Verdict {
        let (input, plan) = plan(t, &t.outgoing("A", to), body, vec![group("group-1", &["A", "B", "C"])]);
        filter.apply(&input, plan, &Facts::none())
    }

    fn refused(v: Verdict) -> (RejectReason, crate::plan::Publish) {
        match v {
            Err(Rejection::Refuse { reason, notice }) => (reason, *notice),
            other => panic!("not refused: {other:?}"),
        }
    }

    fn texts(p: &Verdict) -> Vec<String> {
        p.as_ref()
            .unwrap()
            .publishes
            .iter()
            .map(|p| {
                let v: Value = serde_json::from_slice(p.bytes()).unwrap();
                assert_eq!(p.timeline_copy().unwrap().message().text(), v["text"].as_str());
                v["text"].as_str().unwrap().to_string()
            })
            .collect()
    }

    #[test]
    fn mask_reject_and_reload() {
        let t = Arc::new(Topics::chat21("t"));
        let rules = "max_text_bytes = 30\n[[deny]]\npattern = \"secret\"\naction = \"mask\"\n\
                     [[deny]]\npattern = \"forbidden\"\naction = \"reject\"\n";
        let f = ContentFilter::new(Arc::new(Policy::compile_toml(rules).unwrap()), t.clone());
        assert_eq!(
            texts(&run(&f, &t, "B", r#"{"text":"a secret"}"#)),
            vec!["a ***", "a ***"]
        );
        // Group fan-out: every member copy and the group timeline are masked.
        let group_texts = texts(&run(&f, &t, "group-1", r#"{"text":"secret","channel_type":"group"}"#));
        assert_eq!(group_texts, vec!["***"; 4]);
        let (reason, notice) = refused(run(&f, &t, "B", r#"{"text":"forbidden"}"#));
        assert_eq!(reason, RejectReason::ContentRejected);
        let v: Value = serde_json::from_slice(notice.bytes()).unwrap();
        assert_eq!(
            (v["status"].as_i64(), v["error"]["code"].as_str()),
            (Some(-100), Some("content_rejected"))
        );
        assert_eq!(notice.key, "apps.t.users.A.messages.B.clientadded");
        let long = format!(r#"{{"text":"{}"}}"#, "x".repeat(31));
        assert_eq!(refused(run(&f, &t, "B", &long)).0, RejectReason::ContentRejected);
        // Reloaded rules apply to the next message.
        f.replace(Policy::compile_toml("").unwrap());
        assert!(run(&f, &t, "B", r#"{"text":"forbidden secret"}"#).is_ok());
    }
}
