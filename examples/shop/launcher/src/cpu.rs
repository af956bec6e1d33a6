//! CPU time per order: how much processor time each service process and the broker spent on
//! the workload, divided by the orders that reached a final status.
//!
//! The launcher reads each process's `utime + stime` from `/proc/<pid>/stat` (fields 14 and 15:
//! the CPU time of all its threads, those that already exited included, in clock ticks of
//! `getconf CLK_TCK`, 100 per second on Linux) right before the workload and right after it,
//! and reports the difference per order. The broker is the RabbitMQ node's `beam.smp`,
//! found through `rabbitmqctl status` (`OS PID: …`) or, failing that, the only `beam.smp` that
//! `pgrep` lists; a remote broker (or none found) is left out and says so.
//!
//! CPU time is steadier than wall-clock figures on a busy machine: other processes slow a run
//! down but do not add to its services' CPU time (the broker's does include whatever else
//! uses it meanwhile). The resolution is one tick (10 ms) per process, so a run should last
//! long enough for each process to use a few hundred ms (1,000 orders does).
//!
//! # Example
//! ```
//! use shop_launcher::cpu::{CpuReport, CpuTime, parse_stat};
//!
//! let stat = "4242 (shop-orders) S 1 4242 4242 0 -1 4194560 900 0 0 0 150 30 0 0 20 0 9 0 1 0 0";
//! let t = parse_stat(stat).unwrap();
//! assert_eq!((t.utime, t.stime), (150, 30));
//! let before = vec![("orders".to_owned(), CpuTime { utime: 100, stime: 20 })];
//! let after = vec![("orders".to_owned(), CpuTime { utime: 150, stime: 30 })];
//! let report = CpuReport::between(&before, &after, 100, 20);
//! assert_eq!(report.total_ms_per_order(), Some(30.0)); // 60 ticks = 600 ms over 20 orders
//! ```

use std::fmt;
use std::time::Duration;

use crate::BoxError;

/// A process's CPU time so far, in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTime {
    /// User mode (`utime`).
    pub utime: u64,
    /// Kernel mode (`stime`).
    pub stime: u64,
}

impl CpuTime {
    /// User and kernel time together.
    pub fn total(&self) -> u64 {
        self.utime + self.stime
    }
}

/// `utime` and `stime` from the text of `/proc/<pid>/stat`. The command name (field 2) is in
/// parentheses and may itself contain spaces and parentheses, so the fields are counted from
/// the last `)`.
pub fn parse_stat(stat: &str) -> Result<CpuTime, BoxError> {
    let field = stat_fields(stat)?;
    Ok(CpuTime {
        utime: field(14)?,
        stime: field(15)?,
    })
}

/// Numeric field `n` (1-based, as `man 5 proc` counts) of a `/proc/<pid>/stat` text.
fn stat_fields(stat: &str) -> Result<impl Fn(usize) -> Result<u64, BoxError> + '_, BoxError> {
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or("no `(comm)` in /proc/<pid>/stat")?;
    // After the `)`: field 3 (state) is index 0, so field n is index n - 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Ok(move |n: usize| -> Result<u64, BoxError> {
        let v = fields
            .get(n - 3)
            .ok_or_else(|| format!("/proc/<pid>/stat has no field {n}"))?;
        Ok(v.parse()
            .map_err(|e| format!("/proc/<pid>/stat field {n} {v:?}: {e}"))?)
    })
}

/// The parent's pid (field 4) in the text of `/proc/<pid>/stat`.
pub fn parent_pid(stat: &str) -> Option<u32> {
    u32::try_from(stat_fields(stat).ok()?(4).ok()?).ok()
}

/// What a server's process tree has used: the root's own CPU time and that of its children
/// that were waited for (`cutime`, `cstime`), plus each live child's, from the texts of
/// `/proc/<pid>/stat` of the root and of every process (`others`; those whose parent, field 4,
/// is not `root` are ignored).
///
/// A server that forks a process per connection (PostgreSQL) is measured whole this way: a
/// child's CPU time counts while it lives and, once it exited and was reaped, in the root's
/// children totals, so the difference of two readings is what the tree used in between.
pub fn parse_tree<'a>(
    root: u32,
    root_stat: &str,
    others: impl IntoIterator<Item = &'a str>,
) -> Result<CpuTime, BoxError> {
    let field = stat_fields(root_stat)?;
    let mut total = CpuTime {
        utime: field(14)? + field(16)?,
        stime: field(15)? + field(17)?,
    };
    for stat in others {
        let Ok(field) = stat_fields(stat) else {
            continue;
        };
        if field(4).ok() == Some(u64::from(root)) {
            total.utime += field(14).unwrap_or(0);
            total.stime += field(15).unwrap_or(0);
        }
    }
    Ok(total)
}

