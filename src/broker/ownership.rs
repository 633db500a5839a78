//! Which partitions this engine consumes when several engines share one PostgreSQL store:
//! about an equal share each, decided with PostgreSQL's own session advisory locks, no
//! coordinator of ours.
//!
//! - **Members.** Every engine of a deployment (one `QUEUE_NAME` in one database schema)
//!   holds a shared advisory lock on `(ns, 0)`; `pg_locks` counts them. A lock belongs to a
//!   database session, so an engine that dies (SIGKILL, a lost machine once its TCP connection
//!   is gone) leaves the count by itself.
//! - **Partitions.** Partition `p` is the exclusive lock `(ns, p + 1)`. Every second each
//!   engine computes its share, `ceil(P / members)`: with fewer, it tries the free ones; with
//!   more, it gives the highest ones back. A join or a leave is rebalanced within a few seconds
//!   (`TICK`, plus the drain of a partition given back).
//! - **Handover.** A partition given back is first dropped from [`Ownership::desired`]; the
//!   session then stops taking inputs, settles the ones it took, and closes its channel, which
//!   returns what it had buffered to the queue in order. Only once the session reports
//!   ([`Ownership::consuming`]) that it no longer consumes it is the lock released and another
//!   engine can take it.
//! - **Never two at once.** The partition queues keep single active consumer: an engine that
//!   took a lock subscribes at once, but the broker activates it only when the previous
//!   consumer's channel is gone — even if this bookkeeping were wrong (the lock connection cut
//!   while the old owner still runs), a partition is never processed by two engines at once,
//!   and its inputs come in order.
//!
//! If the lock connection fails, this engine's locks are gone with it: it stops consuming
//! everything (another engine may take over) and claims again once it reconnects.

use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection, Row};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::retry::Backoff;

/// How often an engine looks at the members and its share.
pub const TICK: Duration = Duration::from_secs(1);

/// Partitions, by index into the layout's queues.
pub type Partitions = BTreeSet<usize>;

/// This engine's share of the partitions, as it changes.
pub struct Ownership {
    /// The partitions the session should consume now.
    pub desired: watch::Receiver<Partitions>,
    /// What the session consumes now (it reports after every change, and an empty set when
    /// it ends): a partition's lock is released only once it is not in here.
    pub consuming: watch::Sender<Partitions>,
}

