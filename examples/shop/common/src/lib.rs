//! # shop-common
//!
//! What only the shop's services share; everything else comes from the chassis as it is
//! (each service's `main` wires telemetry, the database, RabbitMQ, HTTP and the lifecycle the
//! way `examples/minimal-service` does):
//!
//! - [`service`]: [`Shop`], a service's name and namespace (prefixed exchange and queue names,
//!   the shop's topology, its database and broker from the environment), and the HTTP address;
//! - [`db`]: [`Db`](db::Db), the shop's SQL over SQLite (the default: a file per service) or
//!   PostgreSQL (`DATABASE_URL=postgres://…`) chosen at run time, with the chassis outbox,
//!   relay and inbox consumers on it;
//! - [`events`]: the event and command payloads travelling on `shop.events` / `shop.commands`,
//!   with their routing keys;
//! - [`admin`]: the admin API (the chassis control registry) on the admin listener;
//! - [`auth`]: service tokens (the gateway signs, the internal APIs verify);
//! - [`limits`]: the size limits of everything a client controls, checked by every service,
//!   and the typed error ([`FieldError`](limits::FieldError), a 422 on an API);
//! - [`pact`]: the provider states of the contract tests (`POST /_pact/state`, mounted only
//!   with `SHOP_PACT_STATES=1`);
//! - [`tls`]: HTTPS and mTLS between the services, from `TLS_CERT_FILE`, `TLS_KEY_FILE`,
//!   `TLS_CA_FILE` and `TLS_CLIENT_AUTH`.

pub mod admin;
pub mod auth;
pub mod db;
pub mod events;
pub mod limits;
pub mod pact;
pub mod service;
pub mod tls;

pub use service::Shop;
