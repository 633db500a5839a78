//! Persistence (PROTOCOL §11): SQLite (embedded, the default) or PostgreSQL, chosen by
//! `DATABASE_URL`, through sqlx's `Any` driver: one set of portable SQL for both.
//!
//! Writes come from the policy chain's persistence hook as idempotent upserts, and are
//! applied in batches by the group-commit [`writer`]: inputs are acked only after the
//! transaction holding their writes committed.

pub mod writer;

use serde_json::{Map, Value};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::domain::{AppId, ClientId, Group, Message, UserId};
use crate::events::PresenceChange;
use crate::plan::{GroupReceipt, TimelineCopy, Write};

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

impl StoreError {
    /// Worth retrying: the database may answer next time. A corrupt row stays corrupt.
    pub fn is_transient(&self) -> bool {
        !matches!(self, StoreError::Corrupt { .. } | StoreError::Url(_))
    }
}

/// Which SQL dialect the store speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    pub fn label(self) -> &'static str {
        match self {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
        }
    }

    /// SQLite gets plain `?` placeholders (see [`placeholders`]).
    fn positional(self) -> bool {
        self == Dialect::Sqlite
    }
}

use crate::config::Database;

fn dialect(backend: &Database) -> Dialect {
    match backend {
        Database::Sqlite { .. } => Dialect::Sqlite,
        Database::Postgres { .. } => Dialect::Postgres,
    }
}

/// A connected store.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
}

/// What a committed batch changed that publishes depend on.
#[derive(Debug, Default)]
pub struct Applied {
    /// Conversations archived by this batch, as conversation objects.
    pub archived: std::collections::HashMap<(UserId, UserId), Map<String, Value>>,
    /// Archived conversations that a new message in this batch un-archived.
    pub unarchived: std::collections::HashSet<(UserId, UserId)>,
    /// One entry per presence write of the batch, in order: the transition it caused, if any.
    pub presence: std::collections::VecDeque<Option<PresenceChange>>,
    /// One entry per group-receipt write of the batch, in order: the sender to tell, if any.
    pub group_receipts: std::collections::VecDeque<Option<GroupReceipt>>,
}

/// A user's presence row.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPresence {
    pub online: bool,
    /// Connected clients.
    pub clients: i64,
    /// Epoch ms of the last connect or disconnect.
    pub last_seen: Option<i64>,
}

/// One message row, for history reads.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    pub timeline_of: String,
    pub convers_with: String,
    pub message_id: String,
    pub status: i64,
    pub timestamp: i64,
    pub message: Map<String, Value>,
}

/// One conversation row.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredConversation {
    pub timeline_of: String,
    pub convers_with: String,
    pub message_id: String,
    pub last_message_text: Option<String>,
    pub status: i64,
    pub timestamp: i64,
    pub is_new: bool,
    pub archived: bool,
}

