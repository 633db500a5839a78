//! Persistence end to end, on both backends: SQLite (a file per engine) and the machine's
//! PostgreSQL (a schema per test).

use crate::common::*;
use chat21_engine::store::Store;
use serde_json::json;
use std::time::{Duration, Instant};

async fn send(b: &Broker, e: &EngineProc, from: &str, to: &str, body: serde_json::Value) {
    let mut c = Mqtt::connect(b, &e.app, from, Via::Tcp).await;
    c.publish_acked(&e.topics().outgoing(from, to), body.to_string().as_bytes())
        .await
        .unwrap();
}

async fn history_and_conversations(db: Db) {
    let b = broker();
    let e = engine_with(b, db, &[]).await;
    let (u1, u2) = (fresh("u"), fresh("u"));
    send(
        b,
        &e,
        &u1,
        &u2,
        json!({"text": "hello", "message_id": "m1", "attributes": {"a": 1}}),
    )
    .await;
    let store = open_store(&e.database_url).await;

    let rows = eventually("both timelines", || async {
        let a = store.messages(&u1, &u2, 10).await.unwrap();
        let b = store.messages(&u2, &u1, 10).await.unwrap();
        (a.len() == 1 && b.len() == 1).then_some((a, b))
    })
    .await;
    assert_eq!(rows.0[0].status, 100);
    assert_eq!(rows.1[0].status, 150);
    assert_eq!(rows.1[0].message_id, "m1");
    assert_eq!(rows.1[0].message.fields()["text"], "hello");
    assert_eq!(rows.1[0].message.fields()["attributes"], json!({"a": 1}));

    let c1 = store.conversations(&u1, false).await.unwrap();
    let c2 = store.conversations(&u2, false).await.unwrap();
    assert_eq!(c1.len(), 1);
    assert_eq!(c2.len(), 1);
    assert_eq!((c1[0].convers_with.as_str(), c1[0].is_new), (u2.as_str(), false));
    assert_eq!((c2[0].convers_with.as_str(), c2[0].is_new), (u1.as_str(), true));
    assert_eq!(c2[0].last.text(), Some("hello"));
    assert!(!c2[0].archived);
}

#[tokio::test]
async fn history_and_conversations_sqlite() {
    history_and_conversations(Db::Sqlite).await;
}

#[tokio::test]
async fn history_and_conversations_postgres() {
    history_and_conversations(Db::Postgres).await;
}

