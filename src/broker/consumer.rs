//! One consuming session on one connection: delivery → topic parse → handler → publishes
//! (pipelined confirms) → ack.
//!
//! Why this shape:
//! - Publishes are issued in delivery order on one confirm-mode channel, so messages of one
//!   sender to one conversation leave in the order the broker delivered them.
//! - Confirms are awaited concurrently (a `FuturesUnordered` of per-input confirm sets):
//!   never one confirm awaited before the next publish. The number of unconfirmed publishes
//!   is bounded by `PUBLISH_WINDOW`; the number of inputs in flight by the prefetch.
//! - Publishes never wait for lapin's writer thread inside the loop (see `publish`).
//! - An input is acked only after every publish it caused is confirmed; acks are coalesced
//!   into `multiple=true` frames (see `acks.rs`). A nacked publish puts the input back on
//!   the queue (nack + requeue), never acks it. A dead channel or connection ends the
//!   session: the broker requeues everything unacked.

use futures::future::{maybe_done, MaybeDone};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{Acker, BasicProperties, Channel, Confirmation, Connection, PublisherConfirm};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

use super::acks::AckTracker;
use super::{topology, BrokerError, EXCHANGE};
use crate::blocks::BlockSet;
use crate::events::Event;
use crate::group::{Group, GroupLookup};
use crate::handlers::Halt;
use crate::message::RejectReason;
use crate::metrics::{CacheKind, Outcome};
use crate::plan::{Committed, Context, Plan, Write};
use crate::policy::Facts;
use crate::store::writer::Writer;
use crate::store::Store;
use crate::topic::Inbound;
use crate::Engine;
use std::collections::HashMap;

pub enum SessionEnd {
    Shutdown,
}

/// The result of waiting for one input's confirms.
struct Settled {
    tag: u64,
    acker: Acker,
    kind: &'static str,
    publishes: usize,
    all_acked: bool,
    /// Refused with the sender told (§8): counted as rejected once its notice is confirmed.
    refused: bool,
}

type Pending = FuturesUnordered<Pin<Box<dyn Future<Output = Settled> + Send>>>;
type Sending = MaybeDone<Pin<Box<dyn Future<Output = lapin::Result<PublisherConfirm>> + Send>>>;

const CONSUMER_TAG: &str = "chat21-engine";

/// How long shutdown waits for in-flight inputs to settle.
const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(20);

pub async fn run_session(
    engine: &Engine,
    store: Option<&Store>,
    writer: Option<&Writer>,
    conn: &Connection,
    shutdown: &CancellationToken,
) -> Result<SessionEnd, BrokerError> {
    let cfg = &engine.config;
    let consume_ch = conn.create_channel().await?;
    consume_ch.basic_qos(cfg.prefetch, BasicQosOptions::default()).await?;
    let topics = &engine.topics;
    topology::declare(
        &consume_ch,
        &cfg.queue_name,
        &topics.bindings(),
        &topics.retired_bindings(),
    )
    .await?;
    let publish_ch = conn.create_channel().await?;
    publish_ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let opts = BasicConsumeOptions::default();
    let mut consumer = consume_ch
        .basic_consume(
            cfg.queue_name.as_str().into(),
            CONSUMER_TAG.into(),
            opts,
            FieldTable::default(),
        )
        .await?;
    engine.metrics.set_broker_connected(true);

    let mut session = Session {
        engine,
        store,
        writer,
        publish_ch: &publish_ch,
        pending: Pending::new(),
        acks: AckTracker::default(),
        unconfirmed: 0,
    };
    let result = session.pump(&mut consumer, &consume_ch, shutdown).await;
    // Whatever is still unacked will never be acked on this channel: the broker requeues it.
    engine.metrics.in_flight_add(-(session.acks.in_flight() as i64));
    result
}

struct Session<'a> {
    engine: &'a Engine,
    /// Read for groups the cache does not know.
    store: Option<&'a Store>,
    writer: Option<&'a Writer>,
    publish_ch: &'a Channel,
    pending: Pending,
    acks: AckTracker<Acker>,
    unconfirmed: usize,
}

