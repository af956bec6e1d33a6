//! A consumer's queues as a [`Controllable`] of the control registry: the depth of the work
//! queue, of each retry tier and of the dead-letter queue, the handler's in-flight count and
//! handled/failed rates, and `requeue_dlq`, which moves dead-lettered messages back to the work
//! queue.
//!
//! [`counted`] wraps the consumer's handler to count what it does (two atomic adds per
//! message); [`QueueControl`] reads the queues with passive `queue.declare`s on one channel
//! of its own and carries out the action.
//!
//! `requeue_dlq` with `{"id": "<message id>"}` moves the dead-lettered messages with that
//! message id; without an id, every message in the DLQ when the action starts. Each moved
//! message is published to the work queue (through the default exchange, with publisher
//! confirms) without the broker's dead-lettering headers and the chassis's attempt and
//! failure-reason headers, so it starts over; only after its confirm is it acked off the DLQ
//! (a crash in between leaves a copy in both, which the inbox makes harmless). Each move is
//! logged at WARN on target `chassis_messaging::control` with the message id: the audit line.
//! The action is idempotent: a moved message is no longer in the DLQ.
//!
//! The state lists the first dead-lettered messages (`dlq_messages`: message id, the
//! chassis's failure reason, the broker's death reason), so an operator can move one back by
//! its id. The listing reads them with `basic.get` and gives them straight back (one
//! `basic.nack` with requeue; the DLQ has no delivery limit nor dead-letter exchange, so
//! nothing is lost by reading), only while the DLQ is not empty, and again only when its depth
//! changes or the listing is a few seconds old. Listing and moving take turns, so a move never
//! misses a message the listing holds at that moment.
//!
//! ```no_run
//! # async fn example(conn: chassis_messaging::amqp::connection::Connection,
//! #     queue: chassis_messaging::amqp::topology::QueueConfig) {
//! use chassis_core::control::ControlRegistry;
//! use chassis_messaging::amqp::control::{QueueControl, counted};
//! use chassis_messaging::amqp::consumer::Outcome;
//!
//! let (handler, stats) = counted(|_msg| async { Outcome::Ack });
//! // Consumer::spawn(&conn, queue.clone(), config, handler)
//! let control = ControlRegistry::new("orders");
//! control.register(queue.name.clone(), QueueControl::new(conn, queue).stats(stats));
//! # }
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use chassis_core::Error;
use chassis_core::control::{Controllable, action_failed, invalid_action, unknown_action};
use futures_util::future::BoxFuture;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::amqp::connection::{Connection, ManagedChannel};
use crate::amqp::consumer::{Handler, Outcome};
use crate::amqp::incoming::{
    ATTEMPT_HEADER, FAILURE_REASON_HEADER, IncomingMessage, is_dead_letter_header,
};
use crate::amqp::topology::{QueueConfig, passive_declare};

#[derive(Debug, Default)]
struct Counts {
    in_flight: AtomicI64,
    handled: AtomicU64,
    failed: AtomicU64,
}

/// What a [`counted`] handler did, shared with its [`QueueControl`].
#[derive(Debug, Clone, Default)]
pub struct HandlerStats(Arc<Counts>);

/// A [`Handler`] counting its messages in flight, handled (acked) and failed (retried or
/// rejected); see [`counted`].
#[derive(Debug)]
pub struct Counted<H> {
    inner: H,
    stats: HandlerStats,
}

/// Wraps `handler` so that its in-flight, handled and failed messages are counted for a
/// [`QueueControl`].
pub fn counted<H: Handler>(handler: H) -> (Counted<H>, HandlerStats) {
    let stats = HandlerStats::default();
    (
        Counted {
            inner: handler,
            stats: stats.clone(),
        },
        stats,
    )
}

