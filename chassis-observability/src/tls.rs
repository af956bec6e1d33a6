//! TLS of the connection to the collector: the roots its certificate is verified against and the
//! client certificate presented to it, read from the PEM files of
//! [`OtlpTlsConfig`](crate::config::OtlpTlsConfig) when telemetry is built.
//!
//! Both transports use the same material: the HTTP exporter gets a rustls [`ClientConfig`] (for
//! its hyper-rustls connector), the gRPC exporter tonic's `ClientTlsConfig` with the same trust
//! anchors and identity. Every rustls configuration is built with the ring provider rather than
//! rustls's process-wide default: a service's dependency tree often compiles in a second
//! provider (aws-lc-rs, through another crate), and with two rustls cannot pick a default.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::ClientConfig;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::OtlpTlsConfig;
use crate::{Error, ErrorKind};

/// Where a file's path comes from, for error messages.
const CA_SETTING: &str = "tracing.tls.ca_file / OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE";
const CERT_SETTING: &str = "tracing.tls.cert_file / OTEL_EXPORTER_OTLP_[TRACES_]CLIENT_CERTIFICATE";
const KEY_SETTING: &str = "tracing.tls.key_file / OTEL_EXPORTER_OTLP_[TRACES_]CLIENT_KEY";

/// The crypto provider of every configuration here: rustls's ring provider, shared.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The roots used without a configured CA: the platform's trust store plus Mozilla's roots
/// (webpki-roots), so a collector with a public certificate is trusted even in an image without
/// a CA bundle. Loaded once per process.
fn default_roots() -> RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let native = rustls_native_certs::load_native_certs();
            let (added, ignored) = roots.add_parsable_certificates(native.certs);
            if !native.errors.is_empty() || ignored > 0 {
                tracing::debug!(
                    target: "chassis_observability::tls",
                    added,
                    ignored,
                    errors = ?native.errors,
                    "some platform root certificates could not be loaded"
                );
            }
            roots
        })
        .clone()
}

fn tls_error(what: &str, path: &Path, setting: &str, problem: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Tls {
        reason: format!("{what} {} ({setting}): {problem}", path.display()),
    })
}

fn read(what: &str, path: &Path, setting: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| {
        let kind = ErrorKind::Tls {
            reason: format!("cannot read {what} {} ({setting}): {e}", path.display()),
        };
        Error::with_source(kind, e)
    })
}

/// The certificates of a PEM file, and its text.
fn certs(
    what: &str,
    path: &Path,
    setting: &str,
) -> Result<(Vec<CertificateDer<'static>>, Vec<u8>), Error> {
    let pem = read(what, path, setting)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(what, path, setting, format_args!("malformed PEM: {e}")))?;
    if certs.is_empty() {
        return Err(tls_error(
            what,
            path,
            setting,
            "no CERTIFICATE section in the PEM file",
        ));
    }
    Ok((certs, pem))
}

/// The client certificate: the parsed chain and key for rustls, the PEM text for tonic.
struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    #[cfg(feature = "grpc")]
    cert_pem: Vec<u8>,
    #[cfg(feature = "grpc")]
    key_pem: Vec<u8>,
}

/// The TLS material of one exporter, read and checked from the configured files.
pub(crate) struct TlsMaterial {
    roots: RootCertStore,
    identity: Option<Identity>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("roots", &self.roots.len())
            .field("client_certificate", &self.identity.is_some())
            .finish()
    }
}

