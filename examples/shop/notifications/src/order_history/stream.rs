//! The event stream the read model is rebuilt from: a RabbitMQ stream queue bound to the same
//! routing keys as the live queue, and the replay that reads it from the first offset.
//!
//! # Why a stream, and not the outbox's history
//!
//! The events the projection reads are written by four other services, each into its own
//! outbox, in its own database; the relays delete sent rows after `sent_retention`. Rebuilding
//! from outboxes would need every service's database, a retention nobody else wants, and a
//! merge of four histories. A stream queue keeps what the broker routed, in arrival order, in
//! one place notifications owns, and reading it consumes nothing: a consumer with
//! `x-stream-offset = first` starts at the oldest retained message, as often as needed, while
//! the live queue keeps being consumed. Its retention is bounded by size and age
//! (`x-max-length-bytes`, `x-max-age`, applied a segment at a time, hence the segment size):
//! a rebuild sees the events of the retention window, which is the read model's promise.
//!
//! # How a replay knows it caught up
//!
//! Truncate first, then publish a marker message straight into the stream (default exchange,
//! publisher confirm), then consume from `first` until the marker comes back. Every event
//! applied by the live consumer before the truncate was routed to the stream before it, so it
//! is before the marker and is applied again; events applied live after the truncate stay, and
//! their copies in the stream are absorbed by the event-id key. Markers of earlier replays are
//! skipped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chassis_core::BoxError;
use chassis_core::health::HealthCheck;
use chassis_messaging::amqp::connection::ConnectionState;
use chassis_messaging::amqp::headers::from_field_table;
use chassis_messaging::message::OutgoingMessage;
use chassis_messaging::{Connection, IncomingMessage};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt as _, StreamExt as _};
use lapin::BasicProperties;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use serde::Serialize;
use shop_common::db::Db;

use super::projection::{self, EVENT_KINDS};

/// The AMQP `type` of the replay's marker messages.
const MARKER: &str = "order-history.replay-marker";

/// The stream queue: its name, the exchange it is bound to, and its retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConfig {
    /// The queue name, e.g. `notifications.order-history.stream`.
    pub name: String,
    /// The events exchange (with the namespace), bound with every key of [`EVENT_KINDS`].
    pub exchange: String,
    /// `x-max-length-bytes`. Defaults to 256 MiB.
    pub max_bytes: i64,
    /// `x-max-age`, in RabbitMQ's form (`7D`, `12h`, `30m`, `60s`). Defaults to `7D`.
    pub max_age: String,
    /// `x-stream-max-segment-size-bytes`: retention drops whole segments, so a segment is a
    /// fraction of `max_bytes` (the broker's default, 500 MB, would never be dropped under a
    /// smaller limit). Defaults to 16 MiB.
    pub segment_bytes: i64,
    /// Unacknowledged deliveries a replay allows (`basic.qos`; a stream consumer must set
    /// one). Defaults to 200.
    pub prefetch: u16,
    /// How long a replay waits for the next message before giving up. Defaults to 10 s.
    pub idle_timeout: Duration,
}

