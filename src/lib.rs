//! chat21-engine: a drop-in, lossless replacement for the Chat21 real-time messaging engine.
//!
//! The flow, one way through (file names follow it):
//! `broker::consumer` (delivery) → `topic` (parse) → `handlers` (pure plan) → `plan`
//! (effects) → `broker::consumer` (publish, confirm, ack). `config`, `jwt`, `metrics`,
//! `http` and `telemetry` are the edges.

pub mod broker;
pub mod config;
pub mod handlers;
pub mod http;
pub mod jwt;
pub mod message;
pub mod metrics;
pub mod plan;
pub mod telemetry;
pub mod topic;

use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use config::Config;
use metrics::Metrics;
use topic::Topics;

/// What every part of the running engine shares.
pub struct Engine {
    pub config: Config,
    pub topics: Topics,
    pub metrics: Arc<Metrics>,
}

impl Engine {
    pub fn new(config: Config) -> Result<Arc<Self>, config::ConfigError> {
        let topics = Topics::from_config(&config).map_err(config::ConfigError)?;
        Ok(Arc::new(Engine {
            config,
            topics,
            metrics: Metrics::new(),
        }))
    }
}

/// Run the engine until `shutdown` is cancelled; returns once in-flight inputs are settled
/// and the broker connection is closed.
pub async fn run(engine: Arc<Engine>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let http = if engine.config.http_port != 0 {
        let listener = tokio::net::TcpListener::bind((engine.config.http_host.as_str(), engine.config.http_port))
            .await
            .map_err(|e| anyhow::anyhow!("HTTP_PORT {}: {e}", engine.config.http_port))?;
        tracing::info!(addr = %listener.local_addr()?, "HTTP ops endpoints listening");
        Some(tokio::spawn(http::serve(listener, engine.clone(), shutdown.clone())))
    } else {
        None
    };
    broker::supervise(engine.clone(), shutdown.clone()).await;
    shutdown.cancel();
    if let Some(h) = http {
        let _ = h.await;
    }
    Ok(())
}
