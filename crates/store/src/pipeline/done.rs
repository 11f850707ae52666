//! Telling who waits: the NOTIFY every statement that finishes rows a
//! request waits for sends on [`DONE_CHANNEL`], reading its payload back
//! ([`done_rows`]), and one row's state for a waiter that may have missed
//! its notification ([`state_of`]).

use kurir_core::{JobKind, JobState};
use uuid::Uuid;

use crate::{GenericClient, Result, columns::table, corrupt};

/// The channel that hears of rows reaching a final state (a message `sent`
/// or `failed`, a status update `success` or `failed`), of the rows a
/// request waits for (stored `waited`, see [`super::accept`]) only: one
/// NOTIFY per statement that finished any (more for a large one,
/// [`DONE_PER_NOTIFY`] rows each), committed with it. Its payload is the
/// kind, then `id:state` for each row, separated by spaces:
/// `message 0190…:sent 0190…:failed`. [`done_rows`] reads it.
pub const DONE_CHANNEL: &str = "kurir_done";

/// Most rows one NOTIFY on [`DONE_CHANNEL`] names, so that its payload
/// stays under Postgres' 8,000 bytes: at most 46 bytes a row
/// (`" " + 36 + ":" + "success"`) and the kind's name, 6,913 bytes in all.
pub const DONE_PER_NOTIFY: usize = 150;

/// A CTE `notified` that NOTIFYs [`DONE_CHANNEL`] of the rows of CTE
/// `source` (with columns `id`, `state`, the row's new state, and `waited`)
/// that are final now and waited for, [`DONE_PER_NOTIFY`] to a
/// notification; a statement that finished no such row notifies nothing.
/// The statement must read `notified` (a CTE nobody reads is not run).
pub(crate) fn notify_done(kind: JobKind, source: &str) -> String {
    format!(
        "notified AS (
             SELECT pg_notify('{DONE_CHANNEL}', '{kind} ' || string_agg(f.id::text || ':' || f.state, ' '))
             FROM (SELECT id, state, (row_number() OVER () - 1) / {DONE_PER_NOTIFY} AS chunk
                   FROM {source} WHERE waited AND state <> 'queued') f
             GROUP BY f.chunk)"
    )
}

/// One row a [`DONE_CHANNEL`] notification names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    pub kind: JobKind,
    pub id: Uuid,
    pub state: JobState,
}

/// The rows a [`DONE_CHANNEL`] payload names; an error for a payload this
/// version did not write.
pub fn done_rows(payload: &str) -> Result<Vec<Done>> {
    let mut words = payload.split(' ');
    let kind: JobKind = words
        .next()
        .unwrap_or_default()
        .parse()
        .map_err(|err| corrupt(format!("done notification: {err}")))?;
    words
        .map(|word| {
            let (id, state) = word
                .split_once(':')
                .ok_or_else(|| corrupt(format!("done notification entry {word:?}")))?;
            Ok(Done {
                kind,
                id: Uuid::parse_str(id).map_err(corrupt)?,
                state: JobState::parse(kind, state).map_err(corrupt)?,
            })
        })
        .collect()
}

/// Where one row stands now; `None` if there is no such row. By id alone:
/// for a caller that holds the id of a row it stored itself (a waiting
/// request), never for an id a client named.
pub async fn state_of(
    client: &impl GenericClient,
    kind: JobKind,
    id: Uuid,
) -> Result<Option<JobState>> {
    let t = table(kind);
    let statement = client
        .prepare_cached(&format!("SELECT state FROM {t} WHERE id = $1"))
        .await?;
    client
        .query_opt(&statement, &[&id])
        .await?
        .map(|row| JobState::parse(kind, row.get("state")).map_err(corrupt))
        .transpose()
}

#[cfg(test)]
mod tests {
    use kurir_core::{MessageStatus, StatusUpdateState};

    use super::*;

    #[test]
    fn a_done_payload_names_each_row_and_its_state() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let rows = done_rows(&format!("message {a}:sent {b}:failed")).unwrap();
        assert_eq!(
            rows,
            vec![
                Done {
                    kind: JobKind::Message,
                    id: a,
                    state: JobState::Message(MessageStatus::Sent)
                },
                Done {
                    kind: JobKind::Message,
                    id: b,
                    state: JobState::Message(MessageStatus::Failed)
                },
            ]
        );
        let rows = done_rows(&format!("status_update {a}:success")).unwrap();
        assert_eq!(
            rows[0].state,
            JobState::StatusUpdate(StatusUpdateState::Success)
        );
    }

    #[test]
    fn a_done_payload_of_another_shape_is_an_error() {
        let id = Uuid::now_v7();
        for payload in [
            String::new(),
            format!("parcel {id}:sent"),
            format!("message {id}"),
            "message nope:sent".to_owned(),
            format!("message {id}:success"),
        ] {
            assert!(done_rows(&payload).is_err(), "{payload:?}");
        }
    }

    #[test]
    fn the_largest_done_payload_fits_a_notify() {
        let id = Uuid::now_v7();
        let entries = vec![format!("{id}:success"); DONE_PER_NOTIFY];
        let payload = format!("{} {}", JobKind::StatusUpdate, entries.join(" "));
        assert!(payload.len() < 8000, "{} bytes", payload.len());
        assert_eq!(done_rows(&payload).unwrap().len(), DONE_PER_NOTIFY);
    }
}
