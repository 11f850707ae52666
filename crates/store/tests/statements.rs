//! Each statement of the delivery pipeline on its own, against a real
//! Postgres: given rows, run it, read the rows. Each test has a database of
//! its own (created, migrated and dropped here), so they run in parallel.
//! `DATABASE_URL` names the server (default: the local one, user postgres).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chrono::Utc;
use kurir_core::{
    AccountId, Content, JobKind, JobState, LastError, MessageBody, MessageId, MessageStatus,
    PhoneNumber, StatusText, StatusUpdateId, UserId, UserName,
    attempt::{Attempt, Outcome, ProviderError, Resolution},
    config::DatabaseArgs,
};
use kurir_store::{
    Client, Db, keys,
    messages::{self, NewMessage},
    pipeline::{self, AttemptOutcome, Publishable, Publishing, Recorded, Replayed},
    status_updates::{self, NewStatusUpdate},
    users::{self, NewUser},
};
use uuid::Uuid;

const LEASE: Duration = Duration::from_secs(60);

fn server_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh, migrated database; dropped when the test ends (even on panic).
struct Fresh {
    name: String,
    db: Db,
    account: AccountId,
    other: AccountId,
}

impl Fresh {
    async fn new() -> Self {
        let name = format!("kurir_stmt_{}", Uuid::new_v4().simple());
        let mut config: tokio_postgres::Config = server_url().parse().unwrap();
        config.dbname(&name);
        kurir_store::migrate::run(&config).await.unwrap();
        let url = {
            let base = server_url();
            let (server, _) = base.rsplit_once('/').unwrap();
            format!("{server}/{name}")
        };
        let db = Db::connect_lazily(&DatabaseArgs {
            database_url: url,
            db_pool_size: 4,
            db_timeout: Duration::from_secs(10),
        })
        .unwrap();
        let client = db.pool().get().await.unwrap();
        let account = keys::ensure_account(&client, "acme").await.unwrap();
        let other = keys::ensure_account(&client, "other").await.unwrap();
        for (account, user, phone) in [
            (account, "u1", "+62811000001"),
            (account, "u2", "+62811000002"),
            (other, "o1", "+62811000003"),
        ] {
            users::insert(
                &client,
                account,
                &NewUser {
                    id: UserId::from_trusted(user.into()),
                    name: UserName::from_trusted(user.into()),
                    phone_number: PhoneNumber::from_trusted(phone.into()),
                    profile_image: None,
                    status: StatusText::from_trusted("online".into()),
                },
            )
            .await
            .unwrap();
        }
        Self {
            name,
            db,
            account,
            other,
        }
    }

    async fn client(&self) -> Client {
        self.db.pool().get().await.unwrap()
    }

    /// Accepts texts to `user`, published by the caller or by the relay.
    async fn messages(&self, user: &str, count: usize, publishing: Publishing) -> Vec<Uuid> {
        let batch: Vec<NewMessage> = (0..count)
            .map(|n| NewMessage {
                id: MessageId(Uuid::now_v7()),
                account: self.account,
                user: UserId::from_trusted(user.into()),
                content: Content::Text(MessageBody::from_trusted(format!("hello {n}"))),
                waited: true,
                trace: None,
            })
            .collect();
        let stored = messages::insert_many(&self.client().await, &batch, publishing)
            .await
            .unwrap();
        stored.iter().map(|a| a.row.id).collect()
    }

    async fn status_update(&self, user: &str, status: &str) -> Uuid {
        let update = NewStatusUpdate {
            id: StatusUpdateId(Uuid::now_v7()),
            account: self.account,
            user: UserId::from_trusted(user.into()),
            status: StatusText::from_trusted(status.into()),
            waited: false,
            trace: None,
        };
        let stored =
            status_updates::insert_many(&self.client().await, &[update], Publishing::ByRelay)
                .await
                .unwrap();
        stored[0].row.id
    }

    /// One column of a row, as text.
    async fn column(&self, table: &str, id: Uuid, column: &str) -> Option<String> {
        self.client()
            .await
            .query_one(
                &format!("SELECT {column}::text FROM {table} WHERE id = $1"),
                &[&id],
            )
            .await
            .unwrap()
            .get(0)
    }

    async fn state(&self, table: &str, id: Uuid) -> String {
        self.column(table, id, "state").await.unwrap()
    }

    async fn sql(&self, statement: &str, id: Uuid) {
        self.client()
            .await
            .execute(statement, &[&id])
            .await
            .unwrap();
    }

