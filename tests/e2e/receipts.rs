//! The WhatsApp receipts webhook: signatures, the handshake, and receipts
//! applied forward only, in Meta's payload shapes as they are in 2026.

use chrono::{DateTime, SecondsFormat};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{APP_SECRET, Options, PHONE_NUMBER_ID, TestApp, VERIFY_TOKEN};

const HOOK: &str = "/v1/webhooks/whatsapp";
/// Receipt times (Unix seconds), in order, after any message a test sends
/// (a receipt's time is never shown before the message's `sent_at`).
const T1: i64 = 4_000_000_000;
const T2: i64 = 4_000_000_060;
const T3: i64 = 4_000_000_120;

/// A timestamp as the API shows it.
fn shown(unix: i64) -> String {
    DateTime::from_timestamp(unix, 0)
        .unwrap()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A notification of `statuses` from `phone_number_id`, in the current
/// shape: metadata, a contacts array with a business-scoped id.
fn notification(phone_number_id: &str, statuses: Vec<Value>) -> Value {
    json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "100000000000001", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550000000", "phone_number_id": phone_number_id},
            "contacts": [{"wa_id": "6281234567890", "user_id": "ID.13491208655302741918"}],
            "statuses": statuses,
        }}]}],
    })
}

/// One status of message `id` (kurir's id as `biz_opaque_callback_data`).
fn status(id: &str, wamid: &str, kind: &str, at: i64) -> Value {
    json!({"id": wamid, "status": kind, "timestamp": at.to_string(),
           "recipient_id": "6281234567890", "recipient_user_id": "ID.13491208655302741918",
           "biz_opaque_callback_data": id})
}

impl TestApp {
    /// POSTs `body` to the webhook, signed with the app secret.
    async fn webhook(&self, body: &Value) -> reqwest::Response {
        let bytes = serde_json::to_vec(body).unwrap();
        self.webhook_raw(
            &bytes,
            Some(kurir_sandbox::signature(APP_SECRET.as_bytes(), &bytes)),
        )
        .await
    }

    async fn webhook_raw(&self, body: &[u8], signature: Option<String>) -> reqwest::Response {
        let mut request = self
            .http
            .post(self.url(HOOK))
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(signature) = signature {
            request = request.header("X-Hub-Signature-256", signature);
        }
        request.send().await.unwrap()
    }

    /// POSTs a signed notification and expects 200; its answer.
    async fn receipts(&self, body: &Value) -> Value {
        let response = self.webhook(body).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    /// `count` messages to a new user, once all are `sent`; their ids and wamids.
    async fn sent_messages(&self, user: &str, count: usize) -> Vec<(String, String)> {
        self.create_user(user, "+6281234567890").await;
        let ids = self.send_many(user, count).await;
        self.all_sent(count as i64, crate::support::DEADLINE).await;
        let mut sent = Vec::new();
        for id in ids {
            let message = self.message(&id).await;
            let wamid = message["provider_message_id"].as_str().unwrap().to_owned();
            sent.push((id, wamid));
        }
        sent
    }

    /// A message to a new user, once `sent`; its id and wamid.
    async fn sent_message(&self, user: &str, phone: &str) -> (String, String) {
        self.create_user(user, phone).await;
        let id = self.send(user, "Halo!").await;
        let message = self.message_with_status(&id, "sent").await;
        let wamid = message["provider_message_id"].as_str().unwrap().to_owned();
        (id, wamid)
    }
}

#[tokio::test]
async fn bad_and_missing_signatures_are_401_and_change_nothing() {
    let app = TestApp::spawn().await;
    let (id, wamid) = app.sent_message("sig", "+6281234567890").await;
    let body = serde_json::to_vec(&notification(
        PHONE_NUMBER_ID,
        vec![status(&id, &wamid, "read", T1)],
    ))
    .unwrap();
    let wrong_secret = kurir_sandbox::signature(b"not-the-secret", &body);
    let other_body = kurir_sandbox::signature(APP_SECRET.as_bytes(), b"{}");
    for signature in [
        None,
        Some(wrong_secret),
        Some(other_body),
        Some("sha256=nothex".to_owned()),
        Some(String::new()),
    ] {
        let response = app.webhook_raw(&body, signature.clone()).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{signature:?}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["status"], 401);
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("X-Hub-Signature-256")
        );
    }
    assert_eq!(app.message(&id).await["message_status"], "sent");
    // The same bytes, rightly signed, do apply.
    let signature = kurir_sandbox::signature(APP_SECRET.as_bytes(), &body);
    assert_eq!(
        app.webhook_raw(&body, Some(signature)).await.status(),
        StatusCode::OK
    );
    assert_eq!(app.message(&id).await["message_status"], "read");
}

