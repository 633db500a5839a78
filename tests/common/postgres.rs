//! PostgreSQL for the tests, always private servers: a fresh schema in the test binary's
//! shared one, or a server of a test's own that it can stop and start.

use std::path::PathBuf;
use std::process::Command;

use super::{free_port, fresh};

/// A fresh PostgreSQL schema; returns a DATABASE_URL whose connections use it (tests never see
/// each other's tables). The server is this test binary's own private one (started on first
/// use, stopped when the binary exits), or `TEST_POSTGRES_URL` when set. Nothing on the
/// machine's port 5432 is needed.
pub async fn fresh_pg_schema() -> String {
    let base = match std::env::var("TEST_POSTGRES_URL") {
        Ok(url) => url,
        Err(_) => tokio::task::spawn_blocking(|| shared().url()).await.unwrap(),
    };
    let schema = fresh("t");
    let pool = sqlx::PgPool::connect(&base).await.expect("the tests' PostgreSQL");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    format!("{base}?options[search_path]={schema}")
}

/// One private server per test binary, shared by its tests (each in its own schema).
fn shared() -> &'static PrivatePg {
    static SHARED: std::sync::OnceLock<PrivatePg> = std::sync::OnceLock::new();
    SHARED.get_or_init(|| {
        let pg = PrivatePg::start();
        pg.reap_when_gone(std::process::id());
        pg
    })
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

    /// Stop the server and remove its directory once process `pid` is gone, whatever way it
    /// ended: a static is never dropped, and a crashed test binary must leave nothing running.
    fn reap_when_gone(&self, pid: u32) {
        let ctl = self.bin.join("pg_ctl");
        let script = format!(
            "trap '' HUP; while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             runuser -u postgres -- '{ctl}' -D '{data}' -m immediate stop; rm -rf '{dir}'",
            ctl = ctl.display(),
            data = self.data().display(),
            dir = self.dir.path().display(),
        );
        // `setsid -f` forks the reaper off and returns at once: it outlives this process.
        let st = Command::new("setsid")
            .args(["-f", "bash", "-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("the PostgreSQL reaper");
        assert!(st.success(), "the PostgreSQL reaper did not start");
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
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300",
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
