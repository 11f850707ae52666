//! `POST /v1/messages/batch`: up to [`MAX_BATCH`] sends in one request,
//! each item checked as a lone send would be (`super::messages`) and
//! answered on its own, all stored by the group commit's multi-row
//! statements.

use axum::{extract::State, http::StatusCode, response::Response};
use kurir_core::{
    AccountId, FieldError, MessageId, MessageStatus, TraceContext, UserId, ValidationErrors,
};
use kurir_store::{
    idempotency::{self as key_store, Scope},
    messages::NewMessage,
};
use serde::Deserialize;

use super::messages::{content, content_print};
use crate::{
    AppState,
    accept::{Accept, NewJob, Stored},
    dto::{Accepted, BatchResult, BatchResults, OUTSIDE_WINDOW},
    error::{ApiError, ApiResult},
    extract::{Account, JsonBody},
    idempotency::{
        HEADER, IdempotencyKey, canonical_json, claim, fingerprint, kept_json, key_problem, replay,
        respond,
    },
    openapi::{
        problems::{TooManyRequests, WriteErrors},
        schemas::{IdempotencyHeader, SendBatchDoc},
    },
    trace::Trace,
};

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
