//! # shop-launcher
//!
//! Runs the whole shop on one machine: checks that RabbitMQ (and PostgreSQL) answer, builds the
//! service binaries (`cargo build`), starts each service as its own process with its environment
//! (ports — the API's, and an admin port for the probes and `/metrics` —, its own database — a SQLite file per service in a run directory, or a PostgreSQL
//! database per service on one server, see [`Database`] —, `AMQP_URL`, service-token keys),
//! waits until every `/health/ready` is green, drives a demo workload through the gateway (or
//! round-robin through several gateway replicas sharing a Redis), stops the services gracefully
//! and deletes the run's exchanges and queues. Any service but the payment provider can run as
//! several replicas ([`SystemConfig::replicas`], see [`replicas`]).
//!
//! The library is what the binary and the end-to-end tests share:
//! - [`preflight`]: the broker and the database server answer before anything starts (a local
//!   one that is installed but stopped is started);
//! - [`System`]: start, inspect, kill/restart and stop the processes;
//! - [`workload`]: place orders concurrently, poll them to a final status, summarise;
//! - [`measure`]: the workload with CPU time per order per process ([`cpu`], from `/proc`) and
//!   p50/p99 per hop ([`hops`], from the services' `/metrics`);
//! - [`cleanup`]: delete every exchange and queue of a run's namespace once its services stopped;
//! - [`replicas`]: several processes of a service, and a front door spreading its callers'
//!   connections over them;
//! - [`tls`]: `--tls`, a development CA and a certificate per service, and the launcher's own
//!   HTTPS client.
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
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio::task::JoinSet;

pub mod affinity;
pub mod cleanup;
pub mod cpu;
pub mod hops;
pub mod measure;
pub mod preflight;
pub mod replicas;
pub mod tls;
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

/// The services with a database of their own, which are also the ones on the broker: all but
/// the gateway (it only calls the others over HTTP and stores nothing) and the payment provider
/// (it plays a third party and keeps its state in memory).
pub const SERVICES_WITH_DATABASE: [&str; 4] = ["inventory", "payments", "orders", "notifications"];

/// The PostgreSQL server the launcher uses when `--database postgres` names none.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Where the services keep their data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file per service (`<service>.db`) in the run directory. The default.
    Sqlite,
    /// A PostgreSQL database per service on one server, named `<prefix>_<service>`, created if
    /// missing (the connecting role needs `CREATEDB`).
    Postgres {
        /// Any database URL on the server (`postgres://user@host:port/db`); the launcher connects
        /// to it to create the services' databases and points each service at its own one.
        server_url: String,
        /// Prefix of the databases' names (`[a-z0-9_]`).
        prefix: String,
        /// Drop the databases when the system stops (or is dropped, e.g. by a failing test).
        drop_on_stop: bool,
    },
}

impl Database {
    /// PostgreSQL databases `<prefix>_<service>` on `server_url`, kept after the run.
    pub fn postgres(server_url: impl Into<String>, prefix: impl Into<String>) -> Self {
        Database::Postgres {
            server_url: server_url.into(),
            prefix: prefix.into(),
            drop_on_stop: false,
        }
    }

    /// The name of `service`'s PostgreSQL database, if on PostgreSQL.
    pub fn database_name(&self, service: &str) -> Option<String> {
        match self {
            Database::Sqlite => None,
            Database::Postgres { prefix, .. } => {
                Some(format!("{prefix}_{}", service.replace('-', "_")))
            }
        }
    }

    /// The `DATABASE_URL` of `service`, if on PostgreSQL: the server URL with the service's
    /// database as path (user, host, port and query parameters kept).
    pub fn service_url(&self, service: &str) -> Option<String> {
        match self {
            Database::Sqlite => None,
            Database::Postgres { server_url, .. } => {
                Some(with_database(server_url, &self.database_name(service)?))
            }
        }
    }
}

/// `url` with its database (path) replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let (scheme, rest) = base.split_once("://").unwrap_or(("postgres", base));
    let authority = rest.split('/').next().unwrap_or(rest);
    let mut out = format!("{scheme}://{authority}/{name}");
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

fn check_prefix(prefix: &str) -> Result<(), BoxError> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 40
        && prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !prefix.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "database prefix {prefix:?} must be 1..=40 of [a-z0-9_], not starting with a digit"
        )
        .into())
    }
}

