//! Several engines on a 3-node RabbitMQ cluster and one PostgreSQL (issue 15): the engines
//! share the partitions out (PostgreSQL advisory locks, `broker/ownership.rs`); while
//! sequence-numbered messages stream into many conversations, one engine is SIGKILLed, a
//! broker node is stopped, and a fourth engine joins. Every conversation arrives complete and
//! in order at its recipient, duplicates only with the same message id, the shared store holds
//! every message once, and the partitions are balanced again at the end.
//!
//! This binary owns its cluster (scripts/rabbitmq-cluster.sh, private nodes, ports, cookie).

mod common;

use common::*;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const CONVERSATIONS: usize = 100;
const PER_CONVERSATION: usize = 30;
/// The publisher's pace: slow enough that the kill, the node stop and the join all happen
/// mid-stream.
const RATE_PER_SEC: u64 = 300;

/// Messages in the tap queue (a passive declare; nothing consumed).
async fn held(tap: &Tap) -> usize {
    let q = tap
        .channel
        .queue_declare(
            tap.queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    q.message_count() as usize
}

/// Wait until every engine in `engines` consumes `each` partitions.
async fn balanced(engines: &[&EngineProc], each: f64, when: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut owned = Vec::new();
        for e in engines {
            owned.push(e.metric("chat21_partitions_owned").await);
        }
        if owned.iter().all(|n| *n == each) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{when}: partitions owned {owned:?}, want {each} each"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_until_held(tap: &Tap, at_least: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while held(tap).await < at_least {
        assert!(
            Instant::now() < deadline,
            "{what}: fewer than {at_least} copies in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_on_a_cluster_keep_every_conversation_complete_and_in_order() {
    let cluster = tokio::task::spawn_blocking(|| Cluster::start(3)).await.unwrap();
    let n1 = &cluster.nodes[0];
    let app = fresh("app");
    let queue = format!("chat21.engine.{app}");
    let db = fresh_pg_schema().await;
    // Every engine is the same deployment: one app, one queue, one store, 6 partitions; each
    // starts at another node (engine k at node k, then the others in turn).
    let engine = |first: usize| {
        let (app, queue, db, uri) = (app.clone(), queue.clone(), db.clone(), cluster.uri_from(first));
        async move {
            EngineProc::start(
                n1,
                &[
                    ("APP_ID", app.as_str()),
                    ("QUEUE_NAME", queue.as_str()),
                    ("DATABASE_URL", db.as_str()),
                    ("RABBITMQ_URI", uri.as_str()),
                    ("PARTITIONS", "6"),
                    ("PREFETCH_MESSAGES", "256"),
                ],
            )
            .await
        }
    };
    let mut engines = vec![engine(0).await, engine(1).await, engine(2).await];
    balanced(&[&engines[0], &engines[1], &engines[2]], 2.0, "three engines").await;
    let topics = engines[0].topics();

    // The observer and the publisher are on node 1, which stays up.
    let tap = Tap::new(n1, &format!("apps.{app}.users.*.messages.*.clientadded")).await;
    let pairs: Vec<(String, String)> = (0..CONVERSATIONS).map(|_| (fresh("s"), fresh("r"))).collect();
    let publisher = {
        let (uri, pairs, topics) = (n1.amqp_uri.clone(), pairs.clone(), topics.clone());
        tokio::spawn(async move {
            let conn = lapin::Connection::connect(&uri, Default::default()).await.unwrap();
            let ch = conn.create_channel().await.unwrap();
            ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE_PER_SEC));
            for seq in 0..PER_CONVERSATION {
                for (c, (s, r)) in pairs.iter().enumerate() {
                    tick.tick().await;
                    let body = json!({"text": "x", "seq": seq, "message_id": format!("m{c}-{seq}")});
                    ch.basic_publish(
                        "amq.topic".into(),
                        topics.outgoing(s, r).as_str().into(),
                        BasicPublishOptions::default(),
                        body.to_string().as_bytes(),
                        Default::default(),
                    )
                    .await
                    .unwrap();
                }
            }
            ch.wait_for_confirms().await.unwrap();
            conn
        })
    };
    // Each message makes two copies in the tap: the sender's and the recipient's.
    let total = 2 * CONVERSATIONS * PER_CONVERSATION;

    wait_until_held(&tap, total / 5, "before the kill").await;
    engines[0].kill9();
    // Its locks went with its PostgreSQL session: the two others take its partitions.
    balanced(&[&engines[1], &engines[2]], 3.0, "after the kill").await;
    wait_until_held(&tap, total * 2 / 5, "after the kill").await;
    // Node 2 carries engine 1's connection and replicas of every partition; the partitions
    // keep a majority on nodes 1 and 3.
    let node2 = cluster.nodes[1].dir.clone();
    let halted = tokio::task::spawn_blocking(move || {
        let st = std::process::Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/rabbitmq-private.sh"))
            .arg("halt")
            .arg(node2)
            .status()
            .unwrap();
        assert!(st.success(), "halting node 2");
    });
    wait_until_held(&tap, total * 3 / 5, "with node 2 stopping").await;
    engines.push(engine(0).await);
    halted.await.unwrap();
    // The newcomer gets its share while the stream goes on: partitions are handed over.
    balanced(&[&engines[1], &engines[2], &engines[3]], 2.0, "after the join").await;
    let _publisher = publisher.await.unwrap();

    // Every recipient copy, in arrival order, per conversation.
    let index: HashMap<&str, usize> = pairs.iter().enumerate().map(|(c, (_, r))| (r.as_str(), c)).collect();
    let mut arrived: Vec<Vec<(i64, String)>> = vec![Vec::new(); CONVERSATIONS];
    let mut distinct = 0;
    let mut seen = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while distinct < CONVERSATIONS * PER_CONVERSATION && Instant::now() < deadline {
        for (key, m) in tap.drain().await {
            let Some(c) = index
                .iter()
                .find(|(r, _)| key.contains(&format!(".users.{r}.")))
                .map(|(_, c)| *c)
            else {
                continue; // a sender's own copy
            };
            let id = m["message_id"].as_str().unwrap().to_owned();
            if seen.insert(id.clone()) {
                distinct += 1;
            }
            arrived[c].push((m["seq"].as_i64().unwrap(), id));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = || {
        engines
            .iter()
            .enumerate()
            .map(|(k, e)| format!("--- engine {k}:\n{}", e.log_text()))
            .collect::<String>()
    };
    let mut duplicates = 0;
    for (c, copies) in arrived.iter().enumerate() {
        // First arrival of each message id, in arrival order: 0, 1, 2, … with nothing missing.
        let mut first = Vec::new();
        let mut ids = std::collections::HashSet::new();
        for (seq, id) in copies {
            assert_eq!(id, &format!("m{c}-{seq}"), "a copy changed its message id");
            if ids.insert(id) {
                first.push(*seq);
            } else {
                duplicates += 1;
            }
        }
        let expected: Vec<i64> = (0..PER_CONVERSATION as i64).collect();
        assert_eq!(first, expected, "conversation {c}: missing or out of order\n{}", logs());
    }

    // The shared store holds each message once in each recipient's timeline.
    let store = open_store(&db).await;
    for (s, r) in pairs.iter().take(10) {
        let stored = store.messages(r, s, 1000).await.unwrap();
        assert_eq!(stored.len(), PER_CONVERSATION, "stored copies of {s} → {r}");
    }
    // Every engine alive at the end did part of the work, the newcomer too.
    let mut processed = Vec::new();
    for e in &engines[1..] {
        processed.push(
            e.metric(r#"chat21_inputs_total{kind="send",outcome="processed"}"#)
                .await as usize,
        );
    }
    assert!(
        processed.iter().all(|n| *n > 0),
        "inputs processed by engines 1–3: {processed:?}\n{}",
        logs()
    );
    eprintln!(
        "cluster: {CONVERSATIONS} conversations × {PER_CONVERSATION} in order through a SIGKILL, a node stop and a join; \
         inputs processed by engines 1–3: {processed:?}; {duplicates} duplicate copies"
    );
}
