//! The PostgreSQL outbox store: [`PgOutbox`].
//!
//! - **Reserving rows**: a relay opens a transaction, selects due pending rows with
//!   `FOR UPDATE SKIP LOCKED` (other relays skip them instead of waiting), keeps the ones that
//!   head their subject (see below), publishes them, and deletes or marks them in the *same*
//!   transaction before committing. A relay that dies mid-batch loses its connection, the
//!   transaction rolls back and the rows are pending again: at-least-once, never lost.
//! - **Late commits**: the relay never keeps a cursor ("id > last seen"). It always reads every
//!   pending row in id order, so a row whose transaction committed late (with an id smaller
//!   than rows already published) is simply still pending and is picked up by the next batch.
//! - **Per-subject commit order**: `enqueue` first upserts the subject's row in
//!   `chassis_outbox_subjects`, taking its row lock until the writing transaction ends. Two
//!   transactions enqueueing events of one subject therefore serialize, and the later one draws
//!   its id only after the earlier one committed: within a subject, id order is commit order,
//!   without assuming anything about the application's own locking. A relay publishes a row
//!   only if every earlier pending row of its subject is in its own batch or in one of its own
//!   batches still in flight (published before it, in order: see
//!   [`Relay`](super::Relay)); a row locked by another relay or waiting for a retry blocks the
//!   rest of its subject, so two relays never publish one subject's events out of order.
//! - **Wake-up**: an `AFTER INSERT` statement trigger calls `pg_notify('chassis_outbox',
//!   current_schema())`, which PostgreSQL delivers only when the transaction commits; the relay
//!   `LISTEN`s on a dedicated pool connection and polls as a fallback.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chassis_core::BoxError;
use chassis_core::health::{BoxFuture, HealthCheck};
use sqlx::postgres::{PgConnection, PgListener, PgPool, Postgres};
use sqlx::types::Json;
use sqlx::{Row, Transaction};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::store::{
    OutboxStats, OutboxStore, PendingRow, RowOutcome, STATS_SQL, STATUS_PARKED, STATUS_PENDING,
    SentPolicy, db_err, heads_only, message_id_of, now_ms, parked_row, pending_row,
    stats_from_rows, stored_headers, subject_of,
};
use super::{MIGRATIONS_TABLE, ParkedRow};
use crate::envelope::Envelope;
use crate::error::{Error, ErrorKind, Result};
use crate::message::OutgoingMessage;

/// The channel the outbox trigger notifies on.
pub const NOTIFY_CHANNEL: &str = "chassis_outbox";

macro_rules! row_columns {
    () => {
        "o.id, o.subject, m.exchange, m.routing_key, o.message_id, m.amqp_type, m.content_type, \
         m.correlation_id, m.amqp_timestamp, m.headers::text AS headers, m.body, o.created_at, \
         o.attempts"
    };
}

/// Applies the chassis-messaging migrations (outbox and inbox tables, the notify trigger) to a
/// PostgreSQL database, in the first schema of the connection's `search_path`.
///
/// Idempotent and safe to run from several replicas at once (sqlx takes an advisory lock);
/// tracked in its own table `_chassis_messaging_migrations`, so it never interferes with the
/// application's `sqlx::migrate!()` history.
pub async fn migrate(pool: &PgPool) -> Result<()> {
    let mut migrator = sqlx::migrate!("./migrations/postgres");
    migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
    migrator
        .run(pool)
        .await
        .map_err(|e| Error::with_source(ErrorKind::Database, e))
}

/// The outbox on a PostgreSQL database. Cheap to clone: clones share the pool and the
/// in-process commit signal.
///
/// A running relay holds one pool connection for `LISTEN` and one per batch in flight: size
/// the pool for it.
#[derive(Debug, Clone)]
pub struct PgOutbox {
    pool: PgPool,
    notify: Arc<Notify>,
}

/// The reservation of one PostgreSQL batch: the transaction holding the row locks.
#[derive(Debug)]
pub struct PgClaim {
    tx: Option<Transaction<'static, Postgres>>,
}

