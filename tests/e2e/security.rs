//! The broker configuration and minted tokens keep every user to their own topics.

use crate::common::*;
use lapin::options::{BasicConsumeOptions, BasicGetOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_user_can_use_own_topics_only() {
    let b = broker();
    let engine = EngineTask::start(b, &[]).await;
    let app = engine.app.clone();
    let (u1, u2) = (fresh("u"), fresh("u"));
    let t = engine.topics();
    // Everything that reaches amq.topic for this app, seen by an admin observer.
    let tap = Tap::new(b, &format!("apps.{app}.#")).await;

    // Allowed: publish on one's own outgoing topic, subscribe to one's own inbox.
    let mut c1 = Mqtt::connect(b, &app, &u1, Via::Tcp).await;
    c1.subscribe_inbox().await;
    c1.publish_acked(&t.outgoing(&u1, &u2), br#"{"text":"mine"}"#)
        .await
        .unwrap();
    let own = c1.messages(1, Duration::from_secs(15)).await;
    assert_eq!(
        own.len(),
        1,
        "own copy; metrics:\n{}\nlog:\n{}",
        engine.metrics().await,
        engine.log_text()
    );

    // Refused: publishing as another user (the broker closes the connection, routes nothing).
    let mut c = Mqtt::connect(b, &app, &u1, Via::Tcp).await;
    assert!(c
        .publish_acked(&t.outgoing(&u2, &u1), br#"{"text":"forged"}"#)
        .await
        .is_err());
    // Refused: writing into another user's inbox.
    let mut c = Mqtt::connect(b, &app, &u1, Via::Tcp).await;
    let forged_inbox = format!("apps.{app}.users.{u2}.messages.{u1}.clientadded");
    assert!(c.publish_acked(&forged_inbox, br#"{"text":"forged"}"#).await.is_err());
    // Refused: subscribing to another user's inbox, or to everybody's.
    let mut c = Mqtt::connect(b, &app, &u1, Via::Tcp).await;
    assert!(c.subscribe(&format!("apps/{app}/users/{u2}/#")).await.is_err());
    let mut c = Mqtt::connect(b, &app, &u1, Via::Ws).await;
    assert!(c.subscribe(&format!("apps/{app}/users/#")).await.is_err());
    let mut c = Mqtt::connect(b, &app, &u1, Via::Tcp).await;
    assert!(c.subscribe("#").await.is_err());
    // Refused: a token of the same user id in another app.
    let other_app_token = b.token("otherapp", &u1);
    let mut c = Mqtt::connect_with_token(b, &app, &u1, &other_app_token, Via::Tcp, false).await;
    assert!(c
        .publish_acked(&t.outgoing(&u1, &u2), br#"{"text":"x"}"#)
        .await
        .is_err());

    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = tap.drain().await;
    let forged: Vec<_> = seen
        .iter()
        .filter(|(_, m)| m["text"] == "forged" || m["text"] == "x")
        .collect();
    assert!(forged.is_empty(), "forged publishes were routed: {forged:?}");
}

/// Wrong key, garbage, expired: refused over every listener, TLS ones included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_cannot_log_in() {
    let b = broker();
    let app = fresh("app");
    let u = fresh("u");
    let wrong_key = chat21_token(
        &chat21_engine::jwt::Minter::new("a-completely-different-secret", &b.jwt_kid),
        &app,
        &u,
    );
    for (what, token) in [
        ("wrong key", wrong_key),
        ("garbage", "not.a.jwt".to_string()),
        ("expired", expired_token(b, &app, &u)),
    ] {
        for via in [Via::Tcp, Via::Ws, Via::Tls, Via::Wss] {
            let r = Mqtt::try_connect(b, &app, &u, &token, via, false).await;
            assert!(r.is_err(), "{what} over {via:?} was accepted");
        }
    }
}

fn expired_token(b: &Broker, app: &str, user: &str) -> String {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let m = b.minter();
    let good = chat21_token(&m, app, user);
    let mut claims = m.verify(&good).unwrap();
    claims.iat -= 7200;
    claims.exp = claims.iat + 60;
    let mut h = Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = Some(b.jwt_kid.clone());
    encode(&h, &claims, &EncodingKey::from_secret(b.jwt_secret.as_bytes())).unwrap()
}

/// A user token used over AMQP (BROKER.md security finding) reaches neither the engine's
/// queue nor any queue but an MQTT session's, and cannot bind to another user's inbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_user_token_cannot_reach_engine_queue_or_other_queues() {
    let b = broker();
    let engine = EngineTask::start(b, &[]).await;
    let (u1, u2) = (fresh("u"), fresh("u"));
    let token = b.token(&engine.app, &u1);
    let uri = format!("amqp://{u1}:{token}@127.0.0.1:{}/%2f", b.amqp_port);
    let conn = lapin::Connection::connect(&uri, Default::default())
        .await
        .expect("a user token logs in over AMQP");
    // A partition queue: where the inputs are.
    let partition = format!("{}.p00", engine.queue);
    let q = partition.as_str();

    let ch = conn.create_channel().await.unwrap();
    let r = ch
        .basic_consume(
            q.into(),
            "steal".into(),
            BasicConsumeOptions::default(),
            Default::default(),
        )
        .await;
    assert!(r.is_err(), "consumed the engine's queue");
    let ch = conn.create_channel().await.unwrap();
    assert!(
        ch.basic_get(q.into(), BasicGetOptions::default()).await.is_err(),
        "basic.get on the engine's queue"
    );
    let ch = conn.create_channel().await.unwrap();
    assert!(
        ch.queue_delete(q.into(), QueueDeleteOptions::default()).await.is_err(),
        "deleted the engine's queue"
    );
    let ch = conn.create_channel().await.unwrap();
    let r = ch
        .queue_declare("evil".into(), QueueDeclareOptions::default(), Default::default())
        .await;
    assert!(r.is_err(), "declared an arbitrary queue");
    let ch = conn.create_channel().await.unwrap();
    let r = ch
        .queue_declare(
            format!("{q}.x").as_str().into(),
            QueueDeclareOptions::default(),
            Default::default(),
        )
        .await;
    assert!(r.is_err(), "declared a queue next to the engine's");

    // Nor the hash exchange in front of the partitions: no tap on everyone's inputs, and no
    // input that skips amq.topic's topic permissions.
    let exchange = format!("{}.partitions", engine.queue);
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    let sent = ch
        .basic_publish(
            exchange.as_str().into(),
            engine.topics().outgoing(&u2, &u1).as_str().into(),
            Default::default(),
            b"{}",
            Default::default(),
        )
        .await;
    let confirmed = match sent {
        Ok(confirm) => matches!(confirm.await, Ok(lapin::Confirmation::Ack(_))),
        Err(_) => false,
    };
    assert!(!confirmed, "published into the partition exchange");

    // What an MQTT session needs is allowed, but only onto the user's own inbox.
    let own = format!("mqtt-subscription-{}qos0", fresh("c"));
    let ch = session_queue(&conn, &own).await;
    let mine = format!("apps.{}.users.{u1}.#", engine.app);
    bind(&ch, &own, "amq.topic", &mine).await.expect("bind own inbox");
    let theirs = format!("apps.{}.users.{u2}.#", engine.app);
    let r = bind(&ch, &own, "amq.topic", &theirs).await;
    assert!(r.is_err(), "bound to another user's inbox");
    let ch = session_queue(&conn, &own).await;
    let r = bind(&ch, &own, &exchange, "1").await;
    assert!(r.is_err(), "bound to the partition exchange (a tap on every input)");

    // The engine is unaffected and its queues intact.
    assert_eq!(http_get(engine.http_port, "/readyz").await.unwrap().0, 200);
}

/// A new channel with `queue` declared on it the way an MQTT session's queue is (auto-delete):
/// what a user token may declare.
async fn session_queue(conn: &lapin::Connection, queue: &str) -> lapin::Channel {
    let ch = conn.create_channel().await.unwrap();
    let opts = QueueDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    ch.queue_declare(queue.into(), opts, Default::default())
        .await
        .expect("session queue");
    ch
}

async fn bind(ch: &lapin::Channel, queue: &str, exchange: &str, key: &str) -> lapin::Result<()> {
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        Default::default(),
    )
    .await
}

/// Webhook queues hold every user's events: a user token over AMQP can neither read them,
/// nor tap their routing keys, nor forge an event into them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_user_token_cannot_read_or_forge_webhook_events() {
    let b = broker();
    let hook = Receiver::start().await;
    let url = hook.url();
    let engine = EngineTask::start(b, &[("WEBHOOK_ENABLED", "true"), ("WEBHOOK_ENDPOINTS", &url)]).await;
    let endpoint = chat21_engine::webhooks::Endpoint::new(&url);
    let (queue, failed) = (endpoint.queue(&engine.queue), endpoint.failed(&engine.queue));
    let u1 = fresh("u");
    let token = b.token(&engine.app, &u1);
    let uri = format!("amqp://{u1}:{token}@127.0.0.1:{}/%2f", b.amqp_port);
    let conn = lapin::Connection::connect(&uri, Default::default())
        .await
        .expect("a user token logs in over AMQP");
    for q in [&queue, &failed] {
        let ch = conn.create_channel().await.unwrap();
        let r = ch
            .basic_consume(
                q.as_str().into(),
                "steal".into(),
                BasicConsumeOptions::default(),
                Default::default(),
            )
            .await;
        assert!(r.is_err(), "consumed {q}");
        let ch = conn.create_channel().await.unwrap();
        assert!(
            ch.basic_get(q.as_str().into(), BasicGetOptions::default())
                .await
                .is_err(),
            "basic.get on {q}"
        );
        // A tap: the user's own session queue bound to the webhook key.
        let own = format!("mqtt-subscription-{}qos0", fresh("c"));
        let ch = session_queue(&conn, &own).await;
        let r = bind(&ch, &own, "amq.topic", q).await;
        assert!(r.is_err(), "bound a tap on {q}");
        // A forged event.
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(Default::default()).await.unwrap();
        let forged =
            br#"[{"id":"evt_forged","type":"message-sent","lane":1,"at":1,"body":{"event_type":"message-sent"}}]"#;
        let sent = ch
            .basic_publish(
                "amq.topic".into(),
                q.as_str().into(),
                Default::default(),
                forged,
                Default::default(),
            )
            .await;
        let confirmed = match sent {
            Ok(confirm) => matches!(confirm.await, Ok(lapin::Confirmation::Ack(_))),
            Err(_) => false,
        };
        assert!(!confirmed, "published a forged event into {q}");
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        hook.hits().iter().all(|h| h.header("webhook-id") != Some("evt_forged")),
        "a forged event reached the endpoint"
    );
    assert_eq!(http_get(engine.http_port, "/readyz").await.unwrap().0, 200);
}

/// A token whose scopes hold `%55%31` where the user id goes: the broker URL-decodes the
/// pattern, so it carries the rights of `decoded`. Signed with the broker's key directly —
/// the engine's own minter cannot be asked for it (that is what this file tests).
fn hand_made_token(b: &Broker, app: &str, encoded: &str) -> String {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let m = b.minter();
    let mut claims = m.verify(&b.token(app, "placeholder")).unwrap();
    claims.scope = vec![
        format!("rabbitmq.read:*/amq.topic/apps.{app}.users.{encoded}.*"),
        "rabbitmq.configure:*/mqtt-subscription-*".into(),
        "rabbitmq.write:*/mqtt-subscription-*".into(),
        "rabbitmq.read:*/mqtt-subscription-*".into(),
    ];
    (claims.sub, claims.user_id) = (encoded.into(), encoded.into());
    let mut h = Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = Some(b.jwt_kid.clone());
    encode(&h, &claims, &EncodingKey::from_secret(b.jwt_secret.as_bytes())).unwrap()
}

/// Ids the broker reinterprets inside scopes (`%` escapes, `{claim}` variables) never get a
/// token and never enter through a topic or a payload (BROKER.md, issue 11 item 1). First
/// the attack itself, to show it is real on this broker: a token for the id `%55%31`
/// subscribes to U1's inbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_the_broker_reinterprets_are_refused_everywhere() {
    let b = broker();
    let engine = EngineTask::start(b, &[]).await;
    let app = engine.app.clone();
    let victim = fresh("U");
    let encoded: String = victim.bytes().map(|c| format!("%{c:02X}")).collect();
    let mut thief =
        Mqtt::connect_with_token(b, &app, &encoded, &hand_made_token(b, &app, &encoded), Via::Tcp, false).await;
    thief
        .subscribe(&format!("apps/{app}/users/{victim}/#"))
        .await
        .expect("the broker decodes the scope: the attack is real");

    // Contained at minting: the engine's token command refuses such ids.
    for id in [encoded.as_str(), "%73ystem", "{app_id}", "{sub}"] {
        let out = std::process::Command::new(ENGINE)
            .args(["token", id])
            .env_clear()
            .env("RABBITMQ_URI", &b.amqp_uri)
            .env("JWT_SECRET", &b.jwt_secret)
            .env("APP_ID", &app)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "a token was minted for {id}");
    }

    // Contained at the engine: such ids in a topic or in a payload are rejected, nothing is
    // delivered, and other traffic keeps flowing.
    let sender = fresh("u");
    let t = engine.topics();
    let mut c = Mqtt::connect(b, &app, &sender, Via::Tcp).await;
    c.subscribe_inbox().await;
    let tap = Tap::new(b, &format!("apps.{app}.users.#")).await;
    c.publish_acked(&t.outgoing(&sender, &encoded), br#"{"text":"to an encoded id"}"#)
        .await
        .unwrap();
    c.publish_acked(&t.outgoing(&sender, "{app_id}"), br#"{"text":"to a variable"}"#)
        .await
        .unwrap();
    let inline = serde_json::json!({"text":"inline","channel_type":"group","group":{"members":{"%73ystem":1}}});
    c.publish_acked(&t.outgoing(&sender, &fresh("group-")), inline.to_string().as_bytes())
        .await
        .unwrap();
    let ok = fresh("u");
    c.publish_acked(&t.outgoing(&sender, &ok), br#"{"text":"fine"}"#)
        .await
        .unwrap();
    let (_, own) = one(&mut c, &engine).await;
    assert_eq!(own["text"], "fine", "the rejected ones produce no copy");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let delivered: Vec<String> = tap.drain().await.into_iter().map(|(k, _)| k).collect();
    assert_eq!(delivered.len(), 2, "only the valid message's two copies: {delivered:?}");
    assert!(delivered.iter().all(|k| !k.contains('%') && !k.contains('{')));
    assert_eq!(
        engine.metric(r#"chat21_rejections_total{reason="invalid_id"}"#).await,
        3.0
    );
}

/// The engine runs with exactly the broker permissions production gives it (compose's
/// `docker-entrypoint.sh` and this test share `deploy/rabbitmq/engine-permissions.sh`): its
/// queues, its dead-letter queue, its webhook queues, `amq.topic` — and with them it reaches
/// nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_runs_with_its_least_privilege_user_and_reaches_nothing_else() {
    let b = broker();
    let queue = format!("chat21.engine.{}", fresh("lp"));
    let uri = b.engine_user(&fresh("engine"), "engine-password", &queue);
    let hook = Receiver::start().await;
    let url = hook.url();
    let e = EngineTask::start(
        b,
        &[
            ("RABBITMQ_URI", uri.as_str()),
            ("QUEUE_NAME", queue.as_str()),
            ("WEBHOOK_ENABLED", "true"),
            ("WEBHOOK_ENDPOINTS", url.as_str()),
        ],
    )
    .await;
    let (u1, u2) = (fresh("u"), fresh("u"));
    let mut cl = inboxes(b, &e, &[&u1, &u2]).await;
    send(&mut cl[0], &e, &u2, serde_json::json!({"text": "least privilege"})).await;
    assert_eq!(one(&mut cl[1], &e).await.1["text"], "least privilege");
    hook.wait_until("the webhook events", WAIT, |h| h.len() >= 2).await;

    let other = format!("other.{}", fresh(""));
    let admin = lapin::Connection::connect(&b.amqp_uri, Default::default())
        .await
        .unwrap();
    admin
        .create_channel()
        .await
        .unwrap()
        .queue_declare(
            other.as_str().into(),
            QueueDeclareOptions::default(),
            Default::default(),
        )
        .await
        .unwrap();
    let conn = lapin::Connection::connect(&uri, Default::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    assert!(
        ch.basic_get(other.as_str().into(), BasicGetOptions::default())
            .await
            .is_err(),
        "read another queue"
    );
    let ch = conn.create_channel().await.unwrap();
    let r = ch
        .queue_declare("evil".into(), QueueDeclareOptions::default(), Default::default())
        .await;
    assert!(r.is_err(), "declared another queue");
    let ch = conn.create_channel().await.unwrap();
    let r = ch
        .exchange_declare(
            "evil.x".into(),
            lapin::ExchangeKind::Fanout,
            Default::default(),
            Default::default(),
        )
        .await;
    assert!(r.is_err(), "declared an exchange");
}

/// MQTT and Web-MQTT over TLS, as `deploy/rabbitmq/conf.d/30-tls.conf.example` enables them
/// (the private broker uses that file, with a private CA): a message goes U1 → U2 over
/// mqtts and wss, and tokens work the same. The clients verify the server's certificate
/// (rustls: the private CA, the 127.0.0.1 address in its SAN).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_and_web_mqtt_over_tls() {
    let b = broker();
    let e = EngineTask::start(b, &[]).await;
    let (u1, u2) = (fresh("u"), fresh("u"));
    let mut c1 = Mqtt::connect(b, &e.app, &u1, Via::Tls).await;
    c1.subscribe_inbox().await;
    let mut c2 = Mqtt::connect(b, &e.app, &u2, Via::Wss).await;
    c2.subscribe_inbox().await;
    send(&mut c1, &e, &u2, serde_json::json!({"text": "over tls"})).await;
    assert_eq!(one(&mut c2, &e).await.1["text"], "over tls");
    assert_eq!(one(&mut c1, &e).await.1["status"], 100);
    // The same confinement over TLS: another user's inbox is refused.
    let mut c = Mqtt::connect(b, &e.app, &u1, Via::Wss).await;
    assert!(c.subscribe(&format!("apps/{}/users/{u2}/#", e.app)).await.is_err());
}
