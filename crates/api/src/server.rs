//! The HTTP/1.1 server: hyper's connection driver under deadlines that bound
//! slow clients (the `KURIR_*_TIMEOUT` settings in docs/configuration.md).
//! kurir speaks HTTP/1.1 only, as it did under the
//! `axum::serve` this replaces (axum's `http2` feature is off).
//!
//! Each connection is held to:
//! - **headers** within `KURIR_HEADER_TIMEOUT`, counted from the connection's
//!   start for its first request and from the first byte of each later one.
//!   A client that sent part of a request gets a 408 problem+json and the
//!   connection is closed; one that sent nothing at all is just closed.
//! - **idle**: between requests a kept-alive connection waits at most
//!   `KURIR_IDLE_TIMEOUT` for the next request's first byte, then it is
//!   closed without a response, as HTTP allows.
//! - **bodies** are not timed here but where they are read
//!   ([`crate::extract::JsonBody`], `KURIR_BODY_TIMEOUT`), so a handler that
//!   holds its answer on purpose is never cut off.
//!
//! Why not hyper's own `http1::Builder::header_read_timeout`: in hyper 1.x
//! (read in 1.12, `proto/h1/conn.rs`) its timer runs whenever hyper waits for
//! a request head, and `State::idle` re-arms it as soon as an answer is done,
//! so it also times the wait between requests on a kept-alive connection: it
//! is the idle timeout too and cannot differ from it. And when it fires
//! hyper ends the connection with `Error::HeaderTimeout` and drops the socket
//! without a response (its only automatic answers are 400/414/431 for parse
//! errors). So it is off, and this module keeps the deadlines: [`Watched`]
//! sees each request's first byte, the service sees its head complete and
//! its answer done, and the connection task sleeps until the current
//! phase's deadline. On a header deadline it takes the socket back from
//! hyper (`into_parts`) and writes the 408 itself.
//!
//! Shutdown: on the token the server stops accepting and each connection
//! finishes the request in flight (idle ones close at once); `serve`
//! returns when all are closed. Dropping its future aborts every connection.
//! There are no protocol upgrades (kurir has no WebSocket routes).

use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::ConnectInfo,
    http::{Request, header},
    response::IntoResponse,
};
use hyper::{
    body::{Frame, Incoming, SizeHint},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinSet,
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tower::Service;
use tracing::{debug, error, info};

use crate::{config::ApiArgs, error::ApiError};

/// How long a closing connection keeps reading (and dropping) what the client
/// still sends, so that an answer sent before the whole request was read
/// (408, 413) is not destroyed by the TCP reset that closing a socket with
/// unread data causes.
const LINGER: Duration = Duration::from_secs(1);

/// How long a client may take over each part of a request.
#[derive(Debug, Clone, Copy)]
pub struct ClientTimeouts {
    /// To the end of a request's headers (`KURIR_HEADER_TIMEOUT`).
    pub header: Duration,
    /// For a whole request body, once a handler reads it (`KURIR_BODY_TIMEOUT`).
    pub body: Duration,
    /// Between requests on a kept-alive connection (`KURIR_IDLE_TIMEOUT`).
    pub idle: Duration,
}

impl From<&ApiArgs> for ClientTimeouts {
    fn from(args: &ApiArgs) -> Self {
        Self {
            header: args.header_timeout,
            body: args.body_timeout,
            idle: args.idle_timeout,
        }
    }
}

/// Serves `router` on `listener` until `shutdown`, then waits for the open
/// connections to finish (the caller bounds that wait). Handlers can extract
/// `ConnectInfo<SocketAddr>`.
pub async fn serve(
    router: Router,
    listener: TcpListener,
    timeouts: ClientTimeouts,
    shutdown: CancellationToken,
) -> io::Result<()> {
    // Owned here, so dropping this future aborts every connection.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    let router = router.clone();
                    connections.spawn(connection(stream, remote, router, timeouts, shutdown.clone()));
                }
                Err(err) => accept_failed(err).await,
            },
            Some(finished) = connections.join_next(), if !connections.is_empty() => reap(finished),
        }
    }
    drop(listener);
    debug!(open = connections.len(), "stopped accepting; draining");
    while let Some(finished) = connections.join_next().await {
        reap(finished);
    }
    Ok(())
}

