//! chat21-engine: a drop-in, lossless replacement for the Chat21 real-time messaging engine.
//!
//! The flow, one way through (file names follow it):
//! `broker::consumer` (delivery) → `topic` (parse) → `handlers` (pure plan) → `plan`
//! (effects) → `broker::consumer` (publish, confirm, ack). `config`, `jwt`, `metrics`,
//! `http` and `telemetry` are the edges.

pub mod blocks;
pub mod broker;
pub mod cache;
pub mod config;
pub mod events;
pub mod group;
pub mod handlers;
pub mod http;
pub mod jwt;
pub mod message;
pub mod metrics;
pub mod plan;
pub mod policy;
pub mod store;
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
    /// Shared (not cloned) by the futures that publish after a commit.
    pub topics: Arc<Topics>,
    pub chain: policy::Chain,
    pub metrics: Arc<Metrics>,
    pub settings: handlers::Settings,
    /// Group membership, read on the hot path (refreshed by every group update).
    pub groups: Arc<group::GroupCache>,
    /// Block lists, read on the hot path (refreshed by every block command).
    pub blocks: Arc<blocks::BlockCache>,
    pub events: events::Events,
}

impl Engine {
    pub fn new(config: Config) -> Result<Arc<Self>, config::ConfigError> {
        let topics = Topics::from_config(&config).map_err(config::ConfigError)?;
        let topics = Arc::new(topics);
        let metrics = Metrics::new();
        let chain = policy::Chain::new(&config, topics.clone(), metrics.clone());
        Ok(Arc::new(Engine {
            settings: handlers::Settings::from_config(&config),
            groups: Arc::new(group::GroupCache::new(config.group_cache_size, config.cache_ttl)),
            blocks: Arc::new(blocks::BlockCache::new(config.block_cache_size, config.cache_ttl)),
            events: events::Events::default(),
            config,
            topics,
            chain,
            metrics,
        }))
    }

    /// SIGHUP: load the policy file again; a bad file is logged and the rules in force stay.
    pub fn reload_policy(&self) {
        let Some(path) = &self.config.policy_file else {
            tracing::info!("SIGHUP: no POLICY_FILE to reload");
            return;
        };
        match policy::Policy::load(path) {
            Ok(p) => {
                let patterns = p.patterns;
                self.chain.reload_policy(p);
                tracing::info!(patterns, "policy file reloaded");
            }
            Err(e) => tracing::warn!(error = %e, "policy file not reloaded; the rules in force stay"),
        }
    }
}

/// Open the store, retrying with backoff until it answers (or shutdown): the engine does
/// not consume before it can commit what it consumes.
async fn open_store(engine: &Engine, shutdown: &CancellationToken) -> Option<store::Store> {
    use backon::BackoffBuilder;
    let backend = engine.config.store.as_ref()?;
    let mut delays = backon::ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(200))
        .with_max_delay(std::time::Duration::from_secs(10))
        .with_jitter()
        .without_max_times()
        .build();
    engine.metrics.set_store_ok(false);
    loop {
        match store::Store::open(backend).await {
            Ok(s) => {
                tracing::info!(backend = s.backend(), "store ready");
                engine.metrics.set_store_ok(true);
                return Some(s);
            }
            Err(e) => tracing::warn!(error = %e, "store not available; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delays.next().unwrap_or(std::time::Duration::from_secs(10))) => {}
            _ = shutdown.cancelled() => return None,
        }
    }
}

/// Once a minute: forget idle rate-limit buckets.
async fn housekeeping(engine: Arc<Engine>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = every.tick() => engine.chain.housekeeping(),
            _ = shutdown.cancelled() => return,
        }
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
    tokio::spawn(housekeeping(engine.clone(), shutdown.clone()));
    let store = open_store(&engine, &shutdown).await;
    if engine.config.store.is_some() && store.is_none() {
        // Shut down before the store ever answered.
        shutdown.cancel();
    } else {
        let writer = store
            .clone()
            .map(|s| store::writer::Writer::spawn(s, engine.metrics.clone(), engine.config.prefetch as usize));
        broker::supervise(engine.clone(), store.clone(), writer, shutdown.clone()).await;
    }
    if let Some(s) = store {
        s.close().await;
    }
    shutdown.cancel();
    if let Some(h) = http {
        let _ = h.await;
    }
    Ok(())
}
