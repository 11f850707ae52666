//! Connecting to RabbitMQ, and noticing when a connection is gone.
//!
//! kurir owns recovery; lapin's `enable_auto_recover` stays off. A lost
//! connection is thrown away whole (channels, consumers, pending confirms)
//! and the owner ([`crate::Publisher`], or the worker's consumer loop) makes
//! a new one. So no consumer survives on a channel that nobody reads: when a
//! connection goes, the broker requeues everything it had delivered on it.

use std::time::Duration;

use futures_util::StreamExt;
use kurir_core::runtime::Reconnect;
use lapin::{Channel, Connection, ConnectionProperties, Event, uri::AMQPUri};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How often a connection's health is looked at besides its error events.
const HEALTH_CHECK: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("AMQP_URL is not a valid AMQP URL: {0}")]
    BadUrl(String),
    #[error("shut down before RabbitMQ was reached")]
    ShutDown,
    #[error("RabbitMQ did not answer within {0:?}")]
    Timeout(Duration),
    /// A connection attempt failed; the text says what to check.
    #[error("{0}")]
    Connect(String),
    /// The broker refused the login or the vhost; the text says what to fix.
    #[error("{0}")]
    Refused(String),
    /// Moving the old dead-letter queue's letters failed (nothing is lost).
    #[error("moving dead letters: {0}")]
    Move(String),
    #[error("rabbitmq: {0}")]
    Amqp(#[from] lapin::Error),
}

impl BusError {
    /// A wrong password, user or vhost: retrying will not help until the
    /// setting is fixed (the caller may still retry, and say so now and then).
    /// A broker that is down or unreachable is not refused.
    pub fn is_refused(&self) -> bool {
        matches!(self, BusError::Refused(_))
    }
}

/// What a failed connection attempt means for whoever set AMQP_URL: refused
/// (a person must fix a setting) or not, with the text to show.
fn explain_connect(err: &lapin::Error, target: &str) -> BusError {
    let text = err.to_string();
    if text.contains("ACCESS_REFUSED") || text.contains("ACCESS-REFUSED") {
        BusError::Refused(format!(
            "RabbitMQ at {target} refused the login: access refused, check AMQP_URL credentials"
        ))
    } else if text.contains("NOT_ALLOWED") && text.contains("vhost") {
        BusError::Refused(format!(
            "RabbitMQ at {target}: the vhost does not exist or the user may not use it, check AMQP_URL's vhost (the default one is %2f): {text}"
        ))
    } else if text.contains("Connection refused") {
        BusError::Connect(format!(
            "nothing accepts connections at {target} (is RabbitMQ running? check AMQP_URL's host and port)"
        ))
    } else {
        BusError::Connect(format!("cannot connect to RabbitMQ at {target}: {text}"))
    }
}

/// `host:port/vhost` of an AMQP URL, without credentials, for logs.
pub(crate) fn describe(url: &str) -> Result<String, BusError> {
    let uri: AMQPUri = url.parse().map_err(BusError::BadUrl)?;
    let vhost = match uri.vhost.as_str() {
        "/" => String::new(),
        other => format!(" (vhost {other})"),
    };
    Ok(format!(
        "{}:{}{vhost}",
        uri.authority.host, uri.authority.port
    ))
}

/// The schedule every RabbitMQ reconnect loop uses.
pub fn reconnect_schedule() -> Reconnect {
    Reconnect::new(Duration::from_millis(100), Duration::from_secs(5))
}

/// A connection that stayed up this long counts as a success (the reconnect
/// schedule starts again from its first delay); one lost sooner does not, so
/// a broker that accepts and drops connections is not hammered.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);

/// One connection attempt, bounded in time. `name` shows in the management UI.
pub async fn connect_once(url: &str, name: &str) -> Result<Connection, BusError> {
    let target = describe(url)?;
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, properties)).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(err)) => Err(explain_connect(&err, &target)),
        Err(_) => Err(BusError::Timeout(CONNECT_TIMEOUT)),
    }
}

