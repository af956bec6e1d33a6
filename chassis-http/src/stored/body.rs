//! Reading a response body to keep it, up to a limit, without losing any of it for the client.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::body::{Body, BoxError};

/// A response body the layer has read part or all of: the bytes read, then the trailers read,
/// then the error the body failed with, then the unread rest.
pub(crate) struct Resumed {
    pub(crate) prefix: Option<Bytes>,
    pub(crate) trailers: Option<HeaderMap>,
    pub(crate) error: Option<BoxError>,
    pub(crate) rest: Option<Body>,
}

impl http_body::Body for Resumed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(prefix) = self.prefix.take()
            && !prefix.is_empty()
        {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        if let Some(trailers) = self.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        if let Some(error) = self.error.take() {
            return Poll::Ready(Some(Err(error)));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.as_ref().is_none_or(Bytes::is_empty)
            && self.trailers.is_none()
            && self.error.is_none()
            && self
                .rest
                .as_ref()
                .is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let prefix = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        match &self.rest {
            None => SizeHint::with_exact(prefix),
            Some(rest) => {
                let rest = http_body::Body::size_hint(rest);
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + prefix);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + prefix);
                }
                hint
            }
        }
    }
}

pub(crate) enum Read {
    /// The whole body, within the limit: the body to send and the bytes to keep.
    Whole(Resumed, Bytes),
    /// Over the limit: what was read, and the rest.
    TooLarge(Resumed),
    /// The body failed: what was read, then its error.
    Failed(Resumed),
}

/// Reads a response body up to `limit` bytes to keep it; a larger one is read no further.
pub(crate) async fn read_response(mut body: Body, limit: usize) -> Read {
    let resumed = |prefix: Bytes, trailers, error, rest| Resumed {
        prefix: Some(prefix),
        trailers,
        error,
        rest,
    };
    if body.size_hint().lower() > limit as u64 {
        return Read::TooLarge(resumed(Bytes::new(), None, None, Some(body)));
    }
    let mut buf = BytesMut::new();
    let mut trailers: Option<HeaderMap> = None;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(err) => return Read::Failed(resumed(buf.freeze(), trailers, Some(err), None)),
        };
        match frame.into_data() {
            Ok(data) => {
                if buf.len() + data.len() > limit {
                    buf.extend_from_slice(&data);
                    return Read::TooLarge(resumed(buf.freeze(), trailers, None, Some(body)));
                }
                buf.extend_from_slice(&data);
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers.get_or_insert_with(HeaderMap::new).extend(t);
                }
            }
        }
    }
    let bytes = buf.freeze();
    Read::Whole(resumed(bytes.clone(), trailers, None, None), bytes)
}
