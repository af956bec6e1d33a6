//! Server-side TLS: the certificate and key of [`Server`](crate::server::Server), reloaded when
//! their files change, and optional client-certificate verification (mTLS).
//!
//! Give a [`ServerTlsConfig`] to [`ServerConfig::tls`](crate::server::ServerConfig::tls) and the
//! server speaks HTTPS on its port: each accepted connection does its TLS handshake in its own
//! task (the accept loop never waits for one), within
//! [`ServerConfig::header_read_timeout`](crate::server::ServerConfig::header_read_timeout) like
//! a first request, then serves HTTP/2 or HTTP/1.1 as negotiated by ALPN (`h2`, `http/1.1`).
//! A client that speaks plain HTTP to the port gets a `400` with the chassis JSON error body
//! saying the port speaks HTTPS, as nginx answers it, rather than a reset connection.
//!
//! # Rotation
//! The server polls the certificate, key and client CA files' modification time and length
//! every [`reload_interval`](ServerTlsConfig::reload_interval) (default 10 s). Once a change
//! has stayed unchanged for one more interval (so a half-written file or a certificate written
//! before its key is not read), the files are read again:
//!
//! - a certificate chain and key that parse and match replace the old ones for every *new*
//!   handshake; open connections keep theirs and go on working;
//! - anything else (a key that does not parse, a key of another certificate, a missing file)
//!   is logged once at WARN and the old certificate stays in use until the files change again;
//! - a changed client CA bundle is read the same way and used for new handshakes (a bundle
//!   that does not parse is logged and the old one kept).
//!
//! Kubernetes secret volumes (a symlink swap) and cert-manager or Vault agents writing files in
//! place are both seen: the files are followed through symlinks.
//!
//! # Client certificates
//! With [`require_client_cert`](ServerTlsConfig::require_client_cert) a client must present a
//! certificate issued under the given CA bundle, or the handshake fails; with
//! [`optional_client_cert`](ServerTlsConfig::optional_client_cert) a client may present none,
//! but one it presents must verify. The verified peer's identity (its SAN URIs such as a
//! SPIFFE id, and DNS names) reaches every request of the connection as a
//! [`PeerIdentity`](super::peer::PeerIdentity) extension; [`RequirePeerLayer`] restricts a
//! route to some identities.
//!
//! [`RequirePeerLayer`]: super::peer::RequirePeerLayer
//!
//! # Example
//! ```no_run
//! use std::time::Duration;
//! use chassis_http::server::{Server, ServerConfig};
//! use chassis_http::tls::server::ServerTlsConfig;
//!
//! # async fn run() -> Result<(), chassis_http::error::Error> {
//! let tls = ServerTlsConfig::new("/etc/tls/tls.crt", "/etc/tls/tls.key")
//!     .require_client_cert("/etc/tls/ca.crt")
//!     .reload_interval(Duration::from_secs(30));
//! let server = Server::bind(ServerConfig::default().tls(tls)).await?;
//! # Ok(())
//! # }
//! ```
//!
//! The same from a configuration file:
//! ```
//! # use chassis_http::server::ServerConfig;
//! let config: ServerConfig = serde_json::from_str(r#"{
//!     "bind": "0.0.0.0:8443",
//!     "tls": {
//!         "cert_file": "/etc/tls/tls.crt",
//!         "key_file": "/etc/tls/tls.key",
//!         "client_auth": { "ca_file": "/etc/tls/ca.crt", "required": true },
//!         "reload_interval": "30s"
//!     }
//! }"#).unwrap();
//! assert!(config.tls.is_some());
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use serde::Deserialize;

use super::{certs_from_pem_file, private_key_from_pem_file, provider};
use crate::error::{Error, ErrorKind};

/// The TLS settings of a [`Server`](crate::server::Server); see the [module docs](self).
///
/// Deserialisable (paths as strings, `reload_interval` as `"10s"`); `cert_file` and
/// `key_file` are required.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// PEM file with the server's certificate chain: the leaf first, then intermediates.
    pub cert_file: PathBuf,
    /// PEM file with the private key of the leaf certificate (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// Client-certificate verification (mTLS). Defaults to none: clients are not asked for a
    /// certificate.
    #[serde(default)]
    pub client_auth: Option<ClientAuthConfig>,
    /// How often the files are checked for changes. Defaults to 10 s.
    #[serde(default = "default_reload_interval", with = "humantime_serde")]
    pub reload_interval: Duration,
}

