//! Where sagas live: the `chassis_saga` and `chassis_saga_timeout` tables on SQLite and
//! PostgreSQL, and the statements the engine runs on them.
// Without a database feature nothing implements the trait.
#![cfg_attr(
    not(any(feature = "sqlite", feature = "postgres")),
    allow(dead_code, unused_imports, unused_macros)
)]

use std::future::Future;

use sqlx::Pool;

use crate::error::Result;
use crate::sql::inbox::InboxDatabase;
use crate::sql::outbox::OutboxDatabase;
use crate::sql::schema::{db_err, execute, run_migrations};

/// The table the saga migrations are tracked in (apart from the outbox's and the
/// application's, so each evolves on its own).
pub const SAGA_MIGRATIONS_TABLE: &str = "_chassis_saga_migrations";

/// A saga instance's row, as [`SagaDatabase`] reads and writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoredSaga {
    /// The state it is in.
    pub state: String,
    /// Its data, JSON.
    pub data: String,
    /// The compensating messages registered so far, a JSON array, oldest first.
    pub compensations: String,
    /// Why it failed, once it has.
    pub failure: Option<String>,
    /// Bumped by every transition.
    pub version: i64,
    /// When it completed or failed (Unix epoch milliseconds).
    pub finished_at: Option<i64>,
}

/// A scheduled timeout that is due, as [`SagaDatabase::due_timeouts`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DueTimeout {
    /// The saga instance.
    pub saga_id: String,
    /// The timeout's name.
    pub name: String,
    /// The state it was scheduled in.
    pub state: String,
    /// When it was due (Unix epoch milliseconds).
    pub due_at: i64,
}

/// A database sagas are kept in: SQLite and PostgreSQL (per enabled feature). It is also an
/// outbox and inbox database, since a transition writes its messages into the outbox and its
/// message id into the inbox in the same transaction.
pub trait SagaDatabase: OutboxDatabase + InboxDatabase {
    /// Creates the saga tables if needed (tracked in [`SAGA_MIGRATIONS_TABLE`]).
    fn migrate_sagas(pool: &Pool<Self>) -> impl Future<Output = Result<()>> + Send;

    /// Reads an instance (on PostgreSQL locking its row until the transaction ends).
    fn load_saga<'c>(
        conn: &'c mut Self::Connection,
        saga_type: &'c str,
        saga_id: &'c str,
    ) -> impl Future<Output = Result<Option<StoredSaga>>> + Send + 'c;

    /// Writes a new instance.
    fn insert_saga<'c>(
        conn: &'c mut Self::Connection,
        saga_type: &'c str,
        saga_id: &'c str,
        row: &'c StoredSaga,
        now_ms: i64,
    ) -> impl Future<Output = Result<()>> + Send + 'c;

    /// Writes an instance's transition; `false` when the row is not at `row.version - 1`
    /// any more (another transition won).
    fn update_saga<'c>(
        conn: &'c mut Self::Connection,
        saga_type: &'c str,
        saga_id: &'c str,
        row: &'c StoredSaga,
        now_ms: i64,
    ) -> impl Future<Output = Result<bool>> + Send + 'c;

    /// Schedules (or moves) the named timeout of an instance.
    fn schedule_timeout<'c>(
        conn: &'c mut Self::Connection,
        saga_type: &'c str,
        saga_id: &'c str,
        name: &'c str,
        state: &'c str,
        due_at: i64,
    ) -> impl Future<Output = Result<()>> + Send + 'c;

    /// Deletes one timeout, or all of the instance's when `name` is `None`.
    fn cancel_timeouts<'c>(
        conn: &'c mut Self::Connection,
        saga_type: &'c str,
        saga_id: &'c str,
        name: Option<&'c str>,
    ) -> impl Future<Output = Result<()>> + Send + 'c;

    /// Deletes the timeout if it is still the one that was due; `false` when another worker
    /// took it or it was rescheduled.
    fn take_timeout<'c>(
        conn: &'c mut Self::Connection,
        saga_type: &'c str,
        due: &'c DueTimeout,
    ) -> impl Future<Output = Result<bool>> + Send + 'c;

    /// Timeouts due at `now_ms`, earliest first, at most `limit`.
    fn due_timeouts(
        pool: &Pool<Self>,
        saga_type: &str,
        now_ms: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<DueTimeout>>> + Send;

    /// When the earliest timeout of this saga type is due.
    fn next_due(
        pool: &Pool<Self>,
        saga_type: &str,
    ) -> impl Future<Output = Result<Option<i64>>> + Send;
}

