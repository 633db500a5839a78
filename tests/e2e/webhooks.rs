//! Webhooks (PROTOCOL §13) against real HTTP receivers on 127.0.0.1: every event type and its
//! body, both signatures, an endpoint that is down, failing or hanging and then back, one dead
//! endpoint next to a healthy one, SIGKILL mid-stream, and the failed list with redelivery.

use crate::common::*;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// A Standard Webhooks secret: `whsec_` and the base64 of the key.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn webhook_env<'a>(endpoints: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("WEBHOOK_ENABLED", "true"),
        ("WEBHOOK_ENDPOINTS", endpoints),
        ("WEBHOOK_RETRY_MAX_DELAY", "1s"),
    ];
    env.extend_from_slice(extra);
    env
}

fn of_type<'h>(hits: &'h [Hit], t: &str) -> Vec<&'h Hit> {
    hits.iter().filter(|h| h.json["event_type"] == t).collect()
}

/// Delivered events, one per webhook-id (retries and redeliveries repeat an id).
fn unique(hits: &[Hit]) -> Vec<Hit> {
    let mut seen = HashSet::new();
    hits.iter()
        .filter(|h| seen.insert(h.header("webhook-id").unwrap().to_owned()))
        .cloned()
        .collect()
}

/// The `seq`s of the delivered `event_type` events, in the order they arrived.
fn seqs(hits: &[Hit], event_type: &str) -> Vec<i64> {
    of_type(hits, event_type)
        .iter()
        .map(|h| h.json["data"]["seq"].as_i64().unwrap())
        .collect()
}

