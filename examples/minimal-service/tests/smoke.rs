//! Runs the binary against the real broker: a greeting travels through the outbox, RabbitMQ and
//! the inbox consumer; SIGTERM shuts it down cleanly.

use std::time::{Duration, Instant};

use serde_json::Value;

#[tokio::test]
async fn greeting_goes_through_outbox_broker_and_inbox_then_shuts_down_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let prefix = format!("test-{}.", std::process::id());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_minimal-service"))
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.path().join("m.db").display()),
        )
        .env("MINIMAL_PREFIX", &prefix)
        .env("LOG_FORMAT", "json")
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = http
            .get(format!("{base}/health/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let live: Value = http
        .get(format!("{base}/health/live"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(live["status"], "UP");
    let r = http
        .post(format!("{base}/greetings"))
        .json(&serde_json::json!({"name": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["success"], false);
    let r = http
        .post(format!("{base}/greetings"))
        .json(&serde_json::json!({"name": "ada"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let mut processed = 0;
    while Instant::now() < deadline {
        let c: Value = http
            .get(format!("{base}/greetings"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        processed = c["data"]["processed"].as_i64().unwrap();
        if processed == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        processed, 1,
        "the event did not come back through the broker"
    );
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("http_server_request_duration"),
        "no RED metrics"
    );
    // The standard layers sit inside the router, so each sample carries its route.
    assert!(
        metrics.contains(r#"http_route="/greetings""#),
        "RED metrics without the route:\n{metrics}"
    );
    // An axum rejection (invalid JSON) gets the chassis JSON error body too.
    let r = http
        .post(format!("{base}/greetings"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["success"], false, "{body}");
    assert!(body["traceId"].is_string(), "{body}");
    let pid = child.id().unwrap();
    let status = tokio::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "unclean exit: {exit}");
}
