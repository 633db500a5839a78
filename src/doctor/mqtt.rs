//! The client side: the MQTT and Web-MQTT listeners, and a user token minted with
//! `JWT_SECRET`/`JWT_KID` the way `chat21-engine token` mints one — accepted by the broker's
//! OAuth2 backend, and confined: it may subscribe to its own inbox and not to another user's.

use rumqttc::{AsyncClient, ConnectReturnCode, Event, MqttOptions, Packet, QoS, SubscribeReasonCode, Transport};
use std::time::Duration;

use super::{Check, Targets};
use crate::config::Config;
use crate::domain::{AppId, UserId};
use crate::jwt::Minter;
use crate::topic::Topics;

/// How long one MQTT step may take.
const STEP: Duration = Duration::from_secs(5);

/// A user's inbox as an MQTT filter (`apps/{app}/users/{user}/#` in the chat21 layout).
fn inbox_filter(topics: &Topics, app: &AppId, user: &UserId) -> String {
    let read = topics.user_topics(app, user).read.remove(0);
    let words = read.strip_suffix(".*").unwrap_or(&read);
    format!("{}/#", words.replace('.', "/"))
}

enum Connected {
    Yes(AsyncClient, Box<rumqttc::EventLoop>),
    Refused(String),
    Unreachable(String),
}

async fn connect(opts: MqttOptions) -> Connected {
    let (client, mut events) = AsyncClient::new(opts, 10);
    let first = tokio::time::timeout(STEP, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => return Ok(ack.code),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    match first {
        Ok(Ok(ConnectReturnCode::Success)) => Connected::Yes(client, Box::new(events)),
        Ok(Ok(code)) => Connected::Refused(format!("CONNACK {code:?}")),
        Ok(Err(rumqttc::ConnectionError::ConnectionRefused(code))) => Connected::Refused(format!("CONNACK {code:?}")),
        Ok(Err(e)) => Connected::Unreachable(e.to_string()),
        Err(_) => Connected::Unreachable(format!("no CONNACK within {STEP:?}")),
    }
}

/// Subscribe and wait for the SUBACK: true when granted. A broker that closes the connection
/// instead (some versions do, for a refused subscription) counts as refused.
async fn granted(client: &AsyncClient, events: &mut rumqttc::EventLoop, filter: &str) -> Result<bool, String> {
    client
        .subscribe(filter, QoS::AtMostOnce)
        .await
        .map_err(|e| e.to_string())?;
    let answer = tokio::time::timeout(STEP, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    return Ok(ack
                        .return_codes
                        .iter()
                        .all(|c| matches!(c, SubscribeReasonCode::Success(_))))
                }
                Ok(_) => {}
                Err(_) => return Ok(false),
            }
        }
    })
    .await;
    answer.unwrap_or_else(|_| Err(format!("no SUBACK within {STEP:?}")))
}

fn options(client_id: &str, target: &str, token: &str, ws: bool) -> Option<MqttOptions> {
    let mut opts = if ws {
        let mut o = MqttOptions::new(client_id, target, 0);
        o.set_transport(Transport::Ws);
        o
    } else {
        let (host, port) = target.rsplit_once(':')?;
        MqttOptions::new(client_id, host, port.parse().ok()?)
    };
    opts.set_credentials("JWT", token);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_clean_session(true);
    Some(opts)
}

