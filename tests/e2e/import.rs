//! `kurir users import`: good rows land, bad ones are reported with their
//! line and reason, and importing the same file again changes nothing.

use std::path::PathBuf;

use kurir_core::{AccountId, PhoneNumber, StatusText, UserId, UserName};
use kurir_store::{
    import::{self, ImportRow, RowOutcome},
    users::NewUser,
};

use crate::{
    process::run_kurir,
    support::{Options, TestApp},
};

const HEADER: &str = "id,name,phone_number,profile_image,status\n";

fn row(line: u64, id: &str, name: &str, phone: &str) -> ImportRow {
    ImportRow {
        line,
        user: NewUser {
            id: UserId::parse("id", id).unwrap(),
            name: UserName::parse("name", name).unwrap(),
            phone_number: PhoneNumber::parse("phone_number", phone).unwrap(),
            profile_image: None,
            status: StatusText::parse_initial("status", "").unwrap(),
        },
    }
}

async fn app_without_worker() -> TestApp {
    TestApp::spawn_with(Options {
        start_worker: false,
        ..Options::default()
    })
    .await
}

async fn account(app: &TestApp, name: &str) -> AccountId {
    let client = app.pool.get().await.unwrap();
    import::account_named(&client, name).await.unwrap().unwrap()
}

