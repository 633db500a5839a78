//! The `conversations` table: one row per (timeline, partner): the key of its last message
//! (whose body is in `messages`), that message's status in this timeline, `is_new`,
//! `archived`, the engine's receive time.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::batch::WriteIndex;
use super::messages::BodyKey;
use super::sql::{get_bool, json_object, placeholders, Dialect, Tx};
use super::{Cursor, StoreError};
use crate::domain::{AppId, Conversation, Message, UserId};
use crate::plan::TimelineCopy;

/// A conversation row with its last message's body (NULL when missing: reported as corrupt).
const COLUMNS: &str = "c.timeline_of, c.convers_with, c.status, m.body, \
     CAST(CASE WHEN c.is_new THEN 1 ELSE 0 END AS BIGINT) AS is_new, \
     CAST(CASE WHEN c.archived THEN 1 ELSE 0 END AS BIGINT) AS archived";

/// Conversations, each joined with its last message's body by the body's key.
const FROM: &str = "FROM conversations c LEFT JOIN messages m ON m.app_id = c.app_id AND m.recipient = c.recipient \
     AND m.message_id = c.message_id AND m.sender = c.sender";

/// Which of these copies will un-archive their conversation: it is archived and the copy is
/// not older than its last message (older ones do not touch the row). Returns the writes that
/// do, with the conversation as it will be.
pub(super) async fn unarchived_by(
    tx: &mut Tx<'_>,
    dialect: Dialect,
    rows: &[(WriteIndex, &TimelineCopy)],
) -> Result<Vec<(WriteIndex, Conversation)>, sqlx::Error> {
    // One query per app in the batch (an engine serves one: one query), each an index range
    // scan (`conversations_page`: app, timeline, archived).
    let mut apps: Vec<&AppId> = rows.iter().map(|(_, c)| &c.app).collect();
    apps.sort();
    apps.dedup();
    let mut found = Vec::new();
    for app in apps {
        let timelines: Vec<&str> = rows
            .iter()
            .filter(|(_, c)| &c.app == app)
            .map(|(_, c)| c.timeline_of.as_str())
            .collect();
        let sql = format!(
            "SELECT timeline_of, convers_with, received_at, app_id FROM conversations \
             WHERE app_id = {} AND archived = TRUE AND timeline_of IN {}",
            if dialect.positional() { "?" } else { "$1" },
            super::sql::placeholders_from(dialect, 2, timelines.len())
        );
        let mut q = sqlx::query(&sql).bind(app.as_str());
        for t in timelines {
            q = q.bind(t);
        }
        found.extend(q.fetch_all(&mut **tx).await?);
    }
    let mut out = Vec::new();
    for r in found {
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
         is_new, archived, received_at) VALUES {} \
         ON CONFLICT (app_id, timeline_of, convers_with) DO UPDATE SET \
         message_id = excluded.message_id, sender = excluded.sender, recipient = excluded.recipient, \
         status = excluded.status, is_new = excluded.is_new, archived = FALSE, received_at = excluded.received_at \
         WHERE excluded.received_at >= conversations.received_at",
        placeholders(dialect, rows.len(), 9, Some((8, "FALSE")))
    );
    let mut q = sqlx::query(&sql);
    for (_, c) in rows {
        let k = BodyKey::of(c);
        q = q
            .bind(c.timeline_of.as_str())
            .bind(c.convers_with.as_str())
            .bind(k.app)
            .bind(k.message_id)
            .bind(k.sender)
            .bind(k.recipient)
            .bind(c.message().status().unwrap_or_default())
            .bind(c.is_new)
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
        "SELECT {COLUMNS} {FROM} WHERE c.timeline_of = $1 AND c.convers_with = $2 AND c.app_id = $3"
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
        "SELECT {COLUMNS} {FROM} WHERE c.timeline_of = $1 AND c.archived = $2 \
         ORDER BY c.received_at DESC LIMIT $3"
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
        "AND (c.received_at, c.convers_with) < ($4, $5)",
        "ORDER BY c.received_at DESC, c.convers_with DESC",
    );
    let sql = match before {
        None => format!(
            "SELECT {COLUMNS}, c.received_at {FROM} WHERE c.app_id = $1 AND c.timeline_of = $2 AND c.archived = $3 \
             {order} LIMIT $4"
        ),
        Some(_) => format!(
            "SELECT {COLUMNS}, c.received_at {FROM} WHERE c.app_id = $1 AND c.timeline_of = $2 AND c.archived = $3 \
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
        "SELECT {COLUMNS} {FROM} WHERE c.app_id = $1 AND c.timeline_of = $2 AND c.convers_with = $3"
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
        "SELECT {COLUMNS} {FROM} WHERE c.timeline_of = $1 AND c.convers_with = $2"
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
    let body: Option<String> = r.try_get("body")?;
    let body = body.ok_or_else(|| corrupt("the last message's body is missing".into()))?;
    let mut last = json_object(&body).map_err(|e| corrupt(format!("body: {e}")))?;
    // The body is stored once for every timeline; the status is this one's.
    last.insert("status".into(), r.try_get::<i64, _>("status")?.into());
    Ok(Conversation {
        timeline_of: UserId::parse(&t).map_err(|_| corrupt("timeline_of is not an id".into()))?,
        convers_with: UserId::parse(&w).map_err(|_| corrupt("convers_with is not an id".into()))?,
        last: Message::from_fields(last),
        is_new: get_bool(r, "is_new")?,
        archived: get_bool(r, "archived")?,
    })
}
