//! The inbox's group commit on a real SQLite file and (feature `postgres`) the real PostgreSQL:
//! messages queued together share a transaction, one message's failure or panic costs the
//! others nothing, duplicates inside a batch are skipped, and a failing transaction fails the
//! whole batch.

mod outbox_support;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use chassis_messaging::amqp::consumer::{Handler, Outcome};
use chassis_messaging::amqp::incoming::IncomingMessage;
use chassis_messaging::error::{Error, ErrorKind};
use chassis_messaging::message::OutgoingMessage;
use chassis_messaging::sql::group_commit::{self, GroupCommit, GroupCommitConfig};
use chassis_messaging::sql::inbox::{Inbox, InboxDatabase, Processed, idempotent};
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use outbox_support::*;
use tokio::sync::oneshot;

/// How often each message's work ran.
type Calls = Arc<Mutex<HashMap<&'static str, usize>>>;

#[derive(Debug, PartialEq)]
enum Failure {
    Refused,
    Inbox(ErrorKind),
}

impl From<Error> for Failure {
    fn from(err: Error) -> Self {
        Self::Inbox(err.kind().clone())
    }
}

/// The work of message `id`: counts the call, writes its effect, then succeeds, or fails when
/// `fail`.
fn work<DB: InboxDatabase>(
    id: &'static str,
    calls: &Calls,
    fail: bool,
) -> impl for<'c> Fn(
    &'c mut sqlx::Transaction<'static, DB>,
) -> BoxFuture<'c, Result<&'static str, Failure>>
+ Send
+ 'static
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    let calls = calls.clone();
    move |tx| {
        *calls.lock().unwrap().entry(id).or_default() += 1;
        Box::pin(async move {
            let insert = format!("INSERT INTO effects VALUES ('{id}')");
            sqlx::query(sqlx::AssertSqlSafe(insert))
                .execute(&mut **tx)
                .await
                .map_err(|_| Failure::Inbox(ErrorKind::Database))?;
            if fail { Err(Failure::Refused) } else { Ok(id) }
        })
    }
}

async fn rows<DB: InboxDatabase>(pool: &sqlx::Pool<DB>, sql: &'static str) -> Vec<String>
where
    for<'c> &'c sqlx::Pool<DB>: sqlx::Executor<'c, Database = DB>,
    (String,): for<'r> sqlx::FromRow<'r, DB::Row>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    let mut rows: Vec<String> = sqlx::query_as::<_, (String,)>(sql)
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .map(|(s,)| s)
        .collect();
    rows.sort();
    rows
}

/// Holds the group's only batch task inside the work of message `gate` until the returned
/// sender fires, so what is handed over meanwhile queues into one batch.
async fn hold<DB: InboxDatabase>(
    group: &GroupCommit<DB>,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Processed<&'static str>>,
)
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    let (started_tx, started) = oneshot::channel::<()>();
    let (release, released) = oneshot::channel::<()>();
    let slot = Arc::new(Mutex::new(Some((started_tx, released))));
    let group = group.clone();
    let gate = tokio::spawn(async move {
        let work = group_commit::work(move |tx: &mut sqlx::Transaction<'static, DB>| {
            let slot = slot.clone();
            Box::pin(async move {
                sqlx::query("INSERT INTO effects VALUES ('gate')")
                    .execute(&mut **tx)
                    .await
                    .unwrap();
                let first = slot.lock().unwrap().take();
                if let Some((started, released)) = first {
                    let _ = started.send(());
                    let _ = released.await;
                }
                Ok::<_, Failure>("gate")
            }) as BoxFuture<'_, _>
        });
        group.process("gate", work).await.unwrap()
    });
    started.await.unwrap();
    (release, gate)
}

/// A group on `pool`'s inbox (with the `effects` table), held as [`hold`] does.
async fn held<DB: InboxDatabase>(
    pool: sqlx::Pool<DB>,
) -> (
    GroupCommit<DB>,
    Calls,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Processed<&'static str>>,
)
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'c> &'c sqlx::Pool<DB>: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    let inbox = effects_inbox(pool, "reserve").await;
    let group = inbox.group_commit(GroupCommitConfig::default()).unwrap();
    let (release, gate) = hold(&group).await;
    (group, Calls::default(), release, gate)
}

