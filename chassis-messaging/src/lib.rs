//! # chassis-messaging
//!
//! The RabbitMQ side of the chassis SDK.
//!
//! ## Layout
//! - [`message`]: [`OutgoingMessage`](message::OutgoingMessage), a message in its wire form.
//! - [`error`]: [`Error`](error::Error) and [`ErrorKind`](error::ErrorKind).
//! - [`publisher`]: the [`Publish`](publisher::Publish) trait and the confirming RabbitMQ publisher.
//! - [`outbox`]: the transactional outbox (SQLite, PostgreSQL) and its relay.
//! - [`inbox`]: the idempotent consumer guard.
pub mod error;
pub mod inbox;
pub mod message;
pub mod outbox;
pub mod publisher;
