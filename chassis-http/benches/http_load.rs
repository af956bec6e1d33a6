//! HTTP server throughput (run with `cargo bench`, see benches/README.md "HTTP server"): the full default chassis stack vs bare hyper, same handler, same run.
//!
//! Two servers run in-process on one server runtime (one worker thread by default): "bare" is
//! hyper-util's auto connection builder serving a `service_fn` that answers `hello`; "chassis" is
//! `chassis_http::server::Server` serving the same handler behind the health endpoints and
//! `StandardLayers::new()` (request id, trace, metrics, access log, catch panic, timeout, load
//! shed, body limit, error mapping). A lean load generator on its own runtime thread drives N
//! keep-alive HTTP/1.1 connections (one request in flight per connection) against one server for
//! a fixed time, then the other, alternating, for several rounds. Each round also reports the
//! server worker's CPU time per request (Linux schedstat), which compares the two servers' costs
//! even when other processes make the wall-clock rates noisy.
//!
//! ```text
//! CARGO_TARGET_DIR=... cargo bench -p chassis-http --bench http_load -- \
//!     --connections 32 --duration-ms 2000 --rounds 6 [--logs json-sink] [--no-metrics] [--layers-only]
//! ```
//!
//! `--only bare|chassis` drives one server and prints the request count, for profiling one
//! server at a time (e.g. instructions per request under `valgrind --tool=callgrind`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chassis_core::health::HealthRegistry;
use chassis_http::health::HealthLayer;
use chassis_http::layers::StandardLayers;
use chassis_http::server::{Server, ServerConfig};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceBuilder;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Logs {
    /// No tracing subscriber: spans and access logs are disabled callsites.
    Off,
    /// A JSON subscriber at INFO writing to a sink: spans and access-log lines are built and
    /// formatted, not written.
    JsonSink,
}

#[derive(Debug)]
struct Args {
    /// Keep-alive connections driven concurrently.
    connections: usize,
    /// Measurement time per server per round.
    duration: Duration,
    /// Rounds (bare then chassis on even rounds, chassis then bare on odd ones).
    rounds: usize,
    /// Worker threads of the server runtime.
    server_threads: usize,
    /// Tracing subscriber installed during the run.
    logs: Logs,
    /// Whether the Prometheus recorder is installed.
    metrics: bool,
    /// Serve the chassis layers with the bare accept loop instead of `Server` (isolates the
    /// cost of the layers from the cost of the runner).
    layers_only: bool,
    /// Drive only this server (`bare` or `chassis`) and report the request count: for
    /// profiling one server at a time (`valgrind --tool=callgrind`, `perf record`), not for
    /// the ratio.
    only: Option<String>,
}

