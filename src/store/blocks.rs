//! The `blocks` table: who blocked whom, per app (§9).

use std::collections::{HashMap, HashSet};

use sqlx::Row;

use super::sql::{placeholders_from, statement_chunks, Dialect, Tx};
use super::StoreError;
use crate::domain::{AppId, UserId};

/// `user` blocks (`add`) or unblocks `other`; idempotent either way.
pub(super) async fn set(
    tx: &mut Tx<'_>,
    app: &AppId,
    user: &UserId,
    other: &UserId,
    add: bool,
    at_ms: i64,
) -> Result<(), sqlx::Error> {
    let q = if add {
        sqlx::query(
            "INSERT INTO blocks (app_id, user_id, other_id, created_on) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (app_id, user_id, other_id) DO NOTHING",
        )
    } else {
        sqlx::query("DELETE FROM blocks WHERE app_id = $1 AND user_id = $2 AND other_id = $3")
    };
    let q = q.bind(app.as_str()).bind(user.as_str()).bind(other.as_str());
    let q = if add { q.bind(at_ms) } else { q };
    q.execute(&mut **tx).await?;
    Ok(())
}

/// The block lists of `users`, one query per 256 users; users who blocked no one are in the
/// map with an empty set.
pub(super) async fn of_users(
    pool: &sqlx::AnyPool,
    dialect: Dialect,
    app: &AppId,
    users: &[UserId],
) -> Result<HashMap<UserId, HashSet<UserId>>, StoreError> {
    let mut out: HashMap<UserId, HashSet<UserId>> = users.iter().map(|u| (u.clone(), HashSet::new())).collect();
    for chunk in statement_chunks(users) {
        let sql = format!(
            "SELECT user_id, other_id FROM blocks WHERE app_id = {} AND user_id IN {}",
            if dialect.positional() { "?" } else { "$1" },
            placeholders_from(dialect, 2, chunk.len())
        );
        let mut q = sqlx::query(&sql).bind(app.as_str());
        for u in chunk {
            q = q.bind(u.as_str());
        }
        for r in q.fetch_all(pool).await? {
            // Read on the hot path for every receiver: one bad row must not make every list
            // of the batch unreadable. A blocked id that is not an id never matches a sender
            // (senders are ids), so leaving the row out changes no decision.
            match row_ids(r.try_get(0)?, r.try_get(1)?) {
                Ok((user, other)) => {
                    out.entry(user).or_default().insert(other);
                }
                Err(e) => tracing::error!(error = %e, "block-list row left out"),
            }
        }
    }
    Ok(out)
}

/// Who `user` blocked, oldest block first, with when (epoch ms).
pub(super) async fn of_user(
    pool: &sqlx::AnyPool,
    app: &AppId,
    user: &UserId,
) -> Result<Vec<(UserId, i64)>, StoreError> {
    let rows = sqlx::query(
        "SELECT user_id, other_id, created_on FROM blocks WHERE app_id = $1 AND user_id = $2 ORDER BY created_on, other_id",
    )
    .bind(app.as_str())
    .bind(user.as_str())
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| Ok((row_ids(r.try_get(0)?, r.try_get(1)?)?.1, r.try_get(2)?)))
        .collect()
}

fn row_ids(user: String, other: String) -> Result<(UserId, UserId), StoreError> {
    let id = |s: &str| {
        UserId::parse(s).map_err(|_| StoreError::Corrupt {
            table: "blocks",
            key: format!("{user}/{other}"),
            why: format!("{s:?} is not an id"),
        })
    };
    Ok((id(&user)?, id(&other)?))
}
