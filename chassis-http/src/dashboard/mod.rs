//! The resilience dashboard: one page showing every service's breakers, bulkheads, rate
//! limits, retry budgets, health, outbox and consumers live, with their actions as buttons.
//!
//! [`DashboardService`] serves a static page (HTML, CSS and a dependency-free script, embedded
//! in this crate) and a proxy to the [admin API](crate::control) of each configured service
//! (`name` -> admin base URL, from configuration). The page reads each service's event stream
//! and posts its actions through the proxy, so the browser talks to one origin and the
//! services' admin listeners stay off the public network. The proxy forwards the caller's
//! `Authorization` header: every service checks the `admin` scope itself, and the dashboard
//! holds no token of its own. The page takes the token from its URL fragment
//! (`/dashboard#token=...`, which browsers never send to a server) or from a form.
//!
//! | path (under the prefix, default `/dashboard`) | answer |
//! |---|---|
//! | `GET ` | the page |
//! | `GET /dashboard.js`, `/dashboard.css` | its script and style |
//! | `GET /services` | `[{"name": ..}, ..]`, the configured services |
//! | `/api/{service}/{rest}` | proxied to `{admin URL}/admin/control/{rest}` |
//!
//! Serve it where an operator's browser can reach it: the gateway's or the launcher's admin
//! listener.
//!
//! # Example
//! ```
//! use chassis_http::dashboard::DashboardService;
//! use http::{Request, StatusCode};
//! use tower::ServiceExt as _;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let dashboard = DashboardService::new()
//!     .service("orders", "http://127.0.0.1:9091")?
//!     .service("payments", "http://127.0.0.1:9092")?;
//! let page = dashboard.oneshot(Request::get("/dashboard").body(String::new())?).await?;
//! assert_eq!(page.status(), StatusCode::OK);
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::ApiError;
use crate::body::{Body, BoxError, boxed, full, typed_response};
use crate::control::CONTROL_PATH;

/// The prefix [`DashboardService`] answers under unless told otherwise.
pub const DASHBOARD_PATH: &str = "/dashboard";

fn invalid_config(reason: String) -> crate::error::Error {
    crate::error::Error::new(crate::error::ErrorKind::InvalidConfig { reason })
}

const PAGE: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("dashboard.js");
const STYLE: &str = include_str!("dashboard.css");

/// Largest action body forwarded, in bytes.
const MAX_BODY: usize = 64 * 1024;

struct Inner {
    prefix: String,
    page: String,
    services: Vec<(String, String)>,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// Serves the dashboard page and proxies to each service's admin API (see the
/// [module docs](self)).
#[derive(Clone)]
pub struct DashboardService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DashboardService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DashboardService")
            .field("prefix", &self.inner.prefix)
            .field("services", &self.inner.services)
            .finish()
    }
}

impl Default for DashboardService {
    fn default() -> Self {
        Self::new()
    }
}

impl DashboardService {
    /// A dashboard at [`DASHBOARD_PATH`] with no services yet.
    pub fn new() -> Self {
        let mut client = HttpConnector::new();
        client.set_nodelay(true);
        Self {
            inner: Arc::new(Inner {
                prefix: DASHBOARD_PATH.to_owned(),
                page: PAGE.replace("{{PREFIX}}", DASHBOARD_PATH),
                services: Vec::new(),
                client: Client::builder(TokioExecutor::new()).build(client),
            }),
        }
    }

    fn inner_mut(&mut self) -> &mut Inner {
        Arc::get_mut(&mut self.inner).expect("configured before it is cloned")
    }

