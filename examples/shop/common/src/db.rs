//! The shop's database: SQLite (the default, a file per service) or PostgreSQL, chosen by
//! `DATABASE_URL` at run time, with the chassis outbox and inbox on it.
//!
//! The shop's SQL is plain and portable (`$1` placeholders, `INSERT … ON CONFLICT`, `RETURNING`,
//! `BIGINT` and `TEXT` columns only), so each statement is written once and runs on both.
//! [`Db`] holds the chassis [`Outbox<DB>`](Outbox) of its database (which holds the pool); this
//! module is the one place that matches on the database, and each match runs the same code on
//! either (the `either!` macro). The lifecycle pieces come from the chassis as they are:
//! [`Db::component`] is the outbox's database component, [`Db::relay`] its relay, and
//! [`Db::consumer`] an inbox consumer (the chassis [`Inbox`] with a group commit, as its
//! `idempotent` handler uses them: the messages handed over together share one transaction)
//! whose handler gets a [`Tx`] and returns the [`Emit`]s to enqueue in the same transaction.
//!
//! Two histograms of the shop's own, for the launcher's per-hop breakdown: [`COMMIT_DURATION`]
//! (every commit of a [`Txn`]) and [`MESSAGE_WAIT`] (from
//! the sender writing a message, its envelope's `time`, to its handler starting here).
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), chassis_core::BoxError> {
//! use shop_common::db::Db;
//!
//! let db = Db::open("sqlite::memory:")?;
//! db.execute_script("CREATE TABLE t (id TEXT PRIMARY KEY, n BIGINT NOT NULL)").await?;
//! let mut txn = db.begin().await?;
//! let mut tx = txn.tx();
//! tx.execute("INSERT INTO t (id, n) VALUES ($1, $2)", &["a".into(), 41_i64.into()]).await?;
//! tx.execute("UPDATE t SET n = n + 1 WHERE id = $1", &["a".into()]).await?;
//! txn.commit().await?;
//! let row = db.fetch_optional("SELECT n FROM t WHERE id = $1", &["a".into()]).await?;
//! assert_eq!(row.unwrap().get::<i64>("n")?, 42);
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use chassis_core::BoxError;
use chassis_core::control::ControlRegistry;
use chassis_core::lifecycle::Component;
use chassis_messaging::lifecycle::ConsumerComponent;
use chassis_messaging::sql::group_commit::{self, GroupCommit, Unacked};
use chassis_messaging::sql::inbox::{Claim, InboxDatabase, Processed};
use chassis_messaging::sql::outbox::OutboxDatabase;
use chassis_messaging::{
    Connection, Error, Inbox, IncomingMessage, Outbox, Outcome, Publisher, PublisherConfig,
    QueueConfig, Relay,
};
use futures_util::future::BoxFuture;
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::{Postgres, Row as _, Sqlite, Transaction};

use crate::Shop;
use crate::events::Emit;

/// Histogram (seconds): one commit of a shop transaction ([`Txn::commit`]: a request's
/// transaction). The inbox consumers' shared transactions commit inside the chassis group
/// commit and are not in it.
pub const COMMIT_DURATION: &str = "shop_db_commit_duration_seconds";
/// Histogram (seconds), label `consumer` (the inbox name, e.g. `orders.saga`): from the moment
/// the sender wrote the message into its outbox (the envelope's `time`, inside its transaction)
/// to the moment the handler here starts: the sender's commit and relay, the publish, the
/// broker, and the wait for a free handler. Both ends read the wall clock, so it is meaningful
/// on one machine (or well-synchronised ones); a negative span (clock step) is not recorded.
pub const MESSAGE_WAIT: &str = "shop_message_wait_seconds";

/// Records [`MESSAGE_WAIT`] for `msg` arriving at `consumer` (nothing without a readable
/// `cloudEvents:time` header).
pub fn record_wait(consumer: &str, msg: &IncomingMessage) {
    let Some(chassis_messaging::message::HeaderValue::String(time)) =
        msg.header(chassis_messaging::envelope::TIME)
    else {
        return;
    };
    let Ok(written) = chrono::DateTime::parse_from_rfc3339(time) else {
        return;
    };
    let waited = chrono::Utc::now().signed_duration_since(written);
    if let Ok(waited) = waited.to_std() {
        metrics::histogram!(MESSAGE_WAIT, "consumer" => consumer.to_owned())
            .record(waited.as_secs_f64());
    }
}

/// The same code in the arm of each database (each arm compiles for its own types).
macro_rules! either {
    ($value:expr, $ty:ident, |$($x:pat_param),+| $body:expr) => {
        match $value {
            $ty::Sqlite($($x),+) => $body,
            $ty::Postgres($($x),+) => $body,
        }
    };
}

/// `sqlx::query(sql)` with `args` bound.
macro_rules! query {
    ($sql:expr, $args:expr) => {
        $args.iter().fold(sqlx::query($sql), |q, arg| match arg {
            Arg::Int(v) => q.bind(*v),
            Arg::Text(v) => q.bind(v.clone()),
        })
    };
}

/// A bind argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    /// A `BIGINT` (`None` is `NULL`).
    Int(Option<i64>),
    /// A `TEXT` (`None` is `NULL`).
    Text(Option<String>),
}

