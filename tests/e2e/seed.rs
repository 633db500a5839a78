//! The seed layout with real clients: MQTT over TCP and WebSocket on `{PATH_PREFIX}/{me}/…`,
//! logged in with tokens from the engine's own `token` command (run with the engine's
//! environment), against the shipped broker configuration. Two prefixes: one with a leading
//! `/` (a leading empty AMQP word) that contains the app id, one with neither.

use crate::common::*;
use serde_json::json;
use std::time::Duration;

/// An engine in the seed layout on `prefix` (an MQTT topic prefix), for app `app`.
async fn seed_engine(b: &Broker, app: &str, prefix: &str) -> EngineTask {
    EngineTask::start(b, &[("APP_ID", app), ("TOPIC_LAYOUT", "seed"), ("PATH_PREFIX", prefix)]).await
}

/// The two prefixes every test here runs on.
fn prefixes(app: &str) -> [String; 2] {
    [format!("/apps/{app}/users"), format!("{}/inbox", fresh("chat"))]
}

/// `/a/b` → `a/b` and `a/b` → `/a/b`: the same levels, with or without the leading empty word.
fn toggle_leading_slash(prefix: &str) -> String {
    match prefix.strip_prefix('/') {
        Some(rest) => rest.to_owned(),
        None => format!("/{prefix}"),
    }
}