#[tokio::test]
async fn the_handshake_answers_the_challenge_only_with_the_right_token() {
    let app = TestApp::spawn_with(Options {
        start_worker: false,
        ..Options::default()
    })
    .await;
    let handshake = |mode: &str, token: &str| {
        app.http
            .get(app.url(HOOK))
            .query(&[
                ("hub.mode", mode),
                ("hub.verify_token", token),
                ("hub.challenge", "1158201444"),
            ])
            .send()
    };
    let ok = handshake("subscribe", VERIFY_TOKEN).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert!(
        ok.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(ok.text().await.unwrap(), "1158201444");
    for (mode, token) in [
        ("subscribe", "wrong"),
        ("subscribe", ""),
        ("unsubscribe", VERIFY_TOKEN),
    ] {
        let response = handshake(mode, token).await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{mode} {token}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["status"], 403);
    }
    // No API key is asked for, on either method.
    let bare = app.http.get(app.url(HOOK)).send().await.unwrap();
    assert_eq!(bare.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn read_before_delivered_ends_read_with_both_timestamps() {
    let app = TestApp::spawn().await;
    let (id, wamid) = app.sent_message("early", "+6281234567890").await;
    let answer = app
        .receipts(&notification(
            PHONE_NUMBER_ID,
            vec![status(&id, &wamid, "read", T2)],
        ))
        .await;
    assert_eq!(answer["changed"], 1);
    let message = app.message(&id).await;
    assert_eq!(message["message_status"], "read");
    assert_eq!(message["read_at"], shown(T2));
    assert_eq!(message["delivered_at"], shown(T2));
    // The late delivered receipt moves nothing back; its earlier time is
    // the better delivered_at.
    app.receipts(&notification(
        PHONE_NUMBER_ID,
        vec![status(&id, &wamid, "delivered", T1)],
    ))
    .await;
    let message = app.message(&id).await;
    assert_eq!(message["message_status"], "read");
    assert_eq!(message["delivered_at"], shown(T1));
    assert_eq!(message["read_at"], shown(T2));
    // Duplicates change nothing at all.
    let again = app
        .receipts(&notification(
            PHONE_NUMBER_ID,
            vec![
                status(&id, &wamid, "delivered", T1),
                status(&id, &wamid, "read", T2),
                status(&id, &wamid, "sent", T1),
            ],
        ))
        .await;
    assert_eq!(
        (again["matched"].as_u64(), again["changed"].as_u64()),
        (Some(3), Some(0))
    );
    assert_eq!(app.message(&id).await["updated_at"], message["updated_at"]);
}

#[tokio::test]
async fn a_failed_receipt_after_sent_ends_failed_with_metas_code() {
    let app = TestApp::spawn().await;
    let (id, wamid) = app.sent_message("late", "+6281234567890").await;
    let mut failed = status(&id, &wamid, "failed", T1);
    failed["errors"] = json!([{"code": 131047, "title": "Re-engagement message",
        "message": "Re-engagement message",
        "error_data": {"details": "Message failed to send because more than 24 hours have passed since the customer last replied to this number."},
        "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"}]);
    app.receipts(&notification(PHONE_NUMBER_ID, vec![failed]))
        .await;
    let message = app.message(&id).await;
    assert_eq!(message["message_status"], "failed");
    assert_eq!(message["failed_at"], shown(T1));
    assert!(message["sent_at"].is_string());
    assert_eq!(message["last_error"]["code"], "131047");
    assert_eq!(message["last_error"]["retryable"], false);
    assert!(
        message["last_error"]["detail"]
            .as_str()
            .unwrap()
            .contains("more than 24 hours")
    );
    // failed is final: a later read does not revive it
    app.receipts(&notification(
        PHONE_NUMBER_ID,
        vec![status(&id, &wamid, "read", T2)],
    ))
    .await;
    assert_eq!(app.message(&id).await["message_status"], "failed");
}

#[tokio::test]
async fn a_failed_receipt_after_delivered_changes_nothing() {
    let app = TestApp::spawn().await;
    let (id, wamid) = app.sent_message("late2", "+6281234567890").await;
    app.receipts(&notification(
        PHONE_NUMBER_ID,
        vec![status(&id, &wamid, "delivered", T1)],
    ))
    .await;
    let answer = app
        .receipts(&notification(
            PHONE_NUMBER_ID,
            vec![status(&id, &wamid, "failed", T2)],
        ))
        .await;
    assert_eq!(answer["changed"], 0);
    let message = app.message(&id).await;
    assert_eq!(message["message_status"], "delivered");
    assert!(message["last_error"].is_null());
}

#[tokio::test]
async fn one_post_with_100_statuses_applies_them_all() {
    let app = TestApp::spawn().await;
    let statuses = (app.sent_messages("many", 100).await.iter())
        .map(|(id, wamid)| status(id, wamid, "delivered", T1))
        .collect();
    let answer = app.receipts(&notification(PHONE_NUMBER_ID, statuses)).await;
    assert_eq!(answer["receipts"], 100);
    assert_eq!(answer["matched"], 100);
    assert_eq!(answer["changed"], 100);
    assert_eq!(answer["unknown"], 0);
    assert_eq!(app.count_in_state("delivered").await, 100);
}

#[tokio::test]
async fn a_receipt_from_another_number_changes_nothing() {
    let app = TestApp::spawn().await;
    let (id, wamid) = app.sent_message("scope", "+6281234567890").await;
    let answer = app
        .receipts(&notification(
            "999999999999999",
            vec![status(&id, &wamid, "read", T1)],
        ))
        .await;
    assert_eq!(answer["unknown"], 1);
    assert_eq!(answer["changed"], 0);
    assert_eq!(app.message(&id).await["message_status"], "sent");
    // Receipts for messages kurir never sent are dropped with 200, too.
    let stranger = app
        .receipts(&notification(
            PHONE_NUMBER_ID,
            vec![
                status(
                    "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
                    "wamid.nobody",
                    "read",
                    T1,
                ),
                json!({"id": "wamid.nobody2", "status": "delivered", "timestamp": "1"}),
            ],
        ))
        .await;
    assert_eq!(stranger["unknown"], 2);
}

#[tokio::test]
async fn metas_payload_variants_all_apply() {
    let app = TestApp::spawn().await;
    let (a, wamid_a) = app.sent_message("va", "+6281200000001").await;
    let (b, wamid_b) = app.sent_message("vb", "+6281200000002").await;
    let (c, wamid_c) = app.sent_message("vc", "+6281200000003").await;
    let (d, wamid_d) = app.sent_message("vd", "+6281200000004").await;

    // (a) The current shape: contacts, business-scoped ids, no
    // recipient_id (sent to a business-scoped id), per-message pricing.
    let mut current = status(&a, &wamid_a, "delivered", T1);
    current.as_object_mut().unwrap().remove("recipient_id");
    current["pricing"] =
        json!({"billable": true, "pricing_model": "PMP", "category": "utility", "type": "regular"});
    app.receipts(&notification(PHONE_NUMBER_ID, vec![current]))
        .await;
    assert_eq!(app.message(&a).await["message_status"], "delivered");

    // (b) The older shape, without contacts, with conversation and CBP
    // pricing, and matched by the wamid alone (no callback data).
    let older = json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{
        "field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550000000", "phone_number_id": PHONE_NUMBER_ID},
            "statuses": [{"id": wamid_b, "status": "read", "timestamp": T2.to_string(),
                          "recipient_id": "6281200000002",
                          "conversation": {"id": "conv1", "origin": {"type": "utility"}},
                          "pricing": {"billable": true, "pricing_model": "CBP", "category": "utility"}}]}}]}]});
    app.receipts(&older).await;
    let message = app.message(&b).await;
    assert_eq!(message["message_status"], "read");
    assert_eq!(message["delivered_at"], shown(T2));

    // (c) A lean failed status: contacts with wa_id only, the error on
    // `value`, not on the status.
    let lean = json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{
        "field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"phone_number_id": PHONE_NUMBER_ID},
            "contacts": [{"wa_id": "6281200000003"}],
            "errors": [{"code": 131026, "title": "Message undeliverable"}],
            "statuses": [{"id": wamid_c, "status": "failed", "timestamp": T1,
                          "biz_opaque_callback_data": c}]}}]}]});
    app.receipts(&lean).await;
    let message = app.message(&c).await;
    assert_eq!(message["message_status"], "failed");
    assert_eq!(message["last_error"]["code"], "131026");
    assert_eq!(message["last_error"]["detail"], "Message undeliverable");

    // (d) played (a voice message played) counts as read; no contacts.
    let played = json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{
        "field": "messages", "value": {
            "metadata": {"phone_number_id": PHONE_NUMBER_ID},
            "statuses": [{"id": wamid_d, "status": "played", "timestamp": T3.to_string(),
                          "recipient_user_id": "ID.1"}]}}]}]});
    app.receipts(&played).await;
    let message = app.message(&d).await;
    assert_eq!(message["message_status"], "read");
    assert_eq!(message["read_at"], shown(T3));
}

