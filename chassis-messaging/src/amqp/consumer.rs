//! Consuming with manual acks, bounded concurrency, retry tiers and dead-lettering.
//!
//! A [`Consumer`] subscribes to one queue declared from a [`QueueConfig`] and runs a
//! [`Handler`] for every delivery, at most [`ConsumerConfig::concurrency`] at a time with a
//! prefetch of [`ConsumerConfig::prefetch`]. The handler decides with an [`Outcome`]:
//!
//! - [`Outcome::Ack`]: done, the delivery is acked;
//! - [`Outcome::Retry`]: failed, try again later: the message is republished (confirmed) to the
//!   queue's retry tier for this attempt (or the shortest tier at least as long as the delay
//!   asked for) with `x-chassis-attempt` incremented and the reason in
//!   `x-chassis-failure-reason`, then the original is acked; the tier's TTL sends it back to
//!   the queue. Once the attempt limit is reached it is dead-lettered instead;
//! - [`Outcome::Reject`]: it can never succeed: the message is republished (confirmed) to the
//!   dead-letter exchange `Q.dlx` (landing in `Q.dlq`) with the reason in
//!   `x-chassis-failure-reason`, then acked.
//!
//! # Per-key order: partitioned consumers
//!
//! Handlers running concurrently finish in any order, so the order the outbox published a
//! subject's events in is lost again on the consuming side. A consumer configured with
//! [`ConsumerConfig::partition_by_subject`] (or [`ConsumerConfig::partition_by`] with a key of
//! its own) keeps it: it runs [`concurrency`](ConsumerConfig::concurrency) *lanes*, each
//! handling one message at a time in arrival order, and sends every message to the lane of
//! its key ([`lane_of`]: a stable hash of the key modulo the number of lanes). Messages of one
//! key are therefore handled one after the other, in the order the broker delivered them;
//! keys sharing a lane wait for each other, other lanes go on. A message without a key (no
//! subject) goes to the least busy lane and keeps no order with anything.
//!
//! - **Acks** are unchanged: each message is acked, retried or dead-lettered exactly as
//!   without lanes, after its handler, from whatever lane ran it.
//! - **Prefetch** bounds everything: the lanes together never hold more than
//!   [`prefetch`](ConsumerConfig::prefetch) deliveries (each lane's queue is bounded by it as
//!   well). Prefetch must exceed the number of lanes for all of them to be busy, and should be
//!   several times larger: a slow handler's lane keeps a backlog, and the other lanes carry on
//!   only until that backlog takes up the prefetch; then the broker sends nothing more until
//!   the slow lane moves.
//! - **Retries**: a message sent to a retry tier leaves its lane (it is acked once the retry
//!   copy is confirmed), and later messages of its key go ahead of it; it comes back after the
//!   tier's delay, behind them. Per-key order holds for messages handled on their first
//!   attempt, not across retries (MassTransit's partitioner has the same limit); a handler
//!   that must never see a key's events out of order returns [`Outcome::Retry`] only for
//!   failures that reordering cannot hurt, or checks a version.
//! - **Redeliveries**: after a reconnect, deliveries of the old channel still queued in a lane
//!   are skipped (their ack could not go out); the broker redelivers them, in order.
//!
//! A handler that panics counts as a retryable failure; the consumer keeps going. Messages that
//! are not valid chassis events are dead-lettered by [`typed`] handlers with the decode or
//! validation error as reason, and events of a version a
//! [`versioned`](crate::version::versioned) handler does not read with
//! `unsupported event version: <type> version <n>, …` as reason.
//!
//! **No loss, no wrong acks**: the republish is confirmed by the broker *before* the original
//! is acked (a crash in between gives a duplicate, never a loss). Each delivery remembers the
//! channel it came from; after a reconnect that channel is gone, so the ack is skipped (and
//! logged) and the broker redelivers the message: an ack is never sent on a channel that was
//! replaced. When the channel or connection is lost the consumer re-subscribes on a new
//! channel as soon as the [`Connection`] is back.
//!
//! **Topology deleted under it**: when its queue is deleted (by an operator, or gone with a
//! broker that restarted with fresh state), the broker cancels the consumer (`basic.cancel`,
//! classic queues), the queue-depth poll finds it missing (404 `NOT_FOUND`; a deleted quorum
//! queue sends no cancel on RabbitMQ 3.10) or the next `basic.consume` is refused with 404;
//! the consumer then has the [`Connection`] declare its registered topologies again (and the
//! consumer's own [`QueueConfig`] when none of them has the queue), retrying with backoff,
//! and subscribes again. A repair finds out which queues were missing, and their consumers
//! subscribe again whoever asked for it (a publisher that found a queue missing, too): a
//! quorum queue declared again under its old name keeps the old subscription registered but
//! never delivers to it. A quorum queue deleted and declared again by someone else between two
//! polls is the one case this does not catch; the depth poll interval bounds the others. Messages that were in the deleted queue are gone with it; everything published
//! after the queue is back is consumed.
//!
//! **Lag**: two gauges per queue, registered at 0 when the consumer starts:
//! `messaging_queue_messages_ready` (messages waiting in the queue, from a passive
//! `queue.declare` on a channel of its own every
//! [`queue_depth_interval`](ConsumerConfig::queue_depth_interval)) and
//! `messaging_consumer_unacked_messages` (deliveries this consumer has taken from its channel
//! and not settled: being handled, or waiting for a handler or a lane; what the broker has
//! pushed beyond that, up to the prefetch, still waits inside lapin and is not counted).
//!
//! Each delivery runs in a consumer span `"{queue} process"` (`otel.kind = consumer`) whose
//! parent is the producer's context extracted from the headers, so the trace crosses the
//! broker. Metrics: `messaging_client_consumed_messages_total`, `messaging_process_duration_seconds`,
//! `messaging_client_acked_messages_total`, `messaging_client_retried_messages_total`,
//! `messaging_client_dead_lettered_messages_total`. All but the last are registered at 0 for
//! the queue when the consumer starts (the duration histogram for each outcome), so they are
//! scraped before the first delivery; dead letters carry their reason as `error.type` and
//! appear with the first one.
//!
//! # Example
//! ```no_run
//! use chassis_messaging::amqp::connection::{Connection, ConnectionConfig};
//! use chassis_messaging::amqp::consumer::{typed, Consumer, ConsumerConfig, Outcome};
//! use chassis_messaging::envelope::Envelope;
//! use chassis_messaging::amqp::topology::{QueueConfig, TopologyConfig};
//!
//! #[derive(serde::Deserialize)]
//! struct OrderPlaced { order_id: String }
//!
//! # async fn run() -> Result<(), chassis_messaging::error::Error> {
//! let conn = Connection::connect(ConnectionConfig::new("amqp://127.0.0.1:5672/%2f", "billing")).await?;
//! let queue = QueueConfig::new("billing.orders").bind("shop.events", "shop.order.placed");
//! conn.declare(TopologyConfig::new().queue(queue.clone())).await?;
//!
//! let consumer = Consumer::start(&conn, queue, ConsumerConfig::default(), typed(|event: Envelope<OrderPlaced>| async move {
//!     println!("charging order {}", event.data.order_id);
//!     Outcome::Ack
//! }))
//! .await?;
//! // ... on shutdown:
//! consumer.shutdown().await; // stop consuming, let in-flight handlers finish
//! conn.close().await;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chassis_observability::metrics::names;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Acker, BasicProperties};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::amqp::connection::{Connection, ManagedChannel};
use crate::amqp::incoming::{
    ATTEMPT_HEADER, FAILURE_REASON_HEADER, IncomingMessage, ORIGINAL_EXCHANGE_HEADER,
    ORIGINAL_ROUTING_KEY_HEADER, is_dead_letter_header,
};
use crate::amqp::publisher::{Publisher, PublisherConfig};
use crate::amqp::topology::{QueueConfig, is_not_found, passive_declare};
use crate::envelope::Envelope;
use crate::error::{Error, ErrorKind};

