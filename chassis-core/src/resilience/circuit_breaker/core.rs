//! The state machine shared by every clone of a breaker: [`CircuitBreakerHandle`].

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::*};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::broadcast;

use super::classifier::Outcome;
use super::config::{CircuitBreakerConfig, Jitter, SlidingWindowType};
use super::window::{CountWindow, FAILED, PRESENT, Padded, SLOW, TimeWindow, Window, WindowCounts};
use crate::metric_catalogue as names;
use crate::resilience::clock::{Clock, ClockSource, CoarseClock};
use crate::{ComponentName, Error};

/// The state of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Calls flow; outcomes are recorded in the sliding window.
    Closed,
    /// Calls are rejected until the open-state wait has elapsed.
    Open,
    /// A bounded number of probe calls flow; their outcomes decide between closed and open.
    HalfOpen,
    /// Opened by [`CircuitBreakerHandle::force_open`]: every call is rejected until
    /// [`CircuitBreakerHandle::reset`] or another forced transition.
    ForcedOpen,
    /// Closed by [`CircuitBreakerHandle::force_closed`]: every call flows and nothing is
    /// recorded in the window until [`CircuitBreakerHandle::reset`] or another forced
    /// transition.
    ForcedClosed,
}

const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;
const FORCED_OPEN: u64 = 3;
const FORCED_CLOSED: u64 = 4;
const STATE_BITS: u32 = 3;
const STATE_MASK: u64 = (1 << STATE_BITS) - 1;

impl State {
    fn from_bits(word: u64) -> Self {
        match word & STATE_MASK {
            CLOSED => Self::Closed,
            OPEN => Self::Open,
            HALF_OPEN => Self::HalfOpen,
            FORCED_OPEN => Self::ForcedOpen,
            _ => Self::ForcedClosed,
        }
    }

    fn bits(self) -> u64 {
        match self {
            Self::Closed => CLOSED,
            Self::Open => OPEN,
            Self::HalfOpen => HALF_OPEN,
            Self::ForcedOpen => FORCED_OPEN,
            Self::ForcedClosed => FORCED_CLOSED,
        }
    }

    /// The value of the `circuit_breaker_state` gauge: closed 0, open 1, half-open 2,
    /// forced-open 3, forced-closed 4.
    pub fn as_gauge(self) -> f64 {
        self.bits() as f64
    }

    /// `closed`, `open`, `half_open`, `forced_open` or `forced_closed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
            Self::ForcedOpen => "forced_open",
            Self::ForcedClosed => "forced_closed",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a transition happened.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum TransitionReason {
    /// The closed-state failure rate (percent) reached the threshold.
    FailureRateExceeded {
        /// Failure rate in percent.
        rate: f32,
    },
    /// The closed-state slow-call rate (percent) reached the threshold.
    SlowCallRateExceeded {
        /// Slow-call rate in percent.
        rate: f32,
    },
    /// The open-state wait elapsed; probes may go through.
    WaitElapsed,
    /// All permitted probes completed below both thresholds.
    ProbesSucceeded,
    /// The probes' failure or slow-call rate reached a threshold.
    ProbesFailed {
        /// Failure rate of the probes in percent.
        failure_rate: f32,
        /// Slow-call rate of the probes in percent.
        slow_call_rate: f32,
    },
    /// The breaker stayed half-open longer than `max_wait_duration_in_half_open_state`.
    HalfOpenTimedOut,
    /// [`CircuitBreakerHandle::force_open`] or [`CircuitBreakerHandle::force_closed`].
    Forced,
    /// [`CircuitBreakerHandle::reset`].
    Reset,
}

/// A state change, as sent to [`CircuitBreakerHandle::subscribe`]rs.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct StateTransition {
    /// The breaker's name.
    pub name: ComponentName,
    /// State before.
    pub from: State,
    /// State after.
    pub to: State,
    /// Why.
    pub reason: TransitionReason,
    /// When `to` is [`State::Open`]: how long it stays open (with backoff, this grows on
    /// repeated trips).
    pub open_for: Option<Duration>,
}

