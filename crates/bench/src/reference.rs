//! The bare pipeline, with no framework: insert a row, publish with
//! a confirm to a quorum queue, consume, update the row to sent, ack. It is
//! what kurir's rate is compared with.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use tokio::sync::Notify;

use crate::stack::connect_db;

pub const TABLE: &str = "bench_reference";
const PREFETCH: u16 = 64;

#[derive(Debug)]
pub struct Outcome {
    pub latencies: Vec<f64>,
    pub produce_span: Duration,
    pub total_span: Duration,
    pub consumed: u64,
}

pub fn queue_name(prefix: &str) -> String {
    format!("{prefix}.reference")
}

/// Postgres connections per side: tasks share them (tokio-postgres pipelines).
fn connections(concurrency: usize) -> usize {
    concurrency.clamp(1, 8)
}

pub async fn run(
    database_url: &str,
    amqp_url: &str,
    prefix: &str,
    messages: usize,
    concurrency: usize,
    progress: Arc<AtomicU64>,
) -> Result<Outcome> {
    let setup = connect_db(database_url).await?;
    setup
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {TABLE};
             CREATE TABLE {TABLE} (id uuid PRIMARY KEY, state text NOT NULL,
                 created_at timestamptz NOT NULL DEFAULT now(), sent_at timestamptz)"
        ))
        .await?;
    let queue = queue_name(prefix);

    let consume_conn = Connection::connect(amqp_url, ConnectionProperties::default())
        .await
        .context("connecting to RabbitMQ")?;
    let publish_conn = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
    {
        let ch = publish_conn.create_channel().await?;
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        ch.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await?;
        ch.queue_purge(queue.as_str().into(), Default::default())
            .await?;
    }

    let n = connections(concurrency);
    let mut producers_db = Vec::new();
    let mut consumers_db = Vec::new();
    for _ in 0..n {
        let c = connect_db(database_url).await?;
        let s = c
            .prepare(&format!(
                "INSERT INTO {TABLE} (id, state) VALUES ($1, 'queued')"
            ))
            .await?;
        producers_db.push(Arc::new((c, s)));
        let c = connect_db(database_url).await?;
        let s = c
            .prepare(&format!(
                "UPDATE {TABLE} SET state = 'sent', sent_at = now() WHERE id = $1"
            ))
            .await?;
        consumers_db.push(Arc::new((c, s)));
    }

    // Consumers first, so nothing waits for them to start.
    let consumed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(Notify::new());
    let finished_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let mut consumer_tasks = Vec::new();
    for i in 0..concurrency {
        let channel = consume_conn.create_channel().await?;
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await?;
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                format!("bench-ref-{i}").into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let db = consumers_db[i % n].clone();
        let (consumed, done, finished_at, progress) = (
            consumed.clone(),
            done.clone(),
            finished_at.clone(),
            progress.clone(),
        );
        consumer_tasks.push(tokio::spawn(async move {
            let _channel = channel;
            while let Some(delivery) = consumer.next().await {
                let delivery = delivery?;
                let id = uuid::Uuid::try_parse_ascii(&delivery.data)
                    .map_err(|e| anyhow!("bad payload: {e}"))?;
                db.0.execute(&db.1, &[&id]).await?;
                if !delivery.acker.ack(BasicAckOptions::default()).await? {
                    bail!("ack not sent");
                }
                progress.fetch_add(1, Ordering::Relaxed);
                if consumed.fetch_add(1, Ordering::AcqRel) + 1 == messages as u64 {
                    *finished_at.lock().map_err(|_| anyhow!("poisoned"))? = Some(Instant::now());
                    done.notify_one();
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }

    let start = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut producer_tasks = Vec::new();
    for i in 0..concurrency {
        let channel = publish_conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let db = producers_db[i % n].clone();
        let (next, queue) = (next.clone(), queue.clone());
        producer_tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut last = start;
            while next.fetch_add(1, Ordering::Relaxed) < messages {
                let began = Instant::now();
                let id = uuid::Uuid::new_v4();
                db.0.execute(&db.1, &[&id]).await?;
                let payload = id.hyphenated().to_string();
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        payload.as_bytes(),
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await?
                    .await?;
                if !matches!(confirm, Confirmation::Ack(_)) {
                    bail!("publish not confirmed: {confirm:?}");
                }
                let now = Instant::now();
                latencies.push((now - began).as_secs_f64());
                last = now;
            }
            Ok::<_, anyhow::Error>((latencies, last))
        }));
    }

    let mut latencies = Vec::with_capacity(messages);
    let mut produced_until = start;
    for t in producer_tasks {
        let (l, last) = t.await??;
        latencies.extend(l);
        produced_until = produced_until.max(last);
    }
    let waited = tokio::time::timeout(Duration::from_secs(120), done.notified()).await;
    // A notify_one before we waited is kept as a permit, so this only times
    // out when consumption really stalled.
    let consumed_n = consumed.load(Ordering::Acquire);
    for t in &consumer_tasks {
        t.abort();
    }
    let _ = consume_conn.close(200, "done".to_owned().into()).await;
    let _ = publish_conn.close(200, "done".to_owned().into()).await;
    if waited.is_err() {
        bail!("reference: only {consumed_n} of {messages} consumed within 120 s");
    }
    let finished = finished_at
        .lock()
        .map_err(|_| anyhow!("poisoned"))?
        .unwrap_or_else(Instant::now);
    Ok(Outcome {
        latencies,
        produce_span: produced_until - start,
        total_span: finished - start,
        consumed: consumed_n,
    })
}
