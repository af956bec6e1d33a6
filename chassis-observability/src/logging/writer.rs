//! [`BatchWriter`]: log lines leave the request path as a memory copy; a background thread
//! writes them in batches.
//!
//! Producers (the threads that log) append each formatted line to one shared byte buffer under a
//! mutex held only for that copy. A background thread takes the whole buffer (swapping in an
//! empty one) and writes it with one `write_all`, so a batch of hundreds of lines costs one
//! system call, not one per line.
//!
//! Producers do not wake the writer per line. The writer thread, once it has data, lingers for
//! the [flush interval](BatchWriterBuilder::interval) to gather a batch, writes it, and sleeps
//! without a timeout only when the buffer is empty. A producer signals it in two cases only,
//! each at most once per batch: the buffer goes from empty to non-empty while the writer sleeps
//! (so a quiet service's line is written promptly), and the buffer reaches a full batch (64 KiB,
//! a pipe's capacity) while the writer lingers. The signal matters: on a small machine a wake-up
//! per line (a futex call for the producer, a context switch for the writer) costs more than
//! formatting the line. The batch size matters too: the two buffers the producers and the writer
//! swap stay small enough to stay in the CPU cache, where copying a line into them is cheap; a
//! busy service's batches of megabytes made each copy a cache miss.
//!
//! # When the buffer is full
//!
//! The buffer is bounded in lines and in bytes (whichever is reached first). A line that does not
//! fit is dropped, whole, and counted ([`BatchWriter::dropped_lines`]; [`Telemetry`](crate::Telemetry)
//! exports the count as the `log_lines_dropped_total` counter): logging never blocks or slows the
//! service when the output (a pipe, a log shipper) is slow or stuck. Lines the output fails to
//! take (an I/O error) are counted as dropped too.
//!
//! # Shutdown
//!
//! [`BatchWriterGuard::shutdown`] (also run, bounded, when the guard is dropped) writes every
//! buffered line, flushes the output and stops the thread. Lines logged after that are written
//! synchronously to the same output, so nothing logged during the rest of the exit is lost.
//!
//! # Example
//!
//! ```
//! use std::io::Write as _;
//! use std::time::Duration;
//! use chassis_observability::logging::{BatchWriter, CaptureWriter};
//!
//! let capture = CaptureWriter::new();
//! let (writer, guard) = BatchWriter::builder().spawn(capture.clone()).unwrap();
//! writer.write_line(b"{\"body\":\"one\"}\n");
//! (&writer).write_all(b"{\"body\":\"two\"}\n").unwrap();
//! guard.shutdown(Duration::from_secs(5)).unwrap();
//! assert_eq!(capture.lines(), ["{\"body\":\"one\"}", "{\"body\":\"two\"}"]);
//! assert_eq!(writer.dropped_lines(), 0);
//! ```

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;

/// How long [`BatchWriterGuard`]'s `Drop` waits for the buffered lines to be written.
const DROP_TIMEOUT: Duration = Duration::from_secs(2);

/// The batch size at which a lingering writer is woken (unless the byte limit is smaller).
const BATCH_BYTES: usize = 64 << 10;

/// A batch buffer that grew beyond this during a burst is shrunk back once the burst is over (a
/// run of [`SHRINK_AFTER`] batches that each used under a quarter of it), so one burst does not
/// pin megabytes for the life of the process, and a busy service's buffers are not shrunk and
/// grown again batch after batch (each growth is page faults on fresh memory).
const KEEP_CAPACITY: usize = 1 << 20;

/// See [`KEEP_CAPACITY`].
const SHRINK_AFTER: u32 = 256;

/// Settings of a [`BatchWriter`]; [`spawn`](Self::spawn) starts it.
#[derive(Debug, Clone)]
pub struct BatchWriterBuilder {
    lines_limit: usize,
    bytes_limit: usize,
    interval: Duration,
    thread_name: String,
}

impl Default for BatchWriterBuilder {
    fn default() -> Self {
        Self {
            lines_limit: 128_000,
            bytes_limit: 16 << 20,
            interval: Duration::from_millis(5),
            thread_name: "chassis-log-writer".to_owned(),
        }
    }
}

impl BatchWriterBuilder {
    /// Most lines buffered before new ones are dropped. Defaults to 128 000.
    pub fn lines_limit(mut self, lines: usize) -> Self {
        self.lines_limit = lines.max(1);
        self
    }

    /// Most bytes buffered before new lines are dropped. Defaults to 16 MiB.
    pub fn bytes_limit(mut self, bytes: usize) -> Self {
        self.bytes_limit = bytes.max(1);
        self
    }

