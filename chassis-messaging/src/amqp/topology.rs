//! Broker topology declared from typed configuration.
//!
//! A [`TopologyConfig`] lists exchanges and consumer queues. For each queue `Q` the chassis
//! declares, besides `Q` itself and its bindings:
//!
//! | Name                | What                                                                 |
//! |---------------------|----------------------------------------------------------------------|
//! | `Q.dlx`             | direct exchange receiving `Q`'s dead letters                         |
//! | `Q.dlq`             | durable queue bound to `Q.dlx` with key `Q`: the dead-letter queue |
//! | `Q.retry.<delay>`   | one durable queue per retry tier, `x-message-ttl = delay`, dead-lettering back to `Q` through the default exchange (routing key `Q`) |
//!
//! Retry tiers are TTL queues, so they need no delayed-message plugin; one queue per delay
//! because per-message expiry suffers head-of-line blocking. `Q.dlq` and the tiers are quorum
//! queues when `Q` is (see [below](#replicated-retry-path-the-type-of-the-dead-letter-and-retry-tier-queues)).
//! The consumer publishes a retried message to the tier queue directly (default exchange), so a
//! retry reaches only `Q` and not the other queues bound to the original exchange.
//!
//! `Q` is a quorum queue by default (`x-queue-type = quorum`) and always gets
//! `x-dead-letter-exchange = Q.dlx`, `x-dead-letter-routing-key = Q` and an
//! `x-delivery-limit`, so a message the broker gives up on (delivery limit reached, or a
//! `basic.reject` without requeue) is dead-lettered, never silently dropped. Classic queues
//! get the same dead-letter arguments (classic queues have no delivery limit).
//!
//! # Replicated retry path: the type of the dead-letter and retry-tier queues
//! `Q.dlq` and the `Q.retry.<delay>` tiers have the type [`QueueConfig::retry_queue_type`],
//! which defaults to the type of `Q`: with a quorum `Q` (the default) they are quorum queues
//! too, so a message waiting for its retry, or parked in the dead-letter queue, survives the
//! loss of a cluster node just like one in `Q`. A quorum tier is declared with
//! `x-message-ttl`, `x-dead-letter-strategy = at-least-once` and `x-overflow =
//! reject-publish` (at-least-once dead-lettering requires that overflow mode): the broker
//! moves an expired message back to `Q` and removes it from the tier only once `Q` has
//! confirmed it, so a node failure during the move duplicates at worst (which the inbox
//! absorbs) and never drops it. A classic tier (or a classic `Q`) dead-letters at most once.
//!
//! Broker versions: message TTL on quorum queues and at-least-once dead-lettering need
//! RabbitMQ 3.10 or later (verified on 3.10.8: a message comes back from a quorum tier after
//! its delay with `x-death` reason `expired`). On 3.8 or 3.9 set
//! [`retry_queue_type`](QueueConfig::retry_queue_type) to [`QueueType::Classic`]: classic
//! TTL queues work on every 3.8+, with the trade-off that a waiting retry lives on one node.
//! A tier has no consumer and holds a message only for its delay, so it needs no delivery
//! limit; the dead-letter queue is a parking lot read by operators and has none either.
//!
//! Broker setting for clusters: RabbitMQ moves an expired message out of a quorum tier with a
//! dead-letter worker that runs on the tier's leader and waits for `Q`'s confirm. When a node
//! dies while it moves messages (the tier's or `Q`'s leader on it), the worker sends the
//! unconfirmed ones again only after `dead_letter_worker_publisher_confirm_timeout`, 180 s by
//! default, and on 3.10 a move that found `Q`'s leader gone keeps being refused until then:
//! the retries are safe, but late by up to three minutes. Lower it in every node's
//! `advanced.config` (it has no `rabbitmq.conf` key), e.g.
//! `[{rabbit, [{dead_letter_worker_publisher_confirm_timeout, 5000}]}].`; a message whose
//! confirm only came late is then moved twice, which the inbox absorbs.
//! `scripts/rabbitmq-cluster` starts its nodes with 5 s.
//!
//! `Q` itself dead-letters to `Q.dlq` (delivery limit reached, or a reject without requeue)
//! at most once: at-least-once would need `x-overflow = reject-publish` on `Q`, which
//! changes how a full `Q` behaves for publishers.
//!
//! RabbitMQ refuses to redeclare an existing queue with a different `x-queue-type` (or
//! other arguments): a deployment whose `Q.dlq` and tiers were created classic keeps
//! declaring them classic with `retry_queue_type = "classic"`, or moves its queues to new
//! names.
//!
//! # Unroutable messages: [`Unroutable`] per exchange
//! The [`Publisher`](crate::amqp::publisher::Publisher) publishes every message with the
//! `mandatory` flag, so the broker returns one that no queue is bound for. What that return
//! means is a property of the exchange, set with [`ExchangeConfig::unroutable`]:
//!
//! - [`Unroutable::Retry`] (the default): a message nobody receives is an error,
//!   [`ErrorKind::Unroutable`]. The outbox relay retries the row with a growing delay and parks
//!   it after `max_attempts`. This is what catches the startup race the flag exists for: an
//!   event published before its consumers declared their queues is retried until they have,
//!   instead of vanishing. Use it for exchanges whose messages someone must receive: commands,
//!   and events a workflow (a saga step) waits for.
//! - [`Unroutable::Accept`]: publish/subscribe where having no subscriber is normal (an
//!   audit or notification event nobody listens to yet). The broker's return is an outcome,
//!   not an error: the publish succeeds as
//!   [`Routing::Unrouted`](crate::amqp::publisher::Routing::Unrouted), the relay marks the row
//!   sent and counts it in
//!   [`OUTBOX_UNROUTABLE`](crate::sql::metrics::OUTBOX_UNROUTABLE), logged at debug level;
//!   nothing is parked.
//!
//! Why `Retry` is the default: an exchange declaration does not say whether anyone must
//! receive its messages, and the two mistakes are not symmetric. A `Retry` exchange whose
//! events nobody wants parks rows, visibly (the parked gauge and one warning per change), and
//! nothing is lost; an `Accept` exchange hit by the startup race drops events silently. So
//! accepting unroutable messages is an explicit choice per exchange. The publisher looks the
//! policy up in the topologies registered on its
//! [`Connection`](crate::amqp::connection::Connection) (by exchange name, only when the broker
//! returned a message, so the common path costs nothing); an exchange declared nowhere on
//! that connection is `Retry`, and when several registered topologies declare one exchange
//! differently, `Retry` wins.
//!
//! # Example
//! ```
//! use chassis_messaging::amqp::topology::{TopologyConfig, QueueType};
//! use std::time::Duration;
//!
//! let config: TopologyConfig = toml::from_str(r#"
//!     [[exchanges]]
//!     name = "shop.events"
//!
//!     [[queues]]
//!     name = "billing.orders"
//!     bindings = [{ exchange = "shop.events", routing_key = "shop.order.*" }]
//!     retry = { delays = ["1s", "10s", "60s"] }
//! "#).unwrap();
//! let q = &config.queues[0];
//! assert_eq!(q.queue_type, QueueType::Quorum);
//! assert_eq!(q.effective_retry_queue_type(), QueueType::Quorum);
//! assert_eq!(q.retry.delays, [Duration::from_secs(1), Duration::from_secs(10), Duration::from_secs(60)]);
//! assert_eq!(q.dead_letter_queue(), "billing.orders.dlq");
//! assert_eq!(q.retry_queue(Duration::from_secs(10)), "billing.orders.retry.10000ms");
//! config.validate().unwrap();
//!
//! // Events nobody may subscribe to: a return from the broker is not an error.
//! use chassis_messaging::amqp::topology::{ExchangeConfig, Unroutable};
//! let audit = TopologyConfig::new()
//!     .exchange(ExchangeConfig::topic("shop.audit").unroutable(Unroutable::Accept))
//!     .exchange(ExchangeConfig::topic("shop.commands"));
//! assert_eq!(audit.unroutable_policy("shop.audit"), Some(Unroutable::Accept));
//! assert_eq!(audit.unroutable_policy("shop.commands"), Some(Unroutable::Retry));
//! let parsed: TopologyConfig = toml::from_str(r#"
//!     [[exchanges]]
//!     name = "shop.audit"
//!     unroutable = "accept"
//! "#).unwrap();
//! assert_eq!(parsed, TopologyConfig::new().exchange(ExchangeConfig::topic("shop.audit").unroutable(Unroutable::Accept)));
//! ```

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind};

