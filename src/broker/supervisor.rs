//! Keeps the engine connected: connect with exponential, capped, jittered backoff, run a
//! consuming session, and when the connection dies start over. Forever, until shutdown.

use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use super::consumer::{self, SessionEnd};
use super::ownership::Ownership;
use crate::config::Database;
use crate::retry::Backoff;
use crate::store::writer::Writer;
use crate::store::Store;
use crate::Engine;

/// A session that lasted this long was healthy: the next reconnect starts from the shortest
/// delay again. A shorter one keeps the backoff growing — a connection that succeeds and then
/// fails at once (a poison input that kills the session, a broker that accepts and drops)
/// must not reconnect at full speed forever.
const HEALTHY_SESSION: std::time::Duration = std::time::Duration::from_secs(30);

pub async fn supervise(engine: Arc<Engine>, store: Option<Store>, writer: Option<Writer>, shutdown: CancellationToken) {
    let mut backoff = Backoff::BROKER.delays();
    let mut connected_before = false;
    // Engines that share a PostgreSQL store share the partitions out (`ownership.rs`); with
    // SQLite, or none, an engine is alone with its store and consumes them all.
    let ownership = match &engine.config.store {
        Some(Database::Postgres { url }) => Some(Ownership::spawn(
            url.expose().to_owned(),
            engine.config.broker.queue_name.clone(),
            usize::from(engine.config.broker.partitions),
            engine.metrics.clone(),
            shutdown.clone(),
        )),
        _ => None,
    };
    while !shutdown.is_cancelled() {
        match super::connect(&engine.config, "chat21-engine").await {
            Ok(conn) => {
                if connected_before {
                    engine.metrics.reconnected();
                }
                connected_before = true;
                tracing::info!("connected to broker");
                let started = std::time::Instant::now();
                let end = consumer::run_session(
                    &engine,
                    store.as_ref(),
                    writer.as_ref(),
                    ownership.as_ref(),
                    &conn,
                    &shutdown,
                )
                .await;
                engine.metrics.set_broker_connected(false);
                if started.elapsed() >= HEALTHY_SESSION {
                    backoff = Backoff::BROKER.delays();
                }
                match end {
                    Ok(SessionEnd::Shutdown) => {
                        let _ = conn.close(200, "shutdown".into()).await;
                        tracing::info!("broker connection closed");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "broker session ended; reconnecting");
                        let _ = conn.close(320, "reconnecting".into()).await;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "broker connection failed"),
        }
        let delay = backoff.next().unwrap_or(Backoff::BROKER.max);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}
