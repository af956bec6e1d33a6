//! The lifecycle runner: start order, the staged shutdown order, readiness, failures at start
//! and while running, deadlines.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chassis_core::BoxError;
use chassis_core::ErrorKind;
use chassis_core::health::BoxFuture;
use chassis_core::lifecycle::{App, Component, Context, LifecycleConfig, Stage, closer, task};

type Log = Arc<Mutex<Vec<String>>>;

/// A component that records what the runner does to it.
struct Probe {
    name: &'static str,
    stage: Stage,
    log: Log,
    fail_start: bool,
    stop_takes: Duration,
    ctx: Option<Context>,
}

impl Probe {
    fn new(name: &'static str, stage: Stage, log: &Log) -> Self {
        Self {
            name,
            stage,
            log: log.clone(),
            fail_start: false,
            stop_takes: Duration::ZERO,
            ctx: None,
        }
    }
    fn record(&self, what: &str) {
        self.log
            .lock()
            .unwrap()
            .push(format!("{what} {}", self.name));
    }
}

impl Component for Probe {
    fn name(&self) -> &str {
        self.name
    }
    fn stage(&self) -> Stage {
        self.stage
    }
    fn start(&mut self, ctx: Context) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async move {
            if self.fail_start {
                self.record("failed");
                return Err("port 8080 in use".into());
            }
            self.record("start");
            self.ctx = Some(ctx);
            Ok(())
        })
    }
    fn stop_intake(&mut self) {
        let ready = self
            .ctx
            .as_ref()
            .is_some_and(|c| !c.health().is_shutting_down());
        self.record(if ready { "intake(ready!)" } else { "intake" });
    }
    fn stop(&mut self, _deadline: Duration) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async move {
            tokio::time::sleep(self.stop_takes).await;
            self.record("stop");
            Ok(())
        })
    }
}

fn log() -> Log {
    Arc::new(Mutex::new(Vec::new()))
}

fn entries(log: &Log) -> Vec<String> {
    log.lock().unwrap().clone()
}

#[tokio::test]
async fn starts_in_order_and_stops_in_stages() {
    let log = log();
    let app = App::new("t")
        .handle_signals(false)
        .component(Probe::new("telemetry", Stage::Telemetry, &log))
        .component(Probe::new("db", Stage::Resource, &log))
        .component(Probe::new("amqp", Stage::Transport, &log))
        .component(Probe::new("relay", Stage::Worker, &log))
        .component(Probe::new("consumer", Stage::Intake, &log))
        .component(Probe::new("http", Stage::Intake, &log));
    let health = app.health().clone();
    let stop = app.shutdown_handle();
    let run = tokio::spawn(app.run());
    while !health.is_started() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!health.is_shutting_down());
    stop.trigger();
    run.await.unwrap().expect("clean stop");
    let got = entries(&log);
    let starts: Vec<_> = got
        .iter()
        .filter(|e| e.starts_with("start"))
        .cloned()
        .collect();
    assert_eq!(
        starts,
        [
            "start telemetry",
            "start db",
            "start amqp",
            "start relay",
            "start consumer",
            "start http"
        ]
    );
    let stops: Vec<_> = got
        .iter()
        .filter(|e| !e.starts_with("start"))
        .cloned()
        .collect();
    // Both intakes stop taking work, after readiness failed, before either drains.
    assert_eq!(&stops[..2], ["intake consumer", "intake http"]);
    let mut drains = stops[2..4].to_vec();
    drains.sort();
    assert_eq!(drains, ["stop consumer", "stop http"]);
    assert_eq!(
        &stops[4..],
        ["stop relay", "stop amqp", "stop db", "stop telemetry"]
    );
    assert!(health.is_shutting_down());
}

#[tokio::test]
async fn a_failed_start_stops_the_started_in_reverse_and_names_the_component() {
    let log = log();
    let mut http = Probe::new("http", Stage::Intake, &log);
    http.fail_start = true;
    let app = App::new("t")
        .handle_signals(false)
        .component(Probe::new("db", Stage::Resource, &log))
        .component(Probe::new("relay", Stage::Worker, &log))
        .component(http)
        .component(Probe::new("never", Stage::Intake, &log));
    let health = app.health().clone();
    let err = app.run().await.expect_err("start must fail");
    assert_eq!(
        err.kind(),
        &ErrorKind::ComponentStart {
            component: "http".into()
        }
    );
    assert_eq!(
        err.to_string(),
        "component 'http' failed to start: port 8080 in use"
    );
    assert_eq!(
        entries(&log),
        [
            "start db",
            "start relay",
            "failed http",
            "stop relay",
            "stop db"
        ]
    );
    assert!(!health.is_started(), "never reported started");
}

