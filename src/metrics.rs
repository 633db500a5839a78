//! Prometheus metrics. Every label value comes from a fixed set (input kinds, outcomes,
//! reject reasons): never a user id or a topic, so cardinality is bounded.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::domain::RejectReason;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InputLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LookupLabels {
    cache: &'static str,
    result: &'static str,
}

/// Which hot-path cache a lookup went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheKind {
    Groups,
    Blocks,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PresenceLabels {
    presence: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    /// The endpoint's id (10 hex digits of its URL's hash): one per configured endpoint.
    endpoint: String,
    result: &'static str,
}

/// What became of one webhook POST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookResult {
    Delivered,
    /// Failed; tried again later.
    Retried,
    /// Not delivered within WEBHOOK_RETRY_FOR: kept in the failed queue.
    Failed,
    /// Held past WEBHOOK_HOLD_LIMIT: published again at the queue's tail.
    Requeued,
}

impl WebhookResult {
    fn as_str(self) -> &'static str {
        match self {
            WebhookResult::Delivered => "delivered",
            WebhookResult::Retried => "retried",
            WebhookResult::Failed => "failed",
            WebhookResult::Requeued => "requeued",
        }
    }
}

/// Outcome label of an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every effect confirmed, input acked.
    Processed,
    /// Rejected with a reason, acked.
    Rejected,
    /// A publish failed or was nacked: returned to the queue for another try.
    Retried,
    /// The store refused its writes for good: moved to the dead-letter queue, acked.
    DeadLettered,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Processed => "processed",
            Outcome::Rejected => "rejected",
            Outcome::Retried => "retried",
            Outcome::DeadLettered => "dead_lettered",
        }
    }
}

