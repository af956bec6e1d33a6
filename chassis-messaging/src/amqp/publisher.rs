//! Publishing with publisher confirms.
//!
//! [`Publish`] is the object-safe publishing trait the rest of the chassis codes against (the
//! outbox relay, services): `publish(msg).await` returns `Ok(())` only once the broker
//! confirmed the message. [`Publisher`] implements it over RabbitMQ:
//!
//! - **confirms, pipelined**: the channel is in confirm mode; many publishes are in flight at
//!   once (each caller awaits its own confirm), bounded by a window of
//!   [`PublisherConfig::max_in_flight`] unconfirmed messages;
//! - **persistent and mandatory**: `delivery_mode = 2`; a message no queue is bound for comes
//!   back from the broker and fails with [`ErrorKind::Unroutable`], unless its exchange was
//!   declared [`Unroutable::Accept`] (publish/subscribe where nobody subscribing is normal):
//!   then the publish succeeds as [`Routing::Unrouted`] (see
//!   [`Publish::publish_routed`] and the
//!   [topology docs](crate::amqp::topology#unroutable-messages-unroutable-per-exchange)). A
//!   return is matched to its message by exchange, routing key and body, not by which
//!   confirm lapin attached it to (under a batch of acks, that can be another publish's), so
//!   among many publishes in flight each learns its own outcome; a
//!   nacked message is published again on a fresh channel, with a growing pause (50 ms
//!   doubling to 1 s), until [`PublisherConfig::confirm_timeout`] has passed since the publish
//!   started, and is [`ErrorKind::Nacked`] after that; a confirm that does not arrive within
//!   [`PublisherConfig::confirm_timeout`] is [`ErrorKind::Timeout`] — never a hang;
//! - **fail-over of quorum queues**: right after a cluster node dies, a RabbitMQ 3.10 channel
//!   that first publishes to a quorum queue whose leader was on that node can have every
//!   publish to the queue nacked for the rest of its life (it looked the leader up once, before
//!   the election). Publishing again on a fresh channel is what gets through once a new leader
//!   is elected (seconds); the retired channel is closed after the confirms still in flight on
//!   it had their time;
//! - **self-healing**: a lost channel or connection fails the publishes in flight (they may or
//!   may not have reached the broker: the caller retries, consumers deduplicate) and the next
//!   publish opens a fresh channel once the [`Connection`] is back. A publish that finds its
//!   exchange missing (404 `NOT_FOUND`) or comes back unroutable has the connection declare its
//!   registered topology again (once for all publishers and consumers, at most once a second)
//!   and is published once more, so an exchange or queue deleted behind the service's back
//!   costs one failed attempt, not an outage;
//! - **traced**: each publish records a producer span `"{exchange} publish"` with the
//!   OpenTelemetry messaging attributes (`messaging.system = rabbitmq`,
//!   `messaging.destination.name`, `messaging.rabbitmq.destination.routing_key`,
//!   `messaging.message.id`) and injects `traceparent`/`tracestate`/`baggage` into the
//!   headers; metrics `messaging_publish_duration_seconds` (its `outcome` is `unrouted` for an
//!   accepted return) and `messaging_client_sent_messages_total`
//!   (the handles of successful publishes are cached per destination, so install the metrics
//!   recorder — `chassis_observability::Telemetry` does — before the first publish).
//!
//! # Example
//! ```no_run
//! use chassis_messaging::amqp::connection::{Connection, ConnectionConfig};
//! use chassis_messaging::amqp::publisher::{Publish, Publisher, PublisherConfig};
//! use chassis_messaging::envelope::Envelope;
//!
//! # async fn run() -> Result<(), chassis_messaging::error::Error> {
//! let conn = Connection::connect(ConnectionConfig::new("amqp://127.0.0.1:5672/%2f", "orders")).await?;
//! let publisher = Publisher::new(&conn, PublisherConfig::default())?;
//! let event = Envelope::new("shop/orders", "shop.order.placed", serde_json::json!({"order_id": "42"}));
//! publisher.publish(event.to_message("shop.events")?).await?; // returns once confirmed
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chassis_observability::metrics::names;
use futures_util::future::BoxFuture;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Confirmation};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::amqp::connection::{Connection, ManagedChannel};
use crate::amqp::headers::{FieldTableInjector, to_field_table};
use crate::amqp::returns::{self, ReturnLedger};
use crate::amqp::topology::{Unroutable, is_not_found};
use crate::envelope::Envelope;
use crate::error::{Error, ErrorKind};
use crate::message::OutgoingMessage;

