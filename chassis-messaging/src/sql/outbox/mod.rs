//! The transactional outbox: an event is published if and only if the transaction that
//! produced it committed.
//!
//! A handler writes its business rows and the event in **one** database transaction:
//! [`Outbox::enqueue`] inserts the message (its wire form, an
//! [`OutgoingMessage`](crate::message::OutgoingMessage)) into the outbox tables through the
//! caller's own transaction. A [`Relay`] (one background task per service replica) then
//! publishes committed rows through any [`Publish`](crate::amqp::publisher::Publish)
//! implementation (the confirming RabbitMQ publisher) and marks them sent only after the broker
//! confirmed.
//! Delivery is therefore at least once: a crash between confirm and mark republishes the
//! message with the same `message_id`, and the consumer's [`Inbox`](crate::sql::inbox::Inbox)
//! turns that into an exactly-once effect.
//!
//! [`Outbox<DB>`](Outbox) is one type for every database: `SqliteOutbox` (`Outbox<Sqlite>`,
//! feature `sqlite`) and `PgOutbox` (`Outbox<Postgres>`, feature `postgres`). What differs
//! between them, the SQL and how rows are reserved, sits behind [`OutboxDatabase`]; the
//! modules `sqlite` and `postgres` describe each.
//!
//! # Tables and migrations
//! [`Outbox::migrate`] (or [`schema::migrate`](crate::sql::schema::migrate) on a pool) creates
//! `chassis_outbox` (one small bookkeeping row per
//! event: subject, message id, status, attempts, lease), `chassis_outbox_messages` (the event
//! itself under the same id: exchange, routing key, properties, headers, body; deleted with its
//! row), `chassis_inbox` (and on PostgreSQL `chassis_outbox_subjects` plus a notify trigger).
//! The message has a table of its own because the relay writes every row again after the
//! insert (SQLite: the lease and the record; PostgreSQL: the record, a new version of the whole
//! row): those writes touch the small row only, never the event's headers and body. The
//! migrations are the ones the inbox shares ([`schema`](crate::sql::schema)): tracked in their
//! own table, never colliding with the application's `_sqlx_migrations`, harmless to run again
//! or from several replicas at once.
//!
//! # Guarantees and how they are kept
//! - **Only committed events**: the row is invisible to relays until the transaction commits;
//!   a rollback removes it.
//! - **Wake-up on commit, polling as fallback**: PostgreSQL relays `LISTEN` to a trigger's
//!   `NOTIFY` (delivered at commit only); SQLite has no cross-connection notification, so call
//!   [`Outbox::commit`] (commit + wake) or [`notify_committed`](Outbox::notify_committed)
//!   after committing. Without a signal the relay still finds rows within
//!   [`RelayConfig::poll_interval`] (500 ms).
//! - **Per-aggregate order**: the ordering key is the message's `cloudEvents:subject` header
//!   (the envelope's aggregate id) or the explicit subject of `enqueue_with_subject`. Rows of
//!   one subject are published strictly one after the other in id order, each after the
//!   previous one's confirm; a row is published only when every earlier pending row of its
//!   subject is in the same batch or in one of the relay's own batches still in flight. Ids
//!   follow commit order per subject: on SQLite because
//!   there is a single writer, on PostgreSQL because `enqueue` locks a per-subject row
//!   (`chassis_outbox_subjects`) so concurrent writers of one subject serialize (see the
//!   `postgres` module). Events without a subject have no ordering constraint.
//! - **Pipelined batches**: a relay keeps up to [`RelayConfig::batches_in_flight`] (4) batches
//!   in flight: it claims and publishes the next batches while earlier ones still wait for
//!   their confirms and bookkeeping, so the broker's confirm pipeline stays full. Order and
//!   multi-relay safety are unaffected: a batch in flight holds its rows exactly as another
//!   relay would (lease or row locks, rows still `pending`). A later row of a subject with
//!   rows in flight may be claimed by the same relay, which links it behind them: it is
//!   published only after they were all confirmed, and left pending if one of them failed
//!   (see [`Relay`]). Any other relay sees those subjects blocked until the rows are
//!   recorded. Each batch records its own outcomes.
//! - **Late commits are never skipped**: relays keep no "last id seen" cursor. Every batch
//!   reads the pending rows in id order; sent rows leave the pending set, so a row whose
//!   transaction committed late is simply pending at the next batch.
//! - **Several relays on one database**: PostgreSQL relays lock their batch with
//!   `SELECT … FOR UPDATE SKIP LOCKED` inside a transaction that also records the outcome
//!   (a crash rolls back: the rows are pending again); SQLite relays take a lease
//!   ([`RelayConfig::lease`], renewed while the rows are in flight). A row held by another
//!   relay blocks the rest of its subject, so order holds across relays.
//! - **Broker down**: a transient failure (connection lost, nack, confirm timeout) leaves the
//!   rows pending and untouched; the relay backs off with jittered exponential delays
//!   ([`RelayConfig::backoff_initial`] to [`RelayConfig::backoff_max`]) and resumes. Nothing is
//!   lost and attempts are not counted.
//! - **Poison rows**: a non-transient failure (unroutable, undecodable row) counts an attempt
//!   and retries the row after a growing delay; after [`RelayConfig::max_attempts`] (5) the row
//!   is *parked* (`status = 'parked'`, with `last_error`), logged at error level and counted in
//!   [`OUTBOX_PARKED`](crate::sql::metrics::OUTBOX_PARKED). Later rows of its subject then
//!   proceed. Inspect with
//!   `parked()`, fix the cause, and `requeue_parked()`. The relay warns once each time the
//!   parked count changes, not at every gauge refresh.
//! - **Events nobody subscribes to**: "unroutable" above means an exchange declared
//!   [`Unroutable::Retry`](crate::amqp::topology::Unroutable::Retry) (the default), where a
//!   missing queue is a mistake or a startup race. On an exchange declared
//!   [`Unroutable::Accept`](crate::amqp::topology::Unroutable::Accept) a confirmed event that
//!   reached no queue is marked sent and counted in
//!   [`OUTBOX_UNROUTABLE`](crate::sql::metrics::OUTBOX_UNROUTABLE), never parked (see the
//!   [topology docs](crate::amqp::topology#unroutable-messages-unroutable-per-exchange)).
//! - **Trace continuity**: `enqueue` stores the current span's W3C trace context
//!   (`traceparent`, `tracestate`, `baggage`) in the row's headers unless the message already
//!   carries a `traceparent`. The relay publishes each row inside an `"outbox relay"` span
//!   whose parent is that stored context, so the publisher's producer span and the
//!   `traceparent` it injects continue the enqueuer's trace across the relay and the broker.
//! - **Retention**: confirmed rows are kept as `sent` for [`RelayConfig::sent_retention`]
//!   (1 h; zero deletes them at once) and removed every [`RelayConfig::cleanup_interval`].
//!
//! Metric names are in [`sql::metrics`](crate::sql::metrics); an outbox implements
//! [`HealthCheck`](chassis_core::health::HealthCheck) as a database ping.
//!
//! # Example
//! ```
//! use std::sync::Arc;
//! use chassis_messaging::{OutgoingMessage, Outbox, Relay, RelayConfig};
//! # use chassis_messaging::{Error, Publish};
//! # use futures_util::future::BoxFuture;
//! # #[derive(Default)]
//! # struct Recorder(std::sync::Mutex<Vec<OutgoingMessage>>);
//! # impl Publish for Recorder {
//! #     fn publish(&self, msg: OutgoingMessage) -> BoxFuture<'_, Result<(), Error>> {
//! #         self.0.lock().unwrap().push(msg);
//! #         Box::pin(async { Ok(()) })
//! #     }
//! # }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::sqlite::SqlitePoolOptions::new()
//!     .max_connections(1)
//!     .connect("sqlite::memory:")
//!     .await?;
//! let outbox = Outbox::new(pool.clone()); // an `Outbox<Sqlite>`, alias `SqliteOutbox`
//! outbox.migrate().await?;
//! sqlx::query("CREATE TABLE orders (id TEXT PRIMARY KEY)").execute(&pool).await?;
//!
//! // In a handler: the business write and the event in one transaction.
//! let mut tx = pool.begin().await?;
//! sqlx::query("INSERT INTO orders (id) VALUES ('42')").execute(&mut *tx).await?;
//! let event = OutgoingMessage::new("shop.events", "order.placed", br#"{"id":"42"}"#.to_vec())
//!     .header("cloudEvents:subject", "order-42");
//! let message_id = outbox.enqueue(&mut tx, &event).await?;
//! outbox.commit(tx).await?; // commit + wake the relay
//!
//! // Once per service: the relay, publishing through the confirming publisher (here a stand-in).
//! let publisher = Arc::new(Recorder::default());
//! let relay = Relay::new(outbox.clone(), publisher.clone(), RelayConfig::default())?;
//! // In a service: `relay.spawn(shutdown.token())`; here, one batch by hand.
//! let report = relay.run_once().await?;
//! assert_eq!(report.sent, 1);
//! let sent = publisher.0.lock().unwrap();
//! assert_eq!(sent[0].message_id.as_deref(), Some(message_id.as_str()));
//! # Ok(())
//! # }
//! ```

mod control;
mod database;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
mod relay;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub mod sqlite;
mod store;

pub use database::{NewRow, Outbox, OutboxDatabase};
#[cfg(feature = "postgres")]
pub use postgres::{PgClaim, PgOutbox};
pub use relay::{BatchReport, Relay, RelayConfig};
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteOutbox;
pub use store::{
    OutboxStats, OutboxStore, ParkedRow, PendingRow, RowOutcome, SUBJECT_HEADER, SentPolicy,
};
