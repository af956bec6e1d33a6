//! [`TestHarness`]: awaitable lists of what happened on a [`MemoryBroker`], to unit-test
//! handlers and publishing code without a broker and without sleeping (MassTransit's
//! `ITestHarness`).
//!
//! Three lists, each in the order things happened, each a [`Observed`] view:
//!
//! - [`published`](TestHarness::published): every message published (routed or not), as a
//!   consumer would receive it;
//! - [`consumed`](TestHarness::consumed): every handler invocation, on any queue, with its
//!   [`Outcome`] (a message retried twice then acked is there three times);
//! - [`dead_lettered`](TestHarness::dead_lettered): every message dead-lettered, with its
//!   queue and reason: rejected by its handler, or given up on after the queue's attempt limit
//!   (a panicking handler's failures are retryable, as on RabbitMQ). The message carries the
//!   failure headers the RabbitMQ consumer writes on its dead-letter copy.
//!
//! [`Observed::wait_for`] returns the first entry matching a predicate, waiting up to a
//! timeout for one to appear, and fails with [`WaitTimeout`] otherwise; [`Observed::all`]
//! lists what is there now. Entries recorded before the wait count, so there is no race
//! between starting the work and starting to wait.
//!
//! # Example
//! A handler under test, run by a consumer on the in-memory broker:
//! ```
//! use std::time::Duration;
//! use chassis_messaging::amqp::consumer::{typed, Outcome};
//! use chassis_messaging::amqp::publisher::Publish;
//! use chassis_messaging::amqp::topology::{ExchangeConfig, QueueConfig, TopologyConfig};
//! use chassis_messaging::envelope::Envelope;
//! use chassis_messaging::memory::MemoryBroker;
//!
//! #[derive(serde::Deserialize)]
//! struct OrderPlaced { order_id: String, total_cents: i64 }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let broker = MemoryBroker::new();
//! broker.declare(&TopologyConfig::new()
//!     .exchange(ExchangeConfig::topic("shop.events"))
//!     .queue(QueueConfig::new("billing").bind("shop.events", "shop.order.#"))).unwrap();
//! let harness = broker.harness();
//!
//! // The handler under test charges an order, and refuses a negative total for good.
//! let consumer = broker.consume("billing", typed(|e: Envelope<OrderPlaced>| async move {
//!     if e.data.total_cents < 0 {
//!         return Outcome::reject(format!("order {}: negative total", e.data.order_id));
//!     }
//!     Outcome::Ack
//! }));
//!
//! // The code under test publishes (here directly).
//! for (id, total) in [("41", 1200), ("42", -5)] {
//!     let event = Envelope::new("shop/orders", "shop.order.placed",
//!         serde_json::json!({ "order_id": id, "total_cents": total })).subject(id);
//!     broker.publish(event.to_message("shop.events").unwrap()).await.unwrap();
//! }
//!
//! let published = harness.published()
//!     .wait_for(|m| m.kind() == Some("shop.order.placed"), Duration::from_secs(1)).await.unwrap();
//! assert_eq!(published.routing_key(), "shop.order.placed");
//! let charged = harness.consumed()
//!     .wait_for(|c| c.outcome == Outcome::Ack, Duration::from_secs(1)).await.unwrap();
//! assert_eq!(charged.message.decode::<OrderPlaced>().unwrap().data.order_id, "41");
//! let refused = harness.dead_lettered()
//!     .wait_for(|d| d.queue == "billing", Duration::from_secs(1)).await.unwrap();
//! assert!(refused.reason.contains("negative total"));
//!
//! // Nothing else shows up: the wait fails with a timeout error that says what it saw.
//! let err = harness.dead_lettered()
//!     .wait_for(|d| d.reason.contains("41"), Duration::from_millis(50)).await.unwrap_err();
//! assert_eq!((err.list(), err.seen()), ("dead_lettered", 1));
//! consumer.shutdown().await;
//! # }
//! ```

use std::fmt;
use std::time::Duration;

use super::{MemoryBroker, State};
use crate::amqp::consumer::Outcome;
use crate::amqp::incoming::IncomingMessage;

/// One handler invocation seen by a [`TestHarness`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Consumed {
    /// The queue the message was taken from.
    pub queue: String,
    /// The message as the handler received it (its attempt number included).
    pub message: IncomingMessage,
    /// What the handler decided (a panic shows as the [`Outcome::Retry`] it counts as).
    pub outcome: Outcome,
}

/// One dead-lettering seen by a [`TestHarness`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeadLettered {
    /// The queue whose dead-letter queue took it.
    pub queue: String,
    /// The dead-lettered copy, with the `x-chassis-attempt` and `x-chassis-failure-reason`
    /// headers the RabbitMQ consumer writes.
    pub message: IncomingMessage,
    /// Why: the handler's reason for [`Outcome::Reject`], or `gave up after N attempt(s): …`.
    pub reason: String,
}

