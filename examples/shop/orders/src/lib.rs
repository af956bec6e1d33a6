//! # shop-orders
//!
//! Owns orders and orchestrates the order saga on the chassis saga building block
//! (`chassis_messaging::saga`): reserve inventory -> charge payment -> confirm, compensating
//! (release the reservation, refund the charge) and ending `FAILED` with a reason when a step
//! fails or times out. Every transition is one database transaction that also writes the next
//! message into the outbox and the order's read model, so the saga resumes from the database
//! after a restart.
//!
//! - [`catalogue`]: the inventory's check of an order's products at placement, over gRPC;
//! - [`saga`]: the state machine, the order read model and placement;
//! - [`waiters`]: requests waiting for an order's final status (long polling).

pub mod catalogue;
pub mod saga;
pub mod waiters;