impl TlsMaterial {
    /// Reads the files of `config`. `need_roots` (an `https://` endpoint) loads the default roots
    /// when no CA file is configured; otherwise the files are only checked, the connection being
    /// plain. Every error is [`ErrorKind::Tls`] naming the file and its setting.
    pub(crate) fn load(config: &OtlpTlsConfig, need_roots: bool) -> Result<Self, Error> {
        let roots = match &config.ca_file {
            Some(path) => {
                const WHAT: &str = "CA certificate file";
                let mut roots = RootCertStore::empty();
                for cert in certs(WHAT, path, CA_SETTING)?.0 {
                    roots.add(cert).map_err(|e| {
                        tls_error(WHAT, path, CA_SETTING, format_args!("unusable CA: {e}"))
                    })?;
                }
                roots
            }
            None if need_roots => default_roots(),
            None => RootCertStore::empty(),
        };
        let identity = match (&config.cert_file, &config.key_file) {
            (Some(cert_path), Some(key_path)) => {
                const CERT: &str = "client certificate file";
                const KEY: &str = "client key file";
                #[cfg_attr(not(feature = "grpc"), allow(unused_variables))]
                let (chain, cert_pem) = certs(CERT, cert_path, CERT_SETTING)?;
                let key_pem = read(KEY, key_path, KEY_SETTING)?;
                let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
                    rustls_pki_types::pem::Error::NoItemsFound => tls_error(
                        KEY,
                        key_path,
                        KEY_SETTING,
                        "no PRIVATE KEY section in the PEM file",
                    ),
                    e => tls_error(
                        KEY,
                        key_path,
                        KEY_SETTING,
                        format_args!("malformed PEM: {e}"),
                    ),
                })?;
                Some(Identity {
                    chain,
                    key,
                    #[cfg(feature = "grpc")]
                    cert_pem,
                    #[cfg(feature = "grpc")]
                    key_pem,
                })
            }
            // `TracingConfig::validate` refuses one without the other.
            _ => None,
        };
        let material = Self { roots, identity };
        // Builds the rustls configuration once, so a key that does not fit its certificate (or
        // that ring cannot use) is an error now, whichever transport uses the material.
        material.client_config()?;
        Ok(material)
    }

    /// The rustls configuration for the HTTP exporter's connector.
    pub(crate) fn client_config(&self) -> Result<ClientConfig, Error> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| {
                Error::with_source(
                    ErrorKind::Tls {
                        reason: format!("ring supports no TLS version: {e}"),
                    },
                    e,
                )
            })?
            .with_root_certificates(self.roots.clone());
        match &self.identity {
            None => Ok(builder.with_no_client_auth()),
            Some(id) => builder
                .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
                .map_err(|e| {
                    Error::with_source(
                        ErrorKind::Tls {
                            reason: format!(
                                "the client key does not fit the client certificate ({CERT_SETTING}, {KEY_SETTING}): {e}"
                            ),
                        },
                        e,
                    )
                }),
        }
    }

    /// tonic's configuration for the gRPC exporter: the same trust anchors and identity.
    #[cfg(feature = "grpc")]
    pub(crate) fn tonic_config(
        &self,
    ) -> opentelemetry_otlp::tonic_types::transport::ClientTlsConfig {
        use opentelemetry_otlp::tonic_types::transport::{ClientTlsConfig, Identity};
        let config = ClientTlsConfig::new().trust_anchors(self.roots.roots.iter().cloned());
        match &self.identity {
            Some(id) => config.identity(Identity::from_pem(&id.cert_pem, &id.key_pem)),
            None => config,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn write(dir: &Path, name: &str, contents: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "chassis-observability-tls-{name}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn reason(e: &Error) -> &str {
        match e.kind() {
            ErrorKind::Tls { reason } => reason,
            other => panic!("expected ErrorKind::Tls, got {other:?}"),
        }
    }

    #[test]
    fn missing_and_empty_files_name_the_file_and_the_setting() {
        let dir = temp_dir("errors");
        let missing = dir.join("missing-ca.pem");
        let config = OtlpTlsConfig {
            ca_file: Some(missing.clone()),
            ..OtlpTlsConfig::default()
        };
        let err = TlsMaterial::load(&config, true).unwrap_err();
        assert!(
            reason(&err).contains(&missing.display().to_string()),
            "{err}"
        );
        assert!(
            reason(&err).contains("OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE"),
            "{err}"
        );
        assert!(
            std::error::Error::source(&err).is_some(),
            "the io::Error is the source"
        );

        let empty = write(&dir, "empty.pem", b"not a certificate\n");
        let config = OtlpTlsConfig {
            ca_file: Some(empty),
            ..OtlpTlsConfig::default()
        };
        let err = TlsMaterial::load(&config, false).unwrap_err();
        assert!(reason(&err).contains("no CERTIFICATE section"), "{err}");

        let key = write(
            &dir,
            "key.pem",
            b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
        );
        let config = OtlpTlsConfig {
            cert_file: Some(dir.join("missing-cert.pem")),
            key_file: Some(key),
            ..OtlpTlsConfig::default()
        };
        let err = TlsMaterial::load(&config, false).unwrap_err();
        assert!(reason(&err).contains("CLIENT_CERTIFICATE"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn default_roots_only_for_https_without_a_ca() {
        let plain = TlsMaterial::load(&OtlpTlsConfig::default(), false).unwrap();
        assert!(plain.roots.is_empty());
        let https = TlsMaterial::load(&OtlpTlsConfig::default(), true).unwrap();
        // At least Mozilla's roots, whatever the machine's trust store holds.
        assert!(https.roots.len() >= webpki_roots::TLS_SERVER_ROOTS.len());
        assert!(https.identity.is_none());
    }
}
