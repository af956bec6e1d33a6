//! The outbox in the control registry: its backlog and parked rows as the admin API shows
//! them, and `requeue` (one row by id, idempotent) on a real SQLite outbox whose relay parked an
//! unroutable event on the real RabbitMQ.

mod outbox_support;

use std::time::Duration;

use chassis_core::control::ControlRegistry;
use chassis_messaging::sql::outbox::{RelayConfig, SqliteOutbox};
use outbox_support::*;
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn a_parked_row_is_listed_and_requeued_once_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = migrated(SqliteOutbox::new(sqlite_pool(&dir).await)).await;
    let broker = Broker::new("outbox-control").await;
    let mut poison = broker.event("agg-1", 1);
    poison.routing_key = "nobody.listens".into();
    let poison_id = enqueue_committed(&outbox, &poison, Commit::Signalled).await;

    let config = RelayConfig::default()
        .max_attempts(1)
        .poll_interval(Duration::from_millis(50));
    let token = CancellationToken::new();
    let relay = spawn_relay(&outbox, broker.publisher.clone(), config, &token);
    assert!(
        eventually(Duration::from_secs(10), || async {
            outbox.parked(1).await.unwrap().len() == 1
        })
        .await
    );
    stop_relays(token, [relay]).await;

    let control = ControlRegistry::new("orders");
    control.register("orders", outbox.clone());
    let state = control.component("outbox", "orders").await.unwrap();
    assert_eq!(state["actions"], json!(["requeue"]));
    assert_eq!(state["state"]["parked"], 1);
    assert_eq!(state["state"]["pending"], 0);
    let row = &state["state"]["parked_rows"][0];
    assert_eq!(row["message_id"], poison_id.as_str());
    assert!(
        row["last_error"].as_str().unwrap().contains("unroutable"),
        "{row}"
    );
    let id = row["id"].as_i64().unwrap();

    for _ in 0..2 {
        let state = control
            .act("outbox", "orders", "requeue", &json!({ "id": id }))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(state["state"]["parked"], 0, "{state}");
        assert_eq!(state["state"]["pending"], 1, "{state}");
        assert!(state["state"]["oldest_age_secs"].as_f64().unwrap() >= 0.0);
    }
    // A malformed argument and an action the outbox does not have are both refused.
    assert_refused(
        &control,
        "outbox",
        "orders",
        "requeue",
        json!({ "id": "not a row" }),
    )
    .await;
    assert_refused(&control, "outbox", "orders", "purge", json!({})).await;
    broker.cleanup().await;
}
