//! [`GrpcClient`] and its builder; see the [module docs](super).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use chassis_core::BoxError;
use chassis_core::resilience::policy::ResiliencePolicy;
use chassis_observability::propagation::{HeaderInjector, inject_current};
use http::header::AUTHORIZATION;
use http::{Request, Response};
use http_body_util::BodyExt as _;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tower::ServiceExt as _;
use tower::util::BoxCloneSyncService;
use tower_layer::Layer as _;
use tower_service::Service;

use super::policy::{
    AttemptBody, BufferedRequests, GrpcBreakerClassifier, GrpcRetryClassifier, IdempotentMethods,
    status_for_error,
};
use crate::auth::ServiceTokenSource;
use crate::error::{Error, ErrorKind};
use crate::grpc::deadline::{GRPC_TIMEOUT, grpc_timeout_value, parse_grpc_timeout};
use crate::grpc::metrics::{Call, observed, rpc_names};
#[cfg(feature = "tls")]
use crate::tls::client::ClientTlsConfig;
use chassis_core::metric_catalogue as names;
use tracing::Instrument as _;

/// The largest request message buffered for retries; a larger one fails with
/// `RESOURCE_EXHAUSTED` (as a server would refuse it). 4 MiB, tonic's default message limit.
const MAX_BUFFERED_REQUEST: usize = 4 << 20;

type Stack = BoxCloneSyncService<Request<AttemptBody>, Response<tonic::body::Body>, BoxError>;

/// A resilient gRPC channel to one downstream service; see the [module docs](super).
#[derive(Clone)]
pub struct GrpcClient {
    name: Arc<str>,
    stack: Stack,
    idempotent: IdempotentMethods,
}

impl std::fmt::Debug for GrpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcClient")
            .field("name", &self.name)
            .field("idempotent", &self.idempotent)
            .finish_non_exhaustive()
    }
}