/// The sum of the webhook series with `label` (over every endpoint).
fn sum_of(metrics: &str, label: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("chat21_webhook_posts_total{") && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn send_seq(c: &mut Mqtt, e: &Running, to: &str, n: usize) {
    for seq in 0..n {
        send(
            c,
            e,
            to,
            json!({"text": "x", "seq": seq, "message_id": format!("m{seq}")}),
        )
        .await;
    }
}

#[tokio::test]
async fn every_event_type_arrives_with_its_body_signed() {
    let b = broker();
    let hook = Receiver::start().await;
    let url = hook.url();
    let env = webhook_env(
        &url,
        &[
            ("WEBHOOK_SECRET", SECRET),
            ("PRESENCE_ENABLED", "true"),
            ("MAX_MESSAGE_BYTES", "2048"),
        ],
    );
    let e = EngineTask::start(b, &env).await;
    let (a, bb) = (fresh("a"), fresh("b"));
    let topics = e.topics();
    let mut ca = Mqtt::connect_with_presence(b, &e.app, &a).await;
    ca.subscribe_inbox().await;
    let mut cb = Mqtt::connect(b, &e.app, &bb, Via::Tcp).await;
    cb.subscribe_inbox().await;
    hook.wait_until("presence-change", WAIT, |h| !of_type(h, "presence-change").is_empty())
        .await;

    // A direct message: sent (A's copy), delivered (B's copy).
    send(&mut ca, &e, &bb, json!({"text": "hello", "message_id": "m1"})).await;
    let hits = hook
        .wait_until("message-sent and -delivered", WAIT, |h| {
            !of_type(h, "message-sent").is_empty() && !of_type(h, "message-delivered").is_empty()
        })
        .await;
    let sent = &of_type(&hits, "message-sent")[0].json;
    assert_eq!(sent["app_id"], e.app.as_str());
    assert_eq!(sent["message_id"], "m1");
    assert_eq!(sent["recipient_id"], bb.as_str());
    assert_eq!(sent["delivered_to"], a.as_str());
    assert_eq!(sent["data"]["text"], "hello");
    assert_eq!(sent["data"]["status"], 100);
    assert_eq!(
        sent["extras"]["topic"],
        format!("apps.{}.users.{a}.messages.{bb}.clientadded", e.app)
    );
    assert!(sent["createdAt"].as_i64().unwrap() > 1_700_000_000_000);
    let delivered = &of_type(&hits, "message-delivered")[0].json;
    assert_eq!(delivered["delivered_to"], bb.as_str());
    assert_eq!(delivered["data"]["status"], 150);

    // B has it, B says so: A's return receipt.
    one(&mut cb, &e).await;
    cb.publish_acked(&topics.receipt(&e.app, &bb, &a, "m1"), br#"{"status":200}"#)
        .await
        .unwrap();
    let hits = hook
        .wait_until("message-return-receipt", WAIT, |h| {
            !of_type(h, "message-return-receipt").is_empty()
        })
        .await;
    let receipt = &of_type(&hits, "message-return-receipt")[0].json;
    assert_eq!(receipt["delivered_to"], a.as_str());
    assert_eq!(receipt["recipient_id"], bb.as_str());
    assert_eq!(receipt["message_id"], "m1");
    assert_eq!(
        receipt["data"],
        json!({"timelineOf": a, "message_id": "m1", "status": 250})
    );

    // A archives the conversation; B writes again: un-archived.
    ca.publish_acked(&topics.archive(&e.app, &a, &bb), b"{}").await.unwrap();
    let hits = hook
        .wait_until("conversation-archived", WAIT, |h| {
            !of_type(h, "conversation-archived").is_empty()
        })
        .await;
    let archived = &of_type(&hits, "conversation-archived")[0].json;
    assert_eq!(archived["user_id"], a.as_str());
    assert_eq!(archived["convers_with"], bb.as_str());
    assert_eq!(archived["recipient_id"], bb.as_str());
    assert_eq!(archived["data"]["archived"], true);
    send(&mut cb, &e, &a, json!({"text": "back", "message_id": "m2"})).await;
    let hits = hook
        .wait_until("conversation-unarchived", WAIT, |h| {
            !of_type(h, "conversation-unarchived").is_empty()
        })
        .await;
    let unarchived = &of_type(&hits, "conversation-unarchived")[0].json;
    assert_eq!(unarchived["user_id"], a.as_str());
    assert_eq!(unarchived["data"]["archived"], false);
    assert_eq!(unarchived["data"]["last_message_text"], "back");

    // Refused (too large): message-rejected, with the reason.
    let big = "x".repeat(3000);
    send(&mut ca, &e, &bb, json!({"text": big, "message_id": "m3"})).await;
    let hits = hook
        .wait_until("message-rejected", WAIT, |h| !of_type(h, "message-rejected").is_empty())
        .await;
    let rejected = &of_type(&hits, "message-rejected")[0].json;
    assert_eq!(rejected["delivered_to"], a.as_str());
    // Too large to be read: the notice (and so the event) has an id of the engine's.
    assert_eq!(rejected["message_id"], rejected["data"]["message_id"]);
    assert_eq!(rejected["data"]["status"], -100);
    assert_eq!(rejected["extras"]["reason"], "too_large");

    // B blocks A: A's next message is sent, and delivered to no one.
    cb.publish_acked(&topics.block(&e.app, &bb, &a, true), b"{}")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    send(&mut ca, &e, &bb, json!({"text": "blocked", "message_id": "m4"})).await;
    hook.wait_until("message-sent of m4", WAIT, |h| {
        of_type(h, "message-sent").iter().any(|x| x.json["message_id"] == "m4")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hits = hook.delivered();
    assert!(
        !of_type(&hits, "message-delivered")
            .iter()
            .any(|x| x.json["message_id"] == "m4"),
        "a blocked delivery fired message-delivered"
    );

    // Offline: the last client went away.
    ca.publish(&topics.presence(&e.app, &a, &ca.client_id), br#"{"disconnected":true}"#)
        .await;
    let hits = hook
        .wait_until("presence offline", WAIT, |h| {
            of_type(h, "presence-change")
                .iter()
                .any(|x| x.json["presence"] == "offline")
        })
        .await;
    let online = of_type(&hits, "presence-change")[0];
    assert_eq!(
        online.json,
        json!({"event_type": "presence-change", "createdAt": online.json["createdAt"], "app_id": e.app, "user_id": a, "presence": "online"})
    );

    // Every POST: JSON, the query string kept, a stable id, both signatures valid.
    let key = base64::engine::general_purpose::STANDARD
        .decode(SECRET.strip_prefix("whsec_").unwrap())
        .unwrap();
    for h in &hits {
        assert_eq!(h.query.as_deref(), Some("source=chat21"));
        assert_eq!(h.header("content-type"), Some("application/json"));
        assert_eq!(h.header("content-length"), Some(h.body.len().to_string().as_str()));
        let id = h.header("webhook-id").unwrap();
        let ts = h.header("webhook-timestamp").unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(&h.body);
        assert_eq!(
            h.header("x-chat21-signature").unwrap(),
            format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(&h.body);
        let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(h.header("webhook-signature").unwrap(), format!("v1,{expected}"));
        let age = chrono_now_s() - ts.parse::<i64>().unwrap();
        assert!((0..60).contains(&age), "webhook-timestamp is the time of the try");
    }
    e.stop().await;
}

fn chrono_now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn an_endpoint_down_for_30_s_gets_every_event_when_back() {
    let b = broker();
    let hook = Receiver::start().await;
    let url = hook.url();
    let e = EngineTask::start(b, &webhook_env(&url, &[("WEBHOOK_RETRY_MAX_DELAY", "2s")])).await;
    let (a, bb) = (fresh("a"), fresh("b"));
    let mut ca = Mqtt::connect(b, &e.app, &a, Via::Tcp).await;
    hook.stop().await;
    send_seq(&mut ca, &e, &bb, 20).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(hook.hits().is_empty());
    hook.resume().await;
    let hits = hook
        .wait_until("40 events after the outage", Duration::from_secs(30), |h| {
            unique(h).len() >= 40
        })
        .await;
    let hits = unique(&hits);
    // One conversation is one lane: its events arrive in order, even after retries.
    assert_eq!(seqs(&hits, "message-sent"), (0..20).collect::<Vec<_>>());
    assert_eq!(seqs(&hits, "message-delivered"), (0..20).collect::<Vec<_>>());
    e.stop().await;
}

#[tokio::test]
async fn failing_and_hanging_endpoints_are_retried_and_a_dead_one_delays_no_other() {
    let b = broker();
    let (healthy, failing, hanging, dead) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    failing.answer(Answer::Fail);
    hanging.answer(Answer::Hang);
    dead.stop().await;
    let endpoints = [&healthy, &failing, &hanging, &dead]
        .iter()
        .map(|r| r.url())
        .collect::<Vec<_>>()
        .join(",");
    let env = webhook_env(&endpoints, &[("WEBHOOK_TIMEOUT", "1s"), ("WEBHOOK_HOLD_LIMIT", "3s")]);
    let e = EngineTask::start(b, &env).await;
    let (a, bb) = (fresh("a"), fresh("b"));
    let mut ca = Mqtt::connect(b, &e.app, &a, Via::Tcp).await;
    send_seq(&mut ca, &e, &bb, 10).await;
    // The healthy endpoint is on time, whatever the others do.
    let got = healthy
        .wait_until("20 events at the healthy endpoint", Duration::from_secs(5), |h| {
            unique(h).len() >= 20
        })
        .await;
    assert_eq!(seqs(&unique(&got), "message-delivered"), (0..10).collect::<Vec<_>>());
    // The others were tried, and failed (500, timeout, refused).
    failing
        .wait_until("a 500", WAIT, |_| failing.hits().iter().any(|h| h.answered == 500))
        .await;
    hanging
        .wait_until("a hung POST", WAIT, |_| !hanging.hits().is_empty())
        .await;
    // Past the hold limit the undelivered events go round the queue; nothing is lost.
    eventually("events held past the hold limit requeued", || async {
        let requeued = sum_of(&e.metrics().await, "result=\"requeued\"");
        (requeued >= 20.0).then_some(())
    })
    .await;
    failing.answer(Answer::Ok);
    hanging.answer(Answer::Ok);
    dead.resume().await;
    for r in [&failing, &hanging, &dead] {
        let got = r
            .wait_until("every event once back", Duration::from_secs(30), |h| {
                unique(h).len() >= 20
            })
            .await;
        let got = unique(&got);
        let mut s = seqs(&got, "message-delivered");
        s.sort();
        assert_eq!(s, (0..10).collect::<Vec<_>>());
    }
    e.stop().await;
}

#[tokio::test]
async fn sigkill_mid_stream_loses_no_event() {
    const N: usize = 400;
    let b = broker();
    let hook = Receiver::start().await;
    let url = hook.url();
    let mut e = EngineProc::start(b, &webhook_env(&url, &[])).await;
    let (a, bb) = (fresh("a"), fresh("b"));
    let c = Mqtt::connect(b, &e.app, &a, Via::Tcp).await;
    let key = e.topics().outgoing(&a, &bb);
    let sender = tokio::spawn(async move {
        for seq in 0..N {
            let body = json!({"text": "x", "seq": seq, "message_id": format!("m{seq}")});
            c.publish(&key, body.to_string().as_bytes()).await;
        }
        c
    });
    hook.wait_until("some events", Duration::from_secs(30), |h| h.len() >= 50)
        .await;
    e.kill9();
    e.restart().await;
    let _c = sender.await.unwrap();
    let hits = hook
        .wait_until("every event after the kill", Duration::from_secs(60), |h| {
            unique(h).len() >= 2 * N
        })
        .await;
    // Repeats only with the same id: one id per (type, message, recipient).
    let mut ids: HashMap<(String, String, String), HashSet<String>> = HashMap::new();
    for h in &hits {
        let j = &h.json;
        let k = (
            j["event_type"].as_str().unwrap().to_owned(),
            j["message_id"].as_str().unwrap().to_owned(),
            j["delivered_to"].as_str().unwrap().to_owned(),
        );
        ids.entry(k)
            .or_default()
            .insert(h.header("webhook-id").unwrap().to_owned());
    }
    assert_eq!(ids.len(), 2 * N, "one event per copy");
    assert!(
        ids.values().all(|s| s.len() == 1),
        "a repeated event kept its webhook-id"
    );
}

#[tokio::test]
async fn events_past_their_retry_window_are_listed_and_redelivered() {
    let b = broker();
    let hook = Receiver::start().await;
    hook.stop().await;
    let url = hook.url();
    let env = webhook_env(&url, &[("WEBHOOK_RETRY_FOR", "3s")]);
    let e = EngineTask::start(b, &env).await;
    let (a, bb) = (fresh("a"), fresh("b"));
    let mut ca = Mqtt::connect(b, &e.app, &a, Via::Tcp).await;
    send_seq(&mut ca, &e, &bb, 3).await;
    eventually("6 events kept as failed", || async {
        (sum_of(&e.metrics().await, "result=\"failed\"") >= 6.0).then_some(())
    })
    .await;
    let (code, out, err) = e.cli(&["webhooks", "failed"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "{out}");
    assert!(
        lines.iter().all(|l| l.contains("evt_") && l.contains("127.0.0.1")),
        "{out}"
    );
    assert_eq!(lines.iter().filter(|l| l.contains("message-delivered")).count(), 3);
    // Listing leaves them there.
    let (_, again, _) = e.cli(&["webhooks", "failed"]);
    assert_eq!(again.lines().count(), 6);
    hook.resume().await;
    // One by id, then the rest.
    let first_id = lines[0].split('\t').nth(1).unwrap().to_owned();
    let (code, _, err) = e.cli(&["webhooks", "redeliver", "--id", &first_id]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("1 event(s) redelivered"), "{err}");
    hook.wait_until("the one redelivered", WAIT, |h| {
        h.iter().any(|x| x.header("webhook-id") == Some(first_id.as_str()))
    })
    .await;
    let (code, _, err) = e.cli(&["webhooks", "redeliver"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("5 event(s) redelivered"), "{err}");
    let got = hook
        .wait_until("all 6 redelivered", WAIT, |h| unique(h).len() >= 6)
        .await;
    assert_eq!(unique(&got).len(), 6);
    let (_, left, _) = e.cli(&["webhooks", "failed"]);
    assert_eq!(left.lines().count(), 0, "{left}");
    e.stop().await;
}

#[tokio::test]
async fn webhook_settings_are_checked_at_start() {
    let b = broker();
    let e = EngineTask::start(b, &[]).await;
    for (env, says) in [
        (vec![("WEBHOOK_ENABLED", "true")], "WEBHOOK_ENDPOINTS"),
        (
            vec![("WEBHOOK_ENABLED", "true"), ("WEBHOOK_ENDPOINTS", "ftp://x/y")],
            "http:// or https://",
        ),
        (
            vec![
                ("WEBHOOK_ENABLED", "true"),
                ("WEBHOOK_ENDPOINTS", "http://127.0.0.1:9/h"),
                ("WEBHOOK_EVENTS", "message-sent, message-eaten"),
            ],
            "message-eaten",
        ),
        (
            vec![
                ("WEBHOOK_ENABLED", "true"),
                ("WEBHOOK_ENDPOINTS", "http://127.0.0.1:9/h"),
                ("WEBHOOK_SECRET", "short"),
            ],
            "WEBHOOK_SECRET",
        ),
    ] {
        let mut cmd = std::process::Command::new(ENGINE);
        cmd.arg("check-config")
            .env_clear()
            .env("JWT_SECRET", "0123456789abcdef0123");
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{env:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(says), "{env:?}: {err}");
    }
    // Without webhooks, the command says so.
    let (code, _, err) = e.cli(&["webhooks", "failed"]);
    assert_eq!(code, 2);
    assert!(err.contains("webhooks are off"), "{err}");
    e.stop().await;
}