/// The CPU time so far of process `root` and its children (see [`parse_tree`]).
pub fn read_tree(root: u32) -> Result<CpuTime, BoxError> {
    let root_stat = std::fs::read_to_string(format!("/proc/{root}/stat"))
        .map_err(|e| format!("reading /proc/{root}/stat: {e}"))?;
    let others: Vec<String> = std::fs::read_dir("/proc")?
        .filter_map(|entry| {
            let name = entry.ok()?.file_name();
            let pid: u32 = name.to_str()?.parse().ok()?;
            // A process may exit between the listing and the read: left out.
            (pid != root)
                .then(|| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
                .flatten()
        })
        .collect();
    parse_tree(root, &root_stat, others.iter().map(String::as_str))
}

/// The CPU time of process `pid` so far.
pub fn read(pid: u32) -> Result<CpuTime, BoxError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("reading /proc/{pid}/stat: {e}"))?;
    parse_stat(&text)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100, Linux's `USER_HZ`, if that fails).
pub fn ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t: &u64| t > 0)
        .unwrap_or(100)
}

/// The OS pid in `rabbitmqctl status` output (`OS PID: 1234`).
pub fn parse_broker_pid(status: &str) -> Option<u32> {
    status.lines().find_map(|l| {
        let (key, value) = l.split_once(':')?;
        (key.trim() == "OS PID").then(|| value.trim().parse().ok())?
    })
}

/// The pid of the local RabbitMQ node (`beam.smp`): from `rabbitmqctl status`, else the single
/// `beam.smp` `pgrep` finds; `None` when neither answers (no local broker, several nodes).
pub async fn broker_pid() -> Option<u32> {
    let status = tokio::time::timeout(
        Duration::from_secs(15),
        tokio::process::Command::new("rabbitmqctl")
            .arg("status")
            .output(),
    )
    .await;
    if let Ok(Ok(out)) = status
        && out.status.success()
        && let Some(pid) = parse_broker_pid(&String::from_utf8_lossy(&out.stdout))
    {
        return Some(pid);
    }
    let out = tokio::process::Command::new("pgrep")
        .args(["-x", "beam.smp"])
        .output()
        .await
        .ok()?;
    let pids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    match pids.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

/// Reads every process of `pids` (name, pid); a process that is gone is left out.
pub fn sample(pids: &[(String, u32)]) -> Vec<(String, CpuTime)> {
    pids.iter()
        .filter_map(|(name, pid)| Some((name.clone(), read(*pid).ok()?)))
        .collect()
}

/// The voluntary and involuntary context switches in a `/proc/<pid>/task/<tid>/status` text.
pub fn parse_switches(status: &str) -> Option<u64> {
    let count = |key: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))?
            .trim()
            .parse()
            .ok()
    };
    Some(count("voluntary_ctxt_switches:")? + count("nonvoluntary_ctxt_switches:")?)
}

/// The context switches of every thread of process `pid` so far (the kernel counts them per
/// thread; a thread that already exited is no longer counted).
///
/// A service's threads hand work to each other (the runtime thread and sqlx's SQLite worker
/// thread: two switches per statement), so switches per order count those hand-offs far more
/// steadily than CPU time measures their cost.
pub fn context_switches(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0;
    for task in tasks.flatten() {
        if let Ok(status) = std::fs::read_to_string(task.path().join("status")) {
            total += parse_switches(&status).unwrap_or(0);
        }
    }
    Some(total)
}

/// Reads the [`context_switches`] of every process of `pids`; one that is gone is left out.
pub fn sample_switches(pids: &[(String, u32)]) -> Vec<(String, u64)> {
    pids.iter()
        .filter_map(|(name, pid)| Some((name.clone(), context_switches(*pid)?)))
        .collect()
}

/// Context switches per order, per process and in total, between two [`sample_switches`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SwitchReport {
    /// Per process (in the order of the first sample): switches during the workload.
    pub switches: Vec<(String, u64)>,
    /// Orders that reached a final status.
    pub orders: usize,
}

impl SwitchReport {
    /// The switches of each process from `before` to `after` (processes in both only), for
    /// `orders` finished orders.
    pub fn between(before: &[(String, u64)], after: &[(String, u64)], orders: usize) -> Self {
        let switches = before
            .iter()
            .filter_map(|(name, b)| {
                let (_, a) = after.iter().find(|(n, _)| n == name)?;
                Some((name.clone(), a.saturating_sub(*b)))
            })
            .collect();
        Self { switches, orders }
    }