impl Session<'_> {
    async fn pump(
        &mut self,
        consumer: &mut lapin::Consumer,
        consume_ch: &Channel,
        shutdown: &CancellationToken,
    ) -> Result<SessionEnd, BrokerError> {
        let mut draining = false;
        // A stuck store or broker must not hold shutdown forever: after this, whatever is
        // still unacked is left to the broker, which redelivers it to the next engine.
        let drain_deadline = tokio::time::sleep(DRAIN_LIMIT);
        tokio::pin!(drain_deadline);
        loop {
            if draining && self.pending.is_empty() {
                break;
            }
            tokio::select! {
                biased;
                _ = &mut drain_deadline, if draining => {
                    tracing::warn!(in_flight = self.acks.in_flight(), "in-flight inputs not settled in time; leaving them to the broker");
                    break;
                }
                Some(settled) = self.pending.next() => {
                    self.finish(settled).await?;
                    // Confirms arrive in batches: settle all that are ready, then ack once.
                    while let Some(Some(settled)) = self.pending.next().now_or_never() {
                        self.finish(settled).await?;
                    }
                    self.flush_acks().await?;
                }
                _ = shutdown.cancelled(), if !draining => {
                    tracing::info!(in_flight = self.acks.in_flight(), "shutting down: no new inputs, finishing in-flight ones");
                    draining = true;
                    drain_deadline.as_mut().reset(tokio::time::Instant::now() + DRAIN_LIMIT);
                    consume_ch.basic_cancel(CONSUMER_TAG.into(), BasicCancelOptions::default()).await?;
                }
                next = consumer.next(), if !draining => match next {
                    Some(Ok(delivery)) => self.start(delivery, shutdown).await?,
                    Some(Err(e)) => return Err(e.into()),
                    None => return Err(BrokerError::ConsumerEnded),
                },
                else => break,
            }
        }
        self.flush_acks().await?;
        let _ = consume_ch.close(200, "shutdown".into()).await;
        let _ = self.publish_ch.close(200, "shutdown".into()).await;
        Ok(SessionEnd::Shutdown)
    }

    /// Handle one delivery up to the point where its publishes are handed to the writer.
    async fn start(
        &mut self,
        delivery: lapin::message::Delivery,
        shutdown: &CancellationToken,
    ) -> Result<(), BrokerError> {
        let engine = self.engine;
        let tag = delivery.delivery_tag;
        self.acks.delivered(tag);
        engine.metrics.in_flight_add(1);
        let key = delivery.routing_key.as_str();
        let (kind, planned, changes) = match engine.topics.parse(key) {
            Ok(inbound) => match self.plan(&inbound, &delivery.data, shutdown).await {
                Some(p) => (inbound.kind(), p.result, p.changes),
                // Shut down while waiting for the store: the broker gets the input back.
                None => return Ok(()),
            },
            Err(reason) => ("unknown", Err(reason), Changes::default()),
        };
        let mut plan = match planned {
            Ok(plan) => plan,
            Err(reason) => {
                // Logged once, counted, acked: the inputs behind it keep flowing.
                let bytes = delivery.data.len();
                tracing::warn!(routing_key = key, reason = reason.as_str(), bytes, "input rejected");
                engine.metrics.rejected(reason);
                engine.metrics.input(kind, Outcome::Rejected);
                engine.metrics.in_flight_add(-1);
                self.acks.settled(tag, delivery.acker);
                return self.flush_acks().await;
            }
        };
        if let Some(reason) = plan.rejected {
            tracing::warn!(
                routing_key = key,
                reason = reason.as_str(),
                "input refused; the sender is told"
            );
            engine.metrics.rejected(reason);
        }
        self.make_room(plan.publishes.len()).await?;
        let writes = std::mem::take(&mut plan.writes);
        // The publishes that may follow the commit (archive, un-archive) need these.
        let followup = (self.writer.is_some() && !writes.is_empty()).then(|| FollowUp {
            topics: engine.topics.clone(),
            channel: self.publish_ch.clone(),
            events: engine.events.clone(),
            metrics: engine.metrics.clone(),
            group_cache: engine.groups.clone(),
            block_cache: engine.blocks.clone(),
            changes,
        });
        let refused = plan.rejected.is_some();
        let sends = self.publish(plan).await?;
        // Writes go to the group-commit writer while the confirms are on their way.
        let committed = match (self.writer, writes.is_empty()) {
            (Some(writer), false) => Some(writer.submit(writes).await),
            _ => None,
        };
        let publishes = sends.len();
        self.unconfirmed += publishes;
        let acker = delivery.acker;
        let metrics = engine.metrics.clone();
        self.pending.push(Box::pin(async move {
            let started = Instant::now();
            let mut all_acked = true;
            for mut send in sends {
                (&mut send).await;
                let confirmed = match Pin::new(&mut send).take_output() {
                    Some(Ok(confirm)) => matches!(confirm.await, Ok(Confirmation::Ack(_))),
                    _ => false,
                };
                all_acked &= confirmed;
                if confirmed {
                    metrics.confirmed(started.elapsed().as_secs_f64());
                }
            }
            if let Some(committed) = committed {
                // Acked only after the writes are committed (§12); a closed writer means
                // shutdown: leave the input unacked for the next engine.
                match (committed.await, followup) {
                    (Ok(c), Some(f)) => all_acked &= f.publish(&c).await,
                    (Ok(_), None) => {}
                    (Err(_), _) => all_acked = false,
                }
            }
            Settled {
                tag,
                acker,
                kind,
                publishes,
                all_acked,
                refused,
            }
        }));
        Ok(())
    }

    /// Run the handler and the policy chain.
    ///
    /// A handler that needs a group the cache does not know gets it loaded from the store and
    /// is asked again; the block lists of every receiver of the plan's deliveries are loaded
    /// (one batch for all the cache does not know) before the chain runs. These loads are
    /// awaited here, in delivery order: inputs behind them wait (a store round trip, once per
    /// key per TTL), so the order of a sender's messages never depends on cache hits and misses.
    /// Group updates and block commands change the caches here, once the chain passed them,
    /// so the very next input is judged by them (see [`Changes`]).
    /// `None`: shutdown came while the store was unreachable.
    async fn plan(&self, inbound: &Inbound, body: &[u8], shutdown: &CancellationToken) -> Option<Planned> {
        let engine = self.engine;
        let fresh_id = || uuid::Uuid::new_v4().to_string();
        let now_ms = now_ms();
        let mut loaded: Option<(String, GroupLookup)> = None;
        let plan = loop {
            let groups = |uid: &str| match &loaded {
                Some((u, l)) if u == uid => l.clone(),
                _ => {
                    let found = engine.groups.lookup(uid);
                    if found != GroupLookup::Unknown {
                        engine.metrics.lookups(CacheKind::Groups, true, 1);
                    }
                    found
                }
            };
            let ctx = Context {
                now_ms,
                fresh_id: &fresh_id,
                groups: &groups,
                settings: &engine.settings,
            };
            match crate::handlers::handle(&engine.topics, inbound, body, &ctx) {
                Ok(plan) => break plan,
                Err(Halt::Reject(reason)) => return Some(Planned::rejected(reason)),
                // Handlers need at most one group; a second ask would be a handler bug.
                Err(Halt::NeedGroup(_)) if loaded.is_some() => {
                    return Some(Planned::rejected(RejectReason::Unsupported))
                }
                Err(Halt::NeedGroup(uid)) => {
                    let group = self.load_group(&uid, shutdown).await?;
                    engine.groups.put(uid.clone(), group.clone());
                    loaded = Some((uid, group.into()));
                }
            }
        };
        let block_commands: Vec<(String, String, bool)> = plan
            .writes
            .iter()
            .filter_map(|w| match w {
                Write::Block { user, other, add, .. } => Some((user.clone(), other.clone(), *add)),
                _ => None,
            })
            .collect();
        let users = plan
            .publishes
            .iter()
            .filter_map(|p| p.to.as_deref())
            .chain(block_commands.iter().map(|(user, _, _)| user.as_str()));
        let mut known = self.block_lists(users, shutdown).await?;
        let blocked = |user: &str, other: &str| known.get(user).is_some_and(|s| s.contains(other));
        let result = engine.chain.run(inbound, plan, &Facts { blocked: &blocked });
        let mut changes = Changes::default();
        if let Ok(plan) = &result {
            let durable = self.writer.is_some();
            for w in &plan.writes {
                if let Write::Group(g) = w {
                    engine.groups.updated(g.clone(), durable);
                    changes.groups.push(g.clone());
                }
            }
            for (user, other, add) in block_commands {
                let base = known.get(&user).cloned().unwrap_or_default();
                let next = crate::blocks::apply(&base, &other, add);
                engine.blocks.changed(user.clone(), next.clone(), durable);
                known.insert(user.clone(), next.clone());
                changes.blocks.push((user, next));
            }
        }
        Some(Planned { result, changes })
    }

    /// The block lists of `users`: from the cache, the rest from the store in one read.
    async fn block_lists<'u>(
        &self,
        users: impl Iterator<Item = &'u str>,
        shutdown: &CancellationToken,
    ) -> Option<HashMap<String, BlockSet>> {
        let mut known: HashMap<String, BlockSet> = HashMap::new();
        let mut missing: Vec<String> = Vec::new();
        for u in users {
            if known.contains_key(u) || missing.iter().any(|m| m == u) {
                continue;
            }
            match self.engine.blocks.get(u) {
                Some(set) => {
                    known.insert(u.to_owned(), set);
                }
                None => missing.push(u.to_owned()),
            }
        }
        let metrics = &self.engine.metrics;
        metrics.lookups(CacheKind::Blocks, true, known.len() as u64);
        if missing.is_empty() {
            return Some(known);
        }
        metrics.lookups(CacheKind::Blocks, false, missing.len() as u64);
        let app = &self.engine.config.app_id;
        let found = match self.store {
            Some(store) => {
                self.read_store("block lists", shutdown, || store.blocks_of(app, &missing))
                    .await?
            }
            // Without a store block lists live in the cache only.
            None => missing.into_iter().map(|u| (u, Default::default())).collect(),
        };
        for (user, set) in found {
            let set = Arc::new(set);
            self.engine.blocks.put(user.clone(), set.clone());
            known.insert(user, set);
        }
        Some(known)
    }

    /// Read a group from the store. Without a store only group updates define groups.
    async fn load_group(&self, uid: &str, shutdown: &CancellationToken) -> Option<Option<Arc<Group>>> {
        let Some(store) = self.store else {
            return Some(None);
        };
        self.engine.metrics.lookups(CacheKind::Groups, false, 1);
        let group = self.read_store("group", shutdown, || store.group(uid)).await?;
        Some(group.map(Arc::new))
    }

    /// A store read on the hot path, retried until the store answers (inputs stay unacked
    /// meanwhile, as they do for writes). `None`: shutdown came first.
    async fn read_store<T, F, Fut>(&self, what: &str, shutdown: &CancellationToken, read: F) -> Option<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, crate::store::StoreError>>,
    {
        use backon::BackoffBuilder;
        let mut delays = backon::ExponentialBuilder::default()
            .with_min_delay(std::time::Duration::from_millis(50))
            .with_max_delay(std::time::Duration::from_secs(5))
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            match read().await {
                Ok(v) => return Some(v),
                Err(e) => tracing::warn!(error = %e, what, "store read failed; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(delays.next().unwrap_or(std::time::Duration::from_secs(5))) => {}
                _ = shutdown.cancelled() => return None,
            }
        }
    }

    /// Keep the unconfirmed-publish window bounded: settle older inputs first if needed.
    async fn make_room(&mut self, wanted: usize) -> Result<(), BrokerError> {
        let window = self.engine.config.publish_window;
        while self.unconfirmed + wanted > window {
            match self.pending.next().await {
                Some(settled) => self.finish(settled).await?,
                None => break, // a single plan larger than the window still goes out
            }
        }
        self.flush_acks().await
    }

    /// Hand every publish of a plan to lapin's writer, in order, without waiting for the
    /// writer thread: the first poll of `basic_publish` queues the frames and registers the
    /// confirm; the rest (the write itself, then the confirm) is awaited by the settle future.
    async fn publish(&self, plan: Plan) -> lapin::Result<Vec<Sending>> {
        let mut sends = Vec::with_capacity(plan.publishes.len());
        for p in plan.publishes {
            let props = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(if p.persistent { 2 } else { 1 });
            let ch = self.publish_ch.clone();
            let fut: Pin<Box<dyn Future<Output = _> + Send>> = Box::pin(async move {
                ch.basic_publish(
                    EXCHANGE.into(),
                    p.key.as_str().into(),
                    BasicPublishOptions::default(),
                    &p.body,
                    props,
                )
                .await
            });
            let mut send = maybe_done(fut);
            let _ = futures::poll!(Pin::new(&mut send));
            if let MaybeDone::Done(Err(e)) = &send {
                return Err(e.clone());
            }
            sends.push(send);
        }
        Ok(sends)
    }

    async fn finish(&mut self, s: Settled) -> Result<(), BrokerError> {
        self.unconfirmed -= s.publishes;
        self.engine.metrics.in_flight_add(-1);
        if s.all_acked {
            let outcome = if s.refused {
                Outcome::Rejected
            } else {
                Outcome::Processed
            };
            self.engine.metrics.input(s.kind, outcome);
            self.acks.settled(s.tag, s.acker);
        } else {
            // The broker could not take a copy: try the whole input again later (copies that
            // did get through are repeated with the same message_id when the client gave one).
            tracing::warn!(kind = s.kind, "publish not confirmed; input requeued");
            self.engine.metrics.input(s.kind, Outcome::Retried);
            self.acks.abandoned(s.tag);
            s.acker
                .nack(BasicNackOptions {
                    requeue: true,
                    multiple: false,
                })
                .await?;
        }
        Ok(())
    }

    /// One `basic.ack multiple=true` for everything that may be acked now.
    async fn flush_acks(&mut self) -> Result<(), BrokerError> {
        if let Some(acker) = self.acks.take_ackable() {
            acker.ack(BasicAckOptions { multiple: true }).await?;
        }
        Ok(())
    }
}