/// The breaker's state and counters at one moment.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CircuitBreakerSnapshot {
    /// Current state.
    pub state: State,
    /// Failure rate in percent of the calls in the window (closed) or of the completed probes
    /// (half-open); `None` while fewer than the minimum number of calls are recorded.
    pub failure_rate: Option<f32>,
    /// Slow-call rate in percent, as `failure_rate`.
    pub slow_call_rate: Option<f32>,
    /// Calls in the window (closed) or completed probes (half-open).
    pub buffered_calls: u64,
    /// Failed calls among them.
    pub failed_calls: u64,
    /// Slow calls among them (successful or not).
    pub slow_calls: u64,
    /// Slow calls among them that also failed.
    pub slow_failed_calls: u64,
    /// Calls rejected since the breaker was created.
    pub not_permitted_calls: u64,
}

/// Validated configuration in the units the hot path uses.
#[derive(Debug)]
struct Settings {
    failure_rate_threshold: f32,
    slow_call_rate_threshold: f32,
    slow_call_nanos: u64,
    minimum_calls: u64,
    wait: Duration,
    permitted_probes: u32,
    max_half_open_nanos: Option<u64>,
    config: CircuitBreakerConfig,
}

#[derive(Debug)]
struct Probes {
    /// Permits not yet handed out.
    available: AtomicU32,
    completed: AtomicU32,
    failed: AtomicU32,
    slow: AtomicU32,
    slow_failed: AtomicU32,
}

struct Transitions {
    backoff: Option<Box<dyn Iterator<Item = Duration> + Send>>,
}

impl fmt::Debug for Transitions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transitions")
            .field("backoff", &self.backoff.is_some())
            .finish()
    }
}

#[derive(Debug)]
struct Metrics {
    state: metrics::Gauge,
    success: metrics::Counter,
    failure: metrics::Counter,
    slow_success: metrics::Counter,
    slow_failure: metrics::Counter,
    not_permitted: metrics::Counter,
}

impl Metrics {
    /// The handles, every catalogued outcome registered at 0 (the state gauge is set by the
    /// caller).
    fn new(name: &ComponentName) -> Self {
        names::preregister(names::CIRCUIT_BREAKER_CALLS, &[(names::labels::NAME, name)]);
        let calls = |outcome: &'static str| metrics::counter!(names::CIRCUIT_BREAKER_CALLS, names::labels::NAME => name.to_string(), names::labels::OUTCOME => outcome);
        Self {
            state: metrics::gauge!(names::CIRCUIT_BREAKER_STATE, names::labels::NAME => name.to_string()),
            success: calls("success"),
            failure: calls("failure"),
            slow_success: calls("slow_success"),
            slow_failure: calls("slow_failure"),
            not_permitted: calls("not_permitted"),
        }
    }
}

/// Everything every clone of the breaker shares.
pub(crate) struct Shared {
    /// State in the low bits, a generation counter above: a permit remembers the word it was
    /// issued under, so outcomes of calls started before a transition are not mixed into the
    /// new state's statistics.
    state: Padded<AtomicU64>,
    /// A failure or slow call was recorded while the window held fewer than the minimum
    /// number of calls: successes must re-evaluate, since they can lift the count over the
    /// minimum while the rate is above the threshold.
    pending_evaluation: Padded<AtomicBool>,
    window: Window,
    open_until: AtomicU64,
    half_open_since: AtomicU64,
    probes: Padded<Probes>,
    not_permitted: Padded<AtomicU64>,
    clock: ClockSource,
    name: ComponentName,
    settings: Settings,
    transitions: Mutex<Transitions>,
    events: broadcast::Sender<StateTransition>,
    metrics: Metrics,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The windows are large arrays of counters: show what they mean instead.
        f.debug_struct("CircuitBreaker")
            .field("name", &self.name)
            .field("state", &self.state())
            .field("config", &self.settings.config)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

/// What a call holds between being let through and being recorded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawPermit {
    word: u64,
    start: u64,
}

