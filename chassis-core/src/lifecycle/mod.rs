//! The service lifecycle: one runner owns start-up, readiness, signals and the shutdown order,
//! so `main` only says what the service is made of.
//!
//! A service is a list of [`Component`]s (an HTTP server, the AMQP connection, the outbox
//! relay, message consumers, a database pool, the telemetry pipeline) registered on an
//! [`App`] in the order they start. [`App::run`]:
//!
//! 1. starts the components in registration order, each within
//!    [`LifecycleConfig::start_timeout`]. When one fails, the ones already started are stopped
//!    in reverse order and `run` returns [`ErrorKind::ComponentStart`] naming it;
//! 2. marks startup done on the [`HealthRegistry`] (`/health/startup` and `/health/ready`
//!    turn green once the required checks pass);
//! 3. waits for SIGTERM/SIGINT, [`Shutdown::trigger`], or a component reporting a failure
//!    through [`Context::fail`];
//! 4. shuts down in the order that loses nothing, each phase under its own deadline:
//!    - readiness turns red ([`HealthRegistry::mark_shutting_down`]), then the
//!      [pre-stop delay](LifecycleConfig::pre_stop_delay), so load balancers stop routing here
//!      while the service still answers;
//!    - every [`Stage::Intake`] component stops taking work ([`Component::stop_intake`]: the
//!      HTTP listener closes, consumers send `basic.cancel`), then all of them drain their
//!      in-flight requests and handlers ([`LifecycleConfig::drain_timeout`]);
//!    - [`Stage::Worker`]s finish their unit of work (the outbox relay records its batch);
//!    - [`Stage::Transport`]s close (the AMQP connection);
//!    - [`Stage::Resource`]s close (database pools);
//!    - [`Stage::Telemetry`] flushes last, so the shutdown's own logs and spans get out;
//! 5. returns `Ok(())` (exit code 0) when everything stopped in time, or the first error: a
//!    component that failed while running ([`ErrorKind::ComponentFailed`]), one that did not
//!    stop within its phase ([`ErrorKind::StopTimeout`]), or a second signal
//!    ([`ErrorKind::ShutdownForced`]: the runner abandons the remaining drains at once, flushes
//!    telemetry within its deadline and returns).
//!
//! Components of one stage stop concurrently; stages stop one after the other. Hooks run
//! before and after start and stop (as in Kratos' `BeforeStart`/`AfterStop`).
//!
//! The crates implement [`Component`] for what they own (chassis-http's server,
//! chassis-messaging's connection, relay and consumers, chassis-observability's telemetry
//! guard); [`task`] and [`closer`] turn a background loop or a close call into one.
//!
//! # Example
//! ```
//! use std::time::Duration;
//! use chassis_core::lifecycle::{App, Stage, closer, task};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), chassis_core::Error> {
//! let app = App::new("greeter")
//!     // A background loop that stops when asked.
//!     .component(task("ticker", Stage::Worker, |stop| async move {
//!         while tokio::time::timeout(Duration::from_millis(10), stop.cancelled()).await.is_err() {}
//!         Ok(())
//!     }))
//!     // Something to close at shutdown, e.g. a pool.
//!     .component(closer("database", Stage::Resource, || async { /* pool.close().await */ }));
//!
//! // In a service: `app.run().await?` and SIGTERM ends it. Here we stop it from code.
//! let stop = app.shutdown_handle();
//! tokio::spawn(async move { tokio::time::sleep(Duration::from_millis(50)).await; stop.trigger() });
//! app.handle_signals(false).run().await?;
//! # Ok(()) }
//! ```
//!
//! [`HealthRegistry`]: crate::health::HealthRegistry
//! [`HealthRegistry::mark_shutting_down`]: crate::health::HealthRegistry::mark_shutting_down
//! [`Shutdown::trigger`]: crate::shutdown::Shutdown::trigger
//! [`ErrorKind::ComponentStart`]: crate::ErrorKind::ComponentStart
//! [`ErrorKind::ComponentFailed`]: crate::ErrorKind::ComponentFailed
//! [`ErrorKind::StopTimeout`]: crate::ErrorKind::StopTimeout
//! [`ErrorKind::ShutdownForced`]: crate::ErrorKind::ShutdownForced

mod app;
mod component;

pub use app::{App, LifecycleConfig};
pub use component::{Closer, Component, Context, Stage, Task, closer, task};
