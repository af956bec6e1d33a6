//! An in-memory transport for unit tests: no broker needed.
//!
//! [`MemoryBroker`] implements [`Publish`] and runs the same [`Handler`]s as the RabbitMQ
//! [`Consumer`](crate::amqp::consumer::Consumer), with the same semantics, minus time:
//!
//! - routing: topic, direct and fanout exchanges with the bindings of a [`TopologyConfig`];
//!   the default exchange `""` routes by queue name; a message no queue is bound for fails
//!   with [`ErrorKind::Unroutable`] (succeeds as [`Routing::Unrouted`] on an exchange declared
//!   [`Unroutable::Accept`]), an undeclared
//!   exchange with [`ErrorKind::Topology`];
//! - [`Outcome::Ack`] removes the message; [`Outcome::Retry`] puts it back at the end of the
//!   queue with `x-chassis-attempt` incremented (retry tiers collapse to no delay) until the
//!   queue's attempt limit, then dead-letters it; [`Outcome::Reject`] and a panicking handler
//!   behave as on the broker (a panic is a retryable failure);
//! - dead letters are inspectable with [`MemoryBroker::dead_letters`], with the reason.
//!
//! Two ways to run handlers: [`MemoryBroker::drain`] handles what is queued now and returns
//! (the example below); [`MemoryBroker::consume`] keeps a consumer running, as a service
//! would, handling each message as it is published. What happened (published, consumed with
//! its outcome, dead-lettered) is recorded and can be awaited through the [`TestHarness`]
//! ([`MemoryBroker::harness`]): the way to unit-test handlers and the code that publishes,
//! without a broker and without sleeping. See the [`harness`] module.
//!
//! # Example
//! ```
//! use chassis_messaging::amqp::consumer::{typed, Outcome};
//! use chassis_messaging::amqp::publisher::Publish;
//! use chassis_messaging::amqp::topology::{ExchangeConfig, QueueConfig, RetryPolicy, TopologyConfig};
//! use chassis_messaging::envelope::Envelope;
//! use chassis_messaging::memory::MemoryBroker;
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let broker = MemoryBroker::new();
//! broker.declare(&TopologyConfig::new()
//!     .exchange(ExchangeConfig::topic("shop.events"))
//!     .queue(QueueConfig::new("billing").bind("shop.events", "shop.order.*")
//!         .retry(RetryPolicy::with_delays([Duration::from_secs(1)]).max_attempts(3)))).unwrap();
//!
//! let event = Envelope::new("shop/orders", "shop.order.placed", serde_json::json!({"order_id": "42"}));
//! broker.publish(event.to_message("shop.events").unwrap()).await.unwrap();
//!
//! // A handler that always fails: retried until the attempt limit, then dead-lettered.
//! let report = broker.drain("billing", &typed(|_e: Envelope<serde_json::Value>| async { Outcome::retry("payment service down") })).await;
//! assert_eq!((report.retried, report.dead_lettered), (2, 1));
//! assert!(broker.dead_letters("billing")[0].reason.contains("payment service down"));
//! # }
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub mod harness;

pub use harness::{Consumed, DeadLettered, Observed, TestHarness, WaitTimeout};

use crate::amqp::consumer::{Handler, Outcome, run_handler};
use crate::amqp::incoming::{
    ATTEMPT_HEADER, FAILURE_REASON_HEADER, IncomingMessage, ORIGINAL_EXCHANGE_HEADER,
    ORIGINAL_ROUTING_KEY_HEADER,
};
use crate::amqp::publisher::{Publish, Routing};
use crate::amqp::topology::{ExchangeType, QueueConfig, TopologyConfig, Unroutable};
use crate::error::{Error, ErrorKind};
use crate::message::{HeaderValue, OutgoingMessage};

/// A message in a dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The message, with the chassis failure headers.
    pub message: OutgoingMessage,
    /// Why it was dead-lettered (also its `x-chassis-failure-reason` header).
    pub reason: String,
}

