//! The order workload as real clients drive it: each client places one order at a time through
//! the gateway with an `Idempotency-Key` of its own, retries the same request (same key, same
//! body) while the shop cannot answer, then follows the order to its final status.
//!
//! A retry is what a client does when it does not know whether its order was taken: the
//! connection broke, the gateway answered 5xx or 429, or the request timed out. Because the key
//! stays the same, the orders service applies the placement once, and every `202` for one key
//! must name the same order ([`OrderRecord::ids`] keeps them all, the checks compare them).
//! A `4xx` other than 408/409/429 is a final refusal. A client gives a placement up after
//! [`PLACEMENT_PATIENCE`]; its order may still exist in the orders database, which is why the
//! checks read every order there, not only the ones a client saw accepted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{Value, json};

/// How long one request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client keeps retrying one placement before it gives it up.
pub const PLACEMENT_PATIENCE: Duration = Duration::from_secs(60);
/// How long a client follows an order to its final status (the checks wait longer).
pub const FOLLOW_PATIENCE: Duration = Duration::from_secs(60);

/// What the clients do.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The gateway's base URL.
    pub gateway: String,
    /// The API key (`Authorization: Bearer …`).
    pub api_key: String,
    /// Clients running at once.
    pub clients: usize,
    /// Seeds each client's choices (client `i` uses `seed + i`).
    pub seed: u64,
    /// Fraction of orders paying with the always-declined method.
    pub declined_ratio: f64,
    /// Fraction of orders for the scarce product (stock runs out: `out_of_stock`).
    pub scarce_ratio: f64,
    /// Pause between two orders of one client.
    pub think_time: Duration,
}

/// One order a client tried to place, as the client saw it.
#[derive(Debug, Clone, Default)]
pub struct OrderRecord {
    /// The client's `Idempotency-Key`.
    pub key: String,
    /// Every distinct order id a `202` for this key named (exactly one when accepted).
    pub ids: Vec<String>,
    /// The final refusal's status, if the shop refused the order.
    pub refused: Option<u16>,
    /// Requests sent for this key (1 without retries).
    pub attempts: u32,
    /// The client gave the placement up (it never got an answer it could act on).
    pub abandoned: bool,
    /// The final status the client read (`CONFIRMED` or `FAILED:<reason>`), if it saw one.
    pub final_seen: Option<String>,
}

impl OrderRecord {
    /// The order id, if a `202` named one.
    pub fn accepted_id(&self) -> Option<&str> {
        self.ids.first().map(String::as_str)
    }
}

/// The products the clients order (their stock is the catalogue seed's, see
/// [`crate::INVENTORY_SEED`]).
const PLENTIFUL: [&str; 3] = ["tea", "mug", "kettle"];

/// Runs `config.clients` clients until `stop` is set; every order any of them tried.
///
/// A client that sees `stop` finishes the placement it is in (so no order is left half-known)
/// and does not follow it to its final status.
pub async fn run(config: ClientConfig, stop: Arc<AtomicBool>) -> Vec<OrderRecord> {
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(config.clients * 2)
        .build()
        .expect("an HTTP client");
    let mut tasks = Vec::new();
    for client in 0..config.clients {
        let (http, config, stop) = (http.clone(), config.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            one_client(&http, &config, client, &stop).await
        }));
    }
    let mut records = Vec::new();
    for t in tasks {
        if let Ok(mut r) = t.await {
            records.append(&mut r);
        }
    }
    records
}

async fn one_client(
    http: &reqwest::Client,
    config: &ClientConfig,
    client: usize,
    stop: &AtomicBool,
) -> Vec<OrderRecord> {
    let mut rng = StdRng::seed_from_u64(config.seed.wrapping_add(client as u64));
    let mut records = Vec::new();
    let mut n = 0_u64;
    while !stop.load(Ordering::Relaxed) {
        let sku = if rng.random::<f64>() < config.scarce_ratio {
            "scarce"
        } else {
            PLENTIFUL[rng.random_range(0..PLENTIFUL.len())]
        };
        let method = if rng.random::<f64>() < config.declined_ratio {
            "card_declined"
        } else {
            "card_ok"
        };
        let order = json!({
            "customer_id": format!("chaos-customer-{client}"),
            "items": [{"sku": sku, "quantity": rng.random_range(1..=2)}],
            "payment_method": method,
        });
        let key = format!("chaos-{}-{client}-{n}", config.seed);
        n += 1;
        let mut record = place(http, config, &order, &key, &mut rng).await;
        if let Some(id) = record.accepted_id().map(str::to_owned)
            && !stop.load(Ordering::Relaxed)
        {
            record.final_seen = follow(http, config, &id, stop).await;
        }
        records.push(record);
        let think = config.think_time.mul_f64(rng.random_range(0.5..1.5));
        tokio::time::sleep(think).await;
    }
    records
}

/// Places `order` with `key`, retrying while the answer is unknown or transient.
async fn place(
    http: &reqwest::Client,
    config: &ClientConfig,
    order: &Value,
    key: &str,
    rng: &mut StdRng,
) -> OrderRecord {
    let mut record = OrderRecord {
        key: key.to_owned(),
        ..OrderRecord::default()
    };
    let started = Instant::now();
    loop {
        record.attempts += 1;
        let sent = http
            .post(format!("{}/api/v1/orders", config.gateway))
            .bearer_auth(&config.api_key)
            .header("idempotency-key", key)
            .json(order)
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status().as_u16() == 202 => {
                let body: Value = resp.json().await.unwrap_or(Value::Null);
                if let Some(id) = body["data"]["order_id"].as_str() {
                    if !record.ids.iter().any(|i| i == id) {
                        record.ids.push(id.to_owned());
                    }
                    return record;
                }
                // A 202 without an id would be a gateway bug: ask again, the key makes it safe.
            }
            Ok(resp) => {
                let status = resp.status().as_u16();
                let transient = status >= 500 || matches!(status, 408 | 409 | 429);
                if !transient {
                    record.refused = Some(status);
                    return record;
                }
            }
            // Refused connection, reset, timeout: the order may or may not have been taken.
            Err(_) => {}
        }
        if started.elapsed() > PLACEMENT_PATIENCE {
            record.abandoned = true;
            return record;
        }
        let exp = 100_u64 << record.attempts.min(4);
        let backoff = Duration::from_millis(exp + rng.random_range(0..100));
        tokio::time::sleep(backoff).await;
    }
}

/// Follows an order to its final status (long polls; errors are waited out); `None` if it did
/// not see one within [`FOLLOW_PATIENCE`] or `stop` was set.
async fn follow(
    http: &reqwest::Client,
    config: &ClientConfig,
    id: &str,
    stop: &AtomicBool,
) -> Option<String> {
    let started = Instant::now();
    while started.elapsed() < FOLLOW_PATIENCE && !stop.load(Ordering::Relaxed) {
        let asked = Instant::now();
        let resp = http
            .get(format!(
                "{}/api/v1/orders/{id}?wait_ms=1000",
                config.gateway
            ))
            .bearer_auth(&config.api_key)
            .send()
            .await;
        if let Ok(resp) = resp
            && resp.status().is_success()
            && let Ok(body) = resp.json::<Value>().await
        {
            match body["data"]["status"].as_str() {
                Some("CONFIRMED") => return Some("CONFIRMED".into()),
                Some("FAILED") => {
                    let reason = body["data"]["reason"].as_str().unwrap_or("unknown");
                    return Some(format!("FAILED:{reason}"));
                }
                _ => {}
            }
        }
        if asked.elapsed() < Duration::from_millis(500) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    None
}