impl Shared {
    fn new(config: CircuitBreakerConfig, clock: ClockSource) -> Result<Self, Error> {
        config.validate()?;
        let name = ComponentName::new(&config.name);
        let now = clock.now_nanos();
        let window = match config.sliding_window_type {
            SlidingWindowType::CountBased => {
                Window::Count(CountWindow::new(config.sliding_window_size))
            }
            SlidingWindowType::TimeBased => {
                Window::Time(TimeWindow::new(config.sliding_window_size, now))
            }
        };
        let settings = Settings {
            failure_rate_threshold: config.failure_rate_threshold,
            slow_call_rate_threshold: config.slow_call_rate_threshold,
            slow_call_nanos: duration_nanos(config.slow_call_duration_threshold),
            minimum_calls: u64::from(config.effective_minimum_calls()),
            wait: config.wait_duration_in_open_state,
            permitted_probes: config.permitted_number_of_calls_in_half_open_state,
            max_half_open_nanos: config
                .max_wait_duration_in_half_open_state
                .map(duration_nanos),
            config,
        };
        let metrics = Metrics::new(&name);
        metrics.state.set(State::Closed.as_gauge());
        let (events, _) = broadcast::channel(64);
        Ok(Self {
            state: Padded(AtomicU64::new(CLOSED)),
            pending_evaluation: Padded(AtomicBool::new(false)),
            window,
            open_until: AtomicU64::new(0),
            half_open_since: AtomicU64::new(0),
            probes: Padded(Probes {
                available: AtomicU32::new(0),
                completed: AtomicU32::new(0),
                failed: AtomicU32::new(0),
                slow: AtomicU32::new(0),
                slow_failed: AtomicU32::new(0),
            }),
            not_permitted: Padded(AtomicU64::new(0)),
            clock,
            name,
            transitions: Mutex::new(Transitions { backoff: None }),
            settings,
            events,
            metrics,
        })
    }

    /// Lets a call through or rejects it. Closed state: two atomic loads.
    #[inline]
    pub(crate) fn try_acquire(&self) -> Result<RawPermit, Error> {
        let word = self.state.load(Acquire);
        match word & STATE_MASK {
            CLOSED | FORCED_CLOSED => Ok(RawPermit {
                word,
                start: self.clock.now_nanos(),
            }),
            _ => self.acquire_slow(word),
        }
    }

    #[cold]
    fn acquire_slow(&self, mut word: u64) -> Result<RawPermit, Error> {
        loop {
            let now = self.clock.now_nanos();
            match word & STATE_MASK {
                CLOSED | FORCED_CLOSED => return Ok(RawPermit { word, start: now }),
                OPEN => {
                    let until = self.open_until.load(Acquire);
                    if now < until {
                        return Err(self.reject(Duration::from_nanos(until - now)));
                    }
                    self.transition(word, State::HalfOpen, TransitionReason::WaitElapsed);
                }
                HALF_OPEN => {
                    let taken = self
                        .probes
                        .available
                        .fetch_update(AcqRel, Acquire, |n| n.checked_sub(1));
                    if taken.is_ok() {
                        if self.state.load(Acquire) == word {
                            return Ok(RawPermit { word, start: now });
                        }
                        // The breaker moved on between reading the state and taking the
                        // permit, which may have come from a newer half-open state's pool:
                        // hand it back (at worst one extra probe) so that pool cannot run
                        // dry with an outcome that would be ignored as stale.
                        self.probes.available.fetch_add(1, AcqRel);
                        word = self.state.load(Acquire);
                        continue;
                    }
                    let since = self.half_open_since.load(Acquire);
                    match self.settings.max_half_open_nanos {
                        Some(max) if now.saturating_sub(since) >= max => {
                            self.transition(word, State::Open, TransitionReason::HalfOpenTimedOut);
                        }
                        _ => return Err(self.reject(Duration::ZERO)),
                    }
                }
                _ => return Err(self.reject(self.settings.wait)),
            }
            word = self.state.load(Acquire);
        }
    }

    fn reject(&self, retry_after: Duration) -> Error {
        self.not_permitted.fetch_add(1, Relaxed);
        self.metrics.not_permitted.increment(1);
        Error::circuit_open(self.name, retry_after)
    }

