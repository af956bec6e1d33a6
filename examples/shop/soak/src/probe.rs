//! What one sample of a process reads from `/proc`: resident memory, open file descriptors and
//! open database connections.
//!
//! - RSS: `VmRSS` of `/proc/<pid>/status` (kB), the resident set of the whole process.
//! - File descriptors: the entries of `/proc/<pid>/fd` (sockets, files, pipes, eventfds…).
//! - Database connections: the shop's services expose no pool gauge in `/metrics`, so they
//!   are counted from the descriptors: on SQLite every connection keeps exactly one descriptor
//!   on the database file itself (`<service>.db`; its `-wal` and `-shm` files are not counted),
//!   so the descriptors whose target ends in `.db` are the open connections.
//!
//! # Example
//! ```
//! use shop_soak::probe::{is_database_file, parse_vm_rss};
//!
//! assert_eq!(parse_vm_rss("Name:\tshop-orders\nVmRSS:\t   20480 kB\n"), Some(20480));
//! assert!(is_database_file("run/orders.db"));
//! assert!(!is_database_file("run/orders.db-wal"));
//! ```

use std::path::Path;

/// One process's figures at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcSample {
    /// Resident set size, kB.
    pub rss_kb: u64,
    /// Open file descriptors.
    pub fds: u64,
    /// Open SQLite connections (descriptors on a `.db` file).
    pub db_conns: u64,
}

/// `VmRSS` in kB from the text of `/proc/<pid>/status`.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Whether a descriptor's target is a SQLite database file (not its journal, WAL or shm).
pub fn is_database_file(target: &str) -> bool {
    target.ends_with(".db")
}

/// Samples process `pid`; `None` when it no longer exists (or `/proc` is not readable).
pub fn sample(pid: u32) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb = parse_vm_rss(&status)?;
    let (mut fds, mut db_conns) = (0, 0);
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        fds += 1;
        // A descriptor closed between the listing and the readlink is simply not a database.
        if std::fs::read_link(entry.path())
            .ok()
            .as_deref()
            .and_then(Path::to_str)
            .is_some_and(is_database_file)
        {
            db_conns += 1;
        }
    }
    Some(ProcSample {
        rss_kb,
        fds,
        db_conns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let s = sample(std::process::id()).expect("own /proc entry");
        assert!(s.rss_kb > 0);
        assert!(s.fds >= 3, "stdin, stdout and stderr at least: {s:?}");
        assert_eq!(parse_vm_rss("VmPeak: 1 kB\n"), None);
        assert_eq!(sample(u32::MAX), None);
    }

    #[test]
    fn counts_a_database_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let before = sample(std::process::id()).unwrap().db_conns;
        let _db = std::fs::File::create(dir.path().join("t.db")).unwrap();
        let _wal = std::fs::File::create(dir.path().join("t.db-wal")).unwrap();
        assert_eq!(sample(std::process::id()).unwrap().db_conns, before + 1);
    }
}
