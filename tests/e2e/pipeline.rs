//! The store's grouped pipeline statements, driven directly: one
//! `record_many` with several outcomes must give each row its own answer.

use std::time::Duration;

use chrono::Utc;
use kurir_core::{
    AccountId, JobKind,
    attempt::{Attempt, Outcome, ProviderError, Resolution},
};
use kurir_store::pipeline::{self, Recorded};
use uuid::Uuid;

use crate::support::{Options, TestApp};

const LEASE: Duration = Duration::from_secs(60);

fn attempt(kind: JobKind, id: Uuid, account: AccountId, number: i32, outcome: Outcome) -> Attempt {
    Attempt {
        kind,
        subject_id: id,
        account,
        attempt: number,
        provider: "sandbox",
        started_at: Utc::now(),
        latency: Duration::from_millis(3),
        outcome,
    }
}

fn delivered(provider_message_id: Option<&str>) -> Outcome {
    Outcome::Delivered {
        provider_message_id: provider_message_id.map(str::to_owned),
        http_status: Some(200),
    }
}

fn error(code: &str) -> ProviderError {
    ProviderError::new(code, format!("{code} happened"), Some(200))
}

fn uuid(id: &str) -> Uuid {
    Uuid::parse_str(id).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_grouped_record_gives_each_row_its_own_outcome() {
    let app = TestApp::spawn_with(Options {
        start_worker: false,
        ..Options::default()
    })
    .await;
    app.create_user("group", "+6281234567890").await;
    let ids: Vec<Uuid> = app
        .send_many("group", 4)
        .await
        .iter()
        .map(|id| uuid(id))
        .collect();
    let client = app.pool.get().await.unwrap();
    let claimed = pipeline::claim_messages(&client, &ids, LEASE, None)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 4);
    let account = claimed[0].account;
    let [sent, retried, failed, stale] = [ids[0], ids[1], ids[2], ids[3]];

    let items = vec![
        (
            Resolution::Done,
            attempt(
                JobKind::Message,
                sent,
                account,
                1,
                delivered(Some("wamid.one\0")),
            ),
        ),
        (
            Resolution::Retry {
                after: Duration::from_secs(30),
            },
            attempt(
                JobKind::Message,
                retried,
                account,
                1,
                Outcome::Retryable {
                    error: error("busy"),
                    retry_after: None,
                },
            ),
        ),
        (
            Resolution::Failed { gave_up: None },
            attempt(
                JobKind::Message,
                failed,
                account,
                1,
                Outcome::Permanent {
                    error: error("131026"),
                },
            ),
        ),
        // An attempt number the row is not at: a writer whose lease ran out.
        (
            Resolution::Done,
            attempt(JobKind::Message, stale, account, 7, delivered(None)),
        ),
    ];
    let recorded = pipeline::record_many(&client, JobKind::Message, &items)
        .await
        .unwrap();
    assert_eq!(
        recorded,
        [
            Recorded::Applied,
            Recorded::Applied,
            Recorded::Applied,
            Recorded::Superseded
        ]
    );
    // The same group again (its reply was lost): nothing changes.
    let again = pipeline::record_many(&client, JobKind::Message, &items[..1])
        .await
        .unwrap();
    assert_eq!(again, [Recorded::AlreadyRecorded]);

    let rows = client
        .query(
            "SELECT id, state, provider_message_id, last_error->>'code',
                    CASE WHEN state = 'queued' THEN published END,
                    due_at > now() + interval '20 seconds', sent_at IS NOT NULL, failed_at IS NOT NULL,
                    lease_until IS NULL
             FROM messages WHERE id = ANY($1)",
            &[&ids],
        )
        .await
        .unwrap();
    let row = |id: Uuid| rows.iter().find(|r| r.get::<_, Uuid>(0) == id).unwrap();
    // (state, provider id, error code, published if queued, due later, sent_at, failed_at, unleased)
    type Seen = (
        String,
        Option<String>,
        Option<String>,
        Option<bool>,
        bool,
        bool,
        bool,
        bool,
    );
    let seen = |id: Uuid| -> Seen {
        let r = row(id);
        (
            r.get(1),
            r.get(2),
            r.get(3),
            r.get(4),
            r.get(5),
            r.get(6),
            r.get(7),
            r.get(8),
        )
    };
    assert_eq!(
        seen(sent),
        (
            "sent".into(),
            Some("wamid.one".into()),
            None,
            None,
            false,
            true,
            false,
            true
        )
    );
    assert_eq!(
        seen(retried),
        (
            "queued".into(),
            None,
            Some("busy".into()),
            Some(false),
            true,
            false,
            false,
            true
        )
    );
    assert_eq!(
        seen(failed),
        (
            "failed".into(),
            None,
            Some("131026".into()),
            None,
            false,
            false,
            true,
            true
        )
    );
    // Untouched by the stale writer: still leased, at attempt 1.
    assert_eq!(
        seen(stale),
        (
            "sending".into(),
            None,
            None,
            None,
            false,
            false,
            false,
            false
        )
    );
    let attempts: Vec<(Uuid, i32)> = client
        .query(
            "SELECT subject_id, attempt FROM delivery_attempts WHERE subject_id = ANY($1) ORDER BY attempt",
            &[&ids],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(attempts.len(), 4, "{attempts:?}");
    assert!(
        attempts.contains(&(stale, 7)),
        "kept as history: {attempts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_status_updates_of_one_user_in_one_group_leave_the_newer_text() {
    let app = TestApp::spawn_with(Options {
        start_worker: false,
        ..Options::default()
    })
    .await;
    app.create_user("busy", "+6281234567891").await;
    let older = uuid(&app.set_status("busy", "in a meeting").await);
    let newer = uuid(&app.set_status("busy", "back at my desk").await);
    let client = app.pool.get().await.unwrap();
    let claimed = pipeline::claim_status_updates(&client, &[older, newer], LEASE)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    let account = claimed[0].account;
    let done = |id| {
        (
            Resolution::Done,
            attempt(JobKind::StatusUpdate, id, account, 1, delivered(None)),
        )
    };
    // The newer first: the order in the group must not matter.
    let recorded =
        pipeline::record_many(&client, JobKind::StatusUpdate, &[done(newer), done(older)])
            .await
            .unwrap();
    assert_eq!(recorded, [Recorded::Applied, Recorded::Applied]);
    let user = app.get_json("/v1/users/busy").await;
    assert_eq!(user["status"], "back at my desk", "{user:#}");
    let states: Vec<String> = client
        .query(
            "SELECT state FROM status_updates WHERE id = ANY($1)",
            &[&vec![older, newer]],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(states, ["success", "success"]);
}
