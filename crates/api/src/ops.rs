//! Operator endpoints: `/healthz` (the process is alive) and `/readyz` (its
//! dependencies answer). The API serves them beside `/v1`; the worker serves
//! them on `KURIR_WORKER_METRICS_ADDR` through [`serve`].

use std::{net::SocketAddr, time::Duration};

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use kurir_bus::Publisher;
use kurir_store::PgPool;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What readiness checks, and whether RabbitMQ is required for it.
#[derive(Debug, Clone)]
pub struct Probe {
    pub pool: PgPool,
    pub publisher: Publisher,
    pub timeout: Duration,
    /// The API stays ready while the broker is down (it still accepts: rows
    /// wait in Postgres); a worker is not.
    pub broker_required: bool,
    /// A worker's consumer: running or not.
    pub consuming: Option<watch::Receiver<kurir_bus::LinkState>>,
}

#[derive(Debug, Serialize)]
pub struct Readiness {
    pub postgres: &'static str,
    pub rabbitmq: &'static str,
}

impl Probe {
    pub async fn check(&self) -> (bool, Readiness) {
        let postgres = kurir_store::ping(&self.pool, self.timeout).await.is_ok();
        let consuming = self
            .consuming
            .as_ref()
            .is_none_or(|consuming| consuming.borrow().is_ok());
        let rabbitmq = self.publisher.is_connected() && consuming;
        let ready = postgres && (rabbitmq || !self.broker_required);
        let word = |up: bool| if up { "ok" } else { "unavailable" };
        (
            ready,
            Readiness {
                postgres: word(postgres),
                rabbitmq: word(rabbitmq),
            },
        )
    }
}

pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

pub async fn readyz(State(probe): State<Probe>) -> (StatusCode, Json<Readiness>) {
    let (ready, readiness) = probe.check().await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness))
}

pub fn router(probe: Probe) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(probe)
}

/// Serves the operator endpoints on `addr` until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    probe: Probe,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    serve_on(listener, probe, shutdown).await
}

/// Serves the operator endpoints on a bound `listener` until `shutdown`.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    probe: Probe,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(probe))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
