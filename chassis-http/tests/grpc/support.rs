//! A hand-written gRPC service (`echo.v1.Echo`, prost messages by derive, tonic's
//! codegen-free server and client APIs: no protoc), the chassis server running it, and a
//! client for it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use chassis_core::health::HealthRegistry;
use chassis_core::shutdown::Shutdown;
use chassis_http::server::{Server, ServerConfig};
use futures_util::Stream;
use tokio::sync::Notify;
use tonic::codegen::{BoxFuture, StdError};
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

/// The one message of the echo service.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Msg {
    #[prost(string, tag = "1")]
    pub text: String,
}

pub(crate) fn msg(text: &str) -> Msg {
    Msg { text: text.into() }
}

/// What the handlers share with the test: how many calls arrived, and a gate that holds the
/// `hold` calls until released.
#[derive(Debug, Default)]
pub(crate) struct Echo {
    pub calls: AtomicUsize,
    pub gate: Notify,
    pub held: AtomicUsize,
}

impl Echo {
    /// `Say`: echoes `text`, except `panic`, `sleep:<ms>`, `hold`, `fail:<code>` and
    /// `fail-first:<code>:<n>` (fails the first n calls), `trace` (answers the trace id it
    /// runs under), `deadline` (the `grpc-timeout` it got) and `whoami` (the verified
    /// caller).
    async fn say(&self, req: Request<Msg>) -> Result<Response<Msg>, Status> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let deadline = req
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let whoami = req
            .extensions()
            .get::<chassis_http::auth::ServiceIdentity>()
            .map(|id| id.subject.clone());
        let text = req.into_inner().text;
        let (verb, arg) = text.split_once(':').unwrap_or((&text, ""));
        match verb {
            "panic" => panic!("handler bug"),
            "sleep" => tokio::time::sleep(Duration::from_millis(arg.parse().unwrap())).await,
            "hold" => {
                self.held.fetch_add(1, Ordering::SeqCst);
                self.gate.notified().await;
            }
            "fail" => {
                return Err(Status::new(
                    tonic::Code::from_i32(arg.parse().unwrap()),
                    "asked to fail",
                ));
            }
            "fail-first" => {
                let (code, times) = arg.split_once(':').unwrap();
                if n < times.parse().unwrap() {
                    return Err(Status::new(
                        tonic::Code::from_i32(code.parse().unwrap()),
                        "flaky",
                    ));
                }
            }
            "trace" => {
                return Ok(Response::new(msg(
                    &chassis_http::error::current_trace_id().unwrap_or_default()
                )));
            }
            "deadline" => return Ok(Response::new(msg(&deadline.unwrap_or_default()))),
            "whoami" => return Ok(Response::new(msg(&whoami.unwrap_or_default()))),
            _ => {}
        }
        Ok(Response::new(msg(&text)))
    }
}

type CountStream = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send>>;

/// The tonic server of [`Echo`], as generated code would write it.
#[derive(Debug, Clone, Default)]
pub(crate) struct EchoServer(pub Arc<Echo>);

impl NamedService for EchoServer {
    const NAME: &'static str = "echo.v1.Echo";
}

struct SaySvc(Arc<Echo>);

impl tonic::server::UnaryService<Msg> for SaySvc {
    type Response = Msg;
    type Future = BoxFuture<Response<Msg>, Status>;
    fn call(&mut self, request: Request<Msg>) -> Self::Future {
        let echo = Arc::clone(&self.0);
        Box::pin(async move { echo.say(request).await })
    }
}

struct CountSvc;

impl tonic::server::ServerStreamingService<Msg> for CountSvc {
    type Response = Msg;
    type ResponseStream = CountStream;
    type Future = BoxFuture<Response<CountStream>, Status>;
    fn call(&mut self, request: Request<Msg>) -> Self::Future {
        Box::pin(async move {
            let n: usize = request
                .into_inner()
                .text
                .parse()
                .map_err(|_| Status::invalid_argument("not a number"))?;
            let items = (1..=n).map(|i| Ok(msg(&i.to_string())));
            Ok(Response::new(
                Box::pin(futures_util::stream::iter(items)) as CountStream
            ))
        })
    }
}

impl<B> tower::Service<http::Request<B>> for EchoServer
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let echo = Arc::clone(&self.0);
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<Msg, Msg>::default());
            Ok(match req.uri().path() {
                "/echo.v1.Echo/Say" => grpc.unary(SaySvc(echo), req).await,
                "/echo.v1.Echo/Count" => grpc.server_streaming(CountSvc, req).await,
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

/// A client of the echo service over any gRPC channel.
pub(crate) struct EchoClient<T> {
    inner: tonic::client::Grpc<T>,
}

impl<T> EchoClient<T>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<StdError>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<StdError> + Send,
{
    pub(crate) fn new(channel: T) -> Self {
        Self {
            inner: tonic::client::Grpc::new(channel),
        }
    }

    /// Waits until the channel takes a call; `Unknown` if it fails instead.
    async fn wait_ready(&mut self) -> Result<(), Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unknown(format!("not ready: {}", e.into())))
    }

    pub(crate) async fn say(
        &mut self,
        req: impl tonic::IntoRequest<Msg>,
    ) -> Result<Response<Msg>, Status> {
        self.wait_ready().await?;
        let path = http::uri::PathAndQuery::from_static("/echo.v1.Echo/Say");
        self.inner
            .unary(req.into_request(), path, tonic_prost::ProstCodec::default())
            .await
    }

    pub(crate) async fn count(
        &mut self,
        n: usize,
    ) -> Result<Response<tonic::codec::Streaming<Msg>>, Status> {
        self.wait_ready().await?;
        let path = http::uri::PathAndQuery::from_static("/echo.v1.Echo/Count");
        self.inner
            .server_streaming(
                Request::new(msg(&n.to_string())),
                path,
                tonic_prost::ProstCodec::default(),
            )
            .await
    }
}

/// A chassis server on a free loopback port serving `service`, stopped when the handle is
/// dropped.
pub(crate) struct Running {
    pub addr: SocketAddr,
    pub shutdown: Shutdown,
    pub task: tokio::task::JoinHandle<
        Result<chassis_http::server::ServeOutcome, chassis_http::error::Error>,
    >,
}

impl Running {
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A plain tonic channel to the server.
    pub(crate) async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

pub(crate) async fn serve<S, B>(service: S, registry: Option<HealthRegistry>) -> Running
where
    S: crate::common::Servable<B>,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<chassis_core::BoxError>,
{
    serve_with(ServerConfig::default(), service, registry).await
}

/// [`serve`] with `config` (its address and drain timeout replaced).
pub(crate) async fn serve_with<S, B>(
    config: ServerConfig,
    service: S,
    registry: Option<HealthRegistry>,
) -> Running
where
    S: crate::common::Servable<B>,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<chassis_core::BoxError>,
{
    let config = config
        .bind("127.0.0.1:0".parse().unwrap())
        .drain_timeout(Duration::from_secs(5));
    let shutdown = Shutdown::new();
    let mut server = Server::bind(config)
        .await
        .unwrap()
        .shutdown(shutdown.clone())
        .handle_signals(false);
    if let Some(registry) = registry {
        server = server.health(registry);
    }
    let addr = server.local_addr();
    let task = tokio::spawn(server.serve(service));
    Running {
        addr,
        shutdown,
        task,
    }
}
