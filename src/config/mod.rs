//! One typed configuration, read from the environment and validated before anything starts.
//! Plain data: this module imports nothing from the parts it configures. Building those parts
//! from it (compiling the policy file, checking ids and the seed prefix) happens where the
//! engine is assembled (`Engine::new`), with the same one-line errors and exit code 2.
//!
//! Every variable is listed once, with its default, in [`VARIABLES`]: the defaults are read
//! from that table, and `--help`, `.env.example` and the README's table are made from it or
//! checked against it.

mod secret;
mod variables;

pub use secret::Secret;
pub use variables::{variable, Shown, Variable, VARIABLES};

use serde::Deserialize;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicLayout {
    Chat21,
    Seed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// How the engine logs in to the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerAuth {
    /// A complete URI (credentials inside, or none).
    Uri(Secret),
    /// Internal user and password, with host/port/vhost.
    Password { user: String, password: Secret },
    /// No password: a short-lived service JWT signed with `JWT_SECRET`, refreshed before expiry.
    ServiceToken,
}

/// Where the data lives (`DATABASE_URL`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    Sqlite {
        path: String,
    },
    /// The URL may hold a password.
    Postgres {
        url: Secret,
    },
}

impl Database {
    /// `sqlite://PATH` (relative or absolute), `postgres://…` / `postgresql://…`, or `off`
    /// (`None`).
    pub fn parse(url: &str) -> Result<Option<Database>, String> {
        if url == "off" {
            return Ok(None);
        }
        if let Some(path) = url.strip_prefix("sqlite://") {
            let path = path.split('?').next().unwrap_or_default();
            if path.is_empty() {
                return Err("sqlite:// needs a file path".into());
            }
            return Ok(Some(Database::Sqlite { path: path.to_string() }));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Some(Database::Postgres { url: Secret::new(url) }));
        }
        Err("must be sqlite://PATH, postgres://… or off".into())
    }
}

/// The broker connection and how inputs are consumed.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub auth: BrokerAuth,
    pub host: String,
    pub port: u16,
    pub vhost: String,
    pub queue_name: String,
    /// Input partitions (`PARTITIONS`): see `broker::topology`.
    pub partitions: u16,
    /// Deliveries of one input before the broker dead-letters it (`DELIVERY_LIMIT`).
    pub delivery_limit: u32,
    pub prefetch: u16,
    pub publish_window: usize,
    /// Bytes of unconfirmed publishes at once (`MAX_IN_FLIGHT_BYTES`).
    pub in_flight_bytes: usize,
}

/// Minted tokens.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub secret: Option<Secret>,
    pub kid: String,
    pub ttl: Duration,
}

/// The topic grammar.
#[derive(Debug, Clone)]
pub struct TopicConfig {
    pub app_id: String,
    pub layout: TopicLayout,
    pub path_prefix: String,
    /// Consume presence (I5).
    pub presence: bool,
}

/// Groups, caches and the policy chain.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    pub trusted_senders: Vec<String>,
    pub max_inline_group_members: usize,
    /// Largest input body (`MAX_MESSAGE_BYTES`).
    pub max_message_bytes: usize,
    /// Most bytes one message may fan out to (`MAX_FANOUT_BYTES`).
    pub max_fanout_bytes: usize,
    pub group_cache_size: u64,
    pub block_cache_size: u64,
    /// TTL of the group and block-list caches.
    pub cache_ttl: Duration,
    /// (per minute, burst); None = no rate limit.
    pub rate_limit: Option<(NonZeroU32, NonZeroU32)>,
    /// Commands of one kind a user may send per minute; None = no limit.
    pub command_rate_limit: Option<NonZeroU32>,
    pub policy_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub host: String,
    /// 0 = disabled.
    pub port: u16,
    pub max_body_bytes: usize,
    /// Where the ops endpoints go when not on `port` (OPS_HTTP_PORT ≠ 0).
    pub ops: Option<(String, u16)>,
}

