//! The relay warns about parked rows once per change of their count, not at every gauge
//! refresh (real SQLite file, real RabbitMQ). A binary of its own: it installs a global
//! subscriber to capture the log.

mod outbox_support;

use std::time::Duration;

use chassis_messaging::message::OutgoingMessage;
use chassis_messaging::sql::outbox::{OutboxStore, Relay, RelayConfig, SqliteOutbox};
use chassis_observability::logging::CaptureWriter;
use outbox_support::*;
use tokio_util::sync::CancellationToken;

const WARNING: &str = "outbox has parked rows that need attention";

async fn enqueue_committed(outbox: &SqliteOutbox, msg: &OutgoingMessage) {
    let mut tx = outbox.pool().begin().await.unwrap();
    outbox.enqueue(&mut tx, msg).await.unwrap();
    outbox.commit(tx).await.unwrap();
}

fn warnings(capture: &CaptureWriter) -> usize {
    capture
        .lines()
        .iter()
        .filter(|l| l.contains(WARNING))
        .count()
}

#[tokio::test(flavor = "current_thread")]
async fn parked_warning_is_logged_once_per_change_of_the_count() {
    let capture = CaptureWriter::new();
    let _telemetry = global_telemetry("outbox-parked-warning-test", capture.clone());

    let dir = tempfile::tempdir().unwrap();
    let outbox = sqlite_outbox(&dir).await;
    let broker = Broker::new("sqlite-parked-warning").await;
    // Routed to no queue on a retrying exchange, and parked at the first failure.
    let poison = |seq| {
        let mut event = broker.event("poison", seq);
        event.routing_key = "nobody.listens".into();
        event
    };
    enqueue_committed(&outbox, &poison(1)).await;

    let stats_interval = Duration::from_millis(40);
    let token = CancellationToken::new();
    let relay = Relay::new(
        outbox.clone(),
        broker.publisher.clone(),
        RelayConfig::default()
            .max_attempts(1)
            .poll_interval(Duration::from_millis(20))
            .stats_interval(stats_interval),
    )
    .unwrap()
    .spawn(token.clone());

    assert!(
        eventually(Duration::from_secs(10), || async {
            outbox.stats().await.unwrap().parked == 1
        })
        .await,
        "the first row is parked"
    );
    assert!(
        eventually(Duration::from_secs(5), || async { warnings(&capture) == 1 }).await,
        "the new parked count is reported"
    );
    // Many refreshes with the same count: no repetition.
    tokio::time::sleep(stats_interval * 15).await;
    assert_eq!(warnings(&capture), 1, "{:#?}", capture.lines());

    enqueue_committed(&outbox, &poison(2)).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            outbox.stats().await.unwrap().parked == 2
        })
        .await,
        "the second row is parked"
    );
    assert!(
        eventually(Duration::from_secs(5), || async { warnings(&capture) == 2 }).await,
        "the changed count is reported: {:#?}",
        capture.lines()
    );
    tokio::time::sleep(stats_interval * 15).await;
    assert_eq!(warnings(&capture), 2, "{:#?}", capture.lines());
    assert!(
        capture
            .lines()
            .iter()
            .rfind(|l| l.contains(WARNING))
            .is_some_and(|l| l.contains(r#""parked":2,"previously":1"#)),
        "the warning carries the count: {:#?}",
        capture.lines()
    );

    // Once an operator removed them, one line says so, and nothing more is repeated.
    sqlx::query("DELETE FROM chassis_outbox WHERE status = 'parked'")
        .execute(outbox.pool())
        .await
        .unwrap();
    let cleared = |c: &CaptureWriter| {
        c.lines()
            .iter()
            .filter(|l| l.contains("outbox has no parked rows left"))
            .count()
    };
    assert!(
        eventually(Duration::from_secs(5), || async { cleared(&capture) == 1 }).await,
        "{:#?}",
        capture.lines()
    );
    tokio::time::sleep(stats_interval * 10).await;
    assert_eq!((warnings(&capture), cleared(&capture)), (2, 1));

    token.cancel();
    relay.await.unwrap();
    broker.cleanup().await;
}
