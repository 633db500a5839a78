//! The engine's side: an input's events are in the broker, confirmed, before the input is
//! acked — so a crash at any moment loses none (the input comes back and records them again,
//! under the same ids) and none is recorded for a change that was not committed (events are
//! handed over only after the commit).
//!
//! Each input reserves a [`Slot`] when it is decided, in input order, and fills it once its
//! effects are committed. One task publishes the slots in that order, so the events of one
//! conversation are queued in the order of its inputs even when their commits finish together.
//! Like the store's group commit, every slot that is filled while the previous batch awaits
//! its confirm goes out in the next batch: one publish per endpoint for many inputs at high
//! rates, one confirm of latency at low ones.

use lapin::options::BasicPublishOptions;
use lapin::{Channel, Confirmation};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

use super::{Endpoint, Event};
use crate::broker::EXCHANGE;
use crate::metrics::Metrics;

/// Most events, and bytes, in one batch (one AMQP message per endpoint).
const MAX_BATCH_EVENTS: usize = 512;
const MAX_BATCH_BYTES: usize = 1 << 20;

struct Queued {
    events: oneshot::Receiver<Vec<Event>>,
    done: oneshot::Sender<bool>,
}

/// An input's place in the order of events.
pub struct Slot {
    fill: oneshot::Sender<Vec<Event>>,
    done: oneshot::Receiver<bool>,
}

impl Slot {
    /// Queue `events` (after every earlier slot's) and wait for the broker to confirm them:
    /// true once they are safe. An empty list needs nothing and waits for nothing.
    pub async fn publish(self, events: Vec<Event>) -> bool {
        if events.is_empty() {
            return true;
        }
        if self.fill.send(events).is_err() {
            return false;
        }
        self.done.await.unwrap_or(false)
    }
}

/// A session's outbox; dropped with the session (its task ends then).
pub struct Outbox {
    tx: mpsc::UnboundedSender<Queued>,
    /// Its channel failed: nothing it holds can be published any more.
    broken: Arc<AtomicBool>,
}

impl Outbox {
    /// Publish on `channel` (confirm mode, the outbox's own) to every endpoint's queue.
    pub fn spawn(channel: Channel, base: &str, endpoints: &[Endpoint], metrics: Arc<Metrics>) -> Outbox {
        let (tx, rx) = mpsc::unbounded_channel();
        let keys: Vec<String> = endpoints.iter().map(|e| e.queue(base)).collect();
        let broken = Arc::new(AtomicBool::new(false));
        tokio::spawn(run(rx, channel, keys, metrics, broken.clone()));
        Outbox { tx, broken }
    }

    /// Its channel is gone (the broker closed it): the session must start over, or every
    /// input with events would be retried forever on a dead channel.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    /// The next slot in input order.
    pub fn reserve(&self) -> Slot {
        let (fill, events) = oneshot::channel();
        let (done_tx, done) = oneshot::channel();
        // A closed outbox (its session ended) leaves the slot unanswered: `publish` is false,
        // and the input is not acked.
        let _ = self.tx.send(Queued { events, done: done_tx });
        Slot { fill, done }
    }
}

async fn run(
    mut rx: mpsc::UnboundedReceiver<Queued>,
    channel: Channel,
    keys: Vec<String>,
    metrics: Arc<Metrics>,
    broken: Arc<AtomicBool>,
) {
    let mut next: Option<Queued> = None;
    loop {
        let first = match next.take() {
            Some(q) => q,
            None => match rx.recv().await {
                Some(q) => q,
                None => return,
            },
        };
        // The oldest slot first: later ones wait for it (or for its input to be given up).
        let Ok(events) = first.events.await else { continue };
        let mut batch = events;
        let mut bytes: usize = batch.iter().map(|e| e.body.get().len()).sum();
        let mut done = vec![first.done];
        while batch.len() < MAX_BATCH_EVENTS && bytes < MAX_BATCH_BYTES {
            let Ok(mut q) = rx.try_recv() else { break };
            match q.events.try_recv() {
                Ok(events) => {
                    bytes += events.iter().map(|e| e.body.get().len()).sum::<usize>();
                    batch.extend(events);
                    done.push(q.done);
                }
                // Not filled yet: it heads the next batch.
                Err(oneshot::error::TryRecvError::Empty) => {
                    next = Some(q);
                    break;
                }
                // Given up (shutdown, or nothing to record): skipped.
                Err(oneshot::error::TryRecvError::Closed) => {}
            }
        }
        let ok = publish(&channel, &keys, &batch).await;
        if !channel.status().connected() {
            broken.store(true, Ordering::Relaxed);
        }
        if ok {
            metrics.webhook_events_queued(batch.len() as u64);
        } else {
            tracing::warn!(
                events = batch.len(),
                "webhook events not confirmed by the broker; their inputs are retried"
            );
        }
        for d in done {
            let _ = d.send(ok);
        }
    }
}

/// One persistent message per endpoint queue, all confirmed.
async fn publish(channel: &Channel, keys: &[String], batch: &[Event]) -> bool {
    let Ok(body) = serde_json::to_vec(batch) else {
        return false;
    };
    let mut confirms = Vec::with_capacity(keys.len());
    for key in keys {
        let props = super::persistent_json();
        match channel
            .basic_publish(
                EXCHANGE.into(),
                key.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await
        {
            Ok(c) => confirms.push(c),
            Err(_) => return false,
        }
    }
    for c in confirms {
        if !matches!(c.await, Ok(Confirmation::Ack(_))) {
            return false;
        }
    }
    true
}