/// (id, name, status, updated_at) of every user of the app's database.
async fn users(app: &TestApp) -> Vec<(String, String, String, chrono::DateTime<chrono::Utc>)> {
    let client = app.pool.get().await.unwrap();
    client
        .query(
            "SELECT id, name, status, updated_at FROM users ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

/// A CSV file of this test's own, removed when dropped.
struct CsvFile(PathBuf);

impl CsvFile {
    fn new(tag: &str, contents: &str) -> Self {
        let name = format!(
            "kurir-import-{tag}-{}.csv",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, contents).unwrap();
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for CsvFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn env_of(app: &TestApp) -> Vec<(String, String)> {
    vec![
        (
            "DATABASE_URL".to_owned(),
            app.database_args.database_url.clone(),
        ),
        ("KURIR_DB_POOL_SIZE".to_owned(), "2".to_owned()),
    ]
}

/// `name value` lines of the summary, as numbers.
fn summary(stdout: &[u8]) -> std::collections::HashMap<String, f64> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            Some((parts.next()?.to_owned(), parts.next()?.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_upserts_new_and_changed_users_and_leaves_identical_ones_alone() {
    let app = app_without_worker().await;
    let acme = account(&app, "test-a").await;
    let client = app.pool.get().await.unwrap();
    let rows = vec![
        row(2, "u-1", "Ana", "+6281200000001"),
        row(3, "u-2", "Budi", "+6281200000002"),
        row(4, "u-3", "Citra", "+6281200000003"),
    ];
    let first = import::upsert_users(&client, acme, &rows).await.unwrap();
    assert_eq!(first, vec![RowOutcome::Created; 3]);
    let before = users(&app).await;

    let again = import::upsert_users(&client, acme, &rows).await.unwrap();
    assert_eq!(again, vec![RowOutcome::Unchanged; 3]);
    assert_eq!(
        users(&app).await,
        before,
        "nothing changed, not even updated_at"
    );

    // One field of one user changes: only that user is written.
    let mut changed = rows.clone();
    changed[1].user.name = UserName::parse("name", "Budi Santoso").unwrap();
    let outcomes = import::upsert_users(&client, acme, &changed).await.unwrap();
    assert_eq!(
        outcomes,
        [
            RowOutcome::Unchanged,
            RowOutcome::Updated,
            RowOutcome::Unchanged
        ]
    );
    let after = users(&app).await;
    assert_eq!(after[0], before[0]);
    assert_eq!(after[2], before[2]);
    assert_eq!(after[1].1, "Budi Santoso");
    assert!(after[1].3 > before[1].3, "updated_at moved for u-2 only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_number_another_user_holds_rejects_only_that_row() {
    let app = app_without_worker().await;
    app.create_user("api-user", "+6281299999999").await;
    let acme = account(&app, "test-a").await;
    let client = app.pool.get().await.unwrap();
    let rows = vec![
        row(2, "u-1", "Ana", "+6281299999999"),
        row(3, "u-2", "Budi", "+6281200000002"),
        // A repeat inside one batch is refused here too, not an error.
        row(4, "u-2", "Budi again", "+6281200000004"),
    ];
    let outcomes = import::upsert_users(&client, acme, &rows).await.unwrap();
    match &outcomes[0] {
        RowOutcome::Rejected(reason) => assert!(reason.contains("api-user"), "{reason}"),
        other => panic!("the taken phone number was {other:?}"),
    }
    assert_eq!(outcomes[1], RowOutcome::Created);
    assert!(
        matches!(outcomes[2], RowOutcome::Rejected(_)),
        "{outcomes:?}"
    );

    // Another account may use the same number.
    app.key_for("other").await;
    let other = account(&app, "other").await;
    let outcomes = import::upsert_users(&client, other, &rows[..1])
        .await
        .unwrap();
    assert_eq!(outcomes, [RowOutcome::Created]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_import_command_reports_bad_rows_by_line_and_is_idempotent() {
    let app = app_without_worker().await;
    app.create_user("taken", "+6281277777777").await;
    let csv = CsvFile::new(
        "mixed",
        &format!(
            "{HEADER}\
             u-1,Ana,+6281200000001,https://example.com/a.jpg,Sedang rapat\n\
             u-2,,0812,ftp://x,\n\
             u-3,Citra,+6281200000003,,\n\
             u-3,Citra again,+6281200000033,,\n\
             u-4,Dewi,+6281277777777,,\n\
             \"u-5\",\"Eka, \"\"the second\"\"\",+6281200000005,,\n"
        ),
    );
    let rejects = CsvFile::new("rejects", "");
    let args = [
        "users",
        "import",
        "--account",
        "test-a",
        "--rejects",
        rejects.path(),
        csv.path(),
    ];
    let out = run_kurir(&args, &env_of(&app)).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "some rows rejected: {stderr}");
    let counts = summary(&out.stdout);
    assert_eq!(counts["read"], 6.0, "{counts:?}");
    assert_eq!(counts["created"], 3.0, "{counts:?}");
    assert_eq!(counts["rejected"], 3.0, "{counts:?}");
    assert!(
        stderr.contains("line 3: id \"u-2\": name: must not be blank"),
        "{stderr}"
    );
    assert!(
        stderr.contains("phone_number: must be in E.164 form"),
        "{stderr}"
    );
    assert!(
        stderr.contains("profile_image: must be an absolute http(s) URL"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 5: id \"u-3\": id: u-3 is on line 4 already"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 6: id \"u-4\": phone_number is already used by user taken"),
        "{stderr}"
    );
    let written = std::fs::read_to_string(&rejects.0).unwrap();
    assert!(written.starts_with("line,id,reason\n3,u-2,"), "{written}");
    assert_eq!(written.lines().count(), 4, "{written}");
    let imported = users(&app).await;
    let names: Vec<&str> = imported.iter().map(|u| u.1.as_str()).collect();
    assert!(names.contains(&"Eka, \"the second\""), "{names:?}");

    // The same file again: nothing created or updated, updated_at untouched.
    let again = run_kurir(&args, &env_of(&app)).await;
    assert_eq!(again.status.code(), Some(1));
    let counts = summary(&again.stdout);
    assert_eq!(
        (counts["created"], counts["updated"], counts["unchanged"]),
        (0.0, 0.0, 3.0),
        "{counts:?}"
    );
    assert_eq!(users(&app).await, imported);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_file_exits_0_and_a_changed_row_updates_only_that_user() {
    let app = app_without_worker().await;
    let lines: String = (0..2500)
        .map(|n| format!("u-{n},User {n},+62812{n:07},,\n"))
        .collect();
    let csv = CsvFile::new("clean", &format!("{HEADER}{lines}"));
    let args = ["users", "import", "--account", "test-a", csv.path()];
    let out = run_kurir(&args, &env_of(&app)).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(summary(&out.stdout)["created"], 2500.0);
    let before = users(&app).await;

    let again = run_kurir(&args, &env_of(&app)).await;
    assert_eq!(again.status.code(), Some(0));
    let counts = summary(&again.stdout);
    assert_eq!(
        (counts["created"], counts["updated"], counts["unchanged"]),
        (0.0, 0.0, 2500.0)
    );
    assert_eq!(users(&app).await, before, "not even updated_at moved");

    let changed = lines.replacen(
        "u-1234,User 1234,+628120001234,,\n",
        "u-1234,User 1234,+628120001234,,Sedang rapat\n",
        1,
    );
    let csv = CsvFile::new("changed", &format!("{HEADER}{changed}"));
    let args = ["users", "import", "--account", "test-a", csv.path()];
    let out = run_kurir(&args, &env_of(&app)).await;
    assert_eq!(out.status.code(), Some(0));
    let counts = summary(&out.stdout);
    assert_eq!((counts["updated"], counts["unchanged"]), (1.0, 2499.0));
    let after = users(&app).await;
    let differ: Vec<&str> = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| b != a)
        .map(|(_, a)| a.0.as_str())
        .collect();
    assert_eq!(differ, ["u-1234"]);
    assert_eq!(
        after.iter().find(|u| u.0 == "u-1234").unwrap().2,
        "Sedang rapat"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_header_or_an_unknown_account_exits_2_with_one_line() {
    let app = app_without_worker().await;
    let csv = CsvFile::new(
        "header",
        "id,name,phone,profile_image,status\nu-1,A,+6281200000001,,\n",
    );
    let out = run_kurir(
        &["users", "import", "--account", "test-a", csv.path()],
        &env_of(&app),
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("unknown column \"phone\""), "{stderr}");

    let csv = CsvFile::new("missing", "id,name,phone_number,status\n");
    let out = run_kurir(
        &["users", "import", "--account", "test-a", csv.path()],
        &env_of(&app),
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no column \"profile_image\""), "{stderr}");

    let csv = CsvFile::new("good", &format!("{HEADER}u-1,A,+6281200000001,,\n"));
    let out = run_kurir(
        &["users", "import", "--account", "nobody", csv.path()],
        &env_of(&app),
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no account named \"nobody\""), "{stderr}");
    assert!(users(&app).await.is_empty());
}
