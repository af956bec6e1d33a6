//! The server runner: serves any tower service on hyper 1 (HTTP/1.1 and h2c on the same port)
//! and shuts down gracefully.
//!
//! [`Server`] accepts any `tower::Service<http::Request<hyper::body::Incoming>>` whose
//! response body is an [`http_body::Body`] of [`Bytes`]: an axum `Router` as is, an
//! application wrapped in the [standard layers](crate::layers::StandardLayers) and the
//! [health endpoints](crate::health), or a plain `service_fn`.
//!
//! # Shutdown
//! Shutdown begins on SIGTERM/SIGINT (unless [`Server::handle_signals`] is `false`) or when the
//! [`Shutdown`] given to [`Server::shutdown`] is triggered, and follows the order Kubernetes
//! expects:
//!
//! 1. readiness fails: [`HealthRegistry::mark_shutting_down`] on the registry given to
//!    [`Server::health`], so `/health/ready` answers 503;
//! 2. the server keeps serving for the pre-stop delay ([`ServerConfig::pre_stop_delay`],
//!    default 0), so load balancers notice and stop routing here;
//! 3. the listener is closed: new connections are refused;
//! 4. in-flight requests drain: HTTP/1 connections close after their current response, HTTP/2
//!    connections get a GOAWAY; after [`ServerConfig::drain_timeout`] (default 30 s) the
//!    remaining connections are closed;
//! 5. the on-shutdown hook runs ([`Server::on_shutdown`], e.g. flushing telemetry);
//! 6. [`Server::serve`] returns.
//!
//! At most [`ServerConfig::max_connections`] connections are open at once (default 10 000);
//! further connections wait in the listen backlog.
//!
//! # Limits and error answers
//! - **Slow or silent clients.** An HTTP/1 request head must arrive within
//!   [`ServerConfig::header_read_timeout`] (default 30 s) once the server starts reading it,
//!   so an idle keep-alive connection closes after that long. A new connection, HTTP/1 or h2c,
//!   must also deliver its *first request* within that time, or it is closed: one that
//!   connects and sends nothing, stops inside the HTTP/2 preface, or sends the preface and no
//!   request. (hyper-util reads a connection's first bytes to tell HTTP/1 from HTTP/2 before
//!   hyper's head timeout applies, and HTTP/2 has none, so without this a silent connection
//!   would hold a connection slot for ever.) Both run on one coarse timer: a connection is
//!   cut off between the timeout and the timeout plus an eighth of it (at most 250 ms more).
//!   An HTTP/2 connection that has served a request and then stays idle is not closed by the
//!   server.
//! - **Header size.** A request whose header fields take more than
//!   [`ServerConfig::max_header_bytes`] (default 16 KiB) is answered 431 with the JSON error
//!   body, on HTTP/1.1 and h2c alike, with the `traceparent`'s trace id if it has one.
//! - **Every error answer has the JSON body** `{"success":false,"error":{...},"traceId":...}`.
//!   [`StandardLayers`](crate::layers::StandardLayers) gives it to the application's errors,
//!   with the trace id; the server gives it, with a `null` trace id, to whatever error
//!   response reaches it without a JSON body (a router's 404/405 outside the layers), and to
//!   the answers hyper writes itself before any service runs: 400 for a request head that does
//!   not parse, 431 for more than 100 header fields or a head beyond hyper's own buffer limit
//!   (408 KiB, or twice `max_header_bytes` if that is more), 414 for a URI over hyper's limit. Those never reach a layer, so they are not
//!   traced, counted or logged (a DEBUG line from `chassis_http::server` only), and their body
//!   has a `null` trace id and the status's reason phrase as its message. h2's own answer to a
//!   header list beyond 4 times `max_header_bytes` (at least 64 KiB) stays a bare 431.
//!
//! # HTTPS
//! With [`ServerConfig::tls`] (feature `tls`, on by default) the port speaks HTTPS: each
//! connection does its TLS handshake in its own task, within the header read timeout (which
//! then bounds handshake and first request together), and serves HTTP/2 or HTTP/1.1 as
//! negotiated by ALPN; the limits, error answers and drain above apply unchanged. The
//! certificate is reloaded when its files change, clients can be required to present a
//! certificate, and their verified identity reaches the handlers; a plain HTTP request to the
//! port is answered 400 with the JSON error body. See [`crate::tls::server`] and
//! [`crate::tls::peer`].
//!
//! # The admin listener
//! [`ServerConfig::admin`] gives the server a second listener, Spring Boot Actuator's
//! "management port": it serves the [probes](Server::probes) (liveness, readiness, startup and
//! `/metrics`) and the [admin routes](Server::admin_service) (e.g.
//! [`LogLevelService`](crate::admin::LogLevelService)), and anything else there is a 404.
//! The application's port then serves the application only: no probe, no `/metrics`, so a
//! public port does not publish the service's metrics or its dependencies' health. Point
//! Kubernetes probes, load-balancer health checks and Prometheus at the admin port, and keep
//! that port off the public network. Without `admin` the liveness, readiness and startup
//! probes are served on the application's port, in front of the application, but `/metrics`
//! is not: a server given [`HealthLayer::prometheus`] probes and no admin listener refuses to
//! start ([`ErrorKind::InvalidConfig`]) unless [`ServerConfig::public_metrics`] says the
//! application's port may publish the metrics (a port only the cluster reaches). So a service
//! never publishes its metrics on a public port by default.
//!
//! The admin listener speaks plain HTTP (also when the main port is HTTPS), with the main
//! port's limits and timeouts; it is bound with the main one (a failure is
//! [`ErrorKind::AdminBind`]) and keeps serving through the shutdown, so readiness is seen
//! failing and metrics can be scraped while requests drain; it closes once the main port has
//! drained, before the on-shutdown hook runs.
//!
//! In a service run by [`chassis_core::lifecycle::App`], register the server as an
//! [`HttpServer`] component instead: the app then owns signals, readiness and the pre-stop
//! delay, and stops the server before the consumers' handlers, the relay and the connections
//! it depends on.
//!
//! # Example
//! ```no_run
//! use chassis_core::{health::HealthRegistry, shutdown::Shutdown};
//! use chassis_http::{health::HealthLayer, layers::StandardLayers, server::{Server, ServerConfig}};
//! use tower::{ServiceBuilder, service_fn};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), chassis_http::error::Error> {
//! let registry = HealthRegistry::new();
//! let shutdown = Shutdown::new();
//! let app = service_fn(|_req: http::Request<_>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hello")))
//! });
//! let service = ServiceBuilder::new().layer(StandardLayers::new()).service(app);
//!
//! // Probes and /metrics on their own port, 9090; the application alone on 8080.
//! let config = ServerConfig::default().admin("0.0.0.0:9090".parse().unwrap());
//! let server = Server::bind(config).await?
//!     .probes(HealthLayer::new(registry.clone()))
//!     .shutdown(shutdown.clone())
//!     .health(registry.clone())
//!     .on_shutdown(|| async { /* telemetry.shutdown(deadline).await */ });
//! registry.mark_started();
//! server.serve(service).await?;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use bytes::Bytes;
use chassis_core::health::HealthRegistry;
use chassis_core::shutdown::Shutdown;
use hyper::body::Incoming;
use hyper::rt::Timer as _;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;
use tower::util::BoxCloneService;
use tower_layer::Layer as _;
use tower_service::Service;

