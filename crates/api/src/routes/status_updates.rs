//! Status updates: set a user's status (the seed endpoint), poll one.

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, StatusCode},
};
use kurir_core::{JobKind, StatusText, StatusUpdateId, ValidationErrors};
use kurir_store::status_updates::{self, NewStatusUpdate};
use serde::Deserialize;

use super::{messages::location, users::user_id};
use crate::{
    AppState,
    accept::NewJob,
    dto::{AttemptList, StatusAccepted, StatusUpdateJson},
    error::{ApiError, ApiResult},
    extract::{Account, Id, JsonBody},
    wait::PreferWait,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetStatus {
    status: Option<String>,
}

/// `POST /v1/users/{id}/status`: 202 once stored; when the worker succeeds,
/// the user's `status` becomes the new text. With `Prefer: wait=N`, 200
/// once it is `success` or `failed` within N seconds (see [`crate::wait`]).
pub async fn set(
    State(state): State<AppState>,
    Account(account): Account,
    Id(user): Id,
    PreferWait(wait): PreferWait,
    JsonBody(body): JsonBody<SetStatus>,
) -> ApiResult<(StatusCode, HeaderMap, Json<StatusAccepted>)> {
    let user = user_id(&user)?;
    let mut errors = ValidationErrors::default();
    let text = errors.require("status", body.status);
    let text = text.and_then(|raw| errors.check(StatusText::parse("status", &raw)));
    let Some(text) = text else {
        return Err(ApiError::validation(errors));
    };
    let id = StatusUpdateId::generate();
    let update = NewStatusUpdate {
        id,
        account,
        user,
        status: text,
    };
    // Before the commit, so that a delivery faster than our answer is not missed.
    let hold = state.waiters.hold(wait, JobKind::StatusUpdate, id.0);
    // Committed with whatever else is being accepted now.
    state.accepter.accept(NewJob::StatusUpdate(update)).await?;
    let answer = hold.answer().await;
    Ok((
        answer.status(),
        answer.headers(location(format!("/v1/status-updates/{id}"))),
        Json(StatusAccepted {
            status_update_id: id.to_string(),
            status_update: answer.state.public(),
        }),
    ))
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