// The lane dispatcher lives in `amqp/partition.rs`, beside this file, but is a part of the
// consumer (it runs the consumer's `process` on the consumer's context).
#[path = "partition.rs"]
mod partition;

pub use partition::{Partitioning, lane_of};

/// What a handler decided about a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Processed; acknowledge it.
    Ack,
    /// Failed in a way that may pass later: send it through the retry tiers.
    Retry {
        /// Wait at least this long (the shortest tier that long is picked); `None` uses the
        /// tier for the attempt number.
        after: Option<Duration>,
        /// Why; goes into `x-chassis-failure-reason`.
        reason: String,
    },
    /// Can never succeed: dead-letter it now.
    Reject {
        /// Why; goes into `x-chassis-failure-reason`.
        reason: String,
    },
}

impl Outcome {
    /// [`Outcome::Retry`] with the attempt's tier.
    pub fn retry(reason: impl Into<String>) -> Self {
        Self::Retry {
            after: None,
            reason: reason.into(),
        }
    }
    /// [`Outcome::Retry`] after at least `after`.
    pub fn retry_after(after: Duration, reason: impl Into<String>) -> Self {
        Self::Retry {
            after: Some(after),
            reason: reason.into(),
        }
    }
    /// [`Outcome::Reject`].
    pub fn reject(reason: impl Into<String>) -> Self {
        Self::Reject {
            reason: reason.into(),
        }
    }
    fn label(&self) -> &'static str {
        match self {
            Self::Ack => "ack",
            Self::Retry { .. } => "retry",
            Self::Reject { .. } => "reject",
        }
    }
}

/// Handles one message. Implemented for every `Fn(IncomingMessage) -> impl Future<Output =
/// Outcome>` closure; see [`typed`] for handlers of decoded events.
pub trait Handler: Send + Sync + 'static {
    /// Handles `msg` and says what to do with it.
    fn handle(&self, msg: IncomingMessage) -> BoxFuture<'static, Outcome>;
}

