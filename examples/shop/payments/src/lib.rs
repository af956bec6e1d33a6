//! # shop-payments
//!
//! Charges orders through the external payment provider and refunds them on compensation.
//! Consumes the `payment.charge` / `payment.refund` commands, emits `payment.succeeded`,
//! `payment.failed` and `payment.refunded` through the outbox.
//!
//! - [`domain`]: the payment records and the rules that make charging exactly-once in effect;
//! - [`provider`]: the resilient client of the payment provider (retry, breaker, timeout).

pub mod domain;
pub mod provider;
