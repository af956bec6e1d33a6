//! The AMQP transport: RabbitMQ through lapin.
//!
//! - [`connection`]: the self-healing connection manager, its state and readiness check.
//! - [`topology`]: exchanges, queues, bindings, dead-letter queues and retry tiers from config.
//! - [`publisher`]: the [`Publish`](publisher::Publish) trait and the confirming publisher.
//! - [`consumer`]: consumers with manual acks, retry tiers, dead-lettering and handler traits.
//! - [`incoming`]: [`IncomingMessage`](incoming::IncomingMessage), what handlers receive.
//! - [`headers`]: AMQP header conversions and trace-context carriers.
//!
//! What travels is the crate's own: an [`OutgoingMessage`](crate::message::OutgoingMessage)
//! out, usually an [`Envelope`](crate::envelope::Envelope) encoded; an `IncomingMessage` in,
//! decoded back into one. Nothing here knows a database: the [`sql`](crate::sql) side
//! publishes through [`Publish`](publisher::Publish) and guards handlers from outside.
//!
//! # Example
//! ```no_run
//! use chassis_messaging::amqp::connection::{Connection, ConnectionConfig};
//! use chassis_messaging::amqp::publisher::{Publish, Publisher, PublisherConfig};
//! use chassis_messaging::amqp::topology::{ExchangeConfig, TopologyConfig};
//! use chassis_messaging::Envelope;
//!
//! # async fn run() -> Result<(), chassis_messaging::Error> {
//! let conn = Connection::connect(ConnectionConfig::new("amqp://127.0.0.1:5672/%2f", "orders")).await?;
//! conn.declare(TopologyConfig::new().exchange(ExchangeConfig::topic("shop.events"))).await?;
//! let publisher = Publisher::new(&conn, PublisherConfig::default())?;
//! let event = Envelope::new("shop/orders", "shop.order.placed", serde_json::json!({"id": 1}));
//! publisher.publish(event.to_message("shop.events")?).await?; // Ok once the broker confirmed
//! conn.close().await;
//! # Ok(()) }
//! ```

pub mod connection;
pub mod consumer;
pub mod control;
pub mod headers;
pub mod incoming;
pub mod publisher;
mod returns;
pub mod topology;