impl StreamConfig {
    /// The stream `name` bound to `exchange`, with the default retention.
    pub fn new(name: impl Into<String>, exchange: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            exchange: exchange.into(),
            max_bytes: 256 * 1024 * 1024,
            max_age: "7D".into(),
            segment_bytes: 16 * 1024 * 1024,
            prefetch: 200,
            idle_timeout: Duration::from_secs(10),
        }
    }

    /// Sets `x-max-length-bytes`.
    pub fn max_bytes(mut self, bytes: i64) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// Sets `x-max-age` (`7D`, `12h`, …).
    pub fn max_age(mut self, age: impl Into<String>) -> Self {
        self.max_age = age.into();
        self
    }

    fn arguments(&self) -> FieldTable {
        let long = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes()));
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), long("stream"));
        args.insert(
            "x-max-length-bytes".into(),
            AMQPValue::LongLongInt(self.max_bytes),
        );
        args.insert("x-max-age".into(), long(&self.max_age));
        args.insert(
            "x-stream-max-segment-size-bytes".into(),
            AMQPValue::LongLongInt(self.segment_bytes),
        );
        args
    }

    /// Declares the stream (durable, as streams must be) and binds it to every key of
    /// [`EVENT_KINDS`]. Idempotent with the same arguments; the exchange must exist.
    pub async fn declare(&self, conn: &Connection) -> Result<(), BoxError> {
        let ch = conn.create_channel().await?;
        let options = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let result = async {
            ch.queue_declare(self.name.as_str().into(), options, self.arguments())
                .await?;
            for key in EVENT_KINDS {
                ch.queue_bind(
                    self.name.as_str().into(),
                    self.exchange.as_str().into(),
                    (*key).into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            }
            Ok::<_, lapin::Error>(())
        }
        .await;
        let _ = ch.close(200, "declared".into()).await;
        Ok(result?)
    }

    /// Declares the stream each time `conn` is (re)connected (its topology, the events
    /// exchange included, is declared by then), retrying every `every` while a declaration
    /// fails; `declared` passes from the first success on. Returns when the connection is
    /// closed. Spawn it.
    pub async fn keep_declared(self, conn: Connection, declared: StreamDeclared, every: Duration) {
        let mut state = conn.subscribe();
        loop {
            if state
                .wait_for(|s| matches!(s, ConnectionState::Connected | ConnectionState::Closed))
                .await
                .is_err()
                || conn.state() == ConnectionState::Closed
            {
                return;
            }
            loop {
                match self.declare(&conn).await {
                    Ok(()) => {
                        tracing::info!(stream = %self.name, "order-history stream declared");
                        declared.0.store(true, Ordering::Relaxed);
                        break;
                    }
                    Err(_) if conn.state() == ConnectionState::Closed => return,
                    Err(e) => {
                        tracing::warn!(stream = %self.name, error = %e, "declaring the order-history stream failed; retrying");
                        tokio::time::sleep(every).await;
                    }
                }
            }
            if state
                .wait_for(|s| *s != ConnectionState::Connected)
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// A health check (`order-history-stream`) that passes once the stream was declared and bound
/// ([`StreamConfig::keep_declared`]): events published before that reach the live queue only,
/// and a rebuild would miss them. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct StreamDeclared(Arc<AtomicBool>);

impl HealthCheck for StreamDeclared {
    fn name(&self) -> &str {
        "order-history-stream"
    }

    fn check(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        let declared = self.0.load(Ordering::Relaxed);
        Box::pin(async move {
            if declared {
                Ok(())
            } else {
                Err("the order-history stream is not declared yet".into())
            }
        })
    }
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Replayed {
    /// Messages read from the stream up to the marker (markers excluded).
    pub read: u64,
    /// Events that changed the read model.
    pub applied: u64,
    /// Events already there (a duplicate in the stream, or applied live meanwhile).
    pub duplicates: u64,
    /// Messages the projection does not read or cannot decode.
    pub skipped: u64,
    /// How long it took, in ms.
    pub took_ms: u64,
}

/// Empties the read model and applies every event of the stream, from the first retained
/// offset up to the moment of the call, through the same projection code as the live
/// consumer. Events keep being applied live meanwhile (see the [module docs](self)); queries
/// see a partial read model until it returns.
///
/// # Errors
/// The broker or the database failed, or no message arrived for
/// [`idle_timeout`](StreamConfig::idle_timeout) before the marker (the stream was deleted or
/// the broker stalled); the read model is then partial, and a new rebuild completes it.
pub async fn replay(
    db: &Db,
    conn: &Connection,
    stream: &StreamConfig,
) -> Result<Replayed, BoxError> {
    let started = std::time::Instant::now();
    let mut txn = db.begin().await?;
    projection::truncate(&mut txn.tx()).await?;
    txn.commit().await?;

    let ch = conn.create_channel().await?;
    let result = read_to_marker(db, &ch, stream).await;
    let _ = ch.close(200, "replayed".into()).await;
    let mut done = result?;
    done.took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(done)
}

async fn read_to_marker(
    db: &Db,
    ch: &lapin::Channel,
    stream: &StreamConfig,
) -> Result<Replayed, BoxError> {
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let marker = uuid::Uuid::now_v7().to_string();
    let confirm = ch
        .basic_publish(
            ShortString::from(""),
            stream.name.as_str().into(),
            BasicPublishOptions::default(),
            b"{}",
            BasicProperties::default()
                .with_message_id(marker.as_str().into())
                .with_type(MARKER.into()),
        )
        .await?
        .await?;
    if !confirm.is_ack() {
        return Err(format!("the broker refused the replay marker for {}", stream.name).into());
    }

    ch.basic_qos(stream.prefetch, BasicQosOptions::default())
        .await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString(LongString::from("first".as_bytes())),
    );
    let tag = format!("order-history-replay-{marker}");
    let mut consumer = ch
        .basic_consume(
            stream.name.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await?;
    let mut done = Replayed::default();
    // What is already delivered is applied in one transaction (up to the prefetch), then
    // acknowledged at once: a replay costs a commit per batch, not per event.
    let mut batch = Vec::with_capacity(usize::from(stream.prefetch));
    let mut caught_up = false;
    while !caught_up {
        let first = match tokio::time::timeout(stream.idle_timeout, consumer.next()).await {
            Ok(Some(d)) => d,
            Ok(None) => return Err("the stream consumer was cancelled".into()),
            Err(_) => {
                return Err(format!(
                    "no message from {} for {:?} before the replay marker ({} read)",
                    stream.name, stream.idle_timeout, done.read
                )
                .into());
            }
        };
        batch.push(first?);
        while batch.len() < usize::from(stream.prefetch) {
            match consumer.next().now_or_never() {
                Some(Some(d)) => batch.push(d?),
                Some(None) => return Err("the stream consumer was cancelled".into()),
                None => break,
            }
        }
        let mut txn = db.begin().await?;
        let mut applied = 0;
        for delivery in &batch {
            let props = &delivery.properties;
            if props.kind().as_ref().is_some_and(|k| k.as_str() == MARKER) {
                // Ours ends the replay; those of earlier replays are skipped.
                if props
                    .message_id()
                    .as_ref()
                    .is_some_and(|id| id.as_str() == marker)
                {
                    caught_up = true;
                    break;
                }
                continue;
            }
            done.read += 1;
            match projection::event_of(&incoming(delivery)) {
                Ok(Some(event)) if projection::apply(&mut txn.tx(), &event).await? => {
                    applied += 1;
                }
                Ok(Some(_)) => done.duplicates += 1,
                Ok(None) | Err(_) => done.skipped += 1,
            }
        }
        txn.commit().await?;
        done.applied += applied;
        metrics::counter!(super::APPLIED, "source" => "replay").increment(applied);
        // A stream keeps its messages: the ack only returns the prefetch credit.
        let last = batch.last().expect("one delivery at least");
        last.acker.ack(BasicAckOptions { multiple: true }).await?;
        batch.clear();
    }
    let _ = ch
        .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
        .await;
    Ok(done)
}

/// The delivery as the chassis consumer would hand it to a handler.
fn incoming(d: &lapin::message::Delivery) -> IncomingMessage {
    let p = &d.properties;
    let s = |v: &Option<ShortString>| v.as_ref().map(|s| s.as_str().to_owned());
    IncomingMessage::from_outgoing(OutgoingMessage {
        exchange: d.exchange.as_str().to_owned(),
        routing_key: d.routing_key.as_str().to_owned(),
        message_id: s(p.message_id()),
        kind: s(p.kind()),
        content_type: s(p.content_type()),
        correlation_id: s(p.correlation_id()),
        timestamp: *p.timestamp(),
        headers: p
            .headers()
            .as_ref()
            .map(from_field_table)
            .unwrap_or_default(),
        body: d.data.clone(),
    })
}