    /// Answers under `prefix` instead (no trailing slash). Defaults to [`DASHBOARD_PATH`].
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into().trim_end_matches('/').to_owned();
        let inner = self.inner_mut();
        inner.page = PAGE.replace("{{PREFIX}}", &prefix);
        inner.prefix = prefix;
        self
    }

    /// Adds the service `name` whose admin listener is at `admin_url` (`http://host:port`).
    /// Fails when the URL is not a plain `http://` base URL or the name is taken or not a
    /// path segment.
    pub fn service(
        mut self,
        name: impl Into<String>,
        admin_url: impl AsRef<str>,
    ) -> Result<Self, crate::error::Error> {
        let name = name.into();
        let url = admin_url.as_ref().trim_end_matches('/').to_owned();
        let uri: Uri = url
            .parse()
            .map_err(|e| invalid_config(format!("dashboard service {name}: bad admin URL: {e}")))?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(invalid_config(format!(
                "dashboard service {name}: the admin URL must be http://host:port, got {url}"
            )));
        }
        if name.is_empty() || name.contains(['/', '?', '#', '%']) {
            return Err(invalid_config(format!(
                "dashboard service name {name:?} must be a plain path segment"
            )));
        }
        let inner = self.inner_mut();
        if inner.services.iter().any(|(n, _)| *n == name) {
            return Err(invalid_config(format!(
                "dashboard service {name} is listed twice"
            )));
        }
        inner.services.push((name, url));
        Ok(self)
    }

    fn asset(content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
        typed_response(StatusCode::OK, content_type, Some("no-cache"), full(body))
    }

    async fn answer<B>(self, req: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let inner = &self.inner;
        let path = req.uri().path().to_owned();
        let Some(rest) = path
            .strip_prefix(&inner.prefix)
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
        else {
            return ApiError::not_found("no such dashboard path").into_response();
        };
        let get = matches!(*req.method(), Method::GET | Method::HEAD);
        match rest {
            "" | "/" if get => Self::asset("text/html; charset=utf-8", inner.page.clone()),
            "/dashboard.js" if get => Self::asset("text/javascript; charset=utf-8", SCRIPT),
            "/dashboard.css" if get => Self::asset("text/css; charset=utf-8", STYLE),
            "/services" if get => {
                let names: Vec<_> = inner
                    .services
                    .iter()
                    .map(|(name, _)| serde_json::json!({ "name": name }))
                    .collect();
                Self::asset(
                    "application/json",
                    serde_json::Value::from(names).to_string(),
                )
            }
            _ => match rest.strip_prefix("/api/") {
                Some(api) => self.proxy(req, api).await,
                None => ApiError::not_found("no such dashboard path").into_response(),
            },
        }
    }

    /// Forwards `req` to the admin API of the service named by the first segment of `api`.
    async fn proxy<B>(&self, req: Request<B>, api: &str) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (service, rest) = api.split_once('/').unwrap_or((api, ""));
        let Some((_, base)) = self.inner.services.iter().find(|(n, _)| n == service) else {
            return ApiError::not_found(format!("no service {service} on this dashboard"))
                .into_response();
        };
        if !matches!(*req.method(), Method::GET | Method::POST) {
            return ApiError::from_status(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST")
                .into_response();
        }
        let target = if rest.is_empty() {
            format!("{base}{CONTROL_PATH}")
        } else {
            format!("{base}{CONTROL_PATH}/{rest}")
        };
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, MAX_BODY).collect().await {
            Ok(body) => body.to_bytes(),
            Err(e) => {
                return ApiError::bad_request(format!("cannot read the request body: {e}"))
                    .into_response();
            }
        };
        let mut forward = Request::builder().method(parts.method).uri(target);
        for name in [header::AUTHORIZATION, header::CONTENT_TYPE] {
            if let Some(value) = parts.headers.get(&name) {
                forward = forward.header(name, value);
            }
        }
        if let Some(value) = parts.headers.get("traceparent") {
            forward = forward.header("traceparent", value);
        }
        let forward = match forward.body(Full::new(body)) {
            Ok(forward) => forward,
            Err(e) => return ApiError::bad_request(e.to_string()).into_response(),
        };
        match self.inner.client.request(forward).await {
            Ok(response) => response.map(boxed),
            Err(e) => ApiError::from_status(
                StatusCode::BAD_GATEWAY,
                format!("service {service} did not answer: {e}"),
            )
            .into_response(),
        }
    }
}

crate::middleware::impl_endpoint!(DashboardService);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_needs_a_plain_http_url_and_a_unique_name() {
        assert!(
            DashboardService::new()
                .service("orders", "ftp://x")
                .is_err()
        );
        assert!(
            DashboardService::new()
                .service("a/b", "http://127.0.0.1:1")
                .is_err()
        );
        assert!(
            DashboardService::new()
                .service("orders", "http://127.0.0.1:1")
                .unwrap()
                .service("orders", "http://127.0.0.1:2")
                .is_err()
        );
    }

    #[test]
    fn the_page_names_its_assets_under_the_prefix() {
        let dashboard = DashboardService::new().prefix("/ops/");
        assert!(dashboard.inner.page.contains("/ops/dashboard.js"));
        assert!(!dashboard.inner.page.contains("{{PREFIX}}"));
    }
}