impl Args {
    fn parse() -> Self {
        let mut args = Args {
            connections: 32,
            duration: Duration::from_secs(3),
            rounds: 5,
            server_threads: 1,
            logs: Logs::Off,
            metrics: true,
            layers_only: false,
            only: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            let mut value = || it.next().unwrap_or_else(|| panic!("{arg} needs a value"));
            match arg.as_str() {
                "--connections" => args.connections = value().parse().expect("a number"),
                "--duration-ms" => {
                    args.duration = Duration::from_millis(value().parse().expect("a number"))
                }
                "--rounds" => args.rounds = value().parse().expect("a number"),
                "--server-threads" => args.server_threads = value().parse().expect("a number"),
                "--logs" => {
                    args.logs = match value().as_str() {
                        "off" => Logs::Off,
                        "json-sink" => Logs::JsonSink,
                        other => panic!("--logs off|json-sink, not {other}"),
                    }
                }
                "--no-metrics" => args.metrics = false,
                "--layers-only" => args.layers_only = true,
                "--only" => {
                    let server = value();
                    assert!(
                        server == "bare" || server == "chassis",
                        "--only bare|chassis, not {server}"
                    );
                    args.only = Some(server);
                }
                // `cargo bench` passes `--bench` to harness-less targets.
                _ => {}
            }
        }
        args
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

async fn serve_bare(listener: TcpListener) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = TowerToHyperService::new(tower::service_fn(hello));
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn serve_layers_on_bare_runner(listener: TcpListener) {
    let registry = HealthRegistry::new();
    registry.mark_started();
    let service = ServiceBuilder::new()
        .layer(HealthLayer::new(registry))
        .layer(StandardLayers::new())
        .service(tower::service_fn(hello_limited));
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

async fn serve_chassis(listener: TcpListener) {
    let registry = HealthRegistry::new();
    registry.mark_started();
    let service = ServiceBuilder::new()
        .layer(HealthLayer::new(registry.clone()))
        .layer(StandardLayers::new())
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

/// CPU time the server runtime's worker thread has used so far (Linux schedstat), read on that
/// thread. Both servers run on that one worker, so its CPU time per request compares their
/// costs even when other processes make the wall-clock rates noisy.
fn server_cpu(server_rt: &tokio::runtime::Runtime) -> Option<Duration> {
    server_rt.block_on(async {
        tokio::spawn(async {
            let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
            let ns = stat.split_whitespace().next()?.parse().ok()?;
            Some(Duration::from_nanos(ns))
        })
        .await
        .expect("schedstat task")
    })
}

/// Server CPU time per request over one measurement (warm-up included, like `total`).
fn cpu_per_request(before: Option<Duration>, after: Option<Duration>, total: u64) -> Option<f64> {
    let spent = after?.checked_sub(before?)?;
    (total > 0).then(|| spent.as_secs_f64() * 1e6 / total as f64)
}

fn fmt_cpu(us: Option<f64>) -> String {
    us.map_or("n/a".into(), |us| format!("{us:.2} us"))
}

/// Length of the response in `buf` if it is complete (head + content-length body).
fn complete_response(buf: &[u8]) -> Option<usize> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let len = head
        .split("\r\n")
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    (buf.len() >= head_end + len).then_some(head_end + len)
}

/// Drives `connections` connections against `addr` for `duration`; returns requests/s during
/// the measured window, non-200 responses, and all requests sent (warm-up included).
async fn measure(addr: SocketAddr, connections: usize, duration: Duration) -> (f64, u64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(drive(addr, stop.clone(), done.clone(), bad.clone())))
        .collect();
    // Warm-up: let every connection get going before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start_count = done.load(Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(duration).await;
    let count = done.load(Ordering::Relaxed) - start_count;
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("driver task");
    }
    (
        count as f64 / elapsed.as_secs_f64(),
        bad.load(Ordering::Relaxed),
        done.load(Ordering::Relaxed),
    )
}

fn main() {
    let args = Args::parse();
    if args.metrics {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .expect("install the Prometheus recorder");
    }
    if args.logs == Logs::JsonSink {
        tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::INFO)
            .with_writer(std::io::sink)
            .init();
    }

    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.server_threads)
        .enable_all()
        .build()
        .expect("server runtime");
    let (bare_addr, chassis_addr) = server_rt.block_on(async {
        let bare = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let chassis = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addrs = (bare.local_addr().unwrap(), chassis.local_addr().unwrap());
        tokio::spawn(serve_bare(bare));
        if args.layers_only {
            tokio::spawn(serve_layers_on_bare_runner(chassis));
        } else {
            tokio::spawn(serve_chassis(chassis));
        }
        addrs
    });

    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    println!(
        "connections={} duration={:?} rounds={} server_threads={} logs={:?} metrics={} layers_only={}",
        args.connections,
        args.duration,
        args.rounds,
        args.server_threads,
        args.logs,
        args.metrics,
        args.layers_only
    );
    if let Some(only) = &args.only {
        let addr = if only == "bare" {
            bare_addr
        } else {
            chassis_addr
        };
        for round in 0..args.rounds {
            let cpu_before = server_cpu(&server_rt);
            let (rps, bad, total) =
                client_rt.block_on(measure(addr, args.connections, args.duration));
            let cpu = cpu_per_request(cpu_before, server_cpu(&server_rt), total);
            assert_eq!(bad, 0, "{only}: non-200 responses");
            println!(
                "round {round}: {only} {rps:>9.0} req/s, {total} requests in all, server CPU {}",
                fmt_cpu(cpu)
            );
        }
        drop(server_rt);
        return;
    }
    let (mut bare_total, mut chassis_total) = (0.0, 0.0);
    let mut ratios = Vec::new();
    let mut cpu_ratios = Vec::new();
    for round in 0..args.rounds {
        let order = if round % 2 == 0 {
            [("bare", bare_addr), ("chassis", chassis_addr)]
        } else {
            [("chassis", chassis_addr), ("bare", bare_addr)]
        };
        let (mut bare, mut chassis) = (0.0, 0.0);
        let (mut bare_cpu, mut chassis_cpu) = (None, None);
        for (name, addr) in order {
            let cpu_before = server_cpu(&server_rt);
            let (rps, bad, total) =
                client_rt.block_on(measure(addr, args.connections, args.duration));
            let cpu = cpu_per_request(cpu_before, server_cpu(&server_rt), total);
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
        let cpu_ratio = bare_cpu.zip(chassis_cpu).map(|(b, c)| b / c);
        if let Some(r) = cpu_ratio {
            cpu_ratios.push(r);
        }
        println!(
            "round {round}: bare {bare:>9.0} req/s   chassis {chassis:>9.0} req/s   ratio {:.3}   \
             server CPU/req: bare {} chassis {} (bare/chassis {})",
            chassis / bare,
            fmt_cpu(bare_cpu),
            fmt_cpu(chassis_cpu),
            cpu_ratio.map_or("n/a".into(), |r| format!("{r:.3}")),
        );
    }
    let n = args.rounds as f64;
    ratios.sort_by(f64::total_cmp);
    println!(
        "mean: bare {:.0} req/s, chassis {:.0} req/s, ratio of means {:.3}, median round ratio {:.3}",
        bare_total / n,
        chassis_total / n,
        chassis_total / bare_total,
        ratios[ratios.len() / 2]
    );
    if !cpu_ratios.is_empty() {
        cpu_ratios.sort_by(f64::total_cmp);
        println!(
            "server CPU per request, bare/chassis: median round {:.3}",
            cpu_ratios[cpu_ratios.len() / 2]
        );
    }
    drop(server_rt);
}