    fn attempt(&self, kind: JobKind, id: Uuid, attempt: i32, outcome: Outcome) -> Attempt {
        Attempt {
            kind,
            subject_id: id,
            account: self.account,
            attempt,
            provider: "test",
            started_at: Utc::now(),
            latency: Duration::from_millis(12),
            outcome,
        }
    }
}

fn delivered(provider_message_id: Option<&str>) -> Outcome {
    Outcome::Delivered {
        provider_message_id: provider_message_id.map(str::to_owned),
        http_status: Some(200),
    }
}

/// A provider error whose detail carries a NUL, which Postgres cannot store.
fn provider_error(code: &str) -> ProviderError {
    ProviderError::new(code, "went wrong\0", Some(400))
}

impl Drop for Fresh {
    fn drop(&mut self) {
        let name = self.name.clone();
        // A runtime of its own: Drop cannot await, and the test's may be gone.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let Ok((client, connection)) =
                    tokio_postgres::connect(&server_url(), tokio_postgres::NoTls).await
                else {
                    return;
                };
                tokio::spawn(connection);
                let _ = client
                    .execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"), &[])
                    .await;
            });
        })
        .join();
    }
}

fn expired() -> LastError {
    LastError {
        code: "expired".into(),
        detail: "past its deadline".into(),
        retryable: false,
    }
}

#[tokio::test]
async fn accepting_stores_rows_of_known_users_published_by_the_caller_or_left_to_the_relay() {
    let t = Fresh::new().await;
    let by_caller = t.messages("u1", 2, Publishing::ByCaller).await;
    assert_eq!(by_caller.len(), 2);
    assert_eq!(
        t.column("messages", by_caller[0], "published")
            .await
            .as_deref(),
        Some("true")
    );
    assert!(
        t.column("messages", by_caller[0], "published_at")
            .await
            .is_some()
    );
    let by_relay = t.messages("u2", 1, Publishing::ByRelay).await;
    assert_eq!(
        t.column("messages", by_relay[0], "published")
            .await
            .as_deref(),
        Some("false")
    );
    // A user of another account (or none) stores nothing.
    assert!(t.messages("o1", 1, Publishing::ByCaller).await.is_empty());
    assert!(
        t.messages("nobody", 1, Publishing::ByCaller)
            .await
            .is_empty()
    );
    let update = t.status_update("u1", "busy").await;
    assert_eq!(t.state("status_updates", update).await, "queued");
}

#[tokio::test]
async fn the_relay_claims_due_unpublished_rows_once_and_marks_those_the_broker_confirmed() {
    let t = Fresh::new().await;
    let ids = t.messages("u1", 3, Publishing::ByRelay).await;
    let client = t.client().await;
    let first = pipeline::claim_for_publish(&client, JobKind::Message, 2, LEASE)
        .await
        .unwrap();
    assert_eq!(first.len(), 2);
    // Leased: the next claim takes only the third.
    let second = pipeline::claim_for_publish(&client, JobKind::Message, 10, LEASE)
        .await
        .unwrap();
    assert_eq!(second.len(), 1);
    assert!(!first.iter().any(|r| r.id == second[0].id));
    assert!(ids.contains(&second[0].id));

    let marked = pipeline::mark_published(&client, JobKind::Message, &first)
        .await
        .unwrap();
    assert_eq!(marked, 2);
    for row in &first {
        assert_eq!(
            t.column("messages", row.id, "published").await.as_deref(),
            Some("true")
        );
        assert_eq!(
            t.column("messages", row.id, "publish_lease_until").await,
            None
        );
    }
    // A mark for another attempt (the row was claimed since) changes nothing.
    let stale = Publishable {
        attempts: 7,
        ..second[0]
    };
    assert_eq!(
        pipeline::mark_published(&client, JobKind::Message, &[stale])
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        t.column("messages", second[0].id, "published")
            .await
            .as_deref(),
        Some("false")
    );
}

