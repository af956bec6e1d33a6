//! The template from outside: a greeting travels through the outbox, RabbitMQ (a node of the
//! test's own) and the inbox consumer; errors and metrics look as the chassis promises; SIGTERM
//! shuts it down cleanly.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{RabbitNode, Service};

#[tokio::test]
async fn greeting_goes_through_outbox_broker_and_inbox_then_shuts_down_gracefully() {
    let node = RabbitNode::new("smoke");
    node.start();
    let svc = Service::start(&node.url(), "smoke.");
    svc.up(Duration::from_secs(30)).await;
    let get = |path: &str| svc.http.get(format!("{}{path}", svc.base)).send();
    let admin = |path: &str| svc.http.get(format!("{}{path}", svc.admin)).send();
    let live: Value = admin("/health/live").await.unwrap().json().await.unwrap();
    assert_eq!(live["status"], "UP");
    // The public port serves the API alone: probes and metrics are on the admin port.
    for path in ["/metrics", "/health/live", "/health/ready"] {
        let status = get(path).await.unwrap().status();
        assert_eq!(status, 404, "{path} on the public port");
    }

    // A validation error is the chassis JSON error body.
    assert_eq!(svc.greet("").await, 400);
    // An axum rejection (invalid JSON) gets the same body, with the trace id.
    let r = svc
        .http
        .post(format!("{}/greetings", svc.base))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["success"], false, "{body}");
    assert!(body["traceId"].is_string(), "{body}");

    // Outbox -> broker -> inbox, applied once.
    assert_eq!(svc.greet("ada").await, 201);
    svc.processed(1, Duration::from_secs(20)).await;

    // The standard layers sit inside the router, so each sample carries its route.
    let metrics = admin("/metrics").await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(r#"http_route="/greetings""#),
        "RED metrics without the route:\n{metrics}"
    );

    svc.signal("TERM");
    let (code, stderr) = svc.exit(Duration::from_secs(20)).await;
    assert_eq!(code, Some(0), "unclean exit: {stderr}");
}
