//! Pure handlers: one typed input + its body → a [`Plan`] or a rejection. No I/O here.

mod archive;
mod conversation;
mod receipt;
mod send;

use crate::message::RejectReason;
use crate::plan::{Context, Plan};
use crate::topic::{Inbound, Topics};

pub use archive::after_commit;

/// Decide what one input does.
pub fn handle(topics: &Topics, inbound: &Inbound, body: &[u8], ctx: &Context) -> Result<Plan, RejectReason> {
    match inbound {
        Inbound::Send { app, sender, recipient } => send::send(topics, app, sender, recipient, body, ctx),
        Inbound::Receipt {
            app,
            me,
            with,
            message_id,
        } => receipt::receipt(topics, app, me, with, message_id, body),
        Inbound::ConversationUpdate { app, me, with } => conversation::update(topics, app, me, with, body),
        Inbound::Archive { app, me, with } => archive::archive(app, me, with),
        // Parsed (the grammar is complete) but not bound yet: later issues add them.
        _ => Err(RejectReason::Unsupported),
    }
}

/// Parse a body that must be a JSON object.
pub(crate) fn json_object(body: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, RejectReason> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(RejectReason::NotObject),
        Err(_) => Err(RejectReason::NotJson),
    }
}