/// Creates the services' PostgreSQL databases that do not exist yet.
async fn create_databases(db: &Database) -> Result<(), BoxError> {
    let Some((mut conn, names)) = server_and_databases(db).await? else {
        return Ok(());
    };
    for name in names {
        let exists = sqlx::query("SELECT 1 FROM pg_database WHERE datname = $1")
            .bind(&name)
            .fetch_optional(&mut conn)
            .await?
            .is_some();
        if exists {
            continue;
        }
        // The name is checked ([a-z0-9_]), so quoting it is enough.
        let create = format!("CREATE DATABASE \"{name}\"");
        match sqlx::query(sqlx::AssertSqlSafe(create))
            .execute(&mut conn)
            .await
        {
            Ok(_) => {}
            // Created concurrently by another launcher: fine.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(format!("creating database {name}: {e}").into()),
        }
    }
    sqlx::Connection::close(conn).await?;
    Ok(())
}

/// Drops the services' PostgreSQL databases (closing their remaining connections).
pub async fn drop_databases(db: &Database) -> Result<(), BoxError> {
    let Some((mut conn, names)) = server_and_databases(db).await? else {
        return Ok(());
    };
    for name in names {
        let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
        sqlx::query(sqlx::AssertSqlSafe(drop))
            .execute(&mut conn)
            .await
            .map_err(|e| format!("dropping database {name}: {e}"))?;
    }
    sqlx::Connection::close(conn).await?;
    Ok(())
}

