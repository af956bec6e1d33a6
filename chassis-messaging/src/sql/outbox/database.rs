//! [`Outbox`]: the outbox on one database, and [`OutboxDatabase`], what each database supplies.
//!
//! Everything a service calls (`enqueue`, `commit`, `parked`, ...) is written once here, over
//! any database; the SQL, and how a relay reserves rows, is each database's own (see the
//! modules `sqlite` and `postgres`).

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chassis_core::BoxError;
use chassis_core::health::{BoxFuture, HealthCheck};
use sqlx::{Pool, Transaction};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::store::{
    OutboxStats, OutboxStore, ParkedRow, PendingRow, RowOutcome, SentPolicy, message_id_of,
    stored_headers, subject_of,
};
use crate::envelope::Envelope;
use crate::error::{Error, ErrorKind, Result};
use crate::message::{HeaderValue, OutgoingMessage};
use crate::sql::schema::{SchemaDatabase, db_err, now_ms};

/// A database the outbox works on: implemented for SQLite and PostgreSQL (per enabled
/// feature).
///
/// The methods are the outbox's plumbing, each database's own SQL; services use them through
/// [`Outbox`], and the [`Relay`](super::Relay) through [`OutboxStore`].
pub trait OutboxDatabase: SchemaDatabase {
    /// What an outbox keeps for this database besides its pool and its wake-up signal, shared
    /// by clones (SQLite: the relay's write queue, its lease owner and its claim cap).
    type State: Clone + fmt::Debug + Send + Sync + 'static;

    /// The reservation of one claimed batch (see [`OutboxStore::Claim`]).
    type Claim: Send + 'static;

    /// The name the outbox's [`HealthCheck`] reports.
    const CHECK_NAME: &'static str;

    /// The state of a new outbox.
    fn new_state() -> Self::State;

