//! Where an order's time goes: p50/p99 per hop, from the services' own Prometheus histograms.
//!
//! Every service already measures its parts (the chassis's `http_server_request_duration_seconds`,
//! `http_client_request_duration_seconds`, `outbox_publish_latency_seconds`, `messaging_process_duration_seconds`) and
//! the shop adds two of its own (`shop_db_commit_duration_seconds`, and `shop_message_wait_seconds`: from the
//! moment the sender wrote a message into its outbox, the envelope's `time`, to the moment the
//! receiving handler starts: relay pickup, publish, broker transit and the wait for a free
//! handler, on one machine's clock). The launcher scrapes every `/metrics` right before and
//! right after the workload, subtracts the bucket counts series by series, and takes the
//! quantiles of the difference the way Prometheus's `histogram_quantile` does (linear
//! interpolation inside a bucket). The services record into fine buckets (0.1 ms to 30 s,
//! ~25% apart: `shop_common::service::LATENCY_BUCKETS`), so a quantile is within a bucket's
//! width of the true value.
//!
//! Why histograms rather than timestamps collected per order: recording a sample costs a few
//! nanoseconds in the service and nothing on the wire, it covers every message (retries,
//! compensations, duplicates) without the launcher knowing the saga, and the two scrapes cost
//! the same whatever the run's length. What it cannot give is one order's path; the trace
//! (one trace id from the gateway to notifications) is for that.
//!
//! Hops (`outbox_publish_latency_seconds` starts at the write, inside the transaction, so it covers
//! commit, relay wake-up, publish and the broker's confirm; `shop_message_wait_seconds` contains it,
//! and the rest of the wait is broker transit and consumer queueing):
//!
//! | hop | service | histogram |
//! |---|---|---|
//! | gateway, `POST /api/v1/orders` | gateway | `http_server_request_duration_seconds` |
//! | HTTP gateway -> orders | gateway | `http_client_request_duration_seconds`, POST |
//! | orders, `POST /internal/orders` | orders | `http_server_request_duration_seconds` |
//! | HTTP payments -> provider | payments | `http_client_request_duration_seconds` |
//! | DB commit | orders (placing an order) | `shop_db_commit_duration_seconds` |
//! | outbox write -> broker confirm | orders, inventory, payments | `outbox_publish_latency_seconds` |
//! | message written -> handler starts | each consumer | `shop_message_wait_seconds` |
//! | handling (inbox, writes, commit) | each consumer | `messaging_process_duration_seconds` |
//!
//! The inbox consumers' transactions are the chassis group commit's, several messages each: the
//! summary counts them instead (`inbox_processed_total` over `inbox_transactions_total`, per
//! consumer in [`INBOXES`]: messages per commit).
//!
//! # Example
//! ```
//! use shop_launcher::hops::{Histogram, parse};
//!
//! let text = "x_bucket{le=\"0.01\"} 1\nx_bucket{le=\"0.02\"} 3\nx_bucket{le=\"+Inf\"} 3\nx_count 3\n";
//! let h = Histogram::merged(&parse(text), "x", &[]);
//! assert_eq!(h.count(), 3);
//! assert!((h.quantile(0.5).unwrap() - 0.0125).abs() < 1e-9);
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::BoxError;

/// One histogram series from a scrape: its labels (without `le`) and cumulative bucket counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The metric name (without `_bucket`).
    pub name: String,
    /// Labels other than `le`.
    pub labels: BTreeMap<String, String>,
    /// `(upper bound, cumulative count)`, ascending; the last bound is `+Inf`.
    pub buckets: Vec<(f64, f64)>,
}

/// Parses the `_bucket` lines of a Prometheus text exposition into series, and the lines of
/// counters (`…_total{…} value`) as series with only a `+Inf` bucket: a counter reads as a
/// histogram whose [`count`](Histogram::count) is its value.
pub fn parse(text: &str) -> Vec<Series> {
    let mut out: Vec<Series> = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        if let Some((name, rest)) = line.split_once("_total{") {
            let Some((labels, after)) = parse_labels(rest) else {
                continue;
            };
            if let Some(value) = after.split_whitespace().next().and_then(|v| v.parse().ok()) {
                out.push(Series {
                    name: format!("{name}_total"),
                    labels,
                    buckets: vec![(f64::INFINITY, value)],
                });
            }
            continue;
        }
        let Some((name, rest)) = line.split_once("_bucket{") else {
            continue;
        };
        let Some((mut labels, after)) = parse_labels(rest) else {
            continue;
        };
        let Some(le) = labels.remove("le") else {
            continue;
        };
        let bound = if le == "+Inf" {
            f64::INFINITY
        } else {
            match le.parse() {
                Ok(v) => v,
                Err(_) => continue,
            }
        };
        let Some(count) = after.split_whitespace().next().and_then(|v| v.parse().ok()) else {
            continue;
        };
        match out
            .iter_mut()
            .find(|s| s.name == name && s.labels == labels)
        {
            Some(s) => s.buckets.push((bound, count)),
            None => out.push(Series {
                name: name.to_owned(),
                labels,
                buckets: vec![(bound, count)],
            }),
        }
    }
    for s in &mut out {
        s.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

/// `k="v",…}` (values with `\"`, `\\`, `\n` escapes, and braces inside quotes): the labels and
/// what follows the closing brace.
fn parse_labels(s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches(',');
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, r) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = r.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.insert(key.to_owned(), value);
        rest = &r[end + 1..];
    }
}

