//! The server runner over TLS: real handshakes on loopback with rcgen-made certificates, and
//! clients built from tokio-rustls and hyper's own client connections.
#![cfg(feature = "tls")]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Extension;
use axum::routing::{get, post};
use bytes::Bytes;
use chassis_core::shutdown::Shutdown;
use chassis_http::error::Error;
use chassis_http::server::{ServeOutcome, Server, ServerConfig};
use chassis_http::tls::peer::{PeerIdentity, RequirePeerLayer};
use chassis_http::tls::provider;
use chassis_http::tls::server::ServerTlsConfig;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, SanType,
};
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;

/// A test certificate authority.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate and its key.
struct Leaf {
    cert: CertificateDer<'static>,
    cert_pem: String,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `localhost` named `cn`.
    fn server(&self, cn: &str) -> Leaf {
        let mut params = CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.leaf(params)
    }

    /// A client certificate with the SAN URI `uri`.
    fn client(&self, uri: &str) -> Leaf {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, uri);
        params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.leaf(params)
    }

    fn leaf(&self, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            cert: cert.der().clone(),
            key,
        }
    }
}

impl Leaf {
    fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }
}

/// The server's files in a temporary directory.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new(server: &Leaf, client_ca: &Ca) -> Self {
        let files = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        files.install(server);
        std::fs::write(files.path("ca.crt"), client_ca.pem()).unwrap();
        files
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Replaces the certificate and key, each file atomically (written aside, renamed).
    fn install(&self, leaf: &Leaf) {
        replace(&self.path("tls.crt"), leaf.cert_pem.as_bytes());
        replace(&self.path("tls.key"), leaf.key.serialize_pem().as_bytes());
    }

    fn config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new(self.path("tls.crt"), self.path("tls.key"))
            .reload_interval(Duration::from_millis(100))
    }
}

fn replace(path: &Path, contents: &[u8]) {
    let aside = path.with_extension("new");
    std::fs::write(&aside, contents).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

/// The test application: who the peer is, an orders-only route, a slow route.
fn app() -> Router {
    Router::new()
        .route(
            "/who",
            get(|peer: Option<Extension<PeerIdentity>>| async move {
                peer.and_then(|Extension(p)| p.spiffe_id().map(str::to_owned))
                    .unwrap_or_else(|| "anonymous".into())
            }),
        )
        .route(
            "/reserve",
            post(|| async { "reserved" })
                .route_layer(RequirePeerLayer::new().allow_uri("spiffe://shop/orders")),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "slow"
            }),
        )
}

struct TestServer {
    addr: SocketAddr,
    shutdown: Shutdown,
    handle: JoinHandle<Result<ServeOutcome, Error>>,
}

impl TestServer {
    async fn start(tls: ServerTlsConfig) -> Self {
        Self::start_with(ServerConfig::default().tls(tls)).await
    }

    async fn start_with(config: ServerConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Server::from_listener(listener, config.drain_timeout(Duration::from_secs(5)))
            .unwrap()
            .handle_signals(false);
        let (addr, shutdown) = (server.local_addr(), server.shutdown_handle());
        let handle = tokio::spawn(server.serve(app()));
        Self {
            addr,
            shutdown,
            handle,
        }
    }

    async fn stop(self) -> ServeOutcome {
        self.shutdown.trigger();
        self.handle.await.unwrap().unwrap()
    }
}