impl<F, Fut> Handler for F
where
    F: Fn(IncomingMessage) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    fn handle(&self, msg: IncomingMessage) -> BoxFuture<'static, Outcome> {
        Box::pin(self(msg))
    }
}

/// A handler of decoded chassis events; see [`typed`].
pub struct TypedHandler<T, F> {
    f: F,
    _payload: PhantomData<fn() -> T>,
}

impl<T, F> std::fmt::Debug for TypedHandler<T, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TypedHandler")
            .field("payload", &std::any::type_name::<T>())
            .finish()
    }
}

/// Wraps `f` into a [`Handler`] that first decodes the message as an [`Envelope<T>`]; a
/// message that fails decoding or CloudEvents validation is rejected (dead-lettered) with the
/// error as reason and `f` is not called.
pub fn typed<T, F, Fut>(f: F) -> TypedHandler<T, F>
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(Envelope<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    TypedHandler {
        f,
        _payload: PhantomData,
    }
}

impl<T, F, Fut> Handler for TypedHandler<T, F>
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(Envelope<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    fn handle(&self, msg: IncomingMessage) -> BoxFuture<'static, Outcome> {
        match msg.decode::<T>() {
            Ok(event) => Box::pin((self.f)(event)),
            Err(e) => {
                let reason = e.to_string();
                Box::pin(async move { Outcome::Reject { reason } })
            }
        }
    }
}

/// Runs `handler` on `msg`, turning a panic (while building or polling the future) into a
/// retryable failure.
pub(crate) async fn run_handler(handler: &dyn Handler, msg: IncomingMessage) -> Outcome {
    let fut = match std::panic::catch_unwind(AssertUnwindSafe(|| handler.handle(msg))) {
        Ok(fut) => fut,
        Err(panic) => return panicked(&*panic),
    };
    match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(outcome) => outcome,
        Err(panic) => panicked(&*panic),
    }
}

/// `fut`'s output, or `None` once `cancel` is cancelled (looked at first).
async fn unless_cancelled<T>(
    cancel: &CancellationToken,
    fut: impl Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => None,
        out = fut => Some(out),
    }
}

/// Cancels the subscription `tag` on `channel`, waiting at most `timeout` for the broker (the
/// channel is closed next either way).
async fn cancel_subscription(channel: &lapin::Channel, tag: &ShortString, timeout: Duration) {
    let _ = tokio::time::timeout(
        timeout,
        channel.basic_cancel(tag.clone(), BasicCancelOptions::default()),
    )
    .await;
}

fn panicked(panic: &(dyn std::any::Any + Send)) -> Outcome {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned());
    tracing::error!(panic = %text, "message handler panicked");
    Outcome::retry(format!("handler panicked: {text}"))
}

/// Consumer settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Unacked deliveries the broker may push ahead (`basic.qos`). Defaults to 100.
    pub prefetch: u16,
    /// Handlers running at once. Defaults to 16.
    pub concurrency: usize,
    /// How long [`Consumer::shutdown`] lets in-flight handlers finish. Defaults to 30 s.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Publisher settings for retry and dead-letter republishing.
    pub publisher: PublisherConfig,
    /// Per-key order: `"none"` or `"subject"` in configuration, or a key computed in code with
    /// [`partition_by`](Self::partition_by); see the [module docs](self#per-key-order-partitioned-consumers).
    /// Defaults to none: handlers run concurrently in any order.
    pub partition: Partitioning,
    /// How often the queue's ready messages are polled (passive `queue.declare`) for the
    /// `messaging_queue_messages_ready` gauge; zero turns polling off. Defaults to 15 s.
    #[serde(with = "humantime_serde")]
    pub queue_depth_interval: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            prefetch: 100,
            concurrency: 16,
            shutdown_timeout: Duration::from_secs(30),
            publisher: PublisherConfig::default(),
            partition: Partitioning::none(),
            queue_depth_interval: Duration::from_secs(15),
        }
    }
}

impl ConsumerConfig {
    chassis_core::__builder_setters! {
        /// Sets [`prefetch`](Self::prefetch).
        prefetch: u16,
        /// Sets [`concurrency`](Self::concurrency).
        concurrency: usize,
        /// Sets [`shutdown_timeout`](Self::shutdown_timeout).
        shutdown_timeout: Duration,
        /// Sets [`queue_depth_interval`](Self::queue_depth_interval).
        queue_depth_interval: Duration,
    }
    /// Handles the messages of one CloudEvents subject (the `cloudEvents:subject` header) one
    /// at a time, in arrival order, with [`concurrency`](Self::concurrency) subjects at once;
    /// see the [module docs](self#per-key-order-partitioned-consumers). Defaults to off.
    pub fn partition_by_subject(mut self) -> Self {
        self.partition = Partitioning::subject();
        self
    }
    /// Like [`partition_by_subject`](Self::partition_by_subject) with the key `f` computes
    /// from each message (`None`: no key, any lane). Defaults to off.
    ///
    /// ```
    /// use chassis_messaging::{ConsumerConfig, IncomingMessage};
    /// use chassis_messaging::message::HeaderValue;
    ///
    /// // Per tenant, from a header of the publisher's.
    /// let config = ConsumerConfig::default().concurrency(8).prefetch(64).partition_by(|msg: &IncomingMessage| {
    ///     match msg.header("tenant") {
    ///         Some(HeaderValue::String(t)) => Some(t.clone()),
    ///         _ => None,
    ///     }
    /// });
    /// assert!(config.partition.is_enabled());
    /// ```
    pub fn partition_by<F, K>(mut self, f: F) -> Self
    where
        F: Fn(&IncomingMessage) -> Option<K> + Send + Sync + 'static,
        K: std::hash::Hash,
    {
        self.partition = Partitioning::by(f);
        self
    }
}