/// The `probes` and `admin_service` setters of [`Server`] and [`HttpServer`], which hand what
/// they are given to the builder's `extras`; each builder gives its own docs.
macro_rules! extras_setters {
    ($(#[$probes:meta])* probes, $(#[$admin:meta])* admin_service $(,)?) => {
        $(#[$probes])*
        pub fn probes(mut self, probes: crate::health::HealthLayer) -> Self {
            self.extras.probes(probes);
            self
        }

        $(#[$admin])*
        pub fn admin_service<A, B>(mut self, service: A) -> Self
        where
            A: ::tower_service::Service<
                    ::http::Request<::hyper::body::Incoming>,
                    Response = ::http::Response<B>,
                > + Clone
                + Send
                + 'static,
            A::Future: Send + 'static,
            A::Error: Into<crate::body::BoxError>,
            B: ::http_body::Body<Data = ::bytes::Bytes> + Send + 'static,
            B::Error: Into<crate::body::BoxError>,
        {
            self.extras.admin_service(service);
            self
        }
    };
}

mod component;
mod connection_service;
mod connections;
mod early_errors;
mod header_timer;
#[cfg(feature = "tls")]
mod tls_connection;

pub use component::HttpServer;

use connection_service::ConnectionService;
use connections::Connections;
use early_errors::EarlyErrorIo;
use header_timer::HeaderReadTimer;

use crate::body::{Body, BoxError, boxed};
use crate::error::{Error, ErrorKind};
use crate::health::{HealthLayer, HealthService};
#[cfg(feature = "tls")]
use crate::tls::server::{ServerTls, ServerTlsConfig};

/// Settings of a [`Server`], deserialisable from config files (durations as `"30s"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on. Defaults to `0.0.0.0:8080`.
    pub bind: SocketAddr,
    /// How long in-flight requests may take to finish once shutdown began. Defaults to 30 s.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// How long to keep serving after readiness turned red, before closing the listener, so
    /// load balancers stop routing here first. Defaults to 0 (set it to a few seconds on
    /// Kubernetes).
    #[serde(with = "humantime_serde")]
    pub pre_stop_delay: Duration,
    /// Maximum open connections. Defaults to 10 000.
    pub max_connections: usize,
    /// Time a client has to send a complete HTTP/1 request head, and time a new connection
    /// (HTTP/1 or h2c) has to deliver its first request. Defaults to 30 s.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Most bytes of header fields a request may carry, counted as HTTP/1.1 writes them (name,
    /// value and 4 bytes of `": "` and CRLF per field; HTTP/2 fields uncompressed, the same
    /// way). Larger requests are answered 431 with the JSON error body. Defaults to 16 KiB
    /// (16 384), as nginx's and h2's defaults allow; between 1 KiB and 16 MiB.
    pub max_header_bytes: usize,
    /// HTTPS: certificate, key, rotation, client certificates (see [`crate::tls::server`]).
    /// Defaults to none: plain HTTP/1.1 and h2c.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub tls: Option<ServerTlsConfig>,
    /// Address of the admin listener, which serves the [probes](Server::probes) (with
    /// `/metrics`) and the [admin routes](Server::admin_service) apart from the application
    /// (see [the admin listener](self#the-admin-listener)). Defaults to none: the probes are
    /// served on [`bind`](Self::bind) in front of the application, and `/metrics` is refused
    /// unless [`public_metrics`](Self::public_metrics) is set.
    pub admin: Option<SocketAddr>,
    /// Without an [`admin`](Self::admin) listener, serve `/metrics` (from
    /// [`HealthLayer::prometheus`]) on [`bind`](Self::bind), the application's port. Defaults to
    /// `false`: metrics are served on the admin listener only, and probes with a Prometheus
    /// handle but no admin listener are an [`ErrorKind::InvalidConfig`] at start, so a public
    /// port never publishes them by accident. Ignored when `admin` is set.
    pub public_metrics: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([0, 0, 0, 0], 8080)),
            drain_timeout: Duration::from_secs(30),
            pre_stop_delay: Duration::ZERO,
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(30),
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            #[cfg(feature = "tls")]
            tls: None,
            admin: None,
            public_metrics: false,
        }
    }
}

