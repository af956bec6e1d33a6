//! HTTPS server throughput (see benches/README.md "HTTPS"): the chassis stack as shipped over TLS
//! vs bare hyper behind tokio-rustls, same certificate, same handler, same process, alternated
//! round by round, as `http_load` does for plain HTTP.
//!
//! Two servers run in-process on one server runtime (one worker thread by default):
//!
//! - **bare**: a tokio-rustls `TlsAcceptor` (rustls with the ring provider, ALPN `h2` and
//!   `http/1.1`) in front of hyper-util's auto connection builder serving a `service_fn` that
//!   answers `hello`;
//! - **chassis**: `chassis_http::server::Server` with `ServerConfig::tls` (the same certificate
//!   and key, read from files, rotation watcher running) serving the same handler behind the
//!   health endpoints and `StandardLayers`.
//!
//! Two measurements, each alternating bare and chassis every round:
//!
//! - **keep-alive**: N TLS connections (HTTP/1.1 by ALPN), one request in flight on each,
//!   reused for every request: the per-request cost of the stack over TLS;
//! - **handshakes**: N concurrent clients each opening a new TCP connection, doing a full TLS 1.3
//!   handshake (client-side resumption disabled), sending one request, reading the answer and
//!   closing (`close_notify`), over and over: handshakes per second.
//!
//! The load generator runs on its own runtime thread and does not verify the server's
//! certificate (a verifier that accepts it without checking the signatures), so that the
//! client's signature checks do not become the bottleneck of the handshake measurement; the
//! server does all of its own work. Each round also reports the server's CPU time per request
//! (Linux schedstat) of the server worker thread, which compares the two servers' costs even
//! when other processes make the wall-clock rates noisy.
//!
//! Rows (each in a process of its own, since the tracing subscriber and the metrics recorder are
//! process-wide), as in `http_load`: `telemetry` (the stack as shipped: `Telemetry::builder(..)
//! .init()` with its defaults writing into `io::sink()`, one access-log line per request) and
//! `no-subscriber` (the Prometheus recorder only: the chassis layers' own cost).
//!
//! ```text
//! cargo bench -p chassis-http --bench https_load -- \
//!     --connections 32 --duration-ms 2000 --rounds 5 [--rows telemetry,no-subscriber]
//! ```

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
use chassis_http::tls::provider;
use chassis_http::tls::server::ServerTlsConfig;
use chassis_observability::Telemetry;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceBuilder;

mod load_support;

use load_support::{
    LoadArgs, bind_pair, client_runtime, complete_response, cpu_per_request, fmt_opt,
    measure_window, median, round_order, server_cpu,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Row {
    Telemetry,
    NoSubscriber,
}

const ALL_ROWS: [Row; 2] = [Row::Telemetry, Row::NoSubscriber];

impl Row {
    fn parse(name: &str) -> Row {
        match name {
            "telemetry" => Row::Telemetry,
            "no-subscriber" => Row::NoSubscriber,
            other => panic!("rows: telemetry, no-subscriber; not {other}"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Row::Telemetry => "telemetry",
            Row::NoSubscriber => "no-subscriber",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    KeepAlive,
    Handshakes,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::KeepAlive => "keep-alive",
            Mode::Handshakes => "handshakes",
        }
    }
}

type Args = LoadArgs<Row>;

async fn hello<B>(_req: http::Request<B>) -> Result<http::Response<Full<Bytes>>, Infallible> {
    Ok(http::Response::new(Full::new(Bytes::from_static(b"hello"))))
}

/// The server's certificate and key, in memory and in files.
struct Identity {
    cert: CertificateDer<'static>,
    key_der: Vec<u8>,
    files: tempfile::TempDir,
}

impl Identity {
    fn generate() -> Self {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .expect("params")
            .self_signed(&key)
            .expect("certificate");
        let files = tempfile::tempdir().expect("temp dir");
        std::fs::write(files.path().join("tls.crt"), cert.pem()).expect("write");
        std::fs::write(files.path().join("tls.key"), key.serialize_pem()).expect("write");
        Identity {
            cert: cert.der().clone(),
            key_der: key.serialize_der(),
            files,
        }
    }

    fn chassis_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new(
            self.files.path().join("tls.crt"),
            self.files.path().join("tls.key"),
        )
    }

    /// The bare server's rustls configuration: what `ServerTlsConfig` builds, written out.
    fn bare_config(&self) -> Arc<rustls::ServerConfig> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![self.cert.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone())),
            )
            .expect("certificate and key");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

