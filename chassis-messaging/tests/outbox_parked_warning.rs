//! The relay warns about parked rows once per change of their count, not at every gauge
//! refresh (real SQLite file, real RabbitMQ). A binary of its own: it installs a global
//! subscriber to capture the log.

mod outbox_support;

use std::time::Duration;

use chassis_messaging::sql::outbox::{OutboxStore, RelayConfig, SqliteOutbox};
use chassis_observability::logging::CaptureWriter;
use outbox_support::*;
use tokio_util::sync::CancellationToken;

const WARNING: &str = "outbox has parked rows that need attention";

/// Waits until `parked` rows are parked and the warning was logged `parked` times.
async fn assert_parked_and_reported(outbox: &SqliteOutbox, capture: &CaptureWriter, parked: i64) {
    assert!(
        eventually(Duration::from_secs(10), || async {
            outbox.stats().await.unwrap().parked == parked
        })
        .await,
        "{parked} rows are parked"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            warnings(capture) == parked as usize
        })
        .await,
        "the parked count {parked} is reported: {:#?}",
        capture.lines()
    );
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
    enqueue_committed(&outbox, &poison(1), Commit::Signalled).await;

    let stats_interval = Duration::from_millis(40);
    let token = CancellationToken::new();
    let config = RelayConfig::default()
        .max_attempts(1)
        .poll_interval(Duration::from_millis(20))
        .stats_interval(stats_interval);
    let relay = spawn_relay(&outbox, broker.publisher.clone(), config, &token);

    assert_parked_and_reported(&outbox, &capture, 1).await;
    // Many refreshes with the same count: no repetition.
    tokio::time::sleep(stats_interval * 15).await;
    assert_eq!(warnings(&capture), 1, "{:#?}", capture.lines());

    enqueue_committed(&outbox, &poison(2), Commit::Signalled).await;
    assert_parked_and_reported(&outbox, &capture, 2).await;
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

    stop_relays(token, [relay]).await;
    broker.cleanup().await;
}
