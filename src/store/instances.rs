//! The `instances` table: the devices a user's apps registered (for push notifications).

use serde_json::{Map, Value};
use sqlx::Row;

use super::sql::{json, json_object};
use super::StoreError;
use crate::domain::{AppId, UserId};

/// Register (or refresh) a device of `user`; the newest info wins.
pub(super) async fn save(
    pool: &sqlx::AnyPool,
    app: &AppId,
    user: &UserId,
    instance_id: &str,
    info: &Map<String, Value>,
    at_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO instances (app_id, user_id, instance_id, body, updated_on) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (app_id, user_id, instance_id) DO UPDATE SET body = excluded.body, updated_on = excluded.updated_on",
    )
    .bind(app.as_str())
    .bind(user.as_str())
    .bind(instance_id)
    .bind(json(info))
    .bind(at_ms)
    .execute(pool)
    .await?;
    Ok(())
}

/// A user's devices, by instance id.
pub(super) async fn of_user(
    pool: &sqlx::AnyPool,
    app: &AppId,
    user: &UserId,
) -> Result<Vec<(String, Map<String, Value>)>, StoreError> {
    let rows =
        sqlx::query("SELECT instance_id, body FROM instances WHERE app_id = $1 AND user_id = $2 ORDER BY instance_id")
            .bind(app.as_str())
            .bind(user.as_str())
            .fetch_all(pool)
            .await?;
    rows.iter()
        .map(|r| {
            let id: String = r.try_get("instance_id")?;
            let body: String = r.try_get("body")?;
            let info = json_object(&body).map_err(|e| StoreError::Corrupt {
                table: "instances",
                key: format!("{user}/{id}"),
                why: format!("body: {e}"),
            })?;
            Ok((id, info))
        })
        .collect()
}