/// A running consumer of one queue, started with [`start`](Self::start) or
/// [`spawn`](Self::spawn); see the module docs. Dropping it does not stop it; call
/// [`shutdown`](Self::shutdown). In a service run by [`App`](chassis_core::lifecycle::App), use
/// [`ConsumerComponent`](crate::lifecycle::ConsumerComponent), which the app stops with the
/// other intakes.
#[derive(Debug)]
pub struct Consumer {
    queue: String,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

struct Ctx {
    queue: QueueConfig,
    handler: Box<dyn Handler>,
    publisher: Publisher,
    current_channel: AtomicU64,
    op_timeout: Duration,
    /// `messaging_consumer_unacked_messages` of the queue.
    unacked: metrics::Gauge,
}

impl Consumer {
    /// Subscribes `handler` to `queue` (which must have been declared, see
    /// [`Connection::declare`]) and returns once the first subscription is active.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`] for a zero
    /// concurrency or prefetch; a connection, timeout or broker error if the first
    /// subscription fails (for example the queue does not exist).
    pub async fn start(
        conn: &Connection,
        queue: QueueConfig,
        config: ConsumerConfig,
        handler: impl Handler,
    ) -> Result<Self, Error> {
        let (tx, rx) = oneshot::channel();
        let consumer = Self::launch(conn, queue, config, handler, Some(tx))?;
        match rx.await {
            Ok(Ok(())) => Ok(consumer),
            Ok(Err(e)) => {
                consumer.shutdown().await;
                Err(e)
            }
            Err(_) => Err(Error::shutdown()),
        }
    }

    /// Like [`start`](Self::start), without waiting: the consumer subscribes as soon as the
    /// broker is reachable and the queue exists, and keeps trying (with backoff) until then,
    /// so a service can start while the broker is away.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`] for a zero
    /// concurrency or prefetch.
    pub fn spawn(
        conn: &Connection,
        queue: QueueConfig,
        config: ConsumerConfig,
        handler: impl Handler,
    ) -> Result<Self, Error> {
        Self::launch(conn, queue, config, handler, None)
    }

    fn launch(
        conn: &Connection,
        queue: QueueConfig,
        config: ConsumerConfig,
        handler: impl Handler,
        first: Option<oneshot::Sender<Result<(), Error>>>,
    ) -> Result<Self, Error> {
        if config.concurrency == 0 || config.prefetch == 0 {
            return Err(Error::invalid_config(
                "consumer: concurrency and prefetch must be positive",
            ));
        }
        // The queue's series at 0 from the first scrape, each outcome of the duration
        // histogram included; dead letters are labelled with their reason and appear with
        // the first one.
        let destination = [(
            names::labels::MESSAGING_DESTINATION_NAME,
            queue.name.as_str(),
        )];
        for metric in [
            names::MESSAGING_CLIENT_CONSUMED_MESSAGES,
            names::MESSAGING_CLIENT_ACKED_MESSAGES,
            names::MESSAGING_CLIENT_RETRIED_MESSAGES,
            names::MESSAGING_PROCESS_DURATION,
            names::MESSAGING_QUEUE_MESSAGES_READY,
            names::MESSAGING_CONSUMER_UNACKED_MESSAGES,
        ] {
            names::preregister(metric, &destination);
        }
        let unacked = metrics::gauge!(names::MESSAGING_CONSUMER_UNACKED_MESSAGES,
            names::labels::MESSAGING_DESTINATION_NAME => queue.name.clone());
        let ctx = Arc::new(Ctx {
            publisher: Publisher::new(conn, config.publisher.clone())?,
            queue,
            handler: Box::new(handler),
            current_channel: AtomicU64::new(0),
            op_timeout: conn.config().operation_timeout,
            unacked,
        });
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(
            conn.clone(),
            Arc::clone(&ctx),
            config,
            cancel.clone(),
            first,
        ));
        Ok(Self {
            queue: ctx.queue.name.clone(),
            cancel,
            task,
        })
    }

    /// The queue consumed.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Whether the consumer stopped (shut down, or its connection was closed).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops consuming (`basic.cancel`) without waiting: no new delivery starts, in-flight
    /// handlers go on, and [`shutdown`](Self::shutdown) then waits for them (deliveries
    /// prefetched but not started return to the queue when the channel closes). A lifecycle
    /// runner calls this on every intake before draining any.
    pub fn stop_consuming(&self) {
        self.cancel.cancel();
    }

