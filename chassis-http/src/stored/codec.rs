//! The byte layout shared by the stores' records: lengths big-endian, a response's header
//! fields as a count then `name length, name, value length, value` each, a body as its length
//! then its bytes.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

/// Appends a response's status, header fields and body.
pub(crate) fn write_response(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) {
    out.extend_from_slice(&status.as_u16().to_be_bytes());
    out.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    for (name, value) in headers {
        out.extend_from_slice(&(name.as_str().len() as u32).to_be_bytes());
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
}

/// Reads the bytes of a record front to back; every read is `None` past the end.
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    pub(crate) fn u32(&mut self) -> Option<usize> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?) as usize)
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    /// Reads what [`write_response`] wrote; `None` unless it ends the record.
    pub(crate) fn response(mut self) -> Option<(StatusCode, HeaderMap, Bytes)> {
        let status =
            StatusCode::from_u16(u16::from_be_bytes(self.take(2)?.try_into().ok()?)).ok()?;
        let count = self.u32()?;
        let mut headers = HeaderMap::new();
        for _ in 0..count {
            let len = self.u32()?;
            let name = HeaderName::from_bytes(self.take(len)?).ok()?;
            let len = self.u32()?;
            let value = HeaderValue::from_bytes(self.take(len)?).ok()?;
            headers.append(name, value);
        }
        let len = self.u32()?;
        let body = Bytes::copy_from_slice(self.take(len)?);
        self.0.is_empty().then_some((status, headers, body))
    }
}

/// The accessors of a kept response's fields `status`, `headers` and `body`, and its `size`.
/// Use inside the `impl` of the type that keeps them; the attributes document `body`.
macro_rules! response_accessors {
    ($(#[$body_doc:meta])*) => {
        /// The status.
        pub fn status(&self) -> ::http::StatusCode {
            self.status
        }

        /// The headers.
        pub fn headers(&self) -> &::http::HeaderMap {
            &self.headers
        }

        $(#[$body_doc])*
        pub fn body(&self) -> &::bytes::Bytes {
            &self.body
        }

        /// Bytes held: the body and the header fields (what a memory bound counts).
        pub fn size(&self) -> usize {
            $crate::stored::codec::response_size(&self.headers, &self.body)
        }
    };
}

pub(crate) use response_accessors;

/// Adds a kept response's `status`, the number of its `headers` and its `body_len` to `d`.
pub(crate) fn debug_response(
    d: &mut std::fmt::DebugStruct<'_, '_>,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) {
    d.field("status", &status)
        .field("headers", &headers.len())
        .field("body_len", &body.len());
}

/// Bytes a kept response holds in memory: its body and header fields, and a fixed overhead.
pub(crate) fn response_size(headers: &HeaderMap, body: &[u8]) -> usize {
    body.len()
        + headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 2)
            .sum::<usize>()
        + 64
}
