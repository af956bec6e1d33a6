//! The admin listener (`ServerConfig::admin`): probes and `/metrics` on a port of their own,
//! the application alone on the main port, both closed by one shutdown; real sockets on
//! 127.0.0.1, HTTP/1.1 written by hand.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use chassis_core::health::HealthRegistry;
use chassis_core::lifecycle::{App, LifecycleConfig};
use chassis_core::shutdown::Shutdown;
use chassis_http::error::ErrorKind;
use chassis_http::health::HealthLayer;
use chassis_http::server::{HttpServer, Server, ServerConfig};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LOOPBACK_ANY: &str = "127.0.0.1:0";

fn config() -> ServerConfig {
    ServerConfig::default()
        .bind(LOOPBACK_ANY.parse().unwrap())
        .admin(LOOPBACK_ANY.parse().unwrap())
        .drain_timeout(Duration::from_secs(5))
}

/// A Prometheus handle with one counter recorded, without installing a global recorder.
fn prometheus() -> PrometheusHandle {
    let recorder = PrometheusBuilder::new().build_recorder();
    metrics::with_local_recorder(&recorder, || {
        metrics::counter!("admin_listener_test_total").increment(3);
    });
    recorder.handle()
}

fn started_registry() -> HealthRegistry {
    let registry = HealthRegistry::with_cache_ttl(Duration::ZERO);
    registry.mark_started();
    registry
}

/// The application: `/` answers `app`, `/slow` after 400 ms.
fn app() -> axum::Router {
    axum::Router::new()
        .route("/", axum::routing::get(|| async { "app" }))
        .route(
            "/slow",
            axum::routing::get(|| async {
                tokio::time::sleep(Duration::from_millis(400)).await;
                "slow done"
            }),
        )
}

/// `GET path` on a fresh connection: the status and the body.
/// `/metrics` on `addr` answers 200 with the test's counter.
async fn assert_metrics_served(addr: SocketAddr) {
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("admin_listener_test_total 3"), "{body}");
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    conn.read_to_end(&mut reply).await.unwrap();
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let status = reply
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {reply:?}"));
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn metrics_and_probes_are_served_on_the_admin_port_only() {
    let registry = started_registry();
    let server = Server::bind(config())
        .await
        .unwrap()
        .probes(HealthLayer::new(registry.clone()).prometheus(prometheus()))
        .handle_signals(false);
    let (main, admin) = (server.local_addr(), server.admin_addr().unwrap());
    assert_ne!(main, admin);
    let stop = server.shutdown_handle();
    let serving = tokio::spawn(server.serve(app()));

    assert_metrics_served(admin).await;
    assert_eq!(get(admin, "/health/live").await.0, 200);
    assert_eq!(get(admin, "/health/ready").await.0, 200);
    assert_eq!(get(admin, "/health/startup").await.0, 200);
    let (status, body) = get(admin, "/").await;
    assert_eq!(status, 404, "the application is not on the admin port");
    assert!(body.contains("not_found"), "{body}");

    let (status, body) = get(main, "/metrics").await;
    assert_eq!(status, 404, "no /metrics on the main port: {body}");
    assert!(body.contains("\"success\":false"), "{body}");
    for probe in ["/health/live", "/health/ready", "/health/startup"] {
        assert_eq!(get(main, probe).await.0, 404, "{probe} on the main port");
    }
    assert_eq!(get(main, "/").await, (200, "app".to_owned()));

    stop.trigger();
    assert!(serving.await.unwrap().unwrap().drained);
}

