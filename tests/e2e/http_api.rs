//! The HTTP API (PROTOCOL §14) end to end, on an in-process engine and the private broker:
//! reads of what MQTT clients sent, sending and archiving over HTTP seen by MQTT clients,
//! paging under concurrent inserts, the auth matrix, bad requests, blocks, tokens, devices,
//! the OpenAPI document, the ops endpoints on their own port, and a store outage — on SQLite
//! and PostgreSQL where the store matters.

use crate::common::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;

fn api(e: &Running) -> ApiClient {
    ApiClient::new(e.http_port)
}

/// Wait until `me`'s timeline with `with` holds `n` messages: a copy reaches its recipient
/// while its commit is on the way (both before the ack), so a read right after delivery may
/// come a few milliseconds early.
async fn committed(api: &ApiClient, e: &Running, token: &str, me: &str, with: &str, n: usize) {
    let path = format!("/api/{}/{me}/conversations/{with}/messages?limit=1000", e.app);
    eventually("the messages committed", || async {
        let (_, v) = api.get(&path, token).await;
        (v["result"].as_array()?.len() >= n).then_some(())
    })
    .await;
}

/// `n` messages from `from` to `to` over MQTT, each waited for at `to`.
async fn exchange(from: &mut Mqtt, to: &mut Mqtt, e: &Running, n: usize, stamp: Option<i64>) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let id = fresh("m");
        let mut body = json!({"text": format!("t{i}"), "type": "text", "message_id": id});
        // History reads newest first by timestamp, then id: distinct timestamps in sending
        // order, so the order read back is the order sent (the engine would stamp messages
        // it takes in one millisecond alike).
        let ts = stamp.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64
                + i as i64
        });
        body["timestamp"] = ts.into();
        send(from, e, &to.user.clone(), body).await;
        ids.push(id);
    }
    let got = to.messages(n, WAIT).await;
    assert_eq!(got.len(), n, "{} messages reach {}", n, to.user);
    let _ = from.messages(n, WAIT).await;
    ids
}

