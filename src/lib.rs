//! chat21-engine: a drop-in, lossless replacement for the Chat21 real-time messaging engine.
//!
//! The way an input travels, one way through (the folders follow it):
//! `broker` (an AMQP delivery) → `pipeline` (parse with `topic`, look up groups and block
//! lists, run the pure `handlers`, then the `policy` chain → a decision) → `broker` (publish
//! with confirms) and `store` (group commit) → `pipeline` (after the commit: cache changes
//! released, follow-up publishes; `webhooks` records what happened) → `broker` (ack).
//! `webhooks` then delivers those events from their queues. `domain` holds the typed ids and
//! messages everything speaks; `config`, `jwt`, `metrics`, `http` and `telemetry` are the
//! edges; `lib.rs` assembles the parts from the configuration.

pub mod broker;
pub mod clock;
pub mod config;
pub mod doctor;
pub mod domain;
pub mod handlers;
pub mod http;
pub mod jwt;
pub mod metrics;
pub mod pipeline;
pub mod plan;
pub mod policy;
pub mod retry;
pub mod store;
pub mod telemetry;
pub mod topic;
pub mod webhooks;

use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use config::{Config, ConfigError};
use domain::UserId;
use metrics::Metrics;
use pipeline::Pipeline;
use topic::Topics;

/// What every part of the running engine shares.
pub struct Engine {
    pub config: Config,
    pub pipeline: Pipeline,
    pub metrics: Arc<Metrics>,
    /// Inputs the HTTP API submits through the broker (see `broker::submit`).
    pub submitter: broker::Submitter,
    /// The store, once it answered (the HTTP server starts before, so the ops endpoints
    /// answer while the engine waits for it); the HTTP API reads from it.
    pub store: std::sync::OnceLock<store::Store>,
    /// What to record and where to deliver it, when webhooks are on.
    pub webhooks: Option<webhooks::Webhooks>,
}

impl Engine {
    /// Assemble the engine from its configuration: the parts that are built from settings
    /// (topic grammar, policy chain, caches) are built here, and a setting that cannot be
    /// built from is a configuration error (one line, exit 2).
    pub fn new(config: Config) -> Result<Arc<Self>, ConfigError> {
        if domain::AppId::parse(&config.topics.app_id).is_err() {
            return Err(ConfigError(format!(
                "APP_ID {:?} is not a valid id (1..128 bytes, none of . / * # + or whitespace)",
                config.topics.app_id
            )));
        }
        let topics = Topics::from_config(&config.topics).map_err(|e| ConfigError(format!("PATH_PREFIX: {e}")))?;
        let topics = Arc::new(topics);
        let metrics = Metrics::new();
        let p = &config.policy;
        let trusted_senders = trusted_senders(&p.trusted_senders)?;
        let rules = match &p.policy_file {
            Some(path) => Some(Arc::new(
                policy::Policy::load(path).map_err(|e| ConfigError(e.to_string()))?,
            )),
            None => None,
        };
        let chain = policy::Chain::new(
            policy::ChainSettings {
                rate_limit: policy::Budgets {
                    messages: p.rate_limit,
                    commands: p.command_rate_limit,
                },
                trusted_senders: trusted_senders.clone(),
                policy: rules,
                persistence: config.store.is_some(),
            },
            topics.clone(),
            metrics.clone(),
        );
        let settings = handlers::Settings {
            trusted_senders,
            max_inline_group_members: p.max_inline_group_members,
            presence: config.topics.presence,
            max_message_bytes: p.max_message_bytes,
            max_fanout_bytes: p.max_fanout_bytes,
            checked_receipts: config.store.is_some(),
        };
        let caches = pipeline::CacheSizes {
            groups: p.group_cache_size,
            blocks: p.block_cache_size,
            ttl: p.cache_ttl,
        };
        let durable = config.store.is_some();
        let pipeline = Pipeline::new(topics, chain, settings, caches, metrics.clone(), durable);
        Ok(Arc::new(Engine {
            pipeline,
            metrics,
            submitter: broker::Submitter::default(),
            store: std::sync::OnceLock::new(),
            webhooks: config.webhooks.as_ref().map(webhooks::Webhooks::new),
            config,
        }))
    }

    /// SIGHUP: load the policy file again; a bad file is logged and the rules in force stay.
    pub fn reload_policy(&self) {
        let Some(path) = &self.config.policy.policy_file else {
            tracing::info!("SIGHUP: no POLICY_FILE to reload");
            return;
        };
        match policy::Policy::load(path) {
            Ok(p) => {
                let patterns = p.patterns;
                self.pipeline.chain().reload_policy(p);
                tracing::info!(patterns, "policy file reloaded");
            }
            Err(e) => tracing::warn!(error = %e, "policy file not reloaded; the rules in force stay"),
        }
    }
}

fn trusted_senders(ids: &[String]) -> Result<std::collections::HashSet<UserId>, ConfigError> {
    ids.iter()
        .map(|s| UserId::parse(s).map_err(|_| ConfigError(format!("TRUSTED_SENDERS: {s:?} is not a valid user id"))))
        .collect()
}

/// Open the store, retrying with backoff until it answers (or shutdown): the engine does
/// not consume before it can commit what it consumes.
async fn open_store(engine: &Engine, shutdown: &CancellationToken) -> Option<store::Store> {
    let backend = engine.config.store.as_ref()?;
    engine.metrics.set_store_ok(false);
    let failed = |e: &store::StoreError| tracing::warn!(error = %e, "store not available; retrying");
    let store = retry::until_ok(retry::Backoff::STORE_OPEN, shutdown, failed, || {
        store::Store::open(backend)
    })
    .await?;
    tracing::info!(backend = store.backend().label(), "store ready");
    engine.metrics.set_store_ok(true);
    Some(store)
}

/// Once a minute: forget idle rate-limit buckets.
async fn housekeeping(engine: Arc<Engine>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = every.tick() => engine.pipeline.chain().housekeeping(),
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Run the engine until `shutdown` is cancelled; returns once in-flight inputs are settled
/// and the broker connection is closed.
pub async fn run(engine: Arc<Engine>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let http: Vec<_> = http::bind(&engine)
        .await?
        .into_iter()
        .map(|(listener, app)| tokio::spawn(http::serve(listener, app, shutdown.clone())))
        .collect();
    tokio::spawn(housekeeping(engine.clone(), shutdown.clone()));
    let store = open_store(&engine, &shutdown).await;
    if let Some(shared) = &store {
        // The API reads through a pool of its own, so a burst of history reads never takes
        // the connections the pipeline's lookups and the group commit need.
        let for_api = match shared.with_own_reads() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "no separate store pool for the HTTP API; it shares the engine's");
                shared.clone()
            }
        };
        let _ = engine.store.set(for_api);
    }
    if engine.config.store.is_some() && store.is_none() {
        // Shut down before the store ever answered.
        shutdown.cancel();
    } else {
        let writer = store
            .clone()
            .map(|s| store::writer::Writer::spawn(s, engine.metrics.clone(), engine.config.broker.prefetch as usize));
        broker::supervise(engine.clone(), store.clone(), writer, shutdown.clone()).await;
    }
    if let Some(s) = store {
        s.close().await;
    }
    if let Some(s) = engine.store.get() {
        s.close().await;
    }
    shutdown.cancel();
    for h in http {
        let _ = h.await;
    }
    Ok(())
}