/// Whether a label's `value` matches `pattern`: equal, or for a pattern `~suffix`, ending with
/// `suffix` (queue names carry the run's namespace prefix).
fn label_matches(value: &str, pattern: &str) -> bool {
    match pattern.strip_prefix('~') {
        Some(suffix) => value.ends_with(suffix),
        None => value == pattern,
    }
}

/// A histogram: cumulative counts per upper bound, ascending, ending with `+Inf`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// `(upper bound, cumulative count)`.
    pub buckets: Vec<(f64, f64)>,
}

impl Histogram {
    /// The sum of every series of `name` whose labels include all of `filter`.
    pub fn merged(series: &[Series], name: &str, filter: &[(&str, &str)]) -> Self {
        let mut sum: Vec<(f64, f64)> = Vec::new();
        for s in series.iter().filter(|s| {
            s.name == name
                && filter
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|x| label_matches(x, v)))
        }) {
            for (bound, count) in &s.buckets {
                match sum.iter_mut().find(|(b, _)| b == bound) {
                    Some((_, c)) => *c += count,
                    None => sum.push((*bound, *count)),
                }
            }
        }
        sum.sort_by(|a, b| a.0.total_cmp(&b.0));
        Self { buckets: sum }
    }

    /// `self - before`, bucket by bucket (what was recorded between the two scrapes).
    pub fn since(&self, before: &Histogram) -> Self {
        let buckets = self
            .buckets
            .iter()
            .map(|(bound, count)| {
                let earlier = before
                    .buckets
                    .iter()
                    .find(|(b, _)| b == bound)
                    .map_or(0.0, |(_, c)| *c);
                (*bound, (count - earlier).max(0.0))
            })
            .collect();
        Self { buckets }
    }

    /// Samples.
    pub fn count(&self) -> u64 {
        self.buckets.last().map_or(0, |(_, c)| *c as u64)
    }

    /// The `q`-quantile (0..=1) in the histogram's unit, as Prometheus's `histogram_quantile`:
    /// the bucket holding rank `q * count`, linearly interpolated between its bounds (the first
    /// bucket from 0); a rank in the `+Inf` bucket gives the highest finite bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total;
        let mut lower = (0.0, 0.0);
        for &(bound, count) in &self.buckets {
            if count >= rank && count > lower.1 {
                if bound.is_infinite() {
                    return Some(lower.0);
                }
                return Some(lower.0 + (bound - lower.0) * (rank - lower.1) / (count - lower.1));
            }
            lower = (bound, count);
        }
        Some(lower.0)
    }
}

/// One hop of the breakdown: what to read from whose `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HopSpec {
    /// What the line says.
    pub label: &'static str,
    /// The service whose `/metrics` has it.
    pub service: &'static str,
    /// The histogram (Prometheus name).
    pub metric: &'static str,
    /// Labels a series must have (a value `~suffix` matches any value ending with `suffix`).
    pub filter: &'static [(&'static str, &'static str)],
}

const SERVER: &str = "http_server_request_duration_seconds";
const CLIENT: &str = "http_client_request_duration_seconds";
const OUTBOX: &str = "outbox_publish_latency_seconds";
const WAIT: &str = "shop_message_wait_seconds";
const PROCESS: &str = "messaging_process_duration_seconds";
const COMMIT: &str = "shop_db_commit_duration_seconds";

