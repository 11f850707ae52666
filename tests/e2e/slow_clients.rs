//! Slow and oversized clients cannot hold the API: headers and bodies have
//! deadlines (408), an announced body over the limit is refused before it is
//! sent (413), idle kept-alive connections are closed. Raw TCP clients, so
//! the test controls every byte and its timing.

use std::time::Duration;

use kurir_core::config;
use serde_json::Value;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use crate::support::{Options, TestApp};

/// How long past a deadline the server may take to act on it.
const SLACK: Duration = Duration::from_secs(3);
/// Pause between two bytes of a trickling client.
const TRICKLE: Duration = Duration::from_millis(200);

async fn app_with(configure: impl FnOnce(&mut Options)) -> TestApp {
    let mut options = Options {
        start_worker: false,
        ..Options::default()
    };
    configure(&mut options);
    TestApp::spawn_with(options).await
}

async fn connect(app: &TestApp) -> TcpStream {
    let addr = app.address.trim_start_matches("http://");
    TcpStream::connect(addr).await.unwrap()
}

/// Writes `bytes` one at a time, [`TRICKLE`] apart, until done or the server
/// stops taking them.
async fn trickle(mut writer: impl AsyncWrite + Unpin, bytes: Vec<u8>) {
    for byte in bytes {
        if writer.write_all(&[byte]).await.is_err() {
            return;
        }
        tokio::time::sleep(TRICKLE).await;
    }
}

/// Reads until the server closes the connection (a reset counts too) and
/// returns what came; fails if it is still open after `limit`.
async fn read_until_closed(mut reader: impl AsyncRead + Unpin, limit: Duration) -> Vec<u8> {
    let mut bytes = Vec::new();
    match tokio::time::timeout(limit, reader.read_to_end(&mut bytes)).await {
        Ok(_) => bytes,
        Err(_) => panic!(
            "the server still held the connection after {limit:?}; read so far: {:?}",
            String::from_utf8_lossy(&bytes)
        ),
    }
}

/// One HTTP/1.1 response, read whole.
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn parse(bytes: &[u8]) -> Self {
        let text = String::from_utf8_lossy(bytes);
        let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
            panic!("not an HTTP response: {text:?}");
        };
        let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {text:?}"));
        Self {
            status,
            head,
            body: bytes[end + 4..].to_vec(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name).then(|| value.trim())
        })
    }

    fn content_length(&self) -> usize {
        self.header("content-length").unwrap().parse().unwrap()
    }

    /// The problem+json body, after checking its shape.
    fn problem(&self, slug: &str) -> Value {
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{}",
            self.head
        );
        assert_eq!(self.header("connection"), Some("close"), "{}", self.head);
        let body: Value = serde_json::from_slice(&self.body).unwrap();
        assert_eq!(body["status"], self.status);
        let kind = body["type"].as_str().unwrap();
        assert!(kind.ends_with(&format!("/{slug}")), "{body}");
        body
    }
}

