//! Status updates: set a user's status (the seed endpoint), poll one.

use axum::{Json, extract::State, http::StatusCode, response::Response};
use kurir_core::{JobKind, StatusText, StatusUpdateId, StatusUpdateState, ValidationErrors};
use kurir_store::{
    idempotency::Scope,
    status_updates::{self, NewStatusUpdate},
};
use serde::Deserialize;

use super::{answer_seed_post, users::user_id};
use crate::trace::Trace;
use crate::{
    AppState,
    accept::{Accept, NewJob},
    dto::{AttemptList, StatusAccepted, StatusUpdateJson},
    error::{ApiError, ApiResult},
    extract::{Account, Id, JsonBody},
    idempotency::{IdempotencyKey, claim, fingerprint, kept_json},
    wait::PreferWait,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetStatus {
    status: Option<String>,
}

/// `POST /v1/users/{id}/status`: 202 once stored; when the worker succeeds,
/// the user's `status` becomes the new text. With an `Idempotency-Key`, a
/// repeat of the same request gets the first response and stores nothing.
/// With `Prefer: wait=N`, 200 once it is `success` or `failed` within N
/// seconds (see [`crate::wait`]).
pub async fn set(
    State(state): State<AppState>,
    Account(account): Account,
    Id(user): Id,
    IdempotencyKey(key): IdempotencyKey,
    PreferWait(wait): PreferWait,
    Trace(trace): Trace,
    JsonBody(body): JsonBody<SetStatus>,
) -> ApiResult<Response> {
    let user = user_id(&user)?;
    let mut errors = ValidationErrors::default();
    let text = errors.require("status", body.status);
    let text = text.and_then(|raw| errors.check(StatusText::parse("status", &raw)));
    let Some(text) = text else {
        return Err(ApiError::validation(errors));
    };
    let id = StatusUpdateId::generate();
    let response = kept_json(
        StatusCode::ACCEPTED,
        Some(format!("/v1/status-updates/{id}")),
        &StatusAccepted {
            status_update_id: id.to_string(),
            status_update: StatusUpdateState::Queued.public(),
        },
    );
    let key = key.map(|key| {
        let print = fingerprint([
            &b"POST /v1/users/{id}/status"[..],
            user.as_str().as_bytes(),
            text.as_str().as_bytes(),
        ]);
        claim(account, Scope::Request, key, print, response.clone())
    });
    let update = NewStatusUpdate {
        id,
        account,
        user,
        status: text,
        waited: wait.is_some(),
        trace: Some(trace),
    };
    // Before the commit, so that a delivery faster than our answer is not missed.
    let hold = state.waiters.hold(wait, JobKind::StatusUpdate, id.0);
    // Committed with whatever else is being accepted now.
    let kept_key = key.as_ref().map(|claim| claim.key.clone());
    let stored = state
        .accepter
        .accept(Accept {
            job: NewJob::StatusUpdate(update),
            key,
        })
        .await?;
    let location = format!("/v1/status-updates/{id}");
    Ok(
        answer_seed_post(&state, stored, hold, response, kept_key, |status, now| {
            kept_json(
                status,
                Some(location),
                &StatusAccepted {
                    status_update_id: id.to_string(),
                    status_update: now.public(),
                },
            )
        })
        .await,
    )
}

fn status_update_id(raw: &str) -> ApiResult<StatusUpdateId> {
    StatusUpdateId::parse(raw).ok_or_else(|| ApiError::not_found("status update"))
}

/// `GET /v1/status-updates/{id}`.
pub async fn get(
    State(state): State<AppState>,
    Account(account): Account,
    Id(id): Id,
) -> ApiResult<Json<StatusUpdateJson>> {
    let id = status_update_id(&id)?;
    let update = state
        .db
        .run(async |client| status_updates::get(client, account, id).await)
        .await?;
    update
        .map(|update| Json(update.into()))
        .ok_or_else(|| ApiError::not_found("status update"))
}

/// `GET /v1/status-updates/{id}/attempts`: every provider call, oldest first.
pub async fn attempts(
    State(state): State<AppState>,
    Account(account): Account,
    Id(id): Id,
) -> ApiResult<Json<AttemptList>> {
    let id = status_update_id(&id)?;
    super::messages::history(
        &state,
        account,
        JobKind::StatusUpdate,
        id.0,
        "status update",
    )
    .await
}