impl Store {
    /// Connect (creating the SQLite file and its directory on first run) and migrate.
    pub async fn open(backend: &Database) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let (url, max) = match backend {
            Database::Sqlite { path } => {
                if let Some(dir) = std::path::Path::new(path)
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                {
                    std::fs::create_dir_all(dir).map_err(|e| StoreError::Url(format!("{}: {e}", dir.display())))?;
                }
                // One writer at a time is how SQLite works; readers use the other connections.
                (format!("sqlite://{path}?mode=rwc"), 4)
            }
            Database::Postgres { url } => (url.expose().to_owned(), 8),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&url)
            .await?;
        if matches!(backend, Database::Sqlite { .. }) {
            // WAL: readers never block the writer; the setting is kept in the file.
            sqlx::query("PRAGMA journal_mode=WAL").execute(&pool).await?;
        }
        MIGRATOR.run(&pool).await?;
        Ok(Store {
            pool,
            dialect: dialect(backend),
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
    pub async fn apply<'a>(&self, writes: impl IntoIterator<Item = &'a Write>) -> Result<Applied, StoreError> {
        let (messages, conversations, updates) = coalesce(writes);
        let mut applied = Applied::default();
        let mut tx = self.pool.begin().await?;
        let positional = self.dialect.positional();
        for chunk in statement_chunks(&conversations) {
            applied
                .unarchived
                .extend(archived_among(&mut tx, positional, chunk).await?);
        }
        for chunk in statement_chunks(&messages) {
            insert_messages(&mut tx, positional, chunk).await?;
        }
        for chunk in statement_chunks(&conversations) {
            upsert_conversations(&mut tx, positional, chunk).await?;
        }
        // After the inserts: a receipt committed with its message in one batch still applies.
        for w in updates {
            match update_row(&mut tx, w).await? {
                Changed::Archived(key, conversation) => {
                    applied.archived.insert(key, conversation);
                }
                Changed::Presence(change) => applied.presence.push_back(change),
                Changed::GroupReceipt(r) => applied.group_receipts.push_back(r),
                Changed::Nothing => {}
            }
        }
        tx.commit().await?;
        Ok(applied)
    }

    /// A conversation's messages, newest first.
    pub async fn messages(
        &self,
        timeline_of: &str,
        convers_with: &str,
        limit: i64,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let rows = sqlx::query(
            "SELECT timeline_of, convers_with, message_id, status, timestamp, body FROM messages \
             WHERE timeline_of = $1 AND convers_with = $2 ORDER BY timestamp DESC LIMIT $3",
        )
        .bind(timeline_of)
        .bind(convers_with)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(message_row).collect()
    }

    /// One stored message, if it exists.
    pub async fn message(&self, timeline_of: &str, message_id: &str) -> Result<Option<StoredMessage>, StoreError> {
        let row = sqlx::query(
            "SELECT timeline_of, convers_with, message_id, status, timestamp, body FROM messages \
             WHERE timeline_of = $1 AND message_id = $2",
        )
        .bind(timeline_of)
        .bind(message_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(message_row).transpose()
    }

    /// A stored group. A row that does not parse is [`StoreError::Corrupt`].
    pub async fn group(&self, uid: &UserId) -> Result<Option<Group>, StoreError> {
        let row = sqlx::query("SELECT app_id, members, body, created_on, updated_on FROM groups WHERE uid = $1")
            .bind(uid.as_str())
            .fetch_optional(&self.pool)
            .await?;
        let Some(r) = row else { return Ok(None) };
        let corrupt = |why: String| StoreError::Corrupt {
            table: "groups",
            key: uid.to_string(),
            why,
        };
        let body: Option<String> = r.try_get("body")?;
        let object: Map<String, Value> = match body {
            Some(b) => serde_json::from_str(&b).map_err(|e| corrupt(format!("body: {e}")))?,
            // A row written before group bodies were kept: its columns are the group.
            None => {
                let members: String = r.try_get("members")?;
                let members: Value = serde_json::from_str(&members).map_err(|e| corrupt(format!("members: {e}")))?;
                let mut object = Map::new();
                object.insert("uid".into(), uid.as_str().into());
                object.insert("members".into(), members);
                object
            }
        };
        let app_id: String = r.try_get("app_id")?;
        let app_id = AppId::parse(&app_id).map_err(|_| corrupt(format!("app_id {app_id:?}")))?;
        let mut g =
            Group::from_object(&app_id, &object, r.try_get("updated_on")?).map_err(|r| corrupt(r.to_string()))?;
        g.created_on = r.try_get("created_on")?;
        Ok(Some(g))
    }

    /// The block lists of `users` (who each of them blocked), one query per 256 users. Users
    /// who blocked no one are in the map with an empty set.
    pub async fn blocks_of(
        &self,
        app_id: &AppId,
        users: &[UserId],
    ) -> Result<HashMap<UserId, HashSet<UserId>>, StoreError> {
        let mut out: HashMap<UserId, HashSet<UserId>> = users.iter().map(|u| (u.clone(), HashSet::new())).collect();
        let positional = self.dialect.positional();
        for chunk in statement_chunks(users) {
            let sql = format!(
                "SELECT user_id, other_id FROM blocks WHERE app_id = {} AND user_id IN {}",
                if positional { "?" } else { "$1" },
                placeholders_from(positional, 2, chunk.len())
            );
            let mut q = sqlx::query(&sql).bind(app_id.as_str());
            for u in chunk {
                q = q.bind(u.as_str());
            }
            for r in q.fetch_all(&self.pool).await? {
                let (user, other): (String, String) = (r.try_get(0)?, r.try_get(1)?);
                let id = |s: &str| {
                    UserId::parse(s).map_err(|_| StoreError::Corrupt {
                        table: "blocks",
                        key: format!("{user}/{other}"),
                        why: format!("{s:?} is not an id"),
                    })
                };
                out.entry(id(&user)?).or_default().insert(id(&other)?);
            }
        }
        Ok(out)
    }

    /// A user's presence, if it was ever recorded.
    pub async fn presence(&self, app_id: &str, user_id: &str) -> Result<Option<StoredPresence>, StoreError> {
        let row = sqlx::query(
            "SELECT CAST(CASE WHEN online THEN 1 ELSE 0 END AS BIGINT) AS online, clients, last_seen FROM presence \
             WHERE app_id = $1 AND user_id = $2",
        )
        .bind(app_id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(StoredPresence {
                online: get_bool(&r, "online")?,
                clients: r.try_get("clients")?,
                last_seen: r.try_get("last_seen")?,
            })
        })
        .transpose()
    }

    /// A user's conversations (active or archived), newest first.
    pub async fn conversations(
        &self,
        timeline_of: &str,
        archived: bool,
    ) -> Result<Vec<StoredConversation>, StoreError> {
        let rows = sqlx::query(
            "SELECT timeline_of, convers_with, message_id, last_message_text, status, timestamp, \
             CAST(CASE WHEN is_new THEN 1 ELSE 0 END AS BIGINT) AS is_new, \
             CAST(CASE WHEN archived THEN 1 ELSE 0 END AS BIGINT) AS archived FROM conversations WHERE timeline_of = $1 AND archived = $2 ORDER BY timestamp DESC",
        )
        .bind(timeline_of)
        .bind(archived)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(conversation_row).collect()
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn json(m: &Map<String, Value>) -> String {
    serde_json::to_string(m).expect("a JSON map always serializes")
}

/// Most rows per statement: 14 parameters a row stays far below SQLite's (32,766) and
/// PostgreSQL's (65,535) parameter limits.
const ROWS_PER_STATEMENT: usize = 256;

/// Split rows into statements of power-of-two sizes (256, 128, …, 1): at most nine distinct
/// statement shapes per table, so prepared statements are reused from sqlx's cache instead of
/// one new (large) statement per batch size — that cost CPU and tens of MB of cached plans.
fn statement_chunks<T>(rows: &[T]) -> Vec<&[T]> {
    let mut out = Vec::new();
    let mut rest = rows;
    while !rest.is_empty() {
        let n = ROWS_PER_STATEMENT.min(1 << rest.len().ilog2());
        let (head, tail) = rest.split_at(n);
        out.push(head);
        rest = tail;
    }
    out
}

/// One row per key, as the upserts would leave them: the first copy of a message (later ones
/// are no-ops), the newest message of a conversation. PostgreSQL also refuses one statement
/// that touches the same conversation row twice.
type Coalesced<'a> = (Vec<&'a TimelineCopy>, Vec<&'a TimelineCopy>, Vec<&'a Write>);

fn coalesce<'a>(writes: impl IntoIterator<Item = &'a Write>) -> Coalesced<'a> {
    let mut seen = std::collections::HashSet::new();
    let mut messages = Vec::new();
    let mut conversations: Vec<&TimelineCopy> = Vec::new();
    let mut conv_index = std::collections::HashMap::new();
    let mut updates = Vec::new();
    for w in writes {
        match w {
            Write::MessageStatus { .. }
            | Write::ConversationIsNew { .. }
            | Write::Archive { .. }
            | Write::Group(_)
            | Write::Block { .. }
            | Write::GroupReceipt { .. }
            | Write::Presence { .. } => updates.push(w),
            Write::Message(c) => {
                if seen.insert((c.timeline_of.as_str(), c.message().message_id().unwrap_or_default())) {
                    messages.push(c);
                }
            }
            Write::Conversation(c) => match conv_index.get(&(c.timeline_of.as_str(), c.convers_with.as_str())) {
                Some(&i) => {
                    let current: &TimelineCopy = conversations[i];
                    if c.message().timestamp() >= current.message().timestamp() {
                        conversations[i] = c;
                    }
                }
                None => {
                    conv_index.insert((c.timeline_of.as_str(), c.convers_with.as_str()), conversations.len());
                    conversations.push(c);
                }
            },
        }
    }
    (messages, conversations, updates)
}

