//! Graceful shutdown: one signal every part of a service listens to, and a tracker that knows
//! when in-flight work has drained.
//!
//! [`Shutdown`] is triggered by SIGTERM/SIGINT ([`Shutdown::listen_for_signals`]) or by code
//! ([`Shutdown::trigger`]). Servers, consumers and relays hold a [`ShutdownToken`] and stop
//! taking new work when it fires; work that must finish registers with [`Shutdown::tracker`],
//! and [`Shutdown::drain`] waits for it up to a deadline. A service run by the
//! [`App`](crate::lifecycle::App) uses its shutdown as the stop signal; the app then stops the
//! components in the order of [`lifecycle`](crate::lifecycle): readiness fails first, then
//! intake stops, in-flight work drains, workers finish, connections and pools close, and
//! telemetry flushes.
//!
//! # Example
//! ```
//! use chassis_core::shutdown::Shutdown;
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let shutdown = Shutdown::new();
//! let token = shutdown.token();
//! let worker = shutdown.tracker().spawn(async move {
//!     token.cancelled().await; // stop taking work, finish what is in hand
//! });
//! shutdown.trigger();
//! assert!(shutdown.drain(Duration::from_secs(1)).await, "drained in time");
//! assert!(worker.await.is_ok());
//! # }
//! ```

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A shutdown signal listeners can wait on. Cheap to clone.
pub type ShutdownToken = CancellationToken;

/// The shutdown controller of one service. Cheap to clone: clones share the signal.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    /// A controller that has not fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// A token that is cancelled when shutdown begins.
    pub fn token(&self) -> ShutdownToken {
        self.token.clone()
    }

    /// The tracker in-flight work registers with, so [`drain`](Self::drain) can wait for it.
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Begins shutdown now.
    pub fn trigger(&self) {
        if !self.token.is_cancelled() {
            tracing::info!("shutdown triggered");
        }
        self.token.cancel();
    }

    /// Whether shutdown began.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Waits until shutdown begins.
    pub async fn triggered(&self) {
        self.token.cancelled().await;
    }

    /// Spawns a task that triggers shutdown on SIGTERM or SIGINT (Ctrl-C).
    pub fn listen_for_signals(&self) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                signal = wait_for_signal() => {
                    tracing::info!(signal, "shutdown signal received");
                    this.trigger();
                }
                () = this.token.cancelled() => {}
            }
        })
    }

    /// Waits for tracked work to finish, at most `deadline`. Returns whether everything
    /// finished in time. Closes the tracker: work spawned afterwards is still tracked but
    /// no longer delays this call's decision.
    pub async fn drain(&self, deadline: Duration) -> bool {
        self.tracker.close();
        let drained = tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_ok();
        if !drained {
            tracing::warn!(
                deadline_ms = deadline.as_millis() as u64,
                remaining = self.tracker.len(),
                "shutdown drain deadline reached with work still in flight"
            );
        }
        drained
    }
}

async fn wait_for_signal() -> &'static str {
    match Signals::install() {
        Ok(mut signals) => signals.next().await,
        Err(e) => {
            tracing::warn!(error = %e, "could not install signal handlers");
            std::future::pending().await
        }
    }
}

/// SIGTERM and SIGINT handlers, installed together; each [`next`](Self::next) waits for one
/// more signal (the lifecycle runner counts them: the second one forces the stop).
pub(crate) struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub(crate) fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    pub(crate) async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "ctrl-c"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shutdown whose tracker runs one sleep of `work`.
    fn tracking(work: Duration) -> Shutdown {
        let shutdown = Shutdown::new();
        shutdown.tracker().spawn(tokio::time::sleep(work));
        shutdown
    }

    #[tokio::test(start_paused = true)]
    async fn drain_respects_deadline() {
        let shutdown = tracking(Duration::from_secs(10));
        shutdown.trigger();
        assert!(shutdown.is_triggered());
        assert!(!shutdown.drain(Duration::from_secs(1)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_work() {
        let shutdown = tracking(Duration::from_millis(300));
        let start = tokio::time::Instant::now();
        assert!(shutdown.drain(Duration::from_secs(5)).await);
        assert_eq!(start.elapsed(), Duration::from_millis(300));
    }
}
