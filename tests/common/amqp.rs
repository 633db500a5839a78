//! AMQP observers and publishers, for what MQTT clients cannot see or send.

use serde_json::Value;
use std::time::{Duration, Instant};

use super::broker::Broker;
use super::fresh;

/// An AMQP observer for assertions that must survive client disconnects: a durable queue
/// bound to a pattern, read back with basic.get.
pub struct Tap {
    pub channel: lapin::Channel,
    pub queue: String,
    _conn: lapin::Connection,
}

impl Tap {
    pub async fn new(broker: &Broker, pattern: &str) -> Tap {
        use lapin::options::{QueueBindOptions, QueueDeclareOptions};
        let conn = lapin::Connection::connect(&broker.amqp_uri, Default::default())
            .await
            .unwrap();
        let channel = conn.create_channel().await.unwrap();
        let queue = format!("tap.{}", fresh(""));
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::durable(),
                Default::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.as_str().into(),
                "amq.topic".into(),
                pattern.into(),
                QueueBindOptions::default(),
                Default::default(),
            )
            .await
            .unwrap();
        Tap {
            channel,
            queue,
            _conn: conn,
        }
    }

    /// A new connection to an existing tap queue (after a broker restart).
    pub async fn reopen(broker: &Broker, queue: &str) -> Tap {
        let conn = lapin::Connection::connect(&broker.amqp_uri, Default::default())
            .await
            .unwrap();
        let channel = conn.create_channel().await.unwrap();
        Tap {
            channel,
            queue: queue.to_string(),
            _conn: conn,
        }
    }

    /// Drain everything currently in the queue.
    pub async fn drain(&self) -> Vec<(String, Value)> {
        self.drain_with_mode()
            .await
            .into_iter()
            .map(|(k, v, _)| (k, v))
            .collect()
    }

    /// Drain, with each message's delivery mode (1 transient, 2 persistent).
    pub async fn drain_with_mode(&self) -> Vec<(String, Value, u8)> {
        use lapin::options::BasicGetOptions;
        let mut out = Vec::new();
        while let Some(m) = self
            .channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            out.push((
                m.delivery.routing_key.to_string(),
                serde_json::from_slice(&m.delivery.data).unwrap_or(Value::Null),
                m.delivery.properties.delivery_mode().unwrap_or(0),
            ));
        }
        out
    }

    /// Drain until `n` messages arrived (or 15 s passed).
    pub async fn wait_for(&self, n: usize) -> Vec<(String, Value, u8)> {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut out = Vec::new();
        while out.len() < n && Instant::now() < deadline {
            out.extend(self.drain_with_mode().await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        out
    }
}

/// Publish raw bytes on amq.topic as the admin user (for inputs MQTT cannot produce).
pub async fn amqp_publish(broker: &Broker, key: &str, body: &[u8]) {
    let conn = lapin::Connection::connect(&broker.amqp_uri, Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    ch.basic_publish(
        "amq.topic".into(),
        key.into(),
        Default::default(),
        body,
        Default::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let _ = conn.close(200, "done".into()).await;
}