impl Ownership {
    /// Take part in the partitions of `queue` (`partitions` of them) through the PostgreSQL
    /// database at `url`, until `shutdown`.
    pub fn spawn(
        url: String,
        queue: String,
        partitions: usize,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Ownership {
        let (desired_tx, desired) = watch::channel(Partitions::new());
        let (consuming, consuming_rx) = watch::channel(Partitions::new());
        tokio::spawn(async move {
            let mut delays = Backoff::STORE.delays();
            while !shutdown.is_cancelled() {
                match Claims::connect(&url, &queue, partitions).await {
                    Ok(claims) => {
                        delays = Backoff::STORE.delays();
                        let end = claims.run(&desired_tx, consuming_rx.clone(), &shutdown).await;
                        // The locks went with the connection (or are released at shutdown).
                        desired_tx.send_replace(Partitions::new());
                        match end {
                            Ok(()) => return,
                            Err(e) => {
                                tracing::warn!(error = %e, "partition locks lost with their PostgreSQL connection; consuming none until they are claimed again")
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "PostgreSQL not reachable for the partition locks; retrying"),
                }
                metrics.set_partitions_owned(0);
                tokio::select! {
                    _ = tokio::time::sleep(delays.next().unwrap_or(Backoff::STORE.max)) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        });
        Ownership { desired, consuming }
    }
}

/// The share of the partitions `partitions` each of `members` engines may hold.
pub fn share(partitions: usize, members: usize) -> usize {
    partitions.div_ceil(members.max(1))
}

/// One lock session: the membership lock and the partition locks held on it.
struct Claims {
    conn: PgConnection,
    ns: i32,
    partitions: usize,
    held: Partitions,
    /// Held, no longer desired, waiting for the session to let go.
    releasing: Partitions,
}

impl Claims {
    async fn connect(url: &str, queue: &str, partitions: usize) -> Result<Claims, sqlx::Error> {
        let mut conn = PgConnection::connect(url).await?;
        // One deployment = one queue name in one schema: two deployments sharing a database
        // never count each other as members.
        let schema: String = sqlx::query("SELECT current_schema()")
            .fetch_one(&mut conn)
            .await?
            .try_get(0)?;
        let ns = namespace(queue, &schema);
        sqlx::query("SELECT pg_advisory_lock_shared($1, 0)")
            .bind(ns)
            .execute(&mut conn)
            .await?;
        Ok(Claims {
            conn,
            ns,
            partitions,
            held: Partitions::new(),
            releasing: Partitions::new(),
        })
    }

    async fn run(
        mut self,
        desired: &watch::Sender<Partitions>,
        mut consuming: watch::Receiver<Partitions>,
        shutdown: &CancellationToken,
    ) -> Result<(), sqlx::Error> {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                // The session let go of something: release it now rather than at the next tick.
                changed = consuming.changed() => if changed.is_err() { return Ok(()) },
                _ = shutdown.cancelled() => {
                    // The connection's end releases every lock; closing it says so at once.
                    let _ = self.conn.close().await;
                    return Ok(());
                }
            }
            let now = consuming.borrow_and_update().clone();
            self.step(desired, &now).await?;
        }
    }

    /// One look at the members: give back what is over the share, claim what is missing.
    async fn step(&mut self, desired: &watch::Sender<Partitions>, consuming: &Partitions) -> Result<(), sqlx::Error> {
        for p in self.releasing.clone() {
            if !consuming.contains(&p) {
                sqlx::query("SELECT pg_advisory_unlock($1, $2)")
                    .bind(self.ns)
                    .bind(p as i32 + 1)
                    .execute(&mut self.conn)
                    .await?;
                self.releasing.remove(&p);
                self.held.remove(&p);
                tracing::info!(partition = p, "partition handed over");
            }
        }
        let members: i64 = sqlx::query(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND classid::bigint = $1 AND objid::bigint = 0 AND objsubid = 2",
        )
        .bind(i64::from(self.ns))
        .fetch_one(&mut self.conn)
        .await?
        .try_get(0)?;
        let share = share(self.partitions, members as usize);
        let wanted: Partitions = self.held.difference(&self.releasing).copied().collect();
        let mut keep = wanted.clone();
        // Over the share: the highest ones go back (the others claim from the lowest).
        while keep.len() > share {
            let last = *keep.iter().next_back().expect("non-empty");
            keep.remove(&last);
            self.releasing.insert(last);
        }
        if self.held.len() < share {
            for p in 0..self.partitions {
                if self.held.len() >= share {
                    break;
                }
                if self.held.contains(&p) {
                    continue;
                }
                let got: bool = sqlx::query("SELECT pg_try_advisory_lock($1, $2)")
                    .bind(self.ns)
                    .bind(p as i32 + 1)
                    .fetch_one(&mut self.conn)
                    .await?
                    .try_get(0)?;
                if got {
                    self.held.insert(p);
                    keep.insert(p);
                }
            }
        }
        if keep != *desired.borrow() {
            tracing::info!(members, share, partitions = ?keep, "partition share changed");
            desired.send_replace(keep);
        }
        Ok(())
    }
}

/// The advisory-lock namespace of a deployment: 31 bits of SHA-256 over its queue name and
/// schema (non-negative, so `pg_locks.classid` shows it as it is).
fn namespace(queue: &str, schema: &str) -> i32 {
    let digest = Sha256::digest(format!("chat21-engine\0{queue}\0{schema}").as_bytes());
    i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) & 0x7fff_ffff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_partition() {
        for p in 1..=32 {
            for m in 1..=8 {
                assert!(share(p, m) * m >= p, "{p} partitions, {m} members");
                assert!(share(p, m) <= p);
            }
        }
        assert_eq!(share(6, 3), 2);
        assert_eq!(share(6, 4), 2);
        assert_eq!(share(12, 0), 12);
    }

    #[test]
    fn namespaces_are_per_queue_and_schema_and_non_negative() {
        let a = namespace("chat21.engine", "public");
        assert_eq!(a, namespace("chat21.engine", "public"));
        assert_ne!(a, namespace("chat21.engine", "other"));
        assert_ne!(a, namespace("chat21.engine2", "public"));
        assert!(a >= 0);
    }
}
