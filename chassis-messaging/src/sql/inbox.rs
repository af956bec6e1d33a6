//! The idempotent inbox: a consumer applies each message once, even when the broker delivers
//! it twice.
//!
//! RabbitMQ delivers at least once (a redelivery after a lost ack, the outbox relay
//! republishing after a crash between confirm and mark). The [`Inbox`] records every processed
//! message id in the `chassis_inbox` table **inside the handler's own transaction**:
//!
//! 1. begin a transaction, `INSERT INTO chassis_inbox (consumer, message_id, …) … ON CONFLICT
//!    DO NOTHING`;
//! 2. no row inserted: the message was processed before (or is being processed right now by
//!    another consumer, whose transaction the insert waits for): skip it, ack it;
//! 3. otherwise run the handler's writes in the same transaction and commit; the id and the
//!    effect become durable together. If the handler fails the transaction rolls back, the id
//!    is forgotten and a redelivery is processed again.
//!
//! Ids are kept per consumer name, so two handlers of the same event in one database each
//! process it once. Old ids are deleted by [`Inbox::purge`] / [`Inbox::spawn_retention`];
//! keep them longer than any redelivery can take (the default retention is 7 days).
//!
//! Works with any handler through [`Inbox::process`] (a closure given the transaction) or
//! [`Inbox::begin`] (a transaction to use and commit yourself). Its table comes from the
//! migrations it shares with the outbox ([`Inbox::migrate`]; see [`schema`](super::schema)).
//!
//! # Example
//! ```
//! use chassis_messaging::sql::inbox::{Inbox, Processed};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let pool = sqlx::sqlite::SqlitePoolOptions::new()
//!     .max_connections(1)
//!     .connect("sqlite::memory:")
//!     .await?;
//! let inbox = Inbox::new(pool.clone(), "inventory.reserve");
//! inbox.migrate().await?;
//! sqlx::query("CREATE TABLE reservations (order_id TEXT)").execute(&pool).await?;
//!
//! for _delivery in 0..2 {
//!     // The same message delivered twice.
//!     let outcome = inbox
//!         .process("0192f6c4-msg-1", |tx| {
//!             Box::pin(async move {
//!                 sqlx::query("INSERT INTO reservations (order_id) VALUES ('42')")
//!                     .execute(&mut **tx)
//!                     .await?;
//!                 Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
//!             })
//!         })
//!         .await?;
//!     println!("{outcome:?}");
//! }
//! let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM reservations").fetch_one(&pool).await?;
//! assert_eq!(n, 1, "the effect happened once");
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Deserialize;
use sqlx::{Pool, Transaction};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::group_commit::{self, GroupCommit, GroupCommitConfig, Unacked};
#[cfg(any(feature = "sqlite", feature = "postgres"))]
use super::schema::execute;
use super::schema::{SchemaDatabase, db_err, now_ms};
use crate::amqp::consumer::{Handler, Outcome};
use crate::amqp::incoming::IncomingMessage;
use crate::error::{Error, Result};
use chassis_observability::metrics::names;

/// A database the inbox works on: implemented for SQLite and PostgreSQL (per enabled feature).
pub trait InboxDatabase: SchemaDatabase {
    /// Begins the handler's transaction (SQLite: `BEGIN IMMEDIATE`, so the write lock is taken
    /// up front and concurrent consumers queue instead of failing with `SQLITE_BUSY`).
    fn begin(pool: &Pool<Self>) -> impl Future<Output = Result<Transaction<'static, Self>>> + Send;

    /// Records `message_id` for `consumer` in `tx`; `false` when it was already recorded.
    fn record<'c>(
        tx: &'c mut Transaction<'static, Self>,
        consumer: &'c str,
        message_id: &'c str,
        now_ms: i64,
    ) -> impl Future<Output = Result<bool>> + Send + 'c;

    /// Deletes ids processed before `before_ms`; returns how many.
    fn purge(pool: &Pool<Self>, before_ms: i64) -> impl Future<Output = Result<u64>> + Send;
}

// Recording and purging are the same statements on both databases (SQLite reads `$n` as
// numbered parameters too); only how the transaction begins differs.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
macro_rules! inbox_statements {
    () => {
        async fn record<'c>(
            tx: &'c mut Transaction<'static, Self>,
            consumer: &'c str,
            message_id: &'c str,
            now_ms: i64,
        ) -> Result<bool> {
            let sql = "INSERT INTO chassis_inbox (consumer, message_id, processed_at) \
                       VALUES ($1, $2, $3) ON CONFLICT DO NOTHING";
            Ok(execute!(&mut **tx, sql, consumer, message_id, now_ms)? == 1)
        }

        async fn purge(pool: &Pool<Self>, before_ms: i64) -> Result<u64> {
            execute!(
                pool,
                "DELETE FROM chassis_inbox WHERE processed_at < $1",
                before_ms
            )
        }
    };
}

