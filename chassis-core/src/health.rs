//! The health model: dependency checks, a registry that runs them, and the report it produces.
//!
//! A [`HealthCheck`] answers "can this service use dependency X right now?" (RabbitMQ
//! connection, database ping, anything custom). A [`HealthRegistry`] holds the checks of one
//! service, runs them concurrently, each under its own timeout, caches the result briefly (so a
//! burst of probes does not hammer the database) and folds them into a [`HealthReport`].
//! It also holds the two lifecycle facts the Kubernetes probes need: whether startup finished
//! and whether shutdown began. chassis-http serves the registry as `/health/live`,
//! `/health/ready` and `/health/startup`; the crates that own a dependency (chassis-messaging
//! for RabbitMQ, the outbox for its database) implement [`HealthCheck`] for it.
//!
//! Semantics follow Kubernetes probes:
//! - **liveness** never runs dependency checks (a broken database must not get the pod
//!   restarted);
//! - **readiness** is `Up` only when startup finished, shutdown has not begun and every
//!   *required* check passed (an optional check that fails makes the report `Degraded`, still
//!   ready);
//! - **startup** is `Up` once [`HealthRegistry::mark_started`] was called.
//!
//! # Example
//! ```
//! use chassis_core::health::{fn_check, HealthRegistry, CheckOptions, Status};
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let registry = HealthRegistry::new();
//! registry.register(fn_check("database", || async { Ok(()) }), CheckOptions::required());
//! registry.register(
//!     fn_check("cache", || async { Err("connection refused".into()) }),
//!     CheckOptions::optional().timeout(Duration::from_millis(200)),
//! );
//! registry.mark_started();
//!
//! let report = registry.readiness().await;
//! assert_eq!(report.status, Status::Degraded);
//! assert!(report.is_ready());
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use serde::Serialize;

use crate::BoxError;

/// A boxed, sendable future, as returned by [`HealthCheck::check`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One dependency check.
///
/// Implement it for a dependency the service needs, or build one from a closure with
/// [`fn_check`]. `check` returns `Ok(())` when the dependency is usable and an error saying
/// why not otherwise. The registry applies the timeout; implementations need not.
pub trait HealthCheck: Send + Sync + 'static {
    /// Name shown in the report, e.g. `"rabbitmq"` or `"database"`.
    fn name(&self) -> &str;
    /// Runs the check once.
    fn check(&self) -> BoxFuture<'_, Result<(), BoxError>>;
}

/// A [`HealthCheck`] made from a closure; see [`fn_check`].
pub struct FnCheck<F> {
    name: String,
    f: F,
}

impl<F> std::fmt::Debug for FnCheck<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnCheck").field("name", &self.name).finish()
    }
}

/// Builds a [`HealthCheck`] named `name` from an async closure.
pub fn fn_check<F, Fut>(name: impl Into<String>, f: F) -> FnCheck<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    FnCheck {
        name: name.into(),
        f,
    }
}

impl<F, Fut> HealthCheck for FnCheck<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }
    fn check(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin((self.f)())
    }
}

/// How a registered check takes part in readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckOptions {
    required: bool,
    timeout: Duration,
}

impl CheckOptions {
    /// A check whose failure makes the service not ready. Timeout defaults to 2 s.
    pub fn required() -> Self {
        Self {
            required: true,
            timeout: Duration::from_secs(2),
        }
    }

    /// A check whose failure only degrades the report. Timeout defaults to 2 s.
    pub fn optional() -> Self {
        Self {
            required: false,
            ..Self::required()
        }
    }

    /// How long the check may take before it counts as failed.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self::required()
    }
}

/// Overall or per-check status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// Everything checked is fine.
    Up,
    /// Only optional checks failed: still serving.
    Degraded,
    /// Not serving: a required check failed, startup has not finished, or shutdown began.
    Down,
}

/// The result of one check in a report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckReport {
    /// The check's name.
    pub name: String,
    /// `Up` or `Down`.
    pub status: Status,
    /// Whether a failure of this check makes the service not ready.
    pub required: bool,
    /// How long the check took, in milliseconds.
    pub latency_ms: f64,
    /// Why it failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A readiness (or liveness/startup) report, serialised as the health endpoints' JSON body.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthReport {
    /// Overall status.
    pub status: Status,
    /// Why the service is down without a failed check (`"starting"`, `"shutting down"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Each check's result, in registration order.
    pub checks: Vec<CheckReport>,
}

