//! `HttpClient` and the JWKS fetcher over real TLS: certificates made with rcgen, a tokio-rustls
//! + hyper server on 127.0.0.1 written in the test, and the client's typed handshake failures.
#![cfg(feature = "tls")]

#[path = "tls_client/support.rs"]
mod support;

use std::time::Duration;

use bytes::Bytes;
use chassis_core::resilience::circuit_breaker::{
    CircuitBreakerConfig, SlidingWindowType, State as BreakerState,
};
use chassis_core::resilience::policy::ResiliencePolicy;
use chassis_core::resilience::retry::{Backoff, Jitter, RetryBudgetConfig, RetryConfig};
use chassis_http::auth::{AuthErrorKind, JwksKeySource, SigningKey, TokenIssuer, TokenVerifier};
use chassis_http::client::{ClientError, ClientErrorKind, HttpClient, TlsFailure};
use chassis_http::tls::client::{ClientTlsConfig, TrustRoots};
use http::{Request, Version};
use http_body_util::Full;
use support::{Ca, ServerSetup, tls_server};

fn retrying_policy() -> ResiliencePolicy {
    ResiliencePolicy::new()
        .timeout(Duration::from_secs(5))
        .retry(
            RetryConfig::new("tls")
                .max_attempts(3)
                .backoff(
                    Backoff::exponential(Duration::from_millis(5))
                        .max(Duration::from_millis(20))
                        .jitter(Jitter::None),
                )
                // No budget: only the classifier can stop a retry.
                .budget(RetryBudgetConfig::disabled()),
        )
}

/// A client with a retrying policy and these TLS settings (none: the defaults).
fn client(tls: Option<ClientTlsConfig>) -> HttpClient {
    let builder = HttpClient::builder("secure").policy(retrying_policy());
    match tls {
        Some(tls) => builder.tls(tls).build().unwrap(),
        None => builder.build().unwrap(),
    }
}

fn trusting(ca: &Ca) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .roots(TrustRoots::None)
        .add_ca_pem(ca.cert.cert_pem.clone())
}

async fn get(client: &HttpClient, url: &str) -> Result<http::Response<Bytes>, ClientError> {
    let req = Request::get(url).body(Full::default()).unwrap();
    client.execute(req).await
}

/// A call on `client` to `url` fails in the TLS handshake with `failure`, without a retry.
async fn assert_refused_once(client: &HttpClient, url: &str, failure: TlsFailure) {
    let err = get(client, url).await.unwrap_err();
    assert_eq!(tls_failure(&err), failure, "{err:?}");
    assert_eq!(err.attempts(), 1, "{err:?}");
}

fn tls_failure(err: &ClientError) -> TlsFailure {
    match err.kind() {
        ClientErrorKind::Tls(failure) => *failure,
        other => panic!("expected a TLS failure, got {other:?}: {err:?}"),
    }
}

#[tokio::test]
async fn untrusted_issuer_is_refused_by_the_default_client_and_not_retried() {
    let ca = Ca::new("untrusted test CA");
    let cert = ca.server_cert(&["localhost"]);
    let server = tls_server(ServerSetup::new(&cert)).await;
    // No `.tls(..)`: webpki roots, which do not include the test CA.
    let client = client(None);

    let err = get(&client, &server.url("/")).await.unwrap_err();
    assert_eq!(tls_failure(&err), TlsFailure::UnknownIssuer, "{err}");
    assert_eq!(err.attempts(), 1, "a TLS failure is not retried: {err:?}");
    assert!(!err.retries_exhausted());
    assert_eq!(server.connections(), 1);
    let text = err.to_string();
    assert!(
        text.contains("secure") && text.contains("not issued by a trusted CA"),
        "{text}"
    );
}

#[tokio::test]
async fn wrong_host_name_is_refused() {
    let ca = Ca::new("test CA");
    let cert = ca.server_cert(&["other.example"]);
    let server = tls_server(ServerSetup::new(&cert)).await;
    let client = client(Some(trusting(&ca)));

    let err = get(&client, &server.url("/")).await.unwrap_err();
    assert_eq!(tls_failure(&err), TlsFailure::NotValidForName, "{err}");
    assert!(err.to_string().contains("other.example"), "{err}");
    assert_eq!(err.attempts(), 1);
}