    /// Stops consuming (`basic.cancel`), lets in-flight handlers finish (bounded by
    /// [`ConsumerConfig::shutdown_timeout`]; their acks still go out), then closes the channel:
    /// deliveries prefetched but not started return to the queue.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

async fn subscribe(
    conn: &Connection,
    ctx: &Ctx,
    config: &ConsumerConfig,
) -> Result<(ManagedChannel, lapin::Consumer), Error> {
    let ch = conn.open_channel().await?;
    let t = ctx.op_timeout;
    match tokio::time::timeout(
        t,
        ch.channel
            .basic_qos(config.prefetch, BasicQosOptions::default()),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(Error::connection(e)),
        Err(_) => return Err(Error::timeout("basic.qos", t)),
    }
    let consume = ch.channel.basic_consume(
        ShortString::from(ctx.queue.name.as_str()),
        ShortString::from(""),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    );
    match tokio::time::timeout(t, consume).await {
        Ok(Ok(c)) => Ok((ch, c)),
        // The queue is missing: the caller repairs the topology.
        Ok(Err(e)) if is_not_found(&e) => {
            conn.close_channel(&ch.channel).await;
            Err(Error::with_source(ErrorKind::Topology, e))
        }
        Ok(Err(e)) => Err(Error::connection(e)),
        Err(_) => Err(Error::timeout("basic.consume", t)),
    }
}

async fn run(
    conn: Connection,
    ctx: Arc<Ctx>,
    config: ConsumerConfig,
    cancel: CancellationToken,
    mut first: Option<oneshot::Sender<Result<(), Error>>>,
) {
    let tracker = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(config.concurrency));
    // Partitioned: the lanes bound concurrency instead of the permits. Each lane's queue is
    // bounded by the prefetch, which the broker never exceeds (per channel).
    let mut lanes = config.partition.is_enabled().then(|| {
        partition::Lanes::start(
            &ctx,
            config.partition.clone(),
            config.concurrency,
            usize::from(config.prefetch),
            &tracker,
            CancellationToken::new(),
        )
    });
    let mut failures: u32 = 0;
    let conn_closed = conn.shutdown_token();
    let mut last_channel = None;
    // Stops the depth poller whichever way this task ends.
    let _depth = (!config.queue_depth_interval.is_zero()).then(|| {
        let stop = CancellationToken::new();
        tokio::spawn(poll_depth(
            conn.clone(),
            ctx.queue.clone(),
            config.queue_depth_interval,
            ctx.op_timeout,
            stop.clone(),
        ));
        stop.drop_guard()
    });
    // Set when the queue went missing (the broker cancelled the consumer, or refused to
    // subscribe with 404): the topology is declared again before the next subscription.
    let mut missing_since: Option<Instant> = None;
    let mut repairs = conn.repairs();
    'outer: loop {
        if cancel.is_cancelled() || conn_closed.is_cancelled() {
            break;
        }
        let repaired = match missing_since {
            None => Ok(()),
            Some(at) => match conn.repair_topology(at, Some(&ctx.queue)).await {
                Ok(true) => {
                    missing_since = None;
                    Ok(())
                }
                Ok(false) => Err(None),
                Err(e) => Err(Some(e)),
            },
        };
        // Repairs before this subscription need no other one.
        repairs.borrow_and_update();
        let subscribed = match repaired {
            Ok(()) => subscribe(&conn, &ctx, &config).await,
            Err(None) => Err(Error::new(ErrorKind::Topology)),
            Err(Some(e)) => Err(e),
        };
        let (ch, mut stream) = match subscribed {
            Ok(v) => v,
            Err(e) => {
                if let Some(tx) = first.take() {
                    let _ = tx.send(Err(e));
                    return;
                }
                if missing_since.is_none() && matches!(e.kind(), ErrorKind::Topology) {
                    missing_since = Some(Instant::now());
                }
                tracing::warn!(queue = %ctx.queue.name, error = %e, "subscribing failed; retrying");
                failures = failures.saturating_add(1);
                let d = Duration::from_millis(100u64.saturating_mul(1 << failures.min(6)));
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(d) => continue,
                }
            }
        };
        failures = 0;
        ctx.current_channel.store(ch.id, Ordering::SeqCst);
        if let Some(tx) = first.take() {
            let _ = tx.send(Ok(()));
        }
        tracing::debug!(queue = %ctx.queue.name, channel = ch.id, generation = ch.generation, "consuming");
        let tag = stream.tag();
        loop {
            let permit = if lanes.is_some() {
                None
            } else {
                match unless_cancelled(&cancel, Arc::clone(&permits).acquire_owned()).await {
                    Some(Ok(p)) => Some(p),
                    Some(Err(_)) => break 'outer,
                    None => {
                        cancel_subscription(&ch.channel, &tag, ctx.op_timeout).await;
                        last_channel = Some(ch);
                        break 'outer;
                    }
                }
            };
            let next = tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    cancel_subscription(&ch.channel, &tag, ctx.op_timeout).await;
                    last_channel = Some(ch);
                    break 'outer;
                }
                n = stream.next() => n,
                // The topology was declared again: the queue may be a new one this
                // subscription is not attached to (see `Connection::repairs`).
                Ok(()) = repairs.changed() => {
                    if !repairs.borrow_and_update().contains(&ctx.queue.name) {
                        continue;
                    }
                    tracing::info!(queue = %ctx.queue.name, "queue declared again; re-subscribing");
                    cancel_subscription(&ch.channel, &tag, ctx.op_timeout).await;
                    break;
                }
            };
            match next {
                Some(Ok(delivery)) => {
                    let delivered = Delivered::new(ch.id, delivery, &ctx.unacked);
                    if let Some(lanes) = lanes.as_mut() {
                        // Waits only while the key's lane queue is full; shutdown still
                        // interrupts (the delivery then returns with the channel).
                        if unless_cancelled(&cancel, lanes.dispatch(delivered))
                            .await
                            .is_none()
                        {
                            cancel_subscription(&ch.channel, &tag, ctx.op_timeout).await;
                            last_channel = Some(ch);
                            break 'outer;
                        }
                    } else {
                        let ctx = Arc::clone(&ctx);
                        tracker.spawn(async move {
                            process(&ctx, delivered).await;
                            drop(permit);
                        });
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(queue = %ctx.queue.name, error = %e, "consumer stream failed; re-subscribing");
                    break;
                }
                None => {
                    // The broker cancels a consumer whose queue was deleted: declare it again.
                    tracing::warn!(queue = %ctx.queue.name, "consumer cancelled by the broker; declaring the topology again and re-subscribing");
                    missing_since = Some(Instant::now());
                    break;
                }
            }
        }
        // The old channel is dead (or its consumer was cancelled): acks for its deliveries
        // must not go out on a new one.
        ctx.current_channel.store(0, Ordering::SeqCst);
        conn.close_channel(&ch.channel).await;
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    if let Some(tx) = first.take() {
        let _ = tx.send(Err(Error::shutdown()));
    }
    // Lanes finish the handler they are running; what they queued was not started and goes
    // back to the broker with the channel.
    drop(lanes);
    tracker.close();
    if tokio::time::timeout(config.shutdown_timeout, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(queue = %ctx.queue.name, "in-flight handlers did not finish within the shutdown timeout");
    }
    ctx.current_channel.store(0, Ordering::SeqCst);
    if let Some(ch) = last_channel {
        conn.close_channel(&ch.channel).await;
    }
}