/// [`ServerConfig::max_header_bytes`]'s default: 16 KiB.
const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;

/// hyper's own HTTP/1 read-buffer limit when none is set (8 KiB + 400 KiB): beyond it hyper
/// answers 431 itself.
const HYPER_DEFAULT_MAX_BUF_SIZE: usize = 8192 + 4096 * 100;

/// The protocol libraries' own limits, set well above [`ServerConfig::max_header_bytes`] so
/// that the chassis answers (with its JSON body and the trace id) the oversized requests a
/// client plausibly sends; beyond them hyper (HTTP/1: rewritten with the JSON body, see
/// [`early_errors`]) or h2 (a bare 431) answers. HTTP/1 keeps hyper's default buffer limit
/// unless the configured one needs more; HTTP/2's header-list limit is 4 times the configured
/// one (h2 adds 32 bytes per field), at least 64 KiB.
fn protocol_limits(max_header_bytes: usize) -> (usize, u32) {
    let h1 = HYPER_DEFAULT_MAX_BUF_SIZE.max(max_header_bytes.saturating_mul(2));
    let h2 = max_header_bytes.saturating_mul(4).max(64 * 1024);
    (h1, u32::try_from(h2).unwrap_or(u32::MAX))
}

impl ServerConfig {
    chassis_core::__builder_setters! {
        /// Address to listen on. Defaults to `0.0.0.0:8080`.
        bind(addr): SocketAddr,
        /// Drain deadline. Defaults to 30 s.
        drain_timeout(timeout): Duration,
        /// Pre-stop delay. Defaults to 0.
        pre_stop_delay(delay): Duration,
        /// Maximum open connections. Defaults to 10 000.
        max_connections(max): usize,
        /// HTTP/1 request head timeout, and the time a new connection has to deliver its first
        /// request. Defaults to 30 s.
        header_read_timeout(timeout): Duration,
        /// Most bytes of header fields per request, answered 431 beyond. Defaults to 16 KiB.
        max_header_bytes(max): usize,
        /// Serves HTTPS with `tls` (see [`crate::tls::server`]). Defaults to plain HTTP/1.1 and
        /// h2c.
        #[cfg(feature = "tls")]
        #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
        tls: Some(ServerTlsConfig),
        /// Serves the probes, `/metrics` and the admin routes on a listener of their own at
        /// `addr`, and not on [`bind`](Self::bind). Defaults to none (the probes are served on
        /// `bind`, `/metrics` only with [`public_metrics`](Self::public_metrics)).
        admin(addr): Some(SocketAddr),
        /// Without an admin listener, serves `/metrics` on [`bind`](Self::bind), the
        /// application's port, next to the probes. Defaults to `false` (see
        /// [`public_metrics`](Self::public_metrics)'s field); only for a port that the public
        /// cannot reach.
        public_metrics(enabled): bool,
    }

