//! Signed delivery receipts (`delivered`, then `read`) POSTed in the WhatsApp
//! Cloud API webhook shape, in background tasks that stop on shutdown.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// Header carrying the receipt signature.
pub const SIGNATURE_HEADER: &str = "X-Hub-Signature-256";

/// The `entry[].id` (WhatsApp Business Account id) receipts carry.
pub const SANDBOX_WABA_ID: &str = "100000000000001";

/// The `metadata.display_phone_number` receipts carry.
pub const SANDBOX_DISPLAY_PHONE_NUMBER: &str = "15550000000";

/// Retries after a failed receipt POST (so 1 + this many attempts).
const RETRIES: u32 = 3;
/// First backoff; doubles per retry.
const BACKOFF: Duration = Duration::from_millis(100);
/// Per-POST timeout.
const POST_TIMEOUT: Duration = Duration::from_secs(5);
/// Receipt POSTs in flight at once: a slow endpoint slows receipts down
/// (they wait here) instead of piling up requests on it.
const IN_FLIGHT: usize = 64;

/// `sha256=<lowercase hex HMAC-SHA256(secret, body)>`, the `X-Hub-Signature-256` value.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        unreachable!("HMAC accepts keys of any length");
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A message the sandbox accepted, for which receipts are due.
#[derive(Debug, Clone)]
pub(crate) struct Accepted {
    pub wamid: String,
    pub phone_number_id: String,
    pub recipient_id: String,
    pub callback_data: Option<String>,
}

