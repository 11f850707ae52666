//! LISTEN/NOTIFY: a dedicated connection that wakes the relay when a NOTIFY
//! arrives on [`crate::pipeline::RELAY_CHANNEL`]. A hint only: the relay also
//! polls, so a lost notification or a dropped connection costs latency, never
//! a message. The connection is re-made on its own after a failure.

use std::{sync::Arc, time::Duration};

use futures_util::{StreamExt, stream};
use kurir_core::runtime::Reconnect;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Listens on `channel` until `shutdown`, notifying `wake` for each
/// notification (and once after every (re)connect, in case one was missed
/// meanwhile). Spawn it where its owner can abort it.
pub async fn run(
    config: tokio_postgres::Config,
    channel: &'static str,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut reconnect = Reconnect::new(Duration::from_millis(200), Duration::from_secs(10));
    while !shutdown.is_cancelled() {
        match listen_once(&config, channel, &wake, &mut reconnect, &shutdown).await {
            Ok(()) => {}
            Err(err) => {
                debug!(error = %err, "relay listener lost its connection; reconnecting");
            }
        }
        if !reconnect.pause(&shutdown).await {
            break;
        }
    }
}

async fn listen_once(
    config: &tokio_postgres::Config,
    channel: &str,
    wake: &Notify,
    reconnect: &mut Reconnect,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let setup = async {
        let (client, mut connection) = config.connect(NoTls).await?;
        let mut messages = stream::poll_fn(move |cx| connection.poll_message(cx));
        let sql = format!("LISTEN {channel}");
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
    // the listener (nor, through it, the worker's shutdown).
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
    wake.notify_one();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            message = messages.next() => match message {
                Some(Ok(AsyncMessage::Notification(_))) => wake.notify_one(),
                Some(Ok(AsyncMessage::Notice(notice))) => debug!(%notice, "postgres notice"),
                Some(Ok(_)) => {}
                Some(Err(err)) => {
                    warn!(error = %err, "relay listener connection failed");
                    return Err(err.to_string());
                }
                None => return Ok(()),
            },
        }
    }
}