/// Shared engine state observed by /metrics and /readyz.
pub struct Metrics {
    registry: Registry,
    inputs: Family<InputLabels, Counter>,
    rejections: Family<ReasonLabels, Counter>,
    confirm_latency: Histogram,
    in_flight: Gauge,
    reconnects: Counter,
    publishes: Counter,
    commits: Counter,
    commit_latency: Histogram,
    store_up: Gauge,
    lookups: Family<LookupLabels, Counter>,
    presence_changes: Family<PresenceLabels, Counter>,
    blocked: Counter,
    webhook_events: Counter,
    webhook_posts: Family<WebhookLabels, Counter>,
    webhook_latency: Histogram,
    partitions_owned: Gauge,
    broker_connected: AtomicBool,
    store_ok: AtomicBool,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("chat21");
        let inputs = Family::<InputLabels, Counter>::default();
        let rejections = Family::<ReasonLabels, Counter>::default();
        // 50 µs … ~1.6 s: a confirm normally takes well under a millisecond on a local broker.
        let confirm_latency = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        let in_flight = Gauge::default();
        let reconnects = Counter::default();
        let publishes = Counter::default();
        let commits = Counter::default();
        let commit_latency = Histogram::new(exponential_buckets(0.000_1, 2.0, 16));
        let store_up = Gauge::default();
        let partitions_owned = Gauge::default();
        registry.register(
            "partitions_owned",
            "Input partitions this engine consumes (with a shared PostgreSQL store: its share of them)",
            partitions_owned.clone(),
        );
        registry.register(
            "store_commits",
            "Store transactions committed (each holds many inputs)",
            commits.clone(),
        );
        registry.register(
            "store_commit_seconds",
            "Time to apply and commit one batch",
            commit_latency.clone(),
        );
        registry.register(
            "store_up",
            "1 when the last store write succeeded (or no store)",
            store_up.clone(),
        );
        registry.register("inputs", "Inputs consumed, by kind and outcome", inputs.clone());
        registry.register("rejections", "Rejected inputs, by reason", rejections.clone());
        registry.register(
            "publish_confirm_seconds",
            "Time from publish to broker confirm",
            confirm_latency.clone(),
        );
        registry.register(
            "inputs_in_flight",
            "Inputs consumed and not yet acked",
            in_flight.clone(),
        );
        registry.register(
            "broker_reconnects",
            "Broker (re)connections after the first",
            reconnects.clone(),
        );
        registry.register("publishes", "Messages published and confirmed", publishes.clone());
        let lookups = Family::<LookupLabels, Counter>::default();
        registry.register(
            "cache_lookups",
            "Hot-path lookups (groups, block lists) by cache and result: hit, or store read",
            lookups.clone(),
        );
        let presence_changes = Family::<PresenceLabels, Counter>::default();
        registry.register(
            "presence_changes",
            "Users going online or offline (first client connected, last one gone)",
            presence_changes.clone(),
        );
        let blocked = Counter::default();
        registry.register(
            "blocked_deliveries",
            "Message copies and typing notices not delivered because the receiver blocked the author",
            blocked.clone(),
        );
        let webhook_events = Counter::default();
        registry.register(
            "webhook_events_queued",
            "Webhook events confirmed in the endpoint queues (each counted once, whatever the number of endpoints)",
            webhook_events.clone(),
        );
        let webhook_posts = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "webhook_posts",
            "Webhook events by endpoint id and what became of a try: delivered, retried (failed, tried again), failed (kept in the failed queue), requeued (held past WEBHOOK_HOLD_LIMIT, sent round the queue)",
            webhook_posts.clone(),
        );
        // 1 ms … ~9 h: from the event being made to its delivery, retries included.
        let webhook_latency = Histogram::new(exponential_buckets(0.001, 2.0, 25));
        registry.register(
            "webhook_delivery_seconds",
            "Time from an event being made to its delivery (2xx)",
            webhook_latency.clone(),
        );
        // Pre-create every reason so dashboards see zeros rather than missing series.
        for r in RejectReason::ALL {
            let _ = rejections.get_or_create(&ReasonLabels { reason: r.as_str() });
        }
        Arc::new(Metrics {
            registry,
            inputs,
            rejections,
            confirm_latency,
            in_flight,
            reconnects,
            publishes,
            commits,
            commit_latency,
            store_up,
            lookups,
            presence_changes,
            blocked,
            webhook_events,
            webhook_posts,
            webhook_latency,
            partitions_owned,
            broker_connected: AtomicBool::new(false),
            store_ok: AtomicBool::new(true),
        })
    }

    pub fn webhook_events_queued(&self, n: u64) {
        self.webhook_events.inc_by(n);
    }

    /// A webhook POST's result; `seconds`: since the event was made, when delivered.
    pub fn webhook(&self, endpoint: &str, result: WebhookResult, seconds: Option<f64>) {
        self.webhook_posts
            .get_or_create(&WebhookLabels {
                endpoint: endpoint.to_owned(),
                result: result.as_str(),
            })
            .inc();
        if let Some(s) = seconds {
            self.webhook_latency.observe(s);
        }
    }

    pub fn input(&self, kind: &'static str, outcome: Outcome) {
        self.inputs
            .get_or_create(&InputLabels {
                kind,
                outcome: outcome.as_str(),
            })
            .inc();
    }

    pub fn rejected(&self, reason: RejectReason) {
        self.rejections
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// `n` lookups in `cache` that were answered by it (`hit`) or had to read the store.
    pub fn lookups(&self, cache: CacheKind, hit: bool, n: u64) {
        let cache = match cache {
            CacheKind::Groups => "groups",
            CacheKind::Blocks => "blocks",
        };
        let result = if hit { "hit" } else { "store" };
        self.lookups.get_or_create(&LookupLabels { cache, result }).inc_by(n);
    }

    pub fn blocked(&self, n: u64) {
        self.blocked.inc_by(n);
    }

    pub fn presence_changed(&self, online: bool) {
        let presence = if online { "online" } else { "offline" };
        self.presence_changes.get_or_create(&PresenceLabels { presence }).inc();
    }

    pub fn confirmed(&self, seconds: f64) {
        self.confirm_latency.observe(seconds);
        self.publishes.inc();
    }

    pub fn in_flight_add(&self, n: i64) {
        self.in_flight.inc_by(n);
    }

    pub fn reconnected(&self) {
        self.reconnects.inc();
    }

    pub fn set_partitions_owned(&self, n: usize) {
        self.partitions_owned.set(n as i64);
    }

    pub fn set_broker_connected(&self, up: bool) {
        self.broker_connected.store(up, Ordering::Relaxed);
    }

    pub fn broker_connected(&self) -> bool {
        self.broker_connected.load(Ordering::Relaxed)
    }

    /// A batch of writes committed in `seconds`.
    pub fn committed(&self, seconds: f64) {
        self.commits.inc();
        self.commit_latency.observe(seconds);
    }

    pub fn set_store_ok(&self, ok: bool) {
        self.store_ok.store(ok, Ordering::Relaxed);
        self.store_up.set(ok as i64);
    }

    pub fn store_ok(&self) -> bool {
        self.store_ok.load(Ordering::Relaxed)
    }

    /// Ready = consuming from the broker and able to commit writes.
    pub fn ready(&self) -> bool {
        self.broker_connected() && self.store_ok()
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_fixed_label_sets() {
        let m = Metrics::new();
        m.input("send", Outcome::Processed);
        m.rejected(RejectReason::NotJson);
        m.confirmed(0.001);
        m.in_flight_add(3);
        m.reconnected();
        let text = m.encode();
        assert!(
            text.contains(r#"chat21_inputs_total{kind="send",outcome="processed"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"chat21_rejections_total{reason="not_json"} 1"#));
        assert!(text.contains(r#"chat21_rejections_total{reason="bad_topic"} 0"#));
        assert!(text.contains("chat21_publish_confirm_seconds_bucket"));
        assert!(text.contains("chat21_inputs_in_flight 3"));
        assert!(text.contains("chat21_broker_reconnects_total 1"));
    }
}
