//! Load against kurir's HTTP API, and waiting for Postgres to say `sent`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

pub struct Load {
    pub http: reqwest::Client,
    pub api: String,
    pub key: String,
    pub idempotency_keys: bool,
    /// `Prefer: wait` seconds on every single POST.
    pub prefer_wait: Option<u64>,
}

#[derive(Debug, Default)]
pub struct Sent {
    /// Latency of each accepted request, seconds.
    pub latencies: Vec<f64>,
    pub accepted: u64,
    pub rejected: u64,
    pub first_error: Option<String>,
    /// From the first request's start to the last accept.
    pub span: Duration,
    pub late: Option<u64>,
}

/// Users' E.164 numbers: Indonesian mobile numbers, far from the sandbox's
/// magic `+1555000000x`.
pub fn phone_number(i: usize) -> String {
    format!("+62812{i:08}")
}

pub fn user_id(i: usize) -> String {
    format!("bench_{i:05}")
}

impl Load {
    pub fn new(api: &str, key: &str, concurrency: usize, prefer_wait: Option<u64>) -> Result<Self> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(concurrency)
            // A waiting request may take its whole wait.
            .timeout(Duration::from_secs(30 + prefer_wait.unwrap_or(0)))
            .build()?;
        Ok(Self {
            http,
            api: api.to_owned(),
            key: key.to_owned(),
            idempotency_keys: false,
            prefer_wait,
        })
    }

    /// Every request carries an `Idempotency-Key` (a batch request one for
    /// the whole batch), as a careful sender's would.
    pub fn with_idempotency_keys(mut self, on: bool) -> Self {
        self.idempotency_keys = on;
        self
    }

    /// `request` with the idempotency key `key`, if keys are on.
    fn keyed(
        &self,
        request: reqwest::RequestBuilder,
        key: impl FnOnce() -> String,
    ) -> reqwest::RequestBuilder {
        if self.idempotency_keys {
            request.header("Idempotency-Key", key())
        } else {
            request
        }
    }

    pub async fn create_users(&self, users: usize) -> Result<()> {
        use futures_util::StreamExt;
        let results: Vec<Result<()>> = futures_util::stream::iter(0..users)
            .map(|i| async move {
                let resp = self
                    .http
                    .post(format!("{}/v1/users", self.api))
                    .bearer_auth(&self.key)
                    .json(&json!({"id": user_id(i), "name": format!("Bench User {i}"), "phone_number": phone_number(i)}))
                    .send()
                    .await
                    .context("POST /v1/users")?;
                let status = resp.status();
                if status.as_u16() != 201 {
                    let body = resp.text().await.unwrap_or_default();
                    bail!("POST /v1/users answered {status}: {body}");
                }
                Ok(())
            })
            .buffer_unordered(8)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Sends `messages` single-message POSTs (or, with `batch`, requests to
    /// `POST /v1/messages/batch` of that many items), closed loop at
    /// `concurrency`, or open loop at `rate` requests per second with
    /// `concurrency` senders. Latencies are per request; counts per message.
    #[allow(clippy::too_many_arguments)]
    pub async fn send(
        self: Arc<Self>,
        messages: usize,
        users: usize,
        concurrency: usize,
        rate: Option<f64>,
        batch: Option<usize>,
        progress: Arc<AtomicU64>,
    ) -> Result<Sent> {
        let per_request = batch.unwrap_or(1).max(1);
        let next = Arc::new(AtomicUsize::new(0));
        let late = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(concurrency);
        for _ in 0..concurrency {
            let (this, next, late, progress) =
                (self.clone(), next.clone(), late.clone(), progress.clone());
            tasks.push(tokio::spawn(async move {
                let mut out = Sent::default();
                let mut last_accept = start;
                loop {
                    let i = next.fetch_add(per_request, Ordering::Relaxed);
                    if i >= messages {
                        break;
                    }
                    let items = per_request.min(messages - i);
                    if let Some(rate) = rate {
                        let request = i / per_request;
                        let slot = start + Duration::from_secs_f64(request as f64 / rate);
                        tokio::time::sleep_until(slot.into()).await;
                        if Instant::now().saturating_duration_since(slot) > Duration::from_millis(5)
                        {
                            late.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    let began = Instant::now();
                    let (accepted, error) = if batch.is_some() {
                        this.post_batch(i, items, users).await
                    } else {
                        this.post_one(i, users).await
                    };
                    let now = Instant::now();
                    out.accepted += accepted;
                    out.rejected += items as u64 - accepted;
                    if accepted > 0 {
                        out.latencies.push((now - began).as_secs_f64());
                        last_accept = last_accept.max(now);
                    }
                    if let Some(e) = error {
                        out.first_error.get_or_insert(e);
                    }
                    progress.fetch_add(items as u64, Ordering::Relaxed);
                }
                out.span = last_accept - start;
                out
            }));
        }
        let mut all = Sent::default();
        for t in tasks {
            let part = t.await?;
            all.accepted += part.accepted;
            all.rejected += part.rejected;
            all.latencies.extend(part.latencies);
            all.span = all.span.max(part.span);
            if all.first_error.is_none() {
                all.first_error = part.first_error;
            }
        }
        all.late = rate.map(|_| late.load(Ordering::Relaxed));
        Ok(all)
    }

    /// Message `i` as one POST; (accepted, why not).
    async fn post_one(&self, i: usize, users: usize) -> (u64, Option<String>) {
        let user = user_id(i % users);
        let mut request = self
            .http
            .post(format!("{}/v1/users/{user}/messages", self.api))
            .bearer_auth(&self.key)
            .json(&json!({"message": format!("bench message {i}")}));
        if let Some(wait) = self.prefer_wait {
            request = request.header("Prefer", format!("wait={wait}"));
        }
        match self.keyed(request, || format!("bench-{i}")).send().await {
            // 200: it waited and the message is sent (or failed) already.
            Ok(r) if matches!(r.status().as_u16(), 200 | 202) => {
                // Read the body so the connection is reused.
                let _ = r.bytes().await;
                (1, None)
            }
            Ok(r) => {
                let status = r.status();
                (
                    0,
                    Some(format!("{status}: {}", r.text().await.unwrap_or_default())),
                )
            }
            Err(e) => (0, Some(e.to_string())),
        }
    }

    /// Messages `first..first + items` as one batch request; (accepted,
    /// why the first refused one was).
    async fn post_batch(&self, first: usize, items: usize, users: usize) -> (u64, Option<String>) {
        let messages: Vec<_> = (first..first + items)
            .map(
                |i| json!({"user_id": user_id(i % users), "message": format!("bench message {i}")}),
            )
            .collect();
        let request = self
            .http
            .post(format!("{}/v1/messages/batch", self.api))
            .bearer_auth(&self.key)
            .json(&json!({ "messages": messages }));
        let resp = self
            .keyed(request, || format!("bench-batch-{first}"))
            .send()
            .await;
        let r = match resp {
            Ok(r) if r.status().as_u16() == 202 => r,
            Ok(r) => {
                let status = r.status();
                return (
                    0,
                    Some(format!("{status}: {}", r.text().await.unwrap_or_default())),
                );
            }
            Err(e) => return (0, Some(e.to_string())),
        };
        let body: serde_json::Value = match r.json().await {
            Ok(body) => body,
            Err(e) => return (0, Some(format!("batch answer: {e}"))),
        };
        let results = body["results"].as_array().cloned().unwrap_or_default();
        let accepted = results
            .iter()
            .filter(|r| r["message_status"] == "queued")
            .count() as u64;
        let error = results
            .iter()
            .find(|r| !r["error"].is_null())
            .map(|r| r["error"].to_string());
        (accepted, error)
    }
}

/// Figures the messages table (or the reference table) gives once done.
#[derive(Debug, Default)]
pub struct Settled {
    pub sent: u64,
    /// First accept (min created_at) to last sent (max sent_at), seconds.
    pub span: Option<f64>,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

pub async fn settled(db: &tokio_postgres::Client, table: &str) -> Result<Settled> {
    let row = db
        .query_one(
            &format!(
                "SELECT count(*),
                        EXTRACT(EPOCH FROM max(sent_at) - min(created_at))::float8,
                        percentile_cont(0.5) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM sent_at - created_at)::float8),
                        percentile_cont(0.99) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM sent_at - created_at)::float8)
                   FROM {table} WHERE state IN ('sent', 'delivered', 'read')"
            ),
            &[],
        )
        .await?;
    Ok(Settled {
        sent: u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
        span: row.get(1),
        p50: row.get(2),
        p99: row.get(3),
    })
}

