//! [`HttpClient`]: one downstream service, its resilience policy, its token, its metrics.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chassis_core::BoxError;
use chassis_core::control::ControlRegistry;
use chassis_core::resilience::bulkhead::BulkheadLayer;
use chassis_core::resilience::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerHandle};
use chassis_core::resilience::policy::ResiliencePolicy;
use chassis_core::resilience::rate_limiter::RateLimiterLayer;
use chassis_core::resilience::retry::{RetryBudget, RetryConfig};
use http::header::{ACCEPT, CONTENT_TYPE, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Response, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tower::ServiceExt as _;
use tower::util::BoxCloneSyncService;
use tower_layer::Layer;

use super::error::{ClientError, ClientErrorKind};
use super::instrument::{AttemptCounter, InstrumentLayer};
use super::policy::{
    HttpBreakerClassifier, HttpRetryAfter, HttpRetryClassifier, IDEMPOTENCY_KEY, IdempotentRequests,
};
use crate::auth::ServiceTokenSource;

/// The request body type of the client: a buffered body, so requests can be retried.
pub type ClientBody = Full<Bytes>;

/// Largest response body the buffering helpers read: 16 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 16 << 20;

type Stack = BoxCloneSyncService<Request<ClientBody>, Response<Incoming>, BoxError>;

/// The hyper-util client under the stack, whatever its connector.
type Hyper =
    BoxCloneSyncService<Request<ClientBody>, Response<Incoming>, hyper_util::client::legacy::Error>;

/// A resilient HTTP client for one downstream service; see the [module docs](super).
///
/// Cheap to clone: clones share the connection pool, the breaker, the retry budget, the
/// bulkhead and the token cache.
#[derive(Clone)]
pub struct HttpClient {
    inner: Arc<ClientInner>,
    stack: Stack,
}

struct ClientInner {
    name: Arc<str>,
    base: Option<Uri>,
    default_headers: HeaderMap,
    breaker: Option<CircuitBreakerHandle>,
    /// The policy's parts with a state, for [`HttpClient::register_control`].
    bulkhead: Option<BulkheadLayer>,
    rate_limit: Option<RateLimiterLayer>,
    retry_budget: Option<(String, Arc<RetryBudget>)>,
    max_response_bytes: usize,
}

/// Builds an [`HttpClient`]; see [`HttpClient::builder`].
pub struct HttpClientBuilder {
    name: String,
    base: Option<String>,
    policy: Option<ResiliencePolicy>,
    token: Option<ServiceTokenSource>,
    retry_non_idempotent: bool,
    max_retry_after: Duration,
    max_response_bytes: usize,
    default_headers: HeaderMap,
    connect_timeout: Duration,
    hyper: Option<Hyper>,
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::client::ClientTlsConfig>,
}

impl fmt::Debug for HttpClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("HttpClientBuilder");
        d.field("name", &self.name)
            .field("base", &self.base)
            .field("policy", &self.policy)
            .field("token", &self.token)
            .field("retry_non_idempotent", &self.retry_non_idempotent)
            .field("max_retry_after", &self.max_retry_after)
            .field("connect_timeout", &self.connect_timeout)
            .field("custom_hyper_client", &self.hyper.is_some());
        #[cfg(feature = "tls")]
        d.field("tls", &self.tls);
        d.finish_non_exhaustive()
    }
}

