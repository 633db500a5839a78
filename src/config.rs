//! One typed configuration, read from the environment and validated before anything starts.
//!
//! Every variable is listed once in [`VARIABLES`]: `--help`, `.env.example` (checked by a
//! test) and the README table are all derived from or checked against that list.

use serde::Deserialize;
use std::time::Duration;

/// A documented environment variable: name, default (empty = unset), meaning.
pub struct Variable {
    pub name: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

pub const VARIABLES: &[Variable] = &[
    Variable { name: "RABBITMQ_URI", default: "", help: "Full AMQP URI (amqp://user:pass@host:port/vhost); wins over the five RABBITMQ_* parts when set" },
    Variable { name: "RABBITMQ_HOST", default: "localhost", help: "Broker host" },
    Variable { name: "RABBITMQ_PORT", default: "5672", help: "Broker AMQP port" },
    Variable { name: "RABBITMQ_VHOST", default: "/", help: "Broker virtual host" },
    Variable { name: "RABBITMQ_USER", default: "", help: "Engine's broker user (internal password login); required unless RABBITMQ_URI or JWT_SECRET is set" },
    Variable { name: "RABBITMQ_PASSWORD", default: "", help: "Password of RABBITMQ_USER" },
    Variable { name: "JWT_SECRET", default: "", help: "HS256 secret shared with RabbitMQ's OAuth2 backend; signs user tokens. Without RABBITMQ_USER the engine logs in with a service token signed by it" },
    Variable { name: "JWT_KID", default: "tiledesk-key", help: "`kid` header of minted tokens (the broker's signing key id)" },
    Variable { name: "JWT_TTL", default: "30d", help: "Lifetime of minted user tokens (seconds, or with s/m/h/d suffix)" },
    Variable { name: "APP_ID", default: "tilechat", help: "Tenant (app) id: topics are apps.{APP_ID}.…" },
    Variable { name: "TOPIC_LAYOUT", default: "chat21", help: "chat21 (full protocol) or seed (PATH_PREFIX/{sender}/{recipient}/messages/outgoing only)" },
    Variable { name: "PATH_PREFIX", default: "/apps/tilechat/users", help: "MQTT topic prefix of the seed layout (a leading / is a leading empty word)" },
    Variable { name: "QUEUE_NAME", default: "chat21.engine", help: "Durable queue the engine consumes (shared by all engine replicas)" },
    Variable { name: "PREFETCH_MESSAGES", default: "1024", help: "Unacked inputs in flight (bounds memory and the publish-confirm window)" },
    Variable { name: "DATABASE_URL", default: "sqlite://./data/chat21.db", help: "Store: sqlite://PATH (embedded, created on first run), postgres://USER:PASS@HOST/DB, or off" },
    Variable { name: "TRUSTED_SENDERS", default: "system", help: "Comma-separated user ids that may write to stored groups they are not members of (and, later, skip rate limits)" },
    Variable { name: "MAX_INLINE_GROUP_MEMBERS", default: "100", help: "Most members of an inline (volatile) group in a message's `group.members`; more is rejected too_many_members" },
    Variable { name: "GROUP_CACHE_SIZE", default: "1000000", help: "Group cache bound, in member slots (a group weighs 1 + its member count)" },
    Variable { name: "BLOCK_CACHE_SIZE", default: "1000000", help: "Block-list cache bound, in entries (a user weighs 1 + the number of users they blocked)" },
    Variable { name: "CACHE_TTL", default: "5m", help: "How long a cached group or block list (or its absence) is trusted; bounds staleness across engine replicas" },
    Variable { name: "RATE_LIMIT_PER_MIN", default: "600", help: "Messages a sender may send per minute (token bucket; 0 = no rate limit); TRUSTED_SENDERS are exempt" },
    Variable { name: "RATE_LIMIT_BURST", default: "", help: "Bucket size: messages a sender may send at once (default: RATE_LIMIT_PER_MIN)" },
    Variable { name: "POLICY_FILE", default: "", help: "Content rules (.toml or .json): max text size, deny patterns (reject or mask), per-app overrides; reloaded on SIGHUP. See deploy/policy.example.toml" },
    Variable { name: "PRESENCE_ENABLED", default: "false", help: "Consume presence (I5): count each user's connected clients, record online/offline and last seen (needs a store)" },
    Variable { name: "PUBLISH_WINDOW", default: "4096", help: "Most publishes awaiting a broker confirm at once (older inputs settle first)" },
    Variable { name: "HTTP_PORT", default: "8004", help: "Port of /healthz, /readyz, /metrics (0 = disabled)" },
    Variable { name: "HTTP_HOST", default: "0.0.0.0", help: "Address the HTTP server binds" },
    Variable { name: "LOG_LEVEL", default: "info", help: "error, warn, info, debug, trace, or a tracing filter (e.g. info,lapin=warn)" },
    Variable { name: "LOG_FORMAT", default: "pretty", help: "pretty (human) or json (one object a line)" },
];

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

/// Raw environment, as envy reads it. Converted into [`Config`] by [`Config::from_env`].
#[derive(Debug, Deserialize)]
struct Raw {
    rabbitmq_uri: Option<String>,
    #[serde(default = "d_host")]
    rabbitmq_host: String,
    #[serde(default = "d_port")]
    rabbitmq_port: u16,
    #[serde(default = "d_vhost")]
    rabbitmq_vhost: String,
    rabbitmq_user: Option<String>,
    rabbitmq_password: Option<String>,
    jwt_secret: Option<String>,
    #[serde(default = "d_kid")]
    jwt_kid: String,
    #[serde(default = "d_ttl")]
    jwt_ttl: String,
    #[serde(default = "d_app")]
    app_id: String,
    #[serde(default = "d_layout")]
    topic_layout: String,
    #[serde(default = "d_prefix")]
    path_prefix: String,
    #[serde(default = "d_queue")]
    queue_name: String,
    #[serde(default = "d_prefetch")]
    prefetch_messages: u16,
    #[serde(default = "d_database")]
    database_url: String,
    #[serde(default = "d_window")]
    publish_window: u32,
    #[serde(default = "d_trusted")]
    trusted_senders: String,
    #[serde(default = "d_inline_members")]
    max_inline_group_members: usize,
    #[serde(default = "d_cache_size")]
    group_cache_size: u64,
    #[serde(default = "d_cache_size")]
    block_cache_size: u64,
    #[serde(default = "d_cache_ttl")]
    cache_ttl: String,
    #[serde(default = "d_rate_limit")]
    rate_limit_per_min: u32,
    rate_limit_burst: Option<u32>,
    policy_file: Option<String>,
    #[serde(default)]
    presence_enabled: bool,
    #[serde(default = "d_http_port")]
    http_port: u16,
    #[serde(default = "d_http_host")]
    http_host: String,
    #[serde(default = "d_log_level")]
    log_level: String,
    #[serde(default = "d_log_format")]
    log_format: String,
}

fn d_host() -> String {
    "localhost".into()
}
fn d_port() -> u16 {
    5672
}
fn d_vhost() -> String {
    "/".into()
}
fn d_kid() -> String {
    "tiledesk-key".into()
}
fn d_ttl() -> String {
    "30d".into()
}
fn d_app() -> String {
    "tilechat".into()
}
fn d_layout() -> String {
    "chat21".into()
}
fn d_prefix() -> String {
    "/apps/tilechat/users".into()
}
fn d_queue() -> String {
    "chat21.engine".into()
}
fn d_prefetch() -> u16 {
    1024
}
fn d_database() -> String {
    "sqlite://./data/chat21.db".into()
}
fn d_window() -> u32 {
    4096
}
fn d_trusted() -> String {
    "system".into()
}
fn d_inline_members() -> usize {
    100
}
fn d_cache_size() -> u64 {
    1_000_000
}
fn d_cache_ttl() -> String {
    "5m".into()
}
fn d_rate_limit() -> u32 {
    600
}
fn d_http_port() -> u16 {
    8004
}
fn d_http_host() -> String {
    "0.0.0.0".into()
}
fn d_log_level() -> String {
    "info".into()
}
fn d_log_format() -> String {
    "pretty".into()
}

/// How the engine logs in to the broker.
#[derive(Clone, PartialEq, Eq)]
pub enum BrokerAuth {
    /// A complete URI (credentials inside, or none).
    Uri(String),
    /// Internal user and password, with host/port/vhost.
    Password { user: String, password: String },
    /// No password: a short-lived service JWT signed with `JWT_SECRET`, refreshed before expiry.
    ServiceToken,
}

impl std::fmt::Debug for BrokerAuth {
    // Never print credentials, even at debug level.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BrokerAuth::Uri(_) => f.write_str("Uri(<redacted>)"),
            BrokerAuth::Password { user, .. } => write!(f, "Password {{ user: {user:?} }}"),
            BrokerAuth::ServiceToken => f.write_str("ServiceToken"),
        }
    }
}