macro_rules! arg_from {
    ($($t:ty => |$v:ident| $e:expr),* $(,)?) => {
        $(impl From<$t> for Arg {
            fn from($v: $t) -> Self {
                $e
            }
        })*
    };
}

arg_from! {
    i64 => |v| Arg::Int(Some(v)),
    Option<i64> => |v| Arg::Int(v),
    &str => |v| Arg::Text(Some(v.to_owned())),
    &String => |v| Arg::Text(Some(v.clone())),
    String => |v| Arg::Text(Some(v)),
    Option<&str> => |v| Arg::Text(v.map(str::to_owned)),
    Option<String> => |v| Arg::Text(v),
}

/// A row from either database.
#[derive(Debug)]
pub enum Row {
    /// A SQLite row.
    Sqlite(SqliteRow),
    /// A PostgreSQL row.
    Postgres(PgRow),
}

impl Row {
    /// Column `col` as `T`: `i64`, `String`, or an `Option` of either for a nullable column.
    pub fn get<T>(&self, col: &str) -> Result<T, sqlx::Error>
    where
        T: for<'r> sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
        T: for<'r> sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
    {
        either!(self, Row, |r| r.try_get(col))
    }
}

/// The service's database with its outbox. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Db {
    /// SQLite.
    Sqlite(Outbox<Sqlite>),
    /// PostgreSQL.
    Postgres(Outbox<Postgres>),
}

