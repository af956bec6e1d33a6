//! Bounds concurrent calls, waiting a bounded time for a free slot.
//!
//! A [`BulkheadLayer`] shares one pool of `max_concurrent` permits among every service it
//! builds (and every clone of them). A call takes a permit in `poll_ready` and holds it until its
//! response future completes or is dropped. When no permit is free the call waits up to
//! `max_wait` for one; if none frees up, the call fails with a [`chassis_core::Error`](crate::Error)
//! of kind [`ErrorKind::BulkheadFull`] instead of queueing
//! forever. With `max_wait` zero it rejects at once (load shedding).
//!
//! While the bulkhead has room, taking and returning a permit is one atomic operation each, with
//! no allocation and no lock; only a call that has to wait allocates the future that waits at
//! most `max_wait`. Once calls wait, freed permits go to them in arrival order, and a new call
//! queues behind them.
//!
//! A rejection is reported from the response future, not from `poll_ready`, so `poll_ready`
//! only fails when the inner service does, and the service stays usable under axum, `Buffer`
//! and `ServiceExt::oneshot`.
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
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::*};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Semaphore;
use tokio_util::sync::ReusableBoxFuture;
use tower_layer::Layer;

pub use super::future::ResponseFuture;
use crate::metric_catalogue as names;
use crate::{ComponentName, Error, ErrorKind};

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
    crate::__named_config_new!();

    crate::__builder_setters! {
        /// Sets the maximum number of concurrent calls. Defaults to 64.
        max_concurrent: usize,
        /// Sets how long a call waits for a permit. Defaults to zero.
        max_wait: Duration,
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

pub(crate) struct Shared {
    pub(crate) name: ComponentName,
    max_concurrent: usize,
    pub(crate) max_wait: Duration,
    pub(crate) pool: Pool,
    pub(crate) rejected: super::rejections::Rejections,
}

impl Shared {
    pub(crate) fn rejection(&self) -> Error {
        Error::new(ErrorKind::BulkheadFull {
            name: self.name,
            max_concurrent: self.max_concurrent,
            max_wait: self.max_wait,
        })
    }
}

/// The permits: a counter taken with one compare-and-swap and given back with one add while
/// nobody waits; a FIFO queue (a `tokio::sync::Semaphore` holding no permits of its own) once
/// calls wait.
///
/// A permit given back while calls wait goes to the queue, where the longest-waiting call gets
/// it; a call that finds others waiting queues behind them. The two counters are read and
/// written sequentially consistent, so a call starting to wait and a permit coming back always
/// see each other: the waiter finds the permit in `available`, or the permit is handed to the
/// queue. A permit left in the queue by a waiter that gave up (timed out or was dropped) is
/// moved back to `available` by the last waiter to leave, or by the one who gave the permit
/// back if it finds nobody waiting any more.
#[derive(Debug)]
pub(crate) struct Pool {
    available: AtomicUsize,
    /// Calls waiting for a permit (their futures are alive).
    waiting: AtomicUsize,
    queue: Semaphore,
}

impl Pool {
    fn new(permits: usize) -> Self {
        Self {
            available: AtomicUsize::new(permits),
            waiting: AtomicUsize::new(0),
            queue: Semaphore::new(0),
        }
    }

    #[inline]
    fn try_take(&self) -> bool {
        let mut n = self.available.load(Relaxed);
        loop {
            if n == 0 {
                return false;
            }
            match self
                .available
                .compare_exchange_weak(n, n - 1, SeqCst, Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => n = actual,
            }
        }
    }

    /// Takes a permit unless calls are already waiting for one (they come first).
    #[inline]
    pub(crate) fn try_take_first(&self) -> bool {
        self.waiting.load(SeqCst) == 0 && self.try_take()
    }

    #[inline]
    pub(crate) fn give_back(&self) {
        if self.waiting.load(SeqCst) == 0 {
            self.available.fetch_add(1, SeqCst);
            // A call may have started waiting meanwhile, after finding no permit.
            if self.waiting.load(SeqCst) != 0 && self.try_take() {
                self.hand_to_queue();
            }
        } else {
            self.hand_to_queue();
        }
    }

    #[cold]
    fn hand_to_queue(&self) {
        self.queue.add_permits(1);
        // The waiters may all have left meanwhile.
        if self.waiting.load(SeqCst) == 0 {
            self.drain_queue();
        }
    }

    /// Moves permits nobody waits for from the queue back to `available`.
    #[cold]
    fn drain_queue(&self) {
        // Bounded: a permit handed back to the queue (a waiter arrived) is not taken again.
        for _ in 0..self.queue.available_permits() {
            match self.queue.try_acquire() {
                Ok(permit) => {
                    permit.forget();
                    self.give_back();
                }
                Err(_) => return,
            }
        }
    }
}

/// Counts a waiting call for as long as its future lives (dropped on completion, timeout or
/// cancellation alike); the last one to leave drains the queue.
struct Waiting<'a>(&'a Pool);

