//! The outbox on PostgreSQL: [`PgOutbox`], `Outbox<Postgres>`.
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
//!   `chassis_outbox_subjects` (in the same statement as the row's insert, which depends on
//!   it), taking its row lock until the writing transaction ends. Two
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
//!
//! A running relay holds one pool connection for `LISTEN` and one per batch in flight: size
//! the pool for it.
//!
//! # Example
//! ```no_run
//! use chassis_messaging::sql::outbox::PgOutbox;
//! use chassis_messaging::OutgoingMessage;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/shop").await?;
//! let outbox = PgOutbox::new(pool.clone());
//! outbox.migrate().await?;
//!
//! let mut tx = pool.begin().await?;
//! let event = OutgoingMessage::new("shop.events", "order.placed", br#"{"id":"42"}"#.to_vec())
//!     .header("cloudEvents:subject", "order-42");
//! outbox.enqueue(&mut tx, &event).await?;
//! tx.commit().await?; // the trigger's NOTIFY wakes every relay on this database
//! # Ok(()) }
//! ```

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnection, PgListener, PgPool, Postgres};
use sqlx::{Row, Transaction};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::database::{NewRow, Outbox, OutboxDatabase, insert_row, shared_methods};
use super::store::{
    PendingRow, RowOutcome, STATUS_PARKED, STATUS_PENDING, SentPolicy, heads_only, pending_row,
};
use crate::error::Result;
use crate::sql::schema::{db_err, now_ms};

/// The outbox on a PostgreSQL database.
pub type PgOutbox = Outbox<Postgres>;

/// The channel the outbox trigger notifies on.
pub const NOTIFY_CHANNEL: &str = "chassis_outbox";

// Read by position in `pending_row`: keep the order.
macro_rules! row_columns {
    () => {
        "o.id, o.subject, m.exchange, m.routing_key, o.message_id, m.amqp_type, m.content_type, \
         m.correlation_id, m.amqp_timestamp, m.headers::text AS headers, m.body, o.created_at, \
         o.attempts"
    };
}

/// The reservation of one PostgreSQL batch: the transaction holding the row locks.
#[derive(Debug)]
pub struct PgClaim {
    tx: Option<Transaction<'static, Postgres>>,
}

impl OutboxDatabase for Postgres {
    type State = ();
    type Claim = PgClaim;

    const CHECK_NAME: &'static str = "outbox-postgres";

    fn new_state() {}

    async fn insert(conn: &mut PgConnection, row: &NewRow<'_>) -> Result<()> {
        // One statement, one round trip. With a subject, the subject's row is upserted first
        // and the outbox row is built from what that upsert returns: the INSERT cannot form
        // its row (nor draw its id from the sequence, a column default evaluated per row)
        // before the upsert has produced it, that is before it holds the subject's row lock.
        // The id is therefore drawn under the lock, as with two separate statements.
        // The message of the row the `row` CTE inserted.
        macro_rules! insert_message {
            () => {
                "INSERT INTO chassis_outbox_messages (id, exchange, routing_key, amqp_type, \
                 content_type, correlation_id, amqp_timestamp, headers, body) \
                 SELECT id, $2, $3, $5, $6, $7, $8, $9, $10 FROM row"
            };
        }
        let sql = if row.subject.is_some() {
            concat!(
                "WITH s AS (INSERT INTO chassis_outbox_subjects (subject, last_enqueued_at) \
                 VALUES ($1, $11) ON CONFLICT (subject) \
                 DO UPDATE SET last_enqueued_at = EXCLUDED.last_enqueued_at RETURNING subject), \
                 row AS (INSERT INTO chassis_outbox (subject, message_id, created_at, \
                 available_at) SELECT s.subject, $4, $11, $11 FROM s RETURNING id) ",
                insert_message!()
            )
        } else {
            concat!(
                "WITH row AS (INSERT INTO chassis_outbox (subject, message_id, created_at, \
                 available_at) VALUES ($1, $4, $11, $11) RETURNING id) ",
                insert_message!()
            )
        };
        insert_row!(&mut *conn, sql, row)?;
        Ok(())
    }

    shared_methods!(
        requeue_clears: "",
        // A subject row being upserted right now is locked; the DELETE waits and then
        // re-checks `last_enqueued_at`, which the upsert just refreshed, so a live subject is
        // never lost.
        purge_also: ["DELETE FROM chassis_outbox_subjects WHERE last_enqueued_at < $1"]
    );

    async fn claim(
        pool: &PgPool,
        _state: &(),
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
        let mut tx = pool
            .begin_with("BEGIN; SET LOCAL enable_sort = off; SET LOCAL synchronous_commit = off")
            .await
            .map_err(db_err)?;
        // Rows behind a row that waits for its retry time are left out here (they could not be
        // published anyway), so a backing-off head does not fill every batch with rows that
        // are dropped and starve other subjects. Only a failed row (`attempts > 0`) has a
        // future `available_at`; saying so lets the planner use the small partial index
        // `chassis_outbox_retrying` instead of scanning the table. (A row from a writer whose
        // clock runs ahead is not covered here, but `heads_only` still drops what it blocks.)
        //
        // The rows this relay holds in its other batches come first in id order under a
        // backlog, and `SKIP LOCKED` would step over each of them (the lock attempt, and the
        // join with its message, which came before the lock): with 4 batches of 500 in flight,
        // three rows stepped over per row claimed. They are left out before locking, through a
        // hashed `NOT IN` (one hash probe per row), and messages are joined only to the rows
        // locked: 7 ms -> 2 ms per claim of 500 behind 1 500 held rows (`EXPLAIN ANALYZE`,
        // PostgreSQL 15).
        let held_ids: Vec<i64> = held.iter().copied().collect();
        let rows = sqlx::query(concat!(
            "WITH c AS (SELECT o.id, o.subject, o.message_id, o.created_at, o.attempts \
             FROM chassis_outbox o \
             WHERE o.status = 'pending' AND o.available_at <= $1 \
             AND o.id NOT IN (SELECT unnest($3::bigint[])) \
             AND NOT EXISTS (SELECT 1 FROM chassis_outbox p WHERE p.status = 'pending' \
                AND p.attempts > 0 AND p.subject = o.subject AND p.id < o.id \
                AND p.available_at > $1) \
             ORDER BY o.id LIMIT $2 FOR UPDATE SKIP LOCKED) \
             SELECT ",
            row_columns!(),
            " FROM c o JOIN chassis_outbox_messages m ON m.id = o.id"
        ))
        .bind(now)
        .bind(limit)
        .bind(&held_ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        let mut candidates = rows
            .iter()
            .map(pending_row)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(db_err)?;
        // The join's output order is the planner's choice; the head rule needs id order.
        candidates.sort_unstable_by_key(|r| r.id);
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
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
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
        _pool: &PgPool,
        _state: &(),
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

    async fn watch(pool: &PgPool, notify: Arc<Notify>, token: CancellationToken) {
        let retry = Duration::from_secs(1);
        loop {
            if token.is_cancelled() {
                return;
            }
            match listen(pool, &notify, &token).await {
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

/// Listens until cancelled (`Ok`) or the listener fails (`Err`).
async fn listen(
    pool: &PgPool,
    notify: &Notify,
    token: &CancellationToken,
) -> std::result::Result<(), sqlx::Error> {
    let schema: Option<String> = sqlx::query_scalar("SELECT current_schema()::text")
        .fetch_one(pool)
        .await?;
    let mut listener = PgListener::connect_with(pool).await?;
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
