//! # shop-launcher
//!
//! Runs the whole shop on one machine: builds the service binaries (`cargo build`), starts each
//! service as its own process with its environment (ports, a SQLite file per service in a run
//! directory, `AMQP_URL`, service-token keys), waits until every `/health/ready` is green, and
//! drives a demo workload through the gateway.
//!
//! The library is what the binary and the end-to-end tests share:
//! - [`System`]: start, inspect, kill/restart and stop the processes;
//! - [`workload`]: place orders concurrently, poll them to a final status, summarise.
//!
//! # Example
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use shop_launcher::{System, SystemConfig, build_services, workload};
//!
//! let bin_dir = build_services(false)?;
//! let system = System::start(SystemConfig::new(bin_dir, std::env::temp_dir().join("shop-run"))).await?;
//! let summary = workload::run(system.url("gateway"), &workload::WorkloadConfig::default(), None).await?;
//! println!("{summary}");
//! system.stop().await;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

pub mod workload;

/// A boxed error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The services, in start order (the provider first, the gateway last).
pub const SERVICES: [&str; 6] = [
    "payment-provider",
    "inventory",
    "payments",
    "orders",
    "notifications",
    "gateway",
];

/// The binary of a service.
pub fn binary_name(service: &str) -> String {
    format!("shop-{service}")
}

/// Builds every service binary with `cargo build` (release or debug) and returns the directory
/// holding them. Uses the `CARGO` the launcher runs under and honours `CARGO_TARGET_DIR`.
pub fn build_services(release: bool) -> Result<PathBuf, BoxError> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.arg("build").arg("--quiet");
    if release {
        cmd.arg("--release");
    }
    for s in SERVICES {
        cmd.arg("-p").arg(binary_name(s));
    }
    cmd.current_dir(workspace_root());
    let status = cmd.status()?;
    if !status.success() {
        return Err(format!("cargo build failed: {status}").into());
    }
    Ok(target_dir().join(if release { "release" } else { "debug" }))
}

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// How to start the system.
#[derive(Debug, Clone)]
pub struct SystemConfig {
    /// Where the service binaries are.
    pub bin_dir: PathBuf,
    /// Where the databases and logs go.
    pub run_dir: PathBuf,
    /// Ports by service; `None` picks free ports.
    pub ports: Option<BTreeMap<&'static str, u16>>,
    /// Prefix of every exchange and queue (isolates systems sharing a broker).
    pub namespace: String,
    /// The broker.
    pub amqp_url: String,
    /// Fraction of provider charges that fail.
    pub provider_failure_rate: f64,
    /// Saga step timeout.
    pub step_timeout: Duration,
    /// The inventory catalogue (`sku:name:price:stock,…`), default the demo's.
    pub inventory_seed: Option<String>,
    /// End-user API keys given to the gateway.
    pub api_keys: String,
    /// Extra environment for every service (e.g. `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub extra_env: Vec<(String, String)>,
    /// How long to wait for every `/health/ready`.
    pub ready_timeout: Duration,
}

impl SystemConfig {
    /// Defaults: free ports, a fresh namespace, the local broker (or `AMQP_URL`).
    pub fn new(bin_dir: PathBuf, run_dir: PathBuf) -> Self {
        Self {
            bin_dir,
            run_dir,
            ports: None,
            namespace: format!("shop-{}.", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            amqp_url: std::env::var("AMQP_URL")
                .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
            provider_failure_rate: 0.0,
            step_timeout: Duration::from_secs(30),
            inventory_seed: None,
            api_keys: "demo-key-0001:demo".into(),
            extra_env: Vec::new(),
            ready_timeout: Duration::from_secs(60),
        }
    }

    /// The standard ports 8080.. (gateway 8080, orders 8081, inventory 8082, payments 8083,
    /// notifications 8084, payment-provider 8090).
    pub fn standard_ports(mut self) -> Self {
        self.ports = Some(BTreeMap::from([
            ("gateway", 8080),
            ("orders", 8081),
            ("inventory", 8082),
            ("payments", 8083),
            ("notifications", 8084),
            ("payment-provider", 8090),
        ]));
        self
    }
}

#[derive(Debug)]
struct Proc {
    child: Option<Child>,
    env: Vec<(String, String)>,
    url: String,
}

/// The running system.
#[derive(Debug)]
pub struct System {
    config: SystemConfig,
    procs: BTreeMap<&'static str, Proc>,
}

impl System {
    /// Starts every service and waits until each `/health/ready` answers 200.
    pub async fn start(config: SystemConfig) -> Result<System, BoxError> {
        std::fs::create_dir_all(&config.run_dir)?;
        let ports: BTreeMap<&'static str, u16> = match &config.ports {
            Some(p) => p.clone(),
            None => SERVICES.iter().map(|s| (*s, free_port())).collect(),
        };
        let url = |s: &str| format!("http://127.0.0.1:{}", ports[s]);
        let key =
            chassis_http::auth::SigningKey::generate_ed25519()?.with_kid("shop-launcher-1")?;
        let private_pem = key.to_pkcs8_pem().ok_or("no PEM for the generated key")?;
        let public_pem = key
            .public_key_pem()
            .ok_or("no public PEM for the generated key")?;
        let mut procs = BTreeMap::new();
        for service in SERVICES {
            let mut env: Vec<(String, String)> = vec![
                ("HTTP_ADDR".into(), format!("127.0.0.1:{}", ports[service])),
                ("DATA_DIR".into(), config.run_dir.display().to_string()),
                ("AMQP_URL".into(), config.amqp_url.clone()),
                ("SHOP_NAMESPACE".into(), config.namespace.clone()),
                ("LOG_FORMAT".into(), "json".into()),
                ("SERVICE_TOKEN_KID".into(), "shop-launcher-1".into()),
                ("SERVICE_TOKEN_PUBLIC_KEY".into(), public_pem.clone()),
            ];
            match service {
                "payment-provider" => {
                    env.push((
                        "PROVIDER_ADDR".into(),
                        format!("127.0.0.1:{}", ports[service]),
                    ));
                    env.push((
                        "PROVIDER_FAILURE_RATE".into(),
                        config.provider_failure_rate.to_string(),
                    ));
                }
                "gateway" => {
                    env.push(("GATEWAY_API_KEYS".into(), config.api_keys.clone()));
                    env.push(("GATEWAY_RATE_LIMIT".into(), "100000".into()));
                    env.push(("SERVICE_TOKEN_PRIVATE_KEY".into(), private_pem.clone()));
                    env.push(("ORDERS_URL".into(), url("orders")));
                    env.push(("INVENTORY_URL".into(), url("inventory")));
                    env.push(("NOTIFICATIONS_URL".into(), url("notifications")));
                }
                "payments" => env.push(("PROVIDER_URL".into(), url("payment-provider"))),
                "orders" => env.push((
                    "SAGA_STEP_TIMEOUT_MS".into(),
                    config.step_timeout.as_millis().to_string(),
                )),
                "inventory" => {
                    if let Some(seed) = &config.inventory_seed {
                        env.push(("INVENTORY_SEED".into(), seed.clone()));
                    }
                }
                _ => {}
            }
            env.extend(config.extra_env.iter().cloned());
            procs.insert(
                service,
                Proc {
                    child: None,
                    env,
                    url: url(service),
                },
            );
        }
        let mut system = System { config, procs };
        for service in SERVICES {
            system.spawn(service)?;
        }
        system.wait_ready(None).await?;
        Ok(system)
    }

