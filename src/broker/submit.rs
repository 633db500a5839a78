//! Inputs from inside the engine (the HTTP API): published to `amq.topic` on the very key a
//! client or a trusted service would use, so they go the one way every input goes — the queue's
//! order, admission, the policy chain, the store, confirms, the ack — and the caller waits
//! until an engine has settled them.
//!
//! How the caller learns the outcome, with the broker's own means so it works whichever engine
//! replica consumes the input: every session declares an exclusive, auto-deleted reply queue
//! `{QUEUE_NAME}.reply.{uuid}`, bound on `amq.topic` under its own name. A submitted input
//! carries `reply_to` = that key and `correlation_id` = a fresh ticket; the engine that settles
//! the input (acked: processed, rejected or dead-lettered) publishes a small [`Settlement`]
//! there (`consumer.rs`). A `reply_to` that is not such a key is ignored, so a client that
//! sets properties over AMQP cannot make the engine publish anywhere else.

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

use super::EXCHANGE;
use crate::domain::RejectReason;

/// How long a caller waits for its input to be settled. Long enough for a store that
/// stalls for a few seconds; an input not settled by then stays queued and is processed
/// later (the caller is told so, and may retry: sends are idempotent by message id).
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// What became of a submitted input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Settlement {
    /// Every effect committed and confirmed.
    Processed,
    /// Rejected (dropped, or refused with the sender told), with the reason's code.
    Rejected { reason: String },
    /// The store refused its writes for good: in the dead-letter queue.
    DeadLettered,
}

impl Settlement {
    pub fn rejected(reason: RejectReason) -> Settlement {
        Settlement::Rejected {
            reason: reason.as_str().to_owned(),
        }
    }

    /// The reply a settled input asks for, as the consumer publishes it.
    pub fn reply(self, ticket: &str) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["ticket"] = ticket.into();
        v
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the engine is not connected to the broker")]
    NotConnected,
    #[error("the broker did not take the input")]
    NotTaken,
    #[error("the input was not settled within {0:?}; it stays queued and will be processed")]
    NotSettled(Duration),
    #[error("the ids make a routing key longer than 255 bytes")]
    KeyTooLong,
    #[error("amqp: {0}")]
    Amqp(#[from] lapin::Error),
}

/// Where a settled input's reply may go: the reply keys of this queue's sessions.
pub fn reply_prefix(queue: &str) -> String {
    format!("{queue}.reply.")
}

/// Is `key` a reply key of `queue` (and nothing else: see the module docs)?
pub fn is_reply_key(queue: &str, key: &str) -> bool {
    key.strip_prefix(&reply_prefix(queue))
        .is_some_and(|rest| uuid::Uuid::try_parse(rest).is_ok())
}

type Waiters = Mutex<HashMap<String, oneshot::Sender<Settlement>>>;

/// The engine's way to submit inputs; connected while a broker session runs.
#[derive(Default)]
pub struct Submitter {
    link: Mutex<Option<Link>>,
    waiters: Arc<Waiters>,
}

#[derive(Clone)]
struct Link {
    channel: Channel,
    reply_to: String,
}

impl Submitter {
    /// Publish `body` on `key` (an input key) and wait until an engine settled it.
    pub async fn submit(&self, key: &str, body: Vec<u8>) -> Result<Settlement, SubmitError> {
        let mut settled = self.submit_all(vec![(key.to_owned(), body)]).await?;
        Ok(settled.pop().expect("one input, one settlement"))
    }

    /// Publish inputs in this order (the queue keeps it) and wait until an engine settled
    /// every one; their settlements, in the same order.
    pub async fn submit_all(&self, inputs: Vec<(String, Vec<u8>)>) -> Result<Vec<Settlement>, SubmitError> {
        // The broker's limit (and the AMQP library's, which would not take a longer key).
        if inputs.iter().any(|(key, _)| key.len() > 255) {
            return Err(SubmitError::KeyTooLong);
        }
        let link = self.link.lock().expect("submitter lock").clone();
        let link = link.ok_or(SubmitError::NotConnected)?;
        // Waiters are removed however this ends: answered, failed, timed out, or dropped (the
        // HTTP client went away).
        let mut tickets = Forget(&self.waiters, Vec::with_capacity(inputs.len()));
        let mut confirms = Vec::with_capacity(inputs.len());
        let mut answers = Vec::with_capacity(inputs.len());
        for (key, body) in inputs {
            let ticket = uuid::Uuid::new_v4().to_string();
            let (tx, rx) = oneshot::channel();
            self.waiters.lock().expect("waiters lock").insert(ticket.clone(), tx);
            let props = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                .with_correlation_id(ticket.as_str().into())
                .with_reply_to(link.reply_to.as_str().into());
            tickets.1.push(ticket);
            answers.push(rx);
            // Awaiting the publish (not its confirm) hands the frames over in call order.
            let sent = link
                .channel
                .basic_publish(
                    EXCHANGE.into(),
                    key.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    props,
                )
                .await;
            match sent {
                Ok(confirm) => confirms.push(confirm),
                Err(e) => return Err(e.into()),
            }
        }
        let result = async {
            for confirm in confirms {
                if !matches!(confirm.await?, Confirmation::Ack(_)) {
                    return Err(SubmitError::NotTaken);
                }
            }
            let all = futures::future::join_all(answers);
            match tokio::time::timeout(SETTLE_TIMEOUT, all).await {
                Ok(settled) => settled
                    .into_iter()
                    // A sender dropped: the session that would have told us ended (reconnect).
                    .map(|s| s.map_err(|_| SubmitError::NotSettled(SETTLE_TIMEOUT)))
                    .collect(),
                Err(_) => Err(SubmitError::NotSettled(SETTLE_TIMEOUT)),
            }
        }
        .await;
        drop(tickets);
        result
    }

