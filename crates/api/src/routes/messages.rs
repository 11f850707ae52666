//! Messages: send (the seed endpoint), poll one, list a user's.

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
};
use kurir_core::{JobKind, MessageBody, MessageId, MessageStatus, ValidationErrors};
use kurir_store::{
    messages::{self, NewMessage},
    pipeline, users,
};
use serde::Deserialize;

use super::users::user_id;
use crate::{
    AppState,
    accept::NewJob,
    dispatch::detached,
    dto::{
        Accepted, AttemptList, Limit, MessageJson, MessageList, decode_cursor, encode_cursor,
        status_filter,
    },
    error::{ApiError, ApiResult},
    extract::{Account, Id, JsonBody, Params},
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    message: Option<String>,
}

pub(crate) fn location(path: String) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(&path) {
        headers.insert(header::LOCATION, location);
    }
    headers
}

/// `POST /v1/users/{id}/messages`: 202 once the message is stored; the
/// worker delivers it.
pub async fn send(
    State(state): State<AppState>,
    Account(account): Account,
    Id(user): Id,
    JsonBody(body): JsonBody<SendMessage>,
) -> ApiResult<(StatusCode, HeaderMap, Json<Accepted>)> {
    let user = user_id(&user)?;
    let mut errors = ValidationErrors::default();
    let text = errors.require("message", body.message);
    let text = text.and_then(|raw| errors.check(MessageBody::parse("message", &raw)));
    let Some(text) = text else {
        return Err(ApiError::validation(errors));
    };
    let id = MessageId::generate();
    let message = NewMessage {
        id,
        account,
        user,
        body: text,
    };
    // Committed with whatever else is being accepted now (one INSERT, one
    // commit); the accept runs on its own task so that a client hanging up
    // cannot split the commit from the hand-over to the dispatcher.
    let accepter = state.accepter.clone();
    detached(&state.tasks, async move {
        accepter.accept(NewJob::Message(message)).await
    })
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        location(format!("/v1/messages/{id}")),
        Json(Accepted {
            message_id: id.to_string(),
            message_status: MessageStatus::Queued.as_str(),
        }),
    ))
}

pub fn message_id(raw: &str) -> ApiResult<MessageId> {
    MessageId::parse(raw).ok_or_else(|| ApiError::not_found("message"))
}

/// `GET /v1/messages/{message_id}`: poll a message's delivery state.
pub async fn get(
    State(state): State<AppState>,
    Account(account): Account,
    Id(id): Id,
) -> ApiResult<Json<MessageJson>> {
    let id = message_id(&id)?;
    let message = state
        .db
        .run(async |client| messages::get(client, account, id).await)
        .await?;
    message
        .map(|message| Json(message.into()))
        .ok_or_else(|| ApiError::not_found("message"))
}

/// `GET /v1/messages/{message_id}/attempts`: every provider call, oldest first.
pub async fn attempts(
    State(state): State<AppState>,
    Account(account): Account,
    Id(id): Id,
) -> ApiResult<Json<AttemptList>> {
    let id = message_id(&id)?;
    history(&state, account, JobKind::Message, id.0, "message").await
}

/// The attempts of one of `account`'s messages or status updates; 404
/// naming `what` for an unknown id or another account's.
pub(crate) async fn history(
    state: &AppState,
    account: kurir_core::AccountId,
    kind: JobKind,
    id: uuid::Uuid,
    what: &str,
) -> ApiResult<Json<AttemptList>> {
    let attempts = state
        .db
        .run(async |client| pipeline::attempts_for(client, account, kind, id).await)
        .await?;
    attempts
        .map(|attempts| Json(attempts.into()))
        .ok_or_else(|| ApiError::not_found(what))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default, deserialize_with = "status_filter")]
    status: Option<MessageStatus>,
    #[serde(default)]
    limit: Limit,
    cursor: Option<String>,
}

const CURSOR_TAG: &str = "m";

/// `GET /v1/users/{id}/messages`: newest first, optionally of one status.
pub async fn list(
    State(state): State<AppState>,
    Account(account): Account,
    Id(user): Id,
    Params(query): Params<ListQuery>,
) -> ApiResult<Json<MessageList>> {
    let user = user_id(&user)?;
    let Limit(limit) = query.limit;
    let status = query.status;
    let before = match query.cursor.as_deref() {
        None | Some("") => None,
        Some(cursor) => Some(
            MessageId::parse(&decode_cursor(CURSOR_TAG, cursor)?)
                .ok_or_else(|| ApiError::field("cursor", "is not a cursor this list gave out"))?,
        ),
    };
    let (mut page, user_exists) = state
        .db
        .run(async |client| {
            let page =
                messages::list_for_user(client, account, &user, status, before, limit + 1).await?;
            // An empty page may mean "no such user": tell the two apart.
            let exists = !page.is_empty() || users::get(client, account, &user).await?.is_some();
            Ok((page, exists))
        })
        .await?;
    if !user_exists {
        return Err(ApiError::not_found("user"));
    }
    let next_cursor = if page.len() as i64 > limit {
        page.truncate(limit as usize);
        page.last()
            .map(|message| encode_cursor(CURSOR_TAG, &message.id.to_string()))
    } else {
        None
    };
    Ok(Json(MessageList {
        messages: page.into_iter().map(MessageJson::from).collect(),
        next_cursor,
    }))
}