    fn validate(&self) -> Result<(), Error> {
        if self.max_connections == 0 || self.max_connections > Semaphore::MAX_PERMITS {
            return Err(Error::new(ErrorKind::InvalidConfig {
                reason: format!(
                    "max_connections must be between 1 and {}",
                    Semaphore::MAX_PERMITS
                ),
            }));
        }
        if self.header_read_timeout.is_zero() {
            return Err(Error::new(ErrorKind::InvalidConfig {
                reason: "header_read_timeout must be positive".into(),
            }));
        }
        if !(1024..=16 << 20).contains(&self.max_header_bytes) {
            return Err(Error::new(ErrorKind::InvalidConfig {
                reason: "max_header_bytes must be between 1 KiB and 16 MiB".into(),
            }));
        }
        Ok(())
    }
}

type Hook = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// What happened during a [`Server::serve`] run.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServeOutcome {
    /// Whether every connection finished within the drain timeout (otherwise the rest were
    /// closed).
    pub drained: bool,
    /// Connections accepted over the server's life.
    pub connections: u64,
}

/// The services of the admin listener's own routes ([`Server::admin_service`]), boxed: one
/// per server, not on the application's path.
type AdminRoutes = BoxCloneService<http::Request<Incoming>, http::Response<Body>, BoxError>;

/// What the server serves besides the application: the probes and the admin routes, on the
/// admin listener or (without one) the probes in front of the application.
#[derive(Clone, Default)]
pub(crate) struct Extras {
    probes: Option<HealthLayer>,
    admin_routes: Option<AdminRoutes>,
}

impl fmt::Debug for Extras {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Extras")
            .field("probes", &self.probes)
            .field("admin_routes", &self.admin_routes.is_some())
            .finish()
    }
}

impl Extras {
    pub(crate) fn probes(&mut self, probes: HealthLayer) {
        self.probes = Some(probes);
    }