impl PgOutbox {
    /// An outbox on `pool`. Call [`migrate`](Self::migrate) once at startup.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            notify: Arc::new(Notify::new()),
        }
    }

    /// The pool this outbox uses.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates the outbox and inbox tables if needed (see [`migrate`]).
    pub async fn migrate(&self) -> Result<()> {
        migrate(&self.pool).await
    }

    /// Writes `msg` into the outbox inside the caller's transaction (pass `&mut tx`).
    ///
    /// The ordering key is the message's `cloudEvents:subject` header, if any. Returns the
    /// message id stored with the row (the message's own, or a fresh UUID v7). Relays wake
    /// when the transaction commits (`NOTIFY`); nothing is published if it rolls back.
    ///
    /// Unless `msg` already carries a `traceparent` header, the trace context of the current
    /// span (`traceparent`, `tracestate`, `baggage`) is stored with the row, and the relay
    /// publishes the row as part of that trace: the consumer continues the trace of the
    /// transaction that enqueued it.
    pub async fn enqueue(&self, conn: &mut PgConnection, msg: &OutgoingMessage) -> Result<String> {
        self.enqueue_with_subject(conn, subject_of(msg), msg).await
    }

    /// Encodes `event` for `exchange` ([`Envelope::to_message`]: binary-mode CloudEvents, the
    /// event type as routing key, the envelope id as `message_id`) and enqueues it; the
    /// envelope's `subject` is the ordering key.
    pub async fn enqueue_event<T: serde::Serialize>(
        &self,
        conn: &mut PgConnection,
        exchange: &str,
        event: &Envelope<T>,
    ) -> Result<String> {
        self.enqueue(conn, &event.to_message(exchange)?).await
    }

    /// Like [`enqueue`](Self::enqueue) with an explicit ordering key: messages of one
    /// `subject` are published in commit order; `None` means no ordering constraint.
    ///
    /// With a subject, this locks the subject's bookkeeping row until the transaction ends:
    /// concurrent transactions enqueueing for the same subject wait for each other (they
    /// usually already do, on the aggregate's own row).
    pub async fn enqueue_with_subject(
        &self,
        conn: &mut PgConnection,
        subject: Option<&str>,
        msg: &OutgoingMessage,
    ) -> Result<String> {
        let message_id = message_id_of(msg);
        let timestamp = msg
            .timestamp
            .map(i64::try_from)
            .transpose()
            .map_err(|e| Error::with_source(ErrorKind::Serialization, e))?;
        let now = now_ms();
        if let Some(subject) = subject {
            sqlx::query(
                "INSERT INTO chassis_outbox_subjects (subject, last_enqueued_at) VALUES ($1, $2) \
                 ON CONFLICT (subject) DO UPDATE SET last_enqueued_at = EXCLUDED.last_enqueued_at",
            )
            .bind(subject)
            .bind(now)
            .execute(&mut *conn)
            .await
            .map_err(db_err)?;
        }
        sqlx::query(
            "WITH row AS (INSERT INTO chassis_outbox (subject, message_id, created_at, \
             available_at) VALUES ($1, $4, $11, $11) RETURNING id) \
             INSERT INTO chassis_outbox_messages (id, exchange, routing_key, amqp_type, \
             content_type, correlation_id, amqp_timestamp, headers, body) \
             SELECT id, $2, $3, $5, $6, $7, $8, $9, $10 FROM row",
        )
        .bind(subject)
        .bind(&msg.exchange)
        .bind(&msg.routing_key)
        .bind(&message_id)
        .bind(msg.kind.as_deref())
        .bind(msg.content_type.as_deref())
        .bind(msg.correlation_id.as_deref())
        .bind(timestamp)
        .bind(Json(&*stored_headers(msg)))
        .bind(&msg.body)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
        Ok(message_id)
    }

    /// Commits `tx` and wakes this process's relays directly (the trigger's `NOTIFY` wakes
    /// every relay anyway; this only saves the round trip through the listener).
    pub async fn commit(&self, tx: Transaction<'_, Postgres>) -> Result<()> {
        tx.commit().await.map_err(db_err)?;
        self.notify_committed();
        Ok(())
    }

    /// Wakes the relays of this process.
    pub fn notify_committed(&self) {
        self.notify.notify_one();
    }

    /// Parked rows (oldest first, at most `limit`), with the error that parked them.
    pub async fn parked(&self, limit: i64) -> Result<Vec<ParkedRow>> {
        let rows = sqlx::query(
            "SELECT id, subject, message_id, attempts, last_error, created_at FROM chassis_outbox \
             WHERE status = 'parked' ORDER BY id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(parked_row)
            .collect::<std::result::Result<_, _>>()
            .map_err(db_err)
    }

    /// Puts every parked row back to pending with a fresh attempt count (after the cause was
    /// fixed). Returns how many rows were requeued.
    pub async fn requeue_parked(&self) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE chassis_outbox SET status = 'pending', attempts = 0, available_at = $1 \
             WHERE status = 'parked'",
        )
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        self.notify_committed();
        Ok(done.rows_affected())
    }
}

