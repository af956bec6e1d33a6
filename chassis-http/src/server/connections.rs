//! The open connections of a [`Server`](super::Server): how each one learns that shutdown
//! began (finish the current request, then close) or that the drain deadline passed (close
//! now), and how the server waits until they are all gone.
//!
//! This replaces hyper-util's `GracefulShutdown` watcher plus a `select!` on a cancellation
//! token per connection. Both of those wait on a tokio `Notify`, whose future takes a mutex to
//! re-register its waker on every poll, and a connection is polled a few times per request.
//! Here a poll costs an atomic load and an [`AtomicWaker`] update; the mutex is only taken when
//! a connection opens or closes and when the phase changes.
//!
//! A connection also has a first-request deadline: if no request reached the service by then
//! (a client that connects and sends nothing, stops inside the HTTP/2 preface, or sends the
//! preface and no request), the connection is closed. hyper bounds an HTTP/1 request head once
//! it starts reading one, but hyper-util's protocol detection reads the first bytes before
//! that with no limit, and HTTP/2 has no head timeout at all; without this deadline a silent
//! connection holds one of the server's connection slots for ever.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use hyper_util::server::graceful::GracefulConnection;
use pin_project_lite::pin_project;
use tokio::sync::Notify;

/// Connections serve requests.
const SERVING: u8 = 0;
/// Connections finish their in-flight requests and close (HTTP/2: GOAWAY).
const DRAINING: u8 = 1;
/// Connections are dropped at their next poll.
const CLOSING: u8 = 2;

struct Shared {
    phase: AtomicU8,
    next_id: AtomicU64,
    /// The waker of every open connection, by id.
    open: Mutex<HashMap<u64, Arc<AtomicWaker>>>,
    /// Notified when the last connection closes.
    all_closed: Notify,
}

impl Shared {
    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<AtomicWaker>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn enter(&self, phase: u8) {
        self.phase.store(phase, Ordering::SeqCst);
        for waker in self.open().values() {
            waker.wake();
        }
    }
}

/// The set of open connections; see the [module docs](self).
pub(super) struct Connections {
    shared: Arc<Shared>,
}

impl Connections {
    pub(super) fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                phase: AtomicU8::new(SERVING),
                next_id: AtomicU64::new(0),
                open: Mutex::new(HashMap::new()),
                all_closed: Notify::new(),
            }),
        }
    }

    /// Counts a new connection as open until the returned registration is dropped; give it
    /// the connection with [`Registration::watch`].
    pub(super) fn register(&self) -> Registration {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let waker = Arc::new(AtomicWaker::new());
        self.shared.open().insert(id, waker.clone());
        Registration {
            id,
            waker,
            shared: self.shared.clone(),
        }
    }

    /// Connections open now.
    pub(super) fn count(&self) -> usize {
        self.shared.open().len()
    }

    /// Tells every connection to finish its in-flight requests and close.
    pub(super) fn drain(&self) {
        self.shared.enter(DRAINING);
    }

    /// Closes every connection that is still open, at its next poll.
    pub(super) fn close_all(&self) {
        self.shared.enter(CLOSING);
    }

    /// Resolves once no connection is open.
    pub(super) async fn all_closed(&self) {
        loop {
            let notified = self.shared.all_closed.notified();
            tokio::pin!(notified);
            // Registered before the check, so a close in between still wakes us.
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// A connection's entry in the set, removed on drop.
pub(super) struct Registration {
    id: u64,
    waker: Arc<AtomicWaker>,
    shared: Arc<Shared>,
}

impl Registration {
    /// Serves `conn` under this registration. The future resolves to `None` when the
    /// connection was closed by [`Connections::close_all`], or because `first_request`
    /// elapsed before `served` was set.
    pub(super) fn watch<C: GracefulConnection>(
        self,
        conn: C,
        first_request: Pin<Box<dyn hyper::rt::Sleep>>,
        served: Arc<AtomicBool>,
    ) -> Watched<C> {
        Watched {
            conn,
            registration: self,
            shutdown_sent: false,
            first_request: Some((first_request, served)),
        }
    }
}

impl Registration {
    /// Resolves once shutdown began (drain or close): for a connection that has not reached
    /// HTTP yet (a TLS handshake in progress), which has no request to finish and just closes.
    #[cfg(feature = "tls")]
    pub(super) fn shutting_down(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            self.waker.register(cx.waker());
            if self.shared.phase.load(Ordering::SeqCst) == SERVING {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut open = self.shared.open();
        open.remove(&self.id);
        if open.is_empty() {
            drop(open);
            self.shared.all_closed.notify_waiters();
        }
    }
}

pin_project! {
    /// A connection tracked by [`Connections`].
    pub(super) struct Watched<C> {
        #[pin]
        conn: C,
        registration: Registration,
        shutdown_sent: bool,
        // Until the first request: its deadline, and the flag the connection's service sets.
        first_request: Option<(Pin<Box<dyn hyper::rt::Sleep>>, Arc<AtomicBool>)>,
    }
}

impl<C: GracefulConnection> Future for Watched<C> {
    type Output = Option<C::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // Registered before reading the phase: a phase change after the read wakes us.
        this.registration.waker.register(cx.waker());
        match this.registration.shared.phase.load(Ordering::SeqCst) {
            SERVING => {}
            DRAINING => {
                if !*this.shutdown_sent {
                    *this.shutdown_sent = true;
                    this.conn.as_mut().graceful_shutdown();
                }
            }
            _ => return Poll::Ready(None),
        }
        let polled = this.conn.poll(cx);
        if polled.is_pending()
            && let Some((deadline, served)) = this.first_request
        {
            if served.load(Ordering::Relaxed) {
                // Later requests are bounded by hyper (HTTP/1 heads) from here on.
                *this.first_request = None;
            } else if deadline.as_mut().poll(cx).is_ready() {
                tracing::debug!(
                    target: "chassis_http::server",
                    "no request within the header read timeout; closing the connection"
                );
                return Poll::Ready(None);
            }
        }
        polled.map(Some)
    }
}
