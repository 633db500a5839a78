//! The webhook endpoint of the benchmark: a local HTTP receiver (axum) that answers 200 to
//! every POST and records how long each event took from being made (`createdAt`, the engine's
//! clock) to arriving here. Same machine, same clock.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Seen {
    count: u64,
    /// (createdAt, ms from createdAt to arrival)
    latencies: Vec<(i64, f64)>,
}

pub struct HookSink {
    pub url: String,
    seen: Arc<Mutex<Seen>>,
}

fn now_ms_f() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or_default()
}

impl HookSink {
    pub async fn start() -> std::io::Result<HookSink> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(seen.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(HookSink { url, seen })
    }

    pub fn count(&self) -> u64 {
        self.seen.lock().unwrap().count
    }

    pub fn reset(&self) {
        *self.seen.lock().unwrap() = Seen::default();
    }

    /// Wait until `n` events arrived (false after `limit`).
    pub async fn wait_for(&self, n: u64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.count() < n {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Event latencies (ms) of the events made at or after `since_ms`.
    pub fn latencies_ms(&self, since_ms: i64) -> Vec<f64> {
        let s = self.seen.lock().unwrap();
        s.latencies
            .iter()
            .filter(|(at, _)| *at >= since_ms)
            .map(|(_, l)| *l)
            .collect()
    }
}

/// A URL where nothing listens: a dead endpoint for the whole run.
pub fn dead_url() -> std::io::Result<String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    Ok(format!("http://127.0.0.1:{port}/hook"))
}

/// `createdAt` from the body, by a scan rather than a parse: the receiver shares the machine
/// with what it measures, so it does as little as it can.
fn created_at(body: &[u8]) -> Option<i64> {
    let key = b"\"createdAt\":";
    let at = body.windows(key.len()).position(|w| w == key)? + key.len();
    let digits: Vec<u8> = body[at..].iter().copied().take_while(u8::is_ascii_digit).collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

async fn hook(State(seen): State<Arc<Mutex<Seen>>>, body: Bytes) -> StatusCode {
    let at = created_at(&body);
    let mut s = seen.lock().unwrap();
    s.count += 1;
    if let Some(at) = at {
        s.latencies.push((at, (now_ms_f() - at as f64).max(0.0)));
    }
    StatusCode::OK
}
