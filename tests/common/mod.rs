//! Test harness: one private RabbitMQ node per test binary (configured like production by
//! scripts/rabbitmq-private.sh), the real engine binary as a child process, real MQTT
//! clients (TCP and Web-MQTT) logging in with minted JWTs. Each test gets its own app id and
//! queue, so tests share the node without seeing each other's traffic.
#![allow(dead_code)]

use chat21_engine::jwt::Minter;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS, Transport};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub const ENGINE: &str = env!("CARGO_BIN_EXE_chat21-engine");

/// A private RabbitMQ node.
pub struct Broker {
    pub dir: PathBuf,
    pub amqp_uri: String,
    pub amqp_port: u16,
    pub mqtt_port: u16,
    pub ws_url: String,
    pub jwt_secret: String,
    pub jwt_kid: String,
    _tmp: tempfile::TempDir,
}

static BROKER: OnceLock<Broker> = OnceLock::new();

/// The node shared by every test of this binary (started on first use, stopped when the
/// test process exits by the script's reaper).
pub fn broker() -> &'static Broker {
    BROKER.get_or_init(Broker::start)
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/rabbitmq-private.sh")
}

impl Broker {
    pub fn start() -> Broker {
        let tmp = tempfile::Builder::new()
            .prefix("chat21-rmq-")
            .tempdir()
            .expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(&dir)
            .env("WATCH_PID", std::process::id().to_string())
            .env("JWT_SECRET", format!("test-secret-{}", uuid::Uuid::new_v4().simple()))
            .stderr(Stdio::inherit())
            .output()
            .expect("run rabbitmq-private.sh");
        assert!(out.status.success(), "private RabbitMQ failed to start");
        let vars: HashMap<String, String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect();
        let get = |k: &str| {
            vars.get(k)
                .unwrap_or_else(|| panic!("{k} missing from script output"))
                .clone()
        };
        Broker {
            dir,
            amqp_uri: get("AMQP_URI"),
            amqp_port: get("AMQP_PORT").parse().unwrap(),
            mqtt_port: get("MQTT_PORT").parse().unwrap(),
            ws_url: get("WS_URL"),
            jwt_secret: get("JWT_SECRET"),
            jwt_kid: get("JWT_KID"),
            _tmp: tmp,
        }
    }

    /// Stop the node, keeping its ports and data (durable queues survive).
    pub fn halt(&self) {
        self.script("halt");
    }

    /// Start a halted node again.
    pub fn resume(&self) {
        self.script("resume");
    }

    fn script(&self, cmd: &str) {
        let st = Command::new("bash")
            .arg(script())
            .arg(cmd)
            .arg(&self.dir)
            .status()
            .unwrap();
        assert!(st.success(), "rabbitmq-private.sh {cmd} failed");
    }

    pub fn minter(&self) -> Minter {
        Minter::new(&self.jwt_secret, &self.jwt_kid)
    }

    pub fn token(&self, app: &str, user: &str) -> String {
        self.minter().user_token(app, user, Duration::from_secs(3600)).unwrap()
    }
}

