//! The group cache: membership of stored groups, read on the hot path without a store round
//! trip, absent groups included (a transient group is written to many times before a service
//! creates it). See [`Lookaside`] for the eviction and overlay rules.

use std::sync::Arc;
use std::time::Duration;

use super::cache::Lookaside;
use crate::domain::{Group, UserId};

/// What the engine knows about a group id without I/O.
#[derive(Debug, Clone, PartialEq)]
pub enum GroupLookup {
    /// Known: the stored group (§4.1), or `None` — not stored (an inline §4.2 or transient §4.3 group).
    Known(Option<Arc<Group>>),
    /// Not in the cache: the store must be asked.
    Unknown,
}

pub struct GroupCache {
    cache: Lookaside<Option<Arc<Group>>>,
}

impl GroupCache {
    /// `capacity`: most member slots held (a group weighs 1 + its member count).
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        let weigh = |g: &Option<Arc<Group>>| {
            let members = g.as_ref().map_or(0, |g| g.members.len());
            u32::try_from(members + 1).unwrap_or(u32::MAX)
        };
        GroupCache {
            cache: Lookaside::new(capacity, ttl, weigh),
        }
    }

    pub fn lookup(&self, uid: &UserId) -> GroupLookup {
        match self.cache.get(uid) {
            Some(g) => GroupLookup::Known(g),
            None => GroupLookup::Unknown,
        }
    }

    /// Record what the store said.
    pub fn put(&self, uid: &UserId, group: Option<Arc<Group>>) {
        self.cache.put(uid.to_string(), group);
    }

    /// A group update was planned: it applies to every input planned after it. With a store
    /// (`durable`), call [`GroupCache::committed`] once its write committed.
    pub fn updated(&self, group: Arc<Group>, durable: bool) {
        self.cache.changed(group.uid.to_string(), Some(group), durable);
    }

    /// This update is in the store now.
    pub fn committed(&self, group: &Arc<Group>) {
        self.cache
            .committed(&group.uid, |g| g.as_ref().is_some_and(|g| Arc::ptr_eq(g, group)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn group(members: serde_json::Value) -> Arc<Group> {
        let obj = json!({"uid":"g","members":members});
        Arc::new(Group::from_object(&"a".into(), obj.as_object().unwrap(), 0).unwrap())
    }

    #[test]
    fn cache_remembers_absent_groups_and_updates() {
        let c = GroupCache::new(100, Duration::from_secs(60));
        let uid = UserId::from("g");
        assert_eq!(c.lookup(&uid), GroupLookup::Unknown);
        c.put(&uid, None);
        assert_eq!(c.lookup(&uid), GroupLookup::Known(None));
        let g = group(json!({"x":1}));
        c.put(&uid, Some(g.clone()));
        assert_eq!(c.lookup(&uid), GroupLookup::Known(Some(g)));
    }

    #[test]
    fn updates_are_seen_until_committed_even_when_they_do_not_fit() {
        let c = GroupCache::new(1, Duration::from_secs(60));
        let g = group(json!({"x":1,"y":1}));
        c.updated(g.clone(), true);
        assert_eq!(c.lookup(&g.uid), GroupLookup::Known(Some(g.clone())));
        c.committed(&g);
        assert_eq!(c.lookup(&g.uid), GroupLookup::Unknown);
    }
}