    fn spawn(&mut self, service: &'static str) -> Result<(), BoxError> {
        let bin = self.config.bin_dir.join(binary_name(service));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.config.run_dir.join(format!("{service}.log")))?;
        let proc = self.procs.get_mut(service).ok_or("unknown service")?;
        let child = Command::new(&bin)
            // Each service of a launched system gets its own SQLite file in the run directory.
            // An inherited DATABASE_URL (CI exports one for the crates' PostgreSQL tests) would
            // point every service of every system at one shared database and mix their data.
            .env_remove("DATABASE_URL")
            .envs(proc.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        proc.child = Some(child);
        Ok(())
    }

    /// Waits until `/health/ready` of `only` (or of every service) answers 200.
    pub async fn wait_ready(&mut self, only: Option<&str>) -> Result<(), BoxError> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + self.config.ready_timeout;
        for (name, proc) in &mut self.procs {
            if only.is_some_and(|o| o != *name) {
                continue;
            }
            loop {
                if let Some(child) = proc.child.as_mut()
                    && let Some(status) = child.try_wait()?
                {
                    return Err(format!("{name} exited during startup ({status}); see {name}.log in the run directory").into());
                }
                let ready = http
                    .get(format!("{}/health/ready", proc.url))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ready {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(
                        format!("{name} not ready after {:?}", self.config.ready_timeout).into(),
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// The base URL of a service.
    pub fn url(&self, service: &str) -> &str {
        self.procs.get(service).map_or("", |p| p.url.as_str())
    }

    /// The run directory (databases, `<service>.log`).
    pub fn run_dir(&self) -> &Path {
        &self.config.run_dir
    }

    /// The namespace prefix of exchanges and queues.
    pub fn namespace(&self) -> &str {
        &self.config.namespace
    }

    /// Kills a service at once (SIGKILL): a crash.
    pub async fn kill(&mut self, service: &str) -> Result<(), BoxError> {
        let proc = self.procs.get_mut(service).ok_or("unknown service")?;
        if let Some(mut child) = proc.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// Starts a killed or stopped service again and waits until it is ready.
    pub async fn restart(&mut self, service: &'static str) -> Result<(), BoxError> {
        self.kill(service).await?;
        self.spawn(service)?;
        self.wait_ready(Some(service)).await
    }

    /// Stops one service gracefully (SIGTERM, then SIGKILL after 15 s); returns whether it
    /// exited successfully by itself.
    pub async fn terminate(&mut self, service: &str) -> Result<bool, BoxError> {
        let proc = self.procs.get_mut(service).ok_or("unknown service")?;
        let Some(mut child) = proc.child.take() else {
            return Ok(false);
        };
        if let Some(pid) = child.id() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await;
        }
        match tokio::time::timeout(Duration::from_secs(15), child.wait()).await {
            Ok(status) => Ok(status?.success()),
            Err(_) => {
                child.kill().await?;
                Ok(false)
            }
        }
    }

    /// Stops every service gracefully, the gateway first; returns the services that did not
    /// exit cleanly.
    pub async fn stop(mut self) -> Vec<String> {
        let mut unclean = Vec::new();
        for service in SERVICES.iter().rev() {
            if !self.terminate(service).await.unwrap_or(false) {
                unclean.push((*service).to_owned());
            }
        }
        unclean
    }
}