/// Where a confirmed message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Routing {
    /// Routed to at least one queue (or, for a transport that cannot tell, accepted).
    Queued,
    /// Confirmed, but no queue was bound for it, and its exchange is declared
    /// [`Unroutable::Accept`]: delivered to nobody, by design.
    Unrouted,
}

/// Something that publishes messages and reports success only once they are safe.
///
/// For the RabbitMQ [`Publisher`], `Ok(())` means the broker confirmed the message (publisher
/// confirms) and routed it to at least one queue, or found no queue for it on an exchange
/// declared [`Unroutable::Accept`]; for the in-memory transport it means the message was
/// enqueued (or likewise accepted). The trait is object-safe: hold it as `Arc<dyn Publish>`.
pub trait Publish: Send + Sync {
    /// Publishes `msg`; resolves once the broker confirmed it.
    ///
    /// # Errors
    /// [`ErrorKind::Unroutable`] when no queue is bound for the routing key (and the exchange
    /// is not [`Unroutable::Accept`]), [`ErrorKind::Nacked`], [`ErrorKind::Timeout`],
    /// [`ErrorKind::Connection`] or [`ErrorKind::Shutdown`].
    fn publish(&self, msg: OutgoingMessage) -> BoxFuture<'_, Result<(), Error>>;

    /// Publishes `msg` like [`publish`](Self::publish) and says whether it reached a queue.
    /// The outbox relay calls this to count events nobody received. The provided
    /// implementation reports every success as [`Routing::Queued`]; transports that learn
    /// about returns ([`Publisher`], the in-memory broker) override it.
    ///
    /// # Errors
    /// As [`publish`](Self::publish).
    fn publish_routed(&self, msg: OutgoingMessage) -> BoxFuture<'_, Result<Routing, Error>> {
        let published = self.publish(msg);
        Box::pin(async move { published.await.map(|()| Routing::Queued) })
    }
}

impl<P: Publish + ?Sized> Publish for Arc<P> {
    fn publish(&self, msg: OutgoingMessage) -> BoxFuture<'_, Result<(), Error>> {
        (**self).publish(msg)
    }
    fn publish_routed(&self, msg: OutgoingMessage) -> BoxFuture<'_, Result<Routing, Error>> {
        (**self).publish_routed(msg)
    }
}

/// Publisher settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublisherConfig {
    /// Most unconfirmed messages in flight; further publishes wait for a slot. Defaults to 1000.
    pub max_in_flight: usize,
    /// Deadline for the broker's confirm (and for waiting for a window slot, and for
    /// publishing a nacked message again). Defaults to 10 s.
    #[serde(with = "humantime_serde")]
    pub confirm_timeout: Duration,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 1000,
            confirm_timeout: Duration::from_secs(10),
        }
    }
}

impl PublisherConfig {
    chassis_core::__builder_setters! {
        /// Sets [`max_in_flight`](Self::max_in_flight).
        max_in_flight: usize,
        /// Sets [`confirm_timeout`](Self::confirm_timeout).
        confirm_timeout: Duration,
    }
}

/// The confirming RabbitMQ publisher. Cheap to clone (clones share the channel and window).
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Connection,
    config: PublisherConfig,
    window: Semaphore,
    /// The confirm-mode channel, shared (one reference count per publish, instead of a
    /// clone of lapin's channel handle, which is a dozen reference counts).
    current: RwLock<Option<Arc<ManagedChannel>>>,
    reopen: tokio::sync::Mutex<()>,
    /// Metric handles per destination, so the hot path does not rebuild label sets and look
    /// them up in the recorder's registry for every message.
    metrics: RwLock<HashMap<String, DestinationMetrics>>,
    /// Returns lapin handed to another publish's confirm (see [`super::returns`]).
    returns: ReturnLedger,
}

/// The handles a successful publish to one destination records into.
#[derive(Clone)]
struct DestinationMetrics {
    duration_ok: metrics::Histogram,
    sent: metrics::Counter,
}

/// Most destinations whose handles are cached; beyond that (destination names built per
/// message, which is unusual) handles are looked up per publish instead of growing the map.
const METRICS_CACHE_LIMIT: usize = 256;