impl Db {
    /// A pool on `url`, connecting lazily (the [`component`](Self::component) opens it at
    /// start): `postgres://…` / `postgresql://…` is PostgreSQL, anything else a SQLite URL
    /// (`sqlite://path/to/file.db`, created if missing; see the chassis `sqlite_pool`).
    pub fn open(url: &str) -> Result<Db, BoxError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            // The relay holds one connection for LISTEN and one per batch in flight.
            let pool = chassis_messaging::sql::postgres_pool(url, 10)?;
            return Ok(Db::Postgres(Outbox::new(pool)));
        }
        Ok(Db::Sqlite(Outbox::new(sqlite_pool(url)?)))
    }

    /// Registers the outbox in `control` as `outbox` (see `chassis_messaging::sql::outbox`'s
    /// control module: backlog, parked rows, `requeue`).
    pub fn register_outbox(&self, control: &ControlRegistry) {
        either!(self, Db, |o| {
            control.register("outbox", o.clone());
        })
    }

    /// The database as a lifecycle component: migrates the chassis tables, runs `schema`,
    /// registers the readiness check, closes the pool at stop.
    pub fn component(&self, schema: &'static str) -> Box<dyn Component> {
        either!(self, Db, |o| Box::new(o.component().schema(schema)))
    }

    /// The outbox relay, publishing on `conn`, as a lifecycle component, with the settings of
    /// [`relay_config`](crate::service::relay_config) (`OUTBOX_RELAY`).
    pub fn relay(&self, conn: &Connection) -> Result<Box<dyn Component>, BoxError> {
        let config = crate::service::relay_config()?;
        let publisher = Arc::new(Publisher::new(conn, PublisherConfig::default())?);
        either!(self, Db, |o| {
            let relay = Relay::new(o.clone(), publisher, config)?;
            Ok(Box::new(relay.into_component()))
        })
    }

    /// A consumer of `queue` through the inbox named `inbox`: `handler` runs once per message,
    /// in the transaction that records its id, and the [`Emit`]s it returns are enqueued in the
    /// same transaction (caused by the message); `Err(outcome)` rolls back and retries or
    /// rejects. Messages handled at the same time share one transaction
    /// (`INBOX_GROUP_COMMIT`, [`inbox_group_config`](crate::service::inbox_group_config)), so
    /// a handler may run again for a message when another message of its batch failed.
    ///
    /// # Errors
    /// An invalid `INBOX_GROUP_COMMIT`.
    pub fn consumer<F>(
        &self,
        shop: &Shop,
        conn: &Connection,
        queue: QueueConfig,
        inbox: &str,
        handler: F,
    ) -> Result<Box<dyn Component>, BoxError>
    where
        F: for<'c> Fn(IncomingMessage, Tx<'c>) -> BoxFuture<'c, Result<Vec<Emit>, Outcome>>
            + Send
            + Sync
            + 'static,
    {
        self.consumer_then(shop, conn, queue, inbox, handler, |_: &[Emit]| {})
    }

    /// [`consumer`](Self::consumer), calling `after` with the [`Emit`]s of each message once
    /// its transaction committed (to tell waiting requests about what just became durable).
    ///
    /// # Errors
    /// An invalid `INBOX_GROUP_COMMIT`.
    pub fn consumer_then<F, A>(
        &self,
        shop: &Shop,
        conn: &Connection,
        queue: QueueConfig,
        inbox: &str,
        handler: F,
        after: A,
    ) -> Result<Box<dyn Component>, BoxError>
    where
        F: for<'c> Fn(IncomingMessage, Tx<'c>) -> BoxFuture<'c, Result<Vec<Emit>, Outcome>>
            + Send
            + Sync
            + 'static,
        A: Fn(&[Emit]) + Send + Sync + 'static,
    {
        // The messages handed over together (the consumer runs `CONSUMER_CONCURRENCY` at once)
        // share one transaction: the inbox ids, the handlers' writes and their outgoing events.
        let group = self.inbox_group(shop, inbox)?;
        let (handler, after) = (Arc::new(handler), Arc::new(after));
        // What the chassis `idempotent` handler does with a group commit, with the handler's
        // events enqueued in the same transaction and the relay woken; counted, with the queue
        // in the service's control registry.
        Ok(Box::new(ConsumerComponent::new(
            conn,
            queue.clone(),
            shop.consumer_config(),
            shop.controlled(conn, &queue, move |msg: IncomingMessage| {
                let (handler, after, group) = (handler.clone(), after.clone(), group.clone());
                async move {
                    record_wait(group.consumer(), &msg);
                    let Some(id) = msg.message_id().map(str::to_owned) else {
                        return Outcome::reject(
                            "message has no message_id; the inbox cannot deduplicate it",
                        );
                    };
                    let processed = group
                        .process(&id, move |tx| {
                            let (handler, msg) = (handler.clone(), msg.clone());
                            Box::pin(async move { Ok(((), handler(msg, tx).await?)) })
                        })
                        .await;
                    match processed {
                        Ok(Some(((), emits))) => {
                            after(&emits);
                            Outcome::Ack
                        }
                        Ok(None) => Outcome::Ack,
                        Err(outcome) => outcome,
                    }
                }
            }),
        )))
    }

    /// The group commit of the inbox named `inbox` (its settings from `INBOX_GROUP_COMMIT`),
    /// for a handler that does something outside the transaction before it records the
    /// message (payments calls the provider); [`consumer`](Self::consumer) makes its own.
    ///
    /// # Errors
    /// An invalid `INBOX_GROUP_COMMIT`.
    pub fn inbox_group(&self, shop: &Shop, inbox: &str) -> Result<InboxGroup, BoxError> {
        let config = crate::service::inbox_group_config()?;
        let on = match self {
            Db::Sqlite(o) => GroupOn::Sqlite(
                Inbox::new(o.pool().clone(), inbox).group_commit(config)?,
                o.clone(),
            ),
            Db::Postgres(o) => GroupOn::Postgres(
                Inbox::new(o.pool().clone(), inbox).group_commit(config)?,
                o.clone(),
            ),
        };
        Ok(InboxGroup {
            on,
            shop: shop.clone(),
        })
    }

    /// Begins a transaction (SQLite: `BEGIN IMMEDIATE`, so writers queue for the lock).
    pub async fn begin(&self) -> Result<Txn, Error> {
        either!(self, Db, |o| Ok(Backend::txn(
            InboxDatabase::begin(o.pool()).await?,
            o
        )))
    }

    /// Begins the inbox transaction of `inbox` for `message_id`, for a handler that must do
    /// something outside the transaction first (call a remote service); `None` when the message
    /// was processed before. Otherwise use [`consumer`](Self::consumer).
    pub async fn claim(&self, inbox: &str, message_id: &str) -> Result<Option<Txn>, Error> {
        either!(self, Db, |o| Ok(
            match Inbox::new(o.pool().clone(), inbox)
                .begin(message_id)
                .await?
            {
                Claim::New(tx) => Some(Backend::txn(tx, o)),
                Claim::Duplicate => None,
            }
        ))
    }

    /// Fetches every row, outside a transaction.
    pub async fn fetch_all(
        &self,
        sql: &'static str,
        args: &[Arg],
    ) -> Result<Vec<Row>, sqlx::Error> {
        either!(self, Db, |o| Tx::from(&mut *o.pool().acquire().await?)
            .fetch_all(sql, args)
            .await)
    }

    /// Fetches the first row, if any, outside a transaction.
    pub async fn fetch_optional(
        &self,
        sql: &'static str,
        args: &[Arg],
    ) -> Result<Option<Row>, sqlx::Error> {
        Ok(self.fetch_all(sql, args).await?.into_iter().next())
    }

    /// Runs a script of statements (tests apply a service's schema with it; a service does in
    /// [`component`](Self::component)).
    pub async fn execute_script(&self, sql: &str) -> Result<(), sqlx::Error> {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        either!(self, Db, |o| sqlx::raw_sql(sql)
            .execute(o.pool())
            .await
            .map(|_| ()))
    }
}