/// What planning one input gave.
struct Planned {
    result: Result<Plan, RejectReason>,
    changes: Changes,
}

impl Planned {
    fn rejected(reason: RejectReason) -> Self {
        Planned {
            result: Err(reason),
            changes: Changes::default(),
        }
    }
}

/// Cached state an input changed when it was planned: group updates and block lists. Each
/// applies to every input planned after it (delivery order), and stays authoritative in its
/// cache until the input's commit — then a store read returns it too.
#[derive(Default)]
struct Changes {
    groups: Vec<Arc<Group>>,
    blocks: Vec<(String, BlockSet)>,
}

/// What depends on what a commit changed: publishes (PROTOCOL §6 archive and un-archive) and
/// events (presence transitions).
struct FollowUp {
    topics: Arc<crate::topic::Topics>,
    channel: Channel,
    events: crate::events::Events,
    metrics: Arc<crate::metrics::Metrics>,
    group_cache: Arc<crate::group::GroupCache>,
    block_cache: Arc<crate::blocks::BlockCache>,
    /// This input's cache changes, no longer "uncommitted" once the commit is done.
    changes: Changes,
}

impl FollowUp {
    /// Emit the events, publish and wait for the confirms; true when every one was confirmed.
    async fn publish(self, committed: &Committed) -> bool {
        // The commit happened whatever the publishes do: its events are facts now, and its
        // group updates are what a store read returns.
        for g in &self.changes.groups {
            self.group_cache.committed(g);
        }
        for (user, set) in &self.changes.blocks {
            self.block_cache.committed(user, set);
        }
        for change in &committed.presence {
            self.metrics.presence_changed(change.online);
            self.events.emit(Event::Presence(change.clone()));
        }
        let mut ok = true;
        for p in crate::handlers::after_commit(&self.topics, committed) {
            let props = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2);
            let sent = self.channel.basic_publish(
                EXCHANGE.into(),
                p.key.as_str().into(),
                BasicPublishOptions::default(),
                &p.body,
                props,
            );
            ok &= match sent.await {
                Ok(confirm) => matches!(confirm.await, Ok(Confirmation::Ack(_))),
                Err(_) => false,
            };
        }
        ok
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
