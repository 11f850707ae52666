//! Bearer keys: missing, wrong and revoked keys are 401.

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::TestApp;

async fn assert_401(response: reqwest::Response) {
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_wrong_and_revoked_keys_are_401_a_revoked_one_within_the_key_cache_lifetime() {
    let mut options = crate::support::Options::default();
    options.api.key_cache_ttl = std::time::Duration::from_secs(1);
    let app = TestApp::spawn_with(options).await;
    let users = app.url("/v1/users");

    assert_401(app.http.get(&users).send().await.unwrap()).await;
    assert_401(
        app.http
            .get(&users)
            .header("authorization", "Basic abc")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_401(
        app.http
            .get(&users)
            .bearer_auth("kurir_nope_0123456789abcdefghijklmnopqrstuv")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_401(app.http.get(&users).bearer_auth("").send().await.unwrap()).await;

    let key = app.key_for("test-b").await;
    assert_eq!(
        app.http
            .get(&users)
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let key_id = key.split('_').nth(1).unwrap().to_owned();
    let client = app.pool.get().await.unwrap();
    assert!(
        kurir_store::keys::revoke_key(&client, &key_id)
            .await
            .unwrap()
    );
    // The key was found valid a moment ago and may be trusted for the cache's
    // lifetime (1 s here), not longer.
    let refused = crate::support::eventually(std::time::Duration::from_secs(5), || async {
        let response = app.http.get(&users).bearer_auth(&key).send().await.unwrap();
        (response.status() == StatusCode::UNAUTHORIZED).then_some(response)
    })
    .await
    .expect("a revoked key stops working within the cache's lifetime");
    assert_401(refused).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_need_no_key() {
    let app = TestApp::spawn().await;
    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let ready = crate::support::eventually(crate::support::DEADLINE, || async {
        let response = app.http.get(app.url("/readyz")).send().await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        (status == StatusCode::OK && body["rabbitmq"] == "ok").then_some(body)
    })
    .await
    .expect("ready");
    assert_eq!(ready["postgres"], "ok");
}
