//! [`IdempotencyLayer`] and its configuration.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use http::Method;
use http::request::Parts;
use serde::Deserialize;

use super::store::IdempotencyStore;
use crate::error::Error;
use crate::stored::{invalid_config, parse_all, settings_layer};

/// Names the client a request comes from, so that keys are unique per client rather than
/// across all clients: an API key, the authenticated principal an auth layer put in the
/// request's extensions, a tenant. `None` puts the request's key in the shared, unscoped space.
///
/// Implemented for closures `Fn(&Parts) -> Option<String>`.
pub trait KeyScope: Send + Sync + 'static {
    /// The scope of the request with these parts.
    fn scope(&self, parts: &Parts) -> Option<String>;
}

impl<F> KeyScope for F
where
    F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
{
    fn scope(&self, parts: &Parts) -> Option<String> {
        self(parts)
    }
}

/// What an operator tunes in an [`IdempotencyLayer`]. Deserializes from e.g.
///
/// ```toml
/// methods = ["POST", "PATCH", "PUT"]
/// ttl = "24h"
/// lock_ttl = "2m"
/// max_request_bytes = 1048576
/// max_response_bytes = 65536
/// required = true
/// wait_in_flight = "5s"
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdempotencyConfig {
    /// The methods whose requests the layer handles. Defaults to `["POST", "PATCH"]`.
    pub methods: Vec<String>,
    /// How long a completed response is kept. Defaults to 24 h.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// How long the lock of a running request lasts. Defaults to 60 s.
    #[serde(with = "humantime_serde")]
    pub lock_ttl: Duration,
    /// Request bodies read at most (413 beyond). Defaults to 1 MiB.
    pub max_request_bytes: usize,
    /// Response bodies kept at most (larger ones are sent but not kept). Defaults to 64 KiB.
    pub max_response_bytes: usize,
    /// Keys accepted at most, in characters. Defaults to 255.
    pub max_key_length: usize,
    /// Whether a request of the layer's methods without a key is a 400. Defaults to `false`.
    pub required: bool,
    /// How long a request waits for another with the same key to finish before it is answered
    /// 409; `None` (the default) answers 409 at once.
    #[serde(with = "humantime_serde")]
    pub wait_in_flight: Option<Duration>,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self {
            methods: vec!["POST".to_owned(), "PATCH".to_owned()],
            ttl: Duration::from_secs(24 * 60 * 60),
            lock_ttl: Duration::from_secs(60),
            max_request_bytes: 1 << 20,
            max_response_bytes: 64 << 10,
            max_key_length: 255,
            required: false,
            wait_in_flight: None,
        }
    }
}

settings_layer! {
    /// Layer adding [`Idempotency`]; see the [module docs](super).
    ///
    /// Cheap to clone; every service it makes shares the store.
    pub struct IdempotencyLayer;
    /// Keys and responses in `store`, with the defaults of [`IdempotencyConfig`]: `POST` and
    /// `PATCH`, responses kept 24 h, locks of 60 s, request bodies up to 1 MiB, responses kept
    /// up to 64 KiB, keys up to 255 characters, optional, 409 at once for a key in flight, no
    /// scope.
    pub fn new(store: impl IdempotencyStore);
    /// Makes requests carrying an `Idempotency-Key` take effect once; see the
    /// [module docs](super).
    pub struct Idempotency<S>;
}

#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) store: Arc<dyn IdempotencyStore>,
    pub(crate) scope: Option<Arc<dyn KeyScope>>,
    pub(crate) methods: Vec<Method>,
    pub(crate) ttl: Duration,
    pub(crate) lock_ttl: Duration,
    pub(crate) max_request_bytes: usize,
    pub(crate) max_response_bytes: usize,
    pub(crate) max_key_length: usize,
    pub(crate) required: bool,
    pub(crate) wait_in_flight: Option<Duration>,
    /// Set once a response too large to keep has been logged at WARN.
    pub(crate) warned_large: Arc<AtomicBool>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("methods", &self.methods)
            .field("ttl", &self.ttl)
            .field("lock_ttl", &self.lock_ttl)
            .field("max_request_bytes", &self.max_request_bytes)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("max_key_length", &self.max_key_length)
            .field("required", &self.required)
            .field("wait_in_flight", &self.wait_in_flight)
            .field("scoped", &self.scope.is_some())
            .finish_non_exhaustive()
    }
}

impl IdempotencyLayer {
    /// As [`new`](Self::new), with a store already shared.
    pub fn with_store(store: Arc<dyn IdempotencyStore>) -> Self {
        let config = IdempotencyConfig::default();
        Self {
            settings: Arc::new(Settings {
                store,
                scope: None,
                methods: vec![Method::POST, Method::PATCH],
                ttl: config.ttl,
                lock_ttl: config.lock_ttl,
                max_request_bytes: config.max_request_bytes,
                max_response_bytes: config.max_response_bytes,
                max_key_length: config.max_key_length,
                required: config.required,
                wait_in_flight: config.wait_in_flight,
                warned_large: Arc::default(),
            }),
        }
    }

