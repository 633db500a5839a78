//! Groups, group updates, history replay, typing and presence end to end (PROTOCOL §4, §7):
//! real MQTT clients with minted JWTs, trusted-service inputs published over AMQP, against
//! an in-process engine (`EngineTask`: the same assembly and code as the binary).

use crate::common::*;
use chat21_engine::domain::UserId;
use serde_json::{json, Map, Value};
use std::time::Duration;

fn ids(users: &[&str]) -> Map<String, Value> {
    users.iter().map(|u| (u.to_string(), json!(1))).collect()
}

/// Is `g` in the engine's store?
async fn group_stored(e: &Running, g: &str) -> bool {
    let uid = UserId::parse(g).unwrap();
    let app = chat21_engine::domain::AppId::parse(&e.app).unwrap();
    open_store(&e.database_url)
        .await
        .group(&app, &uid)
        .await
        .unwrap()
        .is_some()
}

/// What a group-managing service does: publish a group update on the observer topic.
async fn group_update(b: &Broker, e: &Running, uid: &str, members: &[&str], notify_to: &[&str]) {
    let body = json!({
        "group": {"uid": uid, "name": "Team", "owner": members.first(), "members": ids(members),
                  "attributes": {"kind": "test"}},
        "notify_to": ids(notify_to),
    });
    amqp_publish(b, &e.topics().group_update(&e.app), body.to_string().as_bytes()).await;
}