/// For a PostgreSQL launch: a connection to the server and the services' database names (the
/// prefix checked, so the names are safe to quote); `None` for SQLite.
async fn server_and_databases(
    db: &Database,
) -> Result<Option<(sqlx::PgConnection, Vec<String>)>, BoxError> {
    let Database::Postgres {
        server_url, prefix, ..
    } = db
    else {
        return Ok(None);
    };
    check_prefix(prefix)?;
    let names = SERVICES_WITH_DATABASE
        .iter()
        .map(|service| db.database_name(service).ok_or("no database name"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some((connect_server(server_url).await?, names)))
}

/// The pid of the local PostgreSQL server's postmaster, for a PostgreSQL launch on a loopback
/// server: the parent of the backend serving a connection of ours (`pg_backend_pid()`), which
/// needs no access to the server's files. `None` for SQLite, a remote server, or when the
/// server does not answer.
pub async fn database_server_pid(db: &Database) -> Option<u32> {
    let Database::Postgres { server_url, .. } = db else {
        return None;
    };
    if !preflight::Endpoint::parse(server_url, 5432).is_ok_and(|e| e.is_loopback()) {
        return None;
    }
    let mut conn = connect_server(server_url).await.ok()?;
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{backend}/stat")).ok()?;
    let _ = sqlx::Connection::close(conn).await;
    cpu::parent_pid(&stat)
}

async fn connect_server(url: &str) -> Result<sqlx::PgConnection, BoxError> {
    <sqlx::PgConnection as sqlx::Connection>::connect(url)
        .await
        .map_err(|e| format!("connecting to PostgreSQL at {url}: {e}").into())
}

/// The binary of a service.
pub fn binary_name(service: &str) -> String {
    format!("shop-{service}")
}

/// The `CARGO` this process runs under (or `cargo`), without the variables cargo sets for the
/// package it runs (`CARGO_PKG_*`, `CARGO_MANIFEST_DIR`, `CARGO_BIN_EXE_*`, ...).
///
/// Cargo compares the environment variables a crate read at compile time (`env!`, such as
/// clap's `CARGO_PKG_DESCRIPTION`) with its own environment. A build started from a test or
/// from `cargo run` would find another package's values there, take every such crate for
/// stale and compile it again (and again from the next test of another package).
fn cargo_command() -> std::process::Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let set_by_cargo = key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_BIN_EXE_")
            || matches!(
                key,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "OUT_DIR"
            );
        if set_by_cargo {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// The `cargo build` of every service binary (release or debug), run from the workspace root
/// with the `CARGO` the launcher runs under.
///
/// It selects `shop-launcher` together with the six services. The launcher depends on the
/// service crates (see its `Cargo.toml`), so `cargo run -p shop-launcher` has already resolved
/// and compiled every crate the services need with exactly this invocation's features: the
/// build only links the service binaries. (Cargo resolves features per invocation for the
/// packages it selects; a `cargo build -p shop-gateway -p …` without the launcher, as this was
/// before, resolved ~100 shared crates, tokio and sqlx among them, to other feature sets and
/// compiled them a second time.)
pub fn build_command(release: bool) -> std::process::Command {
    let mut cmd = cargo_command();
    cmd.arg("build").arg("--quiet");
    if release {
        cmd.arg("--release");
    }
    cmd.arg("-p").arg("shop-launcher");
    for s in SERVICES {
        cmd.arg("-p").arg(binary_name(s));
    }
    cmd.current_dir(workspace_root());
    cmd
}

/// The `cargo build` the shop's tests run before they start the services: every binary and
/// test target of the workspace, all features, debug.
///
/// That is what the README's test command (`cargo test --workspace --all-features`) has
/// already built, resolved with the same features (dev-dependencies included, since test
/// targets are selected), so under it cargo finds every binary fresh and builds nothing.
/// [`build_command`]'s selection resolves shared crates such as tokio to other feature sets
/// and, inside that test run, compiled the services and ~100 of their dependencies a second
/// time (3.5 minutes on 2 cores, 2026-12-07). Run from a single test file, it builds the
/// workspace's test targets once, as the README's command would.
pub fn test_build_command() -> std::process::Command {
    let mut cmd = cargo_command();
    cmd.args([
        "build",
        "--quiet",
        "--workspace",
        "--all-features",
        "--bins",
        "--tests",
    ]);
    cmd.current_dir(workspace_root());
    cmd
}

/// Builds every service binary as the tests need them ([`test_build_command`]) and returns
/// the directory holding them.
pub fn build_services_for_tests() -> Result<PathBuf, BoxError> {
    let status = test_build_command().status()?;
    if !status.success() {
        return Err(format!("cargo build failed: {status}").into());
    }
    Ok(bin_dir(false))
}

/// The directory [`build_command`] puts the binaries in (honours `CARGO_TARGET_DIR`).
pub fn bin_dir(release: bool) -> PathBuf {
    target_dir().join(if release { "release" } else { "debug" })
}

/// Builds every service binary ([`build_command`]) and returns the directory holding them.
pub fn build_services(release: bool) -> Result<PathBuf, BoxError> {
    let status = build_command(release).status()?;
    if !status.success() {
        return Err(format!("cargo build failed: {status}").into());
    }
    Ok(bin_dir(release))
}

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
}

/// The broker: `AMQP_URL`, or the local RabbitMQ with the default guest account.
pub fn default_amqp_url() -> String {
    std::env::var("AMQP_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A free TCP port on loopback, below the ephemeral range (see [`chassis_testkit::free_port`]):
/// the system starts many processes whose connections would otherwise take their ports.
pub fn free_port() -> u16 {
    chassis_testkit::free_port()
}

/// The last `lines` lines of a service's log, for an error that says why it stopped (the run
/// directory is often a temporary one, gone by the time someone reads the error).
fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("({} unreadable: {e})", path.display()),
    }
}

/// How to start the system.
#[derive(Debug, Clone)]
pub struct SystemConfig {
    /// Where the service binaries are.
    pub bin_dir: PathBuf,
    /// Where the logs (and the SQLite databases) go.
    pub run_dir: PathBuf,
    /// SQLite files (default) or PostgreSQL databases.
    pub database: Database,
    /// Ports by service; `None` picks free ports.
    pub ports: Option<BTreeMap<&'static str, u16>>,
    /// Admin ports (probes and `/metrics`, `ADMIN_ADDR`) of the chassis services, every
    /// service but the payment provider; `None` picks free ports.
    pub admin_ports: Option<BTreeMap<&'static str, u16>>,
    /// Prefix of every exchange and queue (isolates systems sharing a broker); ends with `.`.
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
    /// Every service on HTTPS with mTLS between them, with certificates generated into
    /// `<run dir>/tls` (see [`tls`]).
    pub tls: bool,
    /// The Redis every gateway keeps its rate limits and idempotency keys in (`REDIS_URL`,
    /// under a prefix of the run's namespace); `None` keeps them in each gateway's memory.
    pub redis_url: Option<String>,
    /// Processes per service (absent: one), each on its own ports (`orders`, `orders-2`, …;
    /// see [`replicas`]). More than one gateway needs [`redis_url`](Self::redis_url) (limits
    /// kept per process would not be shared), more than one of a service with a database needs
    /// PostgreSQL ([`replicas::check`]).
    pub replicas: BTreeMap<&'static str, usize>,
    /// Which CPU each process runs on (default: each on one CPU, round-robin; see
    /// [`affinity`]).
    pub cpu_placement: affinity::CpuPlacement,
}

impl SystemConfig {
    /// Defaults: free ports, a fresh namespace, the local broker (or `AMQP_URL`).
    pub fn new(bin_dir: PathBuf, run_dir: PathBuf) -> Self {
        Self {
            bin_dir,
            run_dir,
            database: Database::Sqlite,
            ports: None,
            admin_ports: None,
            namespace: format!("shop-{}.", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            amqp_url: default_amqp_url(),
            provider_failure_rate: 0.0,
            step_timeout: Duration::from_secs(30),
            inventory_seed: None,
            api_keys: "demo-key-0001:demo".into(),
            extra_env: Vec::new(),
            ready_timeout: Duration::from_secs(60),
            tls: false,
            redis_url: None,
            replicas: BTreeMap::new(),
            cpu_placement: affinity::CpuPlacement::default(),
        }
    }

    /// The standard ports 8080.. (gateway 8080, orders 8081, inventory 8082, payments 8083,
    /// notifications 8084, payment-provider 8090), and the admin ports 9080.. (gateway 9080,
    /// orders 9081, inventory 9082, payments 9083, notifications 9084).
    pub fn standard_ports(mut self) -> Self {
        self.admin_ports = Some(BTreeMap::from([
            ("gateway", 9080),
            ("orders", 9081),
            ("inventory", 9082),
            ("payments", 9083),
            ("notifications", 9084),
        ]));
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
    /// The service this process runs (`gateway` for every gateway replica).
    service: &'static str,
    child: Option<Child>,
    env: Vec<(String, String)>,
    url: String,
    /// Where the probes and `/metrics` are: the admin port (plain HTTP), or `url` for the
    /// payment provider.
    admin_url: String,
    /// A further replica not started yet: it starts once the first one of its service is
    /// ready ([`System::wait_ready`]).
    deferred: bool,
    /// The CPU it is pinned to (assigned at its first start, kept across restarts), if any.
    cpu: Option<usize>,
}

/// How long [`System::stop`] lets the services drain before it kills what is left.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The running system.
#[derive(Debug)]
pub struct System {
    config: SystemConfig,
    procs: BTreeMap<&'static str, Proc>,
    /// Whether the PostgreSQL databases still need dropping (`drop_on_stop`).
    databases_to_drop: bool,
    /// The run's certificates, with [`SystemConfig::tls`].
    pki: Option<tls::ShopPki>,
    /// The address in front of each replicated service but the gateway.
    front_doors: BTreeMap<&'static str, (replicas::FrontDoor, String)>,
    /// Hands out the CPU of each process at its first start.
    placer: affinity::Placer,
}

impl System {
    /// Starts every service and waits until each `/health/ready` answers 200. If one does not
    /// get ready, the returned error drops the system, which kills every process it started.
    pub async fn start(config: SystemConfig) -> Result<System, BoxError> {
        let mut system = System::launch(config).await?;
        system.wait_ready(None).await?;
        Ok(system)
    }

    /// Starts every service without waiting for it to get ready (see [`System::wait_ready`]):
    /// the caller keeps the system, so it can stop it gracefully however the wait ends.
    pub async fn launch(config: SystemConfig) -> Result<System, BoxError> {
        replicas::check(
            &config.replicas,
            config.redis_url.is_some(),
            &config.database,
        )?;
        std::fs::create_dir_all(&config.run_dir)?;
        create_databases(&config.database).await?;
        let databases_to_drop = matches!(
            config.database,
            Database::Postgres {
                drop_on_stop: true,
                ..
            }
        );
        let ports: BTreeMap<&'static str, u16> = match &config.ports {
            Some(p) => p.clone(),
            None => SERVICES.iter().map(|s| (*s, free_port())).collect(),
        };
        let admin_ports: BTreeMap<&'static str, u16> = match &config.admin_ports {
            Some(p) => p.clone(),
            None => SERVICES
                .iter()
                .filter(|s| **s != "payment-provider")
                .map(|s| (*s, free_port()))
                .collect(),
        };
        let pki = if config.tls {
            Some(tls::ShopPki::generate(config.run_dir.join("tls"))?)
        } else {
            None
        };
        let scheme = if pki.is_some() { "https" } else { "http" };
        let url = |s: &str| format!("{scheme}://127.0.0.1:{}", ports[s]);
        let key =
            chassis_http::auth::SigningKey::generate_ed25519()?.with_kid("shop-launcher-1")?;
        let private_pem = key.to_pkcs8_pem().ok_or("no PEM for the generated key")?;
        let public_pem = key
            .public_key_pem()
            .ok_or("no public PEM for the generated key")?;
        // The orders service's own key, for its gRPC calls to the inventory.
        let orders_key = chassis_http::auth::SigningKey::generate_ed25519()?;
        let orders_private_pem = orders_key
            .to_pkcs8_pem()
            .ok_or("no PEM for the generated key")?;
        let orders_public_pem = orders_key
            .public_key_pem()
            .ok_or("no public PEM for the generated key")?;
        let mut procs = BTreeMap::new();
        for service in SERVICES {
            let mut env: Vec<(String, String)> = vec![
                ("HTTP_ADDR".into(), format!("127.0.0.1:{}", ports[service])),
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
                    if let Some(redis) = &config.redis_url {
                        env.push(("REDIS_URL".into(), redis.clone()));
                        // The run's own keys: systems sharing a Redis do not share limits.
                        env.push((
                            "GATEWAY_REDIS_PREFIX".into(),
                            format!("{}gateway:", config.namespace),
                        ));
                    }
                    env.push(("GATEWAY_API_KEYS".into(), config.api_keys.clone()));
                    env.push(("GATEWAY_RATE_LIMIT".into(), "100000".into()));
                    env.push(("SERVICE_TOKEN_PRIVATE_KEY".into(), private_pem.clone()));
                    env.push(("ORDERS_URL".into(), url("orders")));
                    env.push(("INVENTORY_URL".into(), url("inventory")));
                    env.push(("NOTIFICATIONS_URL".into(), url("notifications")));
                    env.push(("PAYMENTS_URL".into(), url("payments")));
                }
                "payments" => env.push(("PROVIDER_URL".into(), url("payment-provider"))),
                "orders" => {
                    env.push((
                        "SAGA_STEP_TIMEOUT_MS".into(),
                        config.step_timeout.as_millis().to_string(),
                    ));
                    env.push(("INVENTORY_URL".into(), url("inventory")));
                    env.push((
                        "ORDERS_TOKEN_PRIVATE_KEY".into(),
                        orders_private_pem.clone(),
                    ));
                }
                "inventory" => {
                    env.push(("ORDERS_TOKEN_PUBLIC_KEY".into(), orders_public_pem.clone()));
                    if let Some(seed) = &config.inventory_seed {
                        env.push(("INVENTORY_SEED".into(), seed.clone()));
                    }
                }
                _ => {}
            }
            // Only the services that use them get a database and the broker.
            if SERVICES_WITH_DATABASE.contains(&service) {
                env.push(("DATA_DIR".into(), config.run_dir.display().to_string()));
                env.push(("AMQP_URL".into(), config.amqp_url.clone()));
                env.push(("SHOP_NAMESPACE".into(), config.namespace.clone()));
                if let Some(url) = config.database.service_url(service) {
                    env.push(("DATABASE_URL".into(), url));
                }
            }
            // The chassis services serve their probes and `/metrics` on an admin port of
            // their own, in plain HTTP also with `--tls`; the provider serves its probes itself.
            let admin_url = match admin_ports.get(service) {
                Some(port) => {
                    env.push(("ADMIN_ADDR".into(), format!("127.0.0.1:{port}")));
                    format!("http://127.0.0.1:{port}")
                }
                None => url(service),
            };
            if let Some(pki) = &pki {
                env.extend(pki.env(service));
            }
            env.extend(config.extra_env.iter().cloned());
            procs.insert(
                service,
                Proc {
                    service,
                    child: None,
                    env,
                    url: url(service),
                    admin_url,
                    deferred: false,
                    cpu: None,
                },
            );
        }
        // Further replicas: the first one's environment on ports of their own.
        let mut front_doors = BTreeMap::new();
        for (&service, &count) in &config.replicas {
            if count < 2 {
                continue;
            }
            let mut replica_addrs = Vec::new();
            for index in 1..=count {
                let name = replicas::process_name(service, index);
                // The service's own port belongs to its front door (but for the gateways,
                // which their caller reaches one by one).
                let port = if index == 1 && service == "gateway" {
                    ports[service]
                } else {
                    free_port()
                };
                let admin_port = match (index, admin_ports.get(service)) {
                    (1, Some(p)) => *p,
                    _ => free_port(),
                };
                let mut env = procs[service].env.clone();
                for (key, value) in &mut env {
                    match key.as_str() {
                        "HTTP_ADDR" => *value = format!("127.0.0.1:{port}"),
                        "ADMIN_ADDR" => *value = format!("127.0.0.1:{admin_port}"),
                        _ => {}
                    }
                }
                replica_addrs.push(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
                procs.insert(
                    name,
                    Proc {
                        service,
                        child: None,
                        env,
                        url: format!("{scheme}://127.0.0.1:{port}"),
                        admin_url: format!("http://127.0.0.1:{admin_port}"),
                        // Replicas starting together on a fresh database would race to create
                        // its tables (PostgreSQL's `CREATE TABLE IF NOT EXISTS` is not safe
                        // against a concurrent one); the first creates them alone.
                        deferred: index > 1,
                        cpu: None,
                    },
                );
            }
            if service != "gateway" {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], ports[service]));
                let door = replicas::FrontDoor::bind(addr, replica_addrs)
                    .await
                    .map_err(|e| format!("front door of {service} on {addr}: {e}"))?;
                front_doors.insert(service, (door, url(service)));
            }
        }
        let placer = affinity::Placer::new(config.cpu_placement);
        let mut system = System {
            config,
            procs,
            databases_to_drop,
            pki,
            front_doors,
            placer,
        };
        let names: Vec<&'static str> = SERVICES
            .into_iter()
            .chain(
                system
                    .procs
                    .keys()
                    .copied()
                    .filter(|n| !SERVICES.contains(n)),
            )
            .collect();
        for name in names {
            if !system.procs[name].deferred {
                system.spawn(name)?;
            }
        }
        Ok(system)
    }

    /// Starts the process `name` (a service, or a further gateway `gateway-N`).
    fn spawn(&mut self, name: &'static str) -> Result<(), BoxError> {
        let proc = self.procs.get_mut(name).ok_or("unknown service")?;
        let bin = self.config.bin_dir.join(binary_name(proc.service));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.config.run_dir.join(format!("{name}.log")))?;
        if proc.cpu.is_none() {
            proc.cpu = self.placer.next_cpu();
        }
        // Pinned through `taskset`, which sets the affinity and execs the service: the child's
        // pid is the service's.
        let mut command = match proc.cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpu.to_string()).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let child = command
            // Each service of a launched system gets its own database: a SQLite file in the run
            // directory, or its own PostgreSQL database (DATABASE_URL in its env). An inherited
            // DATABASE_URL (CI exports one for the crates' PostgreSQL tests) would point every
            // service of every system at one shared database and mix their data.
            .env_remove("DATABASE_URL")
            .envs(proc.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // A process group of its own: Ctrl-C in a terminal signals the whole foreground
            // group, and each service must get exactly one signal, the launcher's SIGTERM (the
            // chassis' lifecycle runner takes a second signal as "stop now, skip the drain").
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        proc.child = Some(child);
        Ok(())
    }

    /// Waits until `/health/ready` of `only` (or of every service) answers 200 on its
    /// [admin URL](Self::admin_url). Further replicas are started once the started processes
    /// are ready.
    pub async fn wait_ready(&mut self, only: Option<&str>) -> Result<(), BoxError> {
        self.wait_started_ready(only).await?;
        let deferred: Vec<&'static str> = self
            .procs
            .iter()
            .filter(|(name, p)| p.deferred && only.is_none_or(|o| o == **name))
            .map(|(name, _)| *name)
            .collect();
        if deferred.is_empty() {
            return Ok(());
        }
        for name in deferred {
            if let Some(p) = self.procs.get_mut(name) {
                p.deferred = false;
            }
            self.spawn(name)?;
        }
        self.wait_started_ready(only).await
    }

    /// [`wait_ready`](Self::wait_ready) of the processes not deferred.
    async fn wait_started_ready(&mut self, only: Option<&str>) -> Result<(), BoxError> {
        let http = tls::http_client(self.pki.as_ref())?.build()?;
        let deadline = Instant::now() + self.config.ready_timeout;
        for (name, proc) in &mut self.procs {
            if only.is_some_and(|o| o != *name) || proc.deferred {
                continue;
            }
            loop {
                if let Some(child) = proc.child.as_mut()
                    && let Some(status) = child.try_wait()?
                {
                    let log = self.config.run_dir.join(format!("{name}.log"));
                    return Err(format!(
                        "{name} exited during startup ({status}); the end of {name}.log:\n{}",
                        log_tail(&log, 20)
                    )
                    .into());
                }
                let ready = http
                    .get(format!("{}/health/ready", proc.admin_url))
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

    /// The run's certificates when the services serve HTTPS ([`SystemConfig::tls`]).
    pub fn pki(&self) -> Option<&tls::ShopPki> {
        self.pki.as_ref()
    }

    /// The CPU each started process is pinned to ([`SystemConfig::cpu_placement`]); empty
    /// when none is.
    pub fn cpus(&self) -> Vec<(String, usize)> {
        self.procs
            .iter()
            .filter_map(|(name, p)| Some(((*name).to_owned(), p.cpu?)))
            .collect()
    }

    /// The pid of every running service process.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.procs
            .iter()
            .filter_map(|(name, p)| Some(((*name).to_owned(), p.child.as_ref()?.id()?)))
            .collect()
    }

    /// The base URLs of every gateway process (one unless
    /// [`SystemConfig::replicas`] says more), the first being [`url("gateway")`](Self::url).
    pub fn gateway_urls(&self) -> Vec<&str> {
        let mut urls: Vec<(&str, &str)> = self
            .procs
            .iter()
            .filter(|(_, p)| p.service == "gateway")
            .map(|(name, p)| (*name, p.url.as_str()))
            .collect();
        // `gateway` first, then `gateway-2`, `gateway-3`, … in number order.
        urls.sort_by_key(|(name, _)| {
            name.strip_prefix("gateway-")
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(1)
        });
        urls.into_iter().map(|(_, url)| url).collect()
    }

    /// The base URL of a service: its front door when it has replicas (the gateway's first
    /// replica); the URL of one process with a process name (`orders-2`).
    pub fn url(&self, service: &str) -> &str {
        if let Some((_, url)) = self.front_doors.get(service) {
            return url;
        }
        self.procs.get(service).map_or("", |p| p.url.as_str())
    }

    /// The processes of `service`: its name, then `<service>-2`, `<service>-3`, … (one unless
    /// [`SystemConfig::replicas`] says more).
    pub fn processes(&self, service: &str) -> Vec<&'static str> {
        let mut names: Vec<(usize, &'static str)> = self
            .procs
            .iter()
            .filter(|(_, p)| p.service == service)
            .map(|(name, _)| {
                let index = name
                    .strip_prefix(service)
                    .and_then(|n| n.strip_prefix('-'))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1);
                (index, *name)
            })
            .collect();
        names.sort_unstable();
        names.into_iter().map(|(_, name)| name).collect()
    }

    /// The base URL of a service's probes and `/metrics`: its admin port (plain HTTP, also
    /// with [`SystemConfig::tls`]); the payment provider's [`url`](Self::url).
    pub fn admin_url(&self, service: &str) -> &str {
        self.procs.get(service).map_or("", |p| p.admin_url.as_str())
    }

    /// A service token for every service's admin API (`chassis_http::control`): audience
    /// `admin`, scope `admin`, signed with the run's key as the gateway's tokens are.
    pub fn admin_token(&self) -> Result<String, BoxError> {
        let gateway = self.procs.get("gateway").ok_or("no gateway")?;
        let pem = gateway
            .env
            .iter()
            .find(|(k, _)| k == "SERVICE_TOKEN_PRIVATE_KEY")
            .map(|(_, v)| v)
            .ok_or("the gateway has no signing key")?;
        let key = chassis_http::auth::SigningKey::from_pem(pem)?.with_kid("shop-launcher-1")?;
        let issuer = chassis_http::auth::TokenIssuer::builder("gateway")
            .signing_key(key)
            .build()?;
        Ok(issuer.issue("admin", &["admin"])?.as_str().to_owned())
    }

    /// Serves the resilience dashboard (`chassis_http::dashboard`) over the admin APIs of every
    /// chassis service on a free local port, until the runtime ends; its URL, with an
    /// [`admin_token`](Self::admin_token) in the fragment (which the browser keeps to itself).
    /// `--keep-running` prints it; `tests/dashboard.rs` opens it in a browser.
    pub async fn serve_dashboard(&self) -> Result<String, BoxError> {
        let mut page = chassis_http::dashboard::DashboardService::new();
        for service in [
            "gateway",
            "orders",
            "inventory",
            "payments",
            "notifications",
        ] {
            page = page.service(service, self.admin_url(service))?;
        }
        let config = chassis_http::server::ServerConfig::default().bind("127.0.0.1:0".parse()?);
        let server = chassis_http::server::Server::bind(config)
            .await?
            .handle_signals(false);
        let url = format!(
            "http://{}/dashboard#token={}",
            server.local_addr(),
            self.admin_token()?
        );
        tokio::spawn(server.serve(page));
        Ok(url)
    }

    /// A service token signed as the orders service signs its calls to the inventory's gRPC
    /// API: issuer `orders`, for `audience`.
    pub fn orders_token(&self, audience: &str) -> Result<String, BoxError> {
        let orders = self.procs.get("orders").ok_or("no orders service")?;
        let pem = orders
            .env
            .iter()
            .find(|(k, _)| k == "ORDERS_TOKEN_PRIVATE_KEY")
            .map(|(_, v)| v)
            .ok_or("the orders service has no signing key")?;
        let key = chassis_http::auth::SigningKey::from_pem(pem)?.with_kid("orders-1")?;
        let issuer = chassis_http::auth::TokenIssuer::builder("orders")
            .signing_key(key)
            .build()?;
        Ok(issuer.issue(audience, &[])?.as_str().to_owned())
    }

    /// The run directory (databases, `<service>.log`).
    pub fn run_dir(&self) -> &Path {
        &self.config.run_dir
    }

    /// The namespace prefix of exchanges and queues.
    pub fn namespace(&self) -> &str {
        &self.config.namespace
    }

    /// The broker the services use.
    pub fn amqp_url(&self) -> &str {
        &self.config.amqp_url
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
        let Some(child) = proc.child.take() else {
            return Ok(false);
        };
        sigterm(&[&child]).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        Ok(wait_or_kill(child, deadline).await)
    }

    /// Where the services keep their data.
    pub fn database(&self) -> &Database {
        &self.config.database
    }

    /// Stops every service gracefully within [`DRAIN_TIMEOUT`] ([`System::stop_within`]);
    /// returns the services that did not exit cleanly.
    pub async fn stop(self) -> Vec<String> {
        self.stop_within(DRAIN_TIMEOUT).await
    }

    /// Stops every service gracefully: SIGTERM to the gateways first, so no new order gets in,
    /// and once they have drained their in-flight requests (which still reach the services
    /// behind them), SIGTERM to all the others at once, which drain in parallel. Whatever still runs
    /// when `drain` has passed since the call is killed (SIGKILL). Returns the services (of those
    /// still running) that did not exit by themselves with success. Drops the PostgreSQL
    /// databases if configured to.
    pub async fn stop_within(mut self, drain: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + drain;
        let mut unclean = Vec::new();
        let (gateways, others): (Vec<_>, Vec<_>) = self
            .procs
            .iter_mut()
            .filter_map(|(name, p)| Some((*name, p.service, p.child.take()?)))
            .partition(|(_, service, _)| *service == "gateway");
        let strip = |procs: Vec<(&'static str, &'static str, Child)>| {
            procs
                .into_iter()
                .map(|(name, _, child)| (name, child))
                .collect::<Vec<_>>()
        };
        let waves = [strip(gateways), strip(others)];
        for wave in waves {
            sigterm(&wave.iter().map(|(_, c)| c).collect::<Vec<_>>()).await;
            let mut waiting = JoinSet::new();
            for (service, child) in wave {
                waiting.spawn(async move { (service, wait_or_kill(child, deadline).await) });
            }
            while let Some(done) = waiting.join_next().await {
                match done {
                    Ok((_, true)) => {}
                    Ok((service, false)) => unclean.push(service.to_owned()),
                    Err(e) => unclean.push(format!("(a stop task failed: {e})")),
                }
            }
        }
        if self.databases_to_drop {
            self.databases_to_drop = false;
            if let Err(e) = drop_databases(&self.config.database).await {
                eprintln!("could not drop the databases: {e}");
            }
        }
        unclean
    }
}