async fn serve_bare(listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(stream).await else {
                return;
            };
            let service = TowerToHyperService::new(tower::service_fn(hello));
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn serve_chassis(listener: TcpListener, tls: ServerTlsConfig) {
    let registry = HealthRegistry::new();
    registry.mark_started();
    let service = ServiceBuilder::new()
        .layer(HealthLayer::new(registry.clone()))
        .layer(StandardLayers::new())
        .service(tower::service_fn(hello));
    let server = Server::from_listener(listener, ServerConfig::default().tls(tls))
        .expect("valid config")
        .health(registry)
        .handle_signals(false);
    server.serve(service).await.expect("serve");
}

/// The load generator's verifier: accepts the server's certificate and signatures unchecked,
/// so the generator's own signature checks do not bound the handshake rate.
#[derive(Debug)]
struct NoVerification(Vec<SignatureScheme>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.clone()
    }
}

fn client_config() -> Arc<rustls::ClientConfig> {
    let provider = provider();
    let schemes = provider
        .signature_verification_algorithms
        .supported_schemes();
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerification(schemes)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Every handshake of the handshake measurement is a full one.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

const REQUEST: &[u8] = b"GET /hello HTTP/1.1\r\nhost: localhost\r\nuser-agent: https-load\r\n\r\n";

/// Sends one request on `stream` and reads its whole response; whether it was a 200.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, buf: &mut [u8]) -> bool {
    stream.write_all(REQUEST).await.expect("write");
    let mut filled = 0;
    loop {
        let n = stream.read(&mut buf[filled..]).await.expect("read");
        assert!(n > 0, "server closed the connection");
        filled += n;
        if let Some(total) = complete_response(&buf[..filled]) {
            assert_eq!(total, filled, "one response at a time");
            return buf.starts_with(b"HTTP/1.1 200");
        }
    }
}

async fn tls_connect(
    addr: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    connector
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS handshake")
}

