//! The engine under test, as a child process (for the tests of process-level faults: kill -9,
//! SIGTERM, SIGHUP, restarts) or in-process on `chat21_engine::run` (everything else), and
//! what a test knows of either: [`Running`].

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use super::broker::Broker;
use super::http::http_get;
use super::postgres::fresh_pg_schema;
use super::{free_port, fresh};

pub const ENGINE: &str = env!("CARGO_BIN_EXE_chat21-engine");

/// Which store an engine under test uses.
#[derive(Clone, Copy, Debug)]
pub enum Db {
    /// A SQLite file in the broker's temp dir.
    Sqlite,
    /// A fresh schema in the machine's PostgreSQL.
    Postgres,
}

/// What a test knows of a running engine, however it runs.
pub struct Running {
    pub database_url: String,
    /// The API's port (HTTP_PORT).
    pub http_port: u16,
    /// Where /readyz and /metrics answer: OPS_HTTP_PORT when set, else HTTP_PORT.
    pub ops_port: u16,
    pub app: String,
    pub queue: String,
    /// The engine's whole environment: what `chat21-engine token` is run with.
    env: Vec<(String, String)>,
}

impl Running {
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = http_get(self.ops_port, "/readyz").await {
                return;
            }
            assert!(Instant::now() < deadline, "engine not ready in 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        http_get(self.ops_port, "/metrics").await.expect("metrics").1
    }

    /// Value of one metric line (exact series text before the value).
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0.0)
    }

    /// The engine's topic grammar, as its configuration (`TOPIC_LAYOUT`, `PATH_PREFIX`) says.
    pub fn topics(&self) -> chat21_engine::topic::Topics {
        let config = chat21_engine::config::Config::from_vars(self.env.clone()).expect("the engine's configuration");
        chat21_engine::topic::Topics::from_config(&config.topics).expect("the engine's topics")
    }

    /// Run the binary's command `args` with the engine's environment, as an operator would:
    /// its exit code, stdout and stderr.
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        self.cli_with(&[], args)
    }

    /// [`Running::cli`] with some of the environment replaced.
    pub fn cli_with(&self, env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
        let out = Command::new(ENGINE)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(env.iter().copied())
            .args(args)
            .output()
            .expect("run chat21-engine");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A user token from the binary's own `token` command, run with the engine's environment
    /// — the way an operator mints one. Panics with the command's message if it refuses.
    pub fn cli_token(&self, user: &str) -> String {
        let out = Command::new(ENGINE)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .args(["token", user])
            .output()
            .expect("run chat21-engine token");
        assert!(
            out.status.success(),
            "chat21-engine token {user}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}

/// The environment of an engine under test: its own app id and queue, a free HTTP port, its
/// own SQLite file, no rate limit; `extra` wins.
fn test_env(broker: &Broker, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let app = fresh("app");
    let mut env: Vec<(String, String)> = vec![
        ("RABBITMQ_URI".into(), broker.amqp_uri.clone()),
        ("JWT_SECRET".into(), broker.jwt_secret.clone()),
        ("JWT_KID".into(), broker.jwt_kid.clone()),
        ("QUEUE_NAME".into(), format!("chat21.engine.{app}")),
        ("APP_ID".into(), app),
        ("LOG_LEVEL".into(), "info".into()),
        ("HTTP_PORT".into(), free_port().to_string()),
        ("HTTP_HOST".into(), "127.0.0.1".into()),
        // Tests stream thousands of messages from one sender; the rate-limit tests set
        // their own limits.
        ("RATE_LIMIT_PER_MIN".into(), "0".into()),
        ("RATE_LIMIT_COMMANDS_PER_MIN".into(), "0".into()),
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
    env
}

fn running(env: &[(String, String)]) -> Running {
    let get = |name: &str| env.iter().find(|(k, _)| k == name).unwrap().1.clone();
    let http_port = get("HTTP_PORT").parse().unwrap();
    let ops_port = env
        .iter()
        .find(|(k, _)| k == "OPS_HTTP_PORT")
        .map_or(http_port, |(_, v)| v.parse().unwrap());
    Running {
        database_url: get("DATABASE_URL"),
        http_port,
        ops_port,
        app: get("APP_ID"),
        queue: get("QUEUE_NAME"),
        env: env.to_vec(),
    }
}

/// `extra` with `DATABASE_URL` for `db` (a fresh PostgreSQL schema; SQLite is the default).
async fn with_db(db: Db, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    if let Db::Postgres = db {
        env.push(("DATABASE_URL".into(), fresh_pg_schema().await));
    }
    env
}

fn as_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// An engine process on `db`, with extra environment.
pub async fn engine_with(b: &Broker, db: Db, extra: &[(&str, &str)]) -> EngineProc {
    let env = with_db(db, extra).await;
    EngineProc::start(b, &as_refs(&env)).await
}

/// An in-process engine on `db`, with extra environment.
pub async fn engine_task_with(b: &Broker, db: Db, extra: &[(&str, &str)]) -> EngineTask {
    let env = with_db(db, extra).await;
    EngineTask::start(b, &as_refs(&env)).await
}

/// The engine running in the test's process, on `chat21_engine::run`: the same assembly and
/// the same code as the binary, minus the process. Stopped (shutdown, drain) on drop.
pub struct EngineTask {
    info: Running,
    pub engine: Arc<chat21_engine::Engine>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl EngineTask {
    pub async fn start(broker: &Broker, extra: &[(&str, &str)]) -> EngineTask {
        let env = test_env(broker, extra);
        let config = chat21_engine::config::Config::from_vars(env.clone()).expect("a valid test configuration");
        let engine = chat21_engine::Engine::new(config).expect("the engine assembles");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(chat21_engine::run(engine.clone(), shutdown.clone()));
        let t = EngineTask {
            info: running(&env),
            engine,
            shutdown,
            task: Some(task),
        };
        t.wait_ready().await;
        t
    }

    /// Shut down as on SIGTERM and wait until in-flight inputs are settled.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("engine task").expect("engine run");
        }
    }

    /// For failure messages: an in-process engine logs to the test's own output.
    pub fn log_text(&self) -> String {
        "(in-process engine: see the test output)".into()
    }
}

impl Deref for EngineTask {
    type Target = Running;
    fn deref(&self) -> &Running {
        &self.info
    }
}

impl Drop for EngineTask {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The engine binary running as a child process against a broker.
pub struct EngineProc {
    info: Running,
    pub child: Child,
    pub log: PathBuf,
    env: Vec<(String, String)>,
}

impl Deref for EngineProc {
    type Target = Running;
    fn deref(&self) -> &Running {
        &self.info
    }
}

impl EngineProc {
    /// Start an engine with its own app id and queue; waits until /readyz says ready.
    pub async fn start(broker: &Broker, extra: &[(&str, &str)]) -> EngineProc {
        let env = test_env(broker, extra);
        let log = broker.dir.join(format!("engine-{}.log", fresh("")));
        let e = EngineProc {
            info: running(&env),
            child: spawn(&env, &log),
            log,
            env,
        };
        e.wait_ready().await;
        e
    }

    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok((200, _)) = http_get(self.ops_port, "/readyz").await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("engine not ready in 30 s; log:\n{}", self.log_text());
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
