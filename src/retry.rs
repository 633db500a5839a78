//! The one retry policy of the engine: exponential, capped, jittered delays, without a limit
//! on attempts — the engine never gives up on its broker or its store, it waits (inputs stay
//! unacked meanwhile, so nothing is lost) — and one "retry until it works or shutdown" helper.

use backon::{BackoffBuilder, ExponentialBuilder};
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Delays between attempts: from `min`, doubling, capped at `max`, jittered so that many
/// engines do not retry in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Backoff {
    /// A store read or write on the hot path: inputs wait behind it, so start fast.
    pub const STORE: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    /// Opening the store at start-up.
    pub const STORE_OPEN: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    /// (Re)connecting to the broker.
    pub const BROKER: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    /// Requeueing an input whose publish the broker refused (nack).
    pub const REQUEUE: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));

    pub const fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { min, max }
    }

    /// A fresh sequence of delays (endless; the jitter adds at most the delay itself, so none
    /// is longer than twice `max`).
    pub fn delays(&self) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::default()
            .with_min_delay(self.min)
            .with_max_delay(self.max)
            .with_jitter()
            .without_max_times()
            .build()
    }
}

/// Run `attempt` until it succeeds, waiting `backoff` between failures (each reported to
/// `failed`). `None`: `shutdown` came first — the caller leaves its input to the broker.
pub async fn until_ok<T, E, F, Fut>(
    backoff: Backoff,
    shutdown: &CancellationToken,
    mut failed: impl FnMut(&E),
    mut attempt: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delays = backoff.delays();
    loop {
        // Tried even during shutdown: a drain still settles what the store can answer.
        match attempt().await {
            Ok(v) => return Some(v),
            Err(e) => failed(&e),
        }
        let delay = delays.next().unwrap_or(backoff.max);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    const FAST: Backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(4));

    #[test]
    fn delays_grow_and_stay_capped() {
        let d: Vec<Duration> = FAST.delays().take(20).collect();
        assert_eq!(d.len(), 20, "endless");
        assert!(d.iter().all(|d| *d <= FAST.max * 2), "{d:?}");
    }

    #[tokio::test]
    async fn retries_until_it_works() {
        let tries = AtomicU32::new(0);
        let mut failures = 0;
        let got = until_ok(
            FAST,
            &CancellationToken::new(),
            |_: &&str| failures += 1,
            || async {
                if tries.fetch_add(1, Ordering::SeqCst) < 3 {
                    Err("not yet")
                } else {
                    Ok(7)
                }
            },
        )
        .await;
        assert_eq!(got, Some(7));
        assert_eq!(failures, 3);
    }

    #[tokio::test]
    async fn shutdown_ends_the_wait() {
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            stop.cancel();
        });
        let never = until_ok(FAST, &shutdown, |_: &()| {}, || async { Err::<(), ()>(()) }).await;
        assert_eq!(never, None);
    }
}
