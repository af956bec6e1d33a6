//! The idempotent inbox on a real SQLite file and (feature `postgres`) the real PostgreSQL.

mod outbox_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chassis_messaging::amqp::consumer::{Handler, Outcome};
use chassis_messaging::amqp::incoming::IncomingMessage;
use chassis_messaging::message::OutgoingMessage;
use chassis_messaging::sql::inbox::{Claim, Inbox, InboxDatabase, Processed, idempotent};
use outbox_support::*;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn sqlite_inbox(dir: &tempfile::TempDir) -> Inbox<sqlx::Sqlite> {
    effects_inbox(sqlite_pool(dir).await, "reserve").await
}

/// Processes message `m-1`: the handler writes its effect, holds its transaction open for
/// `hold`, then returns `result`.
async fn process_m1<DB: InboxDatabase, T: Send + 'static>(
    inbox: &Inbox<DB>,
    hold: Duration,
    result: Result<T, BoxError>,
) -> Result<Processed<T>, BoxError>
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    inbox
        .process("m-1", |tx| {
            Box::pin(async move {
                sqlx::query("INSERT INTO effects VALUES ('m-1')")
                    .execute(&mut **tx)
                    .await?;
                if !hold.is_zero() {
                    tokio::time::sleep(hold).await;
                }
                result
            })
        })
        .await
}

/// Four concurrent deliveries of `m-1`, each holding its transaction for `hold`: returns how
/// many were processed (not skipped as duplicates).
async fn concurrent_m1<DB: InboxDatabase>(inbox: &Inbox<DB>, hold: Duration) -> usize
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let inbox = inbox.clone();
            tokio::spawn(async move { process_m1(&inbox, hold, Ok(())).await.unwrap() })
        })
        .collect();
    let mut done = 0;
    for t in tasks {
        if !t.await.unwrap().is_duplicate() {
            done += 1;
        }
    }
    done
}

async fn effects<DB: InboxDatabase>(inbox: &Inbox<DB>) -> i64
where
    for<'c> &'c sqlx::Pool<DB>: sqlx::Executor<'c, Database = DB>,
    (i64,): for<'r> sqlx::FromRow<'r, DB::Row>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM effects")
        .fetch_one(inbox.pool())
        .await
        .unwrap();
    n
}

#[tokio::test]
async fn sqlite_duplicate_is_skipped_and_the_effect_happens_once() {
    let dir = tempfile::tempdir().unwrap();
    let inbox = sqlite_inbox(&dir).await;
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        outcomes.push(
            process_m1(&inbox, Duration::ZERO, Ok("applied"))
                .await
                .unwrap(),
        );
    }
    assert_eq!(
        outcomes,
        vec![
            Processed::Done("applied"),
            Processed::Duplicate,
            Processed::Duplicate
        ]
    );
    assert_eq!(effects(&inbox).await, 1);
    // Another consumer of the same message processes it once too.
    let other = Inbox::new(inbox.pool().clone(), "notify");
    assert!(matches!(other.begin("m-1").await.unwrap(), Claim::New(_)));
}

#[tokio::test]
async fn sqlite_failed_handler_rolls_back_its_writes_and_the_id() {
    let dir = tempfile::tempdir().unwrap();
    let inbox = sqlite_inbox(&dir).await;
    let failed =
        process_m1::<_, ()>(&inbox, Duration::ZERO, Err("downstream refused".into())).await;
    assert_eq!(failed.unwrap_err().to_string(), "downstream refused");
    assert_eq!(effects(&inbox).await, 0, "the handler's write rolled back");
    let retried = process_m1(&inbox, Duration::ZERO, Ok(())).await.unwrap();
    assert_eq!(retried, Processed::Done(()), "the redelivery is processed");
    assert_eq!(effects(&inbox).await, 1);
}

