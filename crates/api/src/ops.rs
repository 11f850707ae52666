//! The API's operator endpoints beside `/v1`: `/healthz` (the process is
//! alive), `/readyz` (Postgres answers; RabbitMQ is reported but not
//! required) and `/metrics`. The worker serves its own
//! (`kurir_worker::health`); what both share, the probe's result and the log
//! of its changes, is `kurir_core::health`.

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use kurir_bus::Publisher;
use kurir_core::health::{ReadinessLog, Seen};
use kurir_store::Db;
use serde::Serialize;

/// What the API's readiness checks.
#[derive(Debug, Clone)]
pub struct Probe {
    pub db: Db,
    pub publisher: Publisher,
}

/// What `/readyz` found: `ok` or `unavailable` for each dependency.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(examples(json!({"postgres": "ok", "rabbitmq": "ok"})))]
pub struct Readiness {
    #[schema(value_type = String, pattern = "^(ok|unavailable)$")]
    pub postgres: &'static str,
    #[schema(value_type = String, pattern = "^(ok|unavailable)$")]
    pub rabbitmq: &'static str,
}

impl From<Seen> for Readiness {
    fn from(seen: Seen) -> Self {
        let (postgres, rabbitmq) = seen.words();
        Readiness { postgres, rabbitmq }
    }
}

impl Probe {
    /// Probes each dependency; also the reason Postgres did not answer. The
    /// API stays ready while the broker is down: it still accepts, and the
    /// rows wait in Postgres.
    async fn observe(&self) -> (Seen, Option<String>) {
        let postgres = self.db.ping().await;
        let seen = Seen {
            ready: postgres.is_ok(),
            postgres: postgres.is_ok(),
            rabbitmq: self.publisher.is_connected(),
        };
        (seen, postgres.err().map(|err| err.to_string()))
    }
}

/// `/readyz`'s state: the probe and what the last probe found.
#[derive(Debug, Clone)]
struct Readyz {
    probe: Probe,
    log: ReadinessLog,
}

/// `GET /healthz`: the process is alive.
#[utoipa::path(
    get, path = "/healthz", tag = "operations", operation_id = "healthz",
    summary = "The process is alive",
    responses((status = 200, description = "Alive", body = crate::openapi::schemas::Health, example = json!({"status": "ok"}))),
)]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// `GET /readyz`: the API can accept (Postgres answers; RabbitMQ is reported
/// but not required).
#[utoipa::path(
    get, path = "/readyz", tag = "operations", operation_id = "readyz",
    summary = "The dependencies answer",
    description = "The API's readiness needs Postgres only: it still accepts while RabbitMQ is down (rows wait in Postgres).",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready: Postgres does not answer", body = Readiness,
            example = json!({"postgres": "unavailable", "rabbitmq": "ok"})),
    ),
)]
async fn readyz(State(readyz): State<Readyz>) -> (StatusCode, Json<Readiness>) {
    let (seen, postgres_error) = readyz.probe.observe().await;
    readyz.log.note(seen, postgres_error.as_deref());
    let status = if seen.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(Readiness::from(seen)))
}

pub fn router(probe: Probe) -> Router {
    let readyz_state = Readyz {
        probe,
        log: ReadinessLog::default(),
    };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(crate::metrics::render))
        .with_state(readyz_state)
}
