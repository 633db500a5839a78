//! One consuming session on one connection: deliveries in, the [`Pipeline`]'s decision out as
//! publishes (pipelined confirms) and writes (group commit), then the ack. Everything between
//! a delivery and its decision is the pipeline's; this file keeps only what is AMQP's: the
//! deliveries, the publish window, confirms and acks.
//!
//! [`Pipeline`]: crate::pipeline::Pipeline
//!
//! Why this shape:
//! - Publishes are issued in delivery order on one confirm-mode channel, so messages of one
//!   sender to one conversation leave in the order the broker delivered them.
//! - Confirms are awaited concurrently (a `FuturesUnordered` of per-input confirm sets):
//!   never one confirm awaited before the next publish. Unconfirmed publishes are bounded by
//!   `PUBLISH_WINDOW` in number and `MAX_IN_FLIGHT_BYTES` in bytes (each copy is framed on
//!   its own, so a group's fan-out weighs its copies); inputs in flight by the prefetch.
//! - Publishes never wait for lapin's writer thread inside the loop (see `publish`).
//! - An input is acked only after every publish it caused is confirmed; acks are coalesced
//!   into `multiple=true` frames (see `acks.rs`). A nacked publish puts the input back on
//!   the queue (nack + requeue), never acks it. A dead channel or connection ends the
//!   session: the broker requeues everything unacked.

use futures::future::{maybe_done, MaybeDone};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{Acker, BasicProperties, Channel, Confirmation, Connection, PublisherConfirm};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::acks::AckTracker;
use super::log_budget::LogBudget;
use super::ownership::{Ownership, Partitions};
use super::submit::{self, Settlement};
use super::topology::{self, Layout};
use super::{legacy, BrokerError, EXCHANGE};
use crate::clock::now_ms;
use crate::domain::RejectReason;
use crate::metrics::Outcome;
use crate::pipeline::Delivery;
use crate::plan::{Publish, Rejection};
use crate::retry::Backoff;
use crate::store::writer::Poisoned;
use crate::store::writer::Writer;
use crate::store::Store;
use crate::topic::Inbound;
use crate::webhooks::{Event, Outbox};
use crate::Engine;

pub enum SessionEnd {
    Shutdown,
}

/// The result of waiting for one input's confirms.
struct Settled {
    tag: u64,
    acker: Acker,
    kind: &'static str,
    sent: InFlight,
    all_acked: bool,
    /// What the input counts as once acked: processed; rejected (refused with the sender
    /// told, §8, once its notice is confirmed); dead-lettered.
    outcome: Outcome,
    /// Why it was refused, when it was.
    refused: Option<RejectReason>,
    /// Who waits to hear what became of it (an input the HTTP API submitted).
    reply: Option<Reply>,
}

/// Where to tell a submitter (see `submit.rs`) what became of its input.
struct Reply {
    to: String,
    ticket: String,
}

impl Reply {
    /// The delivery's reply address, only when it is one of this queue's reply keys: a client
    /// that sets `reply_to` itself over AMQP gets nothing published anywhere.
    fn of(delivery: &lapin::message::Delivery, queue: &str) -> Option<Reply> {
        let props = &delivery.properties;
        let to = props.reply_to().as_ref()?.as_str();
        let ticket = props.correlation_id().as_ref()?.as_str();
        submit::is_reply_key(queue, to).then(|| Reply {
            to: to.to_owned(),
            ticket: ticket.chars().take(64).collect(),
        })
    }
}

/// What a dead letter is made of: the input as it came.
struct Source {
    routing_key: String,
    body: Vec<u8>,
}

/// Publishes sent and not yet confirmed, in number and in bytes.
#[derive(Debug, Default, Clone, Copy)]
struct InFlight {
    publishes: usize,
    bytes: usize,
}

impl InFlight {
    fn of(publishes: &[Publish]) -> InFlight {
        InFlight {
            publishes: publishes.len(),
            bytes: publishes.iter().map(|p| p.bytes().len()).sum(),
        }
    }
}

type Pending = FuturesUnordered<Pin<Box<dyn Future<Output = Settled> + Send>>>;
type Sending = MaybeDone<Pin<Box<dyn Future<Output = lapin::Result<PublisherConfirm>> + Send>>>;

/// Consumer tags are `chat21-engine.<queue>`: one per partition queue.
const CONSUMER_TAG: &str = "chat21-engine";