#[tokio::test]
async fn a_released_publish_goes_back_to_the_relay_at_once() {
    let t = Fresh::new().await;
    let client = t.client().await;
    t.messages("u1", 1, Publishing::ByCaller).await;
    // Published by the caller: the relay has nothing.
    assert!(
        pipeline::claim_for_publish(&client, JobKind::Message, 10, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    let ids = t.messages("u1", 1, Publishing::ByCaller).await;
    let row = Publishable {
        kind: JobKind::Message,
        id: ids[0],
        account: t.account,
        attempts: 0,
        trace: None,
    };
    let released = pipeline::release_publish(&client, JobKind::Message, &[row], true)
        .await
        .unwrap();
    assert_eq!(released, 1);
    let claimed = pipeline::claim_for_publish(&client, JobKind::Message, 10, LEASE)
        .await
        .unwrap();
    assert_eq!(claimed.iter().map(|r| r.id).collect::<Vec<_>>(), ids);
}

#[tokio::test]
async fn the_guard_claims_rows_published_long_ago_and_still_queued() {
    let t = Fresh::new().await;
    let client = t.client().await;
    let ids = t.messages("u1", 2, Publishing::ByCaller).await;
    t.sql(
        "UPDATE messages SET published_at = now() - interval '1 hour' WHERE id = $1",
        ids[0],
    )
    .await;
    let older_than = Duration::from_secs(600);
    let stale = pipeline::claim_stale_published(&client, JobKind::Message, 10, LEASE, older_than)
        .await
        .unwrap();
    assert_eq!(stale.iter().map(|r| r.id).collect::<Vec<_>>(), vec![ids[0]]);
    // Leased now: not claimed twice.
    let again = pipeline::claim_stale_published(&client, JobKind::Message, 10, LEASE, older_than)
        .await
        .unwrap();
    assert!(again.is_empty());
}

#[tokio::test]
async fn replay_requeues_a_queued_row_and_says_what_the_others_are() {
    let t = Fresh::new().await;
    let client = t.client().await;
    let ids = t.messages("u1", 3, Publishing::ByCaller).await;
    assert_eq!(
        pipeline::replay(&client, JobKind::Message, ids[0])
            .await
            .unwrap(),
        Replayed::Queued
    );
    assert_eq!(
        t.column("messages", ids[0], "published").await.as_deref(),
        Some("false")
    );
    pipeline::claim_messages(&client, &ids[1..], LEASE, None)
        .await
        .unwrap();
    assert_eq!(
        pipeline::replay(&client, JobKind::Message, ids[1])
            .await
            .unwrap(),
        Replayed::InDelivery
    );
    t.sql("UPDATE messages SET state = 'sent' WHERE id = $1", ids[2])
        .await;
    assert_eq!(
        pipeline::replay(&client, JobKind::Message, ids[2])
            .await
            .unwrap(),
        Replayed::Final
    );
    assert_eq!(
        pipeline::replay(&client, JobKind::Message, Uuid::now_v7())
            .await
            .unwrap(),
        Replayed::Missing
    );
}

#[tokio::test]
async fn a_claim_takes_due_queued_rows_once_counts_the_attempt_and_names_the_sender() {
    let t = Fresh::new().await;
    let client = t.client().await;
    let ids = t.messages("u1", 2, Publishing::ByCaller).await;
    // Not due yet: a retry waiting for its time.
    t.sql(
        "UPDATE messages SET due_at = now() + interval '1 hour' WHERE id = $1",
        ids[1],
    )
    .await;
    let update = t.status_update("u2", "away").await;
    // Ids of the other kind, or unknown, are simply not claimed.
    let mut asked = ids.clone();
    asked.extend([update, Uuid::now_v7()]);
    let claimed = pipeline::claim_messages(&client, &asked, LEASE, Some("1234567890"))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id.0, ids[0]);
    assert_eq!(claimed[0].attempt, 1);
    assert_eq!(claimed[0].to.as_str(), "+62811000001");
    assert!(matches!(&claimed[0].content, Content::Text(body) if body.as_str() == "hello 0"));
    assert_eq!(t.state("messages", ids[0]).await, "sending");
    assert_eq!(
        t.column("messages", ids[0], "sender_id").await.as_deref(),
        Some("1234567890")
    );
    assert!(t.column("messages", ids[0], "lease_until").await.is_some());
    assert!(
        pipeline::claim_messages(&client, &ids, LEASE, None)
            .await
            .unwrap()
            .is_empty()
    );

    let updates = pipeline::claim_status_updates(&client, &asked, LEASE)
        .await
        .unwrap();
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].status.as_str(), "away");
    assert_eq!(updates[0].phone_number.as_str(), "+62811000002");
    assert_eq!(t.state("status_updates", update).await, "sending");
}