impl HttpClient {
    /// Starts building a client for the downstream `name` (used in metrics, spans, errors and as
    /// the default name of the policy's breaker, retry and bulkhead).
    pub fn builder(name: impl Into<String>) -> HttpClientBuilder {
        HttpClientBuilder {
            name: name.into(),
            base: None,
            policy: None,
            token: None,
            retry_non_idempotent: false,
            max_retry_after: Duration::from_secs(30),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            default_headers: HeaderMap::new(),
            connect_timeout: Duration::from_secs(5),
            hyper: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// The downstream's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The circuit breaker guarding this downstream, if the policy has one.
    pub fn circuit_breaker(&self) -> Option<&CircuitBreakerHandle> {
        self.inner.breaker.as_ref()
    }

    /// Registers the parts of the client's policy that have a state (its breaker, bulkhead,
    /// rate limiter and retry budget, each under its configured name) in `control`, as
    /// [`ControlRegistry::register_policy`] does for a policy layer.
    pub fn register_control(&self, control: &ControlRegistry) {
        if let Some(breaker) = &self.inner.breaker {
            control.register_breaker(breaker.clone());
        }
        if let Some(bulkhead) = &self.inner.bulkhead {
            control.register_bulkhead(bulkhead.clone());
        }
        if let Some(limiter) = &self.inner.rate_limit {
            control.register_rate_limiter(limiter.clone());
        }
        if let Some((name, budget)) = &self.inner.retry_budget {
            control.register_retry_budget(name.clone(), budget.clone());
        }
    }

    /// Sends `req` through the policy and returns the response whatever its status; only
    /// failures to get a response are errors. A relative URI (`/orders/7`) is resolved against
    /// the base URL.
    pub async fn send(&self, req: Request<ClientBody>) -> Result<Response<Incoming>, ClientError> {
        let name = &*self.inner.name;
        let mut req = self.prepare(req)?;
        let counter = AttemptCounter::default();
        req.extensions_mut().insert(counter.clone());
        self.stack
            .clone()
            .oneshot(req)
            .await
            .map_err(|e| ClientError::from_stack(e, name).with_attempts(counter.get()))
    }

    /// Sends `req` and reads the whole body; a non-2xx answer is an error
    /// ([`Status4xx`](ClientErrorKind::Status4xx) with a body excerpt,
    /// [`Status5xx`](ClientErrorKind::Status5xx)).
    pub async fn execute(&self, req: Request<ClientBody>) -> Result<Response<Bytes>, ClientError> {
        let name = &*self.inner.name;
        let mut req = self.prepare(req)?;
        let counter = AttemptCounter::default();
        req.extensions_mut().insert(counter.clone());
        let response = self
            .stack
            .clone()
            .oneshot(req)
            .await
            .map_err(|e| ClientError::from_stack(e, name).with_attempts(counter.get()))?;
        let attempts = counter.get();
        let (parts, body) = response.into_parts();
        let status = parts.status;
        let bytes = Limited::new(body, self.inner.max_response_bytes)
            .collect()
            .await
            .map_err(|e| {
                let kind = if e.is::<http_body_util::LengthLimitError>() {
                    ClientErrorKind::InvalidResponse {
                        reason: format!("body exceeds {} bytes", self.inner.max_response_bytes),
                    }
                } else {
                    ClientErrorKind::Transport
                };
                ClientError::new(kind, name)
                    .with_source(e)
                    .with_attempts(attempts)
                    .with_answered(status)
            })?
            .to_bytes();
        if status.is_success() {
            return Ok(Response::from_parts(parts, bytes));
        }
        let mut err =
            ClientError::from_answer(status, &parts.headers, &bytes, name).with_attempts(attempts);
        if attempts > 1 && super::policy::is_retryable_status(status) {
            err = err.mark_exhausted();
        }
        Err(err)
    }

    /// `GET path` and decode the JSON body as `T`.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let req = self.json_request(Method::GET, path, None::<&()>, None)?;
        self.decode(self.execute(req).await?)
    }

    /// `POST path` with `body` as JSON, decoding the JSON answer as `T`. Not retried (POST is not
    /// idempotent) unless the client allows it; see [`post_json_idempotent`](Self::post_json_idempotent).
    pub async fn post_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let req = self.json_request(Method::POST, path, Some(body), None)?;
        self.decode(self.execute(req).await?)
    }

