//! The worker's operator endpoints on `KURIR_WORKER_METRICS_ADDR`:
//! `/healthz` (the process is alive), `/readyz` (Postgres answers, the
//! publisher is connected and the consumer is running: a worker without its
//! broker does no work) and `/metrics` (the process's Prometheus registry).
//! The probe's result and the log of its changes are
//! `kurir_core::health`'s, as the API's are.

use std::net::SocketAddr;

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use kurir_bus::{LinkState, Publisher};
use kurir_core::health::{METRICS_CONTENT_TYPE, ReadinessLog, Seen};
use kurir_store::Db;
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::watch};
use tokio_util::sync::CancellationToken;

/// What the worker's readiness checks.
#[derive(Debug, Clone)]
pub struct Probe {
    pub db: Db,
    pub publisher: Publisher,
    /// The consumer: running or not.
    pub consuming: watch::Receiver<LinkState>,
}

impl Probe {
    /// Probes each dependency; also the reason Postgres did not answer.
    async fn observe(&self) -> (Seen, Option<String>) {
        let postgres = self.db.ping().await;
        let rabbitmq = self.publisher.is_connected() && self.consuming.borrow().is_ok();
        let seen = Seen {
            ready: postgres.is_ok() && rabbitmq,
            postgres: postgres.is_ok(),
            rabbitmq,
        };
        (seen, postgres.err().map(|err| err.to_string()))
    }
}

/// Binds `addr` (`KURIR_WORKER_METRICS_ADDR`); the error names the setting.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr).await.map_err(|err| {
        format!(
            "cannot listen on KURIR_WORKER_METRICS_ADDR={addr}: {err} (each worker on a host needs its own address, or port 0)"
        )
    })
}

#[derive(Debug, Clone)]
struct Readyz {
    probe: Probe,
    log: ReadinessLog,
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(readyz): State<Readyz>) -> (StatusCode, Json<Value>) {
    let (seen, postgres_error) = readyz.probe.observe().await;
    readyz.log.note(seen, postgres_error.as_deref());
    let status = if seen.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let (postgres, rabbitmq) = seen.words();
    (
        status,
        Json(json!({"postgres": postgres, "rabbitmq": rabbitmq})),
    )
}

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        kurir_core::telemetry::render(),
    )
}

pub fn router(probe: Probe) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Readyz {
            probe,
            log: ReadinessLog::default(),
        })
}

/// Serves the endpoints on a bound `listener` until `shutdown`.
pub async fn serve_on(
    listener: TcpListener,
    probe: Probe,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(probe))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_taken_address_is_refused_naming_the_setting() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind(addr).await.unwrap_err();
        assert!(
            err.starts_with(&format!(
                "cannot listen on KURIR_WORKER_METRICS_ADDR={addr}"
            )),
            "{err}"
        );
    }
}
