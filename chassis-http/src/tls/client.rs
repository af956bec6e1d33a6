//! Client-side TLS: trusted roots, an extra CA bundle, a client certificate, ALPN.
//!
//! A [`ClientTlsConfig`] says whom a client trusts and who it is:
//!
//! - **Roots** ([`TrustRoots`]): Mozilla's CA bundle compiled into the binary (webpki-roots,
//!   the default: the same trust on every machine and in `FROM scratch` images), the
//!   platform's store (rustls-native-certs: `/etc/ssl/certs`, the macOS keychain, the Windows
//!   store; what `curl` trusts on that machine), or none but the CAs added here.
//! - **Extra CAs**: PEM bundles added to the roots ([`add_ca_file`](ClientTlsConfig::add_ca_file),
//!   [`add_ca_pem`](ClientTlsConfig::add_ca_pem)): a company CA on top of the public ones, or,
//!   with [`TrustRoots::None`], the only CAs trusted (a private PKI, where a public CA must not
//!   be able to vouch for an internal host).
//! - **Client certificate** (mTLS): a chain and its key from PEM files or bytes, presented when
//!   the server asks for one.
//! - **ALPN**: `h2` and `http/1.1` are offered, so HTTP/2 is used where the server supports it
//!   ([`http2`](ClientTlsConfig::http2) turns it off).
//!
//! It is used by [`HttpClientBuilder::tls`](crate::client::HttpClientBuilder::tls) and
//! [`JwksKeySource::from_url_with_tls`](crate::auth::JwksKeySource::from_url_with_tls); a
//! client built without one still reaches `https://` URLs with the default configuration
//! (webpki roots, no client certificate). [`build`](ClientTlsConfig::build) gives the rustls
//! configuration for other uses, [`https_connector`](ClientTlsConfig::https_connector) a
//! hyper-util connector.
//!
//! Every configuration uses the ring provider ([`provider`]), whatever other
//! providers the binary contains.
//!
//! When a handshake fails, the client's error says why: [`ClientErrorKind::Tls`] with a
//! [`TlsFailure`](crate::client::TlsFailure) (untrusted issuer, wrong host name, expired,
//! client certificate required or rejected...). TLS failures are not retried.
//!
//! [`ClientErrorKind::Tls`]: crate::client::ClientErrorKind::Tls
//!
//! # Example
//! ```
//! use chassis_http::client::HttpClient;
//! use chassis_http::tls::client::{ClientTlsConfig, TrustRoots};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let key = rcgen::KeyPair::generate()?;
//! # let ca = rcgen::CertificateParams::new(Vec::<String>::new())?.self_signed(&key)?;
//! # let ca_file = dir.path().join("internal-ca.pem");
//! # std::fs::write(&ca_file, ca.pem())?;
//! // Only the company's CA is trusted: a private PKI.
//! let tls = ClientTlsConfig::new()
//!     .roots(TrustRoots::None)
//!     .add_ca_file(&ca_file);
//! let rustls_config = tls.build()?;
//! assert_eq!(rustls_config.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
//!
//! let ledger = HttpClient::builder("ledger")
//!     .base_url("https://ledger.internal:8443")
//!     .tls(tls)
//!     .build()?;
//! # let _ = ledger;
//! # Ok(())
//! # }
//! ```
//!
//! The same from a configuration file (paths only; PEM bytes are for code):
//! ```
//! use chassis_http::tls::client::{ClientTlsConfig, TrustRoots};
//!
//! let tls: ClientTlsConfig = serde_json::from_str(r#"{
//!     "roots": "native",
//!     "ca_files": ["/etc/pki/internal-ca.pem"],
//!     "client_cert": { "cert_file": "/etc/tls/tls.crt", "key_file": "/etc/tls/tls.key" }
//! }"#).unwrap();
//! assert_eq!(tls.roots, TrustRoots::Native);
//! assert!(tls.http2);
//! ```

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use hyper_util::client::legacy::connect::HttpConnector;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use super::{certs_from_pem, certs_from_pem_file, private_key_from_pem, provider};
use super::{private_key_from_pem_file, tls_error};
use crate::error::{Error, ErrorKind};

/// The connector of a TLS-capable hyper-util client: `https://` through rustls, `http://` in
/// the clear.
pub type HttpsConnector = hyper_rustls::HttpsConnector<HttpConnector>;

