//! # shop-gateway
//!
//! The only public entry of the shop. Authenticates end users with bearer API keys, rate limits
//! per key, and routes to the services over HTTP through the resilient client.
//!
//! - [`api`]: the public routes, the size limits checked before anything is forwarded, and
//!   what a write that succeeded is answered when its answer cannot be relayed.
//! - [`downstream`]: the resilient clients to the services and the mapping of their errors to
//!   the chassis JSON error body.
//! - [`keys`]: API keys from configuration.
//! - [`rate_limit`]: a token bucket per API key.

pub mod api;
pub mod downstream;
pub mod keys;
pub mod rate_limit;
