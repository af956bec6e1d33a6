//! The metric catalogue against what the chassis really emits: one process drives every
//! component (HTTP server layers with an error and a shed request, the gRPC server layers and client, the HTTP client with retry
//! and circuit breaker, bulkhead, adaptive-limit and rate-limit rejections, the outbox relay on SQLite
//! publishing and parking through the real RabbitMQ, a consumer that acks, retries and
//! dead-letters (and polls its queue's depth), an inbox that sees a duplicate, span export to
//! a dead collector), scrapes `/metrics`, and checks that
//!
//! - every scraped family is in the catalogue, with the catalogue's type, `# HELP` text, labels
//!   and (where closed) label values;
//! - every catalogue entry was emitted;
//! - `promtool check metrics` finds nothing in the scrape.
//!
//! This test lives here because it needs chassis-http and chassis-messaging together, which
//! never depend on each other. It needs RabbitMQ on 127.0.0.1:5672 (or `AMQP_URL`) and
//! `promtool` (Debian: `apt-get install prometheus`; CI installs it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use chassis_core::ServiceInfo;
use chassis_core::metric_catalogue as names;
use chassis_core::resilience::adaptive_limit::AdaptiveLimitConfig;
use chassis_core::resilience::bulkhead::BulkheadConfig;
use chassis_core::resilience::circuit_breaker::{CircuitBreakerConfig, SlidingWindowType};
use chassis_core::resilience::policy::ResiliencePolicy;
use chassis_core::resilience::rate_limiter::RateLimiterConfig;
use chassis_core::resilience::retry::{Backoff, Jitter, RetryBudgetConfig, RetryConfig};
use chassis_core::shutdown::Shutdown;
use chassis_http::client::HttpClient;
use chassis_http::grpc::{GrpcClient, GrpcHealth, GrpcLayers, GrpcRouter};
use chassis_http::layers::StandardLayers;
use chassis_messaging::amqp::topology::RetryPolicy;
use chassis_messaging::sql::outbox::OutboxStore;
use chassis_messaging::sql::sqlite_pool;
use chassis_messaging::{
    Connection, ConnectionConfig, Consumer, ConsumerConfig, ExchangeConfig, Inbox, IncomingMessage,
    Outbox, Outcome, OutgoingMessage, Publish, Publisher, PublisherConfig, QueueConfig, Relay,
    RelayConfig, TopologyConfig, Unroutable, idempotent,
};
use chassis_observability::Telemetry;
use chassis_observability::config::TelemetryConfig;
use serde_json::Value;
use sqlx::{Sqlite, Transaction};

#[path = "support/exposition.rs"]
mod exposition;

use exposition::{disagreements, parse, parse_labels, promtool_findings};

