//! One database handle over SQLite (default) or PostgreSQL.
//!
//! The shop's SQL is plain and portable (`$1` placeholders, `INSERT … ON CONFLICT`, `RETURNING`,
//! `BIGINT` and `TEXT` columns only), so each statement is written once and runs on both. The
//! chassis outbox and inbox are typed per backend; [`Tx::sqlite`] / [`Tx::postgres`] hand them the
//! connection of the same transaction, so business writes and the outbox row commit together.
//!
//! SQLite transactions start with `BEGIN IMMEDIATE` (the write lock is taken up front, with a busy
//! timeout), so concurrent writers queue instead of failing with `SQLITE_BUSY` on lock upgrade.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), sqlx::Error> {
//! use shop_common::db::Db;
//!
//! let db = Db::connect("sqlite::memory:").await?;
//! db.execute_script("CREATE TABLE t (id TEXT PRIMARY KEY, n BIGINT NOT NULL);").await?;
//! let mut tx = db.begin().await?;
//! tx.execute("INSERT INTO t (id, n) VALUES ($1, $2)", &["a".into(), 41_i64.into()]).await?;
//! tx.execute("UPDATE t SET n = n + 1 WHERE id = $1", &["a".into()]).await?;
//! tx.commit().await?;
//! let row = db.fetch_one("SELECT n FROM t WHERE id = $1", &["a".into()]).await?;
//! assert_eq!(row.i64("n")?, 42);
//! # Ok(()) }
//! ```

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Postgres, Row as _, Sqlite, Transaction};

/// A bind argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    /// A `BIGINT`.
    Int(i64),
    /// A `TEXT`.
    Text(String),
    /// A nullable `BIGINT`.
    OptInt(Option<i64>),
    /// A nullable `TEXT`.
    OptText(Option<String>),
}

impl From<i64> for Arg {
    fn from(v: i64) -> Self {
        Arg::Int(v)
    }
}
impl From<&str> for Arg {
    fn from(v: &str) -> Self {
        Arg::Text(v.to_owned())
    }
}
impl From<String> for Arg {
    fn from(v: String) -> Self {
        Arg::Text(v)
    }
}
impl From<&String> for Arg {
    fn from(v: &String) -> Self {
        Arg::Text(v.clone())
    }
}
impl From<Option<i64>> for Arg {
    fn from(v: Option<i64>) -> Self {
        Arg::OptInt(v)
    }
}
impl From<Option<String>> for Arg {
    fn from(v: Option<String>) -> Self {
        Arg::OptText(v)
    }
}
impl From<Option<&str>> for Arg {
    fn from(v: Option<&str>) -> Self {
        Arg::OptText(v.map(str::to_owned))
    }
}

macro_rules! bind_all {
    ($query:expr, $args:expr) => {{
        let mut q = $query;
        for a in $args {
            q = match a {
                Arg::Int(v) => q.bind(*v),
                Arg::Text(v) => q.bind(v.clone()),
                Arg::OptInt(v) => q.bind(*v),
                Arg::OptText(v) => q.bind(v.clone()),
            };
        }
        q
    }};
}

/// A row from either backend.
#[derive(Debug)]
pub enum Row {
    /// A SQLite row.
    Sqlite(SqliteRow),
    /// A PostgreSQL row.
    Postgres(PgRow),
}

impl Row {
    /// A `BIGINT` column.
    pub fn i64(&self, col: &str) -> Result<i64, sqlx::Error> {
        match self {
            Row::Sqlite(r) => r.try_get(col),
            Row::Postgres(r) => r.try_get(col),
        }
    }

    /// A nullable `BIGINT` column.
    pub fn opt_i64(&self, col: &str) -> Result<Option<i64>, sqlx::Error> {
        match self {
            Row::Sqlite(r) => r.try_get(col),
            Row::Postgres(r) => r.try_get(col),
        }
    }

    /// A `TEXT` column.
    pub fn text(&self, col: &str) -> Result<String, sqlx::Error> {
        match self {
            Row::Sqlite(r) => r.try_get(col),
            Row::Postgres(r) => r.try_get(col),
        }
    }

    /// A nullable `TEXT` column.
    pub fn opt_text(&self, col: &str) -> Result<Option<String>, sqlx::Error> {
        match self {
            Row::Sqlite(r) => r.try_get(col),
            Row::Postgres(r) => r.try_get(col),
        }
    }
}

/// A connection pool on SQLite or PostgreSQL. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Db {
    /// SQLite (a file per service by default).
    Sqlite(SqlitePool),
    /// PostgreSQL.
    Postgres(PgPool),
}

