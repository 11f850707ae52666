//! The dead-letter queue `{p}.dead-letters`, for operators: envelopes the
//! broker gave up on (too many deliveries without an ack) and envelopes no
//! worker could read. [`DeadLetters`] reads them without removing them; the
//! caller decides which to [`DeadLetters::remove`] (after re-driving their
//! rows); [`DeadLetters::close`] hands the rest back, in order, with an
//! explicit `basic.nack` (requeue), which RabbitMQ 4.3 and later do not
//! count as a delivery. Earlier versions count it, and the queue's delivery
//! limit is set far out of reach for that reason (see the topology module).

use lapin::{
    Acker, BasicProperties, Channel, Connection,
    options::{BasicAckOptions, BasicGetOptions, BasicNackOptions},
    types::{AMQPValue, FieldTable},
};

use crate::{
    BusError, DecodeError, Envelope, Topology, connection,
    publisher::{PARKED_AT_HEADER, REASON_HEADER},
};

/// How many times a letter had been dead-lettered, kept by kurir beside the
/// broker's `x-death` when it moves a letter from one queue to another.
pub const DEATHS_HEADER: &str = "x-kurir-deaths";

/// How long one step against the broker may take.
const STEP: std::time::Duration = std::time::Duration::from_secs(10);

/// One dead-lettered envelope.
pub struct DeadLetter {
    /// The envelope's id (its row's id) for envelopes kurir published, else
    /// the id given when it was parked.
    pub id: String,
    pub envelope: Result<Envelope, DecodeError>,
    /// Why it is here: the broker's reason (`delivery_limit`, `rejected`, …)
    /// or the worker's (`undecodable: …`).
    pub reason: String,
    /// How many times it was dead-lettered.
    pub deaths: i64,
    /// When it first was, in seconds since the epoch, if known.
    pub first_death: Option<i64>,
    acker: Acker,
}

impl std::fmt::Debug for DeadLetter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetter")
            .field("id", &self.id)
            .field("reason", &self.reason)
            .field("deaths", &self.deaths)
            .finish()
    }
}

/// A connection reading `{p}.dead-letters`.
pub struct DeadLetters {
    connection: Connection,
    channel: Channel,
    queue: String,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters")
            .field("queue", &self.queue)
            .finish()
    }
}

fn header<'a>(table: &'a FieldTable, name: &str) -> Option<&'a AMQPValue> {
    table
        .inner()
        .iter()
        .find(|(key, _)| key.as_str() == name)
        .map(|(_, value)| value)
}

fn text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn integer(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok(),
        _ => None,
    }
}

/// (reason, deaths, first death) from a message's headers: the broker's
/// `x-death` entries, or the headers the worker sets when it parks one (and
/// kurir keeps when it moves one).
pub(crate) fn death_of(properties: &BasicProperties) -> (String, i64, Option<i64>) {
    let Some(headers) = properties.headers().as_ref() else {
        return ("unknown".into(), 1, None);
    };
    if let Some(AMQPValue::FieldArray(deaths)) = header(headers, "x-death") {
        let entries: Vec<&FieldTable> = deaths
            .as_slice()
            .iter()
            .filter_map(|entry| match entry {
                AMQPValue::FieldTable(table) => Some(table),
                _ => None,
            })
            .collect();
        let count = entries
            .iter()
            .filter_map(|e| header(e, "count").and_then(integer))
            .sum::<i64>()
            .max(1);
        let first = entries
            .iter()
            .filter_map(|e| header(e, "time").and_then(integer))
            .min();
        let reason = header(headers, "x-first-death-reason")
            .and_then(text)
            .or_else(|| {
                entries
                    .first()
                    .and_then(|e| header(e, "reason").and_then(text))
            })
            .unwrap_or_else(|| "unknown".into());
        return (reason, count, first);
    }
    let reason = header(headers, REASON_HEADER)
        .and_then(text)
        .unwrap_or_else(|| "unknown".into());
    let parked_at = header(headers, PARKED_AT_HEADER)
        .and_then(integer)
        .map(|ms| ms / 1000);
    let deaths = header(headers, DEATHS_HEADER)
        .and_then(integer)
        .unwrap_or(1)
        .max(1);
    (reason, deaths, parked_at)
}

impl DeadLetters {
    /// Connects once (an operator command: a clear error beats retrying).
    /// Letters still in the old `{p}.dead` are moved in first, so the
    /// operator sees them all.
    pub async fn open(url: &str, topology: &Topology) -> Result<Self, BusError> {
        let connection = connection::connect_once(url, "kurir-dlq").await?;
        let setup = async {
            let channel = connection.create_channel().await?;
            topology.declare(&channel).await?;
            Ok::<_, BusError>(channel)
        };
        let channel = match tokio::time::timeout(STEP, setup).await {
            Ok(channel) => channel?,
            Err(_) => return Err(BusError::Timeout(STEP)),
        };
        let mut migration = topology.migrate_legacy_dead(&connection).await?;
        // Someone else moving them now: wait for them, briefly.
        let waited = std::time::Instant::now();
        while migration == crate::Migration::Elsewhere && waited.elapsed() < STEP {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            migration = topology.migrate_legacy_dead(&connection).await?;
        }
        Ok(Self {
            connection,
            channel,
            queue: topology.dead(),
        })
    }

    /// Takes up to `limit` dead letters off the queue without acking them:
    /// until [`DeadLetters::remove`]d they go back when this is closed.
    /// Each is a delivery the broker counts (except on RabbitMQ 4.3+).
    pub async fn fetch(&self, limit: usize) -> Result<Vec<DeadLetter>, BusError> {
        let mut letters = Vec::new();
        while letters.len() < limit {
            let get = self.channel.basic_get(
                self.queue.as_str().into(),
                BasicGetOptions { no_ack: false },
            );
            let got = match tokio::time::timeout(STEP, get).await {
                Ok(got) => got?,
                Err(_) => return Err(BusError::Timeout(STEP)),
            };
            let Some(message) = got else { break };
            let delivery = message.delivery;
            let (reason, deaths, first_death) = death_of(&delivery.properties);
            let envelope = Envelope::decode(&delivery.data);
            let id = delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string())
                .or_else(|| envelope.as_ref().ok().map(|e| e.id.to_string()))
                .unwrap_or_else(|| "-".into());
            letters.push(DeadLetter {
                id,
                envelope,
                reason,
                deaths,
                first_death,
                acker: delivery.acker,
            });
        }
        Ok(letters)
    }

    /// Removes a dead letter for good (its row was re-driven, or needs nothing).
    pub async fn remove(&self, letter: &DeadLetter) -> Result<bool, BusError> {
        match tokio::time::timeout(STEP, letter.acker.ack(BasicAckOptions::default())).await {
            Ok(acked) => Ok(acked?),
            Err(_) => Err(BusError::Timeout(STEP)),
        }
    }

    /// Hands back every one of `letters` not removed (in order), then closes
    /// the connection. Letters not handed back explicitly (the process died)
    /// go back when the broker sees the connection close.
    pub async fn close(self, letters: &[DeadLetter]) {
        let back = BasicNackOptions {
            multiple: false,
            requeue: true,
        };
        for letter in letters.iter().filter(|letter| letter.acker.usable()) {
            match tokio::time::timeout(STEP, letter.acker.nack(back)).await {
                Ok(Ok(_)) => {}
                // The channel is gone: the broker returns the rest itself.
                Ok(Err(_)) | Err(_) => break,
            }
        }
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            self.channel.close(200, "done".into()),
        )
        .await;
        connection::close(&self.connection, "done").await;
    }
}