    pub(crate) fn admin_service<A, B>(&mut self, service: A)
    where
        A: Service<http::Request<Incoming>, Response = http::Response<B>> + Clone + Send + 'static,
        A::Future: Send + 'static,
        A::Error: Into<BoxError>,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let service = ServiceExt::<http::Request<Incoming>>::map_err(
            ServiceExt::<http::Request<Incoming>>::map_response(
                service,
                |res: http::Response<B>| res.map(boxed),
            ),
            Into::into,
        );
        self.admin_routes = Some(BoxCloneService::new(service));
    }

    /// Checks that what was given fits `admin` (the admin address, if any): admin routes need
    /// an admin listener, an admin listener needs something to serve, and `/metrics` goes on
    /// the application's port only when `public_metrics` allows it.
    pub(crate) fn check(
        &self,
        admin: Option<SocketAddr>,
        public_metrics: bool,
    ) -> Result<(), Error> {
        let reason = match admin {
            None if self.admin_routes.is_some() => {
                "admin routes are served on the admin listener: set ServerConfig::admin"
            }
            None if !public_metrics
                && self
                    .probes
                    .as_ref()
                    .is_some_and(HealthLayer::serves_metrics) =>
            {
                "the probes serve /metrics, which would publish the metrics on the application's \
                 port: set ServerConfig::admin to serve them on the admin listener, or \
                 ServerConfig::public_metrics if this port is not public"
            }
            Some(_) if self.probes.is_none() && self.admin_routes.is_none() => {
                "ServerConfig::admin is set but the server has no probes or admin routes to serve there"
            }
            _ => return Ok(()),
        };
        Err(Error::new(ErrorKind::InvalidConfig {
            reason: reason.into(),
        }))
    }

    /// The layer in front of the application: the probes when there is no admin listener,
    /// nothing otherwise.
    fn main_layer(&self, admin: bool) -> HealthLayer {
        match &self.probes {
            Some(probes) if !admin => probes.clone(),
            _ => HealthLayer::inactive(),
        }
    }

    /// The admin listener's service: the probes, then the admin routes, then 404.
    fn admin_service_stack(self) -> HealthService<AdminRoutes> {
        let routes = self.admin_routes.unwrap_or_else(|| {
            BoxCloneService::new(ServiceExt::<http::Request<Incoming>>::map_err(
                crate::health::health_service(HealthLayer::inactive()),
                |never| match never {},
            ))
        });
        self.probes
            .unwrap_or_else(HealthLayer::inactive)
            .layer(routes)
    }
}

/// Binds the admin listener at `addr`, synchronously (for [`Server::from_listener`]).
fn bind_admin(addr: SocketAddr) -> Result<TcpListener, Error> {
    let bind_error = |e| Error::with_source(ErrorKind::AdminBind { addr }, e);
    let std = std::net::TcpListener::bind(addr).map_err(bind_error)?;
    std.set_nonblocking(true).map_err(bind_error)?;
    TcpListener::from_std(std).map_err(bind_error)
}

/// A bound server, ready to [`serve`](Server::serve); see the [module docs](self).
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    /// The admin listener and its address, with `config.admin`.
    admin: Option<(TcpListener, SocketAddr)>,
    extras: Extras,
    config: ServerConfig,
    shutdown: Shutdown,
    health: Option<HealthRegistry>,
    on_shutdown: Option<Hook>,
    handle_signals: bool,
    /// The loaded certificate, key and client CA, with `config.tls`.
    #[cfg(feature = "tls")]
    tls: Option<Arc<ServerTls>>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("admin_addr", &self.admin_addr())
            .field("extras", &self.extras)
            .field("config", &self.config)
            .field("health", &self.health)
            .field("on_shutdown", &self.on_shutdown.is_some())
            .field("handle_signals", &self.handle_signals)
            .finish()
    }
}

impl Server {
    /// Binds `config.bind` (port 0 picks a free port; see [`local_addr`](Self::local_addr)),
    /// and `config.admin` if set: an admin address that cannot be bound is an
    /// [`ErrorKind::AdminBind`] error.
    pub async fn bind(config: ServerConfig) -> Result<Self, Error> {
        config.validate()?;
        let listener = TcpListener::bind(config.bind)
            .await
            .map_err(|e| Error::with_source(ErrorKind::Bind { addr: config.bind }, e))?;
        Self::from_listener(listener, config)
    }

