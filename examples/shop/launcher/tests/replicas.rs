//! Two gateway replicas sharing the local Redis (`REDIS_URL`, default redis://127.0.0.1:6379;
//! the run's keys are under its own namespace): one limit per API key across both, and an
//! `Idempotency-Key` that places one order whichever replica each attempt reaches.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shop_launcher::workload::{place, wait_final};
use shop_launcher::{System, SystemConfig, build_services, cleanup};

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
async fn replicas_share_the_rate_limit_and_the_idempotency_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SystemConfig::new(
        build_services(false).expect("cargo build of the services"),
        dir.path().to_path_buf(),
    );
    config.inventory_seed = Some("tea:Green tea:450:1000".into());
    config.gateway_replicas = 2;
    config.extra_env = vec![
        ("GATEWAY_RATE_LIMIT".into(), RATE.to_string()),
        ("GATEWAY_RATE_BURST".into(), BURST.to_string()),
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
