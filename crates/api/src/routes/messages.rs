//! Messages: send (the seed endpoint), poll one, list a user's.

use axum::{Json, extract::State, http::StatusCode, response::Response};
use kurir_core::{
    AccountId, Content, FieldError, JobKind, MessageBody, MessageId, MessageStatus, Template,
    TraceContext, UserId, ValidationErrors,
};
use kurir_store::{
    idempotency::{self as key_store, Scope},
    messages::{self, NewMessage},
    pipeline, users,
};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{answer_seed_post, users::user_id};
use crate::{
    AppState,
    accept::{Accept, NewJob, Stored},
    dto::{
        Accepted, AttemptList, BatchResult, BatchResults, Limit, MessageJson, MessageList,
        OUTSIDE_WINDOW, decode_cursor, encode_cursor, status_filter,
    },
    error::{ApiError, ApiResult},
    extract::{Account, Id, JsonBody, Params},
    idempotency::{
        HEADER, IdempotencyKey, canonical_json, claim, fingerprint, kept_json, key_problem, replay,
        respond,
    },
    openapi::{
        problems::{Conflict, ListErrors, NotFound, ReadErrors, TooManyRequests, WriteErrors},
        schemas::{IdempotencyHeader, SeedPostHeaders, SendBatchDoc, SendMessageDoc},
    },
    trace::Trace,
    wait::PreferWait,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    message: Option<String>,
    template: Option<serde_json::Value>,
}

/// A send's content: `message` (text) or `template`, exactly one.
fn content(
    errors: &mut ValidationErrors,
    message: Option<String>,
    template: Option<serde_json::Value>,
) -> Option<Content> {
    match (message, template) {
        (Some(_), Some(_)) => {
            errors.push(FieldError::new(
                "template",
                "send either message (text) or template, not both",
            ));
            None
        }
        (None, None) => {
            errors.push(FieldError::new(
                "message",
                "is required (or send a template instead)",
            ));
            None
        }
        (Some(text), None) => errors
            .check(MessageBody::parse("message", &text))
            .map(Content::Text),
        (None, Some(raw)) => match Template::parse("template", &raw) {
            Ok(template) => Some(Content::Template(template)),
            Err(more) => {
                errors.0.extend(more.0);
                None
            }
        },
    }
}

/// What a key's fingerprint takes of a message's content: a text as it
/// always did (keys kept before templates existed still match), a
/// template as canonical JSON.
fn content_print(content: &Content) -> Vec<Vec<u8>> {
    match content {
        Content::Text(body) => vec![body.as_str().as_bytes().to_vec()],
        Content::Template(template) => {
            vec![b"template".to_vec(), canonical_json(&template.to_json())]
        }
    }
}

/// The answer's `warning`, if any.
fn warning(stored: &Result<Stored, ApiError>) -> Option<&'static str> {
    matches!(
        stored,
        Ok(Stored::New {
            outside_window: true
        })
    )
    .then_some(OUTSIDE_WINDOW)
}