    /// Inserts `row` (its bookkeeping row and its message) through `conn`, the caller's
    /// transaction.
    fn insert(
        conn: &mut Self::Connection,
        row: &NewRow<'_>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Parked rows, oldest first, at most `limit`.
    fn parked(pool: &Pool<Self>, limit: i64)
    -> impl Future<Output = Result<Vec<ParkedRow>>> + Send;

    /// Puts every parked row back to pending, due at `now_ms`, with no attempts; returns how
    /// many.
    fn requeue_parked(pool: &Pool<Self>, now_ms: i64) -> impl Future<Output = Result<u64>> + Send;

    /// Puts the parked row `id` back to pending, as [`requeue_parked`](Self::requeue_parked);
    /// `false` when no parked row has that id.
    fn requeue_parked_row(
        pool: &Pool<Self>,
        id: i64,
        now_ms: i64,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// [`OutboxStore::claim`] on this database.
    fn claim(
        pool: &Pool<Self>,
        state: &Self::State,
        limit: usize,
        lease: Duration,
        held: &HashSet<i64>,
    ) -> impl Future<Output = Result<(Self::Claim, Vec<PendingRow>)>> + Send;

    /// [`OutboxStore::renew`] on this database; by default nothing (reservations that end
    /// with their holder, as PostgreSQL's row locks do).
    fn renew(
        pool: &Pool<Self>,
        state: &Self::State,
        held: &HashSet<i64>,
        lease: Duration,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (pool, state, held, lease);
        async { Ok(()) }
    }

    /// [`OutboxStore::finish`] on this database.
    fn finish(
        pool: &Pool<Self>,
        state: &Self::State,
        claim: Self::Claim,
        outcomes: Vec<(i64, RowOutcome)>,
        sent: SentPolicy,
    ) -> impl Future<Output = Result<()>> + Send;

    /// [`OutboxStore::stats`] on this database.
    fn stats(pool: &Pool<Self>) -> impl Future<Output = Result<OutboxStats>> + Send;

    /// [`OutboxStore::purge_sent`] on this database.
    fn purge_sent(
        pool: &Pool<Self>,
        sent_before_ms: i64,
    ) -> impl Future<Output = Result<u64>> + Send;

    /// [`OutboxStore::watch`] on this database.
    fn watch(
        pool: &Pool<Self>,
        notify: Arc<Notify>,
        token: CancellationToken,
    ) -> impl Future<Output = ()> + Send;

    /// One round trip to the database, for the health check.
    fn ping(pool: &Pool<Self>)
    -> impl Future<Output = std::result::Result<(), sqlx::Error>> + Send;
}

/// One event to write, as [`OutboxDatabase::insert`] receives it: the message and what
/// [`Outbox::enqueue`] derived from it.
#[derive(Debug)]
#[non_exhaustive]
pub struct NewRow<'a> {
    /// The ordering key.
    pub subject: Option<&'a str>,
    /// The message id stored with the row (the message's own, or a fresh one).
    pub message_id: &'a str,
    /// The message: exchange, routing key, properties and body are stored as they are.
    pub message: &'a OutgoingMessage,
    /// The headers to store: the message's own, plus the enqueuer's trace context.
    pub headers: &'a BTreeMap<String, HeaderValue>,
    /// The message's AMQP timestamp, in the column's type.
    pub timestamp: Option<i64>,
    /// Now (Unix epoch milliseconds): when the row was written, and when it is first due.
    pub created_at_ms: i64,
}

/// Runs the insert `sql` with a [`NewRow`]'s columns bound as `$1` to `$11`: subject,
/// exchange, routing key, message id, type, content type, correlation id, timestamp,
/// headers (JSON), body, created at.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
macro_rules! insert_row {
    ($conn:expr, $sql:expr, $row:expr) => {{
        let row: &NewRow<'_> = $row;
        let msg = row.message;
        $crate::sql::schema::execute!(
            $conn,
            $sql,
            row.subject,
            &msg.exchange,
            &msg.routing_key,
            row.message_id,
            msg.kind.as_deref(),
            msg.content_type.as_deref(),
            msg.correlation_id.as_deref(),
            row.timestamp,
            sqlx::types::Json(row.headers),
            &msg.body,
            row.created_at_ms,
        )
    }};
}
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(super) use insert_row;

// The methods whose statements are the same on both databases (SQLite reads `$n` as numbered
// parameters too). `requeue_clears` is what else a requeued row's SET clause clears (SQLite's
// lease); `purge_also` the statements `purge_sent` runs after deleting the sent rows, with the
// same cutoff as `$1`.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
macro_rules! shared_methods {
    (requeue_clears: $clears:literal, purge_also: [$($purge_also:literal),*]) => {
        async fn purge_sent(
            pool: &sqlx::Pool<Self>,
            sent_before_ms: i64,
        ) -> $crate::error::Result<u64> {
            let purged = $crate::sql::schema::execute!(
                pool,
                "DELETE FROM chassis_outbox WHERE status = 'sent' AND sent_at < $1",
                sent_before_ms
            )?;
            $( $crate::sql::schema::execute!(pool, $purge_also, sent_before_ms)?; )*
            Ok(purged)
        }

        async fn parked(
            pool: &sqlx::Pool<Self>,
            limit: i64,
        ) -> $crate::error::Result<Vec<$crate::sql::outbox::ParkedRow>> {
            let rows = sqlx::query(
                "SELECT id, subject, message_id, attempts, last_error, created_at \
                 FROM chassis_outbox WHERE status = 'parked' ORDER BY id LIMIT $1",
            )
            .bind(limit)
            .fetch_all(pool)
            .await
            .map_err($crate::sql::schema::db_err)?;
            rows.iter()
                .map($crate::sql::outbox::store::parked_row)
                .collect::<std::result::Result<_, _>>()
                .map_err($crate::sql::schema::db_err)
        }

        async fn requeue_parked(pool: &sqlx::Pool<Self>, now: i64) -> $crate::error::Result<u64> {
            let sql = concat!(
                "UPDATE chassis_outbox SET status = 'pending', attempts = 0, available_at = $1",
                $clears,
                " WHERE status = 'parked'"
            );
            $crate::sql::schema::execute!(pool, sql, now)
        }

        async fn requeue_parked_row(
            pool: &sqlx::Pool<Self>,
            id: i64,
            now: i64,
        ) -> $crate::error::Result<bool> {
            let sql = concat!(
                "UPDATE chassis_outbox SET status = 'pending', attempts = 0, available_at = $1",
                $clears,
                " WHERE status = 'parked' AND id = $2"
            );
            Ok($crate::sql::schema::execute!(pool, sql, now, id)? == 1)
        }

        async fn stats(
            pool: &sqlx::Pool<Self>,
        ) -> $crate::error::Result<$crate::sql::outbox::OutboxStats> {
            let rows = sqlx::query($crate::sql::outbox::store::STATS_SQL)
                .fetch_all(pool)
                .await
                .map_err($crate::sql::schema::db_err)?;
            $crate::sql::outbox::store::stats_from_rows(&rows).map_err($crate::sql::schema::db_err)
        }

        async fn ping(pool: &sqlx::Pool<Self>) -> std::result::Result<(), sqlx::Error> {
            sqlx::query("SELECT 1").execute(pool).await?;
            Ok(())
        }
    };
}
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(super) use shared_methods;

/// The outbox on one database. Cheap to clone: clones share the pool and the commit signal.
///
/// `Outbox<Sqlite>` is also `SqliteOutbox`, `Outbox<Postgres>` `PgOutbox`; what only one
/// database has is an inherent method there (`SqliteOutbox::claim_bytes`). A running
/// PostgreSQL relay holds one pool connection for `LISTEN` and one per batch in flight: size
/// the pool for it.
pub struct Outbox<DB: OutboxDatabase> {
    pool: Pool<DB>,
    notify: Arc<Notify>,
    pub(super) state: DB::State,
}

impl<DB: OutboxDatabase> Clone for Outbox<DB> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            notify: self.notify.clone(),
            state: self.state.clone(),
        }
    }
}

