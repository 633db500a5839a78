//! The `groups` table: one row per group uid, its members and the whole group object.

use serde_json::{Map, Value};
use sqlx::Row;

use super::sql::{bind_text, json, json_object, Tx};
use super::StoreError;
use crate::domain::{AppId, Group, UserId};

/// Create or replace a group (§4.4); the creation time stays the first one.
pub(super) async fn upsert(tx: &mut Tx<'_>, g: &Group) -> Result<(), sqlx::Error> {
    let members: Map<String, Value> = g.members.iter().map(|m| (m.to_string(), Value::from(1))).collect();
    let q = sqlx::query(
        "INSERT INTO groups (uid, app_id, name, owner, members, attributes, created_on, updated_on, body) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (app_id, uid) DO UPDATE SET \
         app_id = excluded.app_id, name = excluded.name, owner = excluded.owner, members = excluded.members, \
         attributes = excluded.attributes, updated_on = excluded.updated_on, body = excluded.body",
    )
    .bind(g.uid.as_str())
    .bind(g.app_id.as_str());
    let q = bind_text(q, g.name());
    bind_text(q, g.owner())
        .bind(json(&members))
        .bind(g.attributes().map(Value::to_string))
        .bind(g.created_on)
        .bind(g.updated_on)
        .bind(json(&g.object))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A stored group. A row that does not parse is [`StoreError::Corrupt`].
pub(super) async fn one(pool: &sqlx::AnyPool, app: &AppId, uid: &UserId) -> Result<Option<Group>, StoreError> {
    let row =
        sqlx::query("SELECT app_id, members, body, created_on, updated_on FROM groups WHERE app_id = $1 AND uid = $2")
            .bind(app.as_str())
            .bind(uid.as_str())
            .fetch_optional(pool)
            .await?;
    let Some(r) = row else { return Ok(None) };
    let corrupt = |why: String| StoreError::Corrupt {
        table: "groups",
        key: uid.to_string(),
        why,
    };
    let body: Option<String> = r.try_get("body")?;
    let object = match body {
        Some(b) => json_object(&b).map_err(|e| corrupt(format!("body: {e}")))?,
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
    let app_id = AppId::parse(&app_id).map_err(|_| corrupt(format!("app_id {app_id:?} is not an id")))?;
    let mut g = Group::from_object(&app_id, &object, r.try_get("updated_on")?).map_err(|r| corrupt(r.to_string()))?;
    g.created_on = r.try_get("created_on")?;
    Ok(Some(g))
}
