//! Which deliveries may be acked, and with how few frames.
//!
//! Inputs settle out of order (their confirms race), but one `basic.ack multiple=true` for
//! tag T acks every unacked delivery up to T on the channel. So we ack, in one frame, the
//! newest settled delivery older than the oldest one still in flight: never an input whose
//! publishes are unconfirmed, and far fewer frames than one ack per input under load.
//!
//! "Older" means every tag below T, including deliveries the broker sent but the session has
//! not taken yet: the consumers of several partition queues share one channel, and each
//! consumer's buffer is read at its own pace, so tag 7 (queue A) can reach the session after
//! tag 9 (queue B). A `multiple=true` ack for 9 would then ack 7 before it was processed.
//! So the limit is also the first tag not seen yet (tags are consecutive per channel, from 1).

use std::collections::{BTreeMap, BTreeSet};

/// Generic over the ack handle so the bookkeeping is unit-tested without a broker.
pub struct AckTracker<H> {
    in_flight: BTreeSet<u64>,
    settled: BTreeMap<u64, H>,
    /// Every tag below this one was seen.
    next_unseen: u64,
    /// Tags seen above `next_unseen`.
    seen_ahead: BTreeSet<u64>,
}

impl<H> Default for AckTracker<H> {
    fn default() -> Self {
        AckTracker {
            in_flight: BTreeSet::new(),
            settled: BTreeMap::new(),
            next_unseen: 1,
            seen_ahead: BTreeSet::new(),
        }
    }
}

impl<H> AckTracker<H> {
    /// A delivery arrived.
    pub fn delivered(&mut self, tag: u64) {
        self.in_flight.insert(tag);
        if tag == self.next_unseen {
            self.next_unseen += 1;
            while self.seen_ahead.remove(&self.next_unseen) {
                self.next_unseen += 1;
            }
        } else if tag > self.next_unseen {
            self.seen_ahead.insert(tag);
        }
    }

    /// A delivery is done (processed or rejected) and may be acked.
    pub fn settled(&mut self, tag: u64, handle: H) {
        self.in_flight.remove(&tag);
        self.settled.insert(tag, handle);
    }

    /// A delivery was answered some other way (nack + requeue): forget it.
    pub fn abandoned(&mut self, tag: u64) {
        self.in_flight.remove(&tag);
    }

    /// The handle to ack with `multiple=true`, if any: the newest settled delivery older than
    /// every delivery still in flight. Everything it covers is forgotten.
    pub fn take_ackable(&mut self) -> Option<H> {
        let limit = self
            .in_flight
            .first()
            .copied()
            .unwrap_or(u64::MAX)
            .min(self.next_unseen);
        let (&tag, _) = self.settled.range(..limit).next_back()?;
        let newer = self.settled.split_off(&(tag + 1));
        let handle = self.settled.remove(&tag);
        self.settled = newer;
        handle
    }

    /// Every settled delivery `take_ackable` cannot cover yet (one below it is in flight or
    /// not taken), for acks one by one: at shutdown, when those below will never settle here.
    pub fn take_settled(&mut self) -> Vec<H> {
        std::mem::take(&mut self.settled).into_values().collect()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_only_below_the_oldest_in_flight() {
        let mut t = AckTracker::default();
        for tag in 1..=5 {
            t.delivered(tag);
        }
        t.settled(2, "h2");
        t.settled(3, "h3");
        assert_eq!(t.take_ackable(), None, "1 is still in flight");
        t.settled(1, "h1");
        assert_eq!(t.take_ackable(), Some("h3"), "one frame for 1..=3");
        assert_eq!(t.take_ackable(), None);
        t.settled(5, "h5");
        assert_eq!(t.take_ackable(), None, "4 is still in flight");
        t.abandoned(4);
        assert_eq!(t.take_ackable(), Some("h5"));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn never_acks_over_a_delivery_not_taken_yet() {
        let mut t = AckTracker::default();
        // Tags 1 and 3 from one queue's consumer, 2 still in the other's buffer.
        t.delivered(1);
        t.delivered(3);
        t.settled(1, "h1");
        t.settled(3, "h3");
        assert_eq!(t.take_ackable(), Some("h1"), "2 is below 3 and not seen");
        assert_eq!(t.take_ackable(), None);
        t.delivered(2);
        t.settled(2, "h2");
        assert_eq!(t.take_ackable(), Some("h3"));
    }

    #[test]
    fn at_shutdown_what_is_settled_is_handed_out_one_by_one() {
        let mut t = AckTracker::default();
        for tag in 1..=3 {
            t.delivered(tag);
        }
        t.settled(2, "h2");
        t.settled(3, "h3");
        assert_eq!(t.take_ackable(), None, "1 never settles");
        assert_eq!(t.take_settled(), vec!["h2", "h3"]);
        assert_eq!(t.take_ackable(), None);
    }

    #[test]
    fn everything_settled_is_acked_in_one_frame() {
        let mut t = AckTracker::default();
        for tag in 1..=100 {
            t.delivered(tag);
        }
        for tag in (1..=100).rev() {
            t.settled(tag, tag);
        }
        assert_eq!(t.take_ackable(), Some(100));
        assert_eq!(t.take_ackable(), None);
    }
}
