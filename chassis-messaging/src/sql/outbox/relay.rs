//! The relay: the background task that moves committed outbox rows to the broker.
//!
//! A row the broker confirmed but routed to no queue is handled by its exchange's
//! [`Unroutable`](crate::amqp::topology::Unroutable) policy: on an `Accept` exchange it is
//! marked sent and counted in [`OUTBOX_UNROUTABLE`](names::OUTBOX_UNROUTABLE) (logged at debug
//! level), never parked; on a `Retry` exchange (the default) it is a non-transient failure,
//! retried with a growing delay and parked after [`RelayConfig::max_attempts`].
//!
//! The parked rows are reported by the [`OUTBOX_PARKED`](names::OUTBOX_PARKED) gauge, refreshed
//! every [`RelayConfig::stats_interval`], and by one warning each time their count changes (and
//! one info line when it drops back to zero): a parked row stays until an operator acts, so
//! repeating the warning every few seconds would only bury the rest of the log.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt as _, StreamExt as _};
use rand::Rng;
use serde::Deserialize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use chassis_observability::propagation::extract_with_context;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::store::{OutboxStore, PendingRow, RowOutcome, SentPolicy};
use crate::amqp::headers::HeaderMapExtractor;
use crate::amqp::publisher::{Publish, Routing};
use crate::error::{Error, ErrorKind, Result};
use crate::message::OutgoingMessage;
use crate::sql::schema::now_ms;
use chassis_observability::metrics::names;

/// How a [`Relay`] batches, waits, retries and cleans up. Every field has a default; it is
/// `Deserialize` (durations in humantime form, `"500ms"`), so it can come from a config file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Rows claimed and published per batch. Defaults to 200.
    pub batch_size: usize,
    /// Batches in flight at once (claimed and not yet recorded). With more than one, the
    /// next batches are claimed and published while earlier ones wait for their confirms and
    /// are recorded, so the broker's confirm pipeline does not drain at a batch boundary; a
    /// subject's rows in a later batch are published only after its rows in the earlier ones
    /// were confirmed (see [`Relay`]). 1 processes one batch at a time. On PostgreSQL each
    /// batch in flight holds one pool connection (its open transaction) until it is recorded:
    /// size the pool for `batches_in_flight` + 1 (the `LISTEN` connection) besides the
    /// application's own use. Defaults to 4.
    pub batches_in_flight: usize,
    /// Polling interval when no commit notification arrives. Defaults to 500 ms.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Deadline of one publish (until the broker confirms). Defaults to 10 s.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// Failed attempts (non-transient errors only: unroutable on an
    /// [`Unroutable::Retry`](crate::amqp::topology::Unroutable::Retry) exchange, undecodable)
    /// after which a row is parked. Defaults to 5.
    pub max_attempts: u32,
    /// Delay before a row that failed non-transiently is tried again; doubles per attempt,
    /// capped by `backoff_max`. Defaults to 1 s.
    #[serde(with = "humantime_serde")]
    pub retry_delay: Duration,
    /// First delay after a transient failure (broker down, database error); doubles per
    /// consecutive failure, with jitter. Defaults to 100 ms.
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    /// Longest delay between attempts. Defaults to 30 s.
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// How long a SQLite relay's reservation of a batch lasts before another relay may take
    /// the rows over (the reserving relay is presumed dead). [`Relay::run`] renews it every
    /// third of it while the batch is in flight, so it bounds how long a relay that died
    /// (a killed process) holds up its rows' subjects, not how long a publish may take;
    /// [`Relay::run_once`] does not renew. PostgreSQL uses row locks instead. Defaults to 5 s.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How long confirmed rows are kept (status `sent`) before retention deletes them; zero
    /// deletes them as soon as the broker confirmed. Defaults to 1 h.
    #[serde(with = "humantime_serde")]
    pub sent_retention: Duration,
    /// How often retention runs. Defaults to 60 s.
    #[serde(with = "humantime_serde")]
    pub cleanup_interval: Duration,
    /// How often the pending/parked gauges are refreshed. Defaults to 5 s.
    #[serde(with = "humantime_serde")]
    pub stats_interval: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 200,
            batches_in_flight: 4,
            poll_interval: Duration::from_millis(500),
            publish_timeout: Duration::from_secs(10),
            max_attempts: 5,
            retry_delay: Duration::from_secs(1),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            lease: Duration::from_secs(5),
            sent_retention: Duration::from_secs(3600),
            cleanup_interval: Duration::from_secs(60),
            stats_interval: Duration::from_secs(5),
        }
    }
}

