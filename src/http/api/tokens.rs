//! Minting user tokens for an admin (what Tiledesk's `createCustomToken` does for Chat21):
//! the same token as `chat21-engine token`, scoped to the user's own topics.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Token;
use super::error::{ApiError, ApiResult};
use super::extract::{Body, Ids};
use super::parse_id;
use super::state::Api;

#[derive(Deserialize)]
pub struct AppPath {
    app: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct TokenRequest {
    user_id: String,
}

/// A user token for `user_id` (admin tokens only). Trusted senders' tokens (`system`) are
/// not minted here: they may post into any group, so only the command line mints them.
#[utoipa::path(post, path = "/api/{app}/tokens", tag = "tokens", params(("app" = String, Path)), request_body = TokenRequest,
    responses((status = 200, description = "`{success: true, token, user_id}`"), (status = 403, description = "not an admin, or a trusted sender's id")))]
pub async fn mint(
    State(api): State<Api>,
    token: Token,
    Ids(path): Ids<AppPath>,
    Body(r): Body<TokenRequest>,
) -> ApiResult<Json<Value>> {
    let app = api.app(&path.app)?;
    let caller = token.caller(&app)?;
    caller.require_admin()?;
    let user = parse_id(&r.user_id, "user_id")?;
    if api
        .engine
        .config
        .policy
        .trusted_senders
        .iter()
        .any(|t| t == user.as_str())
    {
        return Err(ApiError::Forbidden(format!(
            "{user} is a trusted sender; mint its token with the command line"
        )));
    }
    let minted = api
        .minter()?
        .user_token(api.topics(), &app, &user, api.engine.config.jwt.ttl)
        .map_err(|e| ApiError::bad(e.to_string()))?;
    Ok(Json(json!({"success": true, "token": minted, "user_id": user})))
}
