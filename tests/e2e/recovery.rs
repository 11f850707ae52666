//! Nothing stuck: what the broker loses, a killed worker process, and dead
//! letters all end `sent`, and nothing is sent twice beyond what
//! at-least-once allows.

use std::{collections::HashMap, time::Duration};

use lapin::options::{BasicConsumeOptions, BasicRejectOptions, QueuePurgeOptions};
use serde_json::Value;

use crate::{
    process::{KurirProcess, run_kurir},
    support::{DEADLINE, Options, TestApp, eventually},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_row_whose_broker_copy_is_lost_is_delivered_by_the_guard() {
    let mut app = TestApp::spawn_with(Options {
        start_worker: false,
        republish_after: Duration::from_secs(2),
        ..Options::default()
    })
    .await;
    app.create_user("u1", "+62123456789").await;
    let id = app.send("u1", "lost by the broker").await;
    // The API published it (it stored the row as published).
    let published = eventually(DEADLINE, || async {
        (app.envelopes_ready().await == 1).then_some(())
    })
    .await;
    assert!(published.is_some(), "the API never published {id}");
    let client = app.pool.get().await.unwrap();
    let row = client
        .query_one(
            "SELECT published FROM messages WHERE id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "stored as published");
    drop(client);

    // The broker loses its copy before any worker reads it.
    let (connection, channel) = app.broker_channel().await;
    let purged = channel
        .queue_purge(
            app.topology().deliveries().into(),
            QueuePurgeOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(purged, 1, "the envelope was in the queue");
    let _ = connection.close(200, "done".into()).await;

    app.start_worker();
    let sent = app.message_with_status(&id, "sent").await;
    assert_eq!(sent["attempts"], 1);
    assert_eq!(app.sandbox_requests_for(&id).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_re_drives_a_dead_lettered_envelope_exactly_once() {
    let mut app = TestApp::spawn_with(Options {
        start_worker: false,
        ..Options::default()
    })
    .await;
    app.create_user("u1", "+62123456789").await;
    let id = app.send("u1", "dead-lettered").await;

    // A consumer rejects the envelope: the broker dead-letters it to {p}.dead.
    let (connection, channel) = app.broker_channel().await;
    let mut consumer = channel
        .basic_consume(
            app.topology().deliveries().into(),
            "rejecter".into(),
            BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    let delivery = tokio::time::timeout(DEADLINE, futures_util::StreamExt::next(&mut consumer))
        .await
        .expect("the envelope arrives")
        .unwrap()
        .unwrap();
    delivery
        .acker
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    let _ = connection.close(200, "done".into()).await;

    let env = app.process_env();
    let listed = eventually(DEADLINE, || async {
        let out = run_kurir(&["dlq", "list"], &env).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        stdout.contains(&id).then_some(stdout)
    })
    .await
    .expect("dlq list shows the dead letter");
    let line = listed.lines().find(|l| l.contains(&id)).unwrap();
    assert!(line.contains("message"), "{listed}");
    assert!(line.contains("rejected"), "{listed}");
    assert!(listed.starts_with("ID"), "a header first: {listed}");

    // Nothing delivers it on its own yet (the guard waits 5 minutes).
    app.start_worker();
    let out = run_kurir(&["dlq", "replay", &id], &env).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("replayed"));
    app.message_with_status(&id, "sent").await;

    // Replaying again finds nothing, and sends nothing.
    let again = run_kurir(&["dlq", "replay", &id], &env).await;
    assert_eq!(again.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("no dead letter with id"), "{stderr}");
    let all = run_kurir(&["dlq", "replay", "--all"], &env).await;
    assert!(all.status.success());
    let listed = run_kurir(&["dlq", "list"], &env).await;
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout).lines().count(),
        1,
        "only the header"
    );
    assert_eq!(
        app.sandbox_requests_for(&id).len(),
        1,
        "delivered exactly once"
    );
    let usage = run_kurir(&["dlq", "replay"], &env).await;
    assert_eq!(usage.status.code(), Some(2), "replay needs --all or ids");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_process_killed_with_sigkill_mid_stream_loses_nothing() {
    const MESSAGES: usize = 1000;
    const CONCURRENCY: u16 = 16;
    let mut options = Options {
        start_worker: false,
        // Over provider timeout (2s) + 1s + database timeout (2s).
        delivery_lease: Duration::from_secs(6),
        worker_concurrency: CONCURRENCY,
        ..Options::default()
    };
    options.sandbox.latency_ms = 20;
    let mut app = TestApp::spawn_with(options).await;
    app.create_user("u1", "+62123456789").await;
    let ids = app.send_many("u1", MESSAGES).await;

    let worker = KurirProcess::spawn(&["worker"], &app.process_env());
    let started = eventually(Duration::from_secs(60), || async {
        (app.sandbox.requests().len() >= 200).then_some(())
    })
    .await;
    assert!(started.is_some(), "the worker process never got going");
    worker.kill().await;
    let at_kill = app.sandbox.requests().len();
    assert!(
        at_kill < MESSAGES,
        "killed mid-stream ({at_kill} delivered)"
    );

    let killed = std::time::Instant::now();
    app.start_worker();
    app.all_sent(MESSAGES as i64, Duration::from_secs(60)).await;
    let recovered = killed.elapsed();

    // At-least-once: a duplicate only for what the killed worker had in
    // flight, and every call carried its message id.
    let mut calls: HashMap<String, usize> = HashMap::new();
    for request in app.sandbox.requests() {
        let id = request
            .biz_opaque_callback_data
            .expect("every provider call carries its message id");
        *calls.entry(id).or_default() += 1;
    }
    for id in &ids {
        assert!(calls.contains_key(id), "{id} was never sent");
    }
    let duplicates: usize = calls.values().map(|n| n - 1).sum();
    assert!(
        duplicates <= usize::from(CONCURRENCY),
        "{duplicates} duplicates; at most {CONCURRENCY} were in flight"
    );
    eprintln!(
        "worker SIGKILL: {MESSAGES} sent, 0 lost, 0 stuck, {duplicates} duplicate provider calls \
         ({at_kill} delivered before the kill), all sent {recovered:?} after it \
         (the lease is {:?})",
        Duration::from_secs(6)
    );
    let sent: Value = app.get_json(&format!("/v1/messages/{}", ids[0])).await;
    assert_eq!(sent["message_status"], "sent");
}
