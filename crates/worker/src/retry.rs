//! The retry schedule: what a failed attempt leads to.
//!
//! A delay is `initial × factor^(attempt-1)`, capped at `max_interval`
//! (1 s, 2, 10 min by default), computed here; `backoff`'s
//! `ExponentialBackoff` only spreads it by the jitter (±25 % by default, so a
//! capped delay may reach 12.5 min). Attempts stop once a row is `max_age`
//! old (24 h). The crate is unmaintained (RUSTSEC-2025-0012); it is used only
//! in [`RetryPolicy::delay`], so swapping it for `backon` touches nothing else.

use std::time::Duration;

use backoff::{SystemClock, backoff::Backoff, exponential::ExponentialBackoff};
use chrono::{DateTime, Utc};
use kurir_core::{
    LastError,
    attempt::{Outcome, Resolution},
};

use crate::config::RetryArgs;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub factor: f64,
    pub jitter: f64,
    pub max_interval: Duration,
    pub max_age: Duration,
}

impl From<&RetryArgs> for RetryPolicy {
    fn from(args: &RetryArgs) -> Self {
        Self {
            initial: args.retry_initial,
            factor: args.retry_factor,
            jitter: args.retry_jitter,
            max_interval: args.retry_max_interval,
            max_age: args.retry_max_age,
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempt` (1 for the first try):
    /// `initial × factor^(attempt-1)`, capped at `max_interval`, ± jitter.
    pub fn delay(&self, attempt: i32) -> Duration {
        let exponent = attempt.saturating_sub(1).clamp(0, 64);
        let base = self.initial.as_secs_f64() * self.factor.powi(exponent);
        let current = Duration::from_secs_f64(base.min(self.max_interval.as_secs_f64()));
        let mut schedule = ExponentialBackoff::<SystemClock> {
            current_interval: current,
            initial_interval: self.initial,
            randomization_factor: self.jitter,
            multiplier: self.factor,
            max_interval: self.max_interval,
            max_elapsed_time: None,
            ..ExponentialBackoff::default()
        };
        // With no elapsed-time limit the schedule never ends.
        schedule.next_backoff().unwrap_or(current)
    }

    /// Turns one attempt's outcome into what happens to the row. `created_at`
    /// and `now` decide whether the deadline (`max_age`) allows another try.
    pub fn resolve(
        &self,
        outcome: &Outcome,
        attempt: i32,
        created_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Resolution {
        match outcome {
            Outcome::Delivered { .. } => Resolution::Done,
            Outcome::Permanent { .. } => Resolution::Failed { gave_up: None },
            Outcome::Retryable { retry_after, .. } => {
                let mut after = self.delay(attempt);
                if let Some(retry_after) = retry_after {
                    // Never sooner than the provider asked.
                    after = after.max(*retry_after);
                }
                let past_deadline = match (
                    chrono::TimeDelta::from_std(self.max_age),
                    chrono::TimeDelta::from_std(after),
                ) {
                    (Ok(max_age), Ok(after)) => {
                        let deadline = created_at.checked_add_signed(max_age);
                        let next = now.checked_add_signed(after);
                        !matches!((next, deadline), (Some(next), Some(deadline)) if next <= deadline)
                    }
                    _ => true,
                };
                if past_deadline {
                    Resolution::Failed {
                        gave_up: Some(format!(
                            "gave up after {attempt} attempts: the next would be past the {} deadline",
                            humantime::format_duration(self.max_age)
                        )),
                    }
                } else {
                    Resolution::Retry { after }
                }
            }
        }
    }

    /// A row claimed after its deadline (it waited out an outage) fails
    /// without another provider call.
    pub fn expired(&self, created_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        chrono::TimeDelta::from_std(self.max_age)
            .ok()
            .and_then(|max_age| created_at.checked_add_signed(max_age))
            .is_some_and(|deadline| now > deadline)
    }

    /// The `last_error` of a row that [`expired`](Self::expired).
    pub fn expiry_error(&self) -> LastError {
        LastError {
            code: "expired".into(),
            detail: format!(
                "not delivered within KURIR_RETRY_MAX_AGE ({}); given up without another attempt",
                humantime::format_duration(self.max_age)
            ),
            retryable: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use kurir_core::{
        AccountId, JobKind,
        attempt::{Attempt, ProviderError},
    };

    use super::*;

    /// The resolution, and the row's last error as the store records it.
    fn decide(
        outcome: &Outcome,
        attempt: i32,
        created_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> (Resolution, Option<LastError>) {
        let resolution = policy().resolve(outcome, attempt, created_at, now);
        let record = Attempt {
            kind: JobKind::Message,
            subject_id: uuid::Uuid::now_v7(),
            account: AccountId(1),
            attempt,
            provider: "test",
            started_at: now,
            latency: Duration::ZERO,
            outcome: outcome.clone(),
        };
        let error = record.last_error(&resolution);
        (resolution, error)
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_secs(1),
            factor: 2.0,
            jitter: 0.25,
            max_interval: Duration::from_secs(600),
            max_age: Duration::from_secs(24 * 3600),
        }
    }

    fn retryable(retry_after: Option<Duration>) -> Outcome {
        Outcome::Retryable {
            error: ProviderError::new("131000", "Something went wrong", Some(500)),
            retry_after,
        }
    }

    #[test]
    fn delays_grow_exponentially_within_the_jitter() {
        let policy = policy();
        for (attempt, base) in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0)] {
            for _ in 0..50 {
                let delay = policy.delay(attempt).as_secs_f64();
                assert!(
                    (base * 0.75 - 1e-6..=base * 1.25 + 1e-6).contains(&delay),
                    "attempt {attempt}: {delay}"
                );
            }
        }
    }

    #[test]
    fn delays_are_capped() {
        let policy = policy();
        for attempt in [11, 30, 1000, i32::MAX] {
            let delay = policy.delay(attempt).as_secs_f64();
            assert!(
                (600.0 * 0.75 - 1e-6..=600.0 * 1.25 + 1e-6).contains(&delay),
                "{delay}"
            );
        }
    }

    #[test]
    fn retry_after_is_a_floor() {
        let now = Utc::now();
        match decide(&retryable(Some(Duration::from_secs(30))), 1, now, now) {
            (Resolution::Retry { after }, Some(error)) => {
                assert!(after >= Duration::from_secs(30));
                assert!(error.retryable);
                assert_eq!(error.code, "131000");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn retries_stop_at_the_deadline() {
        let now = Utc::now();
        let created = now - chrono::Duration::hours(24) + chrono::Duration::seconds(10);
        match decide(&retryable(Some(Duration::from_secs(60))), 9, created, now) {
            (Resolution::Failed { .. }, Some(error)) => {
                assert!(error.retryable);
                assert!(
                    error.detail.contains("gave up after 9 attempts"),
                    "{}",
                    error.detail
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(policy().expired(now - chrono::Duration::hours(25), now));
        assert!(!policy().expired(now - chrono::Duration::hours(23), now));
        let expired = policy().expiry_error();
        assert_eq!(
            (expired.code.as_str(), expired.retryable),
            ("expired", false)
        );
        assert!(
            expired.detail.contains("KURIR_RETRY_MAX_AGE (1day)"),
            "{}",
            expired.detail
        );
    }

    #[test]
    fn a_retry_after_past_the_deadline_fails_instead_of_retrying_sooner() {
        let now = Utc::now();
        let week = Duration::from_secs(7 * 24 * 3600);
        assert!(matches!(
            policy().resolve(&retryable(Some(week)), 1, now, now),
            Resolution::Failed { .. }
        ));
        let huge = Duration::from_secs(365 * 24 * 3600);
        assert!(matches!(
            policy().resolve(&retryable(Some(huge)), 1, now, now),
            Resolution::Failed { .. }
        ));
    }

    #[test]
    fn permanent_errors_fail_at_once() {
        let now = Utc::now();
        let outcome = Outcome::Permanent {
            error: ProviderError::new("131026", "Message undeliverable", Some(400)),
        };
        match decide(&outcome, 1, now, now) {
            (Resolution::Failed { gave_up: None }, Some(error)) => {
                assert!(!error.retryable);
                assert_eq!(error.code, "131026");
            }
            other => panic!("{other:?}"),
        }
    }
}
