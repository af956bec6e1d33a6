//! # shop-inventory
//!
//! Owns the catalogue and its stock. Consumes `order.placed` (reserve) and the `inventory.release`
//! command (compensation), emits `inventory.reserved` / `inventory.rejected` /
//! `inventory.released` through the outbox, serves `GET /internal/products` and, over gRPC,
//! `inventory.v1.Inventory` (products and reservations; the contract is
//! `examples/shop/proto/inventory.proto`).
//!
//! - [`domain`]: the SQL and the rules (atomic reservation, no overselling, idempotent release);
//! - [`grpc`]: the gRPC API;
//! - [`pact_states`]: the provider states of the contract tests (`SHOP_PACT_STATES=1`).

pub mod domain;
pub mod grpc;
pub mod pact_states;