/// `POST /v1/users/{id}/messages`: 202 once the message is stored; the
/// worker delivers it. With an `Idempotency-Key`, a repeat of the same
/// request gets the first response and stores nothing. With
/// `Prefer: wait=N`, 200 once it is `sent` or `failed` within N seconds
/// (see [`crate::wait`]).
#[utoipa::path(
    post, path = "/v1/users/{id}/messages", tag = "messages", operation_id = "send_message",
    summary = "Send a message (the seed endpoint)",
    description = "Stores the message (202) for a worker to deliver. A text to a user whose 24-hour window is known to be closed is still accepted, with a `warning`. With `Prefer: wait=N`, the answer waits until the message is `sent` or `failed` (200) or N seconds pass (202).",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The user's id", pattern = "^[A-Za-z0-9_-]{1,64}$", example = "user123"), SeedPostHeaders),
    request_body(content = SendMessageDoc, content_type = "application/json",
        examples(
            ("text" = (summary = "A text", value = json!({"message": "Halo!"}))),
            ("template" = (summary = "A template with positional parameters", value = json!({"template": {"name": "order_update", "language": "id", "parameters": ["Budi", "#1234"]}}))),
            ("components" = (summary = "A template with Meta's components", value = json!({"template": {"name": "order_update", "language": "en_US", "components": [
                {"type": "body", "parameters": [{"type": "text", "text": "Ada"}, {"type": "text", "text": "#99"}]}]}}))),
            ("no variables" = (summary = "A template without variables", value = json!({"template": {"name": "hello_world", "language": "en_US"}}))),
        )),
    responses(
        (status = 202, description = "Stored; a worker delivers it", body = Accepted, headers(
                ("Location" = String, description = "`/v1/messages/{message_id}`"),
                ("Idempotent-Replayed" = String, description = "`true` when this repeats the first response to the `Idempotency-Key`"),
                ("Preference-Applied" = String, description = "`wait=N` when the request waited (at most N seconds)"),
                ("RateLimit" = String, description = "What is left of the intake limit: `\"intake\";r=<remaining>;t=<seconds until full>`"),
                ("RateLimit-Policy" = String, description = "The intake limit: `\"intake\";q=<burst>;w=<seconds to fill>`"),
            ),
            examples(
                ("queued" = (value = json!({"message_id": "0193b1f2-7c1e-7d3a-9a57-6f0c2a1e4b10", "message_status": "queued"}))),
                ("outside the window" = (value = json!({"message_id": "0193b1f2-7c1e-7d3a-9a57-6f0c2a1e4b10", "message_status": "queued", "warning": crate::dto::OUTSIDE_WINDOW}))),
            )),
        (status = 200, description = "With `Prefer: wait`: the message is over (`sent` or `failed`)", body = Accepted, headers(
                ("Location" = String, description = "`/v1/messages/{message_id}`"),
                ("Idempotent-Replayed" = String, description = "`true` when this repeats the first response to the `Idempotency-Key`"),
                ("Preference-Applied" = String, description = "`wait=N` when the request waited (at most N seconds)"),
                ("RateLimit" = String, description = "What is left of the intake limit: `\"intake\";r=<remaining>;t=<seconds until full>`"),
                ("RateLimit-Policy" = String, description = "The intake limit: `\"intake\";q=<burst>;w=<seconds to fill>`"),
            ),
            example = json!({"message_id": "0193b1f2-7c1e-7d3a-9a57-6f0c2a1e4b10", "message_status": "sent"})),
        WriteErrors, NotFound, Conflict, TooManyRequests,
    ),
)]
pub async fn send(
    State(state): State<AppState>,
    Account(account): Account,
    Id(user): Id,
    IdempotencyKey(key): IdempotencyKey,
    PreferWait(wait): PreferWait,
    Trace(trace): Trace,
    JsonBody(body): JsonBody<SendMessage>,
) -> ApiResult<Response> {
    let user = user_id(&user)?;
    let mut errors = ValidationErrors::default();
    let Some(content) = content(&mut errors, body.message, body.template) else {
        return Err(ApiError::validation(errors));
    };
    let id = MessageId::generate();
    let response = kept_json(
        StatusCode::ACCEPTED,
        Some(format!("/v1/messages/{id}")),
        &Accepted {
            message_id: id.to_string(),
            message_status: MessageStatus::Queued.as_str(),
            warning: None,
        },
    );
    let key = key.map(|key| {
        let mut parts = vec![
            b"POST /v1/users/{id}/messages".to_vec(),
            user.as_str().as_bytes().to_vec(),
        ];
        parts.extend(content_print(&content));
        let print = fingerprint(parts.iter().map(Vec::as_slice));
        claim(account, Scope::Request, key, print, response.clone())
    });
    let message = NewMessage {
        id,
        account,
        user,
        content,
        waited: wait.is_some(),
        trace: Some(trace),
    };
    // Before the commit, so that a delivery faster than our answer is not missed.
    let hold = state.waiters.hold(wait, JobKind::Message, id.0);
    let intake = state.intake.take(account, 1).await?;
    let kept_key = key.as_ref().map(|claim| claim.key.clone());
    // Committed with whatever else is being accepted now (one INSERT, one
    // commit), then handed to the dispatcher.
    let stored = state
        .accepter
        .accept(Accept {
            job: NewJob::Message(message),
            key,
        })
        .await;
    // Tokens pay for new rows only: a replay stores nothing.
    let limit_headers = intake.keep(usize::from(matches!(stored, Ok(Stored::New { .. }))));
    let location = format!("/v1/messages/{id}");
    let warning = warning(&stored);
    let mut answer = answer_seed_post(&state, stored?, hold, response, kept_key, |status, now| {
        kept_json(
            status,
            Some(location),
            &Accepted {
                message_id: id.to_string(),
                message_status: now.public(),
                warning,
            },
        )
    })
    .await;
    answer.headers_mut().extend(limit_headers);
    Ok(answer)
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
    template: Option<serde_json::Value>,
    idempotency_key: Option<String>,
}

