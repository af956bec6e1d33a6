//! HTTP server throughput (see benches/README.md "HTTP server"): the chassis stack as shipped vs
//! bare hyper, same handler, same process, alternated round by round.
//!
//! Two servers run in-process on one server runtime (one worker thread by default): "bare" is
//! hyper-util's auto connection builder serving a `service_fn` that answers `hello`; "chassis" is
//! `chassis_http::server::Server` serving the same handler behind the health endpoints and
//! `StandardLayers` (request id, trace, metrics, access log, catch panic, timeout, load shed, body
//! limit, error mapping). A lean load generator on its own runtime thread drives N keep-alive
//! HTTP/1.1 connections (one request in flight per connection) against one server for a fixed
//! time, then the other, alternating the order every round. Each round also reports the server's
//! CPU time per request (Linux schedstat): of the server worker thread, and of the whole process
//! but the load generator (which adds the log writer's and the span processor's threads). These
//! compare the two servers' costs even when other processes make the wall-clock rates noisy.
//!
//! Rows (each in a process of its own, since the tracing subscriber and the metrics recorder are
//! process-wide):
//!
//! - `telemetry` (the headline): `Telemetry::builder(..).init()` with its defaults (JSON logs at
//!   `info` through the chassis non-blocking writer into `io::sink()`, the OpenTelemetry layer
//!   with the default sampler, no export endpoint, the Prometheus recorder) and
//!   `StandardLayers::new()`: one access-log line per request, formatted and written.
//! - `telemetry-sampled`: the same telemetry, `StandardLayers::new().access_log_sample(0)`:
//!   successful requests get no access-log line (errors and slow requests still would).
//! - `no-subscriber`: no tracing subscriber at all, the Prometheus recorder only (spans and
//!   access-log lines are disabled callsites): the chassis layers' own cost.
//!
//! ```text
//! CARGO_TARGET_DIR=target/http-bench cargo bench -p chassis-http --bench http_load -- \
//!     --connections 32 --duration-ms 2000 --rounds 6 [--rows telemetry,telemetry-sampled,no-subscriber]
//! ```
//!
//! Without `--row`, the bench runs every row of `--rows` (default: all three) as a child process
//! and prints a summary table at the end. `--row NAME` runs one row in this process.
//! `--only bare|chassis` (with `--row`, default `telemetry`) drives one server and prints the
//! request count, for profiling one server at a time (instructions per request under
//! `valgrind --tool=callgrind`). `--layers-only` serves the chassis layers with the bare accept
//! loop instead of `Server`; `--no-metrics` leaves the Prometheus recorder out of the
//! `no-subscriber` row; `--telemetry-env` lets the telemetry rows read `RUST_LOG` and `OTEL_*`
//! (e.g. `OTEL_TRACES_SAMPLER=always_off`) as a service would.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use chassis_core::ServiceInfo;
use chassis_core::health::HealthRegistry;
use chassis_http::health::HealthLayer;
use chassis_http::layers::StandardLayers;
use chassis_http::server::{Server, ServerConfig};
use chassis_observability::Telemetry;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceBuilder;

mod load_support;

use load_support::{
    LoadArgs, bind_pair, client_runtime, complete_response, cpu_per_request, fmt_opt,
    measure_window, median, round_order, server_cpu,
};

/// What is installed around the chassis server in one row; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Row {
    /// Telemetry as shipped, one access-log line per request.
    Telemetry,
    /// Telemetry as shipped, successful requests' access-log lines sampled away.
    TelemetrySampled,
    /// No tracing subscriber; the Prometheus recorder unless `--no-metrics`.
    NoSubscriber,
}

const ALL_ROWS: [Row; 3] = [Row::Telemetry, Row::TelemetrySampled, Row::NoSubscriber];

