//! Migrations whose comments were edited after they shipped: a database
//! migrated before the edit still migrates, and any other change is still
//! refused as divergent. `DATABASE_URL` names the server.
#![allow(clippy::unwrap_used)]

fn config(name: &str) -> tokio_postgres::Config {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let mut config: tokio_postgres::Config = url.parse().unwrap();
    config.dbname(name);
    config
}

async fn sql(config: &tokio_postgres::Config, statement: &str) {
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client.batch_execute(statement).await.unwrap();
}

#[tokio::test]
async fn a_database_migrated_before_the_comment_edits_still_migrates_and_other_changes_do_not() {
    let name = format!("kurir_mig_{}", uuid::Uuid::new_v4().simple());
    let db = config(&name);
    kurir_store::migrate::run(&db).await.unwrap();
    // As the shipped files left it: V2's checksum before its comment edit.
    sql(
        &db,
        "UPDATE refinery_schema_history SET checksum = '6568775819899244796' WHERE version = 2",
    )
    .await;
    assert_eq!(kurir_store::migrate::run(&db).await.unwrap(), 0);

    // A checksum nobody shipped: divergent, refused.
    sql(
        &db,
        "UPDATE refinery_schema_history SET checksum = '1' WHERE version = 3",
    )
    .await;
    let refused = kurir_store::migrate::run(&db).await;
    assert!(refused.is_err(), "a divergent migration must be refused");

    sql(
        &config("postgres"),
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    )
    .await;
}
