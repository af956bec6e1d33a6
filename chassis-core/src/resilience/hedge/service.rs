//! [`Hedge`]: the service that may send a request twice.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower_service::Service;

use super::config::HedgePredicate;
use super::future::ResponseFuture;
use super::layer::Shared;
use crate::BoxError;
use crate::resilience::retry::CloneRequest;

/// A service sending a second attempt of an idempotent request when the first has not
/// answered within the layer's delay; see [`HedgeLayer`](super::HedgeLayer).
#[derive(Clone)]
pub struct Hedge<S, P, K> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared>,
    pub(crate) predicate: P,
    pub(crate) cloner: K,
}

impl<S, P, K> Hedge<S, P, K> {
    crate::__define_inner_service_accessors!();
}

impl<S: fmt::Debug, P, K> fmt::Debug for Hedge<S, P, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hedge")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl<S, Req, P, K> Service<Req> for Hedge<S, P, K>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    P: HedgePredicate<Req>,
    K: CloneRequest<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // A request that may not be sent twice, or cannot be copied, runs alone at no cost.
        let copy = if self.predicate.may_hedge(&req) {
            self.cloner.clone_request(&req)
        } else {
            None
        };
        let hedge = copy.map(|copy| {
            // NOTE: the clone is polled ready in the future before the hedge is sent.
            (self.inner.clone(), copy, self.shared.delay())
        });
        let primary = self.inner.call(req);
        ResponseFuture::new(primary, hedge, self.shared.clone(), Instant::now())
    }
}
