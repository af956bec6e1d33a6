//! `cargo run --release -p shop-launcher -- --orders 200 --concurrency 16`: builds and starts the
//! whole shop, drives the demo workload, prints the summary, and stops everything (or keeps it
//! running with `--keep-running` until Ctrl-C). `--database postgres[=URL]` runs every service
//! on its own PostgreSQL database instead of a SQLite file.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use shop_launcher::workload::{self, WorkloadConfig};
use shop_launcher::{
    BoxError, DEFAULT_POSTGRES_URL, Database, System, SystemConfig, build_services,
};

/// `sqlite`, `postgres` or `postgres=<url>`.
fn parse_database(s: &str) -> Result<DatabaseArg, String> {
    match s.split_once('=') {
        None if s == "sqlite" => Ok(DatabaseArg::Sqlite),
        None if s == "postgres" => Ok(DatabaseArg::Postgres(DEFAULT_POSTGRES_URL.into())),
        Some(("postgres", url))
            if url.starts_with("postgres://") || url.starts_with("postgresql://") =>
        {
            Ok(DatabaseArg::Postgres(url.into()))
        }
        _ => Err("expected `sqlite`, `postgres` or `postgres=postgres://user@host:port/db`".into()),
    }
}

#[derive(Debug, Clone)]
enum DatabaseArg {
    Sqlite,
    Postgres(String),
}

/// Runs the shop example system and a demo workload.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Orders to place.
    #[arg(long, default_value_t = 200)]
    orders: usize,
    /// Orders in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Fraction (0..=1) of charges the payment provider fails.
    #[arg(long, default_value_t = 0.0)]
    provider_failure_rate: f64,
    /// Fraction of orders paying with the always-declined method.
    #[arg(long, default_value_t = 0.05)]
    declined_ratio: f64,
    /// Keep the system running after the workload until Ctrl-C.
    #[arg(long)]
    keep_running: bool,
    /// Do not run `cargo build` first (use binaries next to this one).
    #[arg(long)]
    no_build: bool,
    /// Use the standard ports (gateway 8080 … provider 8090) instead of free ones.
    #[arg(long)]
    standard_ports: bool,
    /// Where logs and SQLite databases go (default: a fresh temporary directory).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// `sqlite` (a file per service in the run directory), `postgres` (a database per service on
    /// the local server, postgres://postgres@127.0.0.1:5432) or `postgres=<url>` (any database
    /// URL on the server to use). PostgreSQL databases are created if missing and kept.
    #[arg(long, default_value = "sqlite", value_parser = parse_database)]
    database: DatabaseArg,
    /// Names of the PostgreSQL databases: `<prefix>_<service>`.
    #[arg(long, default_value = "shop")]
    database_prefix: String,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    if !(0.0..=1.0).contains(&args.provider_failure_rate) {
        return Err("--provider-failure-rate must be within 0..=1".into());
    }
    let release = !cfg!(debug_assertions);
    let bin_dir = if args.no_build {
        std::env::current_exe()?
            .parent()
            .ok_or("no binary directory")?
            .to_path_buf()
    } else {
        eprintln!(
            "building the services ({})…",
            if release { "release" } else { "debug" }
        );
        build_services(release)?
    };
    let run_dir = args.run_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("shop-run-{}", uuid::Uuid::now_v7().simple()))
    });
    let mut config = SystemConfig::new(bin_dir, run_dir.clone());
    config.provider_failure_rate = args.provider_failure_rate;
    if let DatabaseArg::Postgres(url) = &args.database {
        config.database = Database::postgres(url.clone(), args.database_prefix.clone());
        eprintln!(
            "databases: {} on PostgreSQL",
            shop_launcher::SERVICES_WITH_DATABASE
                .iter()
                .filter_map(|s| config.database.database_name(s))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if args.standard_ports {
        config = config.standard_ports();
    }
    eprintln!(
        "starting 6 processes (logs and databases in {})…",
        run_dir.display()
    );
    let system = System::start(config).await?;
    eprintln!("all services ready; gateway at {}", system.url("gateway"));

    let bar = ProgressBar::new(args.orders as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} orders final ({per_sec})",
        )
        .map_err(|e| e.to_string())?,
    );
    let workload_config = WorkloadConfig {
        orders: args.orders,
        concurrency: args.concurrency,
        declined_ratio: args.declined_ratio,
        ..WorkloadConfig::default()
    };
    let result = workload::run(system.url("gateway"), &workload_config, Some(bar)).await;
    match &result {
        Ok(summary) => println!("\n{summary}"),
        Err(e) => eprintln!("workload failed: {e}"),
    }
    if args.keep_running {
        eprintln!(
            "system running (gateway {}, API key demo-key-0001); Ctrl-C stops it",
            system.url("gateway")
        );
        tokio::signal::ctrl_c().await?;
    }
    eprintln!("stopping every service (SIGTERM)…");
    let unclean = tokio::time::timeout(Duration::from_secs(120), system.stop())
        .await
        .unwrap_or_default();
    if !unclean.is_empty() {
        eprintln!("did not exit cleanly: {unclean:?}");
    }
    result.map(|_| ())
}