/// Client-certificate verification of a [`ServerTlsConfig`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAuthConfig {
    /// PEM bundle of the CA certificates client certificates must chain to.
    pub ca_file: PathBuf,
    /// Whether a client without a certificate is refused at the handshake. Defaults to
    /// `true`; with `false` such a client is served without a
    /// [`PeerIdentity`](super::peer::PeerIdentity) (a certificate it does present must still
    /// verify).
    #[serde(default = "required_by_default")]
    pub required: bool,
}

fn default_reload_interval() -> Duration {
    Duration::from_secs(10)
}

fn required_by_default() -> bool {
    true
}

impl ServerTlsConfig {
    /// Serves the certificate chain of `cert_file` with the key of `key_file`, without
    /// client-certificate verification, checking the files for changes every 10 s.
    pub fn new(cert_file: impl Into<PathBuf>, key_file: impl Into<PathBuf>) -> Self {
        Self {
            cert_file: cert_file.into(),
            key_file: key_file.into(),
            client_auth: None,
            reload_interval: default_reload_interval(),
        }
    }

    /// Requires every client to present a certificate that chains to a CA of `ca_file`.
    /// Defaults to no client certificates.
    pub fn require_client_cert(mut self, ca_file: impl Into<PathBuf>) -> Self {
        self.client_auth = Some(ClientAuthConfig {
            ca_file: ca_file.into(),
            required: true,
        });
        self
    }

    /// Asks clients for a certificate that chains to a CA of `ca_file`, but serves clients
    /// without one too. Defaults to no client certificates.
    pub fn optional_client_cert(mut self, ca_file: impl Into<PathBuf>) -> Self {
        self.client_auth = Some(ClientAuthConfig {
            ca_file: ca_file.into(),
            required: false,
        });
        self
    }

    chassis_core::__builder_setters! {
        /// How often the certificate, key and CA files are checked for changes. Defaults to 10 s.
        reload_interval: Duration,
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.reload_interval.is_zero() {
            return Err(Error::new(ErrorKind::InvalidConfig {
                reason: "tls.reload_interval must be positive".into(),
            }));
        }
        Ok(())
    }
}

/// What the server protocols are offered by ALPN, most preferred first.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

fn tls_error(reason: String) -> Error {
    Error::new(ErrorKind::Tls { reason })
}

/// The certificate and key of `cert_file` and `key_file`, parsed and checked to match.
fn load_certified_key(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, Error> {
    let chain = certs_from_pem_file(cert_file)?;
    let key = private_key_from_pem_file(key_file)?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
        tls_error(format!(
            "the key of {} does not fit the certificate of {}: {e}",
            key_file.display(),
            cert_file.display()
        ))
    })
}

