//! The relay: the background task that moves committed outbox rows to the broker.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use futures_util::future::join_all;
use futures_util::stream::FuturesUnordered;
use rand::Rng;
use serde::Deserialize;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use chassis_observability::propagation::extract_with_context;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::metrics as names;
use super::store::{OutboxStore, PendingRow, RowOutcome, SentPolicy, now_ms};
use crate::error::{Error, ErrorKind, Result};
use crate::headers::HeaderMapExtractor;
use crate::message::OutgoingMessage;
use crate::publisher::Publish;

/// How a [`Relay`] batches, waits, retries and cleans up. Every field has a default; it is
/// `Deserialize` (durations in humantime form, `"500ms"`), so it can come from a config file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Rows claimed and published per batch. Defaults to 200.
    pub batch_size: usize,
    /// Batches in flight at once (claimed and not yet recorded). With 2, the next batch is
    /// claimed and published while the previous one's confirms and bookkeeping are still under
    /// way, so the broker's confirm pipeline never drains at a batch boundary. 1 processes one
    /// batch at a time. On PostgreSQL each batch in flight holds one pool connection (its
    /// open transaction) until it is recorded. Defaults to 2.
    pub batches_in_flight: usize,
    /// Polling interval when no commit notification arrives. Defaults to 500 ms.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Deadline of one publish (until the broker confirms). Defaults to 10 s.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// Failed attempts (non-transient errors only: unroutable, undecodable) after which a row
    /// is parked. Defaults to 5.
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
    /// the rows over (the reserving relay is presumed dead). Must exceed `publish_timeout`.
    /// PostgreSQL uses row locks instead. Defaults to 30 s.
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
            batches_in_flight: 2,
            poll_interval: Duration::from_millis(500),
            publish_timeout: Duration::from_secs(10),
            max_attempts: 5,
            retry_delay: Duration::from_secs(1),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            lease: Duration::from_secs(30),
            sent_retention: Duration::from_secs(3600),
            cleanup_interval: Duration::from_secs(60),
            stats_interval: Duration::from_secs(5),
        }
    }
}

