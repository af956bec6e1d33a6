//! HTTPS and mTLS between the shop's services, configured from the environment.
//!
//! - `TLS_CERT_FILE`, `TLS_KEY_FILE`: the service's certificate and key (PEM). With them the
//!   service serves HTTPS only, and presents the same certificate when it calls another
//!   service (its identity is the certificate's SPIFFE-style URI, `spiffe://shop/<service>`).
//! - `TLS_CA_FILE`: the shop's CA. Calls to other services trust only it (a private PKI: a
//!   certificate from a public CA does not make a server one of the shop's services), and the
//!   server verifies callers' certificates against it.
//! - `TLS_CLIENT_AUTH`: `required` (the default when a CA is given: a caller without a
//!   certificate from the shop's CA fails the handshake), `optional` (a certificate is verified
//!   when presented: the gateway, whose end users' clients have none, and services whose probes
//!   come from a kubelet, which presents none; their internal APIs still admit only the
//!   gateway's certificate, see [`only_callers`]) or `none`.
//!
//! Without `TLS_CERT_FILE` a service serves plain HTTP, as it does by default. The launcher's
//! `--tls` generates a CA and a certificate per service into the run directory and sets these
//! variables; Compose and Kubernetes mount them from a secret (`examples/deploy`).

use axum::Router;
use chassis_core::BoxError;
use chassis_http::client::HttpClientBuilder;
use chassis_http::tls::client::{ClientTlsConfig, TrustRoots};
use chassis_http::tls::peer::RequirePeerLayer;
use chassis_http::tls::server::ServerTlsConfig;

use crate::service::env;

/// Who may connect to a TLS server: `TLS_CLIENT_AUTH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every caller presents a certificate from the shop's CA.
    Required,
    /// A certificate is verified when presented; callers without one are served.
    Optional,
    /// No client certificates are asked for.
    None,
}

impl ClientAuth {
    fn from_env() -> Result<Self, BoxError> {
        match env("TLS_CLIENT_AUTH", "required").as_str() {
            "required" => Ok(Self::Required),
            "optional" => Ok(Self::Optional),
            "none" => Ok(Self::None),
            other => {
                Err(format!("TLS_CLIENT_AUTH: `{other}` is not required, optional or none").into())
            }
        }
    }
}

/// The server's TLS settings, or `None` when `TLS_CERT_FILE` is unset (plain HTTP).
pub fn server_tls() -> Result<Option<ServerTlsConfig>, BoxError> {
    let cert = env("TLS_CERT_FILE", "");
    if cert.is_empty() {
        return Ok(None);
    }
    let key = env("TLS_KEY_FILE", "");
    if key.is_empty() {
        return Err("TLS_CERT_FILE is set without TLS_KEY_FILE".into());
    }
    let config = ServerTlsConfig::new(cert, key);
    let ca = env("TLS_CA_FILE", "");
    Ok(Some(match (ClientAuth::from_env()?, ca.is_empty()) {
        (ClientAuth::None, _) => config,
        (_, true) => {
            return Err(
                "TLS_CLIENT_AUTH needs TLS_CA_FILE (the CA callers' certificates come from)".into(),
            );
        }
        (ClientAuth::Required, false) => config.require_client_cert(ca),
        (ClientAuth::Optional, false) => config.optional_client_cert(ca),
    }))
}

/// The SPIFFE-style identity of a shop service in its certificate: `spiffe://shop/<service>`.
pub fn identity(service: &str) -> String {
    format!("spiffe://shop/{service}")
}

/// `routes` letting only the services `callers` through, by the identity of their
/// certificate, when the server verifies client certificates (TLS with `TLS_CLIENT_AUTH`
/// `required` or `optional`); `routes` as they are otherwise. Others get a 403 with the JSON
/// error body. This is on top of the service token: the token says what the gateway allows
/// the request, the certificate proves which service sent it.
///
/// With `optional`, callers without a certificate still get a connection, so the probes (in
/// front of these routes) answer a kubelet's HTTPS probe, which presents no certificate, while
/// the API stays closed to everyone but `callers`.
pub fn only_callers<S>(routes: Router<S>, callers: &[&str]) -> Result<Router<S>, BoxError>
where
    S: Clone + Send + Sync + 'static,
{
    Ok(match callers_layer(callers)? {
        Some(layer) => routes.layer(layer),
        None => routes,
    })
}

/// The layer of [`only_callers`] for any service (the inventory's gRPC service lets only the
/// orders service through), or `None` when the server does not verify client certificates.
pub fn callers_layer(callers: &[&str]) -> Result<Option<RequirePeerLayer>, BoxError> {
    if server_tls()?.is_none() || ClientAuth::from_env()? == ClientAuth::None {
        return Ok(None);
    }
    Ok(Some(
        callers
            .iter()
            .fold(RequirePeerLayer::new(), |layer, caller| {
                layer.allow_uri(identity(caller))
            }),
    ))
}

/// The TLS settings of calls to other services, or `None` when `TLS_CA_FILE` is unset: only
/// the shop's CA is trusted, and the service's own certificate is presented when it has one.
pub fn client_tls() -> Result<Option<ClientTlsConfig>, BoxError> {
    let ca = env("TLS_CA_FILE", "");
    if ca.is_empty() {
        return Ok(None);
    }
    let mut config = ClientTlsConfig::new()
        .roots(TrustRoots::None)
        .add_ca_file(ca);
    let (cert, key) = (env("TLS_CERT_FILE", ""), env("TLS_KEY_FILE", ""));
    if !cert.is_empty() && !key.is_empty() {
        config = config.client_cert_files(cert, key);
    }
    Ok(Some(config))
}

/// [`chassis_http::client::HttpClient::builder`] with [`client_tls`] applied.
pub fn client_builder(name: &str) -> Result<HttpClientBuilder, BoxError> {
    let builder = chassis_http::client::HttpClient::builder(name);
    Ok(match client_tls()? {
        Some(tls) => builder.tls(tls),
        None => builder,
    })
}
