//! The gateway binary's metrics as Prometheus sees them, with every downstream down (their
//! URLs point at a port nobody listens on): `/metrics` on the admin port and not on the public
//! one; the first scrape, before any request, already holds each downstream's breaker and
//! retry series at zero; and a request through the public router is counted under its route
//! template (`/api/v1/orders/{id}`), never its raw path.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use chassis_core::metric_catalogue::{self as names, labels};
use chassis_http::auth::SigningKey;
use shop_contract::free_port;

const API_KEY: &str = "metrics-test-key";
const DOWNSTREAMS: [&str; 4] = ["orders", "inventory", "notifications", "payments"];

/// One sample of a scrape: its labels (Prometheus spelling) and value.
#[derive(Debug)]
struct Sample {
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The samples of `text` (the Prometheus text exposition) named `name`.
fn samples(text: &str, name: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            (metric == name).then(|| Sample {
                labels: parse_labels(labels),
                value: value.parse().unwrap_or(f64::NAN),
            })
        })
        .collect()
}

/// `a="x",b="y"` -> {a: x, b: y} (the chassis's label values carry no quotes or commas).
fn parse_labels(labels: &str) -> BTreeMap<String, String> {
    labels
        .split("\",")
        .filter(|pair| !pair.is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once("=\"")?;
            Some((k.to_owned(), v.trim_end_matches('"').to_owned()))
        })
        .collect()
}

/// The value of the sample of `name` with exactly these labels, if scraped.
fn value(text: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    samples(text, name)
        .into_iter()
        .find(|s| {
            s.labels.len() == want.len()
                && want
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

/// A catalogued label's name as the exporter writes it (`http.route` -> `http_route`).
fn prom(label: &str) -> String {
    label.replace('.', "_")
}

/// The catalogued values of `metric`'s `outcome` label.
fn outcomes(metric: &str) -> &'static [&'static str] {
    names::find(metric)
        .unwrap()
        .label(labels::OUTCOME)
        .unwrap()
        .values
        .unwrap()
}

struct Gateway {
    _child: tokio::process::Child,
    public: String,
    admin: String,
    http: reqwest::Client,
}

impl Gateway {
    async fn start() -> Self {
        let (port, admin_port) = (free_port(), free_port());
        let down = format!("http://127.0.0.1:{}", free_port());
        let service_key = SigningKey::generate_ed25519().unwrap();
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_shop-gateway"));
        command
            .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("ADMIN_ADDR", format!("127.0.0.1:{admin_port}"))
            .env("GATEWAY_API_KEYS", format!("{API_KEY}:tools"))
            .env(
                "SERVICE_TOKEN_PRIVATE_KEY",
                service_key.to_pkcs8_pem().unwrap(),
            )
            .env("OTEL_TRACES_EXPORTER", "none")
            .env("LOG_FORMAT", "json")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("REDIS_URL")
            .env_remove("GATEWAY_USER_JWKS")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        for name in DOWNSTREAMS {
            command.env(format!("{}_URL", name.to_ascii_uppercase()), &down);
            command.env_remove(format!("{}_POLICY", name.to_ascii_uppercase()));
        }
        let mut child = command.spawn().unwrap();
        let (public, admin) = (
            format!("http://127.0.0.1:{port}"),
            format!("http://127.0.0.1:{admin_port}"),
        );
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = http.get(format!("{admin}/health/ready")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the gateway exited: {status}");
            }
            assert!(Instant::now() < deadline, "the gateway did not get ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self {
            _child: child,
            public,
            admin,
            http,
        }
    }

    async fn status(&self, url: String) -> u16 {
        self.http.get(url).send().await.unwrap().status().as_u16()
    }

    async fn scrape(&self) -> String {
        let res = self
            .http
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(
            res.headers()["content-type"],
            chassis_http::health::PROMETHEUS_CONTENT_TYPE
        );
        res.text().await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_on_the_admin_port_zero_series_from_the_start_and_routes_as_labels() {
    let gw = Gateway::start().await;

    // The public port publishes neither the metrics nor the probes; the admin port does.
    for path in ["/metrics", "/health/ready", "/health/live"] {
        assert_eq!(
            gw.status(format!("{}{path}", gw.public)).await,
            404,
            "{path} on the public port"
        );
    }
    assert_eq!(gw.status(format!("{}/health/live", gw.admin)).await, 200);

    // The first scrape, before any request: every downstream's breaker and retry series, one
    // per catalogued outcome, at 0, and its breaker's state (closed).
    let first = gw.scrape().await;
    let (name, outcome) = (prom(labels::NAME), prom(labels::OUTCOME));
    let (name, outcome) = (name.as_str(), outcome.as_str());
    for downstream in DOWNSTREAMS {
        for metric in [names::CIRCUIT_BREAKER_CALLS, names::RETRY_ATTEMPTS] {
            for &o in outcomes(metric) {
                assert_eq!(
                    value(&first, metric, &[(name, downstream), (outcome, o)]),
                    Some(0.0),
                    "{metric}{{name={downstream},outcome={o}}} not at 0 in the first scrape:\n{first}"
                );
            }
        }
        assert_eq!(
            value(&first, names::CIRCUIT_BREAKER_STATE, &[(name, downstream)]),
            Some(0.0),
            "{downstream}'s breaker state:\n{first}"
        );
    }
    // (The public port's 404s above are counted already, without a route.)
    assert!(
        samples(
            &first,
            &format!("{}_count", names::HTTP_SERVER_REQUEST_DURATION)
        )
        .iter()
        .all(|s| !s.labels.contains_key(&prom(labels::HTTP_ROUTE))),
        "no routed request yet:\n{first}"
    );

    // An order read: the orders service is down, so the gateway answers with an error after
    // its retries, counted under the route template.
    let id = "0190c5e8-7b1a-7c3d-9e2f-0123456789ab";
    let res = gw
        .http
        .get(format!("{}/api/v1/orders/{id}", gw.public))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    assert!(status >= 500, "orders is down, yet {status}");
    // A path no route matches: counted without a route, never under its raw path.
    assert_eq!(gw.status(format!("{}/no/such/path", gw.public)).await, 404);

    let after = gw.scrape().await;
    let count = format!("{}_count", names::HTTP_SERVER_REQUEST_DURATION);
    let (method, route, code) = (
        prom(labels::HTTP_REQUEST_METHOD),
        prom(labels::HTTP_ROUTE),
        prom(labels::HTTP_RESPONSE_STATUS_CODE),
    );
    let status = status.to_string();
    let (method, route, code) = (method.as_str(), route.as_str(), code.as_str());
    assert_eq!(
        value(
            &after,
            &count,
            &[
                (method, "GET"),
                (route, "/api/v1/orders/{id}"),
                (code, status.as_str())
            ]
        ),
        Some(1.0),
        "the order read under its route:\n{after}"
    );
    assert_eq!(
        value(&after, &count, &[(method, "GET"), (code, "404")]),
        Some(4.0),
        "the unmatched paths (the three public probes' and this one) without a route:\n{after}"
    );
    assert!(
        !after.contains(id) && !after.contains("/no/such/path"),
        "a raw path became a label value:\n{after}"
    );
    // The failed attempts reached the orders breaker; the other downstreams saw nothing.
    let failures = |text: &str, downstream: &str| {
        value(
            text,
            names::CIRCUIT_BREAKER_CALLS,
            &[(name, downstream), (outcome, "failure")],
        )
        .unwrap()
    };
    assert!(failures(&after, "orders") >= 1.0, "{after}");
    assert_eq!(failures(&after, "inventory"), 0.0, "{after}");
}
