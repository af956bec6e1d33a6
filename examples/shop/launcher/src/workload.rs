//! The demo workload: place orders through the gateway with bounded concurrency, wait for each
//! to reach a final status (long polls, see [`wait_final`]), and summarise.
//!
//! Placement-to-final time is measured by the orders service itself (`finished_ms -
//! created_ms` of each order), so polling granularity does not inflate it. Orders/s is finished
//! orders divided by the wall time from the first placement to the last final status.
//!
//! # Example
//! ```
//! use shop_launcher::workload::{Summary, percentile};
//!
//! let mut s = Summary::default();
//! s.placed = 2;
//! s.latencies_ms = vec![10, 30];
//! assert_eq!(percentile(&s.latencies_ms, 50.0), Some(10));
//! assert!(s.to_string().contains("orders placed      2"));
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::BoxError;

/// What to send.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// Orders to place.
    pub orders: usize,
    /// Orders in flight at once.
    pub concurrency: usize,
    /// The API key.
    pub api_key: String,
    /// Fraction of orders paying with the always-declined method.
    pub declined_ratio: f64,
    /// Fraction of orders for the scarce product (stock runs out: `out_of_stock`).
    pub scarce_ratio: f64,
    /// Give up polling an order after this long.
    pub order_timeout: Duration,
    /// The run's certificates when the gateway serves HTTPS (`--tls`): the client trusts only
    /// the shop's CA.
    pub tls: Option<crate::tls::ShopPki>,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        Self {
            orders: 200,
            concurrency: 16,
            api_key: "demo-key-0001".into(),
            declined_ratio: 0.05,
            scarce_ratio: 0.05,
            order_timeout: Duration::from_secs(60),
            tls: None,
        }
    }
}

/// The result of a run.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Orders accepted by the gateway (202).
    pub placed: usize,
    /// Orders the gateway refused (non-202), by status.
    pub rejected: BTreeMap<u16, usize>,
    /// Orders that reached `CONFIRMED`.
    pub confirmed: usize,
    /// Orders that reached `FAILED`, by reason.
    pub failed: BTreeMap<String, usize>,
    /// Orders still `PENDING` when polling gave up.
    pub unfinished: usize,
    /// Compensating commands sent by the sagas.
    pub compensations: i64,
    /// Placement-to-final times in ms.
    pub latencies_ms: Vec<i64>,
    /// Wall time of the run.
    pub elapsed: Duration,
}

/// The `p`-th percentile (nearest rank) of `values`.
pub fn percentile(values: &[i64], p: f64) -> Option<i64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v.get(rank.min(v.len()) - 1).copied()
}

impl Summary {
    /// Orders that reached a final status (confirmed or failed).
    pub fn finished(&self) -> usize {
        self.confirmed + self.failed.values().sum::<usize>()
    }

    /// Finished orders per second of wall time.
    pub fn orders_per_sec(&self) -> f64 {
        if self.elapsed.is_zero() {
            0.0
        } else {
            self.finished() as f64 / self.elapsed.as_secs_f64()
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = |q| percentile(&self.latencies_ms, q).map_or("-".to_owned(), |v| format!("{v} ms"));
        writeln!(f, "orders placed      {}", self.placed)?;
        if !self.rejected.is_empty() {
            writeln!(f, "  refused by gateway {:?}", self.rejected)?;
        }
        writeln!(f, "  confirmed        {}", self.confirmed)?;
        writeln!(
            f,
            "  failed           {}",
            self.failed.values().sum::<usize>()
        )?;
        for (reason, n) in &self.failed {
            writeln!(f, "    {reason:<26} {n}")?;
        }
        if self.unfinished > 0 {
            writeln!(f, "  still pending    {}", self.unfinished)?;
        }
        writeln!(f, "compensations      {}", self.compensations)?;
        writeln!(
            f,
            "placement -> final p50 {}  p95 {}  p99 {}",
            p(50.0),
            p(95.0),
            p(99.0)
        )?;
        write!(
            f,
            "throughput         {:.1} orders/s over {:.1} s",
            self.orders_per_sec(),
            self.elapsed.as_secs_f64()
        )
    }
}

/// One order's outcome.
#[derive(Debug)]
enum Outcome {
    Refused(u16),
    Final(Value),
    Pending,
}

/// The `i`-th order of a workload: one of `customers` customers, one of the three plentiful
/// products (the scarce one with probability `scarce_ratio`), the always-declined payment
/// method with probability `declined_ratio`.
pub fn order_body(i: usize, customers: usize, declined_ratio: f64, scarce_ratio: f64) -> Value {
    let method = if rand::random::<f64>() < declined_ratio {
        "card_declined"
    } else {
        "card_ok"
    };
    let sku = if rand::random::<f64>() < scarce_ratio {
        "scarce"
    } else {
        ["tea", "mug", "kettle"][i % 3]
    };
    json!({
        "customer_id": format!("customer-{}", i % customers.max(1)),
        "items": [{"sku": sku, "quantity": 1 + (i % 2)}],
        "payment_method": method,
    })
}

/// Places an order; returns the HTTP status and the body.
pub async fn place(
    http: &reqwest::Client,
    gateway: &str,
    api_key: &str,
    order: &Value,
    idempotency_key: Option<&str>,
) -> Result<(u16, Value), BoxError> {
    let mut req = http
        .post(format!("{gateway}/api/v1/orders"))
        .bearer_auth(api_key)
        .json(order);
    if let Some(k) = idempotency_key {
        req = req.header("idempotency-key", k);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.unwrap_or(Value::Null)))
}