#[tokio::test]
async fn record_many_applies_done_retry_and_failed_in_one_statement_with_their_attempts() {
    let t = Fresh::new().await;
    let client = t.client().await;
    let ids = t.messages("u1", 3, Publishing::ByCaller).await;
    pipeline::claim_messages(&client, &ids, LEASE, None)
        .await
        .unwrap();
    let retryable = Outcome::Retryable {
        error: provider_error("131000"),
        retry_after: None,
    };
    let permanent = Outcome::Permanent {
        error: provider_error("131026"),
    };
    let items = vec![
        (
            Resolution::Done,
            t.attempt(JobKind::Message, ids[0], 1, delivered(Some("wamid.1\0"))),
        ),
        (
            Resolution::Retry {
                after: Duration::from_secs(3600),
            },
            t.attempt(JobKind::Message, ids[1], 1, retryable),
        ),
        (
            Resolution::Failed { gave_up: None },
            t.attempt(JobKind::Message, ids[2], 1, permanent.clone()),
        ),
    ];
    let recorded = pipeline::record_many(&client, JobKind::Message, &items)
        .await
        .unwrap();
    assert_eq!(recorded, vec![Recorded::Applied; 3]);
    assert_eq!(t.state("messages", ids[0]).await, "sent");
    assert_eq!(
        t.column("messages", ids[0], "provider_message_id")
            .await
            .as_deref(),
        Some("wamid.1")
    );
    assert!(t.column("messages", ids[0], "sent_at").await.is_some());
    assert_eq!(t.state("messages", ids[1]).await, "queued");
    assert_eq!(
        t.column("messages", ids[1], "published").await.as_deref(),
        Some("false")
    );
    let due_later = t
        .column(
            "messages",
            ids[1],
            "(due_at > now() + interval '59 minutes')",
        )
        .await;
    assert_eq!(due_later.as_deref(), Some("true"));
    assert_eq!(t.state("messages", ids[2]).await, "failed");
    let last_error = t.column("messages", ids[2], "last_error").await.unwrap();
    assert!(
        last_error.contains("131026") && !last_error.contains("\\u0000"),
        "{last_error}"
    );
    // Each attempt is history, NUL made storable.
    let history = pipeline::attempts_for(&client, t.account, JobKind::Message, ids[2])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].outcome, AttemptOutcome::Permanent);
    assert_eq!(history[0].error_detail.as_deref(), Some("went wrong"));

    // The same record again (its reply was lost): nothing changes.
    let again = pipeline::record_many(&client, JobKind::Message, &items[..1])
        .await
        .unwrap();
    assert_eq!(again, vec![Recorded::AlreadyRecorded]);
    // A record for a claim that is no longer the row's: history only.
    pipeline::claim_messages(&client, &[ids[1]], LEASE, None)
        .await
        .unwrap_or_default();
    let stale = vec![(
        Resolution::Failed { gave_up: None },
        t.attempt(JobKind::Message, ids[2], 5, permanent),
    )];
    let stale = pipeline::record_many(&client, JobKind::Message, &stale)
        .await
        .unwrap();
    assert_eq!(stale, vec![Recorded::Superseded]);
}

