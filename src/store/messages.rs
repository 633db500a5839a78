//! The `messages` table (one body per message) and the `timeline` table (one small row per
//! copy of a message in the timeline it landed in, with its status there).

use sqlx::any::AnyRow;
use sqlx::Row;

use super::batch::WriteIndex;
use super::sql::{json, json_object, placeholders, Dialect, Query, Tx};
use super::{Cursor, StoreError};
use crate::domain::{status, AppId, Message, MessageId, UserId};
use crate::plan::{ReceiptNotice, TimelineCopy};

/// One message row, for history reads.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    pub timeline_of: String,
    pub convers_with: String,
    pub message_id: String,
    pub status: i64,
    pub timestamp: i64,
    pub message: Message,
}

/// Where a copy's body is kept. `messages` is keyed by (app, recipient, message id, sender),
/// so a message id is an idempotency key per sender and conversation — another user's
/// message with the same id is another message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct BodyKey<'a> {
    pub app: &'a str,
    pub recipient: &'a str,
    pub message_id: &'a str,
    pub sender: &'a str,
}

impl<'a> BodyKey<'a> {
    pub fn of(c: &'a TimelineCopy) -> BodyKey<'a> {
        let m = c.message();
        BodyKey {
            app: c.app.as_str(),
            recipient: m.recipient().unwrap_or_default(),
            message_id: m.message_id().unwrap_or_default(),
            sender: m.sender().unwrap_or_default(),
        }
    }
}

/// Store the bodies of these copies (one per key: the batch deduplicates them), each once
/// whatever the number of timelines it lands in; a body already stored stays as it is, with
/// its first timestamp. The body is the JSON the copy was published with, not serialised
/// again; its `status` is the first copy's and is replaced on read by the status of the
/// timeline or conversation that reads it.
pub(super) async fn insert_bodies(
    tx: &mut Tx<'_>,
    dialect: Dialect,
    rows: &[&TimelineCopy],
) -> Result<(), sqlx::Error> {
    let sql = format!(
        "INSERT INTO messages (app_id, recipient, message_id, sender, timestamp, body) VALUES {} \
         ON CONFLICT (app_id, recipient, message_id, sender) DO NOTHING",
        placeholders(dialect, rows.len(), 6, None)
    );
    let mut q = sqlx::query(&sql);
    for c in rows {
        let k = BodyKey::of(c);
        q = q
            .bind(k.app)
            .bind(k.recipient)
            .bind(k.message_id)
            .bind(k.sender)
            .bind(c.message().timestamp());
        q = match std::str::from_utf8(c.message.json()) {
            Ok(body) => q.bind(body),
            // serde_json writes nothing but UTF-8; should that ever not hold, the fields
            // serialised again are the honest fallback.
            Err(_) => q.bind(json(c.message().fields())),
        };
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

/// One timeline row per copy, keyed in history order, after its body is stored. Its
/// timestamp is the stored body's: a redelivered input is stamped again (by the engine's
/// clock, when the client gave none), and must land on the first copy's key to be recognised
/// as the same — a second copy of one (timeline, conversation, timestamp, message id, sender)
/// is a no-op. One statement: the rows joined with their bodies by key (point lookups in the
/// index the body inserts just touched), nothing read back.
pub(super) async fn insert(
    tx: &mut Tx<'_>,
    dialect: Dialect,
    rows: &[(WriteIndex, &TimelineCopy)],
) -> Result<(), sqlx::Error> {
    // VALUES columns are `column1…` on both backends. `WHERE`, not `JOIN … ON`: SQLite would
    // read that `ON` as the start of the upsert clause.
    let sql = format!(
        "INSERT INTO timeline (app_id, timeline_of, convers_with, timestamp, message_id, sender, recipient, status) \
         SELECT v.column1, v.column2, v.column3, m.timestamp, v.column4, v.column5, v.column6, v.column7 \
         FROM (VALUES {}) AS v, messages m \
         WHERE m.app_id = v.column1 AND m.recipient = v.column6 AND m.message_id = v.column4 AND m.sender = v.column5 \
         ON CONFLICT (app_id, timeline_of, convers_with, timestamp, message_id, sender) DO NOTHING",
        placeholders(dialect, rows.len(), 7, None)
    );
    let mut q = sqlx::query(&sql);
    for (_, c) in rows {
        let k = BodyKey::of(c);
        q = q
            .bind(k.app)
            .bind(c.timeline_of.as_str())
            .bind(c.convers_with.as_str())
            .bind(k.message_id)
            .bind(k.sender)
            .bind(k.recipient)
            .bind(c.message().status().unwrap_or_default());
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

/// A timeline row's key.
struct Entry<'a> {
    app: &'a AppId,
    timeline_of: &'a str,
    convers_with: &'a str,
    timestamp: i64,
    message_id: &'a str,
    sender: &'a str,
}

impl Entry<'_> {
    /// Bind the key's columns, in the table's key order.
    fn bind<'q>(&'q self, q: Query<'q>) -> Query<'q> {
        q.bind(self.app.as_str())
            .bind(self.timeline_of)
            .bind(self.convers_with)
            .bind(self.timestamp)
            .bind(self.message_id)
            .bind(self.sender)
    }
}

/// Only ever raise a status, and only where the row exists: a late 200 never downgrades a
/// 250 or 300, and a receipt for an unknown message leaves no stub row (fix D7).
async fn raise_status(tx: &mut Tx<'_>, e: &Entry<'_>, status: i64) -> Result<(), sqlx::Error> {
    let q = sqlx::query(
        "UPDATE timeline SET status = $1 WHERE app_id = $2 AND timeline_of = $3 AND convers_with = $4 \
         AND timestamp = $5 AND message_id = $6 AND sender = $7 AND status < $1",
    );
    e.bind(q.bind(status)).execute(&mut **tx).await?;
    Ok(())
}

async fn exists(tx: &mut Tx<'_>, e: &Entry<'_>) -> Result<bool, sqlx::Error> {
    let q = sqlx::query(
        "SELECT 1 FROM timeline WHERE app_id = $1 AND timeline_of = $2 AND convers_with = $3 \
         AND timestamp = $4 AND message_id = $5 AND sender = $6",
    );
    Ok(e.bind(q).fetch_optional(&mut **tx).await?.is_some())
}

/// A receipt by `reader` for `message_id` of its conversation with `convers_with` (§5; see
/// [`Write::Receipt`](crate::plan::Write::Receipt)). Nothing happens unless the reader's own
/// timeline holds someone else's message of that id in that conversation. Returns whom to
/// tell. Point lookups only: the body by its key gives the timestamp, which completes the
/// timeline rows' keys.
pub(super) async fn receipt(
    tx: &mut Tx<'_>,
    app: &AppId,
    reader: &UserId,
    convers_with: &UserId,
    message_id: &MessageId,
) -> Result<Option<ReceiptNotice>, StoreError> {
    // Direct: the partner's message to the reader.
    let direct = sqlx::query(
        "SELECT sender, timestamp FROM messages WHERE app_id = $1 AND recipient = $2 AND message_id = $3 AND sender = $4",
    )
    .bind(app.as_str())
    .bind(reader.as_str())
    .bind(message_id.as_str())
    .bind(convers_with.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    let found = match direct {
        Some(r) => Some(r),
        // A group's: another member's message to the group. Ids are per sender, so a group
        // may hold two senders' messages of one id: the receipt cannot say which, and is
        // applied to the first.
        None => {
            sqlx::query(
                "SELECT sender, timestamp FROM messages WHERE app_id = $1 AND recipient = $2 AND message_id = $3 \
                 AND sender <> $4 ORDER BY sender LIMIT 1",
            )
            .bind(app.as_str())
            .bind(convers_with.as_str())
            .bind(message_id.as_str())
            .bind(reader.as_str())
            .fetch_optional(&mut **tx)
            .await?
        }
    };
    let Some(row) = found else {
        return Ok(None);
    };
    let (sender, timestamp): (String, i64) = (row.try_get(0)?, row.try_get(1)?);
    let entry = |timeline_of, convers_with| Entry {
        app,
        timeline_of,
        convers_with,
        timestamp,
        message_id: message_id.as_str(),
        sender: &sender,
    };
    let own = entry(reader.as_str(), convers_with.as_str());
    if !exists(tx, &own).await? {
        // Not in the reader's timeline there: someone else's message (issue 11).
        return Ok(None);
    }
    raise_status(tx, &own, status::RECEIVED).await?;
    if sender == convers_with.as_str() {
        // Direct: the sender's own copy, in its conversation with the reader.
        raise_status(
            tx,
            &entry(convers_with.as_str(), reader.as_str()),
            status::RETURN_RECEIPT,
        )
        .await?;
        return Ok(Some(ReceiptNotice {
            app: app.clone(),
            to: convers_with.clone(),
            convers_with: reader.clone(),
            message_id: message_id.clone(),
        }));
    }
    // A group's: `convers_with` is the group. Inside a write: failing here would fail the
    // whole batch on every retry, and a sender that is not an id (a replayed message carries
    // its sender unchecked) cannot be told anyway.
    let Ok(sender_id) = UserId::parse(&sender) else {
        tracing::error!(group = %convers_with, message_id = %message_id, sender, "stored sender is not an id; receipt not passed on");
        return Ok(None);
    };
    raise_status(
        tx,
        &entry(convers_with.as_str(), convers_with.as_str()),
        status::RETURN_RECEIPT,
    )
    .await?;
    raise_status(tx, &entry(&sender, convers_with.as_str()), status::RETURN_RECEIPT).await?;
    Ok(Some(ReceiptNotice {
        app: app.clone(),
        to: sender_id,
        convers_with: convers_with.clone(),
        message_id: message_id.clone(),
    }))
}

/// What history reads select: the timeline row and its message's body (NULL when missing,
/// which [`message_row`] reports as corrupt rather than dropping the row).
const SELECT: &str = "SELECT t.timeline_of, t.convers_with, t.message_id, t.status, t.timestamp, m.body \
     FROM timeline t LEFT JOIN messages m ON m.app_id = t.app_id AND m.recipient = t.recipient \
     AND m.message_id = t.message_id AND m.sender = t.sender";

/// A page of a conversation's history in every app (tests and tools), newest first: at most
/// `limit` messages older than `before` (epoch ms; `None`: from the newest).
pub(super) async fn page(
    pool: &sqlx::AnyPool,
    timeline_of: &str,
    convers_with: &str,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<StoredMessage>, StoreError> {
    let rows = sqlx::query(&format!(
        "{SELECT} WHERE t.timeline_of = $1 AND t.convers_with = $2 AND t.timestamp < $3 \
         ORDER BY t.timestamp DESC LIMIT $4"
    ))
    .bind(timeline_of)
    .bind(convers_with)
    .bind(before.unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter().map(message_row).collect()
}

/// A page of `app`'s conversation history, newest first: at most `limit` messages before
/// `cursor` (from the newest without one). A range scan of the timeline's primary key, then
/// each body by its key.
pub(super) async fn history(
    pool: &sqlx::AnyPool,
    app: &AppId,
    timeline_of: &UserId,
    convers_with: &UserId,
    cursor: Option<&Cursor>,
    limit: i64,
) -> Result<Vec<StoredMessage>, StoreError> {
    // An empty id sorts before every id: a bare timestamp cursor excludes all of it.
    let sql = match cursor {
        None => format!(
            "{SELECT} WHERE t.app_id = $1 AND t.timeline_of = $2 AND t.convers_with = $3 \
             ORDER BY t.timestamp DESC, t.message_id DESC LIMIT $4"
        ),
        Some(_) => format!(
            "{SELECT} WHERE t.app_id = $1 AND t.timeline_of = $2 AND t.convers_with = $3 \
             AND (t.timestamp, t.message_id) < ($4, $5) ORDER BY t.timestamp DESC, t.message_id DESC LIMIT $6"
        ),
    };
    let q = sqlx::query(&sql)
        .bind(app.as_str())
        .bind(timeline_of.as_str())
        .bind(convers_with.as_str());
    let q = match cursor {
        None => q,
        Some(c) => q.bind(c.at).bind(c.id.clone().unwrap_or_default()),
    };
    let rows = q.bind(limit).fetch_all(pool).await?;
    rows.iter().map(message_row).collect()
}

/// One stored message of a timeline in any app and conversation (tests and tools), if it
/// exists.
pub(super) async fn one(
    pool: &sqlx::AnyPool,
    timeline_of: &str,
    message_id: &str,
) -> Result<Option<StoredMessage>, StoreError> {
    let row = sqlx::query(&format!("{SELECT} WHERE t.timeline_of = $1 AND t.message_id = $2"))
        .bind(timeline_of)
        .bind(message_id)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(message_row).transpose()
}

/// A timeline row with its body; the body's `status` becomes this timeline's.
fn message_row(r: &AnyRow) -> Result<StoredMessage, StoreError> {
    let (timeline_of, message_id): (String, String) = (r.try_get("timeline_of")?, r.try_get("message_id")?);
    let corrupt = |why: String| StoreError::Corrupt {
        table: "messages",
        key: format!("{timeline_of}/{message_id}"),
        why,
    };
    let body: Option<String> = r.try_get("body")?;
    let body = body.ok_or_else(|| corrupt("the timeline row's message body is missing".into()))?;
    let mut message = json_object(&body).map_err(|e| corrupt(format!("body: {e}")))?;
    let status: i64 = r.try_get("status")?;
    message.insert("status".into(), status.into());
    Ok(StoredMessage {
        convers_with: r.try_get("convers_with")?,
        status,
        timestamp: r.try_get("timestamp")?,
        message: Message::from_fields(message),
        timeline_of,
        message_id,
    })
}
