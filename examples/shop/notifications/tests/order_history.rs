//! The order-history read model, on real databases and the real broker.
//!
//! - The projection alone, on SQLite and PostgreSQL: the same events in any order, applied any
//!   number of times, give the same rows; the per-customer query lists newest first, with a
//!   limit and each order's history.
//! - The service (the `shop-notifications` binary, on SQLite and on PostgreSQL, with a
//!   namespace of its own on the local broker): events published on `shop.events` are
//!   projected live through the inbox (a message published twice is applied once), listed at
//!   `GET /api/v1/customers/{customer}/orders`, the lag gauge follows the applied events'
//!   times, and the admin action `rebuild` truncates and replays the stream into exactly the
//!   rows the live projection wrote, twice in a row. The test deletes its queues, stream and
//!   exchanges (and its PostgreSQL schema) at the end.

use std::process::Stdio;
use std::time::{Duration, Instant};

use chassis_messaging::message::OutgoingMessage;
use chassis_messaging::{
    Connection, ConnectionConfig, Envelope, IncomingMessage, Publish, Publisher, PublisherConfig,
    QueueConfig,
};
use serde::Serialize;
use serde_json::Value;
use shop_common::db::{Db, postgres_test_db};
use shop_common::events::{
    COMMANDS_EXCHANGE, EVENTS_EXCHANGE, INVENTORY_REJECTED, INVENTORY_RELEASED, INVENTORY_RESERVED,
    InventoryRejected, InventoryReleased, InventoryReserved, Item, ORDER_CONFIRMED, ORDER_FAILED,
    ORDER_PLACED, OrderFinished, OrderPlaced, PAYMENT_FAILED, PAYMENT_SUCCEEDED, PaymentFailed,
    PaymentSucceeded,
};
use shop_contract::free_port;
use shop_notifications::order_history::projection::{self, OrderHistory};

const MINUTE: Duration = Duration::from_secs(60);

/// One event on the wire: its envelope at `time_ms`, as the services publish it.
fn wire<T: Serialize>(kind: &str, order_id: &str, time_ms: i64, data: T) -> OutgoingMessage {
    let mut envelope = Envelope::new("/shop/test", kind, data).subject(order_id);
    envelope.time = chrono::DateTime::from_timestamp_millis(time_ms).unwrap();
    if kind == INVENTORY_RESERVED {
        envelope = envelope.version(2);
    }
    envelope.to_message(EVENTS_EXCHANGE).unwrap()
}

fn placed(order: &str, customer: &str, units: i64, t: i64) -> OutgoingMessage {
    let e = OrderPlaced {
        order_id: order.into(),
        customer_id: customer.into(),
        items: vec![Item {
            sku: "tea".into(),
            quantity: units,
        }],
        payment_method: "card_ok".into(),
    };
    wire(ORDER_PLACED, order, t, e)
}

fn finished(order: &str, customer: &str, reason: Option<&str>, t: i64) -> OutgoingMessage {
    let e = OrderFinished {
        order_id: order.into(),
        customer_id: customer.into(),
        status: if reason.is_some() {
            "FAILED"
        } else {
            "CONFIRMED"
        }
        .into(),
        reason: reason.map(str::to_owned),
    };
    let kind = if reason.is_some() {
        ORDER_FAILED
    } else {
        ORDER_CONFIRMED
    };
    wire(kind, order, t, e)
}