impl RelayConfig {
    chassis_core::__builder_setters! {
        /// Sets [`batch_size`](Self::batch_size).
        batch_size: usize,
        /// Sets [`batches_in_flight`](Self::batches_in_flight).
        batches_in_flight: usize,
        /// Sets [`poll_interval`](Self::poll_interval).
        poll_interval: Duration,
        /// Sets [`publish_timeout`](Self::publish_timeout).
        publish_timeout: Duration,
        /// Sets [`max_attempts`](Self::max_attempts).
        max_attempts: u32,
        /// Sets [`retry_delay`](Self::retry_delay).
        retry_delay: Duration,
        /// Sets [`backoff_initial`](Self::backoff_initial).
        backoff_initial: Duration,
        /// Sets [`backoff_max`](Self::backoff_max).
        backoff_max: Duration,
        /// Sets [`lease`](Self::lease).
        lease: Duration,
        /// Sets [`sent_retention`](Self::sent_retention).
        sent_retention: Duration,
        /// Sets [`cleanup_interval`](Self::cleanup_interval).
        cleanup_interval: Duration,
        /// Sets [`stats_interval`](Self::stats_interval).
        stats_interval: Duration,
    }

    /// Checks the values are usable.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`] naming the first bad value.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: &str| Err(Error::invalid_config(format!("outbox relay: {reason}")));
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1");
        }
        if self.batches_in_flight == 0 {
            return bad("batches_in_flight must be at least 1");
        }
        if self.max_attempts == 0 {
            return bad("max_attempts must be at least 1");
        }
        for (name, d) in [
            ("poll_interval", self.poll_interval),
            ("publish_timeout", self.publish_timeout),
            ("backoff_initial", self.backoff_initial),
            ("cleanup_interval", self.cleanup_interval),
            ("stats_interval", self.stats_interval),
            ("lease", self.lease),
        ] {
            if d.is_zero() {
                return bad(&format!("{name} must be positive"));
            }
        }
        if self.backoff_max < self.backoff_initial {
            return bad("backoff_max must be at least backoff_initial");
        }
        Ok(())
    }

    fn sent_policy(&self) -> SentPolicy {
        if self.sent_retention.is_zero() {
            SentPolicy::Delete
        } else {
            SentPolicy::Mark
        }
    }
}

/// What one batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Rows claimed (heads of their subjects).
    pub claimed: usize,
    /// Rows the broker confirmed.
    pub sent: usize,
    /// Rows among [`sent`](Self::sent) that reached no queue, accepted because their exchange
    /// is declared [`Unroutable::Accept`](crate::amqp::topology::Unroutable::Accept).
    pub unrouted: usize,
    /// Rows that failed non-transiently and will be retried later.
    pub failed: usize,
    /// Rows parked by this batch.
    pub parked: usize,
    /// Rows left pending because of a transient failure.
    pub released: usize,
    /// The first transient error, if the broker (or the publish deadline) failed.
    pub transient_error: Option<String>,
}

impl BatchReport {
    /// Adds the counts of `other` (the first transient error is kept).
    fn absorb(&mut self, other: BatchReport) {
        self.claimed += other.claimed;
        self.sent += other.sent;
        self.unrouted += other.unrouted;
        self.failed += other.failed;
        self.parked += other.parked;
        self.released += other.released;
        if self.transient_error.is_none() {
            self.transient_error = other.transient_error;
        }
    }
}

/// Why [`Relay::pump`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PumpEnd {
    /// Nothing was due: every claim came back empty and no batch is in flight.
    Idle,
    /// A transient broker failure: back off before claiming again.
    Transient,
    /// Cancelled, or the deadline for the periodic chores passed.
    Interrupted,
}

/// Awaits `fut` while the batches in flight go on: each that ends meanwhile is absorbed into
/// `total` and `error`, and its keys are added to `finished` (for the caller to forget).
async fn driving<T, K, S>(
    fut: impl Future<Output = T>,
    in_flight: &mut S,
    total: &mut BatchReport,
    error: &mut Option<Error>,
    finished: &mut Vec<K>,
) -> T
where
    S: futures_util::Stream<Item = (K, Result<BatchReport>)> + Unpin,
{
    tokio::pin!(fut);
    loop {
        tokio::select! {
            biased;
            out = &mut fut => return out,
            Some((keys, done)) = in_flight.next() => {
                absorb(total, error, done);
                finished.push(keys);
            }
        }
    }
}

/// Adds one finished batch to the pump's running totals.
fn absorb(total: &mut BatchReport, error: &mut Option<Error>, done: Result<BatchReport>) {
    match done {
        Ok(report) => total.absorb(report),
        Err(err) => {
            error.get_or_insert(err);
        }
    }
}

/// The rows of one subject in one batch (or one row without a subject), published one after
/// the other.
struct Chain {
    rows: Vec<PendingRow>,
    /// Resolves once the subject's rows in an earlier batch still in flight are done: `true`
    /// when all of them were confirmed. Without it the chain starts at once.
    after: Option<oneshot::Receiver<bool>>,
    /// Told whether every row of this chain was confirmed (the next batch's chain of the
    /// subject waits for it).
    done: Option<oneshot::Sender<bool>>,
}

