//! The server as a lifecycle component: a port in use fails the start under the component's
//! name, and a stop lets in-flight requests finish while new connections are refused.

use std::time::Duration;

use chassis_core::ErrorKind;
use chassis_core::lifecycle::{App, LifecycleConfig};
use chassis_http::server::{HttpServer, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn slow_router() -> axum::Router {
    axum::Router::new().route(
        "/slow",
        axum::routing::get(|| async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            "done"
        }),
    )
}

#[tokio::test]
async fn a_port_in_use_fails_the_start_naming_the_component() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = App::new("t")
        .handle_signals(false)
        .component(
            HttpServer::new(ServerConfig::default().bind(addr), slow_router()).name("public-http"),
        )
        .run()
        .await
        .expect_err("bind must fail");
    assert_eq!(
        err.kind(),
        &ErrorKind::ComponentStart {
            component: "public-http".into()
        }
    );
    assert!(err.to_string().contains("public-http"), "{err}");
}

#[tokio::test]
async fn stop_answers_in_flight_requests_and_refuses_new_connections() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = HttpServer::from_listener(listener, ServerConfig::default(), slow_router());
    let bound = server.local_addr();
    let app = App::new("t")
        .handle_signals(false)
        .config(LifecycleConfig::default().drain_timeout(Duration::from_secs(5)))
        .component(server);
    let health = app.health().clone();
    let stop = app.shutdown_handle();
    let run = tokio::spawn(app.run());
    while !health.is_started() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(bound.get(), Some(&addr));

    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.trigger();

    let mut reply = Vec::new();
    conn.read_to_end(&mut reply).await.unwrap();
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with("done"), "{reply}");
    run.await.unwrap().expect("clean stop");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}
