//! Content filter stage (PROTOCOL §10): the text of a message a user sends is judged by the
//! rules of the policy file (see `rules.rs`): too long or a `reject` pattern → refused, the
//! sender told (`content_rejected`); `mask` patterns → the text is replaced in every copy and
//! the message delivered. The rules can be swapped at run time (SIGHUP) without a pause: a
//! message is judged by the rules in force when it is planned.

use serde_json::{Map, Value};
use std::sync::{Arc, PoisonError, RwLock};

use super::rules::{Judgement, Policy};
use super::{Facts, Stage, Verdict};
use crate::message::RejectReason;
use crate::plan::Plan;
use crate::topic::{Inbound, Topics};

type Message = Arc<Map<String, Value>>;

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
            return Verdict::Pass(plan);
        };
        // Every copy of a message carries the same text.
        let Some(first) = plan.publishes.iter().find_map(|p| p.copy.as_ref()) else {
            return Verdict::Pass(plan);
        };
        let Some(text) = first.message.get("text").and_then(Value::as_str) else {
            return Verdict::Pass(plan);
        };
        match self.current().rules(app).judge(text) {
            Judgement::Pass => Verdict::Pass(plan),
            Judgement::Reject(why) => {
                super::refuse_send(&self.topics, input, &plan, RejectReason::ContentRejected, &why)
            }
            Judgement::Mask(masked) => {
                // Copies share their message (a group fan-out has one for all members): rewrite
                // each distinct message once.
                let mut rewritten: Vec<(Message, Message, Vec<u8>)> = Vec::new();
                for p in &mut plan.publishes {
                    let Some(copy) = p.copy.as_mut() else { continue };
                    let done = rewritten.iter().find(|(old, _, _)| Arc::ptr_eq(old, &copy.message));
                    let (new, body) = match done {
                        Some((_, new, body)) => (new.clone(), body.clone()),
                        None => {
                            let mut m = (*copy.message).clone();
                            m.insert("text".into(), masked.clone().into());
                            let body = serde_json::to_vec(&m).unwrap_or_default();
                            let new = Arc::new(m);
                            rewritten.push((copy.message.clone(), new.clone(), body.clone()));
                            (new, body)
                        }
                    };
                    copy.message = new;
                    p.body = body;
                }
                Verdict::Pass(plan)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::testing::{group, plan};

    fn run(filter: &ContentFilter, t: &Topics, to: &str, body: &str) -> Plan {
        let (input, plan) = plan(t, &t.outgoing("A", to), body, vec![group("group-1", &["A", "B", "C"])]);
        let Verdict::Pass(p) = filter.apply(&input, plan, &Facts::none()) else {
            panic!()
        };
        p
    }

    fn texts(p: &Plan) -> Vec<String> {
        p.publishes
            .iter()
            .map(|p| {
                let v: Value = serde_json::from_slice(&p.body).unwrap();
                assert_eq!(p.copy.as_ref().unwrap().message["text"], v["text"]);
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
        let refused = run(&f, &t, "B", r#"{"text":"forbidden"}"#);
        assert_eq!(refused.rejected, Some(RejectReason::ContentRejected));
        let v: Value = serde_json::from_slice(&refused.publishes[0].body).unwrap();
        assert_eq!(
            (v["status"].as_i64(), v["error"]["code"].as_str()),
            (Some(-100), Some("content_rejected"))
        );
        assert_eq!(refused.publishes[0].key, "apps.t.users.A.messages.B.clientadded");
        let long = format!(r#"{{"text":"{}"}}"#, "x".repeat(31));
        assert_eq!(run(&f, &t, "B", &long).rejected, Some(RejectReason::ContentRejected));
        // Reloaded rules apply to the next message.
        f.replace(Policy::compile_toml("").unwrap());
        assert!(run(&f, &t, "B", r#"{"text":"forbidden secret"}"#).rejected.is_none());
    }
}
