//! Nothing is lost when the engine dies: SIGKILL mid-stream, restart, every message arrives
//! (duplicates only for inputs in flight, with the client's message_id); SIGTERM drains.

use crate::common::*;
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const N: usize = 2000;

/// Publish N messages (seq 0..N, client message_id `m{seq}`) from one MQTT sender.
async fn stream(b: &Broker, engine: &EngineProc, sender: &str, recipient: &str) -> tokio::task::JoinHandle<Mqtt> {
    let c = Mqtt::connect(b, &engine.app, sender, Via::Tcp).await;
    let key = engine.topics().outgoing(sender, recipient);
    tokio::spawn(async move {
        for n in 0..N {
            c.publish(
                &key,
                json!({"text": "x", "seq": n, "message_id": format!("m{n}")})
                    .to_string()
                    .as_bytes(),
            )
            .await;
        }
        c
    })
}

/// Collect from the tap until every seq arrived; returns copies per seq.
async fn collect(tap: &Tap, engine: &EngineProc, within: Duration) -> HashMap<i64, Vec<String>> {
    let mut seen: HashMap<i64, Vec<String>> = HashMap::new();
    let deadline = Instant::now() + within;
    while seen.len() < N && Instant::now() < deadline {
        for (_, m) in tap.drain().await {
            seen.entry(m["seq"].as_i64().unwrap())
                .or_default()
                .push(m["message_id"].as_str().unwrap().to_string());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        seen.len(),
        N,
        "missing {} messages; engine log:\n{}",
        N - seen.len(),
        engine.log_text()
    );
    seen
}

async fn wait_for_some(tap_count: &Tap, at_least: usize) -> usize {
    // Read without consuming: the queue's message count.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let q = tap_count
            .channel
            .queue_declare(
                tap_count.queue.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .unwrap();
        if q.message_count() as usize >= at_least || Instant::now() > deadline {
            return q.message_count() as usize;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn sigkill_mid_stream_loses_nothing() {
    let b = broker();
    let mut engine = EngineProc::start(b, &[("PREFETCH_MESSAGES", "256")]).await;
    let (s, r) = (fresh("s"), fresh("r"));
    let tap = Tap::new(b, &format!("apps.{}.users.{r}.messages.*.clientadded", engine.app)).await;
    let sender = stream(b, &engine, &s, &r).await;
    let before = wait_for_some(&tap, N / 4).await;
    engine.kill9();
    assert!(before < N, "the engine must die mid-stream (had {before})");
    let _sender = sender.await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    engine.restart().await;

    let seen = collect(&tap, &engine, Duration::from_secs(60)).await;
    let dups: usize = seen.values().map(|v| v.len() - 1).sum();
    for (seq, ids) in &seen {
        assert!(
            ids.iter().all(|id| *id == format!("m{seq}")),
            "a duplicate changed message_id: {ids:?}"
        );
    }
    // Duplicates can only be inputs that were in flight (at most the prefetch, 256).
    assert!(dups <= 256, "{dups} duplicates");
    eprintln!("sigkill: {before} delivered before the kill, {dups} duplicates after restart");
}

#[tokio::test]
async fn sigterm_finishes_in_flight_and_exits_0() {
    let b = broker();
    let mut engine = EngineProc::start(b, &[]).await;
    let (s, r) = (fresh("s"), fresh("r"));
    let tap = Tap::new(b, &format!("apps.{}.users.{r}.messages.*.clientadded", engine.app)).await;
    let sender = stream(b, &engine, &s, &r).await;
    wait_for_some(&tap, N / 4).await;
    engine.sigterm();
    let t = Instant::now();
    let status = loop {
        if let Some(st) = engine.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "engine did not exit after SIGTERM; log:\n{}",
            engine.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0), "log:\n{}", engine.log_text());
    let _sender = sender.await.unwrap();
    engine.restart().await;
    let seen = collect(&tap, &engine, Duration::from_secs(60)).await;
    let dups: usize = seen.values().map(|v| v.len() - 1).sum();
    assert_eq!(dups, 0, "a graceful stop acks everything it published");
}

/// SIGTERM hands the queue over to a standby engine without reordering: the stopping engine
/// finishes what it took, acks it, and only then lets go of the queue (closing its channel
/// returns what it had buffered, in order, before the broker activates the standby).
/// `basic.cancel` first would activate the standby at once, with the buffered inputs coming
/// back behind newer ones.
#[tokio::test]
async fn sigterm_hands_over_to_a_standby_in_order() {
    let b = broker();
    let mut first = EngineProc::start(b, &[("PREFETCH_MESSAGES", "512")]).await;
    let standby = EngineProc::start(
        b,
        &[
            ("APP_ID", first.app.as_str()),
            ("QUEUE_NAME", first.queue.as_str()),
            ("PREFETCH_MESSAGES", "512"),
        ],
    )
    .await;
    let (s, r) = (fresh("s"), fresh("r"));
    let tap = Tap::new(b, &format!("apps.{}.users.{r}.messages.*.clientadded", first.app)).await;
    let sender = stream(b, &first, &s, &r).await;
    let before = wait_for_some(&tap, N / 4).await;
    first.sigterm();
    let t = Instant::now();
    while first.child.try_wait().unwrap().is_none() {
        assert!(t.elapsed() < Duration::from_secs(30), "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(before < N, "the handover must happen mid-stream (had {before})");
    let _sender = sender.await.unwrap();
    // Every copy in arrival order: the first arrival of each message, in sequence.
    let mut order = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < N && Instant::now() < deadline {
        for (_, m) in tap.drain().await {
            let seq = m["seq"].as_i64().unwrap();
            if seen.insert(seq) {
                order.push(seq);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen.len(), N, "missing messages; standby log:\n{}", standby.log_text());
    let out_of_order = order.windows(2).filter(|w| w[1] < w[0]).count();
    assert_eq!(
        out_of_order,
        0,
        "the handover reordered the conversation (first place: {:?})",
        order
            .windows(2)
            .position(|w| w[1] < w[0])
            .map(|i| &order[i.saturating_sub(2)..i + 3])
    );
}
