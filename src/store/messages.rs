//! The `messages` table (one body per message) and the `timeline` table (one small row per
//! copy of a message in the timeline it landed in, with its status there).

use sqlx::any::AnyRow;
use sqlx::Row;

use super::batch::WriteIndex;
use super::sql::{json, json_object, placeholders, Dialect, Tx};
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

/// Where a copy's body is kept: `messages` is keyed by (app, sender, recipient, message id),
/// so a message id is an idempotency key per sender and conversation — another user's
/// message with the same id is another message.
pub(super) fn body_key(c: &TimelineCopy) -> (&str, &str, &str, &str) {
    let m = c.message();
    (
        c.app.as_str(),
        m.sender().unwrap_or_default(),
        m.recipient().unwrap_or_default(),
        m.message_id().unwrap_or_default(),
    )
}

/// The bodies of these copies (one per key: the batch deduplicates them), each written once
/// whatever the number of timelines it lands in; the first one stored wins. The body is the
/// JSON the copy was published with, not serialised again; its `status` is the first copy's
/// and is replaced on read by the status of the timeline or conversation that reads it.
pub(super) async fn insert_bodies(
    tx: &mut Tx<'_>,
    dialect: Dialect,
    rows: &[&TimelineCopy],
) -> Result<(), sqlx::Error> {
    let sql = format!(
        "INSERT INTO messages (app_id, sender, recipient, message_id, body) VALUES {} \
         ON CONFLICT (app_id, sender, recipient, message_id) DO NOTHING",
        placeholders(dialect, rows.len(), 5, None)
    );
    let mut q = sqlx::query(&sql);
    for c in rows {
        let (app, sender, recipient, id) = body_key(c);
        q = q.bind(app).bind(sender).bind(recipient).bind(id);
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

/// One timeline row per copy; a second copy of the same (timeline, conversation, message
/// id, sender) is a no-op (a redelivered input).
pub(super) async fn insert(
    tx: &mut Tx<'_>,
    dialect: Dialect,
    rows: &[(WriteIndex, &TimelineCopy)],
) -> Result<(), sqlx::Error> {
    let sql = format!(
        "INSERT INTO timeline (app_id, timeline_of, convers_with, message_id, sender, recipient, status, timestamp) \
         VALUES {} ON CONFLICT (app_id, timeline_of, convers_with, message_id, sender) DO NOTHING",
        placeholders(dialect, rows.len(), 8, None)
    );
    let mut q = sqlx::query(&sql);
    for (_, c) in rows {
        let m = c.message();
        let (app, sender, recipient, id) = body_key(c);
        q = q
            .bind(app)
            .bind(c.timeline_of.as_str())
            .bind(c.convers_with.as_str())
            .bind(id)
            .bind(sender)
            .bind(recipient)
            .bind(m.status().unwrap_or_default())
            .bind(m.timestamp());
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

/// Only ever raise a status, and only where the row exists in that conversation: a late 200
/// never downgrades a 250 or 300, and a receipt for an unknown message leaves no stub row
/// (fix D7). `sender`: only that sender's message of this id (none: every sender's).
async fn raise_status(
    tx: &mut Tx<'_>,
    app: &AppId,
    timeline_of: &str,
    convers_with: &str,
    message_id: &str,
    sender: &str,
    status: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE timeline SET status = $1 \
         WHERE app_id = $2 AND timeline_of = $3 AND convers_with = $4 AND message_id = $5 AND sender = $6 \
         AND status < $1",
    )
    .bind(status)
    .bind(app.as_str())
    .bind(timeline_of)
    .bind(convers_with)
    .bind(message_id)
    .bind(sender)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A receipt by `reader` for `message_id` of its conversation with `convers_with` (§5; see
/// [`Write::Receipt`](crate::plan::Write::Receipt)). Nothing happens unless the reader's own
/// timeline holds someone else's message of that id in that conversation. Returns whom to
/// tell.
pub(super) async fn receipt(
    tx: &mut Tx<'_>,
    app: &AppId,
    reader: &UserId,
    convers_with: &UserId,
    message_id: &MessageId,
) -> Result<Option<ReceiptNotice>, StoreError> {
    let rows = sqlx::query(
        "SELECT sender FROM timeline WHERE app_id = $1 AND timeline_of = $2 AND convers_with = $3 AND message_id = $4",
    )
    .bind(app.as_str())
    .bind(reader.as_str())
    .bind(convers_with.as_str())
    .bind(message_id.as_str())
    .fetch_all(&mut **tx)
    .await?;
    let senders = rows
        .iter()
        .map(|r| r.try_get::<String, _>("sender"))
        .collect::<Result<Vec<String>, _>>()?;
    // The message the receipt is about: in a direct conversation the partner's (one's own
    // tells nobody); in a group, the one other member's of that id. Ids are per sender, so
    // a group may hold two senders' messages of one id: the receipt cannot say which, and is
    // applied to the first.
    let Some(sender) = senders
        .iter()
        .find(|s| *s == convers_with.as_str())
        .or_else(|| senders.iter().find(|s| *s != reader.as_str()))
    else {
        // Not in the reader's timeline there, or only the reader's own message.
        return Ok(None);
    };
    raise_status(tx, app, reader, convers_with, message_id, sender, status::RECEIVED).await?;
    if sender == convers_with.as_str() {
        // Direct: the sender's own copy, in its conversation with the reader.
        raise_status(
            tx,
            app,
            convers_with,
            reader,
            message_id,
            sender,
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
    let Ok(sender) = UserId::parse(sender) else {
        tracing::error!(group = %convers_with, message_id = %message_id, sender, "stored sender is not an id; receipt not passed on");
        return Ok(None);
    };
    raise_status(
        tx,
        app,
        convers_with,
        convers_with,
        message_id,
        &sender,
        status::RETURN_RECEIPT,
    )
    .await?;
    raise_status(
        tx,
        app,
        &sender,
        convers_with,
        message_id,
        &sender,
        status::RETURN_RECEIPT,
    )
    .await?;
    Ok(Some(ReceiptNotice {
        app: app.clone(),
        to: sender,
        convers_with: convers_with.clone(),
        message_id: message_id.clone(),
    }))
}

/// What history reads select: the timeline row and its message's body (NULL when missing,
/// which [`message_row`] reports as corrupt rather than dropping the row).
const SELECT: &str = "SELECT t.timeline_of, t.convers_with, t.message_id, t.status, t.timestamp, m.body \
     FROM timeline t LEFT JOIN messages m ON m.app_id = t.app_id AND m.sender = t.sender \
     AND m.recipient = t.recipient AND m.message_id = t.message_id";

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
/// `cursor` (from the newest without one). An index range scan (`timeline_history`), then
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
