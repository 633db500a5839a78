//! The chat message as clients send and receive it (PROTOCOL §0, §3).
//!
//! The engine owns a few fields (ids, status, timestamp, the channel, the text the content
//! filter judges, the attributes it obeys); they are read and written here and nowhere else.
//! Every other field a client sent is carried through untouched, in its order.

use serde_json::{Map, Value};
use std::sync::Arc;

use super::ids::{is_valid_id, AppId, UserId};
use super::rejection::RejectReason;

/// Chat21 message status codes (PROTOCOL §0).
pub mod status {
    pub const FAILED: i64 = -100;
    pub const SENDING: i64 = 0;
    pub const SENT: i64 = 100;
    pub const DELIVERED: i64 = 150;
    pub const RECEIVED: i64 = 200;
    pub const RETURN_RECEIPT: i64 = 250;
    pub const SEEN: i64 = 300;
}

/// A message: a JSON object whose engine-owned fields have typed accessors.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Message {
    fields: Map<String, Value>,
}

/// Parse a body that must be a JSON object.
pub fn json_object(body: &[u8]) -> Result<Map<String, Value>, RejectReason> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(RejectReason::NotObject),
        Err(_) => Err(RejectReason::NotJson),
    }
}

impl Message {
    /// A message body from a client: a JSON object, or `NotJson` / `NotObject`.
    pub fn parse(body: &[u8]) -> Result<Message, RejectReason> {
        json_object(body).map(Message::from_fields)
    }

    pub fn from_fields(fields: Map<String, Value>) -> Message {
        Message { fields }
    }

    /// Every field, as published and stored.
    pub fn fields(&self) -> &Map<String, Value> {
        &self.fields
    }

    fn str(&self, k: &str) -> Option<&str> {
        self.fields.get(k).and_then(Value::as_str)
    }

    /// The id, when it is a valid one (a stored message always has one: see [`Message::stamp`]).
    pub fn message_id(&self) -> Option<&str> {
        self.str("message_id").filter(|id| is_valid_id(id))
    }

    pub fn sender(&self) -> Option<&str> {
        self.str("sender")
    }

    pub fn recipient(&self) -> Option<&str> {
        self.str("recipient")
    }

    pub fn app_id(&self) -> Option<&str> {
        self.str("app_id")
    }

    pub fn text(&self) -> Option<&str> {
        self.str("text")
    }

    /// The client's `type` (text, image, …).
    pub fn kind(&self) -> Option<&str> {
        self.str("type")
    }

    pub fn channel_type(&self) -> Option<&str> {
        self.str("channel_type")
    }

    /// Epoch milliseconds (0 when absent: only for rows a client wrote without one).
    pub fn timestamp(&self) -> i64 {
        self.fields.get("timestamp").and_then(Value::as_i64).unwrap_or_default()
    }

    pub fn status(&self) -> Option<i64> {
        self.fields.get("status").and_then(Value::as_i64)
    }

    /// `attributes`, unless absent or null.
    pub fn attributes(&self) -> Option<&Value> {
        self.fields.get("attributes").filter(|a| !a.is_null())
    }

    /// `attributes.hiddenFor`: the one group member this message is not delivered to (§4.1).
    pub fn hidden_for(&self) -> Option<&str> {
        self.attributes()?.get("hiddenFor")?.as_str()
    }

    /// False when `attributes.updateconversation` is `false` (§11): the message lands in the
    /// timeline but leaves the conversation's last message alone.
    pub fn updates_conversation(&self) -> bool {
        self.attributes().and_then(|a| a.get("updateconversation")) != Some(&Value::Bool(false))
    }

    /// §3: a group message is one with `channel_type == "group"`, or with no `channel_type`
    /// and a recipient containing `group-` (compatibility with clients that omit it).
    pub fn is_group(&self, recipient: &str) -> bool {
        is_group_channel(self.fields.get("channel_type"), recipient)
    }

