//! The runner: [`App`] and its deadlines, [`LifecycleConfig`].

use std::future::Future;
use std::time::Duration;

use futures_util::future::join_all;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::component::{Component, Context, Stage};
use crate::BoxError;
use crate::error::{Error, ErrorKind};
use crate::health::{BoxFuture, HealthRegistry};
use crate::shutdown::Shutdown;

/// Deadlines of an [`App`]'s start and of each shutdown phase, deserialisable from config
/// files (durations as `"30s"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LifecycleConfig {
    /// How long one component may take to start. Defaults to 30 s.
    #[serde(with = "humantime_serde")]
    pub start_timeout: Duration,
    /// How long the service keeps serving after readiness turned red, before intake stops, so
    /// load balancers stop routing here first. Defaults to 0 (a few seconds on Kubernetes).
    #[serde(with = "humantime_serde")]
    pub pre_stop_delay: Duration,
    /// Deadline of the [`Stage::Intake`] drain: in-flight requests and handlers. Defaults to
    /// 30 s.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Deadline of the [`Stage::Worker`] phase. Defaults to 10 s.
    #[serde(with = "humantime_serde")]
    pub worker_timeout: Duration,
    /// Deadline of the [`Stage::Transport`] phase. Defaults to 5 s.
    #[serde(with = "humantime_serde")]
    pub transport_timeout: Duration,
    /// Deadline of the [`Stage::Resource`] phase. Defaults to 5 s.
    #[serde(with = "humantime_serde")]
    pub resource_timeout: Duration,
    /// Deadline of the [`Stage::Telemetry`] flush. Defaults to 5 s.
    #[serde(with = "humantime_serde")]
    pub telemetry_timeout: Duration,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        Self {
            start_timeout: Duration::from_secs(30),
            pre_stop_delay: Duration::ZERO,
            drain_timeout: Duration::from_secs(30),
            worker_timeout: Duration::from_secs(10),
            transport_timeout: Duration::from_secs(5),
            resource_timeout: Duration::from_secs(5),
            telemetry_timeout: Duration::from_secs(5),
        }
    }
}

impl LifecycleConfig {
    crate::__builder_setters! {
        /// Per-component start deadline. Defaults to 30 s.
        start_timeout(d): Duration,
        /// Pre-stop delay. Defaults to 0.
        pre_stop_delay(d): Duration,
        /// Intake drain deadline. Defaults to 30 s.
        drain_timeout(d): Duration,
    }

    /// Sets the deadline of `stage`'s phase.
    pub fn stage_timeout(mut self, stage: Stage, d: Duration) -> Self {
        match stage {
            Stage::Intake => self.drain_timeout = d,
            Stage::Worker => self.worker_timeout = d,
            Stage::Transport => self.transport_timeout = d,
            Stage::Resource => self.resource_timeout = d,
            Stage::Telemetry => self.telemetry_timeout = d,
        }
        self
    }

    /// The defaults, with what the environment sets: `PRE_STOP_DELAY`, `DRAIN_TIMEOUT` and
    /// `START_TIMEOUT` as durations (`"5s"`, `"500ms"`), so an operator tunes them per
    /// deployment (a pre-stop delay on Kubernetes) without a rebuild.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`] naming the variable whose value is not a duration.
    pub fn from_env() -> Result<Self, Error> {
        Self::default().with_env(|key| std::env::var(key).ok())
    }

    /// [`from_env`](Self::from_env) reading variables through `var`, for the fuzz targets in
    /// the repository's `fuzz/` crate; not part of the API.
    #[doc(hidden)]
    pub fn from_vars_for_fuzzing(var: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        Self::default().with_env(var)
    }

    fn with_env(mut self, var: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let slots: [(&str, &mut Duration); 3] = [
            ("PRE_STOP_DELAY", &mut self.pre_stop_delay),
            ("DRAIN_TIMEOUT", &mut self.drain_timeout),
            ("START_TIMEOUT", &mut self.start_timeout),
        ];
        for (key, slot) in slots {
            if let Some(value) = var(key).filter(|v| !v.trim().is_empty()) {
                *slot = humantime_serde::re::humantime::parse_duration(value.trim())
                    .map_err(|e| Error::invalid_config(format!("{key}={value:?}: {e}")))?;
            }
        }
        Ok(self)
    }

