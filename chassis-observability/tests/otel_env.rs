//! The OTLP exporter variables of the OpenTelemetry specification (headers, resource
//! attributes, protocol, timeout), generic and per signal, for both traces and the metrics
//! push, each checked by what a collector started inside the test receives: an OTLP/HTTP
//! receiver on hyper, an OTLP/gRPC one (opentelemetry-proto's generated `TraceService` and
//! `MetricsService` servers on hyper's HTTP/2), and a port that accepts and never answers.
//! Each case runs in a child process of this binary with only its own `OTEL_*` variables.
#![cfg(feature = "grpc")]

mod support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chassis_core::ServiceInfo;
use chassis_observability::Telemetry;
use chassis_observability::logging::CaptureWriter;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;
use support::{Background, attr, counter, http1_server, run_otel_child};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tonic::codegen::Service as _;

/// One export as a collector saw it: the signal, its headers (gRPC metadata included) and
/// the resource attributes it carried.
#[derive(Debug)]
struct Export {
    signal: Signal,
    headers: BTreeMap<String, String>,
    resource: Vec<KeyValue>,
    /// The counter `child_total` of a metrics export; the span names of a trace export.
    child_total: Option<f64>,
    spans: Vec<String>,
    /// Received by the gRPC collector (else by the HTTP one).
    grpc: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Traces,
    Metrics,
}

fn headers(map: &http::HeaderMap) -> BTreeMap<String, String> {
    map.iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect()
}

fn trace_export(headers: BTreeMap<String, String>, request: &ExportTraceServiceRequest) -> Export {
    let resource = request.resource_spans[0]
        .resource
        .as_ref()
        .map(|r| r.attributes.clone())
        .unwrap_or_default();
    let spans = request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .map(|s| s.name.clone())
        .collect();
    Export {
        signal: Signal::Traces,
        headers,
        resource,
        child_total: None,
        spans,
        grpc: false,
    }
}

fn metrics_export(
    headers: BTreeMap<String, String>,
    request: &ExportMetricsServiceRequest,
) -> Export {
    let resource = request.resource_metrics[0]
        .resource
        .as_ref()
        .map(|r| r.attributes.clone())
        .unwrap_or_default();
    Export {
        signal: Signal::Metrics,
        headers,
        resource,
        child_total: counter(request, "child_total"),
        spans: Vec::new(),
        grpc: false,
    }
}

/// A collector on 127.0.0.1:<ephemeral>, speaking OTLP/HTTP or OTLP/gRPC.
struct Collector {
    addr: SocketAddr,
    exports: mpsc::UnboundedReceiver<Export>,
    _server: Background,
}

impl Collector {
    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every export received so far.
    fn drain(&mut self) -> Vec<Export> {
        support::drain(&mut self.exports)
    }

    /// OTLP/HTTP (protobuf): `POST /v1/traces` and `POST /v1/metrics`.
    async fn http() -> Self {
        let (tx, exports) = mpsc::unbounded_channel();
        let (addr, server) = http1_server(move |req: Request<Incoming>| {
            let tx = tx.clone();
            async move {
                let path = req.uri().path().to_owned();
                let headers = headers(req.headers());
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let export = match path.as_str() {
                    "/v1/traces" => ExportTraceServiceRequest::decode(body)
                        .ok()
                        .map(|r| trace_export(headers, &r)),
                    "/v1/metrics" => ExportMetricsServiceRequest::decode(body)
                        .ok()
                        .map(|r| metrics_export(headers, &r)),
                    _ => None,
                };
                let mut resp = Response::new(Full::new(Bytes::new()));
                match export {
                    Some(export) => {
                        let _ = tx.send(export);
                        resp.headers_mut()
                            .insert("content-type", "application/x-protobuf".parse().unwrap());
                    }
                    None => *resp.status_mut() = http::StatusCode::NOT_FOUND,
                }
                resp
            }
        })
        .await;
        Self {
            addr,
            exports,
            _server: server,
        }
    }

    /// OTLP/gRPC: both services on one HTTP/2 port, told apart by the request path.
    async fn grpc() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, exports) = mpsc::unbounded_channel();
        let traces = TraceServiceServer::new(Grpc(tx.clone()));
        let metrics = MetricsServiceServer::new(Grpc(tx));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (traces, metrics) = (traces.clone(), metrics.clone());
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    type Answer = Pin<
                        Box<
                            dyn Future<Output = Result<Response<tonic::body::Body>, Infallible>>
                                + Send,
                        >,
                    >;
                    let answer: Answer = if req
                        .uri()
                        .path()
                        .starts_with("/opentelemetry.proto.collector.trace.v1.TraceService/")
                    {
                        Box::pin(traces.clone().call(req))
                    } else {
                        Box::pin(metrics.clone().call(req))
                    };
                    answer
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            exports,
            _server: Background(task),
        }
    }
}

