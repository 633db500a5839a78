//! I2, receipts (PROTOCOL §5): `me` has received message `message_id` of its conversation
//! with `with`. Only `{"status":200}` means something; anything else is ignored (counted).

use serde_json::json;

use super::Settings;
use crate::domain::{status, AppId, MessageId, RejectReason, UserId};
use crate::plan::{Committed, Plan, Publish, Write};
use crate::topic::Topics;

pub(super) fn receipt(
    topics: &Topics,
    app: &AppId,
    me: &UserId,
    with: &UserId,
    message_id: &MessageId,
    settings: &Settings,
) -> Result<Plan, RejectReason> {
    if settings.checked_receipts {
        // The store decides whether `me` received it, and who sent it; the sender is told
        // after the commit (see `after_commit`).
        let write = Write::Receipt {
            app: app.clone(),
            reader: me.clone(),
            convers_with: with.clone(),
            message_id: message_id.clone(),
        };
        return Ok(Plan {
            publishes: Vec::new(),
            writes: vec![write],
        });
    }
    // DATABASE_URL=off: nothing to check against, so the other party (the message's sender)
    // is told at once — any user may claim to have received any message (README, Security).
    let key = topics.receipt_updated(app, with, me, message_id)?;
    Ok(Plan::publishes(vec![Publish::json(key, &notice(with, message_id))]))
}

/// After the commit: tell each sender whose message the receipt was checked against, at
/// `apps.{app}.users.{to}.messages.{convers_with}.{message_id}.clientupdated`.
pub(super) fn after_commit(topics: &Topics, committed: &Committed) -> Vec<Publish> {
    committed
        .receipts
        .iter()
        .filter_map(|r| {
            let key = topics
                .receipt_updated(&r.app, &r.to, &r.convers_with, &r.message_id)
                .ok()?;
            Some(Publish::json(key, &notice(&r.to, &r.message_id)))
        })
        .collect()
}

fn notice(timeline_of: &UserId, message_id: &MessageId) -> serde_json::Value {
    json!({"timelineOf": timeline_of, "message_id": message_id, "status": status::RETURN_RECEIPT})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::testing;
    use serde_json::Value;

    fn receipt(
        t: &Topics,
        app: &str,
        me: &str,
        with: &str,
        id: &str,
        body: &[u8],
        store: bool,
    ) -> Result<Plan, RejectReason> {
        let key = t.receipt(app, me, with, id);
        let body = std::str::from_utf8(body).unwrap();
        let settings = crate::handlers::Settings {
            checked_receipts: store,
            ..testing::settings()
        };
        testing::handled(t, &key, body, &[], &settings).map_err(|r| r.reason())
    }

    #[test]
    fn with_a_store_a_receipt_is_checked_there_first() {
        let t = Topics::chat21("app");
        let p = receipt(&t, "app", "U2", "U1", "m1", br#"{"status":200}"#, true).unwrap();
        assert!(p.publishes.is_empty(), "nobody is told before the store says who");
        assert!(
            matches!(&p.writes[..], [Write::Receipt { reader, convers_with, message_id, .. }] if reader == "U2" && convers_with == "U1" && message_id == "m1")
        );
    }

    #[test]
    fn without_a_store_the_sender_is_told_at_once() {
        let t = Topics::chat21("app");
        let p = receipt(&t, "app", "U2", "U1", "m1", br#"{"status":200}"#, false).unwrap();
        assert_eq!(p.publishes[0].key, "apps.app.users.U1.messages.U2.m1.clientupdated");
        let body: Value = serde_json::from_slice(p.publishes[0].bytes()).unwrap();
        assert_eq!(body, json!({"timelineOf": "U1", "message_id": "m1", "status": 250}));
        assert!(p.writes.is_empty());
    }

    #[test]
    fn a_checked_receipt_reaches_the_sender_after_the_commit() {
        let t = Topics::chat21("app");
        let committed = Committed {
            receipts: vec![crate::plan::ReceiptNotice {
                app: "app".into(),
                to: "S".into(),
                convers_with: "G".into(),
                message_id: "m1".into(),
            }],
            ..Committed::default()
        };
        let out = after_commit(&t, &committed);
        assert_eq!(out[0].key, "apps.app.users.S.messages.G.m1.clientupdated");
        let body: Value = serde_json::from_slice(out[0].bytes()).unwrap();
        assert_eq!(body, json!({"timelineOf": "S", "message_id": "m1", "status": 250}));
    }

    #[test]
    fn other_statuses_are_ignored() {
        let t = Topics::chat21("app");
        for body in [&br#"{"status":300}"#[..], br#"{}"#, br#"{"status":"200"}"#] {
            assert_eq!(
                receipt(&t, "app", "U2", "U1", "m1", body, true).unwrap_err(),
                RejectReason::Ignored
            );
        }
        assert_eq!(
            receipt(&t, "app", "U2", "U1", "m1", b"x", true).unwrap_err(),
            RejectReason::NotJson
        );
    }
}
