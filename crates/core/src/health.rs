//! Readiness as the API and the worker report it on `/readyz`: what one probe
//! found ([`Seen`]), and the log of its changes ([`ReadinessLog`]). Each
//! process probes its own dependencies (the API does not need RabbitMQ to be
//! ready, a worker does) and serves its own endpoints; this is the part they
//! share, with no I/O of its own.
//!
//! A health check probes `/readyz` every few seconds, so an answer is not
//! logged: a change is (WARN when readiness is lost, INFO when it is back),
//! with what changed and why ([`transition`]).

use std::sync::{Arc, Mutex};

use tracing::{info, warn};

/// The content type of `/metrics` (Prometheus' text exposition format).
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What one probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub ready: bool,
    pub postgres: bool,
    pub rabbitmq: bool,
}

impl Seen {
    /// What the process assumes before its first probe: a first probe that
    /// finds a dependency down is a change worth a line.
    pub const START: Seen = Seen {
        ready: true,
        postgres: true,
        rabbitmq: true,
    };

    /// `/readyz`'s words for Postgres and RabbitMQ: `ok` or `unavailable`.
    pub fn words(&self) -> (&'static str, &'static str) {
        (word(self.postgres), word(self.rabbitmq))
    }
}

/// `ok` or `unavailable`.
pub fn word(up: bool) -> &'static str {
    if up { "ok" } else { "unavailable" }
}

/// A change of readiness, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Ready → not ready.
    Lost { changed: String },
    /// Not ready → ready.
    Regained { changed: String },
    /// A dependency changed but readiness did not (the API stays ready
    /// without RabbitMQ; a dependency came back while another is still down).
    Changed { changed: String },
}

/// What changed from `before` to `now` (`"postgres ok → unavailable"`), or
/// `None` when nothing did: the usual case, which logs nothing.
pub fn transition(before: Seen, now: Seen) -> Option<Transition> {
    let changed: Vec<String> = [
        ("postgres", before.postgres, now.postgres),
        ("rabbitmq", before.rabbitmq, now.rabbitmq),
    ]
    .into_iter()
    .filter(|(_, was, is)| was != is)
    .map(|(name, was, is)| format!("{name} {} → {}", word(was), word(is)))
    .collect();
    if changed.is_empty() && before.ready == now.ready {
        return None;
    }
    let changed = changed.join(", ");
    Some(match (before.ready, now.ready) {
        (true, false) => Transition::Lost { changed },
        (false, true) => Transition::Regained { changed },
        _ => Transition::Changed { changed },
    })
}

/// What the last probe of one `/readyz` found; cheap to clone (the clones
/// share it).
#[derive(Debug, Clone)]
pub struct ReadinessLog {
    last: Arc<Mutex<Seen>>,
}

impl Default for ReadinessLog {
    fn default() -> Self {
        Self {
            last: Arc::new(Mutex::new(Seen::START)),
        }
    }
}

impl ReadinessLog {
    /// Remembers `now` and logs it if it differs from the last probe;
    /// `postgres_error` is why Postgres did not answer, if it did not.
    pub fn note(&self, now: Seen, postgres_error: Option<&str>) {
        let before = {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::replace(&mut *last, now)
        };
        let Some(transition) = transition(before, now) else {
            return;
        };
        let (postgres, rabbitmq) = now.words();
        let error = postgres_error;
        match transition {
            Transition::Lost { changed } => {
                warn!(postgres, rabbitmq, %changed, error, "not ready")
            }
            Transition::Regained { changed } => info!(postgres, rabbitmq, %changed, "ready again"),
            Transition::Changed { changed } => {
                info!(ready = now.ready, postgres, rabbitmq, %changed, error, "readiness changed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UP: Seen = Seen::START;
    const NO_POSTGRES: Seen = Seen {
        ready: false,
        postgres: false,
        rabbitmq: true,
    };
    const NOTHING: Seen = Seen {
        ready: false,
        postgres: false,
        rabbitmq: false,
    };

    #[test]
    fn probes_that_find_what_the_last_one_found_log_nothing() {
        for seen in [UP, NO_POSTGRES, NOTHING] {
            assert_eq!(transition(seen, seen), None);
        }
    }

    #[test]
    fn losing_and_regaining_readiness_say_what_changed() {
        assert_eq!(
            transition(UP, NO_POSTGRES),
            Some(Transition::Lost {
                changed: "postgres ok → unavailable".into()
            })
        );
        assert_eq!(
            transition(NO_POSTGRES, UP),
            Some(Transition::Regained {
                changed: "postgres unavailable → ok".into()
            })
        );
        assert_eq!(
            transition(UP, NOTHING),
            Some(Transition::Lost {
                changed: "postgres ok → unavailable, rabbitmq ok → unavailable".into()
            })
        );
    }

    #[test]
    fn a_dependency_changing_while_readiness_stays_is_a_change_too() {
        // The API stays ready without RabbitMQ.
        let api_without_broker = Seen {
            ready: true,
            postgres: true,
            rabbitmq: false,
        };
        assert_eq!(
            transition(UP, api_without_broker),
            Some(Transition::Changed {
                changed: "rabbitmq ok → unavailable".into()
            })
        );
        assert_eq!(
            transition(NOTHING, NO_POSTGRES),
            Some(Transition::Changed {
                changed: "rabbitmq unavailable → ok".into()
            })
        );
    }
}
