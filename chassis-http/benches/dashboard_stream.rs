//! What connected dashboards cost an idle service (see benches/README.md "Admin stream"): the
//! CPU of a service whose admin API streams its control registry, measured with no client and
//! with N clients following `/admin/control/stream`, in the same run.
//!
//! The service (this process: a two-worker runtime, an admin listener serving
//! `ControlService` over a registry of 8 breakers, 2 bulkheads, 2 rate limiters, 2 retry
//! budgets and the health checks, sampled every second) stays idle otherwise. The clients
//! run in a child process (this binary with `--clients N URL`), so the process CPU measured
//! (utime + stime from `/proc/self/stat`) is the service's alone. Each window waits until
//! every client has had its first event.
//!
//! ```text
//! cargo bench -p chassis-http --bench dashboard_stream -- [--clients 100] [--seconds 20]
//! ```
//!
//! Prints the CPU as a share of one core for both windows and the difference (the criterion:
//! 100 dashboards add less than 5 percentage points).

use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chassis_core::control::ControlRegistry;
use chassis_core::health::{CheckOptions, HealthRegistry, fn_check};
use chassis_core::resilience::bulkhead::BulkheadConfig;
use chassis_core::resilience::circuit_breaker::CircuitBreakerConfig;
use chassis_core::resilience::policy::ResiliencePolicy;
use chassis_core::resilience::rate_limiter::RateLimiterConfig;
use chassis_core::resilience::retry::RetryConfig;
use chassis_http::control::ControlService;
use chassis_http::server::{Server, ServerConfig};
use http_body_util::{BodyExt as _, Empty};
use tokio::io::{AsyncBufReadExt, BufReader};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// Process CPU time (user + system) so far, from `/proc/self/stat` (clock ticks of 10 ms).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("Linux /proc");
    // The fields after the command name (which may contain spaces) start after its ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// The clients: `n` connections following the stream; prints `ready` once each had an event,
/// then follows until killed.
async fn clients(n: usize, url: String) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http::<Empty<Bytes>>();
    let (first_tx, mut first_rx) = tokio::sync::mpsc::channel::<()>(n);
    for _ in 0..n {
        let client = client.clone();
        let url = url.clone();
        let first_tx = first_tx.clone();
        tokio::spawn(async move {
            let response = client
                .request(http::Request::get(url).body(Empty::new()).unwrap())
                .await
                .expect("connect");
            let mut body = response.into_body();
            let mut first = Some(first_tx);
            while let Some(Ok(frame)) = body.frame().await {
                if frame.is_data()
                    && let Some(tx) = first.take()
                {
                    let _ = tx.send(()).await;
                }
            }
        });
    }
    for _ in 0..n {
        first_rx.recv().await;
    }
    println!("ready");
    std::future::pending::<()>().await;
}

fn registry() -> ControlRegistry {
    let control = ControlRegistry::new("idle");
    for i in 0..8 {
        let mut policy = ResiliencePolicy::new()
            .name(format!("downstream-{i}"))
            .circuit_breaker(CircuitBreakerConfig::new(format!("downstream-{i}")));
        if i < 2 {
            policy = policy
                .bulkhead(BulkheadConfig::new(format!("downstream-{i}")))
                .rate_limit(RateLimiterConfig::new(format!("downstream-{i}")))
                .retry(RetryConfig::new(format!("downstream-{i}")));
        }
        control.register_policy(&policy.build().unwrap());
    }
    let health = HealthRegistry::new();
    health.register(
        fn_check("database", || async { Ok(()) }),
        CheckOptions::required(),
    );
    health.mark_started();
    control.register_health(health);
    control
}

async fn window(seconds: u64) -> f64 {
    let (cpu, wall) = (cpu_time(), Instant::now());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    (cpu_time() - cpu).as_secs_f64() / wall.elapsed().as_secs_f64() * 100.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(n) = arg(&args, "--clients").filter(|_| args.iter().any(|a| a == "--url")) {
        let url = arg(&args, "--url").unwrap();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(clients(n.parse().unwrap(), url));
        return;
    }
    let n: usize = arg(&args, "--clients").map_or(100, |v| v.parse().unwrap());
    let seconds: u64 = arg(&args, "--seconds").map_or(20, |v| v.parse().unwrap());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let server = Server::bind(
            ServerConfig::default()
                .bind("127.0.0.1:0".parse().unwrap())
                .admin("127.0.0.1:0".parse().unwrap()),
        )
        .await
        .unwrap()
        .admin_service(ControlService::new(registry()))
        .handle_signals(false);
        let url = format!("http://{}/admin/control/stream", server.admin_addr().unwrap());
        let stop = server.shutdown_handle();
        // The application port serves nothing: the service is idle.
        let app = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| {
            std::future::ready(Ok::<_, std::convert::Infallible>(http::Response::new(
                Empty::<Bytes>::new(),
            )))
        });
        tokio::spawn(server.serve(app));

        let idle = window(seconds).await;
        let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args(["--clients", &n.to_string(), "--url", &url])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("ready"));
        let streaming = window(seconds).await;
        child.kill().await.unwrap();
        stop.trigger();
        println!(
            "idle service: {idle:.2} % of one core; with {n} dashboards streaming: {streaming:.2} %; \
             added: {:.2} percentage points ({seconds} s windows)",
            streaming - idle
        );
    });
}
