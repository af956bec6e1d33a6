//! Compares client resilience policies against a synthetic, misbehaving downstream in virtual
//! time, and writes a summary, CSV files and an SVG chart.
//!
//! ```text
//! cargo run --release -p chassis-benches --bin resilience-sim -- benches/scenarios/outage.toml --out sim-out
//! ```
//!
//! With `--search`, it tunes a policy for the scenario(s) given instead: it prints the best
//! policies with their figures and the TOML to paste, and charts the best against the
//! scenario's own policies (`best.svg` for the first scenario):
//!
//! ```text
//! cargo run --release -p chassis-benches --bin resilience-sim -- --search \
//!     benches/scenarios/partial-brownout.toml benches/scenarios/full-outage.toml \
//!     --candidates 60 --weights success=1,p99=0.05,amplification=0.5 --max-amplification 1.2
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use chassis_benches::sim::search::{Objective, SearchSpace, search};
use chassis_benches::sim::{Scenario, Simulate, report};
use clap::Parser;

/// Command-line flags; the scenario file holds everything else.
#[derive(Debug, Parser)]
#[command(
    about = "Resilience-tuning simulator: compare client policies against a misbehaving downstream"
)]
struct Args {
    /// Scenario file(s) (TOML): duration, rate, downstream behaviour and the policies to
    /// compare. Several only with `--search`.
    #[arg(required = true)]
    scenarios: Vec<PathBuf>,
    /// Searches the policy parameters that score best on the scenario(s) instead.
    #[arg(long)]
    search: bool,
    /// With `--search`: how many points of the search space to run.
    #[arg(long, default_value_t = 60)]
    candidates: usize,
    /// With `--search`: how many of the best to print.
    #[arg(long, default_value_t = 3)]
    top: usize,
    /// With `--search`: objective weights, e.g. `success=1,p99=0.05,amplification=0.5`.
    #[arg(long)]
    weights: Option<String>,
    /// With `--search`: discard policies making more attempts per request than this.
    #[arg(long, default_value_t = 1.2)]
    max_amplification: f64,
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

fn load(path: &PathBuf, args: &Args) -> Result<Scenario, Box<dyn std::error::Error>> {
    let mut scenario = Scenario::load(path)?;
    if let Some(rate) = args.rate {
        scenario.rate = rate;
    }
    if let Some(seed) = args.seed {
        scenario.seed = seed;
    }
    if let Some(rate) = args.failure_rate {
        scenario.downstream.failure_rate = rate;
    }
    Ok(scenario)
}

fn objective(args: &Args) -> Result<Objective, Box<dyn std::error::Error>> {
    let mut objective = Objective {
        max_amplification: Some(args.max_amplification),
        ..Objective::default()
    };
    for pair in args.weights.iter().flat_map(|w| w.split(',')) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("--weights: `{pair}` is not key=value"))?;
        let value: f64 = value.parse()?;
        match key.trim() {
            "success" => objective.success = value,
            "p99" => objective.p99 = value,
            "amplification" => objective.amplification = value,
            other => return Err(format!("--weights: unknown weight `{other}`").into()),
        }
    }
    Ok(objective)
}

fn run_search(args: &Args, scenarios: &[Scenario]) -> Result<(), Box<dyn std::error::Error>> {
    let objective = objective(args)?;
    let found = search(
        scenarios,
        &objective,
        &SearchSpace::default(),
        args.candidates,
        scenarios[0].seed,
    )?;
    let Some(best) = found.first() else {
        return Err("no candidate stayed within the amplification bound".into());
    };
    for (rank, c) in found.iter().take(args.top).enumerate() {
        println!(
            "#{} (tried as {}), score {:.4}",
            rank + 1,
            c.policy.name,
            c.score
        );
        print!("{}", report::summary_table(&c.summaries));
        println!("config to paste:\n{}", c.snippet);
    }
    // The best against the first scenario's own policies (today's choices).
    let first = &scenarios[0];
    let mut results = first.run()?;
    results.summaries.push(best.summaries[0].clone());
    results
        .timelines
        .push(("best found".to_owned(), best.timelines[0].clone()));
    std::fs::create_dir_all(&args.out)?;
    let chart = args.out.join("best.svg");
    report::chart_svg(
        &chart,
        &results.timelines,
        first.rate,
        &first.downstream.outages,
    )?;
    println!("first scenario, the best found against its own policies:");
    print!("{}", report::summary_table(&results.summaries));
    println!("\nwrote {}", chart.display());
    Ok(())
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let scenarios = args
        .scenarios
        .iter()
        .map(|p| load(p, &args))
        .collect::<Result<Vec<_>, _>>()?;
    if args.search {
        return run_search(&args, &scenarios);
    }
    let [scenario] = &scenarios[..] else {
        return Err("give one scenario, or several with --search".into());
    };
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
