//! `/v1/webhooks/whatsapp`: Meta's webhook for the WhatsApp Cloud API.
//!
//! - `GET` is the subscription handshake: `hub.mode=subscribe` with the
//!   right `hub.verify_token` is answered `hub.challenge`, as plain text.
//! - `POST` carries notifications. No API key: each is verified by
//!   `X-Hub-Signature-256`, the HMAC-SHA256 of the raw body under the Meta
//!   app's secret, compared in constant time; a missing or wrong signature
//!   is 401 and changes nothing. Statuses are applied to messages (one
//!   statement for the whole POST), incoming messages recorded as their
//!   users' last inbound time; everything else is answered 200 and
//!   ignored, since Meta retries anything but a 2xx for days.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use axum::{
    Json,
    extract::{Request, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use hmac::{Hmac, Mac};
use kurir_core::runtime::{Asked, Grouped, Tasks};
use kurir_store::{
    Db, StoreError,
    receipts::{self, Receipt},
};
use serde_json::Value;
use sha2::Sha256;

use crate::{
    AppState,
    config::ReceiptArgs,
    error::{ApiError, ApiResult, Throttle},
    extract::read_body,
    openapi::problems::{
        BadRequest, Forbidden, PayloadTooLarge, RequestTimeout, Unauthorized, Unavailable,
    },
    whatsapp,
};

/// The header Meta signs with.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";

/// Largest notification accepted: Meta's payloads reach 3 MB.
pub const MAX_BODY_BYTES: u64 = 3 * 1024 * 1024;

/// The webhook's settings, its group commit, and what it has seen since
/// the process started.
pub struct WhatsAppWebhook {
    app_secret: Option<Vec<u8>>,
    verify_token: Option<String>,
    pub counts: Counts,
    /// Receipts of the POSTs arriving together, applied in one statement.
    applier: Option<Grouped<Vec<Receipt>, Result<Posted, StoreError>>>,
}

impl std::fmt::Debug for WhatsAppWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhatsAppWebhook")
            .field(
                "app_secret",
                &self.app_secret.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "verify_token",
                &self.verify_token.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

/// Most POSTs whose receipts share one statement. Meta posts one status
/// at a time, mostly: applying each alone cost Postgres about 330 µs a
/// receipt (a commit, and the statement's set-up), most of it shared once
/// they are grouped.
const GROUP: usize = 256;

/// What one POST's receipts came to.
#[derive(Debug, Clone, Copy, Default)]
struct Posted {
    matched: u64,
    changed: u64,
    unknown: u64,
}

/// Running totals (for `/metrics`, once it exists, and the log).
#[derive(Debug, Default)]
pub struct Counts {
    /// POSTs refused for their signature.
    pub rejected: AtomicU64,
    /// Receipts that named a message sent from their number.
    pub matched: AtomicU64,
    /// Messages a receipt changed.
    pub changed: AtomicU64,
    /// Receipts for messages kurir does not know (dropped).
    pub unknown: AtomicU64,
    /// Incoming messages recorded.
    pub inbound: AtomicU64,
    /// Notifications kurir has no use for.
    pub ignored: AtomicU64,
}

impl WhatsAppWebhook {
    /// Starts the group commit of receipts on `db` (a task in `tasks`).
    pub fn new(args: &ReceiptArgs, db: Db, tasks: &Tasks) -> Arc<Self> {
        let non_empty = |v: &Option<String>| v.as_ref().filter(|s| !s.is_empty()).cloned();
        let applier = Grouped::start(GROUP, 1, tasks, move |group| apply(db.clone(), group));
        Arc::new(Self {
            app_secret: non_empty(&args.whatsapp_app_secret).map(String::into_bytes),
            verify_token: non_empty(&args.whatsapp_verify_token),
            counts: Counts::default(),
            applier: Some(applier),
        })
    }

    /// This POST's receipts, applied with those of the POSTs arriving meanwhile.
    async fn apply(&self, receipts: Vec<Receipt>) -> Result<Posted, StoreError> {
        if receipts.is_empty() {
            return Ok(Posted::default());
        }
        let gone = || Err(StoreError::Unavailable("the api is stopping".into()));
        match &self.applier {
            Some(applier) => applier.ask(receipts, gone).await,
            None => gone(),
        }
    }

    /// Whether `signature` (the header's value) is `sha256=` and the hex
    /// HMAC-SHA256 of `body` under the app secret.
    fn verify(&self, signature: Option<&str>, body: &[u8]) -> Result<(), ApiError> {
        let Some(secret) = &self.app_secret else {
            return Err(not_configured());
        };
        let signature = signature
            .ok_or_else(|| ApiError::unauthorized("the X-Hub-Signature-256 header is missing"))?;
        let digest = signature
            .trim()
            .strip_prefix("sha256=")
            .and_then(|hex| hex::decode(hex).ok())
            .ok_or_else(|| {
                ApiError::unauthorized("X-Hub-Signature-256 must be sha256=<hex HMAC-SHA256>")
            })?;
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
            unreachable!("HMAC takes keys of any length");
        };
        mac.update(body);
        mac.verify_slice(&digest).map_err(|_| {
            ApiError::unauthorized(
                "the X-Hub-Signature-256 signature does not match the body (is KURIR_WHATSAPP_APP_SECRET the app's secret?)",
            )
        })
    }
}

/// Applies a group of POSTs' receipts in one statement and answers each
/// POST with its share.
async fn apply(db: Db, group: Vec<Asked<Vec<Receipt>, Result<Posted, StoreError>>>) {
    let all: Vec<Receipt> = group.iter().flat_map(|(r, _)| r.iter().cloned()).collect();
    let applied = db
        .run(async |client| receipts::apply(client, &all).await)
        .await;
    let applied = match applied {
        Ok(applied) => applied,
        Err(err) => {
            let share = err.shared();
            for (_, reply) in group {
                let _ = reply.send(Err(share()));
            }
            return;
        }
    };
    let mut matched = applied.matched.into_iter();
    for (posted, reply) in group {
        let mine: Vec<Option<uuid::Uuid>> = matched.by_ref().take(posted.len()).collect();
        let named: HashSet<uuid::Uuid> = mine.iter().flatten().copied().collect();
        let found = mine.iter().filter(|m| m.is_some()).count() as u64;
        let _ = reply.send(Ok(Posted {
            matched: found,
            changed: named.intersection(&applied.changed).count() as u64,
            unknown: posted.len() as u64 - found,
        }));
    }
}

fn not_configured() -> ApiError {
    ApiError::unauthorized(
        "receipts are not set up here: set KURIR_WHATSAPP_APP_SECRET to the Meta app's secret",
    )
}

/// The handshake's query (read with `form_urlencoded`: other parameters
/// are ignored, a repeated one counts once).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HandshakeQuery {
    /// `subscribe`.
    #[param(rename = "hub.mode", value_type = String, required = false, example = "subscribe")]
    pub mode: Option<String>,
    /// `KURIR_WHATSAPP_VERIFY_TOKEN`, as given to Meta.
    #[param(rename = "hub.verify_token", value_type = String, required = false, example = "demo-verify-token")]
    pub verify_token: Option<String>,
    /// Echoed back.
    #[param(rename = "hub.challenge", value_type = String, required = false, example = "1158201444")]
    pub challenge: Option<String>,
}