#[cfg(feature = "sqlite")]
impl InboxDatabase for sqlx::Sqlite {
    async fn begin(pool: &Pool<Self>) -> Result<Transaction<'static, Self>> {
        pool.begin_with("BEGIN IMMEDIATE").await.map_err(db_err)
    }

    inbox_statements!();
}

#[cfg(feature = "postgres")]
impl InboxDatabase for sqlx::Postgres {
    async fn begin(pool: &Pool<Self>) -> Result<Transaction<'static, Self>> {
        pool.begin().await.map_err(db_err)
    }

    inbox_statements!();
}

/// Counts one committed inbox transaction that processed `messages` messages.
pub(crate) fn count_commit(consumer: &str, messages: u64) {
    let destination = names::labels::MESSAGING_DESTINATION_NAME;
    metrics::counter!(names::INBOX_TRANSACTIONS, destination => consumer.to_owned()).increment(1);
    metrics::counter!(names::INBOX_PROCESSED, destination => consumer.to_owned())
        .increment(messages);
}

/// What [`Inbox::begin`] found.
#[derive(Debug)]
pub enum Claim<DB: sqlx::Database> {
    /// First delivery: the id is recorded in this transaction. Do the handler's writes in it
    /// and commit; dropping it (or an error) forgets the id again.
    New(Transaction<'static, DB>),
    /// Processed before: skip the message and ack it.
    Duplicate,
}

/// What [`Inbox::process`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processed<T> {
    /// The handler ran and its transaction committed; its result.
    Done(T),
    /// The message was processed before; the handler did not run.
    Duplicate,
}

impl<T> Processed<T> {
    /// Whether the message was a duplicate.
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Self::Duplicate)
    }
}

/// How [`Inbox::spawn_retention`] deletes old ids. Deserializes from e.g.
/// `{ keep = "7d", interval = "1h" }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InboxRetention {
    /// How long a processed id is kept; a redelivery after that is processed again, so keep
    /// ids longer than any redelivery can take. Defaults to 7 days.
    #[serde(with = "humantime_serde")]
    pub keep: Duration,
    /// How often old ids are deleted. Defaults to 1 h.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for InboxRetention {
    fn default() -> Self {
        Self {
            keep: Duration::from_secs(7 * 24 * 3600),
            interval: Duration::from_secs(3600),
        }
    }
}

impl InboxRetention {
    chassis_core::__builder_setters! {
        /// Sets [`keep`](Self::keep).
        keep: Duration,
        /// Sets [`interval`](Self::interval).
        interval: Duration,
    }
}

/// The idempotent-consumer guard of one consumer (handler) on one database. Cheap to clone.
pub struct Inbox<DB: sqlx::Database> {
    pool: Pool<DB>,
    consumer: Arc<str>,
}

/// An inbox on SQLite.
#[cfg(feature = "sqlite")]
pub type SqliteInbox = Inbox<sqlx::Sqlite>;
/// An inbox on PostgreSQL.
#[cfg(feature = "postgres")]
pub type PgInbox = Inbox<sqlx::Postgres>;

impl<DB: sqlx::Database> Clone for Inbox<DB> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            consumer: self.consumer.clone(),
        }
    }
}

impl<DB: sqlx::Database> std::fmt::Debug for Inbox<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

impl<DB: InboxDatabase> Inbox<DB> {
    /// The default retention of processed ids: 7 days.
    pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

    /// An inbox for the consumer named `consumer` (e.g. the queue or handler name) on `pool`.
    /// Its counters ([`INBOX_PROCESSED`](crate::sql::metrics::INBOX_PROCESSED),
    /// [`INBOX_DUPLICATES`](crate::sql::metrics::INBOX_DUPLICATES),
    /// [`INBOX_TRANSACTIONS`](crate::sql::metrics::INBOX_TRANSACTIONS), labelled with `consumer`)
    /// are registered at 0 here.
    pub fn new(pool: Pool<DB>, consumer: impl Into<String>) -> Self {
        let consumer: Arc<str> = consumer.into().into();
        let destination = [(names::labels::MESSAGING_DESTINATION_NAME, &*consumer)];
        names::preregister(names::INBOX_PROCESSED, &destination);
        names::preregister(names::INBOX_DUPLICATES, &destination);
        names::preregister(names::INBOX_TRANSACTIONS, &destination);
        Self { pool, consumer }
    }