    /// Switches per order of all processes together.
    pub fn total_per_order(&self) -> Option<f64> {
        (self.orders > 0 && !self.switches.is_empty())
            .then(|| self.switches.iter().map(|(_, n)| *n as f64).sum::<f64>() / self.orders as f64)
    }
}

impl fmt::Display for SwitchReport {
    /// `switches/order    310 (orders 120, …)`, largest first.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(total) = self.total_per_order() else {
            return write!(f, "switches/order     - (no finished orders)");
        };
        let parts = largest_first(
            self.switches
                .iter()
                .map(|(n, c)| (n.as_str(), *c as f64 / self.orders as f64)),
            0,
        );
        write!(f, "switches/order     {total:.0} ({parts})")
    }
}

/// `name value, …`, the largest value first, each with `decimals` decimals.
fn largest_first<'a>(parts: impl Iterator<Item = (&'a str, f64)>, decimals: usize) -> String {
    let mut parts: Vec<(&str, f64)> = parts.collect();
    parts.sort_by(|a, b| b.1.total_cmp(&a.1));
    let parts: Vec<String> = parts
        .iter()
        .map(|(n, v)| format!("{n} {v:.decimals$}"))
        .collect();
    parts.join(", ")
}

/// CPU time per order, per process and in total, between two [`sample`]s.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuReport {
    /// Per process (in the order of the first sample): CPU ms used during the workload.
    pub used_ms: Vec<(String, f64)>,
    /// Orders that reached a final status.
    pub orders: usize,
}

impl CpuReport {
    /// The CPU each process used from `before` to `after` (processes in both only), at
    /// `ticks_per_second`, for `orders` finished orders.
    pub fn between(
        before: &[(String, CpuTime)],
        after: &[(String, CpuTime)],
        ticks_per_second: u64,
        orders: usize,
    ) -> Self {
        let ms_per_tick = 1000.0 / ticks_per_second.max(1) as f64;
        let used_ms = before
            .iter()
            .filter_map(|(name, b)| {
                let (_, a) = after.iter().find(|(n, _)| n == name)?;
                Some((
                    name.clone(),
                    a.total().saturating_sub(b.total()) as f64 * ms_per_tick,
                ))
            })
            .collect();
        Self { used_ms, orders }
    }

    /// CPU ms per order of one process.
    pub fn ms_per_order(&self, name: &str) -> Option<f64> {
        let (_, ms) = self.used_ms.iter().find(|(n, _)| n == name)?;
        (self.orders > 0).then(|| ms / self.orders as f64)
    }

    /// CPU ms per order of all processes together.
    pub fn total_ms_per_order(&self) -> Option<f64> {
        (self.orders > 0 && !self.used_ms.is_empty())
            .then(|| self.used_ms.iter().map(|(_, ms)| ms).sum::<f64>() / self.orders as f64)
    }
}

