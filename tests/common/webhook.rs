//! A real HTTP receiver for webhooks on 127.0.0.1 (axum): records every POST with its headers
//! and what it answered, and can answer 200, answer 500, hang, or be down (stopped: the port
//! refuses connections) and come back on the same port.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Ok = 0,
    Fail = 1,
    Hang = 2,
}

/// One POST as received.
#[derive(Debug, Clone)]
pub struct Hit {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub json: Value,
    /// What the receiver answered (0: it hung).
    pub answered: u16,
    pub query: Option<String>,
}

impl Hit {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Inner {
    answer: AtomicU8,
    hits: Mutex<Vec<Hit>>,
}

pub struct Receiver {
    pub port: u16,
    inner: Arc<Inner>,
    stop: Mutex<Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let r = Receiver {
            port: super::free_port(),
            inner: Arc::new(Inner {
                answer: AtomicU8::new(Answer::Ok as u8),
                hits: Mutex::new(Vec::new()),
            }),
            stop: Mutex::new(None),
        };
        r.resume().await;
        r
    }

    /// The endpoint URL (with a query string, which must reach the receiver).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook?source=chat21", self.port)
    }

    pub fn answer(&self, a: Answer) {
        self.inner.answer.store(a as u8, Ordering::SeqCst);
    }

    /// Down: stops accepting, lets in-flight requests finish, closes idle connections.
    pub async fn stop(&self) {
        let taken = self.stop.lock().unwrap().take();
        if let Some((tx, task)) = taken {
            let _ = tx.send(());
            let _ = task.await;
        }
    }

    /// Up again, on the same port.
    pub async fn resume(&self) {
        let listener = loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let app = axum::Router::new()
            .route("/hook", post(hook))
            .with_state(self.inner.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        *self.stop.lock().unwrap() = Some((tx, task));
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.inner.hits.lock().unwrap().clone()
    }

    /// POSTs answered 2xx.
    pub fn delivered(&self) -> Vec<Hit> {
        self.hits().into_iter().filter(|h| h.answered == 200).collect()
    }

    /// Wait until `pred` holds for the delivered POSTs (or panic after `within`).
    pub async fn wait_until(&self, what: &str, within: Duration, pred: impl Fn(&[Hit]) -> bool) -> Vec<Hit> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.delivered();
            if pred(&got) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; delivered so far: {:?}",
                got.iter().map(|h| h.json["event_type"].clone()).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn hook(State(inner): State<Arc<Inner>>, uri: axum::http::Uri, headers: HeaderMap, body: Bytes) -> StatusCode {
    let answer = inner.answer.load(Ordering::SeqCst);
    let mut hit = Hit {
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect(),
        json: serde_json::from_slice(&body).unwrap_or(Value::Null),
        body: body.to_vec(),
        answered: 0,
        query: uri.query().map(str::to_owned),
    };
    if answer == Answer::Hang as u8 {
        inner.hits.lock().unwrap().push(hit);
        std::future::pending::<()>().await;
        unreachable!()
    }
    let status = if answer == Answer::Ok as u8 {
        StatusCode::OK
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    hit.answered = status.as_u16();
    inner.hits.lock().unwrap().push(hit);
    status
}
