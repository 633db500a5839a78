//! I9, history replay (PROTOCOL §4.5): a trusted service hands a stored, delivered message
//! to `inbox`'s timeline. It is published unchanged and persisted there.

use serde_json::Value;
use std::sync::Arc;

use crate::message::{is_valid_id, status, RejectReason};
use crate::plan::{Plan, Publish, TimelineCopy};
use crate::topic::Topics;

pub(super) fn replay(
    topics: &Topics,
    app: &str,
    inbox: &str,
    convers_with: &str,
    body: &[u8],
) -> Result<Plan, RejectReason> {
    let msg = super::json_object(body)?;
    if msg.get("status").and_then(Value::as_i64) != Some(status::DELIVERED) {
        return Err(RejectReason::Ignored);
    }
    // The store's key for the row; a replay without one could not be deduplicated.
    if !matches!(msg.get("message_id"), Some(Value::String(id)) if is_valid_id(id)) {
        return Err(RejectReason::BadPayload);
    }
    let key = topics.message_added(app, inbox, convers_with)?;
    let is_new = msg.get("sender").and_then(Value::as_str) != Some(inbox);
    Ok(Plan::publishes(vec![Publish {
        key,
        body: body.to_vec(),
        persistent: true,
        // A trusted service's replay: not subject to block lists.
        to: None,
        copy: Some(TimelineCopy {
            timeline_of: inbox.to_owned(),
            convers_with: convers_with.to_owned(),
            is_new,
            message: Arc::new(msg),
        }),
    }]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(body: &str) -> Result<Plan, RejectReason> {
        replay(&Topics::chat21("t"), "t", "I", "C", body.as_bytes())
    }

    #[test]
    fn delivered_unchanged_and_persisted() {
        let body = r#"{"message_id":"m1","status":150,"text":"old","sender":"C","__history":true}"#;
        let plan = run(body).unwrap();
        assert_eq!(plan.publishes.len(), 1);
        let p = &plan.publishes[0];
        assert_eq!(p.key, "apps.t.users.I.messages.C.clientadded");
        assert_eq!(p.body, body.as_bytes(), "byte for byte");
        let copy = p.copy.as_ref().unwrap();
        assert_eq!(
            (copy.timeline_of.as_str(), copy.convers_with.as_str(), copy.is_new),
            ("I", "C", true)
        );
    }

    #[test]
    fn only_delivered_messages_with_an_id() {
        assert_eq!(
            run(r#"{"message_id":"m1","status":100}"#).unwrap_err(),
            RejectReason::Ignored
        );
        assert_eq!(run(r#"{"message_id":"m1"}"#).unwrap_err(), RejectReason::Ignored);
        assert_eq!(run(r#"{"status":150}"#).unwrap_err(), RejectReason::BadPayload);
        assert_eq!(
            run(r#"{"status":150,"message_id":"a b"}"#).unwrap_err(),
            RejectReason::BadPayload
        );
        assert_eq!(run("[]").unwrap_err(), RejectReason::NotObject);
    }
}
