//! HTTP: the API (`/api/…`, see [`api`]) and the operations endpoints (`/healthz`, `/readyz`,
//! `/metrics`), on `HTTP_PORT` together, or the ops endpoints on `OPS_HTTP_PORT` of their own
//! (an internal address) when it is set.

pub mod api;
mod ops;

use axum::Router;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use crate::Engine;

/// Bind the configured listeners: the main one (API, and ops unless they have their own) and
/// the ops one if set. A port that cannot be bound is an error at start.
pub async fn bind(engine: &Arc<Engine>) -> anyhow::Result<Vec<(tokio::net::TcpListener, Router)>> {
    let cfg = &engine.config.http;
    let mut out = Vec::new();
    let bind = |host: String, port: u16, what: &'static str| async move {
        tokio::net::TcpListener::bind((host.as_str(), port))
            .await
            .map_err(|e| anyhow::anyhow!("{what} {host}:{port}: {e}"))
    };
    if cfg.port != 0 {
        let listener = bind(cfg.host.clone(), cfg.port, "HTTP_PORT").await?;
        let mut app = api::router(engine.clone());
        if cfg.ops.is_none() {
            app = app.merge(ops::router(engine.clone()));
        }
        tracing::info!(addr = %listener.local_addr()?, ops = cfg.ops.is_none(), "HTTP API listening");
        out.push((listener, app));
    }
    if let Some((host, port)) = &cfg.ops {
        let listener = bind(host.clone(), *port, "OPS_HTTP_PORT").await?;
        tracing::info!(addr = %listener.local_addr()?, "HTTP ops endpoints listening");
        out.push((listener, ops::router(engine.clone())));
    }
    Ok(out)
}

pub async fn serve(listener: tokio::net::TcpListener, app: Router, shutdown: CancellationToken) {
    let res = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = res {
        tracing::error!(error = %e, "HTTP server failed");
    }
}
