//! The accept shared by messages and status updates: one multi-row INSERT
//! ([`insert_accepted`]), stored as published by the caller or left to the
//! relay ([`Publishing`]).

use kurir_core::{AccountId, JobKind, TraceContext};
use uuid::Uuid;

use crate::{
    GenericClient, Result,
    columns::{table, trace_of},
    pipeline::publish::{Publishable, notify_relays},
};

/// Who publishes rows as they are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publishing {
    /// The accepting process, right after the commit (it has room in its
    /// dispatcher): the row is stored as published, so it never costs a
    /// second write. If that process dies before its publish, the guard
    /// publishes the row after `KURIR_REPUBLISH_AFTER`; if the publish
    /// fails, the process releases the row to the relay ([`release_publish`]).
    ByCaller,
    /// The relay, at its next round (the dispatcher has no room, or the
    /// broker is away).
    ByRelay,
}

impl Publishing {
    pub(crate) fn published(self) -> bool {
        self == Publishing::ByCaller
    }
}

/// One row for [`insert_accepted`].
pub(crate) struct AcceptedRow<'a> {
    pub id: Uuid,
    pub account: AccountId,
    pub user: &'a str,
    /// A message's body (`None` for a template) or a status update's status.
    pub text: Option<&'a str>,
    /// A message's template (only messages have one).
    pub template: Option<serde_json::Value>,
    /// A request waits for its outcome: its final state is NOTIFYed on
    /// [`DONE_CHANNEL`](super::DONE_CHANNEL).
    pub waited: bool,
    /// The trace of the request that created it.
    pub trace: Option<TraceContext>,
}

/// The accept shared by both kinds: one multi-row INSERT of
/// [`AcceptedRow`]s, stored as `publishing` says; a row whose user does not
/// exist in its account is not stored. Returns the rows stored (what is to
/// be published), and wakes the relays if they are to publish them.
pub(crate) async fn insert_accepted<'a>(
    client: &impl GenericClient,
    kind: JobKind,
    rows: impl Iterator<Item = AcceptedRow<'a>>,
    publishing: Publishing,
) -> Result<Vec<Accepted>> {
    let mut ids = Vec::new();
    let mut accounts = Vec::new();
    let mut users = Vec::new();
    let mut texts = Vec::new();
    let mut waited = Vec::new();
    let mut templates = Vec::new();
    let mut traces = Vec::new();
    for row in rows {
        traces.push(row.trace.map(|t| t.to_string()));
        ids.push(row.id);
        accounts.push(row.account.0);
        users.push(row.user);
        texts.push(row.text);
        templates.push(row.template);
        waited.push(row.waited);
    }
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let t = table(kind);
    let (text, template, template_value) = match kind {
        JobKind::Message => ("body", ", template", ", n.template"),
        JobKind::StatusUpdate => ("status", "", ""),
    };
    // A text to a user whose 24-hour window kurir knows to be closed: the
    // request's answer warns of it (docs/api.md, "Templates and the 24-hour window").
    let outside_window = match kind {
        JobKind::Message => {
            "COALESCE(body IS NOT NULL AND
                 (SELECT max(c.last_inbound_at) FROM whatsapp_contacts c
                  WHERE c.wa_id = (SELECT substr(u.phone_number, 2) FROM users u
                                   WHERE u.account_id = messages.account_id AND u.id = messages.user_id))
                 < now() - interval '24 hours', false)"
        }
        JobKind::StatusUpdate => "false",
    };
    let statement = client
        .prepare_cached(&format!(
            "INSERT INTO {t} (id, account_id, user_id, {text}, published, published_at, waited,
                              traceparent{template})
             SELECT n.id, u.account_id, u.id, n.text, $5, CASE WHEN $5 THEN now() END, n.waited,
                    n.traceparent{template_value}
             FROM unnest($1::uuid[], $2::int8[], $3::text[], $4::text[], $6::bool[], $7::jsonb[],
                         $8::text[])
                  AS n(id, account_id, user_id, text, waited, template, traceparent)
             JOIN users u ON u.account_id = n.account_id AND u.id = n.user_id
             RETURNING id, account_id, traceparent, {outside_window} AS outside_window"
        ))
        .await?;
    let stored = client
        .query(
            &statement,
            &[
                &ids,
                &accounts,
                &users,
                &texts,
                &publishing.published(),
                &waited,
                &templates,
                &traces,
            ],
        )
        .await?;
    if publishing == Publishing::ByRelay && !stored.is_empty() {
        notify_relays(client).await?;
    }
    Ok(stored
        .iter()
        .map(|row| Accepted {
            row: Publishable::accepted(
                kind,
                row.get("id"),
                AccountId(row.get("account_id")),
                trace_of(row),
            ),
            outside_window: row.get("outside_window"),
        })
        .collect())
}

/// A row [`insert_accepted`] stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub row: Publishable,
    /// A text message to a user whose 24-hour window is known to be closed
    /// (they last wrote more than 24 hours ago): WhatsApp will likely
    /// refuse it (131047).
    pub outside_window: bool,
}
