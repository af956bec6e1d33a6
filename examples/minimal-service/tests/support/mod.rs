//! What the template's tests share: free ports, the running binary, and a RabbitMQ node of
//! the test's own (never the machine's shared broker) to start and stop at will.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A free loopback port (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// A RabbitMQ node with its own name, ports and directories, stopped (and its files removed)
/// when dropped, whatever happened in the test.
pub struct RabbitNode {
    name: String,
    dir: PathBuf,
    /// The AMQP port.
    pub port: u16,
    dist_port: u16,
}

impl RabbitNode {
    /// A node, not started yet: its URL can be handed out before it answers.
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("chassis-rabbit-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("mnesia")).unwrap();
        std::fs::create_dir_all(dir.join("log")).unwrap();
        let port = free_port();
        let dist_port = free_port();
        std::fs::write(
            dir.join("node.conf"),
            format!("listeners.tcp.default = 127.0.0.1:{port}\nloopback_users = none\n"),
        )
        .unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        // The node runs as the `rabbitmq` user, which must own its directories.
        let _ = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&dir)
            .status();
        let _ = Command::new("chmod").arg("755").arg(&dir).status();
        Self {
            name: format!("chassis-{tag}-{}@localhost", std::process::id()),
            dir,
            port,
            dist_port,
        }
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }

    /// Starts the node (its data survives a stop) and waits until it accepts AMQP logins.
    pub fn start(&self) {
        let status = Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", self.path("node.conf"))
            .env("RABBITMQ_MNESIA_BASE", self.path("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.path("log"))
            .env("RABBITMQ_PID_FILE", self.path("pid"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.path("enabled_plugins"),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("rabbitmq-server is installed");
        assert!(status.success(), "rabbitmq-server -detached failed");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !port_open(self.port) {
            assert!(
                Instant::now() < deadline,
                "node {} did not open its port",
                self.name
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = Command::new("rabbitmqctl")
            .args(["-n", &self.name, "await_startup", "--timeout", "60"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Stops the node and waits until its port is closed.
    pub fn stop(&self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-n", &self.name, "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while port_open(self.port) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        self.stop();
        // Whatever is left of it (a node that never answered rabbitmqctl).
        let _ = Command::new("pkill").args(["-f", &self.name]).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The template's binary, running with its own database and names.
pub struct Service {
    pub child: tokio::process::Child,
    /// The public port: the API.
    pub base: String,
    /// The admin port: probes and `/metrics`.
    pub admin: String,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Service {
    /// Starts the binary against `amqp_url` with a fresh SQLite database.
    pub fn start(amqp_url: &str, prefix: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let db = format!("sqlite://{}", dir.path().join("m.db").display());
        Self::start_with(amqp_url, prefix, port, &db, dir)
    }

    /// Starts the binary on `port` with `database_url`; `dir` lives as long as the service.
    pub fn start_with(
        amqp_url: &str,
        prefix: &str,
        port: u16,
        database_url: &str,
        dir: tempfile::TempDir,
    ) -> Self {
        Self::start_env(amqp_url, prefix, port, database_url, dir, &[])
    }

    /// [`start_with`](Self::start_with) plus environment variables.
    pub fn start_env(
        amqp_url: &str,
        prefix: &str,
        port: u16,
        database_url: &str,
        dir: tempfile::TempDir,
        vars: &[(&str, &str)],
    ) -> Self {
        let admin_port = free_port();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_minimal-service"))
            .envs(vars.iter().copied())
            .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("ADMIN_ADDR", format!("127.0.0.1:{admin_port}"))
            .env("DATABASE_URL", database_url)
            .env("AMQP_URL", amqp_url)
            .env("MINIMAL_PREFIX", prefix)
            .env("LOG_FORMAT", "json")
            .kill_on_drop(true)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            admin: format!("http://127.0.0.1:{admin_port}"),
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    /// Waits until `/health/ready` (on the admin port) answers 200, returning its body.
    pub async fn ready(&self, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let answer = self
                .http
                .get(format!("{}/health/ready", self.admin))
                .send()
                .await;
            if let Ok(r) = answer
                && r.status() == 200
            {
                return r.json().await.unwrap();
            }
            assert!(Instant::now() < deadline, "not ready within {within:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until readiness is `UP`: every check passing, the broker included.
    pub async fn up(&self, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let ready = self.ready(within).await;
            if ready["status"] == "UP" {
                return ready;
            }
            assert!(
                Instant::now() < deadline,
                "not UP within {within:?}: {ready}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// POSTs a greeting; returns the status.
    pub async fn greet(&self, name: &str) -> u16 {
        self.http
            .post(format!("{}/greetings", self.base))
            .json(&serde_json::json!({ "name": name }))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// `(created, processed)`.
    pub async fn counts(&self) -> (i64, i64) {
        let c: Value = self
            .http
            .get(format!("{}/greetings", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (
            c["data"]["created"].as_i64().unwrap(),
            c["data"]["processed"].as_i64().unwrap(),
        )
    }

    /// Waits until `processed` reaches `n`.
    pub async fn processed(&self, n: i64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let (_, processed) = self.counts().await;
            if processed >= n {
                assert_eq!(processed, n, "applied more often than created");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "processed {processed} of {n} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Sends `signal` (e.g. `"TERM"`) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running");
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} {pid}");
    }

    /// Waits for the exit, returning the exit code and what it wrote to stderr.
    pub async fn exit(mut self, within: Duration) -> (Option<i32>, String) {
        use tokio::io::AsyncReadExt;
        let mut stderr = self.child.stderr.take().unwrap();
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .expect("exited in time")
            .unwrap();
        let mut err = String::new();
        let _ = stderr.read_to_string(&mut err).await;
        (status.code(), err)
    }
}

/// The path of this crate (the template) in the workspace.
pub fn template_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}