/// The shop's SQLite pool: the chassis settings (WAL, `synchronous = NORMAL`, a busy timeout;
/// see `chassis_messaging::sql::sqlite_pool`) on **one** connection (`SQLITE_MAX_CONNECTIONS`
/// sets another number, for comparisons).
///
/// SQLite has one writer at a time, and every shop transaction writes (`BEGIN IMMEDIATE`). With
/// several connections, a transaction that finds the write lock taken waits in SQLite's busy
/// handler, which sleeps 1, 2, 5, 10, 15, 20, 25… ms between attempts: under load most of an
/// order's latency was spent asleep there. With one connection the transactions queue in the
/// pool instead and each starts the moment the previous one commits. It also means one sqlx
/// worker thread (each connection has its own) instead of four waking each other. Reads
/// (`GET` of an order, the relay's claim) queue behind writes as well; each takes well under a
/// millisecond. An in-memory database exists per connection, so it needs exactly one anyway.
/// As the chassis pools, it checks a connection on acquire only after it sat idle
/// (`chassis_messaging::sql::check_when_idle`: sqlx's default ping on every acquire was one
/// more round trip to the worker thread per transaction).
pub fn sqlite_pool(url: &str) -> Result<sqlx::SqlitePool, BoxError> {
    use std::str::FromStr as _;
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)
        .map_err(|e| format!("DATABASE_URL {url:?}: {e}"))?
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10));
    // SQLITE_MAX_CONNECTIONS is for comparisons (and an in-memory database needs exactly 1).
    let max = if url.contains(":memory:") {
        1
    } else {
        crate::service::env("SQLITE_MAX_CONNECTIONS", "1")
            .parse()
            .unwrap_or(1)
    };
    Ok(
        chassis_messaging::sql::check_when_idle(sqlx::sqlite::SqlitePoolOptions::new())
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(30))
            .connect_lazy_with(options),
    )
}

