//! Validates the deployment files in `examples/deploy` by parsing them (no cluster and no Docker
//! engine here): the Compose file, the Kubernetes manifests, that the Dockerfile builds and
//! installs every binary they run, and the observability stack (Prometheus scrapes every
//! service, the collector forwards spans to Jaeger, the Grafana dashboards parse, use
//! provisioned datasources and query only metrics and labels of the chassis's catalogue), and
//! that gateway replicas share their rate limits and Idempotency-Keys through Redis.

mod grafana;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use chassis_core::metric_catalogue::{self as catalogue, Kind, Metric};
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

/// The observability services of the Compose file.
const OBSERVABILITY: [&str; 4] = ["otel-collector", "jaeger", "prometheus", "grafana"];

/// Deployments of the Kubernetes manifests that run a third-party image, not a shop binary.
const K8S_THIRD_PARTY: [&str; 1] = ["redis"];

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
        // The gateway stores nothing: only the others have a database.
        assert_eq!(
            env["DATABASE_URL"]
                .as_str()
                .is_some_and(|u| u.starts_with("postgres://")),
            name != "gateway",
            "{name}: DATABASE_URL"
        );
        assert!(env["HTTP_ADDR"].is_string(), "{name}: no HTTP_ADDR");
        assert!(env["ADMIN_ADDR"].is_string(), "{name}: no ADMIN_ADDR");
        // The probes are on the admin port only: the API port answers them 404.
        let admin = admin_port(compose, name);
        assert_ne!(admin, http_port(compose, name), "{name}");
        let test = &services[&Value::from(name)]["healthcheck"]["test"];
        let ready = format!("http://127.0.0.1:{admin}/health/ready");
        assert!(
            test.as_sequence()
                .unwrap()
                .iter()
                .any(|t| t.as_str() == Some(ready.as_str())),
            "{name}: healthcheck is not on {ready}"
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
    let mut service_docs = Vec::new();
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
                "Service" => {
                    services.push(name);
                    service_docs.push(doc.clone());
                }
                _ => {}
            }
            kinds.push(kind);
        }
    }
    assert!(kinds.contains(&"ConfigMap".to_owned()) && kinds.contains(&"Secret".to_owned()));
    let image = dockerfile();
    for (name, d) in &deployments {
        for c in d["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .unwrap()
        {
            if K8S_THIRD_PARTY.contains(&name.as_str()) {
                let image = c["image"].as_str().unwrap_or_default();
                assert!(
                    image.contains(':') && !image.ends_with(":latest"),
                    "{name}: a pinned image, not {image:?}"
                );
                continue;
            }
            assert!(
                c["image"]
                    .as_str()
                    .is_some_and(|i| i.starts_with("ghcr.io/chassis-rs/shop:")),
                "{name}: not the shop image"
            );
            let bin = entry_binary(c).unwrap_or_else(|| panic!("{name}: no command"));
            assert!(
                image.installed.contains(&bin),
                "{name} runs {bin}, which the Dockerfile does not install"
            );
        }
    }
    for name in SERVICES {
        assert!(services.contains(&name.to_owned()), "no Service for {name}");
        let (_, d) = deployments
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no Deployment {name}"));
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            entry_binary(c).as_deref(),
            Some(format!("shop-{name}").as_str()),
            "{name}: command"
        );
        assert!(
            c["resources"]["requests"]["cpu"].is_string(),
            "{name}: cpu request"
        );
        assert!(
            c["resources"]["requests"]["memory"].is_string(),
            "{name}: memory request"
        );
        // Probes and scrapes on the admin port, which the Service does not expose.
        let admin_port = container_env(c, "ADMIN_ADDR")
            .and_then(|a| a.rsplit(':').next().map(str::to_owned))
            .unwrap_or_else(|| panic!("{name}: no ADMIN_ADDR"));
        let ports = c["ports"].as_sequence().unwrap();
        assert!(
            ports.iter().any(|p| p["name"].as_str() == Some("admin")
                && p["containerPort"].as_u64().map(|p| p.to_string()) == Some(admin_port.clone())),
            "{name}: no container port `admin` on {admin_port}"
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
            assert_eq!(
                c[probe]["httpGet"]["port"].as_str(),
                Some("admin"),
                "{name}: {probe} not on the admin port"
            );
        }
        let annotations = &d["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(
            annotations["prometheus.io/port"].as_str(),
            Some(admin_port.as_str()),
            "{name}: Prometheus scrapes another port than the admin one"
        );
        let service = service_docs
            .iter()
            .find(|s| s["metadata"]["name"].as_str() == Some(name))
            .unwrap();
        for port in service["spec"]["ports"].as_sequence().unwrap() {
            assert_ne!(
                port["targetPort"].as_str(),
                Some("admin"),
                "{name}: the Service exposes the admin port"
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

/// What the Dockerfile produces, by parsing it: the packages its `cargo build` builds, the
/// binaries those packages have, and the binaries copied into a directory on the final stage's
/// `PATH`.
#[derive(Debug)]
struct Image {
    built_packages: Vec<String>,
    installed: Vec<String>,
    apt_packages: Vec<String>,
}

/// The Dockerfile's instructions: continuation lines joined, comments dropped.
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

/// The binaries of a workspace package: `[[bin]]` names, or the package name.
fn package_binaries(package: &str) -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let manifest = entry.unwrap().path().join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        let toml: toml::Table = toml::from_str(&text).unwrap();
        if toml["package"]["name"].as_str() != Some(package) {
            continue;
        }
        return match toml.get("bin").and_then(|b| b.as_array()) {
            Some(bins) => bins
                .iter()
                .map(|b| b["name"].as_str().unwrap().to_owned())
                .collect(),
            None => vec![package.to_owned()],
        };
    }
    panic!("the Dockerfile builds {package}, which is not a package under examples/shop");
}

fn dockerfile() -> Image {
    let text = std::fs::read_to_string(deploy_dir().join("Dockerfile")).unwrap();
    let mut stages: Vec<(String, Vec<String>)> = Vec::new();
    for ins in instructions(&text) {
        let mut words = ins.split_whitespace();
        let op = words.next().unwrap().to_ascii_uppercase();
        if op == "FROM" {
            let words: Vec<&str> = words.collect();
            let name = match words.iter().position(|w| w.eq_ignore_ascii_case("as")) {
                Some(i) => words[i + 1].to_owned(),
                None => format!("stage{}", stages.len()),
            };
            stages.push((name, Vec::new()));
        } else if let Some((_, stage)) = stages.last_mut() {
            stage.push(ins.clone());
        } else {
            // Only ARGs (for the FROM lines) may come before the first FROM.
            assert_eq!(op, "ARG", "{ins}: an instruction before FROM");
        }
    }
    assert!(stages.len() >= 2, "the Dockerfile should be multi-stage");
    let (final_name, final_stage) = stages.last().unwrap();

    // The build stage the final stage copies binaries from.
    let mut installed = Vec::new();
    let mut build_stage = None;
    for ins in final_stage {
        let words: Vec<&str> = ins.split_whitespace().collect();
        if !words[0].eq_ignore_ascii_case("COPY") {
            continue;
        }
        let Some(from) = words.iter().find_map(|w| w.strip_prefix("--from=")) else {
            continue;
        };
        let dest = *words.last().unwrap();
        assert!(
            dest.trim_end_matches('/') == "/usr/local/bin",
            "{final_name}: binaries go to {dest}, not on PATH"
        );
        build_stage = Some(from.to_owned());
        let (_, build) = stages
            .iter()
            .find(|(n, _)| n == from)
            .unwrap_or_else(|| panic!("COPY --from={from}: no such stage"));
        let sources = &words[1..words.len() - 1];
        let sources: Vec<&str> = sources
            .iter()
            .filter(|w| !w.starts_with("--"))
            .copied()
            .collect();
        for src in sources {
            // A directory the build stage filled with `cp target/release/<bin> … <dir>/`.
            let dir = src.trim_end_matches('/');
            for run in build {
                let Some(cp) = run.split("&&").find(|c| {
                    let c = c.trim();
                    c.starts_with("cp ") && c.trim_end().trim_end_matches('/').ends_with(dir)
                }) else {
                    continue;
                };
                for arg in cp.split_whitespace().skip(1) {
                    if let Some(bin) = arg.strip_prefix("target/release/") {
                        installed.push(bin.to_owned());
                    }
                }
            }
        }
    }
    let build_stage = build_stage.expect("the final stage copies nothing from a build stage");
    let (_, build) = stages.iter().find(|(n, _)| *n == build_stage).unwrap();
    let cargo = build
        .iter()
        .flat_map(|run| run.split("&&"))
        .find(|c| c.contains("cargo build"))
        .expect("the build stage runs no cargo build");
    assert!(
        cargo.contains("--release"),
        "cargo build should be --release"
    );
    assert!(
        cargo.contains("--locked"),
        "cargo build should use the lock file"
    );
    let words: Vec<&str> = cargo.split_whitespace().collect();
    let built_packages: Vec<String> = words
        .windows(2)
        .filter(|w| w[0] == "-p" || w[0] == "--package")
        .map(|w| w[1].to_owned())
        .collect();
    let built_binaries: Vec<String> = built_packages
        .iter()
        .flat_map(|p| package_binaries(p))
        .collect();
    for bin in &installed {
        assert!(
            built_binaries.contains(bin),
            "the Dockerfile installs {bin}, which its cargo build does not build ({built_packages:?})"
        );
    }
    let apt_packages = final_stage
        .iter()
        .filter(|r| r.contains("apt-get install"))
        .flat_map(|r| r.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .collect();
    Image {
        built_packages,
        installed,
        apt_packages,
    }
}

/// The binary a container or compose service runs: the first word of its command (or
/// entrypoint), without a directory.
fn entry_binary(svc: &Value) -> Option<String> {
    let first = |v: &Value| -> Option<String> {
        match v {
            Value::Sequence(s) => s.first()?.as_str().map(str::to_owned),
            Value::String(s) => s.split_whitespace().next().map(str::to_owned),
            _ => None,
        }
    };
    let cmd = first(&svc["entrypoint"]).or_else(|| first(&svc["command"]))?;
    Some(cmd.rsplit('/').next().unwrap_or(&cmd).to_owned())
}

#[test]
fn the_dockerfile_builds_every_binary_compose_runs() {
    let image = dockerfile();
    assert!(!image.built_packages.is_empty());
    let compose = &docs(&deploy_dir().join("compose.yaml"))[0];
    let services = compose["services"].as_mapping().unwrap();
    let mut checked = 0;
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        if svc["build"].is_null() {
            // A third-party image (RabbitMQ, PostgreSQL, Redis, the observability stack).
            assert!(
                ["rabbitmq", "postgres", "redis"]
                    .iter()
                    .chain(OBSERVABILITY.iter())
                    .any(|n| *n == name),
                "{name} is neither built nor a known third-party image"
            );
            continue;
        }
        let build = &svc["build"];
        let context = deploy_dir().join(build["context"].as_str().unwrap());
        let dockerfile = context.join(build["dockerfile"].as_str().unwrap());
        assert_eq!(
            dockerfile.canonicalize().unwrap(),
            deploy_dir().join("Dockerfile").canonicalize().unwrap(),
            "{name} is built from another Dockerfile"
        );
        assert!(
            context.join("Cargo.lock").is_file(),
            "{name}: the build context is not the workspace root"
        );
        let bin = entry_binary(svc).unwrap_or_else(|| panic!("{name}: no command"));
        assert!(
            image.installed.contains(&bin),
            "{name} runs {bin}, which the Dockerfile does not build and install ({:?})",
            image.installed
        );
        let uses_curl = svc["healthcheck"]["test"]
            .as_sequence()
            .is_some_and(|t| t.iter().any(|w| w.as_str() == Some("curl")));
        if uses_curl {
            assert!(
                image.apt_packages.iter().any(|p| p == "curl"),
                "{name}'s health check needs curl in the image"
            );
        }
        checked += 1;
    }
    assert_eq!(
        checked,
        SERVICES.len() + 1,
        "every service and the provider"
    );
}

#[test]
fn dockerfile_parsing_follows_continuations_and_stages() {
    let ins =
        instructions("FROM a AS b\n# c\nRUN x \\\n  && y\n\nCOPY --from=b /out/ /usr/local/bin/\n");
    assert_eq!(
        ins,
        vec![
            "FROM a AS b",
            "RUN x  && y",
            "COPY --from=b /out/ /usr/local/bin/"
        ]
    );
    let bin = entry_binary(
        &serde_yaml::from_str("command: [\"/usr/local/bin/shop-orders\", \"-v\"]").unwrap(),
    );
    assert_eq!(bin.as_deref(), Some("shop-orders"));
}

/// The TLS overlay: every service serves HTTPS with its own certificate and key from the
/// mounted directory, calls the others over HTTPS, checks its health on its plain-HTTP admin
/// port (the payment provider, which has none, over HTTPS), and the files
/// it names are the ones `shop-launcher --write-certs` writes, with the Compose host names in
/// the certificates.
#[test]
fn the_compose_tls_overlay_names_the_files_the_launcher_writes() {
    let mut overlay = docs(&deploy_dir().join("compose.tls.yaml")).remove(0);
    overlay.apply_merge().expect("the `<<` merge keys resolve");
    let plain = compose();
    let services = overlay["services"].as_mapping().expect("services");
    let dir = tempfile::tempdir().unwrap();
    let pki = shop_launcher::tls::ShopPki::generate(dir.path()).unwrap();
    for name in SERVICES.iter().chain(["payment-provider"].iter()) {
        let svc = &services[&Value::from(*name)];
        let env = &svc["environment"];
        assert_eq!(
            env["TLS_CERT_FILE"].as_str(),
            Some(format!("/tls/{name}.pem").as_str()),
            "{name}"
        );
        assert_eq!(
            env["TLS_KEY_FILE"].as_str(),
            Some(format!("/tls/{name}.key").as_str()),
            "{name}"
        );
        assert!(
            svc["volumes"][0]
                .as_str()
                .is_some_and(|v| v.ends_with(":/tls:ro")),
            "{name}: the certificates are not mounted"
        );
        let check: Vec<&str> = svc["healthcheck"]["test"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let expected = if *name == "payment-provider" {
            format!("https://{name}:")
        } else {
            format!("http://127.0.0.1:{}/", admin_port(&plain, name))
        };
        assert!(
            check.last().is_some_and(|url| url.starts_with(&expected)),
            "{name}: {check:?}"
        );
        // Every file the overlay names exists in what the launcher writes.
        for file in check.iter().chain([
            &env["TLS_CERT_FILE"].as_str().unwrap(),
            &env["TLS_KEY_FILE"].as_str().unwrap(),
        ]) {
            if let Some(rest) = file.strip_prefix("/tls/") {
                assert!(pki.dir().join(rest).is_file(), "{name}: no {rest} written");
            }
        }
        // The certificate names the service's Compose host.
        let (cert, _) = pki.cert_files(name);
        let certs = chassis_http::tls::certs_from_pem_file(cert).unwrap();
        let identity =
            chassis_http::tls::peer::PeerIdentity::from_certificate(certs[0].clone()).unwrap();
        assert!(
            identity.has_dns_name(name),
            "{name}: {:?}",
            identity.dns_names()
        );
        assert!(identity.has_uri(&format!("spiffe://shop/{name}")), "{name}");
        // Service-to-service URLs are HTTPS.
        if let Some(map) = env.as_mapping() {
            for (key, value) in map {
                let (Some(key), Some(value)) = (key.as_str(), value.as_str()) else {
                    continue;
                };
                if key.ends_with("_URL") {
                    assert!(value.starts_with("https://"), "{name}: {key}={value}");
                }
            }
        }
    }
    // Internal services require a client certificate; the gateway only verifies one.
    for name in ["orders", "inventory", "payments", "notifications"] {
        let auth = &services[&Value::from(name)]["environment"]["TLS_CLIENT_AUTH"];
        assert_eq!(auth.as_str(), Some("required"), "{name}");
    }
    assert_eq!(
        services[&Value::from("gateway")]["environment"]["TLS_CLIENT_AUTH"].as_str(),
        Some("optional")
    );
}

/// The Compose file with its `<<` merge keys resolved.
fn compose() -> Value {
    let mut compose = docs(&deploy_dir().join("compose.yaml")).remove(0);
    compose.apply_merge().expect("the `<<` merge keys resolve");
    compose
}

/// The value of the environment variable `key` of a Kubernetes container, if set literally.
fn container_env(container: &Value, key: &str) -> Option<String> {
    container["env"]
        .as_sequence()?
        .iter()
        .find(|e| e["name"].as_str() == Some(key))?["value"]
        .as_str()
        .map(str::to_owned)
}

/// The port of a service's `ADMIN_ADDR` (`0.0.0.0:9081` -> `9081`): its probes and `/metrics`.
fn admin_port(compose: &Value, service: &str) -> String {
    let addr = compose["services"][service]["environment"]["ADMIN_ADDR"]
        .as_str()
        .unwrap_or_else(|| panic!("{service}: no ADMIN_ADDR"));
    addr.rsplit(':').next().unwrap().to_owned()
}

/// The host port of a service's `HTTP_ADDR` (`0.0.0.0:8081` -> `8081`).
fn http_port(compose: &Value, service: &str) -> String {
    let addr = compose["services"][service]["environment"]["HTTP_ADDR"]
        .as_str()
        .unwrap_or_else(|| panic!("{service}: no HTTP_ADDR"));
    addr.rsplit(':').next().unwrap().to_owned()
}

/// The file a `./path:/in/container` volume of `service` mounts at `container`, checked to
/// exist in `examples/deploy`.
fn mounted(compose: &Value, service: &str, container: &str) -> PathBuf {
    let volumes = compose["services"][service]["volumes"]
        .as_sequence()
        .unwrap_or_else(|| panic!("{service}: no volumes"));
    let volume = volumes
        .iter()
        .filter_map(Value::as_str)
        .find(|v| v.split(':').nth(1) == Some(container))
        .unwrap_or_else(|| panic!("{service} mounts nothing at {container}: {volumes:?}"));
    let path = deploy_dir().join(volume.split(':').next().unwrap());
    assert!(
        path.exists(),
        "{service}: {} does not exist",
        path.display()
    );
    path
}

#[test]
fn compose_runs_the_observability_stack_with_the_files_it_mounts() {
    let compose = compose();
    for name in OBSERVABILITY {
        let image = compose["services"][name]["image"].as_str();
        assert!(
            image.is_some_and(|i| i.contains(':') && !i.ends_with(":latest")),
            "{name}: a pinned image, not {image:?}"
        );
    }
    mounted(&compose, "prometheus", "/etc/prometheus/prometheus.yml");
    mounted(&compose, "grafana", "/etc/grafana/provisioning");
    mounted(&compose, "grafana", "/var/lib/grafana/dashboards");
    let collector = &compose["services"]["otel-collector"];
    let config = collector["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix("--config="))
        .expect("the collector is given its configuration");
    mounted(&compose, "otel-collector", config);
    for (name, port) in [
        ("jaeger", "16686"),
        ("prometheus", "9090"),
        ("grafana", "3000"),
    ] {
        let ports = compose["services"][name]["ports"].as_sequence().unwrap();
        assert!(
            ports
                .iter()
                .any(|p| p.as_str() == Some(&format!("{port}:{port}"))),
            "{name}: port {port} is not published"
        );
    }
}

#[test]
fn prometheus_scrapes_every_service_on_its_admin_port() {
    let compose = compose();
    let prometheus = &docs(&deploy_dir().join("prometheus/prometheus.yml"))[0];
    let jobs = prometheus["scrape_configs"].as_sequence().unwrap();
    for name in SERVICES {
        let job = jobs
            .iter()
            .find(|j| j["job_name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no scrape job {name} (the dashboards' service is the job)"));
        // `/metrics` is the default path; a job that sets another one would miss it.
        assert!(
            job["metrics_path"].as_str().is_none_or(|p| p == "/metrics"),
            "{name}: {:?}",
            job["metrics_path"]
        );
        let targets: Vec<&str> = job["static_configs"]
            .as_sequence()
            .unwrap()
            .iter()
            .flat_map(|c| c["targets"].as_sequence().unwrap())
            .filter_map(Value::as_str)
            .collect();
        let expected = format!("{name}:{}", admin_port(&compose, name));
        assert_eq!(targets, vec![expected.as_str()], "{name}");
    }
}

#[test]
fn services_send_spans_to_the_collector_which_forwards_them_to_jaeger() {
    let compose = compose();
    let collector_config = &docs(&deploy_dir().join("otel-collector.yaml"))[0];
    let http = collector_config["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
        .as_str()
        .expect("an OTLP/HTTP receiver");
    let http_port = http.rsplit(':').next().unwrap();
    for name in SERVICES {
        let endpoint = compose["services"][name]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
            .as_str()
            .unwrap_or_default();
        assert_eq!(
            endpoint,
            format!("http://otel-collector:{http_port}"),
            "{name}: spans go nowhere"
        );
    }
    let traces = &collector_config["service"]["pipelines"]["traces"];
    let listed = |key: &str| -> Vec<String> {
        traces[key]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(listed("receivers"), vec!["otlp"]);
    for processor in listed("processors") {
        assert!(
            collector_config["processors"][processor.as_str()].is_mapping(),
            "{processor} is not configured"
        );
    }
    let exporters = listed("exporters");
    assert!(!exporters.is_empty());
    for exporter in exporters {
        let endpoint = collector_config["exporters"][exporter.as_str()]["endpoint"]
            .as_str()
            .unwrap_or_else(|| panic!("exporter {exporter} is not configured"));
        assert!(
            endpoint.starts_with("jaeger:"),
            "{exporter} sends to {endpoint}"
        );
    }
    assert_eq!(
        compose["services"]["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"].as_str(),
        Some("true")
    );
}

/// The uids of the datasources Grafana is provisioned with.
fn provisioned_datasources() -> BTreeSet<String> {
    let path = grafana::grafana_dir().join("provisioning/datasources/datasources.yaml");
    docs(&path)[0]["datasources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|d| {
            d["uid"]
                .as_str()
                .expect("a datasource without uid")
                .to_owned()
        })
        .collect()
}

#[test]
fn every_dashboard_parses_and_every_panel_uses_a_provisioned_datasource() {
    let datasources = provisioned_datasources();
    assert!(
        datasources.contains("prometheus") && datasources.contains("jaeger"),
        "{datasources:?}"
    );
    // The provider loads the directory Compose mounts the dashboards at.
    let provider = &docs(&grafana::grafana_dir().join("provisioning/dashboards/dashboards.yaml"))
        [0]["providers"][0];
    assert_eq!(
        provider["options"]["path"].as_str(),
        Some("/var/lib/grafana/dashboards")
    );
    let dashboards = grafana::dashboards();
    assert!(!dashboards.is_empty());
    let mut uids = BTreeSet::new();
    for d in &dashboards {
        let file = &d.file;
        assert!(
            uids.insert(d.json["uid"].as_str().unwrap().to_owned()),
            "{file}: uid used twice"
        );
        assert!(
            d.json["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
            "{file}: schemaVersion"
        );
        let variables = d.json["templating"]["list"].as_array().unwrap();
        assert!(
            variables.iter().any(|v| v["name"] == "service"),
            "{file}: no service variable"
        );
        for v in variables {
            let ds = v["datasource"]["uid"].as_str();
            assert!(
                ds.is_none_or(|ds| datasources.contains(ds)),
                "{file}: variable {}: datasource {ds:?}",
                v["name"]
            );
        }
        let panels = d.panels();
        assert!(!panels.is_empty(), "{file}: no panels");
        let mut ids = BTreeSet::new();
        for p in panels {
            let title = p["title"].as_str().unwrap_or_default();
            assert!(!title.is_empty(), "{file}: a panel without title");
            assert!(
                ids.insert(p["id"].as_u64().unwrap()),
                "{file}: id of {title} used twice"
            );
            let ds = p["datasource"]["uid"].as_str().unwrap_or_default();
            assert!(
                datasources.contains(ds),
                "{file}: {title}: datasource {ds:?}"
            );
            let targets = p["targets"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            assert!(!targets.is_empty(), "{file}: {title}: no query");
        }
        for q in d.queries() {
            let ds = q.datasource.as_deref().unwrap_or_default();
            assert!(
                datasources.contains(ds),
                "{file}: {} {}: datasource {ds:?}",
                q.panel,
                q.ref_id
            );
            assert!(
                !q.expr.trim().is_empty(),
                "{file}: {} {}: no expr",
                q.panel,
                q.ref_id
            );
        }
    }
}

/// The Prometheus label name of a catalogue label (`http.route` -> `http_route`).
fn prometheus_label(name: &str) -> String {
    name.replace('.', "_")
}

/// The catalogue metric a series belongs to, with the labels its series carry.
fn catalogue_series(series: &str) -> Option<(&'static Metric, BTreeSet<String>)> {
    catalogue::ALL.iter().find_map(|m| {
        let mut labels: BTreeSet<String> =
            m.labels.iter().map(|l| prometheus_label(l.name)).collect();
        // Prometheus adds the target's labels to every series.
        labels.extend(["job".to_owned(), "instance".to_owned()]);
        match m.kind {
            Kind::Histogram => {
                let suffix = series.strip_prefix(m.name)?;
                match suffix {
                    "_bucket" => {
                        labels.insert("le".to_owned());
                        Some((m, labels))
                    }
                    "_sum" | "_count" => Some((m, labels)),
                    _ => None,
                }
            }
            _ => (series == m.name).then_some((m, labels)),
        }
    })
}

#[test]
fn dashboards_query_only_metrics_and_labels_of_the_catalogue() {
    let mut used = BTreeSet::new();
    for d in grafana::dashboards() {
        for q in d.queries() {
            let at = format!("{}: {} {}", q.dashboard, q.panel, q.ref_id);
            let refs = grafana::refs(&q.expr);
            assert!(!refs.metrics.is_empty(), "{at}: no metric in {}", q.expr);
            let mut labels = BTreeSet::new();
            for series in &refs.metrics {
                let (metric, metric_labels) = catalogue_series(series)
                    .unwrap_or_else(|| panic!("{at}: {series} is not in the catalogue"));
                used.insert(metric.name);
                for (s, label) in refs.matchers.iter().filter(|(s, _)| s == series) {
                    assert!(
                        metric_labels.contains(label),
                        "{at}: {s} has no label {label} ({metric_labels:?})"
                    );
                }
                labels.extend(metric_labels);
            }
            for label in &refs.read {
                assert!(labels.contains(label), "{at}: label_replace reads {label}");
            }
            labels.extend(refs.created.iter().cloned());
            for label in &refs.grouping {
                assert!(
                    labels.contains(label),
                    "{at}: grouped by {label}, which no series has"
                );
            }
        }
    }
    // And every metric of the catalogue is on a dashboard.
    let missing: Vec<&str> = catalogue::ALL
        .iter()
        .map(|m| m.name)
        .filter(|n| !used.contains(n))
        .collect();
    assert!(missing.is_empty(), "no dashboard charts {missing:?}");
}

#[test]
fn the_promql_reader_finds_metrics_matchers_and_grouping() {
    let r = grafana::refs(
        r#"sum by (job, status_class) (label_replace(rate(http_server_request_duration_seconds_count{job=~"$service", http_response_status_code=~"[45].."}[$__rate_interval]), "status_class", "${1}xx", "http_response_status_code", "([0-9]).."))
           / ignoring (status_class) group_left sum by (job) (rate(x_total{job=~"$service"}[5m])) > 0.5"#,
    );
    assert_eq!(
        r.metrics,
        BTreeSet::from([
            "http_server_request_duration_seconds_count".to_owned(),
            "x_total".to_owned()
        ])
    );
    assert!(r.matchers.contains(&(
        "http_server_request_duration_seconds_count".to_owned(),
        "http_response_status_code".to_owned()
    )));
    assert!(
        r.matchers
            .contains(&("x_total".to_owned(), "job".to_owned()))
    );
    assert_eq!(
        r.grouping,
        BTreeSet::from(["job".to_owned(), "status_class".to_owned()])
    );
    assert_eq!(r.created, BTreeSet::from(["status_class".to_owned()]));
    assert_eq!(
        r.read,
        BTreeSet::from(["http_response_status_code".to_owned()])
    );
}

/// Every document of the Kubernetes manifests, files in name order.
fn k8s_docs() -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir().join("k8s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files.iter().flat_map(|f| docs(f)).collect()
}

/// The manifest of `kind` named `name` (in any namespace when `namespace` is `None`).
fn k8s_object<'a>(
    manifests: &'a [Value],
    kind: &str,
    name: &str,
    namespace: Option<&str>,
) -> Option<&'a Value> {
    manifests.iter().find(|d| {
        d["kind"].as_str() == Some(kind)
            && d["metadata"]["name"].as_str() == Some(name)
            && namespace.is_none_or(|ns| d["metadata"]["namespace"].as_str() == Some(ns))
    })
}

/// The value `key` has in a ConfigMap's `data` or a Secret's `stringData` / `data` (base64).
fn k8s_config_value(manifests: &[Value], kind: &str, name: &str, key: &str) -> Option<String> {
    use base64::Engine as _;
    let object = k8s_object(manifests, kind, name, None)?;
    if let Some(v) = object["stringData"][key].as_str() {
        return Some(v.to_owned());
    }
    let v = object["data"][key].as_str()?;
    if kind == "Secret" {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(v.trim())
            .unwrap_or_else(|e| panic!("Secret {name}: {key} is not base64: {e}"));
        return Some(String::from_utf8(bytes).unwrap());
    }
    Some(v.to_owned())
}

/// The value of a container's environment variable `key`, resolved as the kubelet does: an
/// `env` entry (literal, or `valueFrom` a ConfigMap / Secret key) wins over `envFrom`. `None`
/// when it is not set, or names a ConfigMap or Secret key the manifests do not have.
fn k8s_env(manifests: &[Value], container: &Value, key: &str) -> Option<String> {
    let entry = container["env"]
        .as_sequence()
        .and_then(|env| env.iter().find(|e| e["name"].as_str() == Some(key)));
    if let Some(entry) = entry {
        if let Some(v) = entry["value"].as_str() {
            return Some(v.to_owned());
        }
        let from = &entry["valueFrom"];
        for (field, kind) in [("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")] {
            let r = &from[field];
            if let (Some(name), Some(k)) = (r["name"].as_str(), r["key"].as_str()) {
                return k8s_config_value(manifests, kind, name, k);
            }
        }
        return None;
    }
    container["envFrom"]
        .as_sequence()?
        .iter()
        .find_map(|source| {
            [("configMapRef", "ConfigMap"), ("secretRef", "Secret")]
                .into_iter()
                .find_map(|(field, kind)| {
                    let name = source[field]["name"].as_str()?;
                    k8s_config_value(manifests, kind, name, key)
                })
        })
}

/// The host and port of a `redis://` or `rediss://` URL (6379 when it names none).
fn redis_host_port(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))
        .ok_or_else(|| format!("REDIS_URL {url:?} is not a redis:// or rediss:// URL"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse()
                .map_err(|_| format!("REDIS_URL {url:?}: port {p:?}"))?,
        ),
        None => (host_port, 6379),
    };
    if host.is_empty() {
        return Err(format!("REDIS_URL {url:?} names no host"));
    }
    Ok((host.to_owned(), port))
}

/// Why the gateway's Kubernetes replicas would not share their rate limits and
/// Idempotency-Keys: more than one replica (the Deployment's, or an autoscaler's maximum)
/// without `REDIS_URL`, or a `REDIS_URL` naming a Service of the manifests' namespaces that is
/// not there, on another port, or selecting no pod.
fn k8s_gateway_redis_problem(manifests: &[Value]) -> Result<(), String> {
    let gateway =
        k8s_object(manifests, "Deployment", "gateway", None).ok_or("no gateway Deployment")?;
    let namespace = gateway["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default");
    // An absent `replicas` is one.
    let replicas = gateway["spec"]["replicas"].as_u64().unwrap_or(1);
    let autoscaled = manifests
        .iter()
        .filter(|d| {
            d["kind"].as_str() == Some("HorizontalPodAutoscaler")
                && d["spec"]["scaleTargetRef"]["kind"].as_str() == Some("Deployment")
                && d["spec"]["scaleTargetRef"]["name"].as_str() == Some("gateway")
        })
        .filter_map(|d| d["spec"]["maxReplicas"].as_u64())
        .max()
        .unwrap_or(0);
    let most = replicas.max(autoscaled);
    let containers = gateway["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .ok_or("the gateway Deployment has no containers")?;
    let container = containers
        .iter()
        .find(|c| entry_binary(c).as_deref() == Some("shop-gateway"))
        .ok_or("no container of the gateway Deployment runs shop-gateway")?;
    let Some(url) = k8s_env(manifests, container, "REDIS_URL") else {
        return if most > 1 {
            Err(format!(
                "the gateway runs up to {most} replicas without REDIS_URL: each would keep its \
                 own rate limits and Idempotency-Keys"
            ))
        } else {
            Ok(())
        };
    };
    let (host, port) = redis_host_port(&url)?;
    // `name`, `name.ns`, `name.ns.svc[.cluster.local]` with a namespace of the manifests is a
    // Service of this deployment; anything else is a Redis outside it.
    let labels: Vec<&str> = host.split('.').collect();
    let namespaces: BTreeSet<&str> = manifests
        .iter()
        .filter_map(|d| d["metadata"]["namespace"].as_str())
        .collect();
    let service_ns = match labels.as_slice() {
        [_] => Some(namespace),
        [_, ns] | [_, ns, "svc"] | [_, ns, "svc", "cluster", "local"]
            if namespaces.contains(ns) =>
        {
            Some(*ns)
        }
        _ => None,
    };
    let Some(service_ns) = service_ns else {
        return Ok(());
    };
    let service = k8s_object(manifests, "Service", labels[0], Some(service_ns))
        .ok_or_else(|| format!("REDIS_URL {url}: no Service {}.{service_ns}", labels[0]))?;
    let ports = service["spec"]["ports"]
        .as_sequence()
        .cloned()
        .unwrap_or_default();
    if !ports
        .iter()
        .any(|p| p["port"].as_u64() == Some(u64::from(port)))
    {
        return Err(format!(
            "REDIS_URL {url}: Service {} has no port {port}",
            labels[0]
        ));
    }
    let selector = service["spec"]["selector"]
        .as_mapping()
        .ok_or_else(|| format!("Service {}: no selector", labels[0]))?;
    let selected = manifests.iter().any(|d| {
        d["kind"].as_str() == Some("Deployment")
            && d["metadata"]["namespace"].as_str() == Some(service_ns)
            && d["spec"]["replicas"].as_u64().unwrap_or(1) >= 1
            && selector
                .iter()
                .all(|(k, v)| d["spec"]["template"]["metadata"]["labels"].get(k) == Some(v))
    });
    if !selected {
        return Err(format!(
            "REDIS_URL {url}: Service {} selects no Deployment",
            labels[0]
        ));
    }
    Ok(())
}

/// Why Compose's gateway would not keep its rate limits and Idempotency-Keys in Redis: no
/// `REDIS_URL`, one naming no service of the file, or a gateway that does not wait for that
/// service's health check (the gateway does not start while Redis does not answer).
fn compose_gateway_redis_problem(compose: &Value) -> Result<(), String> {
    let gateway = &compose["services"]["gateway"];
    let url = gateway["environment"]["REDIS_URL"]
        .as_str()
        .ok_or("compose's gateway has no REDIS_URL")?;
    let (host, port) = redis_host_port(url)?;
    let redis = &compose["services"][host.as_str()];
    if !redis.is_mapping() {
        return Err(format!("REDIS_URL {url}: no Compose service {host}"));
    }
    if !redis["image"]
        .as_str()
        .is_some_and(|i| i.starts_with("redis:"))
    {
        return Err(format!("{host}: not the official Redis image"));
    }
    let command: Vec<&str> = redis["command"]
        .as_sequence()
        .map(|c| c.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let listens = command
        .windows(2)
        .find(|w| w[0] == "--port")
        .map_or(Some("6379"), |w| Some(w[1]));
    if listens != Some(port.to_string().as_str()) {
        return Err(format!("REDIS_URL {url}: {host} listens on {listens:?}"));
    }
    if redis["healthcheck"]["test"]
        .as_sequence()
        .is_none_or(|t| t.is_empty())
    {
        return Err(format!("{host} has no health check"));
    }
    let condition = gateway["depends_on"][host.as_str()]["condition"].as_str();
    if condition != Some("service_healthy") {
        return Err(format!(
            "the gateway does not wait for {host} to be healthy (depends_on: {:?})",
            gateway["depends_on"]
        ));
    }
    Ok(())
}

#[test]
fn gateway_replicas_share_their_limits_and_keys_through_redis() {
    let manifests = k8s_docs();
    k8s_gateway_redis_problem(&manifests).unwrap();
    let gateway = k8s_object(&manifests, "Deployment", "gateway", None).unwrap();
    assert!(
        gateway["spec"]["replicas"].as_u64().unwrap() >= 2,
        "the gateway should run several replicas"
    );
    let redis = k8s_object(&manifests, "Deployment", "redis", Some("shop")).unwrap();
    let c = &redis["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"].as_str(), Some("redis:7-alpine"));
    for probe in ["livenessProbe", "readinessProbe"] {
        let command: Vec<&str> = c[probe]["exec"]["command"]
            .as_sequence()
            .unwrap_or_else(|| panic!("redis: no exec {probe}"))
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(command, ["redis-cli", "ping"], "redis: {probe}");
    }
    compose_gateway_redis_problem(&compose()).unwrap();
    let compose = compose();
    let redis = &compose["services"]["redis"];
    assert_eq!(redis["image"].as_str(), Some("redis:7-alpine"));
    let test: Vec<&str> = redis["healthcheck"]["test"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(test, ["CMD", "redis-cli", "ping"]);
    assert_eq!(
        compose["services"]["gateway"]["environment"]["REDIS_URL"].as_str(),
        Some("redis://redis:6379")
    );
}

/// The gateway container of the manifests' gateway Deployment, to edit.
fn gateway_container(manifests: &mut [Value]) -> &mut Value {
    let gateway = manifests
        .iter_mut()
        .find(|d| {
            d["kind"].as_str() == Some("Deployment")
                && d["metadata"]["name"].as_str() == Some("gateway")
        })
        .unwrap();
    &mut gateway["spec"]["template"]["spec"]["containers"][0]
}

fn set_replicas(manifests: &mut [Value], replicas: u64) {
    for d in manifests.iter_mut() {
        if d["kind"].as_str() == Some("Deployment")
            && d["metadata"]["name"].as_str() == Some("gateway")
        {
            d["spec"]["replicas"] = Value::from(replicas);
        }
    }
}

#[test]
fn the_redis_checks_catch_replicas_without_a_shared_store() {
    let manifests = k8s_docs();
    // Several replicas without REDIS_URL.
    let mut without = manifests.clone();
    gateway_container(&mut without)["env"]
        .as_sequence_mut()
        .unwrap()
        .retain(|e| e["name"].as_str() != Some("REDIS_URL"));
    let err = k8s_gateway_redis_problem(&without).unwrap_err();
    assert!(err.contains("without REDIS_URL"), "{err}");
    // One replica needs none; an autoscaler that may add some does.
    set_replicas(&mut without, 1);
    k8s_gateway_redis_problem(&without).unwrap();
    let hpa: Value = serde_yaml::from_str(
        "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: { name: gateway, namespace: shop }\nspec:\n  scaleTargetRef: { apiVersion: apps/v1, kind: Deployment, name: gateway }\n  minReplicas: 1\n  maxReplicas: 4\n",
    )
    .unwrap();
    without.push(hpa);
    assert!(k8s_gateway_redis_problem(&without).is_err());
    // From the ConfigMap through envFrom, as the kubelet resolves it.
    let mut from_config = without.clone();
    for d in from_config.iter_mut() {
        if d["kind"].as_str() == Some("ConfigMap") {
            d["data"]["REDIS_URL"] = Value::from("redis://redis.shop.svc.cluster.local:6379");
        }
    }
    k8s_gateway_redis_problem(&from_config).unwrap();
    // A Service that is not there, or on another port.
    for url in [
        "redis://cache.shop:6379",
        "redis://redis:6380",
        "http://redis:6379",
    ] {
        let mut wrong = manifests.clone();
        for e in gateway_container(&mut wrong)["env"]
            .as_sequence_mut()
            .unwrap()
        {
            if e["name"].as_str() == Some("REDIS_URL") {
                e["value"] = Value::from(url);
            }
        }
        assert!(k8s_gateway_redis_problem(&wrong).is_err(), "{url}");
    }
    // A Redis outside the cluster is not checked against the manifests.
    let mut external = manifests.clone();
    for e in gateway_container(&mut external)["env"]
        .as_sequence_mut()
        .unwrap()
    {
        if e["name"].as_str() == Some("REDIS_URL") {
            e["value"] = Value::from("rediss://:secret@cache.example.com:6380/0");
        }
    }
    k8s_gateway_redis_problem(&external).unwrap();

    let compose = compose();
    let mut no_url = compose.clone();
    no_url["services"]["gateway"]["environment"]
        .as_mapping_mut()
        .unwrap()
        .remove("REDIS_URL");
    assert!(compose_gateway_redis_problem(&no_url).is_err());
    let mut no_dependency = compose.clone();
    no_dependency["services"]["gateway"]["depends_on"]
        .as_mapping_mut()
        .unwrap()
        .remove("redis");
    assert!(compose_gateway_redis_problem(&no_dependency).is_err());
    let mut started_only = compose.clone();
    started_only["services"]["gateway"]["depends_on"]["redis"]["condition"] =
        Value::from("service_started");
    assert!(compose_gateway_redis_problem(&started_only).is_err());
    let mut no_service = compose;
    no_service["services"]
        .as_mapping_mut()
        .unwrap()
        .remove("redis");
    assert!(compose_gateway_redis_problem(&no_service).is_err());
}