/// Webhooks (`WEBHOOK_*`), when enabled.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Validated http(s) URLs, in the order given.
    pub endpoints: Vec<String>,
    /// The event types to send.
    pub events: Vec<crate::webhooks::EventType>,
    pub secret: Option<Secret>,
    pub timeout: Duration,
    pub retry_for: Duration,
    pub retry_max_delay: Duration,
    pub concurrency: usize,
    pub hold_limit: Duration,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub broker: BrokerConfig,
    pub jwt: JwtConfig,
    pub topics: TopicConfig,
    /// None = persistence off.
    pub store: Option<Database>,
    pub policy: PolicyConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    /// None = webhooks off.
    pub webhooks: Option<WebhookConfig>,
    /// Every variable's value in force (given or default), in table order.
    effective: Vec<(&'static Variable, String)>,
}

/// The environment as envy reads it, after the table's defaults were filled in: no defaults
/// here, so none is written twice.
#[derive(Debug, Deserialize)]
struct Raw {
    rabbitmq_uri: Option<String>,
    rabbitmq_host: String,
    rabbitmq_port: u16,
    rabbitmq_vhost: String,
    rabbitmq_user: Option<String>,
    rabbitmq_password: Option<String>,
    jwt_secret: Option<String>,
    jwt_kid: String,
    jwt_ttl: String,
    app_id: String,
    topic_layout: String,
    path_prefix: String,
    queue_name: String,
    partitions: u16,
    delivery_limit: u32,
    prefetch_messages: u16,
    database_url: String,
    publish_window: u32,
    max_in_flight_bytes: usize,
    max_message_bytes: usize,
    max_fanout_bytes: usize,
    trusted_senders: String,
    max_inline_group_members: usize,
    group_cache_size: u64,
    block_cache_size: u64,
    cache_ttl: String,
    rate_limit_per_min: u32,
    rate_limit_burst: Option<u32>,
    rate_limit_commands_per_min: u32,
    policy_file: Option<String>,
    presence_enabled: bool,
    http_port: u16,
    http_host: String,
    http_max_body_bytes: usize,
    ops_http_port: u16,
    ops_http_host: String,
    log_level: String,
    log_format: String,
    webhook_enabled: bool,
    webhook_endpoints: Option<String>,
    webhook_events: Option<String>,
    webhook_secret: Option<String>,
    webhook_timeout: String,
    webhook_retry_for: String,
    webhook_retry_max_delay: String,
    webhook_concurrency: usize,
    webhook_hold_limit: String,
}

/// A configuration error: printed as one line at start-up, exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

/// A placeholder from documentation, not a secret.
fn is_example_secret(s: &str) -> bool {
    let s = s.to_ascii_lowercase().replace(['-', '_'], "");
    s.contains("changeme")
}

