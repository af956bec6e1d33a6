//! The steady load: orders placed through the gateway at a fixed rate, open loop — one order
//! every `1 / rate` seconds whether or not the earlier ones have finished, so a slower system
//! sees more orders in flight, not fewer orders. Each order is then followed to its final
//! status with the launcher's long polls.
//!
//! Latencies: *place* is the client's round trip of `POST /api/v1/orders` (until the 202);
//! *final* is the orders service's own placement-to-final time (`finished_ms - created_ms`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shop_launcher::workload::{self, percentile};

/// How to drive.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Orders per second.
    pub rate: f64,
    /// How long to place orders.
    pub duration: Duration,
    /// The API key.
    pub api_key: String,
    /// Fraction of orders paying with the always-declined method.
    pub declined_ratio: f64,
    /// Fraction of orders for the scarce product (out of stock after its first 5).
    pub scarce_ratio: f64,
    /// Give up following an order after this long.
    pub order_timeout: Duration,
    /// Orders in flight at most; a tick finding this many skips its order (counted).
    pub max_in_flight: usize,
}

/// What the load did.
#[derive(Debug, Clone, Default)]
pub struct LoadStats {
    /// Orders the ticks asked for.
    pub attempted: usize,
    /// Ticks skipped because `max_in_flight` orders were still in flight.
    pub skipped: usize,
    /// Accepted by the gateway (202).
    pub placed: usize,
    /// Refused by the gateway, by HTTP status.
    pub refused: BTreeMap<u16, usize>,
    /// Requests that got no answer (connection errors, timeouts).
    pub errors: usize,
    /// `CONFIRMED`.
    pub confirmed: usize,
    /// `FAILED`, by reason.
    pub failed: BTreeMap<String, usize>,
    /// Still `PENDING` when following gave up (or could not be read).
    pub unfinished: usize,
    /// Client round trip of the placement, ms.
    pub place_ms: Vec<i64>,
    /// Placement-to-final as the orders service measured it, ms.
    pub final_ms: Vec<i64>,
}

impl LoadStats {
    /// Orders that reached `CONFIRMED` or `FAILED`.
    pub fn finished(&self) -> usize {
        self.confirmed + self.failed.values().sum::<usize>()
    }
}

impl fmt::Display for LoadStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = |v: &[i64], q| percentile(v, q).map_or("-".to_owned(), |v| format!("{v} ms"));
        writeln!(
            f,
            "orders attempted {}  placed {}  final {} (confirmed {}, failed {})  still pending {}",
            self.attempted,
            self.placed,
            self.finished(),
            self.confirmed,
            self.failed.values().sum::<usize>(),
            self.unfinished
        )?;
        writeln!(
            f,
            "  failed by reason {:?}  refused {:?}  no answer {}  skipped (in-flight cap) {}",
            self.failed, self.refused, self.errors, self.skipped
        )?;
        write!(
            f,
            "  place p50 {} p99 {}   placement -> final p50 {} p99 {}",
            p(&self.place_ms, 50.0),
            p(&self.place_ms, 99.0),
            p(&self.final_ms, 50.0),
            p(&self.final_ms, 99.0)
        )
    }
}

/// Places orders at `config.rate` for `config.duration` (or until `stop`), then waits (up to the order timeout)
/// for those in flight; the counts and latencies.
pub async fn run(gateway: &str, config: &LoadConfig, stop: &AtomicBool) -> LoadStats {
    let stats = Arc::new(Mutex::new(LoadStats::default()));
    let http = reqwest::Client::builder()
        .timeout(config.order_timeout)
        .build()
        .unwrap_or_default();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / config.rate.max(0.001)));
    // Late ticks (a stalled runtime) are sent at once: the offered load stays the rate.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(config.max_in_flight.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now();
    let mut i: usize = 0;
    loop {
        tick.tick().await;
        if start.elapsed() >= config.duration || stop.load(Ordering::SeqCst) {
            break;
        }
        i += 1;
        stats.lock().unwrap_or_else(|e| e.into_inner()).attempted += 1;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            stats.lock().unwrap_or_else(|e| e.into_inner()).skipped += 1;
            continue;
        };
        let (http, gateway, config, stats) = (
            http.clone(),
            gateway.to_owned(),
            config.clone(),
            stats.clone(),
        );
        tasks.spawn(async move {
            let _permit = permit;
            one_order(&http, &gateway, &config, i, &stats).await;
        });
        // Reap the finished ones so the set stays the size of what is in flight.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

async fn one_order(
    http: &reqwest::Client,
    gateway: &str,
    config: &LoadConfig,
    i: usize,
    stats: &Mutex<LoadStats>,
) {
    let order = workload::order_body(i, 500, config.declined_ratio, config.scarce_ratio);
    let key = uuid::Uuid::now_v7().to_string();
    let sent = Instant::now();
    let placed = workload::place(http, gateway, &config.api_key, &order, Some(&key)).await;
    let place_ms = sent.elapsed().as_millis() as i64;
    let record =
        |f: &dyn Fn(&mut LoadStats)| f(&mut stats.lock().unwrap_or_else(|e| e.into_inner()));
    let id = match placed {
        Err(_) => return record(&|s| s.errors += 1),
        Ok((202, body)) => body["data"]["order_id"].as_str().map(str::to_owned),
        Ok((status, _)) => return record(&|s| *s.refused.entry(status).or_default() += 1),
    };
    record(&|s| {
        s.placed += 1;
        s.place_ms.push(place_ms);
    });
    let Some(id) = id else {
        return record(&|s| s.unfinished += 1);
    };
    let last =
        workload::wait_final(http, gateway, &config.api_key, &id, config.order_timeout).await;
    record(&|s| match &last {
        Ok(order) if order["status"] == "CONFIRMED" || order["status"] == "FAILED" => {
            if order["status"] == "CONFIRMED" {
                s.confirmed += 1;
            } else {
                let reason = order["reason"].as_str().unwrap_or("unknown").to_owned();
                *s.failed.entry(reason).or_default() += 1;
            }
            if let (Some(c), Some(f)) =
                (order["created_ms"].as_i64(), order["finished_ms"].as_i64())
            {
                s.final_ms.push(f - c);
            }
        }
        _ => s.unfinished += 1,
    });
}
