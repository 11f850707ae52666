//! The per-account intake limit (docs/api.md, "Intake limit"): a token bucket on
//! accepted messages, one per account, shared by every API process.
//!
//! The bucket lives in Postgres ([`kurir_store::limits::lease`]). A process
//! does not ask it for every message: it leases a chunk of tokens (about
//! [`CHUNK_SPAN`] of the account's rate, at least what the request needs)
//! and serves requests from that lease until it runs out; unused tokens go
//! back with the next lease, and a lease is good for [`LEASE_LIFE`] only, so
//! an idle process does not sit on tokens. Across any number of processes
//! an account gets at most its burst plus rate × time, plus what the
//! processes hold leased (processes × chunk), whatever the load balancer
//! does; it costs about one small statement per chunk.
//!
//! Within a process one lease is fetched at a time per account: concurrent
//! requests of that account wait for it, and share its outcome (including
//! a failure, so that an unreachable Postgres costs them one deadline, not
//! one each). When the shared bucket cannot cover a request, what it held
//! is remembered, so further requests are refused here until it may have
//! refilled, without asking Postgres again.
//!
//! Handlers call [`Intake::take`] before accepting and [`Permit::keep`]
//! after, with how many messages were stored; the rest is given back.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use kurir_core::{AccountId, IntakeLimit};
use kurir_store::{Db, limits};

use crate::error::{ApiError, ApiResult};

/// A lease is about this long at the account's rate: each process asks
/// Postgres at most about ten times a second per busy account.
pub const CHUNK_SPAN: Duration = Duration::from_millis(100);
/// Leased tokens not used within this go back with the next lease; the
/// limit an operator sets takes effect within it too.
pub const LEASE_LIFE: Duration = Duration::from_secs(1);

/// The name of the limit in the `RateLimit` headers.
const POLICY: &str = "intake";

static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// Cheap to clone; every clone shares the leases of this process.
#[derive(Clone)]
pub struct Intake {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake")
            .field("default", &self.inner.default)
            .finish_non_exhaustive()
    }
}

struct Inner {
    db: Db,
    /// The limit of accounts without one of their own.
    default: IntakeLimit,
    accounts: Mutex<HashMap<AccountId, Arc<Account>>>,
}

/// One account's lease in this process.
#[derive(Default)]
struct Account {
    local: Mutex<Local>,
    /// Held while a lease is fetched: one fetch at a time.
    fetching: tokio::sync::Mutex<()>,
}

