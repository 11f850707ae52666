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

/// One round: a kurir run on a fresh stack, then (with `--reference`) the
/// bare pipeline.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    /// 1-based.
    pub round: usize,
    pub database: String,
    pub queue_prefix: String,
    pub logs: String,
    pub failures: Vec<String>,
    /// kurir, then the reference when it ran.
    pub runs: Vec<RunFigures>,
}

impl Round {
    fn kurir(&self) -> Option<&RunFigures> {
        self.runs.iter().find(|r| r.name == "kurir")
    }

    fn reference(&self) -> Option<&RunFigures> {
        self.runs.iter().find(|r| r.name == "reference")
    }

    pub fn sent_per_s(&self) -> Option<f64> {
        self.kurir().and_then(|r| r.sent_per_s)
    }

    pub fn reference_sent_per_s(&self) -> Option<f64> {
        self.reference().and_then(|r| r.sent_per_s)
    }

    pub fn ratio(&self) -> Option<f64> {
        self.kurir().and_then(|r| r.ratio_to_reference)
    }
}

/// Median and range of one figure over the rounds that have it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    /// `percentile_cont(0.5)`: with an even count, the mean of the middle two.
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Rounds that had the figure.
    pub rounds: usize,
}

impl Spread {
    pub fn of(values: impl IntoIterator<Item = Option<f64>>) -> Option<Self> {
        let mut v: Vec<f64> = values.into_iter().flatten().collect();
        v.sort_by(f64::total_cmp);
        Some(Self {
            median: crate::stats::percentile(&v, 0.5)?,
            min: *v.first()?,
            max: *v.last()?,
            rounds: v.len(),
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// 1-based: the round whose figures are in `runs` (the tables).
    pub median_round: usize,
    pub sent_per_s: Option<Spread>,
    pub reference_sent_per_s: Option<Spread>,
    pub ratio: Option<Spread>,
}

/// Index of the round the tables show: the median by ratio when every
/// round has one, else by kurir's sent/s; with an even count the lower of
/// the middle two. Rounds without the figure (failed ones) only count when
/// no round has it; then the last round is shown.
pub fn median_round(rounds: &[Round]) -> usize {
    let by_ratio = ranked_by_ratio(rounds);
    let key = |r: &Round| if by_ratio { r.ratio() } else { r.sent_per_s() };
    let mut ranked: Vec<(usize, f64)> = rounds
        .iter()
        .enumerate()
        .filter_map(|(i, r)| key(r).map(|k| (i, k)))
        .collect();
    if ranked.is_empty() {
        return rounds.len().saturating_sub(1);
    }
    ranked.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    ranked[(ranked.len() - 1) / 2].0
}

/// Whether [`median_round`] ranks by ratio (every round has one).
pub fn ranked_by_ratio(rounds: &[Round]) -> bool {
    !rounds.is_empty() && rounds.iter().all(|r| r.ratio().is_some())
}

impl Summary {
    pub fn of(rounds: &[Round]) -> Self {
        Self {
            median_round: median_round(rounds) + 1,
            sent_per_s: Spread::of(rounds.iter().map(Round::sent_per_s)),
            reference_sent_per_s: Spread::of(rounds.iter().map(Round::reference_sent_per_s)),
            ratio: Spread::of(rounds.iter().map(Round::ratio)),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    /// Every round's failures (prefixed `round N:` when there are several).
    pub failures: Vec<String>,
    /// The median round's database, prefix and logs.
    pub database: String,
    pub queue_prefix: String,
    pub logs: String,
    pub workers: usize,
    /// `KURIR_WORKER_CONCURRENCY` given to the workers; `null`: kurir's default.
    pub worker_concurrency: Option<u16>,
    pub users: usize,
    pub concurrency: usize,
    pub open_loop_rate: Option<f64>,
    /// `Prefer: wait` seconds each single POST carried; `null`: none.
    pub prefer_wait: Option<u64>,
    pub provider_latency_ms: u64,
    /// The api's `KURIR_INTAKE_RATE` (0: off) and `KURIR_INTAKE_BURST`
    /// (`null`: kurir's default).
    pub intake_rate: u32,
    pub intake_burst: Option<u32>,
    pub cores: usize,
    /// The median round's runs (see `summary.median_round`).
    pub runs: Vec<RunFigures>,
    pub summary: Summary,
    /// Every round, in order.
    pub rounds: Vec<Round>,
}

/// Settings of the whole bench that the report repeats.
#[derive(Debug, Clone, Default)]
pub struct Header {
    pub workers: usize,
    pub worker_concurrency: Option<u16>,
    pub users: usize,
    pub concurrency: usize,
    pub open_loop_rate: Option<f64>,
    pub prefer_wait: Option<u64>,
    pub provider_latency_ms: u64,
    pub intake_rate: u32,
    pub intake_burst: Option<u32>,
    pub cores: usize,
}

impl Report {
    /// The report over `rounds` (at least one).
    pub fn new(header: Header, rounds: Vec<Round>, extra_failures: Vec<String>) -> Self {
        let several = rounds.len() > 1;
        let mut failures: Vec<String> = rounds
            .iter()
            .flat_map(|r| {
                r.failures.iter().map(move |f| {
                    if several {
                        format!("round {}: {f}", r.round)
                    } else {
                        f.clone()
                    }
                })
            })
            .collect();
        failures.extend(extra_failures);
        let summary = Summary::of(&rounds);
        let shown = rounds.get(summary.median_round - 1);
        Self {
            ok: failures.is_empty(),
            failures,
            database: shown.map(|r| r.database.clone()).unwrap_or_default(),
            queue_prefix: shown.map(|r| r.queue_prefix.clone()).unwrap_or_default(),
            logs: shown.map(|r| r.logs.clone()).unwrap_or_default(),
            workers: header.workers,
            worker_concurrency: header.worker_concurrency,
            users: header.users,
            concurrency: header.concurrency,
            open_loop_rate: header.open_loop_rate,
            prefer_wait: header.prefer_wait,
            provider_latency_ms: header.provider_latency_ms,
            intake_rate: header.intake_rate,
            intake_burst: header.intake_burst,
            cores: header.cores,
            runs: shown.map(|r| r.runs.clone()).unwrap_or_default(),
            summary,
            rounds,
        }
    }
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
        if self.rounds.len() > 1 {
            out.push('\n');
            out.push_str(&self.rounds_text());
        }
        if !self.ok {
            for f in &self.failures {
                out.push_str(&format!("FAILED: {f}\n"));
            }
        }
        out
    }
}

fn range(s: Option<Spread>, decimals: usize) -> String {
    s.map_or_else(
        || "-".to_owned(),
        |s| format!("{:.decimals$}–{:.decimals$}", s.min, s.max),
    )
}

impl Report {
    /// One row per round, then the median and the min–max range.
    fn rounds_text(&self) -> String {
        let with_reference = self.rounds.iter().any(|r| r.reference().is_some());
        let shown = self.summary.median_round;
        let label = |r: &Round| {
            if r.round == shown {
                format!("{} *", r.round)
            } else {
                r.round.to_string()
            }
        };
        let s = &self.summary;
        let (headers, rows): (Vec<&str>, Vec<Vec<String>>) = if with_reference {
            let mut rows: Vec<Vec<String>> = self
                .rounds
                .iter()
                .map(|r| {
                    vec![
                        label(r),
                        opt(r.sent_per_s(), 0),
                        opt(r.reference_sent_per_s(), 0),
                        opt(r.ratio(), 3),
                    ]
                })
                .collect();
            rows.push(vec![
                "median".into(),
                opt(s.sent_per_s.map(|s| s.median), 0),
                opt(s.reference_sent_per_s.map(|s| s.median), 0),
                opt(s.ratio.map(|s| s.median), 3),
            ]);
            rows.push(vec![
                "min–max".into(),
                range(s.sent_per_s, 0),
                range(s.reference_sent_per_s, 0),
                range(s.ratio, 3),
            ]);
            (
                vec!["round", "kurir sent/s", "reference sent/s", "ratio"],
                rows,
            )
        } else {
            let mut rows: Vec<Vec<String>> = self
                .rounds
                .iter()
                .map(|r| {
                    let k = r.kurir();
                    vec![
                        label(r),
                        opt(k.and_then(|k| k.accepted_per_s), 0),
                        opt(r.sent_per_s(), 0),
                        opt(k.and_then(|k| k.accept_to_sent_p99_ms), 1),
                    ]
                })
                .collect();
            let accepted = Spread::of(
                self.rounds
                    .iter()
                    .map(|r| r.kurir().and_then(|k| k.accepted_per_s)),
            );
            let p99 = Spread::of(
                self.rounds
                    .iter()
                    .map(|r| r.kurir().and_then(|k| k.accept_to_sent_p99_ms)),
            );
            rows.push(vec![
                "median".into(),
                opt(accepted.map(|s| s.median), 0),
                opt(s.sent_per_s.map(|s| s.median), 0),
                opt(p99.map(|s| s.median), 1),
            ]);
            rows.push(vec![
                "min–max".into(),
                range(accepted, 0),
                range(s.sent_per_s, 0),
                range(p99, 1),
            ]);
            (
                vec!["round", "accepted/s", "sent/s", "accept→sent p99 ms"],
                rows,
            )
        };
        let mut out = format!(
            "{} rounds{}, each on a fresh stack; the median of each column on its own\n",
            self.rounds.len(),
            if with_reference {
                " (kurir, then the reference)"
            } else {
                ""
            }
        );
        out.push_str(&table(&headers, &rows));
        out.push_str(&format!(
            "(* round {shown}, the median{}, is the one in the tables above)\n",
            if ranked_by_ratio(&self.rounds) {
                " by ratio"
            } else {
                " by sent/s"
            }
        ));
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

    fn round(n: usize, kurir: Option<f64>, reference: Option<f64>) -> Round {
        let mut runs = vec![RunFigures {
            name: "kurir".into(),
            messages: 300,
            sent: 300,
            sent_per_s: kurir,
            ..RunFigures::default()
        }];
        if let Some(b) = reference {
            runs[0].ratio_to_reference = kurir.map(|k| k / b);
            runs.push(RunFigures {
                name: "reference".into(),
                sent_per_s: Some(b),
                ..RunFigures::default()
            });
        }
        Round {
            round: n,
            database: format!("db{n}"),
            queue_prefix: format!("db{n}"),
            logs: format!("/tmp/{n}"),
            failures: Vec::new(),
            runs,
        }
    }

    #[test]
    fn report_text_has_both_tables() {
        let mut r = round(1, None, None);
        r.failures.push("a child died".into());
        let report = Report::new(
            Header {
                workers: 1,
                users: 10,
                concurrency: 16,
                cores: 2,
                ..Header::default()
            },
            vec![r],
            Vec::new(),
        );
        assert!(!report.ok);
        let text = report.to_text();
        assert!(text.contains("300/300"));
        assert!(text.contains("CPU µs/msg"));
        assert!(text.contains("FAILED: a child died"));
        assert!(!text.contains("rounds"), "one round has no rounds section");
    }

    #[test]
    fn spread_is_percentile_cont() {
        assert_eq!(Spread::of([]), None);
        assert_eq!(
            Spread::of([Some(3.0), None, Some(1.0)]),
            Some(Spread {
                median: 2.0,
                min: 1.0,
                max: 3.0,
                rounds: 2
            })
        );
    }

    #[test]
    fn median_round_ranks_by_ratio_then_sent() {
        // Ratios 0.5, 0.25, 0.75: the median is round 1.
        let rounds = vec![
            round(1, Some(1000.0), Some(2000.0)),
            round(2, Some(1000.0), Some(4000.0)),
            round(3, Some(3000.0), Some(4000.0)),
        ];
        assert_eq!(median_round(&rounds), 0);
        // Even: the lower of the middle two (ratios 0.25 and 0.5 → 0.25).
        assert_eq!(median_round(&rounds[..2]), 1);
        // No reference: by sent/s.
        let rounds = vec![
            round(1, Some(1500.0), None),
            round(2, Some(1000.0), None),
            round(3, Some(2000.0), None),
        ];
        assert_eq!(median_round(&rounds), 0);
        // Nothing measured: the last round.
        assert_eq!(
            median_round(&[round(1, None, None), round(2, None, None)]),
            1
        );
        assert_eq!(median_round(&[]), 0);
    }

    #[test]
    fn several_rounds_show_the_median_round_and_a_rounds_table() {
        let rounds = vec![
            round(1, Some(1000.0), Some(2000.0)),
            round(2, Some(1000.0), Some(4000.0)),
            round(3, Some(3000.0), Some(4000.0)),
        ];
        let report = Report::new(Header::default(), rounds, Vec::new());
        assert!(report.ok);
        assert_eq!(report.summary.median_round, 1);
        assert_eq!(report.database, "db1");
        assert_eq!(report.runs[0].ratio_to_reference, Some(0.5));
        let ratio = report.summary.ratio.expect("ratios");
        assert_eq!((ratio.median, ratio.min, ratio.max), (0.5, 0.25, 0.75));
        let text = report.to_text();
        assert!(
            text.contains("3 rounds (kurir, then the reference)"),
            "{text}"
        );
        assert!(
            text.contains("round    kurir sent/s  reference sent/s        ratio"),
            "{text}"
        );
        assert!(text.contains("1 *"), "{text}");
        assert!(text.contains("0.250–0.750"), "{text}");
        assert!(text.contains("1000–3000"), "{text}");
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(json["summary"]["median_round"], 1);
        assert_eq!(json["summary"]["ratio"]["median"], 0.5);
        assert_eq!(json["rounds"].as_array().map(Vec::len), Some(3));
        assert_eq!(json["rounds"][2]["runs"][1]["sent_per_s"], 4000.0);
    }

    #[test]
    fn failures_name_their_round_when_there_are_several() {
        let mut r2 = round(2, None, None);
        r2.failures.push("worker-1 exited".into());
        let report = Report::new(
            Header::default(),
            vec![round(1, Some(1000.0), None), r2],
            Vec::new(),
        );
        assert!(!report.ok);
        assert_eq!(report.failures, vec!["round 2: worker-1 exited".to_owned()]);
        assert_eq!(report.summary.median_round, 1);
        assert!(report.to_text().contains("accepted/s  sent/s"));
    }
}
