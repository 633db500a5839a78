//! I2, receipts (PROTOCOL §5): `me` has received message `message_id` of its conversation
//! with `with`. Only `{"status":200}` means something; anything else is ignored (counted).

use serde_json::json;

use crate::domain::{status, AppId, MessageId, RejectReason, UserId};
use crate::plan::{Committed, Plan, Publish, Write};
use crate::topic::Topics;

pub(super) fn receipt(
    topics: &Topics,
    app: &AppId,
    me: &UserId,
    with: &UserId,
    message_id: &MessageId,
) -> Result<Plan, RejectReason> {
    // The other party (the message's sender) learns that its copy was received.
    let key = topics.receipt_updated(app, with, me, message_id)?;
    let update = json!({"timelineOf": with, "message_id": message_id, "status": status::RETURN_RECEIPT});
    Ok(Plan {
        publishes: vec![Publish::json(key, &update)],
        writes: vec![
            Write::MessageStatus {
                timeline_of: me.clone(),
                message_id: message_id.clone(),
                status: status::RECEIVED,
            },
            Write::MessageStatus {
                timeline_of: with.clone(),
                message_id: message_id.clone(),
                status: status::RETURN_RECEIPT,
            },
            // For a group, `with` is the group: the store knows the original sender.
            Write::GroupReceipt {
                app: app.clone(),
                reader: me.clone(),
                convers_with: with.clone(),
                message_id: message_id.clone(),
            },
        ],
    })
}

/// After the commit: tell the original sender of a group message that it was received, at
/// `apps.{app}.users.{sender}.messages.{group}.{message_id}.clientupdated`.
pub(super) fn group_receipts(topics: &Topics, committed: &Committed) -> Vec<Publish> {
    committed
        .group_receipts
        .iter()
        .filter_map(|r| {
            let key = topics
                .receipt_updated(&r.app, &r.sender, &r.group, &r.message_id)
                .ok()?;
            let update = json!({"timelineOf": r.sender, "message_id": r.message_id, "status": status::RETURN_RECEIPT});
            Some(Publish::json(key, &update))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::testing;
    use serde_json::Value;

    fn receipt(t: &Topics, app: &str, me: &str, with: &str, id: &str, body: &[u8]) -> Result<Plan, RejectReason> {
        let key = t.receipt(app, me, with, id);
        let body = std::str::from_utf8(body).unwrap();
        testing::handled(t, &key, body, &[], &testing::settings()).map_err(|r| r.reason())
    }

    #[test]
    fn received_becomes_a_return_receipt_for_the_sender() {
        let t = Topics::chat21("app");
        let p = receipt(&t, "app", "U2", "U1", "m1", br#"{"status":200}"#).unwrap();
        assert_eq!(p.publishes[0].key, "apps.app.users.U1.messages.U2.m1.clientupdated");
        let body: Value = serde_json::from_slice(p.publishes[0].bytes()).unwrap();
        assert_eq!(body, json!({"timelineOf": "U1", "message_id": "m1", "status": 250}));
        assert_eq!(p.writes.len(), 3);
        assert!(
            matches!(&p.writes[2], Write::GroupReceipt { reader, convers_with, .. } if reader == "U2" && convers_with == "U1")
        );
    }

    #[test]
    fn a_group_receipt_reaches_the_original_sender_after_the_commit() {
        let t = Topics::chat21("app");
        let committed = Committed {
            group_receipts: vec![crate::plan::GroupReceipt {
                app: "app".into(),
                sender: "S".into(),
                group: "G".into(),
                message_id: "m1".into(),
            }],
            ..Committed::default()
        };
        let out = group_receipts(&t, &committed);
        assert_eq!(out[0].key, "apps.app.users.S.messages.G.m1.clientupdated");
        let body: Value = serde_json::from_slice(out[0].bytes()).unwrap();
        assert_eq!(body, json!({"timelineOf": "S", "message_id": "m1", "status": 250}));
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
