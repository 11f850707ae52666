//! kurir's HTTP API: the axum router, bearer-key auth, handlers and
//! problem+json errors.
//!
//! A handler validates, stores the row in Postgres (the promise) and answers;
//! publishing to RabbitMQ happens right after, off the request path
//! ([`dispatch`]). The API never talks to a provider. No SQL here (that is
//! `kurir-store`), no AMQP (that is `kurir-bus`).

pub mod dispatch;
pub mod dto;
pub mod error;
pub mod extract;
pub mod ops;
pub mod routes;
pub mod server;

use std::time::Duration;

use axum::{
    Router,
    extract::{DefaultBodyLimit, Request},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use kurir_bus::{Publisher, Topology};
use kurir_core::{
    config::{ApiArgs, BusArgs, DatabaseArgs, PipelineArgs},
    runtime::Tasks,
};
use kurir_store::PgPool;
use tokio_util::sync::CancellationToken;
use tower_http::{catch_panic::CatchPanicLayer, trace::TraceLayer};
use tracing::info;

use crate::{dispatch::Dispatcher, error::ApiError};

/// Everything `kurir api` reads.
#[derive(Debug, Clone)]
pub struct Config {
    pub database: DatabaseArgs,
    pub bus: BusArgs,
    pub pipeline: PipelineArgs,
    pub api: ApiArgs,
}

/// Shared by every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub publisher: Publisher,
    pub dispatcher: Dispatcher,
    /// Every task the API spawns: its publisher, dispatcher and accepts.
    pub tasks: Tasks,
    pub db_timeout: Duration,
    pub publish_lease: Duration,
    pub max_body_bytes: u64,
    pub timeouts: server::ClientTimeouts,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

impl AppState {
    /// Builds the pool and starts the publisher and dispatcher (they connect
    /// in the background, so this works while dependencies are down).
    pub fn new(config: &Config, shutdown: &CancellationToken) -> Result<Self, String> {
        let pool = kurir_store::pool(&config.database)?;
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
        let dispatcher = Dispatcher::start(
            pool.clone(),
            publisher.clone(),
            config.database.db_timeout,
            &tasks,
            shutdown.clone(),
        );
        Ok(Self {
            pool,
            publisher,
            dispatcher,
            tasks,
            db_timeout: config.database.db_timeout,
            publish_lease: config.pipeline.publish_lease,
            max_body_bytes: config.api.max_body_bytes,
            timeouts: server::ClientTimeouts::from(&config.api),
        })
    }

    pub fn probe(&self) -> ops::Probe {
        ops::Probe {
            pool: self.pool.clone(),
            publisher: self.publisher.clone(),
            timeout: self.db_timeout,
            broker_required: false,
            consuming: None,
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
        .route("/messages/{message_id}", get(routes::messages::get))
        .route("/status-updates/{id}", get(routes::status_updates::get))
        .with_state(state.clone());
    let body_limit = usize::try_from(state.max_body_bytes).unwrap_or(usize::MAX);
    Router::new()
        .nest("/v1", v1)
        .merge(ops::router(state.probe()))
        .fallback(|| async { ApiError::route_not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(problems_only))
        .layer(CatchPanicLayer::custom(|_| {
            tracing::error!("a handler panicked");
            ApiError::internal().into_response()
        }))
        .layer(TraceLayer::new_for_http())
}

/// Any error response that is not JSON (a framework rejection) is turned
/// into problem+json, keeping its status and its text as the detail.
async fn problems_only(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    // Our own answers are JSON already (problems, and /readyz's 503 body).
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| {
            v.as_bytes().starts_with(b"application/") && v.as_bytes().ends_with(b"json")
        });
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let detail = String::from_utf8_lossy(&text).trim().to_owned();
    let mut problem = match parts.status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::payload_too_large(0),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::unsupported_media_type(),
        StatusCode::NOT_FOUND => ApiError::route_not_found(),
        status if status.is_server_error() => ApiError::internal(),
        _ => ApiError::bad_request(if detail.is_empty() {
            "bad request".to_owned()
        } else {
            detail
        }),
    }
    .into_response();
    *problem.status_mut() = parts.status;
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
    let state = AppState::new(&config, &shutdown).map_err(RunError::Config)?;
    let tasks = state.tasks.clone();
    let mut server = tasks.spawn(serve(state, listener, shutdown.clone()));
    let grace = config.pipeline.shutdown_grace;
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
