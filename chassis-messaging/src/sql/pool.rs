//! Pools set up the way the outbox and the inbox need them: [`sqlite_pool`], [`postgres_pool`],
//! and [`check_when_idle`], the acquire-time liveness check both use.

use std::time::Duration;

use sqlx::pool::PoolOptions;
use sqlx::{Connection as _, Database};

#[cfg(any(feature = "sqlite", feature = "postgres"))]
use crate::error::{Error, Result};

/// How long a pooled connection may sit idle before [`check_when_idle`] pings it on acquire.
pub const IDLE_CHECK_AFTER: Duration = Duration::from_secs(1);

/// Checks a pooled connection on acquire only when it sat idle for [`IDLE_CHECK_AFTER`] or
/// longer (sqlx's default pings every connection on every acquire).
///
/// A ping is a round trip: to the server on PostgreSQL, and on SQLite to the connection's
/// worker thread (sqlx runs each SQLite connection on a thread of its own; every command is
/// two context switches). Services acquire a connection for every transaction and every
/// statement on the pool, so the default check doubled the round trips of a short transaction.
/// A connection in steady use has just proved itself; one that sat idle may have been closed
/// by the server, a proxy or a restart, and is pinged first (a failed ping drops it and the
/// pool tries another, as before). HikariCP skips its check the same way for connections used
/// within the last 500 ms. A connection that dies while in use fails the statement that finds
/// it, with or without the check: callers already retry (the relay backs off, a consumer's
/// message is redelivered).
pub fn check_when_idle<DB: Database>(options: PoolOptions<DB>) -> PoolOptions<DB> {
    check_idle_after(options, IDLE_CHECK_AFTER)
}

/// [`check_when_idle`] with another idle threshold.
fn check_idle_after<DB: Database>(options: PoolOptions<DB>, after: Duration) -> PoolOptions<DB> {
    options
        .test_before_acquire(false)
        .before_acquire(move |conn, meta| {
            Box::pin(async move {
                if meta.idle_for < after {
                    return Ok(true);
                }
                Ok(conn.ping().await.is_ok())
            })
        })
}

/// A pool on the SQLite database at `url` (`sqlite://path/to/file.db`, created if missing),
/// connecting lazily: nothing is opened until the first use (for a service, the
/// [database component](crate::lifecycle::DatabaseComponent)'s start), so a service builds
/// everything that holds the pool before it starts. It is set up the way an outbox needs it: WAL journal (readers never wait for the writer,
/// and the relay reads while handlers write), `synchronous = NORMAL` (durable at every WAL
/// checkpoint, the usual WAL setting), a 10 s busy timeout (writers queue instead of failing
/// with `SQLITE_BUSY`), at most 4 connections (SQLite has one writer at a time; an
/// in-memory database, which exists per connection, gets exactly one) and connections
/// checked on acquire only after sitting idle ([`check_when_idle`]).
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
#[cfg(feature = "sqlite")]
pub fn sqlite_pool(url: &str) -> Result<sqlx::SqlitePool> {
    use std::str::FromStr;

    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};

    let options = SqliteConnectOptions::from_str(url)
        .map_err(|e| Error::invalid_config(format!("DATABASE_URL {url:?}: {e}")))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10));
    let max = if url.contains(":memory:") { 1 } else { 4 };
    Ok(check_when_idle(PoolOptions::new())
        .max_connections(max)
        .connect_lazy_with(options))
}

/// A pool on the PostgreSQL database at `url`, connecting lazily (as [`sqlite_pool`]; like any
/// sqlx pool, it is made inside a Tokio runtime), with
/// at most `max_connections` (a relay holds one for LISTEN and one per batch in flight), a
/// 10 s acquire timeout, and connections checked on acquire only after sitting idle
/// ([`check_when_idle`]).
///
/// # Errors
/// [`ErrorKind::InvalidConfig`](crate::error::ErrorKind::InvalidConfig) for a malformed URL.
///
/// # Example
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), chassis_messaging::Error> {
/// let pool = chassis_messaging::sql::postgres_pool("postgres://postgres@127.0.0.1:5432/test", 10)?;
/// assert!(!pool.options().get_test_before_acquire(), "pinged only after sitting idle");
/// let outbox = chassis_messaging::Outbox::new(pool); // nothing connects before the first use
/// # let _ = outbox;
/// # Ok(()) }
/// ```
#[cfg(feature = "postgres")]
pub fn postgres_pool(url: &str, max_connections: u32) -> Result<sqlx::PgPool> {
    use std::str::FromStr;

    let options = sqlx::postgres::PgConnectOptions::from_str(url)
        .map_err(|e| Error::invalid_config(format!("DATABASE_URL {url:?}: {e}")))?;
    Ok(check_when_idle(PoolOptions::new())
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with(options))
}

#[cfg(test)]
mod tests {
    #[cfg(feature = "postgres")]
    use super::*;

    #[cfg(feature = "sqlite")]
    #[tokio::test]
    async fn the_sqlite_pool_skips_sqlx_s_ping_on_every_acquire() {
        let pool = super::sqlite_pool("sqlite::memory:").unwrap();
        assert!(!pool.options().get_test_before_acquire());
        sqlx::query("SELECT 1").execute(&pool).await.unwrap();
    }

    /// A pooled PostgreSQL connection whose backend is terminated while it sits in the pool
    /// (as a server restart or an idle-killing proxy would): past the idle threshold the
    /// acquire pings it, drops it and hands out a new one. (Within the threshold nothing is
    /// checked; whether the dead connection then fails the next statement depends on when
    /// sqlx reads the server's termination notice, so that side is not asserted.)
    #[cfg(feature = "postgres")]
    #[tokio::test]
    async fn an_idle_connection_is_pinged_on_acquire_and_replaced_when_dead() {
        let url = std::env::var("DATABASE_URL")
            .ok()
            .filter(|u| u.starts_with("postgres"))
            .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let admin = sqlx::PgPool::connect(&url).await.unwrap();
        let backend = |pool: sqlx::PgPool| async move {
            sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()")
                .fetch_one(&pool)
                .await
        };
        let pool = check_idle_after(
            PoolOptions::<sqlx::Postgres>::new(),
            Duration::from_millis(100),
        )
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
        assert!(!pool.options().get_test_before_acquire());
        let pid = backend(pool.clone()).await.unwrap();
        let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .fetch_one(&admin)
            .await
            .unwrap();
        assert!(killed);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let next = backend(pool.clone())
            .await
            .expect("the dead connection was replaced");
        assert_ne!(next, pid, "a new backend");
        pool.close().await;
    }
}
