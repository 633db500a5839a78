//! The pipeline's ordering and cache behaviour, with an in-memory store: no broker, no
//! database.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::domain::{Group, RejectReason};
use crate::handlers::testing::settings;
use crate::plan::{Body, Write};
use crate::store::StoreError;

/// A store in memory that counts its reads and can fail the next few.
#[derive(Default)]
struct Memory {
    groups: Mutex<HashMap<UserId, Group>>,
    blocks: Mutex<HashMap<UserId, HashSet<UserId>>>,
    group_reads: AtomicUsize,
    block_reads: AtomicUsize,
    /// Users asked for in each block-list read.
    block_batches: Mutex<Vec<usize>>,
    fail_next: AtomicUsize,
    corrupt_groups: Mutex<HashSet<UserId>>,
}

impl Memory {
    fn fail(&self) -> Result<(), StoreError> {
        let left = self.fail_next.load(Ordering::SeqCst);
        if left > 0 {
            self.fail_next.store(left - 1, Ordering::SeqCst);
            return Err(StoreError::Url("down".into()).into_transient());
        }
        Ok(())
    }

    /// What a commit of these writes leaves in the store.
    fn commit(&self, writes: &[Write]) {
        for w in writes {
            match w {
                Write::Group(g) => {
                    self.groups.lock().unwrap().insert(g.uid.clone(), (**g).clone());
                }
                Write::Block { user, other, add, .. } => {
                    let mut blocks = self.blocks.lock().unwrap();
                    let set = blocks.entry(user.clone()).or_default();
                    if *add {
                        set.insert(other.clone());
                    } else {
                        set.remove(other);
                    }
                }
                _ => {}
            }
        }
    }
}

impl Lookups for Memory {
    async fn group(&self, _app: &AppId, uid: &UserId) -> Result<Option<Group>, StoreError> {
        self.group_reads.fetch_add(1, Ordering::SeqCst);
        self.fail()?;
        if self.corrupt_groups.lock().unwrap().contains(uid) {
            return Err(StoreError::Corrupt {
                table: "groups",
                key: uid.to_string(),
                why: "test".into(),
            });
        }
        Ok(self.groups.lock().unwrap().get(uid).cloned())
    }

    async fn block_lists(
        &self,
        _app: &AppId,
        users: &[UserId],
    ) -> Result<HashMap<UserId, HashSet<UserId>>, StoreError> {
        self.block_reads.fetch_add(1, Ordering::SeqCst);
        self.fail()?;
        self.block_batches.lock().unwrap().push(users.len());
        let blocks = self.blocks.lock().unwrap();
        Ok(users
            .iter()
            .map(|u| (u.clone(), blocks.get(u).cloned().unwrap_or_default()))
            .collect())
    }
}

impl StoreError {
    /// A transient error for the tests (the variant matters only for `is_transient`).
    fn into_transient(self) -> StoreError {
        StoreError::Db(sqlx::Error::PoolTimedOut)
    }
}

/// A pipeline with the persistence hook and caches of `cache` slots.
fn pipeline(cache: u64) -> Pipeline {
    let topics = Arc::new(Topics::chat21("t"));
    let metrics = Metrics::new();
    let chain = Chain::new(
        crate::policy::ChainSettings {
            rate_limit: crate::policy::Budgets::default(),
            trusted_senders: HashSet::new(),
            policy: None,
            persistence: true,
        },
        topics.clone(),
        metrics.clone(),
    );
    let caches = CacheSizes {
        groups: cache,
        blocks: cache,
        ttl: Duration::from_secs(60),
    };
    Pipeline::new(topics, chain, settings(), caches, metrics, true)
}

async fn decide(p: &Pipeline, store: &Memory, key: &str, body: &str) -> Decision {
    let input = Input::parse(p.topics().parse(key).unwrap(), body.as_bytes()).unwrap();
    p.decide(input, store, 1, &CancellationToken::new())
        .await
        .expect("no shutdown")
}

/// Decide, then commit like the writer and hand the result back like the consumer.
async fn decide_and_commit(p: &Pipeline, store: &Memory, key: &str, body: &str) -> Plan {
    let d = decide(p, store, key, body).await.expect("delivered");
    store.commit(&d.plan.writes);
    p.committed(&d.changes, &Committed::default());
    d.plan
}