/// The whole topology of a service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopologyConfig {
    /// Exchanges to declare.
    pub exchanges: Vec<ExchangeConfig>,
    /// Consumer queues (each with its dead-letter queue and retry tiers).
    pub queues: Vec<QueueConfig>,
}

/// One exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeConfig {
    /// Its name.
    pub name: String,
    /// Its type. Defaults to `topic`.
    #[serde(default)]
    pub kind: ExchangeType,
    /// Whether it survives a broker restart. Defaults to `true`.
    #[serde(default = "yes")]
    pub durable: bool,
    /// What a message that no queue is bound for means (see the [module docs](self)).
    /// Defaults to [`Unroutable::Retry`].
    #[serde(default)]
    pub unroutable: Unroutable,
}

impl ExchangeConfig {
    /// A durable topic exchange; unroutable messages are errors ([`Unroutable::Retry`]).
    pub fn topic(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            kind: ExchangeType::Topic,
            durable: true,
            unroutable: Unroutable::Retry,
        }
    }

    chassis_core::__builder_setters! {
        /// Sets what a message that no queue is bound for means.
        unroutable: Unroutable,
    }
}

/// What a message published to an exchange with no queue bound for its routing key means
/// (the broker returns it, as it is published `mandatory`). See the [module docs](self).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unroutable {
    /// An error ([`ErrorKind::Unroutable`]): somebody must receive these messages. The outbox
    /// relay retries the row with backoff and parks it after `max_attempts`. The default.
    #[default]
    Retry,
    /// Normal publish/subscribe: nobody subscribing is fine. The publish succeeds as
    /// [`Routing::Unrouted`](crate::amqp::publisher::Routing::Unrouted) and the outbox relay
    /// marks the row sent (counted, logged at debug level), never parks it.
    Accept,
}

