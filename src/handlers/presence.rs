//! I5, presence (PROTOCOL §7): a client announces `{"connected":true}` when it connects and
//! leaves `{"disconnected":true}` as its MQTT last will. The store keeps the set of connected
//! client ids per user (so a redelivered event changes nothing) and reports the online/offline
//! transitions (fix D26: a user with two tabs stays online when one closes).

use crate::domain::{AppId, ClientId, RejectReason, UserId};
use crate::plan::{Context, Plan, Write};

pub(super) fn presence(
    app: &AppId,
    user: &UserId,
    client_id: &ClientId,
    connected: Result<bool, RejectReason>,
    ctx: &Context,
) -> Result<Plan, RejectReason> {
    if !ctx.settings.presence {
        // Only reachable through a binding left by an earlier configuration.
        return Err(RejectReason::Unsupported);
    }
    let connected = connected?;
    Ok(Plan::writes(vec![Write::Presence {
        app: app.clone(),
        user: user.clone(),
        client_id: client_id.clone(),
        connected,
        at_ms: ctx.now_ms,
    }]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::testing::{handled, settings};
    use crate::handlers::Settings;
    use crate::topic::Topics;

    fn run(body: &str, s: &Settings) -> Result<Plan, RejectReason> {
        let t = Topics::chat21("t");
        handled(&t, &t.presence("t", "U", "c1"), body, &[], s).map_err(|r| r.reason())
    }

    #[test]
    fn connect_and_disconnect() {
        for (body, want) in [(r#"{"connected":true}"#, true), (r#"{"disconnected":true}"#, false)] {
            let plan = run(body, &settings()).unwrap();
            assert!(plan.publishes.is_empty());
            assert!(matches!(
                plan.writes.as_slice(),
                [Write::Presence { connected, at_ms: 7, .. }] if *connected == want
            ));
        }
    }

    #[test]
    fn unclear_or_disabled() {
        for body in [
            r#"{}"#,
            r#"{"connected":true,"disconnected":true}"#,
            r#"{"connected":"yes"}"#,
        ] {
            assert_eq!(run(body, &settings()).unwrap_err(), RejectReason::BadPayload, "{body}");
        }
        let off = Settings {
            presence: false,
            ..settings()
        };
        for body in [r#"{"connected":true}"#, "not json", "{}"] {
            assert_eq!(run(body, &off).unwrap_err(), RejectReason::Unsupported, "{body}");
        }
    }
}
