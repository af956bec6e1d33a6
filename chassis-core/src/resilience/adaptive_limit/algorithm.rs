//! How the limit moves: the estimators behind [`LimitAlgorithm`].
//!
//! Both follow Netflix's `concurrency-limits`: a sample is one finished call's round-trip time,
//! the number of calls in flight when it started, and whether it was *dropped* (timed out).
//! A limit only grows while it is used (at least half of it in flight), so an idle service
//! does not drift to the maximum and then collapse under the first burst.

use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

/// The algorithm that derives the limit from observed latency.
///
/// Deserializes from `{ kind = "vegas" }` or `{ kind = "aimd", backoff_ratio = 0.8 }`; every
/// parameter has a default.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum LimitAlgorithm {
    /// TCP Vegas applied to calls: the queue a limit builds is estimated as
    /// `limit * (1 - rtt_noload / rtt)`, where `rtt_noload` is the round-trip time without
    /// queueing. Below `alpha` queued calls the limit grows, above `beta` it shrinks, in
    /// between it holds, so it settles a few calls above the downstream's true capacity
    /// (`alpha`..`beta` times `log10(limit)`, at least 1). Growth is by `beta` steps while
    /// nothing queues; far above `beta`, half the excess is shed at once. A drop shrinks it
    /// by `log10(limit)`.
    ///
    /// The limit moves once per `window` samples of calls admitted since it last moved, on
    /// their lowest round-trip time (one call's latency is too noisy to say whether a queue
    /// formed, and the average would read the downstream's own spread as a queue).
    ///
    /// `rtt_noload` is the lowest round-trip time seen; every `probe_multiplier * limit`
    /// samples the limit is halved for two rounds of samples to measure it again without
    /// queueing (as BBR's ProbeRTT does), so a dependency that became permanently slower
    /// is re-baselined instead of being starved.
    Vegas {
        /// Queue size (in `log10(limit)` units) below which the limit grows. Defaults to 3.
        #[serde(default = "default_alpha")]
        alpha: f64,
        /// Queue size (in `log10(limit)` units) above which the limit shrinks. Defaults to 6.
        #[serde(default = "default_beta")]
        beta: f64,
        /// Samples between two no-load probes, as a multiple of the limit. Defaults to 30;
        /// 0 never probes.
        #[serde(default = "default_probe_multiplier")]
        probe_multiplier: usize,
        /// Samples per limit update. Defaults to 10; must be at least 1.
        #[serde(default = "default_window")]
        window: usize,
    },
    /// Additive increase, multiplicative decrease: +1 per round trip of the limit (`1 / limit`
    /// per sample) while the limit is used, times `backoff_ratio` on a drop or a sample slower
    /// than `latency_threshold`. Calls admitted before a decrease do not decrease it again:
    /// they were admitted under the old limit and say nothing about the new one.
    Aimd {
        /// Factor applied to the limit on a drop. Defaults to 0.9; must be in (0.5, 1).
        #[serde(default = "default_backoff_ratio")]
        backoff_ratio: f64,
        /// A call slower than this counts as a drop. Defaults to none (only timeouts drop).
        #[serde(default, with = "humantime_serde")]
        latency_threshold: Option<Duration>,
    },
}

fn default_alpha() -> f64 {
    3.0
}
fn default_beta() -> f64 {
    6.0
}
fn default_probe_multiplier() -> usize {
    30
}
fn default_window() -> usize {
    10
}
fn default_backoff_ratio() -> f64 {
    0.9
}

impl Default for LimitAlgorithm {
    fn default() -> Self {
        Self::vegas()
    }
}

impl LimitAlgorithm {
    /// Vegas with its defaults.
    pub fn vegas() -> Self {
        Self::Vegas {
            alpha: default_alpha(),
            beta: default_beta(),
            probe_multiplier: default_probe_multiplier(),
            window: default_window(),
        }
    }