    /// Serves on an already bound listener (`config.bind` is ignored); binds `config.admin`
    /// if set (an [`ErrorKind::AdminBind`] error if it cannot be bound).
    ///
    /// With [`ServerConfig::tls`], reads the certificate, key and client CA files now: one
    /// that is missing or unusable is an [`ErrorKind::Tls`] error naming the file.
    pub fn from_listener(listener: TcpListener, config: ServerConfig) -> Result<Self, Error> {
        config.validate()?;
        #[cfg(feature = "tls")]
        let tls = config.tls.as_ref().map(ServerTls::load).transpose()?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| Error::with_source(ErrorKind::Io, e))?;
        let admin = match config.admin {
            Some(addr) => {
                let admin = bind_admin(addr)?;
                let admin_addr = admin
                    .local_addr()
                    .map_err(|e| Error::with_source(ErrorKind::Io, e))?;
                Some((admin, admin_addr))
            }
            None => None,
        };
        Ok(Self {
            listener,
            local_addr,
            admin,
            extras: Extras::default(),
            config,
            shutdown: Shutdown::new(),
            health: None,
            on_shutdown: None,
            handle_signals: true,
            #[cfg(feature = "tls")]
            tls,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the admin listener, with [`ServerConfig::admin`].
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(_, addr)| *addr)
    }

    extras_setters! {
        /// Serves `probes` (liveness, readiness, startup, and `/metrics` with
        /// [`HealthLayer::prometheus`]): on the admin listener with [`ServerConfig::admin`], in
        /// front of the application otherwise. Defaults to none.
        probes,
        /// Serves `service` on the admin listener, behind the probes: every request that is not
        /// a probe (e.g. [`LogLevelService`](crate::admin::LogLevelService)'s
        /// `/admin/loggers`). Needs [`ServerConfig::admin`]: without it
        /// [`serve`](Self::serve) fails with [`ErrorKind::InvalidConfig`]. Defaults to none (404).
        admin_service,
    }

    pub(crate) fn extras(mut self, extras: Extras) -> Self {
        self.extras = extras;
        self
    }

    chassis_core::__builder_setters! {
        /// Shuts down when `shutdown` is triggered. Defaults to a fresh [`Shutdown`] (see
        /// [`shutdown_handle`](Self::shutdown_handle)).
        shutdown: Shutdown,
    }

    /// The [`Shutdown`] that stops this server; trigger it to shut down from code.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    chassis_core::__builder_setters! {
        /// Marks `registry` as shutting down first thing on shutdown, so readiness fails before
        /// the listener closes. Defaults to none.
        health(registry): Some(HealthRegistry),
    }

    /// Runs `hook` after the connections drained, before [`serve`](Self::serve) returns
    /// (flush telemetry here). Defaults to none.
    pub fn on_shutdown<F, Fut>(mut self, hook: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.on_shutdown = Some(Box::new(move || Box::pin(hook())));
        self
    }

    chassis_core::__builder_setters! {
        /// Whether SIGTERM/SIGINT trigger the shutdown. Defaults to `true`.
        handle_signals(enabled): bool,
    }

    /// Serves `service` until shutdown, then drains; see the [module docs](self).
    ///
    /// Fails with [`ErrorKind::InvalidConfig`] if [admin routes](Self::admin_service) were
    /// given without [`ServerConfig::admin`], or an admin listener has nothing to serve.
    pub async fn serve<S, B>(self, service: S) -> Result<ServeOutcome, Error>
    where
        S: Service<http::Request<Incoming>, Response = http::Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let Self {
            listener,
            local_addr,
            admin,
            extras,
            config,
            shutdown,
            health,
            on_shutdown,
            handle_signals,
            #[cfg(feature = "tls")]
            tls,
        } = self;
        extras.check(admin.as_ref().map(|(_, addr)| *addr), config.public_metrics)?;
        let signals = handle_signals.then(|| shutdown.listen_for_signals());
        let service = extras.main_layer(admin.is_some()).layer(service);

        // The admin listener serves plain HTTP until the application's listener has drained,
        // so readiness (failing) and metrics stay visible through the whole shutdown.
        let admin_stop = Shutdown::new();
        let admin_task = admin.map(|(listener, local_addr)| {
            let admin_config = ServerConfig {
                pre_stop_delay: Duration::ZERO,
                #[cfg(feature = "tls")]
                tls: None,
                ..config.clone()
            };
            let listening = Listening {
                listener,
                local_addr,
                config: admin_config,
                shutdown: admin_stop.clone(),
                health: None,
                role: Role::Admin,
                #[cfg(feature = "tls")]
                tls: None,
            };
            // Stops with `serve`, whichever way it returns.
            tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
                listening.run(extras.admin_service_stack()),
            ))
        });

        let main = Listening {
            listener,
            local_addr,
            config,
            shutdown,
            health,
            role: Role::Main,
            #[cfg(feature = "tls")]
            tls,
        };
        let mut outcome = main.run(service).await;
        if let Some(admin_task) = admin_task {
            admin_stop.trigger();
            match admin_task.await {
                Ok(admin) => outcome.drained &= admin.drained,
                Err(e) => {
                    tracing::warn!(target: "chassis_http::server", error = %e, "admin listener task failed");
                }
            }
        }
        if let Some(hook) = on_shutdown {
            hook().await;
        }
        if let Some(signals) = signals {
            signals.abort();
        }
        tracing::info!(target: "chassis_http::server", drained = outcome.drained, "HTTP server stopped");
        Ok(outcome)
    }
}

