//! The metrics the outbox relay and the inbox record, re-exported from the chassis catalogue
//! (`chassis_observability::metrics::names`, which gives each one's type, unit, labels and
//! description): this module adds no names of its own.
//!
//! | Name | Kind | Labels |
//! |------|------|--------|
//! | [`OUTBOX_PENDING`] (`outbox_pending`) | gauge, rows | — |
//! | [`OUTBOX_OLDEST_PENDING_AGE`] (`outbox_oldest_pending_age_seconds`) | gauge, seconds | — |
//! | [`OUTBOX_PUBLISH_LATENCY`] (`outbox_publish_latency_seconds`) | histogram, seconds, write (≈ commit) to broker confirm | — |
//! | [`OUTBOX_RELAY_ERRORS`] (`outbox_relay_errors_total`) | counter | `error.type` = `transient` (broker unavailable, publish timeout), `message` (a row failed non-transiently) or `database` |
//! | [`OUTBOX_PARKED`] (`outbox_parked`) | gauge, rows parked and waiting for an operator | — |
//! | [`OUTBOX_PARKED_MESSAGES`] (`outbox_parked_messages_total`) | counter, rows parked | — |
//! | [`OUTBOX_PUBLISHED`] (`outbox_published_total`) | counter, rows confirmed | — |
//! | [`OUTBOX_UNROUTABLE`] (`outbox_unroutable_total`) | counter, rows confirmed but routed to no queue, on exchanges declared [`Unroutable::Accept`](crate::amqp::topology::Unroutable::Accept) (also counted in [`OUTBOX_PUBLISHED`]) | — |
//! | [`INBOX_DUPLICATES`] (`inbox_duplicates_total`) | counter, duplicate deliveries skipped | `messaging.destination.name` = the inbox's consumer name |
//! | [`INBOX_PROCESSED`] (`inbox_processed_total`) | counter, first deliveries processed and committed | `messaging.destination.name` = the inbox's consumer name |
//! | [`INBOX_TRANSACTIONS`] (`inbox_transactions_total`) | counter, transactions the inbox committed (with a [group commit](super::group_commit), one per batch) | `messaging.destination.name` = the inbox's consumer name |
//!
//! # Example
//! ```
//! use chassis_messaging::sql::metrics;
//!
//! // What a dashboard or an alert queries: the names are Prometheus's, as scraped.
//! assert_eq!(metrics::OUTBOX_PARKED, "outbox_parked");
//! assert_eq!(metrics::INBOX_PROCESSED, "inbox_processed_total");
//! ```

pub use chassis_observability::metrics::names::{
    INBOX_DUPLICATES, INBOX_PROCESSED, INBOX_TRANSACTIONS, OUTBOX_OLDEST_PENDING_AGE,
    OUTBOX_PARKED, OUTBOX_PARKED_MESSAGES, OUTBOX_PENDING, OUTBOX_PUBLISH_LATENCY,
    OUTBOX_PUBLISHED, OUTBOX_RELAY_ERRORS, OUTBOX_UNROUTABLE,
};