/// A transaction owned by the caller ([`Db::begin`], [`Db::claim`]), with its outbox.
#[derive(Debug)]
pub enum Txn {
    /// SQLite.
    Sqlite(Transaction<'static, Sqlite>, Outbox<Sqlite>),
    /// PostgreSQL.
    Postgres(Transaction<'static, Postgres>, Outbox<Postgres>),
}

impl Txn {
    /// The transaction's connection, for the shop's SQL.
    pub fn tx(&mut self) -> Tx<'_> {
        either!(self, Txn, |t, _| Tx::from(&mut **t))
    }

    /// Enqueues `emits` into the outbox in this transaction, caused by the message `cause`.
    pub async fn emit(
        &mut self,
        shop: &Shop,
        emits: &[Emit],
        cause: Option<&str>,
    ) -> Result<(), Error> {
        either!(self, Txn, |t, o| enqueue(o, &mut **t, shop, emits, cause)
            .await)
    }

    /// Commits and wakes the relay.
    pub async fn commit(self) -> Result<(), Error> {
        let start = std::time::Instant::now();
        either!(self, Txn, |t, o| o.commit(t).await)?;
        metrics::histogram!(COMMIT_DURATION).record(start.elapsed().as_secs_f64());
        Ok(())
    }
}

/// A connection inside a transaction (or borrowed from the pool): what the shop's SQL runs on.
#[derive(Debug)]
pub enum Tx<'c> {
    /// SQLite.
    Sqlite(&'c mut SqliteConnection),
    /// PostgreSQL.
    Postgres(&'c mut PgConnection),
}

impl<'c> From<&'c mut SqliteConnection> for Tx<'c> {
    fn from(c: &'c mut SqliteConnection) -> Self {
        Tx::Sqlite(c)
    }
}

impl<'c> From<&'c mut PgConnection> for Tx<'c> {
    fn from(c: &'c mut PgConnection) -> Self {
        Tx::Postgres(c)
    }
}

impl Tx<'_> {
    /// Runs a statement; returns the rows affected.
    pub async fn execute(&mut self, sql: &'static str, args: &[Arg]) -> Result<u64, sqlx::Error> {
        either!(self, Tx, |c| Ok(query!(sql, args)
            .execute(&mut **c)
            .await?
            .rows_affected()))
    }

    /// Fetches every row.
    pub async fn fetch_all(
        &mut self,
        sql: &'static str,
        args: &[Arg],
    ) -> Result<Vec<Row>, sqlx::Error> {
        either!(self, Tx, |c| Ok(query!(sql, args)
            .fetch_all(&mut **c)
            .await?
            .into_iter()
            .map(Row::from)
            .collect()))
    }

    /// Fetches at most one row.
    pub async fn fetch_optional(
        &mut self,
        sql: &'static str,
        args: &[Arg],
    ) -> Result<Option<Row>, sqlx::Error> {
        either!(self, Tx, |c| Ok(query!(sql, args)
            .fetch_optional(&mut **c)
            .await?
            .map(Row::from)))
    }
}

