//! A PostgreSQL cluster of the test's own.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::net::{free_port, wait_port};

static CLUSTERS: AtomicUsize = AtomicUsize::new(0);

/// A PostgreSQL cluster made with `initdb` in a temporary directory and run with `pg_ctl` on its
/// own loopback port, with trust auth for user `postgres` and a database `test`; stopped
/// (immediately) and removed when dropped.
///
/// As root, the server tools run as the `postgres` user (PostgreSQL refuses to run as root).
#[derive(Debug)]
pub struct PgCluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
}

impl PgCluster {
    /// Creates and starts a cluster with database `test`.
    ///
    /// # Panics
    /// If PostgreSQL's server binaries are not installed or the cluster does not start.
    pub fn start_new(tag: &str) -> Self {
        let bin = server_bin_dir();
        let n = CLUSTERS.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("chassis-pg-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cluster directory");
        if is_root() {
            let _ = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status();
        }
        let cluster = Self {
            dir,
            bin,
            port: free_port(),
        };
        let data = cluster.data_dir();
        let ok = cluster
            .tool("initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .status()
            .expect("initdb runs")
            .success();
        assert!(ok, "initdb failed in {}", cluster.dir.display());
        cluster.start();
        let ok = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc"])
            .arg("create database test")
            .arg("-p")
            .arg(cluster.port.to_string())
            .stdout(Stdio::null())
            .status()
            .expect("psql runs")
            .success();
        assert!(ok, "create database test failed");
        cluster
    }

    /// The cluster's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:<port>/test`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/test", self.port)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn tool(&self, name: &str) -> Command {
        let exe = self.bin.join(name);
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    /// Starts the server and waits until it accepts connections (at most a minute).
    pub fn start(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let ok = self
            .tool("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-o", &opts, "-l"])
            .arg(self.dir.join("server.log"))
            .args(["-w", "-t", "60", "start"])
            .stdout(Stdio::null())
            .status()
            .expect("pg_ctl runs")
            .success();
        if !ok {
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "pg_ctl start failed; the server's log ends:\n{}",
                tail.join("\n")
            );
        }
        wait_port(self.port, true, Duration::from_secs(60));
    }

    /// Stops the server in `mode` (`smart`, `fast` or `immediate`) and waits for it to exit.
    pub fn stop_mode(&self, mode: &str) {
        let _ = self
            .tool("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", mode, "-w", "-t", "60", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        wait_port(self.port, false, Duration::from_secs(30));
    }

    /// Stops the server (`fast`: open sessions are ended, the server shuts down cleanly).
    pub fn stop(&self) {
        self.stop_mode("fast");
    }

    /// A crash: SIGKILL to the postmaster, so the next start runs crash recovery.
    pub fn kill(&self) {
        if let Some(pid) = self.postmaster_pid() {
            // The whole server at once, as a machine crash or the OOM killer would: the
            // postmaster's children first (killed after it, they would be reparented out of
            // reach and keep the shared memory a new postmaster needs). The postmaster is
            // stopped meanwhile: running, it sees a child die, starts crash recovery and forks
            // new children between the two kills, which then outlive it and hold the shared
            // memory ("pre-existing shared memory block is still in use" on the next start).
            let pid_arg = pid.to_string();
            let _ = Command::new("kill").args(["-STOP", &pid_arg]).status();
            let children: Vec<u32> = Command::new("pgrep")
                .args(["-P", &pid_arg])
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .filter_map(|l| l.trim().parse().ok())
                        .collect()
                })
                .unwrap_or_default();
            let _ = Command::new("pkill").args(["-9", "-P", &pid_arg]).status();
            for child in children {
                wait_dead(child);
            }
            let _ = Command::new("kill").args(["-9", &pid_arg]).status();
            wait_dead(pid);
            // A dead postmaster whose parent has not reaped it yet still "exists" for the
            // next postmaster's lock-file check (in containers whose first process does not reap
            // orphans it stays so); its lock file is stale either way.
            // The same holds for the lock file of its Unix socket.
            let _ = std::fs::remove_file(self.data_dir().join("postmaster.pid"));
            let _ = std::fs::remove_file(self.dir.join(format!(".s.PGSQL.{}.lock", self.port)));
        }
        wait_port(self.port, false, Duration::from_secs(30));
    }

    /// Stops and starts the server (`fast`).
    pub fn restart(&self) {
        self.stop();
        self.start();
    }

    fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop_mode("immediate");
        if let Some(pid) = self.postmaster_pid() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits (at most 10 s) until `pid` has exited: gone, or a zombie waiting to be reaped.
fn wait_dead(pid: u32) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return,
            // The state follows the parenthesised command name.
            Ok(stat)
                if stat
                    .rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('Z')) =>
            {
                return;
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// The newest PostgreSQL's server binaries (`initdb`, `pg_ctl`) from Debian's layout
/// (`/usr/lib/postgresql/<major>/bin`), or the directory of `pg_ctl` on `PATH`.
fn server_bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return bin;
    }
    let out = Command::new("sh")
        .args(["-c", "command -v pg_ctl"])
        .output()
        .expect("sh runs");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        !path.is_empty(),
        "PostgreSQL's server binaries (initdb, pg_ctl) are not installed"
    );
    Path::new(&path)
        .parent()
        .map(Path::to_path_buf)
        .expect("pg_ctl's directory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_restarts_and_recovers_after_a_kill() {
        let pg = PgCluster::start_new("self-test");
        let psql = |sql: &str| {
            Command::new("psql")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-d",
                    "test",
                    "-tAc",
                    sql,
                ])
                .arg("-p")
                .arg(pg.port().to_string())
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default()
        };
        psql("create table t (x int); insert into t values (1)");
        pg.restart();
        assert_eq!(psql("select count(*) from t"), "1");
        pg.kill();
        assert!(!crate::port_open(pg.port()));
        pg.start();
        assert_eq!(psql("select count(*) from t"), "1");
    }
}