impl<H: Handler> Handler for Counted<H> {
    fn handle(&self, msg: IncomingMessage) -> BoxFuture<'static, Outcome> {
        let counts = self.stats.0.clone();
        counts.in_flight.fetch_add(1, Relaxed);
        let outcome = self.inner.handle(msg);
        Box::pin(async move {
            // Counted down however the future ends (a panic is the consumer's to catch).
            struct Leave(Arc<Counts>);
            impl Drop for Leave {
                fn drop(&mut self) {
                    self.0.in_flight.fetch_sub(1, Relaxed);
                }
            }
            let _leave = Leave(counts.clone());
            let outcome = outcome.await;
            match outcome {
                Outcome::Ack => counts.handled.fetch_add(1, Relaxed),
                _ => counts.failed.fetch_add(1, Relaxed),
            };
            outcome
        })
    }
}

/// A consumer's queues in the control registry (see the [module docs](self)).
pub struct QueueControl {
    conn: Connection,
    queue: QueueConfig,
    stats: Option<HandlerStats>,
    channel: Mutex<Option<ManagedChannel>>,
    /// The last listing of the DLQ; its lock also keeps listing and moving apart.
    dlq: Mutex<Option<Listing>>,
}

/// Dead-lettered messages as the state last listed them.
struct Listing {
    depth: u32,
    at: Instant,
    messages: Vec<Value>,
}

impl std::fmt::Debug for QueueControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueControl")
            .field("queue", &self.queue.name)
            .finish_non_exhaustive()
    }
}

const ACTIONS: &[&str] = &["requeue_dlq"];

/// Longest wait for one broker operation of a snapshot or an action.
const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// Dead-lettered messages listed in the state (the oldest first): enough to act on one by id,
/// bounded for the feed.
const DLQ_LISTED: u32 = 10;

/// How long a listing of the DLQ is shown again while the DLQ's depth stays the same.
const DLQ_LISTING_AGE: Duration = Duration::from_secs(5);

impl QueueControl {
    /// Reads (and acts on) `queue`'s work queue, retry tiers and dead-letter queue through
    /// `conn`.
    pub fn new(conn: Connection, queue: QueueConfig) -> Self {
        Self {
            conn,
            queue,
            stats: None,
            channel: Mutex::new(None),
            dlq: Mutex::new(None),
        }
    }

    chassis_core::__builder_setters! {
        /// Shows the counts of the consumer's [`counted`] handler. Defaults to none (depths only).
        stats: Some(HandlerStats),
    }

    /// The shared channel, opened (again) when there is none or the broker closed it (a
    /// passive declare of a missing queue closes it).
    async fn channel(&self) -> Result<lapin::Channel, crate::error::Error> {
        let mut slot = self.channel.lock().await;
        if let Some(ch) = slot.as_ref()
            && ch.channel.status().connected()
        {
            return Ok(ch.channel.clone());
        }
        let ch = self.conn.open_channel().await?;
        let channel = ch.channel.clone();
        *slot = Some(ch);
        Ok(channel)
    }

    async fn depth(&self, queue: &str) -> Option<u32> {
        let channel = self.channel().await.ok()?;
        match passive_declare(&channel, queue, OP_TIMEOUT).await {
            Some(Ok(q)) => Some(q.message_count()),
            _ => None,
        }
    }

