//! An endpoint and its queues. Each endpoint has a queue of its own, so one that is down or
//! slow holds back nothing but itself:
//!
//! - `{QUEUE_NAME}.webhooks.{id}`: quorum (replicated, survives a broker node), single active
//!   consumer (one engine delivers an endpoint's events at a time, so their order holds across
//!   engines), bound on `amq.topic` under its own name — the engine publishes each batch of
//!   events once per endpoint, so an endpoint removed from `WEBHOOK_ENDPOINTS` stops being fed
//!   (its queue keeps what it held; see the README to delete it).
//! - `{QUEUE_NAME}.webhooks.{id}.failed`: events not delivered within `WEBHOOK_RETRY_FOR`,
//!   kept until `chat21-engine webhooks redeliver` (or an operator) takes them.
//!
//! `{id}` is the first 10 hex digits of SHA-256 of the URL: stable across restarts and list
//! order, and no URL (which may hold a token) in a queue name.

use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::Channel;
use sha2::{Digest, Sha256};

use crate::broker::topology::own_key_queue;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub url: String,
    /// 10 hex digits: names its queues, labels its metrics.
    pub id: String,
}

impl Endpoint {
    pub fn new(url: &str) -> Endpoint {
        let id = hex::encode(&Sha256::digest(url.as_bytes())[..5]);
        Endpoint {
            url: url.to_owned(),
            id,
        }
    }

    /// Its queue, and the routing key that reaches only it.
    pub fn queue(&self, base: &str) -> String {
        format!("{base}.webhooks.{}", self.id)
    }

    /// Where its undeliverable events are kept.
    pub fn failed(&self, base: &str) -> String {
        format!("{base}.webhooks.{}.failed", self.id)
    }

    /// The URL without its query string and credentials, for logs.
    pub fn shown(&self) -> String {
        match reqwest::Url::parse(&self.url) {
            Ok(mut u) => {
                u.set_query(None);
                let _ = u.set_password(None);
                let _ = u.set_username("");
                u.to_string()
            }
            Err(_) => self.id.clone(),
        }
    }
}

pub fn endpoints(urls: &[String]) -> Vec<Endpoint> {
    urls.iter().map(|u| Endpoint::new(u)).collect()
}

/// Declare every endpoint's queue and failed queue, each bound under its own name.
pub async fn declare(channel: &Channel, base: &str, endpoints: &[Endpoint]) -> lapin::Result<()> {
    let text = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()));
    for e in endpoints {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), text("quorum"));
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        let mut failed_args = FieldTable::default();
        failed_args.insert("x-queue-type".into(), text("quorum"));
        own_key_queue(channel, &e.queue(base), args).await?;
        own_key_queue(channel, &e.failed(base), failed_args).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_short_and_hide_the_url() {
        let e = Endpoint::new("https://hooks.example.com/chat21?token=secret");
        assert_eq!(e.id.len(), 10);
        assert_eq!(e.id, Endpoint::new("https://hooks.example.com/chat21?token=secret").id);
        assert_ne!(e.id, Endpoint::new("https://hooks.example.com/other").id);
        assert_eq!(e.queue("chat21.engine"), format!("chat21.engine.webhooks.{}", e.id));
        assert_eq!(e.shown(), "https://hooks.example.com/chat21");
    }
}