fn timelines(plan: &Plan) -> Vec<String> {
    plan.publishes
        .iter()
        .map(|p| p.key.split('.').nth(3).unwrap().to_string())
        .collect()
}

fn group_update(uid: &str, members: &[&str]) -> String {
    let members: serde_json::Map<_, _> = members.iter().map(|m| (m.to_string(), 1.into())).collect();
    serde_json::json!({"group": {"uid": uid, "members": members}, "notify_to": {}}).to_string()
}

const GROUP_MSG: &str = r#"{"text":"hi","channel_type":"group"}"#;

#[tokio::test]
async fn a_group_update_applies_to_the_next_message_before_its_commit() {
    // A cache too small to hold the group: only the uncommitted overlay keeps it.
    let (p, store) = (pipeline(1), Memory::default());
    let t = p.topics().clone();
    let update = decide(&p, &store, &t.group_update("t"), &group_update("G", &["A", "B"]))
        .await
        .unwrap();
    let plan = decide(&p, &store, &t.outgoing("A", "G"), GROUP_MSG).await.unwrap().plan;
    assert_eq!(timelines(&plan), vec!["A", "B", "G"]);
    assert_eq!(
        store.group_reads.load(Ordering::SeqCst),
        0,
        "the planned update answered, not the store"
    );
    // Committed: from now on the store is asked (the cache cannot hold it).
    store.commit(&update.plan.writes);
    p.committed(&update.changes, &Committed::default());
    let plan = decide(&p, &store, &t.outgoing("A", "G"), GROUP_MSG).await.unwrap().plan;
    assert_eq!(timelines(&plan), vec!["A", "B", "G"]);
    assert_eq!(store.group_reads.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_miss_reads_the_store_once_then_the_cache_answers() {
    let (p, store) = (pipeline(1000), Memory::default());
    let t = p.topics().clone();
    decide_and_commit(&p, &store, &t.group_update("t"), &group_update("G", &["A", "B", "C"])).await;
    let p = pipeline(1000); // a fresh engine: empty caches, the group in the store
    for _ in 0..3 {
        let plan = decide_and_commit(&p, &store, &t.outgoing("A", "G"), GROUP_MSG).await;
        assert_eq!(timelines(&plan), vec!["A", "B", "C", "G"]);
    }
    assert_eq!(store.group_reads.load(Ordering::SeqCst), 1);
    // An unknown id is looked up once too: then it is known not to be stored (transient).
    for _ in 0..3 {
        let plan = decide_and_commit(&p, &store, &t.outgoing("A", "H"), GROUP_MSG).await;
        assert_eq!(timelines(&plan), vec!["A", "H"]);
    }
    assert_eq!(store.group_reads.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn block_lists_of_every_receiver_are_read_in_one_batch() {
    let (p, store) = (pipeline(1000), Memory::default());
    let t = p.topics().clone();
    decide_and_commit(
        &p,
        &store,
        &t.group_update("t"),
        &group_update("G", &["A", "B", "C", "D"]),
    )
    .await;
    store
        .blocks
        .lock()
        .unwrap()
        .insert("C".into(), HashSet::from(["A".into()]));
    let plan = decide_and_commit(&p, &store, &t.outgoing("A", "G"), GROUP_MSG).await;
    assert_eq!(timelines(&plan), vec!["A", "B", "D", "G"], "C blocked A");
    assert_eq!(*store.block_batches.lock().unwrap(), vec![3], "B, C and D in one read");
    // Cached now: the next message reads nothing.
    decide_and_commit(&p, &store, &t.outgoing("A", "G"), GROUP_MSG).await;
    assert_eq!(store.block_reads.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_block_command_judges_the_very_next_message() {
    let (p, store) = (pipeline(1000), Memory::default());
    let t = p.topics().clone();
    let block = decide(&p, &store, &t.block("t", "B", "A", true), "").await.unwrap();
    // Not committed yet: still applied.
    let plan = decide(&p, &store, &t.outgoing("A", "B"), r#"{"text":"x"}"#)
        .await
        .unwrap()
        .plan;
    assert_eq!(timelines(&plan), vec!["A"], "only the sender's own copy");
    store.commit(&block.plan.writes);
    p.committed(&block.changes, &Committed::default());
    decide_and_commit(&p, &store, &t.block("t", "B", "A", false), "").await;
    let plan = decide_and_commit(&p, &store, &t.outgoing("A", "B"), r#"{"text":"x"}"#).await;
    assert_eq!(timelines(&plan), vec!["A", "B"]);
}

#[tokio::test]
async fn store_reads_are_retried_until_the_store_answers() {
    let (p, store) = (pipeline(1000), Memory::default());
    let t = p.topics().clone();
    store
        .groups
        .lock()
        .unwrap()
        .insert("G".into(), (*crate::handlers::testing::group("G", &["A", "B"])).clone());
    store.fail_next.store(2, Ordering::SeqCst);
    let plan = decide_and_commit(&p, &store, &t.outgoing("A", "G"), GROUP_MSG).await;
    assert_eq!(timelines(&plan), vec!["A", "B", "G"]);
    assert_eq!(store.group_reads.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn shutdown_while_the_store_is_down_gives_the_input_back() {
    let (p, store) = (pipeline(1000), Memory::default());
    let t = p.topics().clone();
    store.fail_next.store(usize::MAX, Ordering::SeqCst);
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.cancel();
    });
    let input = Input::parse(t.parse(&t.outgoing("A", "G")).unwrap(), GROUP_MSG.as_bytes()).unwrap();
    assert!(p.decide(input, &store, 1, &shutdown).await.is_none());
}

#[tokio::test]
async fn a_corrupt_group_row_does_not_stall_the_inputs() {
    let (p, store) = (pipeline(1000), Memory::default());
    let t = p.topics().clone();
    store.corrupt_groups.lock().unwrap().insert("G".into());
    let plan = decide_and_commit(&p, &store, &t.outgoing("A", "G"), GROUP_MSG).await;
    assert_eq!(timelines(&plan), vec!["A", "G"], "taken as not stored");
    assert_eq!(store.group_reads.load(Ordering::SeqCst), 1, "not retried");
}

#[tokio::test]
async fn rejections_are_decisions() {
    let (p, store) = (pipeline(1000), Memory::default());
    let t = p.topics().clone();
    decide_and_commit(&p, &store, &t.group_update("t"), &group_update("G", &["A"])).await;
    let Err(Rejection::Refuse { reason, notice }) = decide(&p, &store, &t.outgoing("X", "G"), GROUP_MSG).await else {
        panic!("a non-member is refused and told");
    };
    assert_eq!(reason, RejectReason::NotAMember);
    assert!(matches!(notice.body, Body::Json(_)), "a notice is not a timeline copy");
    let dropped = decide(
        &p,
        &store,
        &t.group_update("t"),
        r#"{"group":{"name":"no uid"},"notify_to":{}}"#,
    )
    .await;
    assert_eq!(dropped.unwrap_err(), Rejection::Drop(RejectReason::BadGroup));
    // A payload that says nothing is rejected before any lookup.
    let ignored = Input::parse(t.parse(&t.receipt("t", "A", "B", "m1")).unwrap(), br#"{"status":300}"#);
    assert_eq!(ignored.unwrap_err(), RejectReason::Ignored);
}

#[tokio::test]
async fn messages_are_persisted_as_delivered() {
    let (p, store) = (pipeline(1000), Memory::default());
    let t = p.topics().clone();
    let plan = decide_and_commit(&p, &store, &t.outgoing("A", "B"), r#"{"text":"x"}"#).await;
    let stored: Vec<(&str, &str)> = plan
        .writes
        .iter()
        .map(|w| match w {
            Write::Message(c) => ("message", c.timeline_of.as_str()),
            Write::Conversation(c) => ("conversation", c.timeline_of.as_str()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        stored,
        vec![
            ("message", "A"),
            ("conversation", "A"),
            ("message", "B"),
            ("conversation", "B")
        ]
    );
}

/// The whole pipeline (admission, handlers, policy chain, caches, the in-memory store) driven
/// by generated inputs, valid and broken — routing keys made of the grammar's words and of
/// hostile ones (`%`-escapes, `{claims}`, U+FFFD, wildcards, empty and overlong words), and
/// bodies from well-formed messages to NUL texts, far-future stamps, member maps with bad
/// ids, system-style attributes, deep nesting and non-JSON. For every input: no panic, and
/// either a plan whose publishes are all well-formed outputs, or a rejection. The suite runs
/// `FUZZ_CASES` (default 5,000) inputs; the README's figure is a run of 1,000,000:
/// `FUZZ_CASES=1000000 cargo test --release --lib fuzz -- --nocapture`.
mod fuzz {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    fn word() -> impl Strategy<Value = String> {
        prop_oneof![
            16 => "[A-Za-z0-9_-]{1,12}",
            1 => Just(String::new()),
            1 => "[%{}*#+/ .\u{FFFD}\u{0}]{1,3}[a-z]{0,3}",
            1 => Just("%55%31".to_string()),
            1 => Just("{app_id}".to_string()),
            1 => Just("group-x".to_string()),
            1 => Just("system".to_string()),
            1 => "[a-z]{120,140}",
            1 => any::<String>().prop_map(|s| s.chars().take(20).collect()),
        ]
    }

    fn key() -> impl Strategy<Value = String> {
        let fixed = prop_oneof![
            Just("apps"),
            Just("t"),
            Just("users"),
            Just("outgoing"),
            Just("messages"),
            Just("observer"),
            Just("update"),
            Just("conversations"),
            Just("archive"),
            Just("presence"),
            Just("typing"),
            Just("blocks"),
            Just("add"),
            Just("remove"),
            Just("groups"),
            Just("delivered"),
            Just("clientadded"),
        ];
        let shaped = (word(), word(), word()).prop_flat_map(|(a, b, c)| {
            prop_oneof![
                Just(format!("apps.t.outgoing.users.{a}.messages.{b}.outgoing")),
                Just(format!("apps.t.users.{a}.messages.{b}.{c}.update")),
                Just(format!("apps.t.users.{a}.conversations.{b}.update")),
                Just(format!("apps.t.users.{a}.conversations.{b}.archive")),
                Just(format!("apps.t.users.{a}.presence.{b}")),
                Just(format!("apps.t.users.{a}.typing.{b}")),
                Just(format!("apps.t.users.{a}.blocks.{b}.add")),
                Just(format!("apps.t.users.{a}.blocks.{b}.remove")),
                Just("apps.observer.t.groups.update".to_string()),
                Just(format!("apps.observer.t.users.{a}.messages.{b}.delivered")),
                Just(format!("apps.{a}.outgoing.users.{b}.messages.{c}.outgoing")),
            ]
        });
        prop_oneof![
            8 => shaped,
            1 => proptest::collection::vec(prop_oneof![fixed.prop_map(str::to_string), word()], 0..10).prop_map(|w| w.join(".")),
            1 => any::<String>(),
        ]
    }

    fn body() -> impl Strategy<Value = String> {
        use serde_json::{json, Value};
        let text = prop_oneof![Just("hi".to_string()), Just("a\u{0}b".to_string()), "\\PC{0,40}"];
        let stamp = prop_oneof![
            Just(json!(1)),
            Just(json!(9_000_000_000_000_000i64)),
            Just(json!(-5)),
            Just(json!(1e300)),
            Just(json!("x"))
        ];
        let members = proptest::collection::vec(word(), 0..6)
            .prop_map(|ms| Value::Object(ms.into_iter().map(|m| (m, json!(1))).collect()));
        let message = (text, stamp, members, any::<bool>(), any::<bool>(), word()).prop_map(
            |(text, ts, members, group, info, id)| {
                let mut m = json!({"text": text, "timestamp": ts, "message_id": id});
                if group {
                    m["channel_type"] = json!("group");
                    m["group"] = json!({"uid": "group-x", "members": members.clone()});
                    m["notify_to"] = members;
                }
                if info {
                    m["attributes"] =
                        json!({"subtype": "info", "messagelabel": {"key": "MEMBER_JOINED_GROUP"}, "hiddenFor": "A"});
                }
                m.to_string()
            },
        );
        prop_oneof![
            6 => message,
            1 => prop_oneof![Just(r#"{"status":200}"#), Just(r#"{"typing":true}"#), Just(r#"{"connected":true}"#), Just(r#"{"is_new":false}"#)].prop_map(str::to_string),
            1 => prop_oneof![Just("[1,2]".to_string()), Just("null".to_string()), Just("{".to_string()), Just("[".repeat(200)), Just(String::new())],
            1 => "\\PC{0,64}",
            1 => Just(format!(r#"{{"text":"{}"}}"#, "x".repeat(70_000))),
        ]
    }

    #[test]
    fn generated_inputs_are_planned_or_rejected_never_panic() {
        let cases: u32 = std::env::var("FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5_000);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (p, store) = (pipeline(64), Memory::default());
        let topics = p.topics().clone();
        let counts: Mutex<HashMap<&'static str, u64>> = Mutex::default();
        let started = std::time::Instant::now();
        let config = Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        };
        let mut runner = TestRunner::new(config);
        runner
            .run(&(key(), body()), |(key, body)| {
                let outcome = rt.block_on(async {
                    let input = match topics.parse(&key).map_err(Rejection::Drop) {
                        Ok(inbound) => p.admit(inbound, body.as_bytes(), 1),
                        Err(r) => Err(r),
                    };
                    match input {
                        Ok(input) => p
                            .decide(input, &store, 1, &CancellationToken::new())
                            .await
                            .expect("no shutdown"),
                        Err(r) => Err(r),
                    }
                });
                let label = match &outcome {
                    Ok(d) => {
                        for publish in &d.plan.publishes {
                            let k = &publish.key;
                            prop_assert!(k.len() <= crate::topic::MAX_KEY_BYTES, "{k}");
                            prop_assert!(topics.parse(k).is_err(), "an output the engine would consume: {k}");
                            prop_assert!(
                                !k.contains(['%', '{', '}', '*', '#', '+', '\u{FFFD}'])
                                    && !k.chars().any(char::is_whitespace),
                                "{k}"
                            );
                        }
                        store.commit(&d.plan.writes);
                        p.committed(&d.changes, &Committed::default());
                        "planned"
                    }
                    Err(r) => r.reason().as_str(),
                };
                *counts.lock().unwrap().entry(label).or_default() += 1;
                Ok(())
            })
            .unwrap();
        let counts = counts.into_inner().unwrap();
        let total: u64 = counts.values().sum();
        assert_eq!(total, u64::from(cases));
        assert!(
            counts.get("planned").copied().unwrap_or(0) > u64::from(cases) / 10,
            "{counts:?}"
        );
        eprintln!(
            "fuzz: {total} inputs in {:.1} s: {counts:?}",
            started.elapsed().as_secs_f64()
        );
    }
}

/// The rate limit runs at admission: a throttled sender's message to a group costs no store
/// read (a flood to unknown groups would otherwise be a flood of lookups).
#[tokio::test]
async fn a_throttled_sender_costs_no_store_read() {
    let topics = Arc::new(Topics::chat21("t"));
    let one = std::num::NonZeroU32::new(1).unwrap();
    let chain = Chain::new(
        crate::policy::ChainSettings {
            rate_limit: crate::policy::Budgets {
                messages: Some((one, one)),
                commands: None,
            },
            trusted_senders: HashSet::new(),
            policy: None,
            persistence: true,
        },
        topics.clone(),
        Metrics::new(),
    );
    let caches = CacheSizes {
        groups: 1000,
        blocks: 1000,
        ttl: Duration::from_secs(60),
    };
    let p = Pipeline::new(topics.clone(), chain, settings(), caches, Metrics::new(), true);
    let store = Memory::default();
    assert!(decide(&p, &store, &topics.outgoing("A", "G1"), GROUP_MSG).await.is_ok());
    let reads = store.group_reads.load(Ordering::SeqCst);
    for g in ["G2", "G3", "G4"] {
        let d = decide(&p, &store, &topics.outgoing("A", g), GROUP_MSG).await;
        assert!(
            matches!(
                d,
                Err(Rejection::Refuse {
                    reason: RejectReason::RateLimited,
                    ..
                })
            ),
            "{d:?}"
        );
    }
    assert_eq!(
        store.group_reads.load(Ordering::SeqCst),
        reads,
        "no lookup for throttled inputs"
    );
}
