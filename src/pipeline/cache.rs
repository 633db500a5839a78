//! A bounded, expiring lookaside cache for state the hot path reads (groups, block lists),
//! with an overlay for changes that are planned but not committed yet.
//!
//! Why the overlay: a change takes effect for the very next input (inputs are planned in
//! delivery order), but until its store commit a cache miss would read the old row. So a
//! planned change stays in the overlay — authoritative whatever the cache evicts — until its
//! commit is done. Why LRU and not moka's default TinyLFU: a just-written entry must be
//! admitted at once. Why a TTL: other engine replicas may change the same state; the TTL
//! bounds how stale this replica's view can get.

use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

pub struct Lookaside<V: Clone + Send + Sync + 'static> {
    cache: Cache<String, V>,
    uncommitted: Mutex<HashMap<String, V>>,
}

impl<V: Clone + Send + Sync + 'static> Lookaside<V> {
    /// `capacity` in weight units; `weigh` gives an entry's weight (at least 1).
    pub fn new(capacity: u64, ttl: Duration, weigh: fn(&V) -> u32) -> Self {
        let cache = Cache::builder()
            .max_capacity(capacity)
            .weigher(move |_: &String, v: &V| weigh(v).max(1))
            .time_to_live(ttl)
            .eviction_policy(EvictionPolicy::lru())
            .build();
        Lookaside {
            cache,
            uncommitted: Mutex::default(),
        }
    }

    /// The uncommitted change, else the cached value.
    pub fn get(&self, key: &str) -> Option<V> {
        if let Some(v) = self.overlay().get(key) {
            return Some(v.clone());
        }
        self.cache.get(key)
    }

    /// Record what the store said.
    pub fn put(&self, key: String, value: V) {
        self.cache.insert(key, value);
        // Apply the size bound now rather than lazily: puts are rare (misses and changes), and
        // a bound that holds exactly is one an operator can size memory by.
        self.cache.run_pending_tasks();
    }

    /// A change was planned: it applies to every input planned after it. With a store
    /// (`durable`), call [`Lookaside::committed`] once its write committed.
    pub fn changed(&self, key: String, value: V, durable: bool) {
        if durable {
            self.overlay().insert(key.clone(), value.clone());
        }
        self.put(key, value);
    }

    /// The change `is_it` recognises is in the store now (unless a newer change of the same
    /// key is still pending: then that one stays).
    pub fn committed(&self, key: &str, is_it: impl Fn(&V) -> bool) {
        let mut overlay = self.overlay();
        if overlay.get(key).is_some_and(is_it) {
            overlay.remove(key);
        }
    }

    fn overlay(&self) -> MutexGuard<'_, HashMap<String, V>> {
        // The map is valid whatever a panicking holder did (single inserts and removes).
        self.uncommitted.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn uncommitted_changes_survive_eviction_until_committed() {
        // Too small to hold anything of weight 2.
        let c: Lookaside<Arc<u32>> = Lookaside::new(1, Duration::from_secs(60), |_| 2);
        let first = Arc::new(1);
        c.changed("k".into(), first.clone(), true);
        assert_eq!(c.get("k"), Some(first.clone()));
        // A newer change is pending: the older commit does not drop it.
        let newer = Arc::new(2);
        c.changed("k".into(), newer.clone(), true);
        c.committed("k", |v| Arc::ptr_eq(v, &first));
        assert_eq!(c.get("k"), Some(newer.clone()));
        c.committed("k", |v| Arc::ptr_eq(v, &newer));
        assert_eq!(c.get("k"), None, "evicted: the store has it now");
    }

    #[test]
    fn plain_puts_are_cached() {
        let c: Lookaside<u32> = Lookaside::new(10, Duration::from_secs(60), |_| 1);
        assert_eq!(c.get("a"), None);
        c.put("a".into(), 7);
        assert_eq!(c.get("a"), Some(7));
    }
}
