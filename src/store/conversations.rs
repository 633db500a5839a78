//! The `conversations` table: one row per (timeline, partner), the last message's fields
//! and body, `is_new`, `archived`.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::batch::WriteIndex;
use super::sql::{bind_copy, get_bool, json, json_object, placeholders, Dialect, Tx};
use super::{Cursor, StoreError};
use crate::domain::{AppId, Conversation, Message, UserId};
use crate::plan::TimelineCopy;

const COLUMNS: &str = "timeline_of, convers_with, body, \
     CAST(CASE WHEN is_new THEN 1 ELSE 0 END AS BIGINT) AS is_new, \
     CAST(CASE WHEN archived THEN 1 ELSE 0 END AS BIGINT) AS archived";

/// Which of these copies will un-archive their conversation: it is archived and the copy is
/// not older than its last message (older ones do not touch the row). Returns the writes that
/// do, with the conversation as it will be.
pub(super) async fn unarchived_by(
    tx: &mut Tx<'_>,
    dialect: Dialect,
    rows: &[(WriteIndex, &TimelineCopy)],
) -> Result<Vec<(WriteIndex, Conversation)>, sqlx::Error> {
    let sql = format!(
        "SELECT timeline_of, convers_with, received_at, app_id FROM conversations WHERE archived = TRUE AND timeline_of IN {}",
        placeholders(dialect, 1, rows.len(), None)
    );
    let mut q = sqlx::query(&sql);
    for (_, c) in rows {
        q = q.bind(c.timeline_of.as_str());
    }
    let mut out = Vec::new();
    for r in q.fetch_all(&mut **tx).await? {
        let (t, w, ts, app): (String, String, i64, String) =
            (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?);
        let wins = rows
            .iter()
            .find(|(_, c)| c.app == app && c.timeline_of == t && c.convers_with == w && c.received_ms >= ts);
        if let Some((i, c)) = wins {
            out.push((
                *i,
                Conversation {
                    timeline_of: c.timeline_of.clone(),
                    convers_with: c.convers_with.clone(),
                    last: c.message().clone(),
                    is_new: c.is_new,
                    archived: false,
                },
            ));
        }
    }
    Ok(out)
}

/// Newest message wins, by the engine's receive time: an older (or redelivered) message never
/// replaces a newer last message. A new message un-archives the conversation (§6).
pub(super) async fn upsert(
    tx: &mut Tx<'_>,
    dialect: Dialect,
    rows: &[(WriteIndex, &TimelineCopy)],
) -> Result<(), sqlx::Error> {
    let sql = format!(
        "INSERT INTO conversations (timeline_of, convers_with, app_id, message_id, sender, recipient, status, \
         timestamp, last_message_text, type, channel_type, attributes, is_new, archived, body, received_at) VALUES {} \
         ON CONFLICT (app_id, timeline_of, convers_with) DO UPDATE SET \
         app_id = excluded.app_id, message_id = excluded.message_id, sender = excluded.sender, \
         recipient = excluded.recipient, status = excluded.status, timestamp = excluded.timestamp, \
         last_message_text = excluded.last_message_text, type = excluded.type, \
         channel_type = excluded.channel_type, attributes = excluded.attributes, is_new = excluded.is_new, \
         archived = FALSE, body = excluded.body, received_at = excluded.received_at \
         WHERE excluded.received_at >= conversations.received_at",
        placeholders(dialect, rows.len(), 15, Some((13, "FALSE")))
    );
    let mut q = sqlx::query(&sql);
    for (_, c) in rows {
        let m = c.message();
        q = bind_copy(q, c)
            .bind(m.attributes().map(serde_json::Value::to_string))
            .bind(c.is_new)
            .bind(json(m.fields()))
            .bind(c.received_ms);
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

/// Set `is_new` where the conversation exists (never a stub row).
pub(super) async fn set_is_new(
    tx: &mut Tx<'_>,
    app: &AppId,
    timeline_of: &str,
    convers_with: &str,
    is_new: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE conversations SET is_new = $1 WHERE timeline_of = $2 AND convers_with = $3 AND app_id = $4")
        .bind(is_new)
        .bind(timeline_of)
        .bind(convers_with)
        .bind(app.as_str())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Archive a conversation; returns it as it is now (none if it does not exist, or if its row
/// does not parse: inside a write, failing would fail the whole batch on every retry, so a
/// corrupt row is archived, logged, and not published).
pub(super) async fn archive(
    tx: &mut Tx<'_>,
    app: &AppId,
    timeline_of: &str,
    convers_with: &str,
) -> Result<Option<Conversation>, sqlx::Error> {
    sqlx::query(
        "UPDATE conversations SET archived = TRUE WHERE timeline_of = $1 AND convers_with = $2 AND app_id = $3",
    )
    .bind(timeline_of)
    .bind(convers_with)
    .bind(app.as_str())
    .execute(&mut **tx)
    .await?;
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM conversations WHERE timeline_of = $1 AND convers_with = $2 AND app_id = $3"
    ))
    .bind(timeline_of)
    .bind(convers_with)
    .bind(app.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    match row.as_ref().map(conversation).transpose() {
        Ok(conv) => Ok(conv),
        Err(StoreError::Db(e)) => Err(e),
        Err(e) => {
            tracing::error!(error = %e, "archived conversation unreadable; not published");
            Ok(None)
        }
    }
}

/// A timeline's conversations, active or archived, newest first (at most `limit`).
pub(super) async fn list(
    pool: &sqlx::AnyPool,
    timeline_of: &str,
    archived: bool,
    limit: i64,
) -> Result<Vec<Conversation>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM conversations WHERE timeline_of = $1 AND archived = $2 \
         ORDER BY received_at DESC LIMIT $3"
    ))
    .bind(timeline_of)
    .bind(archived)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter().map(conversation).collect()
}

