//! The storage side of the outbox, shared by every database: the [`OutboxStore`] trait the
//! [`Relay`](super::Relay) drives, the rows it hands out and the per-aggregate ordering rule.
// Without a database feature there is no store to use the helpers.
#![cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use chassis_observability::propagation::TRACEPARENT;
use opentelemetry::trace::TraceContextExt as _;
use sqlx::{ColumnIndex, Decode, Row, Type};

use crate::amqp::headers::HeaderMapCarrier;
use crate::error::Result;
use crate::message::{HeaderValue, OutgoingMessage};

/// The header an [`Envelope`](crate::envelope::Envelope) carries its CloudEvents `subject` (the
/// aggregate id) in. [`enqueue`](super::Outbox::enqueue) reads the ordering key from it.
pub const SUBJECT_HEADER: &str = "cloudEvents:subject";

/// Status of a row that waits to be published.
pub(crate) const STATUS_PENDING: &str = "pending";
/// Status of a row that failed `max_attempts` times with a non-transient error.
pub(crate) const STATUS_PARKED: &str = "parked";

/// One outbox row claimed by a relay, ready to publish.
#[derive(Debug, Clone)]
pub struct PendingRow {
    /// Row id; ids grow in commit order within a subject.
    pub id: i64,
    /// Ordering key (aggregate id); rows of one subject are published one after the other.
    pub subject: Option<String>,
    /// The message, or why the stored row could not be turned back into one (such a row is
    /// parked: it can never be published).
    pub message: std::result::Result<OutgoingMessage, String>,
    /// When the row was written (Unix epoch milliseconds, the application's clock).
    pub created_at_ms: i64,
    /// Failed publish attempts so far (transient broker outages do not count).
    pub attempts: i32,
}

/// A parked outbox row, as listed by [`parked`](super::Outbox::parked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedRow {
    /// Row id.
    pub id: i64,
    /// Ordering key.
    pub subject: Option<String>,
    /// The message id.
    pub message_id: String,
    /// Failed attempts.
    pub attempts: i32,
    /// The error of the last attempt.
    pub last_error: Option<String>,
    /// When the row was written (Unix epoch milliseconds).
    pub created_at_ms: i64,
}

/// What the relay did with one claimed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowOutcome {
    /// The broker confirmed it.
    Sent,
    /// Publishing failed with an error that will fail the same way again (unroutable,
    /// undecodable): count the attempt, retry later or park.
    Failed {
        /// Attempts after this one.
        attempts: i32,
        /// The error, as text.
        error: String,
        /// Park the row (attempts reached the maximum).
        park: bool,
        /// When to try again if not parked (Unix epoch milliseconds).
        retry_at_ms: i64,
    },
    /// Not published this round (broker outage, an earlier row of its subject failed, the
    /// relay is stopping): leave it pending and release it at once.
    Released,
}

/// What happens to a row the broker confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SentPolicy {
    /// Delete it in the same statement that acknowledges the batch.
    Delete,
    /// Mark it `sent` (with `sent_at`); retention deletes it later.
    Mark,
}

/// Counts the relay exports as metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutboxStats {
    /// Rows waiting to be published.
    pub pending: i64,
    /// Rows parked after too many failures.
    pub parked: i64,
    /// `created_at` of the oldest pending row (Unix epoch milliseconds), if any.
    pub oldest_pending_ms: Option<i64>,
}

