//! HTTP handlers, one module per resource.

pub mod batch;
pub mod messages;
pub mod status_updates;
pub mod users;
pub mod webhooks;

use axum::{http::HeaderMap, response::Response};
use kurir_core::JobState;
use kurir_store::idempotency::{self as key_store, Key};

use crate::{
    AppState,
    accept::Stored,
    idempotency::{Kept, respond},
    wait::Hold,
};

/// The answer to a seed POST (a send, a status update) once its row is
/// stored or its key replayed.
///
/// - a replay is the first response, and does not wait (the first did);
/// - a new row is answered `first` at once, or after `Prefer: wait` with its
///   state then (`answer_for`): 200 if final, else 202. A key keeps that
///   waited answer (one UPDATE, only for a keyed request that waited), so
///   a repeat gets exactly what the first request got.
pub(crate) async fn answer_seed_post(
    state: &AppState,
    stored: Stored,
    hold: Hold,
    first: Kept,
    key: Option<Key>,
    answer_for: impl FnOnce(axum::http::StatusCode, JobState) -> Kept,
) -> Response {
    match stored {
        Stored::Replay(kept) => respond(kept, true),
        Stored::New { .. } => {
            let answer = hold.answer().await;
            let kept = answer_for(answer.status(), answer.state);
            if kept != first
                && let Some(key) = key
            {
                let keeping = state
                    .db
                    .run(async |client| key_store::set_response(client, &key, &kept).await)
                    .await;
                if let Err(err) = keeping {
                    tracing::warn!(error = %err, "could not keep a waited answer under its key");
                }
            }
            let mut response = respond(kept, false);
            response
                .headers_mut()
                .extend(answer.headers(HeaderMap::new()));
            response
        }
    }
}
