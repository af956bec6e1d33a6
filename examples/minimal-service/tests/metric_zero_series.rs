//! The series every chassis component registers at zero when it is built, scraped before any
//! traffic: one process starts telemetry (exporting spans), builds the HTTP server layers, an
//! HTTP client with retry, circuit breaker, bulkhead and rate limiter, a keyed rate limiter, a
//! consumer under an inbox and an outbox relay, then scrapes `/metrics` once and checks that
//!
//! - each component's series are there at 0, one per catalogued value of every closed label
//!   (every breaker and retry `outcome`, every HTTP method, every outbox `error.type`, every
//!   `reason` of dropped spans), histograms with every bucket, `_sum` and `_count` at 0;
//! - every sample of the scrape is 0, except the breaker state gauge, which reads closed (0 as
//!   well): nothing was counted yet;
//! - every scraped family agrees with the catalogue (type, help, labels, closed values), and
//!   `promtool check metrics` finds nothing.
//!
//! It needs RabbitMQ on 127.0.0.1:5672 (or `AMQP_URL`) and `promtool`, like the catalogue test.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use chassis_core::ServiceInfo;
use chassis_core::metric_catalogue::{self as names, Kind, labels};
use chassis_core::resilience::bulkhead::BulkheadConfig;
use chassis_core::resilience::circuit_breaker::CircuitBreakerConfig;
use chassis_core::resilience::keyed_rate_limit::{KeyedRateLimitConfig, KeyedRateLimiter};
use chassis_core::resilience::policy::ResiliencePolicy;
use chassis_core::resilience::rate_limiter::RateLimiterConfig;
use chassis_core::resilience::retry::RetryConfig;
use chassis_http::client::HttpClient;
use chassis_http::layers::StandardLayers;
use chassis_messaging::sql::sqlite_pool;
use chassis_messaging::{
    Connection, ConnectionConfig, Consumer, ConsumerConfig, Inbox, Outbox, Outcome, Publisher,
    PublisherConfig, QueueConfig, Relay, RelayConfig, TopologyConfig, idempotent,
};
use chassis_observability::Telemetry;
use chassis_observability::config::TelemetryConfig;

#[path = "support/exposition.rs"]
mod exposition;

use exposition::{disagreements, parse, promtool_findings};