impl<'a> Waiting<'a> {
    fn enter(pool: &'a Pool) -> Self {
        pool.waiting.fetch_add(1, SeqCst);
        Self(pool)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.0.waiting.fetch_sub(1, SeqCst) == 1 {
            self.0.drain_queue();
        }
    }
}

/// Waits up to `max_wait` for a permit; `true` when one was taken.
pub(crate) async fn wait_for_permit(shared: Arc<Shared>) -> bool {
    let pool = &shared.pool;
    let _waiting = Waiting::enter(pool);
    // A permit given back before we were counted is in `available`.
    if pool.try_take() {
        return true;
    }
    match tokio::time::timeout(shared.max_wait, pool.queue.acquire()).await {
        Ok(Ok(permit)) => {
            // Ours now; `Permit` gives it back to the pool.
            permit.forget();
            true
        }
        // The queue is never closed; treat it like a timeout anyway.
        Ok(Err(_)) | Err(_) => false,
    }
}

/// A permit held by a call; given back when dropped.
pub(crate) struct Permit(Arc<Shared>);

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        self.0.pool.give_back();
    }
}

/// Builds [`Bulkhead`] services that all share one pool of permits.
#[derive(Clone)]
pub struct BulkheadLayer {
    pub(crate) shared: Arc<Shared>,
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
    /// The metric (`bulkhead_rejected_total`, label `name`) is registered here, at 0 until a
    /// call is rejected: install the metrics recorder before building layers.
    pub fn new(config: BulkheadConfig) -> Result<Self, Error> {
        config.validate()?;
        let name = ComponentName::new(&config.name);
        names::preregister(names::BULKHEAD_REJECTED, &[(names::labels::NAME, &name)]);
        Ok(Self {
            shared: Arc::new(Shared {
                rejected: super::rejections::Rejections::new(
                    metrics::counter!(names::BULKHEAD_REJECTED, names::labels::NAME => name.to_string()),
                ),
                name,
                max_concurrent: config.max_concurrent,
                max_wait: config.max_wait,
                pool: Pool::new(config.max_concurrent),
            }),
        })
    }

    /// Permits free right now.
    pub fn available_permits(&self) -> usize {
        self.shared.pool.available.load(Relaxed)
    }

    /// The name of this bulkhead.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The number of permits, `max_concurrent`.
    pub fn max_concurrent(&self) -> usize {
        self.shared.max_concurrent
    }