impl Account {
    fn local(&self) -> MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Intake {
    pub fn new(db: Db, default: IntakeLimit) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                default,
                accounts: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn account(&self, account: AccountId) -> Arc<Account> {
        let mut accounts = self
            .inner
            .accounts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        accounts.entry(account).or_default().clone()
    }

    /// Takes `count` tokens of `account`'s bucket for the messages a request
    /// is about to accept (all of them or none). 429 when the bucket cannot
    /// cover them now; 422 naming `messages` when `count` is over the
    /// account's burst (a batch that could never pass); 503 when Postgres
    /// cannot be asked (within its deadline).
    pub async fn take(&self, account: AccountId, count: usize) -> ApiResult<Permit> {
        let count = count as u64;
        if count == 0 {
            return Ok(Permit::nothing());
        }
        let entry = self.account(account);
        let seen = {
            let mut local = entry.local();
            match local.decide(count, Instant::now(), true) {
                Decision::Fetch => local.fetches,
                done => return done.answer(count, &entry),
            }
        };
        let _fetching = entry.fetching.lock().await;
        let (give_back, want) = {
            let mut local = entry.local();
            if local.fetches != seen {
                // Someone fetched while this request waited: use what they found.
                if let Some(failure) = &local.failure {
                    return Err(failure.clone());
                }
                match local.decide(count, Instant::now(), true) {
                    Decision::Fetch => {}
                    done => return done.answer(count, &entry),
                }
            }
            let limit = local.known.map_or(self.inner.default, |k| k.limit);
            (std::mem::take(&mut local.tokens), chunk(count, limit))
        };
        let default = self.inner.default;
        let leased = self
            .inner
            .db
            .run(async |client| {
                limits::lease(client, account, default, count, want, give_back).await
            })
            .await;
        let mut local = entry.local();
        local.fetches += 1;
        match leased {
            Ok(lease) => {
                local.failure = None;
                let now = Instant::now();
                local.leased(lease, now);
                local.decide(count, now, false).answer(count, &entry)
            }
            Err(err) => {
                // Not given back after all (or not known to be).
                local.tokens += give_back;
                let err = ApiError::from(err);
                local.failure = Some(err.clone());
                Err(err)
            }
        }
    }
}

/// Tokens a lease asks for: about [`CHUNK_SPAN`] at the account's rate, at
/// least `need`, at most the burst (but `need` if that is more: the lease
/// then says the request can never pass).
fn chunk(need: u64, limit: IntakeLimit) -> u64 {
    let span = (f64::from(limit.rate) * CHUNK_SPAN.as_secs_f64()).ceil() as u64;
    span.min(u64::from(limit.burst)).max(need)
}

/// What this process knows of one account's bucket.
#[derive(Debug, Default)]
struct Local {
    /// What the last lease said (`None` before the first).
    known: Option<Known>,
    /// Tokens leased to this process and not used yet.
    tokens: u64,
    /// Until when `tokens` and `known` may be used without a new lease.
    until: Option<Instant>,
    /// Leases fetched (or tried) so far: a request that waited for someone
    /// else's fetch tells by this that it finished.
    fetches: u64,
    /// Why the last fetch failed, if it did.
    failure: Option<ApiError>,
}

#[derive(Debug, Clone, Copy)]
struct Known {
    limit: IntakeLimit,
    /// What the shared bucket held after the last lease, and when.
    left: f64,
    at: Instant,
}

impl Known {
    /// What the shared bucket holds at `now` at most: it refilled since
    /// (other processes may have taken some).
    fn shared(&self, now: Instant) -> f64 {
        let refill =
            f64::from(self.limit.rate) * now.saturating_duration_since(self.at).as_secs_f64();
        (self.left + refill).min(f64::from(self.limit.burst))
    }
}

/// What to answer a request for some tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Decision {
    /// Taken from the lease (or no limit): what is left, for `RateLimit`.
    Take { limit: IntakeLimit, remaining: u64 },
    /// Not now: the bucket holds `available`, less than the request needs.
    Refuse { limit: IntakeLimit, available: f64 },
    /// The request needs more than the account's burst: never.
    OverBurst { limit: IntakeLimit },
    /// Ask Postgres.
    Fetch,
}

impl Local {
    /// Serves a request for `need` tokens from what this process knows, if
    /// it can; `Fetch` (only if `may_fetch`) when it has to ask Postgres.
    fn decide(&mut self, need: u64, now: Instant, may_fetch: bool) -> Decision {
        let Some(known) = self.known else {
            return Decision::Fetch;
        };
        let fresh = self.until.is_some_and(|until| now < until);
        if may_fetch && !fresh {
            return Decision::Fetch;
        }
        let limit = known.limit;
        if limit.is_unlimited() {
            return Decision::Take {
                limit,
                remaining: 0,
            };
        }
        if need > u64::from(limit.burst) {
            return Decision::OverBurst { limit };
        }
        let shared = known.shared(now);
        if self.tokens >= need {
            self.tokens -= need;
            let remaining = (shared + self.tokens as f64).min(f64::from(limit.burst));
            return Decision::Take {
                limit,
                remaining: remaining.floor() as u64,
            };
        }
        // A new lease would have what is here and what the bucket holds.
        let available = (shared + self.tokens as f64).min(f64::from(limit.burst));
        if may_fetch && available >= need as f64 {
            return Decision::Fetch;
        }
        Decision::Refuse { limit, available }
    }

    /// Takes in a lease fetched at `now` (this process's tokens went into it).
    fn leased(&mut self, lease: limits::Lease, now: Instant) {
        self.known = Some(Known {
            limit: lease.limit,
            left: lease.left,
            at: now,
        });
        self.tokens += lease.granted;
        self.until = Some(now + LEASE_LIFE);
    }
}