#[tokio::test]
async fn notifications_that_are_not_statuses_are_answered_200_and_ignored() {
    let app = TestApp::spawn_with(Options {
        start_worker: false,
        ..Options::default()
    })
    .await;
    let update = json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [
        {"field": "account_update", "value": {"phone_number": "15550000000", "event": "VERIFIED_ACCOUNT"}},
        {"field": "message_template_status_update", "value": {"event": "APPROVED", "message_template_name": "hello_world"}}
    ]}]});
    let answer = app.receipts(&update).await;
    assert_eq!(answer["ignored"], 2);
    // A signed body that is not JSON is a 400, not a 5xx.
    let signature = kurir_sandbox::signature(APP_SECRET.as_bytes(), b"not json");
    let response = app.webhook_raw(b"not json", Some(signature)).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn an_incoming_message_records_the_users_last_inbound_time() {
    let app = TestApp::spawn_with(Options {
        start_worker: false,
        ..Options::default()
    })
    .await;
    let incoming = |from: Value, user_id: &str, at: i64| {
        let mut message = json!({"id": "wamid.in", "timestamp": at.to_string(), "type": "text",
                                 "text": {"body": "Halo, pesanan saya?"}, "from_user_id": user_id});
        let mut contact = json!({"profile": {"name": "Budi"}, "user_id": user_id});
        if let Value::String(wa_id) = &from {
            message["from"] = from.clone();
            contact["wa_id"] = json!(wa_id);
        }
        json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{
            "field": "messages", "value": {
                "messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "15550000000", "phone_number_id": PHONE_NUMBER_ID},
                "contacts": [contact], "messages": [message]}}]}]})
    };
    let answer = app
        .receipts(&incoming(json!("6281234567890"), "ID.77", T2))
        .await;
    assert_eq!(answer["inbound"], 1);
    let last = || async {
        let client = app.pool.get().await.unwrap();
        kurir_store::receipts::last_inbound(&client, PHONE_NUMBER_ID, "6281234567890")
            .await
            .unwrap()
    };
    assert_eq!(last().await, DateTime::from_timestamp(T2, 0));
    // An older message does not move it back; a newer one from the same
    // user known only by the business-scoped id moves it forward.
    app.receipts(&incoming(json!("6281234567890"), "ID.77", T1))
        .await;
    assert_eq!(last().await, DateTime::from_timestamp(T2, 0));
    let answer = app.receipts(&incoming(Value::Null, "ID.77", T3)).await;
    assert_eq!(answer["inbound"], 1);
    assert_eq!(last().await, DateTime::from_timestamp(T3, 0));
}

