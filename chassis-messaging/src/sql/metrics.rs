//! Names of the metrics the outbox relay and the inbox record (through the `metrics` facade;
//! the service's exporter, e.g. chassis-observability's Prometheus handle, publishes them;
//! Prometheus renders the dots as underscores).
//!
//! Four outbox metrics and the inbox duplicate counter come from the observability catalogue
//! (`chassis_observability::metrics::names`) and are re-exported here; the others belong to
//! chassis-messaging alone.
//!
//! | Name | Kind | Labels |
//! |------|------|--------|
//! | [`OUTBOX_PENDING`] | gauge, rows | — |
//! | [`OUTBOX_OLDEST_PENDING_AGE`] | gauge, seconds | — |
//! | [`OUTBOX_PUBLISH_LATENCY`] | histogram, seconds, write (≈ commit) to broker confirm | — |
//! | [`OUTBOX_RELAY_ERRORS`] | counter | `error.type` = `transient` (broker unavailable, publish timeout), `message` (a row failed non-transiently) or `database` |
//! | [`OUTBOX_PARKED`] | gauge, rows parked and waiting for an operator | — |
//! | [`OUTBOX_PARKED_TOTAL`] | counter, rows parked | — |
//! | [`OUTBOX_PUBLISHED`] | counter, rows confirmed | — |
//! | [`OUTBOX_UNROUTABLE`] | counter, rows confirmed but routed to no queue, on exchanges declared [`Unroutable::Accept`](crate::amqp::topology::Unroutable::Accept) (also counted in [`OUTBOX_PUBLISHED`]) | — |
//! | [`INBOX_DUPLICATES`] | counter, duplicate deliveries skipped | `messaging.destination.name` = the inbox's consumer name |
//! | [`INBOX_PROCESSED`] | counter, first deliveries processed and committed | `messaging.destination.name` = the inbox's consumer name |
//!
//! # Example
//! ```
//! use chassis_messaging::sql::metrics;
//!
//! // What a dashboard or an alert queries (Prometheus renders the dots as underscores).
//! assert_eq!(metrics::OUTBOX_PARKED, "outbox.parked");
//! assert_eq!(metrics::INBOX_PROCESSED, "inbox.processed");
//! ```

pub use chassis_observability::metrics::names::{
    INBOX_DUPLICATES, OUTBOX_OLDEST_PENDING_AGE, OUTBOX_PENDING, OUTBOX_PUBLISH_LATENCY,
    OUTBOX_RELAY_ERRORS,
};

/// Gauge: rows parked after `max_attempts` non-transient failures (need an operator).
pub const OUTBOX_PARKED: &str = "outbox.parked";
/// Counter: rows the broker confirmed.
pub const OUTBOX_PUBLISHED: &str = "outbox.published";
/// Counter: rows the broker confirmed but routed to no queue, on exchanges that accept that
/// ([`Unroutable::Accept`](crate::amqp::topology::Unroutable::Accept)); they are marked sent,
/// not parked, and are included in [`OUTBOX_PUBLISHED`].
pub const OUTBOX_UNROUTABLE: &str = "outbox.unroutable";
/// Counter: rows parked (see the error log for the row and its error).
pub const OUTBOX_PARKED_TOTAL: &str = "outbox.parked_total";
/// Counter: messages an inbox processed (first delivery, committed).
pub const INBOX_PROCESSED: &str = "inbox.processed";

/// The label of [`OUTBOX_RELAY_ERRORS`].
pub(crate) const ERROR_TYPE: &str = "error.type";
/// The label of the inbox counters.
pub(crate) const DESTINATION: &str = "messaging.destination.name";
