//! The input layout (`broker::topology`) on the real broker: partitions by conversation, the
//! broker's delivery limit for inputs that keep coming back, and the in-place replacement of
//! an engine from before partitions.

use crate::common::*;
use chat21_engine::broker::topology::{self, Layout};
use futures::StreamExt;
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::AMQPValue;
use serde_json::json;
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// How many inputs `queue` holds (a passive declare: an error, closing `ch`, if it is gone).
async fn depth(ch: &lapin::Channel, queue: &str) -> lapin::Result<u32> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let q = ch.queue_declare(queue.into(), passive, Default::default()).await?;
    Ok(q.message_count())
}

async fn admin(b: &Broker) -> lapin::Connection {
    lapin::Connection::connect(&b.amqp_uri, Default::default())
        .await
        .unwrap()
}

/// Every input of one conversation lands in one partition, in order, and the conversations
/// spread over the partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_of_one_conversation_stay_in_one_partition_in_order() {
    let b = broker();
    let app = fresh("app");
    let layout = Layout::new(&format!("chat21.engine.{}", fresh("part")), 4, 20);
    let topics = chat21_engine::topic::Topics::chat21(&app);
    let conn = admin(b).await;
    let ch = conn.create_channel().await.unwrap();
    topology::declare(&ch, &layout, &topics.bindings(), &[]).await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    let keys: Vec<String> = (0..40)
        .map(|i| topics.outgoing(&format!("s{}", i % 8), &format!("r{i}")))
        .collect();
    for seq in 0..5 {
        for key in &keys {
            ch.basic_publish(
                "amq.topic".into(),
                key.as_str().into(),
                BasicPublishOptions::default(),
                json!({ "seq": seq }).to_string().as_bytes(),
                Default::default(),
            )
            .await
            .unwrap();
        }
    }
    ch.wait_for_confirms().await.unwrap();

    let mut partitions_of: HashMap<String, BTreeSet<String>> = HashMap::new();
    let mut used = 0;
    for queue in layout.queues() {
        let mut next: HashMap<String, i64> = HashMap::new();
        // basic.get is refused on single-active-consumer queues: consume what it holds.
        let held = depth(&ch, &queue).await.unwrap();
        let reader = conn.create_channel().await.unwrap();
        let mut consumer = reader
            .basic_consume(
                queue.as_str().into(),
                "reader".into(),
                lapin::options::BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .unwrap();
        for _ in 0..held {
            let m = tokio::time::timeout(Duration::from_secs(10), consumer.next())
                .await
                .expect("a held input")
                .unwrap()
                .unwrap();
            let key = m.routing_key.to_string();
            let seq = serde_json::from_slice::<serde_json::Value>(&m.data).unwrap()["seq"]
                .as_i64()
                .unwrap();
            let expected = next.entry(key.clone()).or_insert(0);
            assert_eq!(seq, *expected, "{key} out of order in {queue}");
            *expected += 1;
            partitions_of.entry(key).or_default().insert(queue.clone());
        }
        let _ = reader.close(200, "done".into()).await;
        used += usize::from(!next.is_empty());
        assert!(
            next.values().all(|&n| n == 5),
            "a conversation incomplete in {queue}: {next:?}"
        );
    }
    assert_eq!(partitions_of.len(), keys.len(), "every input arrived");
    for (key, queues) in &partitions_of {
        assert_eq!(queues.len(), 1, "{key} in {queues:?}");
    }
    assert!(used >= 3, "40 conversations in only {used} of 4 partitions");
}

fn x_death_reason(headers: &lapin::types::FieldTable) -> Option<String> {
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
        return None;
    };
    let Some(AMQPValue::FieldTable(first)) = deaths.as_slice().first() else {
        return None;
    };
    match first.inner().get("reason") {
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    }
}

