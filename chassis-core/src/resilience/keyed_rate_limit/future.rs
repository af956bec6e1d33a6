//! [`ResponseFuture`] of [`KeyedRateLimit`](super::KeyedRateLimit).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_service::Service;

use crate::{BoxError, Error};

pin_project! {
    /// Response future of [`KeyedRateLimit`](super::KeyedRateLimit): waits for the backend's
    /// decision, then calls the inner service (or fails with the rejection).
    pub struct ResponseFuture<C, S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<C, S, Req, S::Future>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<C, S, Req, F> {
        Checking {
            #[pin]
            check: C,
            service: Option<S>,
            req: Option<Req>,
        },
        Calling {
            #[pin]
            future: F,
        },
    }
}

impl<C, S: Service<Req>, Req> ResponseFuture<C, S, Req> {
    pub(crate) fn new(check: C, service: S, req: Req) -> Self {
        Self {
            state: State::Checking {
                check,
                service: Some(service),
                req: Some(req),
            },
        }
    }
}

impl<C, S: Service<Req>, Req> fmt::Debug for ResponseFuture<C, S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Checking { .. } => "checking",
            State::Calling { .. } => "calling",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<C, S, Req> Future for ResponseFuture<C, S, Req>
where
    C: Future<Output = Result<(), Error>>,
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Checking {
                    check,
                    service,
                    req,
                } => {
                    ready!(check.poll(cx))?;
                    let (Some(mut service), Some(req)) = (service.take(), req.take()) else {
                        unreachable!("the checking state is left once");
                    };
                    let future = service.call(req);
                    this.state.set(State::Calling { future });
                }
                StateProj::Calling { future } => {
                    return future.poll(cx).map_err(Into::into);
                }
            }
        }
    }
}
