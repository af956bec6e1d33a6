//! TLS for the chassis's HTTP server and client, on rustls (feature `tls`, on by default).
//!
//! - [`client`]: the client side: trusted roots (webpki's bundle or the platform's), an extra
//!   CA bundle, an optional client certificate for mTLS, HTTP/2 by ALPN; used by
//!   [`HttpClient`](crate::client::HttpClient) and the JWKS fetcher.
//! - [`server`]: the server side of [`Server`](crate::server::Server): certificate and key from
//!   files, reloaded when they change, optional client-certificate verification and the peer's
//!   identity for handlers and the auth layers.
//!
//! Every rustls configuration here is built with the ring provider ([`provider`]) rather than
//! rustls's process-wide default: a service's dependency tree often enables a second provider
//! (aws-lc-rs, through another crate), and with two compiled in rustls cannot pick a default.
//!
//! PEM files are read with [`certs_from_pem_file`] and [`private_key_from_pem_file`]; their
//! errors name the file and say what was wrong with it.
//!
//! # Example
//! ```
//! let provider = chassis_http::tls::provider();
//! assert!(!provider.cipher_suites.is_empty());
//! let certs = chassis_http::tls::certs_from_pem(b"no certificate here");
//! assert!(certs.is_err());
//! ```

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Error, ErrorKind};

pub mod client;
pub mod peer;
pub mod server;

/// The crypto provider of every chassis TLS configuration: rustls's ring provider, shared.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

fn tls_error(reason: String, source: Option<rustls_pki_types::pem::Error>) -> Error {
    let kind = ErrorKind::Tls { reason };
    match source {
        Some(source) => Error::with_source(kind, source),
        None => Error::new(kind),
    }
}

/// Reads every certificate of a PEM file (a chain: leaf first, then intermediates; or a CA
/// bundle). An unreadable file, a malformed PEM section or a file without any certificate is an
/// [`ErrorKind::Tls`] error naming the file.
pub fn certs_from_pem_file(path: impl AsRef<Path>) -> Result<Vec<CertificateDer<'static>>, Error> {
    from_pem_file(path.as_ref(), "certificate", certs_from_pem)
}

/// Reads the PEM file at `path` (a `what` file, for the message) and parses it with `parse`;
/// both failures name the file.
fn from_pem_file<T>(
    path: &Path,
    what: &str,
    parse: impl FnOnce(&[u8]) -> Result<T, Error>,
) -> Result<T, Error> {
    let bytes = std::fs::read(path).map_err(|e| {
        Error::with_source(
            ErrorKind::Tls {
                reason: format!("cannot read {what} file {}", path.display()),
            },
            e,
        )
    })?;
    parse(&bytes).map_err(|e| {
        let reason = match e.kind() {
            ErrorKind::Tls { reason } => format!("{}: {reason}", path.display()),
            _ => path.display().to_string(),
        };
        tls_error(reason, None)
    })
}

/// Reads every certificate of PEM bytes; see [`certs_from_pem_file`].
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error("malformed PEM certificate".into(), Some(e)))?;
    if certs.is_empty() {
        return Err(tls_error("no CERTIFICATE section in PEM".into(), None));
    }
    Ok(certs)
}

/// Reads the private key of a PEM file (PKCS#8, PKCS#1 RSA or SEC1 EC: the first key section
/// found). An unreadable file or one without a key is an [`ErrorKind::Tls`] error naming the
/// file.
pub fn private_key_from_pem_file(path: impl AsRef<Path>) -> Result<PrivateKeyDer<'static>, Error> {
    from_pem_file(path.as_ref(), "private key", private_key_from_pem)
}

/// Reads the private key of PEM bytes; see [`private_key_from_pem_file`].
pub fn private_key_from_pem(pem: &[u8]) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            tls_error("no PRIVATE KEY section in PEM".into(), None)
        }
        e => tls_error("malformed PEM private key".into(), Some(e)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_generated_certificate_and_key() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let bundle = format!("{}{}", cert.pem(), cert.pem());
        assert_eq!(certs_from_pem(bundle.as_bytes()).unwrap().len(), 2);
        assert!(private_key_from_pem(key.serialize_pem().as_bytes()).is_ok());
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.pem");
        std::fs::write(&path, "not pem").unwrap();
        let err = certs_from_pem_file(&path).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("empty.pem") && text.contains("no CERTIFICATE"),
            "{text}"
        );
        let err = private_key_from_pem_file(&path).unwrap_err();
        assert!(err.to_string().contains("no PRIVATE KEY"), "{err}");
        let err = certs_from_pem_file(dir.path().join("missing.pem")).unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::Tls { .. }));
        assert!(err.to_string().contains("missing.pem"), "{err}");
    }
}