/// Exchange types.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeType {
    /// Routes on dotted routing-key patterns (`*` one word, `#` zero or more).
    #[default]
    Topic,
    /// Routes on exact routing keys.
    Direct,
    /// Routes to every bound queue.
    Fanout,
}

/// Queue types.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Replicated Raft queue (`x-queue-type = quorum`), the default.
    #[default]
    Quorum,
    /// Classic queue.
    Classic,
}

impl QueueType {
    /// The `x-queue-type` argument.
    fn as_arg(self) -> &'static str {
        match self {
            Self::Quorum => "quorum",
            Self::Classic => "classic",
        }
    }
}

/// A binding of a queue to an exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    /// The exchange.
    pub exchange: String,
    /// The routing key or pattern.
    pub routing_key: String,
}

/// One consumer queue with its dead-lettering and retry setup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Its name.
    pub name: String,
    /// Quorum (default) or classic.
    #[serde(default)]
    pub queue_type: QueueType,
    /// Bindings to exchanges.
    #[serde(default)]
    pub bindings: Vec<Binding>,
    /// Retry tiers and attempt limit.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Quorum queues only: deliveries (without an ack) after which the broker dead-letters a
    /// message, the backstop against a message that crashes every consumer before it can
    /// decide. Defaults to 20.
    #[serde(default = "default_delivery_limit")]
    pub delivery_limit: u32,
    /// Type of the dead-letter queue and the retry tiers. Defaults to the type of this queue
    /// (quorum tiers need RabbitMQ 3.10+, see the [module docs](self)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_queue_type: Option<QueueType>,
}