impl GrpcClient {
    /// A builder for a client of the service `name` at `endpoint` (`http://host:port`, or
    /// `https://` with the `tls` feature).
    pub fn builder(name: impl Into<String>, endpoint: impl Into<String>) -> GrpcClientBuilder {
        GrpcClientBuilder {
            name: name.into(),
            endpoint: endpoint.into(),
            policy: ResiliencePolicy::new(),
            idempotent: IdempotentMethods::default(),
            retry_codes: vec![Code::Unavailable],
            connect_timeout: Duration::from_secs(5),
            token: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// The downstream service's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Settings of a [`GrpcClient`].
#[derive(Debug)]
pub struct GrpcClientBuilder {
    name: String,
    endpoint: String,
    policy: ResiliencePolicy,
    idempotent: IdempotentMethods,
    retry_codes: Vec<Code>,
    connect_timeout: Duration,
    token: Option<ServiceTokenSource>,
    #[cfg(feature = "tls")]
    tls: Option<ClientTlsConfig>,
}

impl GrpcClientBuilder {
    /// The resilience policy (timeout per attempt, retry, breaker, bulkhead, rate limit).
    /// Defaults to none of them.
    pub fn policy(mut self, policy: ResiliencePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Declares a method (`/pkg.Service/Method`) or every method of a service
    /// (`/pkg.Service/`) safe to call more than once, so the policy's retry applies to it.
    /// Defaults to none: without it no call is retried.
    pub fn idempotent(mut self, path: &str) -> Self {
        self.idempotent.insert(path);
        self
    }

    /// The status codes an idempotent call is retried on. Defaults to `UNAVAILABLE`.
    pub fn retry_codes(mut self, codes: &[Code]) -> Self {
        self.retry_codes = codes.to_vec();
        self
    }

    /// How long opening a connection may take. Defaults to 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Attaches a service token for the downstream to every attempt. Defaults to none.
    pub fn service_token(mut self, source: ServiceTokenSource) -> Self {
        self.token = Some(source);
        self
    }

    /// TLS for `https://` endpoints. Defaults to webpki roots (an `https://` endpoint without
    /// this setting gets [`ClientTlsConfig::new`]).
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls(mut self, tls: ClientTlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Validates the settings and builds the client. It connects lazily, on the first call.
    ///
    /// # Panics
    /// Outside a Tokio runtime: the channel spawns its connection task on the current one.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`] for an empty name, an endpoint that is not a URI or an
    /// invalid policy; [`ErrorKind::Tls`] when the TLS settings cannot be used.
    pub fn build(self) -> Result<GrpcClient, Error> {
        let invalid = |reason: String| Error::new(ErrorKind::InvalidConfig { reason });
        if self.name.is_empty() {
            return Err(invalid("a gRPC client needs a name".into()));
        }
        let endpoint = Endpoint::from_shared(self.endpoint.clone())
            .map_err(|e| invalid(format!("invalid endpoint {:?}: {e}", self.endpoint)))?
            .connect_timeout(self.connect_timeout);
        let channel = self.channel(endpoint)?;
        let mut policy = self.policy;
        if policy.name.is_none() {
            policy.name = Some(self.name.clone());
        }
        let layer = policy
            .build()
            .map_err(|e| invalid(format!("invalid resilience policy: {e}")))?;
        // The calls' URIs are paths only (the channel adds the origin): the host is known here.
        let host = self
            .endpoint
            .parse::<http::Uri>()
            .ok()
            .and_then(|uri| uri.host().map(Arc::from))
            .unwrap_or_else(|| Arc::from(""));
        let attempt = Attempt {
            channel,
            host,
            token: self.token,
            timeout: layer.attempt_timeout(),
        };
        let deadline_per_attempt = attempt.timeout.is_some();
        let layer = layer
            .with_retry_classifier(GrpcRetryClassifier {
                codes: self.retry_codes.into(),
                deadline_per_attempt,
            })
            .with_request_cloner(BufferedRequests)
            .with_breaker_classifier(GrpcBreakerClassifier);
        Ok(GrpcClient {
            name: self.name.into(),
            stack: BoxCloneSyncService::new(layer.layer(attempt)),
            idempotent: self.idempotent,
        })
    }

    #[cfg(feature = "tls")]
    fn channel(&self, endpoint: Endpoint) -> Result<Channel, Error> {
        if !self.endpoint.starts_with("https://") && self.tls.is_none() {
            return Ok(endpoint.connect_lazy());
        }
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.set_connect_timeout(Some(self.connect_timeout));
        http.set_nodelay(true);
        let connector = self
            .tls
            .clone()
            .unwrap_or_default()
            .http2(true)
            .https_connector(http)?;
        let Some(rest) = self.endpoint.strip_prefix("https://") else {
            return Ok(endpoint.connect_with_connector_lazy(connector));
        };
        // tonic sees `http://`, the connector gets `https://` back: see `HttpsScheme`.
        let endpoint = Endpoint::from_shared(format!("http://{rest}"))
            .map_err(|e| {
                Error::new(ErrorKind::InvalidConfig {
                    reason: format!("invalid endpoint {:?}: {e}", self.endpoint),
                })
            })?
            .connect_timeout(self.connect_timeout);
        Ok(endpoint.connect_with_connector_lazy(HttpsScheme(connector)))
    }

    #[cfg(not(feature = "tls"))]
    fn channel(&self, endpoint: Endpoint) -> Result<Channel, Error> {
        Ok(endpoint.connect_lazy())
    }
}

/// A connector that puts the `https` scheme back on the URI tonic hands it.
///
/// Why: as soon as any crate in a build enables one of tonic's TLS features (OTLP over gRPC
/// does), tonic refuses an `https://` endpoint that lacks tonic's own TLS settings, even when
/// the connector does the TLS. The chassis's TLS settings are [`ClientTlsConfig`] (the same
/// roots, client certificate and ring provider as the HTTP client), so the TLS stays in the
/// connector: tonic is given the endpoint as `http://` and this wrapper restores `https` before
/// the rustls connector sees the URI. Requests then carry `:scheme http` inside the TLS
/// connection, which servers do not act on.
#[cfg(feature = "tls")]
#[derive(Clone, Debug)]
struct HttpsScheme<C>(C);

#[cfg(feature = "tls")]
impl<C: Service<http::Uri>> Service<http::Uri> for HttpsScheme<C> {
    type Response = C::Response;
    type Error = C::Error;
    type Future = C::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let mut parts = uri.clone().into_parts();
        parts.scheme = Some(http::uri::Scheme::HTTPS);
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        // With a scheme and a path, only a URI without an authority fails here; such a URI
        // cannot be connected to at all, so passing it on unchanged downgrades nothing.
        self.0.call(http::Uri::from_parts(parts).unwrap_or(uri))
    }
}

impl Service<Request<tonic::body::Body>> for GrpcClient {
    type Response = Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each call drives a clone of the stack (`oneshot`), which waits for the bulkhead and
        // rejects on an open breaker with a status.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<tonic::body::Body>) -> Self::Future {
        let stack = self.stack.clone();
        let repeatable = self.idempotent.allows(req.uri().path());
        ResponseFuture {
            inner: Box::pin(async move {
                let req = if repeatable {
                    let (parts, body) = req.into_parts();
                    let bytes = http_body_util::Limited::new(body, MAX_BUFFERED_REQUEST)
                        .collect()
                        .await
                        .map_err(|e| {
                            Box::new(tonic::Status::resource_exhausted(format!(
                                "request not buffered for retries: {e}"
                            ))) as BoxError
                        })?
                        .to_bytes();
                    Request::from_parts(parts, AttemptBody::Buffered(bytes))
                } else {
                    req.map(AttemptBody::Once)
                };
                stack
                    .oneshot(req)
                    .await
                    .map_err(|e| Box::new(status_for_error(e)) as BoxError)
            }),
        }
    }
}

/// The response future of [`GrpcClient`] (boxed: the call may first buffer its message).
pub struct ResponseFuture {
    inner: Pin<Box<dyn Future<Output = Result<Response<tonic::body::Body>, BoxError>> + Send>>,
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<tonic::body::Body>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

/// One attempt on the wire: deadline, trace context and token, then the channel.
#[derive(Clone)]
struct Attempt {
    channel: Channel,
    /// The endpoint's host, the client span's `server.address`.
    host: Arc<str>,
    token: Option<ServiceTokenSource>,
    timeout: Option<Duration>,
}

impl Service<Request<AttemptBody>> for Attempt {
    type Response = Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<AttemptBody>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        let body = match body {
            AttemptBody::Buffered(bytes) => tonic::body::Body::new(
                http_body_util::Full::new(bytes).map_err(|never| match never {}),
            ),
            AttemptBody::Once(body) => body,
        };
        let asked = parts.headers.get(GRPC_TIMEOUT).and_then(parse_grpc_timeout);
        let deadline = match (asked, self.timeout) {
            (Some(a), Some(t)) => Some(a.min(t)),
            (a, t) => a.or(t),
        };
        if let Some(deadline) = deadline {
            parts
                .headers
                .insert(GRPC_TIMEOUT, grpc_timeout_value(deadline));
        }
        let (service, method) = rpc_names(parts.uri.path()).unwrap_or(("_OTHER", "_OTHER"));
        // One client span per attempt (OpenTelemetry RPC conventions), the parent of the
        // server's span: its context is the one sent.
        let span = tracing::info_span!(
            "grpc.client",
            otel.name = %format_args!("{service}/{method}"),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = tracing::field::Empty,
            server.address = &*self.host,
        );
        span.in_scope(|| inject_current(&mut HeaderInjector(&mut parts.headers)));
        let mut call = Call::new(
            names::RPC_CLIENT_CALL_DURATION,
            service,
            method,
            Some(span.clone()),
        );
        let token = self.token.as_ref().map(ServiceTokenSource::bearer_header);
        let channel = self.channel.clone();
        Box::pin(
            async move {
                if let Some(token) = token {
                    parts.headers.insert(AUTHORIZATION, token?);
                }
                let req = Request::from_parts(parts, body);
                match channel.oneshot(req).await {
                    Ok(response) => Ok(observed(response, call).map(tonic::body::Body::new)),
                    Err(err) => {
                        // No answer: the call could not be made (what tonic reports as
                        // UNAVAILABLE).
                        call.failed(Code::Unavailable);
                        Err(err.into())
                    }
                }
            }
            .instrument(span),
        )
    }
}
