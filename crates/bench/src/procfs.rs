//! Reading CPU time and memory of processes from /proc.
//!
//! CPU is `utime + stime` from `/proc/<pid>/stat` (clock ticks). Servers that
//! fork (Postgres backends come and go) are sampled periodically and the
//! largest value seen per pid is kept, so a backend that exits mid-run still
//! counts up to its last sample.

use std::collections::HashMap;
use std::fs;

/// `utime + stime` in clock ticks from the text of `/proc/<pid>/stat`.
///
/// The command name (field 2) is in parentheses and may contain spaces or
/// parentheses itself, so fields are counted from the last `)`.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ")": field 3 (state) is index 0, so utime (14) is 11, stime (15) is 12.
    let mut fields = rest.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// A `kB` line such as `VmHWM:   12345 kB` from `/proc/<pid>/status`.
pub fn parse_status_kb(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// The real uid from the `Uid:` line of `/proc/<pid>/status`.
pub fn parse_status_uid(status: &str) -> Option<u32> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix("Uid:")?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// The uid of `user` from the text of /etc/passwd.
pub fn parse_passwd_uid(passwd: &str, user: &str) -> Option<u32> {
    passwd.lines().find_map(|line| {
        let mut parts = line.split(':');
        (parts.next()? == user).then_some(())?;
        parts.nth(1)?.parse().ok()
    })
}

pub fn uid_of(user: &str) -> Option<u32> {
    parse_passwd_uid(&fs::read_to_string("/etc/passwd").ok()?, user)
}

pub fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

pub fn ticks(pid: u32) -> Option<u64> {
    parse_stat_ticks(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

pub fn status(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/status")).ok()
}

/// Which processes make up a measured group.
#[derive(Debug, Clone)]
pub enum Select {
    /// These pids (our children, ourselves).
    Pids(Vec<u32>),
    /// Every process of `uid` whose argv[0]'s file name starts with `name`
    /// (Postgres: postmaster `/usr/lib/postgresql/15/bin/postgres` and
    /// backends `postgres: …`; RabbitMQ: `beam.smp`).
    Server { uid: u32, name: &'static str },
}

fn argv0_matches(cmdline: &[u8], name: &str) -> bool {
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    let argv0 = String::from_utf8_lossy(argv0);
    let base = argv0.rsplit('/').next().unwrap_or_default();
    base.starts_with(name) || argv0.starts_with(name)
}

impl Select {
    pub fn pids(&self) -> Vec<u32> {
        match self {
            Select::Pids(pids) => pids.clone(),
            Select::Server { uid, name } => {
                let Ok(dir) = fs::read_dir("/proc") else {
                    return Vec::new();
                };
                dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                    .filter(|pid| {
                        status(*pid).and_then(|s| parse_status_uid(&s)) == Some(*uid)
                            && fs::read(format!("/proc/{pid}/cmdline"))
                                .is_ok_and(|c| argv0_matches(&c, name))
                    })
                    .collect()
            }
        }
    }
}

/// CPU and memory of one group of processes over one measured interval.
#[derive(Debug)]
pub struct Group {
    pub name: String,
    pub select: Select,
    baseline: HashMap<u32, u64>,
    max: HashMap<u32, u64>,
    /// Largest sampled resident set: sum of private (RssAnon) memory plus the
    /// largest shared part (RssFile + RssShmem) of any one process, so shared
    /// buffers mapped by every Postgres backend are counted once.
    pub peak_rss_kb: u64,
    /// VmHWM summed over the group's pids, read by `finish` (children only).
    pub hwm_kb: Option<u64>,
}

impl Group {
    pub fn new(name: impl Into<String>, select: Select) -> Self {
        let mut group = Self {
            name: name.into(),
            select,
            baseline: HashMap::new(),
            max: HashMap::new(),
            peak_rss_kb: 0,
            hwm_kb: None,
        };
        for pid in group.select.pids() {
            if let Some(t) = ticks(pid) {
                group.baseline.insert(pid, t);
                group.max.insert(pid, t);
            }
        }
        group.sample();
        group
    }

    pub fn sample(&mut self) {
        let mut anon = 0;
        let mut shared = 0;
        for pid in self.select.pids() {
            if let Some(t) = ticks(pid) {
                let entry = self.max.entry(pid).or_insert(t);
                *entry = (*entry).max(t);
            }
            if let Some(s) = status(pid) {
                anon += parse_status_kb(&s, "RssAnon").unwrap_or(0);
                let sh = parse_status_kb(&s, "RssFile").unwrap_or(0)
                    + parse_status_kb(&s, "RssShmem").unwrap_or(0);
                shared = u64::max(shared, sh);
            }
        }
        self.peak_rss_kb = self.peak_rss_kb.max(anon + shared);
    }

    /// Last sample; for fixed pids also reads their peak (VmHWM).
    pub fn finish(&mut self) {
        self.sample();
        if let Select::Pids(pids) = &self.select {
            let hwm: Vec<u64> = pids
                .iter()
                .filter_map(|pid| parse_status_kb(&status(*pid)?, "VmHWM"))
                .collect();
            self.hwm_kb = (!hwm.is_empty()).then(|| hwm.iter().sum());
        }
    }

    /// Ticks used during the interval, summed over every pid seen.
    pub fn cpu_ticks(&self) -> u64 {
        self.max
            .iter()
            .map(|(pid, max)| max.saturating_sub(self.baseline.get(pid).copied().unwrap_or(0)))
            .sum()
    }

    pub fn processes_seen(&self) -> usize {
        self.max.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "2243 (postgres) S 1 2243 2243 0 -1 4194560 12208 1290345 4 1 \
        137 512 2311 955 20 0 1 0 2158 224120832 6144 18446744073709551615 1 1 0 0 0 0 \
        0 16781312 536890886 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn stat_sums_utime_and_stime() {
        assert_eq!(parse_stat_ticks(STAT), Some(137 + 512));
    }

    #[test]
    fn stat_survives_odd_command_names() {
        let odd = STAT.replace("(postgres)", "(we ird) (name)");
        assert_eq!(parse_stat_ticks(&odd), Some(649));
    }

    #[test]
    fn stat_rejects_garbage() {
        assert_eq!(parse_stat_ticks("no parens here"), None);
        assert_eq!(parse_stat_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn status_lines() {
        let status = "Name:\tkurir\nUid:\t105\t105\t105\t105\nVmHWM:\t   45312 kB\nVmRSS:\t   40000 kB\nRssAnon:\t   30000 kB\n";
        assert_eq!(parse_status_kb(status, "VmHWM"), Some(45312));
        assert_eq!(parse_status_kb(status, "VmRSS"), Some(40000));
        assert_eq!(parse_status_kb(status, "RssAnon"), Some(30000));
        assert_eq!(parse_status_kb(status, "VmSwap"), None);
        assert_eq!(parse_status_uid(status), Some(105));
    }

    #[test]
    fn passwd_lookup() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\npostgres:x:105:111:PostgreSQL:/var/lib/postgresql:/bin/bash\n";
        assert_eq!(parse_passwd_uid(passwd, "postgres"), Some(105));
        assert_eq!(parse_passwd_uid(passwd, "root"), Some(0));
        assert_eq!(parse_passwd_uid(passwd, "rabbitmq"), None);
    }

    #[test]
    fn argv0_matching() {
        assert!(argv0_matches(
            b"/usr/lib/postgresql/15/bin/postgres\0-D\0/x\0",
            "postgres"
        ));
        assert!(argv0_matches(
            b"postgres: 15/main: walwriter \0",
            "postgres"
        ));
        assert!(argv0_matches(
            b"/usr/lib/erlang/erts-13.1.5/bin/beam.smp\0-W\0",
            "beam.smp"
        ));
        assert!(!argv0_matches(b"/usr/bin/psql\0", "postgres"));
    }

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        assert!(ticks(pid).is_some());
        let mut g = Group::new("self", Select::Pids(vec![pid]));
        g.finish();
        assert!(g.hwm_kb.unwrap() > 0);
        assert!(g.peak_rss_kb > 0);
    }
}
