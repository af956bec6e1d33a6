//! The shop's gRPC hop, end to end: the real binaries (as `e2e.rs` runs them), the inventory
//! serving `grpc.health.v1` and `inventory.v1.Inventory` beside its HTTP API on one port, the
//! orders service calling it when an order is placed.
//!
//! - A client outside Rust: Python (`grpcio`, `grpcio-health-checking`, and `grpcio-tools`
//!   for the stubs of the committed `inventory.proto`) calls the health service and
//!   `GetProducts` (`grpc_inventory.py`). Without those modules the test fails and names
//!   the `pip install` line; `PYTHON` picks the interpreter (default `python3`).
//! - One trace from the gateway (HTTP) through orders and its gRPC call to the inventory, and
//!   on through the broker (AMQP) to the reservation.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use serde_json::{Value, json};
use shop_launcher::workload::{place, wait_final};
use shop_launcher::{System, SystemConfig, build_services_for_tests, cleanup, workspace_root};

const KEY: &str = "demo-key-0001";
const SEED: &str = "tea:Green tea:450:1000";

static BUILD: OnceLock<std::path::PathBuf> = OnceLock::new();
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

async fn start() -> (System, tempfile::TempDir) {
    let bin = BUILD
        .get_or_init(|| build_services_for_tests().expect("cargo build of the services"))
        .clone();
    let dir = tempfile::tempdir().unwrap();
    let mut config = SystemConfig::new(bin, dir.path().to_path_buf());
    config.inventory_seed = Some(SEED.into());
    (System::start(config).await.expect("system starts"), dir)
}

async fn stop(sys: System) {
    let (amqp_url, namespace) = (sys.amqp_url().to_owned(), sys.namespace().to_owned());
    let unclean = sys.stop().await;
    cleanup::delete_namespace(&amqp_url, &namespace)
        .await
        .expect("the namespace is deleted");
    assert!(unclean.is_empty(), "not stopped cleanly: {unclean:?}");
}

/// Trace ids of the JSON log lines of `service` containing every needle.
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
async fn python_calls_the_inventory_health_service_and_an_rpc() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (sys, _dir) = start().await;
    let target = sys
        .url("inventory")
        .trim_start_matches("http://")
        .to_owned();
    let token = sys.orders_token("inventory").unwrap();
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let script = workspace_root().join("examples/shop/launcher/tests/grpc_inventory.py");
    let proto_dir = workspace_root().join("examples/shop/proto");
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(&target)
        .arg(&proto_dir)
        .arg(&token)
        .arg("tea")
        .output()
        .await
        .unwrap_or_else(|e| panic!("{python} does not run ({e}); the test needs Python 3"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    stop(sys).await;
    assert!(
        out.status.success(),
        "the Python gRPC client failed ({}): {stderr}",
        out.status
    );
    let got: Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(got["health"], "SERVING", "{got}");
    assert_eq!(got["inventory_health"], "SERVING", "{got}");
    assert_eq!(got["without_token"], "UNAUTHENTICATED", "{got}");
    assert_eq!(
        got["products"],
        json!([{"sku": "tea", "name": "Green tea", "price_cents": 450, "stock": 1000}]),
        "{got}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)] // serialises whole systems on purpose
async fn one_trace_from_the_gateway_through_grpc_to_the_event() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (sys, _dir) = start().await;
    let http = reqwest::Client::new();
    let gateway = sys.url("gateway").to_owned();
    let order = |sku: &str| json!({"customer_id": "c-grpc", "items": [{"sku": sku, "quantity": 1}], "payment_method": "card_ok"});

    // The inventory answers the placement's check: an unknown product is refused at once.
    let (status, refused) = place(&http, &gateway, KEY, &order("no-such-tea"), None)
        .await
        .unwrap();
    assert_eq!(status, 422, "{refused}");
    assert_eq!(
        refused["error"]["details"]["field"], "items[0].sku",
        "{refused}"
    );

    let (status, placed) = place(&http, &gateway, KEY, &order("tea"), None)
        .await
        .unwrap();
    assert_eq!(status, 202, "{placed}");
    let id = placed["data"]["order_id"].as_str().unwrap().to_owned();
    let done = wait_final(&http, &gateway, KEY, &id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(done["status"], "CONFIRMED", "{done}");
    // Log lines are written off the request path: give the last ones a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let placed = trace_ids(&sys, "orders", &[&id, "order placed"]);
    assert_eq!(placed.len(), 1, "{placed:?}");
    let trace = placed[0].as_str();
    let hops = [
        // HTTP into the gateway.
        ("gateway", vec![trace, "/api/v1/orders"]),
        // gRPC from orders into the inventory (the call carries no order id yet).
        ("inventory", vec![trace, "products read over gRPC"]),
        // AMQP: `order.placed` from orders' outbox, reserved by the inventory.
        ("inventory", vec![trace, id.as_str(), "reservation decided"]),
    ];
    let missing: Vec<_> = hops
        .iter()
        .filter(|(service, needles)| trace_ids(&sys, service, needles).is_empty())
        .map(|(service, needles)| format!("{service}: {}", needles[1..].join(" ")))
        .collect();
    stop(sys).await;
    assert!(missing.is_empty(), "not in trace {trace}: {missing:?}");
}
