//! `Prefer: wait=N` (RFC 7240) on the seed POSTs: the answer waits until
//! the request reaches a final state (a message `sent` or `failed`, a status
//! update `success` or `failed`), at most N seconds (at most
//! [`MAX_WAIT_SECS`]): 200 with that state, or 202 with the current one when
//! the time is up. `Preference-Applied: wait=N` says the preference was
//! honoured.
//!
//! Waiting costs no polling. The API keeps one LISTEN connection
//! ([`kurir_store::listen`]) on [`DONE_CHANNEL`], where workers announce the
//! rows they finished that a request waits for (the row is stored `waited`),
//! batch by batch; [`Waiters`] hands each announcement to the requests
//! waiting in this process, however many there are. A request registers
//! ([`Waiters::hold`]) before its row is committed, so a delivery faster
//! than the answer is not missed. It reads its row once
//! (and only then) when the listener may have missed its notification: when
//! the listener (re)connects while it waits, when its time is up, and at
//! shutdown, where it answers at once.

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    extract::FromRequestParts,
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header, request::Parts},
};
use kurir_core::{JobKind, JobState, config::DatabaseArgs, runtime::Tasks};
use kurir_store::{
    Db, SetupError, listen,
    listen::Heard,
    pipeline::{self, DONE_CHANNEL},
};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use uuid::Uuid;

/// The longest wait a request may ask for; longer asks wait this long.
pub const MAX_WAIT_SECS: u64 = 30;

static PREFERENCE_APPLIED: HeaderName = HeaderName::from_static("preference-applied");

/// A request's `Prefer: wait`, in whole seconds, 1 to [`MAX_WAIT_SECS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait(u64);

impl Wait {
    /// The `wait` preference of `headers`, read as RFC 7240 says: any number
    /// of `Prefer` headers, each a comma-separated list of preferences with
    /// optional `;` parameters; names are case-insensitive, values may be
    /// quoted, and only the first `wait` counts. A `wait` that is not a
    /// number of seconds, or is 0, asks for nothing; anything unparsable is
    /// ignored, never an error.
    pub fn from_headers(headers: &HeaderMap) -> Option<Wait> {
        let mut preferences = headers
            .get_all(header::HeaderName::from_static("prefer"))
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| split_unquoted(value, ','));
        let value = preferences.find_map(|preference| {
            // The preference's parameters (after `;`) say nothing about waiting.
            let preference = split_unquoted(preference, ';').next().unwrap_or_default();
            let (name, value) = match preference.split_once('=') {
                Some((name, value)) => (name.trim(), Some(value.trim())),
                None => (preference.trim(), None),
            };
            name.eq_ignore_ascii_case("wait").then_some(value)
        })??;
        let seconds = unquote(value)?;
        if seconds.is_empty() || !seconds.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // delta-seconds too large to represent are "very long" (RFC 9111 1.2.2).
        let seconds: u64 = seconds.parse().unwrap_or(u64::MAX);
        (seconds > 0).then(|| Wait(seconds.min(MAX_WAIT_SECS)))
    }

    pub fn seconds(self) -> u64 {
        self.0
    }

    pub fn duration(self) -> Duration {
        Duration::from_secs(self.0)
    }
}

/// `value` split at each `separator` outside a quoted string.
fn split_unquoted(value: &str, separator: char) -> impl Iterator<Item = &str> {
    let mut rest = Some(value);
    std::iter::from_fn(move || {
        let text = rest?;
        let (mut quoted, mut escaped) = (false, false);
        for (at, c) in text.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                c if c == separator && !quoted => {
                    rest = Some(&text[at + c.len_utf8()..]);
                    return Some(&text[..at]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(text)
    })
}

/// A token as is, a quoted string without its quotes and escapes; `None`
/// for a quoted string that does not end.
fn unquote(word: &str) -> Option<String> {
    let Some(inner) = word.strip_prefix('"') else {
        return Some(word.to_owned());
    };
    let mut text = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => text.push(chars.next()?),
            '"' => return chars.as_str().is_empty().then_some(text),
            c => text.push(c),
        }
    }
    None
}

/// The extractor: the request's [`Wait`], if it asked for one.
#[derive(Debug, Clone, Copy)]
pub struct PreferWait(pub Option<Wait>);

impl<S: Send + Sync> FromRequestParts<S> for PreferWait {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        Ok(PreferWait(Wait::from_headers(&parts.headers)))
    }
}

type Key = (JobKind, Uuid);

/// The requests of this process that wait for their rows, and the listener
/// that wakes them. Cheap to clone.
#[derive(Clone)]
pub struct Waiters {
    inner: Arc<Inner>,
}

struct Inner {
    /// Who waits for which row. Several requests may wait for one row.
    waiting: Mutex<HashMap<Key, Vec<oneshot::Sender<JobState>>>>,
    /// Counts the listener's (re)connects: each may have missed notifications.
    listening: watch::Sender<u64>,
    db: Db,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Waiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiters")
            .field("waiting", &self.len())
            .finish_non_exhaustive()
    }
}

