//! # shop-notifications
//!
//! Consumes `order.confirmed` / `order.failed` and records one notification per order, exactly
//! once (the inbox absorbs redeliveries, a `UNIQUE (order_id)` absorbs anything else); lists them
//! at `GET /api/v1/notifications?order_id=…`.
//!
//! It also keeps a CQRS read model, the order history per customer, built from the saga's
//! events and rebuildable from a RabbitMQ stream; served at
//! `GET /api/v1/customers/{customer}/orders`.
//!
//! - [`domain`]: the notifications table and its SQL.
//! - [`order_history`]: the read model: its projection, query, stream replay and lag metric.

pub mod domain;
pub mod order_history;