pub async fn checks(config: &Config, targets: &Targets) -> Vec<Check> {
    let names = ["mqtt", "mqtt confinement", "web-mqtt"];
    let minted = (|| {
        let topics = Topics::from_config(&config.topics).map_err(|e| format!("PATH_PREFIX: {e}"))?;
        let app = AppId::parse(&config.topics.app_id).map_err(|_| "APP_ID is not a valid id".to_string())?;
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let (me, other) = (
            UserId::parse(&format!("doctor-{suffix}")).map_err(|_| "probe id".to_string())?,
            UserId::parse(&format!("doctor-other-{suffix}")).map_err(|_| "probe id".to_string())?,
        );
        let minter = Minter::from_config(config).map_err(|e| e.to_string())?;
        let token = minter
            .user_token(&topics, &app, &me, Duration::from_secs(300))
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((topics, app, me, other, token))
    })();
    let (topics, app, me, other, token) = match minted {
        Ok(m) => m,
        Err(e) => {
            let mut out = vec![Check::failed(
                "mqtt",
                format!("cannot mint a user token: {e}"),
                "set JWT_SECRET (the broker's OAuth2 signing key) and JWT_KID (its key id)",
            )];
            out.extend(names[1..].iter().map(|n| Check::skipped(n, "a user token")));
            return out;
        }
    };
    let refused_fix = "the broker's OAuth2 backend refused a token signed with JWT_SECRET and kid JWT_KID: they must equal the signing key and its id in the broker's advanced.config (deploy/rabbitmq/render-advanced-config.sh), and auth_backends must include rabbit_auth_backend_oauth2";
    let mut out = Vec::new();
    let client_id = format!("doctor{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let Some(opts) = options(&client_id, &targets.mqtt, &token, false) else {
        out.push(Check::failed(
            "mqtt",
            format!("{:?} is not host:port", targets.mqtt),
            "pass --mqtt HOST:PORT",
        ));
        out.push(Check::skipped("mqtt confinement", "MQTT"));
        out.push(web_mqtt(targets, &token, refused_fix).await);
        return out;
    };
    match connect(opts).await {
        Connected::Yes(client, mut events) => {
            out.push(Check::ok("mqtt", format!("{}: a user token is accepted", targets.mqtt)));
            let own = granted(&client, &mut events, &inbox_filter(&topics, &app, &me)).await;
            let theirs = match own {
                Ok(true) => granted(&client, &mut events, &inbox_filter(&topics, &app, &other)).await,
                _ => Ok(false),
            };
            out.push(match (own, theirs) {
                (Ok(true), Ok(false)) => Check::ok("mqtt confinement", "own inbox granted, another user's refused"),
                (Ok(true), Ok(true)) => Check::failed(
                    "mqtt confinement",
                    "a user token subscribed to another user's inbox",
                    "the broker grants more than the token's scopes: check the topic permissions (rabbitmqctl list_topic_permissions) and that no default user/permissions give read on amq.topic",
                ),
                (Ok(false), _) => Check::failed(
                    "mqtt confinement",
                    "a user token may not subscribe to its own inbox",
                    "the OAuth2 backend must take the token's scopes: resource_server_id rabbitmq in advanced.config, and topic authorisation on (deploy/rabbitmq/rabbitmq.conf)",
                ),
                (Err(e), _) | (_, Err(e)) => Check::failed("mqtt confinement", e, "see the broker's log"),
            });
            let _ = client.disconnect().await;
        }
        Connected::Refused(why) => {
            out.push(Check::failed("mqtt", why, refused_fix));
            out.push(Check::skipped("mqtt confinement", "an accepted MQTT login"));
        }
        Connected::Unreachable(why) => {
            out.push(Check::failed(
                "mqtt",
                format!("{}: {why}", targets.mqtt),
                "enable the MQTT plugin (`rabbitmq-plugins enable rabbitmq_mqtt`, deploy/rabbitmq/enabled_plugins) and open its port, or pass --mqtt HOST:PORT",
            ));
            out.push(Check::skipped("mqtt confinement", "MQTT"));
        }
    }
    out.push(web_mqtt(targets, &token, refused_fix).await);
    out
}

async fn web_mqtt(targets: &Targets, token: &str, refused_fix: &str) -> Check {
    let client_id = format!("doctor{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let opts = options(&client_id, &targets.web_mqtt, token, true).expect("a URL target always makes options");
    // The broker closes a Web-MQTT connection whose login it refuses, without a CONNACK: a
    // listener that accepts TCP tells a refused login from a missing plugin.
    let listening = match reqwest::Url::parse(&targets.web_mqtt) {
        Ok(u) => match (u.host_str(), u.port_or_known_default()) {
            (Some(host), Some(port)) => {
                let tcp = tokio::net::TcpStream::connect((host, port));
                matches!(tokio::time::timeout(STEP, tcp).await, Ok(Ok(_)))
            }
            _ => false,
        },
        Err(_) => false,
    };
    let connected = match connect(opts).await {
        Connected::Unreachable(why) if listening => Connected::Refused(format!("{why} at login")),
        other => other,
    };
    match connected {
        Connected::Yes(client, _) => {
            let _ = client.disconnect().await;
            Check::ok("web-mqtt", format!("{}: a user token is accepted", targets.web_mqtt))
        }
        Connected::Refused(why) => Check::failed("web-mqtt", why, refused_fix),
        Connected::Unreachable(why) => Check::failed(
            "web-mqtt",
            format!("{}: {why}", targets.web_mqtt),
            "enable the Web-MQTT plugin (`rabbitmq-plugins enable rabbitmq_web_mqtt`, deploy/rabbitmq/enabled_plugins) and open its port, or pass --web-mqtt ws://HOST:PORT/ws",
        ),
    }
}
