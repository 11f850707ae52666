//! kurir's HTTP API: the axum router, bearer-key auth, handlers and
//! problem+json errors.
//!
//! A handler validates, stores the row in Postgres (the promise) and answers;
//! publishing to RabbitMQ happens right after, off the request path
//! ([`dispatch`]). The API never talks to a provider. No SQL here (that is
//! `kurir-store`), no AMQP (that is `kurir-bus`).

pub mod accept;
pub mod config;
pub mod dispatch;
pub mod dto;
pub mod error;
pub mod extract;
pub mod idempotency;
pub mod keycache;
pub mod limit;
pub mod metrics;
pub mod openapi;
pub mod ops;
pub mod routes;
pub mod server;
pub mod trace;
pub mod wait;
pub mod whatsapp;

use std::time::Duration;

use axum::{
    Router,
    extract::{DefaultBodyLimit, State},
    http::{StatusCode, header},
    middleware,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use kurir_bus::{Publisher, Topology};
use kurir_core::runtime::Tasks;
use kurir_store::Db;
use tokio_util::sync::CancellationToken;
use tower_http::{
    catch_panic::CatchPanicLayer,
    classify::ServerErrorsFailureClass,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::TraceLayer,
};
use tracing::info;

use crate::{dispatch::Dispatcher, error::ApiError};

pub use config::Config;

/// Shared by every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Postgres, with the deadline of every interaction.
    pub db: Db,
    pub publisher: Publisher,
    /// Group commit of accepted messages and status updates (it hands them
    /// to the dispatcher).
    pub accepter: accept::Accepter,
    /// Every task the API spawns: its publisher, dispatcher and accepts.
    pub tasks: Tasks,
    pub max_body_bytes: u64,
    pub timeouts: server::ClientTimeouts,
    /// API keys found valid a moment ago.
    pub keys: keycache::KeyCache,
    /// The per-account intake limit: this process's leases of each bucket.
    pub intake: limit::Intake,
    /// Requests holding their answer for `Prefer: wait`, and the one
    /// listener that wakes them.
    pub waiters: wait::Waiters,
    /// The WhatsApp receipts webhook's secrets and counts.
    pub whatsapp: std::sync::Arc<routes::webhooks::WhatsAppWebhook>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

impl AppState {
    /// Builds the pool and starts the publisher, the dispatcher and the
    /// waiters' listener (they connect in the background, so this works
    /// while dependencies are down).
    pub fn new(
        config: &Config,
        shutdown: &CancellationToken,
    ) -> Result<Self, kurir_store::SetupError> {
        let db = Db::connect_lazily(&config.database)?;
        let tasks = Tasks::new();
        let publisher = Publisher::start(
            config.bus.amqp_url.clone(),
            Topology::new(config.bus.queue_prefix.clone()),
            "kurir-api".into(),
            &tasks,
            shutdown.clone(),
        );
        tasks.spawn(kurir_bus::report_broker(
            vec![publisher.connected()],
            shutdown.clone(),
        ));
        let dispatcher = Dispatcher::start(db.clone(), publisher.clone(), &tasks, shutdown.clone());
        let accepter = accept::Accepter::start(db.clone(), dispatcher, &tasks);
        let waiters = wait::Waiters::start(db.clone(), &config.database, &tasks, shutdown.clone())?;
        let whatsapp =
            routes::webhooks::WhatsAppWebhook::new(&config.api.receipts, db.clone(), &tasks);
        kurir_core::telemetry::prometheus();
        tasks.spawn(metrics::report_pool(db.clone(), shutdown.clone()));
        Ok(Self {
            db: db.clone(),
            publisher,
            accepter,
            tasks,
            max_body_bytes: config.api.max_body_bytes,
            timeouts: server::ClientTimeouts::from(&config.api),
            keys: keycache::KeyCache::new(config.api.key_cache_ttl),
            intake: limit::Intake::new(db, config.api.intake.limit()),
            waiters,
            whatsapp,
        })
    }

    pub fn probe(&self) -> ops::Probe {
        ops::Probe {
            db: self.db.clone(),
            publisher: self.publisher.clone(),
        }
    }
}

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    let v1 = Router::new()
        .route(
            "/users",
            get(routes::users::list).post(routes::users::create),
        )
        .route("/users/{id}", get(routes::users::get))
        .route(
            "/users/{id}/messages",
            get(routes::messages::list).post(routes::messages::send),
        )
        .route("/users/{id}/status", post(routes::status_updates::set))
        .route("/messages/batch", post(routes::batch::send_batch))
        .route("/messages/{message_id}", get(routes::messages::get))
        .route(
            "/messages/{message_id}/attempts",
            get(routes::messages::attempts),
        )
        .route("/status-updates/{id}", get(routes::status_updates::get))
        .route(
            "/status-updates/{id}/attempts",
            get(routes::status_updates::attempts),
        )
        .route(
            "/webhooks/whatsapp",
            get(routes::webhooks::handshake)
                .post(routes::webhooks::receive)
                .layer(DefaultBodyLimit::max(
                    usize::try_from(routes::webhooks::MAX_BODY_BYTES.max(state.max_body_bytes))
                        .unwrap_or(usize::MAX),
                )),
        )
        .with_state(state.clone());
    let body_limit = usize::try_from(state.max_body_bytes).unwrap_or(usize::MAX);
    Router::new()
        .nest("/v1", v1)
        .merge(ops::router(state.probe()))
        .route("/openapi.json", get(openapi::serve))
        .fallback(|| async { ApiError::route_not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(middleware::from_fn(metrics::track))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::map_response_with_state(
            state.max_body_bytes,
            problems_only,
        ))
        .layer(CatchPanicLayer::custom(|_| {
            tracing::error!("a handler panicked");
            ApiError::internal().into_response()
        }))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(trace::span)
                .on_failure(log_failure),
        )
        .layer(middleware::from_fn(trace::context))
        // Every answer carries `x-request-id`: the client's, or a new UUID.
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

/// tower-http's failure log, for failures nobody else logs: an error answer
/// (a status) was logged where it was made, by [`ApiError`] or readiness,
/// at the level it deserves; here only a response that failed on its way
/// out is.
fn log_failure(failure: ServerErrorsFailureClass, latency: Duration, _span: &tracing::Span) {
    if let ServerErrorsFailureClass::Error(error) = failure {
        let latency_ms = latency.as_millis() as u64;
        tracing::error!(%error, latency_ms, "response failed");
    }
}

/// A safety net for the answers the framework makes itself (a rejection
/// from an extractor that is not ours): an error answer that is not JSON
/// becomes problem+json, by its status alone. Input errors are shaped where
/// they are found (the extractors, the router's fallbacks), so this reads
/// no body and leaves JSON answers and successes untouched.
async fn problems_only(State(body_limit): State<u64>, response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error())
        || extract::is_json(response.headers())
    {
        return response;
    }
    let problem = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::payload_too_large(body_limit),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::unsupported_media_type(),
        StatusCode::NOT_FOUND => ApiError::route_not_found(),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::method_not_allowed(),
        status if status.is_server_error() => {
            tracing::error!(%status, "the framework answered an error of its own");
            ApiError::internal()
        }
        status => ApiError::bad_request(status.canonical_reason().unwrap_or("bad request")),
    };
    let allow = response.headers().get(header::ALLOW).cloned();
    let mut problem = problem.into_response();
    *problem.status_mut() = status;
    if let Some(allow) = allow {
        problem.headers_mut().insert(header::ALLOW, allow);
    }
    problem
}

