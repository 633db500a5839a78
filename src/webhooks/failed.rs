//! `chat21-engine webhooks failed|redeliver`: what is in the endpoints' failed queues, and
//! putting it back. Read with `basic.get`: listing takes every message unacked and gives them
//! all back when the channel closes; redelivering publishes each (confirmed) into its
//! endpoint's queue with a fresh retry window, then acks it.

use lapin::options::{BasicAckOptions, BasicGetOptions, ConfirmSelectOptions};
use lapin::types::AMQPValue;
use lapin::Channel;

use super::{now_ms, persistent_json, publish_confirmed, Endpoint, Event};

/// One failed event, as listed.
#[derive(Debug)]
pub struct Failed {
    pub endpoint: String,
    pub event: Option<Event>,
    pub error: String,
}

impl Failed {
    /// One line: endpoint, id, type, made at, tries, last error.
    pub fn line(&self) -> String {
        match &self.event {
            Some(e) => format!(
                "{}\t{}\t{}\t{}\t{}\t{}",
                self.endpoint,
                e.id,
                e.kind.as_str(),
                e.at,
                e.tries,
                self.error
            ),
            None => format!("{}\t(unreadable)\t\t\t\t{}", self.endpoint, self.error),
        }
    }
}

fn header(delivery: &lapin::message::Delivery, name: &str) -> String {
    let value = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(name).cloned());
    match value {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        _ => String::new(),
    }
}

/// Every failed event of `endpoints`, left where it is.
pub async fn list(channel: &Channel, base: &str, endpoints: &[Endpoint]) -> lapin::Result<Vec<Failed>> {
    let mut out = Vec::new();
    for e in endpoints {
        let queue = e.failed(base);
        while let Some(msg) = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await?
        {
            out.push(Failed {
                endpoint: e.shown(),
                event: serde_json::from_slice(&msg.delivery.data).ok(),
                error: header(&msg.delivery, "x-chat21-error"),
            });
        }
    }
    Ok(out)
}

/// Put the failed events of `endpoints` (those with id `only`, when given) back into their
/// endpoint's queue: each tried again, for a new `WEBHOOK_RETRY_FOR`. Returns how many.
pub async fn redeliver(
    channel: &Channel,
    base: &str,
    endpoints: &[Endpoint],
    only: Option<&str>,
) -> lapin::Result<usize> {
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut moved = 0;
    for e in endpoints {
        let (failed, queue) = (e.failed(base), e.queue(base));
        while let Some(msg) = channel
            .basic_get(failed.as_str().into(), BasicGetOptions { no_ack: false })
            .await?
        {
            let Ok(mut event) = serde_json::from_slice::<Event>(&msg.delivery.data) else {
                continue; // unreadable: left there (given back when the channel closes)
            };
            if only.is_some_and(|id| id != event.id) {
                continue;
            }
            event.tries = 0;
            event.from = now_ms();
            let body = serde_json::to_vec(&[&event]).unwrap_or_default();
            if publish_confirmed(channel, &queue, &body, persistent_json()).await {
                msg.delivery.acker.ack(BasicAckOptions::default()).await?;
                moved += 1;
            }
        }
    }
    // Anything taken and not moved goes back when the caller closes the channel.
    Ok(moved)
}
