//! Replicas on loopback. Two gateway replicas sharing the local Redis (`REDIS_URL`, default
//! redis://127.0.0.1:6379; the run's keys are under its own namespace): one limit per API key
//! across both, and an `Idempotency-Key` that places one order whichever replica each attempt
//! reaches. Replicas of orders, inventory and payments on one PostgreSQL database each
//! (`DATABASE_URL`'s server, default postgres://postgres@127.0.0.1:5432; fresh databases per
//! run, dropped at the end), one of each SIGKILLed and restarted during the workload: every
//! order final, every effect applied once, each order's steps in the saga's order.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shop_launcher::replicas::{self, ReplicasError};
use shop_launcher::workload::{WorkloadConfig, place, run_across, wait_final};
use shop_launcher::{Database, System, SystemConfig, build_services_for_tests, cleanup};

/// One system at a time: each test runs a dozen processes.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const KEY: &str = "demo-key-0001";
/// The limit of every caller: requests per second, and the burst.
const RATE: u32 = 20;
const BURST: u32 = 10;

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn tea_stock(http: &reqwest::Client, gateway: &str) -> i64 {
    let r: Value = http
        .get(format!("{gateway}/api/v1/products"))
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
        .find(|p| p["sku"] == "tea")
        .unwrap()["stock"]
        .as_i64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[allow(clippy::await_holding_lock)]
async fn replicas_share_the_rate_limit_and_the_idempotency_keys() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let mut config = SystemConfig::new(
        build_services_for_tests().expect("cargo build of the services"),
        dir.path().to_path_buf(),
    );
    config.inventory_seed = Some("tea:Green tea:450:1000".into());
    config.replicas.insert("gateway", 2);
    config.extra_env = vec![
        ("GATEWAY_RATE_LIMIT".into(), RATE.to_string()),
        ("GATEWAY_RATE_BURST".into(), BURST.to_string()),
        // Debug builds on a loaded test machine can take longer than the default 50 ms to
        // hear from Redis; checks that time out open the limiter's breaker, which then admits
        // everything (fail open) and leaves nothing to measure here.
        ("GATEWAY_RATE_LIMIT_TIMEOUT_MS".into(), "1000".into()),
        // The run's idempotency keys leave the shared Redis soon after the test.
        ("GATEWAY_IDEMPOTENCY_TTL".into(), "120".into()),
    ];
    // Without a Redis, replicas are refused before anything starts.
    let err = System::launch(config.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("need a Redis"), "{err}");
    config.redis_url = Some(redis_url());
    let sys = System::start(config).await.expect("system starts");
    let gateways: Vec<String> = sys.gateway_urls().into_iter().map(str::to_owned).collect();
    assert_eq!(gateways.len(), 2);
    assert_ne!(gateways[0], gateways[1]);
    let http = reqwest::Client::new();

    // The same Idempotency-Key to each replica: one order, the second answer a replay.
    let stock_before = tea_stock(&http, &gateways[0]).await;
    let order = json!({"customer_id": "c-replicas", "items": [{"sku": "tea", "quantity": 1}], "payment_method": "card_ok"});
    let key = uuid::Uuid::now_v7().to_string();
    let (status, first) = place(&http, &gateways[0], KEY, &order, Some(&key))
        .await
        .unwrap();
    assert_eq!(status, 202, "{first}");
    let again = http
        .post(format!("{}/api/v1/orders", gateways[1]))
        .bearer_auth(KEY)
        .header("idempotency-key", &key)
        .json(&order)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(
        again.headers()["idempotent-replayed"],
        "true",
        "the other replica replayed it"
    );
    let again: Value = again.json().await.unwrap();
    let id = first["data"]["order_id"].as_str().unwrap();
    assert_eq!(again["data"]["order_id"], id);
    let last = wait_final(&http, &gateways[1], KEY, id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(last["status"], "CONFIRMED", "{last}");
    assert_eq!(
        tea_stock(&http, &gateways[1]).await,
        stock_before - 1,
        "exactly one order took stock"
    );

    // One key hammering both replicas for a timed window: the sum admitted stays within one
    // limit (two unshared limits would admit about twice as many).
    tokio::time::sleep(Duration::from_secs(1)).await; // the burst is back
    let window = Duration::from_secs(3);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (http, gateway) = (http.clone(), gateways[t % 2].clone());
        tasks.push(tokio::spawn(async move {
            let (mut admitted, mut limited, mut policy) = (0u32, 0u32, None);
            while start.elapsed() < window {
                let resp = http
                    .get(format!("{gateway}/api/v1/products"))
                    .bearer_auth(KEY)
                    .send()
                    .await
                    .unwrap();
                match resp.status().as_u16() {
                    200 => admitted += 1,
                    429 => {
                        limited += 1;
                        policy = resp.headers().get("ratelimit-policy").cloned();
                    }
                    other => panic!("unexpected {other}"),
                }
            }
            (admitted, limited, policy)
        }));
    }
    let (mut admitted, mut limited, mut per_replica) = (0, 0, [0, 0]);
    let mut policy = None;
    for (t, task) in tasks.into_iter().enumerate() {
        let (a, l, p) = task.await.unwrap();
        (admitted, limited) = (admitted + a, limited + l);
        per_replica[t % 2] += a;
        policy = policy.or(p);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let ceiling = f64::from(RATE) * elapsed + f64::from(BURST);
    eprintln!(
        "admitted {admitted} ({per_replica:?} per replica), limited {limited}, in {elapsed:.2} s (ceiling {ceiling:.0})"
    );
    assert!(
        f64::from(admitted) <= ceiling,
        "admitted {admitted} > {ceiling:.0}"
    );
    assert!(
        f64::from(admitted) >= f64::from(RATE) * window.as_secs_f64() * 0.6,
        "admitted only {admitted}"
    );
    assert!(per_replica.iter().all(|n| *n > 0), "{per_replica:?}");
    assert!(limited > 0);
    assert_eq!(
        policy.expect("a 429 with RateLimit-Policy"),
        format!("\"gateway-caller\";q={BURST};w=1").as_str()
    );

    let (amqp_url, namespace) = (sys.amqp_url().to_owned(), sys.namespace().to_owned());
    assert_eq!(sys.stop().await, Vec::<String>::new());
    cleanup::delete_namespace(&amqp_url, &namespace)
        .await
        .unwrap();
}

/// The PostgreSQL server: `DATABASE_URL` (CI exports the test database's URL) or the local
/// default.
fn postgres_server() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| u.starts_with("postgres"))
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".into())
}