impl Inner {
    fn destination_metrics(&self, dest: &str) -> DestinationMetrics {
        if let Some(m) = self
            .metrics
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(dest)
        {
            return m.clone();
        }
        let m = DestinationMetrics {
            duration_ok: metrics::histogram!(names::MESSAGING_PUBLISH_DURATION,
                names::labels::MESSAGING_DESTINATION_NAME => dest.to_owned(),
                names::labels::OUTCOME => "ok"),
            sent: metrics::counter!(names::MESSAGING_CLIENT_SENT_MESSAGES,
                names::labels::MESSAGING_DESTINATION_NAME => dest.to_owned()),
        };
        let mut cache = self
            .metrics
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() < METRICS_CACHE_LIMIT {
            cache.insert(dest.to_owned(), m.clone());
        }
        m
    }
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("config", &self.inner.config)
            .field(
                "in_flight",
                &(self.inner.config.max_in_flight - self.inner.window.available_permits()),
            )
            .finish()
    }
}

impl Publisher {
    /// A publisher on `conn`. The channel opens on the first publish.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`] for a zero window or timeout.
    pub fn new(conn: &Connection, config: PublisherConfig) -> Result<Self, Error> {
        if config.max_in_flight == 0 || config.confirm_timeout.is_zero() {
            return Err(Error::invalid_config(
                "publisher: max_in_flight and confirm_timeout must be positive",
            ));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                conn: conn.clone(),
                window: Semaphore::new(config.max_in_flight),
                config,
                current: RwLock::new(None),
                reopen: tokio::sync::Mutex::new(()),
                metrics: RwLock::new(HashMap::new()),
                returns: ReturnLedger::default(),
            }),
        })
    }

    /// Encodes `event` ([`Envelope::to_message`]) and publishes it to `exchange`.
    ///
    /// # Errors
    /// As [`Publish::publish`], plus [`ErrorKind::Serialization`].
    pub async fn publish_envelope<T: Serialize>(
        &self,
        exchange: &str,
        event: &Envelope<T>,
    ) -> Result<(), Error> {
        self.publish_message(event.to_message(exchange)?).await
    }

    /// Publishes one message and waits for its confirm (the inherent form of
    /// [`Publish::publish`]).
    ///
    /// # Errors
    /// See [`Publish::publish`].
    pub async fn publish_message(&self, msg: OutgoingMessage) -> Result<(), Error> {
        self.publish_message_routed(msg).await.map(drop)
    }

    /// Publishes one message, waits for its confirm and says whether it reached a queue (the
    /// inherent form of [`Publish::publish_routed`]).
    ///
    /// # Errors
    /// See [`Publish::publish`].
    pub async fn publish_message_routed(&self, msg: OutgoingMessage) -> Result<Routing, Error> {
        check_short_strings(&msg)?;
        let mut headers = to_field_table(&msg.headers);
        let dest = if msg.exchange.is_empty() {
            "amq.default"
        } else {
            msg.exchange.as_str()
        };
        let span = tracing::info_span!(
            "publish",
            otel.name = %format_args!("{dest} publish"),
            otel.kind = "producer",
            otel.status_code = tracing::field::Empty,
            messaging.system = "rabbitmq",
            messaging.operation.type = "send",
            messaging.operation.name = "publish",
            messaging.destination.name = %dest,
            messaging.rabbitmq.destination.routing_key = %msg.routing_key,
            messaging.message.id = msg.message_id.as_deref().unwrap_or_default(),
            messaging.message.body.size = msg.body.len(),
            error.type = tracing::field::Empty,
        );
        span.in_scope(|| {
            chassis_observability::propagation::inject_current(&mut FieldTableInjector(
                &mut headers,
            ));
        });
        let props = properties(&msg, headers);
        let start = Instant::now();
        let res = self
            .send(&msg.exchange, &msg.routing_key, &msg.body, props)
            .instrument(span.clone())
            .await;
        let elapsed = start.elapsed().as_secs_f64();
        match &res {
            Ok(Routing::Queued) => {
                let m = self.inner.destination_metrics(dest);
                m.duration_ok.record(elapsed);
                m.sent.increment(1);
            }
            Ok(Routing::Unrouted) => {
                // Rare by nature (and only on accepting exchanges): no cached handles.
                tracing::debug!(parent: &span, routing_key = %msg.routing_key,
                    "published to no queue; the exchange accepts unroutable messages");
                metrics::histogram!(names::MESSAGING_PUBLISH_DURATION,
                    names::labels::MESSAGING_DESTINATION_NAME => dest.to_owned(),
                    names::labels::OUTCOME => "unrouted")
                .record(elapsed);
                metrics::counter!(names::MESSAGING_CLIENT_SENT_MESSAGES,
                    names::labels::MESSAGING_DESTINATION_NAME => dest.to_owned())
                .increment(1);
            }
            Err(e) => {
                let outcome = outcome_label(&res);
                span.record("otel.status_code", "ERROR");
                span.record("error.type", outcome);
                tracing::debug!(parent: &span, error = %e, "publish failed");
                metrics::histogram!(names::MESSAGING_PUBLISH_DURATION,
                    names::labels::MESSAGING_DESTINATION_NAME => dest.to_owned(),
                    names::labels::OUTCOME => outcome)
                .record(elapsed);
            }
        }
        res
    }

    /// Publishes with explicit AMQP properties (used to republish a delivery unchanged for
    /// retries and dead-lettering). `delivery_mode` is forced to persistent.
    pub(crate) async fn publish_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), Error> {
        self.send(exchange, routing_key, body, props.with_delivery_mode(2))
            .await
            .map(drop)
    }

    async fn channel(&self) -> Result<Arc<ManagedChannel>, Error> {
        if let Some(ch) = self.live_channel() {
            return Ok(ch);
        }
        let _guard = self.inner.reopen.lock().await;
        if let Some(ch) = self.live_channel() {
            return Ok(ch);
        }
        let timeout = self.inner.conn.config().operation_timeout;
        let mut attempt = 0;
        let ch = loop {
            let ch = Arc::new(self.inner.conn.open_channel().await?);
            match tokio::time::timeout(
                timeout,
                ch.channel.confirm_select(ConfirmSelectOptions::default()),
            )
            .await
            {
                Ok(Ok(())) => break ch,
                // Right after the broker closed the previous channel (a publish to a missing
                // exchange), lapin can hand out a channel that is still closing under the
                // reused number: open another one shortly.
                Ok(Err(e))
                    if attempt < 3
                        && matches!(e.kind(), lapin::ErrorKind::InvalidChannelState(..)) =>
                {
                    tracing::debug!(error = %e, "confirm.select on a closing channel; reopening");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
                }
                Ok(Err(e)) => return Err(Error::connection(e)),
                Err(_) => return Err(Error::timeout("confirm.select", timeout)),
            }
        };
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(ch.clone());
        Ok(ch)
    }

    /// Waits up to `timeout` for a free slot in the confirm window.
    async fn wait_for_window(
        &self,
        timeout: Duration,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, Error> {
        match tokio::time::timeout(timeout, self.inner.window.acquire()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(Error::shutdown()),
            Err(_) => Err(Error::timeout("publish window", timeout)),
        }
    }

    fn live_channel(&self) -> Option<Arc<ManagedChannel>> {
        let guard = self
            .inner
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        guard
            .as_ref()
            .filter(|ch| ch.channel.status().connected())
            .cloned()
    }

    /// Publishes once; when the exchange is missing (404) or the message came back unroutable,
    /// has the connection declare its topology again and, if that happened since this publish
    /// started, publishes once more. Neither failure put the message in any queue, so the
    /// second copy is the only one (a publish in flight on the same channel when the broker
    /// closed it with the 404 fails, and its caller's retry may duplicate it, as with any
    /// lost channel).
    async fn send(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<Routing, Error> {
        let started = Instant::now();
        let err = match self
            .send_until_accepted(started, exchange, routing_key, body, &props)
            .await
        {
            Err(e) if matches!(e.kind(), ErrorKind::Unroutable { .. } | ErrorKind::Topology) => e,
            other => return other,
        };
        match self.inner.conn.repair_topology(started, None).await {
            Ok(true) => {
                tracing::debug!(exchange, routing_key, error = %err, "topology declared again; publishing again");
                self.send_until_accepted(started, exchange, routing_key, body, &props)
                    .await
            }
            Ok(false) => Err(err),
            Err(repair) => {
                tracing::warn!(exchange, error = %repair, "declaring the topology again failed");
                Err(err)
            }
        }
    }

    /// Publishes once and, while the broker nacks, again on a fresh channel with a growing
    /// pause, until [`PublisherConfig::confirm_timeout`] has passed since `started`.
    ///
    /// Why a fresh channel: a RabbitMQ channel looks a quorum queue's leader up once, the
    /// first time it publishes to the queue, and RabbitMQ 3.10 keeps that answer. A channel
    /// that first published while the cluster still named a dead node as the leader (right
    /// after that node died, before the election) has every later publish to the queue
    /// nacked, for as long as the channel lives, even once a new leader runs. A new channel
    /// looks the leader up again. A nack also means a full queue with `x-overflow =
    /// reject-publish`; then the pause is the back-pressure. A nacked message was not taken
    /// by the broker, so publishing it again adds no copy, except when it was routed to
    /// several queues and only some of them refused it: consumers deduplicate.
    async fn send_until_accepted(
        &self,
        started: Instant,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: &BasicProperties,
    ) -> Result<Routing, Error> {
        let budget = self.inner.config.confirm_timeout;
        let mut pause = NACK_MIN_PAUSE;
        loop {
            let err = match self.send_once(exchange, routing_key, body, props).await {
                // `send_once` retired the channel that nacked.
                Err(e) if matches!(e.kind(), ErrorKind::Nacked) => e,
                other => return other,
            };
            if started.elapsed() + pause >= budget
                || self.inner.conn.shutdown_token().is_cancelled()
            {
                return Err(err);
            }
            tracing::debug!(
                exchange,
                routing_key,
                ?pause,
                "publish nacked; publishing again on a fresh channel"
            );
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(NACK_MAX_PAUSE);
        }
    }

    /// Stops handing `channel` out to new publishes (the next one opens a fresh channel) and
    /// closes it once the confirms of the publishes still in flight on it had their time.
    fn retire(&self, channel: &Arc<ManagedChannel>) {
        {
            let mut current = self
                .inner
                .current
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Publishes nacked together retire the channel once, not its successor.
            match current.as_ref() {
                Some(c) if c.id == channel.id => *current = None,
                _ => return,
            }
        }
        let conn = self.inner.conn.clone();
        let channel = Arc::clone(channel);
        let grace = self.inner.config.confirm_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            conn.close_channel(&channel.channel).await;
        });
    }

    async fn send_once(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: &BasicProperties,
    ) -> Result<Routing, Error> {
        let confirm_timeout = self.inner.config.confirm_timeout;
        let shutdown = self.inner.conn.shutdown_token();
        if shutdown.is_cancelled() {
            return Err(Error::shutdown());
        }
        // A free slot and a live channel are the common case: take them without arming a
        // timer. The waits for either are boxed, so their (large) futures are not part of
        // every publish's future: a smaller future is a cheaper allocation per message.
        let _permit = match self.inner.window.try_acquire() {
            Ok(p) => p,
            Err(tokio::sync::TryAcquireError::Closed) => return Err(Error::shutdown()),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                Box::pin(self.wait_for_window(confirm_timeout)).await?
            }
        };
        let ch = match self.live_channel() {
            Some(ch) => ch,
            None => Box::pin(self.channel()).await?,
        };
        let op_timeout = self.inner.conn.config().operation_timeout;
        let publish = ch.channel.basic_publish(
            ShortString::from(exchange),
            ShortString::from(routing_key),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            // The one copy of a publish attempt (the header table and the short strings):
            // lapin takes the properties by value, and a nacked or re-declared publish sends
            // them again.
            props.clone(),
        );
        // One timer for both phases: `operation_timeout` for handing the message to the
        // broker, then, reset, `confirm_timeout` for its confirm.
        let timer = tokio::time::sleep(op_timeout);
        tokio::pin!(timer);
        let confirm = tokio::select! {
            biased;
            sent = publish => sent.map_err(map_lapin)?,
            () = &mut timer => return Err(Error::timeout("basic.publish", op_timeout)),
        };
        timer
            .as_mut()
            .reset(tokio::time::Instant::now() + confirm_timeout);
        let confirmation = tokio::select! {
            biased;
            confirmation = confirm => confirmation.map_err(map_lapin)?,
            () = &mut timer => return Err(Error::timeout("publish confirm", confirm_timeout)),
        };
        let (acked, returned) = match confirmation {
            Confirmation::Ack(returned) => (true, returned),
            Confirmation::Nack(returned) => (false, returned),
            Confirmation::NotRequested => {
                return Err(Error::connection(
                    "publisher confirms are not enabled on the channel",
                ));
            }
        };
        // A return is this message's only if its content says so: lapin may hand a return
        // to another publish confirmed in the same batch (see `returns`).
        let own_return = match returned {
            Some(r) if returns::is_for(&r, exchange, routing_key, body) => {
                self.inner.returns.seen();
                true
            }
            Some(r) => {
                self.inner.returns.record(&r);
                self.inner
                    .returns
                    .returned_elsewhere(exchange, routing_key, body)
                    .await
            }
            None => {
                self.inner
                    .returns
                    .returned_elsewhere(exchange, routing_key, body)
                    .await
            }
        };
        match (acked, own_return) {
            (true, false) => Ok(Routing::Queued),
            // Still published `mandatory` on accepting exchanges: the return is what tells
            // `Unrouted` from `Queued` (for the relay's count), and the policy is looked up
            // only here, off the common path.
            (true, true) if self.inner.conn.unroutable_policy(exchange) == Unroutable::Accept => {
                Ok(Routing::Unrouted)
            }
            (_, true) => Err(Error::unroutable(exchange, routing_key)),
            (false, false) => {
                self.retire(&ch);
                Err(Error::new(ErrorKind::Nacked))
            }
        }
    }
}