    /// The deadline of `stage`'s phase.
    pub fn deadline(&self, stage: Stage) -> Duration {
        match stage {
            Stage::Intake => self.drain_timeout,
            Stage::Worker => self.worker_timeout,
            Stage::Transport => self.transport_timeout,
            Stage::Resource => self.resource_timeout,
            Stage::Telemetry => self.telemetry_timeout,
        }
    }
}

type Hook = Box<dyn FnOnce() -> BoxFuture<'static, Result<(), BoxError>> + Send>;

/// `App` methods that each add a hook to the list of [`Hooks`] of their name.
macro_rules! add_hook {
    ($($(#[$doc:meta])* $list:ident;)*) => {$(
        $(#[$doc])*
        pub fn $list<F, Fut>(mut self, hook: F) -> Self
        where
            F: FnOnce() -> Fut + Send + 'static,
            Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
        {
            let hook: Hook = Box::new(move || Box::pin(hook()));
            self.hooks.$list.push(hook);
            self
        }
    )*};
}

#[derive(Default)]
struct Hooks {
    before_start: Vec<Hook>,
    after_start: Vec<Hook>,
    before_stop: Vec<Hook>,
    after_stop: Vec<Hook>,
}

/// A service: its components, started in order and stopped in stages; see the
/// [module docs](super).
pub struct App {
    name: String,
    components: Vec<Box<dyn Component>>,
    health: HealthRegistry,
    shutdown: Shutdown,
    config: LifecycleConfig,
    handle_signals: bool,
    hooks: Hooks,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.components.iter().map(|c| c.name()).collect();
        f.debug_struct("App")
            .field("name", &self.name)
            .field("components", &names)
            .field("config", &self.config)
            .field("handle_signals", &self.handle_signals)
            .finish_non_exhaustive()
    }
}

impl App {
    /// An app named `name` (used in its logs) with no components, a fresh
    /// [`HealthRegistry`] and [`Shutdown`], default deadlines, and signal handling on.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            components: Vec::new(),
            health: HealthRegistry::new(),
            shutdown: Shutdown::new(),
            config: LifecycleConfig::default(),
            handle_signals: true,
            hooks: Hooks::default(),
        }
    }

    /// Adds a component; components start in the order they are added.
    pub fn component(mut self, component: impl Component) -> Self {
        self.components.push(Box::new(component));
        self
    }

    /// Uses `registry` as the service's health registry (the one its HTTP probes serve).
    /// Defaults to a fresh one; see [`health`](Self::health).
    pub fn with_health(mut self, registry: HealthRegistry) -> Self {
        self.health = registry;
        self
    }

    /// The health registry the app marks started and shutting down: serve it on the
    /// probes (`HealthLayer::new(app.health().clone())`) and register checks on it.
    pub fn health(&self) -> &HealthRegistry {
        &self.health
    }

    /// Uses `shutdown` as the stop signal. Defaults to a fresh one.
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// A handle to stop the app from code ([`Shutdown::trigger`]).
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    crate::__builder_setters! {
        /// The start and shutdown deadlines. Defaults to [`LifecycleConfig::default`].
        config: LifecycleConfig,
        /// Whether SIGTERM/SIGINT stop the app (a second one forces the stop). Defaults to
        /// `true`.
        handle_signals(enabled): bool,
    }

    add_hook! {
        /// Runs `hook` before the first component starts (migrations, say); an error stops the
        /// start like a component's.
        before_start;
        /// Runs `hook` once every component started, before the app reports itself started.
        after_start;
        /// Runs `hook` when shutdown begins, right after readiness turned red.
        before_stop;
        /// Runs `hook` once every component but telemetry stopped.
        after_stop;
    }

    /// Starts every component, runs until the stop signal, then shuts down in stages; see the
    /// [module docs](super).
    ///
    /// # Errors
    /// [`ErrorKind::ComponentStart`], [`ErrorKind::ComponentFailed`],
    /// [`ErrorKind::StopTimeout`], [`ErrorKind::ComponentStop`] or
    /// [`ErrorKind::ShutdownForced`], each naming the component.
    pub async fn run(self) -> Result<(), Error> {
        let Self {
            name,
            components,
            health,
            shutdown,
            config,
            handle_signals,
            mut hooks,
        } = self;
        let ctx = Context::new(health.clone(), shutdown.clone());
        let forced = CancellationToken::new();
        let _signals = handle_signals
            .then(|| listen_for_signals(&shutdown, &forced))
            .flatten()
            .map(tokio_util::task::AbortOnDropHandle::new);

        tracing::info!(service = %name, components = components.len(), "starting");
        let mut started: Vec<Box<dyn Component>> = Vec::with_capacity(components.len());
        let mut start_error = None;
        for hook in hooks.before_start.drain(..) {
            if let Err(e) = hook().await {
                start_error = Some(component_error(
                    ErrorKind::ComponentStart {
                        component: "before_start hook".into(),
                    },
                    e,
                ));
                break;
            }
        }
        if start_error.is_none() {
            for mut component in components {
                if shutdown.is_triggered() {
                    // Stopped before this one began: it has nothing to stop.
                    break;
                }
                let limit = config.start_timeout;
                let result = tokio::select! {
                    biased;
                    () = shutdown.triggered() => None,
                    r = tokio::time::timeout(limit, component.start(ctx.clone())) => Some(r),
                };
                let component_name = component.name().to_owned();
                match result {
                    None => {
                        tracing::info!(component = %component_name, "stop requested during start");
                        // The component may have half-started: stop it with the others.
                        started.push(component);
                        break;
                    }
                    Some(Ok(Ok(()))) => {
                        tracing::info!(component = %component_name, "component started");
                        started.push(component);
                    }
                    Some(Ok(Err(e))) => {
                        start_error = Some(component_error(
                            ErrorKind::ComponentStart {
                                component: component_name,
                            },
                            e,
                        ));
                        break;
                    }
                    Some(Err(_elapsed)) => {
                        started.push(component);
                        start_error = Some(component_error(
                            ErrorKind::ComponentStart {
                                component: component_name,
                            },
                            format!("did not start within {}ms", limit.as_millis()),
                        ));
                        break;
                    }
                }
            }
        }

        if let Some(error) = start_error.take() {
            tracing::error!(service = %name, error = %error, "start failed; stopping what started");
            shutdown.trigger();
            health.mark_shutting_down();
            // Reverse order of start: a component never outlives what it was started on.
            while let Some(mut component) = started.pop() {
                if component.stage() == Stage::Intake {
                    component.stop_intake();
                }
                let deadline = config.deadline(component.stage());
                let _ = stop_one(component.as_mut(), deadline).await;
            }
            return report(&name, Err(error));
        }

        if !shutdown.is_triggered() {
            run_hooks("after_start", &mut hooks.after_start).await;
            health.mark_started();
            tracing::info!(service = %name, "started");
            shutdown.triggered().await;
        }

        // Shutdown, in stages.
        health.mark_shutting_down();
        tracing::info!(
            service = %name,
            pre_stop_delay_ms = config.pre_stop_delay.as_millis() as u64,
            "shutting down: readiness failing"
        );
        run_hooks("before_stop", &mut hooks.before_stop).await;
        tokio::select! {
            () = tokio::time::sleep(config.pre_stop_delay) => {}
            () = forced.cancelled() => {}
        }
        let mut stop_error: Option<Error> = None;
        for stage in Stage::ALL {
            if stage == Stage::Telemetry {
                run_hooks("after_stop", &mut hooks.after_stop).await;
            }
            let deadline = config.deadline(stage);
            let mut members: Vec<&mut Box<dyn Component>> =
                started.iter_mut().filter(|c| c.stage() == stage).collect();
            if members.is_empty() {
                continue;
            }
            if forced.is_cancelled() && stage != Stage::Telemetry {
                tracing::warn!(?stage, "forced shutdown: not waiting for this stage");
                continue;
            }
            if stage == Stage::Intake {
                for c in members.iter_mut() {
                    c.stop_intake();
                }
            }
            let stops = join_all(members.into_iter().map(|c| stop_one(c.as_mut(), deadline)));
            let results = if stage == Stage::Telemetry {
                Some(stops.await)
            } else {
                tokio::select! {
                    r = stops => Some(r),
                    () = forced.cancelled() => None,
                }
            };
            match results {
                Some(results) => {
                    for e in results.into_iter().filter_map(Result::err) {
                        stop_error.get_or_insert(e);
                    }
                }
                None => tracing::warn!(?stage, "forced shutdown: stage abandoned"),
            }
        }

        let outcome = if let Some((component, e)) = ctx.take_failure() {
            Err(component_error(ErrorKind::ComponentFailed { component }, e))
        } else if forced.is_cancelled() {
            Err(Error::new(ErrorKind::ShutdownForced))
        } else if let Some(e) = stop_error {
            Err(e)
        } else {
            Ok(())
        };
        report(&name, outcome)
    }
}

