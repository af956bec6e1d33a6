//! [`GrpcHealth`]: the gRPC health checking protocol (`grpc.health.v1.Health`) answered from
//! the service's [`HealthRegistry`], the same model as the HTTP probes.
//!
//! - The empty service name (`""`) is the whole server: `SERVING` while readiness is up (or
//!   degraded), `NOT_SERVING` while it is down: before `mark_started`, when a required check
//!   fails, and from the start of shutdown.
//! - Each gRPC service the server offers is registered by name ([`GrpcHealth::service`]) and
//!   follows readiness; [`GrpcHealth::service_check`] ties a service to one named check of the
//!   registry as well (an inventory service to its database), so it is `NOT_SERVING` when that
//!   check fails even if the check is optional.
//! - `Check` of an unknown name answers `NOT_FOUND`; `Watch` of one sends `SERVICE_UNKNOWN`
//!   and keeps the stream open, as the protocol says.
//! - `Watch` sends the current status at once, then each change, reading readiness every
//!   [`watch_interval`](GrpcHealth::watch_interval) (default 1 s; the registry caches check
//!   results, so this does not run the checks more often than the HTTP probes would). Once
//!   shutdown began, it sends `NOT_SERVING` and ends the stream, so a draining server is not
//!   held open by its watchers.
//!
//! Serve it like any tonic service: under [`GrpcLayers`](super::GrpcLayers) in a
//! [`GrpcRouter`](super::GrpcRouter), as the HTTP probes sit beside the application.
//!
//! # Example
//! ```
//! use chassis_core::health::HealthRegistry;
//! use chassis_http::grpc::GrpcHealth;
//! use tonic_health::pb::{HealthCheckRequest, health_server::Health};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let registry = HealthRegistry::new();
//! let health = GrpcHealth::new(registry.clone()).service("inventory.v1.Inventory");
//! let check = |name: &str| tonic::Request::new(HealthCheckRequest { service: name.into() });
//! assert_eq!(health.check(check("")).await.unwrap().into_inner().status, 2); // NOT_SERVING
//! registry.mark_started();
//! assert_eq!(health.check(check("inventory.v1.Inventory")).await.unwrap().into_inner().status, 1);
//! assert_eq!(health.check(check("other")).await.unwrap_err().code(), tonic::Code::NotFound);
//! let _server = health.into_service(); // a tonic `HealthServer`
//! # }
//! ```

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chassis_core::health::{HealthRegistry, Status as CheckStatus};
use futures_util::Stream;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// The `grpc.health.v1.Health` service over a [`HealthRegistry`]; see the
/// [module docs](self).
#[derive(Debug, Clone)]
pub struct GrpcHealth {
    registry: HealthRegistry,
    /// Service name -> the registry check it also follows, if any.
    services: Arc<HashMap<String, Option<String>>>,
    watch_interval: Duration,
}

impl GrpcHealth {
    /// Health of the whole server (`""`) from `registry`; register each service with
    /// [`service`](Self::service).
    pub fn new(registry: HealthRegistry) -> Self {
        Self {
            registry,
            services: Arc::default(),
            watch_interval: Duration::from_secs(1),
        }
    }

    /// Reports `name` (a full service name, `inventory.v1.Inventory`), following readiness.
    pub fn service(mut self, name: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.services).insert(name.into(), None);
        self
    }

    /// Reports `name` following readiness and the registry check called `check`.
    pub fn service_check(mut self, name: impl Into<String>, check: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.services).insert(name.into(), Some(check.into()));
        self
    }

    /// How often `Watch` reads readiness. Defaults to 1 s.
    pub fn watch_interval(mut self, interval: Duration) -> Self {
        self.watch_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// The tonic server to route calls to (its name is `grpc.health.v1.Health`).
    pub fn into_service(self) -> HealthServer<Self> {
        HealthServer::new(self)
    }

    /// The status of `service` now, or `None` if it is not known.
    async fn status_of(&self, service: &str) -> Option<ServingStatus> {
        let check = if service.is_empty() {
            None
        } else {
            Some(self.services.get(service)?.as_deref())
        };
        let report = self.registry.readiness().await;
        let serving = report.is_ready()
            && check.flatten().is_none_or(|name| {
                report
                    .checks
                    .iter()
                    .find(|c| c.name == name)
                    .is_some_and(|c| c.status != CheckStatus::Down)
            });
        Some(if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        })
    }
}