    /// Records the outcome of a call let through by `permit`.
    #[inline]
    pub(crate) fn record(&self, permit: RawPermit, outcome: Outcome) {
        let code = match outcome {
            Outcome::Ignored => {
                self.release(permit);
                return;
            }
            Outcome::Success => PRESENT,
            Outcome::Failure => PRESENT | FAILED,
        };
        let end = self.clock.now_nanos();
        let slow = end.saturating_sub(permit.start) >= self.settings.slow_call_nanos;
        let code = code | if slow { SLOW } else { 0 };
        match (code & FAILED != 0, slow) {
            (false, false) => self.metrics.success.increment(1),
            (true, false) => self.metrics.failure.increment(1),
            (false, true) => self.metrics.slow_success.increment(1),
            (true, true) => self.metrics.slow_failure.increment(1),
        }
        let word = self.state.load(Acquire);
        if word != permit.word {
            // The breaker changed state while the call ran: its outcome belongs to a past
            // state (a forced transition, a reset, another call tripping the breaker).
            return;
        }
        match word & STATE_MASK {
            CLOSED => {
                let expired = self.window.record(code, end);
                if code & (FAILED | SLOW) != 0 || expired || self.pending_evaluation.load(Relaxed) {
                    self.evaluate_closed(word, end);
                }
            }
            HALF_OPEN => self.record_probe(word, code),
            _ => {}
        }
    }

    /// Hands back a permit without recording a call (the call never happened).
    pub(crate) fn release(&self, permit: RawPermit) {
        if permit.word & STATE_MASK == HALF_OPEN && self.state.load(Acquire) == permit.word {
            self.probes.available.fetch_add(1, AcqRel);
        }
    }

    #[cold]
    fn evaluate_closed(&self, word: u64, now: u64) {
        let counts = self.window.counts(now);
        if counts.calls < self.settings.minimum_calls {
            let pending = counts.bad() > 0;
            if self.pending_evaluation.load(Relaxed) != pending {
                self.pending_evaluation.store(pending, Relaxed);
            }
            return;
        }
        if self.pending_evaluation.load(Relaxed) {
            self.pending_evaluation.store(false, Relaxed);
        }
        let (failure_rate, slow_rate) = rates(counts.calls, counts.failed, counts.slow);
        if failure_rate >= self.settings.failure_rate_threshold {
            self.transition(
                word,
                State::Open,
                TransitionReason::FailureRateExceeded { rate: failure_rate },
            );
        } else if slow_rate >= self.settings.slow_call_rate_threshold {
            self.transition(
                word,
                State::Open,
                TransitionReason::SlowCallRateExceeded { rate: slow_rate },
            );
        }
    }