/// Most items in one `POST /v1/messages/batch`.
pub const MAX_BATCH: usize = 1000;

/// One batch item, checked as a lone send would be; the message and its
/// key's claim (its own `idempotency_key`, else one derived from the
/// batch's `Idempotency-Key` and the item's position), or its problem.
fn batch_item(
    account: AccountId,
    batch_key: Option<&str>,
    position: usize,
    item: serde_json::Value,
    trace: TraceContext,
) -> ApiResult<Accept> {
    if !item.is_object() {
        return Err(ApiError::field("item", "must be a JSON object"));
    }
    let item: BatchItem = serde_path_to_error::deserialize(item).map_err(|err| {
        let field = err.path().to_string();
        ApiError::unparsable(&field, err.into_inner().to_string())
    })?;
    let mut errors = ValidationErrors::default();
    let user = errors.require("user_id", item.user_id);
    let user = user.and_then(|raw| errors.check(UserId::parse("user_id", &raw)));
    let content = content(&mut errors, item.message, item.template);
    let key = match item.idempotency_key {
        Some(raw) => match key_problem(&raw) {
            None => Some((Scope::Item, raw)),
            Some(problem) => {
                errors.push(FieldError::new("idempotency_key", problem));
                None
            }
        },
        None => batch_key.map(|key| (Scope::BatchItem, format!("{key}#{position}"))),
    };
    let (Some(user), Some(content)) = (user, content) else {
        return Err(ApiError::validation(errors));
    };
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let id = MessageId::generate();
    let key = key.map(|(scope, key)| {
        let mut parts = vec![b"batch item".to_vec(), user.as_str().as_bytes().to_vec()];
        parts.extend(content_print(&content));
        let print = fingerprint(parts.iter().map(Vec::as_slice));
        let response = kept_json(
            StatusCode::ACCEPTED,
            None,
            &Accepted {
                message_id: id.to_string(),
                message_status: MessageStatus::Queued.as_str(),
                warning: None,
            },
        );
        claim(account, scope, key, print, response)
    });
    Ok(Accept {
        job: NewJob::Message(NewMessage {
            id,
            account,
            user,
            content,
            waited: false,
            trace: Some(trace),
        }),
        key,
    })
}

