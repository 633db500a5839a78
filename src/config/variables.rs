//! Every environment variable the engine reads, once: its name, default, meaning, and
//! whether its value is a secret. This table *is* the defaults (they are read from it), and
//! `--help`, `.env.example` and the README's configuration table are made from it or checked
//! against it (tests in `mod.rs`).

/// A documented environment variable.
#[derive(Debug)]
pub struct Variable {
    pub name: &'static str,
    /// Empty: unset (no default).
    pub default: &'static str,
    pub help: &'static str,
    pub shown: Shown,
}

/// How `check-config` and `Debug` may show a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    Plainly,
    /// Never: `<redacted>`.
    Never,
    /// A URL whose password is replaced by `<redacted>` (`postgres://user:<redacted>@host/db`).
    WithoutPassword,
}

const fn var(name: &'static str, default: &'static str, help: &'static str) -> Variable {
    Variable {
        name,
        default,
        help,
        shown: Shown::Plainly,
    }
}

const fn secret(name: &'static str, help: &'static str) -> Variable {
    Variable {
        name,
        default: "",
        help,
        shown: Shown::Never,
    }
}

const fn url(name: &'static str, default: &'static str, help: &'static str) -> Variable {
    Variable {
        name,
        default,
        help,
        shown: Shown::WithoutPassword,
    }
}