/// Which of these conversation copies will un-archive their conversation: it is archived and
/// the copy is not older than its last message (older ones do not touch the row).
async fn archived_among(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    positional: bool,
    rows: &[&TimelineCopy],
) -> Result<Vec<(UserId, UserId)>, sqlx::Error> {
    let sql = format!(
        "SELECT timeline_of, convers_with, timestamp FROM conversations WHERE archived = TRUE AND timeline_of IN {}",
        placeholders(positional, 1, rows.len(), None)
    );
    let mut q = sqlx::query(&sql);
    for c in rows {
        q = q.bind(c.timeline_of.as_str());
    }
    let found = q.fetch_all(&mut **tx).await?;
    let mut out = Vec::new();
    for r in found {
        let (t, w, ts): (String, String, i64) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
        let wins = rows
            .iter()
            .find(|c| c.timeline_of == t.as_str() && c.convers_with == w.as_str() && c.message().timestamp() >= ts);
        if let Some(c) = wins {
            out.push((c.timeline_of.clone(), c.convers_with.clone()));
        }
    }
    Ok(out)
}

/// What a single-row update revealed, for the publishes and events after the commit.
enum Changed {
    Nothing,
    /// This conversation was archived; here it is as a conversation object.
    Archived((UserId, UserId), Map<String, Value>),
    /// A presence write, and the transition it caused if any.
    Presence(Option<PresenceChange>),
    /// A group-receipt write, and the original sender to tell if it was a group message.
    GroupReceipt(Option<GroupReceipt>),
}