/// Awaitable lists of what happened on a [`MemoryBroker`]; see the [module docs](self).
/// Cheap to clone; it sees everything since the broker was created.
#[derive(Debug, Clone)]
pub struct TestHarness {
    broker: MemoryBroker,
}

impl TestHarness {
    /// The harness over `broker` (same as [`MemoryBroker::harness`]).
    pub fn new(broker: &MemoryBroker) -> Self {
        Self {
            broker: broker.clone(),
        }
    }

    /// Every message published, routed or not, as a consumer would receive it.
    pub fn published(&self) -> Observed<'_, IncomingMessage> {
        self.observe(
            "published",
            |st, i| {
                st.published
                    .get(i)
                    .cloned()
                    .map(IncomingMessage::from_outgoing)
            },
            |st| st.published.len(),
        )
    }

    /// Every handler invocation, with its outcome.
    pub fn consumed(&self) -> Observed<'_, Consumed> {
        self.observe(
            "consumed",
            |st, i| st.consumed.get(i).cloned(),
            |st| st.consumed.len(),
        )
    }

    /// Every message dead-lettered, with its queue and reason.
    pub fn dead_lettered(&self) -> Observed<'_, DeadLettered> {
        self.observe(
            "dead_lettered",
            |st, i| st.dead_lettered.get(i).cloned(),
            |st| st.dead_lettered.len(),
        )
    }

    /// The list `list` of the broker's state, read with `get` and `len`.
    fn observe<T>(
        &self,
        list: &'static str,
        get: fn(&State, usize) -> Option<T>,
        len: fn(&State) -> usize,
    ) -> Observed<'_, T> {
        Observed {
            broker: &self.broker,
            list,
            get,
            len,
        }
    }
}

/// One of a [`TestHarness`]'s lists.
pub struct Observed<'a, T> {
    broker: &'a MemoryBroker,
    list: &'static str,
    get: fn(&State, usize) -> Option<T>,
    len: fn(&State) -> usize,
}

impl<T> fmt::Debug for Observed<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Observed")
            .field("list", &self.list)
            .field("len", &self.len())
            .finish()
    }
}

impl<T> Observed<'_, T> {
    /// How many entries the list has now.
    pub fn len(&self) -> usize {
        (self.len)(&self.broker.lock())
    }

    /// Whether the list is empty now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entries now, oldest first.
    pub fn all(&self) -> Vec<T> {
        let st = self.broker.lock();
        (0..(self.len)(&st))
            .filter_map(|i| (self.get)(&st, i))
            .collect()
    }

    /// The first entry (oldest first, those already there included) for which `predicate`
    /// holds, waiting up to `timeout` for one to be recorded.
    ///
    /// # Errors
    /// [`WaitTimeout`] when none matched within `timeout`.
    pub async fn wait_for(
        &self,
        mut predicate: impl FnMut(&T) -> bool,
        timeout: Duration,
    ) -> Result<T, WaitTimeout> {
        let mut next = 0;
        let search = async {
            loop {
                // Registered before looking, so an entry recorded in between wakes us.
                let changed = self.broker.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                loop {
                    let item = (self.get)(&self.broker.lock(), next);
                    let Some(item) = item else { break };
                    next += 1;
                    if predicate(&item) {
                        return item;
                    }
                }
                changed.await;
            }
        };
        match tokio::time::timeout(timeout, search).await {
            Ok(item) => Ok(item),
            Err(_) => Err(WaitTimeout {
                list: self.list,
                waited: timeout,
                seen: self.len(),
            }),
        }
    }
}

/// No entry of a [`TestHarness`] list matched within the timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitTimeout {
    list: &'static str,
    waited: Duration,
    seen: usize,
}

impl WaitTimeout {
    /// Which list was waited on: `"published"`, `"consumed"` or `"dead_lettered"`.
    pub fn list(&self) -> &'static str {
        self.list
    }
    /// How long it waited.
    pub fn waited(&self) -> Duration {
        self.waited
    }
    /// How many entries the list had, none of them matching.
    pub fn seen(&self) -> usize {
        self.seen
    }
}

impl fmt::Display for WaitTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no matching entry among the {} {} within {:?}",
            self.seen, self.list, self.waited
        )
    }
}

