//! # chassis-messaging
//!
//! The RabbitMQ side of the chassis SDK.
//!
//! ## Layout
//! - [`message`]: [`OutgoingMessage`](message::OutgoingMessage), a message in its wire form.
pub mod message;