/// What one [`MemoryBroker::drain`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Handler invocations.
    pub handled: usize,
    /// Messages acked.
    pub acked: usize,
    /// Retries scheduled.
    pub retried: usize,
    /// Messages dead-lettered.
    pub dead_lettered: usize,
}

#[derive(Debug, Default)]
struct State {
    exchanges: BTreeMap<String, (ExchangeType, Unroutable)>,
    queues: BTreeMap<String, MemQueue>,
    published: Vec<OutgoingMessage>,
    /// Every handler invocation, in order (for the harness).
    consumed: Vec<Consumed>,
    /// Every dead-lettering, over all queues, in order (for the harness).
    dead_lettered: Vec<DeadLettered>,
}

/// How one message was settled.
enum Settled {
    Acked,
    Retried,
    DeadLettered,
}

#[derive(Debug)]
struct MemQueue {
    config: QueueConfig,
    ready: VecDeque<OutgoingMessage>,
    dead: Vec<DeadLetter>,
}

/// The in-memory broker. Cheap to clone (clones share state).
#[derive(Debug, Clone, Default)]
pub struct MemoryBroker {
    state: Arc<Mutex<State>>,
    /// Woken on every publish, handling and dead-lettering: running consumers and the
    /// harness's waiters look again.
    changed: Arc<Notify>,
}

impl MemoryBroker {
    /// An empty broker.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Declares exchanges, queues and bindings (idempotent; re-declaring a queue keeps its
    /// messages and replaces its config).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`] as [`TopologyConfig::validate`]; [`ErrorKind::Topology`]
    /// when a binding names an undeclared exchange.
    pub fn declare(&self, topology: &TopologyConfig) -> Result<(), Error> {
        topology.validate()?;
        let mut st = self.lock();
        for e in &topology.exchanges {
            st.exchanges.insert(e.name.clone(), (e.kind, e.unroutable));
        }
        for q in &topology.queues {
            for b in &q.bindings {
                if !st.exchanges.contains_key(&b.exchange) {
                    return Err(Error::with_source(
                        ErrorKind::Topology,
                        format!("no exchange {:?}", b.exchange),
                    ));
                }
            }
            match st.queues.get_mut(&q.name) {
                Some(existing) => existing.config = q.clone(),
                None => {
                    st.queues.insert(
                        q.name.clone(),
                        MemQueue {
                            config: q.clone(),
                            ready: VecDeque::new(),
                            dead: Vec::new(),
                        },
                    );
                }
            }
        }
        Ok(())
    }

    /// Every message published so far (successfully routed or not), in order.
    pub fn published(&self) -> Vec<OutgoingMessage> {
        self.lock().published.clone()
    }

    /// Messages waiting in `queue`.
    pub fn pending(&self, queue: &str) -> usize {
        self.lock().queues.get(queue).map_or(0, |q| q.ready.len())
    }

    /// The dead letters of `queue`.
    pub fn dead_letters(&self, queue: &str) -> Vec<DeadLetter> {
        self.lock()
            .queues
            .get(queue)
            .map(|q| q.dead.clone())
            .unwrap_or_default()
    }

    /// The [`TestHarness`] over this broker: awaitable lists of what was published, consumed
    /// and dead-lettered.
    pub fn harness(&self) -> TestHarness {
        TestHarness::new(self)
    }

    fn route(&self, msg: OutgoingMessage) -> Result<Routing, Error> {
        let res = self.route_locked(msg);
        self.changed.notify_waiters();
        res
    }

