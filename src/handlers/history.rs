//! I9, history replay (PROTOCOL §4.5): a trusted service hands a stored, delivered message
//! to `inbox`'s timeline. It is published unchanged and persisted there.

use crate::domain::{status, AppId, Message, RejectReason, Sealed, UserId};
use crate::plan::{Plan, Publish, TimelineCopy};
use crate::topic::Topics;

pub(super) fn replay(
    topics: &Topics,
    app: &AppId,
    inbox: &UserId,
    convers_with: &UserId,
    msg: Message,
    body: Vec<u8>,
) -> Result<Plan, RejectReason> {
    if msg.status() != Some(status::DELIVERED) {
        return Err(RejectReason::Ignored);
    }
    // The store's key for the row; a replay without one could not be deduplicated.
    if msg.message_id().is_none() {
        return Err(RejectReason::BadPayload);
    }
    let key = topics.message_added(app, inbox, convers_with)?;
    let is_new = msg.sender() != Some(inbox.as_str());
    let copy = TimelineCopy {
        app: app.clone(),
        timeline_of: inbox.clone(),
        convers_with: convers_with.clone(),
        is_new,
        // A replayed message takes its place in the conversation by its original time (the
        // stamp a trusted service replays), not by when it was replayed.
        received_ms: msg.timestamp(),
        message: Sealed::verbatim(msg, body),
    };
    // A trusted service's replay: not subject to block lists.
    Ok(Plan::publishes(vec![Publish::copy(key, copy, None)]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(body: &str) -> Result<Plan, RejectReason> {
        let msg = Message::parse(body.as_bytes())?;
        replay(
            &Topics::chat21("t"),
            &"t".into(),
            &"I".into(),
            &"C".into(),
            msg,
            body.into(),
        )
    }

    #[test]
    fn delivered_unchanged_and_persisted() {
        let body = r#"{"message_id":"m1","status":150,"text":"old","sender":"C","__history":true}"#;
        let plan = run(body).unwrap();
        assert_eq!(plan.publishes.len(), 1);
        let p = &plan.publishes[0];
        assert_eq!(p.key, "apps.t.users.I.messages.C.clientadded");
        assert_eq!(p.bytes(), body.as_bytes(), "byte for byte");
        let copy = p.timeline_copy().unwrap();
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
