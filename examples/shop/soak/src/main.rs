//! `shop-soak --rate 20 --duration 30m --sample 10s --out soak-out`: starts the shop, places
//! orders at a steady rate, samples memory, descriptors, database connections and queue depths,
//! and fails when a service's memory grows beyond the limit after the warm-up (see the
//! library's docs for the files and the criterion).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use shop_launcher::preflight::{self, Endpoint};
use shop_launcher::{DRAIN_TIMEOUT, SERVICES, System, SystemConfig, binary_name, cleanup};
use shop_soak::analysis::{self, Sample, Table};
use shop_soak::load::{self, LoadConfig, LoadStats};
use shop_soak::{BoxError, chart, parse_duration, probe, queues, utc_date};

/// Soak run of the shop: steady load, memory/descriptor/queue sampling, leak criterion.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Orders per second (open loop).
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// How long to place orders (`30s`, `30m`, `1h`).
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    duration: Duration,
    /// Sampling interval.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    sample: Duration,
    /// Warm-up left out of the memory criterion (default: 10 % of the duration).
    #[arg(long, value_parser = parse_duration)]
    warmup: Option<Duration>,
    /// Largest memory growth after the warm-up that passes, %.
    #[arg(long, default_value_t = 10.0)]
    limit_pct: f64,
    /// Where the CSV files, the SVG and the summary go.
    #[arg(long, default_value = "soak-out")]
    out: PathBuf,
    /// Where the service binaries are (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Fraction of orders paying with the always-declined method.
    #[arg(long, default_value_t = 0.05)]
    declined_ratio: f64,
    /// Orders in flight at most (a tick finding this many skips its order, counted).
    #[arg(long, default_value_t = 5000)]
    max_in_flight: usize,
    /// How long the payment-provider stand-in keeps its answers (idempotency keys, charges)
    /// in memory (default: half the warm-up). A processor's window is a day; a soak needs the
    /// stand-in's memory to reach its steady state before the warm-up ends, or the criterion
    /// would judge the window filling, not a leak.
    #[arg(long, value_parser = parse_duration)]
    provider_retention: Option<Duration>,
}

/// Plenty of stock for hours of orders, and the scarce product as in the demo (its sixth
/// order fails `out_of_stock`, which keeps the compensation path busy).
const SEED: &str = "tea:Green tea:450:1000000000,mug:Mug:1200:1000000000,\
kettle:Kettle:3900:1000000000,scarce:Last edition teapot:9900:5";

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("soak could not run: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<ExitCode, BoxError> {
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        return Err("--rate must be positive".into());
    }
    let warmup = args.warmup.unwrap_or(args.duration / 10);
    let amqp_url = shop_launcher::default_amqp_url();
    let vhost = Endpoint::parse(&amqp_url, 5672)?.path;
    preflight::ensure_rabbitmq(&amqp_url).await?;
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .ok_or("no binary directory")?
            .to_path_buf(),
    };
    for s in SERVICES {
        if !bin_dir.join(binary_name(s)).exists() {
            return Err(format!(
                "{} is missing in {}: build the services first (cargo build --release -p \
                 shop-soak -p shop-launcher -p shop-gateway -p shop-orders -p shop-inventory -p \
                 shop-payments -p shop-notifications -p shop-payment-provider)",
                binary_name(s),
                bin_dir.display()
            )
            .into());
        }
    }
    std::fs::create_dir_all(&args.out)?;
    let run_dir = std::env::temp_dir().join(format!("shop-soak-{}", uuid::Uuid::now_v7().simple()));
    let mut config = SystemConfig::new(bin_dir, run_dir.clone());
    config.amqp_url = amqp_url.clone();
    config.inventory_seed = Some(SEED.into());
    let retention = args.provider_retention.unwrap_or(warmup / 2);
    config.extra_env.push((
        "PROVIDER_RETENTION".into(),
        format!("{}ms", retention.as_millis().max(1)),
    ));
    eprintln!(
        "starting the shop (run directory {}, queues {}*)…",
        run_dir.display(),
        config.namespace
    );
    let namespace = config.namespace.clone();
    let result = soak(config, &args, warmup, &vhost).await;
    match cleanup::delete_namespace(&amqp_url, &namespace).await {
        Ok(d) => eprintln!(
            "deleted {} queues and {} exchanges of {namespace}*",
            d.queues.len(),
            d.exchanges.len()
        ),
        Err(e) => eprintln!("{e}"),
    }
    if let Err(e) = std::fs::remove_dir_all(&run_dir) {
        eprintln!("could not remove {}: {e}", run_dir.display());
    }
    let (rows, stats, interrupted, exited) = result?;
    report(&args, warmup, &rows, &stats, &exited, interrupted)
}

