//! [`CircuitBreakerConfig`]: what an operator tunes, with Resilience4j's defaults.

use std::time::Duration;

use serde::Deserialize;

use crate::Error;

/// Largest accepted count-based window (calls) and time-based window (seconds).
const MAX_COUNT_WINDOW: u32 = 1 << 20;
const MAX_TIME_WINDOW_SECS: u32 = 3600;

/// How the closed-state window measures "recent" calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlidingWindowType {
    /// The last `sliding_window_size` calls.
    #[default]
    CountBased,
    /// The calls that completed in the last `sliding_window_size` seconds, in one-second buckets.
    TimeBased,
}

/// Jitter applied to the growing open-state wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Jitter {
    /// No jitter: `wait, 2·wait, 4·wait, …` up to the maximum.
    None,
    /// Half of the exponential value plus a random amount up to the other half
    /// ([`failsafe::backoff::equal_jittered`]).
    #[default]
    Equal,
    /// A random amount between zero and the exponential value
    /// ([`failsafe::backoff::full_jittered`]).
    Full,
}

/// Growing open-state wait on repeated trips (open → half-open → open …).
///
/// The n-th consecutive trip waits `wait_duration_in_open_state · 2ⁿ⁻¹`, capped at
/// `max_wait_duration`, jittered as configured; a successful recovery (half-open → closed)
/// starts over. The sequence comes from [`failsafe::backoff`], which works in whole seconds: the
/// base wait must then be at least one second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenStateBackoff {
    /// Upper bound of the wait.
    #[serde(with = "humantime_serde")]
    pub max_wait_duration: Duration,
    /// Jitter. Defaults to [`Jitter::Equal`].
    #[serde(default)]
    pub jitter: Jitter,
}

impl OpenStateBackoff {
    /// Exponential growth up to `max_wait_duration` with equal jitter.
    pub fn new(max_wait_duration: Duration) -> Self {
        Self {
            max_wait_duration,
            jitter: Jitter::Equal,
        }
    }

    crate::__builder_setters! {
        /// Sets the jitter. Defaults to [`Jitter::Equal`].
        jitter: Jitter,
    }
}

/// Configuration of a circuit breaker.
///
/// Defaults are Resilience4j's: failure-rate threshold 50 %, slow-call-rate threshold 100 %,
/// slow-call duration 60 s, count-based window of 100 calls, minimum 100 calls, 60 s open-state
/// wait without backoff, 10 permitted calls in half-open state, no half-open time limit.
///
/// Build it with the consuming setters or deserialize it (durations as humantime strings):
///
/// ```
/// use chassis_core::resilience::circuit_breaker::{CircuitBreakerConfig, SlidingWindowType};
/// use std::time::Duration;
///
/// let from_code = CircuitBreakerConfig::new("payments")
///     .sliding_window(SlidingWindowType::TimeBased, 10)
///     .minimum_number_of_calls(20)
///     .wait_duration_in_open_state(Duration::from_secs(30));
///
/// let from_file: CircuitBreakerConfig = toml::from_str(r#"
///     name = "payments"
///     sliding_window_type = "time_based"
///     sliding_window_size = 10
///     minimum_number_of_calls = 20
///     wait_duration_in_open_state = "30s"
/// "#).unwrap();
/// assert_eq!(from_code, from_file);
/// assert!(from_file.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    pub(crate) name: String,
    pub(crate) failure_rate_threshold: f32,
    pub(crate) slow_call_rate_threshold: f32,
    #[serde(with = "humantime_serde")]
    pub(crate) slow_call_duration_threshold: Duration,
    pub(crate) sliding_window_type: SlidingWindowType,
    pub(crate) sliding_window_size: u32,
    pub(crate) minimum_number_of_calls: u32,
    #[serde(with = "humantime_serde")]
    pub(crate) wait_duration_in_open_state: Duration,
    pub(crate) open_state_backoff: Option<OpenStateBackoff>,
    pub(crate) permitted_number_of_calls_in_half_open_state: u32,
    #[serde(with = "humantime_serde::option")]
    pub(crate) max_wait_duration_in_half_open_state: Option<Duration>,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            name: "default".to_owned(),
            failure_rate_threshold: 50.0,
            slow_call_rate_threshold: 100.0,
            slow_call_duration_threshold: Duration::from_secs(60),
            sliding_window_type: SlidingWindowType::CountBased,
            sliding_window_size: 100,
            minimum_number_of_calls: 100,
            wait_duration_in_open_state: Duration::from_secs(60),
            open_state_backoff: None,
            permitted_number_of_calls_in_half_open_state: 10,
            max_wait_duration_in_half_open_state: None,
        }
    }
}

