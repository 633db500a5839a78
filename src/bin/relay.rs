//! The benchmark's baseline: the least a lossless relay must do. Consume the outgoing
//! queue, publish the body unchanged to the sender's and the recipient's inbox keys, ack
//! after both confirms (pipelined, like the engine). No JSON, no policies, no metrics.
//!
//! For the group benchmark it fans a message to group GROUP_ID out the way the engine does —
//! every member of GROUP_MEMBERS (comma-separated, known up front: no lookup) plus the group
//! timeline — with the body unchanged.
//!
//! It consumes the engine's input layout (`broker::topology`: partition queues fed by a
//! consistent-hash exchange), so both cause the broker the same queue work.
//!
//! Env: RABBITMQ_URI, APP_ID, QUEUE_NAME, PARTITIONS, DELIVERY_LIMIT, PREFETCH_MESSAGES,
//! GROUP_ID, GROUP_MEMBERS.

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use lapin::options::ConfirmSelectOptions;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};

use chat21_engine::broker::topology::{self, Layout};
use chat21_engine::topic::{Inbound, Topics};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let uri = std::env::var("RABBITMQ_URI")?;
    let app = std::env::var("APP_ID").unwrap_or_else(|_| "tilechat".into());
    let queue = std::env::var("QUEUE_NAME").unwrap_or_else(|_| "chat21.relay".into());
    let prefetch: u16 = std::env::var("PREFETCH_MESSAGES")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(256);
    let env_num = |name: &str, default: u32| std::env::var(name).ok().and_then(|p| p.parse().ok()).unwrap_or(default);
    let layout = Layout::new(&queue, env_num("PARTITIONS", 1) as u16, env_num("DELIVERY_LIMIT", 20));
    let topics = Topics::chat21(&app);
    let group_id = std::env::var("GROUP_ID").unwrap_or_default();
    let mut group_members: Vec<String> = std::env::var("GROUP_MEMBERS")
        .unwrap_or_default()
        .split(',')
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
        .collect();
    group_members.push(group_id.clone());

    let conn = Connection::connect(&uri, ConnectionProperties::default()).await?;
    let consume = conn.create_channel().await?;
    consume
        .basic_qos(layout.prefetch_per_queue(prefetch), BasicQosOptions::default())
        .await?;
    topology::declare(&consume, &layout, &topics.bindings(), &[]).await?;
    let publish = conn.create_channel().await?;
    publish.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut consumers = Vec::new();
    for q in layout.queues() {
        let tag = format!("relay.{q}");
        consumers.push(
            consume
                .basic_consume(
                    q.as_str().into(),
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?,
        );
    }
    let mut consumer = futures::stream::select_all(consumers);
    let props = BasicProperties::default().with_delivery_mode(2);
    let mut pending = FuturesUnordered::new();
    loop {
        tokio::select! {
            biased;
            Some((acker, ok)) = pending.next() => {
                let acker: lapin::Acker = acker;
                if ok {
                    acker.ack(BasicAckOptions::default()).await?;
                } else {
                    acker.nack(BasicNackOptions { requeue: true, multiple: false }).await?;
                }
            }
            next = consumer.next() => {
                let Some(delivery) = next else { return Ok(()) };
                let delivery = delivery?;
                let Ok(Inbound::Send { app, sender, recipient }) = topics.parse(delivery.routing_key.as_str()) else {
                    delivery.acker.ack(BasicAckOptions::default()).await?;
                    continue;
                };
                let keys: Vec<String> = if !group_id.is_empty() && recipient.as_str() == group_id {
                    group_members.iter().map(|m| topics.message_added(&app, m, &group_id).unwrap_or_default()).collect()
                } else {
                    [(&sender, &recipient), (&recipient, &sender)]
                        .iter()
                        .map(|(a, b)| topics.message_added(&app, a, b).unwrap_or_default())
                        .collect()
                };
                let mut confirms = Vec::with_capacity(keys.len());
                for key in keys {
                    confirms.push(
                        publish
                            .basic_publish("amq.topic".into(), key.as_str().into(), BasicPublishOptions::default(), &delivery.data, props.clone())
                            .await?,
                    );
                }
                let acker = delivery.acker;
                pending.push(async move {
                    let mut ok = true;
                    for c in confirms {
                        ok &= matches!(c.await, Ok(Confirmation::Ack(_)));
                    }
                    (acker, ok)
                });
            }
        }
    }
}
