//! The WhatsApp-shaped endpoints, auth, errors and failure injection.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::time::{Duration, Instant};

use common::*;
use kurir_sandbox::{Config, RequestKind, codes};
use serde_json::json;

#[tokio::test]
async fn send_with_version_answers_wamid_and_is_recorded() {
    let sandbox = start(config()).await;
    let answer = send(&sandbox, "62123456789", Some("kurir-msg-1")).await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    assert_eq!(answer.json["messaging_product"], "whatsapp");
    assert_eq!(answer.json["contacts"][0]["input"], "62123456789");
    assert_eq!(answer.json["contacts"][0]["wa_id"], "62123456789");
    let wamid = answer.json["messages"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(wamid.starts_with("wamid."));

    let reqs = sandbox.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.kind, RequestKind::Message);
    assert_eq!(r.path, format!("/v25.0/{PHONE_ID}/messages"));
    assert_eq!(r.phone_number_id, PHONE_ID);
    assert_eq!(r.to.as_deref(), Some("62123456789"));
    assert_eq!(r.body.as_deref(), Some("Halo"));
    assert_eq!(r.biz_opaque_callback_data.as_deref(), Some("kurir-msg-1"));
    assert_eq!(r.authorization.as_deref(), Some("Bearer test"));
    assert_eq!(r.response_status, 200);
    assert_eq!(r.wamid.as_deref(), Some(wamid.as_str()));
    assert_eq!(r.error_code, None);
}

#[tokio::test]
async fn send_without_version_and_with_plus_is_accepted() {
    let sandbox = start(config()).await;
    let url = format!("http://{}/{PHONE_ID}/messages", sandbox.addr());
    let answer = post(&url, Some("any"), text("+62123456789", "Hi", Some("cb-2"))).await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    assert_eq!(answer.json["contacts"][0]["input"], "+62123456789");
    assert_eq!(answer.json["contacts"][0]["wa_id"], "62123456789");
    let again = send(&sandbox, "62123456789", None).await;
    assert_ne!(
        again.json["messages"][0]["id"],
        answer.json["messages"][0]["id"]
    );

    let reqs = sandbox.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].path, format!("/{PHONE_ID}/messages"));
    assert_eq!(reqs[0].phone_number_id, PHONE_ID);
    assert_eq!(reqs[0].biz_opaque_callback_data.as_deref(), Some("cb-2"));
    assert!(reqs[0].seq < reqs[1].seq);
}

#[tokio::test]
async fn profile_about_update_is_recorded() {
    let sandbox = start(config()).await;
    let body = json!({"messaging_product": "whatsapp", "about": "Sibuk"});
    for url in [
        format!(
            "{}/{PHONE_ID}/whatsapp_business_profile",
            sandbox.base_url()
        ),
        format!(
            "http://{}/{PHONE_ID}/whatsapp_business_profile",
            sandbox.addr()
        ),
    ] {
        let answer = post(&url, Some("t"), body.clone()).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.json, json!({"success": true}));
    }
    let reqs = sandbox.requests();
    assert_eq!(reqs.len(), 2);
    for r in &reqs {
        assert_eq!(r.kind, RequestKind::Profile);
        assert_eq!(r.about.as_deref(), Some("Sibuk"));
        assert_eq!(r.phone_number_id, PHONE_ID);
        assert_eq!(r.wamid, None);
    }
}

#[tokio::test]
async fn bearer_is_checked_against_configured_token() {
    let sandbox = start(Config {
        token: Some("secret".into()),
        ..config()
    })
    .await;
    let url = format!("{}/{PHONE_ID}/messages", sandbox.base_url());
    let body = text("62123", "x", None);
    for bearer in [Some("wrong"), None] {
        let answer = post(&url, bearer, body.clone()).await;
        assert_meta_error(&answer, 401, codes::ACCESS_TOKEN.into());
    }
    assert_eq!(post(&url, Some("secret"), body).await.status, 200);
    let reqs = sandbox.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[0].error_code, Some(190));
    assert_eq!(reqs[0].authorization.as_deref(), Some("Bearer wrong"));
    assert_eq!(
        reqs[0].to.as_deref(),
        Some("62123"),
        "rejected requests keep their fields"
    );
    assert_eq!(reqs[1].authorization, None);
}