impl Waiters {
    /// Starts the process's listener on [`DONE_CHANNEL`] (it connects in the
    /// background and reconnects on its own) on `tasks`, until `shutdown`.
    pub fn start(
        db: Db,
        database: &DatabaseArgs,
        tasks: &Tasks,
        shutdown: CancellationToken,
    ) -> Result<Self, SetupError> {
        let config = kurir_store::pg_config(database)?;
        let waiters = Self {
            inner: Arc::new(Inner {
                waiting: Mutex::new(HashMap::new()),
                listening: watch::Sender::new(0),
                db,
                shutdown: shutdown.clone(),
            }),
        };
        let heard = waiters.clone();
        tasks.spawn(listen::run(
            config,
            &[DONE_CHANNEL],
            move |event| heard.heard(event),
            shutdown,
        ));
        Ok(waiters)
    }

    /// Requests waiting now.
    pub fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// What a request that asked for `wait` answers with, once its row
    /// `(kind, id)` is stored: call it before the row is committed.
    pub fn hold(&self, wait: Option<Wait>, kind: JobKind, id: Uuid) -> Hold {
        Hold {
            kind,
            waiting: wait.map(|wait| (self.register(kind, id), wait)),
        }
    }

    /// Waits for row `(kind, id)` from now on: call it before the row is
    /// committed. Dropping the waiter stops waiting.
    pub fn register(&self, kind: JobKind, id: Uuid) -> Waiter {
        let (tell, done) = oneshot::channel();
        let listening = self.inner.listening.subscribe();
        self.lock().entry((kind, id)).or_default().push(tell);
        Waiter {
            waiters: self.clone(),
            key: (kind, id),
            done,
            listening,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Vec<oneshot::Sender<JobState>>>> {
        self.inner
            .waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The listener's news, on the listener's task.
    fn heard(&self, heard: Heard<'_>) {
        match heard {
            Heard::Listening => self.inner.listening.send_modify(|n| *n += 1),
            Heard::Notification { channel, payload } if channel == DONE_CHANNEL => {
                // The rows may be waited for in another API process.
                if self.is_empty() {
                    return;
                }
                let rows = match pipeline::done_rows(payload) {
                    Ok(rows) => rows,
                    Err(err) => {
                        warn!(error = %err, "ignoring a notification of finished rows");
                        return;
                    }
                };
                let mut waiting = self.lock();
                for row in rows {
                    for tell in waiting.remove(&(row.kind, row.id)).unwrap_or_default() {
                        let _ = tell.send(row.state);
                    }
                }
            }
            Heard::Notification { .. } => {}
        }
    }
}

/// What a request's answer waits for: nothing (it did not ask), or its row.
#[derive(Debug)]
pub struct Hold {
    kind: JobKind,
    waiting: Option<(Waiter, Wait)>,
}

impl Hold {
    /// The request's answer, once its row is stored: at once without a
    /// wait, else when the row is final or the wait is over.
    pub async fn answer(self) -> Answer {
        match self.waiting {
            None => Answer {
                state: JobState::accepted(self.kind),
                applied: None,
            },
            Some((waiter, wait)) => Answer {
                state: waiter.wait(wait.duration()).await,
                applied: Some(wait),
            },
        }
    }
}

/// The state a seed POST answers with, and how.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    pub state: JobState,
    applied: Option<Wait>,
}

impl Answer {
    /// 200 once the request is over, 202 while it is still under way.
    pub fn status(&self) -> StatusCode {
        if self.state.is_final() {
            StatusCode::OK
        } else {
            StatusCode::ACCEPTED
        }
    }

    /// `headers` and `Preference-Applied` if the request waited.
    pub fn headers(&self, mut headers: HeaderMap) -> HeaderMap {
        if let Some(wait) = self.applied
            && let Ok(value) = HeaderValue::from_str(&format!("wait={}", wait.seconds()))
        {
            headers.insert(PREFERENCE_APPLIED.clone(), value);
        }
        headers
    }
}

/// One request waiting for its row.
pub struct Waiter {
    waiters: Waiters,
    key: Key,
    done: oneshot::Receiver<JobState>,
    listening: watch::Receiver<u64>,
}

impl std::fmt::Debug for Waiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiter").field("key", &self.key).finish()
    }
}

impl Waiter {
    /// Waits until the row is final, `limit` passes or the process shuts
    /// down; the row's state then (its last known one, `queued`, if
    /// Postgres cannot tell).
    pub async fn wait(mut self, limit: Duration) -> JobState {
        let deadline = tokio::time::Instant::now() + limit;
        let shutdown = self.waiters.inner.shutdown.clone();
        loop {
            tokio::select! {
                told = &mut self.done => match told {
                    Ok(state) => return state,
                    Err(_) => break,
                },
                reconnected = self.listening.changed() => {
                    if reconnected.is_err() {
                        break;
                    }
                    // The listener was away: one read tells what it missed.
                    let state = self.read().await;
                    debug!(kind = %self.key.0, id = %self.key.1, ?state, "the listener is back; read the waited-for row");
                    if let Some(state) = state
                        && state.is_final()
                    {
                        return state;
                    }
                }
                () = tokio::time::sleep_until(deadline) => break,
                () = shutdown.cancelled() => break,
            }
        }
        if let Ok(state) = self.done.try_recv() {
            return state;
        }
        let kind = self.key.0;
        self.read().await.unwrap_or(JobState::accepted(kind))
    }

