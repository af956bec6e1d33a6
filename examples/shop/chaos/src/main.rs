//! `cargo run --release -p shop-chaos -- --duration 10m --seed 7 --clients 8`: builds the shop's
//! services, runs them on a RabbitMQ node of its own, places orders while killing and restarting
//! each service in turn and restarting the broker, waits until the shop is quiet, checks the
//! invariants in the services' databases and prints the report (see the crate's README).
//! Exits with 1 when an invariant is broken (or quiescence was not reached), 2 when the run
//! itself failed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use shop_chaos::{ChaosConfig, run};
use shop_launcher::{Database, bin_dir, build_services};

/// Chaos run of the whole shop.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// How long faults are injected (`90s`, `10m`); at least one full round of faults is
    /// injected whatever the duration.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    duration: Duration,
    /// Seeds the fault schedule and the clients' choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Clients placing orders at once.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Mean gap between two faults.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    fault_interval: Duration,
    /// Pause between two orders of one client.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    think_time: Duration,
    /// How long to wait for quiescence after the faults.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    quiescence_timeout: Duration,
    /// `sqlite` (a file per service in the run directory) or `postgres=<url>` (a database per
    /// service on that server, created and dropped by the run).
    #[arg(long, default_value = "sqlite")]
    database: String,
    /// Where databases, the provider's ledger and logs go (default: a fresh temporary
    /// directory, deleted after a passing run).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Use the service binaries next to this one instead of running `cargo build`.
    #[arg(long)]
    no_build: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("bad duration {s:?}"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m, h)")),
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let release = !cfg!(debug_assertions);
    let bins = if args.no_build {
        match std::env::current_exe() {
            Ok(exe) => exe.parent().map(PathBuf::from).unwrap_or_default(),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        }
    } else {
        eprintln!("building the services…");
        match build_services(release) {
            Ok(_) => bin_dir(release),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        }
    };
    let keep = args.run_dir.is_some();
    let run_dir = args.run_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("shop-chaos-{}", uuid::Uuid::now_v7().simple()))
    });
    let mut config = ChaosConfig::new(bins, run_dir.clone());
    config.duration = args.duration;
    config.seed = args.seed;
    config.clients = args.clients.max(1);
    config.fault_interval = args.fault_interval;
    config.think_time = args.think_time;
    config.quiescence_timeout = args.quiescence_timeout;
    config.database = match args.database.split_once('=') {
        None if args.database == "sqlite" => Database::Sqlite,
        Some(("postgres", url)) => Database::Postgres {
            server_url: url.to_owned(),
            prefix: format!("chaos_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            drop_on_stop: true,
        },
        _ => {
            eprintln!("--database: expected `sqlite` or `postgres=postgres://user@host:port/db`");
            return ExitCode::from(2);
        }
    };
    eprintln!(
        "run directory {} (databases, provider ledger, logs)",
        run_dir.display()
    );
    match run(config).await {
        Ok(report) => {
            println!("{report}");
            if report.passed() {
                if !keep {
                    let _ = std::fs::remove_dir_all(&run_dir);
                }
                ExitCode::SUCCESS
            } else {
                eprintln!("run directory kept: {}", run_dir.display());
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!(
                "the chaos run failed: {e}; run directory kept: {}",
                run_dir.display()
            );
            ExitCode::from(2)
        }
    }
}
