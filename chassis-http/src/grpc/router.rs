//! [`GrpcRouter`]: several tonic services behind one stack, by service name; and
//! [`Multiplex`]: gRPC and REST on one port, by content type.
//!
//! A gRPC call's path is `/<package.Service>/<Method>`; the router hands it to the service
//! whose [`NamedService::NAME`] is `package.Service` (a generated `FooServer`,
//! [`GrpcHealth`](super::GrpcHealth)'s server) and answers any other with `UNIMPLEMENTED`,
//! as tonic's own router does, without pulling in axum.
//!
//! [`Multiplex`] sends requests whose `content-type` starts with `application/grpc` to the
//! gRPC stack and the rest to the REST stack, so one listener of the chassis
//! [`Server`](crate::server::Server) (HTTP/1.1 and h2c, or HTTPS with ALPN) serves both, each
//! behind its own layers.
//!
//! # Example
//! ```
//! use chassis_core::health::HealthRegistry;
//! use chassis_http::grpc::{GrpcHealth, GrpcLayers, GrpcRouter, Multiplex};
//! use chassis_http::layers::StandardLayers;
//! use tower::{Layer, service_fn};
//!
//! let registry = HealthRegistry::new();
//! let grpc = GrpcLayers::new().layer(GrpcRouter::new().add_service(GrpcHealth::new(registry).into_service()));
//! let rest = StandardLayers::new().layer(service_fn(|_req: http::Request<_>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hello")))
//! }));
//! let both = Multiplex::new(rest, grpc);
//! # fn served<S: tower::Service<http::Request<hyper::body::Incoming>> + Clone>(_: S) {}
//! # served(both);
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::future::Either;
use http::{Request, Response, header::CONTENT_TYPE};
use pin_project_lite::pin_project;
use tonic::Code;
use tonic::server::NamedService;
use tower::ServiceExt as _;
use tower::util::BoxCloneSyncService;
use tower_service::Service;

use super::code::status_response;
use crate::body::{Body, BoxError, boxed};

type Route<B> = BoxCloneSyncService<Request<B>, Response<Body>, BoxError>;

/// Routes gRPC calls to tonic services by service name; see the [module docs](self).
pub struct GrpcRouter<B> {
    routes: Arc<HashMap<&'static str, Route<B>>>,
}

impl<B> Clone for GrpcRouter<B> {
    fn clone(&self) -> Self {
        Self {
            routes: Arc::clone(&self.routes),
        }
    }
}

impl<B> std::fmt::Debug for GrpcRouter<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcRouter")
            .field("services", &self.routes.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl<B> Default for GrpcRouter<B> {
    fn default() -> Self {
        Self {
            routes: Arc::default(),
        }
    }
}

impl<B: Send + 'static> GrpcRouter<B> {
    /// A router without services: every call is `UNIMPLEMENTED`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `service` for the calls to `/<S::NAME>/...`; a second service of the same name
    /// replaces the first.
    pub fn add_service<S, ResB>(self, service: S) -> Self
    where
        S: Service<Request<B>, Response = Response<ResB>> + NamedService,
        S: Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        ResB: http_body::Body<Data = Bytes> + Send + 'static,
        ResB::Error: Into<BoxError>,
    {
        self.route(S::NAME, service)
    }

    /// Serves `service` for the calls to `/<name>/...`: a tonic service wrapped in layers of
    /// its own (a service token required for it but not for the health service beside it), which
    /// is no longer a [`NamedService`]. A second service of the same name replaces the first.
    pub fn route<S, ResB>(mut self, name: &'static str, service: S) -> Self
    where
        S: Service<Request<B>, Response = Response<ResB>>,
        S: Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        ResB: http_body::Body<Data = Bytes> + Send + 'static,
        ResB::Error: Into<BoxError>,
    {
        let route = BoxCloneSyncService::new(
            service
                .map_response(|res: Response<ResB>| res.map(boxed))
                .map_err(Into::into),
        );
        Arc::make_mut(&mut self.routes).insert(name, route);
        self
    }
}

impl<B: Send + 'static> Service<Request<B>> for GrpcRouter<B> {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = RouteFuture<B>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each call drives its route to readiness itself (`oneshot`): one route's
        // backpressure must not hold up the others.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let service = req
            .uri()
            .path()
            .strip_prefix('/')
            .and_then(|path| path.split_once('/'))
            .map(|(service, _)| service);
        let state = match service.and_then(|name| self.routes.get(name)) {
            Some(route) => Either::Left(route.clone().oneshot(req)),
            None => Either::Right(std::future::ready(Ok(status_response(
                Code::Unimplemented,
                &format!("no service at {}", req.uri().path()),
                None,
            )))),
        };
        RouteFuture { state }
    }
}

