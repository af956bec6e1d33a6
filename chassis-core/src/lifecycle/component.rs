//! What the runner starts and stops: the [`Component`] trait, the [`Stage`] a component stops
//! in, the [`Context`] it is started with, and two ready-made components ([`task`], [`closer`]).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::BoxError;
use crate::health::{BoxFuture, HealthRegistry};
use crate::shutdown::Shutdown;

/// Where a component stops in the shutdown sequence; stages stop in declaration order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Stage {
    /// Takes work in from outside: HTTP and gRPC servers, message consumers. Stops taking
    /// work first ([`Component::stop_intake`]), then drains.
    Intake,
    /// Background work that must finish its current unit: the outbox relay, schedulers.
    Worker,
    /// Connections to other systems that intake and workers use: the AMQP connection.
    Transport,
    /// Local resources: database pools, caches.
    Resource,
    /// Logs, traces and metrics: flushed last, so the shutdown itself is recorded.
    Telemetry,
}

impl Stage {
    /// Every stage, in shutdown order.
    pub const ALL: [Stage; 5] = [
        Stage::Intake,
        Stage::Worker,
        Stage::Transport,
        Stage::Resource,
        Stage::Telemetry,
    ];
}

/// One part of a service that the [`App`](super::App) starts and stops.
///
/// `start` returns once the component is usable (a listener bound, a pool connected) and
/// leaves its work running in the background; an error there stops the service before it
/// becomes ready. A component whose background work fails later calls [`Context::fail`],
/// which shuts the service down. `stop` finishes and releases; the runner bounds it with the
/// deadline of the component's [`Stage`] (passed in, so a component can hand it on) and drops
/// the future when it runs out.
pub trait Component: Send + 'static {
    /// The name errors and logs use, e.g. `"http"`, `"rabbitmq"`, `"outbox-relay"`.
    fn name(&self) -> &str;

    /// Where this component stops in the shutdown sequence.
    fn stage(&self) -> Stage;

    /// Starts the component.
    fn start(&mut self, ctx: Context) -> BoxFuture<'_, Result<(), BoxError>>;

    /// Stops taking new work, without waiting. Called on every [`Stage::Intake`] component
    /// before any of them is drained. Defaults to doing nothing.
    fn stop_intake(&mut self) {}

    /// Finishes in-flight work and releases resources, within `deadline`.
    fn stop(&mut self, deadline: Duration) -> BoxFuture<'_, Result<(), BoxError>>;
}

impl Component for Box<dyn Component> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn stage(&self) -> Stage {
        (**self).stage()
    }
    fn start(&mut self, ctx: Context) -> BoxFuture<'_, Result<(), BoxError>> {
        (**self).start(ctx)
    }
    fn stop_intake(&mut self) {
        (**self).stop_intake();
    }
    fn stop(&mut self, deadline: Duration) -> BoxFuture<'_, Result<(), BoxError>> {
        (**self).stop(deadline)
    }
}

/// What a component gets at start: the service's health registry (to register its checks)
/// and a way to report a failure that should stop the service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Context {
    inner: Arc<ContextInner>,
}

#[derive(Debug)]
struct ContextInner {
    health: HealthRegistry,
    shutdown: Shutdown,
    failure: Mutex<Option<(String, BoxError)>>,
}

impl Context {
    pub(super) fn new(health: HealthRegistry, shutdown: Shutdown) -> Self {
        Self {
            inner: Arc::new(ContextInner {
                health,
                shutdown,
                failure: Mutex::new(None),
            }),
        }
    }

    /// The service's health registry.
    pub fn health(&self) -> &HealthRegistry {
        &self.inner.health
    }

    /// The service's shutdown signal: it fires when the service begins to stop. Components
    /// stop when the runner calls them, not on this signal, so the shutdown order holds.
    pub fn shutdown(&self) -> &Shutdown {
        &self.inner.shutdown
    }

    /// Reports that `component` failed while running: the error is logged, the service shuts
    /// down in order, and [`App::run`](super::App::run) returns it. Only the first failure is
    /// kept; later ones are logged.
    pub fn fail(&self, component: &str, error: impl Into<BoxError>) {
        let error = error.into();
        tracing::error!(component, error = %error, "component failed; shutting down");
        {
            let mut slot = self.inner.failure.lock().unwrap_or_else(|e| e.into_inner());
            if slot.is_none() {
                *slot = Some((component.to_owned(), error));
            }
        }
        self.inner.shutdown.trigger();
    }

    pub(super) fn take_failure(&self) -> Option<(String, BoxError)> {
        self.inner
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

/// A background loop as a component; see [`task`].
pub struct Task<F> {
    name: String,
    stage: Stage,
    make: Option<F>,
    stop: CancellationToken,
    handle: Option<JoinHandle<Result<(), BoxError>>>,
}

impl<F> std::fmt::Debug for Task<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("name", &self.name)
            .field("stage", &self.stage)
            .field("running", &self.handle.is_some())
            .finish()
    }
}

/// A component that runs `f(stop)` as a background task from start until its stop, when
/// `stop` is cancelled and the task is awaited (within the stage's deadline). The task
/// returning an error, or returning before it was asked to stop, fails the service.
pub fn task<F, Fut>(name: impl Into<String>, stage: Stage, f: F) -> Task<F>
where
    F: FnOnce(CancellationToken) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    Task {
        name: name.into(),
        stage,
        make: Some(f),
        stop: CancellationToken::new(),
        handle: None,
    }
}

impl<F, Fut> Component for Task<F>
where
    F: FnOnce(CancellationToken) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn stage(&self) -> Stage {
        self.stage
    }

    fn start(&mut self, ctx: Context) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async move {
            let make = self.make.take().ok_or("task started twice")?;
            let stop = self.stop.clone();
            let name = self.name.clone();
            let work = make(stop.clone());
            self.handle = Some(tokio::spawn(async move {
                let result = work.await;
                if !stop.is_cancelled() {
                    let error = match &result {
                        Err(e) => e.to_string(),
                        Ok(()) => "ended before it was asked to stop".to_owned(),
                    };
                    ctx.fail(&name, error);
                }
                result
            }));
            Ok(())
        })
    }

    fn stop_intake(&mut self) {
        self.stop.cancel();
    }

    fn stop(&mut self, _deadline: Duration) -> BoxFuture<'_, Result<(), BoxError>> {
        self.stop.cancel();
        Box::pin(async move {
            match self.handle.take() {
                Some(handle) => handle.await?,
                None => Ok(()),
            }
        })
    }
}

/// Something closed at shutdown as a component; see [`closer`].
pub struct Closer<F> {
    name: String,
    stage: Stage,
    close: Option<F>,
}

impl<F> std::fmt::Debug for Closer<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Closer")
            .field("name", &self.name)
            .field("stage", &self.stage)
            .finish()
    }
}

/// A component with nothing to start that runs `close` when its stage stops: a database
/// pool's `close`, a cache client's flush.
pub fn closer<F, Fut>(name: impl Into<String>, stage: Stage, close: F) -> Closer<F>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Closer {
        name: name.into(),
        stage,
        close: Some(close),
    }
}

impl<F, Fut> Component for Closer<F>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn stage(&self) -> Stage {
        self.stage
    }

    fn start(&mut self, _ctx: Context) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async { Ok(()) })
    }

    fn stop(&mut self, _deadline: Duration) -> BoxFuture<'_, Result<(), BoxError>> {
        let close = self.close.take();
        Box::pin(async move {
            if let Some(close) = close {
                close().await;
            }
            Ok(())
        })
    }
}
