//! One attempt of a client call: a client span (OpenTelemetry HTTP client conventions), trace
//! context and service token injected into the request, and the
//! `http_client_request_duration_seconds` histogram.
//!
//! It sits inside the retry and breaker layers, so every attempt — each a real request on the
//! wire — gets its own span (with `http.request.resend_count` on retries), its own
//! `traceparent` and its own measurement, as the conventions ask.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use chassis_observability::metrics::names;
use chassis_observability::propagation::{HeaderInjector, inject_current};
use http::header::AUTHORIZATION;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;
use tracing::Span;

use crate::auth::ServiceTokenSource;
use chassis_core::BoxError;

/// Counts the attempts of one logical call; shared by the request's copies (it travels in the
/// request extensions, which the retry layer copies).
#[derive(Clone, Debug, Default)]
pub(crate) struct AttemptCounter(pub(crate) Arc<AtomicU32>);

impl AttemptCounter {
    pub(crate) fn get(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Clone, Debug)]
pub(crate) struct InstrumentLayer {
    pub(crate) downstream: Arc<str>,
    pub(crate) token: Option<ServiceTokenSource>,
}

chassis_core::__impl_layer!(InstrumentLayer => Instrument { downstream, token });

#[derive(Clone, Debug)]
pub(crate) struct Instrument<S> {
    inner: S,
    downstream: Arc<str>,
    token: Option<ServiceTokenSource>,
}

impl<S, B, RB> Service<Request<B>> for Instrument<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = AttemptFuture<S::Future>;

    chassis_core::__forward_poll_ready!(into);

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let attempt = req
            .extensions()
            .get::<AttemptCounter>()
            .map_or(0, |c| c.0.fetch_add(1, Ordering::Relaxed));
        let method = req.method().as_str().to_owned();
        let host = req.uri().host().unwrap_or_default().to_owned();
        let port = req
            .uri()
            .port_u16()
            .unwrap_or(if req.uri().scheme_str() == Some("https") {
                443
            } else {
                80
            });
        let span = tracing::info_span!(
            "HTTP client request",
            otel.name = %method,
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            http.request.method = %method,
            server.address = %host,
            server.port = port,
            url.full = %url_full(req.uri(), &host, port),
            peer.service = %self.downstream,
            http.request.resend_count = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        if attempt > 0 {
            span.record("http.request.resend_count", attempt);
        }
        span.in_scope(|| inject_current(&mut HeaderInjector(req.headers_mut())));

        if let Some(source) = &self.token
            && !req.headers().contains_key(AUTHORIZATION)
        {
            match source.bearer_header() {
                Ok(value) => {
                    req.headers_mut().insert(AUTHORIZATION, value);
                }
                Err(err) => {
                    let _enter = span.enter();
                    tracing::error!(reason = %err, "cannot sign service token");
                    return AttemptFuture {
                        state: State::Failed {
                            error: Some(Box::new(err)),
                        },
                        record: None,
                    };
                }
            }
        }
        let future = span.in_scope(|| self.inner.call(req));
        AttemptFuture {
            state: State::Inner { future },
            record: Some(Record {
                span,
                method,
                host,
                port,
                start: Instant::now(),
            }),
        }
    }
}

/// What an attempt records when it ends (or is dropped).
struct Record {
    span: Span,
    method: String,
    host: String,
    port: u16,
    start: Instant,
}

impl Record {
    fn finish(self, status: Option<u16>, error_type: Option<&str>) {
        let elapsed = self.start.elapsed().as_secs_f64();
        let mut labels = vec![
            (names::labels::HTTP_REQUEST_METHOD, self.method),
            (names::labels::SERVER_ADDRESS, self.host),
            (names::labels::SERVER_PORT, self.port.to_string()),
        ];
        if let Some(status) = status {
            labels.push((names::labels::HTTP_RESPONSE_STATUS_CODE, status.to_string()));
            self.span.record("http.response.status_code", status);
        }
        if let Some(error_type) = error_type {
            labels.push((names::labels::ERROR_TYPE, error_type.to_owned()));
            self.span.record("error.type", error_type);
            self.span.record("otel.status_code", "ERROR");
        }
        let labels: Vec<metrics::Label> = labels
            .into_iter()
            .map(|(k, v)| metrics::Label::new(k, v))
            .collect();
        metrics::histogram!(names::HTTP_CLIENT_REQUEST_DURATION, labels).record(elapsed);
    }
}

chassis_core::__debug_fields!(Record { method, host });

pin_project! {
    /// Response future of one attempt.
    pub(crate) struct AttemptFuture<F> {
        #[pin]
        state: State<F>,
        record: Option<Record>,
    }

    impl<F> PinnedDrop for AttemptFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before completion: the attempt timeout fired, or the caller gave up.
            if let Some(record) = this.project().record.take() {
                record.finish(None, Some("cancelled"));
            }
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Inner { #[pin] future: F },
        Failed { error: Option<BoxError> },
    }
}

impl<F, RB, E> Future for AttemptFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<RB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.state.project() {
            StateProj::Failed { error } => Poll::Ready(Err(error
                .take()
                .expect("AttemptFuture polled after completion"))),
            StateProj::Inner { future } => {
                let result = ready!(future.poll(cx)).map_err(Into::into);
                if let Some(record) = this.record.take() {
                    match &result {
                        Ok(response) => {
                            let status = response.status();
                            // Client spans: 4xx and 5xx are errors (OTel HTTP conventions).
                            let error_type =
                                (status.as_u16() >= 400).then(|| status.as_str().to_owned());
                            record.finish(Some(status.as_u16()), error_type.as_deref());
                        }
                        Err(err) => record.finish(None, Some(error_type(err))),
                    }
                }
                Poll::Ready(result)
            }
        }
    }
}

/// `url.full` without userinfo (credentials never reach spans).
fn url_full(uri: &http::Uri, host: &str, port: u16) -> String {
    let scheme = uri.scheme_str().unwrap_or("http");
    let path = uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    format!("{scheme}://{host}:{port}{path}")
}

/// A low-cardinality `error.type` for a transport error.
fn error_type(err: &BoxError) -> &'static str {
    if super::error::TlsFailure::find(err.as_ref()).is_some() {
        return "tls_error";
    }
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err.as_ref());
    while let Some(e) = current {
        if let Some(legacy) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
            return if legacy.is_connect() {
                "connect_error"
            } else {
                "transport_error"
            };
        }
        if e.downcast_ref::<crate::auth::AuthError>().is_some() {
            return "auth_error";
        }
        current = e.source();
    }
    "_OTHER"
}