/// The hops, roughly in the order an order meets them.
pub const HOPS: &[HopSpec] = &[
    HopSpec {
        label: "gateway POST /api/v1/orders",
        service: "gateway",
        metric: SERVER,
        filter: &[
            ("http_route", "/api/v1/orders"),
            ("http_request_method", "POST"),
        ],
    },
    HopSpec {
        label: "HTTP gateway -> orders (POST)",
        service: "gateway",
        metric: CLIENT,
        filter: &[("http_request_method", "POST")],
    },
    HopSpec {
        label: "orders POST /internal/orders",
        service: "orders",
        metric: SERVER,
        filter: &[
            ("http_route", "/internal/orders"),
            ("http_request_method", "POST"),
        ],
    },
    HopSpec {
        label: "DB commit orders",
        service: "orders",
        metric: COMMIT,
        filter: &[],
    },
    HopSpec {
        label: "outbox write -> confirm orders",
        service: "orders",
        metric: OUTBOX,
        filter: &[],
    },
    HopSpec {
        label: "written -> handler inventory.reserve",
        service: "inventory",
        metric: WAIT,
        filter: &[("consumer", "inventory.reserve")],
    },
    HopSpec {
        label: "handling inventory.reserve",
        service: "inventory",
        metric: PROCESS,
        filter: &[("messaging_destination_name", "~.inventory.order-placed")],
    },
    HopSpec {
        label: "outbox write -> confirm inventory",
        service: "inventory",
        metric: OUTBOX,
        filter: &[],
    },
    HopSpec {
        label: "written -> handler orders.saga",
        service: "orders",
        metric: WAIT,
        filter: &[("consumer", "orders.saga")],
    },
    HopSpec {
        label: "handling orders.saga",
        service: "orders",
        metric: PROCESS,
        filter: &[("messaging_destination_name", "~.orders.saga")],
    },
    HopSpec {
        label: "written -> handler payments.charge",
        service: "payments",
        metric: WAIT,
        filter: &[("consumer", "payments.charge")],
    },
    HopSpec {
        label: "handling payments.charge",
        service: "payments",
        metric: PROCESS,
        filter: &[("messaging_destination_name", "~.payments.charge")],
    },
    HopSpec {
        label: "HTTP payments -> provider",
        service: "payments",
        metric: CLIENT,
        filter: &[],
    },
    HopSpec {
        label: "outbox write -> confirm payments",
        service: "payments",
        metric: OUTBOX,
        filter: &[],
    },
    HopSpec {
        label: "written -> handler notifications",
        service: "notifications",
        metric: WAIT,
        filter: &[("consumer", "notifications.orders")],
    },
    HopSpec {
        label: "handling notifications",
        service: "notifications",
        metric: PROCESS,
        filter: &[("messaging_destination_name", "~.notifications.orders")],
    },
];

/// The inbox consumers whose commits the summary counts: `(service, inbox name)`.
pub const INBOXES: &[(&str, &str)] = &[
    ("inventory", "inventory.reserve"),
    ("orders", "saga:order"),
    ("notifications", "notifications.orders"),
    ("notifications", "notifications.order-history"),
    ("payments", "payments.charge"),
];

/// What one inbox committed during the run: with a group commit several messages share a
/// transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct InboxCommits {
    /// The inbox's consumer name.
    pub consumer: &'static str,
    /// Messages processed (`inbox_processed_total`).
    pub messages: u64,
    /// Transactions that committed them (`inbox_transactions_total`).
    pub transactions: u64,
}

impl InboxCommits {
    /// Messages per transaction, when there was one.
    pub fn per_commit(&self) -> Option<f64> {
        (self.transactions > 0).then(|| self.messages as f64 / self.transactions as f64)
    }
}

/// Every service's parsed `/metrics`, by service.
pub type Scrape = BTreeMap<String, Vec<Series>>;

/// Scrapes `/metrics` of each `(service, admin base url)` with `http`; a service that does not
/// answer is left out (its hops then show no samples).
pub async fn scrape(http: &reqwest::Client, services: &[(String, String)]) -> Scrape {
    let mut out = Scrape::new();
    for (service, url) in services {
        let text = async {
            let resp = http
                .get(format!("{url}/metrics"))
                .timeout(Duration::from_secs(5))
                .send()
                .await?
                .error_for_status()?;
            Ok::<_, BoxError>(resp.text().await?)
        };
        if let Ok(text) = text.await {
            out.insert(service.clone(), parse(&text));
        }
    }
    out
}

/// One hop's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Hop {
    /// What it is.
    pub label: &'static str,
    /// Samples recorded during the workload.
    pub count: u64,
    /// Median, ms.
    pub p50_ms: Option<f64>,
    /// 99th percentile, ms.
    pub p99_ms: Option<f64>,
}

