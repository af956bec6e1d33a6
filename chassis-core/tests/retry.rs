//! Behaviour of the retry layer, in tokio's paused time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use chassis_core::resilience::clock::TokioClock;
use chassis_core::resilience::retry::{
    Backoff, BackoffRetry, BackoffRetryLayer, Jitter, RetryBudgetConfig, RetryConfig,
};
use chassis_core::resilience::time_limiter::TimeLimiter;
use chassis_core::{BoxError, Error, ErrorKind};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn};

/// What the scripted downstream does on one attempt.
#[derive(Clone, Copy, Debug)]
enum Step {
    Ok(u16),
    Fail,
    Sleep(Duration),
}

/// A downstream following `script` (the last step repeats), counting attempts and recording
/// when each started.
#[derive(Clone)]
struct Scripted {
    script: Arc<Vec<Step>>,
    calls: Arc<AtomicU32>,
    starts: Arc<std::sync::Mutex<Vec<Duration>>>,
    origin: Instant,
}

impl Scripted {
    fn new(script: &[Step]) -> Self {
        Self {
            script: Arc::new(script.to_vec()),
            calls: Arc::new(AtomicU32::new(0)),
            starts: Arc::default(),
            origin: Instant::now(),
        }
    }

    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }

    fn starts(&self) -> Vec<Duration> {
        self.starts.lock().unwrap().clone()
    }
}

impl<R> Service<R> for Scripted {
    type Response = u16;
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<u16, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: R) -> Self::Future {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) as usize;
        self.starts.lock().unwrap().push(self.origin.elapsed());
        let step = self.script[n.min(self.script.len() - 1)];
        Box::pin(async move {
            match step {
                Step::Ok(v) => Ok(v),
                Step::Fail => Err(format!("attempt {} failed", n + 1).into()),
                Step::Sleep(d) => {
                    tokio::time::sleep(d).await;
                    Ok(200)
                }
            }
        })
    }
}

fn no_jitter(base_ms: u64) -> Backoff {
    Backoff::exponential(Duration::from_millis(base_ms))
        .max(Duration::from_secs(60))
        .jitter(Jitter::None)
}

fn config(max_attempts: u32) -> RetryConfig {
    RetryConfig::new("test")
        .max_attempts(max_attempts)
        .backoff(no_jitter(100))
        .budget(RetryBudgetConfig::disabled())
}

/// The retry of `config` around `down`, which the caller keeps to count the attempts.
fn retrying(config: RetryConfig, down: &Scripted) -> BackoffRetry<TimeLimiter<Scripted>> {
    BackoffRetryLayer::new(config).unwrap().layer(down.clone())
}

fn chassis(err: BoxError) -> Error {
    Error::from_boxed(err).expect("a chassis error")
}

/// Two attempts at most, behind a retry budget of `reserve` retries per second over `window`
/// plus `ratio` retries per call.
fn budgeted(window: Duration, reserve: u32, ratio: f32) -> BackoffRetryLayer {
    BackoffRetryLayer::new(config(2).budget(RetryBudgetConfig::new(window, reserve, ratio)))
        .unwrap()
}

