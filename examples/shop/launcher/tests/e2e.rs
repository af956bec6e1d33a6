//! End-to-end tests: the real binaries as separate processes, the real RabbitMQ (`AMQP_URL`),
//! SQLite files in a temporary run directory. Each test starts its own system in its own
//! namespace (exchanges and queues are prefixed), one system at a time, and deletes the
//! namespace's exchanges and queues once the system stopped.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use shop_launcher::workload::{WorkloadConfig, percentile, place, wait_final};
use shop_launcher::{Database, System, SystemConfig, build_services_for_tests, cleanup, measure};

const KEY: &str = "demo-key-0001";
/// The issuer of the end users' tokens in the TLS test.
const IDP: &str = "https://idp.test/realms/shop";
/// The products the tests order by name, and the three plentiful ones the workload orders
/// (orders refuses an order naming a product the catalogue does not have).
const SEED: &str = "tea:Green tea:450:1000,mug:Mug:1200:1000,kettle:Kettle:3900:1000,\
scarce:Scarce teapot:9900:2,last:Last units:500:3";

static BUILD: OnceLock<std::path::PathBuf> = OnceLock::new();
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

async fn start(tweak: impl FnOnce(&mut SystemConfig)) -> (System, tempfile::TempDir) {
    let bin = BUILD
        .get_or_init(|| build_services_for_tests().expect("cargo build of the services"))
        .clone();
    let dir = tempfile::tempdir().unwrap();
    let mut config = SystemConfig::new(bin, dir.path().to_path_buf());
    config.inventory_seed = Some(SEED.into());
    tweak(&mut config);
    (System::start(config).await.expect("system starts"), dir)
}

/// Stops the system, then deletes its namespace; the services that did not exit cleanly.
async fn stop(sys: System) -> Vec<String> {
    let (amqp_url, namespace) = (sys.amqp_url().to_owned(), sys.namespace().to_owned());
    let unclean = sys.stop().await;
    cleanup::delete_namespace(&amqp_url, &namespace)
        .await
        .expect("the namespace is deleted");
    unclean
}

fn order(sku: &str, qty: i64, method: &str) -> Value {
    json!({"customer_id": "c-e2e", "items": [{"sku": sku, "quantity": qty}], "payment_method": method})
}

async fn place_ok(http: &reqwest::Client, sys: &System, body: &Value, key: Option<&str>) -> String {
    let (status, resp) = place(http, sys.url("gateway"), KEY, body, key)
        .await
        .unwrap();
    assert_eq!(status, 202, "{resp}");
    assert_eq!(resp["success"], true);
    assert_eq!(resp["data"]["status"], "PENDING");
    resp["data"]["order_id"].as_str().unwrap().to_owned()
}

async fn final_state(http: &reqwest::Client, sys: &System, id: &str) -> Value {
    let o = wait_final(http, sys.url("gateway"), KEY, id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_ne!(o["status"], "PENDING", "order {id} did not finish: {o}");
    o
}

async fn stock(http: &reqwest::Client, sys: &System, sku: &str) -> i64 {
    let r: Value = http
        .get(format!("{}/api/v1/products", sys.url("gateway")))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["sku"] == sku)
        .unwrap()["stock"]
        .as_i64()
        .unwrap()
}