/// Retry tiers of a queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Delay of each tier, in order (humantime strings in config: `"1s"`, `"500ms"`).
    /// Attempt `n` (1-based) that fails is retried after `delays[min(n-1, len-1)]`.
    /// Defaults to 1 s, 10 s, 60 s.
    #[serde(with = "duration_list", default = "default_delays")]
    pub delays: Vec<Duration>,
    /// Total attempts (the first delivery included) before the message is dead-lettered.
    /// Defaults to one more than the number of tiers (every tier used once).
    #[serde(default)]
    pub max_attempts: Option<u32>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            delays: default_delays(),
            max_attempts: None,
        }
    }
}

impl RetryPolicy {
    /// Tiers with these delays and the default attempt limit.
    pub fn with_delays(delays: impl IntoIterator<Item = Duration>) -> Self {
        Self {
            delays: delays.into_iter().collect(),
            max_attempts: None,
        }
    }

    chassis_core::__builder_setters! {
        /// Sets the total attempt limit.
        max_attempts: Some(u32),
    }

    /// The effective total attempt limit.
    pub fn effective_max_attempts(&self) -> u32 {
        self.max_attempts.unwrap_or_else(|| {
            u32::try_from(self.delays.len())
                .unwrap_or(u32::MAX)
                .saturating_add(1)
        })
    }

    /// The delay for retrying after failed attempt `attempt` (1-based), honouring a requested
    /// minimum delay by picking the shortest tier at least that long (or the longest tier).
    /// `None` when there are no tiers.
    pub fn delay_for(&self, attempt: u32, requested: Option<Duration>) -> Option<Duration> {
        if self.delays.is_empty() {
            return None;
        }
        if let Some(min) = requested {
            let mut sorted = self.delays.clone();
            sorted.sort();
            return Some(
                sorted
                    .iter()
                    .copied()
                    .find(|d| *d >= min)
                    .unwrap_or(sorted[sorted.len() - 1]),
            );
        }
        let idx = usize::try_from(attempt.saturating_sub(1))
            .unwrap_or(usize::MAX)
            .min(self.delays.len() - 1);
        Some(self.delays[idx])
    }
}

fn yes() -> bool {
    true
}

/// Of two policies for one exchange, the one that does not lose messages.
pub(crate) fn strictest(a: Unroutable, b: Unroutable) -> Unroutable {
    if a == Unroutable::Retry || b == Unroutable::Retry {
        Unroutable::Retry
    } else {
        Unroutable::Accept
    }
}
fn default_delivery_limit() -> u32 {
    20
}
fn default_delays() -> Vec<Duration> {
    vec![
        Duration::from_secs(1),
        Duration::from_secs(10),
        Duration::from_secs(60),
    ]
}

mod duration_list {
    use std::time::Duration;

    use humantime_serde::Serde;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        v.iter()
            .map(|d| Serde::from(*d))
            .collect::<Vec<_>>()
            .serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        Ok(Vec::<Serde<Duration>>::deserialize(d)?
            .into_iter()
            .map(|d| *d)
            .collect())
    }
}

