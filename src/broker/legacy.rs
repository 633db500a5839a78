//! What an earlier engine or configuration left on the broker.
//!
//! Replacing an engine from before partitions in place. Those engines consumed one classic
//! queue named `QUEUE_NAME`, bound to `amq.topic`; inputs queued in it while the old engine
//! was stopped must not be lost, and must go before newer inputs of the same conversation.
//! So a session that finds that queue first unbinds it (new inputs now go to the
//! partitions, and wait there), then drains it (`consumer.rs`), then deletes it once it is
//! empty — `if-empty`, so an input that came back meanwhile (a requeue) is drained too.
//!
//! Several new engines started at once all drain it: the order of a conversation is kept
//! when one engine does (README, upgrading).

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::FieldTable;
use lapin::{Connection, ErrorKind};

use super::topology::{self, Layout};
use super::EXCHANGE;

/// If the legacy queue exists: unbind every input pattern from it and say how many inputs
/// it holds. `None` when there is no such queue (the usual case).
pub async fn retire_bindings(conn: &Connection, layout: &Layout, patterns: &[String]) -> lapin::Result<Option<u32>> {
    let Some(held) = depth(conn, layout.legacy_queue()).await? else {
        return Ok(None);
    };
    let ch = conn.create_channel().await?;
    for pattern in patterns {
        ch.queue_unbind(
            layout.legacy_queue().into(),
            EXCHANGE.into(),
            pattern.as_str().into(),
            FieldTable::default(),
        )
        .await?;
    }
    let _ = ch.close(200, "done".into()).await;
    Ok(Some(held))
}

/// How many inputs `queue` holds, `None` if there is no such queue. A passive declare of a
/// missing queue closes its channel (404): a channel of its own.
async fn depth(conn: &Connection, queue: &str) -> lapin::Result<Option<u32>> {
    let ch = conn.create_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    match ch.queue_declare(queue.into(), passive, FieldTable::default()).await {
        Ok(q) => {
            let _ = ch.close(200, "done".into()).await;
            Ok(Some(q.message_count()))
        }
        Err(e) if is(&e, AMQPSoftError::NOTFOUND) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Partition queues past `PARTITIONS` (`{q}.pNN` from a larger setting), in order: they stay
/// bound to the hash exchange, so the broker still routes keys to them.
pub async fn leftover_partitions(conn: &Connection, layout: &Layout) -> lapin::Result<Vec<String>> {
    let mut found = Vec::new();
    for n in layout.queues().len()..usize::from(topology::MAX_PARTITIONS) {
        let queue = topology::partition_queue(layout.base(), n);
        // Made and bound in order: the first missing one ends the list.
        if depth(conn, &queue).await?.is_none() {
            break;
        }
        found.push(queue);
    }
    Ok(found)
}

/// Delete the legacy queue if it is empty: false when it is not (yet).
pub async fn delete_if_empty(conn: &Connection, layout: &Layout) -> lapin::Result<bool> {
    let ch = conn.create_channel().await?;
    let opts = QueueDeleteOptions {
        if_empty: true,
        ..Default::default()
    };
    match ch.queue_delete(layout.legacy_queue().into(), opts).await {
        Ok(_) => {
            let _ = ch.close(200, "done".into()).await;
            Ok(true)
        }
        Err(e) if is(&e, AMQPSoftError::PRECONDITIONFAILED) => Ok(false),
        Err(e) => Err(e),
    }
}

fn is(e: &lapin::Error, kind: AMQPSoftError) -> bool {
    matches!(e.kind(), ErrorKind::ProtocolError(amqp) if *amqp.kind() == AMQPErrorKind::Soft(kind))
}
