//! The payment-provider binary: `shop-payment-provider --addr 127.0.0.1:8090 --failure-rate 0.1
//! [--ledger provider-ledger.jsonl]`, or playing a simulator scenario:
//! `shop-payment-provider --scenario benches/scenarios/partial-brownout.toml --time-scale 0.5`.

use std::net::SocketAddr;

use clap::Parser;
use shop_payment_provider::{Behaviour, ProviderState, app, parse_duration, parse_outages};

/// A simulated external payment provider.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "PROVIDER_ADDR", default_value = "127.0.0.1:8090")]
    addr: SocketAddr,
    /// Fraction of charges failing with 500 before anything is recorded.
    #[arg(long, env = "PROVIDER_FAILURE_RATE", default_value_t = 0.0)]
    failure_rate: f64,
    /// Fraction of charges recorded but answered with 500.
    #[arg(long, env = "PROVIDER_AMBIGUOUS_FAILURE_RATE", default_value_t = 0.0)]
    ambiguous_failure_rate: f64,
    /// Latency added to every charge (e.g. `20ms`).
    #[arg(long, env = "PROVIDER_LATENCY", default_value = "0ms")]
    latency: String,
    /// Outage windows after start, `start+duration` comma separated (e.g. `30s+10s`).
    #[arg(long, env = "PROVIDER_OUTAGES", default_value = "")]
    outages: String,
    /// A file keeping the ledger (charges, refunds, idempotency keys) across restarts; without
    /// it the ledger lives in memory only.
    #[arg(long, env = "PROVIDER_LEDGER_FILE")]
    ledger: Option<std::path::PathBuf>,
    /// How long answers (idempotency keys, charges) are kept in memory, like a processor's
    /// idempotency window (e.g. `24h`, `10m`); `0` keeps them for ever.
    #[arg(long, env = "PROVIDER_RETENTION", default_value = "24h")]
    retention: String,
    /// Play this resilience-simulator scenario (TOML) from start-up: its downstream's latency,
    /// failure rate, capacity and outage windows replace the failure rate and latency above.
    #[arg(long, env = "PROVIDER_SCENARIO")]
    scenario: Option<std::path::PathBuf>,
    /// With `--scenario`: multiply the scenario's timeline (duration, outage windows) by this,
    /// e.g. `0.5` plays a 60 s scenario in 30 s.
    #[arg(long, env = "PROVIDER_TIME_SCALE", default_value_t = 1.0)]
    time_scale: f64,
    /// Serve HTTPS with this certificate chain (PEM), with `--tls-key`; reloaded when the file
    /// changes. Plain HTTP without it.
    #[arg(long, env = "TLS_CERT_FILE", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of `--tls-cert`.
    #[arg(long, env = "TLS_KEY_FILE")]
    tls_key: Option<std::path::PathBuf>,
}

// One runtime thread: it answers small requests from payments, and on a small machine shared
// by the shop's processes and the broker a second worker mostly adds cross-thread wake-ups.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let latency = parse_duration(&args.latency)?;
    let windows = parse_outages(&args.outages)?;
    let retention = parse_duration(&args.retention)?;
    for rate in [args.failure_rate, args.ambiguous_failure_rate] {
        if !(0.0..=1.0).contains(&rate) {
            return Err(format!("rates must be within 0..=1, got {rate}").into());
        }
    }
    let scenario = match &args.scenario {
        Some(path) => Some(chassis_scenario::Scenario::load(path)?.time_scaled(args.time_scale)?),
        None => None,
    };
    let behaviour = Behaviour {
        failure_rate: args.failure_rate,
        ambiguous_failure_rate: args.ambiguous_failure_rate,
        latency_ms: u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
    };
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    let state = match &args.ledger {
        Some(path) => ProviderState::with_ledger(behaviour, windows, path)
            .map_err(|e| format!("ledger {}: {e}", path.display()))?,
        None => ProviderState::new(behaviour, windows),
    };
    let state = if retention.is_zero() {
        state
    } else {
        state.with_retention(retention)
    };
    if let Some(scenario) = scenario {
        tracing::info!(scenario = ?args.scenario, time_scale = args.time_scale, "playing a scenario");
        state.play(scenario.downstream, scenario.seed);
    }
    tracing::info!(addr = %listener.local_addr()?, ?behaviour, ledger = ?args.ledger, tls = args.tls_cert.is_some(), "payment provider listening");
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        // HTTPS through the chassis server runner, which handles SIGTERM/SIGINT itself. The
        // provider plays a third party: it asks callers for no client certificate.
        let config = chassis_http::server::ServerConfig::default()
            .tls(chassis_http::tls::server::ServerTlsConfig::new(cert, key));
        chassis_http::server::Server::from_listener(listener, config)?
            .serve(app(state))
            .await?;
        return Ok(());
    }
    axum::serve(listener, app(state))
        .with_graceful_shutdown(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        })
        .await?;
    Ok(())
}
