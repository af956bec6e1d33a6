//! Admin endpoints: the log filter at run time, Spring Boot Actuator `/loggers` style.
//!
//! [`LogLevelService`] answers `GET /admin/loggers` with the filter in effect
//! (`{"level":"info,orders=debug"}`) and `PUT` or `POST /admin/loggers` with a body
//! `{"level":"info,orders=debug"}` by replacing it through a
//! [`LogLevelHandle`] (from
//! [`Telemetry::log_level_handle`](chassis_observability::Telemetry::log_level_handle)).
//! An invalid directive is a 400 with the chassis JSON error body and the old filter stays; other
//! paths are 404, other methods 405.
//!
//! Changing what a service logs is an operator's act: [`LogLevelService::protected`] puts the
//! service behind [`RequireServiceTokenLayer`] with the `admin` scope, so a request without a
//! valid service token gets 401 and one without the scope 403 (RFC 6750 answers, JSON bodies).
//!
//! # Example
//! ```
//! use chassis_core::ServiceInfo;
//! use chassis_http::admin::LogLevelService;
//! use chassis_http::auth::{SigningKey, TokenIssuer, TokenVerifier};
//! use chassis_observability::Telemetry;
//! use http::{Request, StatusCode};
//! use tower::ServiceExt as _;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let (_dispatch, telemetry) = Telemetry::builder(ServiceInfo::new("orders", "1"))
//!     .ignore_env()
//!     .make_writer(std::io::sink)
//!     .build()?;
//! let issuer = TokenIssuer::builder("ops").signing_key(SigningKey::generate_ed25519()?).build()?;
//! let verifier = TokenVerifier::builder("orders").trust_issuer("ops").keys(issuer.key_set()).build()?;
//! let admin = LogLevelService::protected(telemetry.log_level_handle(), verifier);
//!
//! let token = issuer.issue("orders", &["admin"])?;
//! let response = admin
//!     .oneshot(
//!         Request::put("/admin/loggers")
//!             .header("authorization", format!("Bearer {}", token.as_str()))
//!             .body(r#"{"level":"info,orders=debug"}"#.to_owned())?,
//!     )
//!     .await?;
//! assert_eq!(response.status(), StatusCode::OK);
//! assert!(telemetry.log_level().contains("orders=debug"));
//! # Ok(())
//! # }
//! ```

use bytes::Bytes;
use chassis_observability::log_level::LogLevelHandle;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Limited};

use crate::ApiError;
use crate::auth::{RequireServiceToken, RequireServiceTokenLayer, TokenVerifier};
use crate::body::{Body, BoxError, full, typed_response};

/// The path [`LogLevelService`] answers at unless told otherwise.
pub const LOGGERS_PATH: &str = "/admin/loggers";

/// The scope a service token needs for [`LogLevelService::protected`].
pub const ADMIN_SCOPE: &str = "admin";

/// Largest request body accepted, in bytes: a filter is a line, not a document.
const MAX_BODY: usize = 16 * 1024;

/// Reads and sets the log filter over HTTP (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct LogLevelService {
    handle: LogLevelHandle,
    path: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SetLevel {
    level: String,
}

impl LogLevelService {
    /// The service for `handle`, at [`LOGGERS_PATH`], without authentication: put it behind
    /// your own auth, or use [`protected`](Self::protected).
    pub fn new(handle: LogLevelHandle) -> Self {
        Self {
            handle,
            path: LOGGERS_PATH.to_owned(),
        }
    }

    /// Answers at `path` instead. Defaults to [`LOGGERS_PATH`].
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// The service behind [`RequireServiceTokenLayer`] requiring the [`ADMIN_SCOPE`] scope.
    pub fn protected(
        handle: LogLevelHandle,
        verifier: TokenVerifier,
    ) -> RequireServiceToken<LogLevelService> {
        tower_layer::Layer::layer(
            &RequireServiceTokenLayer::new(verifier).require_scopes(&[ADMIN_SCOPE]),
            Self::new(handle),
        )
    }

    fn level_response(&self, status: StatusCode) -> Response<Body> {
        let body = serde_json::json!({ "level": self.handle.log_level() }).to_string();
        typed_response(status, "application/json", None, full(body))
    }
}

impl LogLevelService {
    async fn answer<B>(self, req: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        if req.uri().path() != self.path {
            return ApiError::not_found("no such admin endpoint").into_response();
        }
        match *req.method() {
            Method::GET | Method::HEAD => self.level_response(StatusCode::OK),
            Method::PUT | Method::POST => {
                let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                    Ok(body) => body.to_bytes(),
                    Err(e) => {
                        return ApiError::bad_request(format!("cannot read the request body: {e}"))
                            .into_response();
                    }
                };
                let set: SetLevel = match serde_json::from_slice(&body) {
                    Ok(set) => set,
                    Err(e) => {
                        return ApiError::bad_request(format!(
                            "expected {{\"level\": \"<directives>\"}}: {e}"
                        ))
                        .into_response();
                    }
                };
                match self.handle.set_log_level(&set.level) {
                    Ok(()) => {
                        tracing::info!(
                            target: "chassis_http::admin",
                            level = %set.level,
                            "log filter changed"
                        );
                        self.level_response(StatusCode::OK)
                    }
                    Err(e) => ApiError::bad_request(e.to_string()).into_response(),
                }
            }
            _ => ApiError::from_status(StatusCode::METHOD_NOT_ALLOWED, "use GET, PUT or POST")
                .with_header(
                    header::ALLOW,
                    http::HeaderValue::from_static("GET, PUT, POST"),
                )
                .into_response(),
        }
    }
}

crate::middleware::impl_endpoint!(LogLevelService);
