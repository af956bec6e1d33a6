//! Compares client resilience policies against a synthetic, misbehaving downstream in virtual
//! time, and writes a summary, CSV files and an SVG chart.
//!
//! ```text
//! cargo run --release -p chassis-benches --bin resilience-sim -- benches/scenarios/outage.toml --out sim-out
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use chassis_benches::sim::{Scenario, report};
use clap::Parser;

/// Command-line flags; the scenario file holds everything else.
#[derive(Debug, Parser)]
#[command(
    about = "Resilience-tuning simulator: compare client policies against a misbehaving downstream"
)]
struct Args {
    /// Scenario file (TOML): duration, rate, downstream behaviour and the policies to compare.
    scenario: PathBuf,
    /// Folder for summary.csv, timeline.csv and chart.svg.
    #[arg(long, default_value = "sim-out")]
    out: PathBuf,
    /// Overrides the scenario's request rate (requests per second).
    #[arg(long)]
    rate: Option<f64>,
    /// Overrides the scenario's seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Overrides the downstream's base failure rate (0..1).
    #[arg(long)]
    failure_rate: Option<f64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("resilience-sim: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(&args.scenario)
        .map_err(|e| format!("cannot read {}: {e}", args.scenario.display()))?;
    let mut scenario: Scenario =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", args.scenario.display()))?;
    if let Some(rate) = args.rate {
        scenario.rate = rate;
    }
    if let Some(seed) = args.seed {
        scenario.seed = seed;
    }
    if let Some(rate) = args.failure_rate {
        scenario.downstream.failure_rate = rate;
    }
    let results = scenario.run()?;
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(
        args.out.join("summary.csv"),
        report::summary_csv(&results.summaries),
    )?;
    std::fs::write(
        args.out.join("timeline.csv"),
        report::timeline_csv(&results.timelines),
    )?;
    let chart = args.out.join("chart.svg");
    report::chart_svg(
        &chart,
        &results.timelines,
        scenario.rate,
        &scenario.downstream.outages,
    )?;
    print!("{}", report::summary_table(&results.summaries));
    println!(
        "\nwrote {}, {} and {}",
        args.out.join("summary.csv").display(),
        args.out.join("timeline.csv").display(),
        chart.display()
    );
    Ok(())
}