    /// The pool.
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }

    /// The consumer name ids are recorded under.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Creates the inbox (and outbox) tables if needed.
    pub async fn migrate(&self) -> Result<()> {
        DB::migrate(&self.pool).await
    }

    /// Begins the handler's transaction and records `message_id` in it.
    ///
    /// # Errors
    /// [`ErrorKind::Database`](crate::error::ErrorKind::Database) when the database failed
    /// (do not ack: let the message be redelivered).
    pub async fn begin(&self, message_id: &str) -> Result<Claim<DB>> {
        let mut tx = DB::begin(&self.pool).await?;
        if DB::record(&mut tx, &self.consumer, message_id, now_ms()).await? {
            Ok(Claim::New(tx))
        } else {
            // Nothing was written; rolling back just releases the connection.
            drop(tx);
            metrics::counter!(names::INBOX_DUPLICATES, names::labels::MESSAGING_DESTINATION_NAME => self.consumer.to_string())
                .increment(1);
            tracing::debug!(consumer = %self.consumer, message_id, "duplicate delivery skipped");
            Ok(Claim::Duplicate)
        }
    }

    /// Runs `handler` once per `message_id`: inside a transaction that records the id, which
    /// commits with the handler's writes when it returns `Ok`. A duplicate skips the handler.
    ///
    /// The handler receives the transaction: `|tx| Box::pin(async move { …(&mut **tx)… })`.
    ///
    /// # Errors
    /// The handler's error (the transaction rolled back, the id is not recorded), or a database
    /// error converted into `E`.
    pub async fn process<T, E, F>(&self, message_id: &str, handler: F) -> Result<Processed<T>, E>
    where
        F: for<'c> FnOnce(&'c mut Transaction<'static, DB>) -> BoxFuture<'c, Result<T, E>>,
        E: From<Error>,
    {
        let mut tx = match self.begin(message_id).await? {
            Claim::New(tx) => tx,
            Claim::Duplicate => return Ok(Processed::Duplicate),
        };
        let value = handler(&mut tx).await?;
        tx.commit().await.map_err(db_err)?;
        count_commit(&self.consumer, 1);
        Ok(Processed::Done(value))
    }

    /// A [`GroupCommit`] of this inbox: messages handed to it together share one transaction
    /// (see [`group_commit`]). Starts its batch tasks on the current Tokio
    /// runtime.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`](crate::error::ErrorKind::InvalidConfig) when `config` does not
    /// [validate](GroupCommitConfig::validate).
    pub fn group_commit(&self, config: GroupCommitConfig) -> Result<GroupCommit<DB>> {
        config.validate()?;
        Ok(GroupCommit::start(
            self.pool.clone(),
            self.consumer.clone(),
            config,
        ))
    }

    /// Deletes ids (of every consumer) processed more than `older_than` ago; returns how many.
    pub async fn purge(&self, older_than: Duration) -> Result<u64> {
        let cutoff =
            now_ms().saturating_sub(i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX));
        DB::purge(&self.pool, cutoff).await
    }

    /// Runs [`purge`](Self::purge) of the ids older than [`InboxRetention::keep`] every
    /// [`InboxRetention::interval`] until `token` is cancelled.
    pub fn spawn_retention(
        &self,
        retention: InboxRetention,
        token: CancellationToken,
    ) -> JoinHandle<()> {
        let inbox = self.clone();
        let InboxRetention { keep, interval } = retention;
        tokio::spawn(async move {
            loop {
                match inbox.purge(keep).await {
                    Ok(n) if n > 0 => tracing::debug!(deleted = n, "inbox retention"),
                    Ok(_) => {}
                    Err(err) => tracing::warn!(error = %err, "inbox retention failed"),
                }
                tokio::select! {
                    () = token.cancelled() => return,
                    () = tokio::time::sleep(interval) => {}
                }
            }
        })
    }
}

/// A consumer [`Handler`] that runs a transactional handler at most once per message id; see
/// [`idempotent`].
pub struct IdempotentHandler<DB: sqlx::Database, F> {
    inbox: Inbox<DB>,
    f: Arc<F>,
    group: Option<GroupCommit<DB>>,
}

impl<DB: sqlx::Database, F> std::fmt::Debug for IdempotentHandler<DB, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotentHandler")
            .field("inbox", &self.inbox)
            .finish_non_exhaustive()
    }
}

