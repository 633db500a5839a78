//! A group (PROTOCOL §4): its member list and the object the managing service sent.

use serde_json::{Map, Value};

use super::ids::{AppId, UserId};
use super::message::member_ids;
use super::rejection::RejectReason;

/// A group as the store and the fan-out see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub uid: UserId,
    pub app_id: AppId,
    /// Member ids in the order of the group object's `members` keys: the fan-out order.
    pub members: Vec<UserId>,
    /// The group object as the managing service sent it (name, owner, attributes,
    /// createdOn, …): what `clientupdated` carries and what the store keeps.
    pub object: Map<String, Value>,
    pub created_on: i64,
    pub updated_on: i64,
}

impl Group {
    /// A group from an I8 payload's `group` object (or a stored one). `uid` must be a valid
    /// id; `members`, when present, an object whose keys are valid ids (missing = no members).
    pub fn from_object(app_id: &AppId, object: &Map<String, Value>, now_ms: i64) -> Result<Group, RejectReason> {
        let uid = match object.get("uid") {
            Some(Value::String(uid)) => UserId::parse(uid)?,
            _ => return Err(RejectReason::BadGroup),
        };
        let members = match object.get("members") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => member_ids(v)?,
        };
        let created_on = object.get("createdOn").and_then(Value::as_i64).unwrap_or(now_ms);
        Ok(Group {
            uid,
            app_id: app_id.clone(),
            members,
            object: object.clone(),
            created_on,
            updated_on: now_ms,
        })
    }

    pub fn is_member(&self, id: &str) -> bool {
        self.members.iter().any(|m| m == id)
    }

    /// The group's `name`, if the object has one.
    pub fn name(&self) -> Option<&str> {
        self.object.get("name").and_then(Value::as_str)
    }

    pub fn owner(&self) -> Option<&str> {
        self.object.get("owner").and_then(Value::as_str)
    }

    /// `attributes`, unless absent or null.
    pub fn attributes(&self) -> Option<&Value> {
        self.object.get("attributes").filter(|a| !a.is_null())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn app() -> AppId {
        AppId::parse("app").unwrap()
    }

    #[test]
    fn group_from_object() {
        let g = Group::from_object(
            &app(),
            &obj(json!({"uid":"g1","members":{"b":1,"a":1,"c":1},"createdOn":5})),
            9,
        )
        .unwrap();
        assert_eq!(g.members, vec!["b", "a", "c"], "member order is the object's order");
        assert_eq!((g.created_on, g.updated_on), (5, 9));
        assert!(g.is_member("a") && !g.is_member("d"));
        let empty = Group::from_object(&app(), &obj(json!({"uid":"g1"})), 9).unwrap();
        assert!(empty.members.is_empty());
    }

    #[test]
    fn bad_groups() {
        let err = |v: Value| Group::from_object(&app(), &obj(v), 0).unwrap_err();
        assert_eq!(err(json!({"members":{}})), RejectReason::BadGroup);
        assert_eq!(err(json!({"uid":7})), RejectReason::BadGroup);
        assert_eq!(err(json!({"uid":"a.b"})), RejectReason::InvalidId);
        assert_eq!(err(json!({"uid":"g","members":["a"]})), RejectReason::BadGroup);
        assert_eq!(err(json!({"uid":"g","members":"a"})), RejectReason::BadGroup);
        assert_eq!(err(json!({"uid":"g","members":{"a b":1}})), RejectReason::InvalidId);
    }
}
