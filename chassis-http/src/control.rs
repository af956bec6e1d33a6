//! The admin API over a [`ControlRegistry`]: list, read and steer a service's breakers,
//! bulkheads, rate limits, retry budgets, health checks, outbox and consumers, and follow them
//! live with Server-Sent Events.
//!
//! Serve it on the admin listener ([`Server::admin_service`](crate::server::Server::admin_service)),
//! behind a service token with the `admin` scope ([`ControlService::protected`]): without a
//! token a request gets 401, with a token lacking the scope 403. Nothing is served unless the
//! service builds it: the admin API is off by default.
//!
//! | method and path (under the prefix, default `/admin/control`) | answer |
//! |---|---|
//! | `GET ` | `{"service", "components": [{"kind", "name", "actions", "state"}, ..]}` |
//! | `GET /stream` | `text/event-stream`: one `state` event per sample (about 1 s) and after each action, each the listing above with `at` and per-second `rates` |
//! | `GET /{kind}/{name}` | one component |
//! | `POST /{kind}/{name}/{action}` | carries out the action (body: a JSON object of parameters, or empty) and answers with the component's new state |
//!
//! An unknown component is a 404, an unknown action or bad parameters a 400, a failed action
//! (its database or broker) a 502, each with the chassis JSON error body and its `traceId`.
//! Every action is logged at INFO on target `chassis_http::control` with the caller's token
//! subject: the audit line. With [`log_level`](ControlService::log_level) the same service
//! also answers [`LogLevelService`]'s `/admin/loggers`.
//!
//! The stream costs the service one sample per interval whatever the number of clients
//! ([`ControlRegistry::subscribe`]); each client gets the same serialised bytes.
//!
//! # Example
//! ```
//! use chassis_core::control::ControlRegistry;
//! use chassis_core::resilience::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerHandle};
//! use chassis_http::auth::{SigningKey, TokenIssuer, TokenVerifier};
//! use chassis_http::control::ControlService;
//! use http::{Request, StatusCode};
//! use http_body_util::BodyExt as _;
//! use tower::ServiceExt as _;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let breaker = CircuitBreakerHandle::new(CircuitBreakerConfig::new("inventory"))?;
//! let control = ControlRegistry::new("orders");
//! control.register_breaker(breaker.clone());
//!
//! let issuer = TokenIssuer::builder("ops").signing_key(SigningKey::generate_ed25519()?).build()?;
//! let verifier = TokenVerifier::builder("orders").trust_issuer("ops").keys(issuer.key_set()).build()?;
//! let admin = ControlService::protected(control, verifier);
//!
//! let token = issuer.issue("orders", &["admin"])?;
//! let response = admin
//!     .oneshot(
//!         Request::post("/admin/control/breaker/inventory/force_open")
//!             .header("authorization", format!("Bearer {}", token.as_str()))
//!             .body(String::new())?,
//!     )
//!     .await?;
//! assert_eq!(response.status(), StatusCode::OK);
//! let body: serde_json::Value = serde_json::from_slice(&response.into_body().collect().await?.to_bytes())?;
//! assert_eq!(body["state"]["state"], "forced_open");
//! assert_eq!(breaker.state().as_str(), "forced_open");
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;

use bytes::Bytes;
use chassis_core::ErrorKind as CoreErrorKind;
use chassis_core::control::ControlRegistry;
use chassis_observability::log_level::LogLevelHandle;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt as _, Limited, StreamBody};
use tower_service::Service;

use crate::ApiError;
use crate::admin::{ADMIN_SCOPE, LogLevelService};
use crate::auth::{RequireServiceToken, RequireServiceTokenLayer, ServiceIdentity, TokenVerifier};
use crate::body::{Body, BoxError, full, typed_response};

/// The prefix [`ControlService`] answers under unless told otherwise.
pub const CONTROL_PATH: &str = "/admin/control";

/// Largest action body accepted, in bytes: parameters are a few ids, not a document.
const MAX_BODY: usize = 64 * 1024;

/// Serves a [`ControlRegistry`] over HTTP (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct ControlService {
    registry: ControlRegistry,
    prefix: Arc<str>,
    log_level: Option<LogLevelService>,
}

impl ControlService {
    /// The service for `registry` at [`CONTROL_PATH`], without authentication: put it behind
    /// your own auth, or use [`protected`](Self::protected).
    pub fn new(registry: ControlRegistry) -> Self {
        Self {
            registry,
            prefix: CONTROL_PATH.into(),
            log_level: None,
        }
    }

    /// Answers under `prefix` instead (no trailing slash). Defaults to [`CONTROL_PATH`].
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into().trim_end_matches('/').into();
        self
    }

    /// Also answers `/admin/loggers` with a [`LogLevelService`] for `handle`, behind the
    /// same authentication. Defaults to none (404).
    pub fn log_level(mut self, handle: LogLevelHandle) -> Self {
        self.log_level = Some(LogLevelService::new(handle));
        self
    }

    /// The service behind [`RequireServiceTokenLayer`] requiring the [`ADMIN_SCOPE`] scope.
    pub fn protected(
        registry: ControlRegistry,
        verifier: TokenVerifier,
    ) -> RequireServiceToken<ControlService> {
        Self::new(registry).with_token(verifier)
    }

    /// This service behind [`RequireServiceTokenLayer`] requiring the [`ADMIN_SCOPE`] scope
    /// (for a service configured with [`prefix`](Self::prefix) or
    /// [`log_level`](Self::log_level)).
    pub fn with_token(self, verifier: TokenVerifier) -> RequireServiceToken<ControlService> {
        tower_layer::Layer::layer(
            &RequireServiceTokenLayer::new(verifier).require_scopes(&[ADMIN_SCOPE]),
            self,
        )
    }
}