impl<DB: OutboxDatabase> fmt::Debug for Outbox<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox")
            .field("pool", &self.pool)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl<DB: OutboxDatabase> Outbox<DB> {
    /// An outbox on `pool`. Call [`migrate`](Self::migrate) once at startup.
    pub fn new(pool: Pool<DB>) -> Self {
        Self {
            pool,
            notify: Arc::new(Notify::new()),
            state: DB::new_state(),
        }
    }

    /// The pool this outbox uses.
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }

    /// Creates the outbox and inbox tables if needed (see [`schema`](crate::sql::schema)).
    pub async fn migrate(&self) -> Result<()> {
        DB::migrate(&self.pool).await
    }

    /// Writes `msg` into the outbox inside the caller's transaction (pass `&mut tx`).
    ///
    /// The ordering key is the message's `cloudEvents:subject` header, if any. Returns the
    /// message id stored with the row (the message's own, or a fresh UUID v7), which is also
    /// the AMQP `message_id` the consumer's inbox deduplicates on. Nothing is published unless
    /// the transaction commits. On PostgreSQL relays wake when it commits (`NOTIFY`); SQLite
    /// has no such signal, so commit with [`commit`](Self::commit), or call
    /// [`notify_committed`](Self::notify_committed) after committing, and the relay wakes at
    /// once instead of at its next poll.
    ///
    /// Unless `msg` already carries a `traceparent` header, the trace context of the current
    /// span (`traceparent`, `tracestate`, `baggage`) is stored with the row, and the relay
    /// publishes the row as part of that trace: the consumer continues the trace of the
    /// transaction that enqueued it.
    pub async fn enqueue(
        &self,
        conn: &mut DB::Connection,
        msg: &OutgoingMessage,
    ) -> Result<String> {
        self.enqueue_with_subject(conn, subject_of(msg), msg).await
    }

    /// Encodes `event` for `exchange` ([`Envelope::to_message`]: binary-mode CloudEvents, the
    /// event type as routing key, the envelope id as `message_id`) and enqueues it; the
    /// envelope's `subject` is the ordering key.
    pub async fn enqueue_event<T: serde::Serialize>(
        &self,
        conn: &mut DB::Connection,
        exchange: &str,
        event: &Envelope<T>,
    ) -> Result<String> {
        self.enqueue(conn, &event.to_message(exchange)?).await
    }

    /// Like [`enqueue`](Self::enqueue) with an explicit ordering key: messages of one
    /// `subject` are published in commit order; `None` means no ordering constraint.
    ///
    /// On PostgreSQL a subject's bookkeeping row stays locked until the transaction ends:
    /// concurrent transactions enqueueing for the same subject wait for each other (they
    /// usually already do, on the aggregate's own row).
    pub async fn enqueue_with_subject(
        &self,
        conn: &mut DB::Connection,
        subject: Option<&str>,
        msg: &OutgoingMessage,
    ) -> Result<String> {
        let message_id = message_id_of(msg);
        let headers = stored_headers(msg);
        let timestamp = msg
            .timestamp
            .map(i64::try_from)
            .transpose()
            .map_err(|e| Error::with_source(ErrorKind::Serialization, e))?;
        let row = NewRow {
            subject,
            message_id: &message_id,
            message: msg,
            headers: &headers,
            timestamp,
            created_at_ms: now_ms(),
        };
        DB::insert(conn, &row).await?;
        Ok(message_id)
    }

    /// Commits `tx` and wakes this process's relays (on PostgreSQL the trigger's `NOTIFY`
    /// wakes every relay anyway; this only saves the round trip through the listener).
    pub async fn commit(&self, tx: Transaction<'_, DB>) -> Result<()> {
        tx.commit().await.map_err(db_err)?;
        self.notify_committed();
        Ok(())
    }

    /// Wakes the relays of this process: call after committing a transaction that enqueued.
    /// Harmless when nothing was enqueued.
    pub fn notify_committed(&self) {
        self.notify.notify_one();
    }

    /// Parked rows (oldest first, at most `limit`), with the error that parked them.
    pub async fn parked(&self, limit: i64) -> Result<Vec<ParkedRow>> {
        DB::parked(&self.pool, limit).await
    }

    /// Puts every parked row back to pending with a fresh attempt count (after the cause was
    /// fixed, e.g. the missing binding declared). Returns how many rows were requeued.
    pub async fn requeue_parked(&self) -> Result<u64> {
        let requeued = DB::requeue_parked(&self.pool, now_ms()).await?;
        self.notify_committed();
        Ok(requeued)
    }

    /// Puts the parked row `id` back to pending with a fresh attempt count; `false` when no
    /// parked row has that id (already requeued, sent, or never parked).
    pub async fn requeue_parked_row(&self, id: i64) -> Result<bool> {
        let requeued = DB::requeue_parked_row(&self.pool, id, now_ms()).await?;
        self.notify_committed();
        Ok(requeued)
    }
}