    /// `POST path` with an `Idempotency-Key: key` header, which makes it retryable: the
    /// downstream promises to apply a key once.
    pub async fn post_json_idempotent<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        key: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let req = self.json_request(Method::POST, path, Some(body), Some(key))?;
        self.decode(self.execute(req).await?)
    }

    /// `PUT path` with `body` as JSON, decoding the JSON answer as `T`.
    pub async fn put_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let req = self.json_request(Method::PUT, path, Some(body), None)?;
        self.decode(self.execute(req).await?)
    }

    /// `DELETE path`, ignoring the body of a 2xx answer.
    pub async fn delete(&self, path: &str) -> Result<(), ClientError> {
        let req = self.json_request(Method::DELETE, path, None::<&()>, None)?;
        self.execute(req).await.map(drop)
    }

    fn json_request<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        idempotency_key: Option<&str>,
    ) -> Result<Request<ClientBody>, ClientError> {
        let name = &*self.inner.name;
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(ACCEPT, "application/json");
        if let Some(key) = idempotency_key {
            builder = builder.header(IDEMPOTENCY_KEY, key);
        }
        let body = match body {
            Some(body) => {
                builder = builder.header(CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(serde_json::to_vec(body).map_err(|e| {
                    ClientError::invalid_request(name, "body is not serialisable").with_source(e)
                })?))
            }
            None => Full::default(),
        };
        builder
            .body(body)
            .map_err(|e| ClientError::invalid_request(name, "invalid request").with_source(e))
    }

    fn decode<T: DeserializeOwned>(&self, response: Response<Bytes>) -> Result<T, ClientError> {
        serde_json::from_slice(response.body()).map_err(|e| {
            ClientError::invalid_response(&self.inner.name, "body does not decode as expected")
                .with_source(e)
                .with_answered(response.status())
        })
    }

    fn prepare(&self, mut req: Request<ClientBody>) -> Result<Request<ClientBody>, ClientError> {
        let name = &*self.inner.name;
        let uri = req.uri().clone();
        let resolved = match (uri.scheme(), &self.inner.base) {
            (Some(_), _) => uri,
            (None, Some(base)) => {
                let path = uri.path_and_query().map_or("/", PathAndQuery::as_str);
                let base_path = base.path().trim_end_matches('/');
                let joined = format!("{base_path}{path}");
                let mut parts = base.clone().into_parts();
                parts.path_and_query = Some(joined.parse().map_err(|e| {
                    ClientError::invalid_request(name, "invalid path").with_source(e)
                })?);
                Uri::from_parts(parts)
                    .map_err(|e| ClientError::invalid_request(name, "invalid url").with_source(e))?
            }
            (None, None) => {
                return Err(ClientError::invalid_request(
                    name,
                    "relative url without a base url",
                ));
            }
        };
        check_url(&resolved).map_err(|reason| ClientError::invalid_request(name, reason))?;
        *req.uri_mut() = resolved;
        for (header, value) in &self.inner.default_headers {
            if !req.headers().contains_key(header) {
                req.headers_mut().insert(header, value.clone());
            }
        }
        Ok(req)
    }
}

/// Whether the client can call `uri`: absolute, with a host, `http://` or (with the `tls`
/// feature) `https://`.
fn check_url(uri: &Uri) -> Result<(), &'static str> {
    if uri.host().is_none() {
        return Err("only absolute http:// and https:// urls are supported");
    }
    match uri.scheme() {
        Some(scheme) if *scheme == Scheme::HTTP => Ok(()),
        Some(scheme) if *scheme == Scheme::HTTPS => {
            if cfg!(feature = "tls") {
                Ok(())
            } else {
                Err("https:// urls need chassis-http's `tls` feature")
            }
        }
        _ => Err("only absolute http:// and https:// urls are supported"),
    }
}

impl ClientError {
    fn mark_exhausted(mut self) -> Self {
        self.set_exhausted();
        self
    }
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("name", &self.inner.name)
            .field("base", &self.inner.base)
            .field(
                "circuit_breaker",
                &self.inner.breaker.as_ref().map(CircuitBreakerHandle::state),
            )
            .finish_non_exhaustive()
    }
}