    /// The layer `config` describes, over `store`. Fails with
    /// [`ErrorKind::InvalidConfig`](crate::error::ErrorKind::InvalidConfig) for
    /// a method that is not one, or a zero time to live.
    pub fn from_config(
        store: impl IdempotencyStore,
        config: &IdempotencyConfig,
    ) -> Result<Self, Error> {
        let methods = parse_all(
            &config.methods,
            |m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()),
            |m| format!("idempotency: '{m}' is not an HTTP method"),
        )?;
        if config.ttl.is_zero() || config.lock_ttl.is_zero() {
            return Err(invalid_config(
                "idempotency: ttl and lock_ttl must be positive".to_owned(),
            ));
        }
        Ok(Self::new(store)
            .methods(methods)
            .ttl(config.ttl)
            .lock_ttl(config.lock_ttl)
            .max_request_bytes(config.max_request_bytes)
            .max_response_bytes(config.max_response_bytes)
            .max_key_length(config.max_key_length)
            .required(config.required)
            .wait_in_flight(config.wait_in_flight))
    }

    /// The methods whose requests the layer handles; others pass through. Defaults to `POST`
    /// and `PATCH` (`PUT` and `DELETE` are idempotent by definition, but a service whose `PUT`
    /// has effects beyond the resource may add it).
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.settings().methods = methods.into_iter().collect();
        self
    }

    /// The scope of each request's key (see [`KeyScope`]). Defaults to none: keys are shared by
    /// every client, which suits only a service with one client or keys the clients make
    /// unique (random UUIDs).
    pub fn scope(mut self, scope: impl KeyScope) -> Self {
        self.settings().scope = Some(Arc::new(scope));
        self
    }

    /// How long a completed response is kept (at least 1 ms). Defaults to 24 h.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.settings().ttl = ttl.max(Duration::from_millis(1));
        self
    }

    /// How long the lock of a running request lasts before another request may take the key
    /// (at least 1 ms). Defaults to 60 s; keep it above the request timeout.
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.settings().lock_ttl = ttl.max(Duration::from_millis(1));
        self
    }

    /// Request bodies read at most to take the fingerprint; a keyed request with a larger body
    /// is a 413. Defaults to 1 MiB.
    pub fn max_request_bytes(mut self, max: usize) -> Self {
        self.settings().max_request_bytes = max;
        self
    }

    /// Response bodies kept at most; a larger one is sent but not kept (see the
    /// [module docs](super)). Defaults to 64 KiB.
    pub fn max_response_bytes(mut self, max: usize) -> Self {
        self.settings().max_response_bytes = max;
        self
    }

    /// Keys accepted at most, in characters (at least 1). Defaults to 255.
    pub fn max_key_length(mut self, max: usize) -> Self {
        self.settings().max_key_length = max.max(1);
        self
    }

    /// Whether requests of the layer's methods must carry a key (400 otherwise). Defaults to
    /// `false`.
    pub fn required(mut self, required: bool) -> Self {
        self.settings().required = required;
        self
    }

    /// How long a request waits for another one with the same key to finish, then replays its
    /// response (or runs, if the other failed and released the key); `None` answers 409 at
    /// once. Defaults to `None`.
    pub fn wait_in_flight(mut self, wait: impl Into<Option<Duration>>) -> Self {
        self.settings().wait_in_flight = wait.into();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::idempotency::MemoryStore;

    #[test]
    fn config_from_toml_and_validation() {
        let config: IdempotencyConfig = serde_json::from_value(serde_json::json!({
            "methods": ["post", "PUT"],
            "ttl": "1h",
            "wait_in_flight": "2s",
            "required": true
        }))
        .unwrap();
        let layer = IdempotencyLayer::from_config(MemoryStore::new(), &config).unwrap();
        assert_eq!(layer.settings.methods, [Method::POST, Method::PUT]);
        assert_eq!(layer.settings.ttl, Duration::from_secs(3600));
        assert_eq!(layer.settings.lock_ttl, Duration::from_secs(60));
        assert_eq!(layer.settings.wait_in_flight, Some(Duration::from_secs(2)));
        assert!(layer.settings.required);

        let bad = IdempotencyConfig {
            methods: vec!["PO ST".to_owned()],
            ..IdempotencyConfig::default()
        };
        let err = IdempotencyLayer::from_config(MemoryStore::new(), &bad).unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::InvalidConfig { .. }));
        let zero = IdempotencyConfig {
            ttl: Duration::ZERO,
            ..IdempotencyConfig::default()
        };
        assert!(IdempotencyLayer::from_config(MemoryStore::new(), &zero).is_err());
    }
}