#[derive(Clone)]
struct Grpc(mpsc::UnboundedSender<Export>);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let (metadata, _, request) = request.into_parts();
        let export = trace_export(headers(&metadata.into_headers()), &request);
        let _ = self.0.send(Export {
            grpc: true,
            ..export
        });
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let (metadata, _, request) = request.into_parts();
        let export = metrics_export(headers(&metadata.into_headers()), &request);
        let _ = self.0.send(Export {
            grpc: true,
            ..export
        });
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// A port that accepts connections and never answers; its URL.
async fn silent_endpoint() -> (String, Background) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            open.push(s);
        }
    });
    (format!("http://{addr}"), Background(task))
}

/// Runs the child `case` with `vars` (and no other `OTEL_*` variable) and asserts it passed.
async fn run_child(case: &str, vars: &[(&str, &str)]) {
    run_otel_child("CHASSIS_OTEL_ENV_CASE", case, vars).await;
}

/// The exports of one child that sent a span and the counter: one of each signal at least,
/// the span and the counter in them; returned by signal.
fn by_signal(exports: Vec<Export>) -> (Vec<Export>, Vec<Export>) {
    let (traces, metrics): (Vec<_>, Vec<_>) = exports
        .into_iter()
        .partition(|e| e.signal == Signal::Traces);
    assert!(
        traces
            .iter()
            .any(|e| e.spans.contains(&"env-span".to_owned())),
        "no trace export with the child's span: {traces:?}"
    );
    assert!(
        metrics.iter().any(|e| e.child_total == Some(1.0)),
        "no metrics export with the child's counter: {metrics:?}"
    );
    (traces, metrics)
}