    fn route_locked(&self, msg: OutgoingMessage) -> Result<Routing, Error> {
        let mut st = self.lock();
        st.published.push(msg.clone());
        let mut policy = Unroutable::Retry;
        let targets: Vec<String> = if msg.exchange.is_empty() {
            st.queues
                .contains_key(&msg.routing_key)
                .then(|| msg.routing_key.clone())
                .into_iter()
                .collect()
        } else {
            let (kind, unroutable) = *st.exchanges.get(&msg.exchange).ok_or_else(|| {
                Error::with_source(
                    ErrorKind::Topology,
                    format!("no exchange {:?}", msg.exchange),
                )
            })?;
            policy = unroutable;
            st.queues
                .values()
                .filter(|q| {
                    q.config.bindings.iter().any(|b| {
                        b.exchange == msg.exchange
                            && match kind {
                                ExchangeType::Topic => {
                                    topic_matches(&b.routing_key, &msg.routing_key)
                                }
                                ExchangeType::Direct => b.routing_key == msg.routing_key,
                                ExchangeType::Fanout => true,
                            }
                    })
                })
                .map(|q| q.config.name.clone())
                .collect()
        };
        if targets.is_empty() {
            return match policy {
                Unroutable::Accept => Ok(Routing::Unrouted),
                Unroutable::Retry => Err(Error::unroutable(msg.exchange, msg.routing_key)),
            };
        }
        for t in targets {
            if let Some(q) = st.queues.get_mut(&t) {
                q.ready.push_back(msg.clone());
            }
        }
        Ok(Routing::Queued)
    }

    /// Runs `handler` on the messages of `queue` until it is empty (retried messages included),
    /// applying each [`Outcome`] as the RabbitMQ consumer would.
    pub async fn drain(&self, queue: &str, handler: &dyn Handler) -> DrainReport {
        let mut report = DrainReport::default();
        while let Some(settled) = self.handle_next(queue, handler).await {
            report.handled += 1;
            match settled {
                Settled::Acked => report.acked += 1,
                Settled::Retried => report.retried += 1,
                Settled::DeadLettered => report.dead_lettered += 1,
            }
        }
        report
    }

    /// Starts a consumer of `queue` on the current tokio runtime: it runs `handler` on every
    /// message as soon as one is queued (one at a time, in queue order), with the outcomes of
    /// [`drain`](Self::drain), until [`MemoryConsumer::shutdown`] or until it is dropped.
    /// Await its effects with the [`harness`](Self::harness).
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn consume(&self, queue: impl Into<String>, handler: impl Handler) -> MemoryConsumer {
        let cancel = CancellationToken::new();
        let (broker, queue, stop) = (self.clone(), queue.into(), cancel.clone());
        let task = tokio::spawn(async move {
            loop {
                // Registered before looking, so a publish in between is not missed.
                let changed = broker.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if stop.is_cancelled() {
                    break;
                }
                if broker.handle_next(&queue, &handler).await.is_some() {
                    continue;
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = &mut changed => {}
                }
            }
        });
        MemoryConsumer {
            cancel: cancel.drop_guard(),
            task,
        }
    }

    /// Takes the next message of `queue`, runs `handler` on it and settles it; `None` when
    /// the queue is empty or does not exist.
    async fn handle_next(&self, queue: &str, handler: &dyn Handler) -> Option<Settled> {
        let (next, config) = {
            let mut st = self.lock();
            let q = st.queues.get_mut(queue)?;
            (q.ready.pop_front()?, q.config.clone())
        };
        let msg = IncomingMessage::from_outgoing(next.clone());
        let outcome = run_handler(handler, msg.clone()).await;
        let settled = {
            let mut st = self.lock();
            st.consumed.push(Consumed {
                queue: queue.to_owned(),
                message: msg.clone(),
                outcome: outcome.clone(),
            });
            let (settled, dead) = match outcome {
                Outcome::Ack => (Settled::Acked, None),
                Outcome::Retry { reason, .. } => {
                    let max = config.retry.effective_max_attempts();
                    if msg.attempt() < max && !config.retry.delays.is_empty() {
                        if let Some(q) = st.queues.get_mut(queue) {
                            q.ready.push_back(with_failure(
                                next.clone(),
                                &msg,
                                msg.attempt() + 1,
                                &reason,
                            ));
                        }
                        (Settled::Retried, None)
                    } else {
                        let reason =
                            format!("gave up after {} attempt(s): {reason}", msg.attempt());
                        (Settled::DeadLettered, Some(reason))
                    }
                }
                Outcome::Reject { reason } => (Settled::DeadLettered, Some(reason)),
            };
            if let Some(reason) = dead {
                let message = with_failure(next, &msg, msg.attempt(), &reason);
                st.dead_lettered.push(DeadLettered {
                    queue: queue.to_owned(),
                    message: IncomingMessage::from_outgoing(message.clone()),
                    reason: reason.clone(),
                });
                if let Some(q) = st.queues.get_mut(queue) {
                    q.dead.push(DeadLetter { message, reason });
                }
            }
            settled
        };
        self.changed.notify_waiters();
        Some(settled)
    }
}