/// A database the [`Relay`](super::Relay) can drain: implemented by
/// [`Outbox`](super::Outbox) on every [`OutboxDatabase`](super::OutboxDatabase).
///
/// The methods are the relay's plumbing; applications call `enqueue` on the outbox and hand
/// the outbox to a relay. A claim is an opaque handle: the rows it returned are reserved
/// for this relay (PostgreSQL: row locks of an open transaction; SQLite: a lease) until
/// [`finish`](Self::finish) records their outcomes.
pub trait OutboxStore: Clone + Send + Sync + 'static {
    /// The reservation of one batch.
    type Claim: Send + 'static;

    /// Reserves up to `limit` publishable rows: pending, due, not already reserved, and each
    /// the head of its subject: every earlier pending row of the same subject is either in
    /// this claim or in `held`. Rows come back in id order.
    ///
    /// `held` lists the rows the calling relay already holds in batches still in flight; it
    /// publishes a claimed row of such a subject only after the held rows before it were
    /// confirmed (see [`Relay`](super::Relay)), which is what lets a relay claim the next
    /// rows of a subject while the earlier ones are still travelling. A row reserved by anyone
    /// else (another relay, or another batch not listed in `held`) blocks the rest of its
    /// subject.
    fn claim(
        &self,
        limit: usize,
        lease: Duration,
        held: &HashSet<i64>,
    ) -> impl Future<Output = Result<(Self::Claim, Vec<PendingRow>)>> + Send;

    /// Extends the reservation of the rows in `held` that this relay still holds (pending,
    /// reserved by it) to `lease` from now. A relay calls it while batches are in flight, so a
    /// short lease keeps a live relay's rows and still frees a dead relay's rows soon. Stores
    /// whose reservations end with their holder (PostgreSQL's row locks) need nothing: the
    /// default does nothing.
    fn renew(
        &self,
        held: &HashSet<i64>,
        lease: Duration,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (held, lease);
        async { Ok(()) }
    }

    /// Records what happened to the claimed rows and releases the claim.
    fn finish(
        &self,
        claim: Self::Claim,
        outcomes: Vec<(i64, RowOutcome)>,
        sent: SentPolicy,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Pending and parked counts and the age of the oldest pending row.
    fn stats(&self) -> impl Future<Output = Result<OutboxStats>> + Send;

    /// Deletes `sent` rows confirmed before `sent_before_ms` (and, where the store keeps any,
    /// ordering bookkeeping idle since then). Returns the number of rows deleted.
    fn purge_sent(&self, sent_before_ms: i64) -> impl Future<Output = Result<u64>> + Send;

    /// The in-process signal [`notify_committed`](super::Outbox::notify_committed)
    /// fires; the relay waits on it between batches.
    fn notifier(&self) -> Arc<Notify>;

    /// Forwards database-side commit notifications (PostgreSQL `LISTEN`) to `notify` until
    /// `token` is cancelled. Stores without any return at once.
    fn watch(
        &self,
        notify: Arc<Notify>,
        token: CancellationToken,
    ) -> impl Future<Output = ()> + Send;
}

/// The ordering key of `msg`: its `cloudEvents:subject` header, if it is a string.
pub(crate) fn subject_of(msg: &OutgoingMessage) -> Option<&str> {
    match msg.headers.get(SUBJECT_HEADER) {
        Some(HeaderValue::String(s)) => Some(s.as_str()),
        _ => None,
    }
}

/// The headers stored with a row: the message's own, plus the trace context of the current
/// span (`traceparent`, `tracestate`, `baggage`) when the caller did not set a `traceparent`.
///
/// The relay publishes later, on its own task, where the enqueuing span is long gone; the
/// stored context is what lets it publish as a continuation of the enqueuer's trace (see
/// [`Relay`](super::Relay)). A caller that already propagated a context keeps its own.
pub(crate) fn stored_headers(msg: &OutgoingMessage) -> Cow<'_, BTreeMap<String, HeaderValue>> {
    if msg.headers.contains_key(TRACEPARENT) {
        return Cow::Borrowed(&msg.headers);
    }
    let cx = chassis_observability::propagation::current_context();
    if !cx.span().span_context().is_valid() {
        return Cow::Borrowed(&msg.headers);
    }
    let mut headers = msg.headers.clone();
    chassis_observability::propagation::inject_context(&cx, &mut HeaderMapCarrier(&mut headers));
    Cow::Owned(headers)
}

/// The message id stored with a row: the message's own, or a fresh UUID v7.
pub(crate) fn message_id_of(msg: &OutgoingMessage) -> String {
    msg.message_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
}

/// The statistics query, the same SQL on both databases; read with [`stats_from_rows`].
pub(crate) const STATS_SQL: &str = "SELECT status, count(*) AS n, min(created_at) AS oldest \
     FROM chassis_outbox WHERE status IN ('pending', 'parked') GROUP BY status";

/// Folds the rows of [`STATS_SQL`] into the counts.
pub(crate) fn stats_from_rows<R: Row>(rows: &[R]) -> std::result::Result<OutboxStats, sqlx::Error>
where
    for<'c> &'c str: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
{
    let mut stats = OutboxStats::default();
    for row in rows {
        let status: String = row.try_get("status")?;
        let n: i64 = row.try_get("n")?;
        if status == STATUS_PENDING {
            stats.pending = n;
            stats.oldest_pending_ms = row.try_get("oldest")?;
        } else {
            stats.parked = n;
        }
    }
    Ok(stats)
}

/// Reads a [`ParkedRow`] (columns `id, subject, message_id, attempts, last_error,
/// created_at`) from a row of either database.
pub(crate) fn parked_row<R: Row>(row: &R) -> std::result::Result<ParkedRow, sqlx::Error>
where
    for<'c> &'c str: ColumnIndex<R>,
    for<'r> i32: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(ParkedRow {
        id: row.try_get("id")?,
        subject: row.try_get("subject")?,
        message_id: row.try_get("message_id")?,
        attempts: row.try_get("attempts")?,
        last_error: row.try_get("last_error")?,
        created_at_ms: row.try_get("created_at")?,
    })
}