impl fmt::Display for CpuReport {
    /// `CPU per order      2.41 ms (orders 0.80, payments 0.42, …)`, largest first.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(total) = self.total_ms_per_order() else {
            return write!(f, "CPU per order      - (no finished orders)");
        };
        let parts = largest_first(
            self.used_ms
                .iter()
                .map(|(n, ms)| (n.as_str(), ms / self.orders as f64)),
            2,
        );
        write!(f, "CPU per order      {total:.2} ms ({parts})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_is_its_root_its_reaped_children_and_its_live_children() {
        // Root 100: 5 + 3 of its own, 40 + 20 of children it waited for.
        let root = "100 (postgres) S 1 100 100 0 -1 0 0 0 0 0 5 3 40 20 20 0 1 0 1 0 0";
        let others = [
            // A backend of the root: counted.
            "201 (postgres) S 100 100 100 0 -1 0 0 0 0 0 7 2 0 0 20 0 1 0 1 0 0",
            // A process of another parent (another server, a client): not counted.
            "202 (postgres) S 1 202 202 0 -1 0 0 0 0 0 900 900 0 0 20 0 1 0 1 0 0",
            // Unreadable (it exited while being read): skipped.
            "203 (postg",
        ];
        assert_eq!(parent_pid(others[0]), Some(100));
        assert_eq!(parent_pid(others[2]), None);
        let t = parse_tree(100, root, others).unwrap();
        assert_eq!((t.utime, t.stime), (5 + 40 + 7, 3 + 20 + 2));
        assert!(parse_tree(100, "garbage", others).is_err());
    }

    #[test]
    fn a_reaped_child_stays_in_its_parents_tree() {
        let me = std::process::id();
        // The children waited for: the tree of one reading of this process's stat, without
        // live children, less its own time in that same reading.
        let reaped = || {
            let stat = std::fs::read_to_string(format!("/proc/{me}/stat")).unwrap();
            let tree = parse_tree(me, &stat, std::iter::empty()).unwrap();
            tree.total() - parse_stat(&stat).unwrap().total()
        };
        let before = reaped();
        // A child that burns some CPU, then exits and is waited for.
        let status = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"])
            .status()
            .unwrap();
        assert!(status.success());
        let after = reaped();
        assert!(after > before, "the child's CPU time is in the tree");
        // The whole tree read from /proc holds at least that (the children totals only grow).
        assert!(read_tree(me).unwrap().total() >= after);
    }

    #[test]
    fn fields_are_counted_after_the_last_parenthesis() {
        // A command name with a space and a `)` of its own.
        let stat = "77 (a b) c) R 1 2 3 4 5 6 7 8 9 10 1234 567 1 2 20 0 4 0 99 1000 20";
        assert_eq!(
            parse_stat(stat).unwrap(),
            CpuTime {
                utime: 1234,
                stime: 567
            }
        );
        assert!(parse_stat("77 no parenthesis").is_err());
        assert!(parse_stat("77 (short) S 1 2").is_err());
        assert!(parse_stat("77 (x) S 1 2 3 4 5 6 7 8 9 10 u 5").is_err());
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        let t0 = read(std::process::id()).unwrap();
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(60) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let t1 = read(std::process::id()).unwrap();
        assert!(t1.total() > t0.total(), "{t0:?} -> {t1:?}");
    }

    #[test]
    fn per_order_is_the_difference_over_finished_orders() {
        let before = vec![
            (
                "orders".to_owned(),
                CpuTime {
                    utime: 10,
                    stime: 5,
                },
            ),
            (
                "rabbitmq".to_owned(),
                CpuTime {
                    utime: 100,
                    stime: 0,
                },
            ),
            ("gone".to_owned(), CpuTime { utime: 1, stime: 1 }),
        ];
        let after = vec![
            (
                "orders".to_owned(),
                CpuTime {
                    utime: 40,
                    stime: 15,
                },
            ),
            (
                "rabbitmq".to_owned(),
                CpuTime {
                    utime: 110,
                    stime: 10,
                },
            ),
        ];
        let r = CpuReport::between(&before, &after, 100, 50);
        // orders: 40 ticks = 400 ms / 50 = 8 ms; rabbitmq: 20 ticks = 200 ms / 50 = 4 ms.
        assert_eq!(r.ms_per_order("orders"), Some(8.0));
        assert_eq!(r.ms_per_order("rabbitmq"), Some(4.0));
        assert_eq!(r.ms_per_order("gone"), None);
        assert_eq!(r.total_ms_per_order(), Some(12.0));
        assert_eq!(
            r.to_string(),
            "CPU per order      12.00 ms (orders 8.00, rabbitmq 4.00)"
        );
        let none = CpuReport::between(&before, &after, 100, 0);
        assert_eq!(none.total_ms_per_order(), None);
        assert!(none.to_string().contains("no finished orders"));
    }

    #[test]
    fn switches_add_both_kinds_per_thread_and_per_order() {
        let status = "Name:\tx\nvoluntary_ctxt_switches:\t120\nnonvoluntary_ctxt_switches:\t7\n";
        assert_eq!(parse_switches(status), Some(127));
        assert_eq!(parse_switches("Name:\tx\n"), None);
        // This process: its threads together have switched at least once (sleeping does).
        let before = context_switches(std::process::id()).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(context_switches(std::process::id()).unwrap() > before);

        let before = vec![("orders".to_owned(), 100), ("gone".to_owned(), 5)];
        let after = vec![("orders".to_owned(), 700), ("rabbitmq".to_owned(), 50)];
        let r = SwitchReport::between(&before, &after, 20);
        assert_eq!(r.switches, vec![("orders".to_owned(), 600)]);
        assert_eq!(r.total_per_order(), Some(30.0));
        assert_eq!(r.to_string(), "switches/order     30 (orders 30)");
        assert!(
            SwitchReport::between(&before, &after, 0)
                .to_string()
                .contains("no finished orders")
        );
    }

    #[test]
    fn the_broker_pid_comes_from_rabbitmqctl_status() {
        let status = "Status of node rabbit@localhost ...\nRuntime\n\nOS PID: 8123\nOS: Linux\n";
        assert_eq!(parse_broker_pid(status), Some(8123));
        assert_eq!(parse_broker_pid("OS: Linux\n"), None);
    }
}
