//! What the HTTP and HTTPS load benches share: the server worker's CPU clock, response framing
//! of the lean load generator, the statistics of the rounds, and running each row in a child
//! process of its own (a global tracing subscriber or metrics recorder is set once per process).

use std::time::Duration;

/// CPU time the server runtime's worker thread has used so far (Linux schedstat), read on that
/// thread. Both servers run on that one worker, so its CPU time per request compares their
/// costs even when other processes make the wall-clock rates noisy.
pub(crate) fn server_cpu(server_rt: &tokio::runtime::Runtime) -> Option<Duration> {
    server_rt.block_on(async {
        tokio::spawn(async {
            let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
            let ns = stat.split_whitespace().next()?.parse().ok()?;
            Some(Duration::from_nanos(ns))
        })
        .await
        .expect("schedstat task")
    })
}

/// Server CPU time per request over one measurement (warm-up included, like `total`).
pub(crate) fn cpu_per_request(
    before: Option<Duration>,
    after: Option<Duration>,
    total: u64,
) -> Option<f64> {
    let spent = after?.checked_sub(before?)?;
    (total > 0).then(|| spent.as_secs_f64() * 1e6 / total as f64)
}

/// Length of the response in `buf` if it is complete (head + content-length body).
pub(crate) fn complete_response(buf: &[u8]) -> Option<usize> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let len = head
        .split("\r\n")
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    (buf.len() >= head_end + len).then_some(head_end + len)
}

/// The median; of an even count, the mean of the two middle values.
pub(crate) fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// `v` with `digits` decimals, or `n/a`.
pub(crate) fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.digits$}"))
}

/// Runs the bench binary once per row (`raw` arguments plus `--row <name>`), prints each child's
/// output, then every `SUMMARY ` line of theirs under `header` (a Markdown table head).
pub(crate) fn run_rows<'a>(raw: &[String], rows: impl IntoIterator<Item = &'a str>, header: &str) {
    let exe = std::env::current_exe().expect("the bench binary");
    let mut summaries = Vec::new();
    for row in rows {
        let output = std::process::Command::new(&exe)
            .args(raw)
            .args(["--row", row])
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("run a row");
        let text = String::from_utf8_lossy(&output.stdout);
        print!("{text}");
        assert!(output.status.success(), "row {row} failed");
        summaries.extend(
            text.lines()
                .filter_map(|l| l.strip_prefix("SUMMARY "))
                .map(str::to_owned),
        );
    }
    println!("\n{header}");
    for summary in summaries {
        println!("{summary}");
    }
}

/// The settings both benches take: `--connections`, `--duration-ms`, `--rounds`,
/// `--server-threads`, `--row` and `--rows`.
#[derive(Debug)]
pub(crate) struct LoadArgs<R> {
    /// Keep-alive connections driven concurrently.
    pub(crate) connections: usize,
    /// Measurement time per server per round.
    pub(crate) duration: Duration,
    /// Rounds (bare then chassis on even rounds, chassis then bare on odd ones).
    pub(crate) rounds: usize,
    /// Worker threads of the server runtime.
    pub(crate) server_threads: usize,
    /// The row to run in this process; `None` runs `rows` as child processes.
    pub(crate) row: Option<R>,
    /// The rows to run when no `row` is given.
    pub(crate) rows: Vec<R>,
    /// The arguments, to hand to the child processes.
    pub(crate) raw: Vec<String>,
}

impl<R: Clone> LoadArgs<R> {
    /// Parses the process arguments, each row named as `parse_row` reads it. Any other flag goes
    /// to `other` with a function that takes its value; unknown flags are ignored (`cargo bench`
    /// passes `--bench` to harness-less targets).
    pub(crate) fn parse(
        duration: Duration,
        all_rows: &[R],
        parse_row: fn(&str) -> R,
        mut other: impl FnMut(&str, &mut dyn FnMut() -> String),
    ) -> Self {
        let mut args = LoadArgs {
            connections: 32,
            duration,
            rounds: 5,
            server_threads: 1,
            row: None,
            rows: all_rows.to_vec(),
            raw: std::env::args().skip(1).collect(),
        };
        let mut it = args.raw.clone().into_iter();
        while let Some(arg) = it.next() {
            let mut value = || it.next().unwrap_or_else(|| panic!("{arg} needs a value"));
            match arg.as_str() {
                "--connections" => args.connections = value().parse().expect("a number"),
                "--duration-ms" => {
                    args.duration = Duration::from_millis(value().parse().expect("a number"))
                }
                "--rounds" => args.rounds = value().parse().expect("a number"),
                "--server-threads" => args.server_threads = value().parse().expect("a number"),
                "--row" => args.row = Some(parse_row(&value())),
                "--rows" => args.rows = value().split(',').map(parse_row).collect(),
                _ => other(&arg, &mut value),
            }
        }
        args
    }

    /// The runtime the two servers share, with `server_threads` workers.
    pub(crate) fn server_runtime(&self) -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(self.server_threads)
            .enable_all()
            .build()
            .expect("server runtime")
    }
}

/// The load generator's runtime: one thread, apart from the servers'.
pub(crate) fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime")
}

/// Binds two listeners on loopback in `rt` and hands them to `spawn` (the bare server's first);
/// returns their addresses in the same order.
pub(crate) fn bind_pair(
    rt: &tokio::runtime::Runtime,
    spawn: impl FnOnce(tokio::net::TcpListener, tokio::net::TcpListener),
) -> (std::net::SocketAddr, std::net::SocketAddr) {
    rt.block_on(async {
        let bare = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let chassis = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addrs = (bare.local_addr().unwrap(), chassis.local_addr().unwrap());
        spawn(bare, chassis);
        addrs
    })
}

/// The order the two servers are measured in during `round`: bare first on even rounds,
/// chassis first on odd ones, so neither always runs on a warmer machine.
pub(crate) fn round_order<A: Copy>(round: usize, bare: A, chassis: A) -> [(&'static str, A); 2] {
    if round.is_multiple_of(2) {
        [("bare", bare), ("chassis", chassis)]
    } else {
        [("chassis", chassis), ("bare", bare)]
    }
}

/// The counters a load generator's connections share: stop when `stop` is set; count each
/// answered request in `done`, each non-200 one also in `bad`.
#[derive(Clone, Default)]
pub(crate) struct Counters {
    pub(crate) stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub(crate) done: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub(crate) bad: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Starts `connections` drivers with `spawn`, lets them warm up for 300 ms, then counts for
/// `duration`; returns the rate during that window, non-200 responses, and all requests (warm-up
/// included).
pub(crate) async fn measure_window(
    connections: usize,
    duration: Duration,
    spawn: impl Fn(Counters) -> tokio::task::JoinHandle<()>,
) -> (f64, u64, u64) {
    use std::sync::atomic::Ordering;
    let counters = Counters::default();
    let tasks: Vec<_> = (0..connections).map(|_| spawn(counters.clone())).collect();
    // Warm-up: let every connection get going before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start_count = counters.done.load(Ordering::Relaxed);
    let start = std::time::Instant::now();
    tokio::time::sleep(duration).await;
    let count = counters.done.load(Ordering::Relaxed) - start_count;
    let elapsed = start.elapsed();
    counters.stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("driver task");
    }
    (
        count as f64 / elapsed.as_secs_f64(),
        counters.bad.load(Ordering::Relaxed),
        counters.done.load(Ordering::Relaxed),
    )
}
