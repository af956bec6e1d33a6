//! The catalogue of every metric the chassis crates emit: one constant per metric holding the
//! name Prometheus scrapes, and [`ALL`], one [`Metric`] per name with its type, unit, labels,
//! closed label values and description.
//!
//! It lives here, in the crate every other chassis crate depends on, so that chassis-core's
//! resilience layers, chassis-observability, chassis-http and chassis-messaging all record
//! through the same constants; chassis-observability re-exports it as
//! `chassis_observability::metrics::names` and registers every description with the recorder
//! (`# HELP` and `# TYPE` in the exposition) when telemetry starts.
//!
//! # From OpenTelemetry names to Prometheus names
//!
//! Each metric is named after the [OpenTelemetry semantic conventions] where one exists
//! ([`Metric::otel_name`], e.g. `http.server.request.duration`) and the rest in the same style.
//! The constants hold the name as exposed, derived once, here, by the rules of the
//! [OpenTelemetry-to-Prometheus compatibility specification]:
//!
//! - dots become underscores: `http.server.request.duration` -> `http_server_request_duration`;
//! - the unit is appended from the OpenTelemetry unit: `s` -> `_seconds`, `By` -> `_bytes`; a
//!   dimensionless `1` and annotations in braces (`{message}`, `{request}`) add nothing;
//! - monotonic counters end in `_total`; info metrics would end in `_info` (there are none).
//!
//! So `http.server.request.duration` (histogram, `s`) is scraped as
//! `http_server_request_duration_seconds` (`_bucket`, `_sum`, `_count`),
//! `messaging.client.sent.messages` (counter, `{message}`) as
//! `messaging_client_sent_messages_total`, and `outbox.pending` (gauge, `{message}`) as
//! `outbox_pending`. The recorder adds nothing: the name in the code is the name on the
//! dashboard, whatever recorder is installed.
//!
//! Label names are the semantic-convention attribute keys ([`labels`], e.g.
//! `http.request.method`); the Prometheus exporter writes their dots as underscores
//! (`http_request_method`).
//!
//! | constant | Prometheus name | type | OTel name | unit | labels |
//! |---|---|---|---|---|---|
//! | [`HTTP_SERVER_REQUEST_DURATION`] | `http_server_request_duration_seconds` | histogram | `http.server.request.duration` | `s` | `http.request.method`, `http.route` (when known), `http.response.status_code` |
//! | [`HTTP_SERVER_ACTIVE_REQUESTS`] | `http_server_active_requests` | gauge | `http.server.active_requests` | `{request}` | `http.request.method` |
//! | [`HTTP_CLIENT_REQUEST_DURATION`] | `http_client_request_duration_seconds` | histogram | `http.client.request.duration` | `s` | `http.request.method`, `server.address`, `server.port`, `http.response.status_code` (with a response), `error.type` (on error) |
//! | [`RPC_SERVER_CALL_DURATION`] | `rpc_server_call_duration_seconds` | histogram | `rpc.server.call.duration` | `s` | `rpc.system`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code` |
//! | [`RPC_CLIENT_CALL_DURATION`] | `rpc_client_call_duration_seconds` | histogram | `rpc.client.call.duration` | `s` | `rpc.system`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code` |
//! | [`MESSAGING_PUBLISH_DURATION`] | `messaging_publish_duration_seconds` | histogram | `messaging.publish.duration` | `s` | `messaging.destination.name`, `outcome` |
//! | [`MESSAGING_PROCESS_DURATION`] | `messaging_process_duration_seconds` | histogram | `messaging.process.duration` | `s` | `messaging.destination.name`, `outcome` |
//! | [`MESSAGING_CLIENT_SENT_MESSAGES`] | `messaging_client_sent_messages_total` | counter | `messaging.client.sent.messages` | `{message}` | `messaging.destination.name` |
//! | [`MESSAGING_CLIENT_CONSUMED_MESSAGES`] | `messaging_client_consumed_messages_total` | counter | `messaging.client.consumed.messages` | `{message}` | `messaging.destination.name` |
//! | [`MESSAGING_CLIENT_ACKED_MESSAGES`] | `messaging_client_acked_messages_total` | counter | `messaging.client.acked.messages` | `{message}` | `messaging.destination.name` |
//! | [`MESSAGING_CLIENT_RETRIED_MESSAGES`] | `messaging_client_retried_messages_total` | counter | `messaging.client.retried.messages` | `{message}` | `messaging.destination.name` |
//! | [`MESSAGING_CLIENT_DEAD_LETTERED_MESSAGES`] | `messaging_client_dead_lettered_messages_total` | counter | `messaging.client.dead_lettered.messages` | `{message}` | `messaging.destination.name`, `error.type` |
//! | [`MESSAGING_QUEUE_MESSAGES_READY`] | `messaging_queue_messages_ready` | gauge | `messaging.queue.messages_ready` | `{message}` | `messaging.destination.name` |
//! | [`MESSAGING_CONSUMER_UNACKED_MESSAGES`] | `messaging_consumer_unacked_messages` | gauge | `messaging.consumer.unacked_messages` | `{message}` | `messaging.destination.name` |
//! | [`CIRCUIT_BREAKER_STATE`] | `circuit_breaker_state` | gauge | `circuit_breaker.state` | `1` | `name` |
//! | [`CIRCUIT_BREAKER_CALLS`] | `circuit_breaker_calls_total` | counter | `circuit_breaker.calls` | `{call}` | `name`, `outcome` |
//! | [`RETRY_ATTEMPTS`] | `retry_attempts_total` | counter | `retry.attempts` | `{attempt}` | `name`, `outcome` |
//! | [`BULKHEAD_REJECTED`] | `bulkhead_rejected_total` | counter | `bulkhead.rejected` | `{call}` | `name` |
//! | [`ADAPTIVE_LIMIT_LIMIT`] | `adaptive_limit_limit` | gauge | `adaptive_limit.limit` | `{call}` | `name` |
//! | [`ADAPTIVE_LIMIT_IN_FLIGHT`] | `adaptive_limit_in_flight` | gauge | `adaptive_limit.in_flight` | `{call}` | `name` |
//! | [`ADAPTIVE_LIMIT_REJECTED`] | `adaptive_limit_rejected_total` | counter | `adaptive_limit.rejected` | `{call}` | `name` |
//! | [`RATE_LIMIT_REJECTED`] | `rate_limit_rejected_total` | counter | `rate_limit.rejected` | `{call}` | `name` |
//! | [`OUTBOX_PENDING`] | `outbox_pending` | gauge | `outbox.pending` | `{message}` | — |
//! | [`OUTBOX_OLDEST_PENDING_AGE`] | `outbox_oldest_pending_age_seconds` | gauge | `outbox.oldest_pending_age` | `s` | — |
//! | [`OUTBOX_PUBLISH_LATENCY`] | `outbox_publish_latency_seconds` | histogram | `outbox.publish_latency` | `s` | — |
//! | [`OUTBOX_RELAY_ERRORS`] | `outbox_relay_errors_total` | counter | `outbox.relay_errors` | `{error}` | `error.type` |
//! | [`OUTBOX_PARKED`] | `outbox_parked` | gauge | `outbox.parked` | `{message}` | — |
//! | [`OUTBOX_PARKED_MESSAGES`] | `outbox_parked_messages_total` | counter | `outbox.parked_messages` | `{message}` | — |
//! | [`OUTBOX_PUBLISHED`] | `outbox_published_total` | counter | `outbox.published` | `{message}` | — |
//! | [`OUTBOX_UNROUTABLE`] | `outbox_unroutable_total` | counter | `outbox.unroutable` | `{message}` | — |
//! | [`INBOX_DUPLICATES`] | `inbox_duplicates_total` | counter | `inbox.duplicates` | `{message}` | `messaging.destination.name` |
//! | [`INBOX_PROCESSED`] | `inbox_processed_total` | counter | `inbox.processed` | `{message}` | `messaging.destination.name` |
//! | [`INBOX_TRANSACTIONS`] | `inbox_transactions_total` | counter | `inbox.transactions` | `{transaction}` | `messaging.destination.name` |
//! | [`OTEL_SPANS_DROPPED`] | `otel_spans_dropped_total` | counter | `otel.spans.dropped` | `{span}` | `reason` |
//! | [`LOG_LINES_DROPPED`] | `log_lines_dropped_total` | counter | `log.lines.dropped` | `{line}` | — |
//!
//! The closed label values (every `outcome`, `reason`, the outbox's `error.type`) are in
//! [`ALL`]; the circuit breaker's state gauge reads 0 closed, 1 open, 2 half-open, 3 forced
//! open, 4 forced closed.
//!
//! Components register their series at zero when they are built ([`preregister`], one series
//! per closed label value), so a breaker that never opened or a relay that never failed still
//! shows its counters at 0 from the first scrape. Series with an open label only known per
//! call (route, status code, publish destination, dead-letter reason) appear on first use.
//!
//! [OpenTelemetry semantic conventions]: https://opentelemetry.io/docs/specs/semconv/
//! [OpenTelemetry-to-Prometheus compatibility specification]: https://opentelemetry.io/docs/specs/otel/compatibility/prometheus_and_openmetrics/
//!
//! # Example
//!
//! ```
//! use chassis_core::metric_catalogue::{self as names, Kind};
//!
//! let metric = names::find(names::CIRCUIT_BREAKER_CALLS).unwrap();
//! assert_eq!(metric.name, "circuit_breaker_calls_total");
//! assert_eq!(metric.otel_name, "circuit_breaker.calls");
//! assert_eq!(metric.kind, Kind::Counter);
//! let outcome = metric.label(names::labels::OUTCOME).unwrap();
//! assert!(outcome.values.unwrap().contains(&"not_permitted"));
//! ```

