//! The launcher binary as an operator runs it: signals stop every service and delete (or keep)
//! the run's exchanges and queues; a broker that does not answer stops it before anything is
//! built or started. The real binaries, the real RabbitMQ (`AMQP_URL`); each system in its own
//! namespace, one system at a time.

mod support;

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use shop_launcher::{build_services_for_tests, cleanup, default_amqp_url};
use support::listed;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

static BUILD: OnceLock<PathBuf> = OnceLock::new();
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The launcher under test, next to the service binaries (it runs with `--no-build`).
fn launcher() -> PathBuf {
    let bins = BUILD
        .get_or_init(|| build_services_for_tests().expect("cargo build of the services"))
        .canonicalize()
        .unwrap();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_shop-launcher"));
    assert_eq!(
        exe.parent().unwrap().canonicalize().unwrap(),
        bins,
        "the launcher and the services are not in one directory"
    );
    exe
}

fn unique_namespace() -> String {
    format!(
        "lifecycle-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// A running launcher and the lines it wrote to stderr so far.
struct Launcher {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Launcher {
    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Launcher {
        Self::spawn_exe(&launcher(), args, env)
    }

    fn spawn_exe(exe: &Path, args: &[&str], env: &[(&str, &str)]) -> Launcher {
        let mut child = Command::new(exe)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                let _ = tx.send(line);
            }
        });
        Launcher {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    /// Waits until a stderr line contains `needle`.
    async fn wait_for(&mut self, needle: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => {
                    let found = line.contains(needle);
                    self.seen.push(line);
                    if found {
                        return;
                    }
                }
                _ => panic!(
                    "no stderr line with {needle:?} within {within:?}; stderr so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn signal(&self, name: &str) {
        let ok = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name} failed");
    }

    /// Waits for the exit; its status and the whole stderr.
    async fn exit(mut self, within: Duration) -> (ExitStatus, String) {
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("still running after {within:?}"))
            .unwrap();
        while let Some(line) = self.lines.recv().await {
            self.seen.push(line);
        }
        (status, self.seen.join("\n"))
    }
}

impl Drop for Launcher {
    /// A test that failed before the launcher exited must not leave the shop running: the
    /// launcher's `kill_on_drop` SIGKILL alone would orphan its six services. Kill them first
    /// (the launcher cannot stop them any more once killed), then the launcher.
    fn drop(&mut self) {
        let Some(pid) = self.child.id() else { return };
        for service in children_of(pid) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &service.to_string()])
                .status();
        }
        let _ = self.child.start_kill();
    }
}

/// The processes whose parent is `pid` (from `/proc/<pid>/stat`).
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    // `pid (comm) state ppid …`; comm may contain spaces and parentheses.
                    let after = &stat[stat.rfind(')')? + 2..];
                    after.split(' ').nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        // The service binaries, not the short-lived tools the launcher also runs
        // (`rabbitmqctl status` to find the broker's pid for the CPU figures).
        .filter(|child| {
            std::fs::read_link(format!("/proc/{child}/exe")).is_ok_and(|exe| {
                shop_launcher::SERVICES.iter().any(|s| {
                    exe.file_name()
                        .is_some_and(|f| *f == *shop_launcher::binary_name(s))
                })
            })
        })
        .collect()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The namespace has its topology: queues with retry tiers and dead-letter queues, exchanges.
fn assert_full_topology(prefix: &str) -> (Vec<String>, Vec<String>) {
    let (queues, exchanges) = (listed("queues", prefix), listed("exchanges", prefix));
    assert!(
        queues.iter().any(|q| q.ends_with(".dlq")) && queues.iter().any(|q| q.contains(".retry.")),
        "no dead-letter or retry queues in {prefix}*: {queues:?}"
    );
    assert!(
        exchanges.iter().any(|e| e.ends_with(".dlx")) && exchanges.len() > 2,
        "too few exchanges in {prefix}*: {exchanges:?}"
    );
    (queues, exchanges)
}

