//! I2, receipts (PROTOCOL §5): `me` has received message `message_id` of its conversation
//! with `with`. Only `{"status":200}` means something; anything else is ignored (counted).

use serde_json::{json, Value};

use crate::message::{status, RejectReason};
use crate::plan::{Plan, Publish, Write};
use crate::topic::Topics;

pub(super) fn receipt(
    topics: &Topics,
    app: &str,
    me: &str,
    with: &str,
    message_id: &str,
    body: &[u8],
) -> Result<Plan, RejectReason> {
    let payload = super::json_object(body)?;
    if payload.get("status").and_then(Value::as_i64) != Some(status::RECEIVED) {
        return Err(RejectReason::Ignored);
    }
    // The other party (the message's sender) learns that its copy was received.
    let key = topics.receipt_updated(app, with, me, message_id)?;
    let update = json!({"timelineOf": with, "message_id": message_id, "status": status::RETURN_RECEIPT});
    Ok(Plan {
        rejected: None,
        publishes: vec![Publish::json(key, &update)],
        writes: vec![
            Write::MessageStatus {
                timeline_of: me.into(),
                message_id: message_id.into(),
                status: status::RECEIVED,
            },
            Write::MessageStatus {
                timeline_of: with.into(),
                message_id: message_id.into(),
                status: status::RETURN_RECEIPT,
            },
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_becomes_a_return_receipt_for_the_sender() {
        let t = Topics::chat21("app");
        let p = receipt(&t, "app", "U2", "U1", "m1", br#"{"status":200}"#).unwrap();
        assert_eq!(p.publishes[0].key, "apps.app.users.U1.messages.U2.m1.clientupdated");
        let body: Value = serde_json::from_slice(&p.publishes[0].body).unwrap();
        assert_eq!(body, json!({"timelineOf": "U1", "message_id": "m1", "status": 250}));
        assert_eq!(p.writes.len(), 2);
    }

    #[test]
    fn other_statuses_are_ignored() {
        let t = Topics::chat21("app");
        for body in [&br#"{"status":300}"#[..], br#"{}"#, br#"{"status":"200"}"#] {
            assert_eq!(
                receipt(&t, "app", "U2", "U1", "m1", body).unwrap_err(),
                RejectReason::Ignored
            );
        }
        assert_eq!(
            receipt(&t, "app", "U2", "U1", "m1", b"x").unwrap_err(),
            RejectReason::NotJson
        );
    }
}