    /// The DLQ's depth and its first messages (see the [module docs](self)), read together
    /// under the listing's lock, so no snapshot of this control sees the DLQ while a listing
    /// holds its messages.
    async fn dlq_state(&self) -> (Option<u32>, Vec<Value>) {
        let dlq = self.queue.dead_letter_queue();
        let mut last = self.dlq.lock().await;
        let Some(depth) = self.depth(&dlq).await else {
            return (None, Vec::new());
        };
        if let Some(listing) = last.as_ref()
            && listing.depth == depth
            && listing.at.elapsed() < DLQ_LISTING_AGE
        {
            return (Some(depth), listing.messages.clone());
        }
        let messages = if depth == 0 {
            Vec::new()
        } else {
            let read = self.read_dlq(depth.min(DLQ_LISTED)).await;
            // The broker counts the messages given back a moment after the nack (a quorum
            // queue applies it through its log): wait for them, so the next reader of the
            // depth (a snapshot, a move) sees them all.
            let back = tokio::time::Instant::now() + Duration::from_secs(2);
            while tokio::time::Instant::now() < back
                && self.depth(&dlq).await.is_some_and(|d| d < depth)
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            match read {
                Ok(messages) => messages,
                // Listed again at the next snapshot; the depth still says how many there are.
                Err(_) => return (Some(depth), Vec::new()),
            }
        };
        *last = Some(Listing {
            depth,
            at: Instant::now(),
            messages: messages.clone(),
        });
        (Some(depth), messages)
    }

    /// Reads up to `n` messages off the DLQ and gives them all back.
    async fn read_dlq(&self, n: u32) -> Result<Vec<Value>, BoxedError> {
        let dlq = self.queue.dead_letter_queue();
        let ch = self.conn.open_channel().await?;
        let mut messages = Vec::new();
        let mut last = None;
        let read = async {
            for _ in 0..n {
                let got = tokio::time::timeout(
                    OP_TIMEOUT,
                    ch.channel
                        .basic_get(dlq.as_str().into(), BasicGetOptions::default()),
                )
                .await
                .map_err(|_| "basic.get timed out")??;
                let Some(message) = got else { break };
                let delivery = message.delivery;
                let properties = &delivery.properties;
                let header = |name: &str| {
                    properties
                        .headers()
                        .as_ref()
                        .and_then(|h| h.inner().get(name))
                        .and_then(|v| match v {
                            lapin::types::AMQPValue::LongString(s) => {
                                Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                            }
                            lapin::types::AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
                            _ => None,
                        })
                };
                messages.push(json!({
                    "id": properties.message_id().as_ref().map(|m| m.as_str()),
                    "type": properties.kind().as_ref().map(|m| m.as_str()),
                    "reason": header(FAILURE_REASON_HEADER),
                    "death": header("x-first-death-reason"),
                }));
                last = Some(delivery.acker);
            }
            Ok::<_, BoxedError>(())
        }
        .await;
        // One nack for all: every message read goes back to the DLQ (its order may change; a
        // DLQ's order means nothing to a consumer, as nobody consumes it).
        let given_back = match last {
            Some(acker) => acker
                .nack(BasicNackOptions {
                    multiple: true,
                    requeue: true,
                })
                .await
                .map(drop)
                .map_err(BoxedError::from),
            None => Ok(()),
        };
        // Closing the channel would give them back too, should the nack have failed.
        self.conn.close_channel(&ch.channel).await;
        read?;
        given_back?;
        Ok(messages)
    }

    async fn requeue_dlq(&self, id: Option<&str>) -> Result<u64, BoxedError> {
        // Not while a listing holds messages; the next snapshot lists the DLQ afresh.
        let mut listing = self.dlq.lock().await;
        *listing = None;
        let dlq = self.queue.dead_letter_queue();
        // A channel of its own: confirms must not mix with the snapshot channel's declares.
        let ch = self.conn.open_channel().await?;
        let result = self.move_messages(&ch.channel, &dlq, id).await;
        self.conn.close_channel(&ch.channel).await;
        result
    }