async fn stored_group_of_three(db: Db) {
    let b = broker();
    let e = engine_task_with(b, db, &[]).await;
    let app = e.app.clone();
    let (a, bb, c) = (fresh("A"), fresh("B"), fresh("C"));
    let g = fresh("group-");
    let timeline = Tap::new(b, &format!("apps.{app}.users.{g}.messages.{g}.clientadded")).await;
    let mut cl = inboxes(b, &e, &[&a, &bb, &c]).await;

    // The update reaches every notify_to user, with the group object as sent.
    group_update(b, &e, &g, &[&a, &bb, &c], &[&a, &bb, &c]).await;
    for cli in cl.iter_mut() {
        let (topic, body) = one(cli, &e).await;
        assert_eq!(topic, format!("apps/{app}/users/{}/groups/{g}/clientupdated", cli.user));
        assert_eq!(body["uid"], g.as_str());
        assert_eq!(body["members"], Value::Object(ids(&[&a, &bb, &c])));
        assert_eq!(body["attributes"], json!({"kind": "test"}));
    }

    let id = fresh("m");
    send(
        &mut cl[0],
        &e,
        &g,
        json!({"text": "hello team", "type": "text", "channel_type": "group", "message_id": id}),
    )
    .await;
    for cli in cl.iter_mut() {
        let (topic, m) = one(cli, &e).await;
        assert_eq!(topic, format!("apps/{app}/users/{}/messages/{g}/clientadded", cli.user));
        assert_eq!(m["status"], 150);
        assert_eq!(
            (m["sender"].as_str(), m["recipient"].as_str()),
            (Some(a.as_str()), Some(g.as_str()))
        );
        assert_eq!(m["message_id"], id.as_str());
        assert_eq!(m["text"], "hello team");
        assert_eq!(m["channel_type"], "group");
    }
    let copies = timeline.wait_for(1).await;
    assert_eq!(copies.len(), 1, "group timeline copy");
    assert_eq!(copies[0].1["status"], 100);
    assert_eq!(copies[0].2, 2, "persistent");
    nothing_more(&mut cl).await;

    // Persisted: each member's timeline and conversation, and the group's own timeline.
    let store = open_store(&e.database_url).await;
    for (who, is_new) in [(&a, false), (&bb, true), (&c, true)] {
        let rows = eventually("member history", || async {
            Some(store.messages(who, &g, 10).await.unwrap()).filter(|r| !r.is_empty())
        })
        .await;
        assert_eq!((rows.len(), rows[0].status), (1, 150));
        let convs = store.conversations(who, false).await.unwrap();
        assert_eq!(convs.len(), 1);
        assert_eq!((convs[0].convers_with.as_str(), convs[0].is_new), (g.as_str(), is_new));
    }
    let rows = store.messages(&g, &g, 10).await.unwrap();
    assert_eq!((rows.len(), rows[0].status), (1, 100));
    let stored = store
        .group(
            &chat21_engine::domain::AppId::parse(&e.app).unwrap(),
            &UserId::parse(&g).unwrap(),
        )
        .await
        .unwrap()
        .expect("group stored");
    assert_eq!(stored.members, vec![a.clone(), bb.clone(), c.clone()]);

    // B's receipt reaches the original sender A (§5), and A's copy becomes 250.
    let receipt = e.topics().receipt(&app, &bb, &g, &id);
    cl[1].publish_acked(&receipt, br#"{"status":200}"#).await.unwrap();
    let (topic, m) = one(&mut cl[0], &e).await;
    assert_eq!(topic, format!("apps/{app}/users/{a}/messages/{g}/{id}/clientupdated"));
    assert_eq!(m, json!({"timelineOf": a, "message_id": id, "status": 250}));
    let status = |who: String| {
        let (store, id) = (&store, &id);
        async move { store.message(&who, id).await.unwrap().map(|m| m.status) }
    };
    eventually("sender's copy at 250", || async {
        (status(a.clone()).await == Some(250)).then_some(())
    })
    .await;
    assert_eq!(status(bb.clone()).await, Some(200));
    nothing_more(&mut cl).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_group_of_three_sqlite() {
    stored_group_of_three(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_group_of_three_postgres() {
    stored_group_of_three(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_group_reaches_listed_members_and_sender() {
    let b = broker();
    let e = EngineTask::start(b, &[]).await;
    let (s, p, q, other) = (fresh("S"), fresh("P"), fresh("Q"), fresh("O"));
    let g = fresh("group-");
    let mut cl = inboxes(b, &e, &[&s, &p, &q, &other]).await;
    let inline = json!({"members": ids(&[&p, &q])});
    send(&mut cl[0], &e, &g, json!({"text": "volatile", "group": inline})).await;
    for cli in cl[..3].iter_mut() {
        let (topic, m) = one(cli, &e).await;
        assert!(topic.ends_with(&format!("/messages/{g}/clientadded")), "{topic}");
        assert_eq!(m["status"], 150);
        assert_eq!(m["group"], inline, "copies keep the group field");
    }
    nothing_more(&mut cl).await;
    // Not stored: the group stays unknown to the store.
    assert!(!group_stored(&e, &g).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_group_reaches_sender_and_group_timeline() {
    let b = broker();
    let e = EngineTask::start(b, &[]).await;
    let app = e.app.clone();
    let s = fresh("S");
    // No channel_type: detected as a group by the `group-` compat rule.
    let g = fresh("support-group-");
    let timeline = Tap::new(b, &format!("apps.{app}.users.{g}.messages.{g}.clientadded")).await;
    let mut cl = inboxes(b, &e, &[&s]).await;
    send(&mut cl[0], &e, &g, json!({"text": "I need help"})).await;
    let (topic, m) = one(&mut cl[0], &e).await;
    assert_eq!(topic, format!("apps/{app}/users/{s}/messages/{g}/clientadded"));
    assert_eq!(
        (m["status"].as_i64(), m["channel_type"].as_str()),
        (Some(150), Some("group"))
    );
    let copies = timeline.wait_for(1).await;
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0].1["text"], "I need help");
    nothing_more(&mut cl).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_for_skips_only_that_member() {
    let b = broker();
    let e = EngineTask::start(b, &[]).await;
    let (a, bb, c) = (fresh("A"), fresh("B"), fresh("C"));
    let g = fresh("group-");
    let mut cl = inboxes(b, &e, &[&a, &bb, &c]).await;
    group_update(b, &e, &g, &[&a, &bb, &c], &[]).await;
    send(
        &mut cl[0],
        &e,
        &g,
        json!({"text": "not for B", "attributes": {"hiddenFor": bb}}),
    )
    .await;
    assert_eq!(one(&mut cl[0], &e).await.1["text"], "not for B");
    assert_eq!(
        one(&mut cl[2], &e).await.1["text"],
        "not for B",
        "the member after B still gets it (D1)"
    );
    nothing_more(&mut cl).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_member_is_refused_and_told() {
    let b = broker();
    let e = EngineTask::start(b, &[]).await;
    let app = e.app.clone();
    let (a, bb, x) = (fresh("A"), fresh("B"), fresh("X"));
    let g = fresh("group-");
    let mut cl = inboxes(b, &e, &[&a, &bb, &x]).await;
    group_update(b, &e, &g, &[&a, &bb], &[]).await;
    send(
        &mut cl[2],
        &e,
        &g,
        json!({"text": "let me in", "channel_type": "group"}),
    )
    .await;
    let (topic, m) = one(&mut cl[2], &e).await;
    assert_eq!(topic, format!("apps/{app}/users/{x}/messages/{g}/clientadded"));
    assert_eq!(m["status"], -100);
    assert_eq!(m["error"]["code"], "not_a_member");
    assert_eq!(m["text"], "let me in");
    nothing_more(&mut cl).await;
    assert_eq!(e.metric(r#"chat21_rejections_total{reason="not_a_member"}"#).await, 1.0);
    assert_eq!(
        e.metric(r#"chat21_inputs_total{kind="send",outcome="rejected"}"#).await,
        1.0
    );
    // Not persisted anywhere.
    let store = open_store(&e.database_url).await;
    assert!(store.messages(&x, &g, 10).await.unwrap().is_empty());
    assert!(store.messages(&g, &g, 10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_sender_reaches_a_group_it_is_not_in() {
    let b = broker();
    let bot = fresh("bot");
    let e = EngineTask::start(b, &[("TRUSTED_SENDERS", &format!("system,{bot}"))]).await;
    let (a, g) = (fresh("A"), fresh("group-"));
    let mut cl = inboxes(b, &e, &[&a, &bot]).await;
    group_update(b, &e, &g, &[&a], &[]).await;
    send(&mut cl[1], &e, &g, json!({"text": "welcome", "channel_type": "group"})).await;
    assert_eq!(one(&mut cl[0], &e).await.1["text"], "welcome");
    nothing_more(&mut cl).await;
}

/// 100 messages to two groups in pairs (g1 g1 g2 g2 …), with a cache that holds one group:
/// every switch misses and reads the store, the second of a pair hits. Then a membership
/// change that must apply from the very next message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_messages_keep_their_order_through_cache_misses_and_updates() {
    let b = broker();
    // Each group weighs 4 (1 + 3 members): the cache holds one of them at a time.
    let e = EngineTask::start(b, &[("GROUP_CACHE_SIZE", "4")]).await;
    let (a, bb, c, d) = (fresh("A"), fresh("B"), fresh("C"), fresh("D"));
    let (g1, g2) = (fresh("group-1-"), fresh("group-2-"));
    let mut cl = inboxes(b, &e, &[&a, &bb, &d]).await;
    group_update(b, &e, &g1, &[&a, &bb, &c], &[]).await;
    group_update(b, &e, &g2, &[&a, &bb, &c], &[]).await;
    for i in 0..100 {
        let g = if (i / 2) % 2 == 0 { &g1 } else { &g2 };
        cl[0]
            .publish(
                &e.topics().outgoing(&a, g),
                json!({"text": i.to_string()}).to_string().as_bytes(),
            )
            .await;
    }
    let got = cl[1].messages(100, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 100, "B got {} of 100; log:\n{}", got.len(), e.log_text());
    for g in [&g1, &g2] {
        let texts: Vec<u32> = got
            .iter()
            .filter(|(t, _)| t.contains(&format!("/messages/{g}/")))
            .map(|(_, m)| m["text"].as_str().unwrap().parse().unwrap())
            .collect();
        let mut sorted = texts.clone();
        sorted.sort();
        assert_eq!(texts.len(), 50);
        assert_eq!(texts, sorted, "order within {g}");
    }
    // D joins g1: the next message to g1 reaches D, none before it did.
    group_update(b, &e, &g1, &[&a, &bb, &c, &d], &[]).await;
    cl[0].publish(&e.topics().outgoing(&a, &g1), br#"{"text":"100"}"#).await;
    assert_eq!(one(&mut cl[1], &e).await.1["text"], "100");
    let (_, m) = one(&mut cl[2], &e).await;
    assert_eq!(m["text"], "100");
    nothing_more(&mut cl[2..]).await;
    let reads = e
        .metric(r#"chat21_cache_lookups_total{cache="groups",result="store"}"#)
        .await;
    let hits = e
        .metric(r#"chat21_cache_lookups_total{cache="groups",result="hit"}"#)
        .await;
    assert!(
        reads >= 25.0 && hits >= 25.0,
        "both hits ({hits}) and store reads ({reads})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_replay_delivers_unchanged_and_persists() {
    let b = broker();
    let e = EngineTask::start(b, &[]).await;
    let app = e.app.clone();
    let (inbox, with) = (fresh("I"), fresh("C"));
    let mut cl = inboxes(b, &e, &[&inbox]).await;
    let id = fresh("m");
    let replayed = json!({"message_id": id, "status": 150, "text": "from the archive", "sender": with,
                          "recipient": inbox, "timestamp": 1_600_000_000_000i64, "__history": true});
    let key = e.topics().history_replay(&app, &inbox, &with);
    amqp_publish(b, &key, replayed.to_string().as_bytes()).await;
    let (topic, m) = one(&mut cl[0], &e).await;
    assert_eq!(topic, format!("apps/{app}/users/{inbox}/messages/{with}/clientadded"));
    assert_eq!(m, replayed, "delivered unchanged");
    // Other statuses are rejected (and nothing arrives).
    amqp_publish(
        b,
        &key,
        json!({"message_id": fresh("m"), "status": 100}).to_string().as_bytes(),
    )
    .await;
    nothing_more(&mut cl).await;
    eventually("ignored replay counted", || async {
        (e.metric(r#"chat21_rejections_total{reason="ignored"}"#).await == 1.0).then_some(())
    })
    .await;
    let rows = open_store(&e.database_url)
        .await
        .messages(&inbox, &with, 10)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].message_id, id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_direct_and_group_is_transient() {
    let b = broker();
    let e = EngineTask::start(b, &[]).await;
    let app = e.app.clone();
    let (a, bb, c) = (fresh("A"), fresh("B"), fresh("C"));
    let g = fresh("group-");
    let tap = Tap::new(b, &format!("apps.{app}.users.*.typing.*.clientupdated")).await;
    let mut cl = inboxes(b, &e, &[&a, &bb, &c]).await;
    group_update(b, &e, &g, &[&a, &bb, &c], &[]).await;

    cl[0]
        .publish(&e.topics().typing(&app, &a, &bb), br#"{"typing":true}"#)
        .await;
    let (topic, m) = one(&mut cl[1], &e).await;
    assert_eq!(topic, format!("apps/{app}/users/{bb}/typing/{a}/clientupdated"));
    assert_eq!(m, json!({"user_id": a, "typing": true}));

    cl[0]
        .publish(&e.topics().typing(&app, &a, &g), br#"{"typing":false}"#)
        .await;
    for cli in cl[1..].iter_mut() {
        let (topic, m) = one(cli, &e).await;
        assert_eq!(topic, format!("apps/{app}/users/{}/typing/{g}/clientupdated", cli.user));
        assert_eq!(m, json!({"user_id": a, "typing": false}));
    }
    nothing_more(&mut cl).await;
    let seen = tap.wait_for(3).await;
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter().all(|(_, _, mode)| *mode == 1),
        "typing is transient: {seen:?}"
    );
    // Never persisted.
    let store = open_store(&e.database_url).await;
    assert!(store.conversations(&bb, false).await.unwrap().is_empty());
}

async fn presence_with_two_clients(db: Db) {
    let b = broker();
    let e = engine_task_with(b, db, &[("PRESENCE_ENABLED", "true")]).await;
    let app = e.app.clone();
    let u = fresh("U");
    let store = open_store(&e.database_url).await;
    let presence = |online: bool, clients: i64| {
        let (store, app, u) = (&store, &app, &u);
        async move {
            let p = store.presence(app, u).await.unwrap()?;
            (p.online == online && p.clients == clients).then_some(p)
        }
    };
    let first = Mqtt::connect_with_presence(b, &app, &u).await;
    eventually("online with 1 client", || presence(true, 1)).await;
    let second = Mqtt::connect_with_presence(b, &app, &u).await;
    eventually("online with 2 clients", || presence(true, 2)).await;
    // One tab closes without DISCONNECT: the broker publishes its last will.
    drop(second);
    eventually("still online with 1 client", || presence(true, 1)).await;
    drop(first);
    let offline = eventually("offline", || presence(false, 0)).await;
    assert!(offline.last_seen.is_some());
    assert_eq!(
        e.metric(r#"chat21_presence_changes_total{presence="online"}"#).await,
        1.0
    );
    assert_eq!(
        e.metric(r#"chat21_presence_changes_total{presence="offline"}"#).await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_with_two_clients_sqlite() {
    presence_with_two_clients(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_with_two_clients_postgres() {
    presence_with_two_clients(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_group_payloads_are_rejected_without_disturbing_traffic() {
    let b = broker();
    let e = EngineTask::start(b, &[]).await;
    let (a, bb) = (fresh("A"), fresh("B"));
    let g = fresh("group-");
    let mut cl = inboxes(b, &e, &[&a, &bb]).await;
    let update = e.topics().group_update(&e.app);
    // `group` not an object in a message; `members` not an object; `notify_to` missing.
    send(&mut cl[0], &e, &g, json!({"text": "x", "group": "not an object"})).await;
    let bad_members = json!({"group": {"uid": g, "members": ["a"]}, "notify_to": ids(&[&a])});
    amqp_publish(b, &update, bad_members.to_string().as_bytes()).await;
    let no_notify = json!({"group": {"uid": g, "members": ids(&[&a])}});
    amqp_publish(b, &update, no_notify.to_string().as_bytes()).await;
    amqp_publish(b, &update, b"not json").await;
    // Traffic behind them flows.
    send(&mut cl[0], &e, &bb, json!({"text": "still here"})).await;
    assert_eq!(one(&mut cl[1], &e).await.1["text"], "still here");
    assert_eq!(one(&mut cl[0], &e).await.1["text"], "still here");
    nothing_more(&mut cl).await;
    eventually("rejections counted", || async {
        let bad_group = e.metric(r#"chat21_rejections_total{reason="bad_group"}"#).await;
        let not_json = e.metric(r#"chat21_rejections_total{reason="not_json"}"#).await;
        (bad_group == 3.0 && not_json == 1.0).then_some(())
    })
    .await;
    assert!(!group_stored(&e, &g).await);
}
