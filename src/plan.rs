//! What a handler decides, before any I/O: the effects of one input.

/// One message to publish on `amq.topic`.
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    pub key: String,
    pub body: Vec<u8>,
    /// delivery_mode 2 (survives a broker restart in durable queues). Everything is
    /// persistent except typing notifications (PROTOCOL §12).
    pub persistent: bool,
}

/// The effects of one input, in the order they must be published.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub publishes: Vec<Publish>,
}

/// Facts a handler needs from the outside world, passed in so handlers stay pure.
pub struct Context<'a> {
    /// Now, in epoch milliseconds.
    pub now_ms: i64,
    /// A fresh message id (a UUID in production, a counter in unit tests).
    pub fresh_id: &'a dyn Fn() -> String,
}
