//! Messages: send (the seed endpoint), poll one, list a user's.

use axum::{Json, extract::State, http::StatusCode, response::Response};
use kurir_core::{
    Content, FieldError, JobKind, MessageBody, MessageId, MessageStatus, Template, ValidationErrors,
};
use kurir_store::{
    idempotency::Scope,
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
        Accepted, AttemptList, Limit, MessageJson, MessageList, OUTSIDE_WINDOW, decode_cursor,
        encode_cursor, status_filter,
    },
    error::{ApiError, ApiResult},
    extract::{Account, Id, JsonBody, Params},
    idempotency::{IdempotencyKey, canonical_json, claim, fingerprint, kept_json},
    openapi::{
        problems::{Conflict, ListErrors, NotFound, ReadErrors, TooManyRequests, WriteErrors},
        schemas::{SeedPostHeaders, SendMessageDoc},
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
pub(super) fn content(
    errors: &mut ValidationErrors,
    message: Option<String>,
    template: Option<serde_json::Value>,
) -> Option<Content> {
    match (message, template) {
        (Some(_), Some(_)) => {
            errors.push(FieldError::new(
                "template",
                "cannot be sent together with message: send one of them",
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
pub(super) fn content_print(content: &Content) -> Vec<Vec<u8>> {
    match content {
        Content::Text(body) => vec![body.as_str().as_bytes().to_vec()],
        Content::Template(template) => {
            vec![b"template".to_vec(), canonical_json(&template.to_json())]
        }
    }
}

/// The answer's `warning`, if any.
pub(super) fn warning(stored: &Result<Stored, ApiError>) -> Option<&'static str> {
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
