//! A Sentry DSN in a build without the `sentry` feature: telemetry starts, and says why nothing
//! goes to Sentry.
#![cfg(not(feature = "sentry"))]

use chassis_core::ServiceInfo;
use chassis_observability::config::{SentryConfig, TelemetryConfig};
use chassis_observability::{Secret, Telemetry};

#[test]
fn a_dsn_without_the_feature_is_a_warning() {
    let build = |dsn: Option<&str>| {
        let config = TelemetryConfig {
            sentry: SentryConfig {
                dsn: dsn.map(|d| Secret::new(d.to_owned())),
                ..SentryConfig::default()
            },
            ..TelemetryConfig::default()
        };
        let (_dispatch, guard) = Telemetry::builder(ServiceInfo::new("orders", "1.0.0"))
            .ignore_env()
            .config(config)
            .make_writer(std::io::sink)
            .install_metrics_recorder(false)
            .build()
            .unwrap();
        guard.config_warnings().to_vec()
    };
    let warnings = build(Some("http://public@127.0.0.1:9/1"));
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("`sentry` feature"), "{warnings:?}");
    assert!(!warnings[0].contains("public@"), "the DSN is not shown");
    assert!(build(None).is_empty());
}