impl OutboxStore for PgOutbox {
    type Claim = PgClaim;

    async fn claim(
        &self,
        limit: usize,
        _lease: Duration,
        held: &HashSet<i64>,
    ) -> Result<(PgClaim, Vec<PendingRow>)> {
        let now = now_ms();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // The claim must walk `chassis_outbox_pending` in id order and stop after `limit` rows.
        // Without fresh statistics (a table that just filled up, before autovacuum analyzed
        // it) the planner guesses a handful of pending rows and instead anti-joins and sorts
        // every pending row, spilling to disk: 50 ms instead of 2 for a 20 000-row backlog.
        // No plan of these queries needs a sort, so forbid it for this transaction.
        // `synchronous_commit = off`: the relay's commit (the batch's outcomes) does not wait
        // for its WAL to reach the disk. A database crash may then lose the last few hundred
        // milliseconds of outcomes: those rows are pending again and published once more (a
        // duplicate the inbox absorbs), or tried again; nothing is lost, and the writers'
        // own transactions keep the server's setting. Both are sent with the BEGIN, in the
        // same round trip.
        let mut tx = self
            .pool
            .begin_with("BEGIN; SET LOCAL enable_sort = off; SET LOCAL synchronous_commit = off")
            .await
            .map_err(db_err)?;
        // Rows behind a row that waits for its retry time are left out here (they could not be
        // published anyway), so a backing-off head does not fill every batch with rows that
        // are dropped and starve other subjects. Only a failed row (`attempts > 0`) has a
        // future `available_at`; saying so lets the planner use the small partial index
        // `chassis_outbox_retrying` instead of scanning the table. (A row from a writer whose
        // clock runs ahead is not covered here, but `heads_only` still drops what it blocks.)
        let rows = sqlx::query(concat!(
            "SELECT ",
            row_columns!(),
            " FROM chassis_outbox o JOIN chassis_outbox_messages m ON m.id = o.id \
             WHERE o.status = 'pending' AND o.available_at <= $1 \
             AND NOT EXISTS (SELECT 1 FROM chassis_outbox p WHERE p.status = 'pending' \
                AND p.attempts > 0 AND p.subject = o.subject AND p.id < o.id \
                AND p.available_at > $1) \
             ORDER BY o.id LIMIT $2 FOR UPDATE OF o SKIP LOCKED"
        ))
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        let candidates = rows
            .iter()
            .map(pending_row)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(db_err)?;
        let subjects: Vec<String> = candidates
            .iter()
            .filter_map(|r| r.subject.clone())
            .collect();
        let mut pending: Vec<(String, i64)> = if subjects.is_empty() {
            Vec::new()
        } else {
            // Read after locking: a row seen pending here is either ours or unpublished (a
            // relay deletes or marks rows only after the broker confirmed them).
            let max_id = candidates.last().map(|r| r.id).unwrap_or_default();
            sqlx::query(
                "SELECT subject, id FROM chassis_outbox WHERE status = 'pending' \
                 AND subject = ANY($1) AND id <= $2",
            )
            .bind(&subjects)
            .bind(max_id)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?
            .iter()
            .map(|r| Ok((r.try_get("subject")?, r.try_get("id")?)))
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(db_err)?
        };
        // Sorted here rather than in SQL, where the sort would rule out the index-only scan
        // of `chassis_outbox_subject_pending`.
        pending.sort_unstable_by_key(|(_, id)| *id);
        let kept = heads_only(candidates, &pending, held);
        Ok((PgClaim { tx: Some(tx) }, kept))
    }

