//! # shop-gateway
//!
//! The only public entry of the shop. Authenticates end users with bearer API keys, rate limits
//! per key, and routes to the services over HTTP through the resilient client.
//!
//! - [`downstream`]: the resilient clients to the services and the mapping of their errors to
//!   the chassis JSON error body.
//! - [`keys`]: API keys from configuration.
//! - [`rate_limit`]: a token bucket per API key.

pub mod downstream;
pub mod keys;
pub mod rate_limit;
