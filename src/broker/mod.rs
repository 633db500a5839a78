//! Everything that talks AMQP: the connection supervisor (connect, reconnect forever),
//! topology, the consume → handle → publish → confirm → ack loop.

mod acks;
mod connect;
mod consumer;
mod legacy;
pub(crate) mod log_budget;
pub mod ownership;
pub mod submit;
mod supervisor;
pub mod topology;

pub use connect::connect;
pub use submit::{Settlement, SubmitError, Submitter};
pub use supervisor::supervise;

/// The exchange MQTT clients publish into and receive from.
pub const EXCHANGE: &str = "amq.topic";

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("amqp: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker cancelled the consumer")]
    ConsumerEnded,
    #[error("the broker closed the channel webhook events are published on")]
    OutboxClosed,
    #[error("inputs of partitions handed to another engine were not settled within the drain limit")]
    HandoverUnsettled,
    #[error("service token: {0}")]
    ServiceToken(#[from] crate::jwt::JwtError),
}
