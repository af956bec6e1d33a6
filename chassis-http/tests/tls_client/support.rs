//! A test PKI made with rcgen and a TLS server written here (tokio-rustls + hyper-util on
//! 127.0.0.1:0), so the client's TLS is tested against a peer that does not share its code.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpListener;

/// A certificate and its key, as PEM (what a configuration reads) and DER (what rustls takes).
pub(crate) struct Issued {
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
    pub(crate) der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Issued {
    pub(crate) fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

/// A date: year, month, day.
type Ymd = (i32, u8, u8);

/// A certificate authority of the test.
pub(crate) struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub(crate) cert: Issued,
}

impl Ca {
    pub(crate) fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        let issued = Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        };
        Self {
            issuer: Issuer::new(params, key),
            cert: issued,
        }
    }

    /// A server certificate for `names`, valid from 1975 to 4096 (rcgen's defaults).
    pub(crate) fn server_cert(&self, names: &[&str]) -> Issued {
        self.issue(names, ExtendedKeyUsagePurpose::ServerAuth, None)
    }

    /// A server certificate for `names` valid only between the two dates `(y, m, d)`.
    pub(crate) fn server_cert_valid(&self, names: &[&str], from: Ymd, until: Ymd) -> Issued {
        self.issue(
            names,
            ExtendedKeyUsagePurpose::ServerAuth,
            Some((from, until)),
        )
    }

    /// A client certificate for `name`.
    pub(crate) fn client_cert(&self, name: &str) -> Issued {
        self.issue(&[name], ExtendedKeyUsagePurpose::ClientAuth, None)
    }

    fn issue(
        &self,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
        validity: Option<(Ymd, Ymd)>,
    ) -> Issued {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![usage];
        if let Some(((y1, m1, d1), (y2, m2, d2))) = validity {
            params.not_before = rcgen::date_time_ymd(y1, m1, d1);
            params.not_after = rcgen::date_time_ymd(y2, m2, d2);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }
}

/// How the test server does TLS.
pub(crate) struct ServerSetup<'a> {
    pub(crate) cert: &'a Issued,
    /// Offer `h2` by ALPN (besides `http/1.1`).
    pub(crate) h2: bool,
    /// Require a client certificate issued by this CA.
    pub(crate) client_ca: Option<&'a Ca>,
    /// What the server answers with.
    pub(crate) body: Bytes,
}

impl<'a> ServerSetup<'a> {
    pub(crate) fn new(cert: &'a Issued) -> Self {
        Self {
            cert,
            h2: false,
            client_ca: None,
            body: Bytes::from_static(b"hello over tls"),
        }
    }
}

/// A running test server: where it listens and what it saw.
pub(crate) struct TlsServer {
    pub(crate) addr: SocketAddr,
    /// TCP connections accepted (each one a handshake attempt).
    connections: Arc<AtomicUsize>,
    /// Handshakes that failed on the server's side.
    failed_handshakes: Arc<AtomicUsize>,
}

impl TlsServer {
    /// `https://localhost:<port>` + `path`: the name the certificates are issued for.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub(crate) fn failed_handshakes(&self) -> usize {
        self.failed_handshakes.load(Ordering::SeqCst)
    }
}

/// Starts a TLS server on 127.0.0.1:0 answering every request with 200 and `setup.body`
/// (header `x-client-cert: yes|no` says whether the client presented a certificate).
pub(crate) async fn tls_server(setup: ServerSetup<'_>) -> TlsServer {
    let provider = chassis_http::tls::provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match setup.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(ca.cert.der.clone()).unwrap();
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(vec![setup.cert.der.clone()], setup.cert.key())
        .unwrap();
    config.alpn_protocols = if setup.h2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let failed_handshakes = Arc::new(AtomicUsize::new(0));
    let server = TlsServer {
        addr,
        connections: connections.clone(),
        failed_handshakes: failed_handshakes.clone(),
    };
    let body = setup.body;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            connections.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            let failed = failed_handshakes.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).into_fallible().await {
                    Ok(tls) => tls,
                    Err((_, mut tcp)) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        // Keep the socket until the client has read the alert and closed:
                        // closing first could reset the connection and lose the alert.
                        let mut sink = Vec::new();
                        let _ = tokio::time::timeout(
                            Duration::from_secs(5),
                            tcp.read_to_end(&mut sink),
                        )
                        .await;
                        return;
                    }
                };
                let client_cert = tls.get_ref().1.peer_certificates().is_some();
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let body = body.clone();
                    async move {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("x-client-cert", if client_cert { "yes" } else { "no" })
                                .header("x-version", format!("{:?}", req.version()))
                                .body(Full::new(body))
                                .unwrap(),
                        )
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    server
}