/// A consumer started by [`MemoryBroker::consume`]. Dropping it stops it once the handler it
/// is running, if any, returned; [`shutdown`](Self::shutdown) also waits for that.
#[derive(Debug)]
pub struct MemoryConsumer {
    cancel: tokio_util::sync::DropGuard,
    task: JoinHandle<()>,
}

impl MemoryConsumer {
    /// Stops the consumer and waits until the handler it is running, if any, returned (its
    /// outcome is applied); queued messages stay queued.
    pub async fn shutdown(self) {
        drop(self.cancel);
        let _ = self.task.await;
    }
}

fn with_failure(
    mut wire: OutgoingMessage,
    msg: &IncomingMessage,
    attempt: u32,
    reason: &str,
) -> OutgoingMessage {
    wire.headers
        .insert(ATTEMPT_HEADER.into(), HeaderValue::Int(i64::from(attempt)));
    wire.headers
        .insert(FAILURE_REASON_HEADER.into(), reason.into());
    wire.headers
        .entry(ORIGINAL_EXCHANGE_HEADER.into())
        .or_insert_with(|| msg.exchange().into());
    wire.headers
        .entry(ORIGINAL_ROUTING_KEY_HEADER.into())
        .or_insert_with(|| msg.routing_key().into());
    wire
}

impl Publish for MemoryBroker {
    fn publish(&self, msg: OutgoingMessage) -> BoxFuture<'_, Result<(), Error>> {
        let res = self.route(msg).map(drop);
        Box::pin(async move { res })
    }
    fn publish_routed(&self, msg: OutgoingMessage) -> BoxFuture<'_, Result<Routing, Error>> {
        let res = self.route(msg);
        Box::pin(async move { res })
    }
}

