//! Figures of a run, and their presentation: a table for people, one JSON
//! line for machines.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct ProcFigures {
    pub name: String,
    pub processes: usize,
    pub cpu_s: f64,
    pub cpu_us_per_msg: Option<f64>,
    pub peak_rss_mb: Option<f64>,
    /// `VmHWM` (our children: the kernel's peak) or `sampled` (servers).
    pub rss_source: &'static str,
    /// Whether `cpu_s` counts in the run's total (the load generator does
    /// not for kurir; for the reference it is the pipeline itself).
    pub in_total: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RunFigures {
    pub name: String,
    pub messages: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub sent: u64,
    pub accept_seconds: f64,
    pub accepted_per_s: Option<f64>,
    pub end_to_end_seconds: Option<f64>,
    pub sent_per_s: Option<f64>,
    pub accept_p50_ms: Option<f64>,
    pub accept_p99_ms: Option<f64>,
    pub accept_to_sent_p50_ms: Option<f64>,
    pub accept_to_sent_p99_ms: Option<f64>,
    /// Open loop only: requests that started more than 5 ms after their slot.
    pub late: Option<u64>,
    pub ratio_to_reference: Option<f64>,
    pub processes: Vec<ProcFigures>,
    pub total_cpu_s: f64,
    pub total_cpu_us_per_msg: Option<f64>,
}

impl RunFigures {
    pub fn set_total(&mut self) {
        self.total_cpu_s = self
            .processes
            .iter()
            .filter(|p| p.in_total)
            .map(|p| p.cpu_s)
            .sum();
        self.total_cpu_us_per_msg = per_msg_us(self.total_cpu_s, self.sent);
    }
}

pub fn per_msg_us(cpu_s: f64, messages: u64) -> Option<f64> {
    (messages > 0).then(|| cpu_s * 1e6 / messages as f64)
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    pub failures: Vec<String>,
    pub database: String,
    pub queue_prefix: String,
    pub logs: String,
    pub workers: usize,
    /// `KURIR_WORKER_CONCURRENCY` given to the workers; `null`: kurir's default.
    pub worker_concurrency: Option<u16>,
    pub users: usize,
    pub concurrency: usize,
    pub open_loop_rate: Option<f64>,
    pub provider_latency_ms: u64,
    pub cores: usize,
    pub runs: Vec<RunFigures>,
}

pub fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
}

/// A plain text table: the first column left-aligned, the others right-aligned.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    table_with(headers, rows, 1)
}