#[tokio::test]
async fn without_configured_token_any_bearer_but_not_none() {
    let sandbox = start(config()).await;
    let url = format!("{}/{PHONE_ID}/messages", sandbox.base_url());
    assert_eq!(
        post(&url, Some("whatever"), text("1", "x", None))
            .await
            .status,
        200
    );
    assert_meta_error(&post(&url, None, text("1", "x", None)).await, 401, 190);
}

#[tokio::test]
async fn malformed_json_and_missing_fields_are_400_code_100() {
    let sandbox = start(config()).await;
    let url = format!("{}/{PHONE_ID}/messages", sandbox.base_url());
    assert_meta_error(&post(&url, Some("t"), "{not json").await, 400, 100);
    for body in [
        json!({"messaging_product": "whatsapp", "text": {"body": "x"}}),
        json!({"messaging_product": "whatsapp", "to": "62123", "type": "text"}),
        json!({"to": "62123", "text": {"body": "x"}}),
    ] {
        assert_meta_error(&post(&url, Some("t"), body).await, 400, 100);
    }
    let reqs = sandbox.requests();
    assert_eq!(reqs.len(), 4);
    assert!(
        reqs.iter()
            .all(|r| r.response_status == 400 && r.error_code == Some(100))
    );
}

#[tokio::test]
async fn magic_undeliverable_fails_every_time() {
    let sandbox = start(config()).await;
    for to in ["+15550000001", "15550000001", "+15550000001"] {
        let answer = send(&sandbox, to, Some("cb-perm")).await;
        assert_meta_error(&answer, 400, codes::UNDELIVERABLE.into());
        assert_eq!(
            answer.json["error"]["message"],
            "(#131026) Message undeliverable"
        );
    }
    assert!(
        sandbox
            .requests()
            .iter()
            .all(|r| r.error_code == Some(131_026) && r.wamid.is_none())
    );
}

#[tokio::test]
async fn magic_flaky_fails_twice_per_message_then_succeeds() {
    let sandbox = start(config()).await;
    for cb in ["msg-a", "msg-b"] {
        for _ in 0..2 {
            let answer = send(&sandbox, "+15550000002", Some(cb)).await;
            assert_meta_error(&answer, 503, codes::SERVICE_UNAVAILABLE.into());
        }
        assert_eq!(send(&sandbox, "15550000002", Some(cb)).await.status, 200);
        assert_eq!(send(&sandbox, "15550000002", Some(cb)).await.status, 200);
    }
    // Without callback data the count is per recipient.
    assert_eq!(send(&sandbox, "15550000002", None).await.status, 503);
    assert_eq!(send(&sandbox, "+15550000002", None).await.status, 503);
    assert_eq!(send(&sandbox, "15550000002", None).await.status, 200);
}

#[tokio::test]
async fn throttle_rate_one_answers_429_with_retry_after() {
    let sandbox = start(Config {
        throttle_rate: 1.0,
        retry_after_secs: 7,
        ..config()
    })
    .await;
    let answer = send(&sandbox, "62123", None).await;
    assert_meta_error(&answer, 429, codes::RATE_LIMIT.into());
    assert_eq!(answer.headers["retry-after"], "7");
    sandbox.set_retry_after_secs(3);
    assert_eq!(
        send(&sandbox, "62123", None).await.headers["retry-after"],
        "3"
    );
    sandbox.set_throttle_rate(0.0);
    assert_eq!(send(&sandbox, "62123", None).await.status, 200);
}

#[tokio::test]
async fn fail_rate_one_answers_500() {
    let sandbox = start(config()).await;
    sandbox.set_fail_rate(1.0);
    let answer = send(&sandbox, "62123", None).await;
    assert_meta_error(&answer, 500, codes::SOMETHING_WENT_WRONG.into());
    assert_eq!(
        answer.json["error"]["message"],
        "(#131000) Something went wrong"
    );
    // Magic recipients are checked before random failures.
    assert_meta_error(&send(&sandbox, "15550000001", None).await, 400, 131_026);
}

