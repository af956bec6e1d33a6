//! Which CPU each service process runs on.
//!
//! A shop service is a handful of threads that hand work to each other many times per order:
//! the tokio runtime thread, sqlx's SQLite worker thread (every statement, `BEGIN` and `COMMIT`
//! is sent to it and its result sent back), lapin's I/O loop and the log writer. When those
//! threads sit on different CPUs, each hand-off wakes the other CPU with an inter-processor
//! interrupt, which in a virtual machine is a trip through the hypervisor; on one CPU the
//! woken thread simply runs when the waker blocks for its answer. Profiled on a 2-core VM
//! (`perf record -e cpu-clock -g`), the kernel's context-switch path took 35-45 % of a
//! service's CPU; placing each service on one CPU took the shop's CPU per order from
//! 11.3-12.2 ms to 8.8-9.8 ms and its throughput from 140-151 to 166-185 orders/s, alternated
//! in one sitting (`benches/README.md`, 2026-12-07).
//!
//! [`CpuPlacement::Spread`] (the default) pins each process, all its threads, to one of the CPUs
//! the launcher may use (`Cpus_allowed_list` of `/proc/self/status`), round-robin in start
//! order, so the services still share every core between them. It starts the binary through
//! util-linux's `taskset -c N`, which sets the affinity and `exec`s the service (the pid stays
//! the service's own). Where `taskset` is missing, the launcher may use a single CPU or the
//! system is not Linux, every process keeps the launcher's affinity, as with
//! [`CpuPlacement::Inherit`]. The same placement in a deployment is Compose's `cpuset` or
//! Kubernetes' static CPU manager policy (a whole-number CPU request in a Guaranteed pod).

use std::str::FromStr;

/// How service processes are placed on CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuPlacement {
    /// Each process on one CPU of the launcher's own, round-robin in start order.
    #[default]
    Spread,
    /// Every process may run on any CPU the launcher may (the operating system decides).
    Inherit,
}

impl FromStr for CpuPlacement {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "spread" => Ok(Self::Spread),
            "inherit" => Ok(Self::Inherit),
            other => Err(format!(
                "unknown CPU placement {other:?}: `spread` or `inherit`"
            )),
        }
    }
}

/// Hands out a CPU per started process.
#[derive(Debug, Clone)]
pub struct Placer {
    /// The CPUs to place on; empty when processes keep the launcher's affinity.
    cpus: Vec<usize>,
    next: usize,
}

impl Placer {
    /// A placer for `placement` on this machine: [`CpuPlacement::Spread`] only where it can
    /// pin (Linux, `taskset` present, at least two CPUs allowed).
    pub fn new(placement: CpuPlacement) -> Self {
        let cpus = match placement {
            CpuPlacement::Inherit => Vec::new(),
            CpuPlacement::Spread => match allowed_cpus() {
                Some(cpus) if cpus.len() >= 2 && taskset_available() => cpus,
                _ => Vec::new(),
            },
        };
        Self { cpus, next: 0 }
    }

    /// A placer over exactly `cpus` (tests, or a caller that knows better).
    pub fn over(cpus: Vec<usize>) -> Self {
        Self { cpus, next: 0 }
    }

    /// The CPU for the next process, or `None` when processes are not pinned.
    pub fn next_cpu(&mut self) -> Option<usize> {
        let cpu = *self.cpus.get(self.next % self.cpus.len().max(1))?;
        self.next += 1;
        Some(cpu)
    }
}

/// The CPUs this process may run on, from `/proc/self/status` (`None` off Linux).
pub fn allowed_cpus() -> Option<Vec<usize>> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    allowed_cpus_of(&status)
}

/// The `Cpus_allowed_list` of a `/proc/<pid>/status` text.
pub fn allowed_cpus_of(status: &str) -> Option<Vec<usize>> {
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
    parse_cpu_list(list.trim())
}

/// A kernel CPU list (`0-3,8,10-11`) as CPU numbers in order.
pub fn parse_cpu_list(list: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi): (usize, usize) = (lo.parse().ok()?, hi.parse().ok()?);
                if hi < lo {
                    return None;
                }
                cpus.extend(lo..=hi);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    (!cpus.is_empty()).then_some(cpus)
}

fn taskset_available() -> bool {
    std::process::Command::new("taskset")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_ranges_and_singles_and_refuse_garbage() {
        assert_eq!(parse_cpu_list("0-1"), Some(vec![0, 1]));
        assert_eq!(parse_cpu_list("0-2,5,7-8"), Some(vec![0, 1, 2, 5, 7, 8]));
        assert_eq!(parse_cpu_list("3"), Some(vec![3]));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("2-1"), None);
        assert_eq!(parse_cpu_list("a"), None);
        let status = "Name:\tx\nCpus_allowed:\t3\nCpus_allowed_list:\t0-1\nMems_allowed:\t1\n";
        assert_eq!(allowed_cpus_of(status), Some(vec![0, 1]));
    }

    #[test]
    fn processes_go_round_robin_over_the_cpus_and_nowhere_without_any() {
        let mut placer = Placer::over(vec![2, 5]);
        let got: Vec<_> = (0..5).map(|_| placer.next_cpu()).collect();
        assert_eq!(got, [Some(2), Some(5), Some(2), Some(5), Some(2)]);
        assert_eq!(Placer::over(Vec::new()).next_cpu(), None);
        assert_eq!(Placer::new(CpuPlacement::Inherit).next_cpu(), None);
        assert_eq!("spread".parse(), Ok(CpuPlacement::Spread));
        assert_eq!("inherit".parse(), Ok(CpuPlacement::Inherit));
        assert!("both".parse::<CpuPlacement>().is_err());
    }
}
