//! An `order.placed` with a field over its limit, consumed by the inventory binary on the real
//! broker (`AMQP_URL`, default the local RabbitMQ): it is dead-lettered with the reason, and
//! nothing is reserved; a valid event after it is reserved as usual. The test's exchanges and
//! queues carry a namespace of their own and are deleted at the end.

use std::process::Stdio;
use std::time::{Duration, Instant};

use chassis_http::auth::SigningKey;
use chassis_messaging::{
    Connection, ConnectionConfig, Envelope, ExchangeConfig, Publish, Publisher, PublisherConfig,
    QueueConfig,
};
use serde_json::Value;
use shop_common::events::{COMMANDS_EXCHANGE, EVENTS_EXCHANGE, Item, ORDER_PLACED, OrderPlaced};
use shop_contract::free_port;

const MINUTE: Duration = Duration::from_secs(60);

async fn until<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + MINUTE;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn placed(order_id: &str, customer_id: String) -> OrderPlaced {
    OrderPlaced {
        order_id: order_id.into(),
        customer_id,
        items: vec![Item {
            sku: "tea".into(),
            quantity: 1,
        }],
        payment_method: "card_ok".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_with_an_oversized_field_is_dead_lettered_and_not_applied() {
    let broker_url = std::env::var("AMQP_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let namespace = format!("inventory-limits-{}-{nanos:x}.", std::process::id());
    let key = SigningKey::generate_ed25519()
        .unwrap()
        .with_kid("k1")
        .unwrap();
    let issuer = shop_common::auth::issuer_from_pem(&key.to_pkcs8_pem().unwrap(), "k1").unwrap();
    let token = issuer.issue("inventory", &[]).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut inventory = tokio::process::Command::new(env!("CARGO_BIN_EXE_shop-inventory"))
        .env_remove("DATABASE_URL")
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("ADMIN_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("DATA_DIR", dir.path())
        .env("AMQP_URL", &broker_url)
        .env("SHOP_NAMESPACE", &namespace)
        .env("SERVICE_TOKEN_KID", "k1")
        .env("SERVICE_TOKEN_PUBLIC_KEY", key.public_key_pem().unwrap())
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let reservation = async |id: &str| -> u16 {
        http.get(format!("{base}/internal/reservations/{id}"))
            .bearer_auth(token.as_str())
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };

    let direct = Connection::connect(ConnectionConfig::new(&broker_url, "inventory-limits-test"))
        .await
        .unwrap();
    let events = format!("{namespace}{EVENTS_EXCHANGE}");
    let commands = format!("{namespace}{COMMANDS_EXCHANGE}");
    let placed_queue = QueueConfig::new(format!("{namespace}inventory.order-placed"));
    let release_queue = QueueConfig::new(format!("{namespace}inventory.release"));
    direct
        .declare(chassis_messaging::TopologyConfig::new().exchange(ExchangeConfig::topic(&events)))
        .await
        .unwrap();
    let publisher = Publisher::new(&direct, PublisherConfig::default()).unwrap();
    let publish = async |event: &OrderPlaced| {
        let envelope = Envelope::new("/shop/orders", ORDER_PLACED, event).subject(&event.order_id);
        // Unroutable until the service has declared its queue: publish again until it is there.
        until("the inventory queue", async || {
            publisher
                .publish(envelope.to_message(&events).ok()?)
                .await
                .ok()
        })
        .await;
    };

    // 1 MB customer_id: dead-lettered with the field named, nothing reserved.
    let oversized = placed("o-oversized", "c".repeat(1_000_000));
    publish(&oversized).await;
    let channel = direct.create_channel().await.unwrap();
    let dlq = placed_queue.dead_letter_queue();
    let dead = until("the dead-lettered event", async || {
        channel
            .basic_get(
                dlq.as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .ok()
            .flatten()
    })
    .await;
    let headers = dead.delivery.properties.headers().as_ref();
    let reason = match headers.and_then(|h| h.inner().get("x-chassis-failure-reason")) {
        Some(lapin::types::AMQPValue::LongString(s)) => s.to_string(),
        other => panic!("no failure reason: {other:?}"),
    };
    assert!(reason.contains("customer_id"), "{reason}");
    assert!(reason.len() < 1024, "the value is not in the reason");
    assert_eq!(reservation("o-oversized").await, 404);

    // A valid event after it is reserved: the consumer is alive and applies what is valid.
    publish(&placed("o-valid", "c-1".into())).await;
    until("the valid reservation", async || {
        (reservation("o-valid").await == 200).then_some(())
    })
    .await;
    let r: Value = http
        .get(format!("{base}/internal/reservations/o-valid"))
        .bearer_auth(token.as_str())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["data"]["status"], "RESERVED", "{r}");
    assert_eq!(reservation("o-oversized").await, 404);
    // An over-long id in the path is refused with 422.
    assert_eq!(reservation(&"o".repeat(100)).await, 422);

    // SIGTERM: a clean stop (the consumer never crashed).
    let pid = inventory.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = tokio::time::timeout(MINUTE, inventory.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");

    for queue in placed_queue
        .all_queues()
        .into_iter()
        .chain(release_queue.all_queues())
    {
        let options = lapin::options::QueueDeleteOptions::default();
        channel
            .queue_delete(queue.as_str().into(), options)
            .await
            .unwrap();
    }
    for exchange in [
        placed_queue.dead_letter_exchange(),
        release_queue.dead_letter_exchange(),
        events,
        commands,
    ] {
        let options = lapin::options::ExchangeDeleteOptions::default();
        channel
            .exchange_delete(exchange.as_str().into(), options)
            .await
            .unwrap();
    }
    direct.close().await;
}