/// A delivery, decoded, with what settling it needs.
struct Delivered {
    channel_id: u64,
    delivery_tag: u64,
    msg: IncomingMessage,
    acker: Acker,
    _unacked: Unacked,
}

/// Counts a delivery in `messaging_consumer_unacked_messages` from its arrival until it is
/// settled or dropped unsettled (skipped after a reconnect, dropped with a lane at shutdown).
struct Unacked(metrics::Gauge);

impl Unacked {
    fn new(gauge: &metrics::Gauge) -> Self {
        gauge.increment(1.0);
        Self(gauge.clone())
    }
}

impl Drop for Unacked {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

impl Delivered {
    fn new(channel_id: u64, delivery: lapin::message::Delivery, unacked: &metrics::Gauge) -> Self {
        let lapin::message::Delivery {
            delivery_tag,
            exchange,
            routing_key,
            redelivered,
            properties,
            data,
            acker,
        } = delivery;
        let msg = IncomingMessage::from_lapin(
            exchange.as_str(),
            routing_key.as_str(),
            redelivered,
            properties,
            data,
        );
        Self {
            channel_id,
            delivery_tag,
            msg,
            acker,
            _unacked: Unacked::new(unacked),
        }
    }
}

async fn process(ctx: &Ctx, delivered: Delivered) {
    let Delivered {
        channel_id,
        delivery_tag,
        msg,
        acker,
        _unacked: unacked,
    } = delivered;
    let queue = ctx.queue.name.as_str();
    let span = tracing::info_span!(
        "process",
        otel.name = %format_args!("{queue} process"),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = %queue,
        messaging.rabbitmq.destination.routing_key = %msg.routing_key(),
        messaging.rabbitmq.message.delivery_tag = delivery_tag,
        messaging.message.id = msg.message_id().unwrap_or_default(),
        messaging.message.body.size = msg.body().len(),
        chassis.attempt = msg.attempt(),
        chassis.outcome = tracing::field::Empty,
    );
    let _ = span.set_parent(msg.trace_context());
    metrics::counter!(names::MESSAGING_CLIENT_CONSUMED_MESSAGES,
        names::labels::MESSAGING_DESTINATION_NAME => queue.to_owned())
    .increment(1);
    let start = Instant::now();
    let outcome = run_handler(&*ctx.handler, msg.clone())
        .instrument(span.clone())
        .await;
    span.record("chassis.outcome", outcome.label());
    if outcome != Outcome::Ack {
        span.record("otel.status_code", "ERROR");
    }
    metrics::histogram!(names::MESSAGING_PROCESS_DURATION,
        names::labels::MESSAGING_DESTINATION_NAME => queue.to_owned(),
        names::labels::OUTCOME => outcome.label())
    .record(start.elapsed().as_secs_f64());
    settle(ctx, channel_id, &acker, &msg, outcome)
        .instrument(span)
        .await;
    drop(unacked);
}

/// Sets `messaging_queue_messages_ready` of the queue every `interval` from a passive
/// `queue.declare` (its `message-count` counts ready messages only), on a channel of its own:
/// a 404 for a deleted queue closes the channel it is asked on, and must not close the
/// consumer's. The gauge keeps its last value while the broker cannot be asked.
async fn poll_depth(
    conn: Connection,
    config: QueueConfig,
    interval: Duration,
    op_timeout: Duration,
    stop: CancellationToken,
) {
    let queue = config.name.as_str();
    let gauge = metrics::gauge!(names::MESSAGING_QUEUE_MESSAGES_READY,
        names::labels::MESSAGING_DESTINATION_NAME => queue.to_owned());
    let shutdown = conn.shutdown_token();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut channel: Option<ManagedChannel> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let ch = match channel.take() {
            Some(ch) if ch.channel.status().connected() => ch,
            _ => match conn.open_channel().await {
                Ok(ch) => ch,
                Err(e) => {
                    tracing::debug!(queue, error = %e, "queue depth: no channel");
                    continue;
                }
            },
        };
        match passive_declare(&ch.channel, queue, op_timeout).await {
            Some(Ok(q)) => {
                gauge.set(f64::from(q.message_count()));
                channel = Some(ch);
            }
            Some(Err(e)) => {
                tracing::debug!(queue, error = %e, "queue depth: passive queue.declare failed");
                conn.close_channel(&ch.channel).await;
                // The queue is gone. A deleted classic queue cancels its consumer, a quorum
                // queue (RabbitMQ 3.10) does not: declare it again here, which makes the
                // consumer subscribe again.
                if is_not_found(&e)
                    && let Err(e) = conn.repair_topology(Instant::now(), Some(&config)).await
                {
                    tracing::warn!(queue, error = %e, "declaring the topology again failed");
                }
            }
            None => {
                tracing::debug!(queue, "queue depth: passive queue.declare timed out");
                conn.close_channel(&ch.channel).await;
            }
        }
    }
    if let Some(ch) = channel {
        conn.close_channel(&ch.channel).await;
    }
}