/// What kind of instrument a metric is, as Prometheus's `# TYPE` line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A monotonic counter (its name ends in `_total`).
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// A histogram (`_bucket`, `_sum`, `_count` series).
    Histogram,
}

impl Kind {
    /// `counter`, `gauge` or `histogram`: the word of the `# TYPE` line.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// A label a metric may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label {
    /// The attribute key as recorded (a constant of [`labels`]).
    pub name: &'static str,
    /// Every value the label can take, when that set is closed; `None` when it is open (a
    /// route, a queue name, a status code).
    pub values: Option<&'static [&'static str]>,
}

/// One metric of the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    /// The name as recorded and scraped (Prometheus style: unit suffix, `_total` on counters).
    pub name: &'static str,
    /// The OpenTelemetry-style name [`name`](Self::name) is derived from (the semantic
    /// convention's where one exists).
    pub otel_name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// The OpenTelemetry unit (UCUM): `s`, `By`, `1`, or an annotation such as `{message}`.
    pub unit: &'static str,
    /// Every label the metric may carry; a series carries a subset (e.g. `http.route` only
    /// when the route is known).
    pub labels: &'static [Label],
    /// What it measures: the `# HELP` text.
    pub description: &'static str,
}

impl Metric {
    /// The label called `name` (an attribute key of [`labels`]), if this metric has one.
    pub fn label(&self, name: &str) -> Option<&'static Label> {
        self.labels.iter().find(|l| l.name == name)
    }
}

