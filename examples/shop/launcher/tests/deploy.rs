//! Validates the deployment files in `examples/deploy` by parsing them (no cluster here).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            Value::deserialize(d)
                .unwrap_or_else(|e| panic!("{}: invalid YAML: {e}", path.display()))
        })
        .filter(|v| !v.is_null())
        .collect()
}

const SERVICES: [&str; 5] = [
    "gateway",
    "orders",
    "inventory",
    "payments",
    "notifications",
];

#[test]
fn compose_has_the_broker_the_database_and_every_service() {
    let compose = &docs(&deploy_dir().join("compose.yaml"))[0];
    let services = compose["services"].as_mapping().expect("services");
    for name in ["rabbitmq", "postgres", "payment-provider"]
        .iter()
        .chain(SERVICES.iter())
    {
        let svc = &services[&Value::from(*name)];
        assert!(svc.is_mapping(), "compose lacks service {name}");
        assert!(
            svc["image"].as_str().is_some_and(|i| !i.is_empty()),
            "{name} has no image"
        );
    }
    for name in SERVICES {
        let env = &services[&Value::from(name)]["environment"];
        // The `<<: *service-env` merge key carries AMQP_URL; the service sets its database.
        let merged = env["<<"].as_mapping().or_else(|| env.as_mapping()).unwrap();
        assert!(
            merged.contains_key(Value::from("AMQP_URL")) || env["AMQP_URL"].is_string(),
            "{name}: no AMQP_URL"
        );
        assert!(
            env["DATABASE_URL"]
                .as_str()
                .is_some_and(|u| u.starts_with("postgres://")),
            "{name}: no DATABASE_URL"
        );
        assert!(env["HTTP_ADDR"].is_string(), "{name}: no HTTP_ADDR");
        let test = &services[&Value::from(name)]["healthcheck"]["test"];
        assert!(
            test.as_sequence()
                .unwrap()
                .iter()
                .any(|t| t.as_str().is_some_and(|s| s.ends_with("/health/ready"))),
            "{name}: healthcheck is not on /health/ready"
        );
    }
}

#[test]
fn every_deployment_has_probes_on_the_chassis_paths_an_image_and_resources() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir().join("k8s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 7, "{files:?}");
    let mut deployments = Vec::new();
    let mut services = Vec::new();
    let mut kinds = Vec::new();
    for f in &files {
        for doc in docs(f) {
            assert!(
                doc["apiVersion"].is_string(),
                "{}: a document without apiVersion",
                f.display()
            );
            let kind = doc["kind"].as_str().unwrap().to_owned();
            let name = doc["metadata"]["name"].as_str().unwrap().to_owned();
            match kind.as_str() {
                "Deployment" => deployments.push((name, doc.clone())),
                "Service" => services.push(name),
                _ => {}
            }
            kinds.push(kind);
        }
    }
    assert!(kinds.contains(&"ConfigMap".to_owned()) && kinds.contains(&"Secret".to_owned()));
    for name in SERVICES {
        assert!(services.contains(&name.to_owned()), "no Service for {name}");
        let (_, d) = deployments
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no Deployment {name}"));
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert!(
            c["image"].as_str().is_some_and(|i| i.contains(name)),
            "{name}: image"
        );
        assert!(
            c["resources"]["requests"]["cpu"].is_string(),
            "{name}: cpu request"
        );
        assert!(
            c["resources"]["requests"]["memory"].is_string(),
            "{name}: memory request"
        );
        for (probe, path) in [
            ("livenessProbe", "/health/live"),
            ("readinessProbe", "/health/ready"),
            ("startupProbe", "/health/startup"),
        ] {
            assert_eq!(
                c[probe]["httpGet"]["path"].as_str(),
                Some(path),
                "{name}: {probe}"
            );
        }
        let labels = &d["spec"]["template"]["metadata"]["labels"];
        assert_eq!(
            &d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
            &labels["app.kubernetes.io/name"]
        );
    }
    for name in ["orders", "payments"] {
        let (_, d) = deployments.iter().find(|(n, _)| n == name).unwrap();
        assert!(
            d["spec"]["replicas"].as_u64().unwrap() >= 2,
            "{name} should run several replicas"
        );
    }
}