    async fn finish(
        &self,
        mut claim: PgClaim,
        outcomes: Vec<(i64, RowOutcome)>,
        sent: SentPolicy,
    ) -> Result<()> {
        let Some(mut tx) = claim.tx.take() else {
            return Ok(());
        };
        let sent_ids: Vec<i64> = outcomes
            .iter()
            .filter(|(_, o)| *o == RowOutcome::Sent)
            .map(|(id, _)| *id)
            .collect();
        if !sent_ids.is_empty() {
            match sent {
                SentPolicy::Delete => {
                    sqlx::query("DELETE FROM chassis_outbox WHERE id = ANY($1)")
                        .bind(&sent_ids)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                }
                SentPolicy::Mark => {
                    sqlx::query(
                        "UPDATE chassis_outbox SET status = 'sent', sent_at = $1 WHERE id = ANY($2)",
                    )
                    .bind(now_ms())
                    .bind(&sent_ids)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                }
            }
        }
        for (id, outcome) in &outcomes {
            if let RowOutcome::Failed {
                attempts,
                error,
                park,
                retry_at_ms,
            } = outcome
            {
                sqlx::query(
                    "UPDATE chassis_outbox SET attempts = $1, last_error = $2, status = $3, \
                     available_at = $4 WHERE id = $5",
                )
                .bind(attempts)
                .bind(error)
                .bind(if *park { STATUS_PARKED } else { STATUS_PENDING })
                .bind(retry_at_ms)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            }
        }
        // Released rows need nothing: committing drops their locks.
        tx.commit().await.map_err(db_err)
    }

    async fn stats(&self) -> Result<OutboxStats> {
        let rows = sqlx::query(STATS_SQL)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        stats_from_rows(&rows).map_err(db_err)
    }

    async fn purge_sent(&self, sent_before_ms: i64) -> Result<u64> {
        let done = sqlx::query("DELETE FROM chassis_outbox WHERE status = 'sent' AND sent_at < $1")
            .bind(sent_before_ms)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        // A subject row being upserted right now is locked; the DELETE waits and then re-checks
        // `last_enqueued_at`, which the upsert just refreshed, so a live subject is never lost.
        sqlx::query("DELETE FROM chassis_outbox_subjects WHERE last_enqueued_at < $1")
            .bind(sent_before_ms)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(done.rows_affected())
    }

    fn notifier(&self) -> Arc<Notify> {
        self.notify.clone()
    }

    async fn watch(&self, notify: Arc<Notify>, token: CancellationToken) {
        let retry = Duration::from_secs(1);
        loop {
            if token.is_cancelled() {
                return;
            }
            match self.listen(&notify, &token).await {
                Ok(()) => return,
                Err(err) => {
                    tracing::warn!(error = %err, "outbox LISTEN failed; polling until it is back");
                    // Something may have committed while nobody listened.
                    notify.notify_one();
                    tokio::select! {
                        () = token.cancelled() => return,
                        () = tokio::time::sleep(retry) => {}
                    }
                }
            }
        }
    }
}

impl PgOutbox {
    /// Listens until cancelled (`Ok`) or the listener fails (`Err`).
    async fn listen(
        &self,
        notify: &Notify,
        token: &CancellationToken,
    ) -> std::result::Result<(), sqlx::Error> {
        let schema: Option<String> = sqlx::query_scalar("SELECT current_schema()::text")
            .fetch_one(&self.pool)
            .await?;
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(NOTIFY_CHANNEL).await?;
        // Anything committed before LISTEN took effect is found by this first poll.
        notify.notify_one();
        loop {
            tokio::select! {
                () = token.cancelled() => return Ok(()),
                received = listener.try_recv() => match received? {
                    Some(n) if schema.as_deref().is_none_or(|s| s == n.payload()) => notify.notify_one(),
                    Some(_) => {}
                    // The connection dropped; try_recv reconnects (and re-LISTENs) on the next
                    // call. Notifications sent meanwhile are lost: poll now.
                    None => notify.notify_one(),
                },
            }
        }
    }
}

impl HealthCheck for PgOutbox {
    fn name(&self) -> &str {
        "outbox-postgres"
    }

    fn check(&self) -> BoxFuture<'_, std::result::Result<(), BoxError>> {
        Box::pin(async move {
            sqlx::query("SELECT 1").execute(&self.pool).await?;
            Ok(())
        })
    }
}