pin_project! {
    /// The response future of [`GrpcRouter`].
    pub struct RouteFuture<B> {
        // Handed to a service, or answered `UNIMPLEMENTED` (no such service).
        #[pin]
        state: Either<
            tower::util::Oneshot<Route<B>, Request<B>>,
            std::future::Ready<Result<Response<Body>, BoxError>>,
        >,
    }
}

chassis_core::__debug_fields!(<B> RouteFuture {});

impl<B> Future for RouteFuture<B> {
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().state.poll(cx)
    }
}

/// Whether a request is a gRPC call: its `content-type` is `application/grpc` or
/// `application/grpc+<codec>`.
pub fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"))
}

/// gRPC calls to one service, everything else to another; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct Multiplex<R, G> {
    rest: R,
    grpc: G,
}

impl<R, G> Multiplex<R, G> {
    /// `rest` for plain HTTP, `grpc` for gRPC calls.
    pub fn new(rest: R, grpc: G) -> Self {
        Self { rest, grpc }
    }
}

impl<R, G, B, RB, GB> Service<Request<B>> for Multiplex<R, G>
where
    R: Service<Request<B>, Response = Response<RB>>,
    R::Error: Into<BoxError>,
    G: Service<Request<B>, Response = Response<GB>>,
    G::Error: Into<BoxError>,
    RB: http_body::Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
    GB: http_body::Body<Data = Bytes> + Send + 'static,
    GB::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = MultiplexFuture<R::Future, G::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The next request may be either kind, so both must be able to take it; the chassis
        // stacks are always ready (they shed in `call`), so this waits for nothing.
        ready!(self.rest.poll_ready(cx)).map_err(Into::into)?;
        self.grpc.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let state = if is_grpc(&req) {
            Either::Right(self.grpc.call(req))
        } else {
            Either::Left(self.rest.call(req))
        };
        MultiplexFuture { state }
    }
}

pin_project! {
    /// The response future of [`Multiplex`].
    pub struct MultiplexFuture<RF, GF> {
        // A plain HTTP request, or a gRPC call.
        #[pin]
        state: Either<RF, GF>,
    }
}

chassis_core::__debug_fields!(<RF, GF> MultiplexFuture {});

impl<RF, GF, RB, GB, RE, GE> Future for MultiplexFuture<RF, GF>
where
    RF: Future<Output = Result<Response<RB>, RE>>,
    GF: Future<Output = Result<Response<GB>, GE>>,
    RE: Into<BoxError>,
    GE: Into<BoxError>,
    RB: http_body::Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
    GB: http_body::Body<Data = Bytes> + Send + 'static,
    GB::Error: Into<BoxError>,
{
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.as_pin_mut() {
            Either::Left(rest) => rest
                .poll(cx)
                .map(|r| r.map(|res| res.map(boxed)).map_err(Into::into)),
            Either::Right(grpc) => grpc
                .poll(cx)
                .map(|r| r.map(|res| res.map(boxed)).map_err(Into::into)),
        }
    }
}
