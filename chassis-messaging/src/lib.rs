//! # chassis-messaging
//!
//! The RabbitMQ side of the chassis SDK.
//!
//! ## Layout
//! - [`message`]: [`OutgoingMessage`](message::OutgoingMessage), a message in its wire form.
//! - [`error`]: [`Error`](error::Error) and [`ErrorKind`](error::ErrorKind).
//! - [`publisher`]: the [`Publish`](publisher::Publish) trait and the confirming RabbitMQ publisher.
//! - [`connection`]: the self-healing connection manager, its state and readiness check.
//! - [`topology`]: exchanges, queues, bindings, dead-letter queues and retry tiers from config.
//! - [`envelope`]: [`Envelope`](envelope::Envelope), a typed CloudEvents 1.0 event and its AMQP mapping.
//! - [`consumer`]: consumers with manual acks, retry tiers, dead-lettering and handler traits.
//! - [`incoming`]: [`IncomingMessage`](incoming::IncomingMessage), what handlers receive.
//! - [`headers`]: AMQP header conversions and trace-context carriers.
//! - [`memory`]: an in-memory transport for users' unit tests.
//! - [`outbox`]: the transactional outbox (SQLite, PostgreSQL) and its relay.
//! - [`inbox`]: the idempotent consumer guard.
//!
//! ## Quick start
//! ```no_run
//! use chassis_messaging::connection::{Connection, ConnectionConfig};
//! use chassis_messaging::consumer::{typed, Consumer, ConsumerConfig, Outcome};
//! use chassis_messaging::envelope::Envelope;
//! use chassis_messaging::publisher::{Publish, Publisher, PublisherConfig};
//! use chassis_messaging::topology::{ExchangeConfig, QueueConfig, TopologyConfig};
//!
//! # async fn run() -> Result<(), chassis_messaging::error::Error> {
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
pub mod connection;
pub mod consumer;
pub mod envelope;
pub mod error;
pub mod headers;
pub mod inbox;
pub mod incoming;
pub mod memory;
pub mod message;
pub mod outbox;
pub mod publisher;
pub mod topology;
