//! Shared helpers of the RabbitMQ integration tests: unique names, fixtures, cleanup and
//! closing one test's own connection with rabbitmqctl.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use chassis_messaging::amqp::connection::{Connection, ConnectionConfig, ConnectionState};
use chassis_messaging::amqp::topology::{ExchangeConfig, QueueConfig, RetryPolicy, TopologyConfig};
use lapin::options::{BasicAckOptions, BasicGetOptions, ExchangeDeleteOptions, QueueDeleteOptions};

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

pub fn unique(prefix: &str) -> String {
    format!("chassis-test.{prefix}.{}", uuid::Uuid::new_v4().simple())
}

pub async fn connect(name: &str) -> Connection {
    let cfg = ConnectionConfig::new(amqp_url(), name)
        .operation_timeout(Duration::from_secs(5))
        .min_backoff(Duration::from_millis(50))
        .max_backoff(Duration::from_millis(500));
    Connection::connect(cfg).await.expect("connect to RabbitMQ")
}

/// One test's exchange + queue (bound with `#` unless told otherwise), declared on a fresh
/// named connection.
pub struct Fixture {
    pub conn: Connection,
    pub name: String,
    pub exchange: String,
    pub queue: QueueConfig,
}

impl Fixture {
    pub async fn new(test: &str, retry: RetryPolicy) -> Self {
        Self::with_queue(test, |q| q.retry(retry)).await
    }

    pub async fn with_queue(test: &str, f: impl FnOnce(QueueConfig) -> QueueConfig) -> Self {
        Self::with_binding(test, "#", f).await
    }

    /// Like [`with_queue`](Self::with_queue), the queue bound with `binding_key`.
    pub async fn with_binding(
        test: &str,
        binding_key: &str,
        f: impl FnOnce(QueueConfig) -> QueueConfig,
    ) -> Self {
        let name = unique(test);
        let conn = connect(&name).await;
        let exchange = format!("{name}.ex");
        let queue = f(QueueConfig::new(format!("{name}.q")).bind(exchange.clone(), binding_key));
        conn.declare(
            TopologyConfig::new()
                .exchange(ExchangeConfig::topic(exchange.clone()))
                .queue(queue.clone()),
        )
        .await
        .expect("declare topology");
        Self {
            conn,
            name,
            exchange,
            queue,
        }
    }

    /// A consumer of the fixture's queue, with the default settings, running `handler`.
    pub async fn consume(
        &self,
        handler: impl chassis_messaging::amqp::consumer::Handler,
    ) -> chassis_messaging::Consumer {
        chassis_messaging::Consumer::start(
            &self.conn,
            self.queue.clone(),
            chassis_messaging::ConsumerConfig::default(),
            handler,
        )
        .await
        .expect("consumer started")
    }

    /// Deletes every queue and exchange of the fixture and closes the connection.
    pub async fn cleanup(self) {
        delete_topology(self.conn, &self.exchange, std::slice::from_ref(&self.queue)).await;
    }

