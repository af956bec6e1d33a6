//! # shop-payments
//!
//! Charges orders through the external payment provider and refunds them on compensation.
//! Consumes the `payment.charge` / `payment.refund` commands, emits `payment.succeeded`,
//! `payment.failed` and `payment.refunded` through the outbox.
//!
//! - [`domain`]: the payment records and the rules that make charging exactly-once in effect;
//! - [`provider`]: the resilient client of the payment provider (retry, breaker, timeout);
//! - [`pact_states`]: the provider states of the contract tests (`SHOP_PACT_STATES=1`).

pub mod domain;
pub mod pact_states;
pub mod provider;