impl HealthReport {
    /// Whether the service should receive traffic (`Up` or `Degraded`).
    pub fn is_ready(&self) -> bool {
        self.status != Status::Down
    }

    fn lifecycle(status: Status, reason: Option<&str>) -> Self {
        Self {
            status,
            reason: reason.map(str::to_owned),
            checks: Vec::new(),
        }
    }
}

struct Registered {
    check: Arc<dyn HealthCheck>,
    options: CheckOptions,
}

struct Inner {
    checks: Mutex<Vec<Registered>>,
    started: AtomicBool,
    shutting_down: AtomicBool,
    cache_ttl: Duration,
    cache: tokio::sync::Mutex<Option<(Instant, Vec<CheckReport>)>>,
}

/// The checks of one service and its lifecycle state. Cheap to clone (shared).
#[derive(Clone)]
pub struct HealthRegistry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for HealthRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self
            .inner
            .checks
            .lock()
            .expect("health registry lock")
            .iter()
            .map(|r| r.check.name().to_owned())
            .collect();
        f.debug_struct("HealthRegistry")
            .field("checks", &names)
            .field("started", &self.is_started())
            .field("shutting_down", &self.is_shutting_down())
            .finish()
    }
}

impl Default for HealthRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl HealthRegistry {
    /// An empty registry whose readiness results are cached for 1 s.
    pub fn new() -> Self {
        Self::with_cache_ttl(Duration::from_secs(1))
    }

    /// An empty registry caching readiness results for `ttl` (zero disables the cache).
    pub fn with_cache_ttl(ttl: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                checks: Mutex::new(Vec::new()),
                started: AtomicBool::new(false),
                shutting_down: AtomicBool::new(false),
                cache_ttl: ttl,
                cache: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// Adds a check.
    pub fn register(&self, check: impl HealthCheck, options: CheckOptions) -> &Self {
        self.register_arc(Arc::new(check), options)
    }

    /// Adds a shared check.
    pub fn register_arc(&self, check: Arc<dyn HealthCheck>, options: CheckOptions) -> &Self {
        self.inner
            .checks
            .lock()
            .expect("health registry lock")
            .push(Registered { check, options });
        self.invalidate();
        self
    }

    /// Startup finished: the startup probe turns green and readiness may.
    pub fn mark_started(&self) {
        self.inner.started.store(true, Ordering::Release);
    }

    /// Shutdown began: readiness fails from now on, whatever the checks say.
    pub fn mark_shutting_down(&self) {
        self.inner.shutting_down.store(true, Ordering::Release);
    }

    /// Whether [`mark_started`](Self::mark_started) was called.
    pub fn is_started(&self) -> bool {
        self.inner.started.load(Ordering::Acquire)
    }

    /// Whether [`mark_shutting_down`](Self::mark_shutting_down) was called.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::Acquire)
    }

    fn invalidate(&self) {
        if let Ok(mut cache) = self.inner.cache.try_lock() {
            *cache = None;
        }
    }

    /// Liveness: the process answers. Runs no dependency checks.
    pub fn liveness(&self) -> HealthReport {
        HealthReport::lifecycle(Status::Up, None)
    }

    /// Startup: `Up` once startup finished.
    pub fn startup(&self) -> HealthReport {
        if self.is_started() {
            HealthReport::lifecycle(Status::Up, None)
        } else {
            HealthReport::lifecycle(Status::Down, Some("starting"))
        }
    }

    /// Readiness: runs every check (concurrently, each under its timeout, cached for the
    /// configured TTL) and folds the results with the lifecycle state.
    pub async fn readiness(&self) -> HealthReport {
        let checks = self.run_checks_cached().await;
        let reason = if self.is_shutting_down() {
            Some("shutting down")
        } else if !self.is_started() {
            Some("starting")
        } else {
            None
        };
        let required_failed = checks
            .iter()
            .any(|c| c.required && c.status == Status::Down);
        let optional_failed = checks
            .iter()
            .any(|c| !c.required && c.status == Status::Down);
        let status = if reason.is_some() || required_failed {
            Status::Down
        } else if optional_failed {
            Status::Degraded
        } else {
            Status::Up
        };
        HealthReport {
            status,
            reason: reason.map(str::to_owned),
            checks,
        }
    }

