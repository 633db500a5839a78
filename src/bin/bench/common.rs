//! What the benchmarks share: a private RabbitMQ node, percentiles and medians, a process's
//! CPU time and peak RSS from /proc. (Each benchmark uses part of it.)
#![allow(dead_code)]

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::Connection;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[((s.len() as f64 - 1.0) * p).round() as usize]
}

pub fn cpu_seconds(pid: u32) -> f64 {
    // /proc/PID/stat fields 14 and 15 (utime, stime) in clock ticks, after the `(comm)` field.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

pub fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// A private RabbitMQ node from scripts/rabbitmq-private.sh, stopped on drop.
pub struct PrivateNode {
    pub amqp_uri: String,
    /// The node's OAuth2 signing secret (user tokens for the HTTP API are signed with it).
    pub jwt_secret: String,
    dir: PathBuf,
    _tmp: tempfile_dir::TempDir,
}

impl PrivateNode {
    pub fn start() -> Result<PrivateNode, Box<dyn std::error::Error>> {
        let tmp = tempfile_dir::TempDir::new()?;
        let dir = tmp.path().to_path_buf();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/rabbitmq-private.sh");
        eprintln!("bench: starting a private RabbitMQ node in {}", dir.display());
        let out = Command::new("bash")
            .arg(&script)
            .arg("start")
            .arg(&dir)
            .env("WATCH_PID", std::process::id().to_string())
            .stderr(Stdio::inherit())
            .output()?;
        if !out.status.success() {
            return Err("private RabbitMQ node failed to start".into());
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let var = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
                .map(str::to_owned)
                .ok_or(format!("no {k} from the script"))
        };
        Ok(PrivateNode {
            amqp_uri: var("AMQP_URI")?,
            jwt_secret: var("JWT_SECRET")?,
            dir,
            _tmp: tmp,
        })
    }
}

impl Drop for PrivateNode {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/rabbitmq-private.sh");
        let _ = Command::new("bash").arg(script).arg("stop").arg(&self.dir).status();
    }
}

/// A temp dir without a dev-dependency in the binary: removed on drop.
mod tempfile_dir {
    use std::path::{Path, PathBuf};

    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new() -> std::io::Result<TempDir> {
            let p = std::env::temp_dir().join(format!("chat21-bench-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&p)?;
            Ok(TempDir(p))
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Counts recipient copies (and their latency) on a queue bound to every recipient's inbox.
pub struct Sink {
    count: Arc<AtomicU64>,
    first_last: Arc<Mutex<(Option<Instant>, Option<Instant>)>>,
    latencies: Arc<Mutex<Vec<f64>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Sink {
    /// `epoch`: the instant `sent_ns` in message bodies is measured from.
    /// A sink queue `q` bound on `amq.topic` with `keys`.
    pub async fn start(
        conn: &Connection,
        q: &str,
        keys: &[String],
        epoch: Instant,
    ) -> Result<Sink, Box<dyn std::error::Error>> {
        let ch = conn.create_channel().await?;
        let opts = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        ch.queue_declare(q.into(), opts, FieldTable::default()).await?;
        for key in keys {
            ch.queue_bind(
                q.into(),
                "amq.topic".into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        }
        let mut consumer = ch
            .basic_consume(
                q.into(),
                "sink".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let count = Arc::new(AtomicU64::new(0));
        let first_last = Arc::new(Mutex::new((None, None)));
        let latencies = Arc::new(Mutex::new(Vec::new()));
        let (c, fl, lat) = (count.clone(), first_last.clone(), latencies.clone());
        let task = tokio::spawn(async move {
            let _ch = ch; // keep the channel open as long as the consumer runs
            while let Some(Ok(d)) = consumer.next().await {
                let now = Instant::now();
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&d.data) {
                    if let Some(sent) = v["sent_ns"].as_u64() {
                        let recv = now.duration_since(epoch).as_nanos() as u64;
                        lat.lock().unwrap().push(recv.saturating_sub(sent) as f64 / 1e6);
                    }
                }
                let mut g = fl.lock().unwrap();
                g.0.get_or_insert(now);
                g.1 = Some(now);
                c.fetch_add(1, Ordering::Relaxed);
            }
        });
        Ok(Sink {
            count,
            first_last,
            latencies,
            _task: task,
        })
    }

    pub fn reset(&self) {
        self.count.store(0, Ordering::Relaxed);
        *self.first_last.lock().unwrap() = (None, None);
        self.latencies.lock().unwrap().clear();
    }

    pub async fn wait_for(&self, n: u64, limit: Duration) -> Result<(Instant, Instant), Box<dyn std::error::Error>> {
        let deadline = Instant::now() + limit;
        while self.count.load(Ordering::Relaxed) < n {
            if Instant::now() > deadline {
                return Err(format!(
                    "only {} of {n} recipient copies arrived",
                    self.count.load(Ordering::Relaxed)
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let g = self.first_last.lock().unwrap();
        Ok((g.0.unwrap(), g.1.unwrap()))
    }

    pub fn latencies_ms(&self) -> Vec<f64> {
        self.latencies.lock().unwrap().clone()
    }
}