/// Which of a server's listeners a [`Listening`] is, for its log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Main,
    Admin,
}

/// One bound listener with what it needs to serve and drain.
struct Listening {
    listener: TcpListener,
    local_addr: SocketAddr,
    config: ServerConfig,
    shutdown: Shutdown,
    health: Option<HealthRegistry>,
    role: Role,
    #[cfg(feature = "tls")]
    tls: Option<Arc<ServerTls>>,
}

impl Listening {
    /// Accepts and serves connections until shutdown, then drains them.
    async fn run<S, B>(self, service: S) -> ServeOutcome
    where
        S: Service<http::Request<Incoming>, Response = http::Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let Self {
            listener,
            local_addr,
            config,
            shutdown,
            health,
            role,
            #[cfg(feature = "tls")]
            tls,
        } = self;
        // Certificate rotation; stops with `serve`, whichever way it returns.
        #[cfg(feature = "tls")]
        let _tls_reloader = tls
            .clone()
            .map(|tls| tokio_util::task::AbortOnDropHandle::new(tokio::spawn(tls.watch())));

        // HTTP/1 head reads get the coarse timer (one per request head, almost never firing);
        // HTTP/2 keeps tokio's.
        let header_timer = HeaderReadTimer::new();
        // Stops with `serve`, whichever way it returns.
        let _header_sweeper = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
            header_timer
                .clone()
                .sweep(HeaderReadTimer::tick_for(config.header_read_timeout)),
        ));
        let (h1_max_buf, h2_max_header_list) = protocol_limits(config.max_header_bytes);
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(header_timer.clone())
            .header_read_timeout(config.header_read_timeout)
            .max_buf_size(h1_max_buf);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(h2_max_header_list);
        let builder = Arc::new(builder);

        let connection_limit = Arc::new(Semaphore::new(config.max_connections));
        let open = Connections::new();
        let mut connections: u64 = 0;

        #[cfg(feature = "tls")]
        let scheme = if tls.is_some() { "https" } else { "http" };
        #[cfg(not(feature = "tls"))]
        let scheme = "http";
        let listener_name = match role {
            Role::Main => "HTTP server",
            Role::Admin => "admin listener (probes, metrics)",
        };
        tracing::info!(target: "chassis_http::server", addr = %local_addr, scheme, "{listener_name} listening");

        let stop_accepting = async {
            shutdown.triggered().await;
            if let Some(health) = &health {
                health.mark_shutting_down();
            }
            if role == Role::Main {
                tracing::info!(
                    target: "chassis_http::server",
                    pre_stop_delay_ms = config.pre_stop_delay.as_millis() as u64,
                    "shutdown began: readiness failing, listener closes after the pre-stop delay"
                );
            }
            tokio::time::sleep(config.pre_stop_delay).await;
        };
        tokio::pin!(stop_accepting);

        loop {
            let permit = tokio::select! {
                biased;
                () = &mut stop_accepting => break,
                permit = connection_limit.clone().acquire_owned() => {
                    permit.expect("the connection semaphore is never closed")
                }
            };
            let stream = tokio::select! {
                biased;
                () = &mut stop_accepting => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _peer)) => stream,
                    Err(e) if is_connection_error(&e) => continue,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(target: "chassis_http::server", error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            connections += 1;
            let _ = stream.set_nodelay(true);
            let builder = builder.clone();
            let served = Arc::new(AtomicBool::new(false));
            let service =
                ConnectionService::new(service.clone(), config.max_header_bytes, served.clone());
            // Time to the first request (TLS handshake included), on the same coarse timer as
            // HTTP/1 heads.
            #[cfg_attr(not(feature = "tls"), allow(unused_mut))]
            let mut first_request = header_timer.sleep(config.header_read_timeout);
            // Registered here, not in the task, so the drain below counts it.
            let tracked = open.register();
            #[cfg(feature = "tls")]
            if let Some(tls) = &tls {
                let tls = tls.clone();
                tokio::spawn(async move {
                    if let Some(accepted) =
                        tls_connection::accept(stream, &tls, &mut first_request, &tracked).await
                    {
                        let service = service.with_peer(accepted.peer);
                        serve_connection(
                            &builder,
                            accepted.stream,
                            service,
                            tracked,
                            first_request,
                            served,
                        )
                        .await;
                    }
                    drop(permit);
                });
                continue;
            }
            tokio::spawn(async move {
                serve_connection(&builder, stream, service, tracked, first_request, served).await;
                drop(permit);
            });
        }

        drop(listener);
        open.drain();
        tracing::info!(
            target: "chassis_http::server",
            open_connections = open.count(),
            drain_timeout_ms = config.drain_timeout.as_millis() as u64,
            "{listener_name} closed; draining in-flight requests"
        );
        let drained = tokio::time::timeout(config.drain_timeout, open.all_closed())
            .await
            .is_ok();
        if !drained {
            tracing::warn!(
                target: "chassis_http::server",
                "drain timeout reached; closing the remaining connections"
            );
            open.close_all();
        }
        ServeOutcome {
            drained,
            connections,
        }
    }
}

