//! Queue and bindings, declared on every (re)connect: declarations are idempotent, and a
//! broker that lost its definitions (new node, reset) gets them back without an operator.

use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::Channel;

use super::EXCHANGE;

/// The dead-letter queue of `queue`, and the key it is bound with on `amq.topic` (publishing
/// there works with the service token's scopes, which the default exchange would not; no
/// client may publish it: user scopes cover `apps.…`/seed keys only).
pub fn dead_letter_key(queue: &str) -> String {
    format!("{queue}.dead-letter")
}

/// Declare the queue with `bindings`, and remove `retired` ones (an input kind this
/// configuration turned off); unbinding a binding that does not exist is a no-op.
pub async fn declare(channel: &Channel, queue: &str, bindings: &[String], retired: &[String]) -> lapin::Result<()> {
    // Durable classic queue: inputs survive a broker restart. Not exclusive and not
    // auto-delete, so several engine replicas share the work and nothing is dropped while the
    // engine is down or restarting.
    channel
        .queue_declare(queue.into(), QueueDeclareOptions::durable(), FieldTable::default())
        .await?;
    // Where inputs the store refuses for good go, with why (see `consumer::dead_letter`): an
    // operator reads them there, fixes what is wrong and publishes them again.
    let dead = dead_letter_key(queue);
    channel
        .queue_declare(
            dead.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            dead.as_str().into(),
            EXCHANGE.into(),
            dead.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    for pattern in bindings {
        channel
            .queue_bind(
                queue.into(),
                EXCHANGE.into(),
                pattern.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    for pattern in retired {
        channel
            .queue_unbind(
                queue.into(),
                EXCHANGE.into(),
                pattern.as_str().into(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}