fn bad(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    /// Read from any key/value list (tests pass their own).
    pub fn from_vars<I: IntoIterator<Item = (String, String)>>(vars: I) -> Result<Self, ConfigError> {
        // Empty values count as unset: `FOO=` in an env file or compose means "default".
        let given: HashMap<String, String> = vars
            .into_iter()
            .filter(|(k, v)| !v.trim().is_empty() && variable(k).is_some())
            .collect();
        let values: Vec<(&'static Variable, String)> = VARIABLES
            .iter()
            .map(|v| (v, given.get(v.name).cloned().unwrap_or_else(|| v.default.to_string())))
            .collect();
        let set = values
            .iter()
            .filter(|(_, value)| !value.is_empty())
            .map(|(v, value)| (v.name.to_string(), value.clone()));
        let raw: Raw = envy::from_iter(set).map_err(|e| bad(describe_envy(e)))?;
        // Kept to be shown, so secrets are dropped here.
        let effective = values
            .into_iter()
            .map(|(v, value)| {
                let shown = match v.shown {
                    _ if value.is_empty() => value,
                    Shown::Plainly => value,
                    Shown::Never => "<redacted>".into(),
                    Shown::WithoutPassword => without_password(&value),
                };
                (v, shown)
            })
            .collect();
        Self::validate(raw, effective)
    }

    fn validate(raw: Raw, effective: Vec<(&'static Variable, String)>) -> Result<Self, ConfigError> {
        let webhooks = webhooks(&raw)?;
        let auth = match (raw.rabbitmq_uri, raw.rabbitmq_user, &raw.jwt_secret) {
            (Some(uri), _, _) => {
                // A cluster: one URI per node, comma-separated (a comma in a password is
                // written %2C, as URIs require anyway).
                if uri
                    .split(',')
                    .map(str::trim)
                    .any(|u| !(u.starts_with("amqp://") || u.starts_with("amqps://")))
                {
                    return Err(bad(
                        "RABBITMQ_URI must be amqp:// or amqps:// URIs (comma-separated for the nodes of a cluster)",
                    ));
                }
                BrokerAuth::Uri(Secret::new(uri))
            }
            (None, Some(user), _) => BrokerAuth::Password {
                user,
                password: Secret::new(raw.rabbitmq_password.unwrap_or_default()),
            },
            (None, None, Some(_)) => BrokerAuth::ServiceToken,
            (None, None, None) => {
                return Err(bad(
                    "set RABBITMQ_URI, or RABBITMQ_USER and RABBITMQ_PASSWORD, or JWT_SECRET (service token)",
                ))
            }
        };
        let layout = match raw.topic_layout.as_str() {
            "chat21" => TopicLayout::Chat21,
            "seed" => TopicLayout::Seed,
            other => return Err(bad(format!("TOPIC_LAYOUT {other:?} must be chat21 or seed"))),
        };
        let format = match raw.log_format.as_str() {
            "pretty" => LogFormat::Pretty,
            "json" => LogFormat::Json,
            other => return Err(bad(format!("LOG_FORMAT {other:?} must be pretty or json"))),
        };
        if raw.rabbitmq_host.split(',').all(|h| h.trim().is_empty()) {
            return Err(bad(
                "RABBITMQ_HOST must name a host (comma-separated for the nodes of a cluster)",
            ));
        }
        if raw.rabbitmq_port == 0 {
            return Err(bad("RABBITMQ_PORT must be 1..65535"));
        }
        if raw.jwt_kid.is_empty()
            || !raw
                .jwt_kid
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return Err(bad("JWT_KID may only contain A-Z a-z 0-9 . _ -"));
        }
        if raw.jwt_secret.as_ref().is_some_and(|s| s.len() < 16) {
            return Err(bad("JWT_SECRET must be at least 16 bytes"));
        }
        // Whoever knows the secret mints tokens for anyone: a value copied from an example
        // is public. (`openssl rand -base64 32` makes one.)
        if raw.jwt_secret.as_ref().is_some_and(|s| is_example_secret(s)) {
            return Err(bad(
                "JWT_SECRET is an example value (it contains \"change-me\"): set a random one, e.g. `openssl rand -base64 32`",
            ));
        }
        let jwt_ttl = parse_duration(&raw.jwt_ttl).ok_or_else(|| {
            bad(format!(
                "JWT_TTL {:?} is not a duration (e.g. 3600, 90m, 12h, 30d)",
                raw.jwt_ttl
            ))
        })?;
        if jwt_ttl < Duration::from_secs(60) {
            return Err(bad("JWT_TTL must be at least 60 s"));
        }
        if raw.prefetch_messages == 0 {
            return Err(bad("PREFETCH_MESSAGES must be 1..65535"));
        }
        if !(1..=crate::broker::topology::MAX_PARTITIONS).contains(&raw.partitions) {
            return Err(bad("PARTITIONS must be 1..=100"));
        }
        if !(1..=1000).contains(&raw.delivery_limit) {
            return Err(bad("DELIVERY_LIMIT must be 1..=1000"));
        }
        let store = Database::parse(&raw.database_url).map_err(|e| bad(format!("DATABASE_URL: {e}")))?;
        if raw.publish_window == 0 {
            return Err(bad("PUBLISH_WINDOW must be at least 1"));
        }
        if raw.max_message_bytes == 0 {
            return Err(bad("MAX_MESSAGE_BYTES must be at least 1"));
        }
        // A direct message is two copies: the budget must let every accepted one through.
        if raw.max_fanout_bytes < raw.max_message_bytes.saturating_mul(2) {
            return Err(bad("MAX_FANOUT_BYTES must be at least 2 × MAX_MESSAGE_BYTES"));
        }
        if raw.max_in_flight_bytes < raw.max_fanout_bytes {
            return Err(bad("MAX_IN_FLIGHT_BYTES must be at least MAX_FANOUT_BYTES"));
        }
        // 200: room for the queues named after it (`.dead-letter`, `.reply.<uuid>`, `.p00`) within the
        // broker's 255.
        if raw.queue_name.is_empty() || raw.queue_name.len() > 200 || raw.queue_name.starts_with("amq.") {
            return Err(bad("QUEUE_NAME must be 1..200 bytes and not start with amq."));
        }
        let trusted_senders: Vec<String> = raw
            .trusted_senders
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if raw.max_inline_group_members == 0 {
            return Err(bad("MAX_INLINE_GROUP_MEMBERS must be at least 1"));
        }
        if raw.group_cache_size == 0 {
            return Err(bad("GROUP_CACHE_SIZE must be at least 1"));
        }
        if raw.block_cache_size == 0 {
            return Err(bad("BLOCK_CACHE_SIZE must be at least 1"));
        }
        let cache_ttl = parse_duration(&raw.cache_ttl).filter(|d| !d.is_zero()).ok_or_else(|| {
            bad(format!(
                "CACHE_TTL {:?} is not a positive duration (e.g. 300, 5m)",
                raw.cache_ttl
            ))
        })?;
        let rate_limit = match NonZeroU32::new(raw.rate_limit_per_min) {
            None => None,
            Some(per_min) => {
                let burst = raw.rate_limit_burst.unwrap_or(per_min.get());
                let burst = NonZeroU32::new(burst).ok_or_else(|| bad("RATE_LIMIT_BURST must be at least 1"))?;
                Some((per_min, burst))
            }
        };
        if raw.presence_enabled && store.is_none() {
            return Err(bad(
                "PRESENCE_ENABLED=true needs a store (DATABASE_URL is off): presence state lives there",
            ));
        }
        if raw.http_max_body_bytes < 1024 {
            return Err(bad("HTTP_MAX_BODY_BYTES must be at least 1024"));
        }
        if raw.ops_http_port != 0 && raw.ops_http_port == raw.http_port && raw.ops_http_host == raw.http_host {
            return Err(bad(
                "OPS_HTTP_PORT must differ from HTTP_PORT (0 serves the ops endpoints on HTTP_PORT)",
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&raw.log_level)
            .map_err(|e| bad(format!("LOG_LEVEL {:?}: {e}", raw.log_level)))?;
        Ok(Config {
            broker: BrokerConfig {
                auth,
                host: raw.rabbitmq_host,
                port: raw.rabbitmq_port,
                vhost: raw.rabbitmq_vhost,
                queue_name: raw.queue_name,
                partitions: raw.partitions,
                delivery_limit: raw.delivery_limit,
                prefetch: raw.prefetch_messages,
                publish_window: raw.publish_window as usize,
                in_flight_bytes: raw.max_in_flight_bytes,
            },
            jwt: JwtConfig {
                secret: raw.jwt_secret.map(Secret::new),
                kid: raw.jwt_kid,
                ttl: jwt_ttl,
            },
            topics: TopicConfig {
                app_id: raw.app_id,
                layout,
                path_prefix: raw.path_prefix,
                presence: raw.presence_enabled,
            },
            store,
            policy: PolicyConfig {
                trusted_senders,
                max_inline_group_members: raw.max_inline_group_members,
                max_message_bytes: raw.max_message_bytes,
                max_fanout_bytes: raw.max_fanout_bytes,
                group_cache_size: raw.group_cache_size,
                block_cache_size: raw.block_cache_size,
                cache_ttl,
                rate_limit,
                command_rate_limit: NonZeroU32::new(raw.rate_limit_commands_per_min),
                policy_file: raw.policy_file.map(PathBuf::from),
            },
            http: HttpConfig {
                host: raw.http_host,
                port: raw.http_port,
                max_body_bytes: raw.http_max_body_bytes,
                ops: (raw.ops_http_port != 0).then_some((raw.ops_http_host, raw.ops_http_port)),
            },
            log: LogConfig {
                level: raw.log_level,
                format,
            },
            webhooks,
            effective,
        })
    }

    /// The AMQP URI to connect with, given the password to use for a service token: the
    /// first node's when several are configured.
    pub fn amqp_uri(&self, service_token: Option<&str>) -> String {
        self.amqp_uris(service_token).swap_remove(0)
    }

    /// One AMQP URI per broker node (`RABBITMQ_URI` or `RABBITMQ_HOST` comma-separated), in
    /// the order given; never empty.
    pub fn amqp_uris(&self, service_token: Option<&str>) -> Vec<String> {
        let b = &self.broker;
        let vhost = percent_encode(&b.vhost);
        let port = b.port;
        let hosts = || b.host.split(',').map(str::trim).filter(|h| !h.is_empty());
        let uris: Vec<String> = match &b.auth {
            BrokerAuth::Uri(uri) => uri.expose().split(',').map(|u| u.trim().to_owned()).collect(),
            BrokerAuth::Password { user, password } => hosts()
                .map(|host| {
                    format!(
                        "amqp://{}:{}@{host}:{port}/{vhost}",
                        percent_encode(user),
                        percent_encode(password.expose())
                    )
                })
                .collect(),
            BrokerAuth::ServiceToken => hosts()
                .map(|host| {
                    format!(
                        "amqp://chat21-engine:{}@{host}:{port}/{vhost}",
                        percent_encode(service_token.unwrap_or_default())
                    )
                })
                .collect(),
        };
        if uris.is_empty() {
            // RABBITMQ_HOST of commas only; validated away at start-up, kept total here.
            return vec![format!("amqp://{}:{port}/{vhost}", b.host)];
        }
        uris
    }

    /// The whole configuration in force, one `NAME=value` line per variable (defaults
    /// included), secrets redacted: what `check-config` prints.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (v, value) in &self.effective {
            out.push_str(&format!("{}={value}\n", v.name));
        }
        out
    }

    /// Text for `--help`: every variable with its default.
    pub fn help_text() -> String {
        let mut s = String::from("Environment variables (empty = unset):\n");
        for v in VARIABLES {
            let d = if v.default.is_empty() {
                String::new()
            } else {
                format!(" [default: {}]", v.default)
            };
            s.push_str(&format!("  {:<24} {}{}\n", v.name, v.help, d));
        }
        s
    }

    /// The README's configuration table, made from [`VARIABLES`].
    pub fn markdown_table() -> String {
        let mut s = String::from("| variable | default | meaning |\n|---|---|---|\n");
        for v in VARIABLES {
            let d = if v.default.is_empty() {
                "—".to_string()
            } else {
                format!("`{}`", v.default)
            };
            s.push_str(&format!("| `{}` | {d} | {} |\n", v.name, v.help.replace('|', "\\|")));
        }
        s
    }
}

/// The `WEBHOOK_*` settings: None when off; when on, at least one valid endpoint.
fn webhooks(raw: &Raw) -> Result<Option<WebhookConfig>, ConfigError> {
    let list = |s: &Option<String>| -> Vec<String> {
        s.as_deref()
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    if !raw.webhook_enabled {
        return Ok(None);
    }
    let endpoints = list(&raw.webhook_endpoints);
    if endpoints.is_empty() {
        return Err(bad(
            "WEBHOOK_ENABLED=true needs WEBHOOK_ENDPOINTS (comma-separated http(s) URLs)",
        ));
    }
    for e in &endpoints {
        let url =
            reqwest::Url::parse(e).map_err(|why| bad(format!("WEBHOOK_ENDPOINTS: {e:?} is not a URL ({why})")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(bad(format!(
                "WEBHOOK_ENDPOINTS: {e:?} must be an http:// or https:// URL with a host"
            )));
        }
    }
    let mut events = Vec::new();
    for name in list(&raw.webhook_events) {
        let kind = crate::webhooks::EventType::parse(&name).ok_or_else(|| {
            let known: Vec<&str> = crate::webhooks::EventType::ALL.iter().map(|t| t.as_str()).collect();
            bad(format!(
                "WEBHOOK_EVENTS: {name:?} is not an event type ({})",
                known.join(", ")
            ))
        })?;
        if !events.contains(&kind) {
            events.push(kind);
        }
    }
    if events.is_empty() {
        events = crate::webhooks::EventType::ALL.to_vec();
    }
    if raw.webhook_secret.as_ref().is_some_and(|s| s.len() < 16) {
        return Err(bad("WEBHOOK_SECRET must be at least 16 bytes"));
    }
    if let Some(b64) = raw.webhook_secret.as_deref().and_then(|s| s.strip_prefix("whsec_")) {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| bad("WEBHOOK_SECRET starts with whsec_ but the rest is not base64"))?;
    }
    let duration = |name: &str, value: &str| {
        parse_duration(value).filter(|d| !d.is_zero()).ok_or_else(|| {
            bad(format!(
                "{name} {value:?} is not a positive duration (e.g. 10s, 5m, 24h)"
            ))
        })
    };
    let timeout = duration("WEBHOOK_TIMEOUT", &raw.webhook_timeout)?;
    let retry_for = duration("WEBHOOK_RETRY_FOR", &raw.webhook_retry_for)?;
    let retry_max_delay = duration("WEBHOOK_RETRY_MAX_DELAY", &raw.webhook_retry_max_delay)?;
    let hold_limit = duration("WEBHOOK_HOLD_LIMIT", &raw.webhook_hold_limit)?;
    if !(1..=1000).contains(&raw.webhook_concurrency) {
        return Err(bad("WEBHOOK_CONCURRENCY must be 1..=1000"));
    }
    Ok(Some(WebhookConfig {
        endpoints,
        events,
        secret: raw.webhook_secret.clone().map(Secret::new),
        timeout,
        retry_for,
        retry_max_delay,
        concurrency: raw.webhook_concurrency,
        hold_limit,
    }))
}

/// `scheme://user:password@host…` → `scheme://user:<redacted>@host…`.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:<redacted>{}", &rest[at..])
        }
        None => url.to_owned(),
    }
}