/// Sends SIGTERM to every child still running (one `kill` for all).
async fn sigterm(children: &[&Child]) {
    let pids: Vec<String> = children
        .iter()
        .filter_map(|c| c.id())
        .map(|p| p.to_string())
        .collect();
    if !pids.is_empty() {
        let _ = Command::new("kill").arg("-TERM").args(&pids).status().await;
    }
}

/// Waits for `child` until `deadline`, then kills it; whether it exited by itself with success.
async fn wait_or_kill(mut child: Child, deadline: tokio::time::Instant) -> bool {
    match tokio::time::timeout_at(deadline, child.wait()).await {
        Ok(status) => status.is_ok_and(|s| s.success()),
        Err(_) => {
            let _ = child.kill().await;
            false
        }
    }
}

impl Drop for System {
    /// A system dropped without [`System::stop`] (a failing test, an error in the launcher):
    /// the children die with it (`kill_on_drop`), and its PostgreSQL databases are dropped if
    /// configured to, so reruns start clean.
    fn drop(&mut self) {
        if !self.databases_to_drop {
            return;
        }
        for proc in self.procs.values_mut() {
            if let Some(child) = proc.child.as_mut() {
                let _ = child.start_kill();
            }
        }
        let database = self.config.database.clone();
        // Drop may run inside a runtime (which cannot block on another): use a thread of its own.
        let done = std::thread::spawn(move || -> Result<(), BoxError> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(drop_databases(&database))
        })
        .join();
        if let Ok(Err(e)) = done {
            eprintln!("could not drop the databases: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_service_gets_its_own_database_on_the_server() {
        let db = Database::postgres(
            "postgres://postgres@127.0.0.1:5432/test?sslmode=disable",
            "shop_x",
        );
        assert_eq!(
            db.service_url("orders").as_deref(),
            Some("postgres://postgres@127.0.0.1:5432/shop_x_orders?sslmode=disable")
        );
        assert_eq!(
            with_database("postgresql://u:p@h", "d"),
            "postgresql://u:p@h/d"
        );
        assert_eq!(
            db.database_name("payment-provider").as_deref(),
            Some("shop_x_payment_provider")
        );
        assert_eq!(Database::Sqlite.service_url("orders"), None);
    }

    #[test]
    fn database_prefixes_are_safe_identifiers() {
        assert!(check_prefix("shop_e2e_1a2b").is_ok());
        for bad in [
            "",
            "Shop",
            "shop-x",
            "1shop",
            "shop\"; DROP",
            &"x".repeat(41),
        ] {
            assert!(check_prefix(bad).is_err(), "{bad:?}");
        }
    }
}
