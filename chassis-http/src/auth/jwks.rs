//! [`JwksKeySource`]: verification keys from a JWKS document.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use super::error::{AuthError, AuthErrorKind};
use super::keys::{KeySet, VerificationKey};
use chassis_core::BoxError;

/// Largest JWKS document accepted: 1 MiB.
const MAX_JWKS_BYTES: usize = 1 << 20;

type FetchFuture = Pin<Box<dyn Future<Output = Result<Bytes, BoxError>> + Send>>;
type Fetcher = Arc<dyn Fn() -> FetchFuture + Send + Sync>;

/// Verification keys loaded from a JWKS document (a file or an HTTP URL), refreshed
/// periodically and refetched once, rate-limited, when a token names an unknown key id.
///
/// Refreshing is lazy: the first verification after the refresh interval starts a background
/// refetch (on the current tokio runtime) and keeps using the keys it has, so no request waits
/// for it. Only a token with an unknown `kid` waits, for at most one fetch, and at most one such
/// fetch starts per [`min_refetch_interval`](JwksKeySourceBuilder::min_refetch_interval) however
/// many bogus kids arrive: an attacker cannot turn unknown kids into a flood of fetches.
/// A failed fetch keeps the previous keys.
///
/// Cheap to clone (shared).
#[derive(Clone)]
pub struct JwksKeySource {
    inner: Arc<JwksInner>,
}

struct JwksInner {
    location: String,
    fetch: Fetcher,
    refresh_interval: Duration,
    min_refetch_interval: Duration,
    fetch_timeout: Duration,
    state: RwLock<JwksState>,
    /// Serialises fetches: concurrent unknown-kid lookups share one fetch.
    fetch_lock: tokio::sync::Mutex<()>,
    background_refresh: AtomicBool,
}

struct JwksState {
    keys: Arc<KeySet>,
    loaded_at: Instant,
    last_attempt: Instant,
}

/// Builds a [`JwksKeySource`]; see [`JwksKeySource::from_file`] and [`JwksKeySource::from_url`].
pub struct JwksKeySourceBuilder {
    location: String,
    fetch: Fetcher,
    refresh_interval: Duration,
    min_refetch_interval: Duration,
    fetch_timeout: Duration,
}

chassis_core::__debug_fields!(JwksKeySourceBuilder {
    location,
    refresh_interval,
    min_refetch_interval
});

impl JwksKeySource {
    /// Keys from a JWKS file (e.g. a mounted Kubernetes secret or config map), re-read on refresh.
    pub fn from_file(path: impl Into<PathBuf>) -> JwksKeySourceBuilder {
        let path: PathBuf = path.into();
        let location = path.display().to_string();
        let fetch: Fetcher = Arc::new(move || {
            let path = path.clone();
            Box::pin(async move {
                let bytes = tokio::fs::read(&path).await?;
                Ok(Bytes::from(bytes))
            })
        });
        JwksKeySourceBuilder::new(location, fetch)
    }

    /// Keys fetched with `GET url`: an in-cluster endpoint such as
    /// `http://orders:8080/.well-known/jwks.json`, or an identity provider's
    /// `https://login.example.com/.well-known/jwks.json` (with the `tls` feature, on by
    /// default: the server's certificate must chain to a webpki root). For a server whose
    /// certificate comes from a private CA, use [`from_url_with_tls`](Self::from_url_with_tls).
    pub fn from_url(url: &str) -> Result<JwksKeySourceBuilder, AuthError> {
        #[cfg(feature = "tls")]
        {
            Self::from_url_with_tls(url, crate::tls::client::ClientTlsConfig::default())
        }
        #[cfg(not(feature = "tls"))]
        {
            let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
            Self::from_url_with_client(url, client)
        }
    }