    /// An inline group's member ids (`group.members`, §4.2), in order; `None` without a
    /// `group` field. A malformed `group` is `BadGroup`, a member that is not an id `InvalidId`.
    pub fn inline_members(&self) -> Result<Option<Vec<UserId>>, RejectReason> {
        match self.fields.get("group") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(g)) => member_ids(g.get("members").unwrap_or(&Value::Null)).map(Some),
            Some(_) => Err(RejectReason::BadGroup),
        }
    }

    /// The fields the engine sets on every message a user sends (§3): who sent it to whom in
    /// which app (whatever the client claimed), a message id (the client's when it is valid —
    /// fix D14: a retried publish keeps its id) and a timestamp (the client's when numeric).
    pub fn stamp(
        &mut self,
        app: &AppId,
        sender: &UserId,
        recipient: &UserId,
        fresh_id: impl FnOnce() -> String,
        now_ms: i64,
    ) {
        self.fields.insert("sender".into(), sender.as_str().into());
        self.fields.insert("recipient".into(), recipient.as_str().into());
        self.fields.insert("app_id".into(), app.as_str().into());
        if self.message_id().is_none() {
            self.fields.insert("message_id".into(), fresh_id().into());
        }
        if !self.fields.get("timestamp").is_some_and(Value::is_number) {
            self.fields.insert("timestamp".into(), now_ms.into());
        }
    }

    /// A stamped message detected as a group's by the `group-` rule says so (for clients and
    /// the store).
    pub fn mark_group(&mut self) {
        if self.fields.get("channel_type").is_none_or(Value::is_null) {
            self.fields.insert("channel_type".into(), "group".into());
        }
    }

    pub fn set_status(&mut self, status: i64) {
        self.fields.insert("status".into(), status.into());
    }

    pub fn with_status(mut self, status: i64) -> Message {
        self.set_status(status);
        self
    }

    pub fn set_text(&mut self, text: String) {
        self.fields.insert("text".into(), text.into());
    }

    /// Remove what makes a message look like the system's: `attributes.subtype` "info…" (the
    /// label clients render as a notice, not as a user's words) and `attributes.messagelabel`
    /// (the key clients translate, e.g. MEMBER_JOINED_GROUP). Only trusted senders may send
    /// those (§4): from anyone else they would impersonate the system.
    pub fn strip_system_attributes(&mut self) {
        if let Some(Value::Object(attrs)) = self.fields.get_mut("attributes") {
            if attrs
                .get("subtype")
                .and_then(Value::as_str)
                .is_some_and(|s| s.starts_with("info"))
            {
                attrs.remove("subtype");
            }
            attrs.remove("messagelabel");
        }
    }

    /// The fields that say which message this is, without its content: what a refusal for
    /// size carries back (the content is what was too large).
    pub fn identity(&self) -> Message {
        let fields = [
            "message_id",
            "sender",
            "recipient",
            "app_id",
            "timestamp",
            "channel_type",
        ]
        .iter()
        .filter_map(|k| self.fields.get(*k).map(|v| (k.to_string(), v.clone())))
        .collect();
        Message { fields }
    }

    /// This message refused (§8): `status:-100` and `error:{code, reason}`.
    pub fn refused(mut self, reason: RejectReason, why: &str) -> Message {
        self.set_status(status::FAILED);
        self.fields.insert(
            "error".into(),
            serde_json::json!({"code": reason.as_str(), "reason": why}),
        );
        self
    }

    pub fn encode(&self) -> Vec<u8> {
        encode(&self.fields)
    }
}

/// The §3 rule on a payload's `channel_type` and its recipient (see [`Message::is_group`]).
pub fn is_group_channel(channel_type: Option<&Value>, recipient: &str) -> bool {
    match channel_type {
        Some(Value::String(ct)) => ct == "group",
        None | Some(Value::Null) => recipient.contains("group-"),
        Some(_) => false,
    }
}

/// Serialize a JSON map (cannot fail: string keys, no non-finite floats in a `Value`).
pub fn encode(map: &Map<String, Value>) -> Vec<u8> {
    serde_json::to_vec(map).expect("a JSON map always serializes")
}