/// The last line of a run, printed rather than traced: telemetry is flushed by now.
fn report(name: &str, outcome: Result<(), Error>) -> Result<(), Error> {
    match &outcome {
        Ok(()) => eprintln!("{name}: stopped"),
        Err(e) => eprintln!("{name}: stopped with error: {e}"),
    }
    outcome
}

async fn run_hooks(which: &str, hooks: &mut Vec<Hook>) {
    for hook in hooks.drain(..) {
        if let Err(e) = hook().await {
            tracing::warn!(hook = which, error = %e, "lifecycle hook failed");
        }
    }
}

fn component_error(kind: ErrorKind, source: impl Into<BoxError>) -> Error {
    Error::with_source(kind, source)
}

/// Stops one component within `deadline`, logging the outcome once.
async fn stop_one(component: &mut dyn Component, deadline: Duration) -> Result<(), Error> {
    let name = component.name().to_owned();
    let started = tokio::time::Instant::now();
    match tokio::time::timeout(deadline, component.stop(deadline)).await {
        Ok(Ok(())) => {
            tracing::info!(
                component = %name,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "component stopped"
            );
            Ok(())
        }
        Ok(Err(e)) => {
            tracing::error!(component = %name, error = %e, "component failed to stop cleanly");
            Err(component_error(
                ErrorKind::ComponentStop { component: name },
                e,
            ))
        }
        Err(_) => {
            tracing::error!(
                component = %name,
                deadline_ms = deadline.as_millis() as u64,
                "component did not stop within its deadline; abandoned"
            );
            Err(Error::new(ErrorKind::StopTimeout {
                component: name,
                after: deadline,
            }))
        }
    }
}