impl Db {
    /// Connects to `url`: `postgres://…` / `postgresql://…` selects PostgreSQL, anything else is a
    /// SQLite URL (`sqlite://path/to/file.db`, created if missing, WAL mode).
    pub async fn connect(url: &str) -> Result<Db, sqlx::Error> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(10)
                .acquire_timeout(Duration::from_secs(10))
                .connect(url)
                .await?;
            return Ok(Db::Postgres(pool));
        }
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30));
        // An in-memory database exists per connection: keep exactly one.
        let max = if url.contains(":memory:") { 1 } else { 4 };
        let pool = SqlitePoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(opts)
            .await?;
        Ok(Db::Sqlite(pool))
    }

    /// The SQLite URL of a database file.
    pub fn sqlite_url(path: &std::path::Path) -> String {
        format!("sqlite://{}", path.display())
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    /// Runs a script of `;`-separated statements (the service's schema; use `IF NOT EXISTS`).
    pub async fn execute_script(&self, script: &str) -> Result<(), sqlx::Error> {
        for stmt in script.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            match self {
                Db::Sqlite(p) => sqlx::query(sqlx::AssertSqlSafe(stmt.to_owned()))
                    .execute(p)
                    .await
                    .map(|_| ())?,
                Db::Postgres(p) => sqlx::query(sqlx::AssertSqlSafe(stmt.to_owned()))
                    .execute(p)
                    .await
                    .map(|_| ())?,
            }
        }
        Ok(())
    }

    /// Starts a transaction (`BEGIN IMMEDIATE` on SQLite).
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        Ok(match self {
            Db::Sqlite(p) => Tx::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?),
            Db::Postgres(p) => Tx::Postgres(p.begin().await?),
        })
    }

    /// `SELECT 1`: the readiness check.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        self.fetch_one("SELECT 1 AS one", &[]).await.map(|_| ())
    }

    /// Runs a statement outside a transaction; returns the rows affected.
    pub async fn execute(&self, sql: &'static str, args: &[Arg]) -> Result<u64, sqlx::Error> {
        Ok(match self {
            Db::Sqlite(p) => bind_all!(sqlx::query(sql), args)
                .execute(p)
                .await?
                .rows_affected(),
            Db::Postgres(p) => bind_all!(sqlx::query(sql), args)
                .execute(p)
                .await?
                .rows_affected(),
        })
    }

    /// Fetches every row.
    pub async fn fetch_all(
        &self,
        sql: &'static str,
        args: &[Arg],
    ) -> Result<Vec<Row>, sqlx::Error> {
        Ok(match self {
            Db::Sqlite(p) => bind_all!(sqlx::query(sql), args)
                .fetch_all(p)
                .await?
                .into_iter()
                .map(Row::Sqlite)
                .collect(),
            Db::Postgres(p) => bind_all!(sqlx::query(sql), args)
                .fetch_all(p)
                .await?
                .into_iter()
                .map(Row::Postgres)
                .collect(),
        })
    }

    /// Fetches at most one row.
    pub async fn fetch_optional(
        &self,
        sql: &'static str,
        args: &[Arg],
    ) -> Result<Option<Row>, sqlx::Error> {
        Ok(match self {
            Db::Sqlite(p) => bind_all!(sqlx::query(sql), args)
                .fetch_optional(p)
                .await?
                .map(Row::Sqlite),
            Db::Postgres(p) => bind_all!(sqlx::query(sql), args)
                .fetch_optional(p)
                .await?
                .map(Row::Postgres),
        })
    }

    /// Fetches exactly one row.
    pub async fn fetch_one(&self, sql: &'static str, args: &[Arg]) -> Result<Row, sqlx::Error> {
        self.fetch_optional(sql, args)
            .await?
            .ok_or(sqlx::Error::RowNotFound)
    }

    /// Closes the pool.
    pub async fn close(&self) {
        match self {
            Db::Sqlite(p) => p.close().await,
            Db::Postgres(p) => p.close().await,
        }
    }
}

