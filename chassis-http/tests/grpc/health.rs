//! `grpc.health.v1` over the chassis server: Check and Watch follow the registry's readiness,
//! and Watch ends when the server shuts down.

use std::sync::Arc;
use std::time::Duration;

use chassis_core::health::{CheckOptions, HealthRegistry};
use chassis_http::grpc::{GrpcHealth, GrpcLayers, GrpcRouter};
use std::sync::atomic::{AtomicBool, Ordering};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::Layer as _;

use super::support::{Echo, EchoServer, serve};

const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

fn check(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.into(),
    }
}

#[tokio::test]
async fn check_and_watch_follow_readiness_until_shutdown() {
    let registry = HealthRegistry::new();
    let db_up = Arc::new(AtomicBool::new(true));
    registry.register(
        crate::common::switched_check("db", Arc::clone(&db_up)),
        CheckOptions::required(),
    );
    let health = GrpcHealth::new(registry.clone())
        .service("echo.v1.Echo")
        .watch_interval(Duration::from_millis(20));
    let router = GrpcRouter::new()
        .add_service(EchoServer(Arc::new(Echo::default())))
        .add_service(health.into_service());
    let server = serve(GrpcLayers::new().layer(router), Some(registry.clone())).await;
    let mut client = HealthClient::new(server.channel().await);

    // Not started yet: not serving.
    assert_eq!(
        client.check(check("")).await.unwrap().into_inner().status,
        NOT_SERVING
    );
    let err = client.check(check("nope.v1.Nope")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let mut watch = client
        .watch(check("echo.v1.Echo"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status, NOT_SERVING);
    registry.mark_started();
    assert_eq!(watch.message().await.unwrap().unwrap().status, SERVING);
    assert_eq!(
        client
            .check(check("echo.v1.Echo"))
            .await
            .unwrap()
            .into_inner()
            .status,
        SERVING
    );

    // A required check failing takes the service out, and back in when it recovers.
    db_up.store(false, Ordering::SeqCst);
    assert_eq!(watch.message().await.unwrap().unwrap().status, NOT_SERVING);
    db_up.store(true, Ordering::SeqCst);
    assert_eq!(watch.message().await.unwrap().unwrap().status, SERVING);

    // Shutdown: readiness fails first, the watch says so and ends, and the server drains.
    server.shutdown.trigger();
    assert_eq!(watch.message().await.unwrap().unwrap().status, NOT_SERVING);
    assert!(watch.message().await.unwrap().is_none());
    let outcome = (&mut { server }.task).await.unwrap().unwrap();
    assert!(outcome.drained);
}
