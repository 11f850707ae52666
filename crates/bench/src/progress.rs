//! Progress of one phase on stderr: an indicatif bar (position/total, rate,
//! elapsed) when stderr is a terminal; otherwise indicatif hides its bar and
//! a plain line is printed at most every [`PLAIN_EVERY`], so CI logs stay
//! short.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// How often a plain line is printed when the bar is hidden.
pub const PLAIN_EVERY: Duration = Duration::from_secs(5);
/// How often the bar's position is refreshed from the counter.
const BAR_EVERY: Duration = Duration::from_millis(100);
const TEMPLATE: &str =
    "  {prefix} [{bar:30.cyan/blue}] {pos:>7}/{len:7} {rate:>8}  {elapsed:>4} elapsed";

/// Follows a counter that the phase's tasks increment (or store to).
pub struct Progress {
    counter: Arc<AtomicU64>,
    bar: ProgressBar,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    /// A bar on stderr for `label` (padded to `width`, so that the bars
    /// of a run line up), counting from `since` (its elapsed time and rate
    /// start there).
    pub fn start(label: &str, width: usize, total: u64, since: Instant) -> Self {
        Self::with_target(
            label,
            width,
            total,
            since,
            ProgressDrawTarget::stderr(),
            |line| {
                eprintln!("{line}");
            },
        )
    }

    fn with_target(
        label: &str,
        width: usize,
        total: u64,
        since: Instant,
        target: ProgressDrawTarget,
        mut plain: impl FnMut(&str) + Send + 'static,
    ) -> Self {
        let counter = Arc::new(AtomicU64::new(0));
        let bar = ProgressBar::with_draw_target(Some(total), target)
            .with_style(style())
            .with_prefix(format!("{:<w$}", format!("{label}:"), w = width + 1))
            .with_elapsed(since.elapsed());
        let hidden = bar.is_hidden();
        let task = {
            let (counter, bar, label) = (counter.clone(), bar.clone(), label.to_owned());
            tokio::spawn(async move {
                let mut throttle = Throttle::new(PLAIN_EVERY, Instant::now());
                loop {
                    tokio::time::sleep(if hidden { PLAIN_EVERY } else { BAR_EVERY }).await;
                    let n = counter.load(Ordering::Relaxed);
                    bar.set_position(n);
                    if hidden && throttle.ready(Instant::now()) {
                        plain(&plain_line(&label, n, total, since.elapsed()));
                    }
                }
            })
        };
        Self { counter, bar, task }
    }

    /// The counter the phase increments.
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.counter.clone()
    }

    /// Stops following the counter; the bar is left on screen at the
    /// counter's last value (not filled up, as indicatif's `finish` would:
    /// a phase that failed half-way shows how far it got).
    pub fn finish(self) {
        self.bar.set_position(self.counter.load(Ordering::Relaxed));
        // Drop does the rest.
    }
}

impl Drop for Progress {
    /// Also when a phase is dropped half-way (Ctrl-C): the printer stops,
    /// and the bar stays where it was.
    fn drop(&mut self) {
        self.task.abort();
        if !self.bar.is_finished() {
            self.bar.abandon();
        }
    }
}

fn style() -> ProgressStyle {
    ProgressStyle::with_template(TEMPLATE)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key(
            "rate",
            |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = w.write_str(&rate(state.pos(), state.elapsed()));
            },
        )
        .progress_chars("=> ")
}

/// Average rate since the start, like the plain line: `1234/s`.
fn rate(n: u64, elapsed: Duration) -> String {
    let s = elapsed.as_secs_f64();
    if s > 0.0 {
        format!("{:.0}/s", n as f64 / s)
    } else {
        "-/s".to_owned()
    }
}

/// `  label: n/total (x/s, 12s)`, the line printed when no bar is shown.
pub fn plain_line(label: &str, n: u64, total: u64, elapsed: Duration) -> String {
    let mut out = format!("  {label}: {n}/{total} ({}", rate(n, elapsed));
    let _ = write!(out, ", {:.0}s)", elapsed.as_secs_f64());
    out
}

/// True at most once per `every`.
#[derive(Debug)]
struct Throttle {
    every: Duration,
    last: Instant,
}

impl Throttle {
    fn new(every: Duration, start: Instant) -> Self {
        Self { every, last: start }
    }

    fn ready(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.last) >= self.every {
            self.last = now;
            true
        } else {
            false
        }
    }
}

/// Which round of how many, for status lines and progress labels.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Numbered {
    pub(crate) n: usize,
    pub(crate) of: usize,
}

impl Numbered {
    /// `round 2 of 3: ` when there are several, else nothing.
    pub(crate) fn tag(self) -> String {
        if self.of > 1 {
            format!("round {} of {}: ", self.n, self.of)
        } else {
            String::new()
        }
    }

    /// A progress label: `round 2/3 sent` when there are several.
    pub(crate) fn label(self, phase: &str) -> String {
        if self.of > 1 {
            format!("round {}/{} {phase}", self.n, self.of)
        } else {
            phase.to_owned()
        }
    }

    /// The longest label of a round, so that its bars line up.
    pub(crate) fn label_width(self) -> usize {
        self.label("reference consumed").chars().count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn plain_line_has_count_rate_and_elapsed() {
        assert_eq!(
            plain_line("accepted", 3000, 20000, Duration::from_secs(2)),
            "  accepted: 3000/20000 (1500/s, 2s)"
        );
        assert_eq!(
            plain_line("sent", 0, 5, Duration::ZERO),
            "  sent: 0/5 (-/s, 0s)"
        );
    }

    #[test]
    fn throttle_allows_one_line_per_period() {
        let t0 = Instant::now();
        let mut t = Throttle::new(Duration::from_secs(5), t0);
        assert!(!t.ready(t0 + Duration::from_secs(1)));
        assert!(!t.ready(t0 + Duration::from_millis(4999)));
        assert!(t.ready(t0 + Duration::from_secs(5)));
        assert!(!t.ready(t0 + Duration::from_secs(9)));
        assert!(t.ready(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn the_style_template_parses() {
        assert!(ProgressStyle::with_template(TEMPLATE).is_ok());
    }

    #[tokio::test]
    async fn a_hidden_bar_still_follows_the_counter() {
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = lines.clone();
        let p = Progress::with_target(
            "sent",
            18,
            10,
            Instant::now(),
            ProgressDrawTarget::hidden(),
            move |l| sink.lock().expect("lock").push(l.to_owned()),
        );
        p.counter().fetch_add(7, Ordering::Relaxed);
        let bar = p.bar.clone();
        p.finish();
        assert_eq!(bar.position(), 7);
        assert!(bar.is_finished());
        // Finished well within 5 s: no plain line yet.
        assert!(lines.lock().expect("lock").is_empty());
    }
}