/// Reads a claimed [`PendingRow`] (the PostgreSQL store's `row_columns!`, headers as JSON
/// text) from a row. (The SQLite store reads its batch as one JSON array instead.) Columns are
/// read by position, in `row_columns!`'s order: by name, each of the 13 columns of every
/// claimed row would be a hash lookup.
#[cfg(feature = "postgres")]
pub(crate) fn pending_row<R: Row>(row: &R) -> std::result::Result<PendingRow, sqlx::Error>
where
    usize: ColumnIndex<R>,
    for<'r> i32: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
{
    let stored = StoredMessage {
        exchange: row.try_get(2)?,
        routing_key: row.try_get(3)?,
        message_id: row.try_get(4)?,
        kind: row.try_get(5)?,
        content_type: row.try_get(6)?,
        correlation_id: row.try_get(7)?,
        timestamp: row.try_get(8)?,
        headers: row.try_get(9)?,
    };
    Ok(PendingRow {
        id: row.try_get(0)?,
        subject: row.try_get(1)?,
        message: stored.into_message(row.try_get(10)?),
        created_at_ms: row.try_get(11)?,
        attempts: row.try_get(12)?,
    })
}

/// A stored message's columns but its body, in the order the claims read them (headers as
/// JSON text); the SQLite claim reads them as one JSON array.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct StoredMessage {
    pub(crate) exchange: String,
    pub(crate) routing_key: String,
    pub(crate) message_id: String,
    pub(crate) kind: Option<String>,
    pub(crate) content_type: Option<String>,
    pub(crate) correlation_id: Option<String>,
    pub(crate) timestamp: Option<i64>,
    pub(crate) headers: String,
}

impl StoredMessage {
    /// Rebuilds the message, with `body`.
    pub(crate) fn into_message(
        self,
        body: Vec<u8>,
    ) -> std::result::Result<OutgoingMessage, String> {
        let headers: BTreeMap<String, HeaderValue> = serde_json::from_str(&self.headers)
            .map_err(|e| format!("stored headers are invalid: {e}"))?;
        let timestamp = match self.timestamp {
            Some(t) => {
                Some(u64::try_from(t).map_err(|_| format!("stored timestamp {t} is negative"))?)
            }
            None => None,
        };
        Ok(OutgoingMessage {
            exchange: self.exchange,
            routing_key: self.routing_key,
            message_id: Some(self.message_id),
            kind: self.kind,
            content_type: self.content_type,
            correlation_id: self.correlation_id,
            timestamp,
            headers,
            body,
        })
    }
}

