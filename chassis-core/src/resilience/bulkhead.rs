//! Bounds concurrent calls, waiting a bounded time for a free slot.
//!
//! A [`BulkheadLayer`] shares one semaphore of `max_concurrent` permits among every service it
//! builds (and every clone of them). A call takes a permit in `poll_ready` and holds it until its
//! response future completes or is dropped. When no permit is free the call waits up to
//! `max_wait` for one; if none frees up, the call fails with a [`chassis_core::Error`](crate::Error)
//! of kind [`ErrorKind::BulkheadFull`](crate::ErrorKind::BulkheadFull) instead of queueing
//! forever. With `max_wait` zero it rejects at once (load shedding).
//!
//! # Why not tower's limit layers
//!
//! `tower::limit::ConcurrencyLimit` waits for a permit *forever* (an overloaded downstream turns
//! into an unbounded queue of callers), and `tower::load_shed::LoadShed` over it rejects
//! *immediately* with an untyped `Overloaded`. Neither is a bounded wait with a typed rejection,
//! so this layer adds just that: a `try_acquire` fast path (one atomic operation, no allocation)
//! and, only when the bulkhead is full, one boxed `timeout(max_wait, acquire)` future.
//!
//! Like `LoadShed`, a rejection is reported from the response future, not from `poll_ready`, so
//! `poll_ready` only fails when the inner service does, and the service stays usable under
//! axum, `Buffer` and `ServiceExt::oneshot`.
//!
//! # Example
//!
//! ```
//! use chassis_core::resilience::bulkhead::{BulkheadConfig, BulkheadLayer};
//! use chassis_core::{BoxError, Error, ErrorKind};
//! use std::time::Duration;
//! use tower::{Layer, Service, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let layer = BulkheadLayer::new(
//!     BulkheadConfig::new("db").max_concurrent(1).max_wait(Duration::from_millis(50)),
//! )
//! .unwrap();
//! let slow = service_fn(|_: ()| async {
//!     tokio::time::sleep(Duration::from_secs(1)).await;
//!     Ok::<_, BoxError>(())
//! });
//! let mut first = layer.layer(slow);
//! let mut second = first.clone();
//! let in_flight = first.ready().await.unwrap().call(());
//! let err = second.ready().await.unwrap().call(()).await.unwrap_err();
//! assert!(matches!(Error::from_boxed(err).unwrap().kind(), ErrorKind::BulkheadFull { .. }));
//! in_flight.await.unwrap();
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use serde::Deserialize;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::ReusableBoxFuture;
use tower_layer::Layer;
use tower_service::Service;

use crate::{BoxError, Error, ErrorKind};

/// Configuration of a bulkhead. Deserializes from e.g.
/// `{ name = "db", max_concurrent = 16, max_wait = "100ms" }`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BulkheadConfig {
    /// Name used in errors, metrics and traces. Defaults to `"default"`.
    pub name: String,
    /// Maximum number of calls in flight at once. Defaults to 64; must be at least 1.
    pub max_concurrent: usize,
    /// How long a call waits for a permit before it is rejected. Defaults to zero (reject at
    /// once when full).
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
}

impl Default for BulkheadConfig {
    fn default() -> Self {
        Self {
            name: "default".to_owned(),
            max_concurrent: 64,
            max_wait: Duration::ZERO,
        }
    }
}

impl BulkheadConfig {
    /// A default configuration named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Sets the maximum number of concurrent calls. Defaults to 64.
    pub fn max_concurrent(mut self, max_concurrent: usize) -> Self {
        self.max_concurrent = max_concurrent;
        self
    }

    /// Sets how long a call waits for a permit. Defaults to zero.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), Error> {
        if self.max_concurrent == 0 {
            return Err(Error::invalid_config(format!(
                "bulkhead '{}': max_concurrent must be at least 1",
                self.name
            )));
        }
        if self.max_concurrent > Semaphore::MAX_PERMITS {
            return Err(Error::invalid_config(format!(
                "bulkhead '{}': max_concurrent must be at most {}",
                self.name,
                Semaphore::MAX_PERMITS
            )));
        }
        Ok(())
    }
}

struct Shared {
    name: Arc<str>,
    max_concurrent: usize,
    max_wait: Duration,
    semaphore: Arc<Semaphore>,
    rejected: metrics::Counter,
}

/// Builds [`Bulkhead`] services that all share one pool of permits.
#[derive(Clone)]
pub struct BulkheadLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for BulkheadLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadLayer")
            .field("name", &self.shared.name)
            .field("max_concurrent", &self.shared.max_concurrent)
            .field("max_wait", &self.shared.max_wait)
            .field("available", &self.available_permits())
            .finish()
    }
}