/// `GET /v1/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token=…&hub.challenge=…`
#[utoipa::path(
    get, path = "/v1/webhooks/whatsapp", tag = "webhooks", operation_id = "whatsapp_handshake",
    summary = "Meta's subscription handshake",
    description = "Answers `hub.challenge` as plain text when `hub.mode` is `subscribe` and `hub.verify_token` is `KURIR_WHATSAPP_VERIFY_TOKEN`. No API key. Other query parameters are ignored.",
    params(HandshakeQuery),
    responses(
        (status = 200, description = "The challenge, echoed", content_type = "text/plain", body = String, example = "1158201444"),
        Forbidden,
    ),
)]
pub async fn handshake(State(state): State<AppState>, request: Request) -> ApiResult<Response> {
    let query = request.uri().query().unwrap_or("");
    let param = |name: &str| {
        form_urlencoded::parse(query.as_bytes())
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
    };
    let Some(expected) = &state.whatsapp.verify_token else {
        return Err(ApiError::forbidden(
            "the handshake is not set up here: set KURIR_WHATSAPP_VERIFY_TOKEN to the token given to Meta",
        ));
    };
    if param("hub.mode").as_deref() != Some("subscribe") {
        return Err(ApiError::forbidden("hub.mode must be subscribe"));
    }
    let token = param("hub.verify_token").unwrap_or_default();
    if !constant_time_eq(token.as_bytes(), expected.as_bytes()) {
        return Err(ApiError::forbidden(
            "hub.verify_token is not this server's KURIR_WHATSAPP_VERIFY_TOKEN",
        ));
    }
    let challenge = param("hub.challenge").unwrap_or_default();
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        challenge,
    )
        .into_response())
}