/// How long one `GET /api/v1/orders/{id}?wait_ms=…` may wait for the final status.
pub const LONG_POLL: Duration = Duration::from_secs(1);

/// Waits until an order is `CONFIRMED` or `FAILED` (or `timeout`); returns its last state.
///
/// Each read is a long poll (`?wait_ms=1000`): the orders service answers the moment the order
/// is final, so one request usually suffices and the answer is not a poll interval late. A
/// read that comes back still pending without having waited (a service that ignores
/// `wait_ms`) is repeated after 100 ms.
pub async fn wait_final(
    http: &reqwest::Client,
    gateway: &str,
    api_key: &str,
    order_id: &str,
    timeout: Duration,
) -> Result<Value, BoxError> {
    let deadline = Instant::now() + timeout;
    loop {
        let asked = Instant::now();
        let resp = http
            .get(format!(
                "{gateway}/api/v1/orders/{order_id}?wait_ms={}",
                LONG_POLL.as_millis()
            ))
            .bearer_auth(api_key)
            .send()
            .await;
        if let Ok(resp) = resp
            && resp.status().is_success()
        {
            let body: Value = resp.json().await?;
            let status = body["data"]["status"].as_str().unwrap_or_default();
            if status == "CONFIRMED" || status == "FAILED" || Instant::now() > deadline {
                return Ok(body["data"].clone());
            }
        } else if Instant::now() > deadline {
            return Err(format!("order {order_id} could not be read before the deadline").into());
        }
        if asked.elapsed() < LONG_POLL / 2 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Runs the workload against the gateway at `gateway`.
pub async fn run(
    gateway: &str,
    config: &WorkloadConfig,
    progress: Option<ProgressBar>,
) -> Result<Summary, BoxError> {
    run_across(&[gateway], config, progress).await
}

/// Runs the workload across the gateways at `gateways` (replicas of one gateway), round-robin:
/// order `i` is placed and polled through `gateways[i % n]`.
pub async fn run_across(
    gateways: &[&str],
    config: &WorkloadConfig,
    progress: Option<ProgressBar>,
) -> Result<Summary, BoxError> {
    if gateways.is_empty() {
        return Err("no gateway to send the workload to".into());
    }
    let http = crate::tls::http_client(config.tls.as_ref())?
        .pool_max_idle_per_host(config.concurrency * 2)
        .build()?;
    let permits = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(config.orders);
    for i in 0..config.orders {
        let permit = permits.clone().acquire_owned().await?;
        let (http, gateway, config, progress) = (
            http.clone(),
            gateways[i % gateways.len()].to_owned(),
            config.clone(),
            progress.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let order = order_body(i, 50, config.declined_ratio, config.scarce_ratio);
            let key = uuid::Uuid::now_v7().to_string();
            let result = async {
                let (status, body) =
                    place(&http, &gateway, &config.api_key, &order, Some(&key)).await?;
                if status != 202 {
                    return Ok::<_, BoxError>(Outcome::Refused(status));
                }
                let id = body["data"]["order_id"]
                    .as_str()
                    .ok_or("no order_id in the answer")?
                    .to_owned();
                let last =
                    wait_final(&http, &gateway, &config.api_key, &id, config.order_timeout).await?;
                Ok(if last["status"] == "PENDING" {
                    Outcome::Pending
                } else {
                    Outcome::Final(last)
                })
            }
            .await;
            if let Some(p) = &progress {
                p.inc(1);
            }
            result
        }));
    }
    let mut summary = Summary::default();
    for t in tasks {
        match t.await? {
            Ok(Outcome::Refused(status)) => *summary.rejected.entry(status).or_default() += 1,
            Ok(Outcome::Pending) => {
                summary.placed += 1;
                summary.unfinished += 1;
            }
            Ok(Outcome::Final(order)) => {
                summary.placed += 1;
                if order["status"] == "CONFIRMED" {
                    summary.confirmed += 1;
                } else {
                    let reason = order["reason"].as_str().unwrap_or("unknown").to_owned();
                    *summary.failed.entry(reason).or_default() += 1;
                }
                summary.compensations += order["compensations"].as_i64().unwrap_or(0);
                if let (Some(c), Some(f)) =
                    (order["created_ms"].as_i64(), order["finished_ms"].as_i64())
                {
                    summary.latencies_ms.push(f - c);
                }
            }
            Err(e) => return Err(e),
        }
    }
    summary.elapsed = start.elapsed();
    if let Some(p) = progress {
        p.finish();
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn summary_counts_finished_orders_per_second() {
        let mut s = Summary {
            confirmed: 8,
            elapsed: Duration::from_secs(2),
            ..Summary::default()
        };
        s.failed.insert("card_declined".into(), 2);
        assert!((s.orders_per_sec() - 5.0).abs() < 1e-9);
        let text = s.to_string();
        assert!(text.contains("card_declined"));
        assert!(text.contains("5.0 orders/s"));
    }
}