/// The chassis error of a call that ran out of its 1 s deadline after `attempts` attempts.
fn deadline_exceeded(err: BoxError, attempts: u32) -> Error {
    let err = chassis(err);
    let after = Duration::from_secs(1);
    assert_eq!(err.kind(), &ErrorKind::DeadlineExceeded { after, attempts });
    err
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

#[tokio::test(start_paused = true)]
async fn retries_with_exponential_backoff_until_success() {
    let down = Scripted::new(&[Step::Fail, Step::Fail, Step::Ok(7)]);
    let svc = retrying(config(4), &down);
    assert_eq!(svc.oneshot(()).await.unwrap(), 7);
    assert_eq!(down.calls(), 3);
    // Waits of 100 ms then 200 ms between the attempts.
    assert_eq!(down.starts(), [ms(0), ms(100), ms(300)]);
}

#[tokio::test(start_paused = true)]
async fn exhaustion_is_typed_and_keeps_the_last_error() {
    let down = Scripted::new(&[Step::Fail]);
    let svc = retrying(config(3), &down);
    let err = chassis(svc.oneshot(()).await.unwrap_err());
    assert_eq!(err.kind(), &ErrorKind::RetriesExhausted { attempts: 3 });
    assert_eq!(err.last_error().unwrap().to_string(), "attempt 3 failed");
    assert_eq!(down.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn rejections_are_not_retried_by_default() {
    let calls = Arc::new(AtomicU32::new(0));
    let down = {
        let calls = calls.clone();
        service_fn(move |()| {
            calls.fetch_add(1, Ordering::SeqCst);
            async {
                Err::<(), BoxError>(Error::circuit_open("b".into(), Duration::from_secs(5)).into())
            }
        })
    };
    let svc = BackoffRetryLayer::new(config(5)).unwrap().layer(down);
    let err = chassis(svc.oneshot(()).await.unwrap_err());
    assert!(matches!(err.kind(), ErrorKind::CircuitOpen { .. }));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_slow_attempt_times_out_and_the_next_succeeds() {
    let down = Scripted::new(&[Step::Sleep(Duration::from_secs(30)), Step::Ok(1)]);
    let svc = retrying(config(3).attempt_timeout(ms(500)), &down);
    let start = Instant::now();
    assert_eq!(svc.oneshot(()).await.unwrap(), 1);
    assert_eq!(down.calls(), 2);
    assert_eq!(start.elapsed(), ms(500 + 100));
}

#[tokio::test(start_paused = true)]
async fn every_attempt_timing_out_exhausts_with_the_timeout_as_source() {
    let down = Scripted::new(&[Step::Sleep(Duration::from_secs(30))]);
    let svc = retrying(config(2).attempt_timeout(ms(500)), &down);
    let err = chassis(svc.oneshot(()).await.unwrap_err());
    assert_eq!(err.kind(), &ErrorKind::RetriesExhausted { attempts: 2 });
    let last = Error::find_in(err.last_error().unwrap()).unwrap();
    assert_eq!(last.kind(), &ErrorKind::Timeout { after: ms(500) });
}

#[tokio::test(start_paused = true)]
async fn deadline_cuts_an_attempt_in_flight() {
    // Attempt 1 fails at once, attempt 2 (after 100 ms) hangs: the 1 s deadline ends it.
    let down = Scripted::new(&[Step::Fail, Step::Sleep(Duration::from_secs(60))]);
    let svc = retrying(config(5).deadline(Duration::from_secs(1)), &down);
    let start = Instant::now();
    deadline_exceeded(svc.oneshot(()).await.unwrap_err(), 2);
    assert_eq!(start.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn the_deadline_counts_from_the_first_poll_that_waits() {
    // A first attempt that hangs 900 ms, under a 1 s deadline, in a future left unpolled for
    // 5 s after `call`: the deadline's clock starts when the call first waits, not at `call`.
    let down = Scripted::new(&[Step::Sleep(ms(900)), Step::Ok(7)]);
    let mut svc = retrying(config(3).deadline(Duration::from_secs(1)), &down);
    let call = ServiceExt::<()>::ready(&mut svc).await.unwrap().call(());
    tokio::time::advance(Duration::from_secs(5)).await;
    let start = Instant::now();
    assert_eq!(call.await.unwrap(), 200);
    assert_eq!(start.elapsed(), ms(900));
    assert_eq!(down.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_wait_past_the_deadline_is_not_started() {
    // Attempts start at 0, 100, 300 and 700 ms; the next wait (800 ms) would end past 1 s.
    let down = Scripted::new(&[Step::Fail]);
    let svc = retrying(config(10).deadline(Duration::from_secs(1)), &down);
    let start = Instant::now();
    let err = deadline_exceeded(svc.oneshot(()).await.unwrap_err(), 4);
    assert_eq!(err.last_error().unwrap().to_string(), "attempt 4 failed");
    assert_eq!(start.elapsed(), ms(700));
    assert_eq!(down.calls(), 4);
}

#[tokio::test(start_paused = true)]
async fn budget_stops_retries_when_spent_and_they_resume_after_it_refills() {
    // No deposits count (ratio 0): only the reserve of 2 retries per 1 s window. The budget
    // reads tokio's (paused) clock, so `advance` moves its window.
    let layer = budgeted(Duration::from_secs(1), 2, 0.0).with_clock(TokioClock::new());
    let down = Scripted::new(&[Step::Fail]);
    let svc = layer.layer(down.clone());

    for _ in 0..2 {
        let err = chassis(svc.clone().oneshot(()).await.unwrap_err());
        assert_eq!(err.kind(), &ErrorKind::RetriesExhausted { attempts: 2 });
    }
    assert_eq!(down.calls(), 4);
    let err = chassis(svc.clone().oneshot(()).await.unwrap_err());
    assert_eq!(err.kind(), &ErrorKind::RetryBudgetExhausted { attempts: 1 });
    assert_eq!(err.last_error().unwrap().to_string(), "attempt 5 failed");
    assert_eq!(down.calls(), 5, "no retry once the budget is spent");

    // The withdrawals age out of the window: retries are allowed again.
    tokio::time::advance(Duration::from_secs(2)).await;
    let err = chassis(svc.clone().oneshot(()).await.unwrap_err());
    assert_eq!(err.kind(), &ErrorKind::RetriesExhausted { attempts: 2 });
    assert_eq!(down.calls(), 7);
}

#[tokio::test(start_paused = true)]
async fn successful_calls_fund_retries() {
    // No reserve; every 2 calls fund 1 retry (ratio 0.5).
    let layer = budgeted(Duration::from_secs(10), 0, 0.5);
    let failing = layer.layer(Scripted::new(&[Step::Fail]));
    let err = chassis(failing.clone().oneshot(()).await.unwrap_err());
    assert_eq!(err.kind(), &ErrorKind::RetryBudgetExhausted { attempts: 1 });

    let healthy = layer.layer(Scripted::new(&[Step::Ok(1)]));
    for _ in 0..3 {
        healthy.clone().oneshot(()).await.unwrap();
    }
    let err = chassis(failing.oneshot(()).await.unwrap_err());
    assert_eq!(err.kind(), &ErrorKind::RetriesExhausted { attempts: 2 });
}

/// A request type that is not `Clone` at all, carrying whether it could be copied.
#[derive(Debug)]
struct Body {
    replayable: bool,
}

#[tokio::test(start_paused = true)]
async fn a_request_that_cannot_be_copied_fails_typed_not_silently() {
    let down = Scripted::new(&[Step::Fail, Step::Ok(1)]);
    let cloner = |b: &Body| b.replayable.then_some(Body { replayable: true });
    let layer = BackoffRetryLayer::new(config(3))
        .unwrap()
        .with_cloner(cloner);

    let err = chassis(
        layer
            .layer(down.clone())
            .oneshot(Body { replayable: false })
            .await
            .unwrap_err(),
    );
    assert_eq!(err.kind(), &ErrorKind::RequestNotCloneable);
    assert_eq!(err.last_error().unwrap().to_string(), "attempt 1 failed");
    assert_eq!(down.calls(), 1);

    // The same failure with a copyable request is retried.
    let down = Scripted::new(&[Step::Fail, Step::Ok(1)]);
    let ok = layer
        .layer(down.clone())
        .oneshot(Body { replayable: true })
        .await;
    assert_eq!(ok.unwrap(), 1);
    assert_eq!(down.calls(), 2);

    // A non-copyable request that succeeds is simply answered.
    let down = Scripted::new(&[Step::Ok(3)]);
    let ok = layer.layer(down).oneshot(Body { replayable: false }).await;
    assert_eq!(ok.unwrap(), 3);
}

#[tokio::test(start_paused = true)]
async fn retry_after_hook_overrides_backoff() {
    // 429-style responses carry a server delay of 3 s; the backoff would say 100 ms.
    let down = Scripted::new(&[Step::Ok(429), Step::Ok(200)]);
    let layer = BackoffRetryLayer::new(config(3))
        .unwrap()
        .with_classifier(|r: Result<&u16, &BoxError>| matches!(r, Ok(429) | Err(_)))
        .with_retry_after(|r: Result<&u16, &BoxError>| {
            matches!(r, Ok(429)).then_some(Duration::from_secs(3))
        });
    assert_eq!(layer.layer(down.clone()).oneshot(()).await.unwrap(), 200);
    assert_eq!(down.starts(), [ms(0), Duration::from_secs(3)]);
}

#[tokio::test(start_paused = true)]
async fn retry_after_beyond_the_deadline_gives_up_at_once() {
    let down = Scripted::new(&[Step::Fail]);
    let layer = BackoffRetryLayer::new(config(3).deadline(Duration::from_secs(2)))
        .unwrap()
        .with_retry_after(|_: Result<&u16, &BoxError>| Some(Duration::from_secs(30)));
    let start = Instant::now();
    let err = chassis(layer.layer(down.clone()).oneshot(()).await.unwrap_err());
    assert!(matches!(
        err.kind(),
        ErrorKind::DeadlineExceeded { attempts: 1, .. }
    ));
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(down.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_retryable_response_is_returned_when_attempts_run_out() {
    let down = Scripted::new(&[Step::Ok(503)]);
    let layer = BackoffRetryLayer::new(config(3))
        .unwrap()
        .with_classifier(|r: Result<&u16, &BoxError>| matches!(r, Ok(503)));
    assert_eq!(layer.layer(down.clone()).oneshot(()).await.unwrap(), 503);
    assert_eq!(down.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn single_attempt_policy_passes_errors_through() {
    let down = Scripted::new(&[Step::Fail]);
    let svc = retrying(config(1), &down);
    let err = svc.oneshot(()).await.unwrap_err();
    assert_eq!(err.to_string(), "attempt 1 failed");
    assert!(Error::find_in(err.as_ref()).is_none());
    assert_eq!(down.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn full_jitter_waits_stay_within_the_exponential_ceiling() {
    let down = Scripted::new(&[Step::Fail]);
    let backoff = Backoff::exponential(ms(100)).max(ms(250));
    let svc = retrying(config(5).backoff(backoff), &down);
    let _ = svc.oneshot(()).await.unwrap_err();
    let starts = down.starts();
    let waits: Vec<_> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    for (n, wait) in waits.iter().enumerate() {
        assert!(*wait <= backoff.ceiling(n as u32), "wait {n} = {wait:?}");
    }
    assert_eq!(waits.len(), 4);
}

#[test]
fn config_loads_from_toml_and_validates() {
    let config: RetryConfig = toml::from_str(
        r#"
        name = "inventory"
        max_attempts = 4
        attempt_timeout = "300ms"
        deadline = "2s"
        backoff = { base = "50ms", max = "1s", jitter = "decorrelated" }
        budget = { ttl = "10s", min_retries_per_sec = 5, retry_ratio = 0.1 }
        "#,
    )
    .unwrap();
    assert_eq!(config.max_attempts, 4);
    assert_eq!(config.attempt_timeout, Some(ms(300)));
    assert_eq!(config.deadline, Some(Duration::from_secs(2)));
    assert_eq!(config.backoff.jitter, Jitter::Decorrelated);
    assert!(config.budget.enabled);
    assert!(BackoffRetryLayer::new(config.clone()).is_ok());
    assert!(BackoffRetryLayer::new(config.clone().max_attempts(0)).is_err());
    let bad_budget = config.budget(RetryBudgetConfig::new(Duration::from_millis(10), 1, 0.1));
    assert!(matches!(
        BackoffRetryLayer::new(bad_budget).unwrap_err().kind(),
        ErrorKind::InvalidConfig { .. }
    ));
    assert!(toml::from_str::<RetryConfig>("max_atempts = 3").is_err());
}

/// A metrics recorder keeping counters by `name{label=value,...}`.
#[derive(Clone, Default)]
struct Counters(
    Arc<std::sync::Mutex<std::collections::BTreeMap<String, Arc<std::sync::atomic::AtomicU64>>>>,
);

impl Counters {
    fn get(&self, key: &str) -> u64 {
        self.0
            .lock()
            .unwrap()
            .get(key)
            .map_or(0, |c| c.load(Ordering::SeqCst))
    }
}

impl metrics::Recorder for Counters {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }

    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        let counter = self.0.lock().unwrap().entry(name).or_default().clone();
        metrics::Counter::from_arc(counter)
    }

    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }

    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

#[tokio::test(start_paused = true)]
async fn attempts_are_counted_by_outcome() {
    let counters = Counters::default();
    let layer =
        metrics::with_local_recorder(&counters, || BackoffRetryLayer::new(config(3)).unwrap());
    let flaky = layer.layer(Scripted::new(&[Step::Fail, Step::Ok(1)]));
    flaky.oneshot(()).await.unwrap();
    let failing = layer.layer(Scripted::new(&[Step::Fail]));
    failing.oneshot(()).await.unwrap_err();

    assert_eq!(
        counters.get("retry_attempts_total{name=test,outcome=retried}"),
        3
    );
    assert_eq!(
        counters.get("retry_attempts_total{name=test,outcome=success}"),
        1
    );
    assert_eq!(
        counters.get("retry_attempts_total{name=test,outcome=exhausted}"),
        1
    );
    assert_eq!(
        counters.get("retry_attempts_total{name=test,outcome=budget_exhausted}"),
        0
    );
}