/// `POST /v1/webhooks/whatsapp`: 200 with what was done, once applied.
#[utoipa::path(
    post, path = "/v1/webhooks/whatsapp", tag = "webhooks", operation_id = "whatsapp_receipts",
    summary = "Meta's status notifications (receipts) and incoming messages",
    description = "No API key: the body must be signed with the Meta app's secret (`KURIR_WHATSAPP_APP_SECRET`). Statuses are applied to messages (forward only), incoming messages open the user's 24-hour window, everything else is answered 200 and ignored. The body is read as JSON whatever its `Content-Type`; it may be up to 3 MiB.",
    params(
        ("X-Hub-Signature-256" = String, Header, description = "`sha256=` and the hex HMAC-SHA256 of the raw body under the app secret", pattern = "^sha256=[0-9A-Fa-f]{64}$"),
    ),
    request_body(content = Value, content_type = "application/json", description = "A WhatsApp Cloud API webhook notification (any JSON is taken: what kurir has no use for is counted as ignored)",
        example = json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp", "metadata": {"display_phone_number": "15550000000", "phone_number_id": "1234567890"},
            "contacts": [{"wa_id": "62123456789", "user_id": "ID.13491208655302741918"}],
            "statuses": [{"id": "wamid.HBgLNjIxMjM0NTY3ODkVAgARGBI", "status": "read", "timestamp": "1780000000", "recipient_id": "62123456789",
                "recipient_user_id": "ID.13491208655302741918", "biz_opaque_callback_data": "0193b1f2-7c1e-7d3a-9a57-6f0c2a1e4b10"}]}}]}]})),
    responses(
        (status = 200, description = "Applied: what the notification came to", body = Applied),
        BadRequest, Unauthorized, RequestTimeout, PayloadTooLarge, Unavailable,
    ),
)]
pub async fn receive(State(state): State<AppState>, request: Request) -> ApiResult<Json<Applied>> {
    let hook = Arc::clone(&state.whatsapp);
    let signature = signature(request.headers());
    if hook.app_secret.is_none() || signature.is_none() {
        // Refused before the body is read.
        return Err(refuse(
            &hook,
            match hook.app_secret {
                None => not_configured(),
                Some(_) => ApiError::unauthorized("the X-Hub-Signature-256 header is missing"),
            },
        ));
    }
    let limit = MAX_BODY_BYTES.max(state.max_body_bytes);
    let body = read_body(request, &state, limit).await?;
    hook.verify(signature.as_deref(), &body)
        .map_err(|err| refuse(&hook, err))?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|err| ApiError::malformed_json(format!("the body is not valid JSON: {err}")))?;
    let parsed = whatsapp::parse(&value, chrono::Utc::now());
    let count = parsed.receipts.len();
    let applied = hook.apply(parsed.receipts).await?;
    let inbound = match parsed.inbound.is_empty() {
        true => 0,
        false => {
            state
                .db
                .run(async |client| receipts::record_inbound(client, &parsed.inbound).await)
                .await?
        }
    };
    let counts = &hook.counts;
    counts.matched.fetch_add(applied.matched, Relaxed);
    counts.changed.fetch_add(applied.changed, Relaxed);
    counts.unknown.fetch_add(applied.unknown, Relaxed);
    counts.inbound.fetch_add(inbound, Relaxed);
    counts.ignored.fetch_add(parsed.ignored, Relaxed);
    let receipts =
        |result: &'static str| metrics::counter!("kurir_receipts_total", "result" => result);
    receipts("changed").increment(applied.changed);
    receipts("unchanged").increment(applied.matched.saturating_sub(applied.changed));
    receipts("unknown").increment(applied.unknown);
    tracing::debug!(
        receipts = count,
        matched = applied.matched,
        changed = applied.changed,
        unknown = applied.unknown,
        inbound,
        ignored = parsed.ignored,
        "whatsapp webhook applied"
    );
    Ok(Json(Applied {
        changed: applied.changed,
        ignored: parsed.ignored,
        inbound,
        matched: applied.matched,
        receipts: count as u64,
        unknown: applied.unknown,
    }))
}

