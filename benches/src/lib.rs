//! Benchmarks of the chassis SDK and the resilience-tuning simulator.
//!
//! - [`sim`]: the resilience-tuning simulator (binary `resilience-sim`).
//! - [`raw_lapin`]: the raw-lapin publishing baseline of the broker benchmarks.
//! - `benches/*.rs`: criterion benchmarks; `benches/README.md` records their figures.

pub mod raw_lapin;
pub mod sim;

/// CPU time this process has used so far (user + system, all threads: lapin's I/O threads
/// included), from `/proc/self/stat`, in seconds (10 ms resolution). The broker shares the
/// machine's cores with the client, so the client's CPU per message is what a heavier
/// publisher takes away from the broker; it is also steadier than the wall-clock rates.
pub fn process_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}