/// The client verifier for `auth`'s CA bundle.
fn load_client_verifier(auth: &ClientAuthConfig) -> Result<Arc<dyn ClientCertVerifier>, Error> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem_file(&auth.ca_file)? {
        roots.add(cert).map_err(|e| {
            tls_error(format!(
                "a CA certificate of {} is unusable: {e}",
                auth.ca_file.display()
            ))
        })?;
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    let builder = if auth.required {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    builder.build().map_err(|e| {
        tls_error(format!(
            "cannot verify clients with {}: {e}",
            auth.ca_file.display()
        ))
    })
}

fn rustls_config(
    certs: Arc<ReloadingCert>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(format!("no usable TLS protocol version: {e}")))?;
    let builder = match verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(certs);
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The certificate every new handshake gets: the latest that loaded.
#[derive(Debug)]
struct ReloadingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadingCert {
    fn get(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, key: CertifiedKey) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// What a file looked like when last checked: `None` if it could not be read.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The stamps of the files of one reloadable item (certificate + key, or CA bundle).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Watched {
    /// The stamps of the files as last loaded (or last tried).
    loaded: Vec<Stamp>,
    /// The stamps seen at the previous check, to wait for a change to settle.
    seen: Vec<Stamp>,
}

impl Watched {
    fn new(stamps: Vec<Stamp>) -> Self {
        Self {
            loaded: stamps.clone(),
            seen: stamps,
        }
    }

    /// Whether the files changed since they were last loaded and have stayed the same since
    /// the previous check; if so, they count as loaded from now on (a failed load is not
    /// retried until they change again).
    fn settled_change(&mut self, now: Vec<Stamp>) -> bool {
        let settled = now == self.seen && now != self.loaded;
        if settled {
            self.loaded = now.clone();
        }
        self.seen = now;
        settled
    }
}

/// The loaded TLS state of a server: the rustls configuration new handshakes use, and what
/// it takes to reload it.
pub(crate) struct ServerTls {
    settings: ServerTlsConfig,
    certs: Arc<ReloadingCert>,
    config: RwLock<Arc<rustls::ServerConfig>>,
    /// Item stamps, as of the load and of each check (only the reload task uses them).
    watched: std::sync::Mutex<(Watched, Option<Watched>)>,
}

chassis_core::__debug_fields!(ServerTls { settings });

impl ServerTls {
    /// Reads the files of `settings`: a missing or bad certificate, key or CA bundle is an
    /// [`ErrorKind::Tls`] error that names the file.
    pub(crate) fn load(settings: &ServerTlsConfig) -> Result<Arc<Self>, Error> {
        settings.validate()?;
        // Stamped before reading: a change while reading is seen at the next check.
        let cert_stamps = vec![stamp(&settings.cert_file), stamp(&settings.key_file)];
        let ca_stamps = settings
            .client_auth
            .as_ref()
            .map(|auth| vec![stamp(&auth.ca_file)]);
        let certs = Arc::new(ReloadingCert {
            current: RwLock::new(Arc::new(load_certified_key(
                &settings.cert_file,
                &settings.key_file,
            )?)),
        });
        let verifier = settings
            .client_auth
            .as_ref()
            .map(load_client_verifier)
            .transpose()?;
        let config = rustls_config(certs.clone(), verifier)?;
        Ok(Arc::new(Self {
            settings: settings.clone(),
            certs,
            config: RwLock::new(config),
            watched: std::sync::Mutex::new((
                Watched::new(cert_stamps),
                ca_stamps.map(Watched::new),
            )),
        }))
    }

    /// The rustls configuration for a new handshake.
    pub(crate) fn config(&self) -> Arc<rustls::ServerConfig> {
        self.config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The certificate chain new handshakes get (for tests).
    #[cfg(test)]
    fn current_chain(&self) -> Vec<rustls_pki_types::CertificateDer<'static>> {
        self.certs.get().cert.clone()
    }

    /// Checks the files every `reload_interval` and reloads what changed, for as long as it
    /// runs (the server aborts it when it stops).
    pub(crate) async fn watch(self: Arc<Self>) {
        let mut interval = tokio::time::interval(self.settings.reload_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        loop {
            interval.tick().await;
            let this = self.clone();
            // File reads and stats off the runtime's worker threads.
            let _ = tokio::task::spawn_blocking(move || this.check()).await;
        }
    }

    /// One check of the files; reloads what changed and settled.
    fn check(&self) {
        let settings = &self.settings;
        let mut watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
        let (cert_watch, ca_watch) = &mut *watched;
        if cert_watch.settled_change(vec![stamp(&settings.cert_file), stamp(&settings.key_file)]) {
            match load_certified_key(&settings.cert_file, &settings.key_file) {
                Ok(key) => {
                    self.certs.set(key);
                    tracing::info!(
                        target: "chassis_http::server",
                        cert_file = %settings.cert_file.display(),
                        "TLS certificate reloaded; new connections get the new one"
                    );
                }
                Err(error) => tracing::warn!(
                    target: "chassis_http::server",
                    %error,
                    "the changed TLS certificate or key is unusable; keeping the current one"
                ),
            }
        }
        if let (Some(auth), Some(ca_watch)) = (&settings.client_auth, ca_watch)
            && ca_watch.settled_change(vec![stamp(&auth.ca_file)])
        {
            match load_client_verifier(auth)
                .and_then(|v| rustls_config(self.certs.clone(), Some(v)))
            {
                Ok(config) => {
                    *self.config.write().unwrap_or_else(PoisonError::into_inner) = config;
                    tracing::info!(
                        target: "chassis_http::server",
                        ca_file = %auth.ca_file.display(),
                        "client CA bundle reloaded; new connections are verified with it"
                    );
                }
                Err(error) => tracing::warn!(
                    target: "chassis_http::server",
                    %error,
                    "the changed client CA bundle is unusable; keeping the current one"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        let (cert_file, key_file) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file, cert.der().to_vec())
    }

    #[test]
    fn config_from_a_file_with_defaults() {
        let config: ServerTlsConfig =
            serde_json::from_str(r#"{"cert_file":"a.crt","key_file":"a.key"}"#).unwrap();
        assert_eq!(config, ServerTlsConfig::new("a.crt", "a.key"));
        assert_eq!(config.reload_interval, Duration::from_secs(10));
        assert!(config.client_auth.is_none());
        let config: ServerTlsConfig = serde_json::from_str(
            r#"{"cert_file":"a.crt","key_file":"a.key","reload_interval":"250ms",
                "client_auth":{"ca_file":"ca.crt"}}"#,
        )
        .unwrap();
        assert_eq!(
            config,
            ServerTlsConfig::new("a.crt", "a.key")
                .require_client_cert("ca.crt")
                .reload_interval(Duration::from_millis(250))
        );
        let optional: ClientAuthConfig =
            serde_json::from_str(r#"{"ca_file":"ca.crt","required":false}"#).unwrap();
        assert!(!optional.required);
        assert!(
            serde_json::from_str::<ServerTlsConfig>(r#"{"cert_file":"a.crt"}"#).is_err(),
            "the key file is required"
        );
        assert!(
            ServerTlsConfig::new("a", "b")
                .reload_interval(Duration::ZERO)
                .validate()
                .is_err()
        );
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_file, _, _) = write_cert(dir.path(), "one");
        let err = ServerTls::load(&ServerTlsConfig::new(&cert_file, dir.path().join("no.key")))
            .unwrap_err();
        assert!(err.to_string().contains("no.key"), "{err}");
        // A key of another certificate.
        let other = tempfile::tempdir().unwrap();
        let (_, other_key, _) = write_cert(other.path(), "two");
        let err = ServerTls::load(&ServerTlsConfig::new(&cert_file, &other_key)).unwrap_err();
        assert!(err.to_string().contains("does not fit"), "{err}");
        let config = ServerTlsConfig::new(&cert_file, dir.path().join("tls.key"))
            .require_client_cert(dir.path().join("ca.crt"));
        let err = ServerTls::load(&config).unwrap_err();
        assert!(err.to_string().contains("ca.crt"), "{err}");
    }

    #[test]
    fn a_change_is_loaded_once_settled_and_a_bad_one_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_file, key_file, first) = write_cert(dir.path(), "one");
        let tls = ServerTls::load(&ServerTlsConfig::new(&cert_file, &key_file)).unwrap();
        assert_eq!(tls.current_chain()[0].as_ref(), &first[..]);
        tls.check();
        assert_eq!(
            tls.current_chain()[0].as_ref(),
            &first[..],
            "nothing changed"
        );

        let (_, _, second) = write_cert(dir.path(), "two-with-a-longer-name");
        tls.check();
        assert_eq!(
            tls.current_chain()[0].as_ref(),
            &first[..],
            "not before the change settled"
        );
        tls.check();
        assert_eq!(tls.current_chain()[0].as_ref(), &second[..]);

        std::fs::write(&key_file, "garbage").unwrap();
        tls.check();
        tls.check();
        assert_eq!(tls.current_chain()[0].as_ref(), &second[..], "kept");
    }
}