fn amqp_url() -> String {
    std::env::var("AMQP_URL")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A port nothing listens on.
async fn dead_endpoint() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

/// Every label set of `metric` with the open labels given by `fixed` and each closed label
/// over its catalogued values (as exposed: dots in label names become underscores).
fn expected_series(metric: &str, fixed: &[(&str, &str)]) -> Vec<BTreeMap<String, String>> {
    let entry = names::find(metric).unwrap_or_else(|| panic!("{metric} not catalogued"));
    let mut sets = vec![BTreeMap::new()];
    for label in entry.labels {
        let key = label.name.replace('.', "_");
        let values: Vec<&str> = match (fixed.iter().find(|(k, _)| *k == label.name), label.values) {
            (Some((_, value)), _) => vec![value],
            (None, Some(values)) => values.to_vec(),
            (None, None) => panic!("{metric}: no value for the open label {}", label.name),
        };
        sets = sets
            .iter()
            .flat_map(|set| {
                values.iter().map(|value| {
                    let mut set = set.clone();
                    set.insert(key.clone(), (*value).to_owned());
                    set
                })
            })
            .collect();
    }
    sets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_register_their_series_at_zero_before_any_traffic() {
    let mut config = TelemetryConfig::default();
    config.tracing.endpoint = Some(dead_endpoint().await);
    // No export is attempted before the scrape, so no span is dropped yet.
    config.tracing.scheduled_delay = Duration::from_secs(600);
    let telemetry = Telemetry::builder(ServiceInfo::new("zero-series-test", "0.0.0"))
        .ignore_env()
        .config(config)
        .writer(std::io::sink())
        .init()
        .expect("telemetry");
    let handle = telemetry.prometheus_handle().expect("recorder");
    let tag = format!("zero-series-{}", std::process::id());

    // HTTP server: the standard layers, /metrics outside them.
    let scrape = handle.clone();
    let app = Router::new()
        .route("/ok", get(|| async { "ok" }))
        .layer(StandardLayers::new())
        .route("/metrics", get(move || async move { scrape.render() }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // HTTP client with every resilience layer, and a keyed rate limiter: built, never called.
    let _client = HttpClient::builder("downstream")
        .base_url(&base)
        .policy(
            ResiliencePolicy::new()
                .retry(RetryConfig::new("downstream-retry"))
                .circuit_breaker(CircuitBreakerConfig::new("downstream-breaker"))
                .bulkhead(BulkheadConfig::new("downstream-bulkhead"))
                .rate_limit(RateLimiterConfig::new("downstream-limit")),
        )
        .build()
        .unwrap();
    let _keyed = KeyedRateLimiter::<String>::new(KeyedRateLimitConfig::new("per-user")).unwrap();

    // Messaging: a consumer under an inbox on its queue, an outbox relay (not running).
    let conn = Connection::start(ConnectionConfig::new(amqp_url(), "zero-series-test")).unwrap();
    let queue = QueueConfig::new(format!("{tag}.work"));
    conn.declare(TopologyConfig::new().queue(queue.clone()))
        .await
        .expect("declare");
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("zero.db").display());
    let pool = sqlite_pool(&url).unwrap();
    let inbox = Inbox::new(pool.clone(), "work-handler");
    inbox.migrate().await.unwrap();
    let handler = idempotent(inbox, |_msg, _tx| Box::pin(async { Outcome::Ack }));
    let consumer = Consumer::start(&conn, queue.clone(), ConsumerConfig::default(), handler)
        .await
        .expect("consumer");
    let publisher = Arc::new(Publisher::new(&conn, PublisherConfig::default()).unwrap());
    let outbox = Outbox::new(pool.clone());
    outbox.migrate().await.unwrap();
    let _relay = Relay::new(outbox, publisher, RelayConfig::default()).unwrap();

    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let families = parse(&text);

    let queue_name = queue.name.as_str();
    let expected: &[(&str, &[(&str, &str)])] = &[
        (names::HTTP_SERVER_ACTIVE_REQUESTS, &[]),
        (names::RETRY_ATTEMPTS, &[(labels::NAME, "downstream-retry")]),
        (
            names::CIRCUIT_BREAKER_CALLS,
            &[(labels::NAME, "downstream-breaker")],
        ),
        (
            names::CIRCUIT_BREAKER_STATE,
            &[(labels::NAME, "downstream-breaker")],
        ),
        (
            names::BULKHEAD_REJECTED,
            &[(labels::NAME, "downstream-bulkhead")],
        ),
        (
            names::RATE_LIMIT_REJECTED,
            &[(labels::NAME, "downstream-limit")],
        ),
        (names::RATE_LIMIT_REJECTED, &[(labels::NAME, "per-user")]),
        (
            names::MESSAGING_CLIENT_CONSUMED_MESSAGES,
            &[(labels::MESSAGING_DESTINATION_NAME, queue_name)],
        ),
        (
            names::MESSAGING_CLIENT_ACKED_MESSAGES,
            &[(labels::MESSAGING_DESTINATION_NAME, queue_name)],
        ),
        (
            names::MESSAGING_CLIENT_RETRIED_MESSAGES,
            &[(labels::MESSAGING_DESTINATION_NAME, queue_name)],
        ),
        (
            names::MESSAGING_PROCESS_DURATION,
            &[(labels::MESSAGING_DESTINATION_NAME, queue_name)],
        ),
        (
            names::MESSAGING_QUEUE_MESSAGES_READY,
            &[(labels::MESSAGING_DESTINATION_NAME, queue_name)],
        ),
        (
            names::MESSAGING_CONSUMER_UNACKED_MESSAGES,
            &[(labels::MESSAGING_DESTINATION_NAME, queue_name)],
        ),
        (
            names::INBOX_PROCESSED,
            &[(labels::MESSAGING_DESTINATION_NAME, "work-handler")],
        ),
        (
            names::INBOX_DUPLICATES,
            &[(labels::MESSAGING_DESTINATION_NAME, "work-handler")],
        ),
        (
            names::INBOX_TRANSACTIONS,
            &[(labels::MESSAGING_DESTINATION_NAME, "work-handler")],
        ),
        (names::OUTBOX_RELAY_ERRORS, &[]),
        (names::OUTBOX_PUBLISHED, &[]),
        (names::OUTBOX_UNROUTABLE, &[]),
        (names::OUTBOX_PARKED_MESSAGES, &[]),
        (names::OUTBOX_PUBLISH_LATENCY, &[]),
        (names::OTEL_SPANS_DROPPED, &[]),
        (names::LOG_LINES_DROPPED, &[]),
    ];
    let mut missing = Vec::new();
    let mut count = 0;
    for (metric, fixed) in expected {
        let kind = names::find(metric).unwrap().kind;
        // The sample that says "nothing yet": the value of a counter or gauge, a histogram's
        // `_count`.
        let sample_name = match kind {
            Kind::Histogram => format!("{metric}_count"),
            Kind::Counter | Kind::Gauge => (*metric).to_owned(),
        };
        for labels in expected_series(metric, fixed) {
            count += 1;
            let found = families.get(*metric).is_some_and(|family| {
                family
                    .samples
                    .iter()
                    .any(|(name, l, value)| *name == sample_name && *l == labels && value == "0")
            });
            if !found {
                missing.push(format!("{sample_name} {labels:?} = 0"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "series missing before any traffic:\n{}\n\n{text}",
        missing.join("\n")
    );
    // The closed labels were expanded: more than one series per metric.
    assert!(count > 2 * expected.len(), "{count} series expected");

    // Nothing has been counted, observed or set to anything but its initial value yet.
    for (family, f) in &families {
        for (name, labels, value) in &f.samples {
            assert_eq!(value, "0", "{name} {labels:?} in {family}\n\n{text}");
        }
    }
    // Histograms come with every bucket.
    let latency = &families[names::OUTBOX_PUBLISH_LATENCY];
    assert!(
        latency
            .samples
            .iter()
            .any(|(name, l, _)| name.ends_with("_bucket")
                && l.get("le").map(String::as_str) == Some("+Inf")),
        "{text}"
    );

    let problems: Vec<String> = disagreements(&families)
        .into_iter()
        .filter(|p| !p.ends_with("catalogued but never emitted"))
        .collect();
    assert!(
        problems.is_empty(),
        "the catalogue and the exposition disagree:\n{}\n\n{text}",
        problems.join("\n")
    );
    let findings = promtool_findings(&text);
    assert!(
        findings.is_empty(),
        "promtool check metrics: {findings}\n\n{text}"
    );

    consumer.shutdown().await;
    let ch = conn.create_channel().await.unwrap();
    for q in queue.all_queues() {
        let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
    }
    let _ = ch
        .exchange_delete(
            queue.dead_letter_exchange().as_str().into(),
            Default::default(),
        )
        .await;
    let _ = ch.close(200, "cleanup".into()).await;
    conn.close().await;
    server.abort();
    drop(telemetry);
}
