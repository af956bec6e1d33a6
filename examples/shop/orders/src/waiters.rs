//! Long polling: `GET /internal/orders/{id}?wait_ms=N` answers when the order reaches its final
//! status, or after N ms (at most [`MAX_WAIT`]) with the order as it is.
//!
//! A client that wants the outcome (the gateway's caller, the launcher's workload) otherwise
//! polls: every poll is a request through the gateway and orders, a service token verified, two
//! reads, two access-log lines, and a poll interval of latency on top of the saga's. With a
//! wait, one request usually suffices and the answer leaves the moment the order is final.
//!
//! The request registers its interest **before** it reads the order, and the saga announces an
//! order as finished **after** the transaction that finished it committed
//! ([`Waiters::finished`]); so a request either reads the final status or is woken by the
//! announcement, never misses both. Announcements are in-process: with several orders replicas a
//! request on another replica waits out its `wait_ms` and then reads the final status.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::time::Duration;
//! use shop_orders::waiters::Waiters;
//!
//! let waiters = Waiters::default();
//! let waiter = waiters.wait("o-1");
//! waiters.finished("o-1");
//! assert!(waiter.wait(Duration::from_secs(1)).await, "woken at once");
//! assert!(!waiters.wait("o-2").wait(Duration::from_millis(10)).await, "timed out");
//! assert_eq!(waiters.len(), 0, "nothing left behind");
//! # }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

/// The longest wait a request may ask for (below the gateway's 5 s per-attempt timeout).
pub const MAX_WAIT: Duration = Duration::from_secs(2);

type Map = HashMap<String, Vec<oneshot::Sender<()>>>;

/// The requests waiting for orders to finish. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Waiters {
    inner: Arc<Mutex<Map>>,
}

impl Waiters {
    /// Registers interest in `order_id`'s final status.
    pub fn wait(&self, order_id: &str) -> Waiter {
        let (tx, rx) = oneshot::channel();
        self.lock().entry(order_id.to_owned()).or_default().push(tx);
        Waiter {
            rx,
            order_id: order_id.to_owned(),
            waiters: self.clone(),
        }
    }

    /// Wakes every request waiting for `order_id` (call it once the final status is committed).
    pub fn finished(&self, order_id: &str) {
        if let Some(senders) = self.lock().remove(order_id) {
            for s in senders {
                let _ = s.send(());
            }
        }
    }

    /// Orders with requests waiting.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no request waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Map> {
        // A panic while holding the lock cannot leave the map inconsistent (single operations).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One request's registration; dropping it unregisters.
#[derive(Debug)]
pub struct Waiter {
    rx: oneshot::Receiver<()>,
    order_id: String,
    waiters: Waiters,
}

impl Waiter {
    /// Waits until the order is announced finished (`true`) or `timeout` passed (`false`).
    pub async fn wait(mut self, timeout: Duration) -> bool {
        matches!(
            tokio::time::timeout(timeout, &mut self.rx).await,
            Ok(Ok(()))
        )
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        // Remove this registration (and any other closed one) of the order, so requests that
        // timed out leave nothing behind.
        self.rx.close();
        let mut map = self.waiters.lock();
        if let Some(senders) = map.get_mut(&self.order_id) {
            senders.retain(|s| !s.is_closed());
            if senders.is_empty() {
                map.remove(&self.order_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn every_waiter_of_the_order_wakes_and_others_keep_waiting() {
        let w = Waiters::default();
        let (a, b, other) = (w.wait("o-1"), w.wait("o-1"), w.wait("o-2"));
        assert_eq!(w.len(), 2);
        w.finished("o-1");
        assert!(a.wait(Duration::from_secs(1)).await);
        assert!(b.wait(Duration::from_secs(1)).await);
        assert!(!other.wait(Duration::from_millis(500)).await);
        assert!(w.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_finish_before_the_wait_starts_is_not_lost() {
        let w = Waiters::default();
        let waiter = w.wait("o-1");
        w.finished("o-1"); // between registering and awaiting
        assert!(waiter.wait(Duration::from_millis(1)).await);
        w.finished("o-unknown"); // nobody waits: nothing happens
        assert!(w.is_empty());
    }
}
