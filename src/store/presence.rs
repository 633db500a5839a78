//! The `presence_clients` and `presence` tables (§7): the set of each user's connected client
//! ids, and the user's online flag, client count and last-seen time derived from it.

use sqlx::Row;

use super::sql::{get_bool, Tx};
use super::StoreError;
use crate::domain::{AppId, ClientId, UserId};
use crate::plan::PresenceChange;

/// A user's presence row.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPresence {
    pub online: bool,
    /// Connected clients.
    pub clients: i64,
    /// Epoch ms of the last connect or disconnect.
    pub last_seen: Option<i64>,
}

/// Record one client's connect or disconnect (a redelivered one changes nothing); return the
/// user's online/offline transition, if it caused one.
pub(super) async fn record(
    tx: &mut Tx<'_>,
    app: &AppId,
    user: &UserId,
    client_id: &ClientId,
    connected: bool,
    at_ms: i64,
) -> Result<Option<PresenceChange>, sqlx::Error> {
    let (app_s, user_s) = (app.as_str(), user.as_str());
    let q = if connected {
        sqlx::query(
            "INSERT INTO presence_clients (app_id, user_id, client_id, since) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (app_id, user_id, client_id) DO NOTHING",
        )
    } else {
        sqlx::query("DELETE FROM presence_clients WHERE app_id = $1 AND user_id = $2 AND client_id = $3")
    };
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

/// A user's presence, if it was ever recorded.
pub(super) async fn one(
    pool: &sqlx::AnyPool,
    app_id: &str,
    user_id: &str,
) -> Result<Option<StoredPresence>, StoreError> {
    let row = sqlx::query(
        "SELECT CAST(CASE WHEN online THEN 1 ELSE 0 END AS BIGINT) AS online, clients, last_seen FROM presence \
         WHERE app_id = $1 AND user_id = $2",
    )
    .bind(app_id)
    .bind(user_id)
    .fetch_optional(pool)
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
