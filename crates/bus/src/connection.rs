//! Connecting to RabbitMQ.
//!
//! lapin's automatic recovery (`enable_auto_recover`) handles a connection
//! lost later: it reconnects forever with a capped backoff and replays the
//! topology, QoS, confirm mode and consumers. The first connection is made by
//! our own loop instead, with plain connections as probes, so that a wrong
//! password or an unreachable host is logged with its reason while we retry.

use std::time::Duration;

use lapin::{Connection, ConnectionProperties, uri::AMQPUri};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("AMQP_URL is not a valid AMQP URL: {0}")]
    BadUrl(String),
    #[error("shut down before RabbitMQ was reached")]
    ShutDown,
    #[error("rabbitmq: {0}")]
    Amqp(#[from] lapin::Error),
}

/// `host:port/vhost` of an AMQP URL, without credentials, for logs.
pub(crate) fn describe(url: &str) -> Result<String, BusError> {
    let uri: AMQPUri = url.parse().map_err(BusError::BadUrl)?;
    Ok(format!(
        "{}:{}/{}",
        uri.authority.host, uri.authority.port, uri.vhost
    ))
}

fn properties(name: &str, recover: bool) -> ConnectionProperties {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    if recover {
        properties
            .enable_auto_recover()
            .configure_backoff(|backoff| {
                backoff
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_delay(Duration::from_secs(5))
                    .without_max_times()
            })
    } else {
        properties
    }
}

/// Connects, retrying until RabbitMQ answers or `shutdown` fires. The
/// connection recovers on its own afterwards. `name` shows in the management UI.
pub async fn connect(
    url: &str,
    name: &str,
    shutdown: &CancellationToken,
) -> Result<Connection, BusError> {
    let target = describe(url)?;
    let mut delay = Duration::from_millis(100);
    let mut failures = 0u32;
    loop {
        let attempt = async {
            let probe = Connection::connect(url, properties(name, false)).await?;
            let _ = probe.close(200, "probe done".into()).await;
            Connection::connect(url, properties(name, true)).await
        };
        let result = tokio::select! {
            () = shutdown.cancelled() => return Err(BusError::ShutDown),
            result = tokio::time::timeout(Duration::from_secs(15), attempt) => result,
        };
        match result {
            Ok(Ok(connection)) => {
                info!(rabbitmq = %target, connection = name, "connected to RabbitMQ");
                return Ok(connection);
            }
            Ok(Err(err)) => {
                failures += 1;
                // Say it once loudly, then every ~10th time, not on every retry.
                if failures == 1 || failures.is_multiple_of(10) {
                    warn!(rabbitmq = %target, error = %err, failures, "cannot connect to RabbitMQ; retrying");
                }
            }
            Err(_) => {
                failures += 1;
                warn!(rabbitmq = %target, failures, "RabbitMQ did not answer within 15s; retrying");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return Err(BusError::ShutDown),
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[test]
    fn urls_are_described_without_credentials() {
        let described = describe("amqp://guest:secret@127.0.0.1:5672/%2f").unwrap();
        assert!(!described.contains("secret"), "{described}");
        assert!(described.starts_with("127.0.0.1:5672"), "{described}");
        assert!(describe("http://nope").is_err());
    }
}
