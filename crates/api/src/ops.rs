//! Operator endpoints: `/healthz` (the process is alive) and `/readyz` (its
//! dependencies answer). The API serves them beside `/v1`; the worker serves
//! them on `KURIR_WORKER_METRICS_ADDR` through [`serve`].
//!
//! A health check probes `/readyz` every few seconds, so it does not log
//! each answer: it logs when readiness changes (WARN when it is lost, INFO
//! when it is back), with what changed and why ([`transition`]).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use kurir_bus::Publisher;
use kurir_store::Db;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// What readiness checks, and whether RabbitMQ is required for it.
#[derive(Debug, Clone)]
pub struct Probe {
    pub db: Db,
    pub publisher: Publisher,
    /// The API stays ready while the broker is down (it still accepts: rows
    /// wait in Postgres); a worker is not.
    pub broker_required: bool,
    /// A worker's consumer: running or not.
    pub consuming: Option<watch::Receiver<kurir_bus::LinkState>>,
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

/// What one probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub ready: bool,
    pub postgres: bool,
    pub rabbitmq: bool,
}

impl Seen {
    /// What the process assumes before its first probe: a first probe that
    /// finds a dependency down is a change worth a line.
    pub const START: Seen = Seen {
        ready: true,
        postgres: true,
        rabbitmq: true,
    };
}

fn word(up: bool) -> &'static str {
    if up { "ok" } else { "unavailable" }
}

/// A change of readiness, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Ready → not ready.
    Lost { changed: String },
    /// Not ready → ready.
    Regained { changed: String },
    /// A dependency changed but readiness did not (the API stays ready
    /// without RabbitMQ; a dependency came back while another is still down).
    Changed { changed: String },
}

/// What changed from `before` to `now` (`"postgres ok → unavailable"`), or
/// `None` when nothing did: the usual case, which logs nothing.
pub fn transition(before: Seen, now: Seen) -> Option<Transition> {
    let changed: Vec<String> = [
        ("postgres", before.postgres, now.postgres),
        ("rabbitmq", before.rabbitmq, now.rabbitmq),
    ]
    .into_iter()
    .filter(|(_, was, is)| was != is)
    .map(|(name, was, is)| format!("{name} {} → {}", word(was), word(is)))
    .collect();
    if changed.is_empty() && before.ready == now.ready {
        return None;
    }
    let changed = changed.join(", ");
    Some(match (before.ready, now.ready) {
        (true, false) => Transition::Lost { changed },
        (false, true) => Transition::Regained { changed },
        _ => Transition::Changed { changed },
    })
}

impl Probe {
    pub async fn check(&self) -> (bool, Readiness) {
        let (seen, _) = self.observe().await;
        (seen.ready, readiness(seen))
    }

    /// Probes each dependency; also the reason Postgres did not answer.
    async fn observe(&self) -> (Seen, Option<String>) {
        let postgres = self.db.ping().await;
        let consuming = self
            .consuming
            .as_ref()
            .is_none_or(|consuming| consuming.borrow().is_ok());
        let rabbitmq = self.publisher.is_connected() && consuming;
        let ready = postgres.is_ok() && (rabbitmq || !self.broker_required);
        let seen = Seen {
            ready,
            postgres: postgres.is_ok(),
            rabbitmq,
        };
        (seen, postgres.err().map(|err| err.to_string()))
    }
}

fn readiness(seen: Seen) -> Readiness {
    Readiness {
        postgres: word(seen.postgres),
        rabbitmq: word(seen.rabbitmq),
    }
}

/// `/readyz`'s state: the probe and what the last probe found.
#[derive(Debug, Clone)]
struct Readyz {
    probe: Probe,
    last: Arc<Mutex<Seen>>,
}

impl Readyz {
    /// Remembers `now` and logs it if it differs from the last probe.
    fn note(&self, now: Seen, postgres_error: Option<&str>) {
        let before = {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::replace(&mut *last, now)
        };
        let Some(transition) = transition(before, now) else {
            return;
        };
        let postgres = word(now.postgres);
        let rabbitmq = word(now.rabbitmq);
        // Only when Postgres did not answer.
        let error = postgres_error;
        match transition {
            Transition::Lost { changed } => {
                warn!(postgres, rabbitmq, %changed, error, "not ready")
            }
            Transition::Regained { changed } => info!(postgres, rabbitmq, %changed, "ready again"),
            Transition::Changed { changed } => {
                info!(ready = now.ready, postgres, rabbitmq, %changed, error, "readiness changed")
            }
        }
    }
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
    readyz.note(seen, postgres_error.as_deref());
    let status = if seen.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness(seen)))
}

pub fn router(probe: Probe) -> Router {
    let readyz_state = Readyz {
        probe,
        last: Arc::new(Mutex::new(Seen::START)),
    };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(crate::metrics::render))
        .with_state(readyz_state)
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

#[cfg(test)]
mod tests {
    use super::*;

    const UP: Seen = Seen::START;
    const NO_POSTGRES: Seen = Seen {
        ready: false,
        postgres: false,
        rabbitmq: true,
    };
    const NOTHING: Seen = Seen {
        ready: false,
        postgres: false,
        rabbitmq: false,
    };

    #[test]
    fn probes_that_find_what_the_last_one_found_log_nothing() {
        for seen in [UP, NO_POSTGRES, NOTHING] {
            assert_eq!(transition(seen, seen), None);
        }
    }

    #[test]
    fn losing_and_regaining_readiness_say_what_changed() {
        assert_eq!(
            transition(UP, NO_POSTGRES),
            Some(Transition::Lost {
                changed: "postgres ok → unavailable".into()
            })
        );
        assert_eq!(
            transition(NO_POSTGRES, UP),
            Some(Transition::Regained {
                changed: "postgres unavailable → ok".into()
            })
        );
        assert_eq!(
            transition(UP, NOTHING),
            Some(Transition::Lost {
                changed: "postgres ok → unavailable, rabbitmq ok → unavailable".into()
            })
        );
    }

    #[test]
    fn a_dependency_changing_while_readiness_stays_is_a_change_too() {
        // The API stays ready without RabbitMQ.
        let api_without_broker = Seen {
            ready: true,
            postgres: true,
            rabbitmq: false,
        };
        assert_eq!(
            transition(UP, api_without_broker),
            Some(Transition::Changed {
                changed: "rabbitmq ok → unavailable".into()
            })
        );
        assert_eq!(
            transition(NOTHING, NO_POSTGRES),
            Some(Transition::Changed {
                changed: "rabbitmq unavailable → ok".into()
            })
        );
    }
}
