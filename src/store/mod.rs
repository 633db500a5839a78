//! Persistence (PROTOCOL §11): SQLite (embedded, the default) or PostgreSQL, chosen by
//! `DATABASE_URL`, through sqlx's `Any` driver: one set of portable SQL for both.
//!
//! Writes come from the policy chain's persistence hook and the handlers as idempotent
//! upserts, and are applied in batches by the group-commit [`writer`]: inputs are acked only
//! after the transaction holding their writes committed. One file per table
//! (`messages.rs`, `conversations.rs`, `groups.rs`, `blocks.rs`, `presence.rs`); `batch.rs`
//! sorts a batch of writes into statements, `sql.rs` holds what the statements share. What a
//! commit reveals (an archived conversation, a presence transition, a group receipt's sender)
//! is handed back keyed by the write that revealed it.

mod batch;
mod blocks;
mod conversations;
mod cursor;
mod groups;
mod instances;
mod messages;
mod presence;
mod sql;
pub mod writer;

use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::time::Duration;

pub use batch::WriteIndex;
pub use cursor::Cursor;
pub use messages::StoredMessage;
pub use presence::StoredPresence;
pub use sql::Dialect;

use crate::config::Database;
use crate::domain::{AppId, Conversation, Group, UserId};
use crate::plan::{Committed, Write};
use batch::Batch;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("DATABASE_URL: {0}")]
    Url(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A row that does not hold what the engine wrote there (edited by hand, or written by
    /// another program): reported, never read as a default.
    #[error("corrupt row in {table} ({key}): {why}")]
    Corrupt {
        table: &'static str,
        key: String,
        why: String,
    },
}

impl Connect {
    /// A read pool, connected on first use.
    fn reads(&self) -> Result<AnyPool, StoreError> {
        Ok(AnyPoolOptions::new()
            .max_connections(self.max_reads)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy(&self.url)?)
    }
}

impl StoreError {
    /// Worth retrying: the database may answer next time. A corrupt row stays corrupt.
    pub fn is_transient(&self) -> bool {
        !matches!(self, StoreError::Corrupt { .. } | StoreError::Url(_))
    }

    /// The data is the problem, not the database: the same writes fail the same way however
    /// often they are retried — PostgreSQL's data exceptions, integrity violations and
    /// program limits (SQLSTATE classes 22, 23, 54), SQLite's TOOBIG, CONSTRAINT, MISMATCH
    /// and RANGE. Everything else (connections, timeouts, locks, disk, permissions,
    /// a missing table) is the store's state, which an operator or time can fix: retried.
    pub fn is_permanent(&self) -> bool {
        let StoreError::Db(sqlx::Error::Database(e)) = self else {
            return false;
        };
        let Some(code) = e.code() else {
            return false;
        };
        match code.parse::<u32>() {
            // SQLite: the extended result code; its low byte is the primary code.
            Ok(n) if code.len() != 5 => matches!(n & 0xFF, 18 | 19 | 20 | 25),
            // PostgreSQL: a five-character SQLSTATE (all digits for these classes).
            _ => code.len() == 5 && ["22", "23", "54"].iter().any(|class| code.starts_with(class)),
        }
    }
}

/// A connected store: a pool for reads, and one connection for the group commit.
#[derive(Clone)]
pub struct Store {
    /// Lookups and reads.
    pool: AnyPool,
    /// The writer's own connection: commits are sequential anyway (one writer task), and on
    /// SQLite a connection that every commit goes through keeps its page cache warm — with a
    /// pool, each commit's connection found its cache invalidated by the previous commit on
    /// another connection and read the pages again.
    writes: AnyPool,
    connect: Connect,
    dialect: Dialect,
}

/// How to open more connections to the same database.
#[derive(Clone)]
struct Connect {
    url: String,
    max_reads: u32,
}

/// SQLite page cache of the writer's connection, in KiB: the pages of the timeline,
/// conversation and body B-trees that every commit touches stay in memory. Readers keep
/// SQLite's default (2 MiB each, allocated as used).
const SQLITE_WRITER_CACHE_KIB: i64 = 8 * 1024;

/// WAL pages after which a commit checkpoints them into the database file (SQLite's default
/// is 1,000). A busy commit touches a thousand pages or more, so with the default nearly
/// every commit also checkpointed — writing each page twice and holding the writer. 16,384
/// pages (64 MiB of WAL file on disk, not in memory) checkpoint a hot page once for many
/// commits.
const SQLITE_CHECKPOINT_PAGES: i64 = 16_384;

/// What a committed batch revealed, by the write that revealed it.
#[derive(Debug, Default)]
pub struct Applied {
    by_write: BTreeMap<WriteIndex, Committed>,
}

impl Applied {
    fn add(&mut self, at: WriteIndex, f: impl FnOnce(&mut Committed)) {
        f(self.by_write.entry(at).or_default());
    }

    /// What these writes (an input's share of the batch) revealed, in write order.
    pub fn take(&mut self, writes: Range<WriteIndex>) -> Committed {
        let mut out = Committed::default();
        let keys: Vec<WriteIndex> = self.by_write.range(writes).map(|(k, _)| *k).collect();
        for k in keys {
            if let Some(c) = self.by_write.remove(&k) {
                out.extend(c);
            }
        }
        out
    }
}

impl Store {
    /// Connect (creating the SQLite file and its directory on first run) and migrate.
    pub async fn open(database: &Database) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let (url, max_reads, dialect) = match database {
            Database::Sqlite { path } => {
                if let Some(dir) = std::path::Path::new(path)
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                {
                    std::fs::create_dir_all(dir).map_err(|e| StoreError::Url(format!("{}: {e}", dir.display())))?;
                }
                // WAL: readers never block the writer (and each other).
                (format!("sqlite://{path}?mode=rwc"), 3, Dialect::Sqlite)
            }
            Database::Postgres { url } => (url.expose().to_owned(), 7, Dialect::Postgres),
        };
        let writes = AnyPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if dialect == Dialect::Sqlite {
                        // FULL: a commit is on disk before the inputs it holds are acked, so an
                        // acked input survives a power loss too (NORMAL would risk the last
                        // commits for a few µs of fsync CPU; the fsync's wait is hidden by
                        // the group commit).
                        sqlx::query("PRAGMA synchronous = FULL").execute(&mut *conn).await?;
                        sqlx::query(&format!("PRAGMA cache_size = -{SQLITE_WRITER_CACHE_KIB}"))
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query(&format!("PRAGMA wal_autocheckpoint = {SQLITE_CHECKPOINT_PAGES}"))
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        if dialect == Dialect::Sqlite {
            // Kept in the file: every later connection opens in WAL mode.
            sqlx::query("PRAGMA journal_mode=WAL").execute(&writes).await?;
        }
        MIGRATOR.run(&writes).await?;
        let connect = Connect { url, max_reads };
        let pool = connect.reads()?;
        Ok(Store {
            pool,
            writes,
            connect,
            dialect,
        })
    }

    /// The same store with a read pool of its own (the HTTP API's, so a burst of reads never
    /// takes the connections the message flow's lookups need); writes share the one writer.
    pub fn with_own_reads(&self) -> Result<Store, StoreError> {
        Ok(Store {
            pool: self.connect.reads()?,
            ..self.clone()
        })
    }

    pub fn backend(&self) -> Dialect {
        self.dialect
    }

    /// Is the database answering?
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// Apply writes in one transaction (all or nothing), as few multi-row statements as
    /// possible: a statement costs a round trip (a thread hop for SQLite), a row almost nothing.
    pub async fn apply(&self, writes: &[&Write]) -> Result<Applied, StoreError> {
        let batch = Batch::of(writes);
        let mut applied = Applied::default();
        let mut tx = self.writes.begin().await?;
        let d = self.dialect;
        for chunk in sql::statement_chunks(&batch.conversations) {
            for (at, conv) in conversations::unarchived_by(&mut tx, d, chunk).await? {
                applied.add(at, |c| c.unarchived.push(conv));
            }
        }
        for chunk in sql::statement_chunks(&batch.bodies) {
            messages::insert_bodies(&mut tx, d, chunk).await?;
        }
        for chunk in sql::statement_chunks(&batch.messages) {
            messages::insert(&mut tx, d, chunk).await?;
        }
        for chunk in sql::statement_chunks(&batch.conversations) {
            conversations::upsert(&mut tx, d, chunk).await?;
        }
        // After the inserts: a receipt committed with its message in one batch still applies.
        for (at, w) in batch.updates {
            update(&mut tx, at, w, &mut applied).await?;
        }
        tx.commit().await?;
        Ok(applied)
    }

    /// A conversation's messages, newest first (at most `limit`).
    pub async fn messages(
        &self,
        timeline_of: &str,
        convers_with: &str,
        limit: i64,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        messages::page(&self.pool, timeline_of, convers_with, None, limit).await
    }

    /// A page of history: at most `limit` messages older than `before` (epoch ms), newest
    /// first. The next page is the one before the oldest timestamp of this one.
    pub async fn messages_before(
        &self,
        timeline_of: &str,
        convers_with: &str,
        before: i64,
        limit: i64,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        messages::page(&self.pool, timeline_of, convers_with, Some(before), limit).await
    }

    /// One stored message, if it exists.
    pub async fn message(&self, timeline_of: &str, message_id: &str) -> Result<Option<StoredMessage>, StoreError> {
        messages::one(&self.pool, timeline_of, message_id).await
    }

    /// A user's conversations (active or archived), newest first.
    pub async fn conversations(&self, timeline_of: &str, archived: bool) -> Result<Vec<Conversation>, StoreError> {
        conversations::list(&self.pool, timeline_of, archived, i64::MAX).await
    }

    /// The newest `limit` conversations of a user (active or archived).
    pub async fn recent_conversations(
        &self,
        timeline_of: &str,
        archived: bool,
        limit: i64,
    ) -> Result<Vec<Conversation>, StoreError> {
        conversations::list(&self.pool, timeline_of, archived, limit).await
    }

    /// One conversation of a user, archived or not.
    pub async fn conversation(
        &self,
        timeline_of: &str,
        convers_with: &str,
    ) -> Result<Option<Conversation>, StoreError> {
        conversations::one(&self.pool, timeline_of, convers_with).await
    }

    /// A stored group of `app`. A row that does not parse is [`StoreError::Corrupt`].
    pub async fn group(&self, app: &AppId, uid: &UserId) -> Result<Option<Group>, StoreError> {
        groups::one(&self.pool, app, uid).await
    }

    /// The block lists of `users` (who each of them blocked), one query per 256 users. Users
    /// who blocked no one are in the map with an empty set.
    pub async fn blocks_of(
        &self,
        app: &AppId,
        users: &[UserId],
    ) -> Result<HashMap<UserId, HashSet<UserId>>, StoreError> {
        blocks::of_users(&self.pool, self.dialect, app, users).await
    }

    /// Who `user` blocked, oldest first, with when (epoch ms).
    pub async fn blocked_by(&self, app: &AppId, user: &UserId) -> Result<Vec<(UserId, i64)>, StoreError> {
        blocks::of_user(&self.pool, app, user).await
    }

    /// A page of `app`'s history of a conversation, newest first (see [`Cursor`]).
    pub async fn history(
        &self,
        app: &AppId,
        timeline_of: &UserId,
        convers_with: &UserId,
        cursor: Option<&Cursor>,
        limit: i64,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        messages::history(&self.pool, app, timeline_of, convers_with, cursor, limit).await
    }

    /// A page of `app`'s conversations of a timeline, newest first by (receive time, partner),
    /// each with its receive time (with the partner, the cursor of the next page).
    pub async fn conversation_page(
        &self,
        app: &AppId,
        timeline_of: &UserId,
        archived: bool,
        before: Option<&Cursor>,
        limit: i64,
    ) -> Result<Vec<(Conversation, i64)>, StoreError> {
        conversations::page(&self.pool, app, timeline_of, archived, before, limit).await
    }

    /// `app`'s conversation of `timeline_of` with `convers_with`, archived or not.
    pub async fn conversation_of(
        &self,
        app: &AppId,
        timeline_of: &UserId,
        convers_with: &UserId,
    ) -> Result<Option<Conversation>, StoreError> {
        conversations::one_of_app(&self.pool, app, timeline_of, convers_with).await
    }

    /// Register (or refresh) a device of `user`.
    pub async fn save_instance(
        &self,
        app: &AppId,
        user: &UserId,
        instance_id: &str,
        info: &serde_json::Map<String, serde_json::Value>,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        instances::save(&self.pool, app, user, instance_id, info, at_ms).await
    }

    /// A user's registered devices, by instance id.
    pub async fn instances(
        &self,
        app: &AppId,
        user: &UserId,
    ) -> Result<Vec<(String, serde_json::Map<String, serde_json::Value>)>, StoreError> {
        instances::of_user(&self.pool, app, user).await
    }

    /// A user's presence, if it was ever recorded.
    pub async fn presence(&self, app_id: &str, user_id: &str) -> Result<Option<StoredPresence>, StoreError> {
        presence::one(&self.pool, app_id, user_id).await
    }

    pub async fn close(&self) {
        self.pool.close().await;
        self.writes.close().await;
    }
}

/// A single-row update, in input order; what it reveals goes to its write. Message and
/// conversation updates touch only rows that exist (no stub rows).
async fn update(tx: &mut sql::Tx<'_>, at: WriteIndex, w: &Write, applied: &mut Applied) -> Result<(), StoreError> {
    match w {
        Write::ConversationIsNew {
            app,
            timeline_of,
            convers_with,
            is_new,
        } => conversations::set_is_new(tx, app, timeline_of, convers_with, *is_new).await?,
        Write::Archive {
            app,
            timeline_of,
            convers_with,
        } => {
            if let Some(conv) = conversations::archive(tx, app, timeline_of, convers_with).await? {
                applied.add(at, |c| c.archived.push(conv));
            }
        }
        Write::Receipt {
            app,
            reader,
            convers_with,
            message_id,
        } => {
            if let Some(r) = messages::receipt(tx, app, reader, convers_with, message_id).await? {
                applied.add(at, |c| c.receipts.push(r));
            }
        }
        Write::Group(g) => groups::upsert(tx, g).await?,
        Write::Block {
            app,
            user,
            other,
            add,
            at_ms,
        } => blocks::set(tx, app, user, other, *add, *at_ms).await?,
        Write::Presence {
            app,
            user,
            client_id,
            connected,
            at_ms,
        } => {
            if let Some(change) = presence::record(tx, app, user, client_id, *connected, *at_ms).await? {
                applied.add(at, |c| c.presence.push(change));
            }
        }
        // Rows, not updates: see `Batch`.
        Write::Message(_) | Write::Conversation(_) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Message, Sealed};
    use crate::plan::PresenceChange;
    use crate::plan::TimelineCopy;
    use sqlx::Row;
    use std::sync::Arc;

    fn copy(timeline_of: &str, with: &str, id: &str, ts: i64, text: &str, is_new: bool) -> TimelineCopy {
        let m = serde_json::json!({"message_id": id, "timestamp": ts, "text": text, "status": 150, "app_id": "a", "sender": with});
        TimelineCopy {
            app: "a".into(),
            timeline_of: timeline_of.into(),
            convers_with: with.into(),
            is_new,
            message: Sealed::new(Message::from_fields(m.as_object().unwrap().clone())),
            received_ms: m["timestamp"].as_i64().unwrap_or(1),
        }
    }

    fn stored(c: &TimelineCopy) -> Vec<Write> {
        vec![Write::Message(c.clone()), Write::Conversation(c.clone())]
    }

    async fn apply(store: &Store, writes: &[Write]) -> Applied {
        let refs: Vec<&Write> = writes.iter().collect();
        store.apply(&refs).await.unwrap()
    }

    async fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/s.db").display().to_string();
        let store = Store::open(&Database::Sqlite { path }).await.unwrap();
        (dir, store)
    }

    /// A store made before `received_at` and the app-keyed tables existed is converted in place
    /// when it is opened: its conversations keep their last message and take its timestamp as
    /// their receive time (the next, newer message still replaces it and an older replay still
    /// does not); messages and groups come through the rebuilt tables unchanged.
    #[tokio::test]
    async fn migrations_convert_an_existing_store_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db").display().to_string();
        {
            let old = sqlx::migrate::Migrator {
                migrations: MIGRATOR
                    .migrations
                    .iter()
                    .filter(|m| m.version < 20261203000001)
                    .cloned()
                    .collect::<Vec<_>>()
                    .into(),
                ..sqlx::migrate::Migrator::DEFAULT
            };
            let pool = sqlx::SqlitePool::connect(&format!("sqlite://{path}?mode=rwc"))
                .await
                .unwrap();
            old.run(&pool).await.unwrap();
            sqlx::query(
                "INSERT INTO conversations (timeline_of, convers_with, app_id, message_id, status, timestamp, \
                 is_new, archived, body) VALUES ('A', 'B', 'a', 'm1', 150, 1000, TRUE, FALSE, \
                 '{\"message_id\":\"m1\",\"text\":\"old\",\"timestamp\":1000}')",
            )
            .execute(&pool)
            .await
            .unwrap();
            for sql in [
                "INSERT INTO messages (timeline_of, message_id, convers_with, app_id, status, timestamp, body) \
                 VALUES ('A', 'm1', 'B', 'a', 150, 1000, '{\"message_id\":\"m1\",\"text\":\"old\",\"timestamp\":1000}')",
                "INSERT INTO groups (uid, app_id, members, created_on, updated_on, body) \
                 VALUES ('g', 'a', '{\"A\":1}', 1, 1, '{\"uid\":\"g\",\"members\":{\"A\":1}}')",
            ] {
                sqlx::query(sql).execute(&pool).await.unwrap();
            }
            pool.close().await;
        }
        let store = Store::open(&Database::Sqlite { path }).await.unwrap();
        let conv = store.conversation("A", "B").await.unwrap().expect("kept");
        assert_eq!(conv.last.text(), Some("old"));
        let at: i64 = sqlx::query_scalar("SELECT received_at FROM conversations")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(at, 1000);
        assert_eq!(
            store.message("A", "m1").await.unwrap().unwrap().message.text(),
            Some("old")
        );
        let g = store
            .group(&"a".into(), &"g".into())
            .await
            .unwrap()
            .expect("the group kept");
        assert!(g.is_member("A"));
        assert_eq!(
            store.group(&"other".into(), &"g".into()).await.unwrap(),
            None,
            "keyed by app"
        );
        apply(&store, &stored(&copy("A", "B", "m0", 500, "older replay", true))).await;
        assert_eq!(
            store.conversation("A", "B").await.unwrap().unwrap().last.text(),
            Some("old")
        );
        apply(&store, &stored(&copy("A", "B", "m2", 2000, "new", true))).await;
        assert_eq!(
            store.conversation("A", "B").await.unwrap().unwrap().last.text(),
            Some("new")
        );
    }

    /// A real SQLite file: upserts are idempotent and the newest message wins.
    #[tokio::test]
    async fn sqlite_upserts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/c.db").display().to_string();
        let store = Store::open(&Database::Sqlite { path: path.clone() }).await.unwrap();
        let new = copy("A", "B", "m2", 2000, "new", true);
        let old = copy("A", "B", "m1", 1000, "old", true);
        apply(&store, &stored(&new)).await;
        apply(&store, &stored(&new)).await;
        apply(&store, &stored(&old)).await;
        let msgs = store.messages("A", "B", 10).await.unwrap();
        let ids: Vec<&str> = msgs.iter().map(|m| m.message_id.as_str()).collect();
        assert_eq!(ids, vec!["m2", "m1"]);
        let convs = store.conversations("A", false).await.unwrap();
        assert_eq!(convs.len(), 1);
        assert_eq!(convs[0].last.text(), Some("new"));
        assert!(convs[0].is_new);
        // Every §11 table exists with its key.
        for table in ["groups", "blocks", "presence"] {
            sqlx::query(&format!("SELECT COUNT(*) FROM {table}"))
                .execute(&store.pool)
                .await
                .unwrap();
        }
        // Reopening runs the migrations again: a no-op.
        store.close().await;
        let again = Store::open(&Database::Sqlite { path }).await.unwrap();
        assert_eq!(again.messages("A", "B", 10).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn history_pages_and_conversation_reads() {
        let (_dir, store) = temp_store().await;
        for i in 1..=5 {
            apply(
                &store,
                &stored(&copy("A", "B", &format!("m{i}"), i * 100, &format!("t{i}"), true)),
            )
            .await;
        }
        apply(&store, &stored(&copy("A", "C", "c1", 50, "other", false))).await;
        let ids = |page: Vec<StoredMessage>| page.into_iter().map(|m| m.message_id).collect::<Vec<_>>();
        assert_eq!(ids(store.messages("A", "B", 2).await.unwrap()), vec!["m5", "m4"]);
        assert_eq!(
            ids(store.messages_before("A", "B", 400, 2).await.unwrap()),
            vec!["m3", "m2"]
        );
        assert_eq!(ids(store.messages_before("A", "B", 200, 2).await.unwrap()), vec!["m1"]);
        let recent = store.recent_conversations("A", false, 1).await.unwrap();
        assert_eq!((recent.len(), recent[0].convers_with.as_str()), (1, "B"));
        let one = store.conversation("A", "C").await.unwrap().unwrap();
        assert_eq!(
            (one.last.text(), one.is_new, one.archived),
            (Some("other"), false, false)
        );
        assert!(store.conversation("A", "Z").await.unwrap().is_none());
    }

    /// Pages in a total order: messages of one millisecond are neither repeated nor skipped at
    /// a page boundary, and a bare timestamp cursor excludes that whole millisecond.
    #[tokio::test]
    async fn history_pages_walk_ties_once() {
        let (_dir, store) = temp_store().await;
        let mut want = Vec::new();
        for i in 0..20 {
            let ts = if i < 15 { 1000 } else { 2000 + i };
            let id = format!("m{:02}", (i * 7) % 20);
            apply(&store, &stored(&copy("A", "B", &id, ts, "t", true))).await;
            want.push(id);
        }
        let (app, a, b) = (AppId::from("a"), UserId::from("A"), UserId::from("B"));
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = store.history(&app, &a, &b, cursor.as_ref(), 3).await.unwrap();
            if page.is_empty() {
                break;
            }
            cursor = page.last().map(Cursor::after);
            seen.extend(page.into_iter().map(|m| m.message_id));
        }
        assert_eq!(seen.len(), 20, "{seen:?}");
        let unique: HashSet<&String> = seen.iter().collect();
        assert_eq!(unique.len(), 20);
        let bare = Cursor { at: 1000, id: None };
        assert!(store.history(&app, &a, &b, Some(&bare), 10).await.unwrap().is_empty());
        assert!(
            store
                .history(&"other".into(), &a, &b, None, 10)
                .await
                .unwrap()
                .is_empty(),
            "by app"
        );
    }

    /// Conversation pages in a total order too: partners of one millisecond walked once each.
    #[tokio::test]
    async fn conversation_pages_walk_ties_once() {
        let (_dir, store) = temp_store().await;
        for i in 0..9 {
            let mut c = copy("A", &format!("P{i}"), &format!("m{i}"), 0, "t", true);
            c.received_ms = if i < 6 { 500 } else { 900 + i };
            apply(&store, &stored(&c)).await;
        }
        let (app, a) = (AppId::from("a"), UserId::from("A"));
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = store
                .conversation_page(&app, &a, false, cursor.as_ref(), 2)
                .await
                .unwrap();
            let Some((last, at)) = page.last() else { break };
            cursor = Some(Cursor {
                at: *at,
                id: Some(last.convers_with.to_string()),
            });
            seen.extend(page.iter().map(|(c, _)| c.convers_with.to_string()));
        }
        assert_eq!(seen.len(), 9, "{seen:?}");
        assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 9);
        assert_eq!(&seen[..3], ["P8", "P7", "P6"], "newest first");
    }

    /// A direct message's body is stored once for both timelines, a group message's once for
    /// all its members; each timeline row keeps its own status.
    #[tokio::test]
    async fn one_body_per_message() {
        let (_dir, store) = temp_store().await;
        let m = serde_json::json!({"message_id": "g1", "timestamp": 5, "text": "hi all", "status": 100,
            "sender": "A", "recipient": "G"});
        let sealed = Sealed::new(Message::from_fields(m.as_object().unwrap().clone()));
        let copy_for = |t: &str| TimelineCopy {
            app: "a".into(),
            timeline_of: t.into(),
            convers_with: "G".into(),
            is_new: t != "A",
            message: sealed.clone(),
            received_ms: 5,
        };
        let mut writes = Vec::new();
        for t in ["A", "M1", "M2", "G"] {
            writes.extend(stored(&copy_for(t)));
        }
        apply(&store, &writes).await;
        let count = |table: &'static str| {
            let pool = store.pool.clone();
            async move {
                sqlx::query(&format!("SELECT COUNT(*) FROM {table}"))
                    .fetch_one(&pool)
                    .await
                    .unwrap()
                    .try_get::<i64, _>(0)
                    .unwrap()
            }
        };
        assert_eq!(
            (
                count("messages").await,
                count("timeline").await,
                count("conversations").await
            ),
            (1, 4, 4)
        );
        // Redelivered and stamped again by the engine's clock: the same message, no new rows.
        let mut again = m.as_object().unwrap().clone();
        again.insert("timestamp".into(), 99.into());
        let restamped = TimelineCopy {
            message: Sealed::new(Message::from_fields(again)),
            ..copy_for("M1")
        };
        apply(&store, &[Write::Message(restamped)]).await;
        assert_eq!((count("messages").await, count("timeline").await), (1, 4));
        let receipt = Write::Receipt {
            app: "a".into(),
            reader: "M1".into(),
            convers_with: "G".into(),
            message_id: "g1".into(),
        };
        apply(&store, &[receipt]).await;
        let (app, g) = (AppId::from("a"), UserId::from("G"));
        let read = store.history(&app, &"M1".into(), &g, None, 10).await.unwrap();
        assert_eq!((read[0].status, read[0].message.status()), (200, Some(200)));
        let other = store.history(&app, &"M2".into(), &g, None, 10).await.unwrap();
        assert_eq!(other[0].message.status(), Some(100), "the first copy's, untouched");
        assert_eq!(other[0].message.text(), Some("hi all"));
    }

    /// A message id is an idempotency key per sender (issue 11): another user's message with
    /// the same id, to the same recipient or group, is another message — never taken for a
    /// duplicate, never shadowing the first.
    #[tokio::test]
    async fn message_ids_are_per_sender() {
        let (_dir, store) = temp_store().await;
        let from = |sender: &str, to: &str, timeline: &str, with: &str, text: &str| {
            let m = serde_json::json!({"message_id": "same", "timestamp": 7, "text": text, "status": 150,
                "sender": sender, "recipient": to});
            TimelineCopy {
                app: "a".into(),
                timeline_of: timeline.into(),
                convers_with: with.into(),
                is_new: true,
                message: Sealed::new(Message::from_fields(m.as_object().unwrap().clone())),
                received_ms: 7,
            }
        };
        let mut writes = stored(&from("A", "B", "B", "A", "from A"));
        writes.extend(stored(&from("C", "B", "B", "C", "from C")));
        writes.extend(stored(&from("A", "G", "G", "G", "A in G")));
        writes.extend(stored(&from("C", "G", "G", "G", "C in G")));
        apply(&store, &writes).await;
        let (app, b, g) = (AppId::from("a"), UserId::from("B"), UserId::from("G"));
        let text = |v: Vec<StoredMessage>| {
            v.iter()
                .map(|m| m.message.text().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            text(store.history(&app, &b, &"A".into(), None, 10).await.unwrap()),
            ["from A"]
        );
        assert_eq!(
            text(store.history(&app, &b, &"C".into(), None, 10).await.unwrap()),
            ["from C"]
        );
        let mut in_group = text(store.history(&app, &g, &g, None, 10).await.unwrap());
        in_group.sort();
        assert_eq!(in_group, ["A in G", "C in G"]);
    }

    /// Rows a person or another program broke are errors, never defaults.
    #[tokio::test]
    async fn corrupt_rows_are_errors() {
        let (_dir, store) = temp_store().await;
        apply(&store, &stored(&copy("A", "B", "m1", 1, "x", true))).await;
        sqlx::query("UPDATE messages SET body = 'not json'")
            .execute(&store.pool)
            .await
            .unwrap();
        let corrupt = |e: StoreError| matches!(e, StoreError::Corrupt { .. }) && !e.is_transient();
        assert!(corrupt(store.messages("A", "B", 10).await.unwrap_err()));
        assert!(corrupt(store.conversations("A", false).await.unwrap_err()));
        // A body that is gone is an error too, never a row left out.
        sqlx::query("DELETE FROM messages").execute(&store.pool).await.unwrap();
        assert!(corrupt(store.messages("A", "B", 10).await.unwrap_err()));
        assert!(corrupt(store.conversations("A", false).await.unwrap_err()));
        let g = Group::from_object(&"app".into(), serde_json::json!({"uid":"g"}).as_object().unwrap(), 1).unwrap();
        apply(&store, &[Write::Group(Arc::new(g))]).await;
        sqlx::query("UPDATE groups SET body = '{'")
            .execute(&store.pool)
            .await
            .unwrap();
        assert!(corrupt(store.group(&"app".into(), &"g".into()).await.unwrap_err()));
    }

    /// Inside a write a corrupt row never fails the batch (it would fail on every retry and
    /// stop every commit after it); on the hot path a bad block row is left out.
    #[tokio::test]
    async fn corrupt_rows_never_stall_writes() {
        let (_dir, store) = temp_store().await;
        let m = serde_json::json!({"message_id": "m", "sender": "not an id", "timestamp": 1});
        let replayed = TimelineCopy {
            app: "a".into(),
            timeline_of: "R".into(),
            convers_with: "G".into(),
            is_new: false,
            message: Sealed::new(Message::from_fields(m.as_object().unwrap().clone())),
            received_ms: m["timestamp"].as_i64().unwrap_or(1),
        };
        apply(&store, &[Write::Message(replayed)]).await;
        let receipt = Write::Receipt {
            app: "a".into(),
            reader: "R".into(),
            convers_with: "G".into(),
            message_id: "m".into(),
        };
        assert!(apply(&store, &[receipt]).await.take(0..1).is_empty());
        apply(&store, &stored(&copy("A", "B", "m1", 1, "x", true))).await;
        sqlx::query("UPDATE messages SET body = 'broken'")
            .execute(&store.pool)
            .await
            .unwrap();
        let archive = Write::Archive {
            app: "a".into(),
            timeline_of: "A".into(),
            convers_with: "B".into(),
        };
        assert!(
            apply(&store, &[archive]).await.take(0..1).is_empty(),
            "archived, not published"
        );
        sqlx::query("INSERT INTO blocks (app_id, user_id, other_id, created_on) VALUES ('a', 'U', 'x y', 1), ('a', 'U', 'V', 2)")
            .execute(&store.pool)
            .await
            .unwrap();
        let lists = store.blocks_of(&"a".into(), &["U".into()]).await.unwrap();
        assert_eq!(lists[&UserId::from("U")], HashSet::from(["V".into()]));
    }

    #[tokio::test]
    async fn groups_round_trip_in_member_order() {
        let (_dir, store) = temp_store().await;
        assert_eq!(store.group(&"app".into(), &"g".into()).await.unwrap(), None);
        let obj = serde_json::json!({"uid":"g","name":"N","owner":"o","members":{"z":1,"a":1},"attributes":{"k":1}});
        let g = Group::from_object(&"app".into(), obj.as_object().unwrap(), 5).unwrap();
        apply(&store, &[Write::Group(Arc::new(g.clone()))]).await;
        assert_eq!(store.group(&"app".into(), &"g".into()).await.unwrap(), Some(g.clone()));
        // An update replaces the membership and keeps the creation time.
        let obj = serde_json::json!({"uid":"g","members":{"a":1}});
        let g2 = Group::from_object(&"app".into(), obj.as_object().unwrap(), 9).unwrap();
        apply(&store, &[Write::Group(Arc::new(g2))]).await;
        let got = store.group(&"app".into(), &"g".into()).await.unwrap().unwrap();
        assert_eq!(got.members, vec!["a"]);
        assert_eq!((got.created_on, got.updated_on), (5, 9));
    }

    #[tokio::test]
    async fn block_lists_by_user_and_for_many() {
        let (_dir, store) = temp_store().await;
        let block = |user: &str, other: &str, add: bool, at_ms: i64| Write::Block {
            app: "a".into(),
            user: user.into(),
            other: other.into(),
            add,
            at_ms,
        };
        apply(
            &store,
            &[
                block("U", "X", true, 2),
                block("U", "Y", true, 1),
                block("U", "X", true, 3),
            ],
        )
        .await;
        apply(&store, &[block("V", "U", true, 4), block("V", "U", false, 5)]).await;
        let of_u = store.blocked_by(&"a".into(), &"U".into()).await.unwrap();
        assert_eq!(of_u, vec![("Y".into(), 1), ("X".into(), 2)], "idempotent, oldest first");
        let many = store
            .blocks_of(&"a".into(), &["U".into(), "V".into(), "W".into()])
            .await
            .unwrap();
        assert_eq!(many[&UserId::from("U")].len(), 2);
        assert!(many[&UserId::from("V")].is_empty() && many[&UserId::from("W")].is_empty());
        assert!(store
            .blocked_by(&"other-app".into(), &"U".into())
            .await
            .unwrap()
            .is_empty());
    }

    /// A receipt counts only where the reader's own timeline holds the message; the store
    /// tells a group message's original sender from a direct message's, raises the sender's
    /// side, and hands whom to tell to the receipt's own write.
    #[tokio::test]
    async fn receipts_are_checked_against_the_readers_timeline() {
        let (_dir, store) = temp_store().await;
        let msg = |timeline: &str, with: &str, id: &str, sender: &str, status: i64| {
            // As the engine stamps them: "g" to the group G, "d" to R.
            let recipient = if id == "g" { "G" } else { "R" };
            let m = serde_json::json!({"message_id": id, "sender": sender, "recipient": recipient, "timestamp": 1, "status": status});
            Write::Message(TimelineCopy {
                app: "a".into(),
                timeline_of: timeline.into(),
                convers_with: with.into(),
                is_new: false,
                message: Sealed::new(Message::from_fields(m.as_object().unwrap().clone())),
                received_ms: m["timestamp"].as_i64().unwrap_or(1),
            })
        };
        // A group message "g" from S (S's member copy, R's, the group timeline G) and a direct
        // message "d" from D to R (D's copy, R's).
        apply(
            &store,
            &[
                msg("S", "G", "g", "S", 150),
                msg("R", "G", "g", "S", 150),
                msg("G", "G", "g", "S", 100),
                msg("D", "R", "d", "D", 100),
                msg("R", "D", "d", "D", 150),
            ],
        )
        .await;
        let receipt = |reader: &str, with: &str, id: &str| Write::Receipt {
            app: "a".into(),
            reader: reader.into(),
            convers_with: with.into(),
            message_id: id.into(),
        };
        let status = |timeline: &'static str, id: &'static str| {
            let store = store.clone();
            async move { store.message(timeline, id).await.unwrap().unwrap().status }
        };
        // Someone who did not receive them: nothing changes, nobody is told.
        let mut applied = apply(
            &store,
            &[receipt("T", "D", "d"), receipt("T", "G", "g"), receipt("T", "S", "g")],
        )
        .await;
        assert!(applied.take(0..3).is_empty());
        assert_eq!(
            (status("D", "d").await, status("S", "g").await, status("G", "g").await),
            (100, 150, 100)
        );
        // The wrong conversation of the right reader: neither.
        assert!(apply(&store, &[receipt("R", "S", "g")]).await.take(0..1).is_empty());
        assert_eq!(status("S", "g").await, 150);

        let mut applied = apply(&store, &[receipt("R", "G", "g"), receipt("R", "D", "d")]).await;
        let group = applied.take(0..1).receipts;
        assert_eq!((group[0].to.as_str(), group[0].convers_with.as_str()), ("S", "G"));
        let direct = applied.take(1..2).receipts;
        assert_eq!((direct[0].to.as_str(), direct[0].convers_with.as_str()), ("D", "R"));
        assert_eq!(
            (status("R", "g").await, status("S", "g").await, status("G", "g").await),
            (200, 250, 250)
        );
        assert_eq!((status("R", "d").await, status("D", "d").await), (200, 250));
        // The sender's own receipt, and an unknown message, tell nobody.
        let mut applied = apply(&store, &[receipt("S", "G", "g"), receipt("R", "nowhere", "g")]).await;
        assert!(applied.take(0..2).is_empty());
    }

    #[tokio::test]
    async fn presence_counts_clients_and_reports_transitions_to_their_write() {
        let (_dir, store) = temp_store().await;
        let p = |client: &str, connected: bool, at_ms: i64| Write::Presence {
            app: "a".into(),
            user: "U".into(),
            client_id: client.into(),
            connected,
            at_ms,
        };
        let change = |online: bool, at_ms| PresenceChange {
            app_id: "a".into(),
            user_id: "U".into(),
            online,
            at_ms,
        };
        // One batch: the transition belongs to the write that caused it.
        let mut applied = apply(&store, &[p("c1", true, 1), p("c2", true, 2), p("c1", true, 3)]).await;
        assert_eq!(applied.take(1..3).presence, vec![], "not the later writes'");
        assert_eq!(applied.take(0..1).presence, vec![change(true, 1)]);
        // One of two clients leaves (twice: a redelivery changes nothing): still online.
        for at in [4, 5] {
            assert!(apply(&store, &[p("c1", false, at)]).await.take(0..1).is_empty());
        }
        let row = store.presence("a", "U").await.unwrap().unwrap();
        assert_eq!(
            row,
            StoredPresence {
                online: true,
                clients: 1,
                last_seen: Some(5)
            }
        );
        let mut applied = apply(&store, &[p("c2", false, 6)]).await;
        assert_eq!(applied.take(0..1).presence, vec![change(false, 6)]);
        assert!(!store.presence("a", "U").await.unwrap().unwrap().online);
    }

    /// Archive and un-archive in one batch: each is handed to its own write.
    #[tokio::test]
    async fn archive_and_unarchive_are_keyed_by_write() {
        let (_dir, store) = temp_store().await;
        apply(&store, &stored(&copy("A", "B", "m1", 1, "first", false))).await;
        let archive = Write::Archive {
            app: "a".into(),
            timeline_of: "A".into(),
            convers_with: "B".into(),
        };
        let mut applied = apply(&store, &[archive]).await;
        let archived = applied.take(0..1).archived;
        assert_eq!((archived.len(), archived[0].archived), (1, true));
        assert_eq!(archived[0].last.text(), Some("first"));
        // Two newer messages in one batch: the newest one's write un-archives.
        let (m2, m3) = (
            copy("A", "B", "m2", 2, "second", true),
            copy("A", "B", "m3", 3, "third", true),
        );
        let mut writes = stored(&m2);
        writes.extend(stored(&m3));
        let mut applied = apply(&store, &writes).await;
        assert!(applied.take(0..2).unarchived.is_empty());
        let un = applied.take(2..4).unarchived;
        assert_eq!((un.len(), un[0].last.text(), un[0].archived), (1, Some("third"), false));
        assert!(!store.conversation("A", "B").await.unwrap().unwrap().archived);
    }
}