#[derive(Clone)]
pub struct Config {
    pub broker_auth: BrokerAuth,
    pub rabbitmq_host: String,
    pub rabbitmq_port: u16,
    pub rabbitmq_vhost: String,
    pub jwt_secret: Option<String>,
    pub jwt_kid: String,
    pub jwt_ttl: Duration,
    pub app_id: String,
    pub topic_layout: TopicLayout,
    pub path_prefix: String,
    pub queue_name: String,
    pub prefetch: u16,
    pub publish_window: usize,
    pub trusted_senders: std::collections::HashSet<String>,
    pub max_inline_group_members: usize,
    pub group_cache_size: u64,
    pub block_cache_size: u64,
    /// TTL of the group and block-list caches.
    pub cache_ttl: Duration,
    /// (per minute, burst); None = no rate limit.
    pub rate_limit: Option<(std::num::NonZeroU32, std::num::NonZeroU32)>,
    pub policy_file: Option<std::path::PathBuf>,
    /// The policy file, loaded and validated.
    pub policy: Option<std::sync::Arc<crate::policy::Policy>>,
    pub presence_enabled: bool,
    /// None = persistence off.
    pub store: Option<crate::store::Backend>,
    pub http_port: u16,
    pub http_host: String,
    pub log_level: String,
    pub log_format: LogFormat,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("broker_auth", &self.broker_auth)
            .field("rabbitmq_host", &self.rabbitmq_host)
            .field("rabbitmq_port", &self.rabbitmq_port)
            .field("rabbitmq_vhost", &self.rabbitmq_vhost)
            .field("jwt_secret", &self.jwt_secret.as_ref().map(|_| "<redacted>"))
            .field("jwt_kid", &self.jwt_kid)
            .field("app_id", &self.app_id)
            .field("topic_layout", &self.topic_layout)
            .field("queue_name", &self.queue_name)
            .field("prefetch", &self.prefetch)
            .field("http_port", &self.http_port)
            .finish_non_exhaustive()
    }
}