/// Four orders of two customers, every path of the saga, with times from `t0` (ms).
fn saga_events(prefix: &str, t0: i64) -> Vec<OutgoingMessage> {
    let (o1, o2, o3, o4) = (
        format!("{prefix}1"),
        format!("{prefix}2"),
        format!("{prefix}3"),
        format!("{prefix}4"),
    );
    let reserved = |o: &str, t| {
        let e = InventoryReserved {
            order_id: o.into(),
            amount_cents: 900,
        };
        wire(INVENTORY_RESERVED, o, t, e)
    };
    vec![
        // Confirmed.
        placed(&o1, "c-1", 2, t0),
        reserved(&o1, t0 + 1),
        wire(
            PAYMENT_SUCCEEDED,
            &o1,
            t0 + 2,
            PaymentSucceeded {
                order_id: o1.clone(),
                charge_id: "ch-1".into(),
                amount_cents: 900,
            },
        ),
        finished(&o1, "c-1", None, t0 + 3),
        // Refused for stock.
        placed(&o2, "c-1", 1, t0 + 10),
        wire(
            INVENTORY_REJECTED,
            &o2,
            t0 + 11,
            InventoryRejected {
                order_id: o2.clone(),
                reason: "out_of_stock".into(),
                sku: "tea".into(),
            },
        ),
        finished(&o2, "c-1", Some("out_of_stock"), t0 + 12),
        // Card declined, stock released.
        placed(&o3, "c-2", 3, t0 + 20),
        reserved(&o3, t0 + 21),
        wire(
            PAYMENT_FAILED,
            &o3,
            t0 + 22,
            PaymentFailed {
                order_id: o3.clone(),
                reason: "card_declined".into(),
            },
        ),
        wire(
            INVENTORY_RELEASED,
            &o3,
            t0 + 23,
            InventoryReleased {
                order_id: o3.clone(),
            },
        ),
        finished(&o3, "c-2", Some("card_declined"), t0 + 24),
        // Still running.
        placed(&o4, "c-1", 1, t0 + 30),
    ]
}

async fn apply_all(db: &Db, messages: &[OutgoingMessage]) -> usize {
    let mut applied = 0;
    for msg in messages {
        let event = projection::event_of(&IncomingMessage::from_outgoing(msg.clone()))
            .unwrap()
            .unwrap();
        let mut txn = db.begin().await.unwrap();
        applied += usize::from(projection::apply(&mut txn.tx(), &event).await.unwrap());
        txn.commit().await.unwrap();
    }
    applied
}

fn statuses(orders: &[OrderHistory]) -> Vec<(&str, &str, Option<&str>)> {
    orders
        .iter()
        .map(|o| (o.order_id.as_str(), o.status.as_str(), o.reason.as_deref()))
        .collect()
}