/// `POST /v1/messages/batch`: up to [`MAX_BATCH`] messages, one result per
/// item, in order. Valid items are accepted even when others are invalid
/// or name users that do not exist; all are stored with the group commit
/// (multi-row statements). 503 only if nothing could be stored because
/// Postgres is away. The intake limit counts the valid items: they all fit
/// or the whole batch is 429 (see [`crate::limit`]); items that store
/// nothing (replays, unknown users) give their tokens back.
///
/// Keys: an item's `idempotency_key` makes that item idempotent on its
/// own (a repeat gets the item's first result); an `Idempotency-Key` header
/// makes the whole batch so: a repeat gets the first response, and each
/// item without a key of its own is keyed by the header's and its position,
/// so a repeat after a lost answer stores none of them twice.
#[utoipa::path(
    post, path = "/v1/messages/batch", tag = "messages", operation_id = "send_batch",
    summary = "Send up to 1,000 messages",
    description = "One result per item, in order: accepted, or the problem a lone send would have got. Valid items are accepted even when others are invalid or name unknown users; 503 only if Postgres could store none. The intake limit counts the valid items: all of them fit, or the whole batch is 429. Does not wait (`Prefer` is ignored).",
    security(("bearer" = [])),
    params(IdempotencyHeader),
    request_body(content = SendBatchDoc, content_type = "application/json",
        example = json!({"messages": [
            {"user_id": "user123", "message": "Halo!", "idempotency_key": "order-41"},
            {"user_id": "user456", "template": {"name": "order_update", "language": "id", "parameters": ["Sari", "#1235"]}}
        ]})),
    responses(
        (status = 202, description = "One result per item, in order", body = BatchResults,
            headers(
                ("Idempotent-Replayed" = String, description = "`true` when this repeats the first response to the `Idempotency-Key`"),
                ("RateLimit" = String, description = "What is left of the intake limit: `\"intake\";r=<remaining>;t=<seconds until full>`"),
                ("RateLimit-Policy" = String, description = "The intake limit: `\"intake\";q=<burst>;w=<seconds to fill>`"),
            ),
            example = json!({"results": [
                {"message_id": "0193b1f2-7c1e-7d3a-9a57-6f0c2a1e4b10", "message_status": "queued"},
                {"error": {"type": "https://kurir.dev/problems/not-found", "title": "Not found", "status": 404, "detail": "no such user"}}
            ]})),
        WriteErrors, TooManyRequests,
    ),
)]
pub async fn send_batch(
    State(state): State<AppState>,
    Account(account): Account,
    IdempotencyKey(batch_key): IdempotencyKey,
    Trace(trace): Trace,
    JsonBody(body): JsonBody<SendBatch>,
) -> ApiResult<Response> {
    let items = body
        .messages
        .ok_or_else(|| ApiError::field("messages", "is required"))?;
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(ApiError::field(
            "messages",
            format!("must have 1 to {MAX_BATCH} items, got {}", items.len()),
        ));
    }
    let batch_claim = match &batch_key {
        None => None,
        Some(key) => {
            let print = fingerprint([
                &b"POST /v1/messages/batch"[..],
                &canonical_json(&serde_json::Value::Array(items.clone())),
            ]);
            let claim = claim(
                account,
                Scope::Request,
                key.clone(),
                print,
                kept_json(StatusCode::ACCEPTED, None, &()),
            );
            let first = state
                .db
                .run(async |client| key_store::lookup(client, &claim.key).await)
                .await?;
            if let Some(first) = first {
                return Ok(respond(replay(HEADER, first, &claim.fingerprint)?, true));
            }
            Some(claim)
        }
    };
    let mut results: Vec<Option<BatchResult>> = Vec::with_capacity(items.len());
    let mut accepts = Vec::new();
    let mut positions = Vec::new();
    for (position, item) in items.into_iter().enumerate() {
        match batch_item(account, batch_key.as_deref(), position, item, trace) {
            Ok(accept) => {
                results.push(None);
                positions.push((position, accept.job.id()));
                accepts.push(accept);
            }
            Err(err) => results.push(Some(BatchResult::Error {
                error: err.problem_json(),
            })),
        }
    }
    let intake = state.intake.take(account, accepts.len()).await?;
    let answers = state.accepter.accept_many(accepts).await;
    let limit_headers = intake.keep(
        answers
            .iter()
            .filter(|a| matches!(a, Ok(Stored::New { .. })))
            .count(),
    );
    let mut stored_any = false;
    let mut unavailable = None;
    for ((position, id), answer) in positions.into_iter().zip(answers) {
        results[position] = Some(match answer {
            Ok(Stored::New { outside_window }) => {
                stored_any = true;
                BatchResult::Accepted(Accepted {
                    message_id: id.to_string(),
                    message_status: MessageStatus::Queued.as_str(),
                    warning: outside_window.then_some(OUTSIDE_WINDOW),
                })
            }
            Ok(Stored::Replay(first)) => {
                stored_any = true;
                match serde_json::from_slice(&first.body) {
                    Ok(result) => BatchResult::Replayed(result),
                    Err(err) => {
                        tracing::error!(error = %err, "a kept batch item result is not JSON");
                        BatchResult::Error {
                            error: ApiError::internal().problem_json(),
                        }
                    }
                }
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
    if let (false, Some(err)) = (stored_any, unavailable.clone()) {
        return Err(err);
    }
    let response = kept_json(
        StatusCode::ACCEPTED,
        None,
        &BatchResults {
            results: results.into_iter().flatten().collect(),
        },
    );
    // The batch's key keeps its response once every item has its final
    // answer; an item Postgres could not take would be a different answer
    // on a repeat, so such a response is not kept (the items' own keys
    // still make the repeat safe).
    if let (Some(mut claim), None) = (batch_claim, unavailable) {
        claim.response = response.clone();
        let kept = state
            .db
            .run(async |client| key_store::claim_many(client, std::slice::from_ref(&claim)).await)
            .await;
        if let Err(err) = kept {
            tracing::warn!(error = %err, "could not keep a batch's response under its key");
        }
    }
    let mut response = respond(response, false);
    response.headers_mut().extend(limit_headers);
    Ok(response)
}

pub fn message_id(raw: &str) -> ApiResult<MessageId> {
    MessageId::parse(raw).ok_or_else(|| ApiError::not_found("message"))
}

/// `GET /v1/messages/{message_id}`: poll a message's delivery state.
#[utoipa::path(
    get, path = "/v1/messages/{message_id}", tag = "messages", operation_id = "get_message",
    summary = "Poll a message",
    security(("bearer" = [])),
    params(("message_id" = String, Path, description = "The message's id", format = "uuid")),
    responses(
        (status = 200, description = "The message", body = MessageJson),
        ReadErrors,
    ),
)]
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
#[utoipa::path(
    get, path = "/v1/messages/{message_id}/attempts", tag = "messages", operation_id = "message_attempts",
    summary = "A message's delivery attempts, oldest first",
    security(("bearer" = [])),
    params(("message_id" = String, Path, description = "The message's id", format = "uuid")),
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

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only messages in this state (empty: any).
    #[serde(default, deserialize_with = "status_filter")]
    #[param(value_type = String, required = false, pattern = "^(|queued|sending|sent|delivered|read|failed)$")]
    status: Option<MessageStatus>,
    /// Page size, 1 to 1000 (default 100).
    #[serde(default)]
    #[param(value_type = i64, required = false, minimum = 1, maximum = 1000)]
    limit: Limit,
    /// The `next_cursor` of the previous page (empty: the first page).
    #[param(value_type = String, required = false)]
    cursor: Option<String>,
}