impl HttpClientBuilder {
    /// The base URL relative request paths are resolved against, e.g.
    /// `http://inventory:8080`, `http://gateway/inventory` or `https://ledger.internal:8443`.
    /// Defaults to none (absolute URLs only). `https://` needs the `tls` feature (on by
    /// default); see [`tls`](Self::tls) for whom the client trusts.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base = Some(url.into());
        self
    }

    chassis_core::__builder_setters! {
        /// The resilience policy (timeout per attempt, retry with backoff and budget, breaker,
        /// bulkhead, rate limit). Defaults to [`HttpClientBuilder::default_policy`]: 10 s per
        /// attempt, 3 attempts with the default backoff and budget, and a default breaker.
        policy: Some(ResiliencePolicy),
    }

    /// Attaches a service token from `source` to every attempt.
    pub fn service_token(mut self, source: ServiceTokenSource) -> Self {
        self.token = Some(source);
        self
    }

    chassis_core::__builder_setters! {
        /// Retry non-idempotent methods (POST, PATCH) too, even without an `Idempotency-Key`.
        /// Defaults to false.
        retry_non_idempotent: bool,
        /// The longest `Retry-After` (on 429/503) still honoured by waiting and retrying; a longer
        /// one ends the call with the response. Defaults to 30 seconds.
        max_retry_after: Duration,
        /// Largest response body the buffering helpers read. Defaults to 16 MiB.
        max_response_bytes: usize,
    }

    /// A header sent with every request (unless the request sets it).
    pub fn default_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.default_headers.insert(name, value);
        self
    }

    chassis_core::__builder_setters! {
        /// TCP connect timeout of the built-in connector. Defaults to 5 seconds. (The TLS
        /// handshake that follows is bounded by the policy's attempt timeout.)
        connect_timeout: Duration,
        /// The TLS settings of `https://` calls: trusted roots, extra CAs, a client certificate
        /// (mTLS), HTTP/2 by ALPN. Defaults to [`ClientTlsConfig::default`]: webpki roots, no
        /// client certificate, `h2` and `http/1.1` offered. `http://` URLs keep working.
        ///
        /// The files it names are read by [`build`](Self::build), which fails (with
        /// [`ClientErrorKind::InvalidRequest`]) when they cannot be used. A handshake that fails
        /// ends the call with [`ClientErrorKind::Tls`], without retries.
        ///
        /// [`ClientTlsConfig::default`]: crate::tls::client::ClientTlsConfig::default
        #[cfg(feature = "tls")]
        #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
        tls: Some(crate::tls::client::ClientTlsConfig),
    }

    /// Uses this hyper-util client (and its connection pool) instead of a new one; its
    /// connector decides which schemes are reachable. The [connect
    /// timeout](Self::connect_timeout) and [TLS settings](Self::tls) are then not used (setting
    /// TLS too is an error at [`build`](Self::build)).
    pub fn hyper_client<C>(mut self, client: Client<C, ClientBody>) -> Self
    where
        C: Connect + Clone + Send + Sync + 'static,
    {
        self.hyper = Some(BoxCloneSyncService::new(client));
        self
    }

    /// The policy used when none is set: 10 s per attempt, 3 attempts with the default backoff
    /// (100 ms base, full jitter) and retry budget, and a breaker with the default configuration
    /// (50% failures over the last 100 calls, 60 s open).
    pub fn default_policy(name: &str) -> ResiliencePolicy {
        ResiliencePolicy::new()
            .name(name)
            .timeout(Duration::from_secs(10))
            .retry(RetryConfig::new(name))
            .circuit_breaker(CircuitBreakerConfig::new(name))
    }

    /// Validates the configuration and builds the client.
    pub fn build(self) -> Result<HttpClient, ClientError> {
        let name = self.name.as_str();
        if name.is_empty() {
            return Err(ClientError::invalid_request(
                name,
                "the downstream name must not be empty",
            ));
        }
        let base = match &self.base {
            Some(url) => {
                let uri: Uri = url.parse().map_err(|e| {
                    ClientError::invalid_request(name, format!("invalid base url {url:?}"))
                        .with_source(e)
                })?;
                if let Err(reason) = check_url(&uri) {
                    return Err(ClientError::invalid_request(
                        name,
                        format!("base url {url:?}: {reason}"),
                    ));
                }
                Some(uri)
            }
            None => None,
        };
        let mut policy = self.policy.unwrap_or_else(|| Self::default_policy(name));
        if policy.name.is_none() {
            policy.name = Some(name.to_owned());
        }
        let layer = policy
            .build()
            .map_err(|e| {
                ClientError::invalid_request(name, "invalid resilience policy").with_source(e)
            })?
            .with_retry_classifier(HttpRetryClassifier {
                max_retry_after: self.max_retry_after,
            })
            .with_retry_after(HttpRetryAfter)
            .with_request_cloner(IdempotentRequests {
                retry_non_idempotent: self.retry_non_idempotent,
            })
            .with_breaker_classifier(HttpBreakerClassifier);
        let breaker = layer.circuit_breaker();
        let bulkhead = layer.bulkhead().cloned();
        let rate_limit = layer.rate_limit().cloned();
        let retry_budget = layer
            .retry()
            .and_then(|r| Some((r.name().to_owned(), r.budget_handle()?)));
        let hyper = match self.hyper {
            Some(hyper) => {
                #[cfg(feature = "tls")]
                if self.tls.is_some() {
                    return Err(ClientError::invalid_request(
                        name,
                        "TLS settings are not used with a custom hyper client: set one or the other",
                    ));
                }
                hyper
            }
            None => {
                let mut http = HttpConnector::new();
                http.set_connect_timeout(Some(self.connect_timeout));
                http.set_nodelay(true);
                #[cfg(feature = "tls")]
                let connector =
                    self.tls
                        .unwrap_or_default()
                        .https_connector(http)
                        .map_err(|e| {
                            ClientError::invalid_request(name, format!("invalid TLS settings: {e}"))
                                .with_source(e)
                        })?;
                #[cfg(not(feature = "tls"))]
                let connector = http;
                BoxCloneSyncService::new(Client::builder(TokioExecutor::new()).build(connector))
            }
        };
        let downstream: Arc<str> = name.into();
        let instrumented = InstrumentLayer {
            downstream: downstream.clone(),
            token: self.token,
        }
        .layer(hyper);
        let stack = BoxCloneSyncService::new(layer.layer(instrumented));
        Ok(HttpClient {
            inner: Arc::new(ClientInner {
                name: downstream,
                base,
                default_headers: self.default_headers,
                breaker,
                bulkhead,
                rate_limit,
                retry_budget,
                max_response_bytes: self.max_response_bytes,
            }),
            stack,
        })
    }
}

#[cfg(test)]
mod tests {
    use chassis_core::resilience::bulkhead::BulkheadConfig;

    use super::*;

    #[tokio::test]
    async fn the_policy_parts_with_a_state_are_registered() {
        let policy = HttpClientBuilder::default_policy("inventory")
            .bulkhead(BulkheadConfig::new("inventory").max_concurrent(4));
        let client = HttpClient::builder("inventory")
            .policy(policy)
            .build()
            .unwrap();
        let control = ControlRegistry::new("orders");
        client.register_control(&control);
        let snapshot = control.snapshot().await;
        let mut kinds: Vec<_> = snapshot["components"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                format!(
                    "{}/{}",
                    c["kind"].as_str().unwrap(),
                    c["name"].as_str().unwrap()
                )
            })
            .collect();
        kinds.sort();
        assert_eq!(
            kinds,
            [
                "breaker/inventory",
                "bulkhead/inventory",
                "retry_budget/inventory"
            ]
        );
        // The registered breaker is the client's own.
        control
            .act("breaker", "inventory", "force_open", &serde_json::json!({}))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            client.circuit_breaker().unwrap().state().as_str(),
            "forced_open"
        );
    }
}
