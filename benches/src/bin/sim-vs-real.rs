//! Simulator vs reality: runs a scenario's policies through the shop's payments client against
//! the payment-provider stand-in playing the scenario over loopback HTTP, and prints, per policy,
//! the simulator's prediction beside the measurement (success rate, attempts per request, p99) as
//! a Markdown table.
//!
//! ```text
//! cargo run --release -p chassis-benches --bin sim-vs-real -- \
//!     benches/scenarios/full-outage.toml benches/scenarios/partial-brownout.toml --time-scale 0.5
//! ```
//!
//! Each policy runs for the scenario's duration times `--time-scale` in real time. Policies that
//! hedge are skipped (the payments client does not hedge charges). Exits with failure if a row
//! is outside the tolerance (5 points of success rate, 15 % of attempts per request) and
//! `--check` is given.

use std::path::PathBuf;
use std::process::ExitCode;

use chassis_benches::sim::Scenario;
use chassis_benches::sim::live::{Tolerance, compare, table_header};
use clap::Parser;

/// Command-line flags; the scenario files hold everything else.
#[derive(Debug, Parser)]
#[command(
    about = "Compare the simulator's predictions with the payments client against the real stand-in"
)]
struct Args {
    /// Scenario file(s) (TOML).
    #[arg(required = true)]
    scenarios: Vec<PathBuf>,
    /// Only the policies with these names (repeatable); all of each scenario's by default.
    #[arg(long = "policy")]
    policies: Vec<String>,
    /// Multiplies each scenario's timeline (duration, outage windows) by this, so a run takes
    /// tens of seconds; the simulator runs the same scaled scenario.
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// Overrides the scenarios' request rate (requests per second).
    #[arg(long)]
    rate: Option<f64>,
    /// Fails if a policy is outside the tolerance.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("sim-vs-real: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<bool, chassis_core::BoxError> {
    let mut all_within = true;
    println!("{}", table_header());
    for path in &args.scenarios {
        let mut scenario = Scenario::load(path)?.time_scaled(args.time_scale)?;
        if let Some(rate) = args.rate {
            scenario.rate = rate;
        }
        let name = path.file_stem().map_or_else(
            || path.display().to_string(),
            |s| s.to_string_lossy().into_owned(),
        );
        for policy in &scenario.policies {
            if !args.policies.is_empty() && !args.policies.contains(&policy.name) {
                continue;
            }
            if policy.hedge.is_some() {
                eprintln!(
                    "skipping `{}`: the payments client does not hedge",
                    policy.name
                );
                continue;
            }
            let comparison = compare(&scenario, policy)?;
            all_within &= comparison.within(&Tolerance::default());
            println!("{}", comparison.row(&name));
        }
    }
    Ok(all_within || !args.check)
}