#[tokio::test]
async fn without_an_admin_address_the_probes_are_in_front_of_the_application_but_not_metrics() {
    let no_admin = || ServerConfig::default().bind(LOOPBACK_ANY.parse().unwrap());

    // The probes alone: served on the main port, and /metrics is the application's path.
    let server = Server::bind(no_admin())
        .await
        .unwrap()
        .probes(HealthLayer::new(started_registry()))
        .handle_signals(false);
    assert_eq!(server.admin_addr(), None);
    let main = server.local_addr();
    let stop = server.shutdown_handle();
    let serving = tokio::spawn(server.serve(app()));
    assert_eq!(get(main, "/health/ready").await.0, 200);
    assert_eq!(get(main, "/metrics").await.0, 404);
    assert_eq!(get(main, "/").await, (200, "app".to_owned()));
    stop.trigger();
    serving.await.unwrap().unwrap();

    // Probes with /metrics and no admin listener: refused, by the server and the component,
    // rather than publishing the metrics on the application's (public) port.
    let err = Server::bind(no_admin())
        .await
        .unwrap()
        .probes(HealthLayer::new(started_registry()).prometheus(prometheus()))
        .handle_signals(false)
        .serve(app())
        .await
        .expect_err("/metrics on the main port by default");
    assert!(
        matches!(err.kind(), ErrorKind::InvalidConfig { reason }
            if reason.contains("ServerConfig::admin") && reason.contains("ServerConfig::public_metrics")),
        "{err}"
    );
    let err = App::new("t")
        .handle_signals(false)
        .component(
            HttpServer::new(no_admin(), app())
                .probes(HealthLayer::new(HealthRegistry::new()).prometheus(prometheus())),
        )
        .run()
        .await
        .expect_err("the component's start must fail");
    assert!(err.to_string().contains("public_metrics"), "{err:#}");

    // Asked for: /metrics in front of the application on the main port.
    let server = Server::bind(no_admin().public_metrics(true))
        .await
        .unwrap()
        .probes(HealthLayer::new(started_registry()).prometheus(prometheus()))
        .handle_signals(false);
    let main = server.local_addr();
    let stop = server.shutdown_handle();
    let serving = tokio::spawn(server.serve(app()));
    assert_metrics_served(main).await;
    assert_eq!(get(main, "/health/ready").await.0, 200);
    assert_eq!(get(main, "/").await, (200, "app".to_owned()));
    stop.trigger();
    serving.await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_keeps_the_admin_port_until_the_main_port_drained_then_closes_both() {
    let registry = started_registry();
    let shutdown = Shutdown::new();
    let server = Server::bind(config())
        .await
        .unwrap()
        .probes(HealthLayer::new(registry.clone()))
        .health(registry.clone())
        .shutdown(shutdown.clone())
        .handle_signals(false);
    let (main, admin) = (server.local_addr(), server.admin_addr().unwrap());
    let serving = tokio::spawn(server.serve(app()));

    // A request in flight on the main port when the shutdown begins.
    let in_flight = tokio::spawn(get(main, "/slow"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    shutdown.trigger();
    tokio::time::sleep(Duration::from_millis(50)).await;

    // Draining: the main port refuses new connections, the admin port reports not ready.
    assert!(tokio::net::TcpStream::connect(main).await.is_err());
    let (status, body) = get(admin, "/health/ready").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(get(admin, "/health/live").await.0, 200);

    assert_eq!(in_flight.await.unwrap(), (200, "slow done".to_owned()));
    let outcome = tokio::time::timeout(Duration::from_secs(5), serving)
        .await
        .expect("serve returns after the drain")
        .unwrap()
        .unwrap();
    assert!(outcome.drained);
    assert!(
        tokio::net::TcpStream::connect(admin).await.is_err(),
        "the admin listener is closed"
    );
    assert!(tokio::net::TcpStream::connect(main).await.is_err());
}

#[tokio::test]
async fn an_admin_port_in_use_is_an_admin_bind_error() {
    let taken = std::net::TcpListener::bind(LOOPBACK_ANY).unwrap();
    let addr = taken.local_addr().unwrap();
    let err = Server::bind(config().admin(addr))
        .await
        .expect_err("the admin port is taken");
    assert_eq!(err.kind(), &ErrorKind::AdminBind { addr });
    assert!(err.to_string().contains("admin listener"), "{err}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");

    // The component fails its start under its name.
    let err = App::new("t")
        .handle_signals(false)
        .component(
            HttpServer::new(config().admin(addr), app())
                .probes(HealthLayer::new(HealthRegistry::new()))
                .name("public-http"),
        )
        .run()
        .await
        .expect_err("the start must fail");
    assert_eq!(
        err.kind(),
        &chassis_core::ErrorKind::ComponentStart {
            component: "public-http".into()
        }
    );
    assert!(err.to_string().contains("admin listener"), "{err}");
}

#[tokio::test]
async fn admin_routes_need_an_admin_address_and_an_admin_address_needs_something_to_serve() {
    let routes = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
        Ok::<_, Infallible>(http::Response::new(String::from("admin")))
    });
    let no_admin = ServerConfig::default().bind(LOOPBACK_ANY.parse().unwrap());
    let err = Server::bind(no_admin)
        .await
        .unwrap()
        .admin_service(routes)
        .handle_signals(false)
        .serve(app())
        .await
        .expect_err("admin routes without an admin listener");
    assert!(
        matches!(err.kind(), ErrorKind::InvalidConfig { reason } if reason.contains("ServerConfig::admin")),
        "{err}"
    );

    let err = Server::bind(config())
        .await
        .unwrap()
        .handle_signals(false)
        .serve(app())
        .await
        .expect_err("an admin listener with nothing to serve");
    assert!(
        matches!(err.kind(), ErrorKind::InvalidConfig { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn a_component_serves_probes_and_admin_routes_on_its_admin_port_and_stops_both() {
    let admin_routes = axum::Router::new().route(
        "/admin/hello",
        axum::routing::get(|| async { "admin hello" }),
    );
    let server = HttpServer::new(config(), app())
        .admin_service(admin_routes)
        .name("http");
    let (main_addr, admin_addr) = (server.local_addr(), server.admin_addr());
    let app = App::new("t")
        .handle_signals(false)
        .config(LifecycleConfig::default().drain_timeout(Duration::from_secs(5)));
    let server = server.probes(HealthLayer::new(app.health().clone()).prometheus(prometheus()));
    let app = app.component(server);
    let health = app.health().clone();
    let stop = app.shutdown_handle();
    let run = tokio::spawn(app.run());
    while !health.is_started() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (main, admin) = (*main_addr.get().unwrap(), *admin_addr.get().unwrap());

    assert_eq!(
        get(admin, "/admin/hello").await,
        (200, "admin hello".into())
    );
    assert!(
        get(admin, "/metrics")
            .await
            .1
            .contains("admin_listener_test_total 3")
    );
    assert_eq!(get(admin, "/health/ready").await.0, 200);
    assert_eq!(get(admin, "/nowhere").await.0, 404);
    assert_eq!(get(main, "/admin/hello").await.0, 404);
    assert_eq!(get(main, "/metrics").await.0, 404);
    assert_eq!(get(main, "/").await, (200, "app".into()));

    stop.trigger();
    run.await.unwrap().expect("clean stop");
    assert!(tokio::net::TcpStream::connect(main).await.is_err());
    assert!(tokio::net::TcpStream::connect(admin).await.is_err());
}

#[test]
fn the_admin_address_is_read_from_config_files() {
    let config: ServerConfig =
        serde_json::from_str(r#"{"bind":"0.0.0.0:8080","admin":"0.0.0.0:9090"}"#).unwrap();
    assert_eq!(config.admin, Some("0.0.0.0:9090".parse().unwrap()));
    let config: ServerConfig = serde_json::from_str(r#"{"bind":"0.0.0.0:8080"}"#).unwrap();
    assert_eq!(config.admin, None, "defaults to none");
    assert!(
        !config.public_metrics,
        "metrics stay off the main port by default"
    );
    let config: ServerConfig =
        serde_json::from_str(r#"{"bind":"0.0.0.0:8080","public_metrics":true}"#).unwrap();
    assert!(config.public_metrics);
}