impl std::error::Error for WaitTimeout {}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::amqp::consumer::typed;
    use crate::amqp::incoming::{ATTEMPT_HEADER, FAILURE_REASON_HEADER};
    use crate::amqp::publisher::Publish;
    use crate::amqp::topology::RetryPolicy;
    use crate::envelope::Envelope;
    use crate::message::{HeaderValue, OutgoingMessage};
    use crate::test_support::order_topology;

    fn broker() -> MemoryBroker {
        let b = MemoryBroker::new();
        let retry = RetryPolicy::with_delays([Duration::from_secs(1)]).max_attempts(3);
        b.declare(&order_topology(retry)).unwrap();
        b
    }

    fn event(kind: &str, n: i64) -> OutgoingMessage {
        Envelope::new("s", kind, serde_json::json!({ "n": n }))
            .to_message("ev")
            .unwrap()
    }

    #[tokio::test]
    async fn wait_for_finds_an_entry_recorded_before_or_after_the_wait() {
        let b = broker();
        let h = b.harness();
        b.publish(event("order.placed", 1)).await.unwrap();
        // Already there.
        let m = h
            .published()
            .wait_for(|m| m.kind() == Some("order.placed"), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(m.routing_key(), "order.placed");

        // Published while waiting, by a consumer's handler that publishes a follow-up.
        let publisher = b.clone();
        let consumer = b.consume(
            "q",
            typed(move |e: Envelope<serde_json::Value>| {
                let publisher = publisher.clone();
                async move {
                    if e.kind == "order.placed" {
                        publisher
                            .publish(event("order.charged", e.data["n"].as_i64().unwrap()))
                            .await
                            .unwrap();
                    }
                    Outcome::Ack
                }
            }),
        );
        let charged = h
            .published()
            .wait_for(
                |m| m.kind() == Some("order.charged"),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(charged.decode::<serde_json::Value>().unwrap().data["n"], 1);
        let c = h
            .consumed()
            .wait_for(
                |c| c.message.kind() == Some("order.charged"),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!((c.queue.as_str(), &c.outcome), ("q", &Outcome::Ack));
        consumer.shutdown().await;
        assert_eq!(h.consumed().len(), 2);
        assert_eq!(h.published().all().len(), 2);
        assert!(h.dead_lettered().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn wait_for_times_out_with_what_it_saw() {
        let b = broker();
        let h = b.harness();
        b.publish(event("order.placed", 1)).await.unwrap();
        let err = h
            .published()
            .wait_for(
                |m| m.kind() == Some("order.shipped"),
                Duration::from_secs(2),
            )
            .await
            .unwrap_err();
        assert_eq!(
            (err.list(), err.seen(), err.waited()),
            ("published", 1, Duration::from_secs(2))
        );
        assert_eq!(
            err.to_string(),
            "no matching entry among the 1 published within 2s"
        );
        // No consumer runs, so nothing is consumed either.
        let err = h
            .consumed()
            .wait_for(|_| true, Duration::from_millis(10))
            .await
            .unwrap_err();
        assert_eq!((err.list(), err.seen()), ("consumed", 0));
    }

    #[tokio::test]
    async fn a_failing_handler_dead_letters_after_the_attempt_limit() {
        let b = broker();
        let h = b.harness();
        let calls = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        let consumer = b.consume("q", move |_m: IncomingMessage| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Outcome::retry("payment service down") }
        });
        b.publish(event("order.placed", 7)).await.unwrap();
        let dead = h
            .dead_lettered()
            .wait_for(|d| d.queue == "q", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3, "max_attempts(3)");
        assert_eq!(
            dead.reason,
            "gave up after 3 attempt(s): payment service down"
        );
        assert_eq!(
            dead.message.header(ATTEMPT_HEADER),
            Some(&HeaderValue::Int(3))
        );
        assert_eq!(
            dead.message.header(FAILURE_REASON_HEADER),
            Some(&HeaderValue::String(dead.reason.clone()))
        );
        assert_eq!(dead.message.kind(), Some("order.placed"));
        // Every attempt was recorded with its outcome, and the queue's dead letters agree.
        let attempts: Vec<u32> = h
            .consumed()
            .all()
            .iter()
            .map(|c| c.message.attempt())
            .collect();
        assert_eq!(attempts, [1, 2, 3]);
        assert_eq!(b.dead_letters("q").len(), 1);

        // A rejection and a panic through the running consumer: dead-lettered at once, and
        // retried to the limit.
        consumer.shutdown().await;
        let consumer = b.consume("q", |m: IncomingMessage| async move {
            match m.kind() {
                Some("order.junk") => Outcome::reject("junk"),
                _ => panic!("boom"),
            }
        });
        b.publish(event("order.junk", 1)).await.unwrap();
        b.publish(event("order.boom", 1)).await.unwrap();
        let boom = h
            .dead_lettered()
            .wait_for(
                |d| d.message.kind() == Some("order.boom"),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert!(boom.reason.contains("3 attempt") && boom.reason.contains("boom"));
        let reasons: Vec<String> = h
            .dead_lettered()
            .all()
            .into_iter()
            .map(|d| d.reason)
            .collect();
        assert_eq!(reasons[1], "junk");
        assert_eq!(reasons.len(), 3);
        consumer.shutdown().await;
        assert_eq!(b.pending("q"), 0);
    }
}
