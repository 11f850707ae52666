//! Operator commands' guarantees: migrations and keys.

use kurir_core::apikey::ApiKey;
use kurir_store::{StoreError, keys, migrate};

use crate::support::{TestApp, pg_config};

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
    assert!(
        keys::insert_key(&client, demo, key.key_id(), &key.hash())
            .await
            .unwrap()
    );
    assert!(
        !keys::insert_key(&client, demo, key.key_id(), &key.hash())
            .await
            .unwrap()
    );
    assert_eq!(
        keys::account_for_key(&client, &key.hash()).await.unwrap(),
        Some(demo)
    );

    // The same id with another secret, or for another account, is refused.
    let other = ApiKey::parse("kurir_demo_ZZZZZZZZZZabcdefghijklmnopqrstuv").unwrap();
    let clash = keys::insert_key(&client, demo, other.key_id(), &other.hash()).await;
    assert!(
        matches!(clash, Err(StoreError::Conflict { .. })),
        "{clash:?}"
    );
    let elsewhere = keys::ensure_account(&client, "elsewhere").await.unwrap();
    let clash = keys::insert_key(&client, elsewhere, key.key_id(), &key.hash()).await;
    assert!(
        matches!(clash, Err(StoreError::Conflict { .. })),
        "{clash:?}"
    );

    assert!(keys::revoke_key(&client, key.key_id()).await.unwrap());
    assert!(!keys::revoke_key(&client, key.key_id()).await.unwrap());
    assert_eq!(
        keys::account_for_key(&client, &key.hash()).await.unwrap(),
        None
    );
}