impl QueueConfig {
    /// A quorum queue with default retry tiers and no bindings.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            queue_type: QueueType::Quorum,
            bindings: Vec::new(),
            retry: RetryPolicy::default(),
            delivery_limit: default_delivery_limit(),
            retry_queue_type: None,
        }
    }

    chassis_core::__builder_setters! {
        /// Sets the type of the dead-letter queue and the retry tiers (by default the type of
        /// this queue).
        retry_queue_type: Some(QueueType),
    }

    /// The type the dead-letter queue and the retry tiers are declared with.
    pub fn effective_retry_queue_type(&self) -> QueueType {
        self.retry_queue_type.unwrap_or(self.queue_type)
    }

    /// Adds a binding.
    pub fn bind(mut self, exchange: impl Into<String>, routing_key: impl Into<String>) -> Self {
        self.bindings.push(Binding {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
        });
        self
    }

    chassis_core::__builder_setters! {
        /// Sets the queue type.
        queue_type: QueueType,
        /// Sets the retry policy.
        retry: RetryPolicy,
        /// Sets the quorum delivery limit.
        delivery_limit: u32,
    }

    /// Name of the dead-letter exchange: `<name>.dlx`.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.name)
    }

    /// Name of the dead-letter queue: `<name>.dlq`.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dlq", self.name)
    }

    /// Name of the retry tier queue for `delay`: `<name>.retry.<millis>ms`.
    pub fn retry_queue(&self, delay: Duration) -> String {
        format!("{}.retry.{}ms", self.name, delay.as_millis())
    }

    /// Every queue this config declares (work queue, dead-letter queue, retry tiers).
    pub fn all_queues(&self) -> Vec<String> {
        let mut v = vec![self.name.clone(), self.dead_letter_queue()];
        let mut delays = self.retry.delays.clone();
        delays.sort();
        delays.dedup();
        v.extend(delays.into_iter().map(|d| self.retry_queue(d)));
        v
    }

    fn validate(&self) -> Result<(), Error> {
        if self.name.is_empty() {
            return Err(Error::invalid_config("queue name is empty"));
        }
        if self.retry.delays.iter().any(Duration::is_zero) {
            return Err(Error::invalid_config(format!(
                "queue {}: retry delays must be positive",
                self.name
            )));
        }
        if self
            .retry
            .delays
            .iter()
            .any(|d| d.as_millis() > u128::from(u32::MAX))
        {
            return Err(Error::invalid_config(format!(
                "queue {}: retry delay too long",
                self.name
            )));
        }
        if self.retry.max_attempts == Some(0) {
            return Err(Error::invalid_config(format!(
                "queue {}: max_attempts must be at least 1",
                self.name
            )));
        }
        if self.queue_type == QueueType::Quorum && self.delivery_limit == 0 {
            return Err(Error::invalid_config(format!(
                "queue {}: delivery_limit must be at least 1",
                self.name
            )));
        }
        Ok(())
    }
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes()))
}

impl TopologyConfig {
    /// An empty topology.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an exchange.
    pub fn exchange(mut self, exchange: ExchangeConfig) -> Self {
        self.exchanges.push(exchange);
        self
    }

    /// Adds a queue.
    pub fn queue(mut self, queue: QueueConfig) -> Self {
        self.queues.push(queue);
        self
    }

    /// The [`Unroutable`] policy this topology declares for `exchange`, `None` when it does
    /// not declare it. If it is listed more than once, [`Unroutable::Retry`] wins (the strict
    /// reading; [`validate`](Self::validate) rejects such a topology anyway).
    pub fn unroutable_policy(&self, exchange: &str) -> Option<Unroutable> {
        self.exchanges
            .iter()
            .filter(|e| e.name == exchange)
            .map(|e| e.unroutable)
            .reduce(strictest)
    }

    /// Checks names and limits.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`] saying what is wrong.
    pub fn validate(&self) -> Result<(), Error> {
        for (i, e) in self.exchanges.iter().enumerate() {
            if e.name.is_empty() {
                return Err(Error::invalid_config("exchange name is empty"));
            }
            // The broker would declare the exchange once; two different policies for it
            // would leave which one applies to chance.
            if self.exchanges[..i]
                .iter()
                .any(|other| other.name == e.name && other.unroutable != e.unroutable)
            {
                return Err(Error::invalid_config(format!(
                    "exchange {}: listed twice with different unroutable policies",
                    e.name
                )));
            }
        }
        for q in &self.queues {
            q.validate()?;
        }
        Ok(())
    }