/// The catalogue entry of the metric called `name` (as recorded and scraped).
pub fn find(name: &str) -> Option<&'static Metric> {
    ALL.iter().find(|m| m.name == name)
}

/// Registers, with the recorder in effect, every series of the metric `name` that is known
/// before any traffic: `fixed` gives the value of each label with an open value set (a
/// breaker's `name`, a queue's `messaging.destination.name`), and each closed label not in
/// `fixed` is expanded over all of its catalogued values. Components call it when they are
/// built, so that `rate()`, `increase()` and `absent()` see a series from the first scrape
/// instead of from the first failure, rejection or transition.
///
/// - A counter is incremented by 0: a new series reads 0, an existing one keeps its count.
/// - A gauge is incremented by 0.0: a new series reads 0, an existing one keeps its value (a
///   component whose initial value is not 0 sets it itself, as the circuit breaker does with
///   its state).
/// - A histogram is registered without an observation. The Prometheus exporter renders a
///   registered histogram with every bucket, `_sum` and `_count` at 0, so its rate is 0
///   rather than absent; a quantile of it is NaN until the first observation, as it should
///   be.
///
/// The label sets come from the catalogue alone, so what is pre-registered cannot drift from
/// what the catalogue lists. Series with an open label the component does not know up front
/// (a route, a status code, the exchange of each publish, a dead-letter reason) cannot be
/// pre-registered and appear on first use. Like any `metrics` registration, this goes to the
/// recorder installed at the time: install it (`Telemetry::builder(..).init()`) before building components.
///
/// A `name` missing from the catalogue, a label of `fixed` the metric does not have, a value
/// outside a closed set, or an open label without a value is a bug at the call site: it
/// panics in debug builds and registers nothing in release builds.
///
/// ```
/// use chassis_core::metric_catalogue::{self as names, labels};
/// use metrics_util::debugging::DebuggingRecorder;
///
/// let recorder = DebuggingRecorder::new();
/// let snapshotter = recorder.snapshotter();
/// metrics::with_local_recorder(&recorder, || {
///     names::preregister(names::RETRY_ATTEMPTS, &[(labels::NAME, "payments")]);
/// });
/// // One series per catalogued outcome, each at 0.
/// let series = snapshotter.snapshot().into_vec();
/// assert_eq!(series.len(), names::find(names::RETRY_ATTEMPTS).unwrap()
///     .label(labels::OUTCOME).unwrap().values.unwrap().len());
/// ```
pub fn preregister(name: &str, fixed: &[(&'static str, &str)]) {
    let Some((metric, sets)) = label_sets(name, fixed) else {
        return;
    };
    for labels in sets {
        match metric.kind {
            Kind::Counter => metrics::counter!(metric.name, labels).increment(0),
            Kind::Gauge => metrics::gauge!(metric.name, labels).increment(0.0),
            Kind::Histogram => drop(metrics::histogram!(metric.name, labels)),
        }
    }
}

/// The catalogue entry of `name` and the label sets [`preregister`] registers, in the
/// catalogue's label order; `None` (after a debug assertion) when the call is wrong, see there.
fn label_sets(
    name: &str,
    fixed: &[(&'static str, &str)],
) -> Option<(&'static Metric, Vec<Vec<metrics::Label>>)> {
    let Some(metric) = find(name) else {
        debug_assert!(false, "{name} is not in the metric catalogue");
        return None;
    };
    if let Some((key, _)) = fixed.iter().find(|(key, _)| metric.label(key).is_none()) {
        debug_assert!(false, "{name} has no label {key}");
        return None;
    }
    let mut sets = vec![Vec::new()];
    for label in metric.labels {
        let given = fixed.iter().find(|(key, _)| *key == label.name);
        match (given, label.values) {
            (Some((_, value)), values) => {
                if values.is_some_and(|values| !values.contains(value)) {
                    debug_assert!(false, "{name}: {}={value} is not catalogued", label.name);
                    return None;
                }
                for set in &mut sets {
                    set.push(metrics::Label::new(label.name, (*value).to_owned()));
                }
            }
            (None, Some(values)) => {
                sets = sets
                    .into_iter()
                    .flat_map(|set| {
                        values.iter().map(move |value| {
                            let mut set = set.clone();
                            set.push(metrics::Label::new(label.name, *value));
                            set
                        })
                    })
                    .collect();
            }
            (None, None) => {
                debug_assert!(false, "{name}: the open label {} needs a value", label.name);
                return None;
            }
        }
    }
    Some((metric, sets))
}

/// Duration of HTTP server requests until the response head is ready.
pub const HTTP_SERVER_REQUEST_DURATION: &str = "http_server_request_duration_seconds";
/// HTTP server requests whose response head is not ready yet.
pub const HTTP_SERVER_ACTIVE_REQUESTS: &str = "http_server_active_requests";
/// Duration of HTTP client requests (one series per attempt).
pub const HTTP_CLIENT_REQUEST_DURATION: &str = "http_client_request_duration_seconds";
/// Duration of gRPC server calls, until the last message and the status are sent.
pub const RPC_SERVER_CALL_DURATION: &str = "rpc_server_call_duration_seconds";
/// Duration of gRPC client calls (one series per attempt), until the status is received.
pub const RPC_CLIENT_CALL_DURATION: &str = "rpc_client_call_duration_seconds";
/// Time from publish to broker confirm.
pub const MESSAGING_PUBLISH_DURATION: &str = "messaging_publish_duration_seconds";
/// Time a consumer handler spent on one message.
pub const MESSAGING_PROCESS_DURATION: &str = "messaging_process_duration_seconds";
/// Messages published and confirmed by the broker.
pub const MESSAGING_CLIENT_SENT_MESSAGES: &str = "messaging_client_sent_messages_total";
/// Messages delivered to a consumer.
pub const MESSAGING_CLIENT_CONSUMED_MESSAGES: &str = "messaging_client_consumed_messages_total";
/// Messages acknowledged after successful processing.
pub const MESSAGING_CLIENT_ACKED_MESSAGES: &str = "messaging_client_acked_messages_total";
/// Messages scheduled for another delivery attempt.
pub const MESSAGING_CLIENT_RETRIED_MESSAGES: &str = "messaging_client_retried_messages_total";
/// Messages sent to the dead-letter queue.
pub const MESSAGING_CLIENT_DEAD_LETTERED_MESSAGES: &str =
    "messaging_client_dead_lettered_messages_total";
/// Messages ready in a consumed queue (waiting for a consumer), as the consumer last polled it.
pub const MESSAGING_QUEUE_MESSAGES_READY: &str = "messaging_queue_messages_ready";
/// Deliveries a consumer has taken from its channel and not settled yet (being handled, or
/// waiting for a handler or a lane).
pub const MESSAGING_CONSUMER_UNACKED_MESSAGES: &str = "messaging_consumer_unacked_messages";
/// Circuit breaker state: 0 closed, 1 open, 2 half-open, 3 forced open, 4 forced closed.
pub const CIRCUIT_BREAKER_STATE: &str = "circuit_breaker_state";
/// Calls seen by a circuit breaker, by `outcome`.
pub const CIRCUIT_BREAKER_CALLS: &str = "circuit_breaker_calls_total";
/// Calls through a retry layer, by how they ended (`outcome`).
pub const RETRY_ATTEMPTS: &str = "retry_attempts_total";
/// Calls a bulkhead turned away (no permit within its wait).
pub const BULKHEAD_REJECTED: &str = "bulkhead_rejected_total";
/// Concurrent calls an adaptive limit admits right now.
pub const ADAPTIVE_LIMIT_LIMIT: &str = "adaptive_limit_limit";
/// Calls in flight under an adaptive limit (as of its last finished call).
pub const ADAPTIVE_LIMIT_IN_FLIGHT: &str = "adaptive_limit_in_flight";
/// Calls an adaptive limit shed.
pub const ADAPTIVE_LIMIT_REJECTED: &str = "adaptive_limit_rejected_total";
/// Calls a rate limiter turned away.
pub const RATE_LIMIT_REJECTED: &str = "rate_limit_rejected_total";
/// Outbox messages not yet published.
pub const OUTBOX_PENDING: &str = "outbox_pending";
/// Age of the oldest unpublished outbox message.
pub const OUTBOX_OLDEST_PENDING_AGE: &str = "outbox_oldest_pending_age_seconds";
/// Time from outbox insert (about the commit) to broker confirm.
pub const OUTBOX_PUBLISH_LATENCY: &str = "outbox_publish_latency_seconds";
/// Errors of the outbox relay, by `error.type`.
pub const OUTBOX_RELAY_ERRORS: &str = "outbox_relay_errors_total";
/// Outbox rows parked after repeated non-transient failures, waiting for an operator.
pub const OUTBOX_PARKED: &str = "outbox_parked";
/// Outbox rows parked so far (see the error log for each row and its error).
pub const OUTBOX_PARKED_MESSAGES: &str = "outbox_parked_messages_total";
/// Outbox rows the broker confirmed.
pub const OUTBOX_PUBLISHED: &str = "outbox_published_total";
/// Outbox rows confirmed but routed to no queue, on exchanges that accept that (also counted
/// in [`OUTBOX_PUBLISHED`]).
pub const OUTBOX_UNROUTABLE: &str = "outbox_unroutable_total";
/// Incoming messages skipped because the inbox had already processed them.
pub const INBOX_DUPLICATES: &str = "inbox_duplicates_total";
/// Incoming messages an inbox processed and committed (first delivery).
pub const INBOX_PROCESSED: &str = "inbox_processed_total";
/// Transactions an inbox committed itself (one per message without a group commit, one per
/// batch with one): `inbox_processed_total` over this is the messages per commit.
pub const INBOX_TRANSACTIONS: &str = "inbox_transactions_total";
/// Spans dropped before export, by `reason`.
pub const OTEL_SPANS_DROPPED: &str = "otel_spans_dropped_total";
/// Log lines dropped because the log writer's buffer was full or its output failed.
pub const LOG_LINES_DROPPED: &str = "log_lines_dropped_total";

/// Label (attribute) names used with the catalogue metrics: semantic-convention attribute
/// keys where one exists. Prometheus shows their dots as underscores.
pub mod labels {
    /// HTTP method (semconv `http.request.method`): `GET`, `POST`, ...
    pub const HTTP_REQUEST_METHOD: &str = "http.request.method";
    /// Route template (semconv `http.route`): `/orders/{id}`, never the raw path.
    pub const HTTP_ROUTE: &str = "http.route";
    /// Response status code (semconv `http.response.status_code`).
    pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
    /// Peer host (semconv `server.address`).
    pub const SERVER_ADDRESS: &str = "server.address";
    /// Peer port (semconv `server.port`).
    pub const SERVER_PORT: &str = "server.port";
    /// Exchange or queue (semconv `messaging.destination.name`).
    pub const MESSAGING_DESTINATION_NAME: &str = "messaging.destination.name";
    /// RPC system (semconv `rpc.system`): `grpc`.
    pub const RPC_SYSTEM: &str = "rpc.system";
    /// Full name of the called RPC service (semconv `rpc.service`): `inventory.v1.Inventory`.
    pub const RPC_SERVICE: &str = "rpc.service";
    /// Name of the called RPC method (semconv `rpc.method`): `Reserve`.
    pub const RPC_METHOD: &str = "rpc.method";
    /// gRPC status code as a number (semconv `rpc.grpc.status_code`): `0` for OK.
    pub const RPC_GRPC_STATUS_CODE: &str = "rpc.grpc.status_code";
    /// Error class (semconv `error.type`).
    pub const ERROR_TYPE: &str = "error.type";
    /// Name of a breaker, retry policy, bulkhead or rate limiter.
    pub const NAME: &str = "name";
    /// How a call or a message ended (values per metric in [`ALL`](super::ALL)).
    pub const OUTCOME: &str = "outcome";
    /// Why something was dropped.
    pub const REASON: &str = "reason";
}

const fn open(name: &'static str) -> Label {
    Label { name, values: None }
}

const fn closed(name: &'static str, values: &'static [&'static str]) -> Label {
    Label {
        name,
        values: Some(values),
    }
}

/// The server's `http.request.method` values: the known methods and `_OTHER` for the rest.
const SERVER_METHODS: &[&str] = &[
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT", "_OTHER",
];

/// The gRPC status codes, 0 (`OK`) to 16 (`UNAUTHENTICATED`), as `rpc.grpc.status_code` records them.
const GRPC_STATUS_CODES: &[&str] = &[
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
];

/// The labels of a gRPC call's duration, on the server and on the client alike.
const RPC_CALL_LABELS: &[Label] = &[
    closed(RPC_SYSTEM, &["grpc"]),
    open(RPC_SERVICE),
    open(RPC_METHOD),
    closed(RPC_GRPC_STATUS_CODE, GRPC_STATUS_CODES),
];

use labels::*;

/// Every metric of the catalogue.
pub const ALL: &[Metric] = &[
    Metric {
        name: HTTP_SERVER_REQUEST_DURATION,
        otel_name: "http.server.request.duration",
        kind: Kind::Histogram,
        unit: "s",
        labels: &[
            closed(HTTP_REQUEST_METHOD, SERVER_METHODS),
            open(HTTP_ROUTE),
            open(HTTP_RESPONSE_STATUS_CODE),
        ],
        description: "Duration of HTTP server requests until the response head is ready.",
    },
    Metric {
        name: HTTP_SERVER_ACTIVE_REQUESTS,
        otel_name: "http.server.active_requests",
        kind: Kind::Gauge,
        unit: "{request}",
        labels: &[closed(HTTP_REQUEST_METHOD, SERVER_METHODS)],
        description: "HTTP server requests whose response head is not ready yet.",
    },
    Metric {
        name: RPC_SERVER_CALL_DURATION,
        otel_name: "rpc.server.call.duration",
        kind: Kind::Histogram,
        unit: "s",
        labels: RPC_CALL_LABELS,
        description: "Duration of gRPC server calls, until the last message and the status are sent.",
    },
    Metric {
        name: RPC_CLIENT_CALL_DURATION,
        otel_name: "rpc.client.call.duration",
        kind: Kind::Histogram,
        unit: "s",
        labels: RPC_CALL_LABELS,
        description: "Duration of gRPC client calls (one series per attempt), until the status is received.",
    },
    Metric {
        name: HTTP_CLIENT_REQUEST_DURATION,
        otel_name: "http.client.request.duration",
        kind: Kind::Histogram,
        unit: "s",
        labels: &[
            open(HTTP_REQUEST_METHOD),
            open(SERVER_ADDRESS),
            open(SERVER_PORT),
            open(HTTP_RESPONSE_STATUS_CODE),
            open(ERROR_TYPE),
        ],
        description: "Duration of HTTP client requests, one per attempt.",
    },
    Metric {
        name: MESSAGING_PUBLISH_DURATION,
        otel_name: "messaging.publish.duration",
        kind: Kind::Histogram,
        unit: "s",
        labels: &[
            open(MESSAGING_DESTINATION_NAME),
            closed(
                OUTCOME,
                &[
                    "ok",
                    "unrouted",
                    "unroutable",
                    "nacked",
                    "timeout",
                    "shutdown",
                    "topology",
                    "connection",
                ],
            ),
        ],
        description: "Time from publish to broker confirm.",
    },
    Metric {
        name: MESSAGING_PROCESS_DURATION,
        otel_name: "messaging.process.duration",
        kind: Kind::Histogram,
        unit: "s",
        labels: &[
            open(MESSAGING_DESTINATION_NAME),
            closed(OUTCOME, &["ack", "retry", "reject"]),
        ],
        description: "Time a consumer handler spent on a message.",
    },
    Metric {
        name: MESSAGING_CLIENT_SENT_MESSAGES,
        otel_name: "messaging.client.sent.messages",
        kind: Kind::Counter,
        unit: "{message}",
        labels: &[open(MESSAGING_DESTINATION_NAME)],
        description: "Messages published and confirmed by the broker.",
    },
    Metric {
        name: MESSAGING_CLIENT_CONSUMED_MESSAGES,
        otel_name: "messaging.client.consumed.messages",
        kind: Kind::Counter,
        unit: "{message}",
        labels: &[open(MESSAGING_DESTINATION_NAME)],
        description: "Messages delivered to a consumer.",
    },
    Metric {
        name: MESSAGING_CLIENT_ACKED_MESSAGES,
        otel_name: "messaging.client.acked.messages",
        kind: Kind::Counter,
        unit: "{message}",
        labels: &[open(MESSAGING_DESTINATION_NAME)],
        description: "Messages acknowledged after successful processing.",
    },
    Metric {
        name: MESSAGING_CLIENT_RETRIED_MESSAGES,
        otel_name: "messaging.client.retried.messages",
        kind: Kind::Counter,
        unit: "{message}",
        labels: &[open(MESSAGING_DESTINATION_NAME)],
        description: "Messages scheduled for another delivery attempt.",
    },
    Metric {
        name: MESSAGING_CLIENT_DEAD_LETTERED_MESSAGES,
        otel_name: "messaging.client.dead_lettered.messages",
        kind: Kind::Counter,
        unit: "{message}",
        labels: &[open(MESSAGING_DESTINATION_NAME), open(ERROR_TYPE)],
        description: "Messages sent to the dead-letter queue; error.type is the reason's prefix.",
    },
    Metric {
        name: MESSAGING_QUEUE_MESSAGES_READY,
        otel_name: "messaging.queue.messages_ready",
        kind: Kind::Gauge,
        unit: "{message}",
        labels: &[open(MESSAGING_DESTINATION_NAME)],
        description: "Messages ready in a consumed queue, from the consumer's periodic passive queue.declare.",
    },
    Metric {
        name: MESSAGING_CONSUMER_UNACKED_MESSAGES,
        otel_name: "messaging.consumer.unacked_messages",
        kind: Kind::Gauge,
        unit: "{message}",
        labels: &[open(MESSAGING_DESTINATION_NAME)],
        description: "Deliveries a consumer has taken in and not settled: being handled, or waiting for a handler or a lane.",
    },
    Metric {
        name: CIRCUIT_BREAKER_STATE,
        otel_name: "circuit_breaker.state",
        kind: Kind::Gauge,
        unit: "1",
        labels: &[open(NAME)],
        description: "Circuit breaker state: 0 closed, 1 open, 2 half-open, 3 forced open, 4 forced closed.",
    },
    Metric {
        name: CIRCUIT_BREAKER_CALLS,
        otel_name: "circuit_breaker.calls",
        kind: Kind::Counter,
        unit: "{call}",
        labels: &[
            open(NAME),
            closed(
                OUTCOME,
                &[
                    "success",
                    "failure",
                    "slow_success",
                    "slow_failure",
                    "not_permitted",
                ],
            ),
        ],
        description: "Calls seen by a circuit breaker: recorded outcomes (slow ones apart) and calls not permitted.",
    },
    Metric {
        name: RETRY_ATTEMPTS,
        otel_name: "retry.attempts",
        kind: Kind::Counter,
        unit: "{attempt}",
        labels: &[
            open(NAME),
            closed(
                OUTCOME,
                &[
                    "success",
                    "not_retryable",
                    "retried",
                    "exhausted",
                    "budget_exhausted",
                    "deadline",
                    "not_cloneable",
                ],
            ),
        ],
        description: "Attempts through a retry layer, by what followed: retried, or how the call ended.",
    },
    Metric {
        name: BULKHEAD_REJECTED,
        otel_name: "bulkhead.rejected",
        kind: Kind::Counter,
        unit: "{call}",
        labels: &[open(NAME)],
        description: "Calls a bulkhead rejected because no permit was free within its wait.",
    },
    Metric {
        name: ADAPTIVE_LIMIT_LIMIT,
        otel_name: "adaptive_limit.limit",
        kind: Kind::Gauge,
        unit: "{call}",
        labels: &[open(NAME)],
        description: "Concurrent calls an adaptive concurrency limit admits, as its algorithm last set it.",
    },
    Metric {
        name: ADAPTIVE_LIMIT_IN_FLIGHT,
        otel_name: "adaptive_limit.in_flight",
        kind: Kind::Gauge,
        unit: "{call}",
        labels: &[open(NAME)],
        description: "Calls in flight under an adaptive concurrency limit, as of its last finished call.",
    },
    Metric {
        name: ADAPTIVE_LIMIT_REJECTED,
        otel_name: "adaptive_limit.rejected",
        kind: Kind::Counter,
        unit: "{call}",
        labels: &[open(NAME)],
        description: "Calls an adaptive concurrency limit shed because its limit was reached.",
    },
    Metric {
        name: RATE_LIMIT_REJECTED,
        otel_name: "rate_limit.rejected",
        kind: Kind::Counter,
        unit: "{call}",
        labels: &[open(NAME)],
        description: "Calls a rate limiter rejected.",
    },
    Metric {
        name: OUTBOX_PENDING,
        otel_name: "outbox.pending",
        kind: Kind::Gauge,
        unit: "{message}",
        labels: &[],
        description: "Outbox messages not yet published.",
    },
    Metric {
        name: OUTBOX_OLDEST_PENDING_AGE,
        otel_name: "outbox.oldest_pending_age",
        kind: Kind::Gauge,
        unit: "s",
        labels: &[],
        description: "Age of the oldest unpublished outbox message.",
    },
    Metric {
        name: OUTBOX_PUBLISH_LATENCY,
        otel_name: "outbox.publish_latency",
        kind: Kind::Histogram,
        unit: "s",
        labels: &[],
        description: "Time from outbox insert to broker confirm.",
    },
    Metric {
        name: OUTBOX_RELAY_ERRORS,
        otel_name: "outbox.relay_errors",
        kind: Kind::Counter,
        unit: "{error}",
        labels: &[closed(ERROR_TYPE, &["transient", "message", "database"])],
        description: "Errors of the outbox relay: transient (broker unavailable, publish timeout), message (a row failed) or database.",
    },
    Metric {
        name: OUTBOX_PARKED,
        otel_name: "outbox.parked",
        kind: Kind::Gauge,
        unit: "{message}",
        labels: &[],
        description: "Outbox rows parked and waiting for an operator.",
    },
    Metric {
        name: OUTBOX_PARKED_MESSAGES,
        otel_name: "outbox.parked_messages",
        kind: Kind::Counter,
        unit: "{message}",
        labels: &[],
        description: "Outbox rows parked after repeated non-transient failures.",
    },
    Metric {
        name: OUTBOX_PUBLISHED,
        otel_name: "outbox.published",
        kind: Kind::Counter,
        unit: "{message}",
        labels: &[],
        description: "Outbox rows the broker confirmed.",
    },
    Metric {
        name: OUTBOX_UNROUTABLE,
        otel_name: "outbox.unroutable",
        kind: Kind::Counter,
        unit: "{message}",
        labels: &[],
        description: "Outbox rows confirmed but routed to no queue (also counted as published).",
    },
    Metric {
        name: INBOX_DUPLICATES,
        otel_name: "inbox.duplicates",
        kind: Kind::Counter,
        unit: "{message}",
        labels: &[open(MESSAGING_DESTINATION_NAME)],
        description: "Incoming messages skipped because the inbox had seen them.",
    },
    Metric {
        name: INBOX_PROCESSED,
        otel_name: "inbox.processed",
        kind: Kind::Counter,
        unit: "{message}",
        labels: &[open(MESSAGING_DESTINATION_NAME)],
        description: "Incoming messages an inbox processed and committed.",
    },
    Metric {
        name: INBOX_TRANSACTIONS,
        otel_name: "inbox.transactions",
        kind: Kind::Counter,
        unit: "{transaction}",
        labels: &[open(MESSAGING_DESTINATION_NAME)],
        description: "Transactions an inbox committed (a group commit's batches count once each).",
    },
    Metric {
        name: OTEL_SPANS_DROPPED,
        otel_name: "otel.spans.dropped",
        kind: Kind::Counter,
        unit: "{span}",
        labels: &[closed(REASON, &["queue_full", "export_failed"])],
        description: "Spans dropped before export (queue full or export failed).",
    },
    Metric {
        name: LOG_LINES_DROPPED,
        otel_name: "log.lines.dropped",
        kind: Kind::Counter,
        unit: "{line}",
        labels: &[],
        description: "Log lines dropped because the log writer's buffer was full or its output failed.",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    /// The Prometheus name of an OpenTelemetry-style metric name and unit, by the rules above.
    /// The catalogue's names are written out; this checks them.
    fn prometheus_name(otel_name: &str, unit: &str, kind: Kind) -> String {
        let mut name = otel_name.replace('.', "_");
        match unit {
            "s" => name.push_str("_seconds"),
            "By" => name.push_str("_bytes"),
            _ => {}
        }
        if kind == Kind::Counter {
            name.push_str("_total");
        }
        name
    }

    #[test]
    fn every_name_is_derived_from_its_otel_name_and_unit() {
        for m in ALL {
            assert_eq!(
                m.name,
                prometheus_name(m.otel_name, m.unit, m.kind),
                "{}",
                m.otel_name
            );
        }
    }

    #[test]
    fn names_are_unique_and_prometheus_safe() {
        let mut seen = std::collections::HashSet::new();
        for m in ALL {
            assert!(seen.insert(m.name), "{} twice", m.name);
            assert!(
                m.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{}",
                m.name
            );
            // No family collides with another's derived series (`x` gauge vs `x_total` counter).
            let family = m.name.strip_suffix("_total").unwrap_or(m.name);
            for other in ALL.iter().filter(|o| o.name != m.name) {
                for suffix in ["", "_total", "_bucket", "_sum", "_count"] {
                    assert_ne!(format!("{family}{suffix}"), other.name, "{}", m.name);
                }
            }
        }
        assert_eq!(ALL.len(), 35);
    }

    /// What a debugging recorder holds: (name, sorted labels) -> value as text.
    fn recorded(
        snapshotter: &metrics_util::debugging::Snapshotter,
    ) -> std::collections::BTreeMap<(String, Vec<(String, String)>), String> {
        use metrics_util::debugging::DebugValue;
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let (_, key) = key.into_parts();
                let mut labels: Vec<_> = key
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect();
                labels.sort();
                let value = match value {
                    DebugValue::Counter(n) => n.to_string(),
                    DebugValue::Gauge(g) => g.into_inner().to_string(),
                    DebugValue::Histogram(h) => format!("{} observations", h.len()),
                };
                ((key.name().to_owned(), labels), value)
            })
            .collect()
    }

    #[test]
    fn preregister_expands_closed_labels_and_takes_open_ones_from_the_caller() {
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            preregister(CIRCUIT_BREAKER_CALLS, &[(labels::NAME, "db")]);
            preregister(OUTBOX_RELAY_ERRORS, &[]);
            preregister(OUTBOX_PUBLISHED, &[]);
            preregister(HTTP_SERVER_ACTIVE_REQUESTS, &[]);
            preregister(
                MESSAGING_PROCESS_DURATION,
                &[(labels::MESSAGING_DESTINATION_NAME, "orders")],
            );
            // A closed label may be fixed too: only that value is registered.
            preregister(
                RETRY_ATTEMPTS,
                &[(labels::NAME, "r"), (labels::OUTCOME, "exhausted")],
            );
        });
        let got = recorded(&snapshotter);
        let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        for outcome in [
            "success",
            "failure",
            "slow_success",
            "slow_failure",
            "not_permitted",
        ] {
            let key = (
                CIRCUIT_BREAKER_CALLS.to_owned(),
                vec![pair("name", "db"), pair("outcome", outcome)],
            );
            assert_eq!(got.get(&key).map(String::as_str), Some("0"), "{outcome}");
        }
        for error in ["transient", "message", "database"] {
            let key = (
                OUTBOX_RELAY_ERRORS.to_owned(),
                vec![pair("error.type", error)],
            );
            assert_eq!(got.get(&key).map(String::as_str), Some("0"), "{error}");
        }
        assert_eq!(got[&(OUTBOX_PUBLISHED.to_owned(), vec![])], "0");
        for method in SERVER_METHODS {
            let key = (
                HTTP_SERVER_ACTIVE_REQUESTS.to_owned(),
                vec![pair("http.request.method", method)],
            );
            assert_eq!(got.get(&key).map(String::as_str), Some("0"), "{method}");
        }
        for outcome in ["ack", "retry", "reject"] {
            let key = (
                MESSAGING_PROCESS_DURATION.to_owned(),
                vec![
                    pair("messaging.destination.name", "orders"),
                    pair("outcome", outcome),
                ],
            );
            assert_eq!(
                got.get(&key).map(String::as_str),
                Some("0 observations"),
                "{outcome}"
            );
        }
        assert_eq!(
            got[&(
                RETRY_ATTEMPTS.to_owned(),
                vec![pair("name", "r"), pair("outcome", "exhausted")]
            )],
            "0"
        );
        assert_eq!(
            got.len(),
            5 + 3 + 1 + SERVER_METHODS.len() + 3 + 1,
            "{got:?}"
        );
    }

    #[test]
    fn preregister_keeps_what_was_recorded() {
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            metrics::counter!(OUTBOX_PUBLISHED).increment(3);
            metrics::gauge!(HTTP_SERVER_ACTIVE_REQUESTS, labels::HTTP_REQUEST_METHOD => "GET")
                .set(2.0);
            preregister(OUTBOX_PUBLISHED, &[]);
            preregister(HTTP_SERVER_ACTIVE_REQUESTS, &[]);
        });
        let got = recorded(&snapshotter);
        assert_eq!(got[&(OUTBOX_PUBLISHED.to_owned(), vec![])], "3");
        let get = |method: &str| {
            got[&(
                HTTP_SERVER_ACTIVE_REQUESTS.to_owned(),
                vec![("http.request.method".to_owned(), method.to_owned())],
            )]
                .clone()
        };
        assert_eq!(get("GET"), "2");
        assert_eq!(get("POST"), "0");
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "the open label name needs a value")]
    fn preregister_wants_every_open_label() {
        preregister(CIRCUIT_BREAKER_CALLS, &[]);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "has no label queue")]
    fn preregister_refuses_labels_the_metric_does_not_have() {
        preregister(OUTBOX_PUBLISHED, &[("queue", "q")]);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "outcome=maybe is not catalogued")]
    fn preregister_refuses_values_outside_a_closed_set() {
        preregister(
            RETRY_ATTEMPTS,
            &[(labels::NAME, "r"), (labels::OUTCOME, "maybe")],
        );
    }

    #[test]
    fn lookups() {
        assert_eq!(find(OUTBOX_PARKED).unwrap().kind, Kind::Gauge);
        assert!(find("outbox.parked").is_none());
        let calls = find(CIRCUIT_BREAKER_CALLS).unwrap();
        assert!(calls.label(labels::NAME).unwrap().values.is_none());
        assert!(calls.label(labels::REASON).is_none());
    }
}