#[tokio::test]
async fn a_recorded_status_update_sets_the_users_status_unless_a_newer_one_did() {
    let t = Fresh::new().await;
    let client = t.client().await;
    let older = t.status_update("u1", "older").await;
    let newer = t.status_update("u1", "newer").await;
    pipeline::claim_status_updates(&client, &[older, newer], LEASE)
        .await
        .unwrap();
    let done = |id| {
        (
            Resolution::Done,
            t.attempt(JobKind::StatusUpdate, id, 1, delivered(None)),
        )
    };
    // The newer first, then the older: the user keeps the newer text.
    let recorded = pipeline::record_many(&client, JobKind::StatusUpdate, &[done(newer)])
        .await
        .unwrap();
    assert_eq!(recorded, vec![Recorded::Applied]);
    pipeline::record_many(&client, JobKind::StatusUpdate, &[done(older)])
        .await
        .unwrap();
    assert_eq!(t.state("status_updates", older).await, "success");
    let user = users::get(&client, t.account, &UserId::from_trusted("u1".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(user.status.as_str(), "newer");
}

#[tokio::test]
async fn expire_fails_a_claimed_row_with_no_attempt_and_only_for_its_claim() {
    let t = Fresh::new().await;
    let client = t.client().await;
    let ids = t.messages("u1", 1, Publishing::ByCaller).await;
    pipeline::claim_messages(&client, &ids, LEASE, None)
        .await
        .unwrap();
    assert!(
        !pipeline::expire(&client, JobKind::Message, ids[0], 2, &expired())
            .await
            .unwrap()
    );
    assert!(
        pipeline::expire(&client, JobKind::Message, ids[0], 1, &expired())
            .await
            .unwrap()
    );
    assert_eq!(t.state("messages", ids[0]).await, "failed");
    // The claim's attempt is taken back: no provider call was made.
    assert_eq!(
        t.column("messages", ids[0], "attempts").await.as_deref(),
        Some("0")
    );
    let history = pipeline::attempts_for(&client, t.account, JobKind::Message, ids[0])
        .await
        .unwrap()
        .unwrap();
    assert!(history.is_empty());
}

#[tokio::test]
async fn a_released_claim_and_an_expired_lease_put_rows_back_in_the_queue() {
    let t = Fresh::new().await;
    let client = t.client().await;
    let ids = t.messages("u1", 2, Publishing::ByCaller).await;
    pipeline::claim_messages(&client, &ids, LEASE, None)
        .await
        .unwrap();
    assert!(
        pipeline::release_claim(&client, JobKind::Message, ids[0], 1)
            .await
            .unwrap()
    );
    assert!(
        !pipeline::release_claim(&client, JobKind::Message, ids[0], 1)
            .await
            .unwrap()
    );
    assert_eq!(t.state("messages", ids[0]).await, "queued");
    assert_eq!(
        t.column("messages", ids[0], "published").await.as_deref(),
        Some("false")
    );

    // Its lease is still running: not taken back.
    assert_eq!(
        pipeline::requeue_expired(&client, JobKind::Message, 10)
            .await
            .unwrap(),
        0
    );
    t.sql(
        "UPDATE messages SET lease_until = now() - interval '1 second' WHERE id = $1",
        ids[1],
    )
    .await;
    assert_eq!(
        pipeline::requeue_expired(&client, JobKind::Message, 10)
            .await
            .unwrap(),
        1
    );
    assert_eq!(t.state("messages", ids[1]).await, "queued");
}

#[tokio::test]
async fn the_history_is_the_accounts_own_and_the_backlog_counts_each_sort() {
    let t = Fresh::new().await;
    let client = t.client().await;
    let ids = t.messages("u1", 3, Publishing::ByRelay).await;
    // No attempt yet: an empty history; another account: no such row.
    let none = pipeline::attempts_for(&client, t.account, JobKind::Message, ids[0])
        .await
        .unwrap();
    assert_eq!(none.map(|h| h.len()), Some(0));
    let foreign = pipeline::attempts_for(&client, t.other, JobKind::Message, ids[0])
        .await
        .unwrap();
    assert!(foreign.is_none());

    t.sql(
        "UPDATE messages SET due_at = now() + interval '1 hour' WHERE id = $1",
        ids[1],
    )
    .await;
    t.sql("UPDATE messages SET published = true WHERE id = $1", ids[2])
        .await;
    let backlog = pipeline::backlog(&client).await.unwrap();
    let count = |sort: &str| {
        backlog
            .iter()
            .find(|(kind, s, _)| *kind == JobKind::Message && *s == sort)
            .map(|(_, _, n)| *n)
    };
    assert_eq!(
        (count("due"), count("retry"), count("published")),
        (Some(1), Some(1), Some(1))
    );
}

#[tokio::test]
async fn a_waited_row_that_ends_is_notified_and_its_state_can_be_read() {
    let t = Fresh::new().await;
    let client = t.client().await;
    let ids = t.messages("u1", 1, Publishing::ByCaller).await;
    assert_eq!(
        pipeline::state_of(&client, JobKind::Message, ids[0])
            .await
            .unwrap(),
        Some(JobState::Message(MessageStatus::Queued))
    );
    pipeline::claim_messages(&client, &ids, LEASE, None)
        .await
        .unwrap();

    // LISTEN on a connection of its own, then record the outcome.
    let mut config: tokio_postgres::Config = server_url().parse().unwrap();
    config.dbname(&t.name);
    let (listener, mut connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    let (sender, mut heard) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = futures_util::StreamExt::next(&mut messages).await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = sender.send(n.payload().to_owned());
            }
        }
    });
    listener
        .batch_execute(&format!("LISTEN {}", pipeline::DONE_CHANNEL))
        .await
        .unwrap();
    let items = [(
        Resolution::Done,
        t.attempt(JobKind::Message, ids[0], 1, delivered(None)),
    )];
    pipeline::record_many(&client, JobKind::Message, &items)
        .await
        .unwrap();
    let payload = tokio::time::timeout(Duration::from_secs(10), heard.recv())
        .await
        .expect("a notification")
        .unwrap();
    let done = pipeline::done_rows(&payload).unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].id, ids[0]);
    assert_eq!(done[0].state, JobState::Message(MessageStatus::Sent));
    assert_eq!(
        pipeline::state_of(&client, JobKind::Message, ids[0])
            .await
            .unwrap(),
        Some(JobState::Message(MessageStatus::Sent))
    );
}
