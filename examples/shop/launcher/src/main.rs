//! `cargo run --release -p shop-launcher -- --orders 200 --concurrency 16`: checks that the
//! broker (and PostgreSQL) answer, builds and starts the whole shop, drives the demo workload,
//! prints the summary (outcomes, latency, CPU per order per process, p50/p99 per hop: see
//! `shop_launcher::measure`), stops everything and deletes the run's exchanges and queues (or keeps
//! the system running with `--keep-running` until SIGINT/SIGTERM). `--database
//! postgres[=URL]` runs every service on its own PostgreSQL database instead of a SQLite file.
//! `--redis URL --gateway-replicas N` starts N gateways, each on its own ports, keeping their
//! per-caller rate limits and idempotency keys in that Redis, and sends the workload round-robin
//! across them (N > 1 without `--redis` is refused: the limits would not be shared).
//! `--replicas orders=3,inventory=2,…` runs several processes of any service but the payment
//! provider, the gateways' calls spread over them (see `shop_launcher::replicas`); more than one
//! of a service with a database needs `--database postgres`, more than one gateway `--redis`.
//!
//! SIGINT (Ctrl-C) and SIGTERM stop it at any point: the build is abandoned, or every service
//! gets SIGTERM and drains (at most 30 s, then SIGKILL), and the topology is deleted. A second
//! signal during the drain kills the services at once.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use shop_launcher::measure;
use shop_launcher::workload::WorkloadConfig;
use shop_launcher::{
    BoxError, DEFAULT_POSTGRES_URL, DRAIN_TIMEOUT, Database, System, SystemConfig, bin_dir,
    build_command, cleanup, default_amqp_url, preflight,
};
use tokio::signal::unix::{Signal, SignalKind, signal};

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

/// A namespace name; the prefix is the name and a `.`.
fn parse_namespace(s: &str) -> Result<String, String> {
    let prefix = format!("{s}.");
    cleanup::check_namespace(&prefix)
        .map(|()| prefix)
        .map_err(|_| "expected 1..=63 of [A-Za-z0-9_.-], not `amq` nor starting with `amq.`".into())
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
    /// Keep the system running after the workload until SIGINT (Ctrl-C) or SIGTERM.
    #[arg(long)]
    keep_running: bool,
    /// Keep the namespace's exchanges and queues after the services stopped (by default they
    /// are deleted, dead-letter queues and retry tiers included).
    #[arg(long)]
    keep_topology: bool,
    /// Name of the exchange/queue namespace: every name starts with `<NAMESPACE>.` (default:
    /// a fresh `shop-<8 hex digits>`). An existing one is reused, and deleted at the end
    /// unless --keep-topology.
    #[arg(long, value_parser = parse_namespace)]
    namespace: Option<String>,
    /// Do not run `cargo build` first (use binaries next to this one).
    #[arg(long)]
    no_build: bool,
    /// Use the standard ports (gateway 8080 … provider 8090) instead of free ones.
    #[arg(long)]
    standard_ports: bool,
    /// Every service on HTTPS with mTLS between them: a development CA and a certificate per
    /// service are generated into `<run dir>/tls` (internal services accept only callers with a
    /// certificate from that CA; the gateway also serves clients without one).
    #[arg(long)]
    tls: bool,
    /// Only write the `--tls` certificates (a development CA, a certificate and key per service)
    /// into this directory and exit: for `examples/deploy` (Compose and Kubernetes names are
    /// in the certificates too).
    #[arg(long, value_name = "DIR")]
    write_certs: Option<PathBuf>,
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
    /// A Redis (`redis://host:port`) where every gateway keeps its per-caller rate limits and
    /// idempotency keys (under the run's namespace), so they hold across gateway replicas.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// Gateway processes to start, each on its own ports; the workload goes round-robin
    /// across them. More than one needs --redis. The same as `--replicas gateway=N`.
    #[arg(long, value_name = "N")]
    gateway_replicas: Option<usize>,
    /// Processes per service, `service=N,…` (e.g. `orders=3,inventory=2,payments=2`), each on
    /// its own ports, the calls to a service spread over its replicas. More than one of a
    /// service with a database needs --database postgres, more than one gateway --redis; the
    /// payment provider has one.
    #[arg(long, value_name = "SERVICE=N,...", value_parser = shop_launcher::replicas::parse)]
    replicas: Option<std::collections::BTreeMap<&'static str, usize>>,
    /// `spread`: each process (all its threads) on one CPU, round-robin over the CPUs the
    /// launcher may use, which saves the cross-CPU wake-ups of a service's threads handing work
    /// to each other (about a fifth less CPU per order on a 2-core VM); `inherit`: every
    /// process may run anywhere.
    #[arg(long, default_value = "spread", value_name = "spread|inherit")]
    cpu_placement: shop_launcher::affinity::CpuPlacement,
}

