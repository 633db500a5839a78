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

/// Peak resident memory of a process, in MiB (`VmHWM`).
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb / 1024.0
}

/// A body of about `bytes` bytes: a message whose text is that long.
fn big_message(bytes: usize, extra: serde_json::Value) -> Vec<u8> {
    let mut m = serde_json::json!({ "text": "x".repeat(bytes) });
    if let (Some(m), serde_json::Value::Object(extra)) = (m.as_object_mut(), extra) {
        m.extend(extra);
    }
    m.to_string().into_bytes()
}

/// Size budgets through the real broker (raw MQTT publishes: a client library caps packet
/// sizes): a 4 MiB body over MAX_MESSAGE_BYTES is refused and its sender told; a 2 MiB
/// message to 100 inline members is over MAX_FANOUT_BYTES; a 4 MiB message under raised
/// limits is delivered. The engine stays up, traffic flows, and its peak RSS is reported
/// (printed; bounded loosely here, measured in the README).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_inputs_are_refused_and_memory_stays_bounded() {
    let b = broker();
    for (limits, case) in [
        (&[][..], "defaults"),
        (&[("MAX_MESSAGE_BYTES", "4194304")][..], "4 MiB messages allowed"),
    ] {
        let e = EngineProc::start(b, limits).await;
        let app = e.app.clone();
        let t = e.topics();
        let (s, r) = (fresh("s"), fresh("r"));
        let mut sender = Mqtt::connect(b, &app, &s, Via::Tcp).await;
        sender.subscribe_inbox().await;
        let tap = Tap::new(b, &format!("apps.{app}.users.*.messages.*.clientadded")).await;
        let mqtt_topic = |key: String| key.replace('.', "/").into_bytes();
        let token = b.token(&app, &s);

        let expect_refusal = |got: Vec<(String, serde_json::Value)>, what: &str| {
            assert_eq!(got.len(), 1, "{case}: {what}: the sender is told");
            assert_eq!(got[0].1["status"], -100, "{case}: {what}");
            assert_eq!(got[0].1["error"]["code"], "too_large", "{case}: {what}");
        };
        if limits.is_empty() {
            raw_publish(
                b,
                &token,
                &mqtt_topic(t.outgoing(&s, &r)),
                &big_message(4 << 20, serde_json::json!({})),
            )
            .await
            .expect("a 4 MiB publish");
            expect_refusal(sender.messages(1, WAIT).await, "4 MiB over MAX_MESSAGE_BYTES");
        } else {
            let members: serde_json::Map<String, serde_json::Value> =
                (0..100).map(|i| (format!("m{i}"), 1.into())).collect();
            let group = serde_json::json!({"channel_type": "group", "group": {"members": members}});
            raw_publish(
                b,
                &token,
                &mqtt_topic(t.outgoing(&s, &fresh("group-"))),
                &big_message(2 << 20, group),
            )
            .await
            .expect("a 2 MiB publish");
            expect_refusal(sender.messages(1, WAIT).await, "2 MiB to 100 members");
            // Accepted: 4 MiB direct, from a client not subscribed (its own copy is 4 MiB).
            let other = fresh("s");
            raw_publish(
                b,
                &b.token(&app, &other),
                &mqtt_topic(t.outgoing(&other, &r)),
                &big_message((4 << 20) - 100, serde_json::json!({})),
            )
            .await
            .expect("a 4 MiB publish");
            let deadline = std::time::Instant::now() + WAIT;
            let mut copies = Vec::new();
            while copies.len() < 2 && std::time::Instant::now() < deadline {
                let big = |m: &serde_json::Value| m["text"].as_str().is_some_and(|t| t.len() > 1 << 20);
                copies.extend(tap.drain().await.into_iter().filter(|(_, m)| big(m)));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(copies.len(), 2, "{case}: both copies of the 4 MiB message");
        }
        // And normal traffic flows after it.
        send(&mut sender, &e, &r, serde_json::json!({"text": "small"})).await;
        let (_, own) = one(&mut sender, &e).await;
        assert_eq!(own["text"], "small");
        assert_eq!(http_get(e.http_port, "/readyz").await.unwrap().0, 200);
        let rss = peak_rss_mib(e.child.id());
        eprintln!("size budgets, {case}: engine peak RSS {rss:.1} MiB");
        assert!(rss < 256.0, "{case}: peak RSS {rss:.1} MiB");
    }
}

