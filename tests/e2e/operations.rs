//! Operator commands' guarantees: migrations and keys.

use kurir_core::apikey::ApiKey;
use kurir_store::{
    keys::{self, KeyInserted},
    migrate,
};

use crate::{
    process::run_kurir,
    support::{TestApp, database_url, pg_config},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_creates_the_database_and_is_safe_to_run_concurrently() {
    let name = format!(
        "kurir_mig_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let config = pg_config(&name);
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let config = config.clone();
            tokio::spawn(async move { migrate::run(&config).await })
        })
        .collect();
    let mut applied = Vec::new();
    for run in runs {
        applied.push(
            run.await
                .unwrap()
                .expect("every concurrent migrate succeeds"),
        );
    }
    // Exactly one of them applied the migrations.
    assert_eq!(applied.iter().filter(|&&n| n > 0).count(), 1, "{applied:?}");
    assert_eq!(
        migrate::run(&config).await.unwrap(),
        0,
        "a later run has nothing to do"
    );

    let client = migrate::connect(&config).await.unwrap();
    let tables: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('messages', 'status_updates', 'users', 'api_keys')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 4);
    drop(client);
    let admin = migrate::connect(&pg_config("postgres")).await.unwrap();
    admin
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_the_same_key_again_is_a_no_op_and_a_clash_is_refused() {
    let app = TestApp::spawn_with(crate::support::Options {
        start_worker: false,
        ..Default::default()
    })
    .await;
    let client = app.pool.get().await.unwrap();
    let demo = keys::ensure_account(&client, "demo").await.unwrap();
    assert_eq!(keys::ensure_account(&client, "demo").await.unwrap(), demo);

    let key = ApiKey::parse("kurir_demo_0123456789abcdefghijklmnopqrstuv").unwrap();
    let insert = |account, key: &ApiKey| {
        let (id, hash) = (key.key_id().to_owned(), key.hash());
        let client = &client;
        async move { keys::insert_key(client, account, &id, &hash).await.unwrap() }
    };
    assert_eq!(insert(demo, &key).await, KeyInserted::Created);
    assert_eq!(insert(demo, &key).await, KeyInserted::AlreadyThere);
    assert_eq!(
        keys::account_for_key(&client, &key.hash()).await.unwrap(),
        Some(demo)
    );

    // The same id with another secret, or the key for another account, is refused.
    let other = ApiKey::parse("kurir_demo_ZZZZZZZZZZabcdefghijklmnopqrstuv").unwrap();
    assert_eq!(insert(demo, &other).await, KeyInserted::IdTaken);
    let elsewhere = keys::ensure_account(&client, "elsewhere").await.unwrap();
    assert_eq!(insert(elsewhere, &key).await, KeyInserted::OtherAccount);

    assert!(keys::revoke_key(&client, key.key_id()).await.unwrap());
    assert!(!keys::revoke_key(&client, key.key_id()).await.unwrap());
    assert_eq!(
        keys::account_for_key(&client, &key.hash()).await.unwrap(),
        None
    );
    assert_eq!(insert(demo, &key).await, KeyInserted::Revoked);
}

/// A database of its own on the machine's Postgres, dropped at the end.
struct ScratchDatabase {
    name: String,
}

impl ScratchDatabase {
    async fn create(migrated: bool) -> Self {
        let name = format!(
            "kurir_ops_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let admin = migrate::connect(&pg_config("postgres")).await.unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        if migrated {
            migrate::run(&pg_config(&name)).await.unwrap();
        }
        Self { name }
    }

    fn url(&self) -> String {
        database_url(&self.name)
    }

    async fn drop_it(self) {
        let admin = migrate::connect(&pg_config("postgres")).await.unwrap();
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await
            .unwrap();
    }
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn stderr_lines(out: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_and_worker_refuse_to_start_on_a_missing_or_unmigrated_database() {
    let missing = database_url("kurir_missing_0123456789");
    let empty = ScratchDatabase::create(false).await;
    for (url, says) in [
        (missing, "does not exist"),
        (empty.url(), "has no kurir tables"),
    ] {
        for command in ["api", "worker"] {
            let out = run_kurir(
                &[command],
                &env(&[
                    ("DATABASE_URL", &url),
                    ("KURIR_API_ADDR", "127.0.0.1:0"),
                    ("KURIR_WORKER_METRICS_ADDR", "127.0.0.1:0"),
                ]),
            )
            .await;
            assert_eq!(out.status.code(), Some(2), "kurir {command} on {url}");
            let lines = stderr_lines(&out);
            assert_eq!(lines.len(), 1, "one line: {lines:?}");
            assert!(lines[0].contains(says), "{lines:?}");
            assert!(lines[0].contains("run `kurir migrate`"), "{lines:?}");
        }
    }
    empty.drop_it().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_twice_says_up_to_date_and_keys_work_from_the_command_line() {
    let db = ScratchDatabase::create(false).await;
    let url = db.url();
    let with_db = env(&[("DATABASE_URL", &url), ("RUST_LOG", "info")]);
    let first = run_kurir(&["migrate"], &with_db).await;
    assert!(first.status.success());
    let again = run_kurir(&["migrate"], &with_db).await;
    assert!(again.status.success());
    let said = String::from_utf8_lossy(&again.stderr).into_owned();
    assert!(said.contains("is up to date"), "{said}");
    assert!(!said.contains("NOTICE"), "{said}");

    // The same key again is a no-op and prints it; the whole key revokes it.
    let demo = "kurir_demo_0123456789abcdefghijklmnopqrstuv";
    for _ in 0..2 {
        let out = run_kurir(
            &["keys", "create", "--account", "acme", "--key", demo],
            &with_db,
        )
        .await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), demo);
    }
    let elsewhere = run_kurir(
        &["keys", "create", "--account", "other", "--key", demo],
        &with_db,
    )
    .await;
    assert_eq!(elsewhere.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&elsewhere.stderr).contains("exists already for another account")
    );

    // Global settings work after the subcommand too.
    let listed = run_kurir(&["keys", "list", "--json", "--database-url", &url], &[]).await;
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let keys: Vec<serde_json::Value> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["key_id"], "demo");
    assert_eq!(keys[0]["revoked_at"], serde_json::Value::Null);
    let table = run_kurir(&["keys", "list", "--database-url", &url], &[]).await;
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    let header = table.lines().next().unwrap();
    let row = table.lines().nth(1).unwrap();
    assert_eq!(
        header.find("ACCOUNT"),
        row.find("acme"),
        "aligned columns:\n{table}"
    );

    let revoked = run_kurir(&["keys", "revoke", demo], &with_db).await;
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    let again = run_kurir(&["keys", "revoke", "demo"], &with_db).await;
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("no live key with id demo"));
    db.drop_it().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_amqp_password_says_access_refused() {
    let url = {
        let mut url = url::Url::parse(&crate::support::amqp_url()).unwrap();
        url.set_password(Some("certainly-wrong")).unwrap();
        url.to_string()
    };
    let out = run_kurir(&["dlq", "list"], &env(&[("AMQP_URL", &url)])).await;
    assert_eq!(out.status.code(), Some(1));
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("access refused, check AMQP_URL credentials"),
        "{lines:?}"
    );
}