/// Which root certificates a [`ClientTlsConfig`] trusts before its extra CAs are added.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum TrustRoots {
    /// Mozilla's root program, compiled in (webpki-roots): the same trust wherever the binary
    /// runs, including images without a CA store. The default.
    #[default]
    Webpki,
    /// The platform's certificate store (rustls-native-certs), read when the configuration is
    /// built: what the machine's administrator trusts, including CAs installed there.
    Native,
    /// No roots but the extra CAs of the configuration: for a private PKI, where only the
    /// company's CA may vouch for a server. Building fails when no CA was added.
    None,
}

/// The client certificate and key of a [`ClientTlsConfig`], as PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCertConfig {
    /// PEM file with the client's certificate chain: the leaf first, then intermediates.
    pub cert_file: PathBuf,
    /// PEM file with the private key of the leaf certificate (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// Client-side TLS settings; see the [module docs](self).
///
/// A builder with defaults (webpki roots, no extra CA, no client certificate, HTTP/2 offered)
/// and deserialisable from configuration files, where CAs and the client certificate are
/// paths. PEM bytes given in code ([`add_ca_pem`](Self::add_ca_pem),
/// [`client_cert_pem`](Self::client_cert_pem)) are not part of the serialised form.
///
/// Nothing is read until [`build`](Self::build): a configuration names files, building it
/// reads them and reports the first problem as an [`ErrorKind::Tls`] error.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientTlsConfig {
    /// The roots trusted before the extra CAs. Defaults to [`TrustRoots::Webpki`].
    pub roots: TrustRoots,
    /// PEM bundles of extra CA certificates to trust (added to the roots). Defaults to none.
    pub ca_files: Vec<PathBuf>,
    /// The certificate presented to servers that ask for one (mTLS). Defaults to none.
    pub client_cert: Option<ClientCertConfig>,
    /// Whether `h2` is offered by ALPN besides `http/1.1`. Defaults to `true`.
    pub http2: bool,
    /// Extra CA bundles given as PEM bytes.
    #[serde(skip)]
    ca_pems: Vec<Vec<u8>>,
    /// A client certificate chain and key given as PEM bytes; wins over `client_cert`.
    #[serde(skip)]
    client_cert_pem: Option<(Vec<u8>, Vec<u8>)>,
}

impl Default for ClientTlsConfig {
    fn default() -> Self {
        Self {
            roots: TrustRoots::Webpki,
            ca_files: Vec::new(),
            client_cert: None,
            http2: true,
            ca_pems: Vec::new(),
            client_cert_pem: None,
        }
    }
}

impl fmt::Debug for ClientTlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key's PEM never reaches a log line.
        f.debug_struct("ClientTlsConfig")
            .field("roots", &self.roots)
            .field("ca_files", &self.ca_files)
            .field("ca_pems", &self.ca_pems.len())
            .field("client_cert", &self.client_cert)
            .field(
                "client_cert_pem",
                &self.client_cert_pem.as_ref().map(|_| "<redacted>"),
            )
            .field("http2", &self.http2)
            .finish()
    }
}

impl ClientTlsConfig {
    /// The default configuration: webpki roots, no extra CA, no client certificate, HTTP/2
    /// offered by ALPN.
    pub fn new() -> Self {
        Self::default()
    }

    chassis_core::__builder_setters! {
        /// The roots trusted before the extra CAs. Defaults to [`TrustRoots::Webpki`]; with
        /// [`TrustRoots::None`] only the CAs added with [`add_ca_file`](Self::add_ca_file) and
        /// [`add_ca_pem`](Self::add_ca_pem) are trusted.
        roots: TrustRoots,
    }

