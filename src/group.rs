//! Groups (PROTOCOL §4): the group object, its member list, and the membership cache that
//! keeps store reads off the hot path.

use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;

use crate::cache::Lookaside;
use crate::message::{is_valid_id, RejectReason};

/// A group as the store and the fan-out see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub uid: String,
    pub app_id: String,
    /// Member ids in the order of the group object's `members` keys: the fan-out order.
    pub members: Vec<String>,
    /// The group object as the managing service sent it (name, owner, attributes,
    /// createdOn, …): what `clientupdated` carries and what the store keeps.
    pub object: Map<String, Value>,
    pub created_on: i64,
    pub updated_on: i64,
}

impl Group {
    /// A group from an I8 payload's `group` object (or a stored one). `uid` must be a valid
    /// id; `members`, when present, an object whose keys are valid ids (missing = no members).
    pub fn from_object(app_id: &str, object: &Map<String, Value>, now_ms: i64) -> Result<Group, RejectReason> {
        let uid = match object.get("uid") {
            Some(Value::String(uid)) if is_valid_id(uid) => uid.clone(),
            Some(Value::String(_)) => return Err(RejectReason::InvalidId),
            _ => return Err(RejectReason::BadGroup),
        };
        let members = match object.get("members") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => member_ids(v)?,
        };
        let created_on = object.get("createdOn").and_then(Value::as_i64).unwrap_or(now_ms);
        Ok(Group {
            uid,
            app_id: app_id.to_owned(),
            members,
            object: object.clone(),
            created_on,
            updated_on: now_ms,
        })
    }

    pub fn is_member(&self, id: &str) -> bool {
        self.members.iter().any(|m| m == id)
    }
}

/// The keys of a Chat21 member map (`{"U1": 1, "U2": 1}`), in order. Every key must be a
/// valid id: a member id ends up in a routing key.
pub fn member_ids(v: &Value) -> Result<Vec<String>, RejectReason> {
    let Value::Object(map) = v else {
        return Err(RejectReason::BadGroup);
    };
    map.keys()
        .map(|k| {
            if is_valid_id(k) {
                Ok(k.clone())
            } else {
                Err(RejectReason::InvalidId)
            }
        })
        .collect()
}

/// What the engine knows about a group id without I/O.
#[derive(Debug, Clone, PartialEq)]
pub enum GroupLookup {
    /// A stored group (§4.1).
    Stored(Arc<Group>),
    /// Known not to be stored: an inline (§4.2) or transient (§4.3) group.
    NotStored,
    /// Not in the cache: the store must be asked.
    Unknown,
}

impl From<Option<Arc<Group>>> for GroupLookup {
    fn from(g: Option<Arc<Group>>) -> Self {
        g.map_or(GroupLookup::NotStored, GroupLookup::Stored)
    }
}

/// Group lookups, absent groups included (a transient group is written to many times before
/// a service creates it). See [`Lookaside`] for the eviction and overlay rules.
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

    pub fn lookup(&self, uid: &str) -> GroupLookup {
        match self.cache.get(uid) {
            Some(g) => g.into(),
            None => GroupLookup::Unknown,
        }
    }

    /// Record what the store said.
    pub fn put(&self, uid: String, group: Option<Arc<Group>>) {
        self.cache.put(uid, group);
    }

    /// A group update was planned: it applies to every input planned after it. With a store
    /// (`durable`), call [`GroupCache::committed`] once its write committed.
    pub fn updated(&self, group: Arc<Group>, durable: bool) {
        self.cache.changed(group.uid.clone(), Some(group), durable);
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

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn group_from_object() {
        let g = Group::from_object(
            "app",
            &obj(json!({"uid":"g1","members":{"b":1,"a":1,"c":1},"createdOn":5})),
            9,
        )
        .unwrap();
        assert_eq!(g.members, vec!["b", "a", "c"], "member order is the object's order");
        assert_eq!((g.created_on, g.updated_on), (5, 9));
        assert!(g.is_member("a") && !g.is_member("d"));
        let empty = Group::from_object("app", &obj(json!({"uid":"g1"})), 9).unwrap();
        assert!(empty.members.is_empty());
    }

    #[test]
    fn bad_groups() {
        let err = |v: Value| Group::from_object("app", &obj(v), 0).unwrap_err();
        assert_eq!(err(json!({"members":{}})), RejectReason::BadGroup);
        assert_eq!(err(json!({"uid":7})), RejectReason::BadGroup);
        assert_eq!(err(json!({"uid":"a.b"})), RejectReason::InvalidId);
        assert_eq!(err(json!({"uid":"g","members":["a"]})), RejectReason::BadGroup);
        assert_eq!(err(json!({"uid":"g","members":"a"})), RejectReason::BadGroup);
        assert_eq!(err(json!({"uid":"g","members":{"a b":1}})), RejectReason::InvalidId);
    }

    #[test]
    fn cache_remembers_absent_groups_and_updates() {
        let c = GroupCache::new(100, Duration::from_secs(60));
        assert_eq!(c.lookup("g"), GroupLookup::Unknown);
        c.put("g".into(), None);
        assert_eq!(c.lookup("g"), GroupLookup::NotStored);
        let g = Arc::new(Group::from_object("a", &obj(json!({"uid":"g","members":{"x":1}})), 0).unwrap());
        c.put("g".into(), Some(g.clone()));
        assert_eq!(c.lookup("g"), GroupLookup::Stored(g));
    }

    #[test]
    fn updates_are_seen_until_committed_even_when_they_do_not_fit() {
        let c = GroupCache::new(1, Duration::from_secs(60));
        let g = Arc::new(Group::from_object("a", &obj(json!({"uid":"g","members":{"x":1,"y":1}})), 0).unwrap());
        c.updated(g.clone(), true);
        assert_eq!(c.lookup("g"), GroupLookup::Stored(g.clone()));
        c.committed(&g);
        assert_eq!(c.lookup("g"), GroupLookup::Unknown);
    }
}