/// Keeps only the candidates that are heads of their subject.
///
/// `candidates` are the rows a store reserved, in id order. `pending` lists, in id order, every
/// pending row id (with its subject) of the candidates' subjects up to the largest candidate id,
/// whoever holds it. `held` are the rows the claiming relay already has in flight. A candidate
/// is kept when every earlier pending row of its subject is held or itself a kept candidate:
/// the kept rows of a subject are then exactly the oldest pending rows of that subject after
/// the held ones, and publishing them in order, after the held ones, keeps the subject's commit
/// order. A row reserved by anyone else, or waiting for its retry time, blocks every later row
/// of its subject.
// The PostgreSQL claim applies the rule here; SQLite's applies it in its SQL.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn heads_only(
    candidates: Vec<PendingRow>,
    pending: &[(String, i64)],
    held: &HashSet<i64>,
) -> Vec<PendingRow> {
    let mut queues: HashMap<&str, VecDeque<i64>> = HashMap::new();
    for (subject, id) in pending {
        if !held.contains(id) {
            queues.entry(subject.as_str()).or_default().push_back(*id);
        }
    }
    let mut blocked: HashSet<String> = HashSet::new();
    let mut kept = Vec::with_capacity(candidates.len());
    for row in candidates {
        let Some(subject) = row.subject.as_deref() else {
            kept.push(row);
            continue;
        };
        if blocked.contains(subject) {
            continue;
        }
        match queues.get_mut(subject) {
            Some(queue) if queue.front() == Some(&row.id) => {
                queue.pop_front();
                kept.push(row);
            }
            _ => {
                blocked.insert(subject.to_owned());
            }
        }
    }
    kept
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A claimed row with an empty message (the relay's tests use it too).
    pub(crate) fn row(id: i64, subject: Option<&str>) -> PendingRow {
        PendingRow {
            id,
            subject: subject.map(str::to_owned),
            message: Ok(OutgoingMessage::new("x", "y", vec![])),
            created_at_ms: 0,
            attempts: 0,
        }
    }

    /// The pending rows `(subject, id)` a claim reads for the head rule.
    fn pending(rows: &[(&str, i64)]) -> Vec<(String, i64)> {
        rows.iter()
            .map(|&(subject, id)| (subject.to_owned(), id))
            .collect()
    }

    fn ids(rows: &[PendingRow]) -> Vec<i64> {
        rows.iter().map(|r| r.id).collect()
    }

    #[test]
    fn heads_keep_contiguous_prefixes_per_subject() {
        // a: 1, 3, 4 pending and all claimed; b: 2 pending but held elsewhere, 5 claimed.
        let candidates = vec![
            row(1, Some("a")),
            row(3, Some("a")),
            row(4, Some("a")),
            row(5, Some("b")),
            row(6, None),
        ];
        let pending = pending(&[("a", 1), ("b", 2), ("a", 3), ("a", 4), ("b", 5)]);
        assert_eq!(
            ids(&heads_only(candidates, &pending, &HashSet::new())),
            vec![1, 3, 4, 6]
        );
    }

    #[test]
    fn a_gap_blocks_the_rest_of_the_subject() {
        // a: 1 claimed, 2 pending but not claimed (backing off), 3 claimed -> only 1.
        let candidates = vec![row(1, Some("a")), row(3, Some("a"))];
        let pending = pending(&[("a", 1), ("a", 2), ("a", 3)]);
        assert_eq!(
            ids(&heads_only(candidates, &pending, &HashSet::new())),
            vec![1]
        );
    }

    #[test]
    fn rows_held_in_flight_do_not_block_their_successors() {
        // a: 1 and 2 in flight in this relay's earlier batches, 3 and 4 claimed now;
        // b: 5 reserved elsewhere (not held), 6 claimed -> blocked.
        let candidates = vec![row(3, Some("a")), row(4, Some("a")), row(6, Some("b"))];
        let pending = pending(&[("a", 1), ("a", 2), ("a", 3), ("a", 4), ("b", 5), ("b", 6)]);
        let held: HashSet<i64> = [1, 2].into();
        assert_eq!(
            ids(&heads_only(candidates.clone(), &pending, &held)),
            vec![3, 4]
        );
        // Without the held rows, nothing of `a` is a head either.
        assert!(heads_only(candidates, &pending, &HashSet::new()).is_empty());
    }

    #[test]
    fn a_candidate_missing_from_pending_is_dropped() {
        let candidates = vec![row(7, Some("a"))];
        assert!(heads_only(candidates, &[], &HashSet::new()).is_empty());
    }

    #[test]
    fn subject_and_id_come_from_the_message() {
        let msg = OutgoingMessage::new("x", "y", vec![]).header(SUBJECT_HEADER, "order-1");
        assert_eq!(subject_of(&msg), Some("order-1"));
        assert_eq!(message_id_of(&msg.clone().message_id("m1")), "m1");
        let generated = message_id_of(&msg);
        assert_eq!(
            uuid::Uuid::parse_str(&generated).unwrap().get_version_num(),
            7
        );
    }

    #[test]
    fn stored_headers_capture_the_current_trace_unless_one_is_set() {
        let msg = OutgoingMessage::new("x", "y", vec![]).header("a", "b");
        assert!(
            matches!(stored_headers(&msg), Cow::Borrowed(_)),
            "no context, no change"
        );

        let _guard = crate::test_support::sampled_context().attach();
        let stored = stored_headers(&msg);
        assert_eq!(
            stored[TRACEPARENT],
            HeaderValue::from("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert_eq!(stored["a"], HeaderValue::from("b"));

        let own = msg.clone().header(
            TRACEPARENT,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        );
        assert_eq!(
            *stored_headers(&own),
            own.headers,
            "the caller's context is kept"
        );
    }

    #[test]
    fn stored_parts_round_trip() {
        let stored = |headers: &str| StoredMessage {
            exchange: "ex".into(),
            routing_key: "rk".into(),
            message_id: "id".into(),
            kind: Some("t".into()),
            content_type: None,
            correlation_id: None,
            timestamp: Some(5),
            headers: headers.into(),
        };
        let msg = stored(r#"{"a":"b","n":1,"f":true}"#)
            .into_message(b"body".to_vec())
            .unwrap();
        assert_eq!(msg.headers["n"], HeaderValue::Int(1));
        assert_eq!(msg.timestamp, Some(5));
        assert_eq!(msg.message_id.as_deref(), Some("id"));
        assert!(stored("{").into_message(vec![]).is_err());
    }
}