/// The keys of a Chat21 member map (`{"U1": 1, "U2": 1}`), in order. Every key must be a
/// valid id: a member id ends up in a routing key.
pub fn member_ids(v: &Value) -> Result<Vec<UserId>, RejectReason> {
    let Value::Object(map) = v else {
        return Err(RejectReason::BadGroup);
    };
    map.keys().map(|k| UserId::parse(k)).collect()
}

/// A message as it is published: the message and its JSON, made together once and never
/// changed afterwards — one value, so no stage has two forms to keep in step. Shared (`Arc`)
/// by every copy of a fan-out that carries the same status, so a fan-out serializes once.
#[derive(Debug, PartialEq)]
pub struct Sealed {
    message: Message,
    json: Vec<u8>,
}

impl Sealed {
    pub fn new(message: Message) -> Arc<Sealed> {
        let json = message.encode();
        Arc::new(Sealed { message, json })
    }

    /// A message published exactly as it arrived (history replay, §4.5): `json` is the
    /// original body, `message` its parse.
    pub fn verbatim(message: Message, json: Vec<u8>) -> Arc<Sealed> {
        Arc::new(Sealed { message, json })
    }

    pub fn message(&self) -> &Message {
        &self.message
    }

    pub fn json(&self) -> &[u8] {
        &self.json
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msg(v: Value) -> Message {
        Message::from_fields(v.as_object().unwrap().clone())
    }

    #[test]
    fn stamp_overrides_identity_and_keeps_valid_client_fields() {
        let (app, s, r) = (
            AppId::parse("a").unwrap(),
            UserId::parse("S").unwrap(),
            UserId::parse("R").unwrap(),
        );
        let mut m = msg(json!({"sender":"FORGED","message_id":"m-1","timestamp":42,"x":1}));
        m.stamp(&app, &s, &r, || "fresh".into(), 7);
        assert_eq!(
            (m.sender(), m.recipient(), m.app_id()),
            (Some("S"), Some("R"), Some("a"))
        );
        assert_eq!((m.message_id(), m.timestamp()), (Some("m-1"), 42));
        assert_eq!(m.fields()["x"], 1, "other fields are carried through");
        let mut m = msg(json!({"message_id":"bad id","timestamp":"yesterday"}));
        m.stamp(&app, &s, &r, || "fresh".into(), 7);
        assert_eq!((m.message_id(), m.timestamp()), (Some("fresh"), 7));
    }

    #[test]
    fn channel_and_attributes() {
        assert!(msg(json!({"channel_type":"group"})).is_group("U2"));
        assert!(msg(json!({})).is_group("group-1"));
        assert!(!msg(json!({"channel_type":"direct"})).is_group("group-1"));
        let m = msg(json!({"attributes":{"hiddenFor":"B","updateconversation":false}}));
        assert_eq!(m.hidden_for(), Some("B"));
        assert!(!m.updates_conversation());
        assert!(msg(json!({"attributes":null})).updates_conversation());
    }

    #[test]
    fn inline_groups() {
        let members = |v: Value| msg(v).inline_members();
        assert_eq!(members(json!({})), Ok(None));
        let got = members(json!({"group":{"members":{"P":1,"Q":1}}})).unwrap().unwrap();
        assert_eq!(got, vec![UserId::parse("P").unwrap(), UserId::parse("Q").unwrap()]);
        assert_eq!(members(json!({"group":3})), Err(RejectReason::BadGroup));
        assert_eq!(members(json!({"group":{}})), Err(RejectReason::BadGroup));
        assert_eq!(
            members(json!({"group":{"members":{"a.b":1}}})),
            Err(RejectReason::InvalidId)
        );
    }

    #[test]
    fn sealed_json_is_the_message() {
        let s = Sealed::new(msg(json!({"text":"hi"})).with_status(150));
        let back: Value = serde_json::from_slice(s.json()).unwrap();
        assert_eq!(back, json!({"text":"hi","status":150}));
    }
}