    /// A new broker session: declare its reply queue, listen there, and submit on a
    /// confirm-mode channel of its own (never the consumer's publish channel, whose confirms
    /// pace the consumer).
    pub(super) async fn connect(&self, conn: &Connection, queue: &str) -> lapin::Result<()> {
        let reply_to = format!("{}{}", reply_prefix(queue), uuid::Uuid::new_v4());
        let ch = conn.create_channel().await?;
        let exclusive = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        ch.queue_declare(reply_to.as_str().into(), exclusive, FieldTable::default())
            .await?;
        ch.queue_bind(
            reply_to.as_str().into(),
            EXCHANGE.into(),
            reply_to.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        let no_ack = BasicConsumeOptions {
            no_ack: true,
            ..BasicConsumeOptions::default()
        };
        let mut replies = ch
            .basic_consume(
                reply_to.as_str().into(),
                "replies".into(),
                no_ack,
                FieldTable::default(),
            )
            .await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        let waiters = self.waiters.clone();
        tokio::spawn(async move {
            while let Some(Ok(reply)) = replies.next().await {
                deliver(&waiters, &reply.data);
            }
        });
        *self.link.lock().expect("submitter lock") = Some(Link { channel: ch, reply_to });
        Ok(())
    }

    /// The session ended: submits fail fast until the next one.
    pub(super) fn disconnect(&self) {
        *self.link.lock().expect("submitter lock") = None;
    }
}

/// Hand a reply to its waiter (a reply nobody waits for — late, or not ours — is dropped).
fn deliver(waiters: &Waiters, body: &[u8]) {
    #[derive(Deserialize)]
    struct Reply {
        ticket: String,
        #[serde(flatten)]
        settlement: Settlement,
    }
    let Ok(reply) = serde_json::from_slice::<Reply>(body) else {
        tracing::warn!("unreadable settlement reply dropped");
        return;
    };
    if let Some(tx) = waiters.lock().expect("waiters lock").remove(&reply.ticket) {
        let _ = tx.send(reply.settlement);
    }
}

/// Removes its tickets' waiters when dropped.
struct Forget<'a>(&'a Waiters, Vec<String>);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if let Ok(mut w) = self.0.lock() {
            for t in &self.1 {
                w.remove(t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_keys_are_only_this_queues() {
        let id = uuid::Uuid::new_v4();
        assert!(is_reply_key("chat21.engine", &format!("chat21.engine.reply.{id}")));
        for bad in [
            "chat21.engine.reply.".to_owned(),
            format!("chat21.engine.reply.{id}.x"),
            format!("other.reply.{id}"),
            format!("apps.tilechat.users.U.messages.V.clientadded.reply.{id}"),
            "apps.tilechat.users.U.messages.V.clientadded".to_owned(),
        ] {
            assert!(!is_reply_key("chat21.engine", &bad), "{bad}");
        }
    }

    #[test]
    fn replies_reach_their_waiter_only() {
        let waiters = Waiters::default();
        let (tx, mut rx) = oneshot::channel();
        waiters.lock().unwrap().insert("t1".into(), tx);
        deliver(&waiters, b"not json");
        deliver(
            &waiters,
            &serde_json::to_vec(&Settlement::Processed.reply("t2")).unwrap(),
        );
        assert!(rx.try_recv().is_err());
        let reply = Settlement::rejected(RejectReason::NotAMember).reply("t1");
        deliver(&waiters, &serde_json::to_vec(&reply).unwrap());
        assert_eq!(
            rx.try_recv().unwrap(),
            Settlement::Rejected {
                reason: "not_a_member".into()
            }
        );
        assert!(waiters.lock().unwrap().is_empty());
    }
}