impl From<SqliteRow> for Row {
    fn from(row: SqliteRow) -> Self {
        Row::Sqlite(row)
    }
}

impl From<PgRow> for Row {
    fn from(row: PgRow) -> Self {
        Row::Postgres(row)
    }
}

/// A [`Txn`] of either database, built in code generic over it.
trait Backend: OutboxDatabase + InboxDatabase {
    fn txn(tx: Transaction<'static, Self>, outbox: &Outbox<Self>) -> Txn;
}

impl Backend for Sqlite {
    fn txn(tx: Transaction<'static, Self>, outbox: &Outbox<Self>) -> Txn {
        Txn::Sqlite(tx, outbox.clone())
    }
}

impl Backend for Postgres {
    fn txn(tx: Transaction<'static, Self>, outbox: &Outbox<Self>) -> Txn {
        Txn::Postgres(tx, outbox.clone())
    }
}

/// Writes `emits` into `outbox` through `conn`, as chassis envelopes named for `shop`.
async fn enqueue<DB: OutboxDatabase>(
    outbox: &Outbox<DB>,
    conn: &mut DB::Connection,
    shop: &Shop,
    emits: &[Emit],
    cause: Option<&str>,
) -> Result<(), Error> {
    for e in emits {
        let exchange = shop.name(e.exchange);
        outbox
            .enqueue_event(&mut *conn, &exchange, &e.envelope(shop.service(), cause))
            .await?;
    }
    Ok(())
}

/// An inbox's group commit on either database ([`Db::inbox_group`]): the messages handed over
/// together share one transaction, which records their ids, runs their work and enqueues the
/// [`Emit`]s the work returns (caused by the message); the relay is woken once it committed.
/// Cheap to clone.
#[derive(Clone)]
pub struct InboxGroup {
    on: GroupOn,
    shop: Shop,
}

#[derive(Clone)]
enum GroupOn {
    Sqlite(GroupCommit<Sqlite>, Outbox<Sqlite>),
    Postgres(GroupCommit<Postgres>, Outbox<Postgres>),
}

impl std::fmt::Debug for InboxGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxGroup")
            .field("consumer", &self.consumer())
            .finish_non_exhaustive()
    }
}

impl InboxGroup {
    /// The inbox's consumer name.
    pub fn consumer(&self) -> &str {
        match &self.on {
            GroupOn::Sqlite(group, _) => group.consumer(),
            GroupOn::Postgres(group, _) => group.consumer(),
        }
    }

    /// Runs `work` once per `message_id`, in a transaction shared with the messages handed over
    /// beside it, and enqueues the [`Emit`]s it returns in the same transaction; the value and
    /// the emits once it committed, `None` when the message was processed before. `work` may
    /// run more than once (another message of its batch failed: the batch ran again without it).
    ///
    /// # Errors
    /// The work's outcome (its writes and the id rolled back), or a retry when the shared
    /// transaction failed.
    pub async fn process<T, F>(
        &self,
        message_id: &str,
        work: F,
    ) -> Result<Option<(T, Vec<Emit>)>, Outcome>
    where
        F: for<'c> Fn(Tx<'c>) -> BoxFuture<'c, Result<(T, Vec<Emit>), Outcome>>
            + Send
            + Sync
            + 'static,
        T: Send + 'static,
    {
        let work = Arc::new(work);
        match &self.on {
            GroupOn::Sqlite(group, out) => grouped(group, out, &self.shop, message_id, work).await,
            GroupOn::Postgres(group, out) => {
                grouped(group, out, &self.shop, message_id, work).await
            }
        }
    }
}

