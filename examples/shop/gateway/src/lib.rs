//! # shop-gateway
//!
//! The only public entry of the shop. Authenticates end users with bearer API keys, rate limits
//! per key, and routes to the services over HTTP through the resilient client.
//!
//! - [`keys`]: API keys from configuration.
//! - [`rate_limit`]: a token bucket per API key.

pub mod keys;
pub mod rate_limit;
