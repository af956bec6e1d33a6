//! The samples of a soak run, their CSV form and the memory criterion.
//!
//! # The CSV
//! One row per sample per process and one per sample per queue, columns:
//!
//! | column | meaning |
//! |---|---|
//! | `elapsed_s` | seconds since the load started |
//! | `kind` | `process` or `queue` |
//! | `name` | the service (or `rabbitmq`, the broker) / the queue's name |
//! | `pid` | the process id (empty for a queue) |
//! | `rss_kb` | `VmRSS`, kB (empty for a queue) |
//! | `fds` | open file descriptors (empty for a queue) |
//! | `db_conns` | open SQLite connections: descriptors on a `.db` file (empty for a queue) |
//! | `messages` | ready + unacknowledged messages (empty for a process) |
//!
//! # The criterion
//! A service's memory counts from the end of the warm-up on (the first minutes fill caches,
//! pools and allocator arenas). Its *start* is the median RSS of the first samples after the
//! warm-up and its *end* the median of the last ones (up to 3 each, a third of the samples at
//! most, so one outlier moves neither); the change is `(end - start) / start` in %, and the
//! slope is the least-squares fit of RSS over time after the warm-up. A service passes when its
//! change is at most the limit (10 % by default); a service with fewer than 2 samples after
//! the warm-up cannot be judged and does not pass.
//!
//! # Example
//! ```
//! use shop_soak::analysis::{Sample, analyse};
//! use shop_soak::probe::ProcSample;
//!
//! let rows: Vec<Sample> = (0..10)
//!     .map(|i| Sample::process(i as f64 * 10.0, "orders", 42, ProcSample { rss_kb: 20_000 + i * 100, fds: 30, db_conns: 1 }))
//!     .collect();
//! let v = &analyse(&rows, 20.0, 10.0, &["orders"])[0];
//! assert_eq!(v.pass, Some(true)); // 20 200 kB -> 20 800 kB: +3 %
//! assert!((v.slope_kb_per_min - 600.0).abs() < 1e-6);
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;

use crate::probe::ProcSample;

/// One row of the CSV.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Seconds since the load started.
    pub elapsed_s: f64,
    /// The service (or broker) / the queue.
    pub name: String,
    /// What was measured.
    pub what: What,
}

/// A process's or a queue's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    /// A process.
    Process {
        /// Its pid.
        pid: u32,
        /// Its figures.
        figures: ProcSample,
    },
    /// A queue: its messages.
    Queue(u64),
}

impl Sample {
    /// A process row.
    pub fn process(elapsed_s: f64, name: &str, pid: u32, figures: ProcSample) -> Self {
        Self {
            elapsed_s,
            name: name.to_owned(),
            what: What::Process { pid, figures },
        }
    }

    /// A queue row.
    pub fn queue(elapsed_s: f64, name: &str, messages: u64) -> Self {
        Self {
            elapsed_s,
            name: name.to_owned(),
            what: What::Queue(messages),
        }
    }

    /// The process figures, if a process row.
    pub fn figures(&self) -> Option<ProcSample> {
        match self.what {
            What::Process { figures, .. } => Some(figures),
            What::Queue(_) => None,
        }
    }

    /// The messages, if a queue row.
    pub fn messages(&self) -> Option<u64> {
        match self.what {
            What::Queue(m) => Some(m),
            What::Process { .. } => None,
        }
    }
}

/// The CSV header (see the [module docs](self)).
pub const CSV_HEADER: &str = "elapsed_s,kind,name,pid,rss_kb,fds,db_conns,messages";

/// Writes `rows` as CSV (header first).
pub fn write_csv(mut out: impl Write, rows: &[Sample]) -> std::io::Result<()> {
    writeln!(out, "{CSV_HEADER}")?;
    for r in rows {
        match r.what {
            What::Process { pid, figures } => writeln!(
                out,
                "{:.1},process,{},{pid},{},{},{},",
                r.elapsed_s, r.name, figures.rss_kb, figures.fds, figures.db_conns
            )?,
            What::Queue(m) => writeln!(out, "{:.1},queue,{},,,,,{m}", r.elapsed_s, r.name)?,
        }
    }
    Ok(())
}

