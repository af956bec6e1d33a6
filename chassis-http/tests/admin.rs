//! `/admin/loggers`: reading and changing the log filter of a running service, behind a service
//! token with the `admin` scope.

mod common;

use chassis_core::ServiceInfo;
use chassis_http::admin::LogLevelService;
use chassis_observability::Telemetry;
use chassis_observability::logging::CaptureWriter;
use http::StatusCode;

/// One callsite, so the test also shows its cached interest being rebuilt on a change.
fn probe(n: u32) {
    tracing::debug!(target: "orders::checkout", probe = n, "debug probe");
}

/// Serves `service` on 127.0.0.1:<ephemeral> over HTTP/1.1; returns its base URL.
async fn serve(service: chassis_http::auth::RequireServiceToken<LogLevelService>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper_util::service::TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    url
}

/// `method` on the loggers endpoint of the admin API at `url`: status and JSON body.
async fn call(
    url: &str,
    method: &str,
    token: Option<&str>,
    body: &str,
) -> (StatusCode, serde_json::Value) {
    common::call_json(method, &format!("{url}/admin/loggers"), token, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_filter_changes_at_run_time_with_an_admin_token() {
    let logs = CaptureWriter::new();
    let (dispatch, telemetry) = Telemetry::builder(ServiceInfo::new("orders", "1"))
        .ignore_env()
        .log_filter("info")
        .make_writer(logs.clone())
        .build()
        .unwrap();

    let (issuer, verifier) = common::issuer_and_verifier("ops", "orders");
    let admin = serve(LogLevelService::protected(
        telemetry.log_level_handle(),
        verifier,
    ))
    .await;
    let with_admin = issuer.issue("orders", &["admin"]).unwrap();
    let without_admin = issuer.issue("orders", &["orders:read"]).unwrap();

    tracing::dispatcher::with_default(&dispatch, || probe(1));
    assert!(
        !logs.contents().contains("debug probe"),
        "{}",
        logs.contents()
    );

    // 401 without a token, 403 without the scope: the filter is untouched.
    let set = r#"{"level":"info,orders=debug"}"#;
    let (status, body) = call(&admin, "PUT", None, set).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = call(&admin, "PUT", Some(without_admin.as_str()), set).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(!telemetry.log_level().contains("orders=debug"));

    // GET shows the filter in effect.
    let (status, body) = call(&admin, "GET", Some(with_admin.as_str()), "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["level"].as_str(), Some(telemetry.log_level().as_str()));
    assert!(body["level"].as_str().unwrap().contains("info"), "{body}");

    // PUT with the scope: DEBUG events of `orders` are emitted from now on.
    let (status, body) = call(&admin, "PUT", Some(with_admin.as_str()), set).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["level"].as_str().unwrap().contains("orders=debug"),
        "{body}"
    );
    tracing::dispatcher::with_default(&dispatch, || probe(2));
    let lines = logs.lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("debug probe") && l.contains("\"probe\":2")),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("\"probe\":1")),
        "{lines:?}"
    );

    // An invalid directive is a 400 with a JSON error, and the filter stays.
    let (status, body) = call(
        &admin,
        "POST",
        Some(with_admin.as_str()),
        r#"{"level":"orders=loud"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.to_string().contains("orders=loud"), "{body}");
    assert!(telemetry.log_level().contains("orders=debug"));
    let (status, _) = call(&admin, "POST", Some(with_admin.as_str()), "not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // POST back to info: the same callsite is filtered again.
    let (status, _) = call(
        &admin,
        "POST",
        Some(with_admin.as_str()),
        r#"{"level":"info"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    tracing::dispatcher::with_default(&dispatch, || probe(3));
    assert!(
        !logs.lines().iter().any(|l| l.contains("\"probe\":3")),
        "{:?}",
        logs.lines()
    );

    let (status, _) = call(&admin, "DELETE", Some(with_admin.as_str()), "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}