pub const VARIABLES: &[Variable] = &[
    // Broker connection.
    secret("RABBITMQ_URI", "Full AMQP URI (amqp://user:pass@host:port/vhost), or one per node of a cluster, comma-separated (tried in turn at each reconnect); wins over the five RABBITMQ_* parts when set"),
    var("RABBITMQ_HOST", "localhost", "Broker host, or the nodes of a cluster comma-separated (tried in turn at each reconnect)"),
    var("RABBITMQ_PORT", "5672", "Broker AMQP port"),
    var("RABBITMQ_VHOST", "/", "Broker virtual host"),
    var("RABBITMQ_USER", "", "Engine's broker user (internal password login); required unless RABBITMQ_URI or JWT_SECRET is set"),
    secret("RABBITMQ_PASSWORD", "Password of RABBITMQ_USER"),
    // Tokens.
    secret("JWT_SECRET", "HS256 secret shared with RabbitMQ's OAuth2 backend; signs user tokens. Without RABBITMQ_URI or RABBITMQ_USER the engine logs in with a 1-hour service token signed by it, refreshed before it expires"),
    var("JWT_KID", "tiledesk-key", "`kid` header of minted tokens (the broker's signing key id)"),
    var("JWT_TTL", "30d", "Lifetime of minted user tokens (seconds, or with s/m/h/d suffix)"),
    // Topics.
    var("APP_ID", "tilechat", "Tenant (app) id: topics are apps.{APP_ID}.…"),
    var("TOPIC_LAYOUT", "chat21", "chat21 (full protocol) or seed (PATH_PREFIX/{sender}/{recipient}/messages/outgoing only)"),
    var("PATH_PREFIX", "/apps/tilechat/users", "MQTT topic prefix of the seed layout: levels of letters, digits, - and _; a leading / is a leading empty word"),
    // Consumption.
    var("QUEUE_NAME", "chat21.engine", "Name the engine's queues and exchange start with (shared by all engine replicas)"),
    var("PARTITIONS", "1", "Input partitions: quorum queues QUEUE_NAME.p00… fed by a consistent-hash exchange, each consumed by one engine at a time (1..=100). One keeps every input in order; more keep only each routing key's own order (README, partitions). Change only with the queues drained"),
    var("DELIVERY_LIMIT", "20", "Deliveries of one input before the broker moves it to QUEUE_NAME.dead-letter (crashes and requeues count; 1..=1000; fixed when the queues are made)"),
    var("PREFETCH_MESSAGES", "1024", "Unacked inputs in flight, shared out over the partitions (bounds memory and the publish-confirm window)"),
    var("PUBLISH_WINDOW", "4096", "Most publishes awaiting a broker confirm at once (older inputs settle first)"),
    var("MAX_IN_FLIGHT_BYTES", "67108864", "Most bytes of publishes awaiting a broker confirm at once (older inputs settle first); bounds memory whatever the message sizes"),
    var("MAX_MESSAGE_BYTES", "65536", "Largest input body; a larger one is rejected too_large (a sender is told, without the body)"),
    var("MAX_FANOUT_BYTES", "33554432", "Most bytes one message may fan out to (body size × copies, e.g. a group's members); more is rejected too_large. At least 2 × MAX_MESSAGE_BYTES"),
    // Store.
    url("DATABASE_URL", "sqlite://./data/chat21.db", "Store: sqlite://PATH (embedded, created on first run), postgres://USER:PASS@HOST/DB, or off"),
    // Groups and policies.
    var("TRUSTED_SENDERS", "system", "Comma-separated user ids that may write to stored groups they are not members of, and skip the rate limit"),
    var("MAX_INLINE_GROUP_MEMBERS", "100", "Most members of an inline (volatile) group in a message's `group.members` (more is rejected too_many_members), and of a group a user (not an admin) creates or sets over the HTTP API"),
    var("GROUP_CACHE_SIZE", "1000000", "Group cache bound, in member slots (a group weighs 1 + its member count)"),
    var("BLOCK_CACHE_SIZE", "1000000", "Block-list cache bound, in entries (a user weighs 1 + the number of users they blocked)"),
    var("CACHE_TTL", "5m", "How long a cached group or block list (or its absence) is trusted; bounds staleness across engine replicas"),
    var("RATE_LIMIT_PER_MIN", "600", "Messages a sender may send per minute (token bucket; 0 = no rate limit); TRUSTED_SENDERS are exempt"),
    var("RATE_LIMIT_BURST", "", "Bucket size: messages a sender may send at once (unset: RATE_LIMIT_PER_MIN)"),
    var("RATE_LIMIT_COMMANDS_PER_MIN", "1200", "Commands of each kind (receipts, conversation updates, archives, presence, typing, blocks) a user may send per minute, each kind its own bucket (0 = no limit); TRUSTED_SENDERS are exempt"),
    var("POLICY_FILE", "", "Content rules (.toml or .json): max text size, deny patterns (reject or mask), per-app overrides; reloaded on SIGHUP. See deploy/policy.example.toml"),
    var("PRESENCE_ENABLED", "false", "Consume presence (I5): count each user's connected clients, record online/offline and last seen (needs a store)"),
    // Webhooks (PROTOCOL §13; README, Webhooks).
    var("WEBHOOK_ENABLED", "false", "POST events (message-sent, message-delivered, …) to WEBHOOK_ENDPOINTS: queued durably in the broker before an input is acked, retried, signed"),
    url("WEBHOOK_ENDPOINTS", "", "Comma-separated http:// or https:// URLs; each gets every event, through a queue of its own (QUEUE_NAME.webhooks.<id>)"),
    var("WEBHOOK_EVENTS", "", "Comma-separated event types to send (unset: all): message-sent, message-delivered, message-return-receipt, conversation-archived, conversation-unarchived, presence-change, message-rejected"),
    secret("WEBHOOK_SECRET", "Signs every POST: X-Chat21-Signature (hex HMAC-SHA256 of the body) and the Standard Webhooks headers; a whsec_ prefix means the rest is the base64 key. At least 16 bytes"),
    var("WEBHOOK_TIMEOUT", "10s", "Time an endpoint has to answer one POST with a 2xx"),
    var("WEBHOOK_RETRY_FOR", "24h", "How long a failing event is retried (from when it was made) before it is kept as failed (QUEUE_NAME.webhooks.<id>.failed; `chat21-engine webhooks failed`)"),
    var("WEBHOOK_RETRY_MAX_DELAY", "5m", "Longest wait between two tries of one event (they start at 1 s and double, jittered)"),
    var("WEBHOOK_CONCURRENCY", "16", "POSTs in flight per endpoint (events of one conversation always go one at a time, in order)"),
    var("WEBHOOK_HOLD_LIMIT", "10m", "Longest an endpoint's consumer holds a batch of events it cannot deliver before requeueing the rest at the queue's tail (below the broker's consumer_timeout)"),
    // HTTP and logs.
    var("HTTP_PORT", "8004", "Port of the HTTP API (/api/…) and, unless OPS_HTTP_PORT is set, of /healthz, /readyz, /metrics (0 = no HTTP server)"),
    var("HTTP_HOST", "0.0.0.0", "Address the HTTP server binds"),
    var("HTTP_MAX_BODY_BYTES", "262144", "Largest HTTP API request body; a larger one is refused 413"),
    var("OPS_HTTP_PORT", "0", "Serve /healthz, /readyz, /metrics on this port instead of HTTP_PORT (0 = on HTTP_PORT), e.g. to keep them on an internal address"),
    var("OPS_HTTP_HOST", "127.0.0.1", "Address the ops server binds when OPS_HTTP_PORT is set"),
    var("LOG_LEVEL", "info", "error, warn, info, debug, trace, or a tracing filter (e.g. info,lapin=warn)"),
    var("LOG_FORMAT", "pretty", "pretty (human) or json (one object a line)"),
];

pub fn variable(name: &str) -> Option<&'static Variable> {
    VARIABLES.iter().find(|v| v.name == name)
}
