//! The two habits every long-running kurir process shares: one way to own
//! tasks ([`Tasks`]) and one way to wait before trying a dependency again
//! ([`Reconnect`]). No I/O happens here; these only spawn and sleep.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use backoff::{SystemClock, backoff::Backoff, exponential::ExponentialBackoff};
use tokio::task::AbortHandle;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Every task a process spawns, in one place: [`Tasks::wait`] returns once
/// all of them have ended (after the shutdown token fired), and
/// [`Tasks::abort`] stops all of them at once (as a killed process would).
#[derive(Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    handles: Arc<Mutex<Handles>>,
}

#[derive(Default)]
struct Handles {
    live: Vec<AbortHandle>,
    /// Finished handles are pruned once `live` reaches this length.
    prune_at: usize,
}

impl std::fmt::Debug for Tasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tasks")
            .field("running", &self.tracker.len())
            .finish()
    }
}

impl Tasks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns `task` on the current runtime, owned by this set.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let handle = self.tracker.spawn(task);
        let mut handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        if handles.live.len() >= handles.prune_at {
            handles.live.retain(|h| !h.is_finished());
            handles.prune_at = (handles.live.len() * 2).max(64);
        }
        handles.live.push(handle.abort_handle());
        handle
    }

    /// How many tasks are still running.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// Waits until every task has ended. Tasks stop on their own once the
    /// process's shutdown token fires; this only waits for them.
    pub async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Stops every task at its next await point, settling nothing.
    pub fn abort(&self) {
        let handles = {
            let mut handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut handles.live)
        };
        for handle in handles {
            handle.abort();
        }
        self.tracker.close();
    }
}

/// Work asked for one item at a time and done for many at once: a group
/// commit. Each caller hands in its item and waits for its own answer; one
/// task gathers whatever arrived meanwhile (up to `batch`) and runs `work`
/// on the group, with at most `in_flight` groups running at once (while they
/// run, the next group forms). `work` must answer every item. The gatherer
/// ends once every clone of the handle is gone.
pub struct Grouped<T, A> {
    tx: tokio::sync::mpsc::Sender<(T, tokio::sync::oneshot::Sender<A>)>,
}

impl<T, A> Clone for Grouped<T, A> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<T, A> std::fmt::Debug for Grouped<T, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grouped").finish_non_exhaustive()
    }
}

/// One item of a group and where its answer goes.
pub type Asked<T, A> = (T, tokio::sync::oneshot::Sender<A>);

impl<T: Send + 'static, A: Send + 'static> Grouped<T, A> {
    pub fn start<F, Fut>(batch: usize, in_flight: usize, tasks: &Tasks, work: F) -> Self
    where
        F: Fn(Vec<Asked<T, A>>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (tx, mut rx) = tokio::sync::mpsc::channel(batch * in_flight);
        let slots = Arc::new(tokio::sync::Semaphore::new(in_flight));
        let spawner = tasks.clone();
        tasks.spawn(async move {
            loop {
                // Wait for room first: while every slot works, items gather.
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let mut group = Vec::with_capacity(batch);
                if rx.recv_many(&mut group, batch).await == 0 {
                    return;
                }
                let running = work(group);
                spawner.spawn(async move {
                    running.await;
                    drop(permit);
                });
            }
        });
        Self { tx }
    }

    /// Hands in `item` and waits for its answer; `gone()` if the gatherer
    /// has stopped (the process is shutting down).
    pub async fn ask(&self, item: T, gone: impl Fn() -> A) -> A {
        let (answer, answered) = tokio::sync::oneshot::channel();
        if self.tx.send((item, answer)).await.is_err() {
            return gone();
        }
        answered.await.unwrap_or_else(|_| gone())
    }
}

/// The reconnect schedule of every loop that waits for Postgres or RabbitMQ
/// to come back: `backoff`'s `ExponentialBackoff` (factor 2, ±20 % jitter,
/// no time limit), [`Reconnect::succeeded`] resets it. It also counts the
/// failures, so a loop can say it once and then now and then, not every time.
#[derive(Debug)]
pub struct Reconnect {
    schedule: ExponentialBackoff<SystemClock>,
    failures: u32,
}