    /// Takes every message currently in `queue` (acking them), waiting until `expected` arrived
    /// or `within` elapsed.
    pub async fn drain_queue(
        &self,
        queue: &str,
        expected: usize,
        within: Duration,
    ) -> Vec<lapin::message::BasicGetMessage> {
        let ch = self.conn.create_channel().await.expect("channel");
        let deadline = tokio::time::Instant::now() + within;
        let mut out = Vec::new();
        while out.len() < expected && tokio::time::Instant::now() < deadline {
            match ch
                .basic_get(queue.into(), BasicGetOptions::default())
                .await
                .expect("basic.get")
            {
                Some(m) => {
                    m.delivery
                        .acker
                        .ack(BasicAckOptions::default())
                        .await
                        .expect("ack");
                    out.push(m);
                }
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let _ = ch.close(200, "done".into()).await;
        out
    }
}

/// Closes the fixture's connection (only this test's) and waits until the connection manager
/// noticed and reconnected.
pub async fn force_reconnect(fx: &Fixture) {
    let mut state = fx.conn.subscribe();
    assert_eq!(
        kill_connection(&fx.name).await,
        1,
        "found our connection by its name"
    );
    for (wanted, what) in [
        (ConnectionState::Reconnecting, "loss noticed"),
        (ConnectionState::Connected, "reconnected"),
    ] {
        tokio::time::timeout(Duration::from_secs(10), state.wait_for(|s| *s == wanted))
            .await
            .expect(what)
            .unwrap();
    }
    assert!(fx.conn.generation() >= 2);
}

/// Closes only the connection(s) whose `connection_name` is `name`; returns how many.
pub async fn kill_connection(name: &str) -> usize {
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("rabbitmqctl")
            .args(["-q", "list_connections", "pid", "client_properties"])
            .output()
            .expect("rabbitmqctl list_connections");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut killed = 0;
        for line in text.lines().filter(|l| l.contains(&name)) {
            let Some(pid) = line.split_whitespace().next() else {
                continue;
            };
            if !pid.starts_with('<') {
                continue;
            }
            let status = std::process::Command::new("rabbitmqctl")
                .args(["close_connection", pid, "chassis test: forced close"])
                .status()
                .expect("rabbitmqctl close_connection");
            if status.success() {
                killed += 1;
            }
        }
        killed
    })
    .await
    .expect("rabbitmqctl task")
}

pub fn header_str(m: &lapin::message::BasicGetMessage, key: &str) -> Option<String> {
    let headers = m.delivery.properties.headers().as_ref()?;
    match headers.inner().get(key)? {
        lapin::types::AMQPValue::LongString(s) => {
            Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        lapin::types::AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        lapin::types::AMQPValue::LongLongInt(i) => Some(i.to_string()),
        lapin::types::AMQPValue::LongInt(i) => Some(i.to_string()),
        _ => None,
    }
}

/// Deletes `exchange`, every queue of `queues` (work queue, dead-letter queue, retry tiers) and
/// each one's dead-letter exchange, then closes `conn`. Errors are ignored: a test cleans up
/// what it can, also after a failure.
pub async fn delete_topology(conn: Connection, exchange: &str, queues: &[QueueConfig]) {
    let ch = conn.create_channel().await.expect("channel for cleanup");
    for q in queues {
        for name in q.all_queues() {
            let _ = ch
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
    let exchanges = queues.iter().map(QueueConfig::dead_letter_exchange);
    for e in exchanges.chain([exchange.to_owned()]) {
        let _ = ch
            .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = ch.close(200, "cleanup".into()).await;
    conn.close().await;
}

/// Takes `n` items off `rx`, waiting at most 10 s for each; `what` names them when one does not
/// come.
pub async fn recv_n<T>(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>,
    n: usize,
    what: &str,
) -> Vec<T> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let item = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{what} arrive"))
            .unwrap();
        out.push(item);
    }
    out
}

/// Starts a RabbitMQ node of the test's own, `name`, runs `test` on it and stops the node, also
/// when `test` panics (the panic then goes on once the node is stopped).
pub async fn on_own_node<F, Fut>(name: &str, test: F)
where
    F: FnOnce(std::sync::Arc<chassis_testkit::RabbitNode>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use futures_util::FutureExt as _;

    let node = std::sync::Arc::new(chassis_testkit::RabbitNode::new(name));
    {
        let node = node.clone();
        tokio::task::spawn_blocking(move || node.start())
            .await
            .expect("node started");
    }
    let res = std::panic::AssertUnwindSafe(test(node.clone()))
        .catch_unwind()
        .await;
    tokio::task::spawn_blocking(move || drop(node))
        .await
        .expect("node stopped");
    if let Err(panic) = res {
        std::panic::resume_unwind(panic);
    }
}
