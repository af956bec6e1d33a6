//! Metrics pushed over OTLP/HTTP to a receiver started inside the test, decoded with
//! opentelemetry-proto (gRPC: `otlp_metrics_grpc.rs`). The environment variables are tested in
//! child processes of this binary, each with its own environment.
#![cfg(feature = "otlp-http")]

mod support;

use std::time::Duration;

use chassis_core::ServiceInfo;
use chassis_observability::config::TelemetryConfig;
use chassis_observability::logging::CaptureWriter;
use chassis_observability::{ErrorKind, Telemetry};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::metric;
use support::{Receiver, assert_resource, captured, counter, find_metric, run_otel_child};

fn config(endpoint: &str) -> TelemetryConfig {
    let mut c = TelemetryConfig::default();
    c.tracing.endpoint = Some(endpoint.to_owned());
    c.metrics.otlp.enabled = true;
    c.metrics.otlp.interval = Duration::from_millis(100);
    c
}

/// Waits (at most 10 s) for a metrics request in which `name` is `value`.
async fn wait_for(receiver: &mut Receiver, name: &str, value: f64) -> ExportMetricsServiceRequest {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let request = receiver.metrics.recv().await.expect("receiver running");
            if counter(&request, name) == Some(value) {
                return request;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no metrics request with {name} = {value}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_pushed_periodically_with_the_resource() {
    let mut receiver = Receiver::start().await;
    let (_dispatch, guard, _logs) = captured(
        Telemetry::builder(ServiceInfo::new("orders", "1.2.0"))
            .config(config(&receiver.endpoint()))
            .resource_attribute("cloud.region", "eu-west-1"),
    );
    assert_eq!(
        guard.metrics_exporter().unwrap().url(),
        format!("{}/v1/metrics", receiver.endpoint())
    );
    let recorder = guard.metrics_recorder().unwrap();
    metrics::with_local_recorder(recorder, || {
        metrics::counter!("jobs_done_total", "queue" => "a").increment(3);
        metrics::histogram!("job_seconds").record(0.02);
        metrics::histogram!("job_seconds").record(3.0);
    });

    let request = wait_for(&mut receiver, "jobs_done_total", 3.0).await;
    assert_resource(
        &request,
        &[("service.name", "orders"), ("cloud.region", "eu-west-1")],
    );
    let histogram = find_metric(&request, "job_seconds").unwrap();
    let Some(metric::Data::Histogram(h)) = &histogram.data else {
        panic!("{histogram:?}")
    };
    let point = &h.data_points[0];
    assert_eq!(point.count, 2);
    assert_eq!(point.bucket_counts.iter().sum::<u64>(), 2);
    assert_eq!(point.explicit_bounds.len() + 1, point.bucket_counts.len());
    // 0.02 is in the 0.025 bucket, 3.0 in the 5.0 one (the default duration buckets).
    let bucket_of = |v: f64| point.explicit_bounds.iter().position(|b| v <= *b).unwrap();
    assert_eq!(point.bucket_counts[bucket_of(0.02)], 1);
    assert_eq!(point.bucket_counts[bucket_of(3.0)], 1);

    // The Prometheus endpoint shows the same numbers.
    let text = guard.prometheus_handle().unwrap().render();
    assert!(text.contains("jobs_done_total{queue=\"a\"} 3"), "{text}");

    // A later push carries the new cumulative value.
    metrics::with_local_recorder(guard.metrics_recorder().unwrap(), || {
        metrics::counter!("jobs_done_total", "queue" => "a").increment(2);
    });
    wait_for(&mut receiver, "jobs_done_total", 5.0).await;
    guard.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_pushes_the_last_values_and_nothing_is_pushed_by_default() {
    let mut receiver = Receiver::start().await;
    let mut c = config(&receiver.endpoint());
    c.metrics.otlp.interval = Duration::from_secs(3600);
    let (_dispatch, guard, _logs) =
        captured(Telemetry::builder(ServiceInfo::new("batch", "1")).config(c));
    metrics::with_local_recorder(guard.metrics_recorder().unwrap(), || {
        metrics::counter!("rows_total").increment(7);
    });
    guard.shutdown(Duration::from_secs(5)).await.unwrap();
    let request = receiver.metrics.try_recv().expect("one push at shutdown");
    assert_eq!(counter(&request, "rows_total"), Some(7.0));

    // Without `metrics.otlp.enabled`, the traces' endpoint does not turn the push on.
    let mut c = TelemetryConfig::default();
    c.tracing.endpoint = Some(receiver.endpoint());
    let (_dispatch, guard, _logs) =
        captured(Telemetry::builder(ServiceInfo::new("batch", "1")).config(c));
    assert!(guard.metrics_exporter().is_none());
    guard.shutdown(Duration::from_secs(5)).await.unwrap();
    assert!(receiver.metrics.try_recv().is_err());
}

/// gRPC is tested in `otlp_metrics_grpc.rs`; without its feature it is a typed error.
#[cfg(not(feature = "grpc"))]
#[tokio::test]
async fn grpc_for_metrics_without_the_feature_is_a_typed_error() {
    use chassis_observability::config::OtlpProtocol;
    let mut c = config("http://127.0.0.1:4317");
    c.metrics.otlp.protocol = Some(OtlpProtocol::Grpc);
    let err = support::build_error(Telemetry::builder(ServiceInfo::new("a", "1")).config(c));
    assert_eq!(
        err.kind(),
        &ErrorKind::TransportNotEnabled {
            protocol: OtlpProtocol::Grpc,
            feature: "grpc"
        },
        "{err}"
    );
}

/// Runs the `env_child` test of this binary in a child process with `vars` (and no other
/// `OTEL_*` variable), and asserts that it passed.
async fn run_child(case: &str, vars: &[(&str, &str)]) {
    run_otel_child("CHASSIS_OTLP_METRICS_CASE", case, vars).await;
}

/// Takes the next push off `receiver` and asserts the resource attributes `want` on it, then
/// drops any further pushes of the same child.
fn assert_pushed_resource(receiver: &mut Receiver, want: &[(&str, &str)]) {
    let request = receiver.metrics.try_recv().expect("the child pushed");
    assert_resource(&request, want);
    while receiver.metrics.try_recv().is_ok() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_variables_configure_the_metrics_push() {
    let mut receiver = Receiver::start().await;
    let endpoint = receiver.endpoint();

    // OTEL_METRICS_EXPORTER=otlp with the generic endpoint; the resource from
    // OTEL_RESOURCE_ATTRIBUTES, whose service.name loses to OTEL_SERVICE_NAME.
    run_child(
        "push",
        &[
            ("OTEL_METRICS_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "100"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2000"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=from-attributes,k8s.namespace.name=shop%20eu",
            ),
            ("OTEL_SERVICE_NAME", "from-env"),
        ],
    )
    .await;
    assert_pushed_resource(
        &mut receiver,
        &[
            ("service.name", "from-env"),
            ("k8s.namespace.name", "shop eu"),
        ],
    );

    // The signal-specific endpoint, used as is; without OTEL_SERVICE_NAME the attribute wins
    // over the name given in code.
    run_child(
        "push",
        &[
            ("OTEL_METRICS_EXPORTER", "prometheus,otlp"),
            (
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                &format!("{endpoint}/v1/metrics"),
            ),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1"),
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "100"),
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attributes"),
        ],
    )
    .await;
    assert_pushed_resource(&mut receiver, &[("service.name", "from-attributes")]);

    // The default (`none`) and OTEL_SDK_DISABLED push nothing.
    for vars in [
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())][..],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_METRICS_EXPORTER", "otlp"),
            ("OTEL_SDK_DISABLED", "true"),
        ],
    ] {
        run_child("off", vars).await;
    }
    assert!(receiver.metrics.try_recv().is_err());

    // http/json is refused at init.
    run_child(
        "refused",
        &[
            ("OTEL_METRICS_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            (
                "CHASSIS_EXPECTED",
                "OTEL_EXPORTER_OTLP_PROTOCOL: OTLP protocol \"http/json\" is not supported",
            ),
        ],
    )
    .await;
}