/// Starts the system, drives it while sampling, stops it: the samples, the load's figures,
/// the signal that cut the run short (if one did) and the services that exited meanwhile.
async fn soak(
    config: SystemConfig,
    args: &Args,
    warmup: Duration,
    vhost: &str,
) -> Result<(Vec<Sample>, LoadStats, Option<&'static str>, Vec<String>), BoxError> {
    let mut system = System::launch(config).await?;
    if let Err(e) = system.wait_ready(None).await {
        system.stop().await;
        return Err(e);
    }
    let pids = system.pids();
    eprintln!(
        "all services ready; {} orders/s for {:?} (warm-up {:?}), a sample every {:?}",
        args.rate, args.duration, warmup, args.sample
    );
    let stop = Arc::new(AtomicBool::new(false));
    let load_config = LoadConfig {
        rate: args.rate,
        duration: args.duration,
        api_key: "demo-key-0001".into(),
        declined_ratio: args.declined_ratio,
        scarce_ratio: 0.05,
        order_timeout: Duration::from_secs(60),
        max_in_flight: args.max_in_flight,
    };
    let start = Instant::now();
    let loaded = async {
        let stats = load::run(system.url("gateway"), &load_config, &stop).await;
        stop.store(true, Ordering::SeqCst);
        stats
    };
    let sampled = sample_until(&pids, vhost, system.namespace(), args.sample, start, &stop);
    let mut signals = Signals::install()?;
    let (stats, (rows, exited), interrupted) = {
        let work = async { tokio::join!(loaded, sampled) };
        tokio::pin!(work);
        tokio::select! {
            (stats, sampled) = &mut work => (stats, sampled, None),
            signal = signals.recv() => {
                eprintln!("{signal}: stopping the load early");
                stop.store(true, Ordering::SeqCst);
                let (stats, sampled) = work.await;
                (stats, sampled, Some(signal))
            }
        }
    };
    eprintln!("stopping every service…");
    let unclean = system.stop_within(DRAIN_TIMEOUT).await;
    if !unclean.is_empty() {
        eprintln!("did not exit cleanly: {unclean:?}");
    }
    Ok((rows, stats, interrupted, exited))
}

/// Samples every process and the namespace's queues every `interval` (from `start`) until
/// `stop`, then once more; the rows and the services whose process was gone.
async fn sample_until(
    pids: &[(String, u32)],
    vhost: &str,
    namespace: &str,
    interval: Duration,
    start: Instant,
    stop: &AtomicBool,
) -> (Vec<Sample>, Vec<String>) {
    let mut rows = Vec::new();
    let mut exited = Vec::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut queue_error_reported = false;
    loop {
        let last = stop.load(Ordering::SeqCst);
        let t = start.elapsed().as_secs_f64();
        for (name, pid) in pids {
            match probe::sample(*pid) {
                Some(figures) => rows.push(Sample::process(t, name, *pid, figures)),
                None if !exited.contains(name) => {
                    eprintln!("{name} (pid {pid}) is gone at {t:.0} s");
                    exited.push(name.clone());
                }
                None => {}
            }
        }
        match queues::depths(vhost, namespace).await {
            Ok(depths) => rows.extend(
                depths
                    .into_iter()
                    .map(|(q, m)| Sample::queue(t, q.strip_prefix(namespace).unwrap_or(&q), m)),
            ),
            Err(e) if !queue_error_reported => {
                eprintln!("queue depths not sampled: {e}");
                queue_error_reported = true;
            }
            Err(_) => {}
        }
        if last {
            break;
        }
        // Wake at the next tick, or as soon as the load is over (checked each second).
        let next = tick.tick();
        tokio::pin!(next);
        loop {
            tokio::select! {
                _ = &mut next => break,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    if stop.load(Ordering::SeqCst) { break; }
                }
            }
        }
    }
    (rows, exited)
}