const ORDERS: usize = 80;

/// The rows of `sql` in `service`'s database.
async fn rows<T>(sys: &System, service: &str, sql: &'static str) -> Vec<T>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    let url = sys.database().service_url(service).unwrap();
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    let out = sqlx::query_as(sql).fetch_all(&mut conn).await.unwrap();
    sqlx::Connection::close(conn).await.unwrap();
    out
}

async fn stock(sys: &System) -> BTreeMap<String, i64> {
    rows::<(String, i64)>(sys, "inventory", "SELECT sku, stock FROM products")
        .await
        .into_iter()
        .collect()
}

/// Every order of the orders database final, each effect applied once and in the saga's order;
/// the first violation found.
async fn violation(
    sys: &System,
    http: &reqwest::Client,
    stock_before: &BTreeMap<String, i64>,
) -> Option<String> {
    let orders: Vec<(String, String, Option<String>, Option<i64>)> = rows(
        sys,
        "orders",
        "SELECT id, status, reason, finished_ms FROM orders ORDER BY id",
    )
    .await;
    let reservations: BTreeMap<String, (String, i64)> = rows::<(String, String, i64)>(
        sys,
        "inventory",
        "SELECT order_id, status, updated_ms FROM reservations",
    )
    .await
    .into_iter()
    .map(|(id, status, at)| (id, (status, at)))
    .collect();
    let reserved: Vec<(String, String, i64)> = rows(
        sys,
        "inventory",
        "SELECT order_id, sku, quantity FROM reservation_items",
    )
    .await;
    let payments: BTreeMap<String, (String, i64)> = rows::<(String, String, i64)>(
        sys,
        "payments",
        "SELECT order_id, status, updated_ms FROM payments",
    )
    .await
    .into_iter()
    .map(|(id, status, at)| (id, (status, at)))
    .collect();
    let notifications: Vec<(String, String, i64)> = rows(
        sys,
        "notifications",
        "SELECT order_id, kind, created_ms FROM notifications",
    )
    .await;
    if orders.len() < ORDERS {
        return Some(format!("{} orders in the database", orders.len()));
    }
    for (id, status, reason, finished) in &orders {
        let reservation = reservations.get(id);
        let payment = payments.get(id);
        let notified: Vec<_> = notifications.iter().filter(|n| n.0 == *id).collect();
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
        let charges = charges["charges"].as_array().cloned().unwrap_or_default();
        let live = charges
            .iter()
            .filter(|c| c["status"] == "succeeded")
            .count();
        let state = format!(
            "order {id} {status} ({reason:?}): reservation {reservation:?}, payment {payment:?}, \
             notifications {notified:?}, charges {charges:?}"
        );
        if charges.len() > 1 {
            return Some(format!("charged twice: {state}"));
        }
        if notified.len() != 1 {
            return Some(format!("not notified exactly once: {state}"));
        }
        match status.as_str() {
            "CONFIRMED" => {
                let (Some((r, reserved_at)), Some((p, paid_at)), Some(finished)) =
                    (reservation, payment, finished)
                else {
                    return Some(format!("confirmed without its steps: {state}"));
                };
                if r != "RESERVED" || p != "CHARGED" || live != 1 {
                    return Some(format!("confirmed, effects wrong: {state}"));
                }
                if notified[0].1 != "order_confirmed" {
                    return Some(format!("wrong notification: {state}"));
                }
                // Reserved, then charged, then confirmed, then notified: one clock (this
                // machine's), and each step is caused by the previous one's event.
                if !(reserved_at <= paid_at && paid_at <= finished && *finished <= notified[0].2) {
                    return Some(format!(
                        "steps out of order: reserved {reserved_at}, paid {paid_at}, finished \
                         {finished}, notified {}: {state}",
                        notified[0].2
                    ));
                }
            }
            "FAILED" => {
                if reservation.is_some_and(|(r, _)| r == "RESERVED")
                    || payment.is_some_and(|(p, _)| p == "CHARGED")
                    || live != 0
                {
                    return Some(format!("failed, effects left behind: {state}"));
                }
                if notified[0].1 != "order_failed" {
                    return Some(format!("wrong notification: {state}"));
                }
                // A declined order's stock goes back after (because of) the decline.
                if let (Some((r, released_at)), Some((p, declined_at))) = (reservation, payment)
                    && r == "RELEASED"
                    && p == "DECLINED"
                    && declined_at > released_at
                {
                    return Some(format!("released before the decline: {state}"));
                }
            }
            _ => return Some(format!("not final: {state}")),
        }
    }
    // Stock moved by exactly what the held reservations hold: a reservation or a release
    // applied twice would show here.
    let held: BTreeSet<&String> = reservations
        .iter()
        .filter(|(_, (status, _))| status == "RESERVED")
        .map(|(id, _)| id)
        .collect();
    let mut expected = stock_before.clone();
    for (id, sku, quantity) in &reserved {
        if held.contains(id) {
            *expected.get_mut(sku).unwrap() -= quantity;
        }
    }
    let after = stock(sys).await;
    (after != expected).then(|| format!("stock {after:?}, expected {expected:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[allow(clippy::await_holding_lock)]
async fn replicas_lose_one_each_to_sigkill_and_every_order_finishes_with_its_effects_once() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let mut config = SystemConfig::new(
        build_services_for_tests().expect("cargo build of the services"),
        dir.path().to_path_buf(),
    );
    config.replicas = replicas::parse("orders=3,inventory=2,payments=2").unwrap();
    // Sagas stay in flight a little while, so the kills catch some mid-way.
    config
        .extra_env
        .push(("PROVIDER_LATENCY".into(), "50ms".into()));
    // On SQLite each replica would have a database of its own: refused before anything starts.
    let err = System::launch(config.clone()).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<ReplicasError>(),
        Some(&ReplicasError::NeedsPostgres {
            service: "inventory",
            replicas: 2
        }),
        "{err}"
    );
    config.database = Database::Postgres {
        server_url: postgres_server(),
        prefix: format!(
            "shop_replicas_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ),
        drop_on_stop: true,
    };
    let mut sys = System::start(config).await.expect("system starts");
    assert_eq!(sys.processes("orders"), ["orders", "orders-2", "orders-3"]);
    assert_eq!(sys.processes("inventory"), ["inventory", "inventory-2"]);
    assert_eq!(sys.processes("payment-provider"), ["payment-provider"]);
    let stock_before = stock(&sys).await;
    let http = reqwest::Client::new();

    let progress = indicatif::ProgressBar::hidden();
    let workload = {
        let gateways: Vec<String> = sys.gateway_urls().into_iter().map(str::to_owned).collect();
        let progress = progress.clone();
        let config = WorkloadConfig {
            orders: ORDERS,
            concurrency: 8,
            declined_ratio: 0.1,
            scarce_ratio: 0.05,
            ..WorkloadConfig::default()
        };
        tokio::spawn(async move {
            let gateways: Vec<&str> = gateways.iter().map(String::as_str).collect();
            run_across(&gateways, &config, Some(progress)).await
        })
    };
    // A quarter of the orders final: kill one replica of each (SIGKILL, nothing drains), and
    // bring it back while the rest of the workload runs on the others.
    while progress.position() < (ORDERS / 4) as u64 && !workload.is_finished() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let victims = ["orders-2", "inventory", "payments-2"];
    for victim in victims {
        sys.kill(victim).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for victim in victims {
        sys.restart(victim).await.unwrap();
    }
    let summary = workload.await.unwrap().expect("the workload runs");
    eprintln!("{summary}");
    assert_eq!(summary.unfinished, 0, "{summary}");
    assert_eq!(summary.placed, ORDERS, "{summary}");

    // Compensations and notifications follow the final status: wait for them to settle, then
    // the database must hold every effect once.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = violation(&sys, &http, &stock_before).await;
    while last.is_some() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        last = violation(&sys, &http, &stock_before).await;
    }
    assert_eq!(last, None);

    // The replicas shared the work: every orders replica took placements (through its front
    // door), every inventory and payments replica handled messages of the shared queues.
    for (service, needle) in [
        ("orders", "order placed"),
        ("inventory", "reservation decided"),
        ("payments", "payment recorded"),
    ] {
        for process in sys.processes(service) {
            let log = std::fs::read_to_string(sys.run_dir().join(format!("{process}.log")))
                .unwrap_or_default();
            assert!(log.contains(needle), "{process} never logged {needle:?}");
        }
    }

    let (amqp_url, namespace) = (sys.amqp_url().to_owned(), sys.namespace().to_owned());
    assert_eq!(sys.stop().await, Vec::<String>::new());
    cleanup::delete_namespace(&amqp_url, &namespace)
        .await
        .unwrap();
}