/// What the pump holds in flight across its batches: the rows (passed to
/// [`OutboxStore::claim`] as `held`) and, per subject, the outcome signal of its last chain.
#[derive(Default)]
struct Held {
    rows: HashSet<i64>,
    tails: HashMap<String, Tail>,
}

/// The last chain of a subject in flight.
struct Tail {
    /// Resolves with whether it (and so every chain of the subject before it) was confirmed.
    done: oneshot::Receiver<bool>,
    /// Batches in flight with rows of the subject. The tail is kept until the last of them
    /// is forgotten, whatever order they finish in: a batch is recorded (and forgotten) after
    /// its chains are done, but a later batch may be recorded before an earlier one, and a
    /// row claimed behind the earlier one's rows must still be linked (to the latest chain,
    /// which resolves only after every earlier one).
    batches: usize,
}

/// What a batch holds, to forget once it finished.
struct BatchKeys {
    rows: Vec<i64>,
    subjects: Vec<String>,
}

impl Held {
    /// Splits a claimed batch (in id order) into chains, each subject's chain linked after the
    /// subject's chain of an earlier batch still in flight, and holds the batch's rows.
    fn link(&mut self, rows: Vec<PendingRow>) -> (Vec<Chain>, BatchKeys) {
        let mut keys = BatchKeys {
            rows: rows.iter().map(|r| r.id).collect(),
            subjects: Vec::new(),
        };
        self.rows.extend(keys.rows.iter().copied());
        let mut chains: Vec<Chain> = Vec::new();
        let mut by_subject: HashMap<String, usize> = HashMap::new();
        for row in rows {
            let Some(subject) = row.subject.clone() else {
                chains.push(Chain {
                    rows: vec![row],
                    after: None,
                    done: None,
                });
                continue;
            };
            match by_subject.get(&subject) {
                Some(&i) => chains[i].rows.push(row),
                None => {
                    by_subject.insert(subject, chains.len());
                    chains.push(Chain {
                        rows: vec![row],
                        after: None,
                        done: None,
                    });
                }
            }
        }
        for (subject, i) in by_subject {
            let chain = &mut chains[i];
            let (done, signal) = oneshot::channel();
            chain.done = Some(done);
            match self.tails.get_mut(&subject) {
                Some(tail) => {
                    chain.after = Some(std::mem::replace(&mut tail.done, signal));
                    tail.batches += 1;
                }
                None => {
                    self.tails.insert(
                        subject.clone(),
                        Tail {
                            done: signal,
                            batches: 1,
                        },
                    );
                }
            }
            keys.subjects.push(subject);
        }
        (chains, keys)
    }

    /// Forgets a finished batch: its rows, and the tails of subjects it was the last batch in
    /// flight of.
    fn forget(&mut self, keys: BatchKeys) {
        for id in &keys.rows {
            self.rows.remove(id);
        }
        for subject in keys.subjects {
            if let Some(tail) = self.tails.get_mut(&subject) {
                tail.batches -= 1;
                if tail.batches == 0 {
                    self.tails.remove(&subject);
                }
            }
        }
    }
}

/// Jittered exponential backoff: the `n`-th consecutive delay is uniformly drawn from
/// `[d/2, d]` with `d = min(max, initial * 2^n)`.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            failures: 0,
        }
    }

    /// The upper bound of the next delay.
    pub(crate) fn ceiling(&self) -> Duration {
        let factor = 2u32.saturating_pow(self.failures.min(31));
        self.initial.saturating_mul(factor).min(self.max)
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        ceiling.mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }
}

/// The delay before a non-transiently failed row is tried again (`attempts` >= 1).
fn retry_delay(config: &RelayConfig, attempts: i32) -> Duration {
    let exp = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(31);
    config
        .retry_delay
        .saturating_mul(2u32.saturating_pow(exp))
        .min(config.backoff_max)
}

/// The span one row is published in: a child of the trace context `enqueue` stored with the
/// row (the span that was current in the writing transaction), so the publisher's producer
/// span, and the `traceparent` it injects, continue the enqueuer's trace rather than start a
/// new one on the relay's task. A row stored without a context gets a root span.
fn relay_span(row_id: i64, message: &OutgoingMessage) -> tracing::Span {
    let dest = if message.exchange.is_empty() {
        "amq.default"
    } else {
        message.exchange.as_str()
    };
    let span = tracing::info_span!(
        parent: None,
        "outbox relay",
        otel.name = %format_args!("{dest} outbox relay"),
        otel.kind = "internal",
        messaging.system = "rabbitmq",
        messaging.destination.name = %dest,
        messaging.message.id = message.message_id.as_deref().unwrap_or_default(),
        outbox.row_id = row_id,
    );
    // Extracted over an empty context, not the current one (`extract_context`): a row stored
    // without a context starts a new trace instead of joining whatever span the relay's task
    // is in. `set_parent` fails only without an OpenTelemetry layer, where there is no trace to
    // continue: the stored `traceparent` header then travels unchanged.
    if !span.is_disabled() {
        let stored = extract_with_context(
            &opentelemetry::Context::new(),
            &HeaderMapExtractor(&message.headers),
        );
        let _ = span.set_parent(stored);
    }
    span
}

