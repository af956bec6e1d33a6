//! [`ResponseFuture`] of the services that keep responses.

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
    /// Response future of [`Idempotency`](crate::idempotency::Idempotency) and
    /// [`ResponseCache`](crate::response_cache::ResponseCache): the inner service's future for
    /// a request the layer passes through, an answer the layer gave at once (a malformed
    /// idempotency key), or, for a request the layer handles, the boxed sequence of store
    /// calls, the inner call and the response's keeping. The box is only paid by those, which
    /// wait on the store anyway.
    pub struct ResponseFuture<F, E> {
        #[pin]
        state: State<F, E>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, E> {
        Inner { #[pin] future: F },
        Keyed { future: BoxFuture<'static, Result<Response<Body>, E>> },
        Answered { response: Option<Response<Body>> },
    }
}

impl<F, E> ResponseFuture<F, E> {
    pub(crate) fn inner(future: F) -> Self {
        Self {
            state: State::Inner { future },
        }
    }

    pub(crate) fn keyed(future: BoxFuture<'static, Result<Response<Body>, E>>) -> Self {
        Self {
            state: State::Keyed { future },
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
            StateProj::Keyed { future } => future.as_mut().poll(cx),
            StateProj::Answered { response } => Poll::Ready(Ok(response
                .take()
                .expect("ResponseFuture polled after completion"))),
        }
    }
}