    async fn run_checks_cached(&self) -> Vec<CheckReport> {
        // The async mutex makes concurrent probes wait for one run instead of each running
        // every check: the point of the cache is to protect the dependencies.
        let mut cache = self.inner.cache.lock().await;
        if let Some((at, reports)) = cache.as_ref()
            && at.elapsed() < self.inner.cache_ttl
        {
            return reports.clone();
        }
        let reports = self.run_checks().await;
        if !self.inner.cache_ttl.is_zero() {
            *cache = Some((Instant::now(), reports.clone()));
        }
        reports
    }

    async fn run_checks(&self) -> Vec<CheckReport> {
        let checks: Vec<(Arc<dyn HealthCheck>, CheckOptions)> = self
            .inner
            .checks
            .lock()
            .expect("health registry lock")
            .iter()
            .map(|r| (r.check.clone(), r.options))
            .collect();
        let runs = checks.into_iter().map(|(check, options)| async move {
            let started = Instant::now();
            let outcome = tokio::time::timeout(options.timeout, check.check()).await;
            let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
            let error = match outcome {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("timed out after {}ms", options.timeout.as_millis())),
            };
            if let Some(error) = &error {
                tracing::warn!(check = check.name(), error = %error, "health check failed");
            }
            CheckReport {
                name: check.name().to_owned(),
                status: if error.is_none() {
                    Status::Up
                } else {
                    Status::Down
                },
                required: options.required,
                latency_ms,
                error,
            }
        });
        futures_util::future::join_all(runs).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test(start_paused = true)]
    async fn lifecycle_gates_readiness() {
        let registry = HealthRegistry::new();
        registry.register(
            fn_check("db", || async { Ok(()) }),
            CheckOptions::required(),
        );
        assert_eq!(registry.readiness().await.status, Status::Down);
        assert_eq!(registry.startup().status, Status::Down);
        registry.mark_started();
        assert_eq!(registry.startup().status, Status::Up);
        let report = registry.readiness().await;
        assert_eq!(report.status, Status::Up);
        assert_eq!(report.checks.len(), 1);
        registry.mark_shutting_down();
        let report = registry.readiness().await;
        assert_eq!(report.status, Status::Down);
        assert_eq!(report.reason.as_deref(), Some("shutting down"));
        assert_eq!(registry.liveness().status, Status::Up);
    }

    #[tokio::test(start_paused = true)]
    async fn required_failure_and_timeout_make_it_down() {
        let registry = HealthRegistry::with_cache_ttl(Duration::ZERO);
        registry.mark_started();
        registry.register(
            fn_check("slow", || async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok(())
            }),
            CheckOptions::required().timeout(Duration::from_millis(100)),
        );
        let report = registry.readiness().await;
        assert_eq!(report.status, Status::Down);
        assert_eq!(
            report.checks[0].error.as_deref(),
            Some("timed out after 100ms")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn checks_run_concurrently_and_are_cached() {
        let runs = Arc::new(AtomicUsize::new(0));
        let registry = HealthRegistry::with_cache_ttl(Duration::from_secs(1));
        registry.mark_started();
        for name in ["a", "b"] {
            let runs = runs.clone();
            registry.register(
                fn_check(name, move || {
                    let runs = runs.clone();
                    async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        Ok(())
                    }
                }),
                CheckOptions::required(),
            );
        }
        let start = tokio::time::Instant::now();
        registry.readiness().await;
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(500),
            "concurrent, not serial"
        );
        registry.readiness().await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "second call served from cache"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        registry.readiness().await;
        assert_eq!(runs.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn report_json_shape() {
        let report = HealthReport {
            status: Status::Degraded,
            reason: None,
            checks: vec![CheckReport {
                name: "cache".into(),
                status: Status::Down,
                required: false,
                latency_ms: 1.5,
                error: Some("refused".into()),
            }],
        };
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"status":"DEGRADED","checks":[{"name":"cache","status":"DOWN","required":false,"latency_ms":1.5,"error":"refused"}]})
        );
    }
}