/// Writes the files, prints the summary, returns the exit status.
fn report(
    args: &Args,
    warmup: Duration,
    rows: &[Sample],
    stats: &LoadStats,
    exited: &[String],
    interrupted: Option<&'static str>,
) -> Result<ExitCode, BoxError> {
    let verdicts = analysis::analyse(rows, warmup.as_secs_f64(), args.limit_pct, &SERVICES);
    let depths = analysis::queue_depths(rows);
    let date = utc_date(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)?
            .as_secs(),
    );
    let out = &args.out;
    let mut csv = create(&out.join("samples.csv"))?;
    analysis::write_csv(&mut csv, rows)?;
    csv.flush()?;
    let mut csv = create(&out.join("summary.csv"))?;
    analysis::write_summary_csv(&mut csv, &verdicts)?;
    csv.flush()?;
    let title = format!(
        "shop soak {date}: {} orders/s for {}, warm-up {} excluded",
        args.rate,
        human(args.duration),
        human(warmup)
    );
    chart::draw(&out.join("soak.svg"), rows, &title)?;

    let mut text = format!("{title}\n\n{}\n", Table(&verdicts));
    let (queue, max) = depths
        .iter()
        .max_by_key(|(_, (max, _))| *max)
        .map_or(("-", 0), |(q, (max, _))| (q.as_str(), *max));
    let left: u64 = depths.values().map(|(_, last)| last).sum();
    text.push_str(&format!(
        "queues: {} sampled, deepest {max} messages ({queue}), {left} messages left at the end\n",
        depths.len()
    ));
    text.push_str(&format!("{stats}\n"));
    let breached: Vec<&str> = verdicts
        .iter()
        .filter(|v| v.pass != Some(true))
        .map(|v| v.service.as_str())
        .collect();
    let passed = breached.is_empty() && exited.is_empty();
    if !exited.is_empty() {
        text.push_str(&format!("exited during the run: {exited:?}\n"));
    }
    text.push_str(&if passed {
        format!(
            "PASS: every service within +{} % after the warm-up\n",
            args.limit_pct
        )
    } else {
        format!(
            "FAIL: not within +{} % (or not judged): {breached:?}\n",
            args.limit_pct
        )
    });
    std::fs::write(out.join("summary.txt"), &text)?;
    println!("{text}");
    eprintln!(
        "wrote samples.csv, summary.csv, summary.txt and soak.svg in {}",
        out.display()
    );
    Ok(match interrupted {
        Some("SIGINT") => ExitCode::from(130),
        Some(_) => ExitCode::from(143),
        None if passed => ExitCode::SUCCESS,
        None => ExitCode::FAILURE,
    })
}

/// `45 s` under two minutes, `30 min` from there on.
fn human(d: Duration) -> String {
    if d < Duration::from_secs(120) {
        format!("{:.0} s", d.as_secs_f64())
    } else {
        format!("{:.1} min", d.as_secs_f64() / 60.0)
    }
}

fn create(path: &Path) -> Result<std::io::BufWriter<std::fs::File>, BoxError> {
    Ok(std::io::BufWriter::new(
        std::fs::File::create(path).map_err(|e| format!("creating {}: {e}", path.display()))?,
    ))
}

/// SIGINT and SIGTERM, so that a signal stops the load and still stops the services.
#[derive(Debug)]
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}
