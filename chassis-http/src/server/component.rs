//! The server as a lifecycle [`Component`]: bound at start (so a port in use stops the
//! service under the component's name), intake stopped by closing the listener, drained at
//! its stage's deadline.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use chassis_core::BoxError as CoreBoxError;
use chassis_core::health::BoxFuture;
use chassis_core::lifecycle::{Component, Context, Stage};
use chassis_core::shutdown::Shutdown;
use hyper::body::Incoming;
use tokio::task::JoinHandle;
use tower_service::Service;

use super::{Extras, ServeOutcome, Server, ServerConfig};
use crate::body::BoxError;
use crate::error::Error;

/// An HTTP [`Server`] run by a [`chassis_core::lifecycle::App`], in [`Stage::Intake`].
///
/// - **start** binds [`ServerConfig::bind`] (and [`ServerConfig::admin`], the
///   [admin listener](super#the-admin-listener) serving the [probes](Self::probes)) and serves
///   `service` in the background; a bind error (port in use, address not available) fails the
///   start under the component's name;
/// - **stop intake** closes the listener: new connections are refused;
/// - **stop** waits for in-flight requests, up to [`ServerConfig::drain_timeout`] and the
///   app's drain deadline, whichever is shorter, then closes what is left; the admin listener
///   closes after that.
///
/// Readiness and the pre-stop delay belong to the app
/// ([`LifecycleConfig::pre_stop_delay`](chassis_core::lifecycle::LifecycleConfig::pre_stop_delay)):
/// the server's own [`ServerConfig::pre_stop_delay`] is not applied here, and the server does
/// not listen for signals itself.
///
/// # Example
/// ```no_run
/// use chassis_core::lifecycle::App;
/// use chassis_http::health::HealthLayer;
/// use chassis_http::server::{HttpServer, ServerConfig};
///
/// # async fn run() -> Result<(), chassis_core::Error> {
/// let app = App::new("hello");
/// let router = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
/// // The application on 8080; probes (and /metrics, with `.prometheus(handle)`) on 9090.
/// let config = ServerConfig::default().admin("0.0.0.0:9090".parse().unwrap());
/// let server = HttpServer::new(config, router).probes(HealthLayer::new(app.health().clone()));
/// app.component(server).run().await
/// # }
/// ```
pub struct HttpServer<S> {
    name: String,
    config: ServerConfig,
    service: Option<S>,
    listener: Option<std::net::TcpListener>,
    extras: Extras,
    stop: Shutdown,
    local_addr: Arc<OnceLock<SocketAddr>>,
    admin_addr: Arc<OnceLock<SocketAddr>>,
    task: Option<JoinHandle<Result<ServeOutcome, Error>>>,
}

impl<S> std::fmt::Debug for HttpServer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("local_addr", &self.local_addr.get())
            .field("admin_addr", &self.admin_addr.get())
            .field("extras", &self.extras)
            .field("running", &self.task.is_some())
            .finish()
    }
}

impl<S> HttpServer<S> {
    /// A server component named `"http"` that will bind `config.bind` and serve `service`.
    pub fn new(config: ServerConfig, service: S) -> Self {
        Self {
            name: "http".into(),
            config,
            service: Some(service),
            listener: None,
            extras: Extras::default(),
            stop: Shutdown::new(),
            local_addr: Arc::new(OnceLock::new()),
            admin_addr: Arc::new(OnceLock::new()),
            task: None,
        }
    }

    /// Serves on an already bound listener instead of binding `config.bind` (tests bind
    /// port 0 and read the address before the app starts).
    pub fn from_listener(
        listener: std::net::TcpListener,
        config: ServerConfig,
        service: S,
    ) -> Self {
        Self {
            listener: Some(listener),
            ..Self::new(config, service)
        }
    }

    chassis_core::__builder_setters! {
        /// The component's name in logs and errors. Defaults to `"http"`.
        name: into String,
    }

    extras_setters! {
        /// Serves `probes` (with `/metrics` if given a Prometheus handle): on the admin listener
        /// with [`ServerConfig::admin`], in front of `service` otherwise. Defaults to none. See
        /// [`Server::probes`].
        probes,
        /// Serves `service` on the admin listener behind the probes (e.g.
        /// [`LogLevelService`](crate::admin::LogLevelService)); needs [`ServerConfig::admin`], or
        /// the start fails. Defaults to none (404). See [`Server::admin_service`].
        admin_service,
    }

    /// The bound address, once started; shared, so it can be read after the component moved
    /// into the app.
    pub fn local_addr(&self) -> Arc<OnceLock<SocketAddr>> {
        self.local_addr.clone()
    }

    /// The admin listener's bound address, once started with [`ServerConfig::admin`]; shared
    /// like [`local_addr`](Self::local_addr).
    pub fn admin_addr(&self) -> Arc<OnceLock<SocketAddr>> {
        self.admin_addr.clone()
    }
}

impl<S, B> Component for HttpServer<S>
where
    S: Service<http::Request<Incoming>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn stage(&self) -> Stage {
        Stage::Intake
    }

    fn start(&mut self, ctx: Context) -> BoxFuture<'_, Result<(), CoreBoxError>> {
        Box::pin(async move {
            let service = self.service.take().ok_or("HTTP server started twice")?;
            // Before binding: a misconfiguration fails the start, not the running server.
            self.extras
                .check(self.config.admin, self.config.public_metrics)?;
            // The app owns readiness and the pre-stop delay.
            let config = self.config.clone().pre_stop_delay(Duration::ZERO);
            let server = match self.listener.take() {
                Some(std) => {
                    std.set_nonblocking(true)?;
                    Server::from_listener(tokio::net::TcpListener::from_std(std)?, config)?
                }
                None => Server::bind(config).await?,
            };
            let _ = self.local_addr.set(server.local_addr());
            if let Some(admin) = server.admin_addr() {
                let _ = self.admin_addr.set(admin);
            }
            let server = server
                .extras(std::mem::take(&mut self.extras))
                .shutdown(self.stop.clone())
                .handle_signals(false);
            let name = self.name.clone();
            let stop = self.stop.clone();
            self.task = Some(tokio::spawn(async move {
                let outcome = server.serve(service).await;
                if !stop.is_triggered() {
                    let error = match &outcome {
                        Err(e) => e.to_string(),
                        Ok(_) => "the server stopped by itself".to_owned(),
                    };
                    ctx.fail(&name, error);
                }
                outcome
            }));
            Ok(())
        })
    }

    fn stop_intake(&mut self) {
        self.stop.trigger();
    }

    fn stop(&mut self, _deadline: Duration) -> BoxFuture<'_, Result<(), CoreBoxError>> {
        self.stop.trigger();
        Box::pin(async move {
            let Some(task) = self.task.take() else {
                return Ok(());
            };
            let outcome = task.await??;
            if outcome.drained {
                Ok(())
            } else {
                Err("in-flight requests were cut off at the drain timeout".into())
            }
        })
    }
}
