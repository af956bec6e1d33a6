//! The messaging components under the lifecycle runner, against the real broker: with the
//! broker up, the connection component declares the topology before the next component
//! starts; with it away, a service with an outbox still starts (degraded), and one that
//! requires the broker fails under the name `rabbitmq`.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chassis_core::ErrorKind;
use chassis_core::health::Status;
use chassis_core::lifecycle::App;
use chassis_messaging::amqp::topology::{ExchangeConfig, QueueConfig, TopologyConfig};
use chassis_messaging::{Connection, ConnectionConfig};
use lapin::options::{ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions};
use support::{amqp_url, unique};

fn closed_port_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
}

#[tokio::test]
async fn the_topology_is_declared_before_the_next_component_starts() {
    let name = unique("attach");
    let conn = Connection::start(ConnectionConfig::new(amqp_url(), &name)).unwrap();
    let exchange = format!("{name}.ex");
    let queue = QueueConfig::new(format!("{name}.q")).bind(&exchange, "#");
    let topology = TopologyConfig::new()
        .exchange(ExchangeConfig::topic(&exchange))
        .queue(queue.clone());
    let found = Arc::new(AtomicBool::new(false));
    let app = App::new("t")
        .handle_signals(false)
        .component(conn.component().declare(topology));
    let (check, probe, stop) = (conn.clone(), found.clone(), app.shutdown_handle());
    let queue_name = queue.name.clone();
    let app = app.after_start(move || async move {
        // A passive declare fails unless the queue exists.
        let ch = check.create_channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let exists = ch
            .queue_declare(queue_name.as_str().into(), passive, Default::default())
            .await
            .is_ok();
        probe.store(exists, Ordering::SeqCst);
        stop.trigger();
        Ok(())
    });
    app.run().await.unwrap();
    assert!(found.load(Ordering::SeqCst), "queue missing after start");

    let cleanup = Connection::connect(ConnectionConfig::new(amqp_url(), format!("{name}.cleanup")))
        .await
        .unwrap();
    let ch = cleanup.create_channel().await.unwrap();
    for q in queue.all_queues() {
        let _ = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for e in [exchange, queue.dead_letter_exchange()] {
        let _ = ch
            .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    cleanup.close().await;
}

#[tokio::test]
async fn without_the_broker_an_optional_connection_starts_degraded() {
    let conn = Connection::start(ConnectionConfig::new(closed_port_url(), "away")).unwrap();
    let app = App::new("t").handle_signals(false).component(
        conn.component()
            .attach_timeout(Duration::from_millis(300))
            .declare(TopologyConfig::new().exchange(ExchangeConfig::topic("away.ex"))),
    );
    let (health, stop) = (app.health().clone(), app.shutdown_handle());
    let began = Instant::now();
    let run = tokio::spawn(app.run());
    while !health.is_started() {
        assert!(began.elapsed() < Duration::from_secs(5), "did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        began.elapsed() >= Duration::from_millis(300),
        "waited the attach timeout"
    );
    let report = health.readiness().await;
    assert_eq!(report.status, Status::Degraded, "{report:?}");
    assert!(report.is_ready());
    stop.trigger();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_required_broker_that_does_not_answer_fails_the_start_by_name() {
    let config = ConnectionConfig::new(closed_port_url(), "required")
        .initial_connect_timeout(Duration::from_millis(500));
    let conn = Connection::start(config).unwrap();
    let err = App::new("t")
        .handle_signals(false)
        .component(conn.component().required())
        .run()
        .await
        .expect_err("no broker");
    assert_eq!(
        err.kind(),
        &ErrorKind::ComponentStart {
            component: "rabbitmq".into()
        }
    );
}