/// SIGINT and SIGTERM, installed at the start so that neither kills the launcher before it
/// has stopped the services.
#[derive(Debug)]
struct Signals {
    int: Signal,
    term: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// Waits for the next one; its name.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

/// The exit status for a run a signal cut short: 128 + the signal's number, as shells report a
/// program the signal ended (130 for SIGINT, 143 for SIGTERM).
fn interrupted(signal: &str) -> ExitCode {
    ExitCode::from(if signal == "SIGINT" { 130 } else { 143 })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<ExitCode, BoxError> {
    if !(0.0..=1.0).contains(&args.provider_failure_rate) {
        return Err("--provider-failure-rate must be within 0..=1".into());
    }
    let mut replicas = args.replicas.clone().unwrap_or_default();
    if let Some(n) = args.gateway_replicas {
        replicas.insert("gateway", n);
    }
    // Refused before anything is built or started.
    let database = match &args.database {
        DatabaseArg::Sqlite => Database::Sqlite,
        DatabaseArg::Postgres(url) => Database::postgres(url.clone(), args.database_prefix.clone()),
    };
    shop_launcher::replicas::check(&replicas, args.redis.is_some(), &database)?;
    if let Some(dir) = &args.write_certs {
        let pki = shop_launcher::tls::ShopPki::generate(dir)?;
        eprintln!(
            "wrote ca.pem and a certificate and key per service into {}",
            pki.dir().display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut signals = Signals::install()?;

    // The servers first: nothing is built or started while they do not answer.
    let amqp_url = default_amqp_url();
    let checks = async {
        preflight::ensure_rabbitmq(&amqp_url).await?;
        if let DatabaseArg::Postgres(url) = &args.database {
            preflight::ensure_postgres(url).await?;
        }
        Ok::<_, preflight::PreflightError>(())
    };
    tokio::select! {
        checked = checks => checked?,
        signal = signals.recv() => return Ok(interrupted(signal)),
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
        let mut build = tokio::process::Command::from(build_command(release));
        let mut cargo = build.kill_on_drop(true).spawn()?;
        tokio::select! {
            status = cargo.wait() => {
                let status = status?;
                if !status.success() {
                    return Err(format!("cargo build failed: {status}").into());
                }
            }
            signal = signals.recv() => {
                eprintln!("{signal}: build abandoned");
                return Ok(interrupted(signal));
            }
        }
        bin_dir(release)
    };
    let run_dir = args.run_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("shop-run-{}", uuid::Uuid::now_v7().simple()))
    });
    let mut config = SystemConfig::new(bin_dir, run_dir.clone());
    config.amqp_url = amqp_url;
    config.provider_failure_rate = args.provider_failure_rate;
    if let Some(namespace) = &args.namespace {
        config.namespace = namespace.clone();
    }
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
    config.tls = args.tls;
    config.redis_url = args.redis.clone();
    let processes: usize = shop_launcher::SERVICES
        .iter()
        .map(|s| replicas.get(s).copied().unwrap_or(1))
        .sum();
    config.replicas = replicas;
    config.cpu_placement = args.cpu_placement;
    eprintln!(
        "starting {} processes (logs and databases in {}, exchanges and queues {}*)…",
        processes,
        run_dir.display(),
        config.namespace
    );
    let mut system = System::launch(config).await?;

    let mut outcome = Outcome::Done(Ok(()));
    tokio::select! {
        ready = system.wait_ready(None) => {
            if let Err(e) = ready {
                outcome = Outcome::Done(Err(e));
            }
        }
        signal = signals.recv() => outcome = Outcome::Interrupted(signal),
    }
    if matches!(outcome, Outcome::Done(Ok(()))) {
        eprintln!(
            "all services ready; gateway at {}",
            system.gateway_urls().join(", ")
        );
        let cpus = system.cpus();
        if !cpus.is_empty() {
            let placed: Vec<String> = cpus.iter().map(|(n, c)| format!("{n} {c}")).collect();
            eprintln!("CPU of each process: {}", placed.join(", "));
        }
        outcome = drive(&system, &args, &mut signals).await;
    }
    if let Outcome::Interrupted(signal) = outcome {
        eprintln!("{signal} received");
    }
    let stopped = stop(system, &args, &mut signals).await;
    Ok(match (outcome, stopped) {
        (Outcome::Done(Err(e)), _) => return Err(e),
        (Outcome::Interrupted(signal), _) => interrupted(signal),
        (Outcome::Done(Ok(())), true) => ExitCode::SUCCESS,
        (Outcome::Done(Ok(())), false) => ExitCode::FAILURE,
    })
}

/// How the part between start and stop ended.
#[derive(Debug)]
enum Outcome {
    /// It ran to its end (with `--keep-running`, a signal is that end): the workload's result.
    Done(Result<(), BoxError>),
    /// A signal cut it short.
    Interrupted(&'static str),
}

/// The workload, then with `--keep-running` the wait for a signal.
async fn drive(system: &System, args: &Args, signals: &mut Signals) -> Outcome {
    let bar = ProgressBar::new(args.orders as u64);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} orders final ({per_sec})",
    ) {
        bar.set_style(style);
    }
    let workload_config = WorkloadConfig {
        orders: args.orders,
        concurrency: args.concurrency,
        declined_ratio: args.declined_ratio,
        tls: system.pki().cloned(),
        ..WorkloadConfig::default()
    };
    let result = tokio::select! {
        result = measure::run(system, &workload_config, Some(bar.clone())) => result,
        signal = signals.recv() => {
            bar.abandon();
            return Outcome::Interrupted(signal);
        }
    };
    let result = match result {
        Ok(summary) => {
            println!("\n{summary}");
            Ok(())
        }
        Err(e) => {
            eprintln!("workload failed: {e}");
            Err(e)
        }
    };
    if args.keep_running {
        eprintln!(
            "system running (gateway {}, API key demo-key-0001); Ctrl-C or SIGTERM stops it",
            system.url("gateway")
        );
        match system.serve_dashboard().await {
            Ok(url) => eprintln!("resilience dashboard: {url}"),
            Err(e) => eprintln!("no dashboard: {e}"),
        }
        let signal = signals.recv().await;
        eprintln!("{signal} received");
    }
    Outcome::Done(result)
}