// The statements are the same text on both databases (SQLite reads `$n` as numbered
// parameters too); only PostgreSQL locks the loaded row, as SQLite's `BEGIN IMMEDIATE` (the
// inbox's transaction) already holds the database's write lock.
macro_rules! saga_database {
    ($module:ident, $db:ty, $dir:literal, $lock:literal) => {
        mod $module {
            use super::*;

            /// Writes an instance's row with `sql`, whose parameters are the saga type and id,
            /// the row's columns (`$3` to `$7`), now and `finished_at`; the rows it changed.
            async fn write_saga(
                conn: &mut <$db as sqlx::Database>::Connection,
                sql: &'static str,
                saga_type: &str,
                saga_id: &str,
                row: &StoredSaga,
                now_ms: i64,
            ) -> Result<u64> {
                execute!(
                    &mut *conn,
                    sql,
                    saga_type,
                    saga_id,
                    &row.state,
                    &row.data,
                    &row.compensations,
                    &row.failure,
                    row.version,
                    now_ms,
                    row.finished_at,
                )
            }

            impl SagaDatabase for $db {
                async fn migrate_sagas(pool: &Pool<Self>) -> Result<()> {
                    run_migrations(sqlx::migrate!($dir), SAGA_MIGRATIONS_TABLE, pool).await
                }

                async fn load_saga<'c>(
                    conn: &'c mut Self::Connection,
                    saga_type: &'c str,
                    saga_id: &'c str,
                ) -> Result<Option<StoredSaga>> {
                    let row: Option<(String, String, String, Option<String>, i64, Option<i64>)> =
                        sqlx::query_as(concat!(
                            "SELECT state, data, compensations, failure, version, finished_at \
                             FROM chassis_saga WHERE saga_type = $1 AND saga_id = $2",
                            $lock
                        ))
                        .bind(saga_type)
                        .bind(saga_id)
                        .fetch_optional(&mut *conn)
                        .await
                        .map_err(db_err)?;
                    Ok(row.map(
                        |(state, data, compensations, failure, version, finished_at)| StoredSaga {
                            state,
                            data,
                            compensations,
                            failure,
                            version,
                            finished_at,
                        },
                    ))
                }

                async fn insert_saga<'c>(
                    conn: &'c mut Self::Connection,
                    saga_type: &'c str,
                    saga_id: &'c str,
                    row: &'c StoredSaga,
                    now_ms: i64,
                ) -> Result<()> {
                    let sql = "INSERT INTO chassis_saga (saga_type, saga_id, state, data, \
                               compensations, failure, version, created_at, updated_at, \
                               finished_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9)";
                    write_saga(conn, sql, saga_type, saga_id, row, now_ms).await?;
                    Ok(())
                }

                async fn update_saga<'c>(
                    conn: &'c mut Self::Connection,
                    saga_type: &'c str,
                    saga_id: &'c str,
                    row: &'c StoredSaga,
                    now_ms: i64,
                ) -> Result<bool> {
                    let sql = "UPDATE chassis_saga SET state = $3, data = $4, compensations = $5, \
                               failure = $6, version = $7, updated_at = $8, finished_at = $9 \
                               WHERE saga_type = $1 AND saga_id = $2 AND version = $7 - 1";
                    Ok(write_saga(conn, sql, saga_type, saga_id, row, now_ms).await? == 1)
                }

                async fn schedule_timeout<'c>(
                    conn: &'c mut Self::Connection,
                    saga_type: &'c str,
                    saga_id: &'c str,
                    name: &'c str,
                    state: &'c str,
                    due_at: i64,
                ) -> Result<()> {
                    let sql = "INSERT INTO chassis_saga_timeout (saga_type, saga_id, name, state, \
                               due_at) VALUES ($1, $2, $3, $4, $5) \
                               ON CONFLICT (saga_type, saga_id, name) \
                               DO UPDATE SET state = excluded.state, due_at = excluded.due_at";
                    execute!(&mut *conn, sql, saga_type, saga_id, name, state, due_at)?;
                    Ok(())
                }

                async fn cancel_timeouts<'c>(
                    conn: &'c mut Self::Connection,
                    saga_type: &'c str,
                    saga_id: &'c str,
                    name: Option<&'c str>,
                ) -> Result<()> {
                    let sql = "DELETE FROM chassis_saga_timeout WHERE saga_type = $1 \
                               AND saga_id = $2 AND ($3 IS NULL OR name = $3)";
                    execute!(&mut *conn, sql, saga_type, saga_id, name)?;
                    Ok(())
                }

                async fn take_timeout<'c>(
                    conn: &'c mut Self::Connection,
                    saga_type: &'c str,
                    due: &'c DueTimeout,
                ) -> Result<bool> {
                    let sql = "DELETE FROM chassis_saga_timeout WHERE saga_type = $1 \
                               AND saga_id = $2 AND name = $3 AND due_at = $4";
                    let taken =
                        execute!(&mut *conn, sql, saga_type, &due.saga_id, &due.name, due.due_at)?;
                    Ok(taken == 1)
                }

                async fn due_timeouts(
                    pool: &Pool<Self>,
                    saga_type: &str,
                    now_ms: i64,
                    limit: i64,
                ) -> Result<Vec<DueTimeout>> {
                    let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
                        "SELECT saga_id, name, state, due_at FROM chassis_saga_timeout \
                         WHERE saga_type = $1 AND due_at <= $2 ORDER BY due_at LIMIT $3",
                    )
                    .bind(saga_type)
                    .bind(now_ms)
                    .bind(limit)
                    .fetch_all(pool)
                    .await
                    .map_err(db_err)?;
                    Ok(rows
                        .into_iter()
                        .map(|(saga_id, name, state, due_at)| DueTimeout {
                            saga_id,
                            name,
                            state,
                            due_at,
                        })
                        .collect())
                }

                async fn next_due(pool: &Pool<Self>, saga_type: &str) -> Result<Option<i64>> {
                    let (next,): (Option<i64>,) = sqlx::query_as(
                        "SELECT min(due_at) FROM chassis_saga_timeout WHERE saga_type = $1",
                    )
                    .bind(saga_type)
                    .fetch_one(pool)
                    .await
                    .map_err(db_err)?;
                    Ok(next)
                }
            }
        }
    };
}

#[cfg(feature = "sqlite")]
saga_database!(sqlite, sqlx::Sqlite, "./migrations/saga/sqlite", "");
#[cfg(feature = "postgres")]
saga_database!(
    postgres,
    sqlx::Postgres,
    "./migrations/saga/postgres",
    " FOR UPDATE"
);
