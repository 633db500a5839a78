//! The delivering side: one consumer per endpoint queue, POSTing its events.
//!
//! - **Order**: events of one lane (a conversation, a user's presence) go one at a time, in
//!   queue order, and a lane waits while its head is retried; different lanes go concurrently,
//!   up to `WEBHOOK_CONCURRENCY` POSTs in flight.
//! - **Retries**: a connection error, a timeout (`WEBHOOK_TIMEOUT`) or a non-2xx answer is
//!   tried again after the engine's one retry schedule (1 s doubling to
//!   `WEBHOOK_RETRY_MAX_DELAY`, jittered), until `WEBHOOK_RETRY_FOR` has passed since the
//!   event was made; then it is moved to the endpoint's failed queue, confirmed, and counted.
//! - **Bounded**: the consumer takes at most [`PREFETCH`] batches at once, however long the
//!   backlog in the broker. A batch is acked once all its events are delivered or failed. One
//!   held longer than `WEBHOOK_HOLD_LIMIT` (the endpoint is down) has what is left of it
//!   published again at the queue's tail and is acked, so no delivery stays unacked long
//!   enough for the broker's `consumer_timeout` to close the channel.
//! - **Isolated**: each endpoint has its own queue, consumer, channel and concurrency; the
//!   message flow only ever waits for the broker to confirm the events.

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Acker, Channel, Connection};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use super::{now_ms, persistent_json, publish_confirmed, Endpoint, Event, Signer};
use crate::broker::log_budget::LogBudget;
use crate::metrics::{Metrics, WebhookResult};
use crate::retry::Backoff;

/// Batches an endpoint's consumer holds at once (each at most 512 events or 1 MiB).
pub const PREFETCH: u16 = 4;

/// Most bytes of an answer read (then the connection is dropped rather than drained).
const MAX_ANSWER_BYTES: usize = 64 << 10;

/// How delivery is done (`WEBHOOK_*`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub timeout: Duration,
    pub retry_for: Duration,
    pub backoff: Backoff,
    pub concurrency: usize,
    pub hold_limit: Duration,
    pub signer: Option<Signer>,
}

/// Deliver `endpoint`'s queue until `stop` (the session's end) or the channel fails.
pub async fn run(
    conn: &Connection,
    base: &str,
    endpoint: Endpoint,
    settings: Arc<Settings>,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> lapin::Result<()> {
    let channel = conn.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    channel.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
    let queue = endpoint.queue(base);
    let tag = format!("chat21-engine.{queue}");
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let url = match reqwest::Url::parse(&endpoint.url) {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(endpoint = %endpoint.id, error = %e, "webhook endpoint is not a URL; not delivering it");
            return Ok(());
        }
    };
    let mut d = Dispatcher {
        url,
        endpoint,
        queue,
        failed: String::new(),
        settings,
        client,
        metrics,
        channel: channel.clone(),
        batches: HashMap::new(),
        lanes: HashMap::new(),
        waiting: VecDeque::new(),
        running: FuturesUnordered::new(),
        logs: LogBudget::default(),
    };
    d.failed = d.endpoint.failed(base);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let result = loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break Ok(()),
            Some((pos, answer)) = d.running.next() => d.finished(pos, answer).await?,
            next = consumer.next(), if d.batches.len() < PREFETCH as usize => match next {
                Some(Ok(delivery)) => d.take(delivery).await?,
                Some(Err(e)) => break Err(e),
                None => break Ok(()),
            },
            _ = tick.tick() => d.park_held().await?,
        }
    };
    // Whatever is unacked goes back to the queue when the channel closes: events of a batch
    // that were delivered already are sent again (at-least-once, same webhook-id).
    let _ = channel.close(200, "stopping".into()).await;
    result
}

/// An event's place: which batch (by delivery tag), which event of it, which lane.
#[derive(Debug, Clone, Copy)]
struct Pos {
    tag: u64,
    idx: usize,
    lane: u64,
}

struct Batch {
    acker: Acker,
    /// Events not yet delivered or failed.
    left: usize,
    since: Instant,
    events: Vec<Option<Event>>,
}

type Answer = Result<(), String>;

struct Dispatcher {
    endpoint: Endpoint,
    /// The endpoint's URL, parsed once (checked at start-up).
    url: reqwest::Url,
    queue: String,
    failed: String,
    settings: Arc<Settings>,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
    channel: Channel,
    batches: HashMap<u64, Batch>,
    /// Each lane's events in order; the head is being tried (running or waiting for room).
    lanes: HashMap<u64, VecDeque<Pos>>,
    /// Lane heads waiting for a free POST slot, oldest first.
    waiting: VecDeque<Pos>,
    running: FuturesUnordered<BoxFuture<'static, (Pos, Answer)>>,
    /// The failure lines within a budget (a dead endpoint fails every event).
    logs: LogBudget,
}

