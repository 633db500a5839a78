//! The engine's broker objects, declared on every (re)connect: declarations are idempotent,
//! and a broker that lost its definitions (new node, reset) gets them back without an
//! operator.
//!
//! ```text
//! amq.topic ─(each input binding, exchange to exchange)→ {q}.partitions  (x-consistent-hash)
//!              ├─"1"→ {q}.p00  quorum queue, single active consumer, delivery limit
//!              ├─"1"→ {q}.p01        │ an input delivered DELIVERY_LIMIT times
//!              └─ …                  ↓ (crashes and requeues count)
//! amq.topic ─"{q}.dead-letter"→ {q}.dead-letter  (also where the engine puts inputs the
//!                                                 store refuses for good, with why)
//! ```
//!
//! Why this shape (SCALEOUT-NOTES.md):
//! - The consistent-hash exchange hashes the routing key, and an input's routing key names
//!   its app, sender and conversation: all inputs of one sender to one conversation go
//!   through one partition, in order.
//! - Quorum queues are the broker's replicated kind (a classic queue lives on one node, and
//!   while that node is down its publishes are dropped), and the only kind that counts
//!   deliveries: `x-delivery-limit` bounds how often a poison input can come back — one that
//!   kills the engine, or one the broker keeps refusing — and the broker moves it, with
//!   `x-death` saying why, to the dead-letter queue. At-least-once dead-lettering (3.10+, it
//!   needs `x-overflow=reject-publish`) so that move cannot lose it.
//! - Single active consumer: however many engines consume, each partition is processed by
//!   one of them at a time, so the order of a conversation survives scale-out; the others
//!   are hot standbys that the broker switches to when the active one goes away.
//! - Partition queues are bound in name order with the same weight and never unbound, so the
//!   hash ring is the same on every node and after a restart. Changing `PARTITIONS` moves
//!   keys between queues: do it only with the queues drained.

use lapin::options::{ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

use super::EXCHANGE;

/// The names and settings of the engine's broker objects, all derived from `QUEUE_NAME`.
#[derive(Debug, Clone)]
pub struct Layout {
    base: String,
    partitions: u16,
    delivery_limit: u32,
}

impl Layout {
    pub fn new(base: &str, partitions: u16, delivery_limit: u32) -> Layout {
        Layout {
            base: base.to_owned(),
            partitions: partitions.max(1),
            delivery_limit: delivery_limit.max(1),
        }
    }

    pub fn of(cfg: &crate::config::BrokerConfig) -> Layout {
        Layout::new(&cfg.queue_name, cfg.partitions, cfg.delivery_limit)
    }

    /// `QUEUE_NAME` itself.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The consistent-hash exchange that spreads inputs over the partitions.
    pub fn exchange(&self) -> String {
        format!("{}.partitions", self.base)
    }

    /// The partition queues, in binding order.
    pub fn queues(&self) -> Vec<String> {
        (0..usize::from(self.partitions))
            .map(|i| partition_queue(&self.base, i))
            .collect()
    }

    /// The dead-letter queue, and the key it is bound with on `amq.topic` (publishing there
    /// works with the service token's scopes, which the default exchange would not; no
    /// client may publish it: user scopes cover `apps.…`/seed keys only).
    pub fn dead_letter(&self) -> String {
        dead_letter_key(&self.base)
    }

    /// The single classic queue of engines before partitions, named `QUEUE_NAME` (see
    /// `legacy.rs`).
    pub fn legacy_queue(&self) -> &str {
        &self.base
    }

    /// Prefetch per partition consumer: `total` shared out, at least 1 each.
    pub fn prefetch_per_queue(&self, total: u16) -> u16 {
        total.div_ceil(self.partitions).max(1)
    }

    fn queue_arguments(&self) -> FieldTable {
        let text = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()));
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), text("quorum"));
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(self.delivery_limit.into()),
        );
        args.insert("x-dead-letter-exchange".into(), text(EXCHANGE));
        args.insert("x-dead-letter-routing-key".into(), text(&self.dead_letter()));
        args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
        args.insert("x-overflow".into(), text("reject-publish"));
        args
    }
}

/// Most partitions: two digits in a queue name keep name order and binding order the same.
pub const MAX_PARTITIONS: u16 = 100;

/// Partition queue `n` of the engine named `base`.
pub fn partition_queue(base: &str, n: usize) -> String {
    format!("{base}.p{n:02}")
}

/// The dead-letter queue of the engine named `base` (see [`Layout::dead_letter`]).
pub fn dead_letter_key(base: &str) -> String {
    format!("{base}.dead-letter")
}

/// A durable queue bound on `amq.topic` under its own name, so the engine reaches exactly it
/// by that routing key (the dead-letter queue, the webhook queues). No user's topic
/// permissions cover such a key.
pub async fn own_key_queue(channel: &Channel, name: &str, args: FieldTable) -> lapin::Result<()> {
    channel
        .queue_declare(name.into(), QueueDeclareOptions::durable(), args)
        .await?;
    channel
        .queue_bind(
            name.into(),
            EXCHANGE.into(),
            name.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// Declare the layout with `bindings`, and remove `retired` ones (an input kind this
/// configuration turned off); unbinding a binding that does not exist is a no-op.
///
/// A queue that exists with other arguments (another `DELIVERY_LIMIT`) fails here with the
/// broker's `PRECONDITION_FAILED - inequivalent arg …`: queue arguments cannot change once
/// the queue exists (README, input layout: drain and delete to change them).
pub async fn declare(channel: &Channel, layout: &Layout, bindings: &[String], retired: &[String]) -> lapin::Result<()> {
    let durable = QueueDeclareOptions::durable();
    own_key_queue(channel, &layout.dead_letter(), FieldTable::default()).await?;
    let exchange = layout.exchange();
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Custom("x-consistent-hash".into()),
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    // Queues first, bindings from amq.topic last: nothing is routed into the hash exchange
    // before every partition can take it.
    for queue in layout.queues() {
        channel
            .queue_declare(queue.as_str().into(), durable, layout.queue_arguments())
            .await?;
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                "1".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    for pattern in bindings {
        channel
            .exchange_bind(
                exchange.as_str().into(),
                EXCHANGE.into(),
                pattern.as_str().into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    for pattern in retired {
        channel
            .exchange_unbind(
                exchange.as_str().into(),
                EXCHANGE.into(),
                pattern.as_str().into(),
                Default::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_base() {
        let l = Layout::new("chat21.engine", 3, 20);
        assert_eq!(l.exchange(), "chat21.engine.partitions");
        assert_eq!(
            l.queues(),
            ["chat21.engine.p00", "chat21.engine.p01", "chat21.engine.p02"]
        );
        assert_eq!(l.dead_letter(), "chat21.engine.dead-letter");
        assert_eq!(l.legacy_queue(), "chat21.engine");
        // Name order is binding order, also past ten partitions.
        let many = Layout::new("q", 100, 20).queues();
        assert!(many.windows(2).all(|w| w[0] < w[1]), "{many:?}");
    }

    #[test]
    fn prefetch_is_shared_out() {
        assert_eq!(Layout::new("q", 16, 20).prefetch_per_queue(1024), 64);
        assert_eq!(Layout::new("q", 3, 20).prefetch_per_queue(10), 4);
        assert_eq!(Layout::new("q", 100, 20).prefetch_per_queue(1), 1);
    }
}