/// One client: requests on one connection (keep-alive) or one connection per request
/// (handshakes), until `stop`.
async fn drive(
    mode: Mode,
    addr: SocketAddr,
    connector: tokio_rustls::TlsConnector,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    bad: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 8192];
    let mut kept = match mode {
        Mode::KeepAlive => Some(tls_connect(addr, &connector).await),
        Mode::Handshakes => None,
    };
    while !stop.load(Ordering::Relaxed) {
        let ok = match &mut kept {
            Some(stream) => exchange(stream, &mut buf).await,
            None => {
                let mut stream = tls_connect(addr, &connector).await;
                let ok = exchange(&mut stream, &mut buf).await;
                // close_notify, then FIN.
                let _ = stream.shutdown().await;
                ok
            }
        };
        if !ok {
            bad.fetch_add(1, Ordering::Relaxed);
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
}

/// Drives `connections` clients against `addr` for `duration`; returns requests/s during the
/// measured window, non-200 responses, and all requests sent (warm-up included).
async fn measure(
    mode: Mode,
    addr: SocketAddr,
    connections: usize,
    duration: Duration,
) -> (f64, u64, u64) {
    let connector = tokio_rustls::TlsConnector::from(client_config());
    measure_window(connections, duration, |c| {
        tokio::spawn(drive(mode, addr, connector.clone(), c.stop, c.done, c.bad))
    })
    .await
}

/// Runs every row of `args.rows` as a child process and prints their summaries as a table.
fn run_rows(args: &Args) {
    load_support::run_rows(
        &args.raw,
        args.rows.iter().map(|row| row.name()),
        "| row | measurement | bare /s | chassis /s | ratio of means | median round ratio | worker CPU/req bare | chassis | bare/chassis |\n|---|---|---:|---:|---:|---:|---:|---:|---:|",
    );
}

fn main() {
    let args = Args::parse(Duration::from_secs(2), &ALL_ROWS, Row::parse, |_, _| {});
    let Some(row) = args.row else {
        run_rows(&args);
        return;
    };
    let server_rt = args.server_runtime();
    let _telemetry = match row {
        Row::Telemetry => Some(server_rt.block_on(async {
            Telemetry::builder(ServiceInfo::new("https-load", "1.0.0"))
                .ignore_env()
                .writer(std::io::sink())
                .init()
                .expect("telemetry")
        })),
        Row::NoSubscriber => {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .expect("install the Prometheus recorder");
            None
        }
    };

    let identity = Identity::generate();
    let (bare_addr, chassis_addr) = bind_pair(&server_rt, |bare, chassis| {
        tokio::spawn(serve_bare(bare, identity.bare_config()));
        tokio::spawn(serve_chassis(chassis, identity.chassis_config()));
    });

    let client_rt = client_runtime();
    println!(
        "row={} connections={} duration={:?} rounds={} server_threads={}",
        row.name(),
        args.connections,
        args.duration,
        args.rounds,
        args.server_threads,
    );
    for mode in [Mode::KeepAlive, Mode::Handshakes] {
        let (mut bare_total, mut chassis_total) = (0.0, 0.0);
        let mut ratios = Vec::new();
        let (mut cpu_bare, mut cpu_chassis) = (Vec::new(), Vec::new());
        for round in 0..args.rounds {
            let (mut bare, mut chassis) = (0.0, 0.0);
            let (mut bare_cpu, mut chassis_cpu) = (None, None);
            for (name, addr) in round_order(round, bare_addr, chassis_addr) {
                let before = server_cpu(&server_rt);
                let (rate, bad, total) =
                    client_rt.block_on(measure(mode, addr, args.connections, args.duration));
                let cpu = cpu_per_request(before, server_cpu(&server_rt), total);
                assert_eq!(bad, 0, "{name}: non-200 responses");
                if name == "bare" {
                    (bare, bare_cpu) = (rate, cpu);
                } else {
                    (chassis, chassis_cpu) = (rate, cpu);
                }
            }
            bare_total += bare;
            chassis_total += chassis;
            ratios.push(chassis / bare);
            cpu_bare.extend(bare_cpu);
            cpu_chassis.extend(chassis_cpu);
            println!(
                "{} round {round}: bare {bare:>9.0}/s   chassis {chassis:>9.0}/s   ratio {:.3}   \
                 worker CPU/req bare {} us chassis {} us",
                mode.name(),
                chassis / bare,
                fmt_opt(bare_cpu, 2),
                fmt_opt(chassis_cpu, 2),
            );
        }
        let n = args.rounds as f64;
        let median_ratio = median(ratios).unwrap_or(f64::NAN);
        let (cb, cc) = (median(cpu_bare), median(cpu_chassis));
        println!(
            "{}: mean bare {:.0}/s, chassis {:.0}/s, ratio of means {:.3}, median round ratio {:.3}",
            mode.name(),
            bare_total / n,
            chassis_total / n,
            chassis_total / bare_total,
            median_ratio,
        );
        println!(
            "SUMMARY | {} | {} | {:.0} | {:.0} | {:.3} | {:.3} | {} us | {} us | {} |",
            row.name(),
            mode.name(),
            bare_total / n,
            chassis_total / n,
            chassis_total / bare_total,
            median_ratio,
            fmt_opt(cb, 2),
            fmt_opt(cc, 2),
            fmt_opt(cb.zip(cc).map(|(b, c)| b / c), 3),
        );
    }
    drop(server_rt);
}
