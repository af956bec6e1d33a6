//! gRPC status codes on the wire: reading a response's `grpc-status`, answering a call with a
//! status alone ("trailers-only", the trace id in metadata), and the code a chassis error
//! answer stands for.
//!
//! The chassis HTTP layers answer errors with a status and the JSON body
//! (`{"error":{"code",...},"traceId"}`); a gRPC client reads neither. [`code_for_error`] is the
//! translation [`StatusMappingLayer`](super::StatusMappingLayer) applies, so a shed call is
//! `RESOURCE_EXHAUSTED`, a missing token `UNAUTHENTICATED` and a panic `INTERNAL`, whichever
//! layer answered.
//!
//! # Example
//! ```
//! use chassis_http::grpc::code::{TRACE_ID_KEY, grpc_code, status_response};
//! use tonic::Code;
//!
//! let response = status_response(Code::Unavailable, "try later", Some("4bf92f3577b34da6a3ce929d0e0e4736"));
//! assert_eq!(response.status(), 200);
//! assert_eq!(grpc_code(response.headers()), Some(Code::Unavailable));
//! assert_eq!(response.headers()[TRACE_ID_KEY], "4bf92f3577b34da6a3ce929d0e0e4736");
//! ```

use http::{HeaderMap, Response, StatusCode};
use tonic::Code;
use tonic::metadata::{MetadataMap, MetadataValue};

use crate::body::{Body, boxed};
use crate::error::codes;

/// The metadata key that carries the trace id of a failed call, so a caller can quote it
/// (gRPC has no error body to put it in).
pub const TRACE_ID_KEY: &str = "x-trace-id";

/// The `grpc-status` of a header map (a trailers-only response's head, or trailers), if it
/// has one. An unreadable value is `UNKNOWN`, as gRPC's own clients read it.
pub fn grpc_code(headers: &HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .map(|value| Code::from_bytes(value.as_bytes()))
}

/// A trailers-only answer: HTTP 200 with `content-type: application/grpc`, `grpc-status`,
/// `grpc-message` and, when known, the trace id under [`TRACE_ID_KEY`].
pub fn status_response(code: Code, message: &str, trace_id: Option<&str>) -> Response<Body> {
    let mut metadata = MetadataMap::new();
    if let Some(id) = trace_id.and_then(|id| MetadataValue::try_from(id).ok()) {
        metadata.insert(TRACE_ID_KEY, id);
    }
    tonic::Status::with_metadata(code, message, metadata)
        .into_http::<tonic::body::Body>()
        .map(boxed)
}

/// The gRPC code for a chassis error answer: its JSON `code` where that says more than the
/// HTTP status (a shed call and an open circuit are both 503), else the status.
///
/// | chassis answer | gRPC code |
/// |---|---|
/// | 503 `overloaded`, 429, 413 | `RESOURCE_EXHAUSTED` |
/// | 503 (`unavailable`, `circuit_open`, `bulkhead_full`), 502 | `UNAVAILABLE` |
/// | 504, 408 | `DEADLINE_EXCEEDED` |
/// | 401 | `UNAUTHENTICATED` |
/// | 403 | `PERMISSION_DENIED` |
/// | 404 | `NOT_FOUND` |
/// | 409 | `ABORTED` |
/// | 400, 422 | `INVALID_ARGUMENT` |
/// | 405, 415, 501 | `UNIMPLEMENTED` |
/// | 500 and any other 5xx | `INTERNAL` |
/// | any other 4xx | `FAILED_PRECONDITION` |
pub fn code_for_error(status: StatusCode, code: Option<&str>) -> Code {
    if code == Some(codes::OVERLOADED) {
        return Code::ResourceExhausted;
    }
    match status.as_u16() {
        413 | 429 => Code::ResourceExhausted,
        502 | 503 => Code::Unavailable,
        408 | 504 => Code::DeadlineExceeded,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        409 => Code::Aborted,
        400 | 422 => Code::InvalidArgument,
        405 | 415 | 501 => Code::Unimplemented,
        s if s >= 500 => Code::Internal,
        _ => Code::FailedPrecondition,
    }
}

/// The label value of a code in metrics: its number, as the OpenTelemetry RPC conventions
/// record `rpc.grpc.status_code`.
pub(crate) fn code_label(code: Code) -> &'static str {
    const LABELS: [&str; 17] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    ];
    LABELS.get(code as usize).copied().unwrap_or("2")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chassis_answers_map_to_the_codes_clients_act_on() {
        let c = |s: u16, code: Option<&str>| code_for_error(StatusCode::from_u16(s).unwrap(), code);
        assert_eq!(c(503, Some("overloaded")), Code::ResourceExhausted);
        assert_eq!(c(503, Some("circuit_open")), Code::Unavailable);
        assert_eq!(c(504, Some("timeout")), Code::DeadlineExceeded);
        assert_eq!(c(401, Some("unauthorized")), Code::Unauthenticated);
        assert_eq!(c(403, Some("forbidden")), Code::PermissionDenied);
        assert_eq!(c(500, None), Code::Internal);
        assert_eq!(c(418, None), Code::FailedPrecondition);
    }

    #[test]
    fn trailers_only_answers_carry_code_message_and_trace_id() {
        let response = status_response(Code::Internal, "boom", Some("abc"));
        assert_eq!(response.headers()["content-type"], "application/grpc");
        assert_eq!(response.headers()["grpc-message"], "boom");
        assert_eq!(grpc_code(response.headers()), Some(Code::Internal));
        assert_eq!(response.headers()[TRACE_ID_KEY], "abc");
        let without = status_response(Code::Ok, "", None);
        assert!(!without.headers().contains_key(TRACE_ID_KEY));
        assert_eq!(code_label(Code::Unauthenticated), "16");
        assert_eq!(code_label(Code::Ok), "0");
    }
}
