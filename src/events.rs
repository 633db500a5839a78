//! Internal events: facts the engine learned after a commit that other parts (webhooks,
//! later) react to. Broadcast in-process; emitting with nobody listening is fine.

use tokio::sync::broadcast;

use crate::domain::{AppId, UserId};

/// A user went online (first connected client) or offline (last one gone) — PROTOCOL §7.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceChange {
    pub app_id: AppId,
    pub user_id: UserId,
    pub online: bool,
    /// Epoch milliseconds of the input that caused it (the last-seen time when offline).
    pub at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Presence(PresenceChange),
}

/// Sender side of the event bus.
#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<Event>,
}

impl Default for Events {
    fn default() -> Self {
        // A lagging subscriber loses old events (and is told so) rather than growing memory.
        let (tx, _) = broadcast::channel(4096);
        Events { tx }
    }
}

impl Events {
    pub fn emit(&self, event: Event) {
        tracing::info!(?event, "event");
        let _ = self.tx.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}
