//! # shop-inventory
//!
//! Owns the catalogue and its stock. Consumes `order.placed` (reserve) and the `inventory.release`
//! command (compensation), emits `inventory.reserved` / `inventory.rejected` /
//! `inventory.released` through the outbox, serves `GET /internal/products`.
//!
//! - [`domain`]: the SQL and the rules (atomic reservation, no overselling, idempotent release).

pub mod domain;