async fn provider_stats(http: &reqwest::Client, sys: &System) -> Value {
    http.get(format!("{}/v1/stats", sys.url("payment-provider")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn notifications(http: &reqwest::Client, sys: &System, id: &str) -> Vec<Value> {
    // Notifications arrive asynchronously after the final status: wait for them briefly.
    for _ in 0..50 {
        let r: Value = http
            .get(format!(
                "{}/api/v1/notifications?order_id={id}",
                sys.url("gateway")
            ))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let list = r["data"].as_array().cloned().unwrap_or_default();
        if !list.is_empty() {
            return list;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Vec::new()
}

/// Trace ids of the log lines of `service` containing every needle.
fn trace_ids(sys: &System, service: &str, needles: &[&str]) -> Vec<String> {
    let text =
        std::fs::read_to_string(sys.run_dir().join(format!("{service}.log"))).unwrap_or_default();
    text.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["trace_id"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)] // serialises whole systems on purpose
async fn the_shop_end_to_end() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (mut sys, _dir) = start(|_| {}).await;
    let http = reqwest::Client::new();

    // Each process pinned to one CPU, round-robin over the launcher's (the default placement),
    // wherever there are two CPUs or more to spread over and `taskset` to pin with.
    let allowed = shop_launcher::affinity::allowed_cpus().unwrap_or_default();
    let taskset = std::process::Command::new("taskset")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if allowed.len() >= 2 && taskset {
        let cpus: std::collections::BTreeMap<String, usize> = sys.cpus().into_iter().collect();
        let pids = sys.pids();
        assert_eq!(cpus.len(), pids.len(), "every process placed: {cpus:?}");
        let used: std::collections::BTreeSet<usize> = cpus.values().copied().collect();
        assert_eq!(
            used.len(),
            allowed.len().min(pids.len()),
            "spread: {cpus:?}"
        );
        for (name, pid) in pids {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            assert_eq!(
                shop_launcher::affinity::allowed_cpus_of(&status),
                Some(vec![cpus[&name]]),
                "{name} runs on its CPU only"
            );
        }
    }

    // Happy path: CONFIRMED, one charge, one notification.
    let id = place_ok(&http, &sys, &order("tea", 2, "card_ok"), None).await;
    let o = final_state(&http, &sys, &id).await;
    assert_eq!(o["status"], "CONFIRMED", "{o}");
    assert_eq!(o["amount_cents"], 900);
    assert_eq!(o["items"][0]["quantity"], 2);
    let n = notifications(&http, &sys, &id).await;
    assert_eq!(n.len(), 1, "{n:?}");
    assert_eq!(n[0]["kind"], "order_confirmed");
    assert_eq!(stock(&http, &sys, "tea").await, 998);
    // The same order, its payment and its notifications in one call to the gateway.
    let d = details(&http, &sys, &id).await;
    assert_eq!(d["order"]["status"], "CONFIRMED", "{d}");
    assert_eq!(d["payment"]["order_id"], id.as_str(), "{d}");
    assert_eq!(d["notifications"][0]["kind"], "order_confirmed", "{d}");
    assert_eq!(d["missing"], json!([]), "{d}");
    let confirmed_id = id.clone();
    let charges: Value = http
        .get(format!(
            "{}/v1/charges?reference={id}",
            sys.url("payment-provider")
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(charges["charges"].as_array().unwrap().len(), 1);

    // One trace from the gateway through the broker to every service (JSON logs carry trace_id).
    let placed = trace_ids(&sys, "orders", &[&id, "order placed"]);
    assert_eq!(placed.len(), 1, "{placed:?}");
    let trace = &placed[0];
    assert!(
        !trace_ids(&sys, "gateway", &[trace.as_str(), "/api/v1/orders"]).is_empty(),
        "gateway not in trace {trace}"
    );
    for (service, needle) in [
        ("inventory", "reservation decided"),
        ("payments", "payment recorded"),
        ("notifications", "customer notified"),
    ] {
        let found = trace_ids(&sys, service, &[&id, needle]);
        assert_eq!(
            found,
            vec![trace.clone()],
            "{service} is not in the trace of the order"
        );
    }

    // Declined payment: FAILED(card_declined), the reservation released (compensation).
    let id = place_ok(&http, &sys, &order("tea", 1, "card_declined"), None).await;
    let o = final_state(&http, &sys, &id).await;
    assert_eq!(
        (o["status"].as_str(), o["reason"].as_str()),
        (Some("FAILED"), Some("card_declined")),
        "{o}"
    );
    assert_eq!(o["compensations"], 1);
    let mut released = false;
    for _ in 0..50 {
        if stock(&http, &sys, "tea").await == 998 {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(released, "stock was not released");
    assert_eq!(
        notifications(&http, &sys, &id).await[0]["kind"],
        "order_failed"
    );

    // Out of stock: FAILED(out_of_stock), nothing charged.
    let charges_before = provider_stats(&http, &sys).await["charges"]
        .as_u64()
        .unwrap();
    let id = place_ok(&http, &sys, &order("scarce", 3, "card_ok"), None).await;
    let o = final_state(&http, &sys, &id).await;
    assert_eq!(
        (o["status"].as_str(), o["reason"].as_str()),
        (Some("FAILED"), Some("out_of_stock")),
        "{o}"
    );
    assert_eq!(stock(&http, &sys, "scarce").await, 2);
    assert_eq!(
        provider_stats(&http, &sys).await["charges"]
            .as_u64()
            .unwrap(),
        charges_before
    );

    // The same Idempotency-Key twice: one order.
    let body = order("tea", 1, "card_ok");
    let a = place_ok(&http, &sys, &body, Some("idem-1")).await;
    let b = place_ok(&http, &sys, &body, Some("idem-1")).await;
    assert_eq!(a, b);
    let c = place_ok(&http, &sys, &body, Some("idem-2")).await;
    assert_ne!(a, c);
    assert_eq!(final_state(&http, &sys, &a).await["status"], "CONFIRMED");
    final_state(&http, &sys, &c).await;

    // Concurrent orders for the last units never oversell.
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let (http, gw) = (http.clone(), sys.url("gateway").to_owned());
        tasks.push(tokio::spawn(async move {
            let (status, resp) = place(&http, &gw, KEY, &order("last", 1, "card_ok"), None)
                .await
                .unwrap();
            assert_eq!(status, 202);
            let id = resp["data"]["order_id"].as_str().unwrap().to_owned();
            wait_final(&http, &gw, KEY, &id, Duration::from_secs(30))
                .await
                .unwrap()
        }));
    }
    let mut confirmed = 0;
    for t in tasks {
        let o = t.await.unwrap();
        match o["status"].as_str() {
            Some("CONFIRMED") => confirmed += 1,
            Some("FAILED") => assert_eq!(o["reason"], "out_of_stock"),
            other => panic!("not final: {other:?}"),
        }
    }
    assert_eq!(confirmed, 3);
    assert_eq!(stock(&http, &sys, "last").await, 0);

    // Errors use the chassis body: no key, bad body.
    let r = http
        .post(format!("{}/api/v1/orders", sys.url("gateway")))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let e: Value = r.json().await.unwrap();
    assert_eq!(
        (e["success"].as_bool(), e["error"]["code"].as_str()),
        (Some(false), Some("unauthorized"))
    );
    let r = http
        .post(format!("{}/api/v1/orders", sys.url("gateway")))
        .bearer_auth(KEY)
        .json(&json!({"items": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Internal APIs refuse calls without a service token.
    let r = http
        .get(format!("{}/internal/orders/{id}", sys.url("orders")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(format!("{}/internal/payments/{id}", sys.url("payments")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Payments down: the details still answer, without the payment, and say why.
    sys.kill("payments").await.unwrap();
    let d = details(&http, &sys, &confirmed_id).await;
    assert_eq!(d["order"]["status"], "CONFIRMED", "{d}");
    assert_eq!(d["payment"], Value::Null, "{d}");
    assert_eq!(d["notifications"][0]["kind"], "order_confirmed", "{d}");
    assert_eq!(d["missing"][0]["part"], "payment", "{d}");
    // Orders is the part the details cannot do without: an unknown order is a 404.
    let r = http
        .get(format!(
            "{}/api/v1/orders/0190d5f2-7c1e-7a00-8000-000000000000/details",
            sys.url("gateway")
        ))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    sys.restart("payments").await.unwrap();

    let unclean = stop(sys).await;
    assert!(
        unclean.is_empty(),
        "did not shut down gracefully: {unclean:?}"
    );
}

/// `GET /api/v1/orders/{id}/details` through the gateway: its `data`.
async fn details(http: &reqwest::Client, sys: &System, id: &str) -> Value {
    let r = http
        .get(format!("{}/api/v1/orders/{id}/details", sys.url("gateway")))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    body["data"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)]
async fn provider_outage_opens_the_breaker_and_the_system_recovers() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (sys, _dir) = start(|_| {}).await;
    let http = reqwest::Client::new();
    let provider = sys.url("payment-provider").to_owned();
    http.post(format!("{provider}/admin/outage"))
        .json(&json!({"active": true}))
        .send()
        .await
        .unwrap();

    // Orders fail fast with a provider reason while it is down.
    let mut reasons = Vec::new();
    for _ in 0..8 {
        let id = place_ok(&http, &sys, &order("tea", 1, "card_ok"), None).await;
        let o = final_state(&http, &sys, &id).await;
        assert_eq!(o["status"], "FAILED", "{o}");
        reasons.push(o["reason"].as_str().unwrap().to_owned());
    }
    assert!(
        reasons.iter().all(|r| r.starts_with("payment_provider_")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r == "payment_provider_circuit_open"),
        "the breaker never opened: {reasons:?}"
    );
    let metrics = http
        .get(format!("{}/metrics", sys.admin_url("payments")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("circuit_breaker_state{")
                && l.contains("payment-provider")
                && l.ends_with(" 1")),
        "breaker not open in /metrics:\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("circuit_breaker"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The resilient client's own metrics: attempts that got the provider's 503, and calls the
    // open breaker rejected without touching the network.
    let value = |prefix: &str, needle: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix) && l.contains(needle))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(
        value(
            "http_client_request_duration_seconds_count{",
            "http_response_status_code=\"503\""
        ) >= 1.0,
        "no 503 attempt in http_client_request_duration_seconds"
    );
    assert!(
        value("circuit_breaker_calls_total{", "outcome=\"not_permitted\"") >= 1.0,
        "the open breaker rejected no call"
    );
    assert_eq!(provider_stats(&http, &sys).await["charges"], 0);

    // The provider returns: after the open wait the breaker lets calls through again.
    http.post(format!("{provider}/admin/outage"))
        .json(&json!({"active": false}))
        .send()
        .await
        .unwrap();
    let mut recovered = false;
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let id = place_ok(&http, &sys, &order("tea", 1, "card_ok"), None).await;
        if final_state(&http, &sys, &id).await["status"] == "CONFIRMED" {
            recovered = true;
            break;
        }
    }
    assert!(recovered, "the system did not recover after the outage");
    stop(sys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)]
async fn orders_killed_mid_saga_every_order_finishes_and_nothing_is_charged_twice() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (mut sys, _dir) = start(|c| {
        c.extra_env
            .push(("PROVIDER_LATENCY".into(), "100ms".into()))
    })
    .await;
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for i in 0..15 {
        ids.push(
            place_ok(
                &http,
                &sys,
                &order("tea", 1, "card_ok"),
                Some(&format!("crash-{i}")),
            )
            .await,
        );
    }
    // Crash orders while sagas are in flight, then bring it back.
    sys.kill("orders").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    sys.restart("orders").await.unwrap();
    let mut confirmed = 0;
    let mut others = Vec::new();
    for id in &ids {
        let o = final_state(&http, &sys, id).await;
        if o["status"] == "CONFIRMED" {
            confirmed += 1;
        } else {
            others.push(o.to_string());
        }
        let charges: Value = http
            .get(format!(
                "{}/v1/charges?reference={id}",
                sys.url("payment-provider")
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            charges["charges"].as_array().unwrap().len() <= 1,
            "order {id} charged twice"
        );
    }
    assert_eq!(
        confirmed,
        ids.len(),
        "every order should still be confirmed; the others: {others:#?}"
    );
    assert_eq!(
        provider_stats(&http, &sys).await["charges"]
            .as_u64()
            .unwrap(),
        ids.len() as u64
    );
    stop(sys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)]
async fn the_summary_says_how_much_cpu_an_order_takes_and_where_its_time_goes() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (sys, _dir) = start(|_| {}).await;
    let config = WorkloadConfig {
        orders: 60,
        concurrency: 8,
        ..WorkloadConfig::default()
    };
    let measured = measure::run(&sys, &config, None).await.unwrap();
    let text = measured.to_string();
    assert_eq!(measured.summary.finished(), 60, "{text}");

    // CPU: every service process (the provider included) and, on this machine, the broker.
    assert!(text.contains("CPU per order"), "{text}");
    for process in shop_launcher::SERVICES
        .iter()
        .copied()
        .chain([measure::BROKER])
    {
        let ms = measured.cpu.ms_per_order(process);
        assert!(ms.is_some_and(|ms| ms > 0.0), "{process}: {ms:?}\n{text}");
    }
    assert!(measured.broker_measured, "{text}");
    // On SQLite the database work is inside the services' figures: no server line.
    assert_eq!(measured.database_server_ms, None, "{text}");
    assert!(!text.contains("PostgreSQL server"), "{text}");
    let total = measured.cpu.total_ms_per_order().unwrap();
    let sum: f64 = shop_launcher::SERVICES
        .iter()
        .copied()
        .chain([measure::BROKER])
        .filter_map(|p| measured.cpu.ms_per_order(p))
        .sum();
    assert!((total - sum).abs() < 1e-9, "{text}");
    // Context switches: every process switched (each order crosses all of them), and the
    // services that keep a database switch at least twice per statement of an order's
    // transactions: far more than once per order.
    assert!(text.contains("switches/order"), "{text}");
    let switches: std::collections::BTreeMap<&str, u64> = measured
        .switches
        .switches
        .iter()
        .map(|(n, c)| (n.as_str(), *c))
        .collect();
    for process in shop_launcher::SERVICES
        .iter()
        .copied()
        .chain([measure::BROKER])
    {
        assert!(
            switches.get(process).is_some_and(|&c| c > 0),
            "{process}\n{text}"
        );
    }
    assert!(switches["orders"] > 60 * 4, "{text}");

    // Hops: every one was seen, at least once per order where each order passes it once, and
    // none is slower than the whole placement -> final time.
    let e2e_p50 = percentile(&measured.summary.latencies_ms, 50.0).unwrap() as f64;
    for hop in &measured.hops.hops {
        assert!(hop.count > 0, "{} has no samples\n{text}", hop.label);
        let (p50, p99) = (hop.p50_ms.unwrap(), hop.p99_ms.unwrap());
        assert!(p50 <= p99, "{}: p50 {p50} > p99 {p99}\n{text}", hop.label);
        assert!(
            p50 <= e2e_p50,
            "{}: p50 {p50} ms > end to end p50 {e2e_p50} ms\n{text}",
            hop.label
        );
        assert!(text.contains(hop.label), "{text}");
    }
    for once_per_order in [
        "gateway POST /api/v1/orders",
        "orders POST /internal/orders",
        "written -> handler inventory.reserve",
    ] {
        let hop = measured.hops.hop(once_per_order).unwrap();
        assert!(hop.count >= 60, "{once_per_order}: {}\n{text}", hop.count);
    }
    // Notifications hear of an order after its final status is committed, and the summary
    // scrapes right after the last order became final: up to one event per order in flight
    // (the workload's concurrency, 8) may be handled after the scrape.
    let notified = measured
        .hops
        .hop("written -> handler notifications")
        .unwrap();
    assert!(
        notified.count >= 60 - 8,
        "notifications: {}\n{text}",
        notified.count
    );
    // Every order reserves once through inventory's inbox, in at most one commit per message
    // (a group commit shares them).
    let reserve = &measured.hops.inboxes[0];
    assert_eq!(reserve.consumer, "inventory.reserve");
    assert!(
        reserve.messages >= 60 && (1..=reserve.messages).contains(&reserve.transactions),
        "{reserve:?}\n{text}"
    );
    assert!(text.contains("messages per inbox commit"), "{text}");
    stop(sys).await;
}

/// The PostgreSQL server for the PostgreSQL run: `DATABASE_URL` (CI exports the test database's
/// URL) or the local default.
fn postgres_server() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| u.starts_with("postgres"))
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)]
async fn the_shop_on_postgresql() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let server = postgres_server();
    // Fresh databases per run, dropped when the system stops (or is dropped by a failed
    // assertion), so reruns never see old data.
    let prefix = format!(
        "shop_e2e_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let (sys, _dir) = start(|c| {
        c.database = Database::Postgres {
            server_url: server.clone(),
            prefix: prefix.clone(),
            drop_on_stop: true,
        }
    })
    .await;
    let http = reqwest::Client::new();

    // Happy path: CONFIRMED, one charge, one notification, stock taken.
    let id = place_ok(&http, &sys, &order("tea", 2, "card_ok"), Some("pg-1")).await;
    let o = final_state(&http, &sys, &id).await;
    assert_eq!(o["status"], "CONFIRMED", "{o}");
    let n = notifications(&http, &sys, &id).await;
    assert_eq!(n.len(), 1, "{n:?}");
    assert_eq!(n[0]["kind"], "order_confirmed");
    assert_eq!(stock(&http, &sys, "tea").await, 998);
    // The same key again: the same order (now confirmed), not a second one.
    let (status, again) = place(
        &http,
        sys.url("gateway"),
        KEY,
        &order("tea", 2, "card_ok"),
        Some("pg-1"),
    )
    .await
    .unwrap();
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["data"]["order_id"].as_str(), Some(id.as_str()));

    // Declined: FAILED(card_declined), the reservation released.
    let declined = place_ok(&http, &sys, &order("tea", 1, "card_declined"), None).await;
    let o = final_state(&http, &sys, &declined).await;
    assert_eq!(
        (o["status"].as_str(), o["reason"].as_str()),
        (Some("FAILED"), Some("card_declined")),
        "{o}"
    );
    let mut released = false;
    for _ in 0..50 {
        if stock(&http, &sys, "tea").await == 998 {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(released, "stock was not released");

    // Out of stock: FAILED(out_of_stock).
    let o = final_state(
        &http,
        &sys,
        &place_ok(&http, &sys, &order("scarce", 3, "card_ok"), None).await,
    )
    .await;
    assert_eq!(o["reason"], "out_of_stock", "{o}");

    // The data is in each service's own PostgreSQL database, not in SQLite files.
    let orders_db = sys.database().service_url("orders").unwrap();
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&orders_db)
        .await
        .unwrap();
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT id, status FROM orders ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(rows.contains(&(id.clone(), "CONFIRMED".into())), "{rows:?}");
    let relayed: i64 = sqlx::query_scalar("SELECT count(*) FROM chassis_outbox")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(relayed > 0, "the orders outbox on PostgreSQL is empty");
    sqlx::Connection::close(conn).await.unwrap();
    let sqlite_files: Vec<_> = std::fs::read_dir(sys.run_dir())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".db"))
        .collect();
    assert!(sqlite_files.is_empty(), "{sqlite_files:?}");

    // A measured run: the local server's CPU per order is on a line of its own.
    let config = WorkloadConfig {
        orders: 20,
        concurrency: 4,
        ..WorkloadConfig::default()
    };
    let measured = measure::run(&sys, &config, None).await.unwrap();
    let text = measured.to_string();
    assert_eq!(measured.summary.finished(), 20, "{text}");
    let server_ms = measured.database_server_ms;
    assert!(
        server_ms.is_some_and(|ms| ms > 0.0),
        "{server_ms:?}\n{text}"
    );
    assert!(text.contains("PostgreSQL server"), "{text}");

    let database = sys.database().clone();
    let unclean = stop(sys).await;
    assert!(
        unclean.is_empty(),
        "did not shut down gracefully: {unclean:?}"
    );
    // stop() dropped the databases.
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&server)
        .await
        .unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname LIKE $1")
        .bind(format!("{prefix}\\_%"))
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(left, 0, "databases of {database:?} left behind");
}

/// `--tls`: every service on HTTPS with mTLS between them. The workload completes through the
/// gateway; the launcher's scrapes reach every service with its certificate; a caller without a
/// certificate from the shop's CA is refused by an internal service at the handshake but served
/// by the gateway; plain HTTP to a TLS port gets a clear 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)]
async fn the_shop_over_tls_with_mtls_between_its_services() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // End users sign in at an identity provider whose JWKS the gateway reads.
    let idp = chassis_http::auth::SigningKey::generate_es256().unwrap();
    let jwks_dir = tempfile::tempdir().unwrap();
    let jwks = jwks_dir.path().join("jwks.json");
    std::fs::write(
        &jwks,
        json!({"keys": [idp.public_jwk().unwrap()]}).to_string(),
    )
    .unwrap();
    let (sys, _dir) = start(|c| {
        c.tls = true;
        c.extra_env.extend([
            ("GATEWAY_USER_JWKS".into(), jwks.display().to_string()),
            ("GATEWAY_USER_ISSUER".into(), IDP.into()),
        ]);
    })
    .await;
    for service in shop_launcher::SERVICES {
        assert!(sys.url(service).starts_with("https://"), "{service}");
    }
    let pki = sys.pki().expect("certificates generated").clone();

    // The workload, and every hop measured through scrapes of `/metrics` on the admin ports
    // (plain HTTP there, HTTPS on the API ports).
    let config = WorkloadConfig {
        orders: 40,
        concurrency: 8,
        tls: Some(pki.clone()),
        ..WorkloadConfig::default()
    };
    let measured = measure::run(&sys, &config, None).await.unwrap();
    let text = measured.to_string();
    assert_eq!(measured.summary.finished(), 40, "{text}");
    assert!(measured.summary.confirmed > 0, "{text}");
    for over_https in [
        "gateway POST /api/v1/orders",
        "orders POST /internal/orders",
    ] {
        let hop = measured.hops.hop(over_https).unwrap();
        assert!(hop.count >= 40, "{over_https}: {}\n{text}", hop.count);
    }

    // End users through the real system: a customer places and reads its own order only; an
    // admin reads anyone's; an edited token is refused.
    let user = |sub: &str, role: &str| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        idp.sign_claims(
            &json!({"iss": IDP, "aud": "shop-api", "sub": sub, "iat": now,
            "exp": now + 300, "jti": uuid::Uuid::new_v4().to_string(), "roles": [role]}),
        )
        .unwrap()
    };
    let (alice, bob, admin) = (
        user("c-alice", "customer"),
        user("c-bob", "customer"),
        user("ada", "admin"),
    );
    let shopper = tls_client(&pki, false);
    let mut body = order("tea", 1, "card_ok");
    body["customer_id"] = json!("c-alice");
    let (status, placed) = place(&shopper, sys.url("gateway"), &alice, &body, None)
        .await
        .unwrap();
    assert_eq!(status, 202, "{placed}");
    let id = placed["data"]["order_id"].as_str().unwrap().to_owned();
    let read = |token: String| {
        let (shopper, url) = (
            shopper.clone(),
            format!("{}/api/v1/orders/{id}", sys.url("gateway")),
        );
        async move {
            shopper
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(read(alice.clone()).await, 200);
    assert_eq!(read(bob.clone()).await, 403);
    assert_eq!(read(admin).await, 200);
    let mut parts: Vec<&str> = alice.split('.').collect();
    let edited = URL_SAFE_NO_PAD.encode(
        json!({"iss": IDP, "aud": "shop-api", "sub": "c-bob", "exp": 4_102_444_800u64, "roles": ["admin"]})
            .to_string(),
    );
    parts[1] = &edited;
    assert_eq!(read(parts.join(".")).await, 401);

    // A client trusting the shop's CA but holding no certificate of its own.
    let anonymous = tls_client(&pki, false);
    let refused = anonymous
        .get(format!("{}/internal/stats", sys.url("orders")))
        .send()
        .await;
    assert!(
        refused.is_err(),
        "orders served a caller without a certificate: {refused:?}"
    );
    // The gateway takes it; the probes are not on its public port.
    let served = anonymous
        .get(format!("{}/health/live", sys.url("gateway")))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 404);
    // They are on the admin ports, in plain HTTP.
    for service in ["gateway", "orders"] {
        let live = reqwest::Client::new()
            .get(format!("{}/health/live", sys.admin_url(service)))
            .send()
            .await
            .unwrap();
        assert_eq!(live.status(), 200, "{service}");
    }

    // The launcher's certificate is from the shop's CA, so it gets a connection, but it is not
    // the gateway's: the API port refuses it, whatever the path (the probes are not there) or
    // the token.
    let launcher = tls_client(&pki, true);
    let live = launcher
        .get(format!("{}/health/live", sys.url("orders")))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 403);
    let internal = launcher
        .get(format!("{}/internal/stats", sys.url("orders")))
        .send()
        .await
        .unwrap();
    assert_eq!(internal.status(), 403);
    let body: Value = internal.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden", "{body}");

    // Plain HTTP to a TLS port: a 400 that says so, not a reset.
    let plain = reqwest::Client::new()
        .get(format!(
            "{}/health/live",
            sys.url("orders").replace("https://", "http://")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 400);
    let body = plain.text().await.unwrap();
    assert!(body.to_ascii_lowercase().contains("https"), "{body}");

    let unclean = stop(sys).await;
    assert!(unclean.is_empty(), "{unclean:?}");
}

/// A reqwest client trusting only the shop's CA, with the launcher's certificate when
/// `with_cert`, without any otherwise (an end user's client).
fn tls_client(pki: &shop_launcher::tls::ShopPki, with_cert: bool) -> reqwest::Client {
    if with_cert {
        return pki.http_client().unwrap().build().unwrap();
    }
    let config = chassis_http::tls::client::ClientTlsConfig::new()
        .roots(chassis_http::tls::client::TrustRoots::None)
        .add_ca_file(pki.ca_file())
        .http2(false)
        .build()
        .unwrap();
    reqwest::Client::builder()
        .tls_backend_preconfigured((*config).clone())
        .build()
        .unwrap()
}
