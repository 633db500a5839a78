//! The HTTP API (PROTOCOL §14): what chat21-http-server served next to the original
//! observer, in the engine. Reads come from the store; every change is an input submitted
//! through the broker (`broker::submit`) — the same way through as an MQTT client's — and is
//! answered once an engine settled it, so the next call and the next message see it.
//!
//! One file per resource: `conversations.rs`, `messages.rs`, `groups.rs`, `blocks.rs`,
//! `tokens.rs`, `instances.rs`; `auth.rs` says who calls, `extract.rs` reads requests,
//! `error.rs` is the one way to say no. The OpenAPI document is generated from the handlers'
//! annotations, which also give the router its paths, so the two cannot drift.

pub mod auth;
pub mod blocks;
pub mod conversations;
pub mod error;
pub mod extract;
pub mod groups;
pub mod instances;
pub mod messages;
pub mod state;
pub mod tokens;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::domain::UserId;
use crate::Engine;
use error::{ApiError, ApiResult};
use extract::BodyLimit;
pub use state::Api;

/// Longest a request may take before it is answered 503 (a store read that hangs, a
/// broker that does not confirm): longer than a group change's three settle timeouts, so
/// those answer first.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(45);

/// API requests served at once; more wait. Bounds the memory of pages in flight (a page is
/// at most 1000 messages of at most `MAX_MESSAGE_BYTES`) and the store connections reads take.
const CONCURRENT_REQUESTS: usize = 32;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "chat21-engine HTTP API",
        description = "Conversations, history, groups, block lists, device instances and tokens: the chat21-http-server surface. \
            Auth: a user JWT (HS256, JWT_SECRET) in `Authorization` (bare, `Bearer` or `JWT` prefix) or `?jwt=`. \
            Reads answer `{success: true, result}`; errors `{success: false, error}` with a 4xx/5xx status."
    ),
    tags(
        (name = "conversations"), (name = "messages"), (name = "groups"),
        (name = "blocks"), (name = "instances"), (name = "tokens")
    )
)]
struct ApiDoc;

/// The API's routes and its OpenAPI document, from the same annotations.
fn routes() -> (Router<Api>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(conversations::active))
        .routes(routes!(conversations::archived))
        .routes(routes!(conversations::archived_conversations))
        .routes(routes!(conversations::one_active))
        .routes(routes!(conversations::one_archived))
        .routes(routes!(conversations::archive))
        .routes(routes!(messages::history))
        .routes(routes!(messages::send))
        .routes(routes!(groups::create))
        .routes(routes!(groups::get, groups::rename))
        .routes(routes!(groups::join, groups::set_members))
        .routes(routes!(groups::leave))
        .routes(routes!(groups::attributes))
        .routes(routes!(blocks::list))
        .routes(routes!(blocks::block, blocks::unblock))
        .routes(routes!(tokens::mint))
        .routes(routes!(instances::save))
        .split_for_parts()
}

/// The OpenAPI document, as `/api/openapi.json` serves it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().1
}

/// The API router, under `/api`: CORS open (browsers' web widgets call it from their own
/// origin; the token is the credential, never a cookie), bodies bounded, requests timed.
pub fn router(engine: Arc<Engine>) -> Router {
    let limit = engine.config.http.max_body_bytes;
    let (routes, doc) = routes();
    let doc = Arc::new(doc);
    routes
        .route(
            "/api/openapi.json",
            get(move || async move { Json(doc.as_ref().clone()) }),
        )
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .layer(axum::middleware::from_fn(
            move |mut req: Request, next: Next| async move {
                req.extensions_mut().insert(BodyLimit(limit));
                next.run(req).await
            },
        ))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(tower::limit::ConcurrencyLimitLayer::new(CONCURRENT_REQUESTS))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            REQUEST_TIMEOUT,
        ))
        // Outside the timeout, so its 503 gets a JSON body too.
        .layer(axum::middleware::from_fn(json_errors))
        .layer(
            tower_http::cors::CorsLayer::very_permissive()
                .allow_credentials(false)
                .allow_origin(tower_http::cors::Any),
        )
        .with_state(Api::new(engine))
}

/// Errors axum makes itself (405 method not allowed, a timeout's 503) get the API's JSON body.
async fn json_errors(req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    let status = res.status();
    let is_json = res
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if status.is_success() || is_json {
        return res;
    }
    let why = status.canonical_reason().unwrap_or("error").to_lowercase();
    (status, Json(json!({"success": false, "error": why}))).into_response()
}

/// `{"success": true, "result": …}`.
pub fn ok(result: impl serde::Serialize) -> Json<Value> {
    Json(json!({"success": true, "result": result}))
}

/// `{"success": true}`.
pub fn done() -> Json<Value> {
    Json(json!({"success": true}))
}

/// An id from a request (§0), or 400 naming the field.
pub fn parse_id(s: &str, field: &str) -> ApiResult<UserId> {
    UserId::parse(s).map_err(|_| ApiError::bad(format!("{field}: {s:?} is not a valid id")))
}

/// `limit`: absent → `default`; 1..=`max`, or 400.
pub fn page_limit(limit: Option<i64>, default: i64, max: i64) -> ApiResult<i64> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad(format!("limit: 1..{max}"))),
    }
}