fn describe_envy(e: envy::Error) -> String {
    match e {
        envy::Error::MissingValue(name) => format!("{} is required", name.to_uppercase()),
        envy::Error::Custom(msg) => {
            // envy says e.g. `invalid digit found in string while parsing "rabbitmq_port"`.
            match msg.rsplit_once("while parsing ") {
                Some((what, var)) => format!("{} {}", var.trim_matches('"').to_uppercase(), what.trim()),
                None => msg,
            }
        }
    }
}

/// `3600`, `3600s`, `90m`, `12h`, `30d`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 's') => (&s[..i], 1),
        (i, 'm') => (&s[..i], 60),
        (i, 'h') => (&s[..i], 3600),
        (i, 'd') => (&s[..i], 86_400),
        _ => (s, 1),
    };
    let n: u64 = num.parse().ok()?;
    n.checked_mul(mult).map(Duration::from_secs)
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_vars(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn defaults_are_the_table() {
        let c = cfg(&[("RABBITMQ_USER", "u"), ("RABBITMQ_PASSWORD", "p")]).unwrap();
        assert_eq!(c.broker.host, "localhost");
        assert_eq!(c.broker.port, 5672);
        assert_eq!(c.topics.app_id, "tilechat");
        assert_eq!(c.topics.path_prefix, "/apps/tilechat/users");
        assert_eq!(c.jwt.kid, "tiledesk-key");
        assert_eq!(c.jwt.ttl, Duration::from_secs(30 * 86_400));
        assert_eq!(c.broker.queue_name, "chat21.engine");
        assert_eq!(c.broker.prefetch, 1024);
        assert_eq!(c.http.port, 8004);
        assert_eq!(c.log.level, "info");
        assert_eq!(c.amqp_uri(None), "amqp://u:p@localhost:5672/%2F");
        // Every default in force is the table's, and every variable is shown.
        for (line, v) in c.describe().lines().zip(VARIABLES) {
            let given = ["RABBITMQ_USER", "RABBITMQ_PASSWORD"].contains(&v.name);
            if !given {
                assert_eq!(line, format!("{}={}", v.name, v.default));
            }
        }
        assert_eq!(c.describe().lines().count(), VARIABLES.len());
    }

    #[test]
    fn secrets_are_never_shown() {
        let c = cfg(&[
            ("RABBITMQ_URI", "amqp://engine:pw-in-uri@h/v"),
            ("JWT_SECRET", "0123456789abcdef-secret"),
            ("DATABASE_URL", "postgres://u:db-password@h/db"),
        ])
        .unwrap();
        for shown in [c.describe(), format!("{c:?}")] {
            for secret in ["pw-in-uri", "0123456789abcdef-secret"] {
                assert!(!shown.contains(secret), "{secret} in {shown}");
            }
        }
        assert!(!format!("{c:?}").contains("db-password"));
        assert!(!c.describe().contains("db-password"));
        assert!(c.describe().contains("JWT_SECRET=<redacted>"));
        assert!(c.describe().contains("DATABASE_URL=postgres://u:<redacted>@h/db"));
        assert_eq!(without_password("sqlite://./a.db"), "sqlite://./a.db");
    }

    /// The table, `--help`, `.env.example` and the README say the same defaults.
    #[test]
    fn the_table_help_env_example_and_readme_agree() {
        let help = Config::help_text();
        let example = include_str!("../../.env.example");
        let example: HashMap<&str, &str> = example
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .collect();
        for v in VARIABLES {
            assert!(help.contains(v.name), "{} missing from --help", v.name);
            if !v.default.is_empty() {
                assert!(
                    help.contains(&format!("[default: {}]", v.default)),
                    "--help: default of {}",
                    v.name
                );
            }
            assert_eq!(example.get(v.name), Some(&v.default), ".env.example: {}", v.name);
        }
        assert_eq!(
            example.len(),
            VARIABLES.len(),
            ".env.example has variables the engine does not read"
        );
        let readme = include_str!("../../README.md");
        let table = Config::markdown_table();
        assert!(
            readme.contains(&table),
            "the README's configuration table is not the table of config/variables.rs; it should read:\n{table}"
        );
    }

    #[test]
    fn uri_wins_over_parts() {
        let c = cfg(&[("RABBITMQ_URI", "amqp://a:b@h:1/v"), ("RABBITMQ_USER", "u")]).unwrap();
        assert_eq!(c.amqp_uri(None), "amqp://a:b@h:1/v");
        let c = cfg(&[("RABBITMQ_URI", "amqp://a:b@n1:1/v, amqp://a:b@n2:1/v")]).unwrap();
        assert_eq!(c.amqp_uris(None), ["amqp://a:b@n1:1/v", "amqp://a:b@n2:1/v"]);
        assert!(cfg(&[("RABBITMQ_URI", "amqp://a:b@n1:1/v,http://n2")]).is_err());
        let c = cfg(&[
            ("RABBITMQ_HOST", "n1,n2"),
            ("RABBITMQ_USER", "u"),
            ("RABBITMQ_PASSWORD", "p"),
        ])
        .unwrap();
        assert_eq!(c.amqp_uris(None), ["amqp://u:p@n1:5672/%2F", "amqp://u:p@n2:5672/%2F"]);
    }

    #[test]
    fn bad_values_are_one_clear_line() {
        let e = cfg(&[("RABBITMQ_USER", "u"), ("RABBITMQ_PORT", "abc")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("RABBITMQ_PORT"), "{e}");
        assert!(!e.contains('\n'));
        let e = cfg(&[("RABBITMQ_USER", "u"), ("TOPIC_LAYOUT", "nope")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("TOPIC_LAYOUT") || e.contains("nope"), "{e}");
        assert!(cfg(&[]).is_err());
        assert!(cfg(&[("RABBITMQ_USER", "u"), ("PREFETCH_MESSAGES", "0")]).is_err());
        assert!(cfg(&[("RABBITMQ_USER", "u"), ("JWT_TTL", "soon")]).is_err());
        assert!(cfg(&[("JWT_SECRET", "short")]).is_err());
        assert!(cfg(&[("RABBITMQ_URI", "http://x")]).is_err());
        assert!(cfg(&[("RABBITMQ_USER", "u"), ("LOG_FORMAT", "xml")]).is_err());
    }

    #[test]
    fn service_token_when_only_secret() {
        let c = cfg(&[("JWT_SECRET", "0123456789abcdef0123")]).unwrap();
        assert_eq!(c.broker.auth, BrokerAuth::ServiceToken);
    }

    #[test]
    fn database_urls() {
        assert_eq!(Database::parse("off").unwrap(), None);
        assert_eq!(
            Database::parse("sqlite://./data/chat21.db").unwrap(),
            Some(Database::Sqlite {
                path: "./data/chat21.db".into()
            })
        );
        assert_eq!(
            Database::parse("sqlite:///var/lib/c.db?x=1").unwrap(),
            Some(Database::Sqlite {
                path: "/var/lib/c.db".into()
            })
        );
        assert!(matches!(
            Database::parse("postgres://u@h/db").unwrap(),
            Some(Database::Postgres { .. })
        ));
        assert!(Database::parse("mysql://x").is_err());
        assert!(Database::parse("sqlite://").is_err());
        let e = cfg(&[("RABBITMQ_USER", "u"), ("DATABASE_URL", "mysql://x")]).unwrap_err();
        assert!(e.to_string().contains("DATABASE_URL"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("3600"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("x"), None);
        assert_eq!(parse_duration(""), None);
    }
}