const CURSOR_TAG: &str = "m";

/// `GET /v1/users/{id}/messages`: newest first, optionally of one status.
#[utoipa::path(
    get, path = "/v1/users/{id}/messages", tag = "messages", operation_id = "list_messages",
    summary = "A user's messages, newest first",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The user's id", pattern = "^[A-Za-z0-9_-]{1,64}$", example = "user123"),
        ListQuery,
    ),
    responses(
        (status = 200, description = "A page of messages", body = MessageList),
        ListErrors, NotFound,
    ),
)]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nul_in_a_template_is_a_field_error_and_a_whole_index_is_a_number() {
        let raw = serde_json::json!({"name": "order_update", "language": "en_US", "components": [
            {"type": "header", "parameters": [{"type": "image", "image": {"link": "https://x/\u{0}"}}]}]});
        let mut errors = ValidationErrors::default();
        assert!(content(&mut errors, None, Some(raw)).is_none());
        let fields: Vec<_> = errors.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["template.components[0].parameters[0].image.link"]);

        let raw = serde_json::json!({"name": "order_update", "language": "en_US", "components": [
            {"type": "button", "sub_type": "url", "index": 9.0}]});
        let mut errors = ValidationErrors::default();
        let Some(Content::Template(template)) = content(&mut errors, None, Some(raw)) else {
            panic!("a button index of 9.0 is 9: {errors:?}");
        };
        assert_eq!(template.components()[0]["index"], serde_json::json!(9));

        let raw = serde_json::json!({"name": "hello_world", "language": "en_US"});
        let mut errors = ValidationErrors::default();
        assert!(content(&mut errors, None, Some(raw)).is_some());
        assert!(errors.is_empty());
    }
}