impl<DB: OutboxDatabase> OutboxStore for Outbox<DB> {
    type Claim = DB::Claim;

    fn claim(
        &self,
        limit: usize,
        lease: Duration,
        held: &HashSet<i64>,
    ) -> impl Future<Output = Result<(DB::Claim, Vec<PendingRow>)>> + Send {
        DB::claim(&self.pool, &self.state, limit, lease, held)
    }

    fn renew(
        &self,
        held: &HashSet<i64>,
        lease: Duration,
    ) -> impl Future<Output = Result<()>> + Send {
        DB::renew(&self.pool, &self.state, held, lease)
    }

    fn finish(
        &self,
        claim: DB::Claim,
        outcomes: Vec<(i64, RowOutcome)>,
        sent: SentPolicy,
    ) -> impl Future<Output = Result<()>> + Send {
        DB::finish(&self.pool, &self.state, claim, outcomes, sent)
    }

    fn stats(&self) -> impl Future<Output = Result<OutboxStats>> + Send {
        DB::stats(&self.pool)
    }

    fn purge_sent(&self, sent_before_ms: i64) -> impl Future<Output = Result<u64>> + Send {
        DB::purge_sent(&self.pool, sent_before_ms)
    }

    fn notifier(&self) -> Arc<Notify> {
        self.notify.clone()
    }

    fn watch(
        &self,
        notify: Arc<Notify>,
        token: CancellationToken,
    ) -> impl Future<Output = ()> + Send {
        DB::watch(&self.pool, notify, token)
    }
}

impl<DB: OutboxDatabase> HealthCheck for Outbox<DB> {
    fn name(&self) -> &str {
        DB::CHECK_NAME
    }

    fn check(&self) -> BoxFuture<'_, std::result::Result<(), BoxError>> {
        Box::pin(async move {
            DB::ping(&self.pool).await?;
            Ok(())
        })
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use sqlx::Sqlite;
    use sqlx::sqlite::SqlitePoolOptions;

    use super::*;
    use crate::sql::outbox::SUBJECT_HEADER;

    async fn outbox() -> Outbox<Sqlite> {
        // One connection: every connection to `sqlite::memory:` is a database of its own.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        let outbox = Outbox::new(pool);
        outbox.migrate().await.unwrap();
        outbox
    }

    async fn rows(outbox: &Outbox<Sqlite>) -> Vec<(String, Option<String>)> {
        sqlx::query_as("SELECT message_id, subject FROM chassis_outbox ORDER BY id")
            .fetch_all(outbox.pool())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn enqueue_keys_the_row_by_the_subject_header_or_the_explicit_subject() {
        let outbox = outbox().await;
        let msg = OutgoingMessage::new("ex", "rk", b"{}".to_vec()).header(SUBJECT_HEADER, "o-1");
        let mut tx = outbox.pool().begin().await.unwrap();
        let generated = outbox.enqueue(&mut tx, &msg).await.unwrap();
        let own = msg.clone().message_id("m-2");
        let kept = outbox
            .enqueue_with_subject(&mut tx, None, &own)
            .await
            .unwrap();
        outbox.commit(tx).await.unwrap();

        assert_eq!(kept, "m-2", "the message's own id is kept");
        assert_eq!(
            rows(&outbox).await,
            [(generated, Some("o-1".to_owned())), (kept, None)]
        );
    }

    #[tokio::test]
    async fn a_timestamp_beyond_the_column_fails_before_anything_is_written() {
        let outbox = outbox().await;
        let mut msg = OutgoingMessage::new("ex", "rk", vec![]);
        msg.timestamp = Some(u64::MAX);
        let mut conn = outbox.pool().acquire().await.unwrap();
        let err = outbox.enqueue(&mut conn, &msg).await.unwrap_err();
        drop(conn);

        assert_eq!(err.kind(), &ErrorKind::Serialization);
        assert!(rows(&outbox).await.is_empty());
    }

    #[tokio::test]
    async fn requeue_wakes_the_relay_and_the_health_check_names_the_database() {
        let outbox = outbox().await;
        let woken = outbox.notifier();
        assert_eq!(outbox.requeue_parked().await.unwrap(), 0);
        // `notify_one` stored a permit: the relay's next wait returns at once.
        woken.notified().await;
        assert_eq!(outbox.name(), "outbox-sqlite");
        outbox.check().await.unwrap();
    }
}