/// Two empty read models on the database of `open`, fed the same events in two orders.
async fn same_rows_in_any_order(a: &Db, b: &Db) {
    for db in [a, b] {
        db.execute_script(projection::SCHEMA).await.unwrap();
    }
    let events = saga_events("o-", 1_700_000_000_000);
    assert_eq!(apply_all(a, &events).await, events.len());
    // Reversed (the final event first), then everything again: the same rows.
    let mut reversed = events.clone();
    reversed.reverse();
    assert_eq!(apply_all(b, &reversed).await, events.len());
    assert_eq!(apply_all(b, &events).await, 0, "every event a second time");
    assert_eq!(
        projection::dump(a).await.unwrap(),
        projection::dump(b).await.unwrap()
    );

    let c1 = projection::for_customer(a, "c-1", 10).await.unwrap();
    assert_eq!(
        statuses(&c1),
        [
            ("o-4", "PLACED", None),
            ("o-2", "FAILED", Some("out_of_stock")),
            ("o-1", "CONFIRMED", None),
        ]
    );
    let o1 = &c1[2];
    assert_eq!((o1.items, o1.amount_cents), (Some(2), Some(900)));
    assert_eq!(
        o1.history
            .iter()
            .map(|h| h.kind.as_str())
            .collect::<Vec<_>>(),
        [
            ORDER_PLACED,
            INVENTORY_RESERVED,
            PAYMENT_SUCCEEDED,
            ORDER_CONFIRMED
        ]
    );
    assert_eq!(
        (o1.first_ms, o1.last_ms),
        (1_700_000_000_000, 1_700_000_000_003)
    );
    assert_eq!(
        statuses(&projection::for_customer(a, "c-1", 2).await.unwrap()),
        [
            ("o-4", "PLACED", None),
            ("o-2", "FAILED", Some("out_of_stock"))
        ]
    );
    let c2 = projection::for_customer(b, "c-2", 10).await.unwrap();
    assert_eq!(statuses(&c2), [("o-3", "FAILED", Some("card_declined"))]);
    assert_eq!(c2[0].history.len(), 5);
    assert_eq!(c2[0].history[3].kind, INVENTORY_RELEASED);
    assert!(
        projection::for_customer(a, "c-3", 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(projection::counts(a).await.unwrap(), (4, 13));
}

#[tokio::test]
async fn the_projection_gives_the_same_rows_in_any_order_and_absorbs_repeats_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let open = |name: &str| Db::open(&format!("sqlite://{}", dir.path().join(name).display()));
    same_rows_in_any_order(&open("a.db").unwrap(), &open("b.db").unwrap()).await;
}

/// The schema `search_path` names on `db`'s connections.
async fn schema_of(db: &Db) -> String {
    let row = db
        .fetch_optional("SELECT current_schema() AS s", &[])
        .await
        .unwrap()
        .unwrap();
    row.get::<String>("s").unwrap()
}

async fn drop_schema(db: &Db) {
    let schema = schema_of(db).await;
    assert!(schema.starts_with("shop_test_"), "{schema}");
    db.execute_script(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_projection_gives_the_same_rows_in_any_order_and_absorbs_repeats_on_postgres() {
    let (a, b) = (
        postgres_test_db().await.unwrap(),
        postgres_test_db().await.unwrap(),
    );
    same_rows_in_any_order(&a, &b).await;
    drop_schema(&a).await;
    drop_schema(&b).await;
}

// ---------------------------------------------------------------------------------------------
// The service.

async fn until<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + MINUTE;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn now_ms() -> i64 {
    shop_common::db::now_ms()
}

/// The value of the unlabelled series `name` in a Prometheus exposition.
fn gauge(exposition: &str, name: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Runs the service on `database_url` and checks it; `dump_db` reads the same database.
async fn live_projection_query_lag_and_rebuild(database_url: &str, dump_db: &Db, tag: &str) {
    let broker_url = std::env::var("AMQP_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let namespace = format!(
        "notifications-history-{tag}-{}.",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let dir = tempfile::tempdir().unwrap();
    let (port, admin_port) = (free_port(), free_port());
    let base = format!("http://127.0.0.1:{port}");
    let admin = format!("http://127.0.0.1:{admin_port}");
    let key = chassis_http::auth::SigningKey::generate_ed25519().unwrap();
    let issuer =
        shop_common::auth::issuer_from_pem(&key.to_pkcs8_pem().unwrap(), "shop-1").unwrap();
    let token = issuer.issue("notifications", &[]).unwrap();
    let admin_token = issuer
        .issue(shop_common::admin::AUDIENCE, &["admin"])
        .unwrap();
    let mut service = tokio::process::Command::new(env!("CARGO_BIN_EXE_shop-notifications"))
        .env("SERVICE_TOKEN_PUBLIC_KEY", key.public_key_pem().unwrap())
        .env("SERVICE_TOKEN_KID", "shop-1")
        .env("DATABASE_URL", database_url)
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("ADMIN_ADDR", format!("127.0.0.1:{admin_port}"))
        .env("DATA_DIR", dir.path())
        .env("AMQP_URL", &broker_url)
        .env("SHOP_NAMESPACE", &namespace)
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();

    let direct = Connection::connect(ConnectionConfig::new(
        &broker_url,
        format!("{namespace}test"),
    ))
    .await
    .unwrap();
    let events = format!("{namespace}{EVENTS_EXCHANGE}");
    let stream = format!("{namespace}notifications.order-history.stream");
    let live = QueueConfig::new(format!("{namespace}notifications.order-history"));
    let orders = QueueConfig::new(format!("{namespace}notifications.orders"));
    // Every check up once the stream is declared and bound (an event published before would
    // reach the live queue only).
    until("the service's checks", async || {
        let r = http
            .get(format!("{admin}/health/ready"))
            .send()
            .await
            .ok()?;
        let report: Value = r.json().await.ok()?;
        (report["status"] == "UP").then_some(())
    })
    .await;
    let publisher = Publisher::new(&direct, PublisherConfig::default()).unwrap();
    let publish = async |msg: &OutgoingMessage| {
        let mut msg = msg.clone();
        msg.exchange = events.clone();
        // Unroutable until the service has declared its queues: publish again until they are.
        until("a routed publish", async || {
            publisher.publish(msg.clone()).await.ok()
        })
        .await;
    };
    let scrape = async || {
        let text = http
            .get(format!("{admin}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        gauge(&text, "shop_order_history_lag_seconds")
    };
    let list = async |customer: &str, limit: usize| -> Vec<OrderHistory> {
        let r: Value = http
            .get(format!(
                "{base}/api/v1/customers/{customer}/orders?limit={limit}"
            ))
            .bearer_auth(token.as_str())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        serde_json::from_value(r["data"].clone()).unwrap_or_else(|e| panic!("{e}: {r}"))
    };

    // An event five minutes old: the gauge says the read model trails by that much.
    let old = placed("o-old", "c-9", 1, now_ms() - 300_000);
    publish(&old).await;
    let lag = until("the lag of the old event", async || {
        scrape().await.filter(|lag| *lag >= 300.0)
    })
    .await;
    assert!(lag < 360.0, "{lag}");

    // The saga's events, now; one of them published twice (the broker redelivering it, or the
    // outbox publishing it again): the inbox applies it once.
    let saga = saga_events("o-", now_ms());
    for msg in &saga {
        publish(msg).await;
    }
    publish(&saga[3]).await;
    until("every event applied", async || {
        (projection::counts(dump_db).await.ok()? == (5, 14)).then_some(())
    })
    .await;
    let c1 = list("c-1", 10).await;
    assert_eq!(
        statuses(&c1),
        [
            ("o-4", "PLACED", None),
            ("o-2", "FAILED", Some("out_of_stock")),
            ("o-1", "CONFIRMED", None),
        ]
    );
    assert_eq!(c1[2].history.len(), 4);
    let lag = scrape().await.unwrap();
    assert!(lag < 60.0, "the lag follows the newest events: {lag}");
    assert_eq!(list("c-1", 1).await.len(), 1);
    let over = http
        .get(format!("{base}/api/v1/customers/c-1/orders?limit=1000"))
        .bearer_auth(token.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(over.status(), 400);
    let unauthenticated = http
        .get(format!("{base}/api/v1/customers/c-1/orders"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);

    // Rebuild: the same rows from the stream, twice in a row.
    let live_rows = projection::dump(dump_db).await.unwrap();
    let live_c1 = list("c-1", 10).await;
    for round in 0..2 {
        let r = http
            .post(format!(
                "{admin}/admin/control/projection/order-history/rebuild"
            ))
            .bearer_auth(admin_token.as_str())
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 200, "{body}");
        let last = &body["state"]["last_rebuild"];
        // 14 events and the duplicate; earlier rebuilds' markers are not counted.
        assert_eq!(last["read"], 15, "round {round}: {body}");
        assert_eq!(last["applied"], 14, "round {round}: {body}");
        assert_eq!(last["duplicates"], 1, "round {round}: {body}");
        assert_eq!(body["state"]["orders"], 5, "{body}");
        assert_eq!(projection::dump(dump_db).await.unwrap(), live_rows);
        assert_eq!(list("c-1", 10).await, live_c1);
    }
    let metrics = http
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("shop_order_history_applied_total{source=\"live\"} 14"),
        "{metrics}"
    );
    assert!(
        metrics.contains("shop_order_history_applied_total{source=\"replay\"} 28"),
        "{metrics}"
    );

    // SIGTERM: a clean stop.
    let pid = service.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = tokio::time::timeout(MINUTE, service.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");

    // A refused delete closes its channel: one channel per delete, every failure named.
    let mut failed = Vec::new();
    for queue in live
        .all_queues()
        .into_iter()
        .chain(orders.all_queues())
        .chain([stream])
    {
        let ch = direct.create_channel().await.unwrap();
        if let Err(e) = ch
            .queue_delete(queue.as_str().into(), Default::default())
            .await
        {
            failed.push(format!("queue {queue}: {e}"));
        }
        let _ = ch.close(200, "deleted".into()).await;
    }
    for exchange in [
        live.dead_letter_exchange(),
        orders.dead_letter_exchange(),
        events.clone(),
        format!("{namespace}{COMMANDS_EXCHANGE}"),
    ] {
        let ch = direct.create_channel().await.unwrap();
        if let Err(e) = ch
            .exchange_delete(exchange.as_str().into(), Default::default())
            .await
        {
            failed.push(format!("exchange {exchange}: {e}"));
        }
        let _ = ch.close(200, "deleted".into()).await;
    }
    assert!(failed.is_empty(), "{failed:?}");
    direct.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_projects_live_and_rebuilds_the_same_rows_from_the_stream_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("notifications.db").display());
    let dump_db = Db::open(&url).unwrap();
    live_projection_query_lag_and_rebuild(&url, &dump_db, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_projects_live_and_rebuilds_the_same_rows_from_the_stream_on_postgres() {
    let dump_db = postgres_test_db().await.unwrap();
    let schema = schema_of(&dump_db).await;
    let base = std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| u.starts_with("postgres"))
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".into());
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    live_projection_query_lag_and_rebuild(&url, &dump_db, "postgres").await;
    drop_schema(&dump_db).await;
}
