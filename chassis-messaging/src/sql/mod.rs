//! The database side: what makes messaging transactional, on SQLite and PostgreSQL.
//!
//! - [`outbox`]: [`Outbox`](outbox::Outbox), the transactional outbox (an event is published
//!   if and only if the transaction that wrote it committed), and its [`Relay`](outbox::Relay).
//! - [`inbox`]: [`Inbox`](inbox::Inbox), the idempotent-consumer guard (a redelivered message
//!   has its effect once).
//! - [`group_commit`]: [`GroupCommit`](group_commit::GroupCommit), an inbox's messages that
//!   arrive together handled in one transaction.
//! - [`schema`]: the migrations both share, on either database.
//! - [`metrics`]: the names of the metrics both record.
//! - [`sqlite_pool`], [`postgres_pool`]: pools set up for them (SQLite: WAL, busy timeout, a
//!   few connections; both: a connection checked on acquire only after sitting idle,
//!   [`check_when_idle`]).
//!
//! Each is generic over the database (`Outbox<DB>`, `Inbox<DB>`), implemented for
//! [`sqlx::Sqlite`] (feature `sqlite`, the default) and [`sqlx::Postgres`] (feature
//! `postgres`). They meet the broker only through the transport's traits: the relay publishes
//! through any [`Publish`](crate::amqp::publisher::Publish), and
//! [`idempotent`](inbox::idempotent) wraps a consumer [`Handler`](crate::amqp::consumer::Handler).
//!
//! # Example
//! ```
//! use chassis_messaging::sql::{inbox::Inbox, outbox::Outbox};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::sqlite::SqlitePoolOptions::new()
//!     .max_connections(1)
//!     .connect("sqlite::memory:")
//!     .await?;
//! let outbox = Outbox::new(pool.clone());
//! let inbox = Inbox::new(pool, "billing.charge");
//! outbox.migrate().await?; // the tables of both
//! inbox.migrate().await?; // nothing left to do
//! # Ok(())
//! # }
//! ```

pub mod group_commit;
pub mod inbox;
pub mod metrics;
pub mod outbox;
mod pool;
pub mod schema;

#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use pool::postgres_pool;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use pool::sqlite_pool;
pub use pool::{IDLE_CHECK_AFTER, check_when_idle};