    /// Trusts the CA certificates of the PEM bundle `path` too (read by
    /// [`build`](Self::build)). Defaults to none; may be called more than once.
    pub fn add_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_files.push(path.into());
        self
    }

    /// Trusts the CA certificates of the PEM bundle `pem` too. Defaults to none; may be
    /// called more than once.
    pub fn add_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pems.push(pem.into());
        self
    }

    /// Presents the certificate chain of `cert_file` with the key of `key_file` to servers
    /// that ask for a client certificate. Defaults to none.
    pub fn client_cert_files(
        mut self,
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
    ) -> Self {
        self.client_cert = Some(ClientCertConfig {
            cert_file: cert_file.into(),
            key_file: key_file.into(),
        });
        self.client_cert_pem = None;
        self
    }

    /// Presents the certificate chain of the PEM `cert_pem` (leaf first) with the key of the
    /// PEM `key_pem` to servers that ask for a client certificate. Defaults to none.
    pub fn client_cert_pem(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.client_cert_pem = Some((cert_pem.into(), key_pem.into()));
        self.client_cert = None;
        self
    }

    chassis_core::__builder_setters! {
        /// Whether HTTP/2 is offered by ALPN (`h2`, then `http/1.1`); with `false` only
        /// `http/1.1` is. Defaults to `true`: the server's choice decides.
        http2: bool,
    }

    /// Reads the roots, CA bundles and client certificate and builds the rustls client
    /// configuration, with ALPN set (`h2`, `http/1.1`, or `http/1.1` alone).
    ///
    /// For a hyper-util client use [`https_connector`](Self::https_connector) instead:
    /// hyper-rustls sets ALPN itself and refuses a configuration that has it already.
    ///
    /// # Errors
    /// [`ErrorKind::Tls`] saying what could not be used: a CA or certificate file that cannot
    /// be read or holds no certificate, a key that does not parse or does not match the
    /// certificate, a platform store without any usable certificate, or
    /// [`TrustRoots::None`] without an extra CA.
    pub fn build(&self) -> Result<Arc<ClientConfig>, Error> {
        let mut config = self.build_without_alpn()?;
        config.alpn_protocols = if self.http2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        Ok(Arc::new(config))
    }

    /// A hyper-util connector with this configuration over `http` (whose settings, such as a
    /// connect timeout, are kept): `https://` URLs through rustls with ALPN (`h2` and
    /// `http/1.1`, see [`http2`](Self::http2)), `http://` URLs in the clear.
    ///
    /// # Errors
    /// As [`build`](Self::build).
    pub fn https_connector(&self, mut http: HttpConnector) -> Result<HttpsConnector, Error> {
        let config = self.build_without_alpn()?;
        // hyper-rustls refuses `https://` through a connector that enforces `http://`.
        http.enforce_http(false);
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .enable_http1();
        Ok(if self.http2 {
            builder.enable_http2().wrap_connector(http)
        } else {
            builder.wrap_connector(http)
        })
    }

    fn build_without_alpn(&self) -> Result<ClientConfig, Error> {
        let roots = self.root_store()?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| {
                Error::with_source(
                    ErrorKind::Tls {
                        reason: "the crypto provider supports no safe protocol version".into(),
                    },
                    e,
                )
            })?
            .with_root_certificates(roots);
        match self.client_identity()? {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(|e| {
                Error::with_source(
                    ErrorKind::Tls {
                        reason: "the client certificate cannot be used with its key".into(),
                    },
                    e,
                )
            }),
            None => Ok(builder.with_no_client_auth()),
        }
    }

    fn root_store(&self) -> Result<RootCertStore, Error> {
        let mut store = RootCertStore::empty();
        match self.roots {
            TrustRoots::Webpki => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            TrustRoots::Native => {
                let found = rustls_native_certs::load_native_certs();
                for error in &found.errors {
                    tracing::warn!(%error, "skipping part of the platform's certificate store");
                }
                let (added, ignored) = store.add_parsable_certificates(found.certs);
                if ignored > 0 {
                    tracing::warn!(
                        ignored,
                        "skipping unparsable certificates of the platform's store"
                    );
                }
                if added == 0 {
                    return Err(tls_error(
                        "the platform's certificate store has no usable certificate".into(),
                        None,
                    ));
                }
            }
            TrustRoots::None => {
                if self.ca_files.is_empty() && self.ca_pems.is_empty() {
                    return Err(tls_error(
                        "roots = \"none\" trusts nothing without an extra CA (ca_files)".into(),
                        None,
                    ));
                }
            }
        }
        for path in &self.ca_files {
            let certs = certs_from_pem_file(path)?;
            add_cas(&mut store, certs, &path.display().to_string())?;
        }
        for pem in &self.ca_pems {
            add_cas(&mut store, certs_from_pem(pem)?, "CA PEM")?;
        }
        Ok(store)
    }

    fn client_identity(&self) -> Result<Option<Identity>, Error> {
        if let Some((cert_pem, key_pem)) = &self.client_cert_pem {
            return Ok(Some((
                certs_from_pem(cert_pem)?,
                private_key_from_pem(key_pem)?,
            )));
        }
        match &self.client_cert {
            Some(files) => Ok(Some((
                certs_from_pem_file(&files.cert_file)?,
                private_key_from_pem_file(&files.key_file)?,
            ))),
            None => Ok(None),
        }
    }
}

