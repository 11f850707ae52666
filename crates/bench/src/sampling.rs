//! CPU and memory of the processes a run measures: a sampler over
//! `/proc` every 200 ms, the database and broker servers' groups, and the
//! per-process figures of a run.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, anyhow};

use crate::{
    procfs::{self, Group, Select},
    report::{ProcFigures, per_msg_us},
};

/// Samples `groups` every 200 ms until aborted.
pub(crate) fn sampler(groups: Arc<Mutex<Vec<Group>>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let groups = groups.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if let Ok(mut g) = groups.lock() {
                    g.iter_mut().for_each(Group::sample);
                }
            })
            .await;
        }
    })
}

/// Stops the sampler and takes the groups, after a last sample.
pub(crate) async fn stop_sampling(
    sampling: tokio::task::JoinHandle<()>,
    groups: &Mutex<Vec<Group>>,
) -> Result<Vec<Group>> {
    sampling.abort();
    let _ = sampling.await;
    let mut groups = std::mem::take(&mut *groups.lock().map_err(|_| anyhow!("sampler panicked"))?);
    groups.iter_mut().for_each(Group::finish);
    Ok(groups)
}

pub(crate) fn server_groups() -> Vec<Group> {
    let mut groups = Vec::new();
    for (name, user, exe) in [
        ("postgres", "postgres", "postgres"),
        ("rabbitmq", "rabbitmq", "beam.smp"),
    ] {
        match procfs::uid_of(user) {
            Some(uid) => groups.push(Group::new(name, Select::Server { uid, name: exe })),
            None => eprintln!("warning: no user {user}: its server's CPU is not measured"),
        }
    }
    groups
}

pub(crate) fn figures(
    groups: &[Group],
    messages: u64,
    ticks_per_s: f64,
    excluded: &str,
) -> Vec<ProcFigures> {
    groups
        .iter()
        .map(|g| {
            let cpu_s = g.cpu_ticks() as f64 / ticks_per_s;
            let (rss_kb, rss_source) = match g.hwm_kb {
                Some(hwm) => (Some(hwm), "VmHWM"),
                None => ((g.processes_seen() > 0).then_some(g.peak_rss_kb), "sampled"),
            };
            ProcFigures {
                name: g.name.clone(),
                processes: g.processes_seen(),
                cpu_s,
                cpu_us_per_msg: per_msg_us(cpu_s, messages),
                peak_rss_mb: rss_kb.map(|kb| kb as f64 / 1024.0),
                rss_source,
                in_total: g.name != excluded,
            }
        })
        .collect()
}
