//! [`EarlyErrorIo`]: gives the error answers hyper writes on its own the chassis JSON body.
//!
//! Some HTTP/1 requests never reach a service: hyper rejects a request head it cannot parse
//! (400), one over its buffer or header-count limits (431, more than 100 fields or more head
//! than the server's hard buffer limit) or a URI over its length limit (414). hyper answers
//! those itself, writing a head with `content-length: 0` straight to the connection, and then
//! closes it; no service, layer or hook runs. hyper offers no way to change that answer, so
//! the server wraps each connection's IO in this type, which recognises the answer as it is
//! written and writes the chassis error instead: the same status line and headers, plus
//! `content-type: application/json` and the JSON body with the status's code and reason
//! phrase. Its `traceId` is `null`: the request was never parsed, so there is no trace context
//! and no request span to take one from.
//!
//! Recognising it is unambiguous because the server gives every other error response a JSON
//! body ([`super::connection_service`]): a written chunk that *is* one complete response head
//! with a 4xx/5xx status, `content-length: 0` and no `content-type` can only be hyper's own.
//! The per-write cost for everything else is a look at the byte where an HTTP/1 status code
//! starts. HTTP/2 writes binary frames, which never match; h2's own answer to oversized header
//! lists (a bare 431) cannot be rewritten this way, which is why the server sets h2's limit
//! well above [`ServerConfig::max_header_bytes`](super::ServerConfig::max_header_bytes) and
//! answers the sizes in between itself.
//!
//! A response head pipelined behind the unflushed tail of an earlier response is written in
//! the same chunk and left as hyper wrote it (a client pipelining a malformed request behind a
//! good one).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::StatusCode;
use hyper::rt::{Read, ReadBufCursor, Write};

use crate::error::ApiError;

/// A connection's IO that rewrites hyper's own error answers; see the [module docs](self).
#[derive(Debug)]
pub(crate) struct EarlyErrorIo<T> {
    inner: T,
    /// What is left to write of a rewritten answer (hyper was told it was written).
    pending: Bytes,
}

impl<T> EarlyErrorIo<T> {
    pub(crate) fn new(inner: T) -> Self {
        Self {
            inner,
            pending: Bytes::new(),
        }
    }
}

const HEAD_END: &[u8] = b"\r\n\r\n";
const EMPTY_LENGTH: &[u8] = b"\r\ncontent-length: 0\r\n";

/// hyper's own error answer, rewritten with the JSON body; `None` for anything else.
#[inline]
fn rewrite(chunk: &[u8]) -> Option<Bytes> {
    // `HTTP/1.1 4..` or `HTTP/1.1 5..`: one byte decides for almost every write.
    if !matches!(chunk.get(9), Some(b'4' | b'5')) {
        return None;
    }
    rewrite_head(chunk)
}

#[cold]
#[inline(never)]
fn rewrite_head(chunk: &[u8]) -> Option<Bytes> {
    if !chunk.starts_with(b"HTTP/1.1 ") || !chunk.ends_with(HEAD_END) {
        return None;
    }
    let head = std::str::from_utf8(chunk).ok()?;
    // Exactly one head: nothing after its first blank line.
    if head.find("\r\n\r\n")? + HEAD_END.len() != head.len() {
        return None;
    }
    let lower = head.to_ascii_lowercase();
    if lower.contains("\r\ncontent-type:") || !lower.contains("\r\ncontent-length: 0\r\n") {
        return None;
    }
    let status = StatusCode::from_bytes(chunk.get(9..12)?).ok()?;
    let reason = status.canonical_reason().unwrap_or("error");
    let json = ApiError::from_status(status, reason).to_json();

    let start = lower.find("\r\ncontent-length: 0\r\n")?;
    let mut out = BytesMut::with_capacity(head.len() + json.len() + 64);
    out.extend_from_slice(&chunk[..start]);
    out.extend_from_slice(b"\r\ncontent-type: application/json\r\ncontent-length: ");
    out.extend_from_slice(json.len().to_string().as_bytes());
    out.extend_from_slice(&chunk[start + EMPTY_LENGTH.len() - 2..]);
    out.extend_from_slice(&json);
    tracing::debug!(
        target: "chassis_http::server",
        status = status.as_u16(),
        "request rejected before reaching a service; answered with the error body"
    );
    Some(out.freeze())
}

impl<T: Write + Unpin> EarlyErrorIo<T> {
    /// Writes what is left of a rewritten answer; ready once it is all written.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.advance(n);
        }
        Poll::Ready(Ok(()))
    }

    /// Sends `answer` in place of hyper's `written` bytes, which count as written; the
    /// rewritten ones go out now or at the next write, flush or shutdown.
    fn answer_instead(
        &mut self,
        cx: &mut Context<'_>,
        answer: Bytes,
        written: usize,
    ) -> Poll<io::Result<usize>> {
        self.pending = answer;
        if let Poll::Ready(Err(e)) = self.poll_pending(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(written))
    }
}

impl<T: Read + Unpin> Read for EarlyErrorIo<T> {
    #[inline]
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for EarlyErrorIo<T> {
    #[inline]
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_pending(cx))?;
        if let Some(answer) = rewrite(buf) {
            return self.answer_instead(cx, answer, buf.len());
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    #[inline]
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_pending(cx))?;
        // hyper's answer has no body: a single non-empty slice (counted only for an error
        // status, so a success costs the one byte test in `rewrite`).
        if let Some(first) = bufs.iter().find(|b| !b.is_empty())
            && let Some(answer) = rewrite(first)
            && bufs.iter().filter(|b| !b.is_empty()).count() == 1
        {
            return self.answer_instead(cx, answer, first.len());
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    #[inline]
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    #[inline]
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYPER_431: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: Sun, 06 Dec 2026 17:15:44 GMT\r\n\r\n";

    #[test]
    fn hypers_answer_gets_the_json_body() {
        let out = rewrite(HYPER_431).expect("recognised");
        let text = std::str::from_utf8(&out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
        assert!(
            head.contains("\r\ndate: Sun, 06 Dec 2026 17:15:44 GMT"),
            "{head}"
        );
        assert!(
            head.contains("\r\ncontent-type: application/json\r\n"),
            "{head}"
        );
        assert!(
            head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())),
            "{head}"
        );
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "request_header_fields_too_large");
        assert_eq!(json["error"]["message"], "Request Header Fields Too Large");
        assert_eq!(json["traceId"], serde_json::Value::Null);
    }

    #[test]
    fn other_writes_are_left_alone() {
        for chunk in [
            // A success, a body, a JSON error, an error with a body, a head and more.
            &b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 4",
            b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
            b"\x00\x00\x12\x04\x00\x00\x00\x00\x00",
        ] {
            assert!(rewrite(chunk).is_none(), "{:?}", String::from_utf8_lossy(chunk));
        }
    }
}