/// Reads one response off a connection that stays open.
async fn read_answer(reader: &mut (impl AsyncRead + Unpin)) -> Answer {
    let mut bytes = Vec::new();
    let mut chunk = [0_u8; 4096];
    let read = async {
        loop {
            let n = reader.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed mid-response: {bytes:?}");
            bytes.extend_from_slice(&chunk[..n]);
            if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
                let answer = Answer::parse(&bytes);
                if bytes.len() >= end + 4 + answer.content_length() {
                    return answer;
                }
            }
        }
    };
    tokio::time::timeout(SLACK, read)
        .await
        .expect("no response in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_sent_too_slowly_are_408_and_the_connection_is_closed() {
    let deadline = Duration::from_secs(1);
    let app = app_with(|o| o.api.header_timeout = deadline).await;
    let started = Instant::now();
    let (reader, writer) = connect(&app).await.into_split();
    // Forty bytes at five a second: far from done at the deadline.
    let request = b"GET /healthz HTTP/1.1\r\nHost: kurir.test\r\nAccept: */*\r\n\r\n".to_vec();
    let client = tokio::spawn(trickle(writer, request));

    let bytes = read_until_closed(reader, deadline + SLACK).await;
    let elapsed = started.elapsed();
    client.abort();
    assert!(elapsed >= deadline, "answered after {elapsed:?}");
    let answer = Answer::parse(&bytes);
    assert_eq!(answer.status, 408, "{}", answer.head);
    let problem = answer.problem("request-timeout");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("headers") && detail.contains("1s"),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_is_closed_at_the_header_deadline() {
    let deadline = Duration::from_secs(1);
    let app = app_with(|o| o.api.header_timeout = deadline).await;
    let started = Instant::now();
    let stream = connect(&app).await;

    let bytes = read_until_closed(stream, deadline + SLACK).await;
    assert!(started.elapsed() >= deadline);
    // There was no request to answer.
    assert!(bytes.is_empty(), "{:?}", String::from_utf8_lossy(&bytes));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_too_slowly_is_408_and_the_connection_is_closed() {
    let deadline = Duration::from_secs(1);
    let app = app_with(|o| o.api.body_timeout = deadline).await;
    let body = br#"{"id":"slowpoke","name":"Slow Poke","phone_number":"+6281234567890"}"#;
    let head = format!(
        "POST /v1/users HTTP/1.1\r\nHost: kurir.test\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        app.key,
        body.len()
    );
    let (reader, mut writer) = connect(&app).await.into_split();
    writer.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let client = tokio::spawn(trickle(writer, body.to_vec()));

    let bytes = read_until_closed(reader, deadline + SLACK).await;
    let elapsed = started.elapsed();
    client.abort();
    assert!(elapsed >= deadline, "answered after {elapsed:?}");
    let answer = Answer::parse(&bytes);
    assert_eq!(answer.status, 408, "{}", answer.head);
    let problem = answer.problem("request-timeout");
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("body") && detail.contains("1s"), "{detail}");
    // Nothing was created from half a body.
    let response = app.get("/v1/users/slowpoke").send().await.unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_announced_over_the_limit_is_413_before_it_is_sent() {
    let mut limit = 0;
    let app = app_with(|o| limit = o.api.max_body_bytes).await;
    // 2 MiB with the default 1 MiB limit.
    let announced = 2 * limit;
    let head = format!(
        "POST /v1/users HTTP/1.1\r\nHost: kurir.test\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {announced}\r\n\r\n",
        app.key
    );
    let mut stream = connect(&app).await;
    stream.write_all(head.as_bytes()).await.unwrap();

    // Not one byte of the body is sent: the answer cannot be waiting for it.
    let bytes = read_until_closed(stream, SLACK).await;
    let answer = Answer::parse(&bytes);
    assert_eq!(answer.status, 413, "{}", answer.head);
    let problem = answer.problem("payload-too-large");
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains(&limit.to_string()), "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_kept_alive_connection_is_closed_after_the_idle_timeout() {
    let idle = Duration::from_secs(1);
    // The header deadline is far longer: it must not be what closes it.
    let app = app_with(|o| {
        o.api.idle_timeout = idle;
        o.api.header_timeout = Duration::from_secs(30);
    })
    .await;
    let mut stream = connect(&app).await;
    let request = b"GET /healthz HTTP/1.1\r\nHost: kurir.test\r\n\r\n";
    // Kept alive: a second request on the same connection is served.
    for _ in 0..2 {
        stream.write_all(request).await.unwrap();
        let answer = read_answer(&mut stream).await;
        assert_eq!(answer.status, 200, "{}", answer.head);
        assert_eq!(answer.header("connection"), None, "{}", answer.head);
    }
    let idle_since = Instant::now();

    let bytes = read_until_closed(stream, idle + SLACK).await;
    let waited = idle_since.elapsed();
    assert!(bytes.is_empty(), "{:?}", String::from_utf8_lossy(&bytes));
    // The server's idle clock started as it finished the answer, a moment
    // before this client had read it.
    assert!(waited >= idle / 2, "closed after {waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_the_request_in_flight_finish_and_closes_the_rest() {
    let app = app_with(|_| {}).await;
    // A server of this test's own, to stop it without stopping the app.
    let config = kurir_api::Config {
        database: app.database_args.clone(),
        bus: app.bus_args.clone(),
        shutdown: config::defaults(),
        api: config::defaults(),
    };
    let shutdown = CancellationToken::new();
    let state = kurir_api::AppState::new(&config, &shutdown).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(kurir_api::serve(state, listener, shutdown.clone()));

    let body = br#"{"id":"late","name":"Late Comer","phone_number":"+6281234567891"}"#;
    let head = format!(
        "POST /v1/users HTTP/1.1\r\nHost: kurir.test\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        app.key,
        body.len()
    );
    let mut busy = TcpStream::connect(addr).await.unwrap();
    let idle = TcpStream::connect(addr).await.unwrap();
    busy.write_all(head.as_bytes()).await.unwrap();
    // "100 Continue" comes when the handler starts reading the body: the
    // request is in flight.
    let mut continue_line = [0_u8; 25];
    tokio::time::timeout(SLACK, busy.read_exact(&mut continue_line))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&continue_line, b"HTTP/1.1 100 Continue\r\n\r\n");

    shutdown.cancel();
    let bytes = read_until_closed(idle, SLACK).await;
    assert!(bytes.is_empty(), "{:?}", String::from_utf8_lossy(&bytes));
    busy.write_all(body).await.unwrap();
    let answer = Answer::parse(&read_until_closed(busy, SLACK).await);
    assert_eq!(answer.status, 201, "{}", answer.head);
    assert_eq!(
        answer.header("connection"),
        Some("close"),
        "{}",
        answer.head
    );

    tokio::time::timeout(SLACK, server)
        .await
        .expect("serve returned once its connections closed")
        .unwrap()
        .unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
    assert_eq!(app.get_json("/v1/users/late").await["id"], "late");
}
