//! Webhooks (PROTOCOL §13): every event, durable, retried, signed.
//!
//! The way an event travels:
//!
//! ```text
//! input committed → event (pure, `event.rs`) → outbox: one confirmed publish per endpoint
//!   queue, before the input is acked (`outbox.rs`) → endpoint queue (quorum, one per
//!   endpoint, `endpoint.rs`) → dispatcher: lanes, POST, retries (`dispatch.rs`)
//!   → delivered, or after WEBHOOK_RETRY_FOR the endpoint's failed queue (`failed.rs`)
//! ```
//!
//! The broker holds the backlog, so an endpoint that is down for hours costs the engine no
//! memory, and an engine that is killed loses nothing: the input that caused an event is acked
//! only once the event is confirmed in every endpoint's queue, and a batch of events is acked
//! only once each of its events is delivered or kept as failed.

mod dispatch;
mod endpoint;
mod event;
pub mod failed;
mod outbox;
mod sign;

pub use dispatch::{client, Settings as DispatchSettings};
pub use endpoint::{declare, endpoints, Endpoint};
pub use event::{Event, EventType, Recorder};
pub use outbox::{Outbox, Slot};
pub use sign::Signer;

use lapin::Connection;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::config::WebhookConfig;
use crate::metrics::Metrics;
use crate::retry::Backoff;

/// Webhooks as configured: what to record, where to, how to deliver.
pub struct Webhooks {
    pub recorder: Recorder,
    pub endpoints: Vec<Endpoint>,
    settings: Arc<DispatchSettings>,
    client: reqwest::Client,
    /// The delivery thread's runtime, started with the first session.
    delivery: std::sync::OnceLock<tokio::runtime::Handle>,
}

impl Webhooks {
    pub fn new(cfg: &WebhookConfig) -> Webhooks {
        Webhooks {
            recorder: Recorder::new(&cfg.events),
            endpoints: endpoints(&cfg.endpoints),
            settings: Arc::new(DispatchSettings {
                timeout: cfg.timeout,
                retry_for: cfg.retry_for,
                backoff: Backoff::new(std::time::Duration::from_secs(1), cfg.retry_max_delay),
                concurrency: cfg.concurrency,
                hold_limit: cfg.hold_limit,
                signer: cfg.secret.as_ref().map(|s| Signer::new(s.expose())),
            }),
            client: client(),
            delivery: std::sync::OnceLock::new(),
        }
    }

    /// Deliver every endpoint's queue on `conn` until `stop`; a dispatcher whose channel
    /// fails starts again on a new one while the connection lives.
    pub fn spawn_dispatchers(
        &self,
        conn: &Arc<Connection>,
        base: &str,
        metrics: &Arc<Metrics>,
        stop: &CancellationToken,
    ) {
        let runtime = self.delivery.get_or_init(delivery_runtime);
        for endpoint in &self.endpoints {
            let (conn, base, endpoint) = (conn.clone(), base.to_owned(), endpoint.clone());
            let (settings, client, metrics, stop) = (
                self.settings.clone(),
                self.client.clone(),
                metrics.clone(),
                stop.clone(),
            );
            runtime.spawn(async move {
                let mut delays = Backoff::BROKER.delays();
                while !stop.is_cancelled() && conn.status().connected() {
                    let run = dispatch::run(
                        &conn,
                        &base,
                        endpoint.clone(),
                        settings.clone(),
                        client.clone(),
                        metrics.clone(),
                        stop.clone(),
                    );
                    match run.await {
                        Ok(()) if stop.is_cancelled() => return,
                        Ok(()) => {
                            tracing::warn!(endpoint = %endpoint.shown(), "the broker cancelled the webhook consumer; starting again")
                        }
                        Err(e) => {
                            tracing::warn!(endpoint = %endpoint.shown(), error = %e, "webhook dispatcher stopped; starting again")
                        }
                    }
                    let delay = delays.next().unwrap_or(Backoff::BROKER.max);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.cancelled() => return,
                    }
                }
            });
        }
    }
}

/// The properties of everything the webhook queues hold: persistent JSON.
fn persistent_json() -> lapin::BasicProperties {
    lapin::BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
}

/// Publish `body` on `amq.topic` under `key` and wait for the broker: true once confirmed
/// (`channel` is in confirm mode).
async fn publish_confirmed(channel: &lapin::Channel, key: &str, body: &[u8], props: lapin::BasicProperties) -> bool {
    let sent = channel
        .basic_publish(
            crate::broker::EXCHANGE.into(),
            key.into(),
            Default::default(),
            body,
            props,
        )
        .await;
    match sent {
        Ok(confirm) => matches!(confirm.await, Ok(lapin::Confirmation::Ack(_))),
        Err(_) => false,
    }
}

/// Webhook delivery runs on a thread of its own (a current-thread runtime): POSTs, their
/// retries and timers never wait in the queues of the runtime that carries the message flow,
/// and never hold its workers. (A lower CPU priority for this thread was measured, and did
/// not help the message flow on a machine it shares with the broker: README, Benchmark.)
fn delivery_runtime() -> tokio::runtime::Handle {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("webhooks".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime builds");
            let _ = tx.send(runtime.handle().clone());
            runtime.block_on(std::future::pending::<()>());
        })
        .expect("the webhook delivery thread starts");
    rx.recv().expect("the webhook delivery thread sends its runtime")
}