/// A certificate chain and the key of its leaf.
type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// Adds every certificate of a bundle as a trust anchor; one that is not a usable CA
/// certificate fails the whole bundle, naming `origin`.
fn add_cas(
    store: &mut RootCertStore,
    certs: Vec<CertificateDer<'static>>,
    origin: &str,
) -> Result<(), Error> {
    for cert in certs {
        store.add(cert).map_err(|e| {
            Error::with_source(
                ErrorKind::Tls {
                    reason: format!("{origin}: not a usable CA certificate"),
                },
                e,
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        (params.self_signed(&key).unwrap(), key)
    }

    fn reason(err: &Error) -> String {
        match err.kind() {
            ErrorKind::Tls { reason } => reason.clone(),
            other => panic!("not a TLS error: {other:?}"),
        }
    }

    #[test]
    fn defaults_trust_webpki_and_offer_h2() {
        let config = ClientTlsConfig::new().build().unwrap();
        assert_eq!(
            config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert!(!config.client_auth_cert_resolver.has_certs());
        let http1 = ClientTlsConfig::new().http2(false).build().unwrap();
        assert_eq!(http1.alpn_protocols, [b"http/1.1".to_vec()]);
    }

    #[test]
    fn private_pki_needs_a_ca_and_accepts_one() {
        let err = ClientTlsConfig::new()
            .roots(TrustRoots::None)
            .build()
            .unwrap_err();
        assert!(reason(&err).contains("trusts nothing"), "{err}");
        let (ca, _) = ca();
        assert!(
            ClientTlsConfig::new()
                .roots(TrustRoots::None)
                .add_ca_pem(ca.pem())
                .build()
                .is_ok()
        );
    }

    #[test]
    fn unreadable_ca_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing-ca.pem");
        let err = ClientTlsConfig::new()
            .add_ca_file(&missing)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("missing-ca.pem"), "{err}");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "hello").unwrap();
        let err = ClientTlsConfig::new()
            .add_ca_file(&garbage)
            .build()
            .unwrap_err();
        assert!(reason(&err).contains("garbage.pem"), "{err}");
    }

    #[test]
    fn client_certificate_from_files_and_a_mismatched_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["client.internal".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_file, key_file) = (dir.path().join("c.crt"), dir.path().join("c.key"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        let config = ClientTlsConfig::new()
            .client_cert_files(&cert_file, &key_file)
            .build()
            .unwrap();
        assert!(config.client_auth_cert_resolver.has_certs());

        let other_key = rcgen::KeyPair::generate().unwrap();
        let err = ClientTlsConfig::new()
            .client_cert_pem(cert.pem(), other_key.serialize_pem())
            .build()
            .unwrap_err();
        assert!(
            reason(&err).contains("cannot be used with its key"),
            "{err}"
        );
        let err = ClientTlsConfig::new()
            .client_cert_files(&cert_file, dir.path().join("nokey.pem"))
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("nokey.pem"), "{err}");
    }

    #[test]
    fn deserialises_paths_and_rejects_unknown_fields() {
        let config: ClientTlsConfig = serde_json::from_str(
            r#"{"roots":"none","ca_files":["ca.pem"],
                "client_cert":{"cert_file":"c.crt","key_file":"c.key"},"http2":false}"#,
        )
        .unwrap();
        assert_eq!(
            config,
            ClientTlsConfig::new()
                .roots(TrustRoots::None)
                .add_ca_file("ca.pem")
                .client_cert_files("c.crt", "c.key")
                .http2(false)
        );
        let empty: ClientTlsConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, ClientTlsConfig::default());
        assert!(serde_json::from_str::<ClientTlsConfig>(r#"{"ca_file":"x"}"#).is_err());
        assert!(serde_json::from_str::<ClientTlsConfig>(r#"{"roots":"system"}"#).is_err());
    }

    #[test]
    fn debug_hides_the_key() {
        let config = ClientTlsConfig::new().client_cert_pem("CERT", "-----BEGIN PRIVATE KEY-----");
        let text = format!("{config:?}");
        assert!(
            !text.contains("PRIVATE KEY") && text.contains("redacted"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn connector_accepts_the_configuration() {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(std::time::Duration::from_secs(1)));
        assert!(ClientTlsConfig::new().https_connector(http).is_ok());
    }
}
