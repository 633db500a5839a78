//! HTTP: operations endpoints (the history/groups API comes with later work).

mod ops;

use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use crate::Engine;

pub async fn serve(listener: tokio::net::TcpListener, engine: Arc<Engine>, shutdown: CancellationToken) {
    let app = ops::router(engine);
    let res = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = res {
        tracing::error!(error = %e, "HTTP server failed");
    }
}