fn reap(finished: Result<(), tokio::task::JoinError>) {
    if let Err(err) = finished
        && err.is_panic()
    {
        error!(error = %err, "a connection task panicked");
    }
}

async fn accept_failed(err: io::Error) {
    // The client gave up before it was accepted: nothing to do.
    if matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    // Out of file descriptors, say: give open connections time to close.
    error!(error = %err, "cannot accept a connection; retrying in 1s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Where a connection is between its requests; its deadline follows.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for a request's headers, `since` the connection opened or the
    /// request's first byte; `begun` once any byte of the request arrived.
    Head { since: Instant, begun: bool },
    /// The headers are in; the request is being answered (a body is timed by
    /// the handler that reads it).
    Busy,
    /// The last answer is done; waiting for the next request.
    Idle { since: Instant },
}

impl Phase {
    fn deadline(self, timeouts: &ClientTimeouts) -> Option<Instant> {
        match self {
            Phase::Head { since, .. } => Some(since + timeouts.header),
            Phase::Busy => None,
            Phase::Idle { since } => Some(since + timeouts.idle),
        }
    }
}

type PhaseTx = Arc<watch::Sender<Phase>>;

/// How a connection's loop ended.
enum Ending {
    /// hyper closed it: the client left, asked to close, or shutdown.
    Served,
    /// The deadline of this phase passed.
    Expired(Phase),
}

async fn connection(
    stream: TcpStream,
    remote: SocketAddr,
    router: Router,
    timeouts: ClientTimeouts,
    shutdown: CancellationToken,
) {
    let opened = Phase::Head {
        since: Instant::now(),
        begun: false,
    };
    let (phase, mut phases) = watch::channel(opened);
    let phase = Arc::new(phase);
    let io = TokioIo::new(Watched {
        stream,
        phase: phase.clone(),
        flushed: true,
    });
    let service = service_fn(move |mut request: Request<Incoming>| {
        phase.send_replace(Phase::Busy);
        request.extensions_mut().insert(ConnectInfo(remote));
        let done = IdleOnDrop(phase.clone());
        let mut router = router.clone();
        async move {
            std::future::poll_fn(|cx| Service::<Request<Incoming>>::poll_ready(&mut router, cx))
                .await?;
            let response = router.call(request).await?;
            Ok::<_, Infallible>(response.map(|body| Answer { body, _done: done }))
        }
    });
    let mut conn = http1::Builder::new()
        // Ours instead: see the module docs.
        .header_read_timeout(None)
        .serve_connection(io, service);

    let mut deadline = phases.borrow_and_update().deadline(&timeouts);
    let sleep = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now));
    tokio::pin!(sleep);
    let mut draining = false;
    let ending = loop {
        if let Some(at) = deadline {
            sleep.as_mut().reset(at);
        }
        tokio::select! {
            served = &mut conn => {
                if let Err(err) = served {
                    debug!(%remote, error = %err, "connection ended with an error");
                }
                break Ending::Served;
            }
            Ok(()) = phases.changed() => {
                deadline = phases.borrow_and_update().deadline(&timeouts);
            }
            () = &mut sleep, if deadline.is_some() => {
                let now = *phases.borrow_and_update();
                deadline = now.deadline(&timeouts);
                if deadline.is_some_and(|at| at <= Instant::now()) {
                    break Ending::Expired(now);
                }
            }
            () = shutdown.cancelled(), if !draining => {
                draining = true;
                Pin::new(&mut conn).graceful_shutdown();
            }
        }
    };

    let Watched {
        mut stream,
        flushed,
        ..
    } = conn.into_parts().io.into_inner();
    match ending {
        Ending::Served => {}
        Ending::Expired(Phase::Head { begun: true, .. }) => {
            info!(%remote, "request headers too slow; answering 408 and closing");
            // Only on a clean line: were the last answer still half-written,
            // hyper's unsent rest is gone and the 408 would follow a torn one.
            if flushed {
                let answer = header_timeout_answer(timeouts.header).await;
                let _ = tokio::time::timeout(LINGER, stream.write_all(&answer)).await;
            }
        }
        Ending::Expired(Phase::Head { begun: false, .. }) => {
            debug!(%remote, "no request within the header timeout; closing");
        }
        Ending::Expired(_) => debug!(%remote, "idle connection; closing"),
    }
    close(stream).await;
}