/// A plain text table whose first `left` columns are left-aligned.
pub fn table_with(headers: &[&str], rows: &[Vec<String>], left: usize) -> String {
    let columns = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, cell) in cells.enumerate().take(columns) {
            if i > 0 {
                out.push_str("  ");
            }
            let pad = widths[i].saturating_sub(cell.chars().count());
            if i < left {
                out.push_str(cell);
                out.extend(std::iter::repeat_n(' ', pad));
            } else {
                out.extend(std::iter::repeat_n(' ', pad));
                out.push_str(cell);
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(&mut headers.iter().copied());
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&line(&mut rule.iter().map(String::as_str)));
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

impl Report {
    pub fn to_text(&self) -> String {
        let headers = [
            "run",
            "messages",
            "accepted/s",
            "sent/s",
            "accept p50 ms",
            "accept p99 ms",
            "accept→sent p50 ms",
            "accept→sent p99 ms",
            "late",
            "ratio",
        ];
        let rows: Vec<Vec<String>> = self
            .runs
            .iter()
            .map(|r| {
                vec![
                    r.name.clone(),
                    format!("{}/{}", r.sent, r.messages),
                    opt(r.accepted_per_s, 0),
                    opt(r.sent_per_s, 0),
                    opt(r.accept_p50_ms, 2),
                    opt(r.accept_p99_ms, 2),
                    opt(r.accept_to_sent_p50_ms, 1),
                    opt(r.accept_to_sent_p99_ms, 1),
                    r.late.map_or_else(|| "-".to_owned(), |l| l.to_string()),
                    opt(r.ratio_to_reference, 3),
                ]
            })
            .collect();
        let mut out = table(&headers, &rows);
        out.push('\n');
        let headers = [
            "run",
            "process",
            "procs",
            "CPU s",
            "CPU µs/msg",
            "peak RSS MB",
            "RSS from",
        ];
        let mut rows = Vec::new();
        for run in &self.runs {
            for p in &run.processes {
                let name = if p.in_total {
                    p.name.clone()
                } else {
                    format!("({})", p.name)
                };
                rows.push(vec![
                    run.name.clone(),
                    name,
                    p.processes.to_string(),
                    format!("{:.2}", p.cpu_s),
                    opt(p.cpu_us_per_msg, 1),
                    opt(p.peak_rss_mb, 1),
                    p.rss_source.to_owned(),
                ]);
            }
            rows.push(vec![
                run.name.clone(),
                "total".to_owned(),
                String::new(),
                format!("{:.2}", run.total_cpu_s),
                opt(run.total_cpu_us_per_msg, 1),
                String::new(),
                String::new(),
            ]);
        }
        out.push_str(&table_with(&headers, &rows, 2));
        out.push_str(
            "(parenthesised processes are not in the total: the load generator for kurir)\n",
        );
        if !self.ok {
            for f in &self.failures {
                out.push_str(&format!("FAILED: {f}\n"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = table(
            &["run", "msg/s"],
            &[
                vec!["kurir".into(), "1600".into()],
                vec!["reference".into(), "6000.5".into()],
            ],
        );
        let expected = "\
run         msg/s
---------  ------
kurir        1600
reference  6000.5
";
        assert_eq!(t, expected);
    }

    #[test]
    fn table_counts_characters_not_bytes() {
        let t = table(&["µs", "x"], &[vec!["é".into(), "1".into()]]);
        assert_eq!(t, "µs  x\n--  -\né   1\n");
    }

    #[test]
    fn leading_columns_can_be_left_aligned() {
        let t = table_with(
            &["run", "process", "s"],
            &[vec!["kurir".into(), "api".into(), "1".into()]],
            2,
        );
        assert_eq!(
            t,
            "run    process  s\n-----  -------  -\nkurir  api      1\n"
        );
    }

    #[test]
    fn missing_values_are_dashes() {
        assert_eq!(opt(None, 2), "-");
        assert_eq!(opt(Some(1.234), 1), "1.2");
    }

    #[test]
    fn totals_skip_excluded_processes() {
        let proc = |name: &str, cpu_s, in_total| ProcFigures {
            name: name.into(),
            processes: 1,
            cpu_s,
            cpu_us_per_msg: None,
            peak_rss_mb: None,
            rss_source: "VmHWM",
            in_total,
        };
        let mut run = RunFigures {
            sent: 1000,
            processes: vec![proc("api", 1.0, true), proc("bench", 5.0, false)],
            ..RunFigures::default()
        };
        run.set_total();
        assert_eq!(run.total_cpu_s, 1.0);
        assert_eq!(run.total_cpu_us_per_msg, Some(1000.0));
    }

    #[test]
    fn report_text_has_both_tables() {
        let report = Report {
            ok: false,
            failures: vec!["a child died".into()],
            database: "db".into(),
            queue_prefix: "p".into(),
            logs: "/tmp/x".into(),
            workers: 1,
            worker_concurrency: None,
            users: 10,
            concurrency: 16,
            open_loop_rate: None,
            provider_latency_ms: 0,
            cores: 2,
            runs: vec![RunFigures {
                name: "kurir".into(),
                messages: 300,
                sent: 300,
                ..RunFigures::default()
            }],
        };
        let text = report.to_text();
        assert!(text.contains("300/300"));
        assert!(text.contains("CPU µs/msg"));
        assert!(text.contains("FAILED: a child died"));
    }
}