#[tokio::test]
async fn sqlite_concurrent_duplicates_apply_once() {
    let dir = tempfile::tempdir().unwrap();
    let inbox = sqlite_inbox(&dir).await;
    assert_eq!(concurrent_m1(&inbox, Duration::from_millis(50)).await, 1);
    assert_eq!(effects(&inbox).await, 1);
}

#[tokio::test]
async fn sqlite_retention_purges_only_old_ids() {
    let dir = tempfile::tempdir().unwrap();
    let inbox = sqlite_inbox(&dir).await;
    for id in ["old", "new"] {
        let Claim::New(tx) = inbox.begin(id).await.unwrap() else {
            panic!("first delivery")
        };
        tx.commit().await.unwrap();
    }
    sqlx::query(
        "UPDATE chassis_inbox SET processed_at = processed_at - 3600000 WHERE message_id = 'old'",
    )
    .execute(inbox.pool())
    .await
    .unwrap();
    assert_eq!(inbox.purge(Duration::from_secs(60)).await.unwrap(), 1);
    assert!(matches!(
        inbox.begin("new").await.unwrap(),
        Claim::Duplicate
    ));
    assert!(
        matches!(inbox.begin("old").await.unwrap(), Claim::New(_)),
        "purged ids are forgotten"
    );
}

fn incoming(id: Option<&str>) -> IncomingMessage {
    let mut msg = OutgoingMessage::new("ex", "event.happened", b"{}".to_vec());
    msg.message_id = id.map(str::to_owned);
    IncomingMessage::from_outgoing(msg)
}

#[tokio::test]
async fn sqlite_consumer_adapter_commits_on_ack_rolls_back_on_retry_and_acks_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let inbox = sqlite_inbox(&dir).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let calls = calls.clone();
        idempotent(inbox.clone(), move |_msg, tx| {
            let call = calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                sqlx::query("INSERT INTO effects VALUES ('m-1')")
                    .execute(&mut **tx)
                    .await
                    .unwrap();
                if call == 0 {
                    Outcome::retry("first try fails")
                } else {
                    Outcome::Ack
                }
            })
        })
    };
    assert_eq!(
        handler.handle(incoming(Some("m-1"))).await,
        Outcome::retry("first try fails")
    );
    assert_eq!(effects(&inbox).await, 0, "retry rolled back");
    assert_eq!(handler.handle(incoming(Some("m-1"))).await, Outcome::Ack);
    assert_eq!(
        handler.handle(incoming(Some("m-1"))).await,
        Outcome::Ack,
        "duplicate acked"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the duplicate did not run the handler"
    );
    assert_eq!(effects(&inbox).await, 1);
    assert!(matches!(
        handler.handle(incoming(None)).await,
        Outcome::Reject { .. }
    ));
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;

    async fn pg_inbox() -> (PgSchema, Inbox<sqlx::Postgres>) {
        let db = PgSchema::new(8).await;
        let inbox = effects_inbox(db.pool.clone(), "reserve").await;
        (db, inbox)
    }

    #[tokio::test]
    async fn pg_concurrent_duplicates_apply_once_and_failures_roll_back() {
        let (db, inbox) = pg_inbox().await;
        let failed = process_m1::<_, ()>(&inbox, Duration::ZERO, Err("refused".into())).await;
        assert!(failed.is_err());
        assert_eq!(
            concurrent_m1(&inbox, Duration::from_millis(100)).await,
            1,
            "the concurrent duplicates waited for the first and skipped"
        );
        assert_eq!(effects(&inbox).await, 1);

        sqlx::query("UPDATE chassis_inbox SET processed_at = processed_at - 3600000")
            .execute(inbox.pool())
            .await
            .unwrap();
        let Claim::New(tx) = inbox.begin("m-2").await.unwrap() else {
            panic!("first delivery")
        };
        tx.commit().await.unwrap();
        assert_eq!(inbox.purge(Duration::from_secs(60)).await.unwrap(), 1);
        assert!(matches!(
            inbox.begin("m-2").await.unwrap(),
            Claim::Duplicate
        ));
        db.drop().await;
    }
}
