//! LISTEN/NOTIFY: one dedicated connection per process that hands what it
//! hears on its channels to its owner: the relay's wake-up
//! ([`crate::pipeline::RELAY_CHANNEL`]) in the worker, the outcomes that
//! `Prefer: wait` requests wait for ([`crate::pipeline::DONE_CHANNEL`]) in
//! the API. Notifications are hints: whoever listens also has another way
//! to learn the truth (the relay polls, a waiting request reads its row), so
//! a lost notification or a dropped connection costs latency, never a
//! message. The connection is re-made on its own after a failure, and every
//! (re)connect is announced ([`Heard::Listening`]), since anything sent while
//! it was away was missed.

use std::time::Duration;

use futures_util::{StreamExt, stream};
use kurir_core::runtime::Reconnect;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// What the listener hands its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard<'a> {
    /// The LISTEN is in place, the first time or again after a lost
    /// connection: notifications sent before now may have been missed.
    Listening,
    /// A NOTIFY on one of the channels.
    Notification { channel: &'a str, payload: &'a str },
}

/// Listens on `channels` until `shutdown`, handing each notification (and
/// each (re)connect) to `heard`, on the listener's own task: `heard` must
/// not block. Spawn it where its owner can abort it.
pub async fn run(
    config: tokio_postgres::Config,
    channels: &'static [&'static str],
    mut heard: impl FnMut(Heard<'_>) + Send,
    shutdown: CancellationToken,
) {
    let mut reconnect = Reconnect::new(Duration::from_millis(200), Duration::from_secs(10));
    while !shutdown.is_cancelled() {
        match listen_once(&config, channels, &mut heard, &mut reconnect, &shutdown).await {
            Ok(()) => {}
            Err(err) => {
                debug!(error = %err, ?channels, "listener lost its connection; reconnecting");
            }
        }
        if !reconnect.pause(&shutdown).await {
            break;
        }
    }
}

async fn listen_once(
    config: &tokio_postgres::Config,
    channels: &[&str],
    heard: &mut (impl FnMut(Heard<'_>) + Send),
    reconnect: &mut Reconnect,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let setup = async {
        let (client, mut connection) = config.connect(NoTls).await?;
        let mut messages = stream::poll_fn(move |cx| connection.poll_message(cx));
        let sql: String = channels
            .iter()
            .map(|channel| format!("LISTEN {channel};"))
            .collect();
        {
            let listen = client.batch_execute(&sql);
            // The LISTEN completes only while the connection is being driven.
            tokio::pin!(listen);
            loop {
                tokio::select! {
                    result = &mut listen => { result?; break; }
                    message = messages.next() => match message {
                        Some(Ok(_)) => {}
                        Some(Err(err)) => return Err(err),
                        None => break,
                    },
                }
            }
        }
        Ok((client, messages))
    };
    // A server that accepts the connection and then stalls must not hold
    // the listener (nor, through it, its process's shutdown).
    let limit = config
        .get_connect_timeout()
        .copied()
        .unwrap_or(Duration::from_secs(10));
    let (_client, mut messages) = tokio::select! {
        () = shutdown.cancelled() => return Ok(()),
        setup = tokio::time::timeout(limit, setup) => match setup {
            Ok(Ok(ready)) => ready,
            Ok(Err(err)) => return Err(err.to_string()),
            Err(_) => return Err(format!("no LISTEN within {limit:?}")),
        },
    };
    reconnect.succeeded();
    heard(Heard::Listening);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            message = messages.next() => match message {
                Some(Ok(AsyncMessage::Notification(notification))) => heard(Heard::Notification {
                    channel: notification.channel(),
                    payload: notification.payload(),
                }),
                Some(Ok(AsyncMessage::Notice(notice))) => debug!(%notice, "postgres notice"),
                Some(Ok(_)) => {}
                Some(Err(err)) => {
                    warn!(error = %err, ?channels, "listener connection failed");
                    return Err(err.to_string());
                }
                None => return Ok(()),
            },
        }
    }
}