impl RelayConfig {
    /// Sets [`batch_size`](Self::batch_size).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n;
        self
    }
    /// Sets [`batches_in_flight`](Self::batches_in_flight).
    pub fn batches_in_flight(mut self, n: usize) -> Self {
        self.batches_in_flight = n;
        self
    }
    /// Sets [`poll_interval`](Self::poll_interval).
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }
    /// Sets [`publish_timeout`](Self::publish_timeout).
    pub fn publish_timeout(mut self, d: Duration) -> Self {
        self.publish_timeout = d;
        self
    }
    /// Sets [`max_attempts`](Self::max_attempts).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }
    /// Sets [`retry_delay`](Self::retry_delay).
    pub fn retry_delay(mut self, d: Duration) -> Self {
        self.retry_delay = d;
        self
    }
    /// Sets [`backoff_initial`](Self::backoff_initial) and [`backoff_max`](Self::backoff_max).
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max;
        self
    }
    /// Sets [`lease`](Self::lease).
    pub fn lease(mut self, d: Duration) -> Self {
        self.lease = d;
        self
    }
    /// Sets [`sent_retention`](Self::sent_retention).
    pub fn sent_retention(mut self, d: Duration) -> Self {
        self.sent_retention = d;
        self
    }
    /// Sets [`cleanup_interval`](Self::cleanup_interval).
    pub fn cleanup_interval(mut self, d: Duration) -> Self {
        self.cleanup_interval = d;
        self
    }
    /// Sets [`stats_interval`](Self::stats_interval).
    pub fn stats_interval(mut self, d: Duration) -> Self {
        self.stats_interval = d;
        self
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
        ] {
            if d.is_zero() {
                return bad(&format!("{name} must be positive"));
            }
        }
        if self.backoff_max < self.backoff_initial {
            return bad("backoff_max must be at least backoff_initial");
        }
        if self.lease <= self.publish_timeout {
            return bad("lease must exceed publish_timeout");
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

/// Adds one finished batch to the pump's running totals.
fn absorb(total: &mut BatchReport, error: &mut Option<Error>, done: Result<BatchReport>) {
    match done {
        Ok(report) => total.absorb(report),
        Err(err) => {
            error.get_or_insert(err);
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
/// duplicate with the same `message_id`, which the consumer's [`Inbox`](crate::inbox::Inbox)
/// absorbs.
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
    /// # Errors
    /// [`ErrorKind::InvalidConfig`] when `config` does not [`validate`](RelayConfig::validate).
    pub fn new(store: S, publisher: Arc<P>, config: RelayConfig) -> Result<Self> {
        config.validate()?;
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
    /// flight, then returns). Register the handle with the service's shutdown tracker.
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
        let mut next_cleanup = Instant::now() + self.config.cleanup_interval;
        while !token.is_cancelled() {
            let now = Instant::now();
            if now >= next_stats {
                self.refresh_stats().await;
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
                    metrics::counter!(names::OUTBOX_RELAY_ERRORS, names::ERROR_TYPE => "database")
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
    ///
    /// # Errors
    /// [`ErrorKind::Database`] when the store failed (nothing was marked; rows stay pending).
    pub async fn run_once(&self) -> Result<BatchReport> {
        let (claim, rows) = self
            .store
            .claim(self.config.batch_size, self.config.lease)
            .await?;
        self.publish_and_finish(claim, rows).await
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
    /// transaction), and those rows stay `pending` until the batch is recorded. A claim only
    /// takes a row when every earlier pending row of its subject is in the same claim (the
    /// head rule of [`OutboxStore::claim`]), so the next batch never contains a row whose
    /// subject still has a row in flight: it is claimed only after the earlier row was
    /// confirmed and recorded. A failure leaves rows pending and is handled per batch as with
    /// one batch at a time. Claims happen one after the other, each while the batches in
    /// flight keep being driven (they may need the pool's connections to finish).
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
        // After an empty or short claim with batches in flight, the next claim waits for one
        // of them: their rows may be what blocked it (the head rule), and polling in a loop
        // would spin.
        let mut wait_for_batch = false;
        let mut idle = false;
        loop {
            let stopping = total.transient_error.is_some()
                || error.is_some()
                || token.is_some_and(CancellationToken::is_cancelled)
                || deadline.is_some_and(|d| Instant::now() >= d);
            if !stopping
                && !idle
                && !wait_for_batch
                && in_flight.len() < self.config.batches_in_flight
            {
                let claim = self.store.claim(self.config.batch_size, self.config.lease);
                tokio::pin!(claim);
                let mut finished_meanwhile = false;
                let claimed = loop {
                    tokio::select! {
                        biased;
                        claimed = &mut claim => break claimed,
                        Some(done) = in_flight.next() => {
                            absorb(&mut total, &mut error, done);
                            finished_meanwhile = true;
                        }
                    }
                };
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
                        // A short batch took everything that was due: another claim right
                        // away would come back empty (and on SQLite take the write lock for
                        // nothing). Pipelining pays off under a backlog, where batches are full.
                        wait_for_batch = rows.len() < self.config.batch_size;
                        in_flight.push(self.publish_and_finish(claim, rows));
                    }
                    Err(err) => {
                        error.get_or_insert(err);
                    }
                }
                continue;
            }
            match in_flight.next().await {
                Some(done) => {
                    absorb(&mut total, &mut error, done);
                    wait_for_batch = false;
                }
                None => break,
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
    async fn publish_and_finish(
        &self,
        claim: S::Claim,
        rows: Vec<PendingRow>,
    ) -> Result<BatchReport> {
        let mut report = BatchReport {
            claimed: rows.len(),
            ..BatchReport::default()
        };
        if rows.is_empty() {
            self.store
                .finish(claim, Vec::new(), self.config.sent_policy())
                .await?;
            return Ok(report);
        }
        let outcomes = self.publish_rows(rows, &mut report).await;
        self.store
            .finish(claim, outcomes, self.config.sent_policy())
            .await?;
        if report.sent > 0 {
            metrics::counter!(names::OUTBOX_PUBLISHED).increment(report.sent as u64);
        }
        Ok(report)
    }

    /// Publishes the rows: subjects concurrently, the rows of one subject one after the other
    /// (each waits for the previous one's confirm, so a failure stops the subject's chain).
    async fn publish_rows(
        &self,
        rows: Vec<PendingRow>,
        report: &mut BatchReport,
    ) -> Vec<(i64, RowOutcome)> {
        let mut chains: Vec<Vec<PendingRow>> = Vec::new();
        let mut by_subject: HashMap<String, usize> = HashMap::new();
        for row in rows {
            match row.subject.clone() {
                Some(subject) => match by_subject.get(&subject) {
                    Some(&i) => chains[i].push(row),
                    None => {
                        by_subject.insert(subject, chains.len());
                        chains.push(vec![row]);
                    }
                },
                None => chains.push(vec![row]),
            }
        }
        let results = join_all(chains.into_iter().map(|chain| self.publish_chain(chain))).await;
        let mut outcomes = Vec::new();
        for (chain_outcomes, transient) in results {
            if report.transient_error.is_none() {
                report.transient_error = transient;
            }
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

    async fn publish_chain(
        &self,
        chain: Vec<PendingRow>,
    ) -> (Vec<(i64, RowOutcome)>, Option<String>) {
        let mut outcomes = Vec::with_capacity(chain.len());
        let mut transient = None;
        let mut stopped = false;
        for row in chain {
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
                self.publisher.publish(message).instrument(span),
            )
            .await
            .unwrap_or_else(|_| {
                Err(Error::timeout(
                    "outbox publish",
                    self.config.publish_timeout,
                ))
            });
            match published {
                Ok(()) => {
                    let latency_ms = now_ms().saturating_sub(row.created_at_ms).max(0);
                    metrics::histogram!(names::OUTBOX_PUBLISH_LATENCY)
                        .record(latency_ms as f64 / 1000.0);
                    outcomes.push((row.id, RowOutcome::Sent));
                }
                Err(err) if err.is_transient() || matches!(err.kind(), ErrorKind::Shutdown) => {
                    metrics::counter!(names::OUTBOX_RELAY_ERRORS, names::ERROR_TYPE => "transient")
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
        (outcomes, transient)
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
        metrics::counter!(names::OUTBOX_RELAY_ERRORS, names::ERROR_TYPE => "message").increment(1);
        if park {
            metrics::counter!(names::OUTBOX_PARKED_TOTAL).increment(1);
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

    /// Refreshes the pending/parked/oldest-age gauges.
    async fn refresh_stats(&self) {
        match self.store.stats().await {
            Ok(stats) => {
                metrics::gauge!(names::OUTBOX_PENDING).set(stats.pending as f64);
                metrics::gauge!(names::OUTBOX_PARKED).set(stats.parked as f64);
                let age = stats
                    .oldest_pending_ms
                    .map(|t| now_ms().saturating_sub(t).max(0) as f64 / 1000.0)
                    .unwrap_or(0.0);
                metrics::gauge!(names::OUTBOX_OLDEST_PENDING_AGE).set(age);
                if stats.parked > 0 {
                    tracing::warn!(
                        parked = stats.parked,
                        "outbox has parked rows that need attention"
                    );
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
            .backoff(Duration::from_millis(100), Duration::from_secs(5));
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
                .lease(Duration::from_secs(1))
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
        assert_eq!(config.batches_in_flight, 2);
    }
}
