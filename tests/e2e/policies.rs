//! The policy chain end to end (PROTOCOL §9, §10): block lists, rate limits, the content
//! filter and its reload — real MQTT clients, the engine binary, a real store.

use crate::common::*;
use serde_json::{json, Value};

/// `me` blocks (`add`) or unblocks `other` from one of its devices; returns once the engine
/// echoed the change to `echo_device` (another device of `me`), so later inputs see it.
async fn block(e: &EngineProc, device: &mut Mqtt, echo_device: &mut Mqtt, other: &str, add: bool) {
    let me = device.user.clone();
    device
        .publish_acked(&e.topics().block(&e.app, &me, other, add), b"{}")
        .await
        .unwrap();
    let (topic, body) = one(echo_device, e).await;
    let verb = if add { "clientadded" } else { "clientdeleted" };
    assert_eq!(topic, format!("apps/{}/users/{me}/blocks/{other}/{verb}", e.app));
    assert_eq!(
        (body["blocked_user_id"].as_str(), body["blocked"].as_bool()),
        (Some(other), Some(add))
    );
}

/// The history length once it is `n`, or what it is after the wait: copies are published
/// while their commit is in flight, so a copy can arrive before its row is readable.
async fn history_len_settled(e: &EngineProc, timeline: &str, with: &str, n: usize) -> usize {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let len = history_len(e, timeline, with).await;
        if len == n || std::time::Instant::now() > deadline {
            return len;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn history_len(e: &EngineProc, timeline: &str, with: &str) -> usize {
    open_store(&e.database_url)
        .await
        .messages(timeline, with, 100)
        .await
        .unwrap()
        .len()
}

#[tokio::test]
async fn block_then_unblock_a_direct_sender() {
    let b = broker();
    let e = EngineProc::start(b, &[]).await;
    let (a, bb) = (fresh("A"), fresh("B"));
    let mut cl = inboxes(b, &e, &[&a, &bb, &bb]).await;
    let (blocker, rest) = cl.split_at_mut(2);
    // B blocks A from one device; B's second device sees the echo.
    block(&e, &mut blocker[1], &mut rest[0], &a, true).await;
    // The blocker's first device also gets the echo (it is subscribed to its inbox too).
    assert!(one(&mut blocker[1], &e).await.0.ends_with("clientadded"));

    send(&mut blocker[0], &e, &bb, json!({"text": "you there?"})).await;
    let (topic, m) = one(&mut blocker[0], &e).await;
    assert_eq!(topic, format!("apps/{}/users/{a}/messages/{bb}/clientadded", e.app));
    assert_eq!(m["status"], 100, "the sender sees it as sent, and is not told");
    nothing_more(&mut cl).await;
    assert_eq!(history_len_settled(&e, &a, &bb, 1).await, 1);
    assert_eq!(history_len(&e, &bb, &a).await, 0, "nothing stored for the blocker");
    assert_eq!(e.metric("chat21_blocked_deliveries_total").await, 1.0);
    // B's list was read from the store once (by the block command), then served by the cache.
    let lookups = |result: &'static str| {
        e.metric(match result {
            "store" => r#"chat21_cache_lookups_total{cache="blocks",result="store"}"#,
            _ => r#"chat21_cache_lookups_total{cache="blocks",result="hit"}"#,
        })
    };
    assert_eq!(lookups("store").await, 1.0);
    assert!(lookups("hit").await >= 1.0);

    // Unblocked: the next message arrives.
    let (blocker, rest) = cl.split_at_mut(2);
    block(&e, &mut blocker[1], &mut rest[0], &a, false).await;
    one(&mut blocker[1], &e).await;
    send(&mut blocker[0], &e, &bb, json!({"text": "now?"})).await;
    assert_eq!(one(&mut blocker[1], &e).await.1["text"], "now?");
    assert_eq!(one(&mut rest[0], &e).await.1["text"], "now?");
    assert_eq!(history_len_settled(&e, &bb, &a, 1).await, 1);
}

/// A "group" the store does not know, addressed to the blocker's own user id: its
/// group-timeline copy would land in the blocker's inbox (`users.B.messages.B`), so the
/// blocker's list vetoes it like any other copy — transient and inline alike.
#[tokio::test]
async fn a_group_named_like_the_blocker_does_not_reach_the_blocker() {
    let b = broker();
    let e = EngineProc::start(b, &[]).await;
    let (a, bb) = (fresh("A"), fresh("B"));
    let mut cl = inboxes(b, &e, &[&a, &bb, &bb]).await;
    let (front, back) = cl.split_at_mut(2);
    block(&e, &mut front[1], &mut back[0], &a, true).await;
    one(&mut front[1], &e).await;
    for body in [
        json!({"text": "transient", "channel_type": "group"}),
        json!({"text": "inline", "channel_type": "group", "group": {"members": {&a: 1}}}),
    ] {
        send(&mut front[0], &e, &bb, body).await;
        let (topic, m) = one(&mut front[0], &e).await;
        assert_eq!(topic, format!("apps/{}/users/{a}/messages/{bb}/clientadded", e.app));
        assert_eq!(m["status"], 150, "the sender's own member copy");
    }
    nothing_more(&mut cl).await;
    assert_eq!(history_len(&e, &bb, &bb).await, 0, "nothing in the blocker's timeline");
    assert_eq!(e.metric("chat21_blocked_deliveries_total").await, 2.0);
}

#[tokio::test]
async fn a_member_who_blocked_the_sender_gets_no_group_copy_and_no_typing() {
    let b = broker();
    let e = EngineProc::start(b, &[]).await;
    let (a, bb, c) = (fresh("A"), fresh("B"), fresh("C"));
    let g = fresh("group-");
    let mut cl = inboxes(b, &e, &[&a, &bb, &c, &c]).await;
    let body = json!({"group": {"uid": g, "members": {&a: 1, &bb: 1, &c: 1}}, "notify_to": {}});
    amqp_publish(b, &e.topics().group_update(&e.app), body.to_string().as_bytes()).await;
    let (front, back) = cl.split_at_mut(3);
    block(&e, &mut front[2], &mut back[0], &a, true).await;
    one(&mut front[2], &e).await;

    send(
        &mut front[0],
        &e,
        &g,
        json!({"text": "hi all", "channel_type": "group"}),
    )
    .await;
    assert_eq!(one(&mut front[0], &e).await.1["text"], "hi all");
    assert_eq!(one(&mut front[1], &e).await.1["text"], "hi all");
    // Typing from the blocked user is dropped for C (direct and in the group), not for B.
    let t = e.topics();
    front[0].publish(&t.typing(&e.app, &a, &c), br#"{"typing":true}"#).await;
    front[0].publish(&t.typing(&e.app, &a, &g), br#"{"typing":true}"#).await;
    let (topic, _) = one(&mut front[1], &e).await;
    assert!(topic.ends_with(&format!("/typing/{g}/clientupdated")), "{topic}");
    nothing_more(&mut cl).await;
    assert_eq!(history_len(&e, &c, &g).await, 0);
    assert_eq!(history_len(&e, &bb, &g).await, 1);
}

async fn blocks_survive_an_engine_restart(db: Db) {
    let b = broker();
    let mut e = engine_with(b, db, &[]).await;
    let (a, bb) = (fresh("A"), fresh("B"));
    let mut cl = inboxes(b, &e, &[&a, &bb, &bb]).await;
    let (front, back) = cl.split_at_mut(2);
    block(&e, &mut front[1], &mut back[0], &a, true).await;
    one(&mut front[1], &e).await;
    // A graceful stop (a SIGKILL could leave the block command unacked: it would be
    // redelivered and echoed again — at-least-once — which is not what this test is about).
    e.sigterm();
    let _ = e.child.wait();
    e.restart().await;
    send(&mut cl[0], &e, &bb, json!({"text": "after restart"})).await;
    assert_eq!(one(&mut cl[0], &e).await.1["status"], 100);
    nothing_more(&mut cl).await;
}

#[tokio::test]
async fn blocks_survive_an_engine_restart_sqlite() {
    blocks_survive_an_engine_restart(Db::Sqlite).await;
}

#[tokio::test]
async fn blocks_survive_an_engine_restart_postgres() {
    blocks_survive_an_engine_restart(Db::Postgres).await;
}

#[tokio::test]
async fn rate_limited_sender_is_told_and_trusted_sender_is_not_limited() {
    let b = broker();
    let bot = fresh("bot");
    let trusted = format!("system,{bot}");
    let env = [
        ("RATE_LIMIT_PER_MIN", "60"),
        ("RATE_LIMIT_BURST", "3"),
        ("TRUSTED_SENDERS", trusted.as_str()),
    ];
    let e = EngineProc::start(b, &env).await;
    let (a, bb) = (fresh("A"), fresh("B"));
    let mut cl = inboxes(b, &e, &[&a, &bb, &bot]).await;
    for i in 0..5 {
        send(&mut cl[0], &e, &bb, json!({"text": format!("m{i}")})).await;
    }
    let own = cl[0].messages(5, WAIT).await;
    let statuses: Vec<i64> = own.iter().map(|(_, m)| m["status"].as_i64().unwrap()).collect();
    assert_eq!(statuses, vec![100, 100, 100, -100, -100], "{own:?}");
    for (topic, m) in &own[3..] {
        assert_eq!(topic, &format!("apps/{}/users/{a}/messages/{bb}/clientadded", e.app));
        assert_eq!(m["error"]["code"], "rate_limited");
    }
    assert_eq!(cl[1].messages(3, WAIT).await.len(), 3);
    // A trusted sender (a bot) is not limited.
    for i in 0..8 {
        send(&mut cl[2], &e, &bb, json!({"text": format!("bot{i}")})).await;
    }
    assert_eq!(cl[1].messages(8, WAIT).await.len(), 8);
    let own = cl[2].messages(8, WAIT).await;
    assert!(own.len() == 8 && own.iter().all(|(_, m)| m["status"] == 100), "{own:?}");
    nothing_more(&mut cl).await;
    assert_eq!(e.metric(r#"chat21_rejections_total{reason="rate_limited"}"#).await, 2.0);
    assert_eq!(history_len(&e, &bb, &a).await, 3, "refused messages are not stored");
}

fn write_policy(path: &std::path::Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

const POLICY: &str = r#"
max_text_bytes = 40
[[deny]]
pattern = "(?i)forbidden"
action = "reject"
[[deny]]
pattern = "\\d{4}"
action = "mask"
replacement = "[pin]"
"#;

#[tokio::test]
async fn content_filter_rejects_masks_and_reloads_on_sighup() {
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    write_policy(&path, POLICY);
    let e = EngineProc::start(b, &[("POLICY_FILE", path.to_str().unwrap())]).await;
    let (a, bb) = (fresh("A"), fresh("B"));
    let mut cl = inboxes(b, &e, &[&a, &bb]).await;

    // Reject: the sender is told, the recipient gets nothing.
    send(&mut cl[0], &e, &bb, json!({"text": "a FORBIDDEN word"})).await;
    let (_, m) = one(&mut cl[0], &e).await;
    assert_eq!(
        (m["status"].as_i64(), m["error"]["code"].as_str()),
        (Some(-100), Some("content_rejected"))
    );
    // Too long.
    send(&mut cl[0], &e, &bb, json!({"text": "x".repeat(41)})).await;
    assert_eq!(one(&mut cl[0], &e).await.1["error"]["code"], "content_rejected");
    // Mask: delivered with the match replaced, in both copies and in the store.
    send(&mut cl[0], &e, &bb, json!({"text": "my pin is 1234"})).await;
    assert_eq!(one(&mut cl[0], &e).await.1["text"], "my pin is [pin]");
    assert_eq!(one(&mut cl[1], &e).await.1["text"], "my pin is [pin]");
    nothing_more(&mut cl).await;
    let stored = open_store(&e.database_url).await.messages(&bb, &a, 10).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].message.fields()["text"], "my pin is [pin]");

    // Reload: "forbidden" is allowed now, "banana" is not. Traffic flows during the reload.
    write_policy(&path, "[[deny]]\npattern = \"banana\"\naction = \"reject\"\n");
    unsafe { libc::kill(e.child.id() as i32, libc::SIGHUP) };
    eventually("policy reloaded", || async {
        e.log_text().contains("policy file reloaded").then_some(())
    })
    .await;
    send(&mut cl[0], &e, &bb, json!({"text": "forbidden fruit"})).await;
    assert_eq!(one(&mut cl[1], &e).await.1["text"], "forbidden fruit");
    send(&mut cl[0], &e, &bb, json!({"text": "banana"})).await;
    one(&mut cl[0], &e).await; // own copy of "forbidden fruit"
    assert_eq!(one(&mut cl[0], &e).await.1["status"], -100);

    // A broken file on reload is logged and the rules in force stay.
    write_policy(&path, "[[deny]]\npattern = \"(\"\naction = \"reject\"\n");
    unsafe { libc::kill(e.child.id() as i32, libc::SIGHUP) };
    eventually("bad reload logged", || async {
        e.log_text().contains("policy file not reloaded").then_some(())
    })
    .await;
    send(&mut cl[0], &e, &bb, json!({"text": "banana again"})).await;
    assert_eq!(one(&mut cl[0], &e).await.1["status"], -100);
    nothing_more(&mut cl).await;
    let refused: Value = json!(e.metric(r#"chat21_rejections_total{reason="content_rejected"}"#).await);
    assert_eq!(refused, json!(4.0));
}

/// A typing flood (or any command flood) is held to its own budget per user: the receiver
/// gets the burst, the rest is dropped and counted, and the same user's messages still flow.
#[tokio::test]
async fn a_command_flood_is_rate_limited_per_kind() {
    let b = broker();
    let e = EngineProc::start(b, &[("RATE_LIMIT_COMMANDS_PER_MIN", "5")]).await;
    let (a, bb) = (fresh("A"), fresh("B"));
    let mut cl = inboxes(b, &e, &[&a, &bb]).await;
    let t = e.topics();
    for _ in 0..20 {
        cl[0]
            .publish_acked(&t.typing(&e.app, &a, &bb), br#"{"typing":true}"#)
            .await
            .unwrap();
    }
    let typing = cl[1].messages(20, std::time::Duration::from_secs(3)).await;
    assert_eq!(typing.len(), 5, "the burst, then nothing: {typing:?}");
    assert_eq!(
        e.metric(r#"chat21_rejections_total{reason="rate_limited"}"#).await,
        15.0
    );
    send(&mut cl[0], &e, &bb, json!({"text": "still here"})).await;
    assert_eq!(one(&mut cl[1], &e).await.1["text"], "still here");
}

/// A message that fans out costs its copies: to 20 inline members (22 copies) it takes three
/// messages of a bucket of three, so the next direct message is refused and the sender told.
#[tokio::test]
async fn a_fan_out_costs_its_sender_more_of_the_budget() {
    let b = broker();
    let e = EngineProc::start(b, &[("RATE_LIMIT_PER_MIN", "60"), ("RATE_LIMIT_BURST", "3")]).await;
    let (a, bb) = (fresh("A"), fresh("B"));
    let mut cl = inboxes(b, &e, &[&a]).await;
    let members: serde_json::Map<String, Value> = (0..20).map(|i| (fresh(&format!("m{i}-")), 1.into())).collect();
    let group = fresh("group-");
    send(
        &mut cl[0],
        &e,
        &group,
        json!({"text": "to all", "channel_type": "group", "group": {"members": members}}),
    )
    .await;
    assert_eq!(
        one(&mut cl[0], &e).await.1["text"],
        "to all",
        "the group message goes through"
    );
    send(&mut cl[0], &e, &bb, json!({"text": "one more"})).await;
    let (_, m) = one(&mut cl[0], &e).await;
    assert_eq!(
        (m["status"].as_i64(), m["error"]["code"].as_str()),
        (Some(-100), Some("rate_limited"))
    );
}
