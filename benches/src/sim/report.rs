//! Turns runs into the numbers a user tunes by: a summary per policy, a per-second timeline,
//! CSV files and an SVG chart.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use plotters::prelude::*;

use super::downstream::Outage;
use super::run::{Outcome, RunResult};

/// The headline numbers of one policy's run.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The policy's name.
    pub policy: String,
    /// Caller requests sent.
    pub requests: usize,
    /// Share of caller requests that succeeded.
    pub success_rate: f64,
    /// Caller-seen latency percentiles, in milliseconds.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Attempts that reached the downstream per caller request (load amplification).
    pub attempts_per_request: f64,
    /// The busiest second's downstream calls divided by the offered rate.
    pub peak_amplification: f64,
    /// From the first outage's start to the first open-circuit rejection, if the breaker opened.
    pub time_to_open: Option<Duration>,
    /// From the first outage's end to the first second whose success rate is back to 90 %.
    pub time_to_recover: Option<Duration>,
}

/// One second of one run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    /// Second since start.
    pub second: u64,
    /// Caller requests sent in it.
    pub sent: u64,
    /// Of which succeeded.
    pub succeeded: u64,
    /// Of which were rejected without reaching the downstream.
    pub rejected: u64,
    /// Attempts that reached the downstream in it.
    pub downstream_calls: u64,
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx].as_secs_f64() * 1000.0
}

/// Per-second timeline of a run.
pub fn timeline(run: &RunResult, seconds: u64) -> Vec<Bucket> {
    let mut buckets: Vec<Bucket> = (0..seconds)
        .map(|second| Bucket {
            second,
            sent: 0,
            succeeded: 0,
            rejected: 0,
            downstream_calls: 0,
        })
        .collect();
    for r in &run.requests {
        if let Some(b) = buckets.get_mut(r.sent_at.as_secs() as usize) {
            b.sent += 1;
            match r.outcome {
                Outcome::Success => b.succeeded += 1,
                Outcome::Rejected | Outcome::CircuitOpen => b.rejected += 1,
                Outcome::Failed | Outcome::TimedOut => {}
            }
        }
    }
    for (at, _) in &run.downstream_calls {
        if let Some(b) = buckets.get_mut(at.as_secs() as usize) {
            b.downstream_calls += 1;
        }
    }
    buckets
}

/// Summarises one run.
pub fn summarize(policy: &str, run: &RunResult, rate: f64, outages: &[Outage]) -> Summary {
    let requests = run.requests.len();
    let successes = run
        .requests
        .iter()
        .filter(|r| r.outcome == Outcome::Success)
        .count();
    let mut latencies: Vec<Duration> = run.requests.iter().map(|r| r.latency).collect();
    latencies.sort_unstable();
    let seconds = run.requests.last().map_or(0, |r| r.sent_at.as_secs() + 1);
    let buckets = timeline(run, seconds);
    let peak = buckets
        .iter()
        .map(|b| b.downstream_calls)
        .max()
        .unwrap_or(0);
    let first = outages.first();
    let time_to_open = first.and_then(|o| {
        run.requests
            .iter()
            .find(|r| r.outcome == Outcome::CircuitOpen && r.sent_at >= o.start)
            .map(|r| r.sent_at - o.start)
    });
    let time_to_recover = first.and_then(|o| {
        buckets
            .iter()
            .filter(|b| Duration::from_secs(b.second) >= o.end && b.sent > 0)
            .find(|b| b.succeeded as f64 / b.sent as f64 >= 0.9)
            .map(|b| Duration::from_secs(b.second).saturating_sub(o.end))
    });
    Summary {
        policy: policy.to_owned(),
        requests,
        success_rate: if requests == 0 {
            0.0
        } else {
            successes as f64 / requests as f64
        },
        p50_ms: percentile(&latencies, 0.50),
        p95_ms: percentile(&latencies, 0.95),
        p99_ms: percentile(&latencies, 0.99),
        attempts_per_request: if requests == 0 {
            0.0
        } else {
            run.downstream_calls.len() as f64 / requests as f64
        },
        peak_amplification: peak as f64 / rate,
        time_to_open,
        time_to_recover,
    }
}

fn opt_secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_owned(), |d| format!("{:.1}", d.as_secs_f64()))
}

/// The summary table as CSV.
pub fn summary_csv(summaries: &[Summary]) -> String {
    let mut out = String::from(
        "policy,requests,success_rate,p50_ms,p95_ms,p99_ms,attempts_per_request,peak_amplification,time_to_open_s,time_to_recover_s\n",
    );
    for s in summaries {
        let _ = writeln!(
            out,
            "{},{},{:.4},{:.1},{:.1},{:.1},{:.3},{:.2},{},{}",
            s.policy,
            s.requests,
            s.success_rate,
            s.p50_ms,
            s.p95_ms,
            s.p99_ms,
            s.attempts_per_request,
            s.peak_amplification,
            opt_secs(s.time_to_open),
            opt_secs(s.time_to_recover)
        );
    }
    out
}