/// Runs the child that exports both signals to `collector` with `vars` (besides [`BOTH`] and
/// the endpoint); what `collector` received, by signal.
async fn export(collector: &mut Collector, vars: &[(&str, &str)]) -> (Vec<Export>, Vec<Export>) {
    let endpoint = collector.endpoint();
    let mut vars = with(vars);
    vars.push(("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint));
    run_child("export", &vars).await;
    by_signal(collector.drain())
}

/// The variables every case that exports both signals sets: the metrics push on (pushed at
/// shutdown, the interval too long to push before).
const BOTH: [(&str, &str); 2] = [
    ("OTEL_METRICS_EXPORTER", "otlp"),
    ("OTEL_METRIC_EXPORT_INTERVAL", "3600000"),
];

fn with<'a>(vars: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    BOTH.iter().chain(vars).copied().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_generic_and_per_signal_reach_the_collector() {
    let mut collector = Collector::http().await;

    // OTEL_EXPORTER_OTLP_HEADERS: on both signals, percent-decoded.
    let (traces, metrics) = export(
        &mut collector,
        &[(
            "OTEL_EXPORTER_OTLP_HEADERS",
            "x-tenant=shop%20eu,authorization=Bearer%20abc",
        )],
    )
    .await;
    for e in traces.iter().chain(&metrics) {
        assert_eq!(e.headers["x-tenant"], "shop eu", "{e:?}");
        assert_eq!(e.headers["authorization"], "Bearer abc", "{e:?}");
    }

    // OTEL_EXPORTER_OTLP_{TRACES,METRICS}_HEADERS: each signal its own, over the generic one.
    let (traces, metrics) = export(
        &mut collector,
        &[
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-generic=1"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-signal=traces"),
            ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "x-signal=metrics"),
        ],
    )
    .await;
    for (exports, signal) in [(&traces, "traces"), (&metrics, "metrics")] {
        for e in exports {
            assert_eq!(e.headers["x-signal"], signal, "{e:?}");
            assert!(!e.headers.contains_key("x-generic"), "{e:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_attributes_describe_both_signals() {
    let mut collector = Collector::http().await;
    let (traces, metrics) = export(
        &mut collector,
        &[(
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment.name=staging,k8s.namespace.name=shop%20eu,service.name=from-attributes",
        )],
    )
    .await;
    for e in traces.iter().chain(&metrics) {
        let a = |key| attr(&e.resource, key);
        assert_eq!(a("deployment.environment.name").as_deref(), Some("staging"));
        assert_eq!(a("k8s.namespace.name").as_deref(), Some("shop eu"));
        // Over the name given in code; OTEL_SERVICE_NAME would win over both.
        assert_eq!(a("service.name").as_deref(), Some("from-attributes"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_generic_and_per_signal_selects_grpc_or_http() {
    let mut grpc = Collector::grpc().await;
    let mut http = Collector::http().await;

    // OTEL_EXPORTER_OTLP_PROTOCOL=grpc: both signals over gRPC, to the endpoint as is, with
    // the headers as metadata.
    let (traces, metrics) = export(
        &mut grpc,
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=grpc"),
        ],
    )
    .await;
    for e in traces.iter().chain(&metrics) {
        assert!(e.grpc, "{e:?}");
        assert_eq!(e.headers["x-tenant"], "grpc", "{e:?}");
    }
    assert!(http.drain().is_empty());

    // Per signal, over the generic one: both signals on the protocol the generic variable does
    // not name, then each on its own.
    let (grpc_url, http_url) = (grpc.endpoint(), http.endpoint());
    for (generic, traces_protocol, metrics_protocol) in [
        ("http/protobuf", "grpc", "grpc"),
        ("grpc", "http/protobuf", "http/protobuf"),
        ("grpc", "grpc", "http/protobuf"),
    ] {
        let url = |protocol: &str, path: &str| match protocol {
            "grpc" => grpc_url.clone(),
            _ => format!("{http_url}{path}"),
        };
        let traces_url = url(traces_protocol, "/v1/traces");
        let metrics_url = url(metrics_protocol, "/v1/metrics");
        run_child(
            "export",
            &with(&[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", generic),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", traces_protocol),
                ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", metrics_protocol),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &traces_url),
                ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", &metrics_url),
            ]),
        )
        .await;
        let mut exports = grpc.drain();
        exports.extend(http.drain());
        let (traces, metrics) = by_signal(exports);

        assert!(
            traces.iter().all(|e| e.grpc == (traces_protocol == "grpc")),
            "traces over {traces_protocol}: {traces:?}"
        );
        assert!(
            metrics
                .iter()
                .all(|e| e.grpc == (metrics_protocol == "grpc")),
            "metrics over {metrics_protocol}: {metrics:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_generic_and_per_signal_bounds_one_export() {
    let (silent, _held) = silent_endpoint().await;
    // The generic timeout, then each signal's own over a generic one far too long for the
    // child's checks (which want the export given up within 2 s), over both protocols.
    for protocol in ["http/protobuf", "grpc"] {
        for vars in [
            &[("OTEL_EXPORTER_OTLP_TIMEOUT", "300")][..],
            &[
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "60000"),
                ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "300"),
                ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "300"),
            ],
        ] {
            let mut all = vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", silent.as_str()),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ];
            all.extend_from_slice(vars);
            run_child("timeout", &with(&all)).await;
        }
    }
}

/// Not a test of its own: the child process of the tests above, which set its environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the tests of this file in a child process"]
async fn env_child() {
    let case = std::env::var("CHASSIS_OTEL_ENV_CASE").expect("CHASSIS_OTEL_ENV_CASE");
    let (dispatch, guard) = Telemetry::builder(ServiceInfo::new("from-code", "1"))
        .make_writer(CaptureWriter::new())
        .build()
        .unwrap();
    assert!(guard.is_exporting());
    tracing::dispatcher::with_default(&dispatch, || {
        tracing::info_span!("env-span").in_scope(|| {});
    });
    metrics::with_local_recorder(guard.metrics_recorder().unwrap(), || {
        metrics::counter!("child_total").increment(1);
    });
    match case.as_str() {
        // Both signals exported at shutdown: the queued span, the last metrics push.
        "export" => guard.shutdown(Duration::from_secs(5)).await.unwrap(),
        // Against a collector that never answers: each export gives up after 300 ms.
        "timeout" => {
            let started = Instant::now();
            let err = guard
                .metrics_exporter()
                .expect("push enabled")
                .export()
                .await
                .unwrap_err();
            let elapsed = started.elapsed();
            assert!(
                elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(2),
                "metrics push given up after {elapsed:?}: {err}"
            );

            let started = Instant::now();
            let _ = guard.force_flush(Duration::from_secs(10)).await;
            let elapsed = started.elapsed();
            assert!(elapsed < Duration::from_secs(2), "span export: {elapsed:?}");
            let stats = guard.export_stats();
            assert_eq!(stats.exported(), 0);
            assert_eq!(stats.dropped(), 1, "the span lost to the timed-out export");
        }
        other => panic!("unknown case {other}"),
    }
}
