//! Direct messages end to end: real MQTT clients (TCP and Web-MQTT) with minted JWTs, the
//! engine binary, a private production-configured RabbitMQ node.

use crate::common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

async fn direct_message_reaches_both_inboxes(via: Via) {
    let b = broker();
    let engine = EngineProc::start(b, &[]).await;
    let app = engine.app.clone();
    let (u1, u2) = (fresh("USER1-"), fresh("USER2-"));
    let mut c1 = Mqtt::connect(b, &app, &u1, via).await;
    let mut c2 = Mqtt::connect(b, &app, &u2, via).await;
    c1.subscribe_inbox().await;
    c2.subscribe_inbox().await;

    let body = json!({
        "text": "hello", "type": "text", "channel_type": "direct",
        "sender_fullname": "User 1", "recipient_fullname": "User 2",
        "attributes": {"client": "test", "n": 1}, "metadata": null,
        "sender": "SPOOFED", "app_id": "other"
    });
    c1.publish_acked(&engine.topics().outgoing(&u1, &u2), body.to_string().as_bytes())
        .await
        .unwrap();

    let got1 = c1.messages(1, WAIT).await;
    let got2 = c2.messages(1, WAIT).await;
    assert_eq!(got1.len(), 1, "sender copy missing; engine log:\n{}", engine.log_text());
    assert_eq!(got2.len(), 1, "recipient copy missing");
    assert_eq!(got1[0].0, format!("apps/{app}/users/{u1}/messages/{u2}/clientadded"));
    assert_eq!(got2[0].0, format!("apps/{app}/users/{u2}/messages/{u1}/clientadded"));
    let (m1, m2) = (&got1[0].1, &got2[0].1);
    assert_eq!(m1["status"], 100);
    assert_eq!(m2["status"], 150);
    for m in [m1, m2] {
        assert_eq!(m["sender"], u1.as_str());
        assert_eq!(m["recipient"], u2.as_str());
        assert_eq!(m["app_id"], app.as_str());
        assert_eq!(m["text"], "hello");
        assert_eq!(m["type"], "text");
        assert_eq!(m["channel_type"], "direct");
        assert_eq!(m["sender_fullname"], "User 1");
        assert_eq!(m["recipient_fullname"], "User 2");
        assert_eq!(m["attributes"], json!({"client": "test", "n": 1}));
        assert_eq!(m["metadata"], Value::Null);
        assert!(m["timestamp"].is_i64(), "numeric timestamp: {m}");
        uuid::Uuid::parse_str(m["message_id"].as_str().unwrap()).expect("a UUID message_id");
    }
    assert_eq!(m1["message_id"], m2["message_id"]);
    // Exactly one copy each.
    assert!(c1.extra_messages(Duration::from_millis(300)).await.is_empty());
    assert!(c2.extra_messages(Duration::from_millis(100)).await.is_empty());
}

#[tokio::test]
async fn direct_message_over_mqtt_tcp() {
    direct_message_reaches_both_inboxes(Via::Tcp).await;
}

#[tokio::test]
async fn direct_message_over_web_mqtt() {
    direct_message_reaches_both_inboxes(Via::Ws).await;
}

#[tokio::test]
async fn client_message_id_is_kept() {
    let b = broker();
    let engine = EngineProc::start(b, &[]).await;
    let (u1, u2) = (fresh("u"), fresh("u"));
    let c1 = Mqtt::connect(b, &engine.app, &u1, Via::Tcp).await;
    let mut c2 = Mqtt::connect(b, &engine.app, &u2, Via::Tcp).await;
    c2.subscribe_inbox().await;
    let body = json!({"text": "x", "message_id": "client-id-1", "timestamp": 1234});
    c1.publish(&engine.topics().outgoing(&u1, &u2), body.to_string().as_bytes())
        .await;
    let got = c2.messages(1, WAIT).await;
    assert_eq!(got[0].1["message_id"], "client-id-1");
    assert_eq!(got[0].1["timestamp"], 1234);
}