    async fn move_messages(
        &self,
        channel: &lapin::Channel,
        dlq: &str,
        id: Option<&str>,
    ) -> Result<u64, BoxedError> {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        // Only what is in the DLQ now: messages dead-lettered meanwhile wait for the next call.
        let Some(depth) = self.depth(dlq).await else {
            return Err(format!("cannot read the depth of {dlq}").into());
        };
        let mut moved = 0;
        let mut skipped = Vec::new();
        for _ in 0..depth {
            let got = tokio::time::timeout(
                OP_TIMEOUT,
                channel.basic_get(dlq.into(), BasicGetOptions::default()),
            )
            .await
            .map_err(|_| "basic.get timed out")??;
            let Some(message) = got else { break };
            let delivery = message.delivery;
            let message_id = delivery
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.as_str().to_owned());
            if id.is_some() && message_id.as_deref() != id {
                skipped.push(delivery.acker);
                continue;
            }
            let mut headers = FieldTable::default();
            if let Some(old) = delivery.properties.headers() {
                for (k, v) in old.inner() {
                    let k = k.as_str();
                    // The copy starts over: no broker bookkeeping, no attempt count.
                    if is_dead_letter_header(k) || k == ATTEMPT_HEADER || k == FAILURE_REASON_HEADER
                    {
                        continue;
                    }
                    headers.insert(k.into(), v.clone());
                }
            }
            let properties = delivery.properties.clone().with_headers(headers);
            let confirm = channel
                .basic_publish(
                    "".into(),
                    self.queue.name.as_str().into(),
                    BasicPublishOptions::default(),
                    &delivery.data,
                    properties,
                )
                .await?;
            let confirmation = tokio::time::timeout(OP_TIMEOUT, confirm)
                .await
                .map_err(|_| "publisher confirm timed out")??;
            if confirmation.is_nack() {
                return Err(format!("the broker refused the copy of {message_id:?}").into());
            }
            delivery.acker.ack(BasicAckOptions::default()).await?;
            moved += 1;
            tracing::warn!(
                target: "chassis_messaging::control",
                queue = %self.queue.name,
                message_id = message_id.as_deref().unwrap_or("-"),
                "dead-lettered message moved back to the work queue"
            );
        }
        for acker in skipped {
            acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await?;
        }
        Ok(moved)
    }
}

type BoxedError = Box<dyn std::error::Error + Send + Sync>;

impl Controllable for QueueControl {
    fn kind(&self) -> &'static str {
        "consumer"
    }

    fn actions(&self) -> &'static [&'static str] {
        ACTIONS
    }

    fn snapshot(&self) -> BoxFuture<'_, Value> {
        Box::pin(async move {
            let depth = self.depth(&self.queue.name).await;
            let (dlq_depth, dlq_messages) = self.dlq_state().await;
            let mut retry_depth = None::<u64>;
            for name in self.queue.all_queues().iter().skip(2) {
                if let Some(d) = self.depth(name).await {
                    retry_depth = Some(retry_depth.unwrap_or(0) + u64::from(d));
                }
            }
            let mut state = json!({
                "queue": self.queue.name,
                "depth": depth,
                "retry_depth": retry_depth.unwrap_or(0),
                "dlq_depth": dlq_depth,
                "dlq_messages": dlq_messages,
            });
            if let Some(stats) = &self.stats {
                let counts = &stats.0;
                state["in_flight"] = counts.in_flight.load(Relaxed).max(0).into();
                state["counters"] = json!({
                    "handled": counts.handled.load(Relaxed),
                    "failed": counts.failed.load(Relaxed),
                });
            }
            state
        })
    }

    fn act<'a>(&'a self, action: &'a str, params: &'a Value) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            if action != "requeue_dlq" {
                return Err(unknown_action(&self.queue.name, action, ACTIONS));
            }
            let id = match params.get("id") {
                None | Some(Value::Null) => None,
                Some(Value::String(id)) if !id.is_empty() => Some(id.as_str()),
                Some(_) => {
                    return Err(invalid_action(
                        &self.queue.name,
                        "id must be a message id (a non-empty string)",
                    ));
                }
            };
            let moved = self
                .requeue_dlq(id)
                .await
                .map_err(|e| action_failed(&self.queue.name, e))?;
            tracing::warn!(
                target: "chassis_messaging::control",
                queue = %self.queue.name,
                id = id.unwrap_or("*"),
                moved,
                "dead-letter queue requeued"
            );
            Ok(())
        })
    }
}