    /// Calls rejected since the bulkhead was built.
    pub fn rejected_calls(&self) -> u64 {
        self.shared.rejected.total()
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
type Acquire = ReusableBoxFuture<'static, bool>;

enum State {
    Idle,
    Waiting(Acquire),
    Acquired(Permit),
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
    crate::__define_inner_service_accessors!();

    /// Drives the permit acquisition; `Ready(true)` once a permit is held, `Ready(false)` once
    /// the call is rejected.
    fn poll_permit(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        loop {
            match &mut self.state {
                State::Acquired(_) => return Poll::Ready(true),
                State::Rejected => return Poll::Ready(false),
                State::Idle => {
                    self.state = if self.shared.pool.try_take_first() {
                        State::Acquired(Permit(self.shared.clone()))
                    } else if self.shared.max_wait.is_zero() {
                        State::Rejected
                    } else {
                        State::Waiting(ReusableBoxFuture::new(wait_for_permit(self.shared.clone())))
                    };
                }
                State::Waiting(acquire) => {
                    self.state = if ready!(acquire.poll(cx)) {
                        State::Acquired(Permit(self.shared.clone()))
                    } else {
                        State::Rejected
                    };
                }
            }
        }
    }
}

crate::__impl_boxed_service!(Bulkhead => ResponseFuture<S::Future> {
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
            State::Acquired(permit) => ResponseFuture::called(self.inner.call(req), Some(permit)),
            State::Rejected => {
                self.shared.rejected.increment(1);
                tracing::debug!(bulkhead = %self.shared.name, "bulkhead full: call rejected");
                ResponseFuture::rejected(self.shared.rejection())
            }
            State::Idle | State::Waiting(_) => {
                panic!("Bulkhead::call without a successful poll_ready (tower Service contract)")
            }
        }
    }
});

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BoxError;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::AtomicUsize;
    use tower::{Service, ServiceExt, service_fn};

    fn layer(max: usize, wait: Duration) -> BulkheadLayer {
        BulkheadLayer::new(BulkheadConfig::new("t").max_concurrent(max).max_wait(wait)).unwrap()
    }

    /// A downstream that answers at once.
    fn answering() -> impl Service<(), Response = (), Error = BoxError, Future: Send> + Clone + Send
    {
        service_fn(|()| async { Ok::<_, BoxError>(()) })
    }

    /// A clone of `svc`, readied: it holds one of the bulkhead's permits until dropped.
    async fn ready_clone<S>(svc: &S) -> S
    where
        S: Service<()> + Clone,
        S::Error: fmt::Debug,
    {
        let mut ready = svc.clone();
        std::future::poll_fn(|cx| ready.poll_ready(cx))
            .await
            .unwrap();
        ready
    }

    /// Counts the calls running at once (and the most seen).
    #[derive(Clone)]
    struct Counting {
        running: Arc<AtomicUsize>,
        peak: Arc<AtomicUsize>,
    }

    impl Service<()> for Counting {
        type Response = ();
        type Error = BoxError;
        type Future = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, (): ()) -> Self::Future {
            let (running, peak) = (self.running.clone(), self.peak.clone());
            Box::pin(async move {
                let now = running.fetch_add(1, SeqCst) + 1;
                peak.fetch_max(now, SeqCst);
                tokio::task::yield_now().await;
                running.fetch_sub(1, SeqCst);
                Ok(())
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn permits_bound_concurrency_and_all_come_back() {
        let layer = layer(3, Duration::from_secs(30));
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let svc = layer.layer(Counting {
            running: running.clone(),
            peak: peak.clone(),
        });
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let svc = svc.clone();
                tokio::spawn(async move {
                    for _ in 0..200 {
                        svc.clone().oneshot(()).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert!(peak.load(SeqCst) <= 3, "peak {}", peak.load(SeqCst));
        assert_eq!(layer.available_permits(), 3);
        assert_eq!(layer.shared.pool.waiting.load(SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_gave_up_leaves_nothing_behind() {
        let layer = layer(1, Duration::from_millis(100));
        let svc = layer.layer(answering());
        let holder = ready_clone(&svc).await;
        // The holder's permit is never used: the next call waits 100 ms, then is rejected.
        assert!(svc.clone().oneshot(()).await.is_err());
        assert_eq!(layer.shared.pool.waiting.load(SeqCst), 0);
        drop(holder);
        assert_eq!(layer.available_permits(), 1);
        assert!(matches!(layer.layer(answering()).oneshot(()).await, Ok(())));
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_call_queues_behind_a_waiting_one() {
        let layer = layer(1, Duration::from_secs(1));
        let svc = layer.layer(answering());
        let holder = ready_clone(&svc).await;
        let waiter = tokio::spawn(svc.clone().oneshot(()));
        tokio::task::yield_now().await;
        assert_eq!(layer.shared.pool.waiting.load(SeqCst), 1);
        // The permit comes back while a call waits: a newcomer does not take it first.
        drop(holder);
        let mut newcomer = svc.clone();
        let ready = std::future::poll_fn(|cx| Poll::Ready(newcomer.poll_ready(cx))).await;
        assert!(ready.is_pending());
        waiter.await.unwrap().unwrap();
        std::future::poll_fn(|cx| newcomer.poll_ready(cx))
            .await
            .unwrap();
        newcomer.call(()).await.unwrap();
        assert_eq!(layer.available_permits(), 1);
    }
}