impl Row {
    fn parse(name: &str) -> Row {
        match name {
            "telemetry" => Row::Telemetry,
            "telemetry-sampled" => Row::TelemetrySampled,
            "no-subscriber" => Row::NoSubscriber,
            other => panic!("rows: telemetry, telemetry-sampled, no-subscriber; not {other}"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Row::Telemetry => "telemetry",
            Row::TelemetrySampled => "telemetry-sampled",
            Row::NoSubscriber => "no-subscriber",
        }
    }

    fn layers(self) -> StandardLayers {
        match self {
            Row::TelemetrySampled => StandardLayers::new().access_log_sample(0),
            Row::Telemetry | Row::NoSubscriber => StandardLayers::new(),
        }
    }
}

#[derive(Debug)]
struct Args {
    load: LoadArgs<Row>,
    /// Whether the Prometheus recorder is installed in the `no-subscriber` row.
    metrics: bool,
    /// Let `Telemetry::builder` read `RUST_LOG`, `LOG_FORMAT` and `OTEL_*` as a service does
    /// (ignored by default, so that the shell cannot change what the headline measures).
    telemetry_env: bool,
    /// Serve the chassis layers with the bare accept loop instead of `Server` (isolates the
    /// cost of the layers from the cost of the runner).
    layers_only: bool,
    /// Drive only this server (`bare` or `chassis`) and report the request count: for
    /// profiling one server at a time (`valgrind --tool=callgrind`, `perf record`), not for
    /// the ratio.
    only: Option<String>,
}

impl std::ops::Deref for Args {
    type Target = LoadArgs<Row>;

    fn deref(&self) -> &LoadArgs<Row> {
        &self.load
    }
}

impl Args {
    fn parse() -> Self {
        let (mut metrics, mut telemetry_env, mut layers_only, mut only) =
            (true, false, false, None);
        let mut load = LoadArgs::parse(
            Duration::from_secs(3),
            &ALL_ROWS,
            Row::parse,
            |arg, value| match arg {
                "--no-metrics" => metrics = false,
                "--telemetry-env" => telemetry_env = true,
                "--layers-only" => layers_only = true,
                "--only" => {
                    let server = value();
                    assert!(
                        server == "bare" || server == "chassis",
                        "--only bare|chassis, not {server}"
                    );
                    only = Some(server);
                }
                _ => {}
            },
        );
        if only.is_some() && load.row.is_none() {
            load.row = Some(Row::Telemetry);
        }
        Args {
            load,
            metrics,
            telemetry_env,
            layers_only,
            only,
        }
    }
}

async fn hello(
    _req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    Ok(http::Response::new(Full::new(Bytes::from_static(b"hello"))))
}

async fn hello_limited<B>(
    _req: http::Request<B>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    Ok(http::Response::new(Full::new(Bytes::from_static(b"hello"))))
}

/// hyper-util's connection builder (HTTP/1.1 and h2) serving `service` on every connection
/// `listener` accepts: the runner without the chassis's.
async fn serve_on_bare_runner<S, B>(listener: TcpListener, service: S)
where
    S: tower::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        let service = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn serve_bare(listener: TcpListener) {
    serve_on_bare_runner(listener, tower::service_fn(hello)).await;
}

async fn serve_layers_on_bare_runner(listener: TcpListener, layers: StandardLayers) {
    let registry = HealthRegistry::new();
    registry.mark_started();
    let service = ServiceBuilder::new()
        .layer(HealthLayer::new(registry))
        .layer(layers)
        .service(tower::service_fn(hello_limited));
    serve_on_bare_runner(listener, service).await;
}

async fn serve_chassis(listener: TcpListener, layers: StandardLayers) {
    let registry = HealthRegistry::new();
    registry.mark_started();
    let service = ServiceBuilder::new()
        .layer(HealthLayer::new(registry.clone()))
        .layer(layers)
        .service(tower::service_fn(hello_limited));
    let server = Server::from_listener(listener, ServerConfig::default())
        .expect("valid config")
        .health(registry)
        .handle_signals(false);
    server.serve(service).await.expect("serve");
}

const REQUEST: &[u8] = b"GET /hello HTTP/1.1\r\nhost: 127.0.0.1\r\nuser-agent: http-load\r\n\r\n";

/// One connection: request, read the whole response, repeat until `stop`.
async fn drive(addr: SocketAddr, stop: Arc<AtomicBool>, done: Arc<AtomicU64>, bad: Arc<AtomicU64>) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut buf = vec![0u8; 8192];
    while !stop.load(Ordering::Relaxed) {
        stream.write_all(REQUEST).await.expect("write");
        let mut filled = 0;
        loop {
            let n = stream.read(&mut buf[filled..]).await.expect("read");
            assert!(n > 0, "server closed the connection");
            filled += n;
            if let Some(total) = complete_response(&buf[..filled]) {
                assert_eq!(total, filled, "one response at a time");
                if !buf.starts_with(b"HTTP/1.1 200") {
                    bad.fetch_add(1, Ordering::Relaxed);
                }
                break;
            }
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
}

/// CPU time used so far by every thread of this process but the calling one (the load
/// generator runs on the main thread): the server worker plus the log writer's and the span
/// processor's threads, whose work a request causes off its own path.
fn process_cpu_but_this_thread() -> Option<Duration> {
    let own: u64 = std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let mut all = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let path = task.ok()?.path().join("schedstat");
        // A thread that ended meanwhile has no file any more: its time is lost either way.
        if let Ok(stat) = std::fs::read_to_string(path) {
            all += stat.split_whitespace().next()?.parse::<u64>().ok()?;
        }
    }
    Some(Duration::from_nanos(all.checked_sub(own)?))
}

fn fmt_cpu(us: Option<f64>) -> String {
    us.map_or("n/a".into(), |us| format!("{us:.2} us"))
}

/// Drives `connections` connections against `addr` for `duration`; returns requests/s during
/// the measured window, non-200 responses, and all requests sent (warm-up included).
async fn measure(addr: SocketAddr, connections: usize, duration: Duration) -> (f64, u64, u64) {
    measure_window(connections, duration, |c| {
        tokio::spawn(drive(addr, c.stop, c.done, c.bad))
    })
    .await
}

/// Server CPU before a measurement: (worker thread, process but the load generator).
struct CpuMark(Option<Duration>, Option<Duration>);

impl CpuMark {
    fn now(server_rt: &tokio::runtime::Runtime) -> Self {
        CpuMark(server_cpu(server_rt), process_cpu_but_this_thread())
    }

