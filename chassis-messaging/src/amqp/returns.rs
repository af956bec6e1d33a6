//! Which publish a `basic.return` belongs to.
//!
//! The broker sends an unroutable `mandatory` message's `basic.return` before the `basic.ack`
//! that confirms it, but a return names no delivery tag, and acks come in batches (`multiple`,
//! one ack for every publish up to a tag). lapin hands each return to the next confirm it
//! resolves; when one ack resolves several publishes (lapin 4.12 resolves them in hash-map
//! order), that can be another message's. Taken at its word, a routed message would be
//! reported unroutable (and published again: a duplicate) while the unroutable one would be
//! reported routed (and, from an outbox, marked sent: lost).
//!
//! So a return is matched to its message by content (exchange, routing key and body), as
//! RabbitMQ's own guidance on returns suggests. A publish whose confirm carries another
//! message's return records it in the publisher's [`ReturnLedger`]; the owner, confirmed
//! without its own return, looks there. Both confirms resolve in the same instant and their
//! tasks may run in either order, so the owner first yields once and, while returns are
//! about (one was seen in the last second), waits up to [`SETTLE`] for the record. A return
//! nobody claimed within [`UNCLAIMED_AFTER`] is logged as an error naming its exchange and
//! routing key: its publish was reported routed although the message reached no queue.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lapin::message::BasicReturnMessage;
use tokio::sync::Notify;

/// How long a publish confirmed without its own return waits for another publish to record
/// it, while returns are about.
pub(crate) const SETTLE: Duration = Duration::from_millis(20);

/// How long a recorded return waits for its publish before it is logged as unclaimed.
pub(crate) const UNCLAIMED_AFTER: Duration = Duration::from_secs(10);

/// How recent the last return must be for a publish to wait [`SETTLE`] for its own.
const ABOUT: Duration = Duration::from_secs(1);

/// Returns handed to another publish's confirm, until their own publish takes them.
#[derive(Debug)]
pub(crate) struct ReturnLedger {
    started: Instant,
    entries: Mutex<Vec<Entry>>,
    len: AtomicUsize,
    /// Milliseconds since `started` when a return was last seen (0: never).
    last_seen_ms: AtomicU64,
    recorded: Notify,
}

#[derive(Debug)]
struct Entry {
    fingerprint: u64,
    at: Instant,
    exchange: String,
    routing_key: String,
}

impl Default for ReturnLedger {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            entries: Mutex::new(Vec::new()),
            len: AtomicUsize::new(0),
            last_seen_ms: AtomicU64::new(0),
            recorded: Notify::new(),
        }
    }
}

fn fingerprint(exchange: &str, routing_key: &str, body: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    (exchange, routing_key, body).hash(&mut h);
    h.finish()
}

/// Whether `returned` is the message published to `exchange` with `routing_key` and `body`.
pub(crate) fn is_for(
    returned: &BasicReturnMessage,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
) -> bool {
    returned.delivery.exchange.as_str() == exchange
        && returned.delivery.routing_key.as_str() == routing_key
        && returned.delivery.data == body
}

impl ReturnLedger {
    /// Notes that a return was seen (own or another's): publishes wait for their own for a
    /// while.
    pub(crate) fn seen(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_seen_ms.store(ms.max(1), Ordering::Relaxed);
    }

    fn about(&self) -> bool {
        let last = self.last_seen_ms.load(Ordering::Relaxed);
        last != 0
            && self
                .started
                .elapsed()
                .saturating_sub(Duration::from_millis(last))
                < ABOUT
    }

    /// Records another message's return, found on this publish's confirm.
    pub(crate) fn record(&self, returned: &BasicReturnMessage) {
        self.seen();
        let entry = Entry {
            fingerprint: fingerprint(
                returned.delivery.exchange.as_str(),
                returned.delivery.routing_key.as_str(),
                &returned.delivery.data,
            ),
            at: Instant::now(),
            exchange: returned.delivery.exchange.to_string(),
            routing_key: returned.delivery.routing_key.to_string(),
        };
        {
            let mut entries = self.lock();
            Self::expire(&mut entries);
            entries.push(entry);
            self.len.store(entries.len(), Ordering::Release);
        }
        self.recorded.notify_waiters();
    }

    /// Whether the message published to `exchange` with `routing_key` and `body`, whose
    /// confirm carried no return of its own, was returned all the same (its return handed to
    /// another publish's confirm). Takes the record.
    pub(crate) async fn returned_elsewhere(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
    ) -> bool {
        // The carrier's task was woken with this one: let it run first.
        tokio::task::yield_now().await;
        if self.len.load(Ordering::Acquire) == 0 && !self.about() {
            return false;
        }
        let fp = fingerprint(exchange, routing_key, body);
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            let recorded = self.recorded.notified();
            tokio::pin!(recorded);
            // Registered before looking, so a record made in between still wakes it.
            recorded.as_mut().enable();
            if self.take(fp) {
                return true;
            }
            if !self.about() {
                return false;
            }
            if tokio::time::timeout_at(deadline, recorded).await.is_err() {
                return self.take(fp);
            }
        }
    }

    fn take(&self, fp: u64) -> bool {
        if self.len.load(Ordering::Acquire) == 0 {
            return false;
        }
        let mut entries = self.lock();
        let found = entries
            .iter()
            .position(|e| e.fingerprint == fp)
            .map(|i| entries.swap_remove(i))
            .is_some();
        self.len.store(entries.len(), Ordering::Release);
        found
    }

    /// Drops (and logs) the returns nobody claimed in time.
    fn expire(entries: &mut Vec<Entry>) {
        entries.retain(|e| {
            let keep = e.at.elapsed() < UNCLAIMED_AFTER;
            if !keep {
                tracing::error!(
                    exchange = %e.exchange,
                    routing_key = %e.routing_key,
                    "a message came back unroutable after its publish was reported routed: \
                     it reached no queue"
                );
            }
            keep
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
