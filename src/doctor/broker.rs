//! The AMQP side: the engine's own login and vhost, `amq.topic`, and the queues, exchange and
//! bindings it declares at start (the consistent-hash plugin is what the exchange needs).
//! Declaring them is what the engine does at every start, so checking by declaring changes
//! nothing an engine would not.

use lapin::options::ExchangeDeclareOptions;
use lapin::types::FieldTable;
use lapin::ExchangeKind;
use std::str::FromStr;

use super::Check;
use crate::broker::topology::{self, Layout};
use crate::config::{BrokerAuth, Config};
use crate::topic::Topics;

/// The broker's host, from `RABBITMQ_URI` or `RABBITMQ_HOST`.
pub fn host(config: &Config) -> String {
    match &config.broker.auth {
        BrokerAuth::Uri(uri) => lapin::uri::AMQPUri::from_str(uri.expose())
            .map(|u| u.authority.host)
            .unwrap_or_else(|_| config.broker.host.clone()),
        _ => config.broker.host.clone(),
    }
}

/// Where the engine logs in, without the password.
fn shown(config: &Config) -> String {
    match &config.broker.auth {
        BrokerAuth::Uri(uri) => match lapin::uri::AMQPUri::from_str(uri.expose()) {
            Ok(u) => format!(
                "{}@{}:{} vhost {:?}",
                u.authority.userinfo.username, u.authority.host, u.authority.port, u.vhost
            ),
            Err(_) => "RABBITMQ_URI".into(),
        },
        BrokerAuth::Password { user, .. } => format!(
            "{user}@{}:{} vhost {:?}",
            config.broker.host, config.broker.port, config.broker.vhost
        ),
        BrokerAuth::ServiceToken => format!(
            "service token@{}:{} vhost {:?}",
            config.broker.host, config.broker.port, config.broker.vhost
        ),
    }
}

/// What an AMQP error says, in the words the fixes are keyed on.
fn says(e: &impl std::fmt::Display, words: &[&str]) -> bool {
    let text = e.to_string().to_ascii_uppercase().replace('_', "");
    words
        .iter()
        .any(|w| text.contains(&w.to_ascii_uppercase().replace('_', "")))
}

/// The `exp` of a password that is a JWT, when it is in the past: the commonest reason an
/// engine that worked yesterday is refused today.
fn expired_token(config: &Config) -> Option<i64> {
    use base64::Engine as _;
    let password = match &config.broker.auth {
        BrokerAuth::Uri(uri) => {
            lapin::uri::AMQPUri::from_str(uri.expose())
                .ok()?
                .authority
                .userinfo
                .password
        }
        BrokerAuth::Password { password, .. } => password.expose().to_owned(),
        BrokerAuth::ServiceToken => return None,
    };
    let claims = password.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims.trim_end_matches('='))
        .ok()?;
    let exp = serde_json::from_slice::<serde_json::Value>(&bytes).ok()?["exp"].as_i64()?;
    (exp * 1000 < crate::clock::now_ms()).then_some(exp)
}