impl CircuitBreakerConfig {
    /// The default configuration with the breaker called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self::default().name(name)
    }

    crate::__builder_setters! {
        /// Name of the breaker, used in errors, events, logs and metric labels. Defaults to
        /// `"default"`.
        name: into String,
    }

    /// The configured name.
    pub fn get_name(&self) -> &str {
        &self.name
    }

    crate::__builder_setters! {
        /// Failure rate, in percent (0 < x ≤ 100), at or above which the breaker opens.
        /// Defaults to 50.
        failure_rate_threshold(percent): f32,
        /// Rate of slow calls, in percent (0 < x ≤ 100), at or above which the breaker opens.
        /// Defaults to 100.
        slow_call_rate_threshold(percent): f32,
        /// Calls taking at least this long count as slow. Defaults to 60 s.
        slow_call_duration_threshold(duration): Duration,
    }

    /// Window type and size (calls for [`SlidingWindowType::CountBased`], seconds for
    /// [`SlidingWindowType::TimeBased`]). Defaults to count-based, 100.
    pub fn sliding_window(mut self, kind: SlidingWindowType, size: u32) -> Self {
        self.sliding_window_type = kind;
        self.sliding_window_size = size;
        self
    }

    crate::__builder_setters! {
        /// Calls the window must hold before the rates are evaluated. Defaults to 100. For a
        /// count-based window a value above the window size is lowered to it (as in Resilience4j).
        minimum_number_of_calls(calls): u32,
        /// How long the breaker stays open before letting probes through. Defaults to 60 s.
        wait_duration_in_open_state(wait): Duration,
        /// Lets the open-state wait grow on repeated trips. Defaults to none (constant wait).
        open_state_backoff(backoff): Some(OpenStateBackoff),
        /// How many probe calls half-open state lets through; further calls are rejected until
        /// the probes decide. Defaults to 10.
        permitted_number_of_calls_in_half_open_state(calls): u32,
        /// If set, a breaker half-open for longer than this (its probes did not all complete) opens
        /// again on the next call. Defaults to none (wait for the probes; a dropped probe still
        /// counts, so the breaker cannot get stuck).
        max_wait_duration_in_half_open_state(wait): Some(Duration),
    }

    /// Checks every value; [`ErrorKind::InvalidConfig`](crate::ErrorKind::InvalidConfig) says
    /// which one is wrong.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |reason: String| {
            Err(Error::invalid_config(format!(
                "circuit breaker '{}': {reason}",
                self.name
            )))
        };
        let percent_ok = |p: f32| p.is_finite() && p > 0.0 && p <= 100.0;
        if self.name.is_empty() {
            return invalid("name must not be empty".into());
        }
        if !percent_ok(self.failure_rate_threshold) {
            return invalid(format!(
                "failure_rate_threshold must be in (0, 100], got {}",
                self.failure_rate_threshold
            ));
        }
        if !percent_ok(self.slow_call_rate_threshold) {
            return invalid(format!(
                "slow_call_rate_threshold must be in (0, 100], got {}",
                self.slow_call_rate_threshold
            ));
        }
        if self.slow_call_duration_threshold.is_zero() {
            return invalid("slow_call_duration_threshold must be positive".into());
        }
        let max = match self.sliding_window_type {
            SlidingWindowType::CountBased => MAX_COUNT_WINDOW,
            SlidingWindowType::TimeBased => MAX_TIME_WINDOW_SECS,
        };
        if self.sliding_window_size == 0 || self.sliding_window_size > max {
            return invalid(format!(
                "sliding_window_size must be in 1..={max} for {:?}, got {}",
                self.sliding_window_type, self.sliding_window_size
            ));
        }
        if self.minimum_number_of_calls == 0 {
            return invalid("minimum_number_of_calls must be at least 1".into());
        }
        if self.wait_duration_in_open_state.is_zero() {
            return invalid("wait_duration_in_open_state must be positive".into());
        }
        if let Some(backoff) = &self.open_state_backoff {
            // failsafe's backoff works in whole seconds and asserts these; check them here so
            // building a breaker never panics.
            if self.wait_duration_in_open_state < Duration::from_secs(1) {
                return invalid(
                    "open_state_backoff needs wait_duration_in_open_state >= 1s".into(),
                );
            }
            if backoff.max_wait_duration < self.wait_duration_in_open_state {
                return invalid(
                    "open_state_backoff.max_wait_duration must be >= wait_duration_in_open_state"
                        .into(),
                );
            }
        }
        if self.permitted_number_of_calls_in_half_open_state == 0 {
            return invalid(
                "permitted_number_of_calls_in_half_open_state must be at least 1".into(),
            );
        }
        if self.max_wait_duration_in_half_open_state == Some(Duration::ZERO) {
            return invalid(
                "max_wait_duration_in_half_open_state must be positive when set".into(),
            );
        }
        Ok(())
    }

    /// The minimum number of calls after Resilience4j's lowering to the window size.
    pub(crate) fn effective_minimum_calls(&self) -> u32 {
        match self.sliding_window_type {
            SlidingWindowType::CountBased => {
                self.minimum_number_of_calls.min(self.sliding_window_size)
            }
            SlidingWindowType::TimeBased => self.minimum_number_of_calls,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_resilience4j_defaults() {
        let c = CircuitBreakerConfig::default();
        assert_eq!(c.failure_rate_threshold, 50.0);
        assert_eq!(c.slow_call_rate_threshold, 100.0);
        assert_eq!(c.slow_call_duration_threshold, Duration::from_secs(60));
        assert_eq!(c.sliding_window_type, SlidingWindowType::CountBased);
        assert_eq!(c.sliding_window_size, 100);
        assert_eq!(c.minimum_number_of_calls, 100);
        assert_eq!(c.wait_duration_in_open_state, Duration::from_secs(60));
        assert_eq!(c.permitted_number_of_calls_in_half_open_state, 10);
        assert!(c.open_state_backoff.is_none());
        assert!(c.validate().is_ok());
    }

    #[test]
    fn invalid_values_are_errors_not_panics() {
        let bad = [
            CircuitBreakerConfig::default().failure_rate_threshold(0.0),
            CircuitBreakerConfig::default().failure_rate_threshold(101.0),
            CircuitBreakerConfig::default().slow_call_rate_threshold(f32::NAN),
            CircuitBreakerConfig::default().sliding_window(SlidingWindowType::CountBased, 0),
            CircuitBreakerConfig::default().sliding_window(SlidingWindowType::TimeBased, 100_000),
            CircuitBreakerConfig::default().minimum_number_of_calls(0),
            CircuitBreakerConfig::default().wait_duration_in_open_state(Duration::ZERO),
            CircuitBreakerConfig::default().permitted_number_of_calls_in_half_open_state(0),
            CircuitBreakerConfig::default().name(""),
            CircuitBreakerConfig::default()
                .wait_duration_in_open_state(Duration::from_millis(500))
                .open_state_backoff(OpenStateBackoff::new(Duration::from_secs(10))),
            CircuitBreakerConfig::default()
                .open_state_backoff(OpenStateBackoff::new(Duration::from_secs(10))),
        ];
        for config in bad {
            let err = config.validate().expect_err("must be rejected");
            assert!(
                matches!(err.kind(), crate::ErrorKind::InvalidConfig { .. }),
                "{err}"
            );
        }
    }

    #[test]
    fn deserializes_with_humantime_durations() {
        let c: CircuitBreakerConfig = serde_json::from_str(
            r#"{"name":"x","slow_call_duration_threshold":"250ms",
                "open_state_backoff":{"max_wait_duration":"5m","jitter":"full"},
                "max_wait_duration_in_half_open_state":"10s"}"#,
        )
        .unwrap();
        assert_eq!(c.slow_call_duration_threshold, Duration::from_millis(250));
        assert_eq!(
            c.open_state_backoff,
            Some(OpenStateBackoff::new(Duration::from_secs(300)).jitter(Jitter::Full))
        );
        assert_eq!(
            c.max_wait_duration_in_half_open_state,
            Some(Duration::from_secs(10))
        );
        assert!(serde_json::from_str::<CircuitBreakerConfig>(r#"{"typo":1}"#).is_err());
    }

    #[test]
    fn minimum_calls_lowered_to_count_window() {
        let c = CircuitBreakerConfig::default().sliding_window(SlidingWindowType::CountBased, 10);
        assert_eq!(c.effective_minimum_calls(), 10);
        let c = CircuitBreakerConfig::default().sliding_window(SlidingWindowType::TimeBased, 10);
        assert_eq!(c.effective_minimum_calls(), 100);
    }
}
