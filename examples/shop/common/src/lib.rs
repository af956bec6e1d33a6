//! # shop-common
//!
//! What the shop's services share, kept small on purpose (each service stays its own crate):
//!
//! - [`auth`]: service tokens (the gateway signs, the internal APIs verify);
//! - [`db`]: [`Db`](db::Db) and [`Tx`](db::Tx), one handle over SQLite (the default: a file per
//!   service) or PostgreSQL (`DATABASE_URL=postgres://…`), so each service's SQL is written once
//!   and runs on both;
//! - [`events`]: the event and command payloads travelling on `shop.events` / `shop.commands`,
//!   with their routing keys;
//! - [`runtime`]: [`App`](runtime::App), the bootstrap wiring every chassis piece (telemetry,
//!   database + outbox/inbox, RabbitMQ, HTTP server, health, metrics, graceful shutdown);
//! - [`web`]: the JSON success envelope and the chassis error body for axum handlers.

pub mod auth;
pub mod db;
pub mod events;
pub mod runtime;
pub mod web;