/// A client of `user` logged in with a CLI-minted token, subscribed to its own inbox
/// `{prefix}/{user}/#` as a seed client would.
async fn client(b: &Broker, e: &EngineTask, prefix: &str, user: &str, via: Via) -> Mqtt {
    let token = e.cli_token(user);
    let mut c = Mqtt::connect_with_token(b, &e.app, user, &token, via, false).await;
    c.subscribe(&format!("{prefix}/{user}/#"))
        .await
        .unwrap_or_else(|err| panic!("{user} may subscribe to its own inbox under {prefix}: {err}"));
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_and_group_messages_reach_real_clients() {
    let b = broker();
    let app = fresh("app");
    for prefix in prefixes(&app) {
        let e = seed_engine(b, &app, &prefix).await;
        let t = e.topics();
        let (u1, u2, u3) = (fresh("u"), fresh("u"), fresh("u"));
        let mut c1 = client(b, &e, &prefix, &u1, Via::Tcp).await;
        let mut c2 = client(b, &e, &prefix, &u2, Via::Ws).await;
        let mut c3 = client(b, &e, &prefix, &u3, Via::Tcp).await;

        // U1 → U2 over TCP: the sender's copy (100) and the recipient's (150).
        c1.publish_acked(&t.outgoing(&u1, &u2), json!({"text":"hello"}).to_string().as_bytes())
            .await
            .unwrap();
        let (topic, sent) = one(&mut c1, &e).await;
        assert_eq!(topic, format!("{prefix}/{u1}/{u2}/messages/clientadded"));
        assert_eq!(sent["status"], 100);
        let (topic, got) = one(&mut c2, &e).await;
        assert_eq!(topic, format!("{prefix}/{u2}/{u1}/messages/clientadded"));
        assert_eq!(got["status"], 150);
        assert_eq!(
            (got["text"].as_str(), got["sender"].as_str()),
            (Some("hello"), Some(u1.as_str()))
        );
        assert_eq!(got["recipient"], u2.as_str());
        assert_eq!(got["app_id"], app.as_str());
        assert_eq!(got["message_id"], sent["message_id"]);

        // U2 answers over WebSocket.
        c2.publish_acked(&t.outgoing(&u2, &u1), br#"{"text":"hi back"}"#)
            .await
            .unwrap();
        assert_eq!(
            one(&mut c2, &e).await.0,
            format!("{prefix}/{u2}/{u1}/messages/clientadded")
        );
        let (topic, back) = one(&mut c1, &e).await;
        assert_eq!(topic, format!("{prefix}/{u1}/{u2}/messages/clientadded"));
        assert_eq!(
            (back["text"].as_str(), back["status"].as_i64()),
            (Some("hi back"), Some(150))
        );

        // A group message (inline members): every member's copy under its own inbox.
        let g = fresh("group-");
        let body = json!({"text":"to all","channel_type":"group","group":{"members":{&u1:1,&u2:1,&u3:1}}});
        c1.publish_acked(&t.outgoing(&u1, &g), body.to_string().as_bytes())
            .await
            .unwrap();
        for (c, u) in [(&mut c1, &u1), (&mut c2, &u2), (&mut c3, &u3)] {
            let (topic, m) = one(c, &e).await;
            assert_eq!(topic, format!("{prefix}/{u}/{g}/messages/clientadded"));
            assert_eq!((m["text"].as_str(), m["status"].as_i64()), (Some("to all"), Some(150)));
            assert_eq!(m["sender"], u1.as_str());
        }
        nothing_more(&mut [c1, c2, c3]).await;
    }
}

/// Everything a seed token must not do, through the real broker: each attempt is refused
/// (the broker closes the connection, so every attempt gets a fresh one) and nothing forged
/// is routed. Run for each prefix against the other, so a token of one prefix is also shown
/// to have no rights under the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_tokens_cannot_reach_other_users_or_prefixes() {
    let b = broker();
    let app = fresh("app");
    let [pa, pb] = prefixes(&app);
    let ea = seed_engine(b, &app, &pa).await;
    let eb = seed_engine(b, &app, &pb).await;
    // Every key a forged publish could have been routed on: both prefixes with and without
    // the leading empty word, and the chat21 layout's keys of the app.
    let mut taps = Vec::new();
    for p in [
        pa.clone(),
        pb.clone(),
        toggle_leading_slash(&pa),
        toggle_leading_slash(&pb),
    ] {
        taps.push(Tap::new(b, &format!("{}.#", chat21_engine::topic::mqtt_to_amqp(&p))).await);
    }
    taps.push(Tap::new(b, &format!("apps.{app}.#")).await);
    for ((mine, prefix), (_, other)) in [((&ea, &pa), (&eb, &pb)), ((&eb, &pb), (&ea, &pa))] {
        let (u1, u2) = (fresh("u"), fresh("u"));
        // An id that extends u1's: its topics start with u1's characters.
        let longer = format!("{u1}x");
        let token = mine.cli_token(&u1);
        let forged = br#"{"text":"forged"}"#;
        let publishes = [
            ("as someone else", format!("{prefix}/{u2}/{u1}/messages/outgoing")),
            ("as a longer id", format!("{prefix}/{longer}/{u2}/messages/outgoing")),
            ("into another inbox", format!("{prefix}/{u2}/{u1}/messages/clientadded")),
            (
                "into one's own inbox",
                format!("{prefix}/{u1}/{u2}/messages/clientadded"),
            ),
            ("under the other prefix", format!("{other}/{u1}/{u2}/messages/outgoing")),
            (
                "with the leading / toggled",
                format!("{}/{u1}/{u2}/messages/outgoing", toggle_leading_slash(prefix)),
            ),
            (
                "on the chat21 layout's words",
                format!("apps/{app}/outgoing/users/{u1}/messages/{u2}/outgoing"),
            ),
        ];
        for via in [Via::Tcp, Via::Ws] {
            for (what, topic) in &publishes {
                let mut c = Mqtt::connect_with_token(b, &mine.app, &u1, &token, via, false).await;
                let key = topic.replace('/', ".");
                assert!(
                    c.publish_acked(&key, forged).await.is_err(),
                    "{prefix}: publish {what} ({topic}) over {via:?} was accepted"
                );
            }
        }
        let subscriptions = [
            ("another inbox", format!("{prefix}/{u2}/#")),
            ("a longer id's inbox", format!("{prefix}/{longer}/#")),
            ("everybody's inboxes", format!("{prefix}/#")),
            (
                "everybody's copies from u1",
                format!("{prefix}/+/{u1}/messages/clientadded"),
            ),
            ("everything", "#".to_string()),
            ("one's inbox under the other prefix", format!("{other}/{u1}/#")),
            (
                "one's inbox with the leading / toggled",
                format!("{}/{u1}/#", toggle_leading_slash(prefix)),
            ),
        ];
        for via in [Via::Tcp, Via::Ws] {
            for (what, filter) in &subscriptions {
                let mut c = Mqtt::connect_with_token(b, &mine.app, &u1, &token, via, false).await;
                assert!(
                    c.subscribe(filter).await.is_err(),
                    "{prefix}: subscribe to {what} ({filter}) over {via:?} was accepted"
                );
            }
        }
        // And the same token still does what it may.
        let mut c = client(b, mine, prefix, &u1, Via::Tcp).await;
        c.publish_acked(&mine.topics().outgoing(&u1, &u2), br#"{"text":"allowed"}"#)
            .await
            .unwrap();
        assert_eq!(
            one(&mut c, mine).await.0,
            format!("{prefix}/{u1}/{u2}/messages/clientadded")
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for tap in &taps {
        let seen = tap.drain().await;
        let routed: Vec<_> = seen.iter().filter(|(_, m)| m["text"] == "forged").collect();
        assert!(routed.is_empty(), "forged publishes were routed: {routed:?}");
    }
}
