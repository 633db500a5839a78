//! One private RabbitMQ node per test binary, configured like production by
//! scripts/rabbitmq-private.sh.

use chat21_engine::domain::{AppId, UserId};
use chat21_engine::jwt::Minter;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// A private RabbitMQ node.
pub struct Broker {
    pub dir: PathBuf,
    pub amqp_uri: String,
    pub amqp_port: u16,
    pub mqtt_port: u16,
    pub ws_url: String,
    /// MQTT over TLS and Web-MQTT over TLS, with the node's private CA.
    pub mqtts_port: u16,
    pub wss_url: String,
    pub tls_ca: PathBuf,
    pub jwt_secret: String,
    pub jwt_kid: String,
    /// The node's directory, removed on drop (None for a cluster's node: the cluster's).
    _tmp: Option<tempfile::TempDir>,
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
        Broker::of(dir, &String::from_utf8_lossy(&out.stdout), Some(tmp))
    }

    /// The node that `rabbitmq-private.sh start` described with `vars` (its KEY=VALUE lines).
    fn of(dir: PathBuf, vars: &str, tmp: Option<tempfile::TempDir>) -> Broker {
        let vars: HashMap<String, String> = vars
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
            mqtts_port: get("MQTTS_PORT").parse().unwrap(),
            wss_url: get("WSS_URL"),
            tls_ca: PathBuf::from(get("TLS_CA")),
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

    /// `rabbitmqctl ARGS…` against this node.
    pub fn ctl(&self, args: &[&str]) {
        let st = Command::new("bash")
            .arg(script())
            .arg("ctl")
            .arg(&self.dir)
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "rabbitmqctl {args:?} failed");
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

    /// A broker user with exactly the permissions production gives the engine for `queue`
    /// (`deploy/rabbitmq/engine-permissions.sh`); returns its AMQP URI.
    pub fn engine_user(&self, name: &str, password: &str, queue: &str) -> String {
        let st = Command::new("bash")
            .arg(script())
            .args(["engine-user", self.dir.to_str().unwrap(), name, password, queue])
            .status()
            .unwrap();
        assert!(st.success(), "rabbitmq-private.sh engine-user failed");
        format!("amqp://{name}:{password}@127.0.0.1:{}/%2f", self.amqp_port)
    }

    pub fn minter(&self) -> Minter {
        Minter::new(&self.jwt_secret, &self.jwt_kid)
    }

    /// A chat21-layout user token for this broker's key.
    pub fn token(&self, app: &str, user: &str) -> String {
        chat21_token(&self.minter(), app, user)
    }
}

/// A chat21-layout user token signed by `m`, valid for an hour.
pub fn chat21_token(m: &Minter, app: &str, user: &str) -> String {
    let topics = chat21_engine::topic::Topics::chat21(app);
    let (app, user) = (AppId::parse(app).unwrap(), UserId::parse(user).unwrap());
    m.user_token(&topics, &app, &user, Duration::from_secs(3600)).unwrap()
}

/// A private RabbitMQ cluster (scripts/rabbitmq-cluster.sh): every node configured like
/// production, one cookie, one JWT key. Each node is a [`Broker`] (halt and resume one to
/// take it out of the cluster and back). Stopped by the script's reaper when the test process
/// exits.
pub struct Cluster {
    pub nodes: Vec<Broker>,
    /// Every node's AMQP URI, node 1 first.
    pub uris: Vec<String>,
    /// The cluster's directory. Not removed on drop: the nodes still run then. The script's
    /// reaper stops them and removes it when the test process exits.
    pub dir: PathBuf,
}

impl Cluster {
    pub fn start(n: usize) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("chat21-cluster-")
            .tempdir()
            .expect("tempdir")
            .keep();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/rabbitmq-cluster.sh");
        let out = Command::new("bash")
            .arg(script)
            .arg("start")
            .arg(&dir)
            .arg(n.to_string())
            .env("WATCH_PID", std::process::id().to_string())
            .env("JWT_SECRET", format!("test-secret-{}", uuid::Uuid::new_v4().simple()))
            .stderr(Stdio::inherit())
            .output()
            .expect("run rabbitmq-cluster.sh");
        assert!(out.status.success(), "private RabbitMQ cluster failed to start");
        let nodes: Vec<Broker> = (1..=n)
            .map(|k| {
                let vars = std::fs::read_to_string(dir.join(format!("node{k}.out"))).unwrap();
                Broker::of(dir.join(format!("node{k}")), &vars, None)
            })
            .collect();
        let uris = nodes.iter().map(|b| b.amqp_uri.clone()).collect();
        Cluster { nodes, uris, dir }
    }

    /// RABBITMQ_URI for an engine that tries node `first` (0-based) first, then the others.
    pub fn uri_from(&self, first: usize) -> String {
        let n = self.uris.len();
        (0..n)
            .map(|i| self.uris[(first + i) % n].as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}