    /// CPU per request since `self` (worker, process), in microseconds.
    fn per_request(
        &self,
        server_rt: &tokio::runtime::Runtime,
        total: u64,
    ) -> (Option<f64>, Option<f64>) {
        let after = CpuMark::now(server_rt);
        (
            cpu_per_request(self.0, after.0, total),
            cpu_per_request(self.1, after.1, total),
        )
    }
}

/// Runs every row of `args.rows` as a child process and prints their summaries as a table.
fn run_rows(args: &Args) {
    load_support::run_rows(
        &args.raw,
        args.rows.iter().map(|row| row.name()),
        "| row | bare req/s | chassis req/s | ratio of means | median round ratio | worker CPU/req bare | chassis | bare/chassis | process CPU/req bare | chassis | bare/chassis |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    );
}

fn main() {
    let args = Args::parse();
    let Some(row) = args.row else {
        run_rows(&args);
        return;
    };
    let server_rt = args.server_runtime();
    // Kept alive for the whole run: dropping it flushes and stops the log writer.
    let _telemetry = match row {
        Row::Telemetry | Row::TelemetrySampled => {
            // Inside the runtime, as in a service's `main`: the recorder's upkeep task runs there.
            // The environment is ignored (unless `--telemetry-env`) so that `RUST_LOG` or
            // `OTEL_*` in the shell cannot change what is measured.
            let guard = server_rt.block_on(async {
                let builder = Telemetry::builder(ServiceInfo::new("http-load", "1.0.0"));
                let builder = if args.telemetry_env {
                    builder
                } else {
                    builder.ignore_env()
                };
                builder.writer(std::io::sink()).init().expect("telemetry")
            });
            Some(guard)
        }
        Row::NoSubscriber => {
            if args.metrics {
                metrics_exporter_prometheus::PrometheusBuilder::new()
                    .install_recorder()
                    .expect("install the Prometheus recorder");
            }
            None
        }
    };

    let (bare_addr, chassis_addr) = bind_pair(&server_rt, |bare, chassis| {
        tokio::spawn(serve_bare(bare));
        if args.layers_only {
            tokio::spawn(serve_layers_on_bare_runner(chassis, row.layers()));
        } else {
            tokio::spawn(serve_chassis(chassis, row.layers()));
        }
    });

    let client_rt = client_runtime();
    println!(
        "row={} connections={} duration={:?} rounds={} server_threads={} metrics={} layers_only={} \
         telemetry_env={}",
        row.name(),
        args.connections,
        args.duration,
        args.rounds,
        args.server_threads,
        args.metrics || row != Row::NoSubscriber,
        args.layers_only,
        args.telemetry_env,
    );
    if let Some(only) = &args.only {
        let addr = if only == "bare" {
            bare_addr
        } else {
            chassis_addr
        };
        for round in 0..args.rounds {
            let mark = CpuMark::now(&server_rt);
            let (rps, bad, total) =
                client_rt.block_on(measure(addr, args.connections, args.duration));
            let (worker, process) = mark.per_request(&server_rt, total);
            assert_eq!(bad, 0, "{only}: non-200 responses");
            println!(
                "round {round}: {only} {rps:>9.0} req/s, {total} requests in all, server CPU/req: \
                 worker {}, process {}",
                fmt_cpu(worker),
                fmt_cpu(process)
            );
        }
        drop(server_rt);
        return;
    }
    let (mut bare_total, mut chassis_total) = (0.0, 0.0);
    let mut ratios = Vec::new();
    let (mut worker_bare, mut worker_chassis) = (Vec::new(), Vec::new());
    let (mut process_bare, mut process_chassis) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let (mut bare, mut chassis) = (0.0, 0.0);
        let (mut bare_cpu, mut chassis_cpu) = ((None, None), (None, None));
        for (name, addr) in round_order(round, bare_addr, chassis_addr) {
            let mark = CpuMark::now(&server_rt);
            let (rps, bad, total) =
                client_rt.block_on(measure(addr, args.connections, args.duration));
            let cpu = mark.per_request(&server_rt, total);
            assert_eq!(bad, 0, "{name}: non-200 responses");
            if name == "bare" {
                (bare, bare_cpu) = (rps, cpu);
            } else {
                (chassis, chassis_cpu) = (rps, cpu);
            }
        }
        bare_total += bare;
        chassis_total += chassis;
        ratios.push(chassis / bare);
        worker_bare.extend(bare_cpu.0);
        worker_chassis.extend(chassis_cpu.0);
        process_bare.extend(bare_cpu.1);
        process_chassis.extend(chassis_cpu.1);
        println!(
            "round {round}: bare {bare:>9.0} req/s   chassis {chassis:>9.0} req/s   ratio {:.3}   \
             server CPU/req: worker bare {} chassis {}, process bare {} chassis {}",
            chassis / bare,
            fmt_cpu(bare_cpu.0),
            fmt_cpu(chassis_cpu.0),
            fmt_cpu(bare_cpu.1),
            fmt_cpu(chassis_cpu.1),
        );
    }
    let n = args.rounds as f64;
    let median_ratio = median(ratios).unwrap_or(f64::NAN);
    let (wb, wc) = (median(worker_bare), median(worker_chassis));
    let (pb, pc) = (median(process_bare), median(process_chassis));
    println!(
        "mean: bare {:.0} req/s, chassis {:.0} req/s, ratio of means {:.3}, median round ratio {:.3}",
        bare_total / n,
        chassis_total / n,
        chassis_total / bare_total,
        median_ratio,
    );
    let ratio = |b: Option<f64>, c: Option<f64>| fmt_opt(b.zip(c).map(|(b, c)| b / c), 3);
    let [wb, wc, wr, pb, pc, pr] = [
        fmt_opt(wb, 2),
        fmt_opt(wc, 2),
        ratio(wb, wc),
        fmt_opt(pb, 2),
        fmt_opt(pc, 2),
        ratio(pb, pc),
    ];
    println!(
        "server CPU per request (median of rounds, us): worker bare {wb} chassis {wc} \
         (bare/chassis {wr}), process bare {pb} chassis {pc} (bare/chassis {pr})",
    );
    println!(
        "SUMMARY | {} | {:.0} | {:.0} | {:.3} | {:.3} | {wb} | {wc} | {wr} | {pb} | {pc} | {pr} |",
        row.name(),
        bare_total / n,
        chassis_total / n,
        chassis_total / bare_total,
        median_ratio,
    );
    drop(server_rt);
}