/// One service's figures after the warm-up and its verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryVerdict {
    /// The service.
    pub service: String,
    /// Samples after the warm-up.
    pub samples: usize,
    /// Median RSS of the first samples after the warm-up, kB.
    pub start_kb: f64,
    /// Median RSS of the last samples, kB.
    pub end_kb: f64,
    /// `(end - start) / start`, %.
    pub change_pct: f64,
    /// Least-squares slope of RSS after the warm-up, kB per minute.
    pub slope_kb_per_min: f64,
    /// Fewest and most open descriptors over the whole run.
    pub fds: (u64, u64),
    /// Most open database connections over the whole run.
    pub db_conns_max: u64,
    /// Within the limit; `None` when there are too few samples to say.
    pub pass: Option<bool>,
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Least-squares slope of `points` (`(x, y)`), 0 for fewer than two distinct x.
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}

/// Judges the memory of each of `services` (see the [module docs](self)): samples before
/// `warmup_s` are left out; a change above `limit_pct` fails.
pub fn analyse(
    rows: &[Sample],
    warmup_s: f64,
    limit_pct: f64,
    services: &[&str],
) -> Vec<MemoryVerdict> {
    services
        .iter()
        .map(|service| {
            let all: Vec<(f64, ProcSample)> = rows
                .iter()
                .filter(|r| r.name == *service)
                .filter_map(|r| Some((r.elapsed_s, r.figures()?)))
                .collect();
            let after: Vec<(f64, f64)> = all
                .iter()
                .filter(|(t, _)| *t >= warmup_s)
                .map(|(t, f)| (*t, f.rss_kb as f64))
                .collect();
            let k = (after.len() / 3).clamp(1, 3);
            let rss: Vec<f64> = after.iter().map(|p| p.1).collect();
            let (start_kb, end_kb) = if after.is_empty() {
                (f64::NAN, f64::NAN)
            } else {
                (median(&rss[..k]), median(&rss[rss.len() - k..]))
            };
            let change_pct = (end_kb - start_kb) / start_kb * 100.0;
            let per_min: Vec<(f64, f64)> = after.iter().map(|(t, y)| (t / 60.0, *y)).collect();
            MemoryVerdict {
                service: (*service).to_owned(),
                samples: after.len(),
                start_kb,
                end_kb,
                change_pct,
                slope_kb_per_min: slope(&per_min),
                fds: (
                    all.iter().map(|(_, f)| f.fds).min().unwrap_or(0),
                    all.iter().map(|(_, f)| f.fds).max().unwrap_or(0),
                ),
                db_conns_max: all.iter().map(|(_, f)| f.db_conns).max().unwrap_or(0),
                pass: (after.len() >= 2).then_some(change_pct <= limit_pct),
            }
        })
        .collect()
}

/// Per queue: its largest and its last depth. Stream queues (`*.stream`, the log the
/// order-history read model replays) are left out: they keep every message by design, so their
/// depth says nothing about a backlog.
pub fn queue_depths(rows: &[Sample]) -> BTreeMap<String, (u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for r in rows.iter().filter(|r| !r.name.ends_with(".stream")) {
        if let Some(m) = r.messages() {
            let e = out.entry(r.name.clone()).or_default();
            e.0 = e.0.max(m);
            e.1 = m;
        }
    }
    out
}

/// The verdicts as a table.
#[derive(Debug)]
pub struct Table<'a>(pub &'a [MemoryVerdict]);

impl fmt::Display for Table<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<17} {:>7} {:>10} {:>10} {:>8} {:>11} {:>9} {:>8}  verdict",
            "service", "samples", "start MiB", "end MiB", "change", "slope kB/m", "fds", "db conns"
        )?;
        for v in self.0 {
            let verdict = match v.pass {
                Some(true) => "pass",
                Some(false) => "FAIL",
                None => "too few samples",
            };
            writeln!(
                f,
                "{:<17} {:>7} {:>10.1} {:>10.1} {:>+7.1}% {:>11.1} {:>9} {:>8}  {verdict}",
                v.service,
                v.samples,
                v.start_kb / 1024.0,
                v.end_kb / 1024.0,
                v.change_pct,
                v.slope_kb_per_min,
                format!("{}-{}", v.fds.0, v.fds.1),
                v.db_conns_max,
            )?;
        }
        Ok(())
    }
}

/// The summary CSV header: one row per judged service.
pub const SUMMARY_HEADER: &str = "service,samples_after_warmup,rss_start_kb,rss_end_kb,change_pct,slope_kb_per_min,fds_min,fds_max,db_conns_max,pass";

