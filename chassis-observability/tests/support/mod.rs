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
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, requests) = mpsc::unbounded_channel();
        let (metrics_tx, metrics) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let tx = tx.clone();
                let metrics_tx = metrics_tx.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let tx = tx.clone();
                        let metrics_tx = metrics_tx.clone();
                        async move {
                            let ok = req.method() == hyper::Method::POST
                                && req.headers()["content-type"] == "application/x-protobuf";
                            let path = req.uri().path().to_owned();
                            let body = req.into_body().collect().await.map(|b| b.to_bytes());
                            let status = match body {
                                Ok(bytes) if ok && path == "/v1/traces" => {
                                    match ExportTraceServiceRequest::decode(bytes) {
                                        Ok(decoded) => {
                                            let _ = tx.send(decoded);
                                            StatusCode::OK
                                        }
                                        Err(_) => StatusCode::BAD_REQUEST,
                                    }
                                }
                                Ok(bytes) if ok && path == "/v1/metrics" => {
                                    match ExportMetricsServiceRequest::decode(bytes) {
                                        Ok(decoded) => {
                                            let _ = metrics_tx.send(decoded);
                                            StatusCode::OK
                                        }
                                        Err(_) => StatusCode::BAD_REQUEST,
                                    }
                                }
                                _ => StatusCode::NOT_FOUND,
                            };
                            let mut resp = Response::new(Full::new(Bytes::new()));
                            *resp.status_mut() = status;
                            resp.headers_mut()
                                .insert("content-type", "application/x-protobuf".parse().unwrap());
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            requests,
            metrics,
            task,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far.
    pub fn drain(&mut self) -> Vec<ExportTraceServiceRequest> {
        let mut out = Vec::new();
        while let Ok(r) = self.requests.try_recv() {
            out.push(r);
        }
        out
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