/// Wraps `f` into a consumer [`Handler`] guarded by `inbox`.
///
/// For each delivery: the message id (AMQP `message_id`) is recorded in a new transaction and
/// `f(message, &mut tx)` runs in it. [`Outcome::Ack`] commits (the id and the handler's writes
/// together) and acks; `Retry`/`Reject` roll back (the id is forgotten, so a retried delivery
/// runs again) and are passed on. A duplicate is acked without calling `f`. A database failure
/// is a retry; a message without a `message_id` is rejected (it could never be deduplicated).
///
/// ```no_run
/// use chassis_messaging::amqp::consumer::{Consumer, ConsumerConfig, Outcome};
/// use chassis_messaging::sql::inbox::{idempotent, Inbox};
/// # async fn run(conn: chassis_messaging::amqp::connection::Connection,
/// #     queue: chassis_messaging::amqp::topology::QueueConfig,
/// #     pool: sqlx::SqlitePool) -> Result<(), chassis_messaging::error::Error> {
/// let inbox = Inbox::new(pool, "inventory.reserve");
/// let handler = idempotent(inbox, |msg, tx| {
///     Box::pin(async move {
///         let inserted = sqlx::query("INSERT INTO reservations (message_id) VALUES (?1)")
///             .bind(msg.message_id())
///             .execute(&mut **tx)
///             .await;
///         match inserted {
///             Ok(_) => Outcome::Ack,
///             Err(e) => Outcome::retry(e.to_string()),
///         }
///     })
/// });
/// let consumer = Consumer::start(&conn, queue, ConsumerConfig::default(), handler).await?;
/// # Ok(()) }
/// ```
pub fn idempotent<DB, F>(inbox: Inbox<DB>, f: F) -> IdempotentHandler<DB, F>
where
    DB: InboxDatabase,
    F: for<'c> Fn(IncomingMessage, &'c mut Transaction<'static, DB>) -> BoxFuture<'c, Outcome>
        + Send
        + Sync
        + 'static,
{
    IdempotentHandler {
        inbox,
        f: Arc::new(f),
        group: None,
    }
}

impl<DB: InboxDatabase, F> IdempotentHandler<DB, F> {
    /// Handles the deliveries that arrive together in one transaction (a
    /// [`GroupCommit`]; useful with a consumer
    /// [`concurrency`](crate::amqp::consumer::ConsumerConfig::concurrency) above 1, which is
    /// what hands several deliveries over at once). Each delivery's outcome is what it would be
    /// alone: `Retry`/`Reject` of one message rolls the batch back and the others run again
    /// without it, so `f` may run more than once for a delivery.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`](crate::error::ErrorKind::InvalidConfig) when `config` does not
    /// validate.
    pub fn group_commit(mut self, config: GroupCommitConfig) -> Result<Self> {
        self.group = Some(self.inbox.group_commit(config)?);
        Ok(self)
    }
}

impl<DB, F> Handler for IdempotentHandler<DB, F>
where
    DB: InboxDatabase,
    F: for<'c> Fn(IncomingMessage, &'c mut Transaction<'static, DB>) -> BoxFuture<'c, Outcome>
        + Send
        + Sync
        + 'static,
{
    fn handle(&self, msg: IncomingMessage) -> BoxFuture<'static, Outcome> {
        let inbox = self.inbox.clone();
        let f = self.f.clone();
        if let Some(group) = self.group.clone() {
            return Box::pin(async move {
                let Some(message_id) = msg.message_id().map(str::to_owned) else {
                    return Outcome::reject(
                        "message has no message_id; the inbox cannot deduplicate it",
                    );
                };
                let work = group_commit::work(move |tx: &mut Transaction<'static, DB>| {
                    let (f, msg) = (f.clone(), msg.clone());
                    Box::pin(async move {
                        match f(msg, tx).await {
                            Outcome::Ack => Ok(()),
                            other => Err(Unacked::Handler(other)),
                        }
                    }) as BoxFuture<'_, Result<(), Unacked>>
                });
                match group.process(&message_id, work).await {
                    Ok(_) => Outcome::Ack,
                    Err(unacked) => unacked.into_outcome(),
                }
            });
        }
        Box::pin(async move {
            let Some(message_id) = msg.message_id().map(str::to_owned) else {
                return Outcome::reject(
                    "message has no message_id; the inbox cannot deduplicate it",
                );
            };
            let mut tx = match inbox.begin(&message_id).await {
                Ok(Claim::New(tx)) => tx,
                Ok(Claim::Duplicate) => return Outcome::Ack,
                Err(err) => return Outcome::retry(format!("inbox: {err}")),
            };
            let outcome = f(msg, &mut tx).await;
            if outcome != Outcome::Ack {
                // Dropping the transaction rolls back the handler's writes and the id.
                return outcome;
            }
            match tx.commit().await {
                Ok(()) => {
                    count_commit(&inbox.consumer, 1);
                    Outcome::Ack
                }
                Err(err) => Outcome::retry(format!("inbox commit failed: {err}")),
            }
        })
    }
}
