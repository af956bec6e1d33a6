//! Names of the metrics the outbox relay and the inbox record (through the `metrics` facade;
//! the service's exporter, e.g. chassis-observability's Prometheus handle, publishes them).
//!
//! Defined here because the observability crate's catalogue did not list outbox metrics when
//! this module was written; Prometheus renders the dots as underscores.

/// Gauge: rows waiting to be published.
pub const OUTBOX_PENDING: &str = "outbox.pending";
/// Gauge: rows parked after `max_attempts` non-transient failures (need an operator).
pub const OUTBOX_PARKED: &str = "outbox.parked";
/// Gauge, seconds: age of the oldest pending row (grows while the broker is down).
pub const OUTBOX_OLDEST_PENDING_AGE: &str = "outbox.oldest_pending_age";
/// Histogram, seconds: from the row's write (≈ commit) to the broker's confirm.
pub const OUTBOX_PUBLISH_LATENCY: &str = "outbox.publish_latency";
/// Counter: rows the broker confirmed.
pub const OUTBOX_PUBLISHED: &str = "outbox.published";
/// Counter: rows parked (label-free; see the log for the row and its error).
pub const OUTBOX_PARKED_TOTAL: &str = "outbox.parked_total";
/// Counter: relay errors, label `kind` = `transient` (broker unavailable, publish timeout),
/// `message` (a row failed non-transiently) or `database`.
pub const OUTBOX_RELAY_ERRORS: &str = "outbox.relay_errors";
/// Counter: messages an inbox processed (first delivery), label `consumer`.
pub const INBOX_PROCESSED: &str = "inbox.processed";
/// Counter: duplicate deliveries an inbox skipped, label `consumer`.
pub const INBOX_DUPLICATES: &str = "inbox.duplicates";