/// Polls every second (each poll counts the whole table, and its CPU is
/// counted as kurir's Postgres CPU) until `expected` rows are `sent`; an error past the
/// deadline or when some failed for good.
pub async fn wait_sent(
    db: &tokio_postgres::Client,
    expected: u64,
    deadline: Duration,
    progress: impl FnMut(u64),
) -> Result<()> {
    wait_until(
        db,
        &["sent", "delivered", "read"],
        expected,
        deadline,
        progress,
    )
    .await
}

/// As [`wait_sent`], until `expected` rows are `read` (every receipt applied).
pub async fn wait_read(
    db: &tokio_postgres::Client,
    expected: u64,
    deadline: Duration,
    progress: impl FnMut(u64),
) -> Result<()> {
    wait_until(db, &["read"], expected, deadline, progress).await
}

async fn wait_until(
    db: &tokio_postgres::Client,
    states: &[&str],
    expected: u64,
    deadline: Duration,
    mut progress: impl FnMut(u64),
) -> Result<()> {
    let until = Instant::now() + deadline;
    let states: Vec<String> = states.iter().map(|s| (*s).to_owned()).collect();
    loop {
        let row = db
            .query_one(
                "SELECT count(*) FILTER (WHERE state = ANY($1)),
                        count(*) FILTER (WHERE state = 'failed') FROM messages",
                &[&states],
            )
            .await?;
        let sent = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
        let failed = u64::try_from(row.get::<_, i64>(1)).unwrap_or(0);
        progress(sent);
        if sent >= expected {
            return Ok(());
        }
        if failed > 0 && sent + failed >= expected {
            bail!("{failed} messages failed, {sent} of {expected} sent");
        }
        if Instant::now() > until {
            bail!("only {sent} of {expected} messages sent ({failed} failed) within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_numbers_are_e164_unique_and_not_magic() {
        let a = phone_number(0);
        let b = phone_number(99_999);
        assert_ne!(a, b);
        for n in [a, b] {
            assert!(n.starts_with('+'));
            assert!(n.len() <= 16, "{n}");
            assert!(n[1..].chars().all(|c| c.is_ascii_digit()));
            assert!(!n.starts_with("+1555"));
        }
    }
}
