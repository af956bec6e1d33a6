//! The batching log writer: order and completeness across threads, a full buffer drops and
//! counts, shutdown writes everything, a stuck output never blocks the threads that log.

use std::io::{self, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use chassis_core::ServiceInfo;
use chassis_observability::Telemetry;
use chassis_observability::config::TelemetryConfig;
use chassis_observability::logging::{BatchWriter, CaptureWriter};

/// An output that blocks every write until released, telling the test when a write started.
#[derive(Clone)]
struct Gate {
    inner: CaptureWriter,
    entered: Arc<Mutex<Option<mpsc::Sender<()>>>>,
    open: Arc<(Mutex<bool>, Condvar)>,
    writes: Arc<AtomicUsize>,
}

impl Gate {
    fn closed() -> (Self, mpsc::Receiver<()>) {
        let (tx, rx) = mpsc::channel();
        (
            Self {
                inner: CaptureWriter::new(),
                entered: Arc::new(Mutex::new(Some(tx))),
                open: Arc::new((Mutex::new(false), Condvar::new())),
                writes: Arc::new(AtomicUsize::new(0)),
            },
            rx,
        )
    }

    fn release(&self) {
        *self.open.0.lock().unwrap() = true;
        self.open.1.notify_all();
    }
}

impl Write for Gate {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        if let Some(tx) = &*self.entered.lock().unwrap() {
            let _ = tx.send(());
        }
        let mut open = self.open.0.lock().unwrap();
        while !*open {
            open = self.open.1.wait(open).unwrap();
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An output that counts write calls.
#[derive(Clone, Default)]
struct Counting {
    inner: CaptureWriter,
    writes: Arc<AtomicUsize>,
}

impl Write for Counting {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Runs `f` on a thread and fails the test if it has not returned within 30 s: a producer that
/// blocks on the output would never return.
fn must_not_block(what: &str, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("{what} blocked"));
}

#[test]
fn lines_from_many_threads_arrive_whole_and_in_order() {
    let capture = CaptureWriter::new();
    let (writer, guard) = BatchWriter::builder()
        .interval(Duration::from_millis(1))
        .spawn(capture.clone())
        .unwrap();
    const THREADS: usize = 4;
    const LINES: usize = 5_000;
    let producers: Vec<_> = (0..THREADS)
        .map(|t| {
            let writer = writer.clone();
            std::thread::spawn(move || {
                for i in 0..LINES {
                    // Lines of varying length, so a torn or interleaved line would show.
                    let pad = "x".repeat(i % 50);
                    assert!(writer.write_line(format!("{t} {i} {pad}\n").as_bytes()));
                }
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    guard.shutdown(Duration::from_secs(10)).unwrap();
    let lines = capture.lines();
    assert_eq!(lines.len(), THREADS * LINES);
    let mut next = [0_usize; THREADS];
    for line in &lines {
        let mut parts = line.split(' ');
        let t: usize = parts.next().unwrap().parse().unwrap();
        let i: usize = parts.next().unwrap().parse().unwrap();
        assert_eq!(parts.next().unwrap(), "x".repeat(i % 50), "{line}");
        assert_eq!(i, next[t], "thread {t} out of order");
        next[t] += 1;
    }
    assert_eq!(next, [LINES; THREADS]);
    assert_eq!(writer.dropped_lines(), 0);
}

#[test]
fn a_full_buffer_drops_whole_lines_and_counts_them() {
    let (gate, entered) = Gate::closed();
    let (writer, guard) = BatchWriter::builder()
        .lines_limit(10)
        .interval(Duration::ZERO)
        .spawn(gate.clone())
        .unwrap();
    // The first line is taken by the writer, which then blocks in the output.
    assert!(writer.write_line(b"first\n"));
    entered.recv_timeout(Duration::from_secs(10)).unwrap();
    // Ten lines fit the buffer; the next five do not.
    for i in 0..10 {
        assert!(writer.write_line(format!("kept {i}\n").as_bytes()));
    }
    for i in 0..5 {
        assert!(!writer.write_line(format!("dropped {i}\n").as_bytes()));
    }
    assert_eq!(writer.dropped_lines(), 5);
    assert_eq!(guard.dropped_lines(), 5);
    gate.release();
    guard.shutdown(Duration::from_secs(10)).unwrap();
    let lines = gate.inner.lines();
    assert_eq!(lines.len(), 11, "{lines:?}");
    assert_eq!(lines[0], "first");
    assert_eq!(lines[10], "kept 9");
    assert!(lines.iter().all(|l| !l.starts_with("dropped")));
}

#[test]
fn the_byte_limit_drops_too() {
    let (gate, entered) = Gate::closed();
    let (writer, guard) = BatchWriter::builder()
        .bytes_limit(100)
        .interval(Duration::ZERO)
        .spawn(gate.clone())
        .unwrap();
    assert!(writer.write_line(b"first\n"));
    entered.recv_timeout(Duration::from_secs(10)).unwrap();
    let line = [b'a'; 39];
    assert!(writer.write_line(&line));
    assert!(writer.write_line(&line));
    assert!(!writer.write_line(&line), "117 bytes > 100");
    assert!(writer.write_line(&[b'b'; 22]), "exactly 100 bytes fit");
    assert!(
        !writer.write_line(&[b'c'; 200]),
        "a line larger than the buffer never fits"
    );
    assert_eq!(writer.dropped_lines(), 2);
    gate.release();
    guard.shutdown(Duration::from_secs(10)).unwrap();
    assert_eq!(gate.inner.contents().len(), 6 + 39 * 2 + 22);
}

#[test]
fn a_stuck_output_never_blocks_the_producers() {
    let (gate, entered) = Gate::closed();
    let (writer, guard) = BatchWriter::builder()
        .lines_limit(1_000)
        .spawn(gate.clone())
        .unwrap();
    assert!(writer.write_line(b"first\n"));
    entered.recv_timeout(Duration::from_secs(10)).unwrap();
    // The output is stuck for good; 100 000 lines from two threads still go through (into the
    // buffer or dropped), and flushing gives up at its timeout.
    let w = writer.clone();
    must_not_block("producers", move || {
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for _ in 0..50_000 {
                        w.write_line(b"{\"body\":\"line\"}\n");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    });
    assert_eq!(writer.dropped_lines(), 100_000 - 1_000);
    assert!(!writer.flush_timeout(Duration::from_millis(50)));
    // Shutdown gives up at its deadline too, saying how much is left.
    let err = guard.shutdown(Duration::from_millis(50)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    // The batch stuck in the output and the full buffer behind it.
    assert!(err.to_string().contains("1001 lines not written"), "{err}");
    gate.release();
}

#[test]
fn shutdown_writes_everything_at_once_and_later_lines_go_straight_through() {
    let capture = Counting::default();
    // An interval far longer than the test: only shutdown can have written the lines.
    let (writer, guard) = BatchWriter::builder()
        .interval(Duration::from_secs(3600))
        .spawn(capture.clone())
        .unwrap();
    for i in 0..1_000 {
        writer.write_line(format!("line {i}\n").as_bytes());
    }
    guard.shutdown(Duration::from_secs(10)).unwrap();
    let lines = capture.inner.lines();
    assert_eq!(lines.len(), 1_000);
    assert_eq!(lines[999], "line 999");
    // After shutdown a line is written synchronously, not lost.
    assert!(writer.write_line(b"after shutdown\n"));
    assert_eq!(capture.inner.lines().last().unwrap(), "after shutdown");
}

#[test]
fn dropping_the_guard_writes_everything() {
    let capture = CaptureWriter::new();
    let (writer, guard) = BatchWriter::builder()
        .interval(Duration::from_secs(3600))
        .spawn(capture.clone())
        .unwrap();
    writer.write_line(b"one\n");
    writer.write_line(b"two\n");
    drop(guard);
    assert_eq!(capture.lines(), ["one", "two"]);
}

#[test]
fn flush_waits_for_the_lines_before_it() {
    let capture = CaptureWriter::new();
    let (writer, _guard) = BatchWriter::builder()
        .interval(Duration::from_secs(3600))
        .spawn(capture.clone())
        .unwrap();
    for i in 0..10 {
        writer.write_line(format!("{i}\n").as_bytes());
    }
    assert!(writer.flush_timeout(Duration::from_secs(10)));
    assert_eq!(capture.lines().len(), 10);
    // Nothing pending: returns at once.
    assert!(writer.flush_timeout(Duration::ZERO));
}

#[test]
fn lines_are_written_in_batches_not_one_call_each() {
    let capture = Counting::default();
    let (writer, guard) = BatchWriter::builder()
        .interval(Duration::from_millis(200))
        .spawn(capture.clone())
        .unwrap();
    for i in 0..2_000 {
        writer.write_line(format!("{{\"i\":{i}}}\n").as_bytes());
    }
    guard.shutdown(Duration::from_secs(10)).unwrap();
    assert_eq!(capture.inner.lines().len(), 2_000);
    // The first line wakes the writer, which gathers for 200 ms: one or two batches, unless
    // this thread was descheduled for most of a second while writing 2 000 lines.
    let writes = capture.writes.load(Ordering::SeqCst);
    assert!(writes <= 10, "{writes} write calls for 2000 lines");
}

#[tokio::test]
async fn telemetry_counts_lines_dropped_by_a_stuck_output_and_flushes_at_shutdown() {
    let (gate, entered) = Gate::closed();
    let mut config = TelemetryConfig::default();
    config.log.buffered_lines_limit = 5;
    config.log.flush_interval = Duration::ZERO;
    let (dispatch, guard) = Telemetry::builder(ServiceInfo::new("orders", "1.0.0"))
        .ignore_env()
        .config(config)
        .writer(gate.clone())
        .build()
        .unwrap();
    tracing::dispatcher::with_default(&dispatch, || tracing::info!(i = 0, "taken by the writer"));
    entered.recv_timeout(Duration::from_secs(10)).unwrap();
    tracing::dispatcher::with_default(&dispatch, || {
        for i in 1..=20 {
            tracing::info!(i, "line");
        }
    });
    assert_eq!(guard.dropped_log_lines(), 15);
    gate.release();
    assert!(guard.flush_logs(Duration::from_secs(10)));
    // The shutdown logs through the subscriber in effect (a current-thread runtime: this one).
    let _default = tracing::dispatcher::set_default(&dispatch);
    guard.shutdown(Duration::from_secs(10)).await.unwrap();
    let lines: Vec<serde_json::Value> = gate
        .inner
        .lines()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let numbered: Vec<_> = lines.iter().filter_map(|l| l["i"].as_u64()).collect();
    assert_eq!(numbered, [0, 1, 2, 3, 4, 5]);
    // The shutdown says, once, that lines were lost.
    let warning = lines.last().unwrap();
    assert_eq!(warning["severity_text"], "WARN");
    assert_eq!(warning["dropped_lines"], 15);
}

#[tokio::test]
async fn the_human_readable_formats_go_through_the_batching_writer_too() {
    for format in [
        chassis_observability::LogFormat::Pretty,
        chassis_observability::LogFormat::Compact,
    ] {
        let capture = CaptureWriter::new();
        let (dispatch, guard) = Telemetry::builder(ServiceInfo::new("orders", "1.0.0"))
            .ignore_env()
            .log_format(format)
            .writer(capture.clone())
            .build()
            .unwrap();
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::info!(user = "ann", password = "hunter2", "first");
            tracing::warn!("second");
        });
        guard.shutdown(Duration::from_secs(10)).await.unwrap();
        let text = capture.contents();
        let first = text
            .find("first")
            .unwrap_or_else(|| panic!("{format}: {text}"));
        let second = text
            .find("second")
            .unwrap_or_else(|| panic!("{format}: {text}"));
        assert!(first < second, "{format}: {text}");
        assert!(
            text.contains("ann") && !text.contains("hunter2"),
            "{format}: {text}"
        );
    }
}
