//! A budget for per-input (and per-event) log lines — rejections, failing webhook POSTs: a
//! flood of bad inputs from one client, or a dead endpoint, must not become a flood of log lines (disk, collectors, and the CPU the broker needs). Up
//! to `PER_SECOND` lines a second pass, with bursts; the lines over it are not written but
//! counted, and the next line written says how many were left out. The counters in
//! `/metrics` stay exact either way.

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

const PER_SECOND: NonZeroU32 = NonZeroU32::new(20).unwrap();
const BURST: NonZeroU32 = NonZeroU32::new(200).unwrap();

pub struct LogBudget {
    limiter: DefaultDirectRateLimiter,
    suppressed: AtomicU64,
}

impl Default for LogBudget {
    fn default() -> Self {
        LogBudget {
            limiter: RateLimiter::direct(Quota::per_second(PER_SECOND).allow_burst(BURST)),
            suppressed: AtomicU64::new(0),
        }
    }
}

impl LogBudget {
    /// `Some(n)`: write the line, and say that `n` lines were left out before it; `None`:
    /// leave it out (counted).
    pub fn take(&self) -> Option<u64> {
        match self.limiter.check() {
            Ok(()) => Some(self.suppressed.swap(0, Ordering::Relaxed)),
            Err(_) => {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_to_the_burst_and_the_rest_counted() {
        let budget = LogBudget::default();
        let written = (0..1000).filter(|_| budget.take().is_some()).count();
        assert!((200..=210).contains(&written), "{written}");
        std::thread::sleep(std::time::Duration::from_millis(120));
        let left_out = budget.take().expect("a token again after 50 ms");
        assert!(left_out >= 790, "{left_out}");
        assert_eq!(budget.take(), Some(0));
    }
}