/// The chassis JSON error body with a trace id: the request's span's, else the caller's
/// `traceparent`, else a fresh one (the admin listener traces nothing of its own, and an
/// operator quoting the id must find the log line).
fn error_response<B>(req: &Request<B>, error: ApiError) -> Response<Body> {
    let trace_id = crate::error::current_trace_id()
        .or_else(|| {
            let parent = req.headers().get("traceparent")?.to_str().ok()?;
            let id = parent.split('-').nth(1)?;
            (id.len() == 32).then(|| id.to_owned())
        })
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    error.with_trace_id(trace_id).into_response()
}

fn json_response(value: &serde_json::Value) -> Response<Body> {
    typed_response(
        StatusCode::OK,
        "application/json",
        Some("no-store"),
        full(value.to_string()),
    )
}

/// The bytes of a frame, shared with every other subscriber (no copy per client).
struct Shared(Arc<str>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

fn stream_response(registry: &ControlRegistry) -> Response<Body> {
    let subscription = registry.subscribe();
    let frames = futures_util::stream::unfold(subscription, |mut subscription| async move {
        let frame = subscription.next().await?;
        // One event: the prefix, the shared JSON and the terminator, as three data frames.
        let parts = [
            Bytes::from_static(b"event: state\ndata: "),
            Bytes::from_owner(Shared(frame)),
            Bytes::from_static(b"\n\n"),
        ];
        Some((
            futures_util::stream::iter(parts.map(|b| Ok::<_, BoxError>(Frame::data(b)))),
            subscription,
        ))
    });
    let body = StreamBody::new(futures_util::StreamExt::flatten(frames));
    typed_response(
        StatusCode::OK,
        "text/event-stream",
        Some("no-store"),
        crate::body::boxed(body),
    )
}

impl ControlService {
    async fn answer<B>(self, req: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let path = req.uri().path().to_owned();
        let Some(rest) = path
            .strip_prefix(&*self.prefix)
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
        else {
            if let Some(mut log_level) = self.log_level {
                return match log_level.call(req).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
            }
            return error_response(&req, ApiError::not_found("no such admin endpoint"));
        };
        let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        match (req.method().clone(), segments.as_slice()) {
            (Method::GET | Method::HEAD, []) => json_response(&self.registry.snapshot().await),
            (Method::GET, ["stream"]) => stream_response(&self.registry),
            (Method::GET | Method::HEAD, [kind, name]) => {
                match self.registry.component(kind, name).await {
                    Some(state) => json_response(&state),
                    None => error_response(&req, no_such_component(kind, name)),
                }
            }
            (Method::POST, [kind, name, action]) => {
                let (kind, name, action) =
                    ((*kind).to_owned(), (*name).to_owned(), (*action).to_owned());
                self.act(req, &kind, &name, &action).await
            }
            (_, [] | ["stream"] | [_, _] | [_, _, _]) => error_response(
                &req,
                ApiError::from_status(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "GET reads, POST /{kind}/{name}/{action} acts",
                ),
            ),
            _ => error_response(&req, ApiError::not_found("no such admin endpoint")),
        }
    }

    async fn act<B>(&self, req: Request<B>, kind: &str, name: &str, action: &str) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let subject = req
            .extensions()
            .get::<ServiceIdentity>()
            .map(|identity| format!("{} ({})", identity.subject, identity.jti));
        let (parts, body) = req.into_parts();
        let req = Request::from_parts(parts, ());
        let body = match Limited::new(body, MAX_BODY).collect().await {
            Ok(body) => body.to_bytes(),
            Err(e) => {
                return error_response(
                    &req,
                    ApiError::bad_request(format!("cannot read the request body: {e}")),
                );
            }
        };
        let params: serde_json::Value = if body.iter().all(u8::is_ascii_whitespace) {
            serde_json::Value::Object(serde_json::Map::new())
        } else {
            match serde_json::from_slice(&body) {
                Ok(params @ serde_json::Value::Object(_)) => params,
                Ok(_) => {
                    return error_response(
                        &req,
                        ApiError::bad_request("the parameters must be a JSON object"),
                    );
                }
                Err(e) => {
                    return error_response(
                        &req,
                        ApiError::bad_request(format!("the body is not JSON: {e}")),
                    );
                }
            }
        };
        let Some(result) = self.registry.act(kind, name, action, &params).await else {
            return error_response(&req, no_such_component(kind, name));
        };
        match result {
            Ok(state) => {
                tracing::info!(
                    target: "chassis_http::control",
                    service = %self.registry.service(),
                    kind,
                    name,
                    action,
                    params = %params,
                    subject = subject.as_deref().unwrap_or("-"),
                    "admin action"
                );
                json_response(&state)
            }
            Err(e) => {
                tracing::warn!(
                    target: "chassis_http::control",
                    service = %self.registry.service(),
                    kind,
                    name,
                    action,
                    subject = subject.as_deref().unwrap_or("-"),
                    error = %e,
                    "admin action refused or failed"
                );
                let error = match e.kind() {
                    CoreErrorKind::InvalidAction { .. } => ApiError::bad_request(e.to_string()),
                    _ => ApiError::from_status(StatusCode::BAD_GATEWAY, e.to_string()),
                };
                error_response(&req, error)
            }
        }
    }
}

fn no_such_component(kind: &str, name: &str) -> ApiError {
    ApiError::not_found(format!("no component {kind}/{name}"))
}

crate::middleware::impl_endpoint!(ControlService);