    /// Keys fetched with `GET url` through a client with these TLS settings: a private CA
    /// ([`TrustRoots::None`](crate::tls::client::TrustRoots::None) and
    /// [`add_ca_file`](crate::tls::client::ClientTlsConfig::add_ca_file)), the platform's
    /// roots, a client certificate. `http://` URLs work too (in the clear).
    ///
    /// # Errors
    /// [`AuthErrorKind::InvalidConfig`] when the URL is not absolute or the TLS settings cannot
    /// be used (a CA file that cannot be read, a key that does not match its certificate).
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn from_url_with_tls(
        url: &str,
        tls: crate::tls::client::ClientTlsConfig,
    ) -> Result<JwksKeySourceBuilder, AuthError> {
        let connector = tls.https_connector(HttpConnector::new()).map_err(|e| {
            AuthError::with_source(
                AuthErrorKind::InvalidConfig {
                    reason: format!("invalid TLS settings for the JWKS url {url:?}"),
                },
                e,
            )
        })?;
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Self::from_url_with_client(url, client)
    }

    /// Keys fetched with `GET url` through `client` (any hyper-util connector, e.g. one with TLS).
    pub fn from_url_with_client<C>(
        url: &str,
        client: Client<C, Empty<Bytes>>,
    ) -> Result<JwksKeySourceBuilder, AuthError>
    where
        C: Connect + Clone + Send + Sync + 'static,
    {
        let uri: Uri = url.parse().map_err(|e| {
            AuthError::with_source(
                AuthErrorKind::InvalidConfig {
                    reason: format!("invalid JWKS url {url:?}"),
                },
                e,
            )
        })?;
        if uri.scheme().is_none() || uri.authority().is_none() {
            return Err(AuthError::invalid_config(format!(
                "JWKS url {url:?} must be absolute"
            )));
        }
        let fetch: Fetcher = Arc::new(move || {
            let client = client.clone();
            let uri = uri.clone();
            Box::pin(async move {
                let request = Request::get(uri)
                    .header(header::ACCEPT, "application/jwk-set+json, application/json")
                    .body(Empty::<Bytes>::new())?;
                let response = client.request(request).await?;
                if response.status() != StatusCode::OK {
                    return Err(format!("JWKS endpoint answered {}", response.status()).into());
                }
                let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
                    .collect()
                    .await?;
                Ok(body.to_bytes())
            })
        });
        Ok(JwksKeySourceBuilder::new(url.to_owned(), fetch))
    }

    /// The keys currently loaded.
    pub fn keys(&self) -> Arc<KeySet> {
        self.read().keys.clone()
    }

    /// Fetches the document now (regardless of intervals) and replaces the keys if it parses.
    pub async fn refresh(&self) -> Result<(), AuthError> {
        let _guard = self.inner.fetch_lock.lock().await;
        self.fetch_and_store().await
    }

    /// Where the document comes from.
    pub fn location(&self) -> &str {
        &self.inner.location
    }

    /// Looks `kid` up in the loaded keys, starting a background refresh when they are older than
    /// the refresh interval.
    pub(crate) fn lookup(&self, kid: &str) -> Option<VerificationKey> {
        let (key, stale) = {
            let state = self.read();
            (
                state.keys.get(kid).cloned(),
                state.loaded_at.elapsed() >= self.inner.refresh_interval
                    && state.last_attempt.elapsed() >= self.inner.min_refetch_interval,
            )
        };
        if stale {
            self.spawn_refresh();
        }
        key
    }

    /// Refetches once for an unknown `kid`, unless a fetch was attempted less than the minimum
    /// refetch interval ago. Concurrent callers share one fetch.
    pub(crate) async fn lookup_after_refetch(&self, kid: &str) -> Option<VerificationKey> {
        let _guard = self.inner.fetch_lock.lock().await;
        {
            // Another caller may have fetched while we waited for the lock.
            let state = self.read();
            if let Some(key) = state.keys.get(kid) {
                return Some(key.clone());
            }
            if state.last_attempt.elapsed() < self.inner.min_refetch_interval {
                tracing::debug!(kid, "unknown key id; refetch rate-limited");
                return None;
            }
        }
        tracing::info!(kid, location = %self.inner.location, "unknown key id; refetching key set");
        if let Err(err) = self.fetch_and_store().await {
            tracing::warn!(location = %self.inner.location, error = %err, "key set refetch failed");
        }
        self.read().keys.get(kid).cloned()
    }

