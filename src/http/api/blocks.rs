//! A user's block list (PROTOCOL §9): read from the store; changed by the same inputs as the
//! MQTT block commands (the user's devices are told, the caches changed, the store written).

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Token;
use super::error::ApiResult;
use super::extract::Ids;
use super::state::Api;
use super::{done, ok, parse_id};

#[derive(Deserialize)]
pub struct MePath {
    app: String,
    me: String,
}

#[derive(Deserialize)]
pub struct OtherPath {
    app: String,
    me: String,
    other: String,
}

/// Whom the user blocked, oldest first.
#[utoipa::path(get, path = "/api/{app}/{me}/blocks", tag = "blocks", params(("app" = String, Path), ("me" = String, Path)),
    responses((status = 200, description = "`{success, result: [{user_id, createdOn}]}`")))]
pub async fn list(State(api): State<Api>, token: Token, Ids(path): Ids<MePath>) -> ApiResult<Json<Value>> {
    let app = api.app(&path.app)?;
    let caller = token.caller(&app)?;
    let me = parse_id(&path.me, "me")?;
    caller.acting_as(&me)?;
    let blocked = api.store()?.blocked_by(&app, &me).await?;
    let result: Vec<Value> = blocked
        .into_iter()
        .map(|(other, at)| json!({"user_id": other, "createdOn": at}))
        .collect();
    Ok(ok(result))
}

/// Block `{other}`: from now on its messages to the user are not delivered (§9).
#[utoipa::path(put, path = "/api/{app}/{me}/blocks/{other}", tag = "blocks", params(("app" = String, Path), ("me" = String, Path), ("other" = String, Path)),
    responses((status = 200, description = "`{success: true}`")))]
pub async fn block(api: State<Api>, token: Token, ids: Ids<OtherPath>) -> ApiResult<Json<Value>> {
    set(api, token, ids, true).await
}

/// Unblock `{other}`.
#[utoipa::path(delete, path = "/api/{app}/{me}/blocks/{other}", tag = "blocks", params(("app" = String, Path), ("me" = String, Path), ("other" = String, Path)),
    responses((status = 200, description = "`{success: true}`")))]
pub async fn unblock(api: State<Api>, token: Token, ids: Ids<OtherPath>) -> ApiResult<Json<Value>> {
    set(api, token, ids, false).await
}

async fn set(State(api): State<Api>, token: Token, Ids(path): Ids<OtherPath>, add: bool) -> ApiResult<Json<Value>> {
    api.chat21_layout()?;
    let app = api.app(&path.app)?;
    let caller = token.caller(&app)?;
    let me = parse_id(&path.me, "me")?;
    caller.acting_as(&me)?;
    let other = parse_id(&path.other, "other")?;
    let key = api.topics().block(&app, &me, &other, add);
    api.submit(vec![(key, json!({}))]).await?;
    Ok(done())
}