/// The same client message_id twice (a client retry, or a redelivered input) → one row per
/// timeline; the conversation's last message is the one the engine received last, whatever
/// the clients stamped (a message stamped far in the future does not freeze it, and keeps
/// its stamp); `updateconversation: false` leaves the conversation alone.
async fn idempotent_and_newest_wins(db: Db) {
    let b = broker();
    let e = engine_with(b, db, &[]).await;
    let (u1, u2) = (fresh("u"), fresh("u"));
    let future = json!({"text": "future", "message_id": "m1", "timestamp": 9_000_000_000_000_000i64});
    let later = json!({"text": "later", "message_id": "m2", "timestamp": 1000});
    let quiet =
        json!({"text": "quiet", "message_id": "m3", "timestamp": 3000, "attributes": {"updateconversation": false}});
    for body in [future, later.clone(), later, quiet] {
        send(b, &e, &u1, &u2, body).await;
    }
    let store = open_store(&e.database_url).await;
    let rows = eventually("three messages", || async {
        let r = store.messages(&u2, &u1, 10).await.unwrap();
        (r.len() >= 3).then_some(r)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rows = store.messages(&u2, &u1, 10).await.unwrap().len().max(rows.len());
    assert_eq!(rows, 3, "one row per message_id");
    let conv = store.conversations(&u2, false).await.unwrap();
    assert_eq!(
        conv[0].last.message_id(),
        Some("m2"),
        "received last wins; updateconversation:false ignored"
    );
    assert_eq!(conv[0].last.text(), Some("later"));
    assert_eq!(conv[0].last.timestamp(), 1000, "the client's stamp is kept as sent");
    let history = store.messages(&u2, &u1, 10).await.unwrap();
    let future = history.iter().find(|m| m.message_id == "m1").unwrap();
    assert_eq!(future.message.timestamp(), 9_000_000_000_000_000);
}

#[tokio::test]
async fn idempotent_and_newest_wins_sqlite() {
    idempotent_and_newest_wins(Db::Sqlite).await;
}

#[tokio::test]
async fn idempotent_and_newest_wins_postgres() {
    idempotent_and_newest_wins(Db::Postgres).await;
}

/// History survives an engine restart (and the restarted engine keeps writing).
async fn restart_keeps_history(db: Db) {
    let b = broker();
    let mut e = engine_with(b, db, &[]).await;
    let (u1, u2) = (fresh("u"), fresh("u"));
    send(
        b,
        &e,
        &u1,
        &u2,
        json!({"text": "before", "message_id": "m1", "timestamp": 1}),
    )
    .await;
    let store: Store = open_store(&e.database_url).await;
    eventually("first", || async {
        (store.messages(&u2, &u1, 10).await.unwrap().len() == 1).then_some(())
    })
    .await;
    e.kill9();
    e.restart().await;
    send(
        b,
        &e,
        &u1,
        &u2,
        json!({"text": "after", "message_id": "m2", "timestamp": 2}),
    )
    .await;
    let rows = eventually("both", || async {
        let r = store.messages(&u2, &u1, 10).await.unwrap();
        (r.len() == 2).then_some(r)
    })
    .await;
    assert_eq!(rows[0].message.fields()["text"], "after");
    assert_eq!(rows[1].message.fields()["text"], "before");
}

#[tokio::test]
async fn restart_keeps_history_sqlite() {
    restart_keeps_history(Db::Sqlite).await;
}

#[tokio::test]
async fn restart_keeps_history_postgres() {
    restart_keeps_history(Db::Postgres).await;
}

/// The store goes away mid-stream (a private PostgreSQL stopped, then started again): the
/// engine stops acking, reports not-ready, retries, and resumes by itself; every message
/// ends up in the history and in the inbox.
#[tokio::test]
async fn store_outage_mid_stream_loses_nothing() {
    const N: usize = 300;
    let b = broker();
    let pg = tokio::task::spawn_blocking(PrivatePg::start).await.unwrap();
    let e = EngineProc::start(b, &[("DATABASE_URL", pg.url().as_str())]).await;
    let (u1, u2) = (fresh("u"), fresh("u"));
    let tap = Tap::new(b, &format!("apps.{}.users.{u2}.messages.*.clientadded", e.app)).await;
    let c = Mqtt::connect(b, &e.app, &u1, Via::Tcp).await;
    let key = e.topics().outgoing(&u1, &u2);
    let sender = tokio::spawn(async move {
        for n in 0..N {
            c.publish(
                &key,
                json!({"text": "x", "seq": n, "message_id": format!("m{n}"), "timestamp": n})
                    .to_string()
                    .as_bytes(),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        c
    });
    let store = open_store(&pg.url()).await;
    eventually("some messages stored", || async {
        (store.messages(&u2, &u1, 1000).await.unwrap().len() >= N / 4).then_some(())
    })
    .await;
    store.close().await;

    let pg = tokio::task::spawn_blocking(move || {
        pg.halt();
        pg
    })
    .await
    .unwrap();
    eventually("/readyz to report the store", || async {
        (http_get(e.http_port, "/readyz").await.ok()?.0 == 503).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pg = tokio::task::spawn_blocking(move || {
        pg.resume();
        pg
    })
    .await
    .unwrap();
    let _sender = sender.await.unwrap();
    e.wait_ready().await;

    let store = open_store(&pg.url()).await;
    let rows = eventually("every message stored", || async {
        let r = store.messages(&u2, &u1, 1000).await.unwrap();
        (r.len() == N).then_some(r)
    })
    .await;
    assert_eq!(rows.len(), N);
    let mut seen = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while seen.len() < N && Instant::now() < deadline {
        for (_, m) in tap.drain().await {
            seen.insert(m["seq"].as_i64().unwrap());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen.len(), N, "every message delivered");
    assert_eq!(e.metric("chat21_store_up").await, 1.0);
    assert_eq!(e.metric("chat21_inputs_in_flight").await, 0.0);
}

/// Receipts (§5): U2 acknowledges U1's message → U1 gets a 250 update on its own inbox; the
/// store has 200 in U2's timeline and 250 in U1's; a receipt for an unknown message creates
/// no row; statuses other than 200 are ignored and counted; a third party's receipt, or the
/// reader's in another conversation, changes nothing and tells nobody.
async fn receipt_flow(db: Db) {
    let b = broker();
    let e = engine_with(b, db, &[]).await;
    let (u1, u2) = (fresh("u"), fresh("u"));
    let mut c1 = Mqtt::connect(b, &e.app, &u1, Via::Tcp).await;
    c1.subscribe_inbox().await;
    let mut c2 = Mqtt::connect(b, &e.app, &u2, Via::Ws).await;
    c2.publish_acked(&e.topics().outgoing(&u2, &u1), br#"{"text":"warm up"}"#)
        .await
        .unwrap();
    c1.publish_acked(
        &e.topics().outgoing(&u1, &u2),
        br#"{"text":"read me","message_id":"m1"}"#,
    )
    .await
    .unwrap();
    let store = open_store(&e.database_url).await;
    eventually("the message stored", || async {
        store.message(&u2, "m1").await.unwrap()
    })
    .await;
    c1.messages(2, Duration::from_secs(10)).await; // warm-up copy and own copy

    let t = e.topics();
    // A third party who knows the message id, and the reader in the wrong conversation: the
    // sender is told nothing (it would look like a read receipt), nothing is stored.
    let u3 = fresh("u");
    let mut c3 = Mqtt::connect(b, &e.app, &u3, Via::Tcp).await;
    c3.publish_acked(&t.receipt(&e.app, &u3, &u1, "m1"), br#"{"status":200}"#)
        .await
        .unwrap();
    c2.publish_acked(&t.receipt(&e.app, &u2, &u3, "m1"), br#"{"status":200}"#)
        .await
        .unwrap();
    c2.publish_acked(&t.receipt(&e.app, &u2, &u1, "m1"), br#"{"status":200}"#)
        .await
        .unwrap();
    c2.publish_acked(&t.receipt(&e.app, &u2, &u1, "m1"), br#"{"status":300}"#)
        .await
        .unwrap();
    c2.publish_acked(&t.receipt(&e.app, &u2, &u1, "nope"), br#"{"status":200}"#)
        .await
        .unwrap();
    let got = c1.messages(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "return receipt; log:\n{}", e.log_text());
    assert_eq!(
        got[0].0,
        format!("apps/{}/users/{u1}/messages/{u2}/m1/clientupdated", e.app)
    );
    assert_eq!(got[0].1, json!({"timelineOf": u1, "message_id": "m1", "status": 250}));
    nothing_more(std::slice::from_mut(&mut c1)).await;

    let (mine, theirs) = eventually("statuses", || async {
        let a = store.message(&u2, "m1").await.unwrap()?;
        let b = store.message(&u1, "m1").await.unwrap()?;
        (a.status == 200 && b.status == 250).then_some((a, b))
    })
    .await;
    assert_eq!((mine.status, theirs.status), (200, 250));
    assert!(store.message(&u2, "nope").await.unwrap().is_none(), "no stub rows");
    assert!(store.message(&u1, "nope").await.unwrap().is_none(), "no stub rows");
    assert_eq!(e.metric(r#"chat21_rejections_total{reason="ignored"}"#).await, 1.0);
}

#[tokio::test]
async fn receipt_flow_sqlite() {
    receipt_flow(Db::Sqlite).await;
}

#[tokio::test]
async fn receipt_flow_postgres() {
    receipt_flow(Db::Postgres).await;
}

/// Conversation update (§6): only `is_new` is taken, stored, and echoed to the user's devices.
async fn conversation_update_flow(db: Db) {
    let b = broker();
    let e = engine_with(b, db, &[]).await;
    let (u1, u2) = (fresh("u"), fresh("u"));
    send(b, &e, &u1, &u2, json!({"text": "hi"})).await;
    let store = open_store(&e.database_url).await;
    eventually("conversation", || async {
        let c = store.conversations(&u2, false).await.unwrap();
        (c.len() == 1 && c[0].is_new).then_some(())
    })
    .await;
    let mut c2 = Mqtt::connect(b, &e.app, &u2, Via::Tcp).await;
    c2.subscribe_inbox().await;
    let body = br#"{"is_new":false,"last_message_text":"hijacked","archived":true}"#;
    c2.publish_acked(&e.topics().conversation_update(&e.app, &u2, &u1), body)
        .await
        .unwrap();
    let got = c2.messages(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].0,
        format!("apps/{}/users/{u2}/conversations/{u1}/clientupdated", e.app)
    );
    assert_eq!(got[0].1, json!({"is_new": false, "timelineOf": u2, "conversWith": u1}));
    let conv = eventually("is_new false", || async {
        let c = store.conversations(&u2, false).await.unwrap();
        (c.len() == 1 && !c[0].is_new).then(|| c[0].clone())
    })
    .await;
    assert_eq!(conv.last.text(), Some("hi"), "nothing but is_new is taken");
    assert!(!conv.archived);
}

#[tokio::test]
async fn conversation_update_flow_sqlite() {
    conversation_update_flow(Db::Sqlite).await;
}

#[tokio::test]
async fn conversation_update_flow_postgres() {
    conversation_update_flow(Db::Postgres).await;
}

/// Archive (§6): `clientdeleted` then `archived_conversations…clientadded` with the whole
/// conversation (incl. `last_message_text`); a new message un-archives it and says so on
/// `archived_conversations…clientdeleted`.
async fn archive_and_unarchive_flow(db: Db) {
    let b = broker();
    let e = engine_with(b, db, &[]).await;
    let (u1, u2) = (fresh("u"), fresh("u"));
    let app = e.app.clone();
    send(b, &e, &u2, &u1, json!({"text": "hello", "timestamp": 1000})).await;
    let store = open_store(&e.database_url).await;
    eventually("conversation", || async {
        (store.conversations(&u1, false).await.unwrap().len() == 1).then_some(())
    })
    .await;

    let mut c1 = Mqtt::connect(b, &app, &u1, Via::Tcp).await;
    c1.subscribe_inbox().await;
    c1.publish_acked(&e.topics().archive(&app, &u1, &u2), b"{}")
        .await
        .unwrap();
    let got = c1.messages(2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2, "log:\n{}", e.log_text());
    assert_eq!(
        got[0].0,
        format!("apps/{app}/users/{u1}/conversations/{u2}/clientdeleted")
    );
    assert_eq!(
        got[1].0,
        format!("apps/{app}/users/{u1}/archived_conversations/{u2}/clientadded")
    );
    for (_, conv) in &got {
        assert_eq!(conv["last_message_text"], "hello");
        assert_eq!(conv["archived"], true);
        assert_eq!(conv["key"], u2.as_str());
        assert_eq!(conv["timelineOf"], u1.as_str());
        assert_eq!(conv["conversWith"], u2.as_str());
        assert_eq!(conv["sender"], u2.as_str());
    }
    assert!(store.conversations(&u1, false).await.unwrap().is_empty());
    assert_eq!(store.conversations(&u1, true).await.unwrap().len(), 1);

    // A new message in the archived conversation un-archives it.
    send(b, &e, &u2, &u1, json!({"text": "again", "timestamp": 2000})).await;
    let got = c1.messages(2, Duration::from_secs(10)).await;
    let unarchived: Vec<_> = got
        .iter()
        .filter(|(t, _)| t.contains("archived_conversations"))
        .collect();
    assert_eq!(unarchived.len(), 1, "{got:?}");
    assert_eq!(
        unarchived[0].0,
        format!("apps/{app}/users/{u1}/archived_conversations/{u2}/clientdeleted")
    );
    assert_eq!(unarchived[0].1["last_message_text"], "again");
    assert_eq!(unarchived[0].1["archived"], false);
    let active = store.conversations(&u1, false).await.unwrap();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].last.text(), Some("again"));
    // The sender's conversation was never archived: no un-archive noise for it.
    assert!(store.conversations(&u2, true).await.unwrap().is_empty());
}

#[tokio::test]
async fn archive_and_unarchive_flow_sqlite() {
    archive_and_unarchive_flow(Db::Sqlite).await;
}

#[tokio::test]
async fn archive_and_unarchive_flow_postgres() {
    archive_and_unarchive_flow(Db::Postgres).await;
}

/// The reads the HTTP API is built on, against a real database of each kind: history pages,
/// one and recent conversations, a user's block list; and a commit's results handed to the
/// write that caused them.
async fn store_reads(url: String) {
    use chat21_engine::domain::{AppId, Message, Sealed, UserId};
    use chat21_engine::plan::{TimelineCopy, Write};
    let uid = |s: &str| UserId::parse(s).unwrap();
    let app = AppId::parse("t").unwrap();
    let store = open_store(&url).await;
    let (a, b) = (fresh("a"), fresh("b"));
    let copy = |id: &str, ts: i64| {
        let m = json!({"message_id": id, "timestamp": ts, "text": id, "status": 150, "app_id": "t", "sender": b});
        TimelineCopy {
            app: app.clone(),
            timeline_of: uid(&a),
            convers_with: uid(&b),
            is_new: true,
            message: Sealed::new(Message::from_fields(m.as_object().unwrap().clone())),
            received_ms: m["timestamp"].as_i64().unwrap_or(1),
        }
    };
    let mut writes = Vec::new();
    for i in 1..=5 {
        let c = copy(&format!("m{i}"), i * 10);
        writes.push(Write::Message(c.clone()));
        writes.push(Write::Conversation(c));
    }
    for (other, at_ms) in [("y", 2), ("x", 1)] {
        writes.push(Write::Block {
            app: app.clone(),
            user: uid(&a),
            other: uid(other),
            add: true,
            at_ms,
        });
    }
    let refs: Vec<&Write> = writes.iter().collect();
    store.apply(&refs).await.unwrap();
    let ids =
        |page: Vec<chat21_engine::store::StoredMessage>| page.into_iter().map(|m| m.message_id).collect::<Vec<_>>();
    assert_eq!(ids(store.messages(&a, &b, 2).await.unwrap()), vec!["m5", "m4"]);
    assert_eq!(
        ids(store.messages_before(&a, &b, 40, 2).await.unwrap()),
        vec!["m3", "m2"]
    );
    let conv = store.conversation(&a, &b).await.unwrap().expect("stored");
    assert_eq!((conv.last.message_id(), conv.is_new), (Some("m5"), true));
    assert_eq!(store.recent_conversations(&a, false, 10).await.unwrap().len(), 1);
    let blocked = store.blocked_by(&app, &uid(&a)).await.unwrap();
    let blocked: Vec<&str> = blocked.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(blocked, vec!["x", "y"]);
    // Archive, then a newer message un-archives: each result goes to its own write.
    let archive = Write::Archive {
        app: app.clone(),
        timeline_of: uid(&a),
        convers_with: uid(&b),
    };
    let newer = copy("m6", 60);
    let later = [Write::Message(newer.clone()), Write::Conversation(newer)];
    let mut applied = store.apply(&[&archive]).await.unwrap();
    assert_eq!(applied.take(0..1).archived.len(), 1);
    let mut applied = store.apply(&later.iter().collect::<Vec<_>>()).await.unwrap();
    assert_eq!(applied.take(1..2).unarchived.len(), 1);
    assert!(!store.conversation(&a, &b).await.unwrap().unwrap().archived);
}

#[tokio::test]
async fn store_reads_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    store_reads(format!("sqlite://{}/reads.db", dir.path().display())).await;
}

#[tokio::test]
async fn store_reads_postgres() {
    store_reads(fresh_pg_schema().await).await;
}

/// U+0000 in a user's text (PostgreSQL's `text` cannot hold it): the message is delivered and
/// stored exactly, the next message flows, the store stays up — no batch stuck on it.
async fn nul_in_text_is_stored_exactly(db: Db) {
    let b = broker();
    let e = engine_task_with(b, db, &[]).await;
    let (u1, u2) = (fresh("u"), fresh("u"));
    let mut c = Mqtt::connect(b, &e.app, &u1, Via::Tcp).await;
    c.subscribe_inbox().await;
    let t = e.topics();
    let poison = json!({"text": "a\u{0}b", "type": "te\u{0}xt", "message_id": "m-nul"});
    c.publish_acked(&t.outgoing(&u1, &u2), poison.to_string().as_bytes())
        .await
        .unwrap();
    c.publish_acked(&t.outgoing(&u1, &u2), br#"{"text":"after","message_id":"m-after"}"#)
        .await
        .unwrap();
    let got = c.messages(2, WAIT).await;
    assert_eq!(got.len(), 2, "both copies to the sender: {got:?}");
    assert_eq!(got[0].1["text"], "a\u{0}b", "delivered exactly");
    let store = open_store(&e.database_url).await;
    let rows = eventually("both messages stored", || async {
        let rows = store.messages(&u2, &u1, 10).await.unwrap();
        (rows.len() == 2).then_some(rows)
    })
    .await;
    let nul = rows.iter().find(|r| r.message_id == "m-nul").expect("the NUL message");
    assert_eq!(nul.message.fields()["text"], "a\u{0}b", "read back exactly");
    assert_eq!(nul.message.fields()["type"], "te\u{0}xt");
    let conv = store.conversations(&u2, false).await.unwrap();
    assert_eq!(conv[0].last.message_id(), Some("m-after"));
    assert_eq!(e.metric("chat21_store_up").await, 1.0);
    assert_eq!(http_get(e.http_port, "/readyz").await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_in_text_is_stored_exactly_sqlite() {
    nul_in_text_is_stored_exactly(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_in_text_is_stored_exactly_postgres() {
    nul_in_text_is_stored_exactly(Db::Postgres).await;
}

/// An input whose writes the store refuses for their data (here a trigger refusing one text,
/// standing for any data error: SQLSTATE 22023 on PostgreSQL, SQLITE_CONSTRAINT_TRIGGER on
/// SQLite): the batch it shares is split, the other inputs commit, and this one goes — body
/// and routing key unchanged, the error in a header — to the dead-letter queue, acked,
/// instead of stalling every commit forever.
async fn a_poison_input_is_dead_lettered_and_the_rest_commits(db: Db) {
    let b = broker();
    let e = engine_task_with(b, db, &[]).await;
    match db {
        Db::Postgres => {
            let pool = sqlx::PgPool::connect(&e.database_url).await.unwrap();
            for sql in [
                "CREATE FUNCTION refuse_poison() RETURNS trigger AS $$ BEGIN \
                 IF NEW.body::json->>'text' = 'poison' THEN RAISE EXCEPTION 'poison text' USING ERRCODE = '22023'; END IF; \
                 RETURN NEW; END $$ LANGUAGE plpgsql",
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION refuse_poison()",
            ] {
                sqlx::query(sql).execute(&pool).await.unwrap();
            }
        }
        Db::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&e.database_url).await.unwrap();
            sqlx::query(
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON messages WHEN json_extract(NEW.body, '$.text') = 'poison' \
                 BEGIN SELECT RAISE(ABORT, 'poison text'); END",
            )
            .execute(&pool)
            .await
            .unwrap();
        }
    }
    let (u1, u2) = (fresh("u"), fresh("u"));
    let t = e.topics();
    let c = Mqtt::connect(b, &e.app, &u1, Via::Tcp).await;
    // Published back to back, so they share batches.
    for text in ["one", "poison", "three", "four", "five"] {
        let body = json!({"text": text, "message_id": format!("m-{text}")});
        c.publish(&t.outgoing(&u1, &u2), body.to_string().as_bytes()).await;
    }
    let store = open_store(&e.database_url).await;
    let rows = eventually("the four others stored", || async {
        let r = store.messages(&u2, &u1, 10).await.unwrap();
        (r.len() == 4).then_some(r)
    })
    .await;
    assert!(rows.iter().all(|r| r.message_id != "m-poison"));

    let conn = lapin::Connection::connect(&b.amqp_uri, Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let dead = format!("{}.dead-letter", e.queue);
    let got = eventually("the poison input dead-lettered", || async {
        ch.basic_get(dead.as_str().into(), lapin::options::BasicGetOptions { no_ack: true })
            .await
            .unwrap()
    })
    .await;
    let body: serde_json::Value = serde_json::from_slice(&got.delivery.data).unwrap();
    assert_eq!(body["text"], "poison", "the body as it came");
    let headers = got.delivery.properties.headers().clone().unwrap();
    let header = |k: &str| match headers.inner().get(k) {
        Some(lapin::types::AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("{k}: {other:?}"),
    };
    assert_eq!(header("x-chat21-routing-key"), t.outgoing(&u1, &u2));
    assert!(
        header("x-chat21-error").contains("poison text"),
        "{}",
        header("x-chat21-error")
    );
    assert_eq!(
        e.metric(r#"chat21_inputs_total{kind="send",outcome="dead_lettered"}"#)
            .await,
        1.0
    );
    // Acked, not redelivered, and the store is taken as up: traffic flows.
    c.publish(&t.outgoing(&u1, &u2), br#"{"text":"after","message_id":"m-after"}"#)
        .await;
    eventually("the next message stored", || async {
        store.message(&u2, "m-after").await.unwrap()
    })
    .await;
    assert_eq!(e.metric("chat21_store_up").await, 1.0);
    assert!(ch
        .basic_get(dead.as_str().into(), lapin::options::BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_input_is_dead_lettered_and_the_rest_commits_sqlite() {
    a_poison_input_is_dead_lettered_and_the_rest_commits(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_input_is_dead_lettered_and_the_rest_commits_postgres() {
    a_poison_input_is_dead_lettered_and_the_rest_commits(Db::Postgres).await;
}

/// Two apps' engines on one database: the same user ids, group uid and client message id in
/// both are separate rows — a message of one app never takes the place of the other's, and
/// a group's membership is the one of its own app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_apps_share_one_database_safely() {
    let b = broker();
    let url = fresh_pg_schema().await;
    let (app1, app2) = (fresh("app"), fresh("app"));
    let e1 = EngineTask::start(b, &[("DATABASE_URL", url.as_str()), ("APP_ID", app1.as_str())]).await;
    let e2 = EngineTask::start(b, &[("DATABASE_URL", url.as_str()), ("APP_ID", app2.as_str())]).await;
    let (u1, u2, g) = (fresh("u"), fresh("u"), fresh("group-"));
    for (e, members) in [(&e1, json!({&u1: 1, &u2: 1})), (&e2, json!({&u1: 1}))] {
        let update = json!({"group": {"uid": g, "members": members}, "notify_to": {}});
        amqp_publish(b, &e.topics().group_update(&e.app), update.to_string().as_bytes()).await;
    }
    for e in [&e1, &e2] {
        let mut c = Mqtt::connect(b, &e.app, &u1, Via::Tcp).await;
        c.subscribe_inbox().await;
        let body = json!({"text": format!("hello from {}", e.app), "message_id": "same-id"});
        crate::common::send(&mut c, e, &u2, body).await;
        one(&mut c, e).await;
    }
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    // The copies are published before their commit ends: wait for both rows.
    let rows = eventually("both apps' rows", || async {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT t.app_id, m.body::json->>'text' FROM timeline t JOIN messages m ON m.app_id = t.app_id \
             AND m.sender = t.sender AND m.recipient = t.recipient AND m.message_id = t.message_id \
             WHERE t.timeline_of = $1 AND t.message_id = 'same-id' ORDER BY t.app_id",
        )
        .bind(&u2)
        .fetch_all(&pool)
        .await
        .unwrap();
        (rows.len() >= 2).then_some(rows)
    })
    .await;
    let mut expected = vec![
        (app1.clone(), format!("hello from {app1}")),
        (app2.clone(), format!("hello from {app2}")),
    ];
    expected.sort();
    assert_eq!(rows, expected, "one row per app");
    // u2 is a member of g in app1 only.
    for (e, member) in [(&e1, true), (&e2, false)] {
        let mut c = Mqtt::connect(b, &e.app, &u2, Via::Tcp).await;
        c.subscribe_inbox().await;
        crate::common::send(&mut c, e, &g, json!({"text": "to the group", "channel_type": "group"})).await;
        let (_, m) = one(&mut c, e).await;
        match member {
            true => assert_eq!(m["status"], 150, "{}: delivered", e.app),
            false => assert_eq!(m["error"]["code"], "not_a_member", "{}: refused", e.app),
        }
    }
}