/// [`InboxGroup::process`] on one database.
async fn grouped<DB, T, F>(
    group: &GroupCommit<DB>,
    out: &Outbox<DB>,
    shop: &Shop,
    id: &str,
    work: Arc<F>,
) -> Result<Option<(T, Vec<Emit>)>, Outcome>
where
    DB: OutboxDatabase + InboxDatabase,
    for<'c> Tx<'c>: From<&'c mut DB::Connection>,
    F: for<'c> Fn(Tx<'c>) -> BoxFuture<'c, Result<(T, Vec<Emit>), Outcome>> + Send + Sync + 'static,
    T: Send + 'static,
{
    let step = {
        let (out, shop, id) = (out.clone(), shop.clone(), id.to_owned());
        group_commit::work(move |tx: &mut Transaction<'static, DB>| {
            let (work, out, shop, id) = (work.clone(), out.clone(), shop.clone(), id.clone());
            Box::pin(async move {
                // An error rolls the batch back: these writes and the inbox id too.
                let (value, emits) = work(Tx::from(&mut **tx)).await.map_err(Unacked::Handler)?;
                enqueue(&out, &mut **tx, &shop, &emits, Some(&id))
                    .await
                    .map_err(|e| Unacked::Handler(Outcome::retry(format!("outbox: {e}"))))?;
                Ok((value, emits))
            }) as BoxFuture<'_, Result<(T, Vec<Emit>), Unacked>>
        })
    };
    match group.process(id, step).await {
        Ok(Processed::Done((value, emits))) => {
            if !emits.is_empty() {
                // Something to publish: wake the relay now (SQLite has no commit signal).
                out.notify_committed();
            }
            Ok(Some((value, emits)))
        }
        Ok(Processed::Duplicate) => Ok(None),
        Err(unacked) => Err(unacked.into_outcome()),
    }
}

/// A fresh, empty PostgreSQL schema for one test: on `DATABASE_URL` (default
/// `postgres://postgres@127.0.0.1:5432/test`), a uniquely named schema as the `search_path` of
/// every connection, so tests run the same SQL on PostgreSQL in parallel.
pub async fn postgres_test_db() -> Result<Db, BoxError> {
    let base = std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| u.starts_with("postgres"))
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("shop_test_{}", uuid::Uuid::new_v4().simple());
    let admin = Db::open(&base)?;
    admin
        .execute_script(&format!("CREATE SCHEMA {schema}"))
        .await?;
    either!(admin, Db, |o| o.pool().close().await);
    let sep = if base.contains('?') { '&' } else { '?' };
    Db::open(&format!("{base}{sep}options=-c%20search_path%3D{schema}"))
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

    async fn same_sql(db: Db) {
        db.execute_script("CREATE TABLE t (id TEXT PRIMARY KEY, n BIGINT, note TEXT)")
            .await
            .unwrap();
        let insert = "INSERT INTO t (id, n, note) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING";
        let mut txn = db.begin().await.unwrap();
        let args = ["a".into(), 1_i64.into(), None::<String>.into()];
        assert_eq!(txn.tx().execute(insert, &args).await.unwrap(), 1);
        drop(txn); // rolls back
        let select = "SELECT n, note FROM t WHERE id = $1";
        assert!(
            db.fetch_optional(select, &["a".into()])
                .await
                .unwrap()
                .is_none()
        );
        let mut txn = db.begin().await.unwrap();
        let args = ["a".into(), 1_i64.into(), Some("x").into()];
        assert_eq!(txn.tx().execute(insert, &args).await.unwrap(), 1);
        assert_eq!(txn.tx().execute(insert, &args).await.unwrap(), 0);
        txn.commit().await.unwrap();
        let row = db
            .fetch_optional(select, &["a".into()])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.get::<i64>("n").unwrap(), 1);
        assert_eq!(
            row.get::<Option<String>>("note").unwrap().as_deref(),
            Some("x")
        );
    }

    #[tokio::test]
    async fn the_same_sql_commits_and_rolls_back_on_both_databases() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        same_sql(Db::open(&url).unwrap()).await;
        same_sql(postgres_test_db().await.unwrap()).await;
    }
}
