//! Block lists (PROTOCOL §9) as the hot path reads them: who a user has blocked, cached per
//! user (bounded, expiring; see [`Lookaside`]), loaded from the store in one batch for all the
//! receivers of an input the cache does not know.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::cache::Lookaside;

/// The ids one user blocked.
pub type BlockSet = Arc<HashSet<String>>;

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

    pub fn get(&self, user: &str) -> Option<BlockSet> {
        self.cache.get(user)
    }

    /// Record what the store said.
    pub fn put(&self, user: String, set: BlockSet) {
        self.cache.put(user, set);
    }

    /// A block command was planned: `set` is the user's list from now on. With a store
    /// (`durable`), call [`BlockCache::committed`] once its write committed.
    pub fn changed(&self, user: String, set: BlockSet, durable: bool) {
        self.cache.changed(user, set, durable);
    }

    pub fn committed(&self, user: &str, set: &BlockSet) {
        self.cache.committed(user, |s| Arc::ptr_eq(s, set));
    }
}

/// `set` with `other` added or removed.
pub fn apply(set: &BlockSet, other: &str, add: bool) -> BlockSet {
    let mut next = HashSet::clone(set);
    if add {
        next.insert(other.to_owned());
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
        let one = apply(&empty, "x", true);
        assert!(one.contains("x") && empty.is_empty());
        assert!(apply(&one, "x", false).is_empty());
    }
}
