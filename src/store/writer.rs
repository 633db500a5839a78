//! Group commit: the writes of every input in flight go into as few transactions as
//! possible. One task owns the writing; inputs hand it their writes and wait for a "committed"
//! signal before they are acked. If the database is out, the task retries the same batch with
//! backoff until it commits: nothing is acked meanwhile, so nothing is lost, and memory stays
//! bounded by the prefetch (the channel holds at most one job per input in flight). If the
//! database refuses the batch for its data (a permanent error), retrying would stall every
//! input forever: the batch is split, each input committed alone, and one that still fails is
//! handed back as [`Poisoned`] for the consumer to dead-letter.

use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

use super::{Applied, Store, StoreError};
use crate::metrics::Metrics;
use crate::plan::{Committed, Write};
use crate::retry::Backoff;

/// Most writes folded into one transaction.
const MAX_BATCH_WRITES: usize = 4096;

struct Job {
    writes: Vec<Write>,
    done: oneshot::Sender<Result<Committed, Poisoned>>,
}

/// The store refused an input's writes for their data (see [`StoreError::is_permanent`]),
/// even committed alone: retrying cannot help, so the input is dead-lettered, not retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poisoned(pub String);

impl Job {
    fn archives(&self) -> bool {
        self.writes.iter().any(|w| matches!(w, Write::Archive { .. }))
    }
}

/// Handle to the writer task.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
}

impl Writer {
    /// Start the writer task. `capacity` should be at least the prefetch.
    pub fn spawn(store: Store, metrics: Arc<Metrics>, capacity: usize) -> Writer {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        tokio::spawn(run(store, metrics, rx));
        Writer { tx }
    }

    /// Queue writes; the receiver resolves once they are committed (or refused for good). If
    /// the writer is gone (shutdown) the receiver errors and the input is not acked.
    pub async fn submit(&self, writes: Vec<Write>) -> oneshot::Receiver<Result<Committed, Poisoned>> {
        let (done, rx) = oneshot::channel();
        let _ = self.tx.send(Job { writes, done }).await;
        rx
    }
}

async fn run(store: Store, metrics: Arc<Metrics>, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        let mut count = jobs[0].writes.len();
        // An archive ends its batch: the batch's upserts run before its updates, and a message
        // that arrived after the archive must un-archive again, so it goes in the next batch.
        while count < MAX_BATCH_WRITES && !jobs.last().is_some_and(Job::archives) {
            match rx.try_recv() {
                Ok(job) => {
                    count += job.writes.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        // Borrowed, not cloned: the jobs keep their writes to be told what the commit changed.
        let writes: Vec<&Write> = jobs.iter().flat_map(|j| j.writes.iter()).collect();
        match commit(&store, &metrics, &writes, jobs.len()).await {
            Ok(mut applied) => {
                // Each input gets what its own writes revealed.
                let mut start = 0;
                for job in jobs {
                    let end = start + job.writes.len();
                    let _ = job.done.send(Ok(applied.take(start..end)));
                    start = end;
                }
            }
            Err(e) => {
                // Some input's data is what the database refuses, and the transaction is all
                // or nothing: commit the inputs one by one, in order, so the others go
                // through and only one that fails on its own is refused.
                tracing::warn!(error = %e, inputs = jobs.len(), "store refused a batch for its data; committing its inputs one by one");
                for job in jobs {
                    let writes: Vec<&Write> = job.writes.iter().collect();
                    let result = match commit(&store, &metrics, &writes, 1).await {
                        Ok(mut applied) => Ok(applied.take(0..writes.len())),
                        Err(e) => {
                            tracing::error!(error = %e, "store refuses an input's writes for good; it is dead-lettered");
                            Err(Poisoned(e.to_string()))
                        }
                    };
                    let _ = job.done.send(result);
                }
            }
        }
    }
}

/// Commit `writes` in one transaction, retrying while the store is out (logged once per
/// outage). Not `retry::until_ok`: a commit is retried through shutdown too (the inputs
/// waiting for it are acked only after it). Err only for a permanent error.
async fn commit(store: &Store, metrics: &Metrics, writes: &[&Write], inputs: usize) -> Result<Applied, StoreError> {
    let mut delays = Backoff::STORE.delays();
    loop {
        let started = std::time::Instant::now();
        match store.apply(writes).await {
            Ok(applied) => {
                metrics.committed(started.elapsed().as_secs_f64());
                metrics.set_store_ok(true);
                return Ok(applied);
            }
            // The database answered: it is up, the data is the problem.
            Err(e) if e.is_permanent() => {
                metrics.set_store_ok(true);
                return Err(e);
            }
            Err(e) => {
                if metrics.store_ok() {
                    tracing::warn!(error = %e, inputs, "store write failed; retrying, inputs stay unacked");
                }
                metrics.set_store_ok(false);
                tokio::time::sleep(delays.next().unwrap_or(Backoff::STORE.max)).await;
            }
        }
    }
}