#[tokio::test]
async fn a_failed_before_start_hook_starts_nothing() {
    let log = log();
    let err = App::new("t")
        .handle_signals(false)
        .before_start(|| async { Err::<(), BoxError>("migration failed".into()) })
        .component(Probe::new("db", Stage::Resource, &log))
        .run()
        .await
        .expect_err("hook error");
    assert!(
        matches!(err.kind(), ErrorKind::ComponentStart { component } if component == "before_start hook")
    );
    assert!(entries(&log).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_component_failing_while_running_stops_the_service_with_its_error() {
    let log = log();
    let app = App::new("t")
        .handle_signals(false)
        .component(Probe::new("db", Stage::Resource, &log))
        .component(task("poller", Stage::Worker, |_stop| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Err::<(), BoxError>("lost the lease table".into())
        }));
    let err = app.run().await.expect_err("the task failed");
    assert_eq!(
        err.kind(),
        &ErrorKind::ComponentFailed {
            component: "poller".into()
        }
    );
    assert!(err.to_string().contains("lost the lease table"), "{err}");
    assert_eq!(
        entries(&log),
        ["start db", "stop db"],
        "still stopped in order"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stop_past_its_deadline_is_abandoned_and_reported() {
    let log = log();
    let mut slow = Probe::new("relay", Stage::Worker, &log);
    slow.stop_takes = Duration::from_secs(60);
    let app = App::new("t")
        .handle_signals(false)
        .config(LifecycleConfig::default().stage_timeout(Stage::Worker, Duration::from_secs(2)))
        .component(Probe::new("db", Stage::Resource, &log))
        .component(slow);
    let stop = app.shutdown_handle();
    let run = tokio::spawn(app.run());
    tokio::time::sleep(Duration::from_millis(10)).await;
    let began = tokio::time::Instant::now();
    stop.trigger();
    let err = run.await.unwrap().expect_err("stop timed out");
    assert_eq!(
        err.kind(),
        &ErrorKind::StopTimeout {
            component: "relay".into(),
            after: Duration::from_secs(2)
        }
    );
    assert!(began.elapsed() < Duration::from_secs(3));
    assert_eq!(entries(&log), ["start db", "start relay", "stop db"]);
}

#[tokio::test(start_paused = true)]
async fn pre_stop_delay_keeps_intake_open_after_readiness_fails() {
    let log = log();
    let app = App::new("t")
        .handle_signals(false)
        .config(LifecycleConfig::default().pre_stop_delay(Duration::from_secs(5)))
        .component(Probe::new("http", Stage::Intake, &log));
    let health = app.health().clone();
    let stop = app.shutdown_handle();
    let run = tokio::spawn(app.run());
    tokio::time::sleep(Duration::from_millis(10)).await;
    stop.trigger();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(health.is_shutting_down(), "readiness red at once");
    assert_eq!(
        entries(&log),
        ["start http"],
        "still serving during the delay"
    );
    run.await.unwrap().unwrap();
    assert_eq!(entries(&log), ["start http", "intake http", "stop http"]);
}

#[tokio::test(start_paused = true)]
async fn a_start_past_its_timeout_fails() {
    struct Hang;
    impl Component for Hang {
        fn name(&self) -> &str {
            "postgres"
        }
        fn stage(&self) -> Stage {
            Stage::Resource
        }
        fn start(&mut self, _: Context) -> BoxFuture<'_, Result<(), BoxError>> {
            Box::pin(std::future::pending())
        }
        fn stop(&mut self, _: Duration) -> BoxFuture<'_, Result<(), BoxError>> {
            Box::pin(async { Ok(()) })
        }
    }
    let err = App::new("t")
        .handle_signals(false)
        .config(LifecycleConfig::default().start_timeout(Duration::from_secs(3)))
        .component(Hang)
        .run()
        .await
        .expect_err("start timeout");
    assert!(
        err.to_string()
            .starts_with("component 'postgres' failed to start: did not start within 3000ms"),
        "{err}"
    );
}

/// An app whose four hooks, closer and telemetry probe all write to `log`.
fn hooked_app(log: &Log) -> App {
    let hook = |what: &'static str| {
        let log = log.clone();
        move || async move {
            log.lock().unwrap().push(what.to_owned());
            Ok::<(), BoxError>(())
        }
    };
    let closed = log.clone();
    App::new("t")
        .handle_signals(false)
        .before_start(hook("before_start"))
        .after_start(hook("after_start"))
        .before_stop(hook("before_stop"))
        .after_stop(hook("after_stop"))
        .component(closer("pool", Stage::Resource, move || async move {
            closed.lock().unwrap().push("close pool".into());
        }))
        .component(Probe::new("telemetry", Stage::Telemetry, log))
}

#[tokio::test]
async fn a_stop_before_start_starts_nothing_and_skips_after_start() {
    let log = log();
    let app = hooked_app(&log);
    app.shutdown_handle().trigger();
    app.run().await.unwrap();
    assert_eq!(entries(&log), ["before_start", "before_stop", "after_stop"]);
}

#[tokio::test]
async fn hooks_order_in_a_full_run() {
    let log = log();
    let app = hooked_app(&log);
    let health = app.health().clone();
    let stop = app.shutdown_handle();
    let run = tokio::spawn(app.run());
    while !health.is_started() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.trigger();
    run.await.unwrap().unwrap();
    assert_eq!(
        entries(&log),
        [
            "before_start",
            "start telemetry",
            "after_start",
            "before_stop",
            "close pool",
            "after_stop",
            "stop telemetry"
        ]
    );
}