/// A configuration error: printed as one line at start-up, exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

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
        let vars = vars.into_iter().filter(|(_, v)| !v.trim().is_empty());
        let raw: Raw = envy::from_iter(vars).map_err(|e| bad(describe_envy(e)))?;
        Self::validate(raw)
    }

    fn validate(raw: Raw) -> Result<Self, ConfigError> {
        let broker_auth = match (&raw.rabbitmq_uri, &raw.rabbitmq_user, &raw.jwt_secret) {
            (Some(uri), _, _) => {
                if !(uri.starts_with("amqp://") || uri.starts_with("amqps://")) {
                    return Err(bad("RABBITMQ_URI must start with amqp:// or amqps://"));
                }
                BrokerAuth::Uri(uri.clone())
            }
            (None, Some(user), _) => BrokerAuth::Password {
                user: user.clone(),
                password: raw.rabbitmq_password.clone().unwrap_or_default(),
            },
            (None, None, Some(_)) => BrokerAuth::ServiceToken,
            (None, None, None) => {
                return Err(bad(
                    "set RABBITMQ_URI, or RABBITMQ_USER and RABBITMQ_PASSWORD, or JWT_SECRET (service token)",
                ))
            }
        };
        let topic_layout = match raw.topic_layout.as_str() {
            "chat21" => TopicLayout::Chat21,
            "seed" => TopicLayout::Seed,
            other => return Err(bad(format!("TOPIC_LAYOUT {other:?} must be chat21 or seed"))),
        };
        let log_format = match raw.log_format.as_str() {
            "pretty" => LogFormat::Pretty,
            "json" => LogFormat::Json,
            other => return Err(bad(format!("LOG_FORMAT {other:?} must be pretty or json"))),
        };
        if raw.rabbitmq_port == 0 {
            return Err(bad("RABBITMQ_PORT must be 1..65535"));
        }
        if !crate::message::is_valid_id(&raw.app_id) {
            return Err(bad(format!(
                "APP_ID {:?} is not a valid id (1..128 bytes, none of . / * # + or whitespace)",
                raw.app_id
            )));
        }
        if raw.jwt_kid.is_empty()
            || !raw
                .jwt_kid
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return Err(bad("JWT_KID may only contain A-Z a-z 0-9 . _ -"));
        }
        if let Some(secret) = &raw.jwt_secret {
            if secret.len() < 16 {
                return Err(bad("JWT_SECRET must be at least 16 bytes"));
            }
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
        let store = crate::store::Backend::parse(&raw.database_url).map_err(|e| bad(e.to_string()))?;
        if raw.publish_window == 0 {
            return Err(bad("PUBLISH_WINDOW must be at least 1"));
        }
        if raw.queue_name.is_empty() || raw.queue_name.len() > 255 || raw.queue_name.starts_with("amq.") {
            return Err(bad("QUEUE_NAME must be 1..255 bytes and not start with amq."));
        }
        let trusted_senders: std::collections::HashSet<String> = raw
            .trusted_senders
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if let Some(bad_id) = trusted_senders.iter().find(|s| !crate::message::is_valid_id(s)) {
            return Err(bad(format!("TRUSTED_SENDERS: {bad_id:?} is not a valid user id")));
        }
        if raw.max_inline_group_members == 0 {
            return Err(bad("MAX_INLINE_GROUP_MEMBERS must be at least 1"));
        }
        if raw.group_cache_size == 0 || raw.block_cache_size == 0 {
            return Err(bad("GROUP_CACHE_SIZE and BLOCK_CACHE_SIZE must be at least 1"));
        }
        let cache_ttl = parse_duration(&raw.cache_ttl).filter(|d| !d.is_zero()).ok_or_else(|| {
            bad(format!(
                "CACHE_TTL {:?} is not a positive duration (e.g. 300, 5m)",
                raw.cache_ttl
            ))
        })?;
        let rate_limit = match std::num::NonZeroU32::new(raw.rate_limit_per_min) {
            None => None,
            Some(per_min) => {
                let burst = raw.rate_limit_burst.unwrap_or(per_min.get());
                let burst =
                    std::num::NonZeroU32::new(burst).ok_or_else(|| bad("RATE_LIMIT_BURST must be at least 1"))?;
                Some((per_min, burst))
            }
        };
        let policy_file = raw.policy_file.map(std::path::PathBuf::from);
        let policy = match &policy_file {
            Some(path) => Some(std::sync::Arc::new(
                crate::policy::Policy::load(path).map_err(|e| bad(e.to_string()))?,
            )),
            None => None,
        };
        if raw.presence_enabled && store.is_none() {
            return Err(bad(
                "PRESENCE_ENABLED=true needs a store (DATABASE_URL is off): presence state lives there",
            ));
        }
        if topic_layout == TopicLayout::Seed {
            crate::topic::Seed::new(&raw.path_prefix).map_err(|e| bad(format!("PATH_PREFIX: {e}")))?;
        }
        tracing_subscriber::EnvFilter::try_new(&raw.log_level)
            .map_err(|e| bad(format!("LOG_LEVEL {:?}: {e}", raw.log_level)))?;
        Ok(Config {
            broker_auth,
            rabbitmq_host: raw.rabbitmq_host,
            rabbitmq_port: raw.rabbitmq_port,
            rabbitmq_vhost: raw.rabbitmq_vhost,
            jwt_secret: raw.jwt_secret,
            jwt_kid: raw.jwt_kid,
            jwt_ttl,
            app_id: raw.app_id,
            topic_layout,
            path_prefix: raw.path_prefix,
            queue_name: raw.queue_name,
            prefetch: raw.prefetch_messages,
            publish_window: raw.publish_window as usize,
            trusted_senders,
            max_inline_group_members: raw.max_inline_group_members,
            group_cache_size: raw.group_cache_size,
            block_cache_size: raw.block_cache_size,
            cache_ttl,
            rate_limit,
            policy_file,
            policy,
            presence_enabled: raw.presence_enabled,
            store,
            http_port: raw.http_port,
            http_host: raw.http_host,
            log_level: raw.log_level,
            log_format,
        })
    }

    /// The AMQP URI to connect with, given the password to use for a service token.
    pub fn amqp_uri(&self, service_token: Option<&str>) -> String {
        let vhost = percent_encode(&self.rabbitmq_vhost);
        let host = &self.rabbitmq_host;
        let port = self.rabbitmq_port;
        match &self.broker_auth {
            BrokerAuth::Uri(uri) => uri.clone(),
            BrokerAuth::Password { user, password } => format!(
                "amqp://{}:{}@{host}:{port}/{vhost}",
                percent_encode(user),
                percent_encode(password)
            ),
            BrokerAuth::ServiceToken => format!(
                "amqp://chat21-engine:{}@{host}:{port}/{vhost}",
                percent_encode(service_token.unwrap_or_default())
            ),
        }
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
            s.push_str(&format!("  {:<18} {}{}\n", v.name, v.help, d));
        }
        s
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
    fn defaults_match_the_documented_table() {
        let c = cfg(&[("RABBITMQ_USER", "u"), ("RABBITMQ_PASSWORD", "p")]).unwrap();
        assert_eq!(c.rabbitmq_host, "localhost");
        assert_eq!(c.rabbitmq_port, 5672);
        assert_eq!(c.app_id, "tilechat");
        assert_eq!(c.path_prefix, "/apps/tilechat/users");
        assert_eq!(c.jwt_kid, "tiledesk-key");
        assert_eq!(c.jwt_ttl, Duration::from_secs(30 * 86_400));
        assert_eq!(c.queue_name, "chat21.engine");
        assert_eq!(c.log_level, "info");
        assert_eq!(c.amqp_uri(None), "amqp://u:p@localhost:5672/%2F");
        for v in VARIABLES {
            if v.name == "PREFETCH_MESSAGES" {
                assert_eq!(v.default, c.prefetch.to_string());
            }
            if v.name == "HTTP_PORT" {
                assert_eq!(v.default, c.http_port.to_string());
            }
        }
    }

    #[test]
    fn uri_wins_over_parts() {
        let c = cfg(&[("RABBITMQ_URI", "amqp://a:b@h:1/v"), ("RABBITMQ_USER", "u")]).unwrap();
        assert_eq!(c.amqp_uri(None), "amqp://a:b@h:1/v");
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
        assert!(cfg(&[("RABBITMQ_USER", "u"), ("APP_ID", "a.b")]).is_err());
        assert!(cfg(&[("RABBITMQ_USER", "u"), ("PREFETCH_MESSAGES", "0")]).is_err());
        assert!(cfg(&[("RABBITMQ_USER", "u"), ("JWT_TTL", "soon")]).is_err());
        assert!(cfg(&[("JWT_SECRET", "short")]).is_err());
        assert!(cfg(&[("RABBITMQ_URI", "http://x")]).is_err());
        assert!(cfg(&[("RABBITMQ_USER", "u"), ("LOG_FORMAT", "xml")]).is_err());
    }

    #[test]
    fn service_token_when_only_secret() {
        let c = cfg(&[("JWT_SECRET", "0123456789abcdef0123")]).unwrap();
        assert_eq!(c.broker_auth, BrokerAuth::ServiceToken);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("3600"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("x"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn env_example_documents_every_variable() {
        let example = include_str!("../.env.example");
        for v in VARIABLES {
            assert!(
                example.contains(&format!("{}=", v.name)),
                "{} missing from .env.example",
                v.name
            );
        }
    }
}
