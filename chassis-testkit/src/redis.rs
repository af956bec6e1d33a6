//! A Redis server of the test's own.

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use crate::net::{free_port, wait_port};
use crate::process::ChildGuard;

/// A `redis-server` on a free loopback port, without persistence (`--save ""`,
/// `--appendonly no`); killed when dropped, whatever happened in the test.
///
/// [`kill`](Self::kill) and [`start`](Self::start) restart it on the same port (with an empty
/// data set, as after a crash without persistence); [`pause`](Self::pause) and
/// [`resume`](Self::resume) freeze it with SIGSTOP/SIGCONT, so clients see a server that accepts
/// nothing and answers nothing, the case only a timeout catches.
///
/// ```no_run
/// let redis = chassis_testkit::RedisServer::start_new();
/// let url = redis.url(); // redis://127.0.0.1:<port>
/// redis.kill();
/// redis.start();
/// # let _ = url;
/// ```
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    child: Mutex<Option<ChildGuard>>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it accepts connections.
    ///
    /// # Panics
    /// If `redis-server` is missing or does not open its port within 10 s.
    pub fn start_new() -> Self {
        let server = Self {
            port: free_port(),
            child: Mutex::new(None),
        };
        server.start();
        server
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on its port, if it is not running, and waits until it
    /// accepts connections.
    ///
    /// # Panics
    /// If `redis-server` is missing or does not open its port within 10 s.
    pub fn start(&self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if child.is_some() {
            return;
        }
        let spawned = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) must be installed");
        *child = Some(ChildGuard::new(spawned));
        assert!(
            wait_port(self.port, true, Duration::from_secs(10)),
            "redis-server did not open port {}",
            self.port
        );
    }

    /// Kills the server (SIGKILL) and waits until its port is closed.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
            child.kill();
        }
        wait_port(self.port, false, Duration::from_secs(10));
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pid) = child.as_ref().and_then(ChildGuard::id) {
            let _ = Command::new("kill")
                .arg(signal)
                .arg(pid.to_string())
                .status();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // A stopped process still dies of SIGKILL, but resume first so nothing lingers.
        self.resume();
        self.kill();
    }
}