/// A page of `app`'s conversations of a timeline, active or archived, newest first by the
/// engine's receive time, then partner id (a total order: see [`Cursor`]): at most `limit`
/// before `before`, each with its receive time. An index range scan
/// (`conversations_page`).
pub(super) async fn page(
    pool: &sqlx::AnyPool,
    app: &AppId,
    timeline_of: &UserId,
    archived: bool,
    before: Option<&Cursor>,
    limit: i64,
) -> Result<Vec<(Conversation, i64)>, StoreError> {
    let (after, order) = (
        "AND (received_at, convers_with) < ($4, $5)",
        "ORDER BY received_at DESC, convers_with DESC",
    );
    let sql = match before {
        None => format!(
            "SELECT {COLUMNS}, received_at FROM conversations WHERE app_id = $1 AND timeline_of = $2 AND archived = $3 \
             {order} LIMIT $4"
        ),
        Some(_) => format!(
            "SELECT {COLUMNS}, received_at FROM conversations WHERE app_id = $1 AND timeline_of = $2 AND archived = $3 \
             {after} {order} LIMIT $6"
        ),
    };
    let q = sqlx::query(&sql)
        .bind(app.as_str())
        .bind(timeline_of.as_str())
        .bind(archived);
    let q = match before {
        None => q,
        Some(c) => q.bind(c.at).bind(c.id.clone().unwrap_or_default()),
    };
    let rows = q.bind(limit).fetch_all(pool).await?;
    rows.iter()
        .map(|r| Ok((conversation(r)?, r.try_get::<i64, _>("received_at")?)))
        .collect()
}

/// `app`'s conversation of a timeline with `convers_with`, if it exists.
pub(super) async fn one_of_app(
    pool: &sqlx::AnyPool,
    app: &AppId,
    timeline_of: &UserId,
    convers_with: &UserId,
) -> Result<Option<Conversation>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM conversations WHERE app_id = $1 AND timeline_of = $2 AND convers_with = $3"
    ))
    .bind(app.as_str())
    .bind(timeline_of.as_str())
    .bind(convers_with.as_str())
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(conversation).transpose()
}

/// One conversation of a timeline, archived or not.
pub(super) async fn one(
    pool: &sqlx::AnyPool,
    timeline_of: &str,
    convers_with: &str,
) -> Result<Option<Conversation>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM conversations WHERE timeline_of = $1 AND convers_with = $2"
    ))
    .bind(timeline_of)
    .bind(convers_with)
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(conversation).transpose()
}

fn conversation(r: &AnyRow) -> Result<Conversation, StoreError> {
    let (t, w): (String, String) = (r.try_get("timeline_of")?, r.try_get("convers_with")?);
    let corrupt = |why: String| StoreError::Corrupt {
        table: "conversations",
        key: format!("{t}/{w}"),
        why,
    };
    let body: String = r.try_get("body")?;
    let last = json_object(&body).map_err(|e| corrupt(format!("body: {e}")))?;
    Ok(Conversation {
        timeline_of: UserId::parse(&t).map_err(|_| corrupt("timeline_of is not an id".into()))?,
        convers_with: UserId::parse(&w).map_err(|_| corrupt("convers_with is not an id".into()))?,
        last: Message::from_fields(last),
        is_new: get_bool(r, "is_new")?,
        archived: get_bool(r, "archived")?,
    })
}
