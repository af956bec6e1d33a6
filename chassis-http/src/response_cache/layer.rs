//! [`ResponseCacheLayer`] and its configuration.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;

use super::store::CacheStore;
use crate::error::Error;
use crate::idempotency::KeyScope;
use crate::stored::{invalid_config, parse_all, settings_layer};

/// What an operator tunes in a [`ResponseCacheLayer`]. Deserializes from e.g.
///
/// ```toml
/// default_ttl = "30s"
/// max_body_bytes = 262144
/// vary = ["accept", "accept-language"]
/// private = false
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResponseCacheConfig {
    /// How long a response without `max-age`/`s-maxage` stays fresh. Defaults to 60 s.
    #[serde(with = "humantime_serde")]
    pub default_ttl: Duration,
    /// Response bodies stored at most; larger ones are sent but not stored. Defaults to 1 MiB.
    pub max_body_bytes: usize,
    /// Request header fields whose values are part of the key. Defaults to none.
    pub vary: Vec<String>,
    /// Whether the cache is private (one user's): then `Cache-Control: private` responses and
    /// `Set-Cookie` responses are stored, and `s-maxage` is ignored. Defaults to `false`.
    pub private: bool,
}

impl Default for ResponseCacheConfig {
    fn default() -> Self {
        Self {
            default_ttl: Duration::from_secs(60),
            max_body_bytes: 1 << 20,
            vary: Vec::new(),
            private: false,
        }
    }
}

settings_layer! {
    /// Layer adding [`ResponseCache`]; see the [module docs](super).
    ///
    /// Cheap to clone; every service it makes shares the store.
    pub struct ResponseCacheLayer;
    /// Responses in `store`, with the defaults of [`ResponseCacheConfig`]: fresh 60 s unless
    /// the response says otherwise, bodies up to 1 MiB, no varying fields, a shared cache, no
    /// scope.
    pub fn new(store: impl CacheStore);
    /// Serves `GET` and `HEAD` responses from a cache; see the [module docs](super).
    pub struct ResponseCache<S>;
}

#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) store: Arc<dyn CacheStore>,
    pub(crate) scope: Option<Arc<dyn KeyScope>>,
    pub(crate) default_ttl: Duration,
    pub(crate) max_body_bytes: usize,
    pub(crate) vary: Vec<HeaderName>,
    pub(crate) private: bool,
    /// Set while the store fails, so an outage is logged once at WARN.
    pub(crate) store_down: Arc<AtomicBool>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseCacheLayer")
            .field("default_ttl", &self.default_ttl)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("vary", &self.vary)
            .field("private", &self.private)
            .field("scoped", &self.scope.is_some())
            .finish_non_exhaustive()
    }
}

impl ResponseCacheLayer {
    /// As [`new`](Self::new), with a store already shared.
    pub fn with_store(store: Arc<dyn CacheStore>) -> Self {
        let config = ResponseCacheConfig::default();
        Self {
            settings: Arc::new(Settings {
                store,
                scope: None,
                default_ttl: config.default_ttl,
                max_body_bytes: config.max_body_bytes,
                vary: Vec::new(),
                private: config.private,
                store_down: Arc::default(),
            }),
        }
    }

    /// The layer `config` describes, over `store`. Fails with
    /// [`ErrorKind::InvalidConfig`](crate::error::ErrorKind::InvalidConfig) for
    /// a `vary` entry that is not a header name, or a zero default time to live.
    pub fn from_config(
        store: impl CacheStore,
        config: &ResponseCacheConfig,
    ) -> Result<Self, Error> {
        let vary = parse_all(
            &config.vary,
            |name| HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()),
            |name| format!("response cache: '{name}' is not a header name"),
        )?;
        if config.default_ttl.is_zero() {
            return Err(invalid_config(
                "response cache: default_ttl must be positive".to_owned(),
            ));
        }
        Ok(Self::new(store)
            .default_ttl(config.default_ttl)
            .max_body_bytes(config.max_body_bytes)
            .vary(vary)
            .private(config.private))
    }

    /// How long a response without `max-age`/`s-maxage` stays fresh (at least 1 ms). Defaults
    /// to 60 s.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.settings().default_ttl = ttl.max(Duration::from_millis(1));
        self
    }

    /// Response bodies stored at most; a larger one is sent in full but not stored. Defaults
    /// to 1 MiB.
    pub fn max_body_bytes(mut self, max: usize) -> Self {
        self.settings().max_body_bytes = max;
        self
    }

    /// Request header fields whose values are part of the key, so each variant is cached
    /// apart (`Accept`, `Accept-Language`). A response whose `Vary` names a field not listed
    /// here is not stored. Defaults to none.
    pub fn vary(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.settings().vary = names.into_iter().collect();
        self
    }

    /// The scope of each request's key (see [`KeyScope`]), e.g. the authenticated principal,
    /// so each client has its own entries. Defaults to none: entries are shared by every
    /// client, and responses to requests with `Authorization` are stored only when they say
    /// `public` or `s-maxage`.
    pub fn scope(mut self, scope: impl KeyScope) -> Self {
        self.settings().scope = Some(Arc::new(scope));
        self
    }

    /// Whether the cache is private to one user (then `Cache-Control: private` and
    /// `Set-Cookie` responses are stored and `s-maxage` is ignored). Defaults to `false`, a
    /// shared cache.
    pub fn private(mut self, private: bool) -> Self {
        self.settings().private = private;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::response_cache::MemoryCacheStore;

    #[test]
    fn config_from_toml_and_validation() {
        let config: ResponseCacheConfig = serde_json::from_value(serde_json::json!({
            "default_ttl": "5m",
            "vary": ["Accept-Language"],
            "private": true
        }))
        .unwrap();
        let layer = ResponseCacheLayer::from_config(MemoryCacheStore::new(), &config).unwrap();
        assert_eq!(layer.settings.default_ttl, Duration::from_secs(300));
        assert_eq!(layer.settings.vary, ["accept-language"]);
        assert!(layer.settings.private);
        let bad = ResponseCacheConfig {
            vary: vec!["bad name".to_owned()],
            ..ResponseCacheConfig::default()
        };
        assert!(ResponseCacheLayer::from_config(MemoryCacheStore::new(), &bad).is_err());
    }
}
