//! Shared test helpers: an OTLP/HTTP trace receiver started inside the test.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A collector on 127.0.0.1:<ephemeral>: decodes every `POST /v1/traces` and
/// `POST /v1/metrics` and forwards it.
pub struct Receiver {
    pub addr: SocketAddr,
    pub requests: mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
    pub metrics: mpsc::UnboundedReceiver<ExportMetricsServiceRequest>,
    _server: Background,
}

/// Decodes `bytes` as a `T` and sends it on `tx`: 200, or 400 if it does not decode.
fn forward<T: Message + Default>(bytes: Bytes, tx: &mpsc::UnboundedSender<T>) -> StatusCode {
    match T::decode(bytes) {
        Ok(decoded) => {
            let _ = tx.send(decoded);
            StatusCode::OK
        }
        Err(_) => StatusCode::BAD_REQUEST,
    }
}

impl Receiver {
    pub async fn start() -> Self {
        let (tx, requests) = mpsc::unbounded_channel();
        let (metrics_tx, metrics) = mpsc::unbounded_channel();
        let (addr, server) = http1_server(move |req: Request<Incoming>| {
            let (tx, metrics_tx) = (tx.clone(), metrics_tx.clone());
            async move {
                let ok = req.method() == hyper::Method::POST
                    && req.headers()["content-type"] == "application/x-protobuf";
                let path = req.uri().path().to_owned();
                let body = req.into_body().collect().await.map(|b| b.to_bytes());
                let status = match body {
                    Ok(bytes) if ok && path == "/v1/traces" => forward(bytes, &tx),
                    Ok(bytes) if ok && path == "/v1/metrics" => forward(bytes, &metrics_tx),
                    _ => StatusCode::NOT_FOUND,
                };
                let mut resp = Response::new(Full::new(Bytes::new()));
                *resp.status_mut() = status;
                resp.headers_mut()
                    .insert("content-type", "application/x-protobuf".parse().unwrap());
                resp
            }
        })
        .await;
        Self {
            addr,
            requests,
            metrics,
            _server: server,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far.
    pub fn drain(&mut self) -> Vec<ExportTraceServiceRequest> {
        drain(&mut self.requests)
    }
}

/// Everything `rx` holds so far.
pub fn drain<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> Vec<T> {
    let mut out = Vec::new();
    while let Ok(item) = rx.try_recv() {
        out.push(item);
    }
    out
}

/// Shuts `telemetry` down with `deadline`, which it must meet (give or take 5 s). A failed last
/// export may be reported (`ErrorKind::Shutdown`); any other error fails the test.
pub async fn shut_down(telemetry: chassis_observability::Telemetry, deadline: std::time::Duration) {
    let result = tokio::time::timeout(
        deadline + std::time::Duration::from_secs(5),
        telemetry.shutdown(deadline),
    )
    .await
    .expect("shutdown honours its deadline");
    if let Err(e) = result {
        assert!(
            matches!(e.kind(), chassis_observability::ErrorKind::Shutdown { .. }),
            "{e}"
        );
    }
}

/// The spans of all requests, with their resource attributes.
pub fn spans(requests: &[ExportTraceServiceRequest]) -> Vec<(Vec<KeyValue>, Span)> {
    let mut out = Vec::new();
    for req in requests {
        for rs in &req.resource_spans {
            let resource = rs
                .resource
                .clone()
                .map(|r| r.attributes)
                .unwrap_or_default();
            for ss in &rs.scope_spans {
                for span in &ss.spans {
                    out.push((resource.clone(), span.clone()));
                }
            }
        }
    }
    out
}

/// The string (or int/bool, as text) value of attribute `key`.
pub fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    let kv = attrs.iter().find(|kv| kv.key == key)?;
    match kv.value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        any_value::Value::DoubleValue(d) => Some(d.to_string()),
        other => Some(format!(
            "{:?}",
            AnyValue {
                value: Some(other.clone())
            }
        )),
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A background task (a test server's accept loop) aborted when dropped, so a server lives as
/// long as the value that owns it.
pub struct Background(pub tokio::task::JoinHandle<()>);

impl Drop for Background {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An HTTP/1.1 server on 127.0.0.1:<ephemeral>, each request answered by `handle`; it stops
/// when the returned [`Background`] is dropped.
pub async fn http1_server<F, Fut>(handle: F) -> (SocketAddr, Background)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handle = handle.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let answer = handle(req);
                    async move { Ok::<_, Infallible>(answer.await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, Background(task))
}

/// Runs the ignored `env_child` test of this binary in a child process with the variables
/// `vars` and none of the parent's variables for which `cleared` is true (so the child sees
/// only what the case sets).
pub async fn run_env_child<K, V>(
    cleared: impl Fn(&str) -> bool,
    vars: impl IntoIterator<Item = (K, V)>,
) -> std::process::Output
where
    K: AsRef<std::ffi::OsStr>,
    V: AsRef<std::ffi::OsStr>,
{
    let mut cmd = tokio::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "env_child",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    for (k, _) in std::env::vars() {
        if cleared(&k) {
            cmd.env_remove(k);
        }
    }
    cmd.envs(vars);
    cmd.output().await.unwrap()
}

/// Runs the `env_child` case `case` (named to the child in the variable `case_var`) with
/// `vars` and no other `OTEL_*` variable, and asserts that it passed.
pub async fn run_otel_child(case_var: &str, case: &str, vars: &[(&str, &str)]) {
    let case_var = [(case_var, case)];
    let vars = case_var.iter().chain(vars).copied();
    let out = run_env_child(|k| k.starts_with("OTEL_"), vars).await;
    assert_child_passed(case, &out);
}

/// Asserts that the child process of case `case` exited successfully having run its test.
pub fn assert_child_passed(case: &str, out: &std::process::Output) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{case}: {text}");
    assert!(text.contains("1 passed"), "the child ran {case}: {text}");
}

/// Builds `builder`, the environment ignored, with its log lines captured (written directly,
/// one line at a time).
pub fn captured(
    builder: chassis_observability::TelemetryBuilder,
) -> (
    tracing::Dispatch,
    chassis_observability::Telemetry,
    chassis_observability::logging::CaptureWriter,
) {
    let logs = chassis_observability::logging::CaptureWriter::new();
    let (dispatch, telemetry) = builder
        .ignore_env()
        .make_writer(logs.clone())
        .build()
        .unwrap();
    (dispatch, telemetry, logs)
}

/// The error building `builder` fails with, the environment ignored and its log lines
/// captured (as [`captured`] builds it).
pub fn build_error(
    builder: chassis_observability::TelemetryBuilder,
) -> chassis_observability::Error {
    builder
        .ignore_env()
        .make_writer(chassis_observability::logging::CaptureWriter::new())
        .build()
        .unwrap_err()
}

/// A message-header map like chassis-messaging's AMQP headers: a carrier of its own for
/// `inject_context` and `extract_context`.
#[derive(Default)]
pub struct MessageHeaders(pub std::collections::BTreeMap<String, String>);

impl chassis_observability::propagation::Injector for MessageHeaders {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

impl chassis_observability::propagation::Extractor for MessageHeaders {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// Asserts the resource attributes `want` on the first resource of `request`.
pub fn assert_resource(request: &ExportMetricsServiceRequest, want: &[(&str, &str)]) {
    let resource = request.resource_metrics[0].resource.as_ref().unwrap();
    for (key, value) in want {
        assert_eq!(
            attr(&resource.attributes, key).as_deref(),
            Some(*value),
            "{key}"
        );
    }
}

/// Metric `name` of `request` (of its first resource and scope), if it is there.
pub fn find_metric<'a>(
    request: &'a ExportMetricsServiceRequest,
    name: &str,
) -> Option<&'a opentelemetry_proto::tonic::metrics::v1::Metric> {
    request.resource_metrics[0].scope_metrics[0]
        .metrics
        .iter()
        .find(|m| m.name == name)
}

/// The value of counter `name` in `request`, if it is there.
pub fn counter(request: &ExportMetricsServiceRequest, name: &str) -> Option<f64> {
    let metric = find_metric(request, name)?;
    let Some(opentelemetry_proto::tonic::metrics::v1::metric::Data::Sum(sum)) = &metric.data else {
        panic!("{name} is not a sum: {metric:?}")
    };
    assert!(sum.is_monotonic);
    match sum.data_points[0].value {
        Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsDouble(v)) => {
            Some(v)
        }
        other => panic!("{other:?}"),
    }
}
