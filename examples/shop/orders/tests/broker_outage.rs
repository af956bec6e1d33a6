//! The orders binary while RabbitMQ is away: it starts, is ready (degraded) and accepts orders
//! into its outbox; once the broker is reachable the relay publishes them and the saga consumer
//! attaches. The broker is the real one (`AMQP_URL`, default the local RabbitMQ), reached
//! through a TCP proxy the test opens only after the order was placed; the test's exchanges and
//! queues carry a namespace of their own and are deleted at the end.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chassis_http::auth::SigningKey;
use chassis_messaging::{
    Connection, ConnectionConfig, Consumer, ConsumerConfig, Envelope, ExchangeConfig,
    IncomingMessage, Outcome, Publish, Publisher, PublisherConfig, QueueConfig, TopologyConfig,
};
use serde_json::{Value, json};
use shop_common::events::{EVENTS_EXCHANGE, INVENTORY_REJECTED, InventoryRejected, ORDER_PLACED};
use shop_contract::free_port;
use tokio::net::{TcpListener, TcpStream};

const MINUTE: Duration = Duration::from_secs(60);

/// The broker's URL and its `host:port`.
fn broker() -> (String, String) {
    let url = std::env::var("AMQP_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let after_scheme = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
    let authority = after_scheme.split('/').next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5672")
    };
    (url, host)
}

/// Forwards every connection accepted on `listener` to the broker at `target`.
async fn proxy(listener: TcpListener, target: String) {
    while let Ok((mut inbound, _)) = listener.accept().await {
        let target = target.clone();
        tokio::spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(&target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takes_orders_while_the_broker_is_away_and_sends_them_when_it_is_back() {
    let (broker_url, broker_addr) = broker();
    let namespace = format!(
        "orders-outage-{}.",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let proxy_port = free_port();
    let proxied_url = broker_url.replacen(&broker_addr, &format!("127.0.0.1:{proxy_port}"), 1);
    let key = SigningKey::generate_ed25519()
        .unwrap()
        .with_kid("k1")
        .unwrap();
    let issuer = shop_common::auth::issuer_from_pem(&key.to_pkcs8_pem().unwrap(), "k1").unwrap();
    let token = issuer.issue("orders", &["orders:write"]).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let (port, admin_port) = (free_port(), free_port());
    let base = format!("http://127.0.0.1:{port}");
    let admin = format!("http://127.0.0.1:{admin_port}");
    let mut orders = tokio::process::Command::new(env!("CARGO_BIN_EXE_shop-orders"))
        .env_remove("DATABASE_URL")
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("ADMIN_ADDR", format!("127.0.0.1:{admin_port}"))
        .env("DATA_DIR", dir.path())
        .env("AMQP_URL", &proxied_url)
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

    // No broker: ready, degraded (RabbitMQ down but optional), and taking orders.
    let ready: Value = until("readiness", async || {
        let r = http
            .get(format!("{admin}/health/ready"))
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())?;
        r.json().await.ok()
    })
    .await;
    assert_eq!(ready["status"], "DEGRADED", "{ready}");
    let checks = ready["checks"].as_array().unwrap();
    let rabbitmq = checks.iter().find(|c| c["name"] == "rabbitmq").unwrap();
    assert_eq!(
        (&rabbitmq["status"], &rabbitmq["required"]),
        (&json!("DOWN"), &json!(false)),
        "{ready}"
    );
    let placed: Value = http
        .post(format!("{base}/internal/orders"))
        .bearer_auth(token.as_str())
        .json(&json!({"customer_id": "c-1", "items": [{"sku": "tea", "quantity": 1}], "payment_method": "card_ok"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = placed["data"]["order_id"].as_str().unwrap().to_owned();
    assert_eq!(placed["data"]["status"], "PENDING", "{placed}");

    // Watch `order.placed` on the real broker, then let the service reach it.
    let direct = Connection::connect(ConnectionConfig::new(&broker_url, "orders-outage-test"))
        .await
        .unwrap();
    let events = format!("{namespace}{EVENTS_EXCHANGE}");
    let audit = QueueConfig::new(format!("{namespace}audit")).bind(&events, ORDER_PLACED);
    let topology = TopologyConfig::new()
        .exchange(ExchangeConfig::topic(&events))
        .queue(audit.clone());
    direct.declare(topology).await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let record = seen.clone();
    let watcher = Consumer::start(
        &direct,
        audit.clone(),
        ConsumerConfig::default(),
        move |msg: IncomingMessage| {
            let subject = msg.decode::<Value>().ok().and_then(|e| e.subject);
            record.lock().unwrap().extend(subject);
            async { Outcome::Ack }
        },
    )
    .await
    .unwrap();
    let listener = TcpListener::bind(("127.0.0.1", proxy_port)).await.unwrap();
    let forwarding = tokio::spawn(proxy(listener, broker_addr));

    // The relay publishes the order placed during the outage.
    until("order.placed", async || {
        seen.lock().unwrap().contains(&id).then_some(())
    })
    .await;

    // The saga consumer attached: a rejection fails the order.
    let publisher = Publisher::new(&direct, PublisherConfig::default()).unwrap();
    let rejected = InventoryRejected {
        order_id: id.clone(),
        reason: "out_of_stock".into(),
        sku: "tea".into(),
    };
    let event = Envelope::new("/shop/inventory", INVENTORY_REJECTED, &rejected).subject(&id);
    // Unroutable until the service has declared its queue: publish again until it is there.
    until("the saga queue", async || {
        publisher
            .publish(event.to_message(&events).ok()?)
            .await
            .ok()
    })
    .await;
    let order: Value = until("the failed order", async || {
        let r = http
            .get(format!("{base}/internal/orders/{id}"))
            .bearer_auth(token.as_str())
            .send()
            .await
            .ok()?;
        let order: Value = r.json().await.ok()?;
        (order["data"]["status"] == "FAILED").then_some(order)
    })
    .await;
    assert_eq!(order["data"]["reason"], "out_of_stock", "{order}");

    // SIGTERM: a clean stop.
    let pid = orders.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = tokio::time::timeout(MINUTE, orders.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");

    watcher.shutdown().await;
    forwarding.abort();
    let channel = direct.create_channel().await.unwrap();
    let saga = QueueConfig::new(format!("{namespace}orders.saga"));
    for queue in saga.all_queues().into_iter().chain(audit.all_queues()) {
        let options = lapin::options::QueueDeleteOptions::default();
        channel
            .queue_delete(queue.as_str().into(), options)
            .await
            .unwrap();
    }
    let commands = format!("{namespace}shop.commands");
    for exchange in [
        saga.dead_letter_exchange(),
        audit.dead_letter_exchange(),
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