/// Serves the API on `listener` until `shutdown`, then drains; slow clients
/// are bounded by `state.timeouts` (see [`server`]).
pub async fn serve(
    state: AppState,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    info!(%addr, "api listening");
    let timeouts = state.timeouts;
    server::serve(app(state), listener, timeouts, shutdown).await
}

/// Why `kurir api` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A setting it cannot start with (the address is taken, a bad URL).
    #[error("{0}")]
    Config(String),
    /// The server failed while running.
    #[error("{0}")]
    Failed(String),
}

/// `kurir api`: bind `KURIR_API_ADDR` and serve.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RunError> {
    // Bind first: nothing is started (no broker connection) if the address is taken.
    let listener = tokio::net::TcpListener::bind(config.api.api_addr)
        .await
        .map_err(|err| {
            RunError::Config(format!(
                "cannot listen on KURIR_API_ADDR={}: {err}",
                config.api.api_addr
            ))
        })?;
    let state = AppState::new(&config, &shutdown).map_err(|err| {
        if err.is_setting() {
            RunError::Config(err.to_string())
        } else {
            RunError::Failed(err.to_string())
        }
    })?;
    let tasks = state.tasks.clone();
    let mut server = tasks.spawn(serve(state, listener, shutdown.clone()));
    let grace = config.shutdown.shutdown_grace;
    let served = tokio::select! {
        served = &mut server => served.map_err(|err| err.to_string()).and_then(|r| r.map_err(|e| e.to_string())),
        () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!("shutdown grace over; closing the connections still open");
            server.abort();
            Ok(())
        }
    };
    // Let every task end (the broker connection closes) before the runtime goes away.
    shutdown.cancel();
    if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
        tracing::warn!(
            left = tasks.len(),
            "tasks still running after the grace period; stopping them"
        );
        tasks.abort();
    }
    served.map_err(|err| RunError::Failed(format!("api server failed: {err}")))
}