/// Publishes committed outbox rows through a [`Publish`] implementation.
///
/// One relay drains one store; several relays (replicas) may drain the same database. Rows are
/// marked sent (or deleted) only after the publisher returned `Ok`, i.e. after the broker
/// confirmed them: delivery is at least once, and a crash between confirm and mark produces a
/// duplicate with the same `message_id`, which the consumer's
/// [`Inbox`](crate::sql::inbox::Inbox) absorbs.
pub struct Relay<S, P: ?Sized> {
    store: S,
    publisher: Arc<P>,
    config: RelayConfig,
}

impl<S: std::fmt::Debug, P: ?Sized> std::fmt::Debug for Relay<S, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("store", &self.store)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S: OutboxStore, P: Publish + ?Sized + 'static> Relay<S, P> {
    /// A relay draining `store` into `publisher`.
    ///
    /// The relay's counters and its latency histogram are registered at 0 here; the
    /// pending, parked and oldest-age gauges are set from the store by the first refresh, as
    /// the relay starts running (a placeholder 0 before it would claim an empty outbox).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`] when `config` does not [`validate`](RelayConfig::validate).
    pub fn new(store: S, publisher: Arc<P>, config: RelayConfig) -> Result<Self> {
        config.validate()?;
        for metric in [
            names::OUTBOX_RELAY_ERRORS,
            names::OUTBOX_PUBLISHED,
            names::OUTBOX_UNROUTABLE,
            names::OUTBOX_PARKED_MESSAGES,
            names::OUTBOX_PUBLISH_LATENCY,
        ] {
            names::preregister(metric, &[]);
        }
        Ok(Self {
            store,
            publisher,
            config,
        })
    }

    /// The store this relay drains.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The configuration.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// Runs the relay on a new task until `token` is cancelled (it finishes the batches in
    /// flight, then returns). In a service run by [`App`](chassis_core::lifecycle::App), register
    /// [`into_component`](Self::into_component) instead: the app then stops the relay after
    /// intake drained and before the connection closes.
    pub fn spawn(self, token: CancellationToken) -> JoinHandle<()>
    where
        S: 'static,
    {
        tokio::spawn(self.run(token))
    }

    /// Runs the relay on a task tracked by `shutdown`: it stops (after its batches in flight) when
    /// shutdown is triggered, and [`Shutdown::drain`](chassis_core::shutdown::Shutdown::drain)
    /// waits for it.
    pub fn spawn_with(self, shutdown: &chassis_core::shutdown::Shutdown) -> JoinHandle<()>
    where
        S: 'static,
    {
        shutdown.tracker().spawn(self.run(shutdown.token()))
    }

    /// Runs the relay until `token` is cancelled: claims and publishes batches while there is
    /// work (up to [`RelayConfig::batches_in_flight`] at once), otherwise waits for a commit
    /// notification or the poll interval; backs off (jittered, exponential) while the broker or
    /// the database fails; refreshes the metrics and applies retention on their schedules.
    pub async fn run(self, token: CancellationToken) {
        let notify = self.store.notifier();
        let watch_token = token.child_token();
        let watcher = tokio::spawn({
            let store = self.store.clone();
            let notify = notify.clone();
            let watch_token = watch_token.clone();
            async move { store.watch(notify, watch_token).await }
        });
        let mut backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max);
        let mut next_stats = Instant::now();
        let mut parked_reported = 0;
        let mut next_cleanup = Instant::now() + self.config.cleanup_interval;
        while !token.is_cancelled() {
            let now = Instant::now();
            if now >= next_stats {
                self.refresh_stats(&mut parked_reported).await;
                next_stats = now + self.config.stats_interval;
            }
            if now >= next_cleanup {
                self.cleanup().await;
                next_cleanup = now + self.config.cleanup_interval;
            }
            // Pump until idle, a failure, or the next chore is due (a steady stream of commits
            // must not starve the gauges and retention).
            let wait = match self
                .pump(Some(&token), Some(next_stats.min(next_cleanup)))
                .await
            {
                (report, PumpEnd::Transient, None) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        error = report.transient_error.as_deref().unwrap_or_default(),
                        released = report.released,
                        retry_in_ms = delay.as_millis() as u64,
                        "outbox relay: broker unavailable, backing off"
                    );
                    Some(delay)
                }
                (_, end, None) => {
                    backoff.reset();
                    if end == PumpEnd::Idle {
                        // Nothing due: sleep until a commit is signalled or the poll interval.
                        tokio::select! {
                            () = token.cancelled() => {}
                            () = notify.notified() => {}
                            () = tokio::time::sleep(self.config.poll_interval) => {}
                        }
                    }
                    None
                }
                (_, _, Some(err)) => {
                    metrics::counter!(names::OUTBOX_RELAY_ERRORS, names::labels::ERROR_TYPE => "database")
                        .increment(1);
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "outbox relay: database error, backing off");
                    Some(delay)
                }
            };
            if let Some(delay) = wait {
                tokio::select! {
                    () = token.cancelled() => {}
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
        watch_token.cancel();
        let _ = watcher.await;
        tracing::debug!("outbox relay stopped");
    }

    /// Claims, publishes and records one batch. [`run`](Self::run) pipelines batches instead
    /// (see [`run_until_idle`](Self::run_until_idle)); tests and tools may call this directly.
    /// It does not renew the batch's lease (SQLite): a publish slower than
    /// [`RelayConfig::lease`] may let another relay publish the rows too.
    ///
    /// # Errors
    /// [`ErrorKind::Database`] when the store failed (nothing was marked; rows stay pending).
    pub async fn run_once(&self) -> Result<BatchReport> {
        let (claim, rows) = self
            .store
            .claim(self.config.batch_size, self.config.lease, &HashSet::new())
            .await?;
        let (chains, _) = Held::default().link(rows);
        self.publish_and_finish(claim, chains).await
    }

    /// Publishes every due row, batch after batch with up to
    /// [`RelayConfig::batches_in_flight`] batches in flight, until nothing is due or a
    /// transient broker failure stops it (reported in
    /// [`transient_error`](BatchReport::transient_error); the batches in flight are finished
    /// first). Returns the sum of the batches' reports. This is what [`run`](Self::run) does
    /// between its waits; tools and benchmarks may call it directly.
    ///
    /// # Errors
    /// [`ErrorKind::Database`] when the store failed (after the other batches in flight were
    /// recorded); the failed batch's rows stay pending.
    pub async fn run_until_idle(&self) -> Result<BatchReport> {
        match self.pump(None, None).await {
            (_, _, Some(err)) => Err(err),
            (report, _, None) => Ok(report),
        }
    }

    /// The pipeline: claims a batch whenever fewer than `batches_in_flight` are in flight,
    /// while the earlier ones wait for their confirms and are recorded.
    ///
    /// Why overlapping batches keep every guarantee: a batch in flight holds its rows exactly
    /// like another relay would (SQLite: a lease; PostgreSQL: the row locks of its open
    /// transaction), and those rows stay `pending` until the batch is recorded. A claim takes
    /// a row only when every earlier pending row of its subject is in the same claim or in
    /// one of this relay's batches still in flight (the head rule of [`OutboxStore::claim`],
    /// which is told the rows in flight as `held`). Such a row is *linked* behind its subject's
    /// rows in flight: its chain starts only once they were all confirmed by the broker, and
    /// is released untouched (left pending) if any of them failed or was released. So one
    /// subject's rows reach the broker in id order even across batches, and the next batch
    /// never has to wait for the previous one's bookkeeping: with a backlog, the broker always
    /// has the next rows to confirm while earlier batches are recorded and new ones claimed.
    /// A failure leaves rows pending and is handled per batch as with one batch at a time.
    /// (If recording a batch fails after its rows were confirmed, those rows stay pending and
    /// are published again after their linked successors: a duplicate the consumer's inbox
    /// absorbs, as after a crash between confirm and record.) Claims happen one after the
    /// other, each while the batches in flight keep being driven (they may need the pool's
    /// connections to finish); a batch finishing meanwhile is forgotten only after the claim's
    /// rows were linked, since the claim may have counted on its rows.
    ///
    /// Stops claiming on a transient failure, a database error, cancellation of `token` or at
    /// `deadline`, and returns once the batches in flight are done.
    async fn pump(
        &self,
        token: Option<&CancellationToken>,
        deadline: Option<Instant>,
    ) -> (BatchReport, PumpEnd, Option<Error>) {
        let mut total = BatchReport::default();
        let mut error: Option<Error> = None;
        let mut in_flight = FuturesUnordered::new();
        let mut held = Held::default();
        // After an empty or short claim with batches in flight, the next claim waits for one
        // of them: their rows may be what blocked it (the head rule), and polling in a loop
        // would spin.
        let mut wait_for_batch = false;
        let mut idle = false;
        // The rows in flight stay reserved for as long as they travel: a third of the lease
        // before it runs out, it is renewed (SQLite; a no-op where locks end with their
        // holder), while the batches keep being driven (one may hold the write queue).
        let renew_every = self.config.lease / 3;
        let mut renew_at = Instant::now() + renew_every;
        loop {
            if !held.rows.is_empty() && Instant::now() >= renew_at {
                let mut finished = Vec::new();
                let renew = self.store.renew(&held.rows, self.config.lease);
                let renewed =
                    driving(renew, &mut in_flight, &mut total, &mut error, &mut finished).await;
                if let Err(err) = renewed {
                    tracing::warn!(error = %err, "outbox relay: renewing the lease of the rows in flight failed");
                }
                for keys in finished {
                    held.forget(keys);
                }
                renew_at = Instant::now() + renew_every;
            }
            let stopping = total.transient_error.is_some()
                || error.is_some()
                || token.is_some_and(CancellationToken::is_cancelled)
                || deadline.is_some_and(|d| Instant::now() >= d);
            if !stopping
                && !idle
                && !wait_for_batch
                && in_flight.len() < self.config.batches_in_flight
            {
                // Batches that finish while the claim runs are forgotten only once its rows
                // are linked: the claim was told their rows are held, so a claimed row may
                // have to wait for (or be released because of) one of their outcomes.
                let mut finished = Vec::new();
                let claim = self
                    .store
                    .claim(self.config.batch_size, self.config.lease, &held.rows);
                let claimed =
                    driving(claim, &mut in_flight, &mut total, &mut error, &mut finished).await;
                let finished_meanwhile = !finished.is_empty();
                match claimed {
                    Ok((claim, rows)) if rows.is_empty() => {
                        if let Err(err) = self
                            .store
                            .finish(claim, Vec::new(), self.config.sent_policy())
                            .await
                        {
                            error.get_or_insert(err);
                        }
                        if !in_flight.is_empty() {
                            wait_for_batch = true;
                        } else if !finished_meanwhile {
                            idle = true;
                        }
                        // Else a batch was recorded while this claim read the table: its rows
                        // may have blocked the claim, so claim again before calling it idle.
                    }
                    Ok((claim, rows)) => {
                        if held.rows.is_empty() {
                            // The first rows in flight: leased just now.
                            renew_at = Instant::now() + renew_every;
                        }
                        // A short batch took everything that was due: another claim right
                        // away would come back empty (and on SQLite take the write lock for
                        // nothing). Pipelining pays off under a backlog, where batches are full.
                        wait_for_batch = rows.len() < self.config.batch_size;
                        let (chains, keys) = held.link(rows);
                        in_flight.push(
                            self.publish_and_finish(claim, chains)
                                .map(move |done| (keys, done)),
                        );
                    }
                    Err(err) => {
                        error.get_or_insert(err);
                    }
                }
                for keys in finished {
                    held.forget(keys);
                }
                continue;
            }
            let next = tokio::select! {
                next = in_flight.next() => Some(next),
                () = tokio::time::sleep_until(renew_at), if !held.rows.is_empty() => None,
            };
            match next {
                Some(Some((keys, done))) => {
                    absorb(&mut total, &mut error, done);
                    held.forget(keys);
                    wait_for_batch = false;
                }
                Some(None) => break,
                // Time to renew the lease (at the top of the loop).
                None => {}
            }
        }
        let end = if total.transient_error.is_some() {
            PumpEnd::Transient
        } else if idle {
            PumpEnd::Idle
        } else {
            PumpEnd::Interrupted
        };
        (total, end, error)
    }

    /// Publishes claimed rows and records their outcomes (the claim is released either way).
    async fn publish_and_finish(&self, claim: S::Claim, chains: Vec<Chain>) -> Result<BatchReport> {
        let mut report = BatchReport {
            claimed: chains.iter().map(|c| c.rows.len()).sum(),
            ..BatchReport::default()
        };
        if chains.is_empty() {
            self.store
                .finish(claim, Vec::new(), self.config.sent_policy())
                .await?;
            return Ok(report);
        }
        let outcomes = self.publish_chains(chains, &mut report).await;
        self.store
            .finish(claim, outcomes, self.config.sent_policy())
            .await?;
        if report.sent > 0 {
            metrics::counter!(names::OUTBOX_PUBLISHED).increment(report.sent as u64);
        }
        if report.unrouted > 0 {
            metrics::counter!(names::OUTBOX_UNROUTABLE).increment(report.unrouted as u64);
        }
        Ok(report)
    }

    /// Publishes the chains concurrently, the rows of one chain one after the other.
    async fn publish_chains(
        &self,
        chains: Vec<Chain>,
        report: &mut BatchReport,
    ) -> Vec<(i64, RowOutcome)> {
        let results = join_all(chains.into_iter().map(|chain| self.publish_chain(chain))).await;
        let mut outcomes = Vec::with_capacity(report.claimed);
        for (chain_outcomes, transient, unrouted) in results {
            if report.transient_error.is_none() {
                report.transient_error = transient;
            }
            report.unrouted += unrouted;
            for (id, outcome) in chain_outcomes {
                match &outcome {
                    RowOutcome::Sent => report.sent += 1,
                    RowOutcome::Failed { park: true, .. } => report.parked += 1,
                    RowOutcome::Failed { .. } => report.failed += 1,
                    RowOutcome::Released => report.released += 1,
                }
                outcomes.push((id, outcome));
            }
        }
        outcomes
    }

    /// Publishes one chain: first waits for the subject's rows of earlier batches (if any are
    /// still in flight), then each row after the previous one's confirm, so a failure stops
    /// the subject's chain; finally tells the next batch's chain of the subject whether
    /// everything was confirmed. Also returns the first transient error and how many rows
    /// were confirmed as routed to no queue.
    async fn publish_chain(&self, chain: Chain) -> (Vec<(i64, RowOutcome)>, Option<String>, usize) {
        let Chain { rows, after, done } = chain;
        let mut outcomes = Vec::with_capacity(rows.len());
        let mut transient = None;
        let mut unrouted = 0;
        // A dropped sender (its batch never ran to the end) counts as not confirmed.
        let mut stopped = match after {
            Some(after) => !after.await.unwrap_or(false),
            None => false,
        };
        for row in rows {
            if stopped {
                outcomes.push((row.id, RowOutcome::Released));
                continue;
            }
            let message = match row.message {
                Ok(message) => message,
                Err(reason) => {
                    // A row that cannot be decoded will never publish: park it now.
                    outcomes.push((
                        row.id,
                        self.failure(&row.subject, row.id, row.attempts, reason, true),
                    ));
                    stopped = true;
                    continue;
                }
            };
            let span = relay_span(row.id, &message);
            let published = tokio::time::timeout(
                self.config.publish_timeout,
                self.publisher
                    .publish_routed(message)
                    .instrument(span.clone()),
            )
            .await
            .unwrap_or_else(|_| {
                Err(Error::timeout(
                    "outbox publish",
                    self.config.publish_timeout,
                ))
            });
            match published {
                Ok(routing) => {
                    if routing == Routing::Unrouted {
                        // Its exchange accepts unroutable messages: confirmed is done, even
                        // though nobody subscribes (the span names the exchange and message).
                        unrouted += 1;
                        tracing::debug!(parent: &span, id = row.id,
                            "outbox row published to no queue; its exchange accepts that");
                    }
                    let latency_ms = now_ms().saturating_sub(row.created_at_ms).max(0);
                    metrics::histogram!(names::OUTBOX_PUBLISH_LATENCY)
                        .record(latency_ms as f64 / 1000.0);
                    outcomes.push((row.id, RowOutcome::Sent));
                }
                Err(err) if err.is_transient() || matches!(err.kind(), ErrorKind::Shutdown) => {
                    metrics::counter!(names::OUTBOX_RELAY_ERRORS, names::labels::ERROR_TYPE => "transient")
                        .increment(1);
                    transient = Some(err.to_string());
                    outcomes.push((row.id, RowOutcome::Released));
                    stopped = true;
                }
                Err(err) => {
                    outcomes.push((
                        row.id,
                        self.failure(&row.subject, row.id, row.attempts, err.to_string(), false),
                    ));
                    stopped = true;
                }
            }
        }
        if let Some(done) = done {
            // The next chain of the subject may already be gone (its batch ended): fine.
            let _ = done.send(!stopped);
        }
        (outcomes, transient, unrouted)
    }

    fn failure(
        &self,
        subject: &Option<String>,
        id: i64,
        attempts: i32,
        error: String,
        force_park: bool,
    ) -> RowOutcome {
        let attempts = attempts.saturating_add(1);
        let park =
            force_park || attempts >= i32::try_from(self.config.max_attempts).unwrap_or(i32::MAX);
        metrics::counter!(names::OUTBOX_RELAY_ERRORS, names::labels::ERROR_TYPE => "message")
            .increment(1);
        if park {
            metrics::counter!(names::OUTBOX_PARKED_MESSAGES).increment(1);
            tracing::error!(id, subject = subject.as_deref(), attempts, error = %error, "outbox row parked: it cannot be published");
        } else {
            tracing::warn!(id, subject = subject.as_deref(), attempts, error = %error, "outbox row failed to publish; will retry");
        }
        let delay = retry_delay(&self.config, attempts);
        RowOutcome::Failed {
            attempts,
            error,
            park,
            retry_at_ms: now_ms()
                .saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
        }
    }

    /// Refreshes the pending/parked/oldest-age gauges, and warns when the parked count differs
    /// from `reported` (the count last logged, updated here).
    async fn refresh_stats(&self, reported: &mut i64) {
        match self.store.stats().await {
            Ok(stats) => {
                metrics::gauge!(names::OUTBOX_PENDING).set(stats.pending as f64);
                metrics::gauge!(names::OUTBOX_PARKED).set(stats.parked as f64);
                let age = stats
                    .oldest_pending_ms
                    .map(|t| now_ms().saturating_sub(t).max(0) as f64 / 1000.0)
                    .unwrap_or(0.0);
                metrics::gauge!(names::OUTBOX_OLDEST_PENDING_AGE).set(age);
                if stats.parked != *reported {
                    if stats.parked > 0 {
                        tracing::warn!(
                            parked = stats.parked,
                            previously = *reported,
                            "outbox has parked rows that need attention"
                        );
                    } else {
                        tracing::info!(previously = *reported, "outbox has no parked rows left");
                    }
                    *reported = stats.parked;
                }
            }
            Err(err) => tracing::warn!(error = %err, "outbox relay: reading stats failed"),
        }
    }

    /// Deletes sent rows older than the retention.
    async fn cleanup(&self) {
        if self.config.sent_retention.is_zero() {
            return;
        }
        let cutoff = now_ms().saturating_sub(
            i64::try_from(self.config.sent_retention.as_millis()).unwrap_or(i64::MAX),
        );
        match self.store.purge_sent(cutoff).await {
            Ok(n) if n > 0 => tracing::debug!(deleted = n, "outbox retention"),
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "outbox retention failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::outbox::store::tests::row;

    fn chain_ids(chains: &[Chain]) -> Vec<Vec<i64>> {
        chains
            .iter()
            .map(|c| c.rows.iter().map(|r| r.id).collect())
            .collect()
    }

    #[test]
    fn link_chains_subjects_across_batches_and_forget_releases_them() {
        let mut held = Held::default();
        let (mut first, first_keys) = held.link(vec![
            row(1, Some("a")),
            row(2, Some("b")),
            row(3, Some("a")),
            row(4, None),
        ]);
        assert_eq!(chain_ids(&first), vec![vec![1, 3], vec![2], vec![4]]);
        assert!(
            first.iter().all(|c| c.after.is_none()),
            "nothing in flight before"
        );
        assert!(first[2].done.is_none(), "no subject, nobody waits for it");
        assert_eq!(held.rows, HashSet::from([1, 2, 3, 4]));

        let (mut second, second_keys) = held.link(vec![row(5, Some("a")), row(6, Some("c"))]);
        assert_eq!(chain_ids(&second), vec![vec![5], vec![6]]);
        assert!(second[1].after.is_none(), "c has nothing in flight");
        // a's second chain waits for the first one's outcome.
        let mut after = second[0]
            .after
            .take()
            .expect("linked behind a's first chain");
        assert!(after.try_recv().is_err(), "not resolved yet");
        first[0].done.take().unwrap().send(true).unwrap();
        assert_eq!(after.try_recv(), Ok(true));
        // A chain whose batch is dropped counts as not confirmed.
        let (mut third, third_keys) = held.link(vec![row(7, Some("c"))]);
        drop(second.remove(1));
        assert!(third[0].after.take().unwrap().try_recv().is_err());

        // Batches may be forgotten in any order: a subject's tail stays while any batch
        // with its rows is in flight.
        held.forget(second_keys);
        assert_eq!(held.rows, HashSet::from([1, 2, 3, 4, 7]));
        assert!(
            held.tails.contains_key("a"),
            "a's first batch is still in flight"
        );
        assert!(
            held.tails.contains_key("c"),
            "c's third batch is still in flight"
        );
        let (fourth, fourth_keys) = held.link(vec![row(8, Some("a"))]);
        assert!(
            fourth[0].after.is_some(),
            "linked behind a's chains although the batch a was last linked in is gone"
        );
        held.forget(first_keys);
        assert!(
            !held.tails.contains_key("b"),
            "b's only batch was the first"
        );
        held.forget(third_keys);
        held.forget(fourth_keys);
        assert!(held.rows.is_empty() && held.tails.is_empty());
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let expected_ceilings = [100, 200, 400, 800, 1000, 1000];
        for ceiling in expected_ceilings {
            let d = b.next_delay();
            let ceiling = Duration::from_millis(ceiling);
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "{d:?} not in [{:?}, {ceiling:?}]",
                ceiling / 2
            );
        }
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn row_retry_delay_grows_and_caps() {
        let config = RelayConfig::default()
            .retry_delay(Duration::from_secs(1))
            .backoff_initial(Duration::from_millis(100))
            .backoff_max(Duration::from_secs(5));
        let delays: Vec<u64> = (1..=5).map(|a| retry_delay(&config, a).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 5, 5]);
    }

    #[test]
    fn config_validates_and_deserializes() {
        assert!(RelayConfig::default().validate().is_ok());
        assert!(RelayConfig::default().batch_size(0).validate().is_err());
        assert!(
            RelayConfig::default()
                .batches_in_flight(0)
                .validate()
                .is_err()
        );
        assert!(
            RelayConfig::default()
                .lease(Duration::ZERO)
                .validate()
                .is_err()
        );
        let config: RelayConfig = serde_json::from_str(
            r#"{"batch_size": 50, "poll_interval": "250ms", "sent_retention": "0s"}"#,
        )
        .unwrap();
        assert_eq!(config.batch_size, 50);
        assert_eq!(config.poll_interval, Duration::from_millis(250));
        assert_eq!(config.sent_policy(), SentPolicy::Delete);
        assert_eq!(config.max_attempts, 5);
        assert_eq!(config.batches_in_flight, 4);
    }
}
