//! Test helpers: fixtures, and a tiny HTTP/1.1 server for provider tests
//! (every connection gets the same canned answer, or none at all, and each
//! request is captured).

use std::{net::SocketAddr, time::Duration};

use kurir_core::{
    AccountId, Content, MessageBody, MessageId, PhoneNumber, StatusText, StatusUpdateId, UserId,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

use super::{ClaimedMessage, ClaimedStatusUpdate};
use crate::config::{ProviderArgs, ProviderKind};

pub fn message() -> ClaimedMessage {
    ClaimedMessage {
        id: MessageId::generate(),
        account: AccountId(1),
        created_at: chrono::Utc::now(),
        user_id: UserId::parse("user_id", "usr_1").expect("user id"),
        to: PhoneNumber::parse("to", "+6281234567890").expect("phone"),
        content: Content::Text(
            MessageBody::parse("message", "Halo, apa kabar? ✓ \"quoted\"").expect("body"),
        ),
        attempt: 1,
    }
}

pub fn status() -> ClaimedStatusUpdate {
    ClaimedStatusUpdate {
        id: StatusUpdateId::generate(),
        account: AccountId(1),
        created_at: chrono::Utc::now(),
        user_id: UserId::parse("user_id", "usr_1").expect("user id"),
        phone_number: PhoneNumber::parse("phone_number", "+6281234567890").expect("phone"),
        status: StatusText::parse("status", "Sedang sibuk dalam rapat.").expect("status"),
        attempt: 2,
    }
}

/// Provider settings for `kind`, with a 2s timeout and nothing else set.
pub fn args(kind: ProviderKind) -> ProviderArgs {
    ProviderArgs {
        provider: kind,
        provider_timeout: Duration::from_secs(2),
        whatsapp_base_url: "https://graph.facebook.com/v25.0".to_owned(),
        whatsapp_token: None,
        whatsapp_phone_number_id: None,
        webhook_url: None,
        webhook_secret: None,
    }
}

/// A request as the server saw it. Header names are lower-case.
#[derive(Debug, Clone)]
pub struct Captured {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Captured {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
}

/// The canned answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn new(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    pub fn json(status: u16, body: serde_json::Value) -> Self {
        Self::new(status, body.to_string()).header("content-type", "application/json")
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    requests: mpsc::UnboundedReceiver<Captured>,
}

impl TestServer {
    /// Answers every request with `reply`.
    pub async fn start(reply: Reply) -> Self {
        Self::spawn(Some(reply)).await
    }

    /// Reads every request and never answers.
    pub async fn silent() -> Self {
        Self::spawn(None).await
    }

    async fn spawn(reply: Option<Reply>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (sender, requests) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let sender = sender.clone();
                let reply = reply.clone();
                tokio::spawn(serve(stream, reply, sender));
            }
        });
        Self { addr, requests }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next captured request (the server captures it before it answers).
    pub async fn request(&mut self) -> Captured {
        tokio::time::timeout(Duration::from_secs(5), self.requests.recv())
            .await
            .expect("a request within 5s")
            .expect("server still running")
    }

    /// A request already captured, if any.
    pub fn try_request(&mut self) -> Option<Captured> {
        self.requests.try_recv().ok()
    }
}

/// An address nothing listens on (bound, then released).
pub async fn refused_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    drop(listener);
    format!("http://{addr}")
}

async fn serve(
    mut stream: TcpStream,
    reply: Option<Reply>,
    sender: mpsc::UnboundedSender<Captured>,
) {
    let Some(captured) = read_request(&mut stream).await else {
        return;
    };
    let _ = sender.send(captured);
    let Some(reply) = reply else {
        // Hold the connection open, answering nothing, until the client leaves.
        let mut sink = [0_u8; 1024];
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        return;
    };
    let reason = reqwest::StatusCode::from_u16(reply.status)
        .ok()
        .and_then(|status| status.canonical_reason())
        .unwrap_or("Whatever");
    let mut head = format!("HTTP/1.1 {} {reason}\r\n", reply.status);
    for (name, value) in &reply.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        reply.body.len()
    ));
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(reply.body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

async fn read_request(stream: &mut TcpStream) -> Option<Captured> {
    let mut buffer = Vec::new();
    let mut chunk = [0_u8; 4096];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let path = request_line.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0);
    let mut body = buffer[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Some(Captured {
        method,
        path,
        headers,
        body,
    })
}