/// The per-hop breakdown of a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HopReport {
    /// The hops, in [`HOPS`] order.
    pub hops: Vec<Hop>,
    /// The inboxes' commits, in [`INBOXES`] order.
    pub inboxes: Vec<InboxCommits>,
}

impl HopReport {
    /// The hops recorded between the `before` and `after` scrapes.
    pub fn between(before: &Scrape, after: &Scrape) -> Self {
        let empty = Vec::new();
        let hops = HOPS
            .iter()
            .map(|spec| {
                let read = |s: &Scrape| {
                    Histogram::merged(
                        s.get(spec.service).unwrap_or(&empty),
                        spec.metric,
                        spec.filter,
                    )
                };
                let h = read(after).since(&read(before));
                Hop {
                    label: spec.label,
                    count: h.count(),
                    p50_ms: h.quantile(0.5).map(|s| s * 1000.0),
                    p99_ms: h.quantile(0.99).map(|s| s * 1000.0),
                }
            })
            .collect();
        let inboxes = INBOXES
            .iter()
            .map(|(service, consumer)| {
                let counted = |name: &str| {
                    let filter = [("messaging_destination_name", *consumer)];
                    let read = |s: &Scrape| {
                        Histogram::merged(s.get(*service).unwrap_or(&empty), name, &filter)
                    };
                    read(after).since(&read(before)).count()
                };
                InboxCommits {
                    consumer,
                    messages: counted("inbox_processed_total"),
                    transactions: counted("inbox_transactions_total"),
                }
            })
            .collect();
        Self { hops, inboxes }
    }

    /// The hop called `label`.
    pub fn hop(&self, label: &str) -> Option<&Hop> {
        self.hops.iter().find(|h| h.label == label)
    }
}

