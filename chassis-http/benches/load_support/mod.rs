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
