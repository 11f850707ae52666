//! Metrics (the Prometheus text at `/metrics`), request ids and the trace
//! context that follows a message.

use std::collections::HashMap;

use reqwest::StatusCode;

use crate::support::{DEADLINE, TestApp, eventually};

/// Every sample of a Prometheus text exposition: `name{labels}` → value.
/// The registry is the test process's, shared by every app in it, so tests
/// compare before and after.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

impl TestApp {
    async fn scrape(&self) -> HashMap<String, f64> {
        let response = self.http.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain; version=0.0.4")
        );
        samples(&response.text().await.unwrap())
    }
}

fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_appear_and_move_after_a_send() {
    let app = TestApp::spawn().await;
    app.create_user("m1", "+6281234567890").await;
    let before = app.scrape().await;
    let id = app.send("m1", "Halo!").await;
    app.message_with_status(&id, "sent").await;

    let accepted = "kurir_accepted_total{kind=\"message\"}";
    let http = "kurir_http_requests_total{route=\"/v1/users/{id}/messages\",method=\"POST\",status=\"202\"}";
    let sent = "kurir_deliveries_total{kind=\"message\",outcome=\"sent\",code=\"\"}";
    let provider = "kurir_provider_duration_seconds_count{provider=\"whatsapp\",kind=\"message\"}";
    let accept_to_sent = "kurir_accept_to_sent_seconds_count";
    // The worker's outcome is counted just before its record returns.
    let after = eventually(DEADLINE, || async {
        let after = app.scrape().await;
        (value(&after, sent) > value(&before, sent)).then_some(after)
    })
    .await
    .expect("a delivery is counted");
    for series in [accepted, http, provider, accept_to_sent] {
        assert!(
            value(&after, series) >= value(&before, series) + 1.0,
            "{series}: {} → {}",
            value(&before, series),
            value(&after, series)
        );
    }
    // Histograms have buckets, gauges are sampled, labels are bounded.
    assert!(after.keys().any(|k| k.starts_with(
        "kurir_http_request_duration_seconds_bucket{route=\"/v1/users/{id}/messages\",method=\"POST\",le=\"0.005\"}"
    )), "{:?}", after.keys().filter(|k| k.contains("duration")).collect::<Vec<_>>());
    assert!(after.contains_key("kurir_backlog{kind=\"message\",waiting=\"due\"}"));
    assert!(after.contains_key("kurir_db_pool_connections{pool=\"api\",state=\"in_use\"}"));
    assert!(after.contains_key("kurir_db_pool_connections{pool=\"worker\",state=\"idle\"}"));
    assert!(
        !after.keys().any(|k| k.contains(&id)),
        "no metric names a message id"
    );
    // An unknown path counts as unmatched, not by its path.
    app.get("/v1/nowhere/at-all").send().await.unwrap();
    let later = app.scrape().await;
    assert!(later.keys().any(|k| k.contains("route=\"unmatched\"")));
    assert!(!later.keys().any(|k| k.contains("at-all")));
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let app = TestApp::spawn_with(crate::support::Options {
        start_worker: false,
        ..Default::default()
    })
    .await;
    let mine = app
        .get("/v1/users")
        .header("x-request-id", "client-chose-this")
        .send()
        .await
        .unwrap();
    assert_eq!(mine.headers()["x-request-id"], "client-chose-this");
    let made = app.http.get(app.url("/healthz")).send().await.unwrap();
    let id = made.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let problem = app.http.get(app.url("/v1/users")).send().await.unwrap();
    assert_eq!(problem.status(), StatusCode::UNAUTHORIZED);
    assert!(problem.headers().contains_key("x-request-id"));
}

#[tokio::test]
async fn a_requests_traceparent_is_the_trace_id_the_worker_logs() {
    let app = TestApp::spawn_with(crate::support::Options {
        start_worker: false,
        ..Default::default()
    })
    .await;
    app.create_user("traced", "+6281234567890").await;
    // A real `kurir worker` process, logging JSON to a file.
    let log_path = std::env::temp_dir().join(format!("kurir-trace-{}.log", uuid::Uuid::now_v7()));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut env = app.process_env();
    env.push(("KURIR_LOG_FORMAT".into(), "json".into()));
    env.push(("RUST_LOG".into(), "warn,kurir_worker=debug".into()));
    let mut command = crate::process::kurir(&["worker"], &env);
    command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(log));
    let mut worker = command.spawn().expect("start kurir worker");

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = app
        .post(
            "/v1/users/traced/messages",
            &serde_json::json!({"message": "Halo!"}),
        )
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let id = response.json::<serde_json::Value>().await.unwrap()["message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.message_with_status(&id, "sent").await;
    // The worker's "delivered" line, inside the span of this message.
    let line = eventually(DEADLINE, || async {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        text.lines()
            .find(|line| line.contains(&id) && line.contains("\"delivered\""))
            .map(str::to_owned)
    })
    .await;
    let _ = worker.kill().await;
    let _ = std::fs::remove_file(&log_path);
    let line = line.expect("the worker logs the delivery");
    let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(entry["span"]["trace_id"], trace_id, "{line}");
    assert_eq!(entry["span"]["message_id"], id.as_str(), "{line}");
    assert_eq!(entry["span"]["attempt"], 1, "{line}");
}

/// A stand-in OTLP/HTTP collector: every request's path and body.
async fn collector() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 8192];
                // Headers, then as much body as Content-Length says.
                let (head_end, length) = loop {
                    let Ok(n) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buffer[..end]).to_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (end + 4, length);
                    }
                };
                while buffer.len() < head_end + length {
                    let Ok(n) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        break;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                }
                let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                let body = buffer[head_end..].to_vec();
                record.lock().unwrap().push((path, body));
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    (url, seen)
}

#[tokio::test]
async fn with_an_otlp_endpoint_the_worker_exports_its_spans_in_the_requests_trace() {
    let app = TestApp::spawn_with(crate::support::Options {
        start_worker: false,
        ..Default::default()
    })
    .await;
    app.create_user("otel", "+6281234567890").await;
    let (endpoint, seen) = collector().await;
    let mut env = app.process_env();
    env.push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint));
    env.push(("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()));
    let worker = crate::process::KurirProcess::spawn(&["worker"], &env);

    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let response = app
        .post(
            "/v1/users/otel/messages",
            &serde_json::json!({"message": "Halo!"}),
        )
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let id = response.json::<serde_json::Value>().await.unwrap()["message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.message_with_status(&id, "sent").await;
    // OTLP/protobuf carries the trace id as its 16 raw bytes.
    let raw = hex::decode(trace_id).unwrap();
    let exported = eventually(DEADLINE, || async {
        seen.lock()
            .unwrap()
            .iter()
            .any(|(path, body)| path == "/v1/traces" && body.windows(16).any(|w| w == raw))
            .then_some(())
    })
    .await;
    worker.kill().await;
    assert!(
        exported.is_some(),
        "no span of trace {trace_id} reached the collector; requests seen: {:?}",
        seen.lock()
            .unwrap()
            .iter()
            .map(|(p, b)| (p.clone(), b.len()))
            .collect::<Vec<_>>()
    );
}