/// An input that keeps coming back — here one whose commit never finishes while the engine
/// is killed again and again, the signature of an input that crashes the engine — is moved
/// by the broker to the dead-letter queue after DELIVERY_LIMIT deliveries, with why; what was
/// never committed stays uncommitted, and the next input flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_that_keeps_coming_back_is_dead_lettered_by_the_broker() {
    let b = broker();
    let mut e = engine_with(b, Db::Postgres, &[("DELIVERY_LIMIT", "2")]).await;
    let (u1, u2) = (fresh("u"), fresh("u"));
    let t = e.topics();
    // Writes to the message table wait (reads do not) while this transaction is open.
    let pool = sqlx::PgPool::connect(&e.database_url).await.unwrap();
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE messages IN EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let c = Mqtt::connect(b, &e.app, &u1, Via::Tcp).await;
    c.publish(&t.outgoing(&u1, &u2), br#"{"text":"stuck","message_id":"m-stuck"}"#)
        .await;

    let conn = admin(b).await;
    let ch = conn.create_channel().await.unwrap();
    let dead = format!("{}.dead-letter", e.queue);
    let mut kills = 0;
    let dead_letter = loop {
        assert!(
            kills < 6,
            "not dead-lettered after {kills} kills; log:\n{}",
            e.log_text()
        );
        // Wait until the engine holds the input, then kill it with the input unacked.
        let deadline = Instant::now() + Duration::from_secs(20);
        while e.metric("chat21_inputs_in_flight").await < 1.0 {
            assert!(
                Instant::now() < deadline,
                "input not redelivered; log:\n{}",
                e.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        e.kill9();
        kills += 1;
        // The broker takes the input back when the connection drops; past the limit it
        // dead-letters it instead.
        let moved = eventually_within(Duration::from_secs(3), || async {
            ch.basic_get(dead.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
        })
        .await;
        if let Some(m) = moved {
            break m;
        }
        e.restart().await;
    };
    assert_eq!(kills, 3, "delivered 1 + DELIVERY_LIMIT times, then moved");
    let body: serde_json::Value = serde_json::from_slice(&dead_letter.delivery.data).unwrap();
    assert_eq!(body["message_id"], "m-stuck", "the input as it came");
    let headers = dead_letter.delivery.properties.headers().clone().expect("x-death");
    assert_eq!(
        x_death_reason(&headers).as_deref(),
        Some("delivery_limit"),
        "{headers:?}"
    );

    lock.rollback().await.unwrap();
    e.restart().await;
    c.publish(&t.outgoing(&u1, &u2), br#"{"text":"after","message_id":"m-after"}"#)
        .await;
    let store = open_store(&e.database_url).await;
    eventually("the next input stored", || async {
        store.message(&u2, "m-after").await.unwrap()
    })
    .await;
    assert!(
        store.message(&u2, "m-stuck").await.unwrap().is_none(),
        "a commit that was never finished was applied"
    );
    assert!(
        ch.basic_get(dead.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .is_none(),
        "only the stuck input was dead-lettered"
    );
}

async fn eventually_within<T, F, Fut>(within: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Replacing an engine from before partitions in place: its classic queue, bound to
/// `amq.topic`, holds what was sent while no engine ran. The new engine delivers those first,
/// then what comes after, in order, and deletes the old queue once it is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_engines_queue_is_drained_first_then_deleted() {
    let b = broker();
    let app = fresh("app");
    let queue = format!("chat21.engine.{app}");
    let topics = chat21_engine::topic::Topics::chat21(&app);
    let conn = admin(b).await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions::durable(),
        Default::default(),
    )
    .await
    .unwrap();
    for pattern in topics.bindings() {
        ch.queue_bind(
            queue.as_str().into(),
            "amq.topic".into(),
            pattern.as_str().into(),
            QueueBindOptions::default(),
            Default::default(),
        )
        .await
        .unwrap();
    }
    let (u1, u2) = (fresh("u"), fresh("u"));
    let mut r = Mqtt::connect(b, &app, &u2, Via::Tcp).await;
    r.subscribe_inbox().await;
    let s = Mqtt::connect(b, &app, &u1, Via::Tcp).await;
    let key = topics.outgoing(&u1, &u2);
    let message = |seq: i64| json!({ "text": format!("{seq}"), "seq": seq, "message_id": format!("m{seq}") });
    for seq in 0..100 {
        s.publish(&key, message(seq).to_string().as_bytes()).await;
    }
    let backlog = eventually("the backlog queued in the old queue", || async {
        let n = depth(&ch, &queue).await.unwrap();
        (n == 100).then_some(n)
    })
    .await;
    assert_eq!(backlog, 100);

    let e = EngineProc::start(b, &[("APP_ID", app.as_str()), ("QUEUE_NAME", queue.as_str())]).await;
    for seq in 100..150 {
        s.publish(&key, message(seq).to_string().as_bytes()).await;
    }
    let got = r.messages(150, Duration::from_secs(60)).await;
    let seqs: Vec<i64> = got.iter().map(|(_, m)| m["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (0..150).collect::<Vec<_>>(), "log:\n{}", e.log_text());
    assert!(r.extra_messages(Duration::from_millis(500)).await.is_empty());
    eventually("the old queue deleted", || async {
        let ch = conn.create_channel().await.unwrap();
        depth(&ch, &queue).await.is_err().then_some(())
    })
    .await;
    assert!(
        e.log_text().contains("old queue drained and deleted"),
        "{}",
        e.log_text()
    );
}

/// PARTITIONS lowered (3 → 1) with inputs waiting in the higher partitions: those queues are
/// still bound to the hash exchange, so the engine consumes them too, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowering_partitions_leaves_no_input_unread() {
    let b = broker();
    let app = fresh("app");
    let queue = format!("chat21.engine.{app}");
    let env = [("APP_ID", app.as_str()), ("QUEUE_NAME", queue.as_str())];
    let mut before = EngineProc::start(b, &[env[0], env[1], ("PARTITIONS", "3")]).await;
    before.kill9();
    let r = fresh("r");
    let mut inbox = Mqtt::connect(b, &app, &r, Via::Tcp).await;
    inbox.subscribe_inbox().await;
    let topics = chat21_engine::topic::Topics::chat21(&app);
    let conn = admin(b).await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    for i in 0..30 {
        let key = topics.outgoing(&format!("s{i}"), &r);
        ch.basic_publish(
            "amq.topic".into(),
            key.as_str().into(),
            BasicPublishOptions::default(),
            json!({ "text": format!("{i}") }).to_string().as_bytes(),
            Default::default(),
        )
        .await
        .unwrap();
    }
    ch.wait_for_confirms().await.unwrap();
    let beyond =
        depth(&ch, &format!("{queue}.p01")).await.unwrap() + depth(&ch, &format!("{queue}.p02")).await.unwrap();
    assert!(beyond > 0, "no input waits beyond the first partition");

    let after = EngineProc::start(b, &[env[0], env[1], ("PARTITIONS", "1")]).await;
    let got = inbox.messages(30, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 30, "log:\n{}", after.log_text());
    assert!(
        after
            .log_text()
            .contains("PARTITIONS is lower than the partition queues that exist"),
        "{}",
        after.log_text()
    );
}