async fn settle(
    ctx: &Ctx,
    channel_id: u64,
    acker: &Acker,
    msg: &IncomingMessage,
    outcome: Outcome,
) {
    let queue = ctx.queue.name.as_str();
    let label = |name: &'static str| metrics::counter!(name, names::labels::MESSAGING_DESTINATION_NAME => queue.to_owned());
    match outcome {
        Outcome::Ack => {
            if ack(ctx, channel_id, acker).await {
                label(names::MESSAGING_CLIENT_ACKED_MESSAGES).increment(1);
            }
        }
        Outcome::Retry { after, reason } => {
            let max = ctx.queue.retry.effective_max_attempts();
            let delay = ctx.queue.retry.delay_for(msg.attempt(), after);
            match delay {
                Some(d) if msg.attempt() < max => {
                    let tier = ctx.queue.retry_queue(d);
                    let props = republish_props(msg, msg.attempt() + 1, &reason);
                    match ctx
                        .publisher
                        .publish_raw("", &tier, msg.body(), props)
                        .await
                    {
                        Ok(()) => {
                            tracing::debug!(queue, attempt = msg.attempt(), delay_ms = d.as_millis() as u64, %reason, "message scheduled for retry");
                            label(names::MESSAGING_CLIENT_RETRIED_MESSAGES).increment(1);
                            ack(ctx, channel_id, acker).await;
                        }
                        Err(e) => {
                            tracing::warn!(queue, error = %e, "republishing for retry failed; requeueing");
                            nack_requeue(ctx, channel_id, acker).await;
                        }
                    }
                }
                _ => {
                    let reason = format!("gave up after {} attempt(s): {reason}", msg.attempt());
                    dead_letter(ctx, channel_id, acker, msg, &reason).await;
                }
            }
        }
        Outcome::Reject { reason } => dead_letter(ctx, channel_id, acker, msg, &reason).await,
    }
}