#[tokio::test]
async fn expired_and_not_yet_valid_certificates_are_refused() {
    let ca = Ca::new("test CA");
    let expired = ca.server_cert_valid(&["localhost"], (2020, 1, 1), (2021, 1, 1));
    let server = tls_server(ServerSetup::new(&expired)).await;
    let client = client(Some(trusting(&ca)));
    let err = get(&client, &server.url("/")).await.unwrap_err();
    assert_eq!(tls_failure(&err), TlsFailure::Expired, "{err}");
    assert!(err.to_string().contains("expired"), "{err}");

    let future = ca.server_cert_valid(&["localhost"], (3000, 1, 1), (3001, 1, 1));
    let server = tls_server(ServerSetup::new(&future)).await;
    let err = get(&client, &server.url("/")).await.unwrap_err();
    assert_eq!(tls_failure(&err), TlsFailure::NotYetValid, "{err}");
}

#[tokio::test]
async fn custom_ca_is_trusted_and_http2_is_negotiated_by_alpn() {
    let ca = Ca::new("private CA");
    let cert = ca.server_cert(&["localhost"]);
    let server = tls_server(ServerSetup {
        h2: true,
        ..ServerSetup::new(&cert)
    })
    .await;

    // The CA added to the webpki roots, from a file.
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.cert.cert_pem).unwrap();
    let client = client(Some(ClientTlsConfig::new().add_ca_file(&ca_file)));
    let response = get(&client, &server.url("/hello")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(response.headers()["x-version"], "HTTP/2.0");
    assert_eq!(response.body().as_ref(), b"hello over tls");

    // HTTP/2 turned off: HTTP/1.1 although the server offers h2.
    let http1 = self::client(Some(trusting(&ca).http2(false)));
    let response = get(&http1, &server.url("/")).await.unwrap();
    assert_eq!(response.version(), Version::HTTP_11);
    assert_eq!(response.headers()["x-version"], "HTTP/1.1");

    // A server that offers only http/1.1 is spoken to in HTTP/1.1 by the default settings.
    let h1_server = tls_server(ServerSetup::new(&cert)).await;
    let response = get(&client, &h1_server.url("/")).await.unwrap();
    assert_eq!(response.version(), Version::HTTP_11);
}