/// How long shutdown waits for in-flight inputs to settle.
const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(20);

/// Where a session takes its inputs from.
struct Inputs {
    stream: futures::stream::BoxStream<'static, lapin::Result<lapin::message::Delivery>>,
    /// A stream that ends when its queue is empty (the legacy queue, read by `basic.get`),
    /// rather than a consumer the broker ends only by cancelling it.
    finite: bool,
    /// Most inputs in flight: the broker bounds a consumer by the prefetch, but not
    /// `basic.get`, so the session does.
    limit: usize,
}

impl Inputs {
    /// One consumer per partition queue, on one channel (delivery tags, and so the
    /// `multiple=true` acks of `acks.rs`, are per channel), merged in arrival order: each
    /// queue's own order is kept, which is all the order there is to keep.
    async fn partitions(channel: &Channel, queues: &[String]) -> lapin::Result<Inputs> {
        let mut consumers = Vec::new();
        for queue in queues {
            let tag = format!("{CONSUMER_TAG}.{queue}");
            let consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            consumers.push(consumer);
        }
        Ok(Inputs {
            stream: futures::stream::select_all(consumers).boxed(),
            finite: false,
            limit: usize::MAX,
        })
    }

    /// What an engine before partitions left in its queue, one `basic.get` at a time, until
    /// the queue is empty.
    fn legacy(channel: &Channel, queue: &str, limit: u16) -> Inputs {
        let (channel, queue) = (channel.clone(), queue.to_owned());
        let stream = futures::stream::unfold((channel, queue), |(channel, queue)| async move {
            let got = channel
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
                .await;
            match got {
                Ok(Some(message)) => Some((Ok(message.delivery), (channel, queue))),
                Ok(None) => None,
                Err(e) => Some((Err(e), (channel, queue))),
            }
        });
        Inputs {
            stream: stream.boxed(),
            finite: true,
            limit: limit.into(),
        }
    }
}

/// Resolves when the share changes (an error: the ownership task ended).
async fn share_changed(share: &mut Option<&mut watch::Receiver<Partitions>>) -> Result<(), watch::error::RecvError> {
    match share {
        Some(rx) => rx.changed().await,
        None => std::future::pending().await,
    }
}

/// How a run of [`Session::pump`] ended.
enum PumpEnd {
    Shutdown,
    /// This engine's share of the partitions changed; what it took is settled.
    Rebalance,
    /// A finite input stream ended and everything taken from it is settled.
    Exhausted,
}

pub async fn run_session(
    engine: &Arc<Engine>,
    store: Option<&Store>,
    writer: Option<&Writer>,
    ownership: Option<&Ownership>,
    conn: &Arc<Connection>,
    shutdown: &CancellationToken,
) -> Result<SessionEnd, BrokerError> {
    let cfg = &engine.config.broker;
    let layout = Layout::of(cfg);
    let consume_ch = conn.create_channel().await?;
    consume_ch
        .basic_qos(layout.prefetch_per_queue(cfg.prefetch), BasicQosOptions::default())
        .await?;
    let topics = engine.pipeline.topics();
    topology::declare(&consume_ch, &layout, &topics.bindings(), &topics.retired_bindings()).await?;
    let publish_ch = conn.create_channel().await?;
    publish_ch.confirm_select(ConfirmSelectOptions::default()).await?;
    // Webhooks: the endpoint queues, the outbox that fills them (a confirm channel of its
    // own), and the dispatchers that empty them, for as long as this session lives.
    let dispatchers = CancellationToken::new();
    let _stop_dispatchers = dispatchers.clone().drop_guard();
    let outbox = match &engine.webhooks {
        Some(w) => {
            crate::webhooks::declare(&consume_ch, &cfg.queue_name, &w.endpoints).await?;
            let outbox_ch = conn.create_channel().await?;
            outbox_ch.confirm_select(ConfirmSelectOptions::default()).await?;
            w.spawn_dispatchers(conn, &cfg.queue_name, &engine.metrics, &dispatchers);
            Some(Outbox::spawn(
                outbox_ch,
                &cfg.queue_name,
                &w.endpoints,
                engine.metrics.clone(),
            ))
        }
        None => None,
    };
    // The HTTP API's way to submit inputs: without it the API answers 503, and everything
    // else goes on (a broker user without the reply-queue permissions still consumes).
    if engine.config.http.port != 0 {
        if let Err(e) = engine.submitter.connect(conn, &cfg.queue_name).await {
            tracing::error!(error = %e, "the HTTP API cannot submit inputs (its reply queue was refused); check the engine user's permissions");
        }
    }
    let mut session = Session {
        engine: engine.clone(),
        lookups: store.cloned(),
        writer,
        publish_ch: &publish_ch,
        pending: Pending::new(),
        acks: AckTracker::default(),
        unconfirmed: InFlight::default(),
        requeue_backoff: None,
        logs: LogBudget::default(),
        outbox,
        ownership,
    };
    let result = session.run(conn, &consume_ch, &layout, shutdown).await;
    if let Some(o) = ownership {
        // Whatever this session consumed, the broker takes back with its channels.
        o.consuming.send_replace(Partitions::new());
    }
    engine.submitter.disconnect();
    // Whatever is still unacked will never be acked on this channel: the broker requeues it.
    engine.metrics.in_flight_add(-(session.acks.in_flight() as i64));
    if result.is_ok() {
        // What is buffered and not taken goes back to the queues now, in order, and only
        // then does the broker activate a standby engine's consumers.
        let _ = consume_ch.close(200, "shutdown".into()).await;
        let _ = publish_ch.close(200, "shutdown".into()).await;
    }
    result
}