/// Five deliveries queued behind a running batch (`a`, `b`, `c` which fails, `d`, then `a`
/// again): `c` fails alone, `a` and `b` ran in the same transaction as `c` (rolled back with
/// it, so they ran twice) and committed in the next one with `d`; the second `a` is skipped.
async fn a_batch_survives_one_failure<DB: InboxDatabase>(pool: sqlx::Pool<DB>)
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'c> &'c sqlx::Pool<DB>: sqlx::Executor<'c, Database = DB>,
    (String,): for<'r> sqlx::FromRow<'r, DB::Row>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    let (group, calls, release, gate) = held(pool.clone()).await;
    // `join!` polls in order, and each `process` queues its message on its first poll.
    let (a, b, c, d, again, ()) = tokio::join!(
        group.process("a", work::<DB>("a", &calls, false)),
        group.process("b", work::<DB>("b", &calls, false)),
        group.process("c", work::<DB>("c", &calls, true)),
        group.process("d", work::<DB>("d", &calls, false)),
        group.process("a", work::<DB>("a-again", &calls, false)),
        async {
            release.send(()).unwrap();
        },
    );
    assert_eq!(gate.await.unwrap(), Processed::Done("gate"));
    assert_eq!(a, Ok(Processed::Done("a")));
    assert_eq!(b, Ok(Processed::Done("b")));
    assert_eq!(c, Err(Failure::Refused));
    assert_eq!(d, Ok(Processed::Done("d")));
    assert_eq!(again, Ok(Processed::Duplicate));
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        (
            calls.get("a"),
            calls.get("b"),
            calls.get("c"),
            calls.get("d")
        ),
        (Some(&2), Some(&2), Some(&1), Some(&1)),
        "a and b shared c's transaction and ran again after its rollback: {calls:?}"
    );
    assert_eq!(calls.get("a-again"), None, "the duplicate never ran");
    let effects = rows(&pool, "SELECT message_id FROM effects").await;
    assert_eq!(
        effects,
        ["a", "b", "d", "gate"],
        "each effect once, none of c"
    );
    let ids = rows(&pool, "SELECT message_id FROM chassis_inbox").await;
    assert_eq!(ids, ["a", "b", "d", "gate"], "c's id rolled back");
    // Redelivered, c runs again (and now succeeds); a stays a duplicate.
    let c = group
        .process("c", work::<DB>("c", &calls_of(), false))
        .await;
    assert_eq!(c, Ok(Processed::Done("c")));
    let a = group
        .process("a", work::<DB>("a", &calls_of(), false))
        .await;
    assert_eq!(a, Ok(Processed::Duplicate));
}

fn calls_of() -> Calls {
    Calls::default()
}

/// A message whose work panics panics in its caller; the rest of its batch commits.
async fn a_panic_stays_with_its_message<DB: InboxDatabase>(pool: sqlx::Pool<DB>)
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'c> &'c sqlx::Pool<DB>: sqlx::Executor<'c, Database = DB>,
    (String,): for<'r> sqlx::FromRow<'r, DB::Row>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    let (group, calls, release, gate) = held(pool.clone()).await;
    let panicking = group_commit::work(move |_tx: &mut sqlx::Transaction<'static, DB>| {
        Box::pin(async move {
            panic!("handler bug");
            #[allow(unreachable_code)]
            Ok::<&'static str, Failure>("never")
        }) as BoxFuture<'_, _>
    });
    let (panicked, after, ()) = tokio::join!(
        AssertUnwindSafe(group.process("p", panicking)).catch_unwind(),
        group.process("e", work::<DB>("e", &calls, false)),
        async {
            release.send(()).unwrap();
        },
    );
    gate.await.unwrap();
    assert!(panicked.is_err(), "the caller panicked");
    assert_eq!(after, Ok(Processed::Done("e")));
    let effects = rows(&pool, "SELECT message_id FROM effects").await;
    assert_eq!(effects, ["e", "gate"]);
    let ids = rows(&pool, "SELECT message_id FROM chassis_inbox").await;
    assert_eq!(ids, ["e", "gate"], "the panicking message is not recorded");
}

