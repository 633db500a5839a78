//! The broker node is stopped and restarted mid-stream: the engine reconnects by itself and
//! every message whose QoS 1 publish the broker acknowledged (before the stop or after the
//! restart) reaches the recipient's inbox, and its webhook event reaches the endpoint. This
//! test owns its node (it restarts it).

mod common;

use common::*;
use serde_json::json;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const N: usize = 600;

/// Publish and wait for the PUBACK of exactly this publish (by packet id): Some(()) when the
/// broker acknowledged it, None when it did not within the time limit.
async fn publish_confirmed(c: &mut Mqtt, key: &str, body: &[u8]) -> Option<()> {
    c.publish(key, body).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut pkid = None;
    while Instant::now() < deadline {
        match c.next_event(Duration::from_millis(200)).await {
            Some(Ev::Sent(p)) if pkid.is_none() => pkid = Some(p),
            Some(Ev::PubAck(p)) if Some(p) == pkid => return Some(()),
            _ => {}
        }
    }
    None
}

#[tokio::test]
async fn broker_restart_mid_stream_loses_no_acknowledged_message() {
    let b = broker();
    let hook = Receiver::start().await;
    let url = hook.url();
    let engine = EngineProc::start(b, &[("WEBHOOK_ENABLED", "true"), ("WEBHOOK_ENDPOINTS", &url)]).await;
    let app = engine.app.clone();
    let (s, r) = (fresh("s"), fresh("r"));
    let tap_queue = Tap::new(b, &format!("apps.{app}.users.{r}.messages.*.clientadded"))
        .await
        .queue
        .clone();
    let token = b.token(&app, &s);
    let mut c = Mqtt::connect_with_token(b, &app, &s, &token, Via::Tcp, true).await;
    let key = engine.topics().outgoing(&s, &r);

    let acked_count = Arc::new(AtomicUsize::new(0));
    assert_eq!(http_get(engine.http_port, "/healthz").await.unwrap().0, 200);
    let restarter = {
        let acked_count = acked_count.clone();
        let http_port = engine.http_port;
        tokio::spawn(async move {
            while acked_count.load(Ordering::Relaxed) < N / 3 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::task::spawn_blocking(|| broker().halt()).await.unwrap();
            // While the broker is down the engine is alive but not ready.
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut readyz = 0;
            while Instant::now() < deadline {
                readyz = http_get(http_port, "/readyz").await.unwrap().0;
                if readyz == 503 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(http_get(http_port, "/healthz").await.unwrap().0, 200);
            tokio::task::spawn_blocking(|| broker().resume()).await.unwrap();
            readyz
        })
    };

    let mut acked = Vec::new();
    for n in 0..N {
        let body = json!({"text": "x", "seq": n, "message_id": format!("m{n}")}).to_string();
        if publish_confirmed(&mut c, &key, body.as_bytes()).await.is_some() {
            acked.push(n as i64);
            acked_count.fetch_add(1, Ordering::Relaxed);
        }
    }
    assert_eq!(restarter.await.unwrap(), 503, "/readyz while the broker was down");
    assert!(acked.len() > N / 2, "too few acknowledged publishes: {}", acked.len());

    // The engine reconnected by itself.
    engine.wait_ready().await;
    assert!(engine.metric("chat21_broker_reconnects_total").await >= 1.0);

    let tap = Tap::reopen(b, &tap_queue).await;
    let mut seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let wanted: HashSet<i64> = acked.iter().copied().collect();
    while !wanted.is_subset(&seen) && Instant::now() < deadline {
        for (_, m) in tap.drain().await {
            seen.insert(m["seq"].as_i64().unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let missing: Vec<_> = wanted.difference(&seen).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but lost: {missing:?}\nengine log:\n{}",
        engine.log_text()
    );
    // Their events too: queued in the broker before each input was acked.
    let got = hook
        .wait_until("every acknowledged message's webhook", Duration::from_secs(60), |h| {
            let delivered: HashSet<i64> = h
                .iter()
                .filter(|x| x.json["event_type"] == "message-delivered")
                .filter_map(|x| x.json["data"]["seq"].as_i64())
                .collect();
            wanted.is_subset(&delivered)
        })
        .await;
    eprintln!(
        "broker restart: {} of {N} publishes acknowledged, all delivered, {} webhook POSTs",
        acked.len(),
        got.len()
    );
}