impl BulkheadLayer {
    /// Validates `config` and creates the shared permit pool.
    ///
    /// The metric handle (`bulkhead.rejected`, label `name`) is registered here: install the
    /// metrics recorder before building layers.
    pub fn new(config: BulkheadConfig) -> Result<Self, Error> {
        config.validate()?;
        let name: Arc<str> = config.name.into();
        Ok(Self {
            shared: Arc::new(Shared {
                rejected: metrics::counter!("bulkhead.rejected", "name" => name.to_string()),
                name,
                max_concurrent: config.max_concurrent,
                max_wait: config.max_wait,
                semaphore: Arc::new(Semaphore::new(config.max_concurrent)),
            }),
        })
    }

    /// Permits free right now.
    pub fn available_permits(&self) -> usize {
        self.shared.semaphore.available_permits()
    }

    /// The name of this bulkhead.
    pub fn name(&self) -> &str {
        &self.shared.name
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = Bulkhead<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Bulkhead {
            inner,
            shared: self.shared.clone(),
            state: State::Idle,
        }
    }
}

// `ReusableBoxFuture` rather than `Pin<Box<dyn Future + Send>>`: it is `Sync`, which axum
// requires of services, and it is only allocated when the bulkhead is full.
type Acquire = ReusableBoxFuture<
    'static,
    Result<Result<OwnedSemaphorePermit, AcquireError>, tokio::time::error::Elapsed>,
>;

enum State {
    Idle,
    Waiting(Acquire),
    Acquired(OwnedSemaphorePermit),
    Rejected,
}

/// A service letting at most `max_concurrent` calls (across all its clones) run at once.
pub struct Bulkhead<S> {
    inner: S,
    shared: Arc<Shared>,
    state: State,
}

impl<S: Clone> Clone for Bulkhead<S> {
    fn clone(&self) -> Self {
        // A clone has not been readied: it must acquire its own permit.
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            state: State::Idle,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Bulkhead<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Idle => "idle",
            State::Waiting(_) => "waiting",
            State::Acquired(_) => "acquired",
            State::Rejected => "rejected",
        };
        f.debug_struct("Bulkhead")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .field("state", &state)
            .finish()
    }
}

impl<S> Bulkhead<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    fn rejection(&self) -> Error {
        Error::new(ErrorKind::BulkheadFull {
            name: self.shared.name.clone(),
            max_concurrent: self.shared.max_concurrent,
            max_wait: self.shared.max_wait,
        })
    }

    /// Drives the permit acquisition; `Ready(true)` once a permit is held, `Ready(false)` once
    /// the call is rejected.
    fn poll_permit(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        loop {
            match &mut self.state {
                State::Acquired(_) => return Poll::Ready(true),
                State::Rejected => return Poll::Ready(false),
                State::Idle => match self.shared.semaphore.clone().try_acquire_owned() {
                    Ok(permit) => self.state = State::Acquired(permit),
                    Err(_) if self.shared.max_wait.is_zero() => self.state = State::Rejected,
                    Err(_) => {
                        let acquire = self.shared.semaphore.clone().acquire_owned();
                        self.state = State::Waiting(ReusableBoxFuture::new(tokio::time::timeout(
                            self.shared.max_wait,
                            acquire,
                        )));
                    }
                },
                State::Waiting(acquire) => {
                    self.state = match ready!(acquire.poll(cx)) {
                        Ok(Ok(permit)) => State::Acquired(permit),
                        // The semaphore is never closed; treat it like a timeout anyway.
                        Ok(Err(_)) | Err(_) => State::Rejected,
                    };
                }
            }
        }
    }
}

impl<S, Req> Service<Req> for Bulkhead<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if !ready!(self.poll_permit(cx)) {
            // NOTE: `call` sees `Rejected` and fails the call without touching `inner`.
            return Poll::Ready(Ok(()));
        }
        // Holding the permit while the inner service gets ready is intended: readiness is part
        // of the work the bulkhead bounds.
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Acquired(permit) => ResponseFuture {
                kind: Kind::Called {
                    inner: self.inner.call(req),
                    _permit: permit,
                },
            },
            State::Rejected => {
                self.shared.rejected.increment(1);
                tracing::debug!(bulkhead = %self.shared.name, "bulkhead full: call rejected");
                ResponseFuture {
                    kind: Kind::Rejected {
                        error: Some(self.rejection()),
                    },
                }
            }
            State::Idle | State::Waiting(_) => {
                panic!("Bulkhead::call without a successful poll_ready (tower Service contract)")
            }
        }
    }
}

pin_project! {
    /// Response future of [`Bulkhead`]: holds the permit until the call completes or is dropped.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Called { #[pin] inner: F, _permit: OwnedSemaphorePermit },
        Rejected { error: Option<Error> },
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Called { .. } => "called",
            Kind::Rejected { .. } => "rejected",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { inner, .. } => inner.poll(cx).map_err(Into::into),
            KindProj::Rejected { error } => Poll::Ready(Err(error
                .take()
                .expect("bulkhead ResponseFuture polled after completion")
                .into())),
        }
    }
}