/// Connects, retrying on `reconnect`'s schedule until RabbitMQ answers or
/// `shutdown` fires. The first failure of a first connection is a warning
/// (an operator starting kurir wants to know at once); after a connection
/// was lost, only a persisting outage is (every tenth failure), since the
/// owner already said it lost the broker.
pub(crate) async fn connect(
    url: &str,
    name: &str,
    reconnect: &mut Reconnect,
    first: bool,
    shutdown: &CancellationToken,
) -> Result<Connection, BusError> {
    describe(url)?;
    loop {
        let result = tokio::select! {
            () = shutdown.cancelled() => return Err(BusError::ShutDown),
            result = connect_once(url, name) => result,
        };
        match result {
            Ok(connection) => return Ok(connection),
            Err(err @ BusError::BadUrl(_)) => return Err(err),
            Err(err) => {
                let delay = reconnect.failed();
                let failures = reconnect.failures();
                // A refused login is said at once and then now and then: it
                // needs a person, not patience.
                let worth = if err.is_refused() {
                    failures == 1 || failures.is_multiple_of(10)
                } else {
                    (first && failures == 1) || failures.is_multiple_of(10)
                };
                if worth {
                    warn!(connection = name, failures, "{err}; retrying");
                } else {
                    debug!(connection = name, failures, "{err}; retrying");
                }
                tokio::select! {
                    () = shutdown.cancelled() => return Err(BusError::ShutDown),
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Whether a connection and the channels it carries are still usable.
pub(crate) fn usable(connection: &Connection, channels: &[&Channel]) -> bool {
    connection.status().connected() && channels.iter().all(|c| c.status().connected())
}

/// Resolves, with the reason, once `connection` (or one of `channels`) is no
/// longer usable: an error event (the broker closed it, the socket died, a
/// heartbeat was missed), or a status seen broken at a periodic look. It
/// holds its own handles, so it can be awaited beside other uses of the
/// connection's owner.
pub(crate) fn lost(
    connection: &Connection,
    channels: &[&Channel],
) -> impl std::future::Future<Output = String> + Send + use<> {
    let status = connection.status().clone();
    let channels: Vec<Channel> = channels.iter().map(|c| (*c).clone()).collect();
    // Boxed: lapin's stream type names the connection's borrow, though it
    // outlives it.
    let mut events: std::pin::Pin<Box<dyn futures_util::Stream<Item = Event> + Send>> =
        Box::pin(connection.events_listener());
    async move {
        let mut check = tokio::time::interval(HEALTH_CHECK);
        loop {
            if !status.connected() || !channels.iter().all(|c| c.status().connected()) {
                return "connection or channel closed".to_owned();
            }
            tokio::select! {
                event = events.next() => match event {
                    Some(Event::Error(err)) => return err.to_string(),
                    Some(_) => {}
                    None => return "connection dropped".to_owned(),
                },
                _ = check.tick() => {}
            }
        }
    }
}

/// Closes a connection that is being given up, bounded in time (a blocked
/// or dead broker must not hold its owner).
pub(crate) async fn close(connection: &Connection, why: &str) {
    if connection.status().connected() {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            connection.close(200, why.to_owned().into()),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::{connect_once, describe};

    #[test]
    fn urls_are_described_without_credentials() {
        let described = describe("amqp://guest:secret@127.0.0.1:5672/%2f").unwrap();
        assert!(!described.contains("secret"), "{described}");
        assert!(described.starts_with("127.0.0.1:5672"), "{described}");
        assert!(describe("http://nope").is_err());
    }

    #[tokio::test]
    async fn a_broker_that_is_down_is_not_a_refused_login() {
        // Nothing listens on port 1 of loopback: the connection is refused
        // by the operating system, which says nothing about credentials.
        let err = connect_once("amqp://guest:guest@127.0.0.1:1/%2f", "test")
            .await
            .expect_err("nothing listens on port 1");
        assert!(!err.is_refused(), "{err}");
        let text = err.to_string();
        assert!(text.contains("is RabbitMQ running?"), "{text}");
    }
}