/// The per-second timelines of every policy as one CSV.
pub fn timeline_csv(timelines: &[(String, Vec<Bucket>)]) -> String {
    let mut out = String::from("policy,second,sent,succeeded,rejected,downstream_calls\n");
    for (policy, buckets) in timelines {
        for b in buckets {
            let _ = writeln!(
                out,
                "{policy},{},{},{},{},{}",
                b.second, b.sent, b.succeeded, b.rejected, b.downstream_calls
            );
        }
    }
    out
}

/// The summary as an aligned text table for the terminal.
pub fn summary_table(summaries: &[Summary]) -> String {
    let mut out = format!(
        "{:<24} {:>8} {:>8} {:>8} {:>8} {:>9} {:>6} {:>8} {:>8}\n",
        "policy", "success", "p50 ms", "p95 ms", "p99 ms", "att/req", "peak x", "open s", "recov s"
    );
    for s in summaries {
        let _ = writeln!(
            out,
            "{:<24} {:>7.1}% {:>8.1} {:>8.1} {:>8.1} {:>9.2} {:>6.2} {:>8} {:>8}",
            s.policy,
            s.success_rate * 100.0,
            s.p50_ms,
            s.p95_ms,
            s.p99_ms,
            s.attempts_per_request,
            s.peak_amplification,
            opt_secs(s.time_to_open),
            opt_secs(s.time_to_recover)
        );
    }
    out
}

/// Draws two panels into an SVG: downstream calls per second (the load a retry storm puts on
/// the struggling service) and caller success rate per second, one line per policy, with the
/// outage windows shaded.
pub fn chart_svg(
    path: &Path,
    timelines: &[(String, Vec<Bucket>)],
    rate: f64,
    outages: &[Outage],
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1100, 800)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(400);
    let seconds = timelines
        .iter()
        .map(|(_, b)| b.len() as u64)
        .max()
        .unwrap_or(1)
        .max(1);
    let max_calls = timelines
        .iter()
        .flat_map(|(_, b)| b.iter().map(|b| b.downstream_calls))
        .max()
        .unwrap_or(1)
        .max((rate.ceil()) as u64)
        .max(1);
    let palette = [&BLUE, &RED, &GREEN, &MAGENTA, &CYAN, &BLACK];

    let mut load = ChartBuilder::on(&top)
        .caption(
            "Downstream calls per second (offered load = dashed)",
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0u64..seconds, 0u64..(max_calls + max_calls / 10 + 1))?;
    load.configure_mesh().x_desc("second").draw()?;
    for o in outages {
        load.draw_series(std::iter::once(Rectangle::new(
            [
                (o.start.as_secs(), 0),
                (o.end.as_secs(), max_calls + max_calls / 10 + 1),
            ],
            RGBColor(255, 200, 200).mix(0.4).filled(),
        )))?;
    }
    for (i, (name, buckets)) in timelines.iter().enumerate() {
        let color = palette[i % palette.len()];
        load.draw_series(LineSeries::new(
            buckets.iter().map(|b| (b.second, b.downstream_calls)),
            color.stroke_width(2),
        ))?
        .label(name.as_str())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    // Drawn last, over the policies' lines: a policy making one attempt per request runs
    // exactly along the offered load and used to hide the line drawn under it. One segment
    // over the whole run, so the dashes are not restarted every second.
    let offered = rate.round() as u64;
    load.draw_series(DashedLineSeries::new(
        [(0, offered), (seconds, offered)],
        8,
        6,
        BLACK.stroke_width(2),
    ))?
    .label("offered load")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(1)));
    load.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;

    let mut success = ChartBuilder::on(&bottom)
        .caption("Caller success rate per second (%)", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0u64..seconds, 0f64..101f64)?;
    success.configure_mesh().x_desc("second").draw()?;
    for o in outages {
        success.draw_series(std::iter::once(Rectangle::new(
            [(o.start.as_secs(), 0.0), (o.end.as_secs(), 101.0)],
            RGBColor(255, 200, 200).mix(0.4).filled(),
        )))?;
    }
    for (i, (name, buckets)) in timelines.iter().enumerate() {
        let color = palette[i % palette.len()];
        success
            .draw_series(LineSeries::new(
                buckets
                    .iter()
                    .filter(|b| b.sent > 0)
                    .map(|b| (b.second, b.succeeded as f64 * 100.0 / b.sent as f64)),
                color.stroke_width(2),
            ))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    root.present()?;
    Ok(())
}