impl Dispatcher {
    async fn take(&mut self, delivery: lapin::message::Delivery) -> lapin::Result<()> {
        let tag = delivery.delivery_tag;
        let events: Vec<Event> = match serde_json::from_slice(&delivery.data) {
            Ok(events) => events,
            Err(e) => {
                // Only engines write here; an unreadable batch cannot become readable.
                tracing::error!(endpoint = %self.endpoint.id, error = %e, "unreadable webhook batch dropped");
                return delivery.acker.ack(BasicAckOptions::default()).await.map(|_| ());
            }
        };
        if events.is_empty() {
            return delivery.acker.ack(BasicAckOptions::default()).await.map(|_| ());
        }
        let positions: Vec<Pos> = events
            .iter()
            .enumerate()
            .map(|(idx, e)| Pos { tag, idx, lane: e.lane })
            .collect();
        self.batches.insert(
            tag,
            Batch {
                acker: delivery.acker,
                left: events.len(),
                since: Instant::now(),
                events: events.into_iter().map(Some).collect(),
            },
        );
        for pos in positions {
            let lane = self.lanes.entry(pos.lane).or_default();
            lane.push_back(pos);
            if lane.len() == 1 {
                self.waiting.push_back(pos);
            }
        }
        self.launch();
        Ok(())
    }

    /// Start waiting heads while there is room.
    fn launch(&mut self) {
        while self.running.len() < self.settings.concurrency {
            let Some(pos) = self.waiting.pop_front() else { return };
            match self.event(pos) {
                Some(event) => {
                    let attempt = self.attempt(pos, event, Duration::ZERO);
                    self.running.push(attempt);
                }
                // Its batch was requeued meanwhile: on to the lane's next.
                None => self.advance(pos),
            }
        }
    }

    fn event(&self, pos: Pos) -> Option<&Event> {
        self.batches.get(&pos.tag)?.events.get(pos.idx)?.as_ref()
    }

    /// `pos` is done with (delivered, failed, or requeued): its lane's next event heads it.
    fn advance(&mut self, pos: Pos) {
        let Some(lane) = self.lanes.get_mut(&pos.lane) else {
            return;
        };
        lane.pop_front();
        match lane.front() {
            Some(next) => self.waiting.push_back(*next),
            None => {
                self.lanes.remove(&pos.lane);
            }
        }
    }