    /// AIMD with its defaults.
    pub fn aimd() -> Self {
        Self::Aimd {
            backoff_ratio: default_backoff_ratio(),
            latency_threshold: None,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        match self {
            Self::Vegas {
                alpha,
                beta,
                window,
                ..
            } => {
                if !(*alpha > 0.0 && beta > alpha) {
                    return Err(format!(
                        "vegas needs 0 < alpha < beta (alpha {alpha}, beta {beta})"
                    ));
                }
                if *window == 0 {
                    return Err("vegas window must be at least 1".into());
                }
            }
            Self::Aimd { backoff_ratio, .. } => {
                if !(*backoff_ratio > 0.5 && *backoff_ratio < 1.0) {
                    return Err(format!(
                        "aimd backoff_ratio must be in (0.5, 1), not {backoff_ratio}"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// One finished call, as the estimator sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sample {
    pub(crate) rtt: Duration,
    /// Calls in flight when this one started (itself included).
    pub(crate) in_flight: usize,
    pub(crate) dropped: bool,
    /// When the call was admitted.
    pub(crate) started: Instant,
}

/// `log10(limit)`, at least 1: the step size of Vegas.
fn log10_at_least_one(limit: f64) -> f64 {
    limit.log10().floor().max(1.0)
}

/// The limit and the algorithm's memory.
#[derive(Debug)]
pub(crate) struct Estimator {
    algorithm: LimitAlgorithm,
    limit: f64,
    min: f64,
    max: f64,
    /// Vegas: the round-trip time without queueing, in nanoseconds (0 until the first sample).
    rtt_noload: u64,
    /// Vegas: samples since the last probe.
    since_probe: usize,
    /// Vegas: a probe in progress (limit to restore, samples left, lowest RTT seen).
    probe: Option<Probe>,
    /// Vegas: the samples of the window being filled.
    window: Window,
    /// AIMD: when the limit was last decreased. Vegas: when it last changed.
    changed_at: Option<Instant>,
}

/// Samples gathered until the next update.
#[derive(Debug, Default, Clone, Copy)]
struct Window {
    count: usize,
    rtt_min: u64,
    in_flight_max: usize,
    dropped: bool,
}

#[derive(Debug, Clone, Copy)]
struct Probe {
    restore: f64,
    left: usize,
    lowest: u64,
}

impl Estimator {
    pub(crate) fn new(algorithm: LimitAlgorithm, initial: usize, min: usize, max: usize) -> Self {
        Self {
            algorithm,
            limit: initial as f64,
            min: min as f64,
            max: max as f64,
            rtt_noload: 0,
            since_probe: 0,
            probe: None,
            window: Window::default(),
            changed_at: None,
        }
    }

    /// The limit as callers are admitted by it.
    pub(crate) fn limit(&self) -> usize {
        self.limit as usize
    }

    /// Takes one sample, finished at `now`, and returns the new limit.
    pub(crate) fn on_sample(&mut self, sample: Sample, now: Instant) -> usize {
        let limit = match self.algorithm {
            LimitAlgorithm::Aimd {
                backoff_ratio,
                latency_threshold,
            } => {
                let slow = latency_threshold.is_some_and(|t| sample.rtt > t);
                if sample.dropped || slow {
                    if self.changed_at.is_some_and(|at| sample.started < at) {
                        self.limit
                    } else {
                        self.changed_at = Some(now);
                        (self.limit * backoff_ratio).floor()
                    }
                } else if sample.in_flight * 2 >= self.limit as usize {
                    self.limit + 1.0 / self.limit
                } else {
                    self.limit
                }
            }
            LimitAlgorithm::Vegas {
                alpha,
                beta,
                probe_multiplier,
                window,
            } => {
                // A window holds only calls admitted since the limit last changed, so each
                // decision sees what the previous one did (the calls admitted before it would
                // report the old limit's queue, or lack of one, for a whole round trip).
                if self.changed_at.is_some_and(|at| sample.started < at) {
                    return self.limit();
                }
                let limit = self.vegas(sample, alpha, beta, probe_multiplier, window);
                if limit != self.limit {
                    self.changed_at = Some(now);
                }
                limit
            }
        };
        self.limit = limit.clamp(self.min, self.max);
        self.limit()
    }

    fn vegas(
        &mut self,
        sample: Sample,
        alpha: f64,
        beta: f64,
        probe_multiplier: usize,
        window: usize,
    ) -> f64 {
        let rtt = (sample.rtt.as_nanos() as u64).max(1);
        if let Some(probe) = &mut self.probe {
            probe.lowest = probe.lowest.min(rtt);
            probe.left -= 1;
            if probe.left > 0 {
                return self.limit;
            }
            // The probe ran with half the limit, long enough for the calls queued before it
            // to finish: its lowest RTT is the downstream's without queueing, now.
            let probe = *probe;
            self.probe = None;
            self.rtt_noload = probe.lowest;
            return probe.restore;
        }
        let w = &mut self.window;
        if w.count == 0 {
            w.rtt_min = u64::MAX;
        }
        w.count += 1;
        w.rtt_min = w.rtt_min.min(rtt);
        w.in_flight_max = w.in_flight_max.max(sample.in_flight);
        w.dropped |= sample.dropped;
        if w.count < window {
            return self.limit;
        }
        let w = std::mem::take(&mut self.window);
        // The window's fastest call against the fastest ever: the average would read the
        // spread of a downstream's own latency as a queue, and hold the limit below the
        // capacity; with a queue every call waits, the fastest too.
        let rtt = w.rtt_min;
        if self.rtt_noload == 0 || w.rtt_min < self.rtt_noload {
            self.rtt_noload = w.rtt_min;
        }
        self.since_probe += w.count;
        if probe_multiplier > 0 && self.since_probe >= probe_multiplier * self.limit() {
            self.since_probe = 0;
            let restore = self.limit;
            self.probe = Some(Probe {
                restore,
                left: (2 * self.limit()).max(2),
                lowest: u64::MAX,
            });
            return (restore / 2.0).floor();
        }
        let step = log10_at_least_one(self.limit);
        if w.dropped {
            return self.limit - step;
        }
        // Not using half of the limit: latency says nothing about a limit not reached.
        if w.in_flight_max * 2 < self.limit as usize {
            return self.limit;
        }
        let queue = (self.limit * (1.0 - self.rtt_noload as f64 / rtt as f64)).ceil();
        if queue <= step {
            self.limit + beta * step
        } else if queue < alpha * step {
            self.limit + step
        } else if queue > beta * step {
            // Far above (the overshoot of the fast growth, or capacity lost): halve the
            // excess over the middle of alpha..beta at once rather than step by step.
            let excess = queue - (alpha + beta) / 2.0 * step;
            self.limit - (excess / 2.0).floor().max(step)
        } else {
            self.limit
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Calls one after the other: each starts when the previous one finished.
    struct Calls {
        e: Estimator,
        now: Instant,
    }

    impl Calls {
        fn new(algorithm: LimitAlgorithm, initial: usize, min: usize, max: usize) -> Self {
            Self {
                e: Estimator::new(algorithm, initial, min, max),
                now: Instant::now(),
            }
        }

        fn call(&mut self, rtt: Duration, in_flight: usize, dropped: bool) -> usize {
            let started = self.now;
            self.now += rtt;
            let sample = Sample {
                rtt,
                in_flight,
                dropped,
                started,
            };
            self.e.on_sample(sample, self.now)
        }

        fn ok(&mut self, rtt: Duration, in_flight: usize) -> usize {
            self.call(rtt, in_flight, false)
        }
    }

    fn vegas(window: usize, probe_multiplier: usize) -> LimitAlgorithm {
        LimitAlgorithm::Vegas {
            alpha: 3.0,
            beta: 6.0,
            probe_multiplier,
            window,
        }
    }

    #[test]
    fn aimd_grows_by_one_per_round_and_backs_off_once_per_drop() {
        let mut c = Calls::new(LimitAlgorithm::aimd(), 10, 1, 100);
        for _ in 0..10 {
            c.ok(ms(10), 5);
        }
        // Ten samples of 1/limit at a limit of 10: just short of one round.
        assert_eq!(c.e.limit(), 10);
        assert_eq!(c.ok(ms(10), 5), 11);
        // Less than half used: holds.
        assert_eq!(c.ok(ms(10), 2), 11);
        assert_eq!(c.call(ms(10), 11, true), 9);
        // A call admitted before that decrease does not decrease it again ...
        let early = Sample {
            rtt: ms(20),
            in_flight: 11,
            dropped: true,
            started: c.now - ms(20),
        };
        assert_eq!(c.e.on_sample(early, c.now), 9);
        // ... one admitted after it does.
        assert_eq!(c.call(ms(10), 9, true), 8);
    }

    #[test]
    fn aimd_latency_threshold_counts_as_a_drop() {
        let algorithm = LimitAlgorithm::Aimd {
            backoff_ratio: 0.5 + f64::EPSILON,
            latency_threshold: Some(ms(100)),
        };
        let mut c = Calls::new(algorithm, 10, 2, 100);
        assert_eq!(c.ok(ms(150), 10), 5);
        assert_eq!(c.ok(ms(150), 5), 2, "clamped at the minimum");
    }

    #[test]
    fn vegas_grows_fast_without_queueing_and_sheds_half_a_big_queue() {
        let mut c = Calls::new(vegas(1, 30), 20, 1, 1000);
        // First sample sets the no-load RTT; no queue: + beta * log10(20) = +6.
        assert_eq!(c.ok(ms(10), 20), 26);
        // RTT doubled: 13 of 26 queued, far above beta: half the excess over 4.5 goes.
        assert_eq!(c.ok(ms(20), 26), 22);
        // A queue between alpha and beta: holds.
        assert_eq!(c.ok(ms(12), 22), 22);
        // A drop: - 1.
        assert_eq!(c.call(ms(10), 22, true), 21);
    }

    #[test]
    fn vegas_decides_on_a_window_of_samples() {
        let mut c = Calls::new(vegas(10, 0), 20, 1, 1000);
        for _ in 0..9 {
            assert_eq!(c.ok(ms(10), 20), 20);
        }
        assert_eq!(c.ok(ms(10), 20), 26);
    }

    #[test]
    fn vegas_probe_rebaselines_a_permanently_slower_downstream() {
        let mut c = Calls::new(vegas(1, 2), 10, 1, 1000);
        c.ok(ms(10), 10);
        // The downstream is now ten times slower for good: the limit shrinks ...
        let mut limit = c.e.limit();
        let mut lowest = limit;
        for _ in 0..200 {
            limit = c.ok(ms(100), limit);
            lowest = lowest.min(limit);
        }
        assert!(lowest < 10, "shrank first ({lowest})");
        // ... until a probe takes 100 ms as the new normal and it grows again.
        assert!(limit > 20, "re-baselined and grew again ({limit})");
    }

    #[test]
    fn invalid_parameters_are_refused() {
        let bad = LimitAlgorithm::Vegas {
            alpha: 6.0,
            beta: 3.0,
            probe_multiplier: 30,
            window: 10,
        };
        assert!(bad.validate().is_err());
        assert!(vegas(0, 30).validate().is_err());
        let bad = LimitAlgorithm::Aimd {
            backoff_ratio: 1.5,
            latency_threshold: None,
        };
        assert!(bad.validate().is_err());
        assert!(LimitAlgorithm::vegas().validate().is_ok());
    }
}