struct Session<'a> {
    engine: Arc<Engine>,
    /// What the pipeline reads groups and block lists from.
    lookups: Option<Store>,
    writer: Option<&'a Writer>,
    publish_ch: &'a Channel,
    pending: Pending,
    acks: AckTracker<Acker>,
    unconfirmed: InFlight,
    /// Delays before requeueing an input whose publish the broker refused; reset by the next
    /// input that goes through.
    requeue_backoff: Option<Box<dyn Iterator<Item = Duration> + Send>>,
    /// The per-input log lines (rejections) within a budget.
    logs: LogBudget,
    /// Where inputs record their webhook events (webhooks on).
    outbox: Option<Outbox>,
    /// This engine's share of the partitions (a shared PostgreSQL store); None: all of them.
    ownership: Option<&'a Ownership>,
}

impl Session<'_> {
    /// The legacy queue first, if there is one, then the partitions until shutdown.
    async fn run(
        &mut self,
        conn: &Connection,
        consume_ch: &Channel,
        layout: &Layout,
        shutdown: &CancellationToken,
    ) -> Result<SessionEnd, BrokerError> {
        let topics = self.engine.pipeline.topics();
        let mut patterns = topics.bindings();
        patterns.extend(topics.retired_bindings());
        // Older inputs of a conversation before newer ones: the partitions wait until the
        // queue of the engines before them is empty and gone.
        if let Some(backlog) = legacy::retire_bindings(conn, layout, &patterns).await? {
            tracing::info!(
                queue = layout.legacy_queue(),
                backlog,
                "draining the queue of an engine before partitions; it is deleted once empty"
            );
            self.engine.metrics.set_broker_connected(true);
            loop {
                let mut inputs = Inputs::legacy(consume_ch, layout.legacy_queue(), self.engine.config.broker.prefetch);
                if let PumpEnd::Shutdown = self.pump(&mut inputs, shutdown, None).await? {
                    return Ok(SessionEnd::Shutdown);
                }
                if legacy::delete_if_empty(conn, layout).await? {
                    tracing::info!(queue = layout.legacy_queue(), "old queue drained and deleted");
                    break;
                }
                // Not empty after all (an ack still on its way, an input requeued): again, shortly.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        // Partitions a larger PARTITIONS made stay bound to the hash exchange and keep
        // receiving their share of keys: consumed too, never left to fill up unread.
        let mut queues = layout.queues();
        let leftover = legacy::leftover_partitions(conn, layout).await?;
        if !leftover.is_empty() {
            tracing::warn!(
                partitions = layout.queues().len(),
                still_bound = leftover.len(),
                "PARTITIONS is lower than the partition queues that exist; consuming those too. To shrink: stop the engines, drain the queues, delete them and the .partitions exchange"
            );
        }
        queues.extend(leftover);
        let Some(ownership) = self.ownership else {
            let mut inputs = Inputs::partitions(consume_ch, &queues).await?;
            self.engine.metrics.set_partitions_owned(queues.len());
            self.engine.metrics.set_broker_connected(true);
            return match self.pump(&mut inputs, shutdown, None).await? {
                PumpEnd::Shutdown => Ok(SessionEnd::Shutdown),
                PumpEnd::Exhausted | PumpEnd::Rebalance => Err(BrokerError::ConsumerEnded),
            };
        };
        self.engine.metrics.set_broker_connected(true);
        let mut desired = ownership.desired.clone();
        let prefetch = layout.prefetch_per_queue(self.engine.config.broker.prefetch);
        loop {
            let share: Partitions = desired.borrow_and_update().clone();
            // Partitions left over from a larger PARTITIONS go with partition 0's owner.
            let partitions = usize::from(self.engine.config.broker.partitions);
            let mine: Vec<String> = queues
                .iter()
                .enumerate()
                .filter(|(i, _)| share.contains(i) || (*i >= partitions && share.contains(&0)))
                .map(|(_, q)| q.clone())
                .collect();
            self.engine.metrics.set_partitions_owned(share.len());
            if mine.is_empty() {
                tokio::select! {
                    changed = desired.changed() => if changed.is_err() { return Ok(SessionEnd::Shutdown) },
                    _ = shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
                }
                continue;
            }
            // A channel per share: handing partitions over is closing it (see `pump`).
            let channel = conn.create_channel().await?;
            channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
            let mut inputs = Inputs::partitions(&channel, &mine).await?;
            ownership.consuming.send_replace(share.clone());
            let end = self.pump(&mut inputs, shutdown, Some(&mut desired)).await?;
            let unsettled = !self.pending.is_empty();
            // Everything taken is settled and acked: closing the channel returns what it had
            // buffered, in order, before the broker activates the next owner's consumer.
            let _ = channel.close(200, "partitions handed over".into()).await;
            self.engine.metrics.in_flight_add(-(self.acks.in_flight() as i64));
            self.acks = AckTracker::default();
            ownership.consuming.send_replace(Partitions::new());
            match end {
                PumpEnd::Shutdown => return Ok(SessionEnd::Shutdown),
                PumpEnd::Exhausted => return Err(BrokerError::ConsumerEnded),
                // Confirms still pending belong to a closed channel: start over clean.
                PumpEnd::Rebalance if unsettled => return Err(BrokerError::HandoverUnsettled),
                PumpEnd::Rebalance => {}
            }
        }
    }

    async fn pump(
        &mut self,
        inputs: &mut Inputs,
        shutdown: &CancellationToken,
        mut share: Option<&mut watch::Receiver<Partitions>>,
    ) -> Result<PumpEnd, BrokerError> {
        let mut draining = false;
        let mut rebalance = false;
        let mut exhausted = false;
        // A stuck store or broker must not hold shutdown forever: after this, whatever is
        // still unacked is left to the broker, which redelivers it to the next engine.
        let drain_deadline = tokio::time::sleep(DRAIN_LIMIT);
        tokio::pin!(drain_deadline);
        loop {
            if (draining || exhausted) && self.pending.is_empty() {
                break;
            }
            let room = self.acks.in_flight() < inputs.limit;
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
                // No `basic.cancel`: on a single-active-consumer queue it activates the next
                // engine at once, while the inputs this one has buffered but not taken are
                // still unacked here; they would reach the next engine after newer ones. The
                // consumers stay, nothing more is taken, and once the taken inputs are settled
                // the session closes the channel: the broker returns the buffered inputs in
                // order, then activates the next consumer (tested: a SIGTERM handover to a
                // standby keeps the conversation in order).
                _ = shutdown.cancelled(), if !draining => {
                    tracing::info!(in_flight = self.acks.in_flight(), "shutting down: no new inputs, finishing in-flight ones");
                    draining = true;
                    drain_deadline.as_mut().reset(tokio::time::Instant::now() + DRAIN_LIMIT);
                }
                // The share changed: the same drain, then the session consumes the new share.
                changed = share_changed(&mut share), if !draining && share.is_some() => {
                    tracing::info!(in_flight = self.acks.in_flight(), gone = changed.is_err(), "partition share changing: finishing in-flight inputs first");
                    draining = true;
                    rebalance = true;
                    drain_deadline.as_mut().reset(tokio::time::Instant::now() + DRAIN_LIMIT);
                }
                next = inputs.stream.next(), if !draining && !exhausted && room => match next {
                    Some(Ok(delivery)) => self.start(delivery, shutdown).await?,
                    Some(Err(e)) => return Err(e.into()),
                    None if inputs.finite => exhausted = true,
                    None => return Err(BrokerError::ConsumerEnded),
                },
                else => break,
            }
        }
        self.flush_acks().await?;
        if draining {
            // Deliveries this session will not take or finish (buffered, not taken,
            // or waiting for the store) hold back the coalesced ack of everything above them:
            // ack what is settled one by one, so a graceful stop leaves no published input
            // to be redelivered.
            for acker in self.acks.take_settled() {
                acker.ack(BasicAckOptions { multiple: false }).await?;
            }
        }
        Ok(if rebalance && !shutdown.is_cancelled() {
            PumpEnd::Rebalance
        } else if draining {
            PumpEnd::Shutdown
        } else {
            PumpEnd::Exhausted
        })
    }

    /// Decide one delivery and start carrying the decision out: publishes handed to lapin's
    /// writer, writes to the group-commit writer; its settlement (confirms, commit, follow-ups)
    /// goes on in `pending`.
    async fn start(
        &mut self,
        delivery: lapin::message::Delivery,
        shutdown: &CancellationToken,
    ) -> Result<(), BrokerError> {
        let engine = self.engine.clone();
        let tag = delivery.delivery_tag;
        self.acks.delivered(tag);
        engine.metrics.in_flight_add(1);
        let key = delivery.routing_key.as_str();
        let reply = Reply::of(&delivery, &engine.config.broker.queue_name);
        let inbound = engine.pipeline.topics().parse(key);
        let kind = inbound.as_ref().map_or("unknown", Inbound::kind);
        let now = now_ms();
        let admitted = inbound
            .map_err(Rejection::Drop)
            .and_then(|i| engine.pipeline.admit(i, &delivery.data, now));
        let decision = match admitted {
            Ok(input) => match engine.pipeline.decide(input, &self.lookups, now, shutdown).await {
                Some(decision) => decision,
                // Shut down while waiting for the store: the broker gets the input back.
                None => return Ok(()),
            },
            Err(rejection) => Err(rejection),
        };
        let mut refused = None;
        let recorder = engine.webhooks.as_ref().map(|w| &w.recorder);
        let mut events: Vec<Event> = Vec::new();
        let (publishes, commit, outcome) = match decision {
            Err(Rejection::Drop(reason)) => {
                // Logged (within the log budget), counted, acked: the inputs behind it keep
                // flowing.
                if let Some(suppressed) = self.logs.take() {
                    let bytes = delivery.data.len();
                    tracing::warn!(
                        routing_key = key,
                        reason = reason.as_str(),
                        bytes,
                        suppressed,
                        "input rejected"
                    );
                }
                engine.metrics.rejected(reason);
                engine.metrics.input(kind, Outcome::Rejected);
                engine.metrics.in_flight_add(-1);
                self.acks.settled(tag, delivery.acker);
                self.tell(reply, Settlement::rejected(reason));
                return self.flush_acks().await;
            }
            Err(Rejection::Refuse { reason, notice }) => {
                if let Some(suppressed) = self.logs.take() {
                    tracing::warn!(
                        routing_key = key,
                        reason = reason.as_str(),
                        suppressed,
                        "input refused; the sender is told"
                    );
                }
                engine.metrics.rejected(reason);
                refused = Some(reason);
                events.extend(recorder.and_then(|r| r.of_refusal(&notice, reason, now)));
                (vec![*notice], None, Outcome::Rejected)
            }
            Ok(Delivery { plan, changes }) => {
                if let Some(r) = recorder {
                    events = r.of_publishes(&plan.publishes, now);
                }
                let commit = (!plan.writes.is_empty()).then_some((plan.writes, changes));
                (plan.publishes, commit, Outcome::Processed)
            }
        };
        // Its place in the order of events, taken now (input order); filled after the commit.
        let slot = match &self.outbox {
            Some(outbox) if !events.is_empty() || commit.is_some() => Some(outbox.reserve()),
            _ => None,
        };
        let sent = InFlight::of(&publishes);
        self.make_room(sent).await?;
        let sends = publishes
            .into_iter()
            .map(|p| publish(self.publish_ch, p))
            .collect::<lapin::Result<Vec<_>>>()?;
        // Writes go to the group-commit writer while the confirms are on their way. Without a
        // store there is nothing to commit: the cache changes already apply.
        let committed = match (self.writer, commit) {
            (Some(writer), Some((writes, changes))) => Some((writer.submit(writes).await, changes)),
            _ => None,
        };
        // Kept (moved, not copied) while its writes are pending, in case the store refuses them.
        let source = committed.is_some().then(|| Source {
            routing_key: key.to_owned(),
            body: delivery.data,
        });
        self.unconfirmed.publishes += sent.publishes;
        self.unconfirmed.bytes += sent.bytes;
        let acker = delivery.acker;
        let channel = self.publish_ch.clone();
        self.pending.push(Box::pin(async move {
            let started = Instant::now();
            let mut all_acked = true;
            let mut outcome = outcome;
            for send in sends {
                let confirmed = confirmed(send).await;
                all_acked &= confirmed;
                if confirmed {
                    engine.metrics.confirmed(started.elapsed().as_secs_f64());
                }
            }
            let mut events = Some(events);
            if let Some((committed, changes)) = committed {
                // Acked only after the writes are committed (§12) and what follows the commit
                // is confirmed; a closed writer means shutdown: leave the input unacked for the
                // next engine.
                match committed.await {
                    Ok(Ok(c)) => {
                        if let (Some(events), Some(w)) = (&mut events, &engine.webhooks) {
                            events.extend(w.recorder.of_commit(engine.pipeline.topics(), &c, now));
                        }
                        for p in engine.pipeline.committed(&changes, &c) {
                            all_acked &= match publish(&channel, p) {
                                Ok(send) => confirmed(send).await,
                                Err(_) => false,
                            };
                        }
                    }
                    // Retrying cannot help (the writer tried it alone): acked once it is safe
                    // in the dead-letter queue, so it stops no one and is not lost.
                    Ok(Err(Poisoned(why))) => {
                        let source = source.expect("kept while writes are pending");
                        let dead_letters = topology::dead_letter_key(&engine.config.broker.queue_name);
                        all_acked &= confirmed(dead_letter(&channel, &dead_letters, source, &why)).await;
                        outcome = Outcome::DeadLettered;
                        // Nothing was committed: nothing happened to tell anyone about.
                        events = None;
                    }
                    Err(_) => all_acked = false,
                }
            }
            // The events, once everything they tell of is done; queued in input order, and
            // confirmed before the ack. An input tried again records them again (same ids).
            if let (Some(slot), Some(events), true) = (slot, events, all_acked) {
                all_acked &= slot.publish(events).await;
            }
            Settled {
                tag,
                acker,
                kind,
                sent,
                all_acked,
                outcome,
                refused,
                reply,
            }
        }));
        Ok(())
    }

    /// Keep the unconfirmed publishes bounded, in number and in bytes: settle older inputs
    /// first if needed.
    async fn make_room(&mut self, wanted: InFlight) -> Result<(), BrokerError> {
        let broker = &self.engine.config.broker;
        let (window, bytes) = (broker.publish_window, broker.in_flight_bytes);
        while self.unconfirmed.publishes + wanted.publishes > window || self.unconfirmed.bytes + wanted.bytes > bytes {
            match self.pending.next().await {
                Some(settled) => self.finish(settled).await?,
                None => break, // a single plan larger than the window still goes out
            }
        }
        self.flush_acks().await
    }

    async fn finish(&mut self, s: Settled) -> Result<(), BrokerError> {
        self.unconfirmed.publishes -= s.sent.publishes;
        self.unconfirmed.bytes -= s.sent.bytes;
        self.engine.metrics.in_flight_add(-1);
        if s.all_acked {
            self.requeue_backoff = None;
            self.engine.metrics.input(s.kind, s.outcome);
            self.acks.settled(s.tag, s.acker);
            let settlement = match (s.outcome, s.refused) {
                (Outcome::DeadLettered, _) => Settlement::DeadLettered,
                (_, Some(reason)) => Settlement::rejected(reason),
                _ => Settlement::Processed,
            };
            self.tell(s.reply, settlement);
        } else {
            if self.outbox.as_ref().is_some_and(Outbox::is_broken) {
                return Err(BrokerError::OutboxClosed);
            }
            // The broker could not take a copy: try the whole input again later (copies that
            // did get through are repeated with the same message_id when the client gave one).
            // Not at once: a broker that refuses every publish (a full queue with
            // reject-publish, a resource alarm) would get the input straight back, in a loop.
            // Waiting here holds the whole session back, which is what an overloaded broker
            // needs; the first input that goes through resets the delay.
            let delay = self
                .requeue_backoff
                .get_or_insert_with(|| Box::new(Backoff::REQUEUE.delays()))
                .next()
                .unwrap_or(Backoff::REQUEUE.max);
            tracing::warn!(
                kind = s.kind,
                delay_ms = delay.as_millis() as u64,
                "publish not confirmed; input requeued after a delay"
            );
            tokio::time::sleep(delay).await;
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

    /// Tell a submitter what became of its input: a transient publish, not waited for (a
    /// reply lost with a broker restart leaves the submitter to its timeout, the input itself
    /// is settled either way).
    fn tell(&self, reply: Option<Reply>, settlement: Settlement) {
        let Some(Reply { to, ticket }) = reply else {
            return;
        };
        let mut p = Publish::json(to, &settlement.reply(&ticket));
        p.persistent = false;
        if let Err(e) = publish(self.publish_ch, p) {
            tracing::warn!(error = %e, "settlement reply not published");
        }
    }

    /// One `basic.ack multiple=true` for everything that may be acked now.
    async fn flush_acks(&mut self) -> Result<(), BrokerError> {
        if let Some(acker) = self.acks.take_ackable() {
            acker.ack(BasicAckOptions { multiple: true }).await?;
        }
        Ok(())
    }
}

/// The one way a publish leaves the engine: handed to lapin's writer, in order, without
/// waiting for the writer thread — the first poll of `basic_publish` queues the frames and
/// registers the confirm; the rest (the write itself, then the confirm) is awaited by
/// [`confirmed`], in the settle future.
fn publish(channel: &Channel, p: Publish) -> lapin::Result<Sending> {
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(if p.persistent { 2 } else { 1 });
    let ch = channel.clone();
    let fut: Pin<Box<dyn Future<Output = _> + Send>> = Box::pin(async move {
        ch.basic_publish(
            EXCHANGE.into(),
            p.key.as_str().into(),
            BasicPublishOptions::default(),
            p.bytes(),
            props,
        )
        .await
    });
    let mut send = maybe_done(fut);
    // Polled once here, so the frames are queued now, in call order; whoever awaits it later
    // polls it again with a real waker.
    let _ = Pin::new(&mut send).poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
    if let MaybeDone::Done(Err(e)) = &send {
        return Err(e.clone());
    }
    Ok(send)
}

/// An input the store refuses for good, as it came (body unchanged, persistent), with its
/// routing key and why in headers, onto the dead-letter queue.
fn dead_letter(channel: &Channel, dead_letters: &str, source: Source, why: &str) -> Sending {
    use lapin::types::{AMQPValue, LongString};
    let mut headers = FieldTable::default();
    let text = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()));
    headers.insert("x-chat21-routing-key".into(), text(&source.routing_key));
    headers.insert("x-chat21-reason".into(), text("store_refused"));
    headers.insert(
        "x-chat21-error".into(),
        text(&why.chars().take(1000).collect::<String>()),
    );
    headers.insert("x-chat21-dead-lettered-at".into(), AMQPValue::LongLongInt(now_ms()));
    let props = BasicProperties::default().with_delivery_mode(2).with_headers(headers);
    let (ch, key, body) = (channel.clone(), dead_letters.to_owned(), source.body);
    let fut: Pin<Box<dyn Future<Output = _> + Send>> = Box::pin(async move {
        ch.basic_publish(
            EXCHANGE.into(),
            key.as_str().into(),
            BasicPublishOptions::default(),
            &body,
            props,
        )
        .await
    });
    maybe_done(fut)
}

/// Wait for a publish's write and then its broker confirm: true when the broker took it.
async fn confirmed(mut send: Sending) -> bool {
    (&mut send).await;
    match Pin::new(&mut send).take_output() {
        Some(Ok(confirm)) => matches!(confirm.await, Ok(Confirmation::Ack(_))),
        _ => false,
    }
}
