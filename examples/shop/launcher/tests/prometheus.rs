//! The Grafana dashboards against the real Prometheus: the shop runs (its real binaries, the
//! real RabbitMQ), Debian's `prometheus` scrapes every service with the jobs of
//! `examples/deploy/prometheus/prometheus.yml` (targets replaced by this run's ports, a 1 s
//! interval), a workload with a declined payment and a few client errors goes through the
//! gateway, a message no handler can decode goes to a queue, and then every query of every dashboard panel must return data from Prometheus's
//! HTTP API: a metric or label the services do not emit, a misspelt matcher or a grouping that
//! drops every series fails here, naming the panel and the query.
//!
//! Needs the `prometheus` binary (`apt-get install prometheus`; CI installs it).

mod grafana;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chassis_testkit::{ChildGuard, free_port};
use serde_json::{Value, json};
use serde_yaml::Value as Yaml;
use shop_launcher::workload::{self, WorkloadConfig, place, wait_final};
use shop_launcher::{System, SystemConfig, build_services_for_tests, cleanup};

const KEY: &str = "demo-key-0001";

/// The window `$__rate_interval` stands for: longer than the whole workload, so every rate
/// and increase covers it.
const RATE_INTERVAL: &str = "1m";

/// Panels (dashboard file, panel title) whose queries the workload cannot make return data;
/// their queries still have to be valid PromQL that Prometheus accepts.
const NO_DATA_EXPECTED: &[(&str, &str, &str)] = &[
    (
        "shop-resilience-messaging.json",
        "Adaptive concurrency limit",
        "no shop service configures an adaptive limit (a chassis option, off by default)",
    ),
    (
        "shop-resilience-messaging.json",
        "Outbox relay errors and parked rows",
        "the relay neither fails nor parks a row while the broker and the database are up",
    ),
    (
        "shop-resilience-messaging.json",
        "Retried messages",
        "a handler asks for a retry only when its database fails",
    ),
    (
        "shop-resilience-messaging.json",
        "Inbox duplicates",
        "no message is delivered twice without a broker failure",
    ),
    (
        "shop-resilience-messaging.json",
        "Rejected by bulkheads and rate limiters",
        "the workload stays under every limit",
    ),
];

/// The `prometheus` binary on `PATH`; fails (never skips) when it is missing.
fn prometheus_binary() -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("prometheus"))
        .find(|p| p.is_file())
        .expect(
            "the `prometheus` binary is not on PATH: `apt-get install prometheus` \
             (Debian's package ships prometheus and promtool)",
        )
}

/// The committed scrape configuration with this system's ports: the same job names (the
/// dashboards' `service` is the job), every target on loopback at the service's admin port
/// (where the chassis serves `/metrics`), scraped every second.
fn scrape_config(system: &System) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus/prometheus.yml");
    let mut config: Yaml = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    config["global"]["scrape_interval"] = "1s".into();
    config["global"]["evaluation_interval"] = "1s".into();
    let jobs = config["scrape_configs"].as_sequence_mut().unwrap();
    assert!(!jobs.is_empty());
    for job in jobs {
        let name = job["job_name"].as_str().unwrap().to_owned();
        let url = system.admin_url(&name);
        assert_ne!(url, system.url(&name), "{name}: no admin port");
        let target = url
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("{name}: {url} is not plain HTTP"));
        job["static_configs"] = serde_yaml::from_str(&format!("[{{targets: [\"{target}\"]}}]"))
            .expect("a static config");
    }
    serde_yaml::to_string(&config).unwrap()
}

/// A running Prometheus on a loopback port, killed when dropped.
#[derive(Debug)]
struct Prometheus {
    _child: ChildGuard,
    url: String,
    http: reqwest::Client,
}

