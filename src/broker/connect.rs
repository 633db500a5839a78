//! Opening an AMQP connection with the configured credentials.

use lapin::{Connection, ConnectionProperties};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{BrokerAuth, Config};
use crate::jwt::Minter;

/// Lifetime of the engine's own service token (when it logs in with one).
pub const SERVICE_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// Where the next connection attempt starts among a cluster's nodes: each attempt begins one
/// node further, so an engine whose node went down connects to the next one, and engines that
/// start together spread over the nodes.
static NEXT_NODE: AtomicUsize = AtomicUsize::new(0);

/// Connect to the first node that accepts, trying each configured node once, starting after
/// the one tried first last time; the last node's error when none does.
pub async fn connect(cfg: &Config, name: &str) -> Result<Arc<Connection>, super::BrokerError> {
    let token = match cfg.broker.auth {
        BrokerAuth::ServiceToken => Some(mint_service_token(cfg)?),
        _ => None,
    };
    let uris = cfg.amqp_uris(token.as_deref());
    let start = NEXT_NODE.fetch_add(1, Ordering::Relaxed);
    let mut tries = (0..uris.len()).map(|i| (start + i) % uris.len()).peekable();
    let conn = loop {
        let node = tries.next().expect("amqp_uris is never empty");
        let props = ConnectionProperties::default().with_connection_name(name.into());
        match Connection::connect(&uris[node], props).await {
            Ok(c) => break Arc::new(c),
            Err(e) if tries.peek().is_none() => return Err(e.into()),
            Err(e) => {
                tracing::debug!(node = node + 1, error = %e, "broker node refused the connection; trying the next")
            }
        }
    };
    if token.is_some() {
        spawn_token_refresh(conn.clone(), cfg.clone());
    }
    Ok(conn)
}

/// Never an empty password: a token that cannot be signed is an error, reported as one.
fn mint_service_token(cfg: &Config) -> Result<String, crate::jwt::JwtError> {
    Minter::from_config(cfg)?.service_token(&cfg.topics.app_id, &cfg.broker.queue_name, SERVICE_TOKEN_TTL)
}

/// Replace the token before it expires (`connection.update-secret`): RabbitMQ 4.2.6+ closes
/// a connection whose token expired, older versions fail its next operation.
fn spawn_token_refresh(conn: Arc<Connection>, cfg: Config) {
    // Holds only a weak reference: the task ends with the connection.
    let conn = Arc::downgrade(&conn);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(SERVICE_TOKEN_TTL * 3 / 4).await;
            let Some(conn) = conn.upgrade() else { return };
            if !conn.status().connected() {
                return;
            }
            let token = match mint_service_token(&cfg) {
                Ok(token) => token,
                Err(e) => {
                    tracing::error!(error = %e, "service token not refreshed; the connection will be re-established");
                    return;
                }
            };
            if let Err(e) = conn.update_secret(token.as_str().into(), "token refresh".into()).await {
                tracing::warn!(error = %e, "service token refresh failed; the connection will be re-established");
                return;
            }
            tracing::debug!("service token refreshed");
        }
    });
}