impl Publish for Publisher {
    fn publish(&self, msg: OutgoingMessage) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(self.publish_message(msg))
    }
    fn publish_routed(&self, msg: OutgoingMessage) -> BoxFuture<'_, Result<Routing, Error>> {
        Box::pin(self.publish_message_routed(msg))
    }
}

/// First pause before a nacked message is published again; it doubles up to
/// [`NACK_MAX_PAUSE`]. A quorum queue's new leader is usually elected within seconds.
const NACK_MIN_PAUSE: Duration = Duration::from_millis(50);
const NACK_MAX_PAUSE: Duration = Duration::from_secs(1);

fn map_lapin(e: lapin::Error) -> Error {
    if is_not_found(&e) {
        // Typically: the exchange does not exist (the broker closed the channel).
        return Error::with_source(ErrorKind::Topology, e);
    }
    Error::connection(e)
}

fn outcome_label(res: &Result<Routing, Error>) -> &'static str {
    match res {
        Ok(Routing::Queued) => "ok",
        Ok(Routing::Unrouted) => "unrouted",
        Err(e) => match e.kind() {
            ErrorKind::Unroutable { .. } => "unroutable",
            ErrorKind::Nacked => "nacked",
            ErrorKind::Timeout { .. } => "timeout",
            ErrorKind::Shutdown => "shutdown",
            ErrorKind::Topology => "topology",
            _ => "connection",
        },
    }
}