/// A user cannot make a message look like the system's: `attributes.subtype:"info"` and
/// `attributes.messagelabel` (what clients render as "U2 joined the group") are removed from
/// a user's message; the rest of its attributes arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_style_attributes_are_the_systems_only() {
    let b = broker();
    let e = EngineTask::start(b, &[]).await;
    let (u1, u2) = (fresh("u"), fresh("u"));
    let mut cl = inboxes(b, &e, &[&u1, &u2]).await;
    let body = serde_json::json!({"text": "U9 joined", "attributes": {"subtype": "info", "messagelabel": {"key": "MEMBER_JOINED_GROUP"}, "keep": true}});
    send(&mut cl[0], &e, &u2, body).await;
    let (_, m) = one(&mut cl[1], &e).await;
    assert_eq!(m["attributes"], serde_json::json!({"keep": true}));
}

/// A broker that refuses a copy (nack: here a full `reject-publish` queue bound to the
/// recipient's inbox) gets the input back after a growing delay, not at once in a loop; once
/// the queue is gone the input goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_publish_is_retried_with_backoff_not_in_a_loop() {
    use lapin::options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
    use lapin::types::{AMQPValue, FieldTable};
    let b = broker();
    let e = EngineTask::start(b, &[]).await;
    let (u1, u2) = (fresh("u"), fresh("u"));
    let conn = lapin::Connection::connect(&b.amqp_uri, Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let full = format!("full.{}", fresh(""));
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
    args.insert("x-overflow".into(), AMQPValue::LongString("reject-publish".into()));
    ch.queue_declare(full.as_str().into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    let inbox = format!("apps.{}.users.{u2}.messages.{u1}.clientadded", e.app);
    ch.queue_bind(
        full.as_str().into(),
        "amq.topic".into(),
        inbox.as_str().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut cl = inboxes(b, &e, &[&u1]).await;
    send(
        &mut cl[0],
        &e,
        &u2,
        serde_json::json!({"text": "refused for now", "message_id": "m-full"}),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let retried = e.metric(r#"chat21_inputs_total{kind="send",outcome="retried"}"#).await;
    // With the delays (50 ms doubling, jittered) a few retries fit in 3 s; at once, hundreds.
    assert!((1.0..=12.0).contains(&retried), "retried {retried} times in 3 s");
    ch.queue_delete(full.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    eventually("processed once the broker takes it", || async {
        (e.metric(r#"chat21_inputs_total{kind="send",outcome="processed"}"#)
            .await
            == 1.0)
            .then_some(())
    })
    .await;
}

/// A message id is an idempotency key per sender (issue 11): a user who sends first with the
/// id another user will use (here: in the recipient's conversation with each, and in a group
/// both belong to) takes nothing from the other — both messages arrive, and both are in the
/// recipient's history, each in its own conversation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_id_cannot_be_taken_from_another_sender() {
    let b = broker();
    let e = engine_task_with(b, Db::Sqlite, &[]).await;
    let (victim, thief, reader) = (fresh("u"), fresh("u"), fresh("u"));
    let mut cl = inboxes(b, &e, &[&victim, &thief, &reader]).await;
    let id = fresh("id");
    // The thief first, then the victim, the same id, to the same reader.
    for (i, text) in [(1, "thief's"), (0, "victim's")] {
        send(
            &mut cl[i],
            &e,
            &reader,
            serde_json::json!({"text": text, "message_id": id}),
        )
        .await;
        let (_, m) = one(&mut cl[2], &e).await;
        assert_eq!(
            (m["text"].as_str(), m["sender"].as_str()),
            (Some(text), Some(cl[i].user.as_str()))
        );
    }
    // An inline group of all three: the thief's copy of the id does not shadow the victim's.
    let group = fresh("group-");
    let members = serde_json::json!({&victim: 1, &thief: 1, &reader: 1});
    for (i, text) in [(1, "thief in group"), (0, "victim in group")] {
        let body =
            serde_json::json!({"text": text, "message_id": id, "channel_type": "group", "group": {"members": members}});
        send(&mut cl[i], &e, &group, body).await;
        let (_, m) = one(&mut cl[2], &e).await;
        assert_eq!(m["text"], text);
    }
    let store = open_store(&e.database_url).await;
    let app = chat21_engine::domain::AppId::parse(&e.app).unwrap();
    let uid = |s: &str| chat21_engine::domain::UserId::parse(s).unwrap();
    // The reader's history with `with`, once `n` messages are committed, texts sorted.
    let history = |with: String, n: usize| {
        let (store, app, reader, uid) = (&store, &app, reader.clone(), &uid);
        async move {
            let page = eventually("committed", || async {
                let page = store.history(app, &uid(&reader), &uid(&with), None, 10).await.unwrap();
                (page.len() >= n).then_some(page)
            })
            .await;
            let mut texts: Vec<String> = page.iter().map(|m| m.message.text().unwrap().to_owned()).collect();
            texts.sort();
            texts
        }
    };
    assert_eq!(history(victim.clone(), 1).await, ["victim's"]);
    assert_eq!(history(thief.clone(), 1).await, ["thief's"]);
    assert_eq!(history(group.clone(), 2).await, ["thief in group", "victim in group"]);
}
