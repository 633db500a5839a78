//! The `messages` table: one row per (timeline, message id) — every copy of a message in the
//! timeline it landed in, with its status.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::batch::WriteIndex;
use super::sql::{bind_copy, json, json_object, placeholders, Dialect, Tx};
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

/// A second copy of the same (timeline, message_id) is a no-op.
pub(super) async fn insert(
    tx: &mut Tx<'_>,
    dialect: Dialect,
    rows: &[(WriteIndex, &TimelineCopy)],
) -> Result<(), sqlx::Error> {
    let sql = format!(
        "INSERT INTO messages (timeline_of, convers_with, app_id, message_id, sender, recipient, status, timestamp, \
         text, type, channel_type, body) VALUES {} ON CONFLICT (app_id, timeline_of, message_id) DO NOTHING",
        placeholders(dialect, rows.len(), 12, None)
    );
    let mut q = sqlx::query(&sql);
    for (_, c) in rows {
        q = bind_copy(q, c).bind(json(c.message().fields()));
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

/// Only ever raise a status, and only where the row exists in that conversation: a late 200
/// never downgrades a 250 or 300, and a receipt for an unknown message leaves no stub row
/// (fix D7).
async fn raise_status(
    tx: &mut Tx<'_>,
    app: &AppId,
    timeline_of: &str,
    convers_with: &str,
    message_id: &str,
    status: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE messages SET status = $1 \
         WHERE timeline_of = $2 AND message_id = $3 AND convers_with = $4 AND app_id = $5 AND status < $1",
    )
    .bind(status)
    .bind(timeline_of)
    .bind(message_id)
    .bind(convers_with)
    .bind(app.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A receipt by `reader` for `message_id` of its conversation with `convers_with` (§5; see
/// [`Write::Receipt`](crate::plan::Write::Receipt)). Nothing happens unless the reader's own
/// timeline holds the message in that conversation. Returns whom to tell.
pub(super) async fn receipt(
    tx: &mut Tx<'_>,
    app: &AppId,
    reader: &UserId,
    convers_with: &UserId,
    message_id: &MessageId,
) -> Result<Option<ReceiptNotice>, StoreError> {
    let row = sqlx::query(
        "SELECT sender FROM messages WHERE timeline_of = $1 AND message_id = $2 AND convers_with = $3 AND app_id = $4",
    )
    .bind(reader.as_str())
    .bind(message_id.as_str())
    .bind(convers_with.as_str())
    .bind(app.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else {
        // Not in the reader's timeline there: someone else's message, or none at all.
        return Ok(None);
    };
    let sender: Option<String> = row.try_get("sender")?;
    raise_status(tx, app, reader, convers_with, message_id, status::RECEIVED).await?;
    let Some(sender) = sender else {
        return Ok(None);
    };
    if sender == reader.as_str() {
        // A receipt on one's own message tells nobody.
        return Ok(None);
    }
    if sender == convers_with.as_str() {
        // Direct: the sender's own copy, in its conversation with the reader.
        raise_status(tx, app, convers_with, reader, message_id, status::RETURN_RECEIPT).await?;
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
    let Ok(sender) = UserId::parse(&sender) else {
        tracing::error!(group = %convers_with, message_id = %message_id, sender, "stored sender is not an id; receipt not passed on");
        return Ok(None);
    };
    raise_status(tx, app, convers_with, convers_with, message_id, status::RETURN_RECEIPT).await?;
    raise_status(tx, app, &sender, convers_with, message_id, status::RETURN_RECEIPT).await?;
    Ok(Some(ReceiptNotice {
        app: app.clone(),
        to: sender,
        convers_with: convers_with.clone(),
        message_id: message_id.clone(),
    }))
}

/// A page of a conversation's history, newest first: at most `limit` messages older than
/// `before` (epoch ms; `None`: from the newest).
pub(super) async fn page(
    pool: &sqlx::AnyPool,
    timeline_of: &str,
    convers_with: &str,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<StoredMessage>, StoreError> {
    let rows = sqlx::query(
        "SELECT timeline_of, convers_with, message_id, status, timestamp, body FROM messages \
         WHERE timeline_of = $1 AND convers_with = $2 AND timestamp < $3 ORDER BY timestamp DESC LIMIT $4",
    )
    .bind(timeline_of)
    .bind(convers_with)
    .bind(before.unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter().map(message_row).collect()
}

/// A page of `app`'s conversation history, newest first: at most `limit` messages before
/// `cursor` (from the newest without one). An index range scan (`messages_history`).
pub(super) async fn history(
    pool: &sqlx::AnyPool,
    app: &AppId,
    timeline_of: &UserId,
    convers_with: &UserId,
    cursor: Option<&Cursor>,
    limit: i64,
) -> Result<Vec<StoredMessage>, StoreError> {
    const FIRST: &str = "SELECT timeline_of, convers_with, message_id, status, timestamp, body FROM messages \
         WHERE app_id = $1 AND timeline_of = $2 AND convers_with = $3 \
         ORDER BY timestamp DESC, message_id DESC LIMIT $4";
    // An empty id sorts before every id: a bare timestamp cursor excludes all of it.
    const NEXT: &str = "SELECT timeline_of, convers_with, message_id, status, timestamp, body FROM messages \
         WHERE app_id = $1 AND timeline_of = $2 AND convers_with = $3 AND (timestamp, message_id) < ($4, $5) \
         ORDER BY timestamp DESC, message_id DESC LIMIT $6";
    let q = sqlx::query(if cursor.is_some() { NEXT } else { FIRST });
    let q = q
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

/// One stored message, if it exists.
pub(super) async fn one(
    pool: &sqlx::AnyPool,
    timeline_of: &str,
    message_id: &str,
) -> Result<Option<StoredMessage>, StoreError> {
    let row = sqlx::query(
        "SELECT timeline_of, convers_with, message_id, status, timestamp, body FROM messages \
         WHERE timeline_of = $1 AND message_id = $2",
    )
    .bind(timeline_of)
    .bind(message_id)
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(message_row).transpose()
}

fn message_row(r: &AnyRow) -> Result<StoredMessage, StoreError> {
    let body: String = r.try_get("body")?;
    let (timeline_of, message_id): (String, String) = (r.try_get("timeline_of")?, r.try_get("message_id")?);
    let message = json_object(&body).map_err(|e| StoreError::Corrupt {
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
        message: Message::from_fields(message),
    })
}