/// Single-row updates, in input order. Message and conversation updates touch only rows that
/// exist (no stub rows).
async fn update_row(tx: &mut sqlx::Transaction<'_, sqlx::Any>, w: &Write) -> Result<Changed, StoreError> {
    match w {
        Write::MessageStatus {
            timeline_of,
            message_id,
            status,
        } => {
            // Only ever raise a status: a late 200 never downgrades a 250 or 300.
            sqlx::query("UPDATE messages SET status = $1 WHERE timeline_of = $2 AND message_id = $3 AND status < $1")
                .bind(*status)
                .bind(timeline_of.as_str())
                .bind(message_id.as_str())
                .execute(&mut **tx)
                .await?;
        }
        Write::ConversationIsNew {
            timeline_of,
            convers_with,
            is_new,
        } => {
            sqlx::query("UPDATE conversations SET is_new = $1 WHERE timeline_of = $2 AND convers_with = $3")
                .bind(*is_new)
                .bind(timeline_of.as_str())
                .bind(convers_with.as_str())
                .execute(&mut **tx)
                .await?;
        }
        Write::Archive {
            timeline_of,
            convers_with,
            ..
        } => {
            sqlx::query("UPDATE conversations SET archived = TRUE WHERE timeline_of = $1 AND convers_with = $2")
                .bind(timeline_of.as_str())
                .bind(convers_with.as_str())
                .execute(&mut **tx)
                .await?;
            let row = sqlx::query(
                "SELECT body, CAST(CASE WHEN is_new THEN 1 ELSE 0 END AS BIGINT) AS is_new FROM conversations \
                 WHERE timeline_of = $1 AND convers_with = $2",
            )
            .bind(timeline_of.as_str())
            .bind(convers_with.as_str())
            .fetch_optional(&mut **tx)
            .await?;
            if let Some(r) = row {
                let body: String = r.try_get("body")?;
                let last = serde_json::from_str(&body).map_err(|e| StoreError::Corrupt {
                    table: "conversations",
                    key: format!("{timeline_of}/{convers_with}"),
                    why: format!("body: {e}"),
                })?;
                let last = Message::from_fields(last);
                let conv =
                    crate::plan::conversation_object(timeline_of, convers_with, &last, get_bool(&r, "is_new")?, true);
                return Ok(Changed::Archived((timeline_of.clone(), convers_with.clone()), conv));
            }
        }
        Write::Group(g) => upsert_group(tx, g).await?,
        Write::GroupReceipt {
            app,
            reader,
            convers_with,
            message_id,
        } => {
            let row = sqlx::query("SELECT sender FROM messages WHERE timeline_of = $1 AND message_id = $2")
                .bind(convers_with.as_str())
                .bind(message_id.as_str())
                .fetch_optional(&mut **tx)
                .await?;
            let sender: Option<String> = row.map(|r| r.try_get("sender")).transpose()?.flatten();
            // A direct message's copy in `with`'s timeline was sent by `with` itself.
            let Some(sender) = sender.filter(|s| convers_with != s.as_str() && reader != s.as_str()) else {
                return Ok(Changed::GroupReceipt(None));
            };
            let Ok(sender) = UserId::parse(&sender) else {
                return Err(StoreError::Corrupt {
                    table: "messages",
                    key: format!("{convers_with}/{message_id}"),
                    why: format!("sender {sender:?} is not an id"),
                });
            };
            sqlx::query("UPDATE messages SET status = $1 WHERE timeline_of = $2 AND message_id = $3 AND status < $1")
                .bind(crate::domain::status::RETURN_RECEIPT)
                .bind(sender.as_str())
                .bind(message_id.as_str())
                .execute(&mut **tx)
                .await?;
            return Ok(Changed::GroupReceipt(Some(GroupReceipt {
                app: app.clone(),
                sender,
                group: convers_with.clone(),
                message_id: message_id.clone(),
            })));
        }
        Write::Block {
            app,
            user,
            other,
            add,
            at_ms,
        } => {
            let q = if *add {
                sqlx::query(
                    "INSERT INTO blocks (app_id, user_id, other_id, created_on) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (app_id, user_id, other_id) DO NOTHING",
                )
            } else {
                sqlx::query("DELETE FROM blocks WHERE app_id = $1 AND user_id = $2 AND other_id = $3")
            };
            let q = q.bind(app.as_str()).bind(user.as_str()).bind(other.as_str());
            let q = if *add { q.bind(*at_ms) } else { q };
            q.execute(&mut **tx).await?;
        }
        Write::Presence {
            app,
            user,
            client_id,
            connected,
            at_ms,
        } => {
            return Ok(Changed::Presence(
                presence_row(tx, app, user, client_id, *connected, *at_ms).await?,
            ))
        }
        Write::Message(_) | Write::Conversation(_) => {}
    }
    Ok(Changed::Nothing)
}

