//! A `payment.charge` command with a field over its limit, consumed by the payments binary on the
//! real broker (`AMQP_URL`, default the local RabbitMQ): it is dead-lettered with the reason
//! before the provider is called, and nothing is recorded; a valid command after it is
//! processed (the provider address has nothing listening, so it is recorded as `FAILED`). The
//! test's exchanges and queues carry a namespace of their own and are deleted at the end.

use std::process::Stdio;
use std::time::{Duration, Instant};

use chassis_messaging::{
    Connection, ConnectionConfig, Envelope, ExchangeConfig, Publish, Publisher, PublisherConfig,
    QueueConfig,
};
use serde_json::Value;
use shop_common::events::{CMD_PAYMENT_CHARGE, COMMANDS_EXCHANGE, ChargePayment, EVENTS_EXCHANGE};
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

fn charge(order_id: &str, payment_method: String) -> ChargePayment {
    ChargePayment {
        order_id: order_id.into(),
        amount_cents: 450,
        payment_method,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_with_an_oversized_field_is_dead_lettered_before_the_provider_is_called() {
    let broker_url = std::env::var("AMQP_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let namespace = format!("payments-limits-{}-{nanos:x}.", std::process::id());

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    // The internal API takes the gateway's service tokens: this test signs them.
    let key = chassis_http::auth::SigningKey::generate_ed25519().unwrap();
    let issuer =
        shop_common::auth::issuer_from_pem(&key.to_pkcs8_pem().unwrap(), "shop-1").unwrap();
    let token = issuer.issue("payments", &[]).unwrap();
    let mut payments = tokio::process::Command::new(env!("CARGO_BIN_EXE_shop-payments"))
        .env("SERVICE_TOKEN_PUBLIC_KEY", key.public_key_pem().unwrap())
        .env("SERVICE_TOKEN_KID", "shop-1")
        .env_remove("DATABASE_URL")
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("ADMIN_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("DATA_DIR", dir.path())
        .env("AMQP_URL", &broker_url)
        .env("SHOP_NAMESPACE", &namespace)
        .env("PROVIDER_URL", format!("http://127.0.0.1:{}", free_port()))
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let payment = async |id: &str| -> u16 {
        http.get(format!("{base}/internal/payments/{id}"))
            .bearer_auth(token.as_str())
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };

    let direct = Connection::connect(ConnectionConfig::new(&broker_url, "payments-limits-test"))
        .await
        .unwrap();
    let events = format!("{namespace}{EVENTS_EXCHANGE}");
    let commands = format!("{namespace}{COMMANDS_EXCHANGE}");
    let charge_queue = QueueConfig::new(format!("{namespace}payments.charge"));
    let refund_queue = QueueConfig::new(format!("{namespace}payments.refund"));
    direct
        .declare(
            chassis_messaging::TopologyConfig::new().exchange(ExchangeConfig::topic(&commands)),
        )
        .await
        .unwrap();
    let publisher = Publisher::new(&direct, PublisherConfig::default()).unwrap();
    let publish = async |cmd: &ChargePayment| {
        let envelope =
            Envelope::new("/shop/orders", CMD_PAYMENT_CHARGE, cmd).subject(&cmd.order_id);
        // Unroutable until the service has declared its queue: publish again until it is there.
        until("the charge queue", async || {
            publisher
                .publish(envelope.to_message(&commands).ok()?)
                .await
                .ok()
        })
        .await;
    };

    // 1 MB payment_method: dead-lettered with the field named, nothing recorded.
    publish(&charge("o-oversized", "p".repeat(1_000_000))).await;
    let channel = direct.create_channel().await.unwrap();
    let dlq = charge_queue.dead_letter_queue();
    let dead = until("the dead-lettered command", async || {
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
    assert!(reason.contains("payment_method"), "{reason}");
    assert!(reason.len() < 1024, "the value is not in the reason");
    assert_eq!(payment("o-oversized").await, 404);

    // A valid command after it is processed: the consumer is alive.
    publish(&charge("o-valid", "card_ok".into())).await;
    let recorded: Value = until("the valid charge's record", async || {
        let r = http
            .get(format!("{base}/internal/payments/o-valid"))
            .bearer_auth(token.as_str())
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())?;
        r.json().await.ok()
    })
    .await;
    assert_eq!(recorded["data"]["status"], "FAILED", "{recorded}");
    assert_eq!(payment("o-oversized").await, 404);
    // An over-long id in the path is refused with 422.
    assert_eq!(payment(&"o".repeat(100)).await, 422);

    // SIGTERM: a clean stop (the consumer never crashed).
    let pid = payments.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = tokio::time::timeout(MINUTE, payments.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");

    for queue in charge_queue
        .all_queues()
        .into_iter()
        .chain(refund_queue.all_queues())
    {
        let options = lapin::options::QueueDeleteOptions::default();
        channel
            .queue_delete(queue.as_str().into(), options)
            .await
            .unwrap();
    }
    for exchange in [
        charge_queue.dead_letter_exchange(),
        refund_queue.dead_letter_exchange(),
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
