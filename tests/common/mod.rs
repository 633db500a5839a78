//! Test harness, by concern: `broker` (one private RabbitMQ node per test binary), `engine`
//! (the engine as a child process or in-process, and what a test knows of it), `mqtt` (real
//! MQTT clients with minted JWTs), `amqp` (taps and raw publishes), `postgres`, `http`, `webhook` (a real HTTP receiver). Each
//! test gets its own app id and queue, so tests share the node without seeing each other's
//! traffic.
#![allow(dead_code, unused_imports)]

mod amqp;
mod broker;
mod engine;
mod http;
mod mqtt;
mod postgres;
mod webhook;

pub use amqp::*;
pub use broker::*;
pub use engine::*;
pub use http::*;
pub use mqtt::*;
pub use postgres::*;
pub use webhook::*;

use std::time::{Duration, Instant};

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