/// AMQP 0-9-1 carries the exchange, the routing key and these properties as short strings of at
/// most 255 bytes; lapin's frame writer panics on a longer one. A message that can never be sent
/// is refused with a validation error instead (an outbox row with one is parked, not retried
/// forever, and the publisher lives on).
fn check_short_strings(msg: &OutgoingMessage) -> Result<(), Error> {
    const MAX: usize = 255;
    let fields = [
        ("exchange", Some(msg.exchange.as_str())),
        ("routing key", Some(msg.routing_key.as_str())),
        ("message id", msg.message_id.as_deref()),
        ("type", msg.kind.as_deref()),
        ("content type", msg.content_type.as_deref()),
        ("correlation id", msg.correlation_id.as_deref()),
    ];
    for (name, value) in fields {
        if let Some(v) = value
            && v.len() > MAX
        {
            return Err(Error::validation(format!(
                "the {name} is {} bytes; AMQP allows at most {MAX}",
                v.len()
            )));
        }
    }
    Ok(())
}

fn properties(msg: &OutgoingMessage, headers: FieldTable) -> BasicProperties {
    let mut p = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers);
    if let Some(v) = &msg.message_id {
        p = p.with_message_id(ShortString::from(v.as_str()));
    }
    if let Some(v) = &msg.kind {
        p = p.with_type(ShortString::from(v.as_str()));
    }
    if let Some(v) = &msg.content_type {
        p = p.with_content_type(ShortString::from(v.as_str()));
    }
    if let Some(v) = &msg.correlation_id {
        p = p.with_correlation_id(ShortString::from(v.as_str()));
    }
    if let Some(v) = msg.timestamp {
        p = p.with_timestamp(v);
    }
    p
}
