//! The per-account intake limit: a token bucket on accepted messages, shared
//! by every API process through Postgres.

use std::time::{Duration, Instant};

use kurir_core::{AccountId, IntakeLimit};
use kurir_store::limits;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

use crate::{
    process::run_kurir,
    support::{DEADLINE, Options, TestApp, eventually},
};

/// One account's client of one API process.
struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Client {
    /// A new account `name` with a key and a user `u1`, on `app`'s API.
    async fn new_account(app: &TestApp, name: &str) -> Self {
        let client = Self {
            http: app.http.clone(),
            base: app.address.clone(),
            key: app.key_for(name).await,
        };
        let created = client
            .post(
                "/v1/users",
                &json!({"id": "u1", "name": "U", "phone_number": "+62123456789"}),
            )
            .await;
        assert_eq!(created.status(), StatusCode::CREATED);
        client
    }

    /// The same account on another API process.
    fn on(&self, base: &str) -> Self {
        Self {
            http: self.http.clone(),
            base: base.to_owned(),
            key: self.key.clone(),
        }
    }

    async fn post(&self, path: &str, body: &Value) -> Response {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    async fn send(&self) -> Response {
        self.post("/v1/users/u1/messages", &json!({"message": "Halo!"}))
            .await
    }

    /// A batch of `count` messages to `u1`.
    async fn batch(&self, count: usize) -> Response {
        let items = vec![json!({"user_id": "u1", "message": "Halo!"}); count];
        self.post("/v1/messages/batch", &json!({"messages": items}))
            .await
    }

    /// Sends until the first 429 (the bucket refills meanwhile: at most
    /// `most` more are accepted first); that 429 and how many passed.
    async fn until_refused(&self, most: usize) -> (Response, usize) {
        for passed in 0..=most {
            let response = self.send().await;
            match response.status() {
                StatusCode::TOO_MANY_REQUESTS => return (response, passed),
                StatusCode::ACCEPTED => {}
                other => panic!("a send answered {other}"),
            }
        }
        panic!("more than {most} sends passed an exhausted bucket");
    }
}

/// Gives account `name` its own limit, as `kurir accounts limit` does.
async fn limit(app: &TestApp, name: &str, rate: u32, burst: u32) {
    let client = app.pool.get().await.unwrap();
    let set = limits::set_intake_limit(&client, name, Some(rate), Some(burst))
        .await
        .unwrap();
    assert!(set.is_some(), "account {name} exists");
}

fn header<'a>(response: &'a Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

async fn messages_stored(app: &TestApp) -> i64 {
    let client = app.pool.get().await.unwrap();
    client
        .query_one("SELECT count(*) FROM messages", &[])
        .await
        .unwrap()
        .get(0)
}

fn no_worker() -> Options {
    Options {
        start_worker: false,
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_burst_an_account_gets_429_with_retry_after_and_is_accepted_again_once_it_refills()
{
    let app = TestApp::spawn_with(no_worker()).await;
    let client = Client::new_account(&app, "limited").await;
    limit(&app, "limited", 1, 5).await;

    let start = Instant::now();
    for n in 1..=5 {
        let response = client.send().await;
        assert_eq!(response.status(), StatusCode::ACCEPTED, "send {n} of 5");
        assert_eq!(header(&response, "ratelimit-policy"), r#""intake";q=5;w=5"#);
        assert!(header(&response, "ratelimit").starts_with(r#""intake";r="#));
    }
    let (refused, passed) = client.until_refused(100).await;
    // One more a second refills: only a slow machine lets any through.
    assert!(
        passed as f64 <= start.elapsed().as_secs_f64() + 1.0,
        "{passed} more passed in {:?}",
        start.elapsed()
    );
    assert_eq!(header(&refused, "content-type"), "application/problem+json");
    let retry_after: u64 = header(&refused, "retry-after").parse().unwrap();
    assert!(retry_after >= 1, "Retry-After: {retry_after}");
    assert_eq!(header(&refused, "ratelimit-policy"), r#""intake";q=5;w=5"#);
    assert_eq!(
        header(&refused, "ratelimit"),
        format!(r#""intake";r=0;t={retry_after}"#)
    );
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["status"], 429);
    assert_eq!(problem["type"], "https://kurir.dev/problems/rate-limited");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("1 messages accepted a second, 5 at once"),
        "{detail}"
    );
    let stored = messages_stored(&app).await;
    assert_eq!(stored, 5 + passed as i64, "a refused message is not stored");

    let again = eventually(DEADLINE, || async {
        (client.send().await.status() == StatusCode::ACCEPTED).then_some(())
    })
    .await;
    assert!(again.is_some(), "accepted again once the bucket refilled");
    assert_eq!(messages_stored(&app).await, stored + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_counts_its_items_and_is_accepted_whole_or_refused_whole() {
    let app = TestApp::spawn_with(no_worker()).await;
    let client = Client::new_account(&app, "bulk").await;
    limit(&app, "bulk", 1, 100).await;

    let first = client.batch(60).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let remaining = header(&first, "ratelimit").to_owned();
    let results: Value = first.json().await.unwrap();
    assert_eq!(results["results"].as_array().unwrap().len(), 60);
    assert!(remaining.starts_with(r#""intake";r=4"#), "{remaining}");

    // 40 left (and 1 a second): 60 more do not fit, and none is stored.
    let second = client.batch(60).await;
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(header(&second, "retry-after").parse::<u64>().unwrap() >= 1);
    assert_eq!(messages_stored(&app).await, 60);

    // More than the burst could never pass: a validation error, not a 429.
    let too_big = client.batch(101).await;
    assert_eq!(too_big.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = too_big.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], "messages");
    let message = problem["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("at most 100"), "{message}");

    let rest = client.batch(40).await;
    assert_eq!(rest.status(), StatusCode::ACCEPTED);
    assert_eq!(messages_stored(&app).await, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_messages_that_were_not_stored_are_given_back() {
    let app = TestApp::spawn_with(no_worker()).await;
    let client = Client::new_account(&app, "typos").await;
    limit(&app, "typos", 1, 10).await;

    // Five of ten name a user that does not exist, one is invalid (not counted).
    let mut items: Vec<Value> = (0..10)
        .map(|n| {
            let user = if n % 2 == 0 { "u1" } else { "nobody" };
            json!({"user_id": user, "message": "Halo!"})
        })
        .collect();
    items.push(json!({"user_id": "u1", "message": ""}));
    let mixed = client
        .post("/v1/messages/batch", &json!({"messages": items}))
        .await;
    assert_eq!(mixed.status(), StatusCode::ACCEPTED);
    let results: Value = mixed.json().await.unwrap();
    let errors = results["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r.get("error").is_some())
        .count();
    assert_eq!(errors, 6);
    assert_eq!(messages_stored(&app).await, 5);

    // The five not stored went back: five more fit at once.
    let rest = client.batch(5).await;
    assert_eq!(rest.status(), StatusCode::ACCEPTED);
    assert_eq!(messages_stored(&app).await, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_account_is_not_held_back_by_one_over_its_limit() {
    let app = TestApp::spawn_with(no_worker()).await;
    let limited = Client::new_account(&app, "busy").await;
    limit(&app, "busy", 1, 3).await;
    let (refused, _) = limited.until_refused(100).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);

    // The app's own account has the default limit (1000/s, 10000 at once).
    app.create_user("u1", "+62123456780").await;
    let other = app
        .post("/v1/users/u1/messages", &json!({"message": "Halo!"}))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::ACCEPTED);
    assert_eq!(
        header(&other, "ratelimit-policy"),
        r#""intake";q=10000;w=10"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_processes_sharing_the_database_hold_one_limit_together() {
    const RATE: u32 = 20;
    const BURST: u32 = 40;
    let app = TestApp::spawn_with(no_worker()).await;
    let first = Client::new_account(&app, "spread").await;
    let second = first.on(&app.another_api().await);
    limit(&app, "spread", RATE, BURST).await;

    // Eight requests at a time, spread over both APIs, until each has
    // refused a few.
    let start = Instant::now();
    let mut accepted = [0usize; 2];
    let mut refused = [0usize; 2];
    let apis = [&first, &second];
    while refused.iter().any(|&r| r < 3) {
        assert!(start.elapsed() < DEADLINE, "both APIs never refused");
        let round: Vec<StatusCode> = futures_util::future::join_all(
            (0..8).map(|n| async move { apis[n % 2].send().await.status() }),
        )
        .await;
        for (n, status) in round.into_iter().enumerate() {
            match status {
                StatusCode::ACCEPTED => accepted[n % 2] += 1,
                StatusCode::TOO_MANY_REQUESTS => refused[n % 2] += 1,
                other => panic!("a send answered {other}"),
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let total = accepted[0] + accepted[1];
    // Each API leases chunks of rate × 100 ms (2 here): together they may
    // overshoot the bucket by what they hold, never by a second bucket.
    let most = f64::from(BURST) + f64::from(RATE) * elapsed + 2.0 * 2.0 + 1.0;
    assert!(
        total as f64 <= most,
        "{total} accepted ({accepted:?}) in {elapsed:.2}s; at most {most:.0} may be"
    );
    assert!(
        total >= BURST as usize,
        "only {total} accepted: tokens were lost"
    );
    assert!(
        accepted.iter().all(|&a| a > 0),
        "both APIs accepted: {accepted:?}"
    );
    assert_eq!(messages_stored(&app).await, total as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_statement_takes_from_one_bucket_for_every_process() {
    let app = TestApp::spawn_with(no_worker()).await;
    app.key_for("leaser").await;
    limit(&app, "leaser", 10, 20).await;
    let client = app.pool.get().await.unwrap();
    let account: AccountId = AccountId(
        client
            .query_one("SELECT id FROM accounts WHERE name = 'leaser'", &[])
            .await
            .unwrap()
            .get(0),
    );
    let default = IntakeLimit {
        rate: 1000,
        burst: 10_000,
    };
    let lease = |need, want, give_back| {
        let client = &client;
        async move {
            limits::lease(client, account, default, need, want, give_back)
                .await
                .unwrap()
        }
    };
    // Two "processes" take from one bucket, created full.
    let a = lease(1, 15, 0).await;
    assert_eq!(
        a.limit,
        IntakeLimit {
            rate: 10,
            burst: 20
        }
    );
    assert_eq!(a.granted, 15);
    assert!((5.0..6.0).contains(&a.left), "{a:?}");
    let b = lease(1, 2, 0).await;
    assert_eq!(b.granted, 2);
    // 3 and a bit left: a request for 10 gets nothing, and takes nothing.
    let short = lease(10, 10, 0).await;
    assert_eq!(short.granted, 0);
    assert!((3.0..4.0).contains(&short.left), "{short:?}");
    // What a process did not use goes back with its next lease, up to the burst.
    let again = lease(1, 10, 15).await;
    assert_eq!(again.granted, 10);
    assert!((8.0..9.0).contains(&again.left), "{again:?}");
    // No limit of its own and a default of none: nothing is counted.
    client
        .execute(
            "UPDATE accounts SET intake_rate = 0 WHERE id = $1",
            &[&account.0],
        )
        .await
        .unwrap();
    let free = lease(1_000_000, 1_000_000, 0).await;
    assert!(free.limit.is_unlimited());
    assert_eq!(free.granted, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kurir_accounts_limit_sets_and_clears_a_limit_that_running_apis_apply() {
    let app = TestApp::spawn_with(no_worker()).await;
    let client = Client::new_account(&app, "cli").await;
    let env = app.process_env();

    let set = run_kurir(
        &[
            "accounts",
            "limit",
            "--account",
            "cli",
            "--rate",
            "1",
            "--burst",
            "3",
        ],
        &env,
    )
    .await;
    let stdout = String::from_utf8_lossy(&set.stdout);
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    assert_eq!(
        stdout.trim(),
        "cli: 1 messages/s, burst 3 (own rate, own burst); batches of more than 3 messages will be refused (422)"
    );
    let (refused, passed) = client.until_refused(100).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(passed >= 3, "the burst passed first: {passed}");

    let list = run_kurir(&["accounts", "list", "--json"], &env).await;
    assert!(list.status.success());
    let rows: Vec<Value> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let cli = rows.iter().find(|row| row["account"] == "cli").unwrap();
    assert_eq!(cli["rate"], 1);
    assert_eq!(cli["burst"], 3);
    assert_eq!(cli["own_rate"], true);
    let test_a = rows.iter().find(|row| row["account"] == "test-a").unwrap();
    assert_eq!(test_a["rate"], 1000);
    assert_eq!(test_a["own_rate"], false);

    let clear = run_kurir(&["accounts", "limit", "--account", "cli", "--clear"], &env).await;
    assert!(clear.status.success());
    assert_eq!(
        String::from_utf8_lossy(&clear.stdout).trim(),
        "cli: 1000 messages/s, burst 10000 (default)"
    );
    // Within one lease the default applies: 20 at once pass.
    let back = eventually(DEADLINE, || async {
        (client.batch(20).await.status() == StatusCode::ACCEPTED).then_some(())
    })
    .await;
    assert!(back.is_some(), "the cleared limit was never applied");

    let unknown = run_kurir(
        &["accounts", "limit", "--account", "nobody", "--rate", "5"],
        &env,
    )
    .await;
    assert_eq!(unknown.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(stderr.contains("no account named \"nobody\""), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_away_concurrent_sends_of_one_account_answer_503_without_waiting_in_turn() {
    let app = TestApp::spawn_with(Options {
        proxy_api_postgres: true,
        ..no_worker()
    })
    .await;
    app.create_user("u1", "+62123456789").await;
    let postgres = app.api_postgres.as_ref().unwrap();
    postgres.cut();
    let start = Instant::now();
    let answers: Vec<StatusCode> = futures_util::future::join_all((0..16).map(|_| async {
        app.post("/v1/users/u1/messages", &json!({"message": "Halo!"}))
            .send()
            .await
            .unwrap()
            .status()
    }))
    .await;
    assert!(
        answers
            .iter()
            .all(|s| *s == StatusCode::SERVICE_UNAVAILABLE),
        "{answers:?}"
    );
    // KURIR_DB_TIMEOUT is 2s here: one deadline for all, not one each.
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "took {:?}",
        start.elapsed()
    );
    postgres.restore();
    app.accepted_again("u1").await;
}
