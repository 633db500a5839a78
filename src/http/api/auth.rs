//! Who is calling (PROTOCOL §14): a user JWT in `Authorization: <jwt>`, `Bearer <jwt>` (or
//! `JWT <jwt>`, as Tiledesk spells it), or `?jwt=`; HS256 with `JWT_SECRET` and nothing else
//! (`alg:none`, RS256 or a forged signature are 401), not expired, audience `rabbitmq` (the
//! tokens the broker accepts are the tokens the API accepts), for the app in the path.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::Deserialize;

use super::error::ApiError;
use super::state::Api;
use crate::domain::{AppId, UserId};

/// A verified token, not yet matched to an app.
pub struct Token(Claims);

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    app_id: Option<String>,
    #[serde(default)]
    tiledesk_api_roles: Roles,
}

/// `tiledesk_api_roles`: one role or a list of them.
#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
enum Roles {
    One(String),
    Many(Vec<String>),
    #[default]
    None,
}

impl Roles {
    fn admin(&self) -> bool {
        match self {
            Roles::One(r) => r == "admin",
            Roles::Many(rs) => rs.iter().any(|r| r == "admin"),
            Roles::None => false,
        }
    }
}

/// The caller of a request, in the path's app.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: UserId,
    pub app: AppId,
    pub admin: bool,
}

impl Caller {
    /// `{me}` in a path must be the caller, unless the caller is an admin (fix of the
    /// original's open user-id check).
    pub fn acting_as(&self, me: &UserId) -> Result<(), ApiError> {
        if self.admin || &self.user == me {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this token is {}'s, not {me}'s",
                self.user
            )))
        }
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.admin {
            Ok(())
        } else {
            Err(ApiError::Forbidden("an admin token is required".into()))
        }
    }
}

impl Token {
    /// The caller, if this token is for `app` and names a valid user.
    pub fn caller(self, app: &AppId) -> Result<Caller, ApiError> {
        let Claims {
            sub,
            app_id,
            tiledesk_api_roles,
        } = self.0;
        if app_id.as_deref() != Some(app.as_str()) {
            return Err(ApiError::Unauthorized(format!("the token is not for app {app}")));
        }
        let user =
            UserId::parse(&sub).map_err(|_| ApiError::Unauthorized("the token's subject is not a valid id".into()))?;
        Ok(Caller {
            user,
            app: app.clone(),
            admin: tiledesk_api_roles.admin(),
        })
    }
}

impl FromRequestParts<Api> for Token {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, Self::Rejection> {
        let raw =
            bearer(parts).ok_or_else(|| ApiError::Unauthorized("no token (Authorization header or ?jwt=)".into()))?;
        let minter = api.minter()?;
        minter
            .verify_claims::<Claims>(&raw)
            .map(Token)
            .map_err(|e| ApiError::Unauthorized(format!("invalid token: {}", short(&e.to_string()))))
    }
}

/// The token of a request: the `Authorization` header (bare, `Bearer `, or `JWT `), else the
/// `jwt` (or `JWT`, `token`) query parameter.
fn bearer(parts: &Parts) -> Option<String> {
    if let Some(h) = parts.headers.get(axum::http::header::AUTHORIZATION) {
        let words: Vec<&str> = h.to_str().ok()?.split_whitespace().collect();
        let scheme = |w: &str| w.eq_ignore_ascii_case("bearer") || w.eq_ignore_ascii_case("jwt");
        return match words.as_slice() {
            [token] if !scheme(token) => Some((*token).to_owned()),
            [s, token] if scheme(s) => Some((*token).to_owned()),
            _ => None,
        };
    }
    // `?jwt=` (PROTOCOL §14), and the spellings chat21-http-server also read.
    let query = parts.uri.query()?;
    ["jwt", "JWT", "token"].iter().find_map(|name| url_query(query, name))
}

/// One query parameter, percent-decoded.
fn url_query(query: &str, name: &str) -> Option<String> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

fn short(s: &str) -> String {
    s.chars().take(120).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(auth: Option<&str>, uri: &str) -> Parts {
        let mut b = axum::http::Request::builder().uri(uri);
        if let Some(a) = auth {
            b = b.header("Authorization", a);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn token_places() {
        assert_eq!(bearer(&parts(Some("abc"), "/")).as_deref(), Some("abc"));
        assert_eq!(bearer(&parts(Some("Bearer abc"), "/")).as_deref(), Some("abc"));
        assert_eq!(bearer(&parts(Some("JWT abc"), "/")).as_deref(), Some("abc"));
        assert_eq!(bearer(&parts(None, "/x?a=1&jwt=a%2Eb")).as_deref(), Some("a.b"));
        assert_eq!(bearer(&parts(Some("Bearer "), "/x?jwt=q")), None, "the header wins");
        assert_eq!(bearer(&parts(None, "/x?jwt=")), None);
        assert_eq!(bearer(&parts(None, "/x")), None);
    }

    #[test]
    fn roles() {
        let c = |v: serde_json::Value| serde_json::from_value::<Claims>(v).unwrap().tiledesk_api_roles.admin();
        assert!(c(serde_json::json!({"sub":"u","tiledesk_api_roles":"admin"})));
        assert!(c(serde_json::json!({"sub":"u","tiledesk_api_roles":["user","admin"]})));
        assert!(!c(serde_json::json!({"sub":"u","tiledesk_api_roles":"user"})));
        assert!(!c(serde_json::json!({"sub":"u"})));
    }
}
