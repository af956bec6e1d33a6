//! # chassis-messaging
//!
//! The messaging side of the chassis SDK: RabbitMQ with confirms, retry tiers and dead
//! letters, and a transactional outbox and idempotent inbox on SQLite or PostgreSQL.
//!
//! ## Layout
//! Two parts, and what both speak:
//!
//! - [`amqp`], the transport (RabbitMQ through lapin):
//!   - [`amqp::connection`]: the self-healing connection manager, its state and readiness check.
//!   - [`amqp::topology`]: exchanges, queues, bindings, dead-letter queues and retry tiers from
//!     config.
//!   - [`amqp::publisher`]: the [`Publish`] trait and the confirming RabbitMQ publisher.
//!   - [`amqp::consumer`]: consumers with manual acks, retry tiers, dead-lettering and handler
//!     traits; partitioned consumers keep per-key (per-subject) order with concurrency.
//!   - [`amqp::incoming`]: [`IncomingMessage`], what handlers receive.
//!   - [`amqp::headers`]: AMQP header conversions and trace-context carriers.
//! - [`sql`], the database side (SQLite, PostgreSQL):
//!   - [`sql::outbox`]: the transactional outbox, [`Outbox<DB>`](Outbox), and its [`Relay`].
//!   - [`sql::inbox`]: the idempotent consumer guard, [`Inbox<DB>`](Inbox).
//!   - [`sql::group_commit`]: an inbox's deliveries that arrive together handled in one
//!     transaction.
//!   - [`sql::schema`]: the migrations the outbox and the inbox share.
//!   - [`sql::metrics`]: the names of the metrics they record.
//! - Shared by both:
//!   - [`message`]: [`OutgoingMessage`], a message in its wire form.
//!   - [`envelope`]: [`Envelope`], a typed CloudEvents 1.0 event and its AMQP mapping.
//!   - [`version`]: event versions: [`Versioned`] payloads, upcasting older versions, and
//!     [`versioned`] handlers that dead-letter versions they do not know.
//!   - [`error`]: [`Error`] and [`ErrorKind`](error::ErrorKind).
//!   - [`memory`]: an in-memory transport for users' unit tests, with a
//!     [`TestHarness`](memory::TestHarness) to await what was published, consumed and
//!     dead-lettered.
//! - [`saga`]: the saga building block: persisted state machines driven by events and
//!   database-scheduled timeouts, with compensations, on the outbox and the inbox.
//! - [`lifecycle`]: the connection, consumers and relay as components of a service's
//!   [`App`](chassis_core::lifecycle::App), which starts and stops them in order.
//!
//! The types a service uses most are re-exported here, so one `use chassis_messaging::{…}`
//! line brings them in.
//!
//! ## Quick start
//! ```no_run
//! use chassis_messaging::{
//!     Connection, ConnectionConfig, Consumer, ConsumerConfig, Envelope, ExchangeConfig, Outcome,
//!     Publish, Publisher, PublisherConfig, QueueConfig, TopologyConfig, typed,
//! };
//!
//! # async fn run() -> Result<(), chassis_messaging::Error> {
//! let conn = Connection::connect(ConnectionConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f", "shop")).await?;
//! let queue = QueueConfig::new("shipping.orders").bind("shop.events", "shop.order.#");
//! conn.declare(TopologyConfig::new().exchange(ExchangeConfig::topic("shop.events")).queue(queue.clone())).await?;
//!
//! let consumer = Consumer::start(&conn, queue, ConsumerConfig::default(),
//!     typed(|e: Envelope<serde_json::Value>| async move { println!("{}", e.data); Outcome::Ack })).await?;
//!
//! let publisher = Publisher::new(&conn, PublisherConfig::default())?;
//! let event = Envelope::new("shop/orders", "shop.order.placed", serde_json::json!({"id": 1}));
//! publisher.publish(event.to_message("shop.events")?).await?; // Ok once the broker confirmed
//!
//! consumer.shutdown().await;
//! conn.close().await;
//! # Ok(()) }
//! ```
//!
//! With a database, events leave through the outbox and arrive through the inbox: see
//! [`sql::outbox`] and [`sql::inbox`].
//!
//! ## Features
//! | feature | default | what it adds |
//! |---|---|---|
//! | `sqlite` | yes | the SQLite outbox and inbox stores (`Outbox<Sqlite>`, `Inbox<Sqlite>`): an embedded database, the easiest start |
//! | `postgres` | no | the PostgreSQL stores (`Outbox<Postgres>`, `Inbox<Postgres>`): `LISTEN/NOTIFY` wake-up, `SKIP LOCKED` batches for several relays |
//!
//! Each feature enables exactly its sqlx driver (`sqlx/sqlite`, `sqlx/postgres`), so a
//! PostgreSQL-only service builds with `default-features = false, features = ["postgres"]` and
//! compiles no SQLite (no `libsqlite3-sys`, no C build of the bundled library). `sqlite` is the
//! default because it needs no database server: the outbox and inbox work out of the box, in a
//! file next to the service. With neither feature the AMQP side and the in-memory stores remain.

#![cfg_attr(docsrs, feature(doc_cfg))]

/// Builder setters that store `Some(value.into())` in the `Option<String>` field of the same
/// name: each entry is the setter's docs, then `name(argument)`.
macro_rules! optional_string_setters {
    ($($(#[$m:meta])* $name:ident($arg:ident);)*) => {
        $(
            $(#[$m])*
            pub fn $name(mut self, $arg: impl Into<String>) -> Self {
                self.$name = Some($arg.into());
                self
            }
        )*
    };
}

pub mod amqp;
pub mod envelope;
pub mod error;
pub mod lifecycle;
pub mod memory;
pub mod message;
pub mod saga;
pub mod sql;
#[cfg(test)]
mod test_support;
pub mod version;

pub use amqp::connection::{Connection, ConnectionConfig};
pub use amqp::consumer::{Consumer, ConsumerConfig, Outcome, typed};
pub use amqp::incoming::IncomingMessage;
pub use amqp::publisher::{Publish, Publisher, PublisherConfig};
pub use amqp::topology::{ExchangeConfig, QueueConfig, TopologyConfig, Unroutable};
pub use envelope::Envelope;
pub use error::Error;
pub use message::OutgoingMessage;
pub use sql::inbox::{Inbox, idempotent};
pub use sql::outbox::{Outbox, Relay, RelayConfig};
pub use version::{Versioned, versioned};

// The README's example is compiled and run as a doctest, so the crate's front page stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
