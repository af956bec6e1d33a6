//! gRPC server throughput (see benches/README.md "gRPC server"): unary RPCs/s through the
//! chassis stack vs a bare tonic server, same handler, same client, same process, alternated
//! round by round.
//!
//! Both servers run in-process on one server runtime (one worker thread) and serve the same
//! tonic service, the `grpc.health.v1` `Check` of [`GrpcHealth`] over an empty registry
//! (a unary call with a small request and response):
//!
//! - **bare**: `tonic::transport::Server` serving that service alone (no router);
//! - **chassis**: `chassis_http::server::Server` serving `GrpcLayers` (trace context and server
//!   span, `rpc_server_call_duration_seconds`, status mapping, panic catching, load shedding,
//!   `grpc-timeout`) around a `GrpcRouter` holding the service.
//!
//! The Prometheus recorder is installed (the metrics are recorded); there is no tracing
//! subscriber (spans are disabled callsites), as in the HTTP bench's `no-subscriber` row. The
//! client, on its own runtime thread, opens `--connections` tonic channels (HTTP/2) and keeps
//! `--in-flight` calls running on each, for `--duration-ms` per server per round; every answer
//! must be `SERVING`.
//!
//! ```text
//! cargo bench -p chassis-http --features grpc --bench grpc_load -- \
//!     --connections 4 --in-flight 8 --duration-ms 2000 --rounds 6
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chassis_core::health::HealthRegistry;
use chassis_core::shutdown::Shutdown;
use chassis_http::grpc::{GrpcHealth, GrpcLayers, GrpcRouter};
use chassis_http::server::{Server, ServerConfig};
use tokio::net::TcpListener;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::Layer as _;

struct Args {
    connections: usize,
    in_flight: usize,
    duration: Duration,
    rounds: usize,
}

impl Args {
    fn parse() -> Self {
        let mut args = Args {
            connections: 4,
            in_flight: 8,
            duration: Duration::from_secs(2),
            rounds: 6,
        };
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            let mut value = || {
                it.next()
                    .expect("a value")
                    .parse::<u64>()
                    .expect("a number")
            };
            match arg.as_str() {
                "--connections" => args.connections = value() as usize,
                "--in-flight" => args.in_flight = value() as usize,
                "--duration-ms" => args.duration = Duration::from_millis(value()),
                "--rounds" => args.rounds = value() as usize,
                _ => {} // cargo bench's own flags (`--bench`)
            }
        }
        args
    }
}

fn health(registry: &HealthRegistry) -> GrpcHealth {
    GrpcHealth::new(registry.clone())
}

async fn serve_bare(listener: TcpListener, registry: HealthRegistry) {
    let incoming = tokio_stream_of(listener);
    tonic::transport::Server::builder()
        .serve_with_incoming(health(&registry).into_service(), incoming)
        .await
        .expect("bare server");
}

/// The listener's connections as the stream tonic's server takes.
fn tokio_stream_of(
    listener: TcpListener,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(listener, |listener| async move {
        let conn = listener.accept().await.map(|(stream, _)| {
            let _ = stream.set_nodelay(true);
            stream
        });
        Some((conn, listener))
    })
}

async fn serve_chassis(listener: TcpListener, registry: HealthRegistry) {
    let router = GrpcRouter::new().add_service(health(&registry).into_service());
    let server = Server::from_listener(listener, ServerConfig::default())
        .expect("chassis server")
        .shutdown(Shutdown::new())
        .handle_signals(false);
    server
        .serve(GrpcLayers::new().layer(router))
        .await
        .expect("chassis server");
}

async fn drive(channel: Channel, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) {
    let mut client = HealthClient::new(channel);
    while !stop.load(Ordering::Relaxed) {
        let answer = client
            .check(HealthCheckRequest::default())
            .await
            .expect("a health answer");
        assert_eq!(answer.into_inner().status, 1, "SERVING");
        done.fetch_add(1, Ordering::Relaxed);
    }
}

async fn measure(addr: SocketAddr, args: &Args) -> f64 {
    let mut channels = Vec::new();
    for _ in 0..args.connections {
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .tcp_nodelay(true)
            .connect()
            .await
            .expect("connect");
        channels.push(channel);
    }
    let run = async |duration: Duration| {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for channel in &channels {
            for _ in 0..args.in_flight {
                tasks.push(tokio::spawn(drive(
                    channel.clone(),
                    Arc::clone(&stop),
                    Arc::clone(&done),
                )));
            }
        }
        let start = Instant::now();
        tokio::time::sleep(duration).await;
        stop.store(true, Ordering::Relaxed);
        let calls = done.load(Ordering::Relaxed);
        let elapsed = start.elapsed();
        for task in tasks {
            task.await.expect("client task");
        }
        calls as f64 / elapsed.as_secs_f64()
    };
    run(Duration::from_millis(300)).await; // warm-up: connections, pools, caches
    run(args.duration).await
}

fn main() {
    let args = Args::parse();
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("install the Prometheus recorder");
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let registry = HealthRegistry::new();
    registry.mark_started();
    let (bare, chassis) = server_rt.block_on(async {
        let bare = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let chassis = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addrs = (bare.local_addr().unwrap(), chassis.local_addr().unwrap());
        tokio::spawn(serve_bare(bare, registry.clone()));
        tokio::spawn(serve_chassis(chassis, registry.clone()));
        addrs
    });
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "connections={} in_flight={} duration={:?} rounds={}",
        args.connections, args.in_flight, args.duration, args.rounds
    );
    let (mut bare_sum, mut chassis_sum, mut ratios) = (0.0, 0.0, Vec::new());
    for round in 0..args.rounds {
        // Alternate which server goes first, so drift in the machine's load evens out.
        let (b, c) = if round % 2 == 0 {
            let b = client_rt.block_on(measure(bare, &args));
            (b, client_rt.block_on(measure(chassis, &args)))
        } else {
            let c = client_rt.block_on(measure(chassis, &args));
            (client_rt.block_on(measure(bare, &args)), c)
        };
        bare_sum += b;
        chassis_sum += c;
        ratios.push(c / b);
        println!(
            "round {round}: bare {b:>9.0} rpc/s  chassis {c:>9.0} rpc/s  ratio {:.3}",
            c / b
        );
    }
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    println!(
        "mean bare {:.0} rpc/s, mean chassis {:.0} rpc/s, ratio of means {:.3}, median round ratio {median:.3}",
        bare_sum / args.rounds as f64,
        chassis_sum / args.rounds as f64,
        chassis_sum / bare_sum
    );
}