async fn dead_letter(
    ctx: &Ctx,
    channel_id: u64,
    acker: &Acker,
    msg: &IncomingMessage,
    reason: &str,
) {
    let queue = ctx.queue.name.as_str();
    let props = republish_props(msg, msg.attempt(), reason);
    match ctx
        .publisher
        .publish_raw(&ctx.queue.dead_letter_exchange(), queue, msg.body(), props)
        .await
    {
        Ok(()) => {
            tracing::warn!(queue, message_id = msg.message_id().unwrap_or_default(), %reason, "message dead-lettered");
            let error_type = reason
                .split(':')
                .next()
                .unwrap_or_default()
                .chars()
                .take(64)
                .collect::<String>();
            metrics::counter!(names::MESSAGING_CLIENT_DEAD_LETTERED_MESSAGES,
                names::labels::MESSAGING_DESTINATION_NAME => queue.to_owned(),
                names::labels::ERROR_TYPE => error_type)
            .increment(1);
            ack(ctx, channel_id, acker).await;
        }
        Err(e) => {
            tracing::warn!(queue, error = %e, "dead-lettering failed; requeueing");
            nack_requeue(ctx, channel_id, acker).await;
        }
    }
}

/// Headers for a retry/dead-letter copy: the original ones minus the broker's dead-lettering
/// bookkeeping, plus attempt, reason and where the message first came from.
fn republish_props(msg: &IncomingMessage, attempt: u32, reason: &str) -> BasicProperties {
    let props = msg.raw_properties().cloned().unwrap_or_default();
    let mut headers = FieldTable::default();
    if let Some(old) = props.headers() {
        for (k, v) in old.inner() {
            if !is_dead_letter_header(k.as_str()) {
                headers.insert(k.clone(), v.clone());
            }
        }
    }
    let long = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes()));
    headers.insert(
        ATTEMPT_HEADER.into(),
        AMQPValue::LongLongInt(i64::from(attempt)),
    );
    headers.insert(FAILURE_REASON_HEADER.into(), long(reason));
    if !headers.contains_key(ORIGINAL_EXCHANGE_HEADER) {
        headers.insert(ORIGINAL_EXCHANGE_HEADER.into(), long(msg.exchange()));
    }
    if !headers.contains_key(ORIGINAL_ROUTING_KEY_HEADER) {
        headers.insert(ORIGINAL_ROUTING_KEY_HEADER.into(), long(msg.routing_key()));
    }
    props.with_headers(headers)
}

fn same_channel(ctx: &Ctx, channel_id: u64, acker: &Acker) -> bool {
    if ctx.current_channel.load(Ordering::SeqCst) != channel_id || !acker.usable() {
        tracing::info!(queue = %ctx.queue.name, "channel was replaced since this delivery; not acking (the broker redelivers it)");
        return false;
    }
    true
}

async fn ack(ctx: &Ctx, channel_id: u64, acker: &Acker) -> bool {
    if !same_channel(ctx, channel_id, acker) {
        return false;
    }
    match tokio::time::timeout(ctx.op_timeout, acker.ack(BasicAckOptions::default())).await {
        Ok(Ok(true)) => true,
        Ok(Ok(false)) => {
            // lapin refused the ack: its channel closed or failed (the acker is poisoned), so
            // the broker redelivers the message; the inbox makes that harmless, the log line
            // makes it visible.
            tracing::warn!(queue = %ctx.queue.name, "ack not sent: the delivery's channel is closed (the broker redelivers the message)");
            false
        }
        Ok(Err(e)) => {
            tracing::warn!(queue = %ctx.queue.name, error = %e, "ack failed (the broker redelivers the message)");
            false
        }
        Err(_) => {
            tracing::warn!(queue = %ctx.queue.name, "ack timed out");
            false
        }
    }
}

async fn nack_requeue(ctx: &Ctx, channel_id: u64, acker: &Acker) {
    if !same_channel(ctx, channel_id, acker) {
        return;
    }
    let opts = BasicNackOptions {
        requeue: true,
        ..Default::default()
    };
    if let Ok(Err(e)) | Err(e) = tokio::time::timeout(ctx.op_timeout, acker.nack(opts))
        .await
        .map_err(|_| lapin::Error::from(lapin::ErrorKind::FutureCompleted))
    {
        tracing::warn!(queue = %ctx.queue.name, error = %e, "nack failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::OutgoingMessage;

    fn msg() -> IncomingMessage {
        IncomingMessage::from_outgoing(OutgoingMessage::new("x", "k", b"{}".to_vec()))
    }

    #[tokio::test]
    async fn panics_become_retryable_failures() {
        let h = |_m: IncomingMessage| async move {
            if true {
                panic!("boom");
            }
            Outcome::Ack
        };
        match run_handler(&h, msg()).await {
            Outcome::Retry {
                reason,
                after: None,
            } => assert!(reason.contains("boom")),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn typed_handler_rejects_undecodable_messages() {
        let h = typed(|_e: Envelope<serde_json::Value>| async { Outcome::Ack });
        match run_handler(&h, msg()).await {
            Outcome::Reject { reason } => assert!(reason.contains("specversion"), "{reason}"),
            other => panic!("{other:?}"),
        }
        let ok = Envelope::new("s", "t", serde_json::json!({"a": 1}))
            .to_message("x")
            .unwrap();
        assert_eq!(
            run_handler(&h, IncomingMessage::from_outgoing(ok)).await,
            Outcome::Ack
        );
    }
}