impl Reconnect {
    /// Delays start at `first` and double up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        let mut schedule = ExponentialBackoff::<SystemClock> {
            current_interval: first,
            initial_interval: first,
            randomization_factor: 0.2,
            multiplier: 2.0,
            max_interval: max,
            max_elapsed_time: None,
            ..ExponentialBackoff::default()
        };
        schedule.reset();
        Self {
            schedule,
            failures: 0,
        }
    }

    /// Counts one failure; the delay to wait before the next try.
    pub fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        // With no time limit the schedule never ends.
        self.schedule
            .next_backoff()
            .unwrap_or(self.schedule.max_interval)
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Whether the latest failure is worth a log line: the first, then every tenth.
    pub fn worth_saying(&self) -> bool {
        self.failures == 1 || self.failures.is_multiple_of(10)
    }

    /// A success: the next failure starts from the first delay again.
    /// Returns how many failures came before it.
    pub fn succeeded(&mut self) -> u32 {
        self.schedule.reset();
        std::mem::take(&mut self.failures)
    }

    /// Counts a failure and sleeps the next delay; false if `shutdown` fired
    /// meanwhile (the caller should stop).
    pub async fn pause(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.failed();
        tokio::select! {
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_reset_after_a_success() {
        let mut reconnect = Reconnect::new(Duration::from_millis(100), Duration::from_secs(2));
        let first = reconnect.failed();
        assert!(first >= Duration::from_millis(80) && first <= Duration::from_millis(120));
        let mut last = first;
        for _ in 0..20 {
            last = reconnect.failed();
        }
        assert!(last <= Duration::from_millis(2400), "{last:?}");
        assert!(last >= Duration::from_millis(1600), "{last:?}");
        assert_eq!(reconnect.succeeded(), 21);
        let again = reconnect.failed();
        assert!(again <= Duration::from_millis(120), "{again:?}");
    }

    #[test]
    fn failures_are_worth_saying_first_and_then_every_tenth() {
        let mut reconnect = Reconnect::new(Duration::from_millis(1), Duration::from_millis(2));
        let said: Vec<u32> = (1..=30)
            .filter(|_| {
                reconnect.failed();
                reconnect.worth_saying()
            })
            .collect();
        assert_eq!(said, vec![1, 10, 20, 30]);
    }

    #[tokio::test]
    async fn a_group_answers_each_item_and_groups_form_while_work_runs() {
        let tasks = Tasks::new();
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let doubled = Grouped::start(8, 1, &tasks, move |group: Vec<Asked<u32, u32>>| {
            seen.lock().unwrap().push(group.len());
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                for (n, answer) in group {
                    let _ = answer.send(n * 2);
                }
            }
        });
        let asks = (0..20).map(|n| {
            let doubled = doubled.clone();
            async move { doubled.ask(n, || 0).await }
        });
        let answers = futures_util::future::join_all(asks).await;
        assert_eq!(answers, (0..20).map(|n| n * 2).collect::<Vec<_>>());
        let sizes = sizes.lock().unwrap().clone();
        assert!(sizes.iter().all(|&n| n <= 8), "{sizes:?}");
        assert!(sizes.len() < 20, "items were grouped: {sizes:?}");
        drop(doubled);
        tokio::time::timeout(Duration::from_secs(5), tasks.wait())
            .await
            .expect("the gatherer ends with its last handle");
    }

    #[tokio::test]
    async fn aborting_stops_every_task_and_wait_returns() {
        let tasks = Tasks::new();
        for _ in 0..100 {
            tasks.spawn(std::future::pending::<()>());
        }
        assert_eq!(tasks.len(), 100);
        tasks.abort();
        tokio::time::timeout(Duration::from_secs(5), tasks.wait())
            .await
            .expect("aborted tasks end");
        assert!(tasks.is_empty());
    }
}