pub async fn checks(config: &Config) -> Vec<Check> {
    let mut out = Vec::new();
    let conn = match crate::broker::connect(config, "chat21-engine doctor").await {
        Ok(conn) => {
            out.push(Check::ok("amqp login", shown(config)));
            out.push(Check::ok("vhost", format!("{:?} open", vhost(config))));
            conn
        }
        Err(e) => {
            out.push(login_failed(config, &e));
            for name in ["amq.topic", "engine queues", "engine publishes"] {
                out.push(Check::skipped(name, "the AMQP login"));
            }
            return out;
        }
    };
    let Ok(ch) = conn.create_channel().await else {
        out.push(Check::failed(
            "amq.topic",
            "the broker refused a channel",
            "check the broker's channel_max",
        ));
        return out;
    };
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    match ch
        .exchange_declare("amq.topic".into(), ExchangeKind::Topic, passive, FieldTable::default())
        .await
    {
        Ok(()) => out.push(Check::ok("amq.topic", "present")),
        Err(e) => out.push(Check::failed(
            "amq.topic",
            e.to_string(),
            "the vhost has no amq.topic: it is made with every vhost, so the vhost was set up by hand or the user cannot see it (permissions: read on amq.topic)",
        )),
    }
    out.push(engine_queues(config, &conn).await);
    out.push(engine_publishes(config, &conn).await);
    if let Some(w) = &config.webhooks {
        let endpoints = crate::webhooks::endpoints(&w.endpoints);
        let check = match conn.create_channel().await {
            Ok(ch) => crate::webhooks::declare(&ch, &config.broker.queue_name, &endpoints)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        out.push(match check {
            Ok(()) => Check::ok("webhook queues", format!("{} endpoint queue(s) ready", endpoints.len())),
            Err(e) => Check::failed(
                "webhook queues",
                e,
                "give the engine user configure/write/read on QUEUE_NAME.webhooks.* (deploy/rabbitmq/engine-permissions.sh)",
            ),
        });
    }
    let _ = conn.close(200, "doctor done".into()).await;
    out
}

fn vhost(config: &Config) -> String {
    match &config.broker.auth {
        BrokerAuth::Uri(uri) => lapin::uri::AMQPUri::from_str(uri.expose())
            .map(|u| u.vhost)
            .unwrap_or_default(),
        _ => config.broker.vhost.clone(),
    }
}

fn login_failed(config: &Config, e: &crate::broker::BrokerError) -> Check {
    let why = e.to_string();
    if says(e, &["NOT_ALLOWED", "vhost"]) {
        return Check::failed(
            "vhost",
            why,
            format!(
                "vhost {:?} does not exist or the engine user may not use it: `rabbitmqctl add_vhost` / `rabbitmqctl set_permissions -p VHOST USER …` (deploy/rabbitmq/engine-permissions.sh), or correct RABBITMQ_VHOST / the URI's path",
                vhost(config)
            ),
        );
    }
    if says(e, &["ACCESS_REFUSED", "authentication", "PLAIN"]) {
        let fix = match (expired_token(config), &config.broker.auth) {
            (Some(exp), _) => format!(
                "the password is a JWT that expired at {exp} (epoch s): mint a new one, or let the engine log in with its own service token (unset RABBITMQ_URI/RABBITMQ_USER, keep JWT_SECRET)"
            ),
            (None, BrokerAuth::ServiceToken) => "the engine logs in with a service token signed by JWT_SECRET/JWT_KID: they must be the broker's OAuth2 signing key and key id (deploy/rabbitmq/advanced.config), and auth_backends must include rabbit_auth_backend_oauth2".into(),
            (None, _) => "the broker refused the engine's user or password: check RABBITMQ_USER/RABBITMQ_PASSWORD (or the URI's user:password), `rabbitmqctl list_users`, and that auth_backends includes rabbit_auth_backend_internal".into(),
        };
        return Check::failed("amqp login", why, fix);
    }
    Check::failed(
        "amqp login",
        why,
        format!(
            "cannot reach RabbitMQ's AMQP listener at {}: is the broker running, and are RABBITMQ_HOST/RABBITMQ_PORT (or RABBITMQ_URI) right?",
            shown(config)
        ),
    )
}

/// Publish, confirmed, on `amq.topic` as the engine does — on a key nothing is bound to
/// (`{QUEUE_NAME}.doctor`), so nobody receives it: topic permissions (write on `amq.topic`
/// for the routing keys the engine publishes) are checked by the broker at this publish.
async fn engine_publishes(config: &Config, conn: &lapin::Connection) -> Check {
    const NAME: &str = "engine publishes";
    let key = format!("{}.doctor", config.broker.queue_name);
    let attempt = async {
        let ch = conn.create_channel().await?;
        ch.confirm_select(Default::default()).await?;
        let confirm = ch
            .basic_publish(
                crate::broker::EXCHANGE.into(),
                key.as_str().into(),
                Default::default(),
                b"{}",
                lapin::BasicProperties::default(),
            )
            .await?
            .await?;
        let _ = ch.close(200, "doctor".into()).await;
        Ok::<_, lapin::Error>(confirm)
    };
    match attempt.await {
        Ok(lapin::Confirmation::Nack(_)) => Check::failed(NAME, "the broker nacked a publish", "see the broker's log (a resource alarm: disk or memory)"),
        Ok(_) => Check::ok(NAME, "a confirmed publish on amq.topic"),
        Err(e) if says(&e, &["ACCESS_REFUSED"]) => Check::failed(
            NAME,
            e.to_string(),
            "the engine user may not publish on amq.topic: give it write on amq.topic and topic permissions for every routing key (`rabbitmqctl clear_topic_permissions -p VHOST USER`, or `set_topic_permissions … amq.topic '.*' '.*'`)",
        ),
        Err(e) => Check::failed(NAME, e.to_string(), "see the broker's log"),
    }
}

/// Declare the input layout as the engine does (idempotent).
async fn engine_queues(config: &Config, conn: &lapin::Connection) -> Check {
    const NAME: &str = "engine queues";
    let topics = match Topics::from_config(&config.topics) {
        Ok(t) => t,
        Err(e) => return Check::failed(NAME, e, "correct PATH_PREFIX"),
    };
    let layout = Layout::of(&config.broker);
    let ch = match conn.create_channel().await {
        Ok(ch) => ch,
        Err(e) => return Check::failed(NAME, e.to_string(), "check the broker's channel_max"),
    };
    match topology::declare(&ch, &layout, &topics.bindings(), &topics.retired_bindings()).await {
        Ok(()) => Check::ok(
            NAME,
            format!(
                "{} partition queue(s) {}.p00…, exchange {}, {} binding(s) from amq.topic",
                layout.queues().len(),
                config.broker.queue_name,
                layout.exchange(),
                topics.bindings().len()
            ),
        ),
        Err(e) if says(&e, &["unknown exchange type", "x-consistent-hash"]) => Check::failed(
            NAME,
            e.to_string(),
            "enable the consistent-hash exchange: `rabbitmq-plugins enable rabbitmq_consistent_hash_exchange` (deploy/rabbitmq/enabled_plugins)",
        ),
        Err(e) if says(&e, &["PRECONDITION_FAILED", "inequivalent"]) => Check::failed(
            NAME,
            e.to_string(),
            "a queue of that name exists with other arguments (another type, or another DELIVERY_LIMIT): drain it, delete it (`rabbitmqctl delete_queue NAME`) and start the engine again",
        ),
        Err(e) if says(&e, &["ACCESS_REFUSED"]) => Check::failed(
            NAME,
            e.to_string(),
            "the engine user lacks permissions on its queues: apply deploy/rabbitmq/engine-permissions.sh for this QUEUE_NAME",
        ),
        Err(e) => Check::failed(NAME, e.to_string(), "see the broker's log for why the declare was refused"),
    }
}