/// What one notification came to (fields in the order they always had).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(examples(json!({"changed": 1, "ignored": 0, "inbound": 0, "matched": 1, "receipts": 1, "unknown": 0})))]
pub struct Applied {
    /// Messages a receipt changed.
    pub changed: u64,
    /// Notifications kurir has no use for.
    pub ignored: u64,
    /// Incoming messages recorded.
    pub inbound: u64,
    /// Receipts that named a message sent from their number.
    pub matched: u64,
    /// Receipts in the notification.
    pub receipts: u64,
    /// Receipts for messages kurir does not know (dropped).
    pub unknown: u64,
}

/// Refused receipts: a wrong app secret refuses every one, so the log says
/// so at once, though at most one line a minute.
static REFUSED_LOG: Throttle = Throttle::new(Duration::from_secs(60));

/// Counts a refused POST and logs it (throttled); answers `err`.
fn refuse(hook: &WhatsAppWebhook, err: ApiError) -> ApiError {
    hook.counts.rejected.fetch_add(1, Relaxed);
    metrics::counter!("kurir_webhook_refused_total").increment(1);
    if let Some(suppressed) = REFUSED_LOG.admit(Instant::now()) {
        tracing::warn!(
            reason = err.detail(),
            suppressed,
            "a WhatsApp webhook POST was refused (401); receipts are not being applied"
        );
    }
    err
}

fn signature(headers: &HeaderMap) -> Option<String> {
    headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Equality that takes as long whichever byte differs.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook(secret: Option<&str>) -> WhatsAppWebhook {
        WhatsAppWebhook {
            app_secret: secret.map(|s| s.as_bytes().to_vec()),
            verify_token: None,
            counts: Counts::default(),
            applier: None,
        }
    }

    #[test]
    fn a_signature_is_the_hex_hmac_of_the_exact_body() {
        // RFC 4231 test case 2.
        let hook = webhook(Some("Jefe"));
        let body = b"what do ya want for nothing?";
        let good = "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        assert!(hook.verify(Some(good), body).is_ok());
        assert!(
            hook.verify(
                Some(&good.to_uppercase().replace("SHA256=", "sha256=")),
                body
            )
            .is_ok()
        );
        for bad in [
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3844",
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            "sha256=",
            "sha256=zz",
            "sha1=5bdcc146bf60754e6a042426089575c75a003f08",
        ] {
            let err = hook.verify(Some(bad), body).unwrap_err();
            assert_eq!(err.status(), StatusCode::UNAUTHORIZED, "{bad}");
        }
        assert!(
            hook.verify(Some(good), b"what do ya want for nothing? ")
                .is_err()
        );
        assert!(hook.verify(None, body).is_err());
        assert!(webhook(None).verify(Some(good), body).is_err());
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