/// Without the inbox table the batch's insert fails: every message of the batch gets the
/// database error and nothing is written.
async fn a_failing_transaction_fails_the_whole_batch<DB: InboxDatabase>(pool: sqlx::Pool<DB>)
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    let group = Inbox::new(pool, "reserve")
        .group_commit(GroupCommitConfig::default())
        .unwrap();
    let calls = Calls::default();
    let (a, b) = tokio::join!(
        group.process("a", work::<DB>("a", &calls, false)),
        group.process("b", work::<DB>("b", &calls, false)),
    );
    assert_eq!(a, Err(Failure::Inbox(ErrorKind::Database)));
    assert_eq!(b, Err(Failure::Inbox(ErrorKind::Database)));
    assert!(calls.lock().unwrap().is_empty(), "no work ran");
}

fn incoming(id: &str, body: &str) -> IncomingMessage {
    let mut msg = OutgoingMessage::new("ex", "event.happened", body.as_bytes().to_vec());
    msg.message_id = Some(id.to_owned());
    IncomingMessage::from_outgoing(msg)
}

#[tokio::test]
async fn sqlite_the_consumer_adapter_groups_and_keeps_each_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let pool = sqlite_pool(&dir).await;
    let inbox = effects_inbox(pool.clone(), "reserve").await;
    let handler = idempotent(inbox, |msg, tx| {
        Box::pin(async move {
            let id = msg.message_id().unwrap_or_default().to_owned();
            sqlx::query("INSERT INTO effects VALUES (?1)")
                .bind(&id)
                .execute(&mut **tx)
                .await
                .unwrap();
            match msg.body() {
                b"retry" => Outcome::retry("not yet"),
                b"reject" => Outcome::reject("bad"),
                _ => Outcome::Ack,
            }
        })
    })
    .group_commit(GroupCommitConfig::default().max_batch(8))
    .unwrap();
    let outcomes = futures_util::future::join_all([
        handler.handle(incoming("m-1", "ok")),
        handler.handle(incoming("m-2", "retry")),
        handler.handle(incoming("m-3", "ok")),
        handler.handle(incoming("m-4", "reject")),
        handler.handle(incoming("m-1", "ok")),
    ])
    .await;
    assert_eq!(outcomes[0], Outcome::Ack);
    assert_eq!(outcomes[1], Outcome::retry("not yet"));
    assert_eq!(outcomes[2], Outcome::Ack);
    assert!(
        matches!(outcomes[3], Outcome::Reject { .. }),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[4], Outcome::Ack, "the duplicate is acked");
    let effects = rows(&pool, "SELECT message_id FROM effects").await;
    assert_eq!(effects, ["m-1", "m-3"]);
}

#[tokio::test]
async fn an_invalid_config_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let inbox = Inbox::new(sqlite_pool(&dir).await, "reserve");
    let err = inbox
        .group_commit(GroupCommitConfig::default().max_batch(0))
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::InvalidConfig { .. }),
        "{err}"
    );
}

/// Each scenario as a test per database: in `sqlite` on a fresh SQLite file, and (feature
/// `postgres`) in `postgres` in a fresh schema of the test server.
macro_rules! on_each_database {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let dir = tempfile::tempdir().unwrap();
                    super::$scenario(super::sqlite_pool(&dir).await).await;
                }
            )*
        }

        #[cfg(feature = "postgres")]
        mod postgres {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let db = super::PgSchema::new(4).await;
                    super::$scenario(db.pool.clone()).await;
                    db.drop().await;
                }
            )*
        }
    };
}

on_each_database!(
    a_batch_survives_one_failure,
    a_panic_stays_with_its_message,
    a_failing_transaction_fails_the_whole_batch,
);