/// Stops every service (a second signal kills them at once), then deletes the namespace's
/// exchanges and queues unless `--keep-topology`; whether every service exited cleanly. A
/// topology that could not be deleted (a remote broker: see `cleanup`) is reported in one line
/// but does not fail the run, which did what it was asked.
async fn stop(system: System, args: &Args, signals: &mut Signals) -> bool {
    let (amqp_url, namespace) = (system.amqp_url().to_owned(), system.namespace().to_owned());
    eprintln!(
        "stopping every service (SIGTERM, at most {} s to drain; a second signal kills them)…",
        DRAIN_TIMEOUT.as_secs()
    );
    let clean = tokio::select! {
        unclean = system.stop_within(DRAIN_TIMEOUT) => {
            if !unclean.is_empty() {
                eprintln!("did not exit cleanly: {unclean:?}");
            }
            unclean.is_empty()
        }
        // Dropping the stop drops the system, whose children are killed on drop.
        signal = signals.recv() => {
            eprintln!("{signal} again: killed every service");
            false
        }
    };
    if args.keep_topology {
        eprintln!("exchanges and queues {namespace}* kept (--keep-topology)");
        return clean;
    }
    match cleanup::delete_namespace(&amqp_url, &namespace).await {
        Ok(deleted) => eprintln!(
            "deleted {} queues and {} exchanges of {namespace}*",
            deleted.queues.len(),
            deleted.exchanges.len()
        ),
        Err(e) => eprintln!("{e}"),
    }
    clean
}
