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
