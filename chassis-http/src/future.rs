//! [`ResponseFuture`]: the response future of the layers that either pass a request on, answer
//! it themselves, or run a boxed sequence of their own around the inner call (the bearer-token
//! layers, the idempotency and response-cache layers).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::Response;
use pin_project_lite::pin_project;

use crate::body::{Body, BoxError, boxed};

pin_project! {
    /// Response future of [`RequireServiceToken`](crate::auth::RequireServiceToken),
    /// [`RequireUserToken`](crate::auth::user::RequireUserToken),
    /// [`RequirePermission`](crate::auth::user::RequirePermission),
    /// [`Idempotency`](crate::idempotency::Idempotency) and
    /// [`ResponseCache`](crate::response_cache::ResponseCache): the inner service's future for
    /// a request the layer passes through, an answer the layer gave at once (a rejection, a
    /// malformed idempotency key), or a boxed future for the requests that must wait on
    /// something first (a JWKS refetch, the store's calls around the inner call). Only those
    /// pay for the box, and they wait on I/O anyway.
    pub struct ResponseFuture<F, E> {
        #[pin]
        state: State<F, E>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, E> {
        Inner { #[pin] future: F },
        Boxed { future: BoxFuture<'static, Result<Response<Body>, E>> },
        Answered { response: Option<Response<Body>> },
    }
}

impl<F, E> ResponseFuture<F, E> {
    pub(crate) fn inner(future: F) -> Self {
        Self {
            state: State::Inner { future },
        }
    }

    pub(crate) fn boxed(future: BoxFuture<'static, Result<Response<Body>, E>>) -> Self {
        Self {
            state: State::Boxed { future },
        }
    }

    pub(crate) fn answered(response: Response<Body>) -> Self {
        Self {
            state: State::Answered {
                response: Some(response),
            },
        }
    }
}

impl<F, E> fmt::Debug for ResponseFuture<F, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, E, B> Future for ResponseFuture<F, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Inner { future } => {
                let response = ready!(future.poll(cx))?;
                Poll::Ready(Ok(response.map(boxed)))
            }
            StateProj::Boxed { future } => future.as_mut().poll(cx),
            StateProj::Answered { response } => Poll::Ready(Ok(response
                .take()
                .expect("ResponseFuture polled after completion"))),
        }
    }
}