async fn upsert_group(tx: &mut sqlx::Transaction<'_, sqlx::Any>, g: &Group) -> Result<(), sqlx::Error> {
    let members: Map<String, Value> = g.members.iter().map(|m| (m.to_string(), Value::from(1))).collect();
    let attributes = g.attributes().map(Value::to_string);
    sqlx::query(
        "INSERT INTO groups (uid, app_id, name, owner, members, attributes, created_on, updated_on, body) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (uid) DO UPDATE SET \
         app_id = excluded.app_id, name = excluded.name, owner = excluded.owner, members = excluded.members, \
         attributes = excluded.attributes, updated_on = excluded.updated_on, body = excluded.body",
    )
    .bind(g.uid.as_str())
    .bind(g.app_id.as_str())
    .bind(g.name())
    .bind(g.owner())
    .bind(json(&members))
    .bind(attributes)
    .bind(g.created_on)
    .bind(g.updated_on)
    .bind(json(&g.object))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Record one client's connect/disconnect; report the user's online/offline transition.
async fn presence_row(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    app: &AppId,
    user: &UserId,
    client_id: &ClientId,
    connected: bool,
    at_ms: i64,
) -> Result<Option<PresenceChange>, sqlx::Error> {
    let q = if connected {
        sqlx::query(
            "INSERT INTO presence_clients (app_id, user_id, client_id, since) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (app_id, user_id, client_id) DO NOTHING",
        )
    } else {
        sqlx::query("DELETE FROM presence_clients WHERE app_id = $1 AND user_id = $2 AND client_id = $3")
    };
    let (app_s, user_s) = (app.as_str(), user.as_str());
    let q = q.bind(app_s).bind(user_s).bind(client_id.as_str());
    let q = if connected { q.bind(at_ms) } else { q };
    q.execute(&mut **tx).await?;
    let clients: i64 = sqlx::query("SELECT COUNT(*) FROM presence_clients WHERE app_id = $1 AND user_id = $2")
        .bind(app_s)
        .bind(user_s)
        .fetch_one(&mut **tx)
        .await?
        .try_get(0)?;
    let was_online = sqlx::query(
        "SELECT CAST(CASE WHEN online THEN 1 ELSE 0 END AS BIGINT) AS online FROM presence \
         WHERE app_id = $1 AND user_id = $2",
    )
    .bind(app_s)
    .bind(user_s)
    .fetch_optional(&mut **tx)
    .await?
    .map(|r| get_bool(&r, "online"))
    .transpose()?
    .unwrap_or(false);
    let online = clients > 0;
    sqlx::query(
        "INSERT INTO presence (app_id, user_id, online, clients, last_seen) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (app_id, user_id) DO UPDATE SET online = excluded.online, clients = excluded.clients, \
         last_seen = excluded.last_seen",
    )
    .bind(app_s)
    .bind(user_s)
    .bind(online)
    .bind(clients)
    .bind(at_ms)
    .execute(&mut **tx)
    .await?;
    Ok((online != was_online).then(|| PresenceChange {
        app_id: app.clone(),
        user_id: user.clone(),
        online,
        at_ms,
    }))
}

/// `($1, …, $n), ($n+1, …)` (PostgreSQL) or `(?, …), (?, …)` (SQLite) for `rows` rows of
/// `cols` parameters. SQLite gets plain `?`: sqlx binds `$N` there by looking each name up,
/// which is quadratic in the number of parameters and dominated the profile of big batches.
fn placeholders(positional: bool, rows: usize, cols: usize, literal_after: Option<(usize, &str)>) -> String {
    let mut out = String::with_capacity(rows * cols * 5);
    let mut n = 0;
    for r in 0..rows {
        out.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..cols {
            if c > 0 {
                out.push_str(", ");
            }
            n += 1;
            if positional {
                out.push('?');
            } else {
                out.push_str(&format!("${n}"));
            }
            if let Some((after, lit)) = literal_after {
                if c + 1 == after {
                    out.push_str(", ");
                    out.push_str(lit);
                }
            }
        }
        out.push(')');
    }
    out
}

/// `(…)` list of `n` parameters numbered from `first` (`?` on SQLite).
fn placeholders_from(positional: bool, first: usize, n: usize) -> String {
    let list: Vec<String> = (0..n)
        .map(|i| {
            if positional {
                "?".to_string()
            } else {
                format!("${}", first + i)
            }
        })
        .collect();
    format!("({})", list.join(", "))
}

async fn insert_messages(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    positional: bool,
    rows: &[&TimelineCopy],
) -> Result<(), sqlx::Error> {
    let sql = format!(
        "INSERT INTO messages (timeline_of, message_id, convers_with, app_id, sender, recipient, status, timestamp, \
         text, type, channel_type, body) VALUES {} ON CONFLICT (timeline_of, message_id) DO NOTHING",
        placeholders(positional, rows.len(), 12, None)
    );
    let mut q = sqlx::query(&sql);
    for c in rows {
        let m = c.message();
        q = q
            .bind(c.timeline_of.as_str())
            .bind(m.message_id().unwrap_or_default())
            .bind(c.convers_with.as_str())
            .bind(m.app_id().unwrap_or_default())
            .bind(m.sender())
            .bind(m.recipient())
            .bind(m.status().unwrap_or_default())
            .bind(m.timestamp())
            .bind(m.text())
            .bind(m.kind())
            .bind(m.channel_type())
            .bind(json(m.fields()));
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

async fn upsert_conversations(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    positional: bool,
    rows: &[&TimelineCopy],
) -> Result<(), sqlx::Error> {
    // Newest message wins: an older (or redelivered) message never replaces a newer last
    // message. A new message un-archives the conversation (§6).
    let sql = format!(
        "INSERT INTO conversations (timeline_of, convers_with, app_id, message_id, sender, recipient, status, \
         timestamp, last_message_text, type, channel_type, attributes, is_new, archived, body) VALUES {} \
         ON CONFLICT (timeline_of, convers_with) DO UPDATE SET \
         app_id = excluded.app_id, message_id = excluded.message_id, sender = excluded.sender, \
         recipient = excluded.recipient, status = excluded.status, timestamp = excluded.timestamp, \
         last_message_text = excluded.last_message_text, type = excluded.type, \
         channel_type = excluded.channel_type, attributes = excluded.attributes, is_new = excluded.is_new, \
         archived = FALSE, body = excluded.body \
         WHERE excluded.timestamp >= conversations.timestamp",
        placeholders(positional, rows.len(), 14, Some((13, "FALSE")))
    );
    let mut q = sqlx::query(&sql);
    for c in rows {
        let m = c.message();
        q = q
            .bind(c.timeline_of.as_str())
            .bind(c.convers_with.as_str())
            .bind(m.app_id().unwrap_or_default())
            .bind(m.message_id().unwrap_or_default())
            .bind(m.sender())
            .bind(m.recipient())
            .bind(m.status().unwrap_or_default())
            .bind(m.timestamp())
            .bind(m.text())
            .bind(m.kind())
            .bind(m.channel_type())
            .bind(m.attributes().map(Value::to_string))
            .bind(c.is_new)
            .bind(json(m.fields()));
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

fn message_row(r: &AnyRow) -> Result<StoredMessage, StoreError> {
    let body: String = r.try_get("body")?;
    let (timeline_of, message_id): (String, String) = (r.try_get("timeline_of")?, r.try_get("message_id")?);
    let message = serde_json::from_str(&body).map_err(|e| StoreError::Corrupt {
        table: "messages",
        key: format!("{timeline_of}/{message_id}"),
        why: format!("body: {e}"),
    })?;
    Ok(StoredMessage {
        timeline_of,
        convers_with: r.try_get("convers_with")?,
        message_id,
        status: r.try_get("status")?,
        timestamp: r.try_get("timestamp")?,
        message,
    })
}

fn conversation_row(r: &AnyRow) -> Result<StoredConversation, StoreError> {
    Ok(StoredConversation {
        timeline_of: r.try_get("timeline_of")?,
        convers_with: r.try_get("convers_with")?,
        message_id: r.try_get("message_id")?,
        last_message_text: r.try_get("last_message_text")?,
        status: r.try_get("status")?,
        timestamp: r.try_get("timestamp")?,
        is_new: get_bool(r, "is_new")?,
        archived: get_bool(r, "archived")?,
    })
}

/// Booleans are selected as `CAST(CASE WHEN col THEN 1 ELSE 0 END AS BIGINT)`: the `Any`
/// driver cannot decode SQLite's BOOLEAN columns, PostgreSQL cannot cast boolean to bigint
/// directly, and this reads the same on both backends.
fn get_bool(r: &AnyRow, col: &str) -> Result<bool, sqlx::Error> {
    r.try_get::<i64, _>(col).map(|v| v != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn copy(timeline_of: &str, with: &str, id: &str, ts: i64, text: &str, is_new: bool) -> TimelineCopy {
        let m = serde_json::json!({"message_id": id, "timestamp": ts, "text": text, "status": 150, "app_id": "a"});
        TimelineCopy {
            timeline_of: timeline_of.into(),
            convers_with: with.into(),
            is_new,
            message: crate::domain::Sealed::new(Message::from_fields(m.as_object().unwrap().clone())),
        }
    }

    /// A real SQLite file: upserts are idempotent and the newest message wins.
    #[tokio::test]
    async fn sqlite_upserts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/c.db");
        let store = Store::open(&Database::Sqlite {
            path: path.display().to_string(),
        })
        .await
        .unwrap();
        let new = copy("A", "B", "m2", 2000, "new", true);
        let old = copy("A", "B", "m1", 1000, "old", true);
        let w = |c: &TimelineCopy| vec![Write::Message(c.clone()), Write::Conversation(c.clone())];
        store.apply(&w(&new)).await.unwrap();
        store.apply(&w(&new)).await.unwrap();
        store.apply(&w(&old)).await.unwrap();
        let msgs = store.messages("A", "B", 10).await.unwrap();
        assert_eq!(
            msgs.iter().map(|m| m.message_id.as_str()).collect::<Vec<_>>(),
            vec!["m2", "m1"]
        );
        let convs = store.conversations("A", false).await.unwrap();
        assert_eq!(convs.len(), 1);
        assert_eq!(convs[0].last_message_text.as_deref(), Some("new"));
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
        let again = Store::open(&Database::Sqlite {
            path: path.display().to_string(),
        })
        .await
        .unwrap();
        assert_eq!(again.messages("A", "B", 10).await.unwrap().len(), 2);
    }

    async fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db").display().to_string();
        let store = Store::open(&Database::Sqlite { path }).await.unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn groups_round_trip_in_member_order() {
        let (_dir, store) = temp_store().await;
        assert_eq!(store.group(&"g".into()).await.unwrap(), None);
        let obj = serde_json::json!({"uid":"g","name":"N","owner":"o","members":{"z":1,"a":1},"attributes":{"k":1}});
        let g = Group::from_object(&"app".into(), obj.as_object().unwrap(), 5).unwrap();
        store.apply(&[Write::Group(Arc::new(g.clone()))]).await.unwrap();
        assert_eq!(store.group(&"g".into()).await.unwrap(), Some(g.clone()));
        // An update replaces the membership and keeps the creation time.
        let obj = serde_json::json!({"uid":"g","members":{"a":1}});
        let g2 = Group::from_object(&"app".into(), obj.as_object().unwrap(), 9).unwrap();
        store.apply(&[Write::Group(Arc::new(g2))]).await.unwrap();
        let got = store.group(&"g".into()).await.unwrap().unwrap();
        assert_eq!(got.members, vec!["a"]);
        assert_eq!((got.created_on, got.updated_on), (5, 9));
    }

    /// The store tells a group message's original sender from a direct message's.
    #[tokio::test]
    async fn group_receipts_find_the_original_sender() {
        let (_dir, store) = temp_store().await;
        let msg = |timeline: &str, with: &str, sender: &str, status: i64| {
            let m = serde_json::json!({"message_id": "m", "sender": sender, "timestamp": 1, "status": status});
            Write::Message(TimelineCopy {
                timeline_of: timeline.into(),
                convers_with: with.into(),
                is_new: false,
                message: crate::domain::Sealed::new(Message::from_fields(m.as_object().unwrap().clone())),
            })
        };
        // A group message from S: S's member copy, R's, and the group timeline G.
        store
            .apply(&[
                msg("S", "G", "S", 150),
                msg("R", "G", "S", 150),
                msg("G", "G", "S", 100),
            ])
            .await
            .unwrap();
        let receipt = |reader: &str, with: &str| Write::GroupReceipt {
            app: "a".into(),
            reader: reader.into(),
            convers_with: with.into(),
            message_id: "m".into(),
        };
        let applied = store.apply(&[receipt("R", "G")]).await.unwrap();
        let told = applied.group_receipts[0].clone().expect("the sender is known");
        assert_eq!((told.sender.as_str(), told.group.as_str()), ("S", "G"));
        assert_eq!(store.message("S", "m").await.unwrap().unwrap().status, 250);
        // A direct message's receipt (the copy in `with`'s timeline is with's own) and the
        // sender's own receipt are not forwarded; unknown messages neither.
        store.apply(&[msg("D", "R", "D", 100)]).await.unwrap();
        let applied = store
            .apply(&[receipt("R", "D"), receipt("S", "G"), receipt("R", "nowhere")])
            .await
            .unwrap();
        assert_eq!(Vec::from(applied.group_receipts), vec![None, None, None]);
    }

    #[tokio::test]
    async fn presence_counts_clients_and_reports_transitions() {
        let (_dir, store) = temp_store().await;
        let p = |client: &str, connected: bool, at_ms: i64| Write::Presence {
            app: "a".into(),
            user: "U".into(),
            client_id: client.into(),
            connected,
            at_ms,
        };
        let online = |at_ms| {
            Some(PresenceChange {
                app_id: "a".into(),
                user_id: "U".into(),
                online: true,
                at_ms,
            })
        };
        // One batch: results line up with the presence writes, in order.
        let applied = store
            .apply(&[p("c1", true, 1), p("c2", true, 2), p("c1", true, 3)])
            .await
            .unwrap();
        assert_eq!(Vec::from(applied.presence), vec![online(1), None, None]);
        // One of two clients leaves (twice: a redelivery changes nothing): still online.
        for at in [4, 5] {
            let applied = store.apply(&[p("c1", false, at)]).await.unwrap();
            assert_eq!(Vec::from(applied.presence), vec![None]);
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
        let applied = store.apply(&[p("c2", false, 6)]).await.unwrap();
        let offline = PresenceChange {
            app_id: "a".into(),
            user_id: "U".into(),
            online: false,
            at_ms: 6,
        };
        assert_eq!(Vec::from(applied.presence), vec![Some(offline)]);
        assert!(!store.presence("a", "U").await.unwrap().unwrap().online);
    }

    #[test]
    fn chunks_have_few_shapes() {
        let rows: Vec<u32> = (0..700).collect();
        let sizes: Vec<usize> = statement_chunks(&rows).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, vec![256, 256, 128, 32, 16, 8, 4]);
        assert!(statement_chunks::<u32>(&[]).is_empty());
    }

    #[test]
    fn placeholder_lists() {
        assert_eq!(placeholders(false, 2, 2, None), "($1, $2), ($3, $4)");
        assert_eq!(
            placeholders(false, 2, 2, Some((1, "FALSE"))),
            "($1, FALSE, $2), ($3, FALSE, $4)"
        );
        assert_eq!(placeholders(true, 2, 2, None), "(?, ?), (?, ?)");
    }

    #[test]
    fn coalesce_keeps_first_message_and_newest_conversation() {
        let a = copy("A", "B", "m1", 1, "one", true);
        let b = copy("A", "B", "m2", 3, "two", true);
        let c = copy("A", "B", "m3", 2, "three", true);
        let writes = vec![
            Write::Message(a.clone()),
            Write::Message(a.clone()),
            Write::Conversation(a),
            Write::Conversation(b),
            Write::Conversation(c),
        ];
        let (m, conv, _) = coalesce(&writes);
        assert_eq!(m.len(), 1);
        assert_eq!(conv.len(), 1);
        assert_eq!(conv[0].message().text(), Some("two"));
    }
}
