//! A RabbitMQ node of the test's own.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::net::{free_port, port_open, wait_port};

static NODES: AtomicUsize = AtomicUsize::new(0);

/// A RabbitMQ node with its own name, ports and directories; stopped, and its files removed,
/// when dropped, whatever happened in the test.
///
/// Starting a node takes a few seconds (an Erlang VM boots); its data survives
/// [`RabbitNode::stop`] + [`RabbitNode::start`], so durable queues and their messages come back.
#[derive(Debug)]
pub struct RabbitNode {
    name: String,
    dir: PathBuf,
    port: u16,
    dist_port: u16,
}

impl RabbitNode {
    /// A node, not started yet: its URL can be handed out before it answers. `tag` goes into
    /// the node's name and directory, to tell nodes apart in `ps` and in logs.
    pub fn new(tag: &str) -> Self {
        let n = NODES.fetch_add(1, Ordering::Relaxed);
        let id = format!("{tag}-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(format!("chassis-rabbit-{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("mnesia")).expect("node directory");
        std::fs::create_dir_all(dir.join("log")).expect("node log directory");
        let port = free_port();
        let dist_port = free_port();
        std::fs::write(
            dir.join("node.conf"),
            format!("listeners.tcp.default = 127.0.0.1:{port}\nloopback_users = none\n"),
        )
        .expect("node.conf");
        std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("enabled_plugins");
        // As root, the node runs as the `rabbitmq` user, which must own its directories.
        let _ = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&dir)
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("chmod").arg("755").arg(&dir).status();
        Self {
            name: format!("chassis-{id}@localhost"),
            dir,
            port,
            dist_port,
        }
    }

    /// The node's AMQP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The node's name (`chassis-<tag>-<pid>-<n>@localhost`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Starts the node and waits until it accepts AMQP logins (at most a minute).
    ///
    /// # Panics
    /// If `rabbitmq-server` is missing or the node does not open its port.
    pub fn start(&self) {
        let path = |p: &str| self.dir.join(p);
        let status = Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", path("node.conf"))
            .env("RABBITMQ_MNESIA_BASE", path("mnesia"))
            .env("RABBITMQ_LOG_BASE", path("log"))
            .env("RABBITMQ_PID_FILE", path("pid"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", path("enabled_plugins"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("rabbitmq-server is installed");
        assert!(status.success(), "rabbitmq-server -detached failed");
        assert!(
            wait_port(self.port, true, Duration::from_secs(60)),
            "node {} did not open its port",
            self.name
        );
        self.ctl(&["await_startup", "--timeout", "60"]);
    }

    /// Stops the whole node (the Erlang VM exits) and waits until its port is closed.
    pub fn stop(&self) {
        self.ctl(&["stop"]);
        wait_port(self.port, false, Duration::from_secs(30));
    }

    /// Removes the node's data (its Mnesia and message stores: users, queues, exchanges,
    /// messages), so that the next [`start`](Self::start) boots it fresh on the same name and
    /// port, like a broker replaced by a new one. Call it while the node is stopped.
    pub fn wipe(&self) {
        let data = self.dir.join("mnesia");
        let _ = std::fs::remove_dir_all(&data);
        std::fs::create_dir_all(&data).expect("node data directory");
        let _ = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&data)
            .stderr(Stdio::null())
            .status();
    }

    /// Stops the broker application only (`rabbitmqctl stop_app`): every connection is closed
    /// and the port refuses new ones, while the VM stays up for a quick `start_app`.
    pub fn stop_app(&self) {
        self.ctl(&["stop_app"]);
        wait_port(self.port, false, Duration::from_secs(30));
    }

    /// Starts the broker application again and waits for it to accept logins.
    pub fn start_app(&self) {
        self.ctl(&["start_app"]);
        wait_port(self.port, true, Duration::from_secs(60));
        self.ctl(&["await_startup", "--timeout", "60"]);
    }

    /// Closes every client connection at once (`rabbitmqctl close_all_connections`), as an
    /// operator or a broker under memory pressure would.
    pub fn close_all_connections(&self) {
        self.ctl(&["close_all_connections", "closed by the test"]);
    }

    /// Runs `rabbitmqctl -n <node> <args>` and returns its standard output ("" if it failed).
    pub fn ctl(&self, args: &[&str]) -> String {
        Command::new("rabbitmqctl")
            .args(["-n", &self.name])
            .args(args)
            .stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// `name messages` of every queue (ready plus unacknowledged), from `rabbitmqctl`.
    pub fn queue_depths(&self) -> Vec<(String, u64)> {
        self.ctl(&[
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "messages",
        ])
        .lines()
        .filter_map(|line| {
            let mut it = line.split_whitespace();
            let name = it.next()?.to_owned();
            let n = it.next()?.parse().ok()?;
            Some((name, n))
        })
        .collect()
    }

    /// Whether the node's port is open now.
    pub fn is_up(&self) -> bool {
        port_open(self.port)
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        self.stop();
        // Whatever is left of it (a node that never answered rabbitmqctl).
        let _ = Command::new("pkill")
            .args(["-9", "-f", &self.name])
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_starts_restarts_its_app_and_stops() {
        let node = RabbitNode::new("self-test");
        assert!(!node.is_up());
        node.start();
        assert!(node.is_up());
        node.ctl(&["eval", "ok."]);
        node.stop_app();
        assert!(!node.is_up());
        node.start_app();
        assert!(node.is_up());
        assert!(node.queue_depths().is_empty());
        node.stop();
        assert!(!node.is_up());
    }
}