    /// How long the writer gathers lines after the first one of a batch before writing them.
    /// Defaults to 5 ms: a line reaches the output at most that late (unless the output itself
    /// is slow), and a busy service makes at most 200 writes a second.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Name of the writer thread. Defaults to `chassis-log-writer`.
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.thread_name = name.into();
        self
    }

    /// Starts the writer thread over `output`. Fails only when the thread cannot be spawned.
    pub fn spawn<W>(self, output: W) -> io::Result<(BatchWriter, BatchWriterGuard)>
    where
        W: io::Write + Send + 'static,
    {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                buf: Vec::new(),
                lines: 0,
                accepted: 0,
                written: 0,
                phase: Phase::Writing,
                signalled: false,
                flush_waiters: 0,
                shutdown: false,
                closed: false,
            }),
            wake: Condvar::new(),
            progress: Condvar::new(),
            output: Mutex::new(None),
            dropped: AtomicU64::new(0),
            lines_limit: self.lines_limit,
            bytes_limit: self.bytes_limit,
            high_water_lines: self.lines_limit.div_ceil(2),
            high_water_bytes: self.bytes_limit.div_ceil(2).min(BATCH_BYTES),
        });
        let worker = Arc::clone(&shared);
        let interval = self.interval;
        let output: Box<dyn io::Write + Send> = Box::new(output);
        let thread = std::thread::Builder::new()
            .name(self.thread_name)
            .spawn(move || worker.run(output, interval))?;
        Ok((
            BatchWriter {
                shared: Arc::clone(&shared),
            },
            BatchWriterGuard {
                shared,
                thread: Some(thread),
            },
        ))
    }
}

/// The producer side: cheap to clone, shared by every thread that logs. Also a [`MakeWriter`]
/// (each `write` call is one line) and an [`io::Write`] for `&BatchWriter`.
#[derive(Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

/// Flushes and stops the writer thread on [`shutdown`](Self::shutdown) or, bounded to 2 s, on
/// drop.
pub struct BatchWriterGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    /// The writer thread waits here (for data, or the end of its linger).
    wake: Condvar,
    /// Flushers and `shutdown` wait here for `written` to advance.
    progress: Condvar,
    /// The output after the writer thread stopped, for lines logged during the exit.
    output: Mutex<Option<Box<dyn io::Write + Send>>>,
    dropped: AtomicU64,
    lines_limit: usize,
    bytes_limit: usize,
    /// Half the line limit: a lingering writer is woken at this many lines.
    high_water_lines: usize,
    /// A full batch: a lingering writer is woken at this many bytes.
    high_water_bytes: usize,
}