impl Decision {
    fn answer(self, need: u64, account: &Arc<Account>) -> ApiResult<Permit> {
        match self {
            Decision::Take { limit, remaining } => Ok(Permit {
                account: (!limit.is_unlimited()).then(|| account.clone()),
                taken: need,
                limit,
                remaining,
            }),
            Decision::Refuse { limit, available } => {
                let wait = retry_after(need, available, limit);
                let mut headers = policy(limit);
                headers.insert(
                    RATELIMIT.clone(),
                    service_limit(available.floor() as u64, wait),
                );
                Err(ApiError::rate_limited(
                    format!(
                        "this account may have {} messages accepted a second, {} at once (its intake limit); \
                         this request needs {need} and {} are left: retry after {wait} s",
                        limit.rate,
                        limit.burst,
                        available.floor() as u64,
                    ),
                    wait,
                    headers,
                ))
            }
            Decision::OverBurst { limit } => Err(ApiError::field(
                "messages",
                format!(
                    "has {need} valid messages, more than this account may have accepted at once \
                     ({}, its intake burst): send at most {} per request",
                    limit.burst, limit.burst
                ),
            )),
            Decision::Fetch => Err(ApiError::internal()),
        }
    }
}

/// Whole seconds until a bucket holding `available` holds `need` (at least 1).
fn retry_after(need: u64, available: f64, limit: IntakeLimit) -> u64 {
    if limit.is_unlimited() {
        return 1;
    }
    let missing = (need as f64 - available).max(0.0);
    ((missing / f64::from(limit.rate)).ceil() as u64).max(1)
}

/// `RateLimit-Policy: "intake";q=<burst>;w=<seconds to fill>`
/// (draft-ietf-httpapi-ratelimit-headers-11).
fn policy(limit: IntakeLimit) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let value = format!("\"{POLICY}\";q={};w={}", limit.burst, limit.window_secs());
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(RATELIMIT_POLICY.clone(), value);
    }
    headers
}

/// `RateLimit: "intake";r=<remaining>;t=<seconds>`.
fn service_limit(remaining: u64, seconds: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{POLICY}\";r={remaining};t={seconds}"))
        .unwrap_or_else(|_| HeaderValue::from_static("\"intake\""))
}

/// Tokens a request took; [`Permit::keep`] says how many it used.
#[derive(Debug)]
#[must_use = "say with keep() how many of the messages were stored"]
pub struct Permit {
    /// Where unused tokens go back; `None` when there is no limit.
    account: Option<Arc<Account>>,
    taken: u64,
    limit: IntakeLimit,
    /// About what the account has left after this request.
    remaining: u64,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account").finish_non_exhaustive()
    }
}

impl Permit {
    fn nothing() -> Self {
        Self {
            account: None,
            taken: 0,
            limit: IntakeLimit { rate: 0, burst: 1 },
            remaining: 0,
        }
    }

