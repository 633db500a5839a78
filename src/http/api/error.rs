//! The one way the API says no: `{"success":false,"error":"…"}` with a 4xx/5xx status
//! (PROTOCOL §14). Every refusal is a value of [`ApiError`]; nothing else builds an error body.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::broker::SubmitError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed (JSON, types, ids, parameters).
    #[error("{0}")]
    BadRequest(String),
    /// 401: no token, or one that is forged, expired, for another app or another algorithm.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: a valid token asking for someone else's data.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such group, app or route.
    #[error("{0}")]
    NotFound(String),
    /// 409: the request conflicts with what is stored (a group id that exists).
    #[error("{0}")]
    Conflict(String),
    /// 413: a body over `HTTP_MAX_BODY_BYTES`.
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    /// 422: the engine refused the input the request became, with its reason code (§8).
    #[error("refused: {0}")]
    Refused(String),
    /// 429: the caller is over its rate limit.
    #[error("rate limited")]
    RateLimited,
    /// 503: the store or the broker is not answering (retry later), or the engine runs
    /// without what the endpoint needs.
    #[error("{0}")]
    Unavailable(String),
    /// 504: the input is queued but was not settled in time.
    #[error("{0}")]
    NotSettled(String),
    /// 500: the engine's own fault (a corrupt row, a change the store refused for good):
    /// retrying will not help; the log says more.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Refused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotSettled(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn bad(why: impl Into<String>) -> ApiError {
        ApiError::BadRequest(why.into())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        // The detail goes to the log, not to the caller (it may name tables and hosts).
        if e.is_transient() {
            tracing::warn!(error = %e, "HTTP API: store read failed");
            ApiError::Unavailable("the store is not available; retry later".into())
        } else {
            tracing::error!(error = %e, "HTTP API: store read failed for good");
            ApiError::Internal("the store holds data the engine cannot read".into())
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> ApiError {
        match e {
            SubmitError::NotSettled(_) => ApiError::NotSettled(e.to_string()),
            SubmitError::KeyTooLong => ApiError::bad(e.to_string()),
            e => {
                tracing::warn!(error = %e, "HTTP API: input not submitted");
                ApiError::Unavailable(format!("{e}; retry later"))
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"success": false, "error": self.to_string()});
        (self.status(), Json(body)).into_response()
    }
}

/// What an API handler returns.
pub type ApiResult<T> = Result<T, ApiError>;