/// A transaction on either backend.
#[derive(Debug)]
pub enum Tx {
    /// SQLite.
    Sqlite(Transaction<'static, Sqlite>),
    /// PostgreSQL.
    Postgres(Transaction<'static, Postgres>),
}

impl Tx {
    /// Runs a statement; returns the rows affected.
    pub async fn execute(&mut self, sql: &'static str, args: &[Arg]) -> Result<u64, sqlx::Error> {
        Ok(match self {
            Tx::Sqlite(t) => bind_all!(sqlx::query(sql), args)
                .execute(&mut **t)
                .await?
                .rows_affected(),
            Tx::Postgres(t) => bind_all!(sqlx::query(sql), args)
                .execute(&mut **t)
                .await?
                .rows_affected(),
        })
    }

    /// Fetches every row.
    pub async fn fetch_all(
        &mut self,
        sql: &'static str,
        args: &[Arg],
    ) -> Result<Vec<Row>, sqlx::Error> {
        Ok(match self {
            Tx::Sqlite(t) => bind_all!(sqlx::query(sql), args)
                .fetch_all(&mut **t)
                .await?
                .into_iter()
                .map(Row::Sqlite)
                .collect(),
            Tx::Postgres(t) => bind_all!(sqlx::query(sql), args)
                .fetch_all(&mut **t)
                .await?
                .into_iter()
                .map(Row::Postgres)
                .collect(),
        })
    }

    /// Fetches at most one row.
    pub async fn fetch_optional(
        &mut self,
        sql: &'static str,
        args: &[Arg],
    ) -> Result<Option<Row>, sqlx::Error> {
        Ok(match self {
            Tx::Sqlite(t) => bind_all!(sqlx::query(sql), args)
                .fetch_optional(&mut **t)
                .await?
                .map(Row::Sqlite),
            Tx::Postgres(t) => bind_all!(sqlx::query(sql), args)
                .fetch_optional(&mut **t)
                .await?
                .map(Row::Postgres),
        })
    }

    /// The SQLite connection of this transaction, if on SQLite (for the chassis outbox/inbox).
    pub fn sqlite(&mut self) -> Option<&mut SqliteConnection> {
        match self {
            Tx::Sqlite(t) => Some(&mut **t),
            Tx::Postgres(_) => None,
        }
    }

    /// The PostgreSQL connection of this transaction, if on PostgreSQL.
    pub fn postgres(&mut self) -> Option<&mut PgConnection> {
        match self {
            Tx::Postgres(t) => Some(&mut **t),
            Tx::Sqlite(_) => None,
        }
    }

    /// Commits.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Sqlite(t) => t.commit().await,
            Tx::Postgres(t) => t.commit().await,
        }
    }

    /// Rolls back.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Sqlite(t) => t.rollback().await,
            Tx::Postgres(t) => t.rollback().await,
        }
    }
}

/// A fresh, empty PostgreSQL schema for one test: connects to `DATABASE_URL` (default
/// `postgres://postgres@127.0.0.1:5432/test`), creates a uniquely named schema and returns a
/// [`Db`] whose connections use it as `search_path`. Tests use it to run the same SQL on
/// PostgreSQL in parallel without interfering.
pub async fn postgres_test_db() -> Result<Db, sqlx::Error> {
    let base = std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| u.starts_with("postgres"))
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("shop_test_{}", uuid::Uuid::new_v4().simple());
    let admin = Db::connect(&base).await?;
    admin
        .execute_script(&format!("CREATE SCHEMA {schema}"))
        .await?;
    admin.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    Db::connect(&format!("{base}{sep}options=-c%20search_path%3D{schema}")).await
}

/// Milliseconds since the Unix epoch (the shop stores times as `BIGINT` milliseconds).
pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn same_sql_runs_on_sqlite_file_and_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&Db::sqlite_url(&dir.path().join("t.db")))
            .await
            .unwrap();
        assert_eq!(db.backend(), "sqlite");
        db.execute_script(
            "CREATE TABLE IF NOT EXISTS t (id TEXT PRIMARY KEY, n BIGINT, note TEXT);",
        )
        .await
        .unwrap();
        let mut tx = db.begin().await.unwrap();
        tx.execute(
            "INSERT INTO t (id, n, note) VALUES ($1, $2, $3)",
            &["a".into(), 1_i64.into(), None::<String>.into()],
        )
        .await
        .unwrap();
        tx.rollback().await.unwrap();
        assert!(
            db.fetch_optional("SELECT id FROM t WHERE id = $1", &["a".into()])
                .await
                .unwrap()
                .is_none()
        );
        let mut tx = db.begin().await.unwrap();
        let n = tx
            .execute(
                "INSERT INTO t (id, n, note) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
                &["a".into(), 1_i64.into(), Some("x").into()],
            )
            .await
            .unwrap();
        assert_eq!(n, 1);
        assert!(tx.sqlite().is_some());
        tx.commit().await.unwrap();
        let row = db
            .fetch_one("SELECT n, note FROM t WHERE id = $1", &["a".into()])
            .await
            .unwrap();
        assert_eq!(row.i64("n").unwrap(), 1);
        assert_eq!(row.opt_text("note").unwrap().as_deref(), Some("x"));
        db.ping().await.unwrap();
    }
}