    #[cold]
    fn record_probe(&self, word: u64, code: u8) {
        let p = &self.probes;
        if code & FAILED != 0 {
            p.failed.fetch_add(1, AcqRel);
        }
        if code & SLOW != 0 {
            p.slow.fetch_add(1, AcqRel);
        }
        if code & (FAILED | SLOW) == FAILED | SLOW {
            p.slow_failed.fetch_add(1, AcqRel);
        }
        let completed = p.completed.fetch_add(1, AcqRel) + 1;
        if completed < self.settings.permitted_probes {
            return;
        }
        let (failure_rate, slow_call_rate) = rates(
            u64::from(completed),
            u64::from(p.failed.load(Acquire)),
            u64::from(p.slow.load(Acquire)),
        );
        if failure_rate >= self.settings.failure_rate_threshold
            || slow_call_rate >= self.settings.slow_call_rate_threshold
        {
            self.transition(
                word,
                State::Open,
                TransitionReason::ProbesFailed {
                    failure_rate,
                    slow_call_rate,
                },
            );
        } else {
            self.transition(word, State::Closed, TransitionReason::ProbesSucceeded);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Transitions> {
        // A panic while holding it cannot leave the state word inconsistent (it is published
        // last), so a poisoned lock is still usable.
        self.transitions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves from the state `expected` (word, generation included) to `to`. Does nothing if
    /// another thread moved first. The only place the state word is written.
    fn transition(&self, expected: u64, to: State, reason: TransitionReason) {
        let mut t = self.lock();
        if self.state.load(Acquire) != expected {
            return;
        }
        self.transition_locked(&mut t, expected, to, reason);
    }

    fn transition_locked(
        &self,
        t: &mut Transitions,
        from_word: u64,
        to: State,
        reason: TransitionReason,
    ) {
        let from = State::from_bits(from_word);
        let now = self.clock.now_nanos();
        let mut open_for = None;
        match to {
            State::Open => {
                let wait = self.next_open_wait(t);
                open_for = Some(wait);
                self.open_until
                    .store(now.saturating_add(duration_nanos(wait)), Release);
            }
            State::HalfOpen => {
                let p = &self.probes;
                p.completed.store(0, Release);
                p.failed.store(0, Release);
                p.slow.store(0, Release);
                p.slow_failed.store(0, Release);
                p.available.store(self.settings.permitted_probes, Release);
                self.half_open_since.store(now, Release);
            }
            State::Closed => {
                self.window.reset();
                self.pending_evaluation.store(false, Relaxed);
                // Recovered (or reset): the next trip waits the base duration again.
                t.backoff = None;
            }
            State::ForcedOpen | State::ForcedClosed => {}
        }
        let generation = (from_word >> STATE_BITS).wrapping_add(1);
        self.state
            .store((generation << STATE_BITS) | to.bits(), Release);
        self.metrics.state.set(to.as_gauge());
        match to {
            State::Open | State::ForcedOpen => tracing::warn!(
                breaker = %self.name, %from, %to, ?reason, ?open_for,
                "circuit breaker opened"
            ),
            _ => tracing::info!(
                breaker = %self.name, %from, %to, ?reason,
                "circuit breaker state transition"
            ),
        }
        // No subscriber is not an error.
        let _ = self.events.send(StateTransition {
            name: self.name,
            from,
            to,
            reason,
            open_for,
        });
    }

    fn next_open_wait(&self, t: &mut Transitions) -> Duration {
        let Some(backoff) = self.settings.config.open_state_backoff else {
            return self.settings.wait;
        };
        let iter = t.backoff.get_or_insert_with(|| {
            let (start, max) = (self.settings.wait, backoff.max_wait_duration);
            // Validated: start >= 1 s and max >= start, as failsafe asserts.
            match backoff.jitter {
                Jitter::None => Box::new(failsafe::backoff::exponential(start, max)),
                Jitter::Equal => Box::new(failsafe::backoff::equal_jittered(start, max)),
                Jitter::Full => Box::new(failsafe::backoff::full_jittered(start, max)),
            }
        });
        // failsafe's full jitter can yield zero; never open for less than a second.
        iter.next()
            .unwrap_or(self.settings.wait)
            .max(Duration::from_secs(1))
    }

    fn force(&self, to: State, reason: TransitionReason) {
        let mut t = self.lock();
        let word = self.state.load(Acquire);
        self.transition_locked(&mut t, word, to, reason);
    }

    fn state(&self) -> State {
        State::from_bits(self.state.load(Acquire))
    }

    fn snapshot(&self) -> CircuitBreakerSnapshot {
        let word = self.state.load(Acquire);
        let state = State::from_bits(word);
        let (counts, minimum) = if word & STATE_MASK == HALF_OPEN {
            let p = &self.probes;
            (
                WindowCounts {
                    calls: u64::from(p.completed.load(Acquire)),
                    failed: u64::from(p.failed.load(Acquire)),
                    slow: u64::from(p.slow.load(Acquire)),
                    slow_failed: u64::from(p.slow_failed.load(Acquire)),
                },
                u64::from(self.settings.permitted_probes),
            )
        } else {
            (
                self.window.counts(self.clock.now_nanos()),
                self.settings.minimum_calls,
            )
        };
        let (failure_rate, slow_call_rate) = if counts.calls >= minimum && counts.calls > 0 {
            let (f, s) = rates(counts.calls, counts.failed, counts.slow);
            (Some(f), Some(s))
        } else {
            (None, None)
        };
        CircuitBreakerSnapshot {
            state,
            failure_rate,
            slow_call_rate,
            buffered_calls: counts.calls,
            failed_calls: counts.failed,
            slow_calls: counts.slow,
            slow_failed_calls: counts.slow_failed,
            not_permitted_calls: self.not_permitted.load(Relaxed),
        }
    }
}

fn rates(calls: u64, failed: u64, slow: u64) -> (f32, f32) {
    if calls == 0 {
        return (0.0, 0.0);
    }
    let pct = |n: u64| (n as f64 * 100.0 / calls as f64) as f32;
    (pct(failed), pct(slow))
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A circuit breaker: cheap to clone, every clone is the same breaker.
///
/// The tower layer ([`CircuitBreakerLayer`](super::CircuitBreakerLayer)) wraps one; keep a
/// handle to read its state, force it, or subscribe to its transitions. It can also guard
/// non-tower code directly with [`try_acquire`](Self::try_acquire).
#[derive(Debug, Clone)]
pub struct CircuitBreakerHandle {
    pub(crate) shared: Arc<Shared>,
}

impl CircuitBreakerHandle {
    /// Builds a breaker with the default [`CoarseClock`]. Fails with
    /// [`ErrorKind::InvalidConfig`](crate::ErrorKind::InvalidConfig) if the configuration is
    /// invalid.
    pub fn new(config: CircuitBreakerConfig) -> Result<Self, Error> {
        Self::with_clock(config, CoarseClock)
    }

    /// Builds a breaker reading time from `clock` (e.g. [`TokioClock`](super::TokioClock) in
    /// tests with paused time).
    pub fn with_clock(config: CircuitBreakerConfig, clock: impl Clock) -> Result<Self, Error> {
        Ok(Self {
            shared: Arc::new(Shared::new(config, ClockSource::from_clock(clock))?),
        })
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &CircuitBreakerConfig {
        &self.shared.settings.config
    }

    /// The current state. Open becomes half-open lazily, on the first call after the wait.
    pub fn state(&self) -> State {
        self.shared.state()
    }

    /// State and counters.
    pub fn snapshot(&self) -> CircuitBreakerSnapshot {
        self.shared.snapshot()
    }

    /// Rejects every call until [`reset`](Self::reset) or [`force_closed`](Self::force_closed).
    pub fn force_open(&self) {
        self.shared
            .force(State::ForcedOpen, TransitionReason::Forced);
    }

    /// Lets every call through without recording outcomes until [`reset`](Self::reset) or
    /// [`force_open`](Self::force_open).
    pub fn force_closed(&self) {
        self.shared
            .force(State::ForcedClosed, TransitionReason::Forced);
    }

    /// Back to closed with an empty window and the backoff restarted (also leaves a forced
    /// state).
    pub fn reset(&self) {
        self.shared.force(State::Closed, TransitionReason::Reset);
    }

    /// Receives every state transition from now on (a bounded broadcast: a receiver more than
    /// 64 events behind sees `RecvError::Lagged`).
    pub fn subscribe(&self) -> broadcast::Receiver<StateTransition> {
        self.shared.events.subscribe()
    }

    /// Asks to make one call: either a permit, or a
    /// [`ErrorKind::CircuitOpen`](crate::ErrorKind::CircuitOpen) error. Record the call's
    /// outcome on the permit.
    ///
    /// ```
    /// use chassis_core::resilience::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerHandle, Outcome};
    ///
    /// let breaker = CircuitBreakerHandle::new(CircuitBreakerConfig::new("db")).unwrap();
    /// match breaker.try_acquire() {
    ///     Ok(permit) => {
    ///         let ok = true; // make the call
    ///         permit.record(if ok { Outcome::Success } else { Outcome::Failure });
    ///     }
    ///     Err(rejected) => println!("not calling: {rejected}"),
    /// }
    /// ```
    #[inline]
    pub fn try_acquire(&self) -> Result<CallPermit<'_>, Error> {
        let raw = self.shared.try_acquire()?;
        Ok(CallPermit {
            shared: &self.shared,
            raw: Some(raw),
        })
    }
}

/// Permission for one call, from [`CircuitBreakerHandle::try_acquire`].
///
/// Record the outcome with [`record`](Self::record). Dropping it unrecorded hands the permit
/// back without recording anything (as [`Outcome::Ignored`]); to count an abandoned call, record
/// it as a failure.
#[derive(Debug)]
#[must_use = "record the call's outcome on the permit"]
pub struct CallPermit<'a> {
    shared: &'a Shared,
    raw: Option<RawPermit>,
}

impl CallPermit<'_> {
    /// Records the call's outcome; its duration (since `try_acquire`) decides whether it was
    /// slow.
    #[inline]
    pub fn record(mut self, outcome: Outcome) {
        if let Some(raw) = self.raw.take() {
            self.shared.record(raw, outcome);
        }
    }
}

impl Drop for CallPermit<'_> {
    fn drop(&mut self) {
        if let Some(raw) = self.raw.take() {
            self.shared.release(raw);
        }
    }
}