/// A client trusting `ca`, offering `alpn`, presenting `cert` if given.
fn client_config(ca: &Ca, alpn: &[&[u8]], cert: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.issuer.der().clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match cert {
        Some(leaf) => builder
            .with_client_auth_cert(vec![leaf.cert.clone()], leaf.key_der())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

async fn connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// The leaf certificate the server presented.
fn server_cert(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// An HTTP connection over an established TLS stream: HTTP/2 if ALPN chose it.
enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    version: Version,
    body: String,
}

impl Conn {
    async fn open(stream: TlsStream<TcpStream>) -> hyper::Result<Self> {
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(stream);
        if h2 {
            let (send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            Ok(Conn::H2(send))
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            Ok(Conn::H1(send))
        }
    }

    async fn send(&mut self, method: &str, path: &str) -> hyper::Result<Reply> {
        let req = Request::builder()
            .method(method)
            .uri(format!("https://localhost{path}"))
            .body(Empty::new())
            .unwrap();
        let res = match self {
            Conn::H1(send) => {
                let (mut parts, body) = req.into_parts();
                parts.uri = path.parse().unwrap();
                parts
                    .headers
                    .insert("host", http::HeaderValue::from_static("localhost"));
                send.ready().await?;
                send.send_request(Request::from_parts(parts, body)).await?
            }
            Conn::H2(send) => {
                send.ready().await?;
                send.send_request(req).await?
            }
        };
        let (status, version) = (res.status(), res.version());
        let body = res.into_body().collect().await?.to_bytes();
        Ok(Reply {
            status,
            version,
            body: String::from_utf8(body.to_vec()).unwrap(),
        })
    }
}

/// Connects, then sends one request: the error of whichever step failed.
async fn request(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
) -> Result<Reply, String> {
    let stream = connect(addr, config)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let mut conn = Conn::open(stream)
        .await
        .map_err(|e| format!("connection: {e}"))?;
    conn.send(method, path)
        .await
        .map_err(|e| format!("request: {e}"))
}

#[tokio::test]
async fn serves_https_over_http1_and_http2_by_alpn() {
    let ca = Ca::new("test ca");
    let files = Files::new(&ca.server("server"), &ca);
    let server = TestServer::start(files.config()).await;

    for (alpn, version) in [
        (&[&b"http/1.1"[..]][..], Version::HTTP_11),
        (&[&b"h2"[..], &b"http/1.1"[..]][..], Version::HTTP_2),
        // No ALPN at all: HTTP/1.1.
        (&[][..], Version::HTTP_11),
    ] {
        let config = client_config(&ca, alpn, None);
        let stream = connect(server.addr, config).await.unwrap();
        let mut conn = Conn::open(stream).await.unwrap();
        for _ in 0..2 {
            let reply = conn.send("GET", "/who").await.unwrap();
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.version, version);
            assert_eq!(
                reply.body, "anonymous",
                "no client certificate, no identity"
            );
        }
    }
    let outcome = server.stop().await;
    assert!(outcome.drained);
    assert_eq!(outcome.connections, 3);
}

#[tokio::test]
async fn mtls_rejects_missing_and_foreign_certificates_and_hands_out_the_identity() {
    let ca = Ca::new("shop ca");
    let foreign = Ca::new("foreign ca");
    let files = Files::new(&ca.server("server"), &ca);
    let server = TestServer::start(files.config().require_client_cert(files.path("ca.crt"))).await;
    let h2: &[&[u8]] = &[b"h2", b"http/1.1"];

    // No certificate, a certificate of another CA: refused at the handshake (in TLS 1.3 the
    // client learns it at its first read).
    for (cert, alert) in [
        (None, "CertificateRequired"),
        (Some(foreign.client("spiffe://shop/orders")), "UnknownCA"),
    ] {
        let config = client_config(&ca, h2, cert.as_ref());
        let err = match connect(server.addr, config.clone()).await {
            Err(e) => e.to_string(),
            Ok(mut stream) => {
                let mut buf = [0u8; 1];
                let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
                    .await
                    .expect("the server answers at once");
                read.expect_err("the server refused the certificate")
                    .to_string()
            }
        };
        assert!(err.contains(alert), "{err}");
        let err = request(server.addr, config, "GET", "/who")
            .await
            .unwrap_err();
        assert!(
            err.starts_with("handshake") || err.starts_with("request"),
            "{err}"
        );
    }

    let orders = ca.client("spiffe://shop/orders");
    let payments = ca.client("spiffe://shop/payments");
    // The identity reaches the handler; the orders-only route lets orders in, not payments.
    for alpn in [&[&b"http/1.1"[..]][..], h2] {
        for (cert, method, path, status, body) in [
            (
                &orders,
                "GET",
                "/who",
                StatusCode::OK,
                Some("spiffe://shop/orders"),
            ),
            (
                &orders,
                "POST",
                "/reserve",
                StatusCode::OK,
                Some("reserved"),
            ),
            (&payments, "POST", "/reserve", StatusCode::FORBIDDEN, None),
        ] {
            let config = client_config(&ca, alpn, Some(cert));
            let reply = request(server.addr, config, method, path).await.unwrap();
            assert_eq!(reply.status, status, "{method} {path}");
            match body {
                Some(body) => assert_eq!(reply.body, body),
                None => {
                    let json: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
                    assert_eq!(json["success"], false);
                    assert_eq!(json["error"]["code"], "forbidden");
                }
            }
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn optional_client_certificates_serve_anonymous_clients_without_an_identity() {
    let ca = Ca::new("shop ca");
    let files = Files::new(&ca.server("server"), &ca);
    let server = TestServer::start(files.config().optional_client_cert(files.path("ca.crt"))).await;
    let alpn: &[&[u8]] = &[b"http/1.1"];
    let anonymous = client_config(&ca, alpn, None);
    let reply = request(server.addr, anonymous.clone(), "GET", "/who").await;
    assert_eq!(reply.unwrap().body, "anonymous");
    let refused = request(server.addr, anonymous, "POST", "/reserve").await;
    assert_eq!(
        refused.unwrap().status,
        StatusCode::FORBIDDEN,
        "no identity, no entry"
    );
    let orders = client_config(&ca, alpn, Some(&ca.client("spiffe://shop/orders")));
    let reply = request(server.addr, orders, "GET", "/who").await;
    assert_eq!(reply.unwrap().body, "spiffe://shop/orders");
    server.stop().await;
}

/// Connects until the server presents `want` (or 5 s pass); how long it took.
async fn wait_for_cert(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    want: &CertificateDer<'static>,
) -> Duration {
    let start = Instant::now();
    loop {
        let stream = connect(addr, config.clone()).await.unwrap();
        if server_cert(&stream) == *want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "certificate not rotated"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_new_certificate_reaches_new_connections_while_old_ones_keep_working() {
    let ca = Ca::new("test ca");
    let first = ca.server("server one");
    let files = Files::new(&first, &ca);
    let server = TestServer::start(files.config()).await;
    let config = client_config(&ca, &[b"h2"], None);

    let old = connect(server.addr, config.clone()).await.unwrap();
    assert_eq!(server_cert(&old), first.cert);
    let mut old = Conn::open(old).await.unwrap();
    assert_eq!(
        old.send("GET", "/who").await.unwrap().status,
        StatusCode::OK
    );

    let second = ca.server("server two, a longer name");
    assert_ne!(first.cert, second.cert);
    files.install(&second);
    let took = wait_for_cert(server.addr, &config, &second.cert).await;
    assert!(
        took < Duration::from_secs(2),
        "{took:?} for a 100 ms interval"
    );

    // The connection opened before the swap still serves.
    let reply = old.send("GET", "/who").await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let stream = connect(server.addr, config.clone()).await.unwrap();
    assert_eq!(server_cert(&stream), second.cert);
    server.stop().await;
}

#[tokio::test]
async fn a_bad_replacement_keeps_the_old_certificate() {
    let ca = Ca::new("test ca");
    let first = ca.server("server one");
    let files = Files::new(&first, &ca);
    let server = TestServer::start(files.config()).await;
    let config = client_config(&ca, &[b"http/1.1"], None);

    // A new certificate with a garbage key, then with the key of another certificate.
    let second = ca.server("server two");
    replace(&files.path("tls.crt"), second.cert_pem.as_bytes());
    replace(
        &files.path("tls.key"),
        b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n",
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stream = connect(server.addr, config.clone()).await.unwrap();
    assert_eq!(
        server_cert(&stream),
        first.cert,
        "the old certificate stays"
    );
    replace(&files.path("tls.key"), first.key.serialize_pem().as_bytes());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stream = connect(server.addr, config.clone()).await.unwrap();
    assert_eq!(
        server_cert(&stream),
        first.cert,
        "a key that does not match is refused"
    );
    let mut conn = Conn::open(stream).await.unwrap();
    assert_eq!(
        conn.send("GET", "/who").await.unwrap().status,
        StatusCode::OK
    );

    // Fixed: the pair is taken.
    files.install(&second);
    wait_for_cert(server.addr, &config, &second.cert).await;
    server.stop().await;
}

#[tokio::test]
async fn a_new_client_ca_bundle_is_used_for_new_handshakes() {
    let old_ca = Ca::new("old ca");
    let new_ca = Ca::new("new ca");
    let files = Files::new(&old_ca.server("server"), &old_ca);
    let server = TestServer::start(files.config().require_client_cert(files.path("ca.crt"))).await;
    let alpn: &[&[u8]] = &[b"http/1.1"];
    let old_client = client_config(&old_ca, alpn, Some(&old_ca.client("spiffe://shop/orders")));
    // Trusts the server's (old) CA, presents a certificate of the new one.
    let new_client = client_config(&old_ca, alpn, Some(&new_ca.client("spiffe://shop/orders")));

    let old = request(server.addr, old_client.clone(), "GET", "/who").await;
    assert_eq!(old.unwrap().body, "spiffe://shop/orders");
    assert!(
        request(server.addr, new_client.clone(), "GET", "/who")
            .await
            .is_err()
    );

    // A bundle that does not parse is skipped; then the new CA replaces the old one.
    replace(&files.path("ca.crt"), b"not a certificate");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let old = request(server.addr, old_client.clone(), "GET", "/who").await;
    assert!(old.is_ok(), "the old bundle stays: {old:?}");
    replace(&files.path("ca.crt"), new_ca.pem().as_bytes());
    let start = Instant::now();
    while request(server.addr, new_client.clone(), "GET", "/who")
        .await
        .is_err()
    {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the new CA was not loaded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        request(server.addr, old_client, "GET", "/who")
            .await
            .is_err()
    );
    server.stop().await;
}

#[tokio::test]
async fn plain_http_to_the_tls_port_gets_a_400_saying_so() {
    let ca = Ca::new("test ca");
    let files = Files::new(&ca.server("server"), &ca);
    let server = TestServer::start(files.config()).await;

    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /who HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer))
        .await
        .expect("the server closes after answering")
        .unwrap();
    let text = String::from_utf8(answer).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["success"], false);
    assert_eq!(json["error"]["code"], "bad_request");
    assert!(
        json["error"]["message"].as_str().unwrap().contains("HTTPS"),
        "{json}"
    );

    // The port still speaks TLS.
    let reply = request(server.addr, client_config(&ca, &[], None), "GET", "/who")
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn a_silent_client_is_closed_at_the_header_read_timeout() {
    let ca = Ca::new("test ca");
    let files = Files::new(&ca.server("server"), &ca);
    let config = ServerConfig::default()
        .tls(files.config())
        .header_read_timeout(Duration::from_millis(300))
        .max_connections(1);
    let server = TestServer::start_with(config).await;

    // Connects and sends nothing, holding the only connection slot until the timeout.
    let start = Instant::now();
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("closed by the server")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );
    let reply = request(server.addr, client_config(&ca, &[], None), "GET", "/who")
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK, "the slot is free again");
    server.stop().await;
}

#[tokio::test]
async fn shutdown_drains_an_in_flight_tls_request() {
    let ca = Ca::new("test ca");
    let files = Files::new(&ca.server("server"), &ca);
    let server = TestServer::start(files.config()).await;
    let stream = connect(server.addr, client_config(&ca, &[b"http/1.1"], None))
        .await
        .unwrap();
    let mut conn = Conn::open(stream).await.unwrap();
    // A client still before its handshake (the header read timeout is 30 s): it has no request
    // to finish and is closed at once.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let in_flight = tokio::spawn(async move { conn.send("GET", "/slow").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    let outcome = server.stop().await;
    let reply = in_flight.await.unwrap().unwrap();
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "slow")
    );
    assert!(outcome.drained);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    let mut buf = [0u8; 1];
    assert_eq!(silent.read(&mut buf).await.unwrap_or(0), 0, "closed");
}

#[tokio::test]
async fn an_unusable_certificate_fails_at_bind_naming_the_file() {
    let ca = Ca::new("test ca");
    let files = Files::new(&ca.server("server"), &ca);
    std::fs::write(files.path("tls.key"), "not a key").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err =
        Server::from_listener(listener, ServerConfig::default().tls(files.config())).unwrap_err();
    assert!(err.to_string().contains("tls.key"), "{err}");
}