fn amqp_url() -> String {
    std::env::var("AMQP_URL")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn fast_retry(name: &str, attempts: u32) -> RetryConfig {
    RetryConfig::new(name)
        .max_attempts(attempts)
        .backoff(
            Backoff::exponential(Duration::from_millis(5))
                .max(Duration::from_millis(20))
                .jitter(Jitter::None),
        )
        .budget(RetryBudgetConfig::disabled())
}

/// A port nothing listens on.
async fn dead_endpoint() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

/// Polls `done` until it holds or `within` has passed; says which.
async fn settle(within: Duration, mut done: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if done().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The consumer's handler, under the inbox: the body says what to do.
async fn on_message(msg: IncomingMessage, _tx: &mut Transaction<'static, Sqlite>) -> Outcome {
    match msg.body() {
        b"retry" => Outcome::retry("flaky: try again"),
        b"reject" => Outcome::reject("invalid: cannot be handled"),
        _ => Outcome::Ack,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_emitted_metric_is_catalogued_and_every_catalogued_one_is_emitted() {
    // Telemetry as a service starts it, exporting spans to a collector that is not there with
    // a queue of one span, so spans are dropped and counted.
    let mut config = TelemetryConfig::default();
    config.tracing.endpoint = Some(dead_endpoint().await);
    config.tracing.max_queue_size = 1;
    config.tracing.scheduled_delay = Duration::from_millis(20);
    config.tracing.export_timeout = Duration::from_millis(200);
    let telemetry = Telemetry::builder(ServiceInfo::new("catalogue-test", "0.0.0"))
        .ignore_env()
        .config(config)
        .writer(std::io::sink())
        .init()
        .expect("telemetry");
    let handle = telemetry.prometheus_handle().expect("recorder");
    let tag = format!("catalogue-{}", std::process::id());

    // HTTP server: the standard layers (at most one request in flight, so a second is shed)
    // around routes that answer, fail, stall and are down; /metrics outside them, as the
    // chassis's health layer serves it.
    let scrape = handle.clone();
    let app = Router::new()
        .route(
            "/ok",
            get(|| async { axum::Json(serde_json::json!({ "ok": true })) }),
        )
        .route("/fail", get(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
        .route("/down", get(|| async { StatusCode::SERVICE_UNAVAILABLE }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(400)).await;
                "late"
            }),
        )
        .layer(StandardLayers::new().max_in_flight(1))
        .route("/metrics", get(move || async move { scrape.render() }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // HTTP client: retries then a success, an error, a breaker that opens and rejects, a
    // bulkhead, an adaptive limit and a rate limiter that turn calls away.
    let client = |name: &str, policy| {
        HttpClient::builder(name)
            .base_url(&base)
            .policy(policy)
            .build()
            .unwrap()
    };
    let plain = client("plain", ResiliencePolicy::new());
    let _: Value = plain.get_json("/ok").await.unwrap();
    assert!(plain.get_json::<Value>("/fail").await.is_err());
    let retrying = client(
        "retrying",
        ResiliencePolicy::new().retry(fast_retry("retrying", 2)),
    );
    assert!(retrying.get_json::<Value>("/down").await.is_err());
    let breaker = client(
        "breaker",
        ResiliencePolicy::new().circuit_breaker(
            CircuitBreakerConfig::new("breaker")
                .sliding_window(SlidingWindowType::CountBased, 2)
                .minimum_number_of_calls(2)
                .failure_rate_threshold(50.0)
                .wait_duration_in_open_state(Duration::from_secs(60)),
        ),
    );
    for _ in 0..3 {
        assert!(breaker.get_json::<Value>("/down").await.is_err());
    }
    let limited = client(
        "limited",
        ResiliencePolicy::new().rate_limit(
            RateLimiterConfig::new("limited")
                .rate(1)
                .period(Duration::from_secs(60))
                .max_wait(Duration::ZERO),
        ),
    );
    let _ = limited.get_json::<Value>("/ok").await;
    assert!(
        limited
            .get_json::<Value>("/ok")
            .await
            .unwrap_err()
            .is_rejection()
    );
    let bulkhead = client(
        "bulkhead",
        ResiliencePolicy::new().bulkhead(
            BulkheadConfig::new("bulkhead")
                .max_concurrent(1)
                .max_wait(Duration::ZERO),
        ),
    );
    // An adaptive limit held at one call: the slow call takes it.
    let adaptive = client(
        "adaptive",
        ResiliencePolicy::new().adaptive_limit(
            AdaptiveLimitConfig::new("adaptive")
                .initial_limit(1)
                .min_limit(1)
                .max_limit(1),
        ),
    );
    let in_flight = r#"http_server_active_requests{http_request_method="GET"} 1"#;
    let slow = {
        let adaptive = adaptive.clone();
        tokio::spawn(async move { adaptive.get_json::<Value>("/slow").await })
    };
    assert!(
        settle(Duration::from_secs(10), async || handle
            .render()
            .contains(in_flight))
        .await,
        "the slow request reaches the server"
    );
    assert!(
        adaptive
            .get_json::<Value>("/ok")
            .await
            .unwrap_err()
            .is_rejection()
    );
    let _ = slow.await.unwrap();
    let slow = {
        let bulkhead = bulkhead.clone();
        tokio::spawn(async move { bulkhead.get_json::<Value>("/slow").await })
    };
    assert!(
        settle(Duration::from_secs(10), async || handle
            .render()
            .contains(in_flight))
        .await,
        "the slow request reaches the server"
    );
    // Rejected by the bulkhead (the slow call holds its permit) ...
    assert!(
        bulkhead
            .get_json::<Value>("/ok")
            .await
            .unwrap_err()
            .is_rejection()
    );
    // ... and by the server, which has the slow request in flight: shed with a 503.
    let shed = plain.get_json::<Value>("/ok").await.unwrap_err();
    assert_eq!(shed.status().map(|s| s.as_u16()), Some(503), "{shed}");
    let _ = slow.await.unwrap();

    // gRPC server: one call through the chassis gRPC layers (the health service's Check).
    let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_url = format!("http://{}", grpc_listener.local_addr().unwrap());
    let grpc_router = GrpcRouter::new()
        .add_service(GrpcHealth::new(chassis_core::health::HealthRegistry::new()).into_service());
    let grpc_server = chassis_http::server::Server::from_listener(
        grpc_listener,
        chassis_http::server::ServerConfig::default(),
    )
    .unwrap()
    .handle_signals(false);
    let grpc_shutdown = grpc_server.shutdown_handle();
    let grpc_task =
        tokio::spawn(grpc_server.serve(tower::Layer::layer(&GrpcLayers::new(), grpc_router)));
    let grpc_client = GrpcClient::builder("catalogue-grpc", grpc_url)
        .build()
        .unwrap();
    tonic_health::pb::health_client::HealthClient::new(grpc_client)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("a gRPC health answer");
    grpc_shutdown.trigger();
    grpc_task.await.unwrap().unwrap();

    // Messaging: an exchange with a queue (retry tier and dead-letter queue), an exchange that
    // accepts unroutable messages, and one without a queue that does not (its rows are parked).
    let conn = Connection::start(ConnectionConfig::new(amqp_url(), "catalogue-test")).unwrap();
    let exchange = format!("{tag}.events");
    let accepting = format!("{tag}.audit");
    let unbound = format!("{tag}.unbound");
    let queue = QueueConfig::new(format!("{tag}.work"))
        .bind(&exchange, "#")
        .retry(RetryPolicy::with_delays([Duration::from_millis(50)]).max_attempts(2));
    conn.declare(
        TopologyConfig::new()
            .exchange(ExchangeConfig::topic(&exchange))
            .exchange(ExchangeConfig::topic(&accepting).unroutable(Unroutable::Accept))
            .exchange(ExchangeConfig::topic(&unbound))
            .queue(queue.clone()),
    )
    .await
    .expect("declare");
    let publisher = Arc::new(Publisher::new(&conn, PublisherConfig::default()).unwrap());

    // Consumer under an inbox: acks, retries then dead-letters, rejects, skips a duplicate.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("catalogue.db").display());
    let pool = sqlite_pool(&url).unwrap();
    let inbox = Inbox::new(pool.clone(), queue.name.clone());
    inbox.migrate().await.unwrap();
    let handler = idempotent(inbox, |msg, tx| Box::pin(on_message(msg, tx)));
    // Polling the queue depth often, so the ready gauge is read from the broker in this run.
    let consumer_config = ConsumerConfig::default().queue_depth_interval(Duration::from_millis(50));
    let consumer = Consumer::start(&conn, queue.clone(), consumer_config, handler)
        .await
        .expect("consumer");
    for (id, body) in [
        ("m-ok", "ok"),
        ("m-ok", "ok"),
        ("m-retry", "retry"),
        ("m-reject", "reject"),
    ] {
        publisher
            .publish(
                OutgoingMessage::new(&exchange, "work", body.as_bytes().to_vec()).message_id(id),
            )
            .await
            .expect("publish");
    }

    // Outbox on SQLite, relayed: one row delivered, one accepted unrouted, one parked.
    let outbox = Outbox::new(pool.clone());
    outbox.migrate().await.unwrap();
    let mut tx = outbox.pool().begin().await.unwrap();
    for (exchange, key) in [
        (&exchange, "from.outbox"),
        (&accepting, "nobody.listens"),
        (&unbound, "nowhere"),
    ] {
        outbox
            .enqueue(
                &mut *tx,
                &OutgoingMessage::new(exchange, key, b"ok".to_vec()),
            )
            .await
            .unwrap();
    }
    outbox.commit(tx).await.unwrap();
    let relay = Relay::new(
        outbox.clone(),
        publisher.clone(),
        RelayConfig::default()
            .max_attempts(2)
            .retry_delay(Duration::from_millis(20))
            .backoff_initial(Duration::from_millis(10))
            .backoff_max(Duration::from_millis(50))
            .poll_interval(Duration::from_millis(20))
            .stats_interval(Duration::from_millis(50)),
    )
    .unwrap();
    let stop_relay = Shutdown::new();
    let relay = relay.spawn_with(&stop_relay);
    assert!(
        settle(Duration::from_secs(20), async || {
            let stats = outbox.stats().await.unwrap();
            stats.pending == 0 && stats.parked == 1
        })
        .await,
        "the outbox drains, one row parked"
    );
    // Until everything has been counted: both dead letters (rejected, and retried until the
    // attempts ran out), the gauges refreshed. What is still missing after that, the
    // comparison below names.
    settle(Duration::from_secs(20), async || {
        let text = handle.render();
        let dead_lettered = format!("{}{{", names::MESSAGING_CLIENT_DEAD_LETTERED_MESSAGES);
        names::ALL
            .iter()
            .all(|m| text.contains(&format!("# TYPE {} ", m.name)))
            && text.matches(&dead_lettered).count() == 2
            && text.contains(&format!("\n{} 1\n", names::OUTBOX_PARKED))
    })
    .await;
    stop_relay.trigger();
    relay.await.unwrap();
    consumer.shutdown().await;

    // Scrape as Prometheus does.
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let families = parse(&text);
    let problems = disagreements(&families);
    assert!(
        problems.is_empty(),
        "the catalogue and the exposition disagree:\n{}\n\n{text}",
        problems.join("\n")
    );
    // The lag gauges of the queue: ready messages as polled, and nothing held unsettled once
    // the consumer has shut down (every delivery counted in was counted out).
    for series in [
        format!(
            "{}{{messaging_destination_name=\"{}\"}} ",
            names::MESSAGING_QUEUE_MESSAGES_READY,
            queue.name
        ),
        format!(
            "{}{{messaging_destination_name=\"{}\"}} 0\n",
            names::MESSAGING_CONSUMER_UNACKED_MESSAGES,
            queue.name
        ),
    ] {
        assert!(text.contains(&series), "{series:?} not scraped\n\n{text}");
    }
    let findings = promtool_findings(&text);
    assert!(
        findings.is_empty(),
        "promtool check metrics: {findings}\n\n{text}"
    );

    // Leave nothing behind on the broker.
    let ch = conn.create_channel().await.unwrap();
    for q in queue.all_queues() {
        let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
    }
    for e in [exchange, accepting, unbound, queue.dead_letter_exchange()] {
        let _ = ch
            .exchange_delete(e.as_str().into(), Default::default())
            .await;
    }
    let _ = ch.close(200, "cleanup".into()).await;
    conn.close().await;
    server.abort();
    drop(telemetry);
}

#[test]
fn the_parser_and_the_comparison_catch_what_they_should() {
    let text = "# HELP circuit_breaker_state wrong help\n\
                # TYPE circuit_breaker_state gauge\n\
                circuit_breaker_state{name=\"a\",extra=\"x\"} 0\n\
                # TYPE http_server_request_duration_seconds histogram\n\
                http_server_request_duration_seconds_bucket{http_request_method=\"BREW\",le=\"+Inf\"} 1\n\
                http_server_request_duration_seconds_sum{http_request_method=\"BREW\"} 1\n\
                http_server_request_duration_seconds_count{http_request_method=\"BREW\"} 1\n\
                # TYPE made_up counter\n\
                made_up 1\n";
    let families = parse(text);
    assert_eq!(
        families["http_server_request_duration_seconds"]
            .series
            .len(),
        3
    );
    let problems = disagreements(&families).join("\n");
    for expected in [
        "made_up: emitted but not in the catalogue",
        "circuit_breaker_state: HELP Some(\"wrong help\")",
        "circuit_breaker_state: label extra not in the catalogue",
        "http_request_method=\"BREW\" not among the catalogued",
        "http_server_request_duration_seconds: catalogued label http_route on no emitted series",
        "outbox_parked: catalogued but never emitted",
    ] {
        assert!(problems.contains(expected), "{expected}\n{problems}");
    }
    assert_eq!(
        parse_labels(r#"a="x\"y",b="1\\2""#),
        BTreeMap::from([("a".into(), "x\"y".into()), ("b".into(), "1\\2".into())])
    );
}

#[test]
fn promtool_reports_what_prometheus_naming_forbids() {
    let findings = promtool_findings(
        "# HELP retry_attempts Attempts.\n# TYPE retry_attempts counter\nretry_attempts 1\n",
    );
    assert!(findings.contains("\"_total\" suffix"), "{findings}");
}
