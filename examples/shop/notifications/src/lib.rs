//! # shop-notifications
//!
//! Consumes `order.confirmed` / `order.failed` and records one notification per order, exactly
//! once (the inbox absorbs redeliveries, a `UNIQUE (order_id)` absorbs anything else); lists them
//! at `GET /api/v1/notifications?order_id=…`.
//!
//! - [`domain`]: the table and its SQL.

pub mod domain;
