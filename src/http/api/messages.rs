//! A conversation's history (newest first, paged by a total-order cursor) and sending a
//! message over HTTP (as the MQTT client does: the same input, the same way through).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use utoipa::IntoParams;

use super::auth::Token;
use super::error::{ApiError, ApiResult};
use super::extract::{Body, Ids, Params};
use super::state::Api;
use super::{page_limit, parse_id};
use crate::store::{Cursor, StoredMessage};

/// Messages per page when `limit` is not given (what Chat21 clients, which send none,
/// always got), and the most one page may hold.
pub const MESSAGES_DEFAULT_LIMIT: i64 = 200;
pub const MESSAGES_MAX_LIMIT: i64 = 1000;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryParams {
    /// At most this many (default 200, at most 1000).
    #[serde(default)]
    limit: Option<i64>,
    /// Only messages before this point: the previous page's `next` (`{timestamp}:{message_id}`),
    /// or a bare timestamp (epoch ms; messages of that very millisecond excluded).
    #[serde(default)]
    before: Option<String>,
}

#[derive(Deserialize)]
pub struct HistoryPath {
    app: String,
    me: String,
    with: String,
}

/// A conversation's messages, newest first, each with its status in the caller's timeline.
#[utoipa::path(get, path = "/api/{app}/{me}/conversations/{with}/messages", tag = "messages",
    params(("app" = String, Path), ("me" = String, Path), ("with" = String, Path), HistoryParams),
    responses((status = 200, description = "`{success, result: [message], next}`; `next` is the `before` of the next page, null on the last")))]
pub async fn history(
    State(api): State<Api>,
    token: Token,
    Ids(path): Ids<HistoryPath>,
    Params(p): Params<HistoryParams>,
) -> ApiResult<Json<Value>> {
    let app = api.app(&path.app)?;
    let caller = token.caller(&app)?;
    let me = parse_id(&path.me, "me")?;
    caller.acting_as(&me)?;
    let with = parse_id(&path.with, "with")?;
    let limit = page_limit(p.limit, MESSAGES_DEFAULT_LIMIT, MESSAGES_MAX_LIMIT)?;
    let cursor = p.before.as_deref().map(parse_cursor).transpose()?;
    let page = api.store()?.history(&app, &me, &with, cursor.as_ref(), limit).await?;
    let next = (page.len() as i64 == limit)
        .then(|| page.last().map(|m| Cursor::render(m.timestamp, &m.message_id)))
        .flatten();
    let result: Vec<Value> = page.into_iter().map(message_object).collect();
    Ok(Json(json!({"success": true, "result": result, "next": next})))
}

/// A `before` parameter as a cursor, or 400.
pub fn parse_cursor(s: &str) -> ApiResult<Cursor> {
    Cursor::parse(s).ok_or_else(|| ApiError::bad("before: expected {timestamp} or {timestamp}:{id}"))
}

/// A stored message as clients read it: its fields, the status it has in this timeline
/// (receipts raise the row's status, not the stored body's), `timelineOf`, `conversWith`.
fn message_object(m: StoredMessage) -> Value {
    let mut o = m.message.fields().clone();
    o.insert("status".into(), m.status.into());
    o.insert("timelineOf".into(), m.timeline_of.into());
    o.insert("conversWith".into(), m.convers_with.into());
    Value::Object(o)
}

#[derive(Deserialize)]
pub struct AppPath {
    app: String,
}

/// A message to send: the fields the MQTT client publishes, plus `recipient_id` (and
/// `sender_id` for admin tokens). Every other field is carried as the client sent it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct NewMessage {
    recipient_id: String,
    /// Send as this user (admin tokens only).
    #[serde(default)]
    sender_id: Option<String>,
    /// The client's own id (an idempotency key); a fresh UUID when absent.
    #[serde(default)]
    message_id: Option<String>,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    fields: Map<String, Value>,
}

/// Send a message as the token's user: the same input as an MQTT client's publish on its
/// outgoing topic, so the policy chain, store and fan-out are the ones every message gets.
#[utoipa::path(post, path = "/api/{app}/messages", tag = "messages", params(("app" = String, Path)), request_body = NewMessage,
    responses((status = 200, description = "`{success: true, message_id}` once delivered and stored"),
              (status = 403, description = "not a member of the stored group"),
              (status = 422, description = "refused by the engine, with its reason"),
              (status = 429, description = "over the sender's rate limit")))]
pub async fn send(
    State(api): State<Api>,
    token: Token,
    Ids(path): Ids<AppPath>,
    Body(m): Body<NewMessage>,
) -> ApiResult<Response> {
    let app = api.app(&path.app)?;
    let caller = token.caller(&app)?;
    let recipient = parse_id(&m.recipient_id, "recipient_id")?;
    let sender = match &m.sender_id {
        Some(s) => {
            caller.require_admin()?;
            parse_id(s, "sender_id")?
        }
        None => caller.user.clone(),
    };
    let message_id = match m.message_id {
        Some(id) => parse_id(&id, "message_id")?.to_string(),
        None => uuid::Uuid::new_v4().to_string(),
    };
    let mut fields = m.fields;
    fields.insert("message_id".into(), message_id.clone().into());
    let key = api.topics().outgoing(&sender, &recipient);
    match api.submit(vec![(key, Value::Object(fields))]).await {
        Ok(()) => Ok(Json(json!({"success": true, "message_id": message_id})).into_response()),
        // Queued, or perhaps not: the error carries the id, so a retry is not a duplicate.
        Err(e @ (ApiError::NotSettled(_) | ApiError::Unavailable(_))) => {
            let body = json!({"success": false, "error": e.to_string(), "message_id": message_id});
            Ok((e.status(), Json(body)).into_response())
        }
        Err(e) => Err(e),
    }
}