#[tokio::test]
async fn a_receipt_for_a_retry_waiting_after_a_lost_answer_ends_the_retry() {
    // The provider took the message but its answer was lost (a timeout):
    // the row waits for a retry. The receipt proves it was sent, so the
    // retry never happens.
    let app = TestApp::spawn().await;
    let (id, _) = app.sent_message("lost", "+6281234567890").await;
    let client = app.pool.get().await.unwrap();
    client
        .execute(
            "UPDATE messages SET state = 'queued', provider_message_id = NULL, sent_at = NULL,
                    due_at = now() + interval '1 hour', published = false,
                    last_error = '{\"code\":\"timeout\",\"detail\":\"no answer\",\"retryable\":true}'
             WHERE id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap();
    app.receipts(&notification(
        PHONE_NUMBER_ID,
        vec![status(&id, "wamid.fromreceipt", "delivered", T1)],
    ))
    .await;
    let message = app.message(&id).await;
    assert_eq!(message["message_status"], "delivered");
    assert_eq!(message["provider_message_id"], "wamid.fromreceipt");
    assert_eq!(message["sent_at"], shown(T1));
    assert!(message["last_error"].is_null());
    assert!(message["next_attempt_at"].is_null());
}

#[tokio::test]
async fn a_receipt_time_before_sent_at_shows_as_sent_at() {
    // Meta's timestamps are whole seconds: "delivered at 12:00:05" for a
    // message sent at 12:00:05.400 would otherwise show before it was sent.
    let app = TestApp::spawn().await;
    let (id, wamid) = app.sent_message("clock", "+6281234567890").await;
    let sent_at = app.message(&id).await["sent_at"].clone();
    app.receipts(&notification(
        PHONE_NUMBER_ID,
        vec![status(&id, &wamid, "delivered", 1_700_000_000)],
    ))
    .await;
    let message = app.message(&id).await;
    assert_eq!(message["message_status"], "delivered");
    assert_eq!(message["delivered_at"], sent_at);
}

#[tokio::test]
async fn sandbox_receipts_end_read() {
    let app = TestApp::spawn_with(Options {
        receipts: true,
        ..Options::default()
    })
    .await;
    app.create_user("e2e", "+6281234567890").await;
    let id = app.send("e2e", "Halo!").await;
    let message = app.message_with_status(&id, "read").await;
    assert!(message["sent_at"].is_string());
    assert!(message["delivered_at"].is_string());
    assert!(message["read_at"].is_string());
    assert!(message["last_error"].is_null());
    // RFC 3339 in one format and zone: ordered as text.
    let at = |field: &str| message[field].as_str().unwrap().to_owned();
    assert!(at("sent_at") <= at("delivered_at") && at("delivered_at") <= at("read_at"));
}

#[tokio::test]
async fn concurrent_receipts_about_the_same_messages_never_move_one_back() {
    // Meta posts the delivered and the read receipt of a message in
    // separate requests, which may be handled at the same time, and in
    // any order: each is applied to the row as it is then.
    let app = TestApp::spawn().await;
    let sent = app.sent_messages("race", 40).await;
    let delivered = sent
        .iter()
        .map(|(id, wamid)| status(id, wamid, "delivered", T1))
        .collect();
    let read = sent
        .iter()
        .rev()
        .map(|(id, wamid)| status(id, wamid, "read", T2))
        .collect();
    let delivered = notification(PHONE_NUMBER_ID, delivered);
    let read = notification(PHONE_NUMBER_ID, read);
    let posts: Vec<_> = (0..8)
        .map(|n| {
            let body = if n % 2 == 0 { &delivered } else { &read };
            app.receipts(body)
        })
        .collect();
    futures_util::future::join_all(posts).await;
    assert_eq!(app.count_in_state("read").await, 40);
    for (id, _) in &sent {
        let message = app.message(id).await;
        assert_eq!(message["delivered_at"], shown(T1), "{id}");
        assert_eq!(message["read_at"], shown(T2), "{id}");
    }
}
