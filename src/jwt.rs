//! Minting and verifying the JWTs RabbitMQ's OAuth2 backend accepts (PROTOCOL §15).
//!
//! Scopes are the security boundary: a user token may write only its own outgoing and inbox
//! topics, read only its own inbox, and manage only MQTT session queues. It must never reach
//! the engine's queue or any other non-MQTT queue over AMQP (BROKER.md security finding:
//! Chat21's historical `rabbitmq.configure:*/*/*` scope allowed exactly that).

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The OAuth2 resource server id the broker is configured with.
pub const RESOURCE_SERVER_ID: &str = "rabbitmq";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    pub sub: String,
    pub user_id: String,
    pub app_id: String,
    pub client_id: String,
    pub cid: String,
    pub azp: String,
    pub aud: Vec<String>,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
    pub tiledesk_api_roles: String,
    pub scope: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("JWT_SECRET is not set")]
    NoSecret,
    #[error("invalid user id {0:?}")]
    InvalidUser(String),
    #[error("token: {0}")]
    Token(#[from] jsonwebtoken::errors::Error),
}

/// Signs tokens with the shared HS256 secret.
#[derive(Clone)]
pub struct Minter {
    secret: Vec<u8>,
    kid: String,
}

impl Minter {
    pub fn new(secret: &str, kid: &str) -> Self {
        Minter {
            secret: secret.as_bytes().to_vec(),
            kid: kid.to_owned(),
        }
    }

    pub fn from_config(cfg: &crate::config::Config) -> Result<Self, JwtError> {
        let secret = cfg.jwt.secret.as_ref().ok_or(JwtError::NoSecret)?;
        Ok(Self::new(secret.expose(), &cfg.jwt.kid))
    }

    /// A user token for `user` in `app`, valid for `ttl`.
    pub fn user_token(&self, app: &str, user: &str, ttl: Duration) -> Result<String, JwtError> {
        if !crate::domain::is_valid_id(user) {
            return Err(JwtError::InvalidUser(user.to_owned()));
        }
        let claims = self.claims(user, app, user_scopes(app, user), "user", ttl);
        self.sign(&claims)
    }

    /// The engine's own token, used when no broker password is configured.
    pub fn service_token(&self, app: &str, queue: &str, ttl: Duration) -> Result<String, JwtError> {
        let claims = self.claims("chat21-engine", app, service_scopes(queue), "admin", ttl);
        self.sign(&claims)
    }

    fn claims(&self, user: &str, app: &str, scope: Vec<String>, role: &str, ttl: Duration) -> Claims {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Claims {
            sub: user.into(),
            user_id: user.into(),
            app_id: app.into(),
            client_id: user.into(),
            cid: user.into(),
            azp: user.into(),
            aud: vec![RESOURCE_SERVER_ID.into(), user.into()],
            iat: now,
            exp: now + ttl.as_secs(),
            jti: uuid::Uuid::new_v4().to_string(),
            tiledesk_api_roles: role.into(),
            scope,
        }
    }

    fn sign(&self, claims: &Claims) -> Result<String, JwtError> {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.kid.clone());
        Ok(encode(&header, claims, &EncodingKey::from_secret(&self.secret))?)
    }

    /// Verify a token (HS256 only, expiry checked, audience must include the resource server).
    pub fn verify(&self, token: &str) -> Result<Claims, JwtError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.set_audience(&[RESOURCE_SERVER_ID]);
        Ok(decode::<Claims>(token, &DecodingKey::from_secret(&self.secret), &v)?.claims)
    }
}

/// Exactly what user `user` may do (PROTOCOL §15).
pub fn user_scopes(app: &str, user: &str) -> Vec<String> {
    vec![
        // Publish: own outgoing messages, and own inbox commands (receipts, presence, typing…).
        format!("rabbitmq.write:*/amq.topic/apps.{app}.outgoing.users.{user}.*"),
        format!("rabbitmq.write:*/amq.topic/apps.{app}.users.{user}.*"),
        // Subscribe: own inbox only (topic authorisation on the binding key).
        format!("rabbitmq.read:*/amq.topic/apps.{app}.users.{user}.*"),
        // The MQTT plugin declares, binds and consumes the session's own queue
        // (`mqtt-subscription-<clientid>qos0|1`). Nothing else: no other queue name matches.
        "rabbitmq.configure:*/mqtt-subscription-*".into(),
        "rabbitmq.write:*/mqtt-subscription-*".into(),
        "rabbitmq.read:*/mqtt-subscription-*".into(),
    ]
}

/// What the engine needs: its own queue, bindings from `amq.topic`, publishing to it.
pub fn service_scopes(queue: &str) -> Vec<String> {
    vec![
        format!("rabbitmq.configure:*/{queue}*"),
        format!("rabbitmq.write:*/{queue}*"),
        format!("rabbitmq.read:*/{queue}*"),
        "rabbitmq.read:*/amq.topic/*".into(),
        "rabbitmq.write:*/amq.topic/*".into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_token_round_trip() {
        let m = Minter::new("0123456789abcdef-secret", "tiledesk-key");
        let t = m.user_token("tilechat", "U1", Duration::from_secs(3600)).unwrap();
        let header = jsonwebtoken::decode_header(&t).unwrap();
        assert_eq!(header.kid.as_deref(), Some("tiledesk-key"));
        assert_eq!(header.alg, Algorithm::HS256);
        let c = m.verify(&t).unwrap();
        assert_eq!(c.sub, "U1");
        assert_eq!(c.aud, vec!["rabbitmq", "U1"]);
        assert_eq!(c.exp - c.iat, 3600);
        assert_eq!(c.tiledesk_api_roles, "user");
        assert!(
            c.scope.iter().all(|s| !s.contains("*/*")),
            "no vhost-wide scopes: {:?}",
            c.scope
        );
        assert!(Minter::new("another-secret-0123456", "k").verify(&t).is_err());
    }

    #[test]
    fn invalid_user_ids_get_no_token() {
        let m = Minter::new("0123456789abcdef-secret", "k");
        assert!(m.user_token("tilechat", "a.b", Duration::from_secs(60)).is_err());
        assert!(m.user_token("tilechat", "*", Duration::from_secs(60)).is_err());
    }
}