    /// POST `event` after `delay`.
    fn attempt(&self, pos: Pos, event: &Event, delay: Duration) -> BoxFuture<'static, (Pos, Answer)> {
        let body = event.body.get().as_bytes().to_vec();
        let id = event.id.clone();
        let (client, url, settings) = (self.client.clone(), self.url.clone(), self.settings.clone());
        async move {
            tokio::time::sleep(delay).await;
            let answer = post(&client, &url, &id, body, &settings).await;
            (pos, answer)
        }
        .boxed()
    }

    async fn finished(&mut self, pos: Pos, answer: Answer) -> lapin::Result<()> {
        let Some(event) = self.batches.get_mut(&pos.tag).and_then(|b| b.events[pos.idx].as_mut()) else {
            // Requeued while it was being tried.
            self.advance(pos);
            self.launch();
            return Ok(());
        };
        match answer {
            Ok(()) => {
                let took = (now_ms() - event.at).max(0) as f64 / 1000.0;
                self.metrics
                    .webhook(&self.endpoint.id, WebhookResult::Delivered, Some(took));
                self.done(pos).await?;
            }
            Err(why) => {
                event.tries += 1;
                let age = now_ms() - event.window_start();
                if age >= self.settings.retry_for.as_millis() as i64 {
                    let event = event.clone();
                    if keep_failed(self.channel.clone(), &self.failed, &self.endpoint.shown(), &event, &why).await {
                        tracing::warn!(endpoint = %self.endpoint.shown(), id = %event.id, kind = event.kind.as_str(), tries = event.tries, error = %why, "webhook event not delivered within WEBHOOK_RETRY_FOR; kept as failed");
                        self.metrics.webhook(&self.endpoint.id, WebhookResult::Failed, None);
                        self.done(pos).await?;
                    } else {
                        let attempt = self.attempt(pos, &event, self.settings.backoff.max);
                        self.running.push(attempt);
                    }
                } else {
                    let tries = event.tries;
                    if let Some(suppressed) = self.logs.take() {
                        tracing::warn!(endpoint = %self.endpoint.shown(), id = %event.id, tries, error = %why, suppressed, "webhook POST failed; retrying");
                    }
                    self.metrics.webhook(&self.endpoint.id, WebhookResult::Retried, None);
                    let delay = self
                        .settings
                        .backoff
                        .delays()
                        .nth(tries.saturating_sub(1) as usize)
                        .unwrap_or(self.settings.backoff.max);
                    let event = event.clone();
                    let attempt = self.attempt(pos, &event, delay);
                    self.running.push(attempt);
                }
            }
        }
        self.launch();
        Ok(())
    }

    /// `pos` is settled: its batch is acked when it was the last; its lane moves on.
    async fn done(&mut self, pos: Pos) -> lapin::Result<()> {
        if let Some(batch) = self.batches.get_mut(&pos.tag) {
            if batch.events[pos.idx].take().is_some() {
                batch.left -= 1;
            }
            if batch.left == 0 {
                let batch = self.batches.remove(&pos.tag).expect("just seen");
                batch.acker.ack(BasicAckOptions::default()).await?;
            }
        }
        self.advance(pos);
        Ok(())
    }

    /// Batches held past `WEBHOOK_HOLD_LIMIT`: what is left of each goes to the queue's tail
    /// (tries kept), then the batch is acked.
    async fn park_held(&mut self) -> lapin::Result<()> {
        let limit = self.settings.hold_limit;
        let held: Vec<u64> = self
            .batches
            .iter()
            .filter(|(_, b)| b.since.elapsed() >= limit)
            .map(|(tag, _)| *tag)
            .collect();
        for tag in held {
            let left: Vec<&Event> = self.batches[&tag].events.iter().flatten().collect();
            let Ok(body) = serde_json::to_vec(&left) else { continue };
            if !publish_confirmed(&self.channel, &self.queue, &body, persistent_json()).await {
                continue; // kept, and tried again at the next tick
            }
            tracing::info!(endpoint = %self.endpoint.shown(), events = left.len(), "undelivered webhook events requeued at the tail");
            for _ in 0..left.len() {
                self.metrics.webhook(&self.endpoint.id, WebhookResult::Requeued, None);
            }
            let batch = self.batches.remove(&tag).expect("listed above");
            batch.acker.ack(BasicAckOptions::default()).await?;
            // Its lane entries are skipped as they come up (see `launch`, `finished`).
        }
        Ok(())
    }
}

/// An event past its retry window, onto the failed queue `failed`: true once confirmed.
async fn keep_failed(channel: Channel, failed: &str, endpoint: &str, event: &Event, why: &str) -> bool {
    let Ok(body) = serde_json::to_vec(event) else {
        return false;
    };
    let text = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()));
    let mut headers = FieldTable::default();
    headers.insert("x-chat21-endpoint".into(), text(endpoint));
    headers.insert(
        "x-chat21-error".into(),
        text(&why.chars().take(1000).collect::<String>()),
    );
    headers.insert("x-chat21-failed-at".into(), AMQPValue::LongLongInt(now_ms()));
    let props = persistent_json().with_headers(headers);
    publish_confirmed(&channel, failed, &body, props).await
}

/// One POST: 2xx is delivered, anything else (an error, a timeout, a redirect, another
/// status) is a failure to retry.
async fn post(client: &reqwest::Client, url: &reqwest::Url, id: &str, body: Vec<u8>, settings: &Settings) -> Answer {
    let timestamp = now_ms() / 1000;
    let mut req = client
        .post(url.clone())
        .timeout(settings.timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string());
    if let Some(signer) = &settings.signer {
        req = req
            .header("X-Chat21-Signature", signer.chat21(&body))
            .header("webhook-signature", signer.standard(id, timestamp, &body));
    }
    let mut answer = req.body(body).send().await.map_err(|e| e.without_url().to_string())?;
    let status = answer.status();
    // Read a little of the answer so the connection can be reused; a larger one is cut off.
    let mut read = 0;
    while read < MAX_ANSWER_BYTES {
        match answer.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            _ => break,
        }
    }
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {status}"))
    }
}

/// The HTTP client of every endpoint: no redirects (a 3xx is a failure, the body is not
/// re-sent elsewhere), connections kept alive. HTTP/1.1 only: HTTP/2 (h2c by prior knowledge)
/// was measured against it on a local endpoint and cost more CPU per event (README,
/// Benchmark, Webhooks).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("chat21-engine/", env!("CARGO_PKG_VERSION")))
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .expect("a client with these settings always builds")
}