/// The built launcher on the whole system in `namespace`, with `flag`, placing `orders` orders
/// two at a time.
fn spawn_system(namespace: &str, run_dir: &Path, flag: &str, orders: &str) -> Launcher {
    Launcher::spawn(
        &[
            "--no-build",
            flag,
            "--orders",
            orders,
            "--concurrency",
            "2",
            "--namespace",
            namespace,
            "--run-dir",
            run_dir.to_str().unwrap(),
        ],
        &[],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)] // serialises whole systems on purpose
async fn sigterm_with_keep_running_stops_every_service_and_deletes_the_topology() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let namespace = unique_namespace();
    let prefix = format!("{namespace}.");
    let mut l = spawn_system(&namespace, &run_dir, "--keep-running", "3");
    l.wait_for("system running", Duration::from_secs(120)).await;
    let services = children_of(l.pid());
    assert_eq!(services.len(), 6, "service processes: {services:?}");
    assert_full_topology(&prefix);

    let sent = Instant::now();
    l.signal("TERM");
    let (status, stderr) = l.exit(Duration::from_secs(60)).await;
    assert!(status.success(), "{status}; stderr:\n{stderr}");
    assert!(!stderr.contains("did not exit cleanly"), "{stderr}");
    assert!(
        sent.elapsed() < Duration::from_secs(30),
        "the stop took {:?}",
        sent.elapsed()
    );
    let left: Vec<u32> = services.into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "still running: {left:?}");
    assert_eq!(listed("queues", &prefix), Vec::<String>::new());
    assert_eq!(listed("exchanges", &prefix), Vec::<String>::new());
    assert!(stderr.contains(&format!("of {prefix}*")), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)]
async fn sigint_during_the_workload_stops_every_service_and_keep_topology_keeps_it() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let namespace = unique_namespace();
    let prefix = format!("{namespace}.");
    // More orders than it can place before the signal: the workload is running when it comes.
    let mut l = spawn_system(&namespace, &run_dir, "--keep-topology", "100000");
    l.wait_for("all services ready", Duration::from_secs(120))
        .await;
    let services = children_of(l.pid());
    assert_eq!(services.len(), 6, "service processes: {services:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (queues, exchanges) = assert_full_topology(&prefix);

    l.signal("INT");
    let (status, stderr) = l.exit(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(130), "stderr:\n{stderr}");
    assert!(!stderr.contains("did not exit cleanly"), "{stderr}");
    let left: Vec<u32> = services.into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "still running: {left:?}");
    // Kept, every one of them.
    assert_eq!(listed("queues", &prefix), queues);
    assert_eq!(listed("exchanges", &prefix), exchanges);

    // What the launcher would have done without --keep-topology, through the library.
    let deleted = cleanup::delete_namespace(&default_amqp_url(), &prefix)
        .await
        .unwrap();
    assert_eq!(
        (deleted.queues.len(), deleted.exchanges.len()),
        (queues.len(), exchanges.len())
    );
    assert_eq!(listed("queues", &prefix), Vec::<String>::new());
    assert_eq!(listed("exchanges", &prefix), Vec::<String>::new());
}

#[tokio::test]
async fn a_broker_that_does_not_answer_stops_the_launcher_before_anything_starts() {
    // A loopback port nothing listens on, and not the local broker's default port: the
    // launcher must neither start a broker nor touch the real one.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    assert_ne!(port, 5672);
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let started = Instant::now();
    // No --no-build: the check comes before the build, so nothing is built either.
    let l = Launcher::spawn_exe(
        Path::new(env!("CARGO_BIN_EXE_shop-launcher")),
        &["--orders", "1", "--run-dir", run_dir.to_str().unwrap()],
        &[("AMQP_URL", url.as_str())],
    );
    let (status, stderr) = l.exit(Duration::from_secs(10)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(status.code(), Some(1), "stderr:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "not one line:\n{stderr}");
    assert!(
        lines[0].contains(&format!("127.0.0.1:{port}"))
            && lines[0].contains("AMQP_URL")
            && lines[0].contains("rabbitmq-server -detached"),
        "{}",
        lines[0]
    );
    assert!(!run_dir.exists(), "a service was started");
}
