//! Device instances (`saveInstance` of the Chat21 clients): kept per user, for push
//! notifications.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::auth::Token;
use super::error::{ApiError, ApiResult};
use super::extract::{Body, Ids};
use super::state::Api;
use super::{done, parse_id};

/// Longest instance id: FCM registration tokens (what the Ionic app sends) run to ~200 bytes.
const MAX_INSTANCE_ID_BYTES: usize = 512;

#[derive(Deserialize)]
pub struct InstancePath {
    app: String,
    me: String,
    instance: String,
}

/// Register a device of the user (`{device_model, language, platform, platform_version, …}`).
#[utoipa::path(post, path = "/api/{app}/{me}/instances/{instance}", tag = "instances",
    params(("app" = String, Path), ("me" = String, Path), ("instance" = String, Path)),
    request_body(content = Object, description = "device info"),
    responses((status = 200, description = "`{success: true}`")))]
pub async fn save(
    State(api): State<Api>,
    token: Token,
    Ids(path): Ids<InstancePath>,
    Body(info): Body<Map<String, Value>>,
) -> ApiResult<Json<Value>> {
    let app = api.app(&path.app)?;
    let caller = token.caller(&app)?;
    let me = parse_id(&path.me, "me")?;
    caller.acting_as(&me)?;
    let id = path.instance;
    let printable = id.chars().all(|c| c.is_ascii_graphic() && c != '/');
    if id.is_empty() || id.len() > MAX_INSTANCE_ID_BYTES || !printable {
        return Err(ApiError::bad(format!(
            "instance id: 1..{MAX_INSTANCE_ID_BYTES} printable ASCII characters, no /"
        )));
    }
    api.store()?
        .save_instance(&app, &me, &id, &info, crate::clock::now_ms())
        .await?;
    Ok(done())
}