/// Not a test of its own: the child process of `environment_variables_configure_the_metrics_push`,
/// which sets its environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by environment_variables_configure_the_metrics_push in a child process"]
async fn env_child() {
    let case = std::env::var("CHASSIS_OTLP_METRICS_CASE").expect("CHASSIS_OTLP_METRICS_CASE");
    let builder =
        Telemetry::builder(ServiceInfo::new("from-code", "1")).make_writer(CaptureWriter::new());
    match case.as_str() {
        "push" => {
            let (_dispatch, guard) = builder.build().unwrap();
            let exporter = guard.metrics_exporter().expect("push enabled");
            assert!(
                exporter.url().ends_with("/v1/metrics"),
                "{}",
                exporter.url()
            );
            metrics::with_local_recorder(guard.metrics_recorder().unwrap(), || {
                metrics::counter!("child_total").increment(1);
            });
            // A periodic push (every 100 ms) rather than the one at shutdown.
            tokio::time::sleep(Duration::from_millis(400)).await;
            drop(guard);
        }
        "off" => {
            let (_dispatch, guard) = builder.build().unwrap();
            assert!(guard.metrics_exporter().is_none());
            guard.shutdown(Duration::from_secs(2)).await.unwrap();
        }
        "refused" => {
            let err = builder.build().unwrap_err();
            let expected = std::env::var("CHASSIS_EXPECTED").unwrap();
            assert!(
                matches!(err.kind(), ErrorKind::InvalidConfig { reason } if reason.contains(&expected)),
                "{err}"
            );
        }
        other => panic!("unknown case {other}"),
    }
}