impl Prometheus {
    async fn start(config: &str, dir: &Path) -> Self {
        let bin = prometheus_binary();
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        let prometheus = Self {
            _child: ChildGuard::new(child),
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = prometheus
                .http
                .get(format!("{}/-/ready", prometheus.url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return prometheus;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within 30 s:\n{}",
                std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `/api/v1/query`: the result vector, or the error Prometheus answered.
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v1/query", self.url),
            &[("query", expr)],
        )
        .unwrap();
        let body: Value = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Waits until `expr` returns a sample of at least `min` (the last scrape saw it).
    async fn wait_for(&self, expr: &str, min: f64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let result = self.query(expr).await.unwrap_or_default();
            if result.iter().any(|s| value(s).is_some_and(|v| v >= min)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{expr} did not reach {min} within {within:?}: {result:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Publishes a message that is not a chassis envelope straight to notifications' queue.
async fn publish_poison(system: &System) {
    use lapin::BasicProperties;
    use lapin::options::BasicPublishOptions;

    let conn =
        lapin::Connection::connect(system.amqp_url(), lapin::ConnectionProperties::default())
            .await
            .expect("the broker answers");
    let channel = conn.create_channel().await.unwrap();
    let queue = format!("{}notifications.orders", system.namespace());
    channel
        .basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            b"not an envelope",
            BasicProperties::default().with_message_id("poison-1".into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    conn.close(200, "done".into()).await.unwrap();
}

/// The value of an instant-vector sample (`"value": [time, "1.5"]`).
fn value(sample: &Value) -> Option<f64> {
    sample["value"][1].as_str()?.parse().ok()
}

/// The query as Grafana sends it, with the template variables expanded: every service, and a
/// rate window covering the run.
fn expand(expr: &str) -> String {
    expr.replace("$__rate_interval", RATE_INTERVAL)
        .replace("${service}", ".+")
        .replace("$service", ".+")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_the_real_prometheus() {
    // Before anything starts: a missing binary fails at once, with the install hint.
    prometheus_binary();
    let bin = build_services_for_tests().expect("cargo build of the services");
    let dir = tempfile::tempdir().unwrap();
    let mut config = SystemConfig::new(bin, dir.path().join("run"));
    // No collector here (none is packaged for this machine; traces are checked in the Compose
    // stack): the services export to a port nobody listens on, so the dropped-spans panel has
    // its series, as it would with the collector down.
    config.extra_env.push((
        "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
        format!("http://127.0.0.1:{}", free_port()),
    ));
    let sys = System::start(config).await.expect("system starts");
    let prometheus_dir = dir.path().join("prometheus");
    std::fs::create_dir_all(&prometheus_dir).unwrap();
    let prometheus = Prometheus::start(&scrape_config(&sys), &prometheus_dir).await;
    prometheus
        .wait_for("count(up == 1)", 5.0, Duration::from_secs(20))
        .await;

    // `/metrics` (and the probes) on the admin ports only: the gateway's public port, the one
    // end users reach, must not publish them.
    let http = reqwest::Client::new();
    for path in ["/metrics", "/health/ready"] {
        let public = http
            .get(format!("{}{path}", sys.url("gateway")))
            .send()
            .await
            .unwrap();
        assert_eq!(
            public.status(),
            404,
            "{path} served on the gateway's public port"
        );
    }
    let admin = http
        .get(format!("{}/metrics", sys.admin_url("gateway")))
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 200);
    assert_eq!(
        admin.headers()["content-type"],
        chassis_http::health::PROMETHEUS_CONTENT_TYPE
    );

    // The workload, one order paid with the always-declined card (a 402 from the provider, a
    // compensation), then client errors at the gateway: an unknown order and a wrong key.
    let gateway = sys.url("gateway");
    let summary = workload::run(
        gateway,
        &WorkloadConfig {
            orders: 40,
            concurrency: 8,
            ..WorkloadConfig::default()
        },
        None,
    )
    .await
    .unwrap();
    assert_eq!(summary.finished(), 40, "{summary}");
    let declined = json!({"customer_id": "c-prometheus", "items": [{"sku": "tea", "quantity": 1}], "payment_method": "card_declined"});
    let (status, body) = place(&http, gateway, KEY, &declined, None).await.unwrap();
    assert_eq!(status, 202, "{body}");
    let id = body["data"]["order_id"].as_str().unwrap();
    let order = wait_final(&http, gateway, KEY, id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(order["reason"], "card_declined", "{order}");
    let unknown = format!("{gateway}/api/v1/orders/00000000-0000-0000-0000-000000000000");
    let not_found = http.get(&unknown).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(not_found.status(), 404);
    let wrong_key = http
        .get(&unknown)
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_key.status(), 401);
    // A message no handler can decode: notifications rejects it to its dead-letter queue.
    publish_poison(&sys).await;

    // The last request of the run in Prometheus means every earlier one is too; two more
    // scrapes so every rate has samples after it.
    prometheus
        .wait_for(
            r#"http_server_request_duration_seconds_count{job="gateway", http_response_status_code="401"}"#,
            1.0,
            Duration::from_secs(20),
        )
        .await;
    prometheus
        .wait_for(
            "sum(messaging_client_dead_lettered_messages_total)",
            1.0,
            Duration::from_secs(20),
        )
        .await;
    prometheus
        .wait_for(
            r#"sum(otel_spans_dropped_total{reason="export_failed"})"#,
            1.0,
            Duration::from_secs(20),
        )
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut failures = Vec::new();
    let mut checked = 0;
    for dashboard in grafana::dashboards() {
        for q in dashboard.queries() {
            if q.datasource.as_deref() != Some("prometheus") {
                continue;
            }
            let expr = expand(&q.expr);
            let at = format!("{} / {} / {}", q.dashboard, q.panel, q.ref_id);
            let no_data_expected = NO_DATA_EXPECTED
                .iter()
                .any(|(file, panel, _)| *file == q.dashboard && *panel == q.panel);
            checked += 1;
            match prometheus.query(&expr).await {
                Err(e) => failures.push(format!("{at}: Prometheus refused {expr}: {e}")),
                Ok(_) if no_data_expected => {}
                Ok(result) if result.is_empty() => {
                    failures.push(format!("{at}: no data for {expr}"));
                }
                Ok(result) if !result.iter().any(|s| value(s).is_some_and(f64::is_finite)) => {
                    failures.push(format!(
                        "{at}: only NaN or infinite values for {expr}: {result:?}"
                    ));
                }
                Ok(_) => {}
            }
        }
    }
    // Every allow-listed panel exists (a renamed panel must not keep its exemption).
    for (file, panel, why) in NO_DATA_EXPECTED {
        let found = grafana::dashboards()
            .iter()
            .any(|d| d.file == *file && d.queries().iter().any(|q| q.panel == *panel));
        assert!(
            found,
            "allow-listed panel {file} / {panel} ({why}) does not exist"
        );
    }
    assert!(checked >= 30, "only {checked} queries");

    let (amqp_url, namespace) = (sys.amqp_url().to_owned(), sys.namespace().to_owned());
    let unclean = sys.stop().await;
    cleanup::delete_namespace(&amqp_url, &namespace)
        .await
        .expect("the namespace is deleted");
    assert!(
        failures.is_empty(),
        "{} of {checked} dashboard queries failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Without a collector the services' last span flush fails, which they report as an unclean
    // stop of their telemetry; any other reason fails the test.
    for service in &unclean {
        let log = std::fs::read_to_string(dir.path().join("run").join(format!("{service}.log")))
            .unwrap_or_default();
        let failed: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("failed to stop cleanly"))
            .collect();
        assert!(
            !failed.is_empty()
                && failed
                    .iter()
                    .all(|l| l.contains(r#""component":"telemetry""#)),
            "{service} did not stop cleanly, and not only for the missing collector: {failed:?}"
        );
    }
}