/// A fresh PostgreSQL schema in the machine's database `test`; returns a DATABASE_URL whose
/// connections use it (tests never see each other's tables).
pub async fn fresh_pg_schema() -> String {
    let base = std::env::var("TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = fresh("t");
    let pool = sqlx::PgPool::connect(&base)
        .await
        .expect("the machine's PostgreSQL (database test)");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    format!("{base}?options[search_path]={schema}")
}

/// Which store an engine under test uses.
#[derive(Clone, Copy, Debug)]
pub enum Db {
    /// A SQLite file in the broker's temp dir.
    Sqlite,
    /// A fresh schema in the machine's PostgreSQL.
    Postgres,
}

/// An engine on `db`, with extra environment.
pub async fn engine_with(b: &Broker, db: Db, extra: &[(&str, &str)]) -> EngineProc {
    let url = match db {
        Db::Sqlite => None,
        Db::Postgres => Some(fresh_pg_schema().await),
    };
    let mut env: Vec<(&str, &str)> = extra.to_vec();
    if let Some(url) = &url {
        env.push(("DATABASE_URL", url.as_str()));
    }
    EngineProc::start(b, &env).await
}

/// Poll until `f` is satisfied (writes commit before the ack, but the test reads through
/// its own connection, possibly a moment before the copy reaches the test's inbox).
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Open the engine's store from the test (SQLite in WAL mode allows a second reader).
pub async fn open_store(url: &str) -> chat21_engine::store::Store {
    let backend = chat21_engine::config::Database::parse(url).unwrap().expect("a store");
    chat21_engine::store::Store::open(&backend).await.unwrap()
}

/// A fresh id for apps and users: tests never share ids.
pub fn fresh(prefix: &str) -> String {
    format!("{prefix}{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The engine binary running as a child process against a broker.
pub struct EngineProc {
    pub child: Child,
    pub database_url: String,
    pub http_port: u16,
    pub app: String,
    pub queue: String,
    pub log: PathBuf,
    env: Vec<(String, String)>,
}

impl EngineProc {
    /// Start an engine with its own app id and queue; waits until /readyz says ready.
    pub async fn start(broker: &Broker, extra: &[(&str, &str)]) -> EngineProc {
        let app = fresh("app");
        let queue = format!("chat21.engine.{app}");
        let mut env: Vec<(String, String)> = vec![
            ("RABBITMQ_URI".into(), broker.amqp_uri.clone()),
            ("JWT_SECRET".into(), broker.jwt_secret.clone()),
            ("JWT_KID".into(), broker.jwt_kid.clone()),
            ("APP_ID".into(), app.clone()),
            ("QUEUE_NAME".into(), queue.clone()),
            ("LOG_LEVEL".into(), "info".into()),
            ("HTTP_PORT".into(), free_port().to_string()),
            ("HTTP_HOST".into(), "127.0.0.1".into()),
            // Tests stream thousands of messages from one sender; the rate-limit tests set
            // their own limits.
            ("RATE_LIMIT_PER_MIN".into(), "0".into()),
            // Each engine its own SQLite file: never ./data of the working tree.
            (
                "DATABASE_URL".into(),
                format!("sqlite://{}/{}.db", broker.dir.display(), fresh("store")),
            ),
        ];
        for (k, v) in extra {
            env.retain(|(ek, _)| ek != k);
            env.push((k.to_string(), v.to_string()));
        }
        let app = env.iter().find(|(k, _)| k == "APP_ID").unwrap().1.clone();
        let queue = env.iter().find(|(k, _)| k == "QUEUE_NAME").unwrap().1.clone();
        let log = broker.dir.join(format!("engine-{}.log", fresh("")));
        let http_port = env.iter().find(|(k, _)| k == "HTTP_PORT").unwrap().1.parse().unwrap();
        let database_url = env.iter().find(|(k, _)| k == "DATABASE_URL").unwrap().1.clone();
        let e = EngineProc {
            child: spawn(&env, &log),
            database_url,
            http_port,
            app,
            queue,
            log,
            env,
        };
        e.wait_ready().await;
        e
    }

    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = http_get(self.http_port, "/readyz").await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "engine not ready in 30 s; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        http_get(self.http_port, "/metrics").await.expect("metrics").1
    }

    /// Value of one metric line (exact series text before the value).
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0.0)
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn sigterm(&self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
    }

    /// Start the same engine again (same app, queue, port) after it was killed.
    pub async fn restart(&mut self) {
        self.child = spawn(&self.env, &self.log);
        self.wait_ready().await;
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn topics(&self) -> chat21_engine::topic::Topics {
        chat21_engine::topic::Topics::chat21(&self.app)
    }
}

fn spawn(env: &[(String, String)], log: &Path) -> Child {
    let mut cmd = Command::new(ENGINE);
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let f = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    cmd.stdout(Stdio::from(f.try_clone().unwrap()))
        .stderr(Stdio::from(f))
        .stdin(Stdio::null());
    cmd.spawn().expect("spawn engine")
}

impl Drop for EngineProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Minimal HTTP/1.0 GET on 127.0.0.1 (status, body).
pub async fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// What an MQTT client saw.
#[derive(Debug, Clone)]
pub enum Ev {
    ConnAck,
    SubAck,
    PubAck(u16),
    /// pkid given to an outgoing QoS 1 publish, in the order publishes were sent.
    Sent(u16),
    Msg {
        topic: String,
        body: Value,
    },
    Error(String),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Via {
    Tcp,
    Ws,
}

/// A Chat21-like MQTT client: username `JWT`, password = the user's token, clean session,
/// random client id.
pub struct Mqtt {
    pub client: AsyncClient,
    pub rx: mpsc::UnboundedReceiver<Ev>,
    /// Messages that arrived while waiting for a SUBACK or PUBACK (an engine copy can beat
    /// the PUBACK of the publish that caused it); `messages` returns them first.
    stash: std::collections::VecDeque<(String, Value)>,
    pub user: String,
    pub app: String,
    pub client_id: String,
    task: tokio::task::JoinHandle<()>,
}

impl Mqtt {
    pub async fn connect(broker: &Broker, app: &str, user: &str, via: Via) -> Mqtt {
        Self::connect_with_token(broker, app, user, &broker.token(app, user), via, false).await
    }

    /// `reconnect`: keep polling after errors (rumqttc reconnects), for broker-restart tests.
    pub async fn connect_with_token(
        broker: &Broker,
        app: &str,
        user: &str,
        token: &str,
        via: Via,
        reconnect: bool,
    ) -> Mqtt {
        match Self::try_connect(broker, app, user, token, via, reconnect).await {
            Ok(m) => m,
            Err(e) => panic!("no CONNACK for {user}: {e}"),
        }
    }

    /// Ok once the broker sent CONNACK; Err with what happened instead.
    pub async fn try_connect(
        broker: &Broker,
        app: &str,
        user: &str,
        token: &str,
        via: Via,
        reconnect: bool,
    ) -> Result<Mqtt, String> {
        Self::try_connect_as(broker, app, user, token, via, reconnect, false).await
    }

    /// Like a Chat21 client with presence: a last will `{"disconnected":true}` on
    /// `apps/{app}/users/{user}/presence/{client_id}`, then `{"connected":true}` there.
    /// Dropping the client without DISCONNECT makes the broker publish the will.
    pub async fn connect_with_presence(broker: &Broker, app: &str, user: &str) -> Mqtt {
        let token = broker.token(app, user);
        let m = Self::try_connect_as(broker, app, user, &token, Via::Tcp, false, true)
            .await
            .expect("CONNACK");
        let topic = format!("apps.{app}.users.{user}.presence.{}", m.client_id);
        m.publish(&topic, br#"{"connected":true}"#).await;
        m
    }

    async fn try_connect_as(
        broker: &Broker,
        app: &str,
        user: &str,
        token: &str,
        via: Via,
        reconnect: bool,
        presence_will: bool,
    ) -> Result<Mqtt, String> {
        let client_id = format!("c{}", uuid::Uuid::new_v4().simple());
        let will_topic = format!("apps/{app}/users/{user}/presence/{client_id}");
        let mut opts = match via {
            Via::Tcp => MqttOptions::new(client_id.clone(), "127.0.0.1", broker.mqtt_port),
            Via::Ws => {
                let mut o = MqttOptions::new(client_id.clone(), broker.ws_url.clone(), 0);
                o.set_transport(Transport::Ws);
                o
            }
        };
        opts.set_credentials("JWT", token);
        if presence_will {
            let will = rumqttc::LastWill::new(will_topic, r#"{"disconnected":true}"#, QoS::AtLeastOnce, false);
            opts.set_last_will(will);
        }
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_clean_session(true);
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(opts, 1000);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => drop(tx.send(Ev::ConnAck)),
                    Ok(Event::Incoming(Packet::SubAck(_))) => drop(tx.send(Ev::SubAck)),
                    Ok(Event::Incoming(Packet::PubAck(a))) => drop(tx.send(Ev::PubAck(a.pkid))),
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) if pkid != 0 => drop(tx.send(Ev::Sent(pkid))),
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let body = serde_json::from_slice(&p.payload)
                            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&p.payload).into()));
                        let _ = tx.send(Ev::Msg { topic: p.topic, body });
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if tx.send(Ev::Error(e.to_string())).is_err() || !reconnect {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        let mut m = Mqtt {
            client,
            rx,
            stash: Default::default(),
            user: user.to_string(),
            app: app.to_string(),
            client_id,
            task,
        };
        match m.next_event(Duration::from_secs(10)).await {
            Some(Ev::ConnAck) => Ok(m),
            other => Err(format!("{other:?}")),
        }
    }

    pub async fn next_event(&mut self, within: Duration) -> Option<Ev> {
        tokio::time::timeout(within, self.rx.recv()).await.ok().flatten()
    }

    /// Subscribe to the user's whole inbox, as Chat21 clients do, and wait for the SUBACK.
    pub async fn subscribe_inbox(&mut self) {
        let filter = format!("apps/{}/users/{}/#", self.app, self.user);
        self.subscribe(&filter).await.expect("inbox SUBACK");
    }

    /// Ok on SUBACK; Err with what happened instead.
    pub async fn subscribe(&mut self, filter: &str) -> Result<(), String> {
        self.client
            .subscribe(filter, QoS::AtMostOnce)
            .await
            .map_err(|e| e.to_string())?;
        loop {
            match self.next_event(Duration::from_secs(5)).await {
                Some(Ev::SubAck) => return Ok(()),
                Some(Ev::Error(e)) => return Err(e),
                None => return Err("no SUBACK".into()),
                Some(Ev::Msg { topic, body }) if is_engine_output(&topic) => self.stash.push_back((topic, body)),
                Some(_) => {}
            }
        }
    }

    /// Publish a JSON body on an AMQP-form key (converted to an MQTT topic) at QoS 1.
    pub async fn publish(&self, amqp_key: &str, body: &[u8]) {
        // A topic name, not a filter: only the level separator is converted.
        let topic = amqp_key.replace('.', "/");
        self.client
            .publish(topic, QoS::AtLeastOnce, false, body.to_vec())
            .await
            .unwrap();
    }

    /// Publish and wait for the PUBACK; Err if the broker refused (closed the connection).
    pub async fn publish_acked(&mut self, amqp_key: &str, body: &[u8]) -> Result<(), String> {
        self.publish(amqp_key, body).await;
        loop {
            match self.next_event(Duration::from_secs(5)).await {
                Some(Ev::PubAck(_)) => return Ok(()),
                Some(Ev::Error(e)) => return Err(e),
                None => return Err("no PUBACK".into()),
                Some(Ev::Msg { topic, body }) if is_engine_output(&topic) => self.stash.push_back((topic, body)),
                Some(_) => {}
            }
        }
    }

    /// Collect `n` engine outputs (within `within`), in arrival order. A client subscribed to
    /// its whole inbox also receives its own commands back (`…update`, `…archive`: MQTT 3.1.1
    /// has no no-local), as Chat21 clients do; like them, only `client*` topics count here.
    pub async fn messages(&mut self, n: usize, within: Duration) -> Vec<(String, Value)> {
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        while out.len() < n {
            if let Some(m) = self.stash.pop_front() {
                out.push(m);
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left).await {
                Some(Ev::Msg { topic, body }) if is_engine_output(&topic) => out.push((topic, body)),
                Some(Ev::Msg { .. }) => {}
                Some(Ev::Error(e)) => panic!(
                    "MQTT connection of {} failed while waiting for messages: {e}",
                    self.user
                ),
                Some(_) => {}
                None => break,
            }
        }
        out
    }

    /// Whatever else arrives within `within` (to prove nothing more came).
    pub async fn extra_messages(&mut self, within: Duration) -> Vec<(String, Value)> {
        self.messages(usize::MAX, within).await
    }
}

fn is_engine_output(topic: &str) -> bool {
    ["clientadded", "clientupdated", "clientdeleted"]
        .iter()
        .any(|s| topic.ends_with(s))
}

impl Drop for Mqtt {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How long a test waits for a message that must arrive.
pub const WAIT: Duration = Duration::from_secs(15);

/// Connected and subscribed to their inboxes.
pub async fn inboxes(b: &Broker, e: &EngineProc, users: &[&str]) -> Vec<Mqtt> {
    let mut out = Vec::new();
    for u in users {
        let mut c = Mqtt::connect(b, &e.app, u, Via::Tcp).await;
        c.subscribe_inbox().await;
        out.push(c);
    }
    out
}

pub async fn send(c: &mut Mqtt, e: &EngineProc, to: &str, body: Value) {
    c.publish_acked(&e.topics().outgoing(&c.user.clone(), to), body.to_string().as_bytes())
        .await
        .unwrap();
}

pub async fn one(c: &mut Mqtt, e: &EngineProc) -> (String, Value) {
    let mut got = c.messages(1, WAIT).await;
    assert_eq!(got.len(), 1, "{} got nothing; engine log:\n{}", c.user, e.log_text());
    got.remove(0)
}

pub async fn nothing_more(clients: &mut [Mqtt]) {
    for c in clients.iter_mut() {
        let extra = c.extra_messages(Duration::from_millis(300)).await;
        assert!(extra.is_empty(), "{} got more: {extra:?}", c.user);
    }
}

/// An AMQP observer for assertions that must survive client disconnects: a durable queue
/// bound to a pattern, read back with basic.get.
pub struct Tap {
    pub channel: lapin::Channel,
    pub queue: String,
    _conn: lapin::Connection,
}

impl Tap {
    pub async fn new(broker: &Broker, pattern: &str) -> Tap {
        use lapin::options::{QueueBindOptions, QueueDeclareOptions};
        let conn = lapin::Connection::connect(&broker.amqp_uri, Default::default())
            .await
            .unwrap();
        let channel = conn.create_channel().await.unwrap();
        let queue = format!("tap.{}", fresh(""));
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::durable(),
                Default::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.as_str().into(),
                "amq.topic".into(),
                pattern.into(),
                QueueBindOptions::default(),
                Default::default(),
            )
            .await
            .unwrap();
        Tap {
            channel,
            queue,
            _conn: conn,
        }
    }

    /// A new connection to an existing tap queue (after a broker restart).
    pub async fn reopen(broker: &Broker, queue: &str) -> Tap {
        let conn = lapin::Connection::connect(&broker.amqp_uri, Default::default())
            .await
            .unwrap();
        let channel = conn.create_channel().await.unwrap();
        Tap {
            channel,
            queue: queue.to_string(),
            _conn: conn,
        }
    }

    /// Drain everything currently in the queue.
    pub async fn drain(&self) -> Vec<(String, Value)> {
        self.drain_with_mode()
            .await
            .into_iter()
            .map(|(k, v, _)| (k, v))
            .collect()
    }

    /// Drain, with each message's delivery mode (1 transient, 2 persistent).
    pub async fn drain_with_mode(&self) -> Vec<(String, Value, u8)> {
        use lapin::options::BasicGetOptions;
        let mut out = Vec::new();
        while let Some(m) = self
            .channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            out.push((
                m.delivery.routing_key.to_string(),
                serde_json::from_slice(&m.delivery.data).unwrap_or(Value::Null),
                m.delivery.properties.delivery_mode().unwrap_or(0),
            ));
        }
        out
    }

    /// Drain until `n` messages arrived (or 15 s passed).
    pub async fn wait_for(&self, n: usize) -> Vec<(String, Value, u8)> {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut out = Vec::new();
        while out.len() < n && Instant::now() < deadline {
            out.extend(self.drain_with_mode().await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        out
    }
}

/// Publish raw bytes on amq.topic as the admin user (for inputs MQTT cannot produce).
pub async fn amqp_publish(broker: &Broker, key: &str, body: &[u8]) {
    let conn = lapin::Connection::connect(&broker.amqp_uri, Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    ch.basic_publish(
        "amq.topic".into(),
        key.into(),
        Default::default(),
        body,
        Default::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let _ = conn.close(200, "done".into()).await;
}

/// A private PostgreSQL server (initdb in a temp dir, trust auth, a free loopback port) that
/// tests can stop and start to simulate a store outage. Runs as the `postgres` system user
/// (PostgreSQL refuses to run as root). Stopped on drop.
pub struct PrivatePg {
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl PrivatePg {
    pub fn start() -> PrivatePg {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries in /usr/lib/postgresql")
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .max()
            .unwrap();
        let dir = tempfile::Builder::new().prefix("chat21-pg-").tempdir().unwrap();
        let st = Command::new("chown")
            .arg("-R")
            .arg("postgres:postgres")
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success());
        let pg = PrivatePg {
            port: free_port(),
            dir,
            bin,
        };
        pg.as_postgres(&[
            pg.bin.join("initdb").to_str().unwrap(),
            "-D",
            pg.data().to_str().unwrap(),
            "--auth=trust",
            "-U",
            "postgres",
            "--no-sync",
        ]);
        pg.resume();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn as_postgres(&self, args: &[&str]) {
        let out = Command::new("runuser")
            .arg("-u")
            .arg("postgres")
            .arg("--")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stop the server (fast shutdown: connections are cut).
    pub fn halt(&self) {
        let ctl = self.bin.join("pg_ctl");
        self.as_postgres(&[
            ctl.to_str().unwrap(),
            "-D",
            self.data().to_str().unwrap(),
            "-m",
            "fast",
            "-w",
            "stop",
        ]);
    }

    pub fn resume(&self) {
        let ctl = self.bin.join("pg_ctl");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("pg.log");
        self.as_postgres(&[
            ctl.to_str().unwrap(),
            "-D",
            self.data().to_str().unwrap(),
            "-o",
            &opts,
            "-l",
            log.to_str().unwrap(),
            "-w",
            "start",
        ]);
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let ctl = self.bin.join("pg_ctl");
        let _ = Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                ctl.to_str().unwrap(),
                "-D",
                self.data().to_str().unwrap(),
                "-m",
                "immediate",
                "stop",
            ])
            .output();
    }
}