/// 1,000 messages from 10 senders: all arrive exactly once, in order per sender.
#[tokio::test]
async fn thousand_messages_from_ten_senders_in_order() {
    let b = broker();
    // Four partitions: each conversation's order holds across the merged consumers.
    let engine = EngineProc::start(b, &[("PARTITIONS", "4")]).await;
    let app = engine.app.clone();
    let recipient = fresh("rcpt");
    let mut r = Mqtt::connect(b, &app, &recipient, Via::Tcp).await;
    r.subscribe_inbox().await;
    let mut senders = Vec::new();
    for i in 0..10 {
        let u = format!("{}-{i}", fresh("snd"));
        senders.push(Mqtt::connect(b, &app, &u, Via::Tcp).await);
    }
    let topics = engine.topics();
    let mut tasks = Vec::new();
    for s in senders {
        let key = topics.outgoing(&s.user, &recipient);
        tasks.push(tokio::spawn(async move {
            for n in 0..100 {
                s.publish(&key, json!({"text": format!("{n}"), "seq": n}).to_string().as_bytes())
                    .await;
            }
            s // keep the connection open until the messages are out
        }));
    }
    let mut keep = Vec::new();
    for t in tasks {
        keep.push(t.await.unwrap());
    }
    let got = r.messages(1000, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 1000, "engine log:\n{}", engine.log_text());
    let mut next: HashMap<String, i64> = HashMap::new();
    let mut ids = std::collections::HashSet::new();
    for (_, m) in &got {
        let sender = m["sender"].as_str().unwrap().to_string();
        let seq = m["seq"].as_i64().unwrap();
        let expected = next.entry(sender.clone()).or_insert(0);
        assert_eq!(
            seq,
            *expected,
            "out of order from {sender}; log:\n{}",
            engine.log_text()
        );
        *expected += 1;
        assert!(ids.insert(m["message_id"].as_str().unwrap().to_string()), "duplicate");
        assert_eq!(m["status"], 150);
    }
    assert_eq!(next.len(), 10);
    assert!(
        r.extra_messages(Duration::from_millis(500)).await.is_empty(),
        "more than exactly once"
    );
    assert_eq!(
        engine
            .metric(r#"chat21_inputs_total{kind="send",outcome="processed"}"#)
            .await,
        1000.0
    );
}

/// Bad inputs are rejected with a reason, counted, acked, and everything else keeps flowing.
#[tokio::test]
async fn bad_inputs_are_rejected_and_counted_while_good_ones_flow() {
    let b = broker();
    let engine = EngineProc::start(b, &[]).await;
    let app = engine.app.clone();
    let (u1, u2) = (fresh("u"), fresh("u"));
    let mut c1 = Mqtt::connect(b, &app, &u1, Via::Tcp).await;
    let mut c2 = Mqtt::connect(b, &app, &u2, Via::Tcp).await;
    c2.subscribe_inbox().await;
    let t = engine.topics();
    let out = t.outgoing(&u1, &u2);

    c1.publish_acked(&out, b"not json at all").await.unwrap();
    c1.publish_acked(&out, b"[1,2,3]").await.unwrap();
    c1.publish_acked(&out, b"\"just a string\"").await.unwrap();
    c1.publish_acked(&out, &[0xff, 0xfe, 0x00]).await.unwrap();
    // A wildcard character inside an id: MQTT allows `*` in a topic name, the engine must not.
    c1.publish_acked(
        &format!("apps.{app}.outgoing.users.{u1}.messages.bad*id.outgoing"),
        b"{}",
    )
    .await
    .unwrap();
    // A group message whose inline `group` is not an object.
    c1.publish_acked(&out.replace(&u2, "group-abc"), br#"{"text":"g","group":[1]}"#)
        .await
        .unwrap();
    // Typing whose `typing` is not a boolean.
    c1.publish_acked(&t.typing(&app, &u1, &u2), br#"{"typing":"yes"}"#)
        .await
        .unwrap();
    c1.publish_acked(&out, br#"{"text":"good"}"#).await.unwrap();

    let got = c2.messages(1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1["text"], "good");
    assert!(c2.extra_messages(Duration::from_millis(300)).await.is_empty());

    let m = |r: &str| format!(r#"chat21_rejections_total{{reason="{r}"}}"#);
    assert_eq!(engine.metric(&m("not_json")).await, 2.0);
    assert_eq!(engine.metric(&m("not_object")).await, 2.0);
    assert_eq!(engine.metric(&m("invalid_id")).await, 1.0);
    assert_eq!(engine.metric(&m("bad_group")).await, 1.0);
    assert_eq!(engine.metric(&m("bad_payload")).await, 1.0);
    assert_eq!(engine.metric(r#"chat21_inputs_in_flight"#).await, 0.0);
    let log = engine.log_text();
    assert_eq!(log.matches("input rejected").count(), 7, "logged once each:\n{log}");
}

/// In the seed layout the recipient copy's key is 2 bytes longer than the input's: an input
/// of 254 bytes cannot be delivered and is rejected as key_too_long, not dropped silently.
#[tokio::test]
async fn overlong_outbound_key_is_rejected() {
    let b = broker();
    let prefix = format!("/{}", fresh("seed"));
    let engine = EngineProc::start(b, &[("TOPIC_LAYOUT", "seed"), ("PATH_PREFIX", prefix.as_str())]).await;
    let t = engine.topics();
    let s = "s".repeat(100);
    let fixed = t.outgoing(&s, "").len();
    let r = "r".repeat(254 - fixed);
    let key = t.outgoing(&s, &r);
    assert_eq!(key.len(), 254);
    amqp_publish(b, &key, br#"{"text":"long"}"#).await;
    // And a normal one afterwards still flows.
    let tap = Tap::new(b, &format!("{}.#", chat21_engine::topic::mqtt_to_amqp(&prefix))).await;
    amqp_publish(b, &t.outgoing("a", "b"), br#"{"text":"ok"}"#).await;
    let deadline = std::time::Instant::now() + WAIT;
    let mut got = Vec::new();
    while got.len() < 3 && std::time::Instant::now() < deadline {
        got.extend(tap.drain().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let keys: Vec<&str> = got
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| k.ends_with("clientadded"))
        .collect();
    assert_eq!(keys.len(), 2, "{got:?}");
    assert!(
        keys.iter().all(|k| k.len() < 100),
        "only the short message was delivered: {keys:?}"
    );
    assert_eq!(
        engine.metric(r#"chat21_rejections_total{reason="key_too_long"}"#).await,
        1.0
    );
}

/// Without a broker password the engine logs in with a service token it signs itself
/// (JWT_SECRET), narrow enough for its own queue and amq.topic only.
#[tokio::test]
async fn engine_logs_in_with_a_service_token() {
    let b = broker();
    let port = b.amqp_port.to_string();
    let engine = EngineProc::start(
        b,
        &[
            ("RABBITMQ_URI", ""),
            ("RABBITMQ_HOST", "127.0.0.1"),
            ("RABBITMQ_PORT", port.as_str()),
        ],
    )
    .await;
    let (u1, u2) = (fresh("u"), fresh("u"));
    let c1 = Mqtt::connect(b, &engine.app, &u1, Via::Tcp).await;
    let mut c2 = Mqtt::connect(b, &engine.app, &u2, Via::Tcp).await;
    c2.subscribe_inbox().await;
    c1.publish(&engine.topics().outgoing(&u1, &u2), br#"{"text":"via service token"}"#)
        .await;
    let got = c2.messages(1, WAIT).await;
    assert_eq!(got.len(), 1, "engine log:\n{}", engine.log_text());
    assert_eq!(got[0].1["text"], "via service token");
}
