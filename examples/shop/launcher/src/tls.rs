//! `--tls`: every service on HTTPS, with mTLS between them.
//!
//! [`ShopPki::generate`] makes a development CA and one certificate per service (and one for
//! the launcher itself) in `<run dir>/tls`: each names `localhost`, `127.0.0.1` and the
//! service's host names under Compose (`orders`) and in the `shop` namespace of Kubernetes
//! (`orders.shop.svc`, `orders.shop.svc.cluster.local`), so the same files serve
//! `examples/deploy`; it carries the SPIFFE-style URI `spiffe://shop/<service>` (the identity a
//! service's peers see) and is good for serving and for calling. [`ShopPki::env`] gives a service the `TLS_*` variables of
//! `shop_common::tls`: internal services require a certificate from the shop's CA of every
//! caller; the gateway, which end users' clients reach, verifies one only when presented; the
//! payment provider, a third party, asks for none.
//!
//! The launcher's own calls (readiness, `/metrics` scrapes, the workload through the gateway)
//! go through [`ShopPki::http_client`]: it trusts only the shop's CA and presents the
//! launcher's certificate. Readiness and scrapes reach the chassis services on their admin
//! ports, which stay plain HTTP (`System::admin_url`).

use std::path::{Path, PathBuf};

use chassis_http::tls::client::{ClientTlsConfig, TrustRoots};
use chassis_testkit::TestCa;

use crate::{BoxError, SERVICES};

/// The name of the launcher's own certificate.
const LAUNCHER: &str = "launcher";

/// The run's CA and certificates, as files; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct ShopPki {
    dir: PathBuf,
}

impl ShopPki {
    /// Generates the CA (`ca.pem`) and a certificate and key per service and for the launcher
    /// (`<name>.pem`, `<name>.key`) into `dir`, created if missing.
    pub fn generate(dir: impl Into<PathBuf>) -> Result<Self, BoxError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        let ca = TestCa::new("shop development CA");
        ca.write_cert(dir.join("ca.pem"));
        for name in SERVICES.iter().copied().chain([LAUNCHER]) {
            ca.leaf("localhost")
                .ip(std::net::Ipv4Addr::LOCALHOST.into())
                .dns(name)
                .dns(&format!("{name}.shop.svc"))
                .dns(&format!("{name}.shop.svc.cluster.local"))
                .uri(&format!("spiffe://shop/{name}"))
                .issue()
                .write(&dir, name);
        }
        Ok(Self { dir })
    }

    /// The CA certificate every party trusts.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The certificate and key files of `name` (a service, or `launcher`).
    pub fn cert_files(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        )
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The `TLS_*` environment of `service`.
    pub fn env(&self, service: &str) -> Vec<(String, String)> {
        let (cert, key) = self.cert_files(service);
        let client_auth = match service {
            "gateway" => "optional",
            "payment-provider" => "none",
            _ => "required",
        };
        vec![
            ("TLS_CERT_FILE".into(), cert.display().to_string()),
            ("TLS_KEY_FILE".into(), key.display().to_string()),
            ("TLS_CA_FILE".into(), self.ca_file().display().to_string()),
            ("TLS_CLIENT_AUTH".into(), client_auth.into()),
        ]
    }

    /// A reqwest client builder trusting only the shop's CA and presenting the launcher's
    /// certificate. HTTP/1.1 only: the launcher's reqwest is built without HTTP/2.
    pub fn http_client(&self) -> Result<reqwest::ClientBuilder, BoxError> {
        let (cert, key) = self.cert_files(LAUNCHER);
        let config = ClientTlsConfig::new()
            .roots(TrustRoots::None)
            .add_ca_file(self.ca_file())
            .client_cert_files(cert, key)
            .http2(false)
            .build()?;
        Ok(reqwest::Client::builder().tls_backend_preconfigured((*config).clone()))
    }
}

/// A reqwest client builder for the launcher's calls: with `pki`, HTTPS as
/// [`ShopPki::http_client`]; without, plain.
pub fn http_client(pki: Option<&ShopPki>) -> Result<reqwest::ClientBuilder, BoxError> {
    match pki {
        Some(pki) => pki.http_client(),
        None => Ok(reqwest::Client::builder()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_gets_a_certificate_and_its_client_auth() {
        let dir = tempfile::tempdir().unwrap();
        let pki = ShopPki::generate(dir.path().join("tls")).unwrap();
        for service in SERVICES {
            let env = pki.env(service);
            let get = |k: &str| env.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
            let cert = std::fs::read_to_string(get("TLS_CERT_FILE").unwrap()).unwrap();
            assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{service}");
            let identity = chassis_http::tls::peer::PeerIdentity::from_certificate(
                chassis_http::tls::certs_from_pem(cert.as_bytes()).unwrap()[0].clone(),
            )
            .unwrap();
            assert!(
                identity.has_uri(&format!("spiffe://shop/{service}")),
                "{service}"
            );
            let auth = get("TLS_CLIENT_AUTH").unwrap();
            let expected = match service {
                "gateway" => "optional",
                "payment-provider" => "none",
                _ => "required",
            };
            assert_eq!(auth, expected);
        }
        assert!(pki.http_client().is_ok());
    }
}