async fn reads_what_mqtt_clients_sent(db: Db) {
    let b = broker();
    let e = engine_task_with(b, db, &[]).await;
    let (u1, u2, u3) = (fresh("U"), fresh("U"), fresh("U"));
    let mut cl = inboxes(b, &e, &[&u1, &u2]).await;
    let (t1, app) = (b.token(&e.app, &u1), e.app.clone());
    let [c1, c2] = cl.as_mut_slice() else { panic!() };
    let ids = exchange(c1, c2, &e, 5, None).await;
    let api = api(&e);
    committed(&api, &e, &t1, &u1, &u2, 5).await;

    let (s, v) = api.get(&format!("/api/{app}/{u1}/conversations"), &t1).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["success"], true);
    let convs = v["result"].as_array().unwrap();
    assert_eq!(convs.len(), 1);
    assert_eq!(
        (convs[0]["conversWith"].as_str(), convs[0]["key"].as_str()),
        (Some(u2.as_str()), Some(u2.as_str()))
    );
    assert_eq!(convs[0]["timelineOf"], u1.as_str());
    assert_eq!(convs[0]["last_message_text"], "t4");
    assert_eq!(convs[0]["is_new"], false, "the sender's own");
    assert_eq!(convs[0]["archived"], false);

    // Single forms: a list of 0 or 1.
    let (s, v) = api.get(&format!("/api/{app}/{u1}/conversations/{u2}"), &t1).await;
    assert_eq!((s, v["result"].as_array().unwrap().len()), (200, 1));
    let (s, v) = api.get(&format!("/api/{app}/{u1}/conversations/{u3}"), &t1).await;
    assert_eq!((s, v["result"].clone()), (200, json!([])));
    let (s, v) = api
        .get(&format!("/api/{app}/{u1}/archived_conversations/{u2}"), &t1)
        .await;
    assert_eq!((s, v["result"].clone()), (200, json!([])), "not archived");

    // History: newest first, with the status in this timeline.
    let (s, v) = api
        .get(&format!("/api/{app}/{u1}/conversations/{u2}/messages"), &t1)
        .await;
    assert_eq!(s, 200);
    let got: Vec<&str> = v["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message_id"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = ids.iter().rev().map(String::as_str).collect();
    assert_eq!(got, want);
    assert_eq!(v["result"][0]["status"], 100);
    assert_eq!(v["result"][0]["timelineOf"], u1.as_str());
    assert_eq!(v["result"][0]["conversWith"], u2.as_str());
    assert_eq!(v["next"], Value::Null, "one page");

    // Archive over HTTP: the devices are told, as for the MQTT archive input.
    let (s, v) = api.delete(&format!("/api/{app}/conversations/{u2}"), &t1).await;
    assert_eq!((s, v.clone()), (201, json!({"success": true})));
    let told = cl[0].messages(2, WAIT).await;
    let topics: Vec<&str> = told.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        topics,
        vec![
            format!("apps/{app}/users/{u1}/conversations/{u2}/clientdeleted"),
            format!("apps/{app}/users/{u1}/archived_conversations/{u2}/clientadded"),
        ]
    );
    // Read-your-writes: the next call sees it, in every spelling.
    let (_, v) = api.get(&format!("/api/{app}/{u1}/conversations"), &t1).await;
    assert_eq!(v["result"], json!([]));
    for path in [
        format!("/api/{app}/{u1}/conversations?archived=true"),
        format!("/api/{app}/{u1}/conversations/archived"),
        format!("/api/{app}/{u1}/archived_conversations"),
    ] {
        let (s, v) = api.get(&path, &t1).await;
        assert_eq!((s, v["result"].as_array().unwrap().len()), (200, 1), "{path}");
        assert_eq!(v["result"][0]["archived"], true);
    }
    let (_, v) = api
        .get(&format!("/api/{app}/{u1}/archived_conversations/{u2}"), &t1)
        .await;
    assert_eq!(v["result"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn reads_what_mqtt_clients_sent_sqlite() {
    reads_what_mqtt_clients_sent(Db::Sqlite).await;
}

#[tokio::test]
async fn reads_what_mqtt_clients_sent_postgres() {
    reads_what_mqtt_clients_sent(Db::Postgres).await;
}

/// Walking a conversation's pages returns every message exactly once, though 40 of them share
/// one millisecond and new ones keep arriving meanwhile.
async fn pages_are_stable_under_inserts(db: Db) {
    let b = broker();
    let e = engine_task_with(b, db, &[]).await;
    let (u1, u2) = (fresh("U"), fresh("U"));
    let mut cl = inboxes(b, &e, &[&u1, &u2]).await;
    let [c1, c2] = cl.as_mut_slice() else { panic!() };
    let mut ids = exchange(c1, c2, &e, 40, Some(1_700_000_000_000)).await;
    ids.extend(exchange(c1, c2, &e, 10, None).await);
    let (t2, app) = (b.token(&e.app, &u2), e.app.clone());
    let api = api(&e);
    committed(&api, &e, &t2, &u2, &u1, 50).await;

    // New messages arrive while the pages are read.
    let writer = {
        let (b, app, u1, u2) = (b, app.clone(), u1.clone(), u2.clone());
        let topics = e.topics();
        async move {
            let c = Mqtt::connect(b, &app, &u1, Via::Tcp).await;
            for i in 0..30 {
                let body = json!({"text": format!("late{i}"), "type": "text"});
                c.publish(&topics.outgoing(&u1, &u2), body.to_string().as_bytes()).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let reader = async {
        let mut seen = Vec::new();
        let mut before: Option<String> = None;
        loop {
            let mut path = format!("/api/{app}/{u2}/conversations/{u1}/messages?limit=7");
            if let Some(c) = &before {
                path.push_str(&format!("&before={}", urlencode(c)));
            }
            let (s, v) = api.get(&path, &t2).await;
            assert_eq!(s, 200, "{v}");
            let page = v["result"].as_array().unwrap();
            assert!(page.len() <= 7);
            seen.extend(page.iter().map(|m| m["message_id"].as_str().unwrap().to_owned()));
            match v["next"].as_str() {
                Some(n) => before = Some(n.to_owned()),
                None => break,
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        seen
    };
    let (_, seen) = tokio::join!(writer, reader);
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no message twice");
    for id in &ids {
        assert!(unique.contains(id), "{id} was skipped");
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|c| match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (c as char).to_string(),
            _ => format!("%{c:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn pages_are_stable_under_inserts_sqlite() {
    pages_are_stable_under_inserts(Db::Sqlite).await;
}

#[tokio::test]
async fn pages_are_stable_under_inserts_postgres() {
    pages_are_stable_under_inserts(Db::Postgres).await;
}

/// Who may read what: tokens that are missing, garbage, forged, expired, `alg:none`, for
/// another app, or another user's (with ids crafted to look alike) are refused.
#[tokio::test]
async fn auth_matrix() {
    let b = broker();
    let e = engine_task_with(b, Db::Sqlite, &[]).await;
    let (u1, u2) = (fresh("U"), fresh("U"));
    let app = e.app.clone();
    let api = api(&e);
    let path = format!("/api/{app}/{u1}/conversations");
    let t1 = b.token(&app, &u1);

    let status = |r: (u16, Value)| {
        assert_eq!(r.1["success"], false, "{}", r.1);
        assert!(r.1["error"].is_string());
        r.0
    };
    assert_eq!(status(api.call("GET", &path, None, None).await), 401, "no token");
    assert_eq!(status(api.get(&path, "garbage").await), 401);
    let forged = chat21_token(
        &chat21_engine::jwt::Minter::new("another-secret-of-32-bytes!!", "tiledesk-key"),
        &app,
        &u1,
    );
    assert_eq!(status(api.get(&path, &forged).await), 401, "another secret");
    let other_app = b.token(&fresh("app"), &u1);
    assert_eq!(status(api.get(&path, &other_app).await), 401, "another app's token");
    // alg:none with the same claims.
    let claims = t1.split('.').nth(1).unwrap();
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{claims}.");
    assert_eq!(status(api.get(&path, &none).await), 401, "alg none");
    // Expired (an hour ago, past any leeway).
    let expired = {
        use jsonwebtoken::{encode, EncodingKey, Header};
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let c = json!({"sub": u1, "app_id": app, "aud": ["rabbitmq", u1], "exp": now - 3600, "iat": now - 7200});
        encode(
            &Header::default(),
            &c,
            &EncodingKey::from_secret(b.jwt_secret.as_bytes()),
        )
        .unwrap()
    };
    assert_eq!(status(api.get(&path, &expired).await), 401, "expired");

    // Someone else's data: 403, with look-alike ids too.
    let t2 = b.token(&app, &u2);
    assert_eq!(status(api.get(&path, &t2).await), 403);
    let longer = b.token(&app, &format!("{u1}x"));
    assert_eq!(
        status(api.get(&path, &longer).await),
        403,
        "an id extending the victim's"
    );
    for p in [
        format!("/api/{app}/{u1}/conversations/{u2}/messages"),
        format!("/api/{app}/{u1}/archived_conversations"),
        format!("/api/{app}/{u1}/blocks"),
    ] {
        assert_eq!(status(api.get(&p, &t2).await), 403, "{p}");
    }
    // Percent-escapes in the path decode to an id that is not valid (§0), never to the victim's.
    let encoded: String = u1.bytes().map(|c| format!("%{c:02X}")).collect();
    let (s, _) = api.get(&format!("/api/{app}/{encoded}/conversations"), &t2).await;
    assert_eq!(s, 403, "an encoded id is the same id: still not the caller's");
    let (s, _) = api.get(&format!("/api/{app}/{u1}%2Ex/conversations"), &t1).await;
    assert_eq!(s, 400, "a . in an id");

    // The same token works in every place a client may put it.
    for auth in [t1.clone(), format!("Bearer {t1}"), format!("JWT {t1}")] {
        let (s, _) = api.raw("GET", &path, Some(auth), None).await;
        assert_eq!(s, 200);
    }
    // In the query, under each name clients use: the owner's token reads, another user's is
    // 403, a forged one (its signature changed) 401 — the same checks as the header's.
    let forged = format!(
        "{}{}",
        &t1[..t1.len() - 2],
        if t1.ends_with("AA") { "BB" } else { "AA" }
    );
    for name in ["jwt", "JWT", "token"] {
        for (token, want) in [(&t1, 200), (&t2, 403), (&forged, 401)] {
            let (s, _) = api.call("GET", &format!("{path}?{name}={token}"), None, None).await;
            assert_eq!(s, want, "?{name}=");
        }
    }
    // An admin reads anyone's; the path's app must be this engine's.
    let admin = b
        .minter()
        .admin_token(
            &e.topics(),
            &app.parse_app(),
            &u2.parse_user(),
            Duration::from_secs(600),
        )
        .unwrap();
    assert_eq!(api.get(&path, &admin).await.0, 200);
    let (s, _) = api.get(&format!("/api/{}/{u1}/conversations", fresh("app")), &t1).await;
    assert_eq!(s, 404, "another app");
}

trait Ids {
    fn parse_app(&self) -> chat21_engine::domain::AppId;
    fn parse_user(&self) -> chat21_engine::domain::UserId;
}

impl Ids for String {
    fn parse_app(&self) -> chat21_engine::domain::AppId {
        chat21_engine::domain::AppId::parse(self).unwrap()
    }
    fn parse_user(&self) -> chat21_engine::domain::UserId {
        chat21_engine::domain::UserId::parse(self).unwrap()
    }
}

/// Bad requests get a clear 4xx JSON error, never a 500 or a hang.
#[tokio::test]
async fn bad_requests_are_4xx_json() {
    let b = broker();
    let e = engine_task_with(b, Db::Sqlite, &[("HTTP_MAX_BODY_BYTES", "2048")]).await;
    let (u1, app) = (fresh("U"), e.app.clone());
    let t1 = b.token(&app, &u1);
    let api = api(&e);
    let auth = Some(t1.clone());
    let cases: Vec<(&str, String, Option<Vec<u8>>, u16)> = vec![
        ("POST", format!("/api/{app}/groups"), Some(b"{not json".to_vec()), 400),
        (
            "POST",
            format!("/api/{app}/groups"),
            Some(br#"{"group_name": 7}"#.to_vec()),
            400,
        ),
        (
            "POST",
            format!("/api/{app}/groups"),
            Some(br#"{"group_name": "x", "group_members": {"a b": 1}}"#.to_vec()),
            400,
        ),
        (
            "POST",
            format!("/api/{app}/groups"),
            Some(br#"{"group_name": "x", "group_id": "U1"}"#.to_vec()),
            400,
        ),
        (
            "POST",
            format!("/api/{app}/groups"),
            Some(br#"{"group_name": "  "}"#.to_vec()),
            400,
        ),
        (
            "POST",
            format!("/api/{app}/messages"),
            Some(br#"{"text": "no recipient"}"#.to_vec()),
            400,
        ),
        (
            "POST",
            format!("/api/{app}/messages"),
            Some(br#"{"recipient_id": "a/b", "text": "x"}"#.to_vec()),
            400,
        ),
        (
            "POST",
            format!("/api/{app}/messages"),
            Some(format!(r#"{{"recipient_id": "x", "text": "{}"}}"#, "a".repeat(4000)).into_bytes()),
            413,
        ),
        ("GET", format!("/api/{app}/{u1}/conversations?limit=0"), None, 400),
        ("GET", format!("/api/{app}/{u1}/conversations?limit=100000"), None, 400),
        ("GET", format!("/api/{app}/{u1}/conversations?limit=x"), None, 400),
        (
            "GET",
            format!("/api/{app}/{u1}/conversations/x/messages?before=yesterday"),
            None,
            400,
        ),
        ("GET", format!("/api/{app}/groups/{}", fresh("group-")), None, 404),
        (
            "POST",
            format!("/api/{app}/groups/{}/members", fresh("group-")),
            Some(br#"{"member_id": "x"}"#.to_vec()),
            404,
        ),
        ("GET", format!("/api/{app}/nothing/here/at/all"), None, 404),
        ("PATCH", format!("/api/{app}/{u1}/conversations"), None, 405),
        (
            "POST",
            format!("/api/{app}/tokens"),
            Some(br#"{"user_id": "x"}"#.to_vec()),
            403,
        ),
        (
            "POST",
            format!("/api/{app}/{u1}/instances/a%20b"),
            Some(b"{}".to_vec()),
            400,
        ),
    ];
    for (method, path, body, want) in cases {
        let (s, v) = api.raw(method, &path, auth.clone(), body).await;
        assert_eq!(s, want, "{method} {path}: {v}");
        assert_eq!(v["success"], false, "{method} {path}");
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{method} {path}: {v}"
        );
    }
    // More members than a user's group may have (MAX_INLINE_GROUP_MEMBERS, 100).
    let many: serde_json::Map<String, Value> = (0..101).map(|i| (format!("m{i}"), json!(1))).collect();
    let (s, v) = api
        .post(
            &format!("/api/{app}/groups"),
            &t1,
            json!({"group_name": "Crowd", "group_members": many}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    // Ids whose routing keys would pass 255 bytes: refused before anything changes. A group
    // id too long for the group's own timeline key is never stored...
    let too_long = format!("group-{}", "g".repeat(120));
    let (s, v) = api
        .post(
            &format!("/api/{app}/groups"),
            &t1,
            json!({"group_name": "Long", "group_id": too_long}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, _) = api.get(&format!("/api/{app}/groups/{too_long}"), &t1).await;
    assert_eq!(s, 404, "not stored");
    // ...and a member whose inbox key would not fit is not added.
    let long_group = format!("group-{}", "g".repeat(80));
    let (s, v) = api
        .post(
            &format!("/api/{app}/groups"),
            &t1,
            json!({"group_name": "Long", "group_id": long_group}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = api
        .post(
            &format!("/api/{app}/groups/{long_group}/members"),
            &t1,
            json!({"member_id": "m".repeat(128)}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let (_, v) = api.get(&format!("/api/{app}/groups/{long_group}"), &t1).await;
    assert_eq!(v["result"]["members"].as_object().unwrap().len(), 1, "unchanged");
    // A stored group, asked by someone who is not a member: 403.
    let (s, v) = api
        .post(&format!("/api/{app}/groups"), &t1, json!({"group_name": "G"}))
        .await;
    assert_eq!(s, 201, "{v}");
    let g = v["group"]["uid"].as_str().unwrap().to_owned();
    let outsider = b.token(&app, &fresh("U"));
    assert_eq!(api.get(&format!("/api/{app}/groups/{g}"), &outsider).await.0, 403);
}

/// Sending over HTTP is the same input as an MQTT publish: delivered, stored, refused the
/// same way (rate limit → 429, not a member → 403), read back at once.
#[tokio::test]
async fn sending_over_http() {
    let b = broker();
    let e = engine_task_with(b, Db::Sqlite, &[("RATE_LIMIT_PER_MIN", "3")]).await;
    let (u1, u2, app) = (fresh("U"), fresh("U"), e.app.clone());
    let mut cl = inboxes(b, &e, &[&u2]).await;
    let t1 = b.token(&app, &u1);
    let api = api(&e);
    let body = json!({"recipient_id": u2, "recipient_fullname": "Two", "sender_fullname": "One", "text": "over http", "type": "text", "attributes": {"k": 1}});
    let (s, v) = api.post(&format!("/api/{app}/messages"), &t1, body.clone()).await;
    assert_eq!(s, 200, "{v}");
    let id = v["message_id"].as_str().unwrap().to_owned();
    let (topic, m) = one(&mut cl[0], &e).await;
    assert_eq!(topic, format!("apps/{app}/users/{u2}/messages/{u1}/clientadded"));
    assert_eq!(
        (m["text"].as_str(), m["sender"].as_str()),
        (Some("over http"), Some(u1.as_str()))
    );
    assert_eq!(
        (m["message_id"].as_str(), m["status"].as_i64()),
        (Some(id.as_str()), Some(150))
    );
    assert_eq!(m["attributes"]["k"], 1);
    // Answered after the commit: the history has it already.
    let (_, h) = api
        .get(&format!("/api/{app}/{u1}/conversations/{u2}/messages"), &t1)
        .await;
    assert_eq!(h["result"][0]["message_id"], id.as_str());
    // A client's own id is kept (the idempotency key).
    let mut again = body.clone();
    again["message_id"] = "client-id-1".into();
    let (s, v) = api.post(&format!("/api/{app}/messages"), &t1, again).await;
    assert_eq!((s, v["message_id"].as_str()), (200, Some("client-id-1")));
    let _ = one(&mut cl[0], &e).await;
    // A user may not send as someone else.
    let mut spoof = body.clone();
    spoof["sender_id"] = u2.clone().into();
    assert_eq!(api.post(&format!("/api/{app}/messages"), &t1, spoof).await.0, 403);
    // The sender's rate limit holds over HTTP too (3 a minute: the third passes, the fourth not).
    let (s, _) = api.post(&format!("/api/{app}/messages"), &t1, body.clone()).await;
    assert_eq!(s, 200);
    let (s, v) = api.post(&format!("/api/{app}/messages"), &t1, body.clone()).await;
    assert_eq!(s, 429, "{v}");
    // What a group call sends on the caller's behalf counts against its budget (3 a minute
    // here): a group of five is six system messages, charged as a whole bucket at most — more
    // than what is left after one message.
    let creator = b.token(&app, &fresh("U"));
    let (s, _) = api.post(&format!("/api/{app}/messages"), &creator, body.clone()).await;
    assert_eq!(s, 200);
    let crowd = json!({"group_name": "Five", "group_members": {"a1": 1, "a2": 1, "a3": 1, "a4": 1}});
    let (s, v) = api.post(&format!("/api/{app}/groups"), &creator, crowd).await;
    assert_eq!(s, 429, "{v}");
    // A stored group the sender is not in: 403.
    let owner = fresh("U");
    let to = b.token(&app, &owner);
    let (_, g) = api
        .post(&format!("/api/{app}/groups"), &to, json!({"group_name": "Closed"}))
        .await;
    let g = g["group"]["uid"].as_str().unwrap().to_owned();
    let u3 = fresh("U");
    let t3 = b.token(&app, &u3);
    let (s, v) = api
        .post(
            &format!("/api/{app}/messages"),
            &t3,
            json!({"recipient_id": g, "channel_type": "group", "text": "let me in"}),
        )
        .await;
    assert_eq!(s, 403, "{v}");
}

/// Blocks over HTTP: listed, obeyed by the next message, lifted.
#[tokio::test]
async fn blocks_over_http() {
    let b = broker();
    let e = engine_task_with(b, Db::Sqlite, &[]).await;
    let (u1, u2, app) = (fresh("U"), fresh("U"), e.app.clone());
    let mut cl = inboxes(b, &e, &[&u1, &u2]).await;
    let (t1, t2) = (b.token(&app, &u1), b.token(&app, &u2));
    let api = api(&e);
    let (s, v) = api.put(&format!("/api/{app}/{u2}/blocks/{u1}"), &t2, json!({})).await;
    assert_eq!((s, v), (200, json!({"success": true})));
    let (topic, _) = one(&mut cl[1], &e).await;
    assert_eq!(
        topic,
        format!("apps/{app}/users/{u2}/blocks/{u1}/clientadded"),
        "devices told"
    );
    let (_, v) = api.get(&format!("/api/{app}/{u2}/blocks"), &t2).await;
    assert_eq!(v["result"][0]["user_id"], u1.as_str());
    assert_eq!(api.get(&format!("/api/{app}/{u2}/blocks"), &t1).await.0, 403);
    assert_eq!(
        api.put(&format!("/api/{app}/{u2}/blocks/{u1}"), &t1, json!({})).await.0,
        403,
        "not for someone else"
    );
    // The next message sees the block.
    let [c1, c2] = cl.as_mut_slice() else { panic!() };
    send(c1, &e, &u2, json!({"text": "blocked", "type": "text"})).await;
    let _ = one(c1, &e).await;
    assert!(
        c2.extra_messages(Duration::from_millis(500)).await.is_empty(),
        "not delivered"
    );
    let (s, _) = api.delete(&format!("/api/{app}/{u2}/blocks/{u1}"), &t2).await;
    assert_eq!(s, 200);
    let _ = one(c2, &e).await; // the clientdeleted echo
    let (_, v) = api.get(&format!("/api/{app}/{u2}/blocks"), &t2).await;
    assert_eq!(v["result"], json!([]));
    send(c1, &e, &u2, json!({"text": "free", "type": "text"})).await;
    let (_, m) = one(c2, &e).await;
    assert_eq!(m["text"], "free");
}

/// Tokens for admins (usable over MQTT and HTTP at once), devices per user.
#[tokio::test]
async fn tokens_and_devices() {
    let b = broker();
    let e = engine_task_with(b, Db::Sqlite, &[]).await;
    let (u1, app) = (fresh("U"), e.app.clone());
    let api = api(&e);
    let admin = b
        .minter()
        .admin_token(
            &e.topics(),
            &app.parse_app(),
            &fresh("ops").parse_user(),
            Duration::from_secs(600),
        )
        .unwrap();
    let (s, v) = api
        .post(&format!("/api/{app}/tokens"), &admin, json!({"user_id": u1}))
        .await;
    assert_eq!(s, 200, "{v}");
    let token = v["token"].as_str().unwrap().to_owned();
    // The minted token logs in over MQTT and calls the API as that user.
    let mut c = Mqtt::connect_with_token(b, &app, &u1, &token, Via::Tcp, false).await;
    c.subscribe_inbox().await;
    assert_eq!(api.get(&format!("/api/{app}/{u1}/conversations"), &token).await.0, 200);
    let (s, _) = api
        .post(&format!("/api/{app}/tokens"), &token, json!({"user_id": "someone"}))
        .await;
    assert_eq!(s, 403, "users do not mint");
    let (s, _) = api
        .post(&format!("/api/{app}/tokens"), &admin, json!({"user_id": "system"}))
        .await;
    assert_eq!(s, 403, "trusted senders only from the command line");
    let (s, _) = api
        .post(&format!("/api/{app}/tokens"), &admin, json!({"user_id": "%55%31"}))
        .await;
    assert_eq!(s, 400, "ids the broker decodes");

    let instance = "fcm:APA91b-abc_DEF";
    let info = json!({"device_model": "Pixel", "language": "it", "platform": "android", "platform_version": "14"});
    let (s, v) = api
        .post(&format!("/api/{app}/{u1}/instances/{instance}"), &token, info.clone())
        .await;
    assert_eq!((s, v), (200, json!({"success": true})));
    let other = b.token(&app, &fresh("U"));
    assert_eq!(
        api.post(&format!("/api/{app}/{u1}/instances/{instance}"), &other, info.clone())
            .await
            .0,
        403
    );
    let store = open_store(&e.database_url).await;
    let saved = store.instances(&app.parse_app(), &u1.parse_user()).await.unwrap();
    assert_eq!(saved.len(), 1);
    assert_eq!(
        (saved[0].0.as_str(), saved[0].1["platform"].as_str()),
        (instance, Some("android"))
    );
}

/// The OpenAPI document is served, lists every endpoint, and every path in it is routed.
#[tokio::test]
async fn openapi_document_matches_the_routes() {
    let b = broker();
    let e = engine_task_with(b, Db::Sqlite, &[]).await;
    let (s, doc) = ApiClient::new(e.http_port)
        .call("GET", "/api/openapi.json", None, None)
        .await;
    assert_eq!(s, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/{app}/{me}/conversations",
        "/api/{app}/{me}/conversations/archived",
        "/api/{app}/{me}/archived_conversations",
        "/api/{app}/{me}/conversations/{with}",
        "/api/{app}/{me}/archived_conversations/{with}",
        "/api/{app}/{me}/conversations/{with}/messages",
        "/api/{app}/conversations/{with}",
        "/api/{app}/messages",
        "/api/{app}/groups",
        "/api/{app}/groups/{group}",
        "/api/{app}/groups/{group}/members",
        "/api/{app}/groups/{group}/members/{member}",
        "/api/{app}/groups/{group}/attributes",
        "/api/{app}/{me}/blocks",
        "/api/{app}/{me}/blocks/{other}",
        "/api/{app}/tokens",
        "/api/{app}/{me}/instances/{instance}",
    ] {
        assert!(paths.contains_key(p), "{p} missing from the document");
    }
    // Every documented operation is routed: without a token it is a 401, never the 404 of
    // an unknown path.
    let api = ApiClient::new(e.http_port);
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let concrete = path.replace("{app}", &e.app).replace('{', "x").replace('}', "");
            let (s, v) = api.call(&method.to_uppercase(), &concrete, None, None).await;
            assert_eq!(s, 401, "{method} {path}: {v}");
        }
    }
}

/// With OPS_HTTP_PORT, /metrics and the probes answer only there (an internal address), the
/// API only on HTTP_PORT.
#[tokio::test]
async fn ops_endpoints_on_their_own_port() {
    let b = broker();
    let ops = free_port();
    let ops_s = ops.to_string();
    let e = EngineTask::start(b, &[("OPS_HTTP_PORT", ops_s.as_str())]).await;
    // `wait_ready` polled HTTP_PORT's /readyz: it is answered there? No: only on the ops port.
    let (s, _) = http_get(ops, "/metrics").await.unwrap();
    assert_eq!(s, 200);
    let (s, _) = http_get(ops, "/readyz").await.unwrap();
    assert_eq!(s, 200);
    let (s, body) = http_get(e.http_port, "/metrics").await.unwrap();
    assert_eq!(s, 404, "{body}");
    let (s, _) = http_get(ops, &format!("/api/{}/x/conversations", e.app)).await.unwrap();
    assert_eq!(s, 404, "no API on the ops port");
}

/// A store outage answers 503 (never a hang or a 500) and recovers by itself.
#[tokio::test]
async fn store_outage_is_503_then_recovers() {
    let b = broker();
    let pg = PrivatePg::start();
    let url = pg.url();
    let e = EngineTask::start(b, &[("DATABASE_URL", url.as_str())]).await;
    let (u1, app) = (fresh("U"), e.app.clone());
    let t1 = b.token(&app, &u1);
    let api = api(&e);
    let path = format!("/api/{app}/{u1}/conversations");
    assert_eq!(api.get(&path, &t1).await.0, 200);
    pg.halt();
    let (s, v) = api.get(&path, &t1).await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["success"], false);
    pg.resume();
    eventually("the API answers again", || async {
        (api.get(&path, &t1).await.0 == 200).then_some(())
    })
    .await;
}
