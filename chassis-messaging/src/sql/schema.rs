//! The tables the outbox and the inbox share: their migrations, and how rows are written.
//!
//! One set of migrations per database (`migrations/sqlite`, `migrations/postgres` in the
//! crate, embedded with `sqlx::migrate!`) creates every chassis-messaging table: the outbox's
//! `chassis_outbox` and `chassis_outbox_messages` (and on PostgreSQL `chassis_outbox_subjects`
//! plus the notify trigger) and the inbox's `chassis_inbox`. They are tracked in their own
//! table, [`MIGRATIONS_TABLE`], so they never collide with the application's
//! `_sqlx_migrations`. Running them again, or from several replicas at once, is harmless.
//!
//! [`Outbox::migrate`](super::outbox::Outbox::migrate) and
//! [`Inbox::migrate`](super::inbox::Inbox::migrate) both run them; [`migrate`] does the same
//! on a bare pool. Timestamp columns hold Unix epoch milliseconds of the writer's clock.
//!
//! # Example
//! ```
//! use chassis_messaging::sql::schema::{self, MIGRATIONS_TABLE};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::sqlite::SqlitePoolOptions::new()
//!     .max_connections(1)
//!     .connect("sqlite::memory:")
//!     .await?;
//! schema::migrate(&pool).await?;
//! schema::migrate(&pool).await?; // idempotent
//!
//! // The tables of the outbox and the inbox, and their history in a table of its own.
//! let (inbox_rows,): (i64,) = sqlx::query_as("SELECT count(*) FROM chassis_inbox")
//!     .fetch_one(&pool)
//!     .await?;
//! let (applied,): (i64,) = sqlx::query_as("SELECT count(*) FROM _chassis_messaging_migrations")
//!     .fetch_one(&pool)
//!     .await?;
//! assert_eq!((inbox_rows, MIGRATIONS_TABLE), (0, "_chassis_messaging_migrations"));
//! assert!(applied > 0);
//! # Ok(())
//! # }
//! ```
// Without a database feature nothing writes rows.
#![cfg_attr(
    not(any(feature = "sqlite", feature = "postgres")),
    allow(dead_code, unused_macros)
)]

use std::future::Future;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::Pool;
use sqlx::migrate::{Migrate, Migrator};

use crate::error::{Error, ErrorKind, Result};

/// The table the chassis-messaging migrations are tracked in (not sqlx's default
/// `_sqlx_migrations`, which belongs to the application).
pub const MIGRATIONS_TABLE: &str = "_chassis_messaging_migrations";

/// A database the chassis-messaging tables live in: SQLite and PostgreSQL (per enabled
/// feature). Both [`InboxDatabase`](super::inbox::InboxDatabase) and
/// [`OutboxDatabase`](super::outbox::OutboxDatabase) build on it.
pub trait SchemaDatabase: sqlx::Database {
    /// Applies the chassis-messaging migrations (outbox and inbox tables) to `pool`.
    ///
    /// Idempotent; tracked in [`MIGRATIONS_TABLE`], so it never interferes with the
    /// application's `sqlx::migrate!()` history. On PostgreSQL the tables go into the first
    /// schema of the connection's `search_path`, and several replicas may run it at once
    /// (sqlx takes an advisory lock).
    fn migrate(pool: &Pool<Self>) -> impl Future<Output = Result<()>> + Send;
}

/// Applies the chassis-messaging migrations to `pool` (see [`SchemaDatabase::migrate`]).
pub async fn migrate<DB: SchemaDatabase>(pool: &Pool<DB>) -> Result<()> {
    DB::migrate(pool).await
}

#[cfg(feature = "sqlite")]
impl SchemaDatabase for sqlx::Sqlite {
    async fn migrate(pool: &Pool<Self>) -> Result<()> {
        let migrator = sqlx::migrate!("./migrations/sqlite");
        run_migrations(migrator, MIGRATIONS_TABLE, pool).await
    }
}

#[cfg(feature = "postgres")]
impl SchemaDatabase for sqlx::Postgres {
    async fn migrate(pool: &Pool<Self>) -> Result<()> {
        let migrator = sqlx::migrate!("./migrations/postgres");
        run_migrations(migrator, MIGRATIONS_TABLE, pool).await
    }
}

/// Runs `migrator`'s migrations on `pool`, tracking them in `table`.
pub(crate) async fn run_migrations<DB>(
    mut migrator: Migrator,
    table: &'static str,
    pool: &Pool<DB>,
) -> Result<()>
where
    DB: sqlx::Database,
    DB::Connection: Migrate,
{
    migrator.dangerous_set_table_name(table);
    migrator
        .run(pool)
        .await
        .map_err(|e| Error::with_source(ErrorKind::Database, e))
}

/// Now, as Unix epoch milliseconds: the unit of every timestamp column.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Wraps a database error.
pub(crate) fn db_err(err: sqlx::Error) -> Error {
    Error::with_source(ErrorKind::Database, err)
}

/// Runs the statement `sql` on `executor` (a pool, or `&mut *conn`) with the arguments bound
/// in order (`$1`, `$2`, ...): `Ok` with the number of rows it changed, or the
/// [`ErrorKind::Database`] error.
macro_rules! execute {
    ($executor:expr, $sql:expr $(, $arg:expr)* $(,)?) => {
        sqlx::query($sql)
            $(.bind($arg))*
            .execute($executor)
            .await
            .map(|done| done.rows_affected())
            .map_err($crate::sql::schema::db_err)
    };
}
pub(crate) use execute;
