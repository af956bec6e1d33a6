//! A SQLite pool set up the way the outbox and the inbox need it.

use std::str::FromStr;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::error::{Error, Result};

/// A pool on the SQLite database at `url` (`sqlite://path/to/file.db`, created if missing),
/// connecting lazily: nothing is opened until the first use (for a service, the
/// [database component](crate::lifecycle::DatabaseComponent)'s start), so a service builds
/// everything that holds the pool before it starts. It is set up the way an outbox needs it: WAL journal (readers never wait for the writer,
/// and the relay reads while handlers write), `synchronous = NORMAL` (durable at every WAL
/// checkpoint, the usual WAL setting), a 10 s busy timeout (writers queue instead of failing
/// with `SQLITE_BUSY`) and at most 4 connections (SQLite has one writer at a time; an
/// in-memory database, which exists per connection, gets exactly one).
///
/// # Errors
/// [`ErrorKind::InvalidConfig`](crate::error::ErrorKind::InvalidConfig) for a malformed URL.
/// A file that cannot be opened fails at the first use.
///
/// # Example
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), chassis_messaging::Error> {
/// let dir = tempfile::tempdir().unwrap();
/// let url = format!("sqlite://{}", dir.path().join("orders.db").display());
/// let pool = chassis_messaging::sql::sqlite_pool(&url)?;
/// let outbox = chassis_messaging::Outbox::new(pool);
/// outbox.migrate().await?;
/// # Ok(()) }
/// ```
pub fn sqlite_pool(url: &str) -> Result<SqlitePool> {
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|e| Error::invalid_config(format!("DATABASE_URL {url:?}: {e}")))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10));
    let max = if url.contains(":memory:") { 1 } else { 4 };
    Ok(SqlitePoolOptions::new()
        .max_connections(max)
        .connect_lazy_with(options))
}
