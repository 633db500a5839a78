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
