//! Signed delivered/read receipts posted to a receiver started by the test.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::*;
use hmac::{Hmac, Mac};
use kurir_sandbox::Config;
use serde_json::Value;
use sha2::Sha256;

const SECRET: &str = "app-secret";

#[derive(Clone, Default)]
struct Receiver {
    /// (signature header, content-type, raw body) of each accepted POST.
    got: Arc<Mutex<Vec<(String, String, Bytes)>>>,
    /// How many of the first POSTs to refuse with 500.
    refuse_first: usize,
    seen: Arc<AtomicUsize>,
}

async fn hook(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    if r.seen.fetch_add(1, Ordering::SeqCst) < r.refuse_first {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let header = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    r.got
        .lock()
        .unwrap()
        .push((header("x-hub-signature-256"), header("content-type"), body));
    StatusCode::OK
}

/// Starts a receiver on port 0; returns its URL.
async fn start_receiver(receiver: Receiver) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(receiver);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/hook")
}

async fn wait_for(receiver: &Receiver, n: usize) -> Vec<(String, String, Bytes)> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let got = receiver.got.lock().unwrap().clone();
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} receipts arrived",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn verify(sig: &str, body: &[u8]) {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(sig, expected);
}

fn status_of(body: &[u8]) -> Value {
    let v: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(v["object"], "whatsapp_business_account");
    let change = &v["entry"][0]["changes"][0];
    assert_eq!(change["field"], "messages");
    assert_eq!(change["value"]["messaging_product"], "whatsapp");
    assert_eq!(change["value"]["metadata"]["phone_number_id"], PHONE_ID);
    assert!(change["value"]["metadata"]["display_phone_number"].is_string());
    change["value"]["statuses"][0].clone()
}

fn receipts_config(url: String) -> Config {
    Config {
        receipts_url: Some(url),
        app_secret: Some(SECRET.into()),
        receipt_delay_ms: 5,
        ..config()
    }
}

#[tokio::test]
async fn accepted_message_gets_signed_delivered_then_read() {
    let receiver = Receiver::default();
    let sandbox = start(receipts_config(start_receiver(receiver.clone()).await)).await;

    // A refused message first: it must produce no receipt.
    assert_eq!(
        send(&sandbox, "15550000001", Some("kurir-failed"))
            .await
            .status,
        400
    );
    let answer = send(&sandbox, "+62123456789", Some("kurir-msg-9")).await;
    assert_eq!(answer.status, 200);
    let wamid = answer.json["messages"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let got = wait_for(&receiver, 2).await;
    assert_eq!(got.len(), 2);
    let mut statuses = Vec::new();
    for (sig, content_type, body) in &got {
        verify(sig, body);
        assert_eq!(content_type, "application/json");
        let status = status_of(body);
        assert_eq!(status["id"], wamid.as_str());
        assert_eq!(status["recipient_id"], "62123456789");
        assert_eq!(status["biz_opaque_callback_data"], "kurir-msg-9");
        let ts: i64 = status["timestamp"].as_str().unwrap().parse().unwrap();
        assert!(ts > 1_600_000_000);
        statuses.push(status["status"].as_str().unwrap().to_owned());
    }
    assert_eq!(statuses, ["delivered", "read"]);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn accepted_template_gets_receipts_like_text() {
    let receiver = Receiver::default();
    let sandbox = start(receipts_config(start_receiver(receiver.clone()).await)).await;

    // Refused templates and a refused text produce no receipt.
    assert_eq!(
        send_body(
            &sandbox,
            template("62123", "order_updat", "id", &["a", "b"])
        )
        .await
        .status,
        400
    );
    assert_eq!(send(&sandbox, "15550000003", None).await.status, 400);
    // Accepted: to a normal recipient and to one outside the 24-hour window.
    let mut wamids = Vec::new();
    for (to, cb) in [("6281234567890", "tpl-1"), ("+15550000003", "tpl-2")] {
        let mut body = template(to, "order_update", "id", &["Budi", "#1234"]);
        body["biz_opaque_callback_data"] = cb.into();
        let answer = send_body(&sandbox, body).await;
        assert_eq!(answer.status, 200, "{}", answer.json);
        wamids.push(
            answer.json["messages"][0]["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }

    let got = wait_for(&receiver, 4).await;
    assert_eq!(got.len(), 4);
    for (wamid, (recipient, cb)) in wamids
        .iter()
        .zip([("6281234567890", "tpl-1"), ("15550000003", "tpl-2")])
    {
        let mut statuses = Vec::new();
        for (sig, _, body) in &got {
            verify(sig, body);
            let status = status_of(body);
            if status["id"] == wamid.as_str() {
                assert_eq!(status["recipient_id"], recipient);
                assert_eq!(status["biz_opaque_callback_data"], cb);
                statuses.push(status["status"].as_str().unwrap().to_owned());
            }
        }
        assert_eq!(statuses, ["delivered", "read"], "{wamid}");
    }
    sandbox.shutdown().await;
}

#[tokio::test]
async fn failed_receipt_post_is_retried() {
    let receiver = Receiver {
        refuse_first: 2,
        ..Receiver::default()
    };
    let sandbox = start(receipts_config(start_receiver(receiver.clone()).await)).await;
    let answer = send(&sandbox, "62123", Some("retry-me")).await;
    assert_eq!(answer.status, 200);
    let got = wait_for(&receiver, 2).await;
    let statuses: Vec<Value> = got
        .iter()
        .map(|(_, _, b)| status_of(b)["status"].clone())
        .collect();
    assert_eq!(statuses, ["delivered", "read"]);
    assert_eq!(receiver.seen.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn receipts_without_callback_data_omit_it() {
    let receiver = Receiver::default();
    let sandbox = start(receipts_config(start_receiver(receiver.clone()).await)).await;
    assert_eq!(send(&sandbox, "62123", None).await.status, 200);
    let got = wait_for(&receiver, 2).await;
    for (sig, _, body) in &got {
        verify(sig, body);
        assert!(status_of(body).get("biz_opaque_callback_data").is_none());
    }
}

#[tokio::test]
async fn shutdown_does_not_wait_for_pending_receipts() {
    let receiver = Receiver::default();
    let sandbox = start(Config {
        receipt_delay_ms: 60_000,
        ..receipts_config(start_receiver(receiver.clone()).await)
    })
    .await;
    assert_eq!(send(&sandbox, "62123", Some("slow")).await.status, 200);
    tokio::time::timeout(DEADLINE, sandbox.shutdown())
        .await
        .expect("shutdown returns promptly with receipts pending");
    assert!(receiver.got.lock().unwrap().is_empty());
}
