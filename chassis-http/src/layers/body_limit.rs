//! The request body the [guard](super::guard)'s body-limit part hands to the inner service,
//! and the error it fails with once the limit is crossed.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Buf;
use http::header;
use http_body::{Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::body::BoxError;

/// The declared `Content-Length` of a request, if it has a valid one.
pub(crate) fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The error a [`LimitedBody`] fails with once the limit is crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LengthLimitError {
    limit: usize,
}

impl LengthLimitError {
    /// The limit in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

impl fmt::Display for LengthLimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request body exceeds the limit of {} bytes", self.limit)
    }
}

impl std::error::Error for LengthLimitError {}

pin_project! {
    /// The request body handed to the inner service: the original body, limited when its length
    /// was not declared.
    pub struct LimitedBody<B> {
        #[pin]
        inner: B,
        limit: Option<Limit>,
    }
}

struct Limit {
    remaining: usize,
    limit: usize,
    tripped: Arc<AtomicBool>,
}

impl<B> LimitedBody<B> {
    pub(crate) fn unlimited(inner: B) -> Self {
        Self { inner, limit: None }
    }

    pub(crate) fn limited(inner: B, limit: usize, tripped: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            limit: Some(Limit {
                remaining: limit,
                limit,
                tripped,
            }),
        }
    }
}

impl<B> fmt::Debug for LimitedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimitedBody")
            .field("remaining", &self.limit.as_ref().map(|l| l.remaining))
            .finish_non_exhaustive()
    }
}

impl<B> http_body::Body for LimitedBody<B>
where
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = match ready!(this.inner.poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
            None => return Poll::Ready(None),
        };
        if let (Some(limit), Some(data)) = (this.limit.as_mut(), frame.data_ref()) {
            let len = data.remaining();
            if len > limit.remaining {
                limit.remaining = 0;
                limit.tripped.store(true, Ordering::Release);
                return Poll::Ready(Some(Err(Box::new(LengthLimitError { limit: limit.limit }))));
            }
            limit.remaining -= len;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        // The limit does not change what the body announces; crossing it is an error.
        self.inner.size_hint()
    }
}
