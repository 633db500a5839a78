//! What the benchmarks share: a private RabbitMQ node, percentiles and medians, a process's
//! CPU time and peak RSS from /proc. (Each benchmark uses part of it.)
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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
