//! The block-list cache (PROTOCOL §9): who a user has blocked, per user (bounded, expiring;
//! see [`Lookaside`]), loaded from the store in one batch for all the receivers of an input
//! the cache does not know.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::cache::Lookaside;
use crate::domain::UserId;

/// The ids one user blocked.
pub type BlockSet = Arc<HashSet<UserId>>;

pub struct BlockCache {
    cache: Lookaside<BlockSet>,
}

impl BlockCache {
    /// `capacity`: most entries held (a user weighs 1 + the number of users they blocked).
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        let weigh = |s: &BlockSet| u32::try_from(s.len() + 1).unwrap_or(u32::MAX);
        BlockCache {
            cache: Lookaside::new(capacity, ttl, weigh),
        }
    }

    pub fn get(&self, user: &UserId) -> Option<BlockSet> {
        self.cache.get(user)
    }

    /// Record what the store said.
    pub fn put(&self, user: &UserId, set: BlockSet) {
        self.cache.put(user.to_string(), set);
    }

    /// A block command was planned: `set` is the user's list from now on. With a store
    /// (`durable`), call [`BlockCache::committed`] once its write committed.
    pub fn changed(&self, user: &UserId, set: BlockSet, durable: bool) {
        self.cache.changed(user.to_string(), set, durable);
    }

    pub fn committed(&self, user: &UserId, set: &BlockSet) {
        self.cache.committed(user, |s| Arc::ptr_eq(s, set));
    }
}

/// `set` with `other` added or removed.
pub fn apply(set: &BlockSet, other: &UserId, add: bool) -> BlockSet {
    let mut next = HashSet::clone(set);
    if add {
        next.insert(other.clone());
    } else {
        next.remove(other);
    }
    Arc::new(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_adds_and_removes() {
        let empty = BlockSet::default();
        let x = UserId::from("x");
        let one = apply(&empty, &x, true);
        assert!(one.contains("x") && empty.is_empty());
        assert!(apply(&one, &x, false).is_empty());
    }
}