struct State {
    buf: Vec<u8>,
    /// Lines in `buf`.
    lines: usize,
    /// Lines accepted into the buffer since the start.
    accepted: u64,
    /// Lines handed to the output since the start (written or failed).
    written: u64,
    phase: Phase,
    /// Whether the writer was signalled since it last started waiting (one signal per wait).
    signalled: bool,
    /// Callers of `flush` waiting: the writer skips its linger for them.
    flush_waiters: usize,
    shutdown: bool,
    /// The writer thread finished; `Shared::output` holds the output.
    closed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a first line, without timeout: a new line must signal.
    Idle,
    /// Gathering a batch until the interval ends: only a nearly full buffer signals.
    Lingering,
    /// Writing a batch: it looks at the buffer again when done, nobody signals.
    Writing,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the buffer inconsistent for our purposes (at
    // worst a partial line): keep logging rather than propagate the poison.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl State {
    fn urgent(&self, shared: &Shared) -> bool {
        self.shutdown
            || self.flush_waiters > 0
            || self.lines >= shared.high_water_lines
            || self.buf.len() >= shared.high_water_bytes
    }
}

impl Shared {
    fn run(&self, mut output: Box<dyn io::Write + Send>, interval: Duration) {
        let mut batch: Vec<u8> = Vec::new();
        let mut reported_dropped = 0;
        let mut small_batches = 0;
        let mut state = lock(&self.state);
        loop {
            while state.buf.is_empty() && !state.shutdown {
                state.phase = Phase::Idle;
                state.signalled = false;
                state = self
                    .wake
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if state.buf.is_empty() {
                break; // shutdown, and everything is written
            }
            if !state.urgent(self) {
                state.phase = Phase::Lingering;
                state.signalled = false;
                let until = Instant::now() + interval;
                loop {
                    let now = Instant::now();
                    if now >= until || state.urgent(self) {
                        break;
                    }
                    state = self
                        .wake
                        .wait_timeout(state, until - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
            state.phase = Phase::Writing;
            std::mem::swap(&mut batch, &mut state.buf);
            let lines = std::mem::take(&mut state.lines);
            drop(state);

            if output
                .write_all(&batch)
                .and_then(|()| output.flush())
                .is_err()
            {
                // The output refused the batch (closed pipe, full disk): those lines are lost,
                // and counted, like lines that found the buffer full.
                self.dropped.fetch_add(lines as u64, Ordering::Relaxed);
            }
            let written_bytes = batch.len();
            batch.clear();
            if batch.capacity() > KEEP_CAPACITY && written_bytes < batch.capacity() / 4 {
                small_batches += 1;
                if small_batches >= SHRINK_AFTER {
                    batch.shrink_to(KEEP_CAPACITY / 4);
                    small_batches = 0;
                }
            } else {
                small_batches = 0;
            }
            reported_dropped = self.report_dropped(reported_dropped);

            state = lock(&self.state);
            state.written += lines as u64;
            if state.flush_waiters > 0 || state.shutdown {
                self.progress.notify_all();
            }
        }
        let _ = output.flush();
        self.report_dropped(reported_dropped);
        // Hand the output over before marking the writer closed: a producer that sees `closed`
        // writes through it.
        *lock(&self.output) = Some(output);
        state.closed = true;
        drop(state);
        self.progress.notify_all();
    }

    /// Publishes the dropped-lines count to the `metrics` recorder when it changed.
    fn report_dropped(&self, reported: u64) -> u64 {
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped != reported {
            ::metrics::counter!(crate::metrics::names::LOG_LINES_DROPPED).absolute(dropped);
        }
        dropped
    }

    fn push(&self, line: &[u8]) -> bool {
        let mut state = lock(&self.state);
        if state.closed {
            drop(state);
            return self.write_direct(line);
        }
        if state.lines >= self.lines_limit || state.buf.len() + line.len() > self.bytes_limit {
            drop(state);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        state.buf.extend_from_slice(line);
        state.lines += 1;
        state.accepted += 1;
        let signal = !state.signalled
            && match state.phase {
                Phase::Idle => true,
                Phase::Lingering => state.urgent(self),
                Phase::Writing => false,
            };
        if signal {
            state.signalled = true;
        }
        drop(state);
        if signal {
            self.wake.notify_one();
        }
        true
    }

    fn write_direct(&self, line: &[u8]) -> bool {
        let mut output = lock(&self.output);
        let ok = output
            .as_mut()
            .is_some_and(|o| o.write_all(line).and_then(|()| o.flush()).is_ok());
        if !ok {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Waits until every line accepted before the call is written, at most `timeout`.
    fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.state);
        let target = state.accepted;
        if state.written >= target || state.closed {
            return true;
        }
        state.flush_waiters += 1;
        let signal = !state.signalled && state.phase != Phase::Writing;
        if signal {
            state.signalled = true;
            self.wake.notify_one();
        }
        let done = loop {
            if state.written >= target || state.closed {
                break true;
            }
            let now = Instant::now();
            if now >= deadline {
                break false;
            }
            state = self
                .progress
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        };
        state.flush_waiters -= 1;
        done
    }
}

impl BatchWriter {
    /// A builder with the defaults.
    pub fn builder() -> BatchWriterBuilder {
        BatchWriterBuilder::default()
    }

    /// Queues one line (the caller includes the newline). Returns `false` when it was dropped
    /// because the buffer is full. Never blocks on the output.
    pub fn write_line(&self, line: &[u8]) -> bool {
        self.shared.push(line)
    }

    /// Lines dropped so far (buffer full, or the output failed).
    pub fn dropped_lines(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Waits until every line queued before the call has been handed to the output, at most
    /// `timeout`; returns whether it got there.
    pub fn flush_timeout(&self, timeout: Duration) -> bool {
        self.shared.flush(timeout)
    }
}

impl BatchWriterGuard {
    /// Writes every buffered line, flushes the output and stops the thread, waiting at most
    /// `timeout` (an output that blocks longer keeps its thread, which finishes on its own).
    /// Returns [`io::ErrorKind::TimedOut`] when the deadline passed first.
    pub fn shutdown(mut self, timeout: Duration) -> io::Result<()> {
        self.stop(timeout)
    }

    /// Lines dropped so far (buffer full, or the output failed).
    pub fn dropped_lines(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    fn stop(&mut self, timeout: Duration) -> io::Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.shared.state);
        state.shutdown = true;
        if state.phase != Phase::Writing {
            self.shared.wake.notify_one();
        }
        while !state.closed {
            let now = Instant::now();
            if now >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "log writer still writing after {timeout:?}; {} lines not written",
                        state.accepted - state.written
                    ),
                ));
            }
            state = self
                .shared
                .progress
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        drop(state);
        // `closed` is the thread's last act: joining returns at once.
        let _ = thread.join();
        Ok(())
    }
}

impl Drop for BatchWriterGuard {
    fn drop(&mut self) {
        let _ = self.stop(DROP_TIMEOUT);
    }
}

impl io::Write for &BatchWriter {
    /// Queues `buf` as one line; reports it written even when dropped (a lossy writer).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_line(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The writer [`BatchWriter`] makes for tracing-subscriber's `fmt` layer, which writes each
/// event with one `write_all`: each `write` is queued as one line.
#[derive(Debug)]
pub struct BatchLineWriter<'a>(&'a BatchWriter);

impl io::Write for BatchLineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_line(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = BatchLineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        BatchLineWriter(self)
    }
}

impl fmt::Debug for BatchWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchWriter")
            .field("lines_limit", &self.shared.lines_limit)
            .field("bytes_limit", &self.shared.bytes_limit)
            .field("dropped_lines", &self.dropped_lines())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for BatchWriterGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchWriterGuard")
            .field("running", &self.thread.is_some())
            .finish_non_exhaustive()
    }
}
