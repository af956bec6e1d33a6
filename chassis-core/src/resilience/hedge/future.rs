//! [`ResponseFuture`] of [`Hedge`](super::Hedge): the first attempt, and the hedge racing it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::retry::budget::Budget;
use tower_service::Service;

use super::layer::Shared;
use crate::BoxError;

pin_project! {
    /// Response future of [`Hedge`](super::Hedge): polls the first attempt and, once the delay
    /// has passed (and the retry budget allows), a second one; the first success wins and the
    /// other attempt is dropped (cancelled) at once. A failure before the hedge is sent ends
    /// the call (retrying is the retry layer's work); once both run, the call fails only when
    /// both have.
    pub struct ResponseFuture<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        primary: Option<S::Future>,
        #[pin]
        hedge: HedgeState<S, Req>,
        shared: Arc<Shared>,
        started: Instant,
    }
}

pin_project! {
    #[project = HedgeProj]
    enum HedgeState<S, Req>
    where
        S: Service<Req>,
    {
        // Not hedged (not idempotent, not copyable, budget spent, or over).
        Off,
        // The first attempt runs alone until the timer fires (boxed: only hedgeable calls pay).
        Waiting { sleep: Pin<Box<Sleep>>, service: Option<S>, request: Option<Req> },
        // The timer fired and the budget allowed it: waiting for the clone to be ready.
        Readying { service: S, request: Option<Req> },
        // The hedge is in flight.
        Running { #[pin] fut: S::Future },
    }
}

impl<S, Req> ResponseFuture<S, Req>
where
    S: Service<Req>,
{
    pub(crate) fn new(
        primary: S::Future,
        hedge: Option<(S, Req, Duration)>,
        shared: Arc<Shared>,
        started: Instant,
    ) -> Self {
        let hedge = match hedge {
            Some((service, request, delay)) => HedgeState::Waiting {
                sleep: Box::pin(tokio::time::sleep(delay)),
                service: Some(service),
                request: Some(request),
            },
            None => HedgeState::Off,
        };
        Self {
            primary: Some(primary),
            hedge,
            shared,
            started,
        }
    }
}

impl<S, Req> fmt::Debug for ResponseFuture<S, Req>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hedge = match self.hedge {
            HedgeState::Off => "off",
            HedgeState::Waiting { .. } => "waiting",
            HedgeState::Readying { .. } => "readying",
            HedgeState::Running { .. } => "running",
        };
        f.debug_struct("ResponseFuture")
            .field("primary", &self.primary.is_some())
            .field("hedge", &hedge)
            .finish()
    }
}

impl<S, Req> Future for ResponseFuture<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(fut) = this.primary.as_mut().as_pin_mut()
            && let Poll::Ready(result) = fut.poll(cx)
        {
            this.primary.set(None);
            match result {
                Ok(response) => {
                    // The loser is cancelled now, not when the caller drops this future.
                    this.hedge.set(HedgeState::Off);
                    record(this.shared, *this.started);
                    return Poll::Ready(Ok(response));
                }
                Err(error) => {
                    if !matches!(*this.hedge, HedgeState::Running { .. }) {
                        // Failed before a hedge was sent: no hedge after a failure.
                        this.hedge.set(HedgeState::Off);
                        return Poll::Ready(Err(error.into()));
                    }
                    // The hedge is in flight and may still succeed.
                }
            }
        }
        loop {
            match this.hedge.as_mut().project() {
                HedgeProj::Off => break,
                HedgeProj::Waiting {
                    sleep,
                    service,
                    request,
                } => {
                    if sleep.as_mut().poll(cx).is_pending() {
                        break;
                    }
                    // A hedge is a retry sent early: it spends the retry budget.
                    if this.shared.budget.as_ref().is_some_and(|b| !b.withdraw()) {
                        this.hedge.set(HedgeState::Off);
                        break;
                    }
                    let (Some(service), request) = (service.take(), request.take()) else {
                        unreachable!("a waiting hedge holds its service and request");
                    };
                    this.hedge.set(HedgeState::Readying { service, request });
                }
                HedgeProj::Readying { service, request } => match service.poll_ready(cx) {
                    Poll::Pending => break,
                    // The hedge is an optimisation: the first attempt still runs.
                    Poll::Ready(Err(_)) => {
                        this.hedge.set(HedgeState::Off);
                        break;
                    }
                    Poll::Ready(Ok(())) => {
                        let Some(request) = request.take() else {
                            unreachable!("a readying hedge holds its request");
                        };
                        let fut = service.call(request);
                        this.shared.sent.fetch_add(1, Relaxed);
                        tracing::debug!(hedge = %this.shared.name, "first attempt slow: hedge sent");
                        this.hedge.set(HedgeState::Running { fut });
                    }
                },
                HedgeProj::Running { fut } => match fut.poll(cx) {
                    Poll::Pending => break,
                    Poll::Ready(Ok(response)) => {
                        this.primary.set(None);
                        this.hedge.set(HedgeState::Off);
                        record(this.shared, *this.started);
                        return Poll::Ready(Ok(response));
                    }
                    Poll::Ready(Err(error)) => {
                        this.hedge.set(HedgeState::Off);
                        if this.primary.is_none() {
                            // Both failed: the later failure is the call's.
                            return Poll::Ready(Err(error.into()));
                        }
                        break;
                    }
                },
            }
        }
        Poll::Pending
    }
}

/// Feeds the percentile delay with the call's latency as its caller saw it.
fn record(shared: &Shared, started: Instant) {
    if let Some(latencies) = &shared.latencies {
        latencies.record(started.elapsed());
    }
}