fn response(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status as i32,
    }
}

/// The stream of `Watch`.
pub type WatchStream =
    Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Health for GrpcHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = request.into_inner().service;
        match self.status_of(&service).await {
            Some(status) => Ok(Response::new(response(status))),
            None => Err(Status::not_found(format!("unknown service {service:?}"))),
        }
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let service = request.into_inner().service;
        let this = self.clone();
        struct State {
            health: GrpcHealth,
            service: String,
            last: Option<ServingStatus>,
            done: bool,
        }
        let state = State {
            health: this,
            service,
            last: None,
            done: false,
        };
        let stream = futures_util::stream::unfold(state, |mut state| async move {
            if state.done {
                return None;
            }
            loop {
                if state.last.is_some() {
                    tokio::time::sleep(state.health.watch_interval).await;
                }
                let status = state
                    .health
                    .status_of(&state.service)
                    .await
                    .unwrap_or(ServingStatus::ServiceUnknown);
                // Shutdown: the last word is NOT_SERVING, then the stream ends so the drain
                // does not wait for watchers.
                state.done = state.health.registry.is_shutting_down();
                if state.last != Some(status) || state.done {
                    state.last = Some(status);
                    return Some((Ok(response(status)), state));
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chassis_core::health::{CheckOptions, fn_check};
    use futures_util::StreamExt as _;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn req(service: &str) -> Request<HealthCheckRequest> {
        Request::new(HealthCheckRequest {
            service: service.into(),
        })
    }

    #[tokio::test]
    async fn services_follow_readiness_and_their_check() {
        let registry = HealthRegistry::with_cache_ttl(Duration::ZERO);
        let db_up = Arc::new(AtomicBool::new(true));
        let up = Arc::clone(&db_up);
        registry.register(
            fn_check("db", move || {
                let up = up.load(Ordering::SeqCst);
                async move { if up { Ok(()) } else { Err("down".into()) } }
            }),
            CheckOptions::optional(),
        );
        registry.mark_started();
        let health = GrpcHealth::new(registry.clone())
            .service_check("inv.Inventory", "db")
            .service("plain.Service");
        let status = |s: &'static str| {
            let health = health.clone();
            async move { health.check(req(s)).await.unwrap().into_inner().status }
        };
        assert_eq!(status("").await, 1);
        assert_eq!(status("inv.Inventory").await, 1);
        db_up.store(false, Ordering::SeqCst);
        assert_eq!(status("").await, 1, "an optional check only degrades");
        assert_eq!(status("inv.Inventory").await, 2);
        assert_eq!(status("plain.Service").await, 1);
    }

    #[tokio::test]
    async fn watch_sends_changes_and_ends_at_shutdown() {
        let registry = HealthRegistry::new();
        let health = GrpcHealth::new(registry.clone()).watch_interval(Duration::from_millis(10));
        let mut stream = health.watch(req("")).await.unwrap().into_inner();
        async fn next(s: &mut WatchStream) -> Option<i32> {
            s.next().await.map(|r| r.unwrap().status)
        }
        assert_eq!(next(&mut stream).await, Some(2));
        registry.mark_started();
        assert_eq!(next(&mut stream).await, Some(1));
        registry.mark_shutting_down();
        assert_eq!(next(&mut stream).await, Some(2));
        assert_eq!(next(&mut stream).await, None);
        let mut unknown = health.watch(req("nope")).await.unwrap().into_inner();
        assert_eq!(next(&mut unknown).await, Some(3));
    }
}