    /// `stored` of the messages were accepted; the others' tokens go back.
    /// The `RateLimit` headers for the answer (none without a limit): what
    /// is left is this process's estimate, from its lease and what the
    /// shared bucket held at the last lease, so it is approximate.
    pub fn keep(self, stored: usize) -> HeaderMap {
        let Some(account) = self.account else {
            return HeaderMap::new();
        };
        let unused = self.taken.saturating_sub(stored as u64);
        if unused > 0 {
            account.local().tokens += unused;
        }
        let remaining = (self.remaining + unused).min(u64::from(self.limit.burst));
        let to_full = u64::from(self.limit.burst) - remaining;
        let seconds = to_full.div_ceil(u64::from(self.limit.rate.max(1)));
        let mut headers = policy(self.limit);
        headers.insert(RATELIMIT.clone(), service_limit(remaining, seconds));
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: IntakeLimit = IntakeLimit {
        rate: 10,
        burst: 20,
    };

    fn leased(granted: u64, left: f64, now: Instant) -> Local {
        let mut local = Local::default();
        local.leased(
            limits::Lease {
                limit: LIMIT,
                granted,
                left,
            },
            now,
        );
        local
    }

    #[test]
    fn the_first_request_asks_postgres() {
        let mut local = Local::default();
        assert_eq!(local.decide(1, Instant::now(), true), Decision::Fetch);
    }

    #[test]
    fn requests_are_served_from_the_lease_until_it_runs_out() {
        let now = Instant::now();
        let mut local = leased(3, 10.0, now);
        for left in [2, 1, 0] {
            assert!(matches!(
                local.decide(1, now, true),
                Decision::Take { remaining, .. } if remaining == 10 + left
            ));
        }
        // The bucket still holds 10: ask for more.
        assert_eq!(local.decide(1, now, true), Decision::Fetch);
    }

    #[test]
    fn a_lease_is_not_used_past_its_life() {
        let now = Instant::now();
        let mut local = leased(5, 0.0, now);
        assert!(matches!(local.decide(1, now, true), Decision::Take { .. }));
        assert_eq!(local.decide(1, now + LEASE_LIFE, true), Decision::Fetch);
    }

    #[test]
    fn an_empty_bucket_is_refused_here_until_it_may_have_refilled() {
        let now = Instant::now();
        // The bucket held 0.5 when the lease found it short.
        let mut local = leased(0, 0.5, now);
        let Decision::Refuse { available, .. } = local.decide(3, now, true) else {
            panic!("refused");
        };
        assert_eq!(retry_after(3, available, LIMIT), 1);
        // 10/s: after 100 ms it holds 1.5, after 300 ms 3.5.
        assert!(matches!(
            local.decide(3, now + Duration::from_millis(100), true),
            Decision::Refuse { .. }
        ));
        assert_eq!(
            local.decide(3, now + Duration::from_millis(300), true),
            Decision::Fetch
        );
    }

    #[test]
    fn right_after_a_lease_the_answer_is_final() {
        let now = Instant::now();
        let mut local = leased(0, 2.9, now);
        // 2.9 + a little refill would do for 3: no second fetch, a refusal.
        assert!(matches!(
            local.decide(3, now + Duration::from_millis(20), false),
            Decision::Refuse { .. }
        ));
    }

    #[test]
    fn more_than_the_burst_never_passes() {
        let now = Instant::now();
        let mut local = leased(20, 0.0, now);
        assert_eq!(
            local.decide(21, now, true),
            Decision::OverBurst { limit: LIMIT }
        );
        assert!(matches!(local.decide(20, now, true), Decision::Take { .. }));
    }

    #[test]
    fn no_limit_takes_everything_until_the_lease_ends() {
        let now = Instant::now();
        let mut local = Local::default();
        local.leased(
            limits::Lease {
                limit: IntakeLimit { rate: 0, burst: 5 },
                granted: 0,
                left: 5.0,
            },
            now,
        );
        assert!(matches!(
            local.decide(1000, now, true),
            Decision::Take { .. }
        ));
        assert_eq!(local.decide(1, now + LEASE_LIFE, true), Decision::Fetch);
    }

    #[test]
    fn retry_after_is_the_whole_seconds_until_the_bucket_covers_the_request() {
        assert_eq!(retry_after(1, 0.0, LIMIT), 1);
        assert_eq!(retry_after(20, 0.0, LIMIT), 2);
        assert_eq!(retry_after(15, 4.0, LIMIT), 2);
        assert_eq!(retry_after(5, 4.5, LIMIT), 1);
        let slow = IntakeLimit { rate: 1, burst: 5 };
        assert_eq!(retry_after(5, 0.2, slow), 5);
    }

    #[test]
    fn a_chunk_is_a_tenth_of_a_second_at_the_rate_within_need_and_burst() {
        let limit = |rate, burst| IntakeLimit { rate, burst };
        assert_eq!(chunk(1, limit(1000, 10_000)), 100);
        assert_eq!(chunk(1000, limit(1000, 10_000)), 1000);
        assert_eq!(chunk(1, limit(10, 20)), 1);
        assert_eq!(chunk(1, limit(100_000, 500)), 500);
        assert_eq!(chunk(600, limit(100_000, 500)), 600);
        assert_eq!(chunk(7, limit(0, 1)), 7);
    }

    #[test]
    fn the_headers_follow_the_draft() {
        let headers = policy(LIMIT);
        assert_eq!(headers[&RATELIMIT_POLICY], "\"intake\";q=20;w=2");
        assert_eq!(service_limit(3, 2), "\"intake\";r=3;t=2");
    }
}