/// First SIGTERM/SIGINT: graceful stop. Second: `forced`. The handlers are installed before
/// this returns, so a signal that arrives while the components start is not missed.
fn listen_for_signals(
    shutdown: &Shutdown,
    forced: &CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let mut signals = match crate::shutdown::Signals::install() {
        Ok(signals) => signals,
        Err(e) => {
            tracing::warn!(error = %e, "could not install signal handlers; stop from code only");
            return None;
        }
    };
    let shutdown = shutdown.clone();
    let forced = forced.clone();
    Some(tokio::spawn(async move {
        let first = signals.next().await;
        tracing::info!(signal = first, "stop signal received");
        shutdown.trigger();
        let second = signals.next().await;
        tracing::warn!(signal = second, "second stop signal: forcing the shutdown");
        forced.cancel();
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_sets_the_deadlines_and_names_a_bad_value() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |key: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let config = LifecycleConfig::default()
            .with_env(env(&[("PRE_STOP_DELAY", "5s"), ("DRAIN_TIMEOUT", "1m")]))
            .unwrap();
        assert_eq!(config.pre_stop_delay, Duration::from_secs(5));
        assert_eq!(config.drain_timeout, Duration::from_secs(60));
        assert_eq!(config.start_timeout, Duration::from_secs(30));
        let err = LifecycleConfig::default()
            .with_env(env(&[("DRAIN_TIMEOUT", "soon")]))
            .unwrap_err();
        assert!(err.to_string().contains("DRAIN_TIMEOUT"), "{err}");
    }
}
