//! `chat21-engine doctor`: connects with the configured settings and checks, one line each,
//! what an installation needs — the broker login and vhost, `amq.topic`, the engine's queues
//! and the plugins they need, MQTT and Web-MQTT with a user token minted from `JWT_SECRET` /
//! `JWT_KID` (accepted, and confined to its own topics), the store, the policy file. A failed
//! check says what to fix. Checks that need an earlier one (everything on the broker needs the
//! login) are skipped when it failed, and say so.
//!
//! The most common support problem of Chat21 installations is a broker set up almost right;
//! this names the part that is wrong.

mod broker;
mod mqtt;
mod store;

use crate::config::Config;

/// Where the MQTT listeners are (the engine itself speaks only AMQP, so these are not
/// settings of its own).
#[derive(Debug, Clone)]
pub struct Targets {
    /// `host:port` of the MQTT listener.
    pub mqtt: String,
    /// `ws://host:port/ws` of the Web-MQTT listener.
    pub web_mqtt: String,
}

impl Targets {
    /// The broker's host (from `RABBITMQ_URI` or `RABBITMQ_HOST`) on RabbitMQ's default ports.
    pub fn defaults(config: &Config) -> Targets {
        let host = broker::host(config);
        Targets {
            mqtt: format!("{host}:1883"),
            web_mqtt: format!("ws://{host}:15675/ws"),
        }
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok(String),
    Failed {
        why: String,
        fix: String,
    },
    /// Not run: it needs a check that failed.
    Skipped(String),
}

#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub outcome: Outcome,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            outcome: Outcome::Ok(detail.into()),
        }
    }

    fn failed(name: &'static str, why: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name,
            outcome: Outcome::Failed {
                why: why.into(),
                fix: fix.into(),
            },
        }
    }

    fn skipped(name: &'static str, needs: &str) -> Check {
        Check {
            name,
            outcome: Outcome::Skipped(format!("needs {needs}")),
        }
    }

    pub fn passed(&self) -> bool {
        !matches!(self.outcome, Outcome::Failed { .. } | Outcome::Skipped(_))
    }

    /// One line: `ok`, `FAIL` (with the fix) or `skip`.
    pub fn line(&self) -> String {
        match &self.outcome {
            Outcome::Ok(d) => format!("ok    {:<18} {d}", self.name),
            Outcome::Failed { why, fix } => format!("FAIL  {:<18} {why} — fix: {fix}", self.name),
            Outcome::Skipped(s) => format!("skip  {:<18} {s}", self.name),
        }
    }
}

/// Run every check, in order; each line is handed to `report` as soon as it is known.
pub async fn run(config: &Config, targets: &Targets, mut report: impl FnMut(&Check)) -> Vec<Check> {
    let mut all = Vec::new();
    let mut push = |c: Check, all: &mut Vec<Check>| {
        report(&c);
        all.push(c);
    };
    for c in broker::checks(config).await {
        push(c, &mut all);
    }
    for c in mqtt::checks(config, targets).await {
        push(c, &mut all);
    }
    push(store::store(config).await, &mut all);
    push(policy(config), &mut all);
    all
}

fn policy(config: &Config) -> Check {
    const NAME: &str = "policy file";
    match &config.policy.policy_file {
        None => Check::ok(NAME, "none (POLICY_FILE unset)"),
        Some(path) => match crate::policy::Policy::load(path) {
            Ok(p) => Check::ok(NAME, format!("{} ({} patterns)", path.display(), p.patterns)),
            Err(e) => Check::failed(
                NAME,
                e.to_string(),
                "correct the file (see deploy/policy.example.toml) or unset POLICY_FILE",
            ),
        },
    }
}
