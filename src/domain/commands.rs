//! The payloads of the inputs that are not messages (PROTOCOL §4.4, §5–§7), parsed once from
//! the body into what they say, so no handler reads a field by name.
//!
//! Each parse returns the reason an unusable payload is rejected with: `NotJson` /
//! `NotObject` for a body that is not an object, then the input's own reason.

use serde_json::{Map, Value};

use super::ids::UserId;
use super::message::{is_group_channel, json_object, member_ids, status};
use super::rejection::RejectReason;

/// I2: only `{"status":200}` ("received") means something; anything else is `Ignored`.
pub fn receipt(body: &[u8]) -> Result<(), RejectReason> {
    let p = json_object(body)?;
    match p.get("status").and_then(Value::as_i64) {
        Some(status::RECEIVED) => Ok(()),
        _ => Err(RejectReason::Ignored),
    }
}

/// I3: only `is_new` is taken (fix D7); without a boolean one the update is `Ignored`.
pub fn conversation_update(body: &[u8]) -> Result<bool, RejectReason> {
    let p = json_object(body)?;
    p.get("is_new").and_then(Value::as_bool).ok_or(RejectReason::Ignored)
}

/// I5: `{"connected":true}` → true, `{"disconnected":true}` (the MQTT last will) → false;
/// neither or both is `BadPayload`.
pub fn presence(body: &[u8]) -> Result<bool, RejectReason> {
    let p = json_object(body)?;
    let yes = |k: &str| p.get(k) == Some(&Value::Bool(true));
    match (yes("connected"), yes("disconnected")) {
        (true, false) => Ok(true),
        (false, true) => Ok(false),
        _ => Err(RejectReason::BadPayload),
    }
}

/// I6: typing in the conversation with `with`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Typing {
    pub typing: bool,
    /// In a group (by the same rule as messages, §3).
    pub in_group: bool,
}

/// `{"typing":bool}`; not a boolean is `BadPayload`.
pub fn typing(body: &[u8], with: &str) -> Result<Typing, RejectReason> {
    let p = json_object(body)?;
    let typing = p
        .get("typing")
        .and_then(Value::as_bool)
        .ok_or(RejectReason::BadPayload)?;
    Ok(Typing {
        typing,
        in_group: is_group_channel(p.get("channel_type"), with),
    })
}

/// I8: a trusted service's group update.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupUpdate {
    /// The group object, kept and forwarded whole (checked when it becomes a `Group`).
    pub group: Map<String, Value>,
    /// Who is told, in order.
    pub notify_to: Vec<UserId>,
}

/// `{"group":{…},"notify_to":{"U1":1,…}}`; anything else is `BadGroup` (a `notify_to` key
/// that is not an id: `InvalidId`).
pub fn group_update(body: &[u8]) -> Result<GroupUpdate, RejectReason> {
    let mut p = json_object(body)?;
    let Some(Value::Object(group)) = p.remove("group") else {
        return Err(RejectReason::BadGroup);
    };
    let notify_to = match p.get("notify_to") {
        Some(v @ Value::Object(_)) => member_ids(v)?,
        _ => return Err(RejectReason::BadGroup),
    };
    Ok(GroupUpdate { group, notify_to })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads() {
        assert_eq!(receipt(br#"{"status":200}"#), Ok(()));
        for ignored in [&br#"{"status":300}"#[..], br#"{}"#, br#"{"status":"200"}"#] {
            assert_eq!(receipt(ignored), Err(RejectReason::Ignored));
        }
        assert_eq!(receipt(b"x"), Err(RejectReason::NotJson));
        assert_eq!(conversation_update(br#"{"is_new":false,"text":"hijack"}"#), Ok(false));
        assert_eq!(conversation_update(br#"{"is_new":"no"}"#), Err(RejectReason::Ignored));
        assert_eq!(presence(br#"{"disconnected":true}"#), Ok(false));
        assert_eq!(
            presence(br#"{"connected":true,"disconnected":true}"#),
            Err(RejectReason::BadPayload)
        );
        assert_eq!(
            typing(br#"{"typing":true}"#, "group-1"),
            Ok(Typing {
                typing: true,
                in_group: true
            })
        );
        assert_eq!(typing(br#"{"typing":"yes"}"#, "B"), Err(RejectReason::BadPayload));
        assert_eq!(typing(b"[]", "B"), Err(RejectReason::NotObject));
        let g = group_update(br#"{"group":{"uid":"g"},"notify_to":{"A":1}}"#).unwrap();
        assert_eq!((g.group["uid"].as_str(), g.notify_to.len()), (Some("g"), 1));
        assert_eq!(
            group_update(br#"{"group":"g","notify_to":{}}"#),
            Err(RejectReason::BadGroup)
        );
        assert_eq!(
            group_update(br#"{"group":{},"notify_to":[]}"#),
            Err(RejectReason::BadGroup)
        );
        assert_eq!(
            group_update(br#"{"group":{},"notify_to":{"a b":1}}"#),
            Err(RejectReason::InvalidId)
        );
    }
}
