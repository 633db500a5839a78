//! Hostile inputs through the real broker (issue 11): what a client can put on the wire that
//! no well-behaved client library would, and what it must not do to everybody else's traffic.

use crate::common::*;
use std::time::Duration;

/// A topic with the bytes FF FE (not UTF-8). First proven with a raw MQTT socket: the broker
/// acknowledges and routes it. Then contained: the engine keeps its connection (the patched
/// codec decodes the key lossily, `vendor/README.md`), rejects the input as an invalid id, and
/// the next message of another user is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_that_is_not_utf8_is_rejected_and_traffic_flows() {
    let b = broker();
    let engine = EngineTask::start(b, &[]).await;
    let app = engine.app.clone();
    let (attacker, u1, u2) = (fresh("u"), fresh("u"), fresh("u"));
    let mut topic = format!("apps/{app}/outgoing/users/{attacker}/messages/").into_bytes();
    topic.extend_from_slice(&[0xFF, 0xFE]);
    topic.extend_from_slice(b"/outgoing");
    raw_publish(b, &b.token(&app, &attacker), &topic, br#"{"text":"poison"}"#)
        .await
        .expect("the broker acknowledges a topic that is not UTF-8 (the attack is real)");

    let mut c1 = Mqtt::connect(b, &app, &u1, Via::Tcp).await;
    c1.subscribe_inbox().await;
    let mut c2 = Mqtt::connect(b, &app, &u2, Via::Tcp).await;
    c2.subscribe_inbox().await;
    for i in 0..3 {
        send(
            &mut c1,
            &engine,
            &u2,
            serde_json::json!({ "text": format!("after {i}") }),
        )
        .await;
    }
    let got = c2.messages(3, WAIT).await;
    assert_eq!(got.len(), 3, "traffic flows after the poison input: {got:?}");
    assert_eq!(
        engine.metric(r#"chat21_rejections_total{reason="invalid_id"}"#).await,
        1.0,
        "rejected once, not redelivered"
    );
    assert_eq!(
        engine.metric("chat21_broker_reconnects_total").await,
        0.0,
        "the connection stayed up"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(engine.metric("chat21_broker_reconnects_total").await, 0.0);
}
