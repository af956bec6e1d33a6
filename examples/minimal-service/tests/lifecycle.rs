//! The template's life, from outside, as an operator sees it: it starts and takes writes while
//! RabbitMQ is away and catches up when it returns; SIGTERM under load loses nothing and
//! publishes nothing twice; a failed start names the component; a second signal forces the
//! exit. Each test that needs a broker runs its own RabbitMQ node.

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chassis_messaging::{
    Connection, ConnectionConfig, Consumer, ConsumerConfig, ExchangeConfig, IncomingMessage,
    Outcome, QueueConfig, TopologyConfig,
};
use support::{RabbitNode, Service, free_port};

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn serves_writes_while_the_broker_is_away_and_catches_up_when_it_returns() {
    let node = RabbitNode::new("outage");
    let svc = Service::start(&node.url(), "outage.");

    // No broker at all: the service starts, is ready (degraded), and takes writes.
    let ready = svc.ready(Duration::from_secs(30)).await;
    assert_eq!(ready["status"], "DEGRADED", "{ready}");
    let rabbitmq = ready["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "rabbitmq")
        .unwrap();
    assert_eq!(rabbitmq["status"], "DOWN", "{ready}");
    assert_eq!(rabbitmq["required"], false, "{ready}");
    for name in ["a", "b", "c"] {
        assert_eq!(svc.greet(name).await, 201);
    }
    assert_eq!(svc.counts().await, (3, 0));

    // The broker comes: topology, relay and consumer attach, the backlog is applied.
    node.start();
    svc.processed(3, MINUTE).await;

    // It goes away again and comes back: writes keep being accepted and catch up.
    node.stop();
    for name in ["d", "e"] {
        assert_eq!(svc.greet(name).await, 201);
    }
    node.start();
    svc.processed(5, MINUTE).await;
    assert_eq!(svc.counts().await, (5, 5));

    svc.signal("TERM");
    let (code, stderr) = svc.exit(MINUTE).await;
    assert_eq!(code, Some(0), "{stderr}");
}

/// Records the message id of every `greeting.created` the broker routes, beside the
/// service's own consumer: a message published twice would show here twice.
async fn audit(conn: &Connection, prefix: &str) -> (Arc<Mutex<Vec<String>>>, Consumer) {
    let exchange = format!("{prefix}minimal.events");
    let queue = QueueConfig::new(format!("{prefix}audit")).bind(&exchange, "greeting.created");
    let topology = TopologyConfig::new()
        .exchange(ExchangeConfig::topic(&exchange))
        .queue(queue.clone());
    conn.declare(topology).await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let handler = move |msg: IncomingMessage| {
        let id = msg.message_id().unwrap_or_default().to_owned();
        record.lock().unwrap().push(id);
        async { Outcome::Ack }
    };
    let consumer = Consumer::start(conn, queue, ConsumerConfig::default(), handler)
        .await
        .unwrap();
    (seen, consumer)
}

#[tokio::test]
async fn sigterm_under_load_answers_in_flight_requests_and_loses_nothing() {
    let node = RabbitNode::new("load");
    node.start();
    let prefix = "load.";
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("m.db");
    let db = format!("sqlite://{}", db_path.display());
    let port = free_port();
    let svc = Service::start_with(&node.url(), prefix, port, &db, tempfile::tempdir().unwrap());
    svc.ready(Duration::from_secs(30)).await;

    let conn = Connection::connect(ConnectionConfig::new(node.url(), "audit"))
        .await
        .unwrap();
    let (seen, auditor) = audit(&conn, prefix).await;

    // Eight clients post greetings, a new connection each time, until the service stops
    // accepting connections.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let created = Arc::new(Mutex::new(HashSet::new()));
    let mut clients = Vec::new();
    for c in 0..8 {
        let (http, base, created) = (http.clone(), svc.base.clone(), created.clone());
        clients.push(tokio::spawn(async move {
            for i in 0.. {
                let name = format!("c{c}-{i}");
                let res = http
                    .post(format!("{base}/greetings"))
                    .json(&serde_json::json!({ "name": name }))
                    .send()
                    .await;
                match res {
                    Ok(r) => {
                        assert_eq!(r.status(), 201, "an accepted request is answered");
                        created.lock().unwrap().insert(name);
                    }
                    Err(e) => {
                        // Refused, or reset: a connection still in the kernel's accept backlog
                        // when the listener closed was never the server's. Whether an accepted
                        // request went unanswered is checked below: its row would be in the
                        // database without a 201 here.
                        assert!(
                            e.is_connect() || e.is_request(),
                            "only connections the server never took may fail: {e:?}"
                        );
                        return;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    svc.signal("TERM");
    for client in clients {
        client.await.unwrap();
    }
    let (code, stderr) = svc.exit(MINUTE).await;
    assert_eq!(code, Some(0), "{stderr}");
    let created = created.lock().unwrap().clone();
    assert!(created.len() > 50, "load while stopping: {}", created.len());

    // Every answered write is in the database with its outbox row; no row is left mid-flight.
    let pool = chassis_messaging::sql::sqlite_pool(&db).unwrap();
    let (rows,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM greetings")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows as usize, created.len(), "nothing lost, nothing extra");
    let statuses: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, COUNT(*) FROM chassis_outbox GROUP BY status")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(
        statuses.iter().all(|(s, _)| s == "sent" || s == "pending"),
        "{statuses:?}"
    );
    pool.close().await;

    // A restart publishes what was left pending and applies the rest, each once.
    let svc = Service::start_with(&node.url(), prefix, port, &db, dir);
    svc.ready(Duration::from_secs(30)).await;
    svc.processed(created.len() as i64, MINUTE).await;
    let deadline = tokio::time::Instant::now() + MINUTE;
    while seen.lock().unwrap().len() < created.len() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = seen.lock().unwrap().clone();
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(seen.len(), created.len(), "each event published once");
    assert_eq!(unique.len(), seen.len(), "no message id twice");
    svc.signal("TERM");
    let (code, stderr) = svc.exit(MINUTE).await;
    assert_eq!(code, Some(0), "{stderr}");
    auditor.shutdown().await;
    conn.close().await;
}

#[tokio::test]
async fn a_failed_start_names_the_component_and_exits_non_zero() {
    let closed_broker = format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port());

    // The port is taken: the HTTP server cannot bind.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("m.db").display());
    let svc = Service::start_with(&closed_broker, "fail.", port, &db, dir);
    let (code, stderr) = svc.exit(MINUTE).await;
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("component 'http' failed to start"),
        "{stderr}"
    );

    // The database cannot be opened: nothing after it starts.
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("missing/dir/m.db").display());
    let svc = Service::start_with(&closed_broker, "fail.", free_port(), &db, dir);
    let (code, stderr) = svc.exit(MINUTE).await;
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("component 'database' failed to start"),
        "{stderr}"
    );

    // Invalid configuration: the variable is named.
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("m.db").display());
    let svc = Service::start_env(
        &closed_broker,
        "fail.",
        free_port(),
        &db,
        dir,
        &[("DRAIN_TIMEOUT", "soon")],
    );
    let (code, stderr) = svc.exit(MINUTE).await;
    assert_ne!(code, Some(0));
    assert!(stderr.contains("DRAIN_TIMEOUT"), "{stderr}");
}

#[tokio::test]
async fn a_second_signal_forces_the_exit() {
    let closed_broker = format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let db = format!("sqlite://{}", path.display());
    let svc = Service::start_with(&closed_broker, "force.", free_port(), &db, dir);
    svc.ready(Duration::from_secs(30)).await;

    // Hold SQLite's write lock so a request hangs in its handler (busy timeout 10 s).
    let lock = chassis_messaging::sql::sqlite_pool(&db).unwrap();
    let mut holder = lock.acquire().await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let (http, base) = (svc.http.clone(), svc.base.clone());
    let stuck = tokio::spawn(async move {
        http.post(format!("{base}/greetings"))
            .json(&serde_json::json!({ "name": "stuck" }))
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    svc.signal("TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(svc.child.id().is_some(), "still draining the stuck request");
    let began = std::time::Instant::now();
    svc.signal("TERM");
    let (code, stderr) = svc.exit(Duration::from_secs(8)).await;
    assert!(began.elapsed() < Duration::from_secs(8));
    assert_ne!(code, Some(0), "a forced stop is not a clean one");
    assert!(stderr.contains("shutdown forced"), "{stderr}");
    drop(holder);
    let _ = stuck.await;
}