impl fmt::Display for HopReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1} ms"));
        writeln!(
            f,
            "per hop (the services' histograms)     p50        p99    samples"
        )?;
        for (i, h) in self.hops.iter().enumerate() {
            write!(
                f,
                "  {:<36} {:>9} {:>10} {:>8}",
                h.label,
                ms(h.p50_ms),
                ms(h.p99_ms),
                h.count
            )?;
            if i + 1 < self.hops.len() {
                writeln!(f)?;
            }
        }
        if self.inboxes.iter().any(|i| i.transactions > 0) {
            write!(f, "\nmessages per inbox commit (group commit)")?;
            for i in self.inboxes.iter().filter(|i| i.transactions > 0) {
                write!(
                    f,
                    "\n  {:<36} {:>9.2} ({} in {})",
                    i.consumer,
                    i.per_commit().unwrap_or_default(),
                    i.messages,
                    i.transactions
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"# TYPE http_server_request_duration_seconds histogram
http_server_request_duration_seconds_bucket{http_request_method="POST",http_route="/api/v1/orders",http_response_status_code="202",le="0.001"} 1
http_server_request_duration_seconds_bucket{http_request_method="POST",http_route="/api/v1/orders",http_response_status_code="202",le="0.002"} 2
http_server_request_duration_seconds_bucket{http_request_method="POST",http_route="/api/v1/orders",http_response_status_code="202",le="0.004"} 2
http_server_request_duration_seconds_bucket{http_request_method="POST",http_route="/api/v1/orders",http_response_status_code="202",le="+Inf"} 2
http_server_request_duration_seconds_sum{http_request_method="POST",http_route="/api/v1/orders",http_response_status_code="202"} 0.003
http_server_request_duration_seconds_count{http_request_method="POST",http_route="/api/v1/orders",http_response_status_code="202"} 2
http_server_request_duration_seconds_bucket{http_request_method="GET",http_route="/api/v1/orders/{id}",http_response_status_code="200",le="0.001"} 5
http_server_request_duration_seconds_bucket{http_request_method="GET",http_route="/api/v1/orders/{id}",http_response_status_code="200",le="0.002"} 5
http_server_request_duration_seconds_bucket{http_request_method="GET",http_route="/api/v1/orders/{id}",http_response_status_code="200",le="0.004"} 5
http_server_request_duration_seconds_bucket{http_request_method="GET",http_route="/api/v1/orders/{id}",http_response_status_code="200",le="+Inf"} 5
"#;

    #[test]
    fn labels_with_braces_quotes_and_escapes_parse() {
        let s = parse(
            "m_bucket{a=\"x{y}\",b=\"q\\\"z\",c=\"n\\\\\",le=\"0.5\"} 7\nm_bucket{a=\"x{y}\",b=\"q\\\"z\",c=\"n\\\\\",le=\"+Inf\"} 9\n",
        );
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].labels["a"], "x{y}");
        assert_eq!(s[0].labels["b"], "q\"z");
        assert_eq!(s[0].labels["c"], "n\\");
        assert_eq!(s[0].buckets, vec![(0.5, 7.0), (f64::INFINITY, 9.0)]);
    }

    #[test]
    fn a_tilde_pattern_matches_the_label_suffix() {
        let text = "m_bucket{q=\"ns-1.inventory.order-placed\",le=\"+Inf\"} 3\n\
                    m_bucket{q=\"ns-1.inventory.release\",le=\"+Inf\"} 5\n";
        let s = parse(text);
        assert_eq!(Histogram::merged(&s, "m", &[]).count(), 8);
        let placed = [("q", "~.inventory.order-placed")];
        assert_eq!(Histogram::merged(&s, "m", &placed).count(), 3);
        let exact = [("q", "ns-1.inventory.release")];
        assert_eq!(Histogram::merged(&s, "m", &exact).count(), 5);
        assert_eq!(Histogram::merged(&s, "m", &[("q", "release")]).count(), 0);
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let h = Histogram {
            buckets: vec![
                (0.001, 10.0),
                (0.002, 30.0),
                (0.004, 40.0),
                (f64::INFINITY, 40.0),
            ],
        };
        // Rank 20 is halfway through (0.001, 0.002].
        assert!((h.quantile(0.5).unwrap() - 0.0015).abs() < 1e-12);
        // Rank 5 is halfway through the first bucket, which starts at 0.
        assert!((h.quantile(0.125).unwrap() - 0.0005).abs() < 1e-12);
        assert!((h.quantile(1.0).unwrap() - 0.004).abs() < 1e-12);
        let overflow = Histogram {
            buckets: vec![(0.001, 1.0), (f64::INFINITY, 10.0)],
        };
        assert_eq!(overflow.quantile(0.99), Some(0.001));
        assert_eq!(Histogram::default().quantile(0.5), None);
    }

    #[test]
    fn a_hop_is_what_was_recorded_between_the_scrapes() {
        // Ten more POSTs, all in (2 ms, 4 ms].
        let after = BEFORE
            .replace(r#"le="0.004"} 2"#, r#"le="0.004"} 12"#)
            .replace(r#"le="+Inf"} 2"#, r#"le="+Inf"} 12"#);
        let scrape = |t: &str| Scrape::from([("gateway".to_owned(), parse(t))]);
        let report = HopReport::between(&scrape(BEFORE), &scrape(&after));
        let gateway = report.hop("gateway POST /api/v1/orders").unwrap();
        // 10 new samples, all in (2 ms, 4 ms]: the GETs and the earlier POSTs do not count.
        assert_eq!(gateway.count, 10);
        assert!((gateway.p50_ms.unwrap() - 3.0).abs() < 1e-9);
        assert!((gateway.p99_ms.unwrap() - 3.98).abs() < 1e-9);
        let missing = report.hop("handling notifications").unwrap();
        assert_eq!((missing.count, missing.p50_ms), (0, None));
        let text = report.to_string();
        assert!(text.contains("gateway POST /api/v1/orders"), "{text}");
        assert!(text.contains("3.0 ms"), "{text}");
        assert!(!text.contains("inbox commit"), "no inbox counted: {text}");
    }

    #[test]
    fn inbox_commits_are_the_counters_difference_per_consumer() {
        let text = |processed: u32, transactions: u32| {
            format!(
                "# TYPE inbox_processed_total counter\n\
                 inbox_processed_total{{messaging_destination_name=\"inventory.reserve\"}} {processed}\n\
                 inbox_processed_total{{messaging_destination_name=\"inventory.release\"}} 7\n\
                 inbox_transactions_total{{messaging_destination_name=\"inventory.reserve\"}} {transactions}\n\
                 inbox_transactions_total{{messaging_destination_name=\"inventory.release\"}} 7\n"
            )
        };
        let scrape = |t: String| Scrape::from([("inventory".to_owned(), parse(&t))]);
        let report = HopReport::between(&scrape(text(10, 10)), &scrape(text(110, 50)));
        let reserve = &report.inboxes[0];
        assert_eq!((reserve.messages, reserve.transactions), (100, 40));
        assert_eq!(reserve.per_commit(), Some(2.5));
        assert_eq!(
            report.inboxes[1].per_commit(),
            None,
            "orders was not scraped"
        );
        let text = report.to_string();
        assert!(
            text.contains("messages per inbox commit") && text.contains("2.50 (100 in 40)"),
            "{text}"
        );
    }
}