/// The business-scoped user id (BSUID) the sandbox gives the user with
/// WhatsApp id `wa_id`: like Meta's, a country code, a dot and digits, and
/// the same for the same user every time.
pub fn business_scoped_id(wa_id: &str) -> String {
    let digest = Sha256::digest(format!("kurir-sandbox-user:{wa_id}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    format!("US.{:020}", u64::from_be_bytes(bytes))
}

/// The webhook body for one status of one message, as Meta sends it since
/// April 2026: `metadata`, a `contacts` array with the user's `wa_id` and
/// business-scoped `user_id`, and the status with `recipient_id`,
/// `recipient_user_id` and (for `sent`/`delivered`) per-message `pricing`;
/// no `conversation` (gone with per-message pricing) and no `profile`
/// (real status notifications carry none).
pub(crate) fn status_webhook(accepted: &Accepted, status: &str, unix_secs: i64) -> Value {
    let user_id = business_scoped_id(&accepted.recipient_id);
    let mut entry = json!({
        "id": accepted.wamid,
        "status": status,
        "timestamp": unix_secs.to_string(),
        "recipient_id": accepted.recipient_id,
        "recipient_user_id": user_id,
    });
    if let Some(obj) = entry.as_object_mut() {
        if let Some(data) = &accepted.callback_data {
            obj.insert(
                "biz_opaque_callback_data".into(),
                Value::String(data.clone()),
            );
        }
        if status != "read" {
            obj.insert(
                "pricing".into(),
                json!({"billable": true, "pricing_model": "PMP",
                       "category": "utility", "type": "regular"}),
            );
        }
    }
    json!({
        "object": "whatsapp_business_account",
        "entry": [{
            "id": SANDBOX_WABA_ID,
            "changes": [{
                "field": "messages",
                "value": {
                    "messaging_product": "whatsapp",
                    "metadata": {
                        "display_phone_number": SANDBOX_DISPLAY_PHONE_NUMBER,
                        "phone_number_id": accepted.phone_number_id,
                    },
                    "contacts": [{"wa_id": accepted.recipient_id, "user_id": user_id}],
                    "statuses": [entry],
                },
            }],
        }],
    })
}

/// Sends receipts for accepted messages.
#[derive(Debug)]
pub(crate) struct Receipts {
    client: reqwest::Client,
    url: String,
    secret: Vec<u8>,
    delay: Duration,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    slots: Arc<tokio::sync::Semaphore>,
}

impl Receipts {
    pub(crate) fn new(
        url: String,
        secret: String,
        delay: Duration,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(POST_TIMEOUT)
            .build()
            .map_err(std::io::Error::other)?;
        Ok(Self {
            client,
            url,
            secret: secret.into_bytes(),
            delay,
            tracker: TaskTracker::new(),
            shutdown,
            slots: Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT)),
        })
    }

    /// Schedules `delivered` then `read` for `accepted`; returns at once.
    pub(crate) fn dispatch(self: &Arc<Self>, accepted: Accepted) {
        let this = Arc::clone(self);
        self.tracker.spawn(async move {
            tokio::select! {
                () = this.shutdown.cancelled() => {
                    debug!(wamid = %accepted.wamid, "shutdown: receipts dropped");
                }
                () = this.deliver(&accepted) => {}
            }
        });
    }

    /// Waits for in-flight receipt tasks (they end promptly once shutdown is cancelled).
    pub(crate) async fn close(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }

    async fn deliver(&self, accepted: &Accepted) {
        for status in ["delivered", "read"] {
            tokio::time::sleep(self.delay).await;
            let body = status_webhook(accepted, status, chrono::Utc::now().timestamp());
            let bytes = match serde_json::to_vec(&body) {
                Ok(b) => b,
                Err(e) => {
                    warn!(error = %e, "receipt body could not be encoded");
                    continue;
                }
            };
            self.post_with_retry(&accepted.wamid, status, bytes).await;
        }
    }

    async fn post_with_retry(&self, wamid: &str, status: &str, body: Vec<u8>) {
        let Ok(_slot) = self.slots.acquire().await else {
            return;
        };
        let sig = signature(&self.secret, &body);
        let mut backoff = BACKOFF;
        for attempt in 1..=RETRIES + 1 {
            let result = self
                .client
                .post(&self.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(SIGNATURE_HEADER, &sig)
                .body(body.clone())
                .send()
                .await;
            let problem = match result {
                Ok(resp) if resp.status().is_success() => {
                    debug!(%wamid, status, attempt, "receipt delivered");
                    return;
                }
                Ok(resp) => format!("HTTP {}", resp.status()),
                Err(e) => e.to_string(),
            };
            if attempt > RETRIES {
                warn!(%wamid, status, attempt, %problem, url = %self.url, "receipt dropped");
                return;
            }
            debug!(%wamid, status, attempt, %problem, "receipt POST failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_known_vector() {
        // RFC 4231 test case 2.
        let sig = signature(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn webhook_shape() {
        let accepted = Accepted {
            wamid: "wamid.X".into(),
            phone_number_id: "123".into(),
            recipient_id: "62123".into(),
            callback_data: Some("msg-1".into()),
        };
        let v = status_webhook(&accepted, "read", 1_700_000_000);
        let status = &v["entry"][0]["changes"][0]["value"]["statuses"][0];
        assert_eq!(v["object"], "whatsapp_business_account");
        assert_eq!(v["entry"][0]["changes"][0]["field"], "messages");
        assert_eq!(
            v["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"],
            "123"
        );
        assert_eq!(status["status"], "read");
        assert_eq!(status["timestamp"], "1700000000");
        assert_eq!(status["biz_opaque_callback_data"], "msg-1");
        assert_eq!(status["recipient_id"], "62123");
        let user_id = business_scoped_id("62123");
        assert!(
            user_id.starts_with("US.") && user_id.len() == 23,
            "{user_id}"
        );
        assert_eq!(status["recipient_user_id"], user_id.as_str());
        assert!(status.get("pricing").is_none(), "read carries no pricing");
        let contacts = &v["entry"][0]["changes"][0]["value"]["contacts"];
        assert_eq!(contacts, &json!([{"wa_id": "62123", "user_id": user_id}]));
        assert_eq!(business_scoped_id("62123"), user_id, "stable per user");
        assert_ne!(business_scoped_id("62124"), user_id);
        let none = Accepted {
            callback_data: None,
            ..accepted
        };
        let v = status_webhook(&none, "delivered", 1);
        assert_eq!(
            v["entry"][0]["changes"][0]["value"]["statuses"][0]["pricing"]["pricing_model"],
            "PMP"
        );
        assert!(
            v["entry"][0]["changes"][0]["value"]["statuses"][0]
                .get("biz_opaque_callback_data")
                .is_none()
        );
    }
}