    /// Declares everything on `channel`, each broker operation bounded by `timeout`.
    /// Declarations are idempotent; re-running them after a reconnect is safe.
    ///
    /// # Errors
    /// [`ErrorKind::Topology`] with the broker's error as source (for example a queue that
    /// exists with different arguments), or [`ErrorKind::Timeout`].
    pub async fn declare(&self, channel: &Channel, timeout: Duration) -> Result<(), Error> {
        self.validate()?;
        let declare = Declarer { channel, timeout };
        for e in &self.exchanges {
            let kind = match e.kind {
                ExchangeType::Topic => ExchangeKind::Topic,
                ExchangeType::Direct => ExchangeKind::Direct,
                ExchangeType::Fanout => ExchangeKind::Fanout,
            };
            declare.exchange(&e.name, kind, e.durable).await?;
        }
        for q in &self.queues {
            let dlx = q.dead_letter_exchange();
            let dlq = q.dead_letter_queue();
            declare.exchange(&dlx, ExchangeKind::Direct, true).await?;
            let side_type = q.effective_retry_queue_type();
            let mut dlq_args = FieldTable::default();
            dlq_args.insert("x-queue-type".into(), long(side_type.as_arg()));
            declare.queue(&dlq, dlq_args).await?;
            declare.bind(&dlq, &dlx, &q.name).await?;

            let mut args = FieldTable::default();
            args.insert("x-dead-letter-exchange".into(), long(&dlx));
            args.insert("x-dead-letter-routing-key".into(), long(&q.name));
            match q.queue_type {
                QueueType::Quorum => {
                    args.insert("x-queue-type".into(), long(q.queue_type.as_arg()));
                    args.insert(
                        "x-delivery-limit".into(),
                        AMQPValue::LongLongInt(i64::from(q.delivery_limit)),
                    );
                }
                QueueType::Classic => {
                    args.insert("x-queue-type".into(), long(q.queue_type.as_arg()));
                }
            }
            declare.queue(&q.name, args).await?;
            for b in &q.bindings {
                declare.bind(&q.name, &b.exchange, &b.routing_key).await?;
            }
            let mut delays = q.retry.delays.clone();
            delays.sort();
            delays.dedup();
            for d in delays {
                let mut targs = FieldTable::default();
                targs.insert("x-queue-type".into(), long(side_type.as_arg()));
                if side_type == QueueType::Quorum {
                    // Moved back to `Q` only once `Q` has it: a node failure in between
                    // duplicates instead of dropping. The broker requires reject-publish.
                    targs.insert("x-dead-letter-strategy".into(), long("at-least-once"));
                    targs.insert("x-overflow".into(), long("reject-publish"));
                }
                targs.insert(
                    "x-message-ttl".into(),
                    AMQPValue::LongLongInt(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
                );
                // Back to the work queue only: the default exchange routes by queue name.
                targs.insert("x-dead-letter-exchange".into(), long(""));
                targs.insert("x-dead-letter-routing-key".into(), long(&q.name));
                let name = q.retry_queue(d);
                declare.queue(&name, targs).await?;
            }
        }
        Ok(())
    }
}

/// A passive `queue.declare` of `queue` on `channel` (the queue as the broker has it, its
/// message count included; never created), bounded by `timeout`: `None` when it timed out.
pub(crate) async fn passive_declare(
    channel: &Channel,
    queue: &str,
    timeout: Duration,
) -> Option<lapin::Result<lapin::Queue>> {
    let options = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let declare = channel.queue_declare(ShortString::from(queue), options, FieldTable::default());
    tokio::time::timeout(timeout, declare).await.ok()
}

/// Whether the broker answered `e` with 404 `NOT_FOUND` (a queue or exchange that does not
/// exist; the broker closes the channel).
pub(crate) fn is_not_found(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp)
    if matches!(
        amqp.kind(),
        lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::NOTFOUND)
    ))
}

/// Declares on one channel, each broker operation bounded by `timeout`.
struct Declarer<'a> {
    channel: &'a Channel,
    timeout: Duration,
}

impl Declarer<'_> {
    async fn exchange(&self, name: &str, kind: ExchangeKind, durable: bool) -> Result<(), Error> {
        let options = ExchangeDeclareOptions {
            durable,
            ..Default::default()
        };
        let declare = self.channel.exchange_declare(
            ShortString::from(name),
            kind,
            options,
            FieldTable::default(),
        );
        bounded("exchange.declare", self.timeout, Box::pin(declare)).await
    }

    /// A durable queue with the arguments `args`.
    async fn queue(&self, name: &str, args: FieldTable) -> Result<(), Error> {
        let options = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let declare = self
            .channel
            .queue_declare(ShortString::from(name), options, args);
        bounded(
            "queue.declare",
            self.timeout,
            Box::pin(async { declare.await.map(drop) }),
        )
        .await
    }

    async fn bind(&self, queue: &str, exchange: &str, routing_key: &str) -> Result<(), Error> {
        let bind = self.channel.queue_bind(
            ShortString::from(queue),
            ShortString::from(exchange),
            ShortString::from(routing_key),
            QueueBindOptions::default(),
            FieldTable::default(),
        );
        bounded("queue.bind", self.timeout, Box::pin(bind)).await
    }
}

type LapinFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = lapin::Result<()>> + Send + 'a>>;

async fn bounded(op: &'static str, timeout: Duration, fut: LapinFuture<'_>) -> Result<(), Error> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::with_source(ErrorKind::Topology, e)),
        Err(_) => Err(Error::timeout(op, timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_selection() {
        let p = RetryPolicy::with_delays([
            Duration::from_secs(1),
            Duration::from_secs(10),
            Duration::from_secs(60),
        ]);
        assert_eq!(p.effective_max_attempts(), 4);
        assert_eq!(p.delay_for(1, None), Some(Duration::from_secs(1)));
        assert_eq!(p.delay_for(2, None), Some(Duration::from_secs(10)));
        assert_eq!(p.delay_for(9, None), Some(Duration::from_secs(60)));
        assert_eq!(
            p.delay_for(1, Some(Duration::from_secs(5))),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            p.delay_for(1, Some(Duration::from_secs(500))),
            Some(Duration::from_secs(60))
        );
        assert_eq!(RetryPolicy::with_delays([]).delay_for(1, None), None);
        assert_eq!(p.clone().max_attempts(2).effective_max_attempts(), 2);
    }

    #[test]
    fn unroutable_policy_defaults_to_retry_and_conflicts_are_rejected() {
        let t = TopologyConfig::new()
            .exchange(ExchangeConfig::topic("events").unroutable(Unroutable::Accept))
            .exchange(ExchangeConfig::topic("commands"));
        assert_eq!(t.unroutable_policy("events"), Some(Unroutable::Accept));
        assert_eq!(t.unroutable_policy("commands"), Some(Unroutable::Retry));
        assert_eq!(t.unroutable_policy("elsewhere"), None);
        t.validate().unwrap();
        let parsed: ExchangeConfig = serde_json::from_str(r#"{"name": "x"}"#).unwrap();
        assert_eq!(parsed.unroutable, Unroutable::Retry);
        assert!(
            serde_json::from_str::<ExchangeConfig>(r#"{"name": "x", "unroutable": "drop"}"#)
                .is_err()
        );

        let conflicting = t
            .clone()
            .exchange(ExchangeConfig::topic("events").unroutable(Unroutable::Retry));
        assert_eq!(
            conflicting.unroutable_policy("events"),
            Some(Unroutable::Retry)
        );
        let err = conflicting.validate().unwrap_err();
        assert!(err.to_string().contains("events"), "{err}");
        // Listing an exchange twice the same way is fine.
        t.clone()
            .exchange(ExchangeConfig::topic("events").unroutable(Unroutable::Accept))
            .validate()
            .unwrap();
        assert_eq!(
            strictest(Unroutable::Accept, Unroutable::Accept),
            Unroutable::Accept
        );
        assert_eq!(
            strictest(Unroutable::Accept, Unroutable::Retry),
            Unroutable::Retry
        );
    }

    #[test]
    fn validation_rejects_bad_values() {
        let t = TopologyConfig::new()
            .queue(QueueConfig::new("q").retry(RetryPolicy::with_delays([Duration::ZERO])));
        assert!(matches!(
            t.validate().unwrap_err().kind(),
            ErrorKind::InvalidConfig { .. }
        ));
        let t = TopologyConfig::new()
            .queue(QueueConfig::new("q").retry(RetryPolicy::default().max_attempts(0)));
        assert!(t.validate().is_err());
        assert!(
            TopologyConfig::new()
                .queue(QueueConfig::new(""))
                .validate()
                .is_err()
        );
        let q = QueueConfig::new("q");
        assert_eq!(
            q.all_queues(),
            [
                "q",
                "q.dlq",
                "q.retry.1000ms",
                "q.retry.10000ms",
                "q.retry.60000ms"
            ]
        );
    }
}
