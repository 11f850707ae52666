//! Messages: send (the seed endpoint), poll one, list a user's.

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
};
use kurir_core::{
    AccountId, JobKind, MessageBody, MessageId, MessageStatus, UserId, ValidationErrors,
};
use kurir_store::{
    messages::{self, NewMessage},
    pipeline, users,
};
use serde::Deserialize;

use super::users::user_id;
use crate::{
    AppState,
    accept::NewJob,
    dto::{
        Accepted, AttemptList, BatchResult, BatchResults, Limit, MessageJson, MessageList,
        decode_cursor, encode_cursor, status_filter,
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
    let intake = state.intake.take(account, 1).await?;
    // Committed with whatever else is being accepted now (one INSERT, one
    // commit), then handed to the dispatcher.
    let stored = state.accepter.accept(NewJob::Message(message)).await;
    let limit_headers = intake.keep(usize::from(stored.is_ok()));
    stored?;
    let mut headers = location(format!("/v1/messages/{id}"));
    headers.extend(limit_headers);
    Ok((
        StatusCode::ACCEPTED,
        headers,
        Json(Accepted {
            message_id: id.to_string(),
            message_status: MessageStatus::Queued.as_str(),
        }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendBatch {
    messages: Option<Vec<serde_json::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchItem {
    user_id: Option<String>,
    message: Option<String>,
    idempotency_key: Option<String>,
}

/// Most items in one `POST /v1/messages/batch`.
pub const MAX_BATCH: usize = 1000;

/// One batch item, checked as a lone send would be; its problem if not.
fn batch_item(account: AccountId, item: serde_json::Value) -> ApiResult<NewMessage> {
    if !item.is_object() {
        return Err(ApiError::field("item", "must be a JSON object"));
    }
    let item: BatchItem = serde_path_to_error::deserialize(item).map_err(|err| {
        let field = err.path().to_string();
        ApiError::unparsable(&field, err.into_inner().to_string())
    })?;
    if item.idempotency_key.is_some() {
        return Err(ApiError::field(
            "idempotency_key",
            "is not supported yet; send the item without it",
        ));
    }
    let mut errors = ValidationErrors::default();
    let user = errors.require("user_id", item.user_id);
    let user = user.and_then(|raw| errors.check(UserId::parse("user_id", &raw)));
    let text = errors.require("message", item.message);
    let text = text.and_then(|raw| errors.check(MessageBody::parse("message", &raw)));
    let (Some(user), Some(text)) = (user, text) else {
        return Err(ApiError::validation(errors));
    };
    Ok(NewMessage {
        id: MessageId::generate(),
        account,
        user,
        body: text,
    })
}

/// `POST /v1/messages/batch`: up to [`MAX_BATCH`] messages, one result per
/// item, in order. Valid items are accepted even when others are invalid
/// or name users that do not exist; all are stored with the group commit
/// (multi-row statements). 503 only if nothing could be stored because
/// Postgres is away. The intake limit counts the valid items: they all fit
/// or the whole batch is 429 (see [`crate::limit`]).
pub async fn send_batch(
    State(state): State<AppState>,
    Account(account): Account,
    JsonBody(body): JsonBody<SendBatch>,
) -> ApiResult<(StatusCode, HeaderMap, Json<BatchResults>)> {
    let items = body
        .messages
        .ok_or_else(|| ApiError::field("messages", "is required"))?;
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(ApiError::field(
            "messages",
            format!("must have 1 to {MAX_BATCH} items, got {}", items.len()),
        ));
    }
    let mut results: Vec<Option<BatchResult>> = Vec::with_capacity(items.len());
    let mut jobs = Vec::new();
    let mut positions = Vec::new();
    for (position, item) in items.into_iter().enumerate() {
        match batch_item(account, item) {
            Ok(message) => {
                results.push(None);
                positions.push((position, message.id));
                jobs.push(NewJob::Message(message));
            }
            Err(err) => results.push(Some(BatchResult::Error {
                error: err.problem_json(),
            })),
        }
    }
    let intake = state.intake.take(account, jobs.len()).await?;
    let answers = state.accepter.accept_many(jobs).await;
    let limit_headers = intake.keep(answers.iter().filter(|a| a.is_ok()).count());
    let mut stored_any = false;
    let mut unavailable = None;
    for ((position, id), answer) in positions.into_iter().zip(answers) {
        results[position] = Some(match answer {
            Ok(()) => {
                stored_any = true;
                BatchResult::Accepted(Accepted {
                    message_id: id.to_string(),
                    message_status: MessageStatus::Queued.as_str(),
                })
            }
            Err(err) => {
                if err.status() == StatusCode::SERVICE_UNAVAILABLE {
                    unavailable.get_or_insert_with(|| err.clone());
                }
                BatchResult::Error {
                    error: err.problem_json(),
                }
            }
        });
    }
    if let (false, Some(err)) = (stored_any, unavailable) {
        return Err(err);
    }
    Ok((
        StatusCode::ACCEPTED,
        limit_headers,
        Json(BatchResults {
            results: results.into_iter().flatten().collect(),
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
