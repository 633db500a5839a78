//! Minting and verifying the JWTs RabbitMQ's OAuth2 backend accepts (PROTOCOL §15).
//!
//! Scopes are the security boundary: a user token may write only its own outgoing and inbox
//! topics, read only its own inbox, and manage only MQTT session queues. It must never reach
//! the engine's queue or any other non-MQTT queue over AMQP (BROKER.md security finding:
//! Chat21's historical `rabbitmq.configure:*/*/*` scope allowed exactly that).

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::domain::{AppId, UserId};
use crate::topic::{Topics, UserTopics};

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
    #[error("the seed layout serves one app: a token for {0:?} would carry {1:?}'s topics (PATH_PREFIX)")]
    OtherApp(String, String),
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

    /// A user token for `user` in `app`, valid for `ttl`, with the scopes `topics` (the
    /// configured layout) gives a client: its own inputs and its own inbox, nothing else.
    pub fn user_token(&self, topics: &Topics, app: &AppId, user: &UserId, ttl: Duration) -> Result<String, JwtError> {
        self.token_for(topics, app, user, "user", ttl)
    }

    /// An admin token for `user`: a user token (the same broker scopes) whose
    /// `tiledesk_api_roles` is `admin`, which the HTTP API lets act for any user of the app.
    pub fn admin_token(&self, topics: &Topics, app: &AppId, user: &UserId, ttl: Duration) -> Result<String, JwtError> {
        self.token_for(topics, app, user, "admin", ttl)
    }

    fn token_for(
        &self,
        topics: &Topics,
        app: &AppId,
        user: &UserId,
        role: &str,
        ttl: Duration,
    ) -> Result<String, JwtError> {
        if let Some(only) = topics.only_app() {
            if only != app {
                return Err(JwtError::OtherApp(app.to_string(), only.to_string()));
            }
        }
        let scopes = user_scopes(&topics.user_topics(app, user));
        let claims = self.claims(user, app, scopes, role, ttl);
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
        self.verify_claims(token)
    }

    /// Verify a token as [`Minter::verify`] does, reading the claims the caller needs (the
    /// HTTP API reads only a few, so tokens minted elsewhere with the same secret work).
    pub fn verify_claims<T: serde::de::DeserializeOwned>(&self, token: &str) -> Result<T, JwtError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.set_audience(&[RESOURCE_SERVER_ID]);
        Ok(decode::<T>(token, &DecodingKey::from_secret(&self.secret), &v)?.claims)
    }
}

/// Scopes for a user's topics (PROTOCOL §15): `write`/`read` on `amq.topic` with the
/// layout's routing-key patterns, plus the MQTT session queue.
pub fn user_scopes(topics: &UserTopics) -> Vec<String> {
    let on_topic = |perm: &str, pattern: &String| format!("rabbitmq.{perm}:*/amq.topic/{pattern}");
    let mut scopes: Vec<String> = topics.write.iter().map(|p| on_topic("write", p)).collect();
    scopes.extend(topics.read.iter().map(|p| on_topic("read", p)));
    // The MQTT plugin declares, binds and consumes the session's own queue
    // (`mqtt-subscription-<clientid>qos0|1`). Nothing else: no other queue name matches.
    scopes.extend(
        ["configure", "write", "read"]
            .iter()
            .map(|perm| format!("rabbitmq.{perm}:*/mqtt-subscription-*")),
    );
    scopes
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
        let t = m
            .user_token(
                &Topics::chat21("tilechat"),
                &"tilechat".into(),
                &"U1".into(),
                Duration::from_secs(3600),
            )
            .unwrap();
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
    fn scopes_follow_the_layout() {
        let m = Minter::new("0123456789abcdef-secret", "k");
        let (app, user) = (AppId::from("tilechat"), UserId::from("U1"));
        let scopes = |topics: &Topics| {
            let t = m.user_token(topics, &app, &user, Duration::from_secs(60)).unwrap();
            m.verify(&t).unwrap().scope
        };
        assert_eq!(
            scopes(&Topics::chat21("tilechat")),
            [
                "rabbitmq.write:*/amq.topic/apps.tilechat.outgoing.users.U1.*",
                "rabbitmq.write:*/amq.topic/apps.tilechat.users.U1.*",
                "rabbitmq.read:*/amq.topic/apps.tilechat.users.U1.*",
                "rabbitmq.configure:*/mqtt-subscription-*",
                "rabbitmq.write:*/mqtt-subscription-*",
                "rabbitmq.read:*/mqtt-subscription-*",
            ]
        );
        let seed = Topics::seed("tilechat", "/apps/tilechat/users").unwrap();
        assert_eq!(
            scopes(&seed)[..2],
            [
                "rabbitmq.write:*/amq.topic/.apps.tilechat.users.U1.*.messages.outgoing",
                "rabbitmq.read:*/amq.topic/.apps.tilechat.users.U1.*",
            ]
        );
        let other = m.user_token(&seed, &"otherapp".into(), &user, Duration::from_secs(60));
        assert!(matches!(other, Err(JwtError::OtherApp(..))), "{other:?}");
    }
}