/// Writes the verdicts as CSV.
pub fn write_summary_csv(mut out: impl Write, verdicts: &[MemoryVerdict]) -> std::io::Result<()> {
    writeln!(out, "{SUMMARY_HEADER}")?;
    for v in verdicts {
        writeln!(
            out,
            "{},{},{:.0},{:.0},{:.2},{:.1},{},{},{},{}",
            v.service,
            v.samples,
            v.start_kb,
            v.end_kb,
            v.change_pct,
            v.slope_kb_per_min,
            v.fds.0,
            v.fds.1,
            v.db_conns_max,
            v.pass.map_or("n/a", |p| if p { "true" } else { "false" })
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(service: &str, rss: &[u64]) -> Vec<Sample> {
        rss.iter()
            .enumerate()
            .map(|(i, kb)| {
                Sample::process(
                    i as f64 * 10.0,
                    service,
                    7,
                    ProcSample {
                        rss_kb: *kb,
                        fds: 20 + i as u64 % 2,
                        db_conns: 1,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn warm_up_growth_is_not_counted() {
        // Doubles during the first 30 s, flat afterwards.
        let rows = series(
            "orders",
            &[
                10_000, 15_000, 20_000, 20_000, 20_100, 19_900, 20_000, 20_050,
            ],
        );
        let v = &analyse(&rows, 30.0, 10.0, &["orders"])[0];
        assert_eq!(v.samples, 5);
        assert_eq!(v.pass, Some(true));
        assert!(v.change_pct.abs() < 1.0, "{v:?}");
        // Counting the warm-up, the same run fails.
        assert_eq!(analyse(&rows, 0.0, 10.0, &["orders"])[0].pass, Some(false));
    }

    #[test]
    fn steady_growth_beyond_the_limit_fails() {
        let rss: Vec<u64> = (0..30).map(|i| 20_000 + i * 200).collect();
        let rows = series("gateway", &rss);
        let v = &analyse(&rows, 30.0, 10.0, &["gateway"])[0];
        assert_eq!(v.pass, Some(false), "{v:?}");
        assert!(v.change_pct > 10.0);
        assert!((v.slope_kb_per_min - 1200.0).abs() < 1e-6, "{v:?}");
        // Exactly at the limit passes.
        let at_limit = series("gateway", &[10_000, 10_000, 10_500, 11_000, 11_000]);
        let v = &analyse(&at_limit, 0.0, 10.0, &["gateway"])[0];
        assert_eq!(v.change_pct, 10.0);
        assert_eq!(v.pass, Some(true));
    }

    #[test]
    fn one_spike_moves_neither_end() {
        let mut rss = vec![30_000; 12];
        rss[11] = 90_000;
        let rows = series("payments", &rss);
        let v = &analyse(&rows, 0.0, 10.0, &["payments"])[0];
        assert_eq!(v.end_kb, 30_000.0);
        assert_eq!(v.pass, Some(true));
    }

    #[test]
    fn a_service_without_samples_after_warm_up_is_not_judged() {
        let mut rows = series("inventory", &[10_000, 10_000, 10_000]);
        rows.extend(series("notifications", &[5_000]));
        let v = analyse(&rows, 25.0, 10.0, &["inventory", "notifications", "absent"]);
        assert_eq!(v[0].pass, None, "one sample after 25 s");
        assert_eq!(v[1].pass, None);
        assert_eq!(v[2].samples, 0);
        assert!(Table(&v).to_string().contains("too few samples"));
    }

    #[test]
    fn csv_rows_have_every_column() {
        let mut rows = series("orders", &[1, 2]);
        rows.push(Sample::queue(10.0, "ns.orders.events", 4));
        let mut out = Vec::new();
        write_csv(&mut out, &rows).unwrap();
        let text = String::from_utf8(out).unwrap();
        let cols = CSV_HEADER.split(',').count();
        for line in text.lines() {
            assert_eq!(line.split(',').count(), cols, "{line}");
        }
        assert!(text.contains("10.0,queue,ns.orders.events,,,,,4"));
        assert_eq!(queue_depths(&rows)["ns.orders.events"], (4, 4));
        rows.push(Sample::queue(
            10.0,
            "ns.notifications.order-history.stream",
            900,
        ));
        assert!(!queue_depths(&rows).contains_key("ns.notifications.order-history.stream"));
        let mut summary = Vec::new();
        write_summary_csv(&mut summary, &analyse(&rows, 0.0, 10.0, &["orders"])).unwrap();
        let summary = String::from_utf8(summary).unwrap();
        assert!(
            summary
                .lines()
                .nth(1)
                .unwrap()
                .starts_with("orders,2,1,2,100.00,"),
            "{summary}"
        );
    }
}