/// Serves one connection's HTTP over `io` (TCP, or TLS after the handshake) until it closes.
async fn serve_connection<S, B, I>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    service: ConnectionService<S>,
    tracked: connections::Registration,
    first_request: Pin<Box<dyn hyper::rt::Sleep>>,
    served: Arc<AtomicBool>,
) where
    S: Service<http::Request<Incoming>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = EarlyErrorIo::new(TokioIo::new(io));
    let connection = builder.serve_connection(io, service);
    // `None`: closed at the drain deadline or for want of a first request.
    if let Some(Err(e)) = tracked.watch(connection, first_request, served).await {
        tracing::debug!(target: "chassis_http::server", error = %e, "connection error");
    }
}

fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_validation() {
        let config: ServerConfig =
            serde_json::from_str(r#"{"bind":"127.0.0.1:0","drain_timeout":"5s"}"#).unwrap();
        assert_eq!(config.drain_timeout, Duration::from_secs(5));
        assert_eq!(config.max_connections, 10_000);
        assert!(config.validate().is_ok());
        assert!(config.clone().max_connections(0).validate().is_err());
        assert_eq!(config.max_header_bytes, 16 * 1024);
        assert!(config.clone().max_header_bytes(512).validate().is_err());
        assert!(
            config
                .clone()
                .max_header_bytes(32 << 20)
                .validate()
                .is_err()
        );
        assert!(
            config
                .clone()
                .max_header_bytes(64 * 1024)
                .validate()
                .is_ok()
        );
        let config: ServerConfig = serde_json::from_str(r#"{"max_header_bytes":8192}"#).unwrap();
        assert_eq!(config.max_header_bytes, 8192);
    }

    #[test]
    fn protocol_limits_stay_above_the_configured_one() {
        assert_eq!(
            protocol_limits(16 * 1024),
            (HYPER_DEFAULT_MAX_BUF_SIZE, 64 * 1024)
        );
        assert_eq!(
            protocol_limits(1 << 20),
            (2 << 20, 4 << 20),
            "beyond hyper's default buffer"
        );
    }
}
