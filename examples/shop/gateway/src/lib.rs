//! # shop-gateway
//!
//! The only public entry of the shop. Authenticates trusted clients with bearer API keys and,
//! when configured, end users with bearer JWTs from an identity provider (role-based access),
//! rate limits per client or user, and routes to the services over HTTP through the resilient
//! client.
//!
//! - [`api`]: the public routes, the size limits checked before anything is forwarded, and
//!   what a write that succeeded is answered when its answer cannot be relayed.
//! - [`downstream`]: the resilient clients to the services and the mapping of their errors to
//!   the chassis JSON error body.
//! - [`keys`]: API keys from configuration.
//! - [`rate_limit`]: the rate limit per caller (the chassis keyed limiter, in memory or Redis).
//! - [`users`]: end-user tokens (the identity provider's JWKS, issuer, audience) and the role
//!   map, from the environment.

pub mod api;
pub mod downstream;
pub mod keys;
pub mod rate_limit;
pub mod users;