    /// The row's state, from Postgres (bounded by its deadline).
    async fn read(&self) -> Option<JobState> {
        let (kind, id) = self.key;
        let read = self
            .waiters
            .inner
            .db
            .run(async |client| pipeline::state_of(client, kind, id).await)
            .await;
        read.unwrap_or_else(|err| {
            warn!(error = %err, %kind, id = %id, "cannot read a waited-for row; answering its last known state");
            None
        })
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        // Our sender reads as closed from now on: take it (and any other
        // waiter's that is gone) out.
        self.done.close();
        let mut waiting = self.waiters.lock();
        if let Some(tells) = waiting.get_mut(&self.key) {
            tells.retain(|tell| !tell.is_closed());
            if tells.is_empty() {
                waiting.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_of(values: &[&str]) -> Option<u64> {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("prefer", HeaderValue::from_str(value).unwrap());
        }
        Wait::from_headers(&headers).map(Wait::seconds)
    }

    #[test]
    fn a_plain_wait_is_read() {
        assert_eq!(wait_of(&["wait=10"]), Some(10));
        assert_eq!(wait_of(&["wait=1"]), Some(1));
        assert_eq!(wait_of(&[]), None);
    }

    #[test]
    fn wait_is_found_among_several_preferences_and_headers() {
        assert_eq!(wait_of(&["respond-async, wait=10"]), Some(10));
        assert_eq!(wait_of(&["return=minimal; foo=bar, wait=7"]), Some(7));
        assert_eq!(wait_of(&["respond-async", "wait=12"]), Some(12));
        assert_eq!(
            wait_of(&["handling=lenient", "return=minimal, Wait=4"]),
            Some(4)
        );
        assert_eq!(wait_of(&["wait=9; foo=\"bar\""]), Some(9));
    }

    #[test]
    fn names_are_case_insensitive_and_whitespace_is_allowed() {
        assert_eq!(wait_of(&["WAIT=5"]), Some(5));
        assert_eq!(wait_of(&["  wait = 5  "]), Some(5));
        assert_eq!(wait_of(&["foo ,\twait=6\t, bar"]), Some(6));
    }

    #[test]
    fn quoted_values_are_unquoted_and_quoted_separators_do_not_split() {
        assert_eq!(wait_of(&["wait=\"8\""]), Some(8));
        assert_eq!(wait_of(&["foo=\"a, wait=3; b\", wait=4"]), Some(4));
        assert_eq!(
            wait_of(&["foo=\"an \\\" escaped quote, wait=3\", wait=2"]),
            Some(2)
        );
        assert_eq!(wait_of(&["wait=\"8"]), None);
        assert_eq!(wait_of(&["wait=\"8\"x"]), None);
    }

    #[test]
    fn waits_over_thirty_seconds_wait_thirty() {
        assert_eq!(wait_of(&["wait=30"]), Some(30));
        assert_eq!(wait_of(&["wait=31"]), Some(30));
        assert_eq!(wait_of(&["wait=3600"]), Some(30));
        assert_eq!(wait_of(&["wait=99999999999999999999999999"]), Some(30));
    }

    #[test]
    fn wait_zero_asks_for_no_wait() {
        assert_eq!(wait_of(&["wait=0"]), None);
        assert_eq!(wait_of(&["wait=000"]), None);
    }

    #[test]
    fn garbage_is_ignored() {
        for garbage in [
            "wait=abc",
            "wait=-1",
            "wait=1.5",
            "wait=+5",
            "wait=",
            "wait",
            "=5",
            ",,;;",
            "",
            "waiting=5",
            "respond-async",
            "wait=1 0",
        ] {
            assert_eq!(wait_of(&[garbage]), None, "{garbage:?}");
        }
    }

    #[test]
    fn only_the_first_wait_counts() {
        assert_eq!(wait_of(&["wait=5, wait=20"]), Some(5));
        assert_eq!(wait_of(&["wait=5", "wait=20"]), Some(5));
        assert_eq!(wait_of(&["wait=soon, wait=20"]), None);
    }

    #[test]
    fn a_header_that_is_not_text_is_skipped() {
        let mut headers = HeaderMap::new();
        headers.append("prefer", HeaderValue::from_bytes(b"wait=\xff").unwrap());
        headers.append("prefer", HeaderValue::from_static("wait=3"));
        assert_eq!(Wait::from_headers(&headers), Some(Wait(3)));
    }

    #[test]
    fn the_answer_says_which_wait_was_applied() {
        let answer = Answer {
            state: JobState::accepted(JobKind::Message),
            applied: Some(Wait(30)),
        };
        assert_eq!(answer.status(), StatusCode::ACCEPTED);
        assert_eq!(
            answer.headers(HeaderMap::new())["preference-applied"],
            "wait=30"
        );
        let unasked = Answer {
            applied: None,
            ..answer
        };
        assert!(unasked.headers(HeaderMap::new()).is_empty());
    }
}
