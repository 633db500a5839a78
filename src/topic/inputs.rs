//! The client side of the grammar: the keys inputs arrive on, as MQTT clients and trusted
//! services publish them (AMQP form). The engine itself only parses these; they are here,
//! next to the parser they must agree with, for the benchmark, the tests and tools that act
//! as a client — and the round-trip test in `mod.rs` keeps each one parsing back to its input.

use super::{Layout, Topics};

impl Topics {
    /// The key a user blocks (`add`) or unblocks another on.
    pub fn block(&self, app: &str, me: &str, other: &str, add: bool) -> String {
        let verb = if add { "add" } else { "remove" };
        format!("apps.{app}.users.{me}.blocks.{other}.{verb}")
    }

    /// The key a user's client announces typing on.
    pub fn typing(&self, app: &str, me: &str, with: &str) -> String {
        format!("apps.{app}.users.{me}.typing.{with}")
    }

    /// The key a user's client announces its connection on.
    pub fn presence(&self, app: &str, user: &str, client_id: &str) -> String {
        format!("apps.{app}.users.{user}.presence.{client_id}")
    }

    /// The key a trusted service publishes a group update on.
    pub fn group_update(&self, app: &str) -> String {
        format!("apps.observer.{app}.groups.update")
    }

    /// The key a trusted service replays a message into `inbox`'s timeline on.
    pub fn history_replay(&self, app: &str, inbox: &str, convers_with: &str) -> String {
        format!("apps.observer.{app}.users.{inbox}.messages.{convers_with}.delivered")
    }

    /// The key a user archives a conversation with.
    pub fn archive(&self, app: &str, me: &str, with: &str) -> String {
        format!("apps.{app}.users.{me}.conversations.{with}.archive")
    }

    /// The key a user publishes a receipt on.
    pub fn receipt(&self, app: &str, me: &str, with: &str, message_id: &str) -> String {
        format!("apps.{app}.users.{me}.messages.{with}.{message_id}.update")
    }

    /// The key a user publishes a conversation update on.
    pub fn conversation_update(&self, app: &str, me: &str, with: &str) -> String {
        format!("apps.{app}.users.{me}.conversations.{with}.update")
    }

    /// The key a user publishes a message on.
    pub fn outgoing(&self, sender: &str, recipient: &str) -> String {
        match &self.layout {
            Layout::Chat21 { app } => format!("apps.{app}.outgoing.users.{sender}.messages.{recipient}.outgoing"),
            Layout::Seed { seed, .. } => format!("{}.{sender}.{recipient}.messages.outgoing", seed.prefix),
        }
    }
}

#[cfg(test)]
impl Topics {
    /// Every key a user `me` of `app` publishes an input on, to `with` (tests of the grammar
    /// and of the token scopes walk the same list).
    pub(super) fn user_inputs(&self, app: &str, me: &str, with: &str) -> Vec<String> {
        vec![
            self.outgoing(me, with),
            self.receipt(app, me, with, "m1"),
            self.conversation_update(app, me, with),
            self.archive(app, me, with),
            self.presence(app, me, "c1"),
            self.typing(app, me, with),
            self.block(app, me, with, true),
            self.block(app, me, with, false),
        ]
    }
}