#[tokio::test]
async fn base_url_with_https_and_plain_http_through_the_same_client() {
    let ca = Ca::new("private CA");
    let cert = ca.server_cert(&["localhost"]);
    let server = tls_server(ServerSetup {
        body: Bytes::from_static(br#"{"secure":true}"#),
        ..ServerSetup::new(&cert)
    })
    .await;
    let client = HttpClient::builder("secure")
        .base_url(format!("https://localhost:{}", server.addr.port()))
        .tls(trusting(&ca))
        .build()
        .unwrap();
    let value: serde_json::Value = client.get_json("/x").await.unwrap();
    assert_eq!(value["secure"], true);

    // http:// still works through the TLS-capable connector.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/plain",
        axum::routing::get(|| async { axum::Json(serde_json::json!({"plain": true})) }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let value: serde_json::Value = client
        .get_json(&format!("http://{addr}/plain"))
        .await
        .unwrap();
    assert_eq!(value["plain"], true);
}

#[tokio::test]
async fn client_certificate_is_presented_and_required_over_http1() {
    client_certificate_is_presented_and_required(false).await;
}

#[tokio::test]
async fn client_certificate_is_presented_and_required_over_http2() {
    client_certificate_is_presented_and_required(true).await;
}

/// In TLS 1.3 the client's handshake is over before the server has checked the client's
/// certificate: the server's refusal (an alert) arrives while the request is under way, on
/// the HTTP/1.1 or the HTTP/2 connection.
async fn client_certificate_is_presented_and_required(h2: bool) {
    let ca = Ca::new("mesh CA");
    let cert = ca.server_cert(&["localhost"]);
    let server = tls_server(ServerSetup {
        client_ca: Some(&ca),
        h2,
        ..ServerSetup::new(&cert)
    })
    .await;

    // With a certificate of the CA the server trusts (files, as from configuration).
    let identity = ca.client_cert("billing.internal");
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_file, &identity.cert_pem).unwrap();
    std::fs::write(&key_file, &identity.key_pem).unwrap();
    let with_cert = client(Some(trusting(&ca).client_cert_files(&cert_file, &key_file)));
    let response = get(&with_cert, &server.url("/")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-client-cert"], "yes");
    let version = if h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    assert_eq!(response.version(), version);

    // Without one: the server requires it.
    let without = client(Some(trusting(&ca)));
    assert_refused_once(
        &without,
        &server.url("/"),
        TlsFailure::ClientCertificateRequired,
    )
    .await;

    // With a certificate of another CA: rejected.
    let stranger = Ca::new("other CA").client_cert("mallory.internal");
    let wrong = client(Some(
        trusting(&ca).client_cert_pem(stranger.cert_pem.clone(), stranger.key_pem.clone()),
    ));
    assert_refused_once(
        &wrong,
        &server.url("/"),
        TlsFailure::ClientCertificateRejected,
    )
    .await;
    // The server refused both handshakes, once each: no retries.
    assert_eq!(server.failed_handshakes(), 2);
    assert_eq!(server.connections(), 3);
}

#[tokio::test]
async fn tls_failures_count_for_the_breaker_without_retries() {
    let ca = Ca::new("untrusted CA");
    let cert = ca.server_cert(&["localhost"]);
    let server = tls_server(ServerSetup::new(&cert)).await;
    let client = HttpClient::builder("breaker")
        .policy(
            retrying_policy().circuit_breaker(
                CircuitBreakerConfig::new("breaker")
                    .sliding_window(SlidingWindowType::CountBased, 4)
                    .minimum_number_of_calls(4)
                    .failure_rate_threshold(50.0)
                    .wait_duration_in_open_state(Duration::from_secs(60)),
            ),
        )
        .build()
        .unwrap();
    for _ in 0..4 {
        let err = get(&client, &server.url("/")).await.unwrap_err();
        assert_eq!(tls_failure(&err), TlsFailure::UnknownIssuer);
        assert_eq!(err.attempts(), 1);
    }
    assert_eq!(
        server.connections(),
        4,
        "one handshake per call, no retries"
    );
    assert_eq!(
        client.circuit_breaker().unwrap().state(),
        BreakerState::Open
    );
    let err = get(&client, &server.url("/")).await.unwrap_err();
    assert!(
        matches!(err.kind(), ClientErrorKind::CircuitOpen { .. }),
        "{err}"
    );
    assert_eq!(server.connections(), 4);
}

#[tokio::test]
async fn unusable_tls_settings_fail_the_build() {
    let dir = tempfile::tempdir().unwrap();
    let err = HttpClient::builder("secure")
        .tls(ClientTlsConfig::new().add_ca_file(dir.path().join("absent.pem")))
        .build()
        .unwrap_err();
    assert!(
        matches!(err.kind(), ClientErrorKind::InvalidRequest { reason } if reason.contains("absent.pem")),
        "{err}"
    );
    let hyper = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let err = HttpClient::builder("secure")
        .tls(ClientTlsConfig::new())
        .hyper_client(hyper)
        .build()
        .unwrap_err();
    assert!(
        matches!(err.kind(), ClientErrorKind::InvalidRequest { .. }),
        "{err}"
    );
    let err = HttpClient::builder("secure")
        .base_url("ftp://files.internal")
        .build()
        .unwrap_err();
    assert!(
        matches!(err.kind(), ClientErrorKind::InvalidRequest { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn jwks_over_https_with_a_private_ca() {
    let issuer = TokenIssuer::builder("orders")
        .signing_key(SigningKey::generate_ed25519().unwrap())
        .build()
        .unwrap();
    let ca = Ca::new("identity CA");
    let cert = ca.server_cert(&["localhost"]);
    let server = tls_server(ServerSetup {
        h2: true,
        body: Bytes::from(issuer.jwks_json()),
        ..ServerSetup::new(&cert)
    })
    .await;
    let url = server.url("/.well-known/jwks.json");

    // The default fetcher speaks TLS, with webpki roots: the private CA is not trusted.
    let err = JwksKeySource::from_url(&url)
        .unwrap()
        .fetch_timeout(Duration::from_secs(5))
        .load()
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), AuthErrorKind::KeySetUnavailable { .. }),
        "{err}"
    );
    assert!(chain_mentions(&err, "UnknownIssuer"), "{err:?}");

    let source = JwksKeySource::from_url_with_tls(&url, trusting(&ca))
        .unwrap()
        .load()
        .await
        .unwrap();
    assert_eq!(source.keys().len(), 1);
    let verifier = TokenVerifier::builder("billing")
        .trust_issuer("orders")
        .jwks(source)
        .build()
        .unwrap();
    let token = issuer.issue("billing", &[]).unwrap();
    let identity = verifier.verify(token.as_str()).await.unwrap();
    assert_eq!(identity.issuer, "orders");

    // Settings that cannot be used are a configuration error, before any fetch.
    let err =
        JwksKeySource::from_url_with_tls(&url, ClientTlsConfig::new().roots(TrustRoots::None))
            .unwrap_err();
    assert!(
        matches!(err.kind(), AuthErrorKind::InvalidConfig { .. }),
        "{err}"
    );
}

/// Whether the Debug form of `err`'s source chain mentions `needle`.
fn chain_mentions(err: &(dyn std::error::Error + 'static), needle: &str) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if format!("{e:?}").contains(needle) {
            return true;
        }
        current = e.source();
    }
    false
}

#[tokio::test]
async fn failed_handshakes_are_measured_as_tls_errors() {
    let recorder = chassis_observability::metrics::build_recorder(
        &chassis_observability::config::MetricsConfig::default(),
    )
    .unwrap();
    let handle = recorder.handle();
    let _metrics = metrics::set_default_local_recorder(&recorder);

    let ca = Ca::new("test CA");
    let cert = ca.server_cert(&["other.example"]);
    let server = tls_server(ServerSetup::new(&cert)).await;
    let client = client(Some(trusting(&ca)));
    let err = get(&client, &server.url("/")).await.unwrap_err();
    assert_eq!(tls_failure(&err), TlsFailure::NotValidForName);

    let text = handle.render();
    let samples: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("http_client_request_duration_seconds_count"))
        .collect();
    assert_eq!(samples.len(), 1, "{text}");
    assert!(samples[0].contains("error_type=\"tls_error\""), "{text}");
    assert!(
        samples[0].contains(&format!("server_port=\"{}\"", server.addr.port())),
        "{text}"
    );
    assert!(samples[0].ends_with(" 1"), "one attempt: {text}");
}

/// Reads the machine's certificate store (`ca-certificates` on Linux).
#[tokio::test]
async fn platform_roots_with_and_without_the_private_ca() {
    let ca = Ca::new("private CA");
    let cert = ca.server_cert(&["localhost"]);
    let server = tls_server(ServerSetup::new(&cert)).await;

    let native = client(Some(ClientTlsConfig::new().roots(TrustRoots::Native)));
    let err = get(&native, &server.url("/")).await.unwrap_err();
    assert_eq!(tls_failure(&err), TlsFailure::UnknownIssuer, "{err}");

    let native_and_ca = client(Some(
        ClientTlsConfig::new()
            .roots(TrustRoots::Native)
            .add_ca_pem(ca.cert.cert_pem.clone()),
    ));
    let response = get(&native_and_ca, &server.url("/")).await.unwrap();
    assert_eq!(response.status(), 200);
}