#[tokio::test]
async fn latency_is_added() {
    let sandbox = start(config()).await;
    sandbox.set_latency_ms(150);
    let started = Instant::now();
    assert_eq!(send(&sandbox, "62123", None).await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn config_endpoint_reads_and_validates_patches() {
    let sandbox = start(config()).await;
    let url = format!("http://{}/__sandbox/config", sandbox.addr());
    let c = client();
    let current: serde_json::Value = c.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        current,
        json!({"latency_ms": 0, "fail_rate": 0.0, "throttle_rate": 0.0, "retry_after_secs": 1})
    );
    let ok = c
        .patch(&url)
        .json(&json!({"throttle_rate": 0.5, "latency_ms": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    for bad in [
        json!({"fail_rate": 1.5}),
        json!({"throttle_rate": -0.1}),
        json!({"latency_ms": -1}),
        json!({"latency_ms": "fast"}),
        json!({"nope": 1}),
    ] {
        let resp = c.patch(&url).json(&bad).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{bad}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], 100);
    }
    let bad_json = c.patch(&url).body("{").send().await.unwrap();
    assert_eq!(bad_json.status(), 400);
    let knobs = sandbox.knobs();
    assert_eq!(
        (knobs.throttle_rate, knobs.latency_ms, knobs.fail_rate),
        (0.5, 2, 0.0)
    );
    sandbox.set_fail_rate(0.25);
    let current: serde_json::Value = c.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(current["fail_rate"], 0.25);
}

#[tokio::test]
async fn messages_endpoint_lists_and_delete_clears() {
    let sandbox = start(config()).await;
    send(&sandbox, "62123", Some("a")).await;
    send(&sandbox, "15550000001", Some("b")).await;
    let url = format!("http://{}/__sandbox/messages", sandbox.addr());
    let c = client();
    let listed: serde_json::Value = c.get(&url).send().await.unwrap().json().await.unwrap();
    let msgs = listed["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0]["kind"], "message");
    assert_eq!(msgs[0]["biz_opaque_callback_data"], "a");
    assert_eq!(msgs[0]["response_status"], 200);
    assert!(msgs[0]["received_at"].as_str().is_some());
    assert_eq!(msgs[1]["error_code"], 131_026);
    assert!(msgs[1]["wamid"].is_null());
    // The HTTP view and the handle agree.
    let typed: Vec<kurir_sandbox::RecordedRequest> =
        serde_json::from_value(listed["messages"].clone()).unwrap();
    assert_eq!(typed, sandbox.requests());

    assert_eq!(c.delete(&url).send().await.unwrap().status(), 204);
    assert!(sandbox.requests().is_empty());
    send(&sandbox, "62123", None).await;
    assert_eq!(sandbox.requests().len(), 1);
    sandbox.clear();
    assert!(sandbox.requests().is_empty());
}

#[tokio::test]
async fn unknown_paths_are_recorded_and_404() {
    let sandbox = start(config()).await;
    let answer = post(
        &format!("http://{}/v25.0/{PHONE_ID}/media", sandbox.addr()),
        Some("t"),
        "{}",
    )
    .await;
    assert_meta_error(&answer, 404, 100);
    let wrong_method = client()
        .get(format!("{}/{PHONE_ID}/messages", sandbox.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), 404);
    let reqs = sandbox.requests();
    assert_eq!(reqs.len(), 2);
    assert!(reqs.iter().all(|r| r.kind == RequestKind::Unknown));
    assert_eq!(reqs[1].method, "GET");
}

#[tokio::test]
async fn healthz_ok_and_shutdown_stops_server() {
    let sandbox = start(config()).await;
    let url = format!("http://{}/healthz", sandbox.addr());
    assert_eq!(client().get(&url).send().await.unwrap().status(), 200);
    assert!(sandbox.base_url().ends_with("/v25.0"));
    sandbox.shutdown().await;
    assert!(client().get(&url).send().await.is_err());
}

#[tokio::test]
async fn dropping_the_handle_stops_the_server() {
    let sandbox = start(config()).await;
    let url = format!("http://{}/healthz", sandbox.addr());
    drop(sandbox);
    let deadline = Instant::now() + DEADLINE;
    loop {
        // A fresh client each time so no pooled connection is reused.
        if client().get(&url).send().await.is_err() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "server still answering after drop"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn start_refuses_invalid_config() {
    let err = kurir_sandbox::start(Config {
        fail_rate: 1.5,
        ..config()
    })
    .await
    .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("KURIR_SANDBOX_FAIL_RATE"));
}
