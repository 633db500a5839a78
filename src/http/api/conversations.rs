//! A user's conversations (PROTOCOL §14): the active and archived lists (every path spelling
//! clients use), one conversation (a list of 0 or 1, as clients read it), and archiving.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::IntoParams;

use super::auth::Token;
use super::error::ApiResult;
use super::extract::{Body, Ids, Params};
use super::state::Api;
use super::{ok, page_limit, parse_id};
use crate::domain::Conversation;
use crate::handlers::conversation;
use crate::store::Cursor;

/// Conversations per page when `limit` is not given, and the most one page may hold.
pub const CONVERSATIONS_DEFAULT_LIMIT: i64 = 200;
pub const CONVERSATIONS_MAX_LIMIT: i64 = 1000;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// `true`: the archived conversations.
    #[serde(default)]
    archived: Option<bool>,
    /// At most this many (default 200, at most 1000).
    #[serde(default)]
    limit: Option<i64>,
    /// Only conversations before this point: the previous page's `next`
    /// (`{received_at}:{conversWith}`), or a bare time (epoch ms of the engine's receipt of
    /// the last message).
    #[serde(default)]
    before: Option<String>,
}

#[derive(Deserialize)]
pub struct MePath {
    app: String,
    me: String,
}

#[derive(Deserialize)]
pub struct WithPath {
    app: String,
    me: String,
    with: String,
}

/// The active conversations (or, with `archived=true`, the archived ones), newest first.
#[utoipa::path(get, path = "/api/{app}/{me}/conversations", tag = "conversations", params(("app" = String, Path), ("me" = String, Path), ListParams),
    responses((status = 200, description = "`{success, result: [conversation], next}`; `next` is the `before` of the next page, null on the last")))]
pub async fn active(
    api: State<Api>,
    token: Token,
    ids: Ids<MePath>,
    Params(p): Params<ListParams>,
) -> ApiResult<Json<Value>> {
    let archived = p.archived.unwrap_or(false);
    list(api, token, ids, p, archived).await
}

/// The archived conversations, newest first.
#[utoipa::path(get, path = "/api/{app}/{me}/conversations/archived", tag = "conversations", params(("app" = String, Path), ("me" = String, Path), ListParams),
    responses((status = 200, description = "`{success, result: [conversation], next}`")))]
pub async fn archived(
    api: State<Api>,
    token: Token,
    ids: Ids<MePath>,
    Params(p): Params<ListParams>,
) -> ApiResult<Json<Value>> {
    list(api, token, ids, p, true).await
}

/// The archived conversations, newest first (the other spelling clients use).
#[utoipa::path(get, path = "/api/{app}/{me}/archived_conversations", tag = "conversations", params(("app" = String, Path), ("me" = String, Path), ListParams),
    responses((status = 200, description = "`{success, result: [conversation], next}`")))]
pub async fn archived_conversations(
    api: State<Api>,
    token: Token,
    ids: Ids<MePath>,
    Params(p): Params<ListParams>,
) -> ApiResult<Json<Value>> {
    list(api, token, ids, p, true).await
}

async fn list(
    State(api): State<Api>,
    token: Token,
    Ids(path): Ids<MePath>,
    p: ListParams,
    archived: bool,
) -> ApiResult<Json<Value>> {
    let app = api.app(&path.app)?;
    let caller = token.caller(&app)?;
    let me = parse_id(&path.me, "me")?;
    caller.acting_as(&me)?;
    let limit = page_limit(p.limit, CONVERSATIONS_DEFAULT_LIMIT, CONVERSATIONS_MAX_LIMIT)?;
    let before = p.before.as_deref().map(super::messages::parse_cursor).transpose()?;
    let page = api
        .store()?
        .conversation_page(&app, &me, archived, before.as_ref(), limit)
        .await?;
    let next = (page.len() as i64 == limit)
        .then(|| page.last().map(|(c, at)| Cursor::render(*at, &c.convers_with)))
        .flatten();
    let result: Vec<Value> = page
        .iter()
        .map(|(c, _)| Value::Object(conversation::object(c)))
        .collect();
    Ok(Json(json!({"success": true, "result": result, "next": next})))
}

/// One active conversation: `result` is a list of 0 or 1.
#[utoipa::path(get, path = "/api/{app}/{me}/conversations/{with}", tag = "conversations", params(("app" = String, Path), ("me" = String, Path), ("with" = String, Path)),
    responses((status = 200, description = "`{success, result: [conversation]}` or `result: []`")))]
pub async fn one_active(api: State<Api>, token: Token, ids: Ids<WithPath>) -> ApiResult<Json<Value>> {
    one(api, token, ids, false).await
}

/// One archived conversation: `result` is a list of 0 or 1.
#[utoipa::path(get, path = "/api/{app}/{me}/archived_conversations/{with}", tag = "conversations", params(("app" = String, Path), ("me" = String, Path), ("with" = String, Path)),
    responses((status = 200, description = "`{success, result: [conversation]}` or `result: []`")))]
pub async fn one_archived(api: State<Api>, token: Token, ids: Ids<WithPath>) -> ApiResult<Json<Value>> {
    one(api, token, ids, true).await
}

async fn one(State(api): State<Api>, token: Token, Ids(path): Ids<WithPath>, archived: bool) -> ApiResult<Json<Value>> {
    let app = api.app(&path.app)?;
    let caller = token.caller(&app)?;
    let me = parse_id(&path.me, "me")?;
    caller.acting_as(&me)?;
    let with = parse_id(&path.with, "with")?;
    let conv: Option<Conversation> = api.store()?.conversation_of(&app, &me, &with).await?;
    let result: Vec<Value> = conv
        .filter(|c| c.archived == archived)
        .map(|c| Value::Object(conversation::object(&c)))
        .into_iter()
        .collect();
    Ok(ok(result))
}

#[derive(Deserialize)]
pub struct ArchivePath {
    app: String,
    with: String,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct ArchiveBody {
    /// Whose conversation (admin tokens only; default: the token's user).
    #[serde(default)]
    user_id: Option<String>,
}

/// Archive the caller's conversation with `{with}` (as the MQTT archive input does: the
/// devices are told, `conversation-archived`).
#[utoipa::path(delete, path = "/api/{app}/conversations/{with}", tag = "conversations", params(("app" = String, Path), ("with" = String, Path)),
    request_body(content = Option<ArchiveBody>, description = "optional"),
    responses((status = 201, description = "`{success: true}` once archived")))]
pub async fn archive(
    State(api): State<Api>,
    token: Token,
    Ids(path): Ids<ArchivePath>,
    Body(body): Body<ArchiveBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    api.chat21_layout()?;
    let app = api.app(&path.app)?;
    let caller = token.caller(&app)?;
    let with = parse_id(&path.with, "with")?;
    let me = match body.user_id {
        Some(u) => {
            let u = parse_id(&u, "user_id")?;
            caller.acting_as(&u)?;
            u
        }
        None => caller.user.clone(),
    };
    let key = api.topics().archive(&app, &me, &with);
    api.submit(vec![(key, json!({"action": "archive"}))]).await?;
    Ok((StatusCode::CREATED, Json(json!({"success": true}))))
}
