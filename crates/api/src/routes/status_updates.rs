//! Status updates: set a user's status (the seed endpoint), poll one.

use axum::{Json, extract::State, http::StatusCode, response::Response};
use kurir_core::{JobKind, StatusText, StatusUpdateId, StatusUpdateState, ValidationErrors};
use kurir_store::{
    idempotency::Scope,
    status_updates::{self, NewStatusUpdate},
};
use serde::Deserialize;
use utoipa::ToSchema;

use super::{answer_seed_post, users::user_id};
use crate::trace::Trace;
use crate::{
    AppState,
    accept::{Accept, NewJob},
    dto::{AttemptList, StatusAccepted, StatusUpdateJson},
    error::{ApiError, ApiResult},
    extract::{Account, Id, JsonBody},
    idempotency::{IdempotencyKey, claim, fingerprint, kept_json},
    openapi::{
        problems::{Conflict, NotFound, ReadErrors, WriteErrors},
        schemas::SeedPostHeaders,
    },
    wait::PreferWait,
};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({"status": "Sedang sibuk dalam rapat."})))]
pub struct SetStatus {
    /// The new status text: 1–139 characters, not blank, no control characters.
    #[schema(value_type = String, required = true, min_length = 1, max_length = 139,
        pattern = "^(?=[\\s\\S]*\\S)[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    status: Option<String>,
}

/// `POST /v1/users/{id}/status`: 202 once stored; when the worker succeeds,
/// the user's `status` becomes the new text. With an `Idempotency-Key`, a
/// repeat of the same request gets the first response and stores nothing.
/// With `Prefer: wait=N`, 200 once it is `success` or `failed` within N
/// seconds (see [`crate::wait`]).
#[utoipa::path(
    post, path = "/v1/users/{id}/status", tag = "status-updates", operation_id = "set_status",
    summary = "Set a user's status (the seed endpoint)",
    description = "Stores the update (202) for a worker to apply; once it succeeds, the user's `status` is the new text. With `Prefer: wait=N`, the answer waits until it is `success` or `failed` (200) or N seconds pass (202). Status updates do not count against the intake limit.",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The user's id", pattern = "^[A-Za-z0-9_-]{1,64}$", example = "user123"), SeedPostHeaders),
    request_body(content = SetStatus, content_type = "application/json"),
    responses(
        (status = 202, description = "Stored; a worker applies it", body = StatusAccepted,
            headers(
                ("Location" = String, description = "`/v1/status-updates/{id}`"),
                ("Idempotent-Replayed" = String, description = "`true` when this repeats the first response to the `Idempotency-Key`"),
                ("Preference-Applied" = String, description = "`wait=N` when the request waited (at most N seconds)"),
            )),
        (status = 200, description = "With `Prefer: wait`: the update is over (`success` or `failed`)", body = StatusAccepted,
            headers(
                ("Location" = String, description = "`/v1/status-updates/{id}`"),
                ("Idempotent-Replayed" = String, description = "`true` when this repeats the first response to the `Idempotency-Key`"),
                ("Preference-Applied" = String, description = "`wait=N`: how long the request waited at most"),
            ),
            example = json!({"status_update_id": "0193b1f3-0a4d-7b1c-8e2f-3d4c5b6a7980", "status_update": "success"})),
        WriteErrors, NotFound, Conflict,
    ),
)]
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
#[utoipa::path(
    get, path = "/v1/status-updates/{id}", tag = "status-updates", operation_id = "get_status_update",
    summary = "Poll a status update",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The status update's id", format = "uuid")),
    responses(
        (status = 200, description = "The status update", body = StatusUpdateJson),
        ReadErrors,
    ),
)]
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
#[utoipa::path(
    get, path = "/v1/status-updates/{id}/attempts", tag = "status-updates", operation_id = "status_update_attempts",
    summary = "A status update's attempts, oldest first",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The status update's id", format = "uuid")),
    responses(
        (status = 200, description = "Every provider call", body = AttemptList),
        ReadErrors,
    ),
)]
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