    fn spawn_refresh(&self) {
        if self.inner.background_refresh.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.inner
                .background_refresh
                .store(false, Ordering::Release);
            return;
        };
        let this = self.clone();
        handle.spawn(async move {
            {
                let _guard = this.inner.fetch_lock.lock().await;
                let state_fresh = this.read().loaded_at.elapsed() < this.inner.refresh_interval;
                if !state_fresh && let Err(err) = this.fetch_and_store().await {
                    tracing::warn!(location = %this.inner.location, error = %err, "key set refresh failed");
                }
            }
            this.inner.background_refresh.store(false, Ordering::Release);
        });
    }

    /// Fetches and stores; the caller holds `fetch_lock`.
    async fn fetch_and_store(&self) -> Result<(), AuthError> {
        self.write().last_attempt = Instant::now();
        let keys = fetch_keys(
            &self.inner.location,
            &self.inner.fetch,
            self.inner.fetch_timeout,
        )
        .await?;
        tracing::debug!(location = %self.inner.location, keys = keys.len(), "key set loaded");
        let mut state = self.write();
        state.keys = Arc::new(keys);
        state.loaded_at = Instant::now();
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, JwksState> {
        self.inner
            .state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, JwksState> {
        self.inner
            .state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

crate::error::debug_inner!(JwksKeySource {
    location, refresh_interval, min_refetch_interval;
    kids = |source| source.keys().kids().collect::<Vec<_>>(),
});

impl JwksKeySourceBuilder {
    fn new(location: String, fetch: Fetcher) -> Self {
        Self {
            location,
            fetch,
            refresh_interval: Duration::from_secs(300),
            min_refetch_interval: Duration::from_secs(30),
            fetch_timeout: Duration::from_secs(5),
        }
    }

    chassis_core::__builder_setters! {
        /// Bound on one fetch of the document. Defaults to 5 seconds.
        fetch_timeout: Duration,
        /// How old the keys may get before a background refresh. Defaults to 5 minutes.
        refresh_interval: Duration,
        /// Minimum time between two fetch attempts triggered by unknown key ids (or refreshes).
        /// Defaults to 30 seconds.
        min_refetch_interval: Duration,
    }

    /// Loads the document once and returns the source; fails when it cannot be loaded, so a
    /// misconfigured service does not start.
    pub async fn load(self) -> Result<JwksKeySource, AuthError> {
        let keys = fetch_keys(&self.location, &self.fetch, self.fetch_timeout).await?;
        if keys.is_empty() {
            tracing::warn!(location = %self.location, "key set has no usable keys");
        }
        let now = Instant::now();
        Ok(JwksKeySource {
            inner: Arc::new(JwksInner {
                location: self.location,
                fetch: self.fetch,
                refresh_interval: self.refresh_interval,
                min_refetch_interval: self.min_refetch_interval,
                fetch_timeout: self.fetch_timeout,
                state: RwLock::new(JwksState {
                    keys: Arc::new(keys),
                    loaded_at: now,
                    last_attempt: now,
                }),
                fetch_lock: tokio::sync::Mutex::new(()),
                background_refresh: AtomicBool::new(false),
            }),
        })
    }
}

async fn fetch_keys(
    location: &str,
    fetch: &Fetcher,
    timeout: Duration,
) -> Result<KeySet, AuthError> {
    let unavailable = |e: BoxError| {
        AuthError::with_source(
            AuthErrorKind::KeySetUnavailable {
                location: location.to_owned(),
            },
            e,
        )
    };
    let bytes = tokio::time::timeout(timeout, fetch())
        .await
        .map_err(|e| unavailable(e.into()))?
        .map_err(unavailable)?;
    KeySet::from_jwks_json(&bytes).map_err(|e| unavailable(e.into()))
}