/// AMQP topic matching: words separated by `.`, `*` matches exactly one word, `#` zero or more.
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    fn go(p: &[&str], k: &[&str]) -> bool {
        match p.split_first() {
            None => k.is_empty(),
            Some((&"#", rest)) => (0..=k.len()).any(|i| go(rest, &k[i..])),
            Some((&w, rest)) => match k.split_first() {
                Some((&kw, krest)) => (w == "*" || w == kw) && go(rest, krest),
                None => false,
            },
        }
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    };
    go(&p, &k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::consumer::typed;
    use crate::amqp::topology::{ExchangeConfig, RetryPolicy};
    use crate::envelope::Envelope;
    use crate::test_support::order_topology;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn broker() -> MemoryBroker {
        let b = MemoryBroker::new();
        let retry =
            RetryPolicy::with_delays([Duration::from_millis(10), Duration::from_millis(20)]);
        b.declare(&order_topology(retry).queue(QueueConfig::new("all").bind("ev", "#")))
            .unwrap();
        b
    }

    /// What publishing an empty message to `exchange` with `key` fails with.
    async fn publish_error(b: &MemoryBroker, exchange: &str, key: &str) -> ErrorKind {
        let msg = OutgoingMessage::new(exchange, key, vec![]);
        b.publish(msg).await.unwrap_err().kind().clone()
    }

    #[test]
    fn topic_matching() {
        assert!(topic_matches("order.*", "order.placed"));
        assert!(!topic_matches("order.*", "order.placed.v2"));
        assert!(topic_matches("order.#", "order.placed.v2"));
        assert!(topic_matches("order.#", "order"));
        assert!(topic_matches("#", "anything.at.all"));
        assert!(topic_matches("*.placed", "order.placed"));
        assert!(!topic_matches("*.placed", "placed"));
        assert!(topic_matches("a.#.z", "a.b.c.z"));
        assert!(!topic_matches("a.#.z", "a.b.c"));
    }

    #[tokio::test]
    async fn routes_and_reports_unroutable_and_unknown_exchange() {
        let b = broker();
        b.publish(OutgoingMessage::new("ev", "order.placed", b"1".to_vec()))
            .await
            .unwrap();
        b.publish(OutgoingMessage::new("ev", "user.created", b"2".to_vec()))
            .await
            .unwrap();
        assert_eq!((b.pending("q"), b.pending("all")), (1, 2));
        assert!(matches!(
            publish_error(&b, "", "nope").await,
            ErrorKind::Unroutable { .. }
        ));
        assert_eq!(publish_error(&b, "missing", "k").await, ErrorKind::Topology);
        b.publish(OutgoingMessage::new("", "q", b"3".to_vec()))
            .await
            .unwrap();
        assert_eq!(b.pending("q"), 2);
        assert_eq!(b.published().len(), 5);
    }

    #[tokio::test]
    async fn an_accepting_exchange_reports_unrouted_instead_of_failing() {
        let b = broker();
        b.declare(
            &TopologyConfig::new()
                .exchange(
                    ExchangeConfig::topic("audit")
                        .unroutable(crate::amqp::topology::Unroutable::Accept),
                )
                .exchange(ExchangeConfig::topic("strict")),
        )
        .unwrap();
        let routed = b
            .publish_routed(OutgoingMessage::new("audit", "anything", vec![]))
            .await
            .unwrap();
        assert_eq!(routed, Routing::Unrouted);
        b.publish(OutgoingMessage::new("audit", "anything", vec![]))
            .await
            .unwrap();
        // The retrying exchange still fails, and routed messages say so.
        let e = b
            .publish_routed(OutgoingMessage::new("strict", "nobody.listens", vec![]))
            .await
            .unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::Unroutable { .. }));
        let routed = b
            .publish_routed(OutgoingMessage::new("ev", "order.placed", vec![]))
            .await
            .unwrap();
        assert_eq!(routed, Routing::Queued);
    }

    #[tokio::test]
    async fn retry_then_succeed_then_reject_and_panic() {
        let b = broker();
        let ev = Envelope::new("s", "order.placed", serde_json::json!({"n": 1}));
        b.publish(ev.to_message("ev").unwrap()).await.unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        let handler = typed(move |e: Envelope<serde_json::Value>| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                assert_eq!(e.kind, "order.placed");
                if n == 0 {
                    Outcome::retry("flaky")
                } else {
                    Outcome::Ack
                }
            }
        });
        let r = b.drain("q", &handler).await;
        assert_eq!(
            r,
            DrainReport {
                handled: 2,
                acked: 1,
                retried: 1,
                dead_lettered: 0
            }
        );

        // Not an event at all: dead-lettered with the validation error.
        b.publish(OutgoingMessage::new("ev", "order.junk", b"nope".to_vec()))
            .await
            .unwrap();
        let r = b.drain("q", &handler).await;
        assert_eq!(r.dead_lettered, 1);
        let dl = &b.dead_letters("q")[0];
        assert!(dl.reason.contains("specversion"), "{}", dl.reason);
        assert_eq!(
            dl.message.headers[FAILURE_REASON_HEADER],
            HeaderValue::String(dl.reason.clone())
        );

        // A panicking handler: retried through both tiers (3 attempts), then dead-lettered.
        b.publish(OutgoingMessage::new("ev", "order.boom", b"{}".to_vec()))
            .await
            .unwrap();
        let r = b
            .drain("q", &|_m: IncomingMessage| async { panic!("kaboom") })
            .await;
        assert_eq!(
            r,
            DrainReport {
                handled: 3,
                acked: 0,
                retried: 2,
                dead_lettered: 1
            }
        );
        let dl = &b.dead_letters("q")[1];
        assert!(
            dl.reason.contains("kaboom") && dl.reason.contains("3 attempt"),
            "{}",
            dl.reason
        );
        assert_eq!(
            dl.message.headers[ORIGINAL_ROUTING_KEY_HEADER],
            HeaderValue::from("order.boom")
        );
        assert_eq!(b.pending("q"), 0);
    }
}