/// The 408 problem for a header timeout, as raw HTTP/1.1 bytes: hyper has
/// no request to answer, so it is written to the socket directly.
async fn header_timeout_answer(deadline: Duration) -> Vec<u8> {
    let detail = format!(
        "the request headers did not arrive within {}",
        humantime::format_duration(deadline)
    );
    let (parts, body) = ApiError::request_timeout(detail)
        .into_response()
        .into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let status = parts.status;
    let mut answer = format!(
        "HTTP/1.1 {} {}\r\ndate: {}\r\ncontent-length: {}\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT"),
        body.len()
    )
    .into_bytes();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_LENGTH && name != header::DATE {
            answer.extend_from_slice(name.as_str().as_bytes());
            answer.extend_from_slice(b": ");
            answer.extend_from_slice(value.as_bytes());
            answer.extend_from_slice(b"\r\n");
        }
    }
    answer.extend_from_slice(b"\r\n");
    answer.extend_from_slice(&body);
    answer
}

/// Closes as a web server should: FIN first, then read and drop what the
/// client still sends for a moment ([`LINGER`]) before letting go.
async fn close(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    let _ = tokio::time::timeout(LINGER, async {
        let mut sink = [0_u8; 8192];
        while let Ok(1..) = stream.read(&mut sink).await {}
    })
    .await;
}

/// The socket, as hyper sees it, noting each request's first byte and
/// whether everything hyper wrote has been flushed.
struct Watched {
    stream: TcpStream,
    phase: PhaseTx,
    flushed: bool,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.phase.send_if_modified(|phase| match *phase {
                Phase::Idle { .. } => {
                    *phase = Phase::Head {
                        since: Instant::now(),
                        begun: true,
                    };
                    true
                }
                Phase::Head {
                    since,
                    begun: false,
                } => {
                    *phase = Phase::Head { since, begun: true };
                    // Same deadline: no need to wake the connection task.
                    false
                }
                Phase::Head { .. } | Phase::Busy => false,
            });
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.flushed = false;
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.flushed = false;
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    /// hyper flushes the socket once its own buffer is empty.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.stream).poll_flush(cx);
        if matches!(polled, Poll::Ready(Ok(()))) {
            self.flushed = true;
        }
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Marks the connection idle when dropped: hyper drops an answer's body once
/// it has written all of it (or given up on it).
struct IdleOnDrop(PhaseTx);

impl Drop for IdleOnDrop {
    fn drop(&mut self) {
        self.0.send_replace(Phase::Idle {
            since: Instant::now(),
        });
    }
}

/// An answer's body, carrying the [`IdleOnDrop`] of its request.
struct Answer {
    body: Body,
    _done: IdleOnDrop,
}

impl hyper::body::Body for Answer {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use axum::routing::get;

    use super::*;

    #[tokio::test]
    async fn handlers_see_the_client_address() {
        let router = Router::new().route(
            "/whoami",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let timeouts = ClientTimeouts {
            header: Duration::from_secs(5),
            body: Duration::from_secs(5),
            idle: Duration::from_secs(5),
        };
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(router, listener, timeouts, shutdown.clone()));

        let mut client = TcpStream::connect(addr).await.unwrap();
        let me = client.local_addr().unwrap().to_string();
        client
            .write_all(b"GET /whoami HTTP/1.1\r\nHost: kurir.test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_to_string(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.ends_with(&me), "{answer}");
        drop(client);

        shutdown.cancel();
        server.await.unwrap().unwrap();
    }
}
