//! An error answer read by the HTTP client (chassis_http::client): a 4xx keeps a bounded excerpt
//! of the body and reads the chassis JSON error body from it; a 5xx reads `Retry-After`.
//! Input: one byte choosing the status (400 + byte % 200), then the `Retry-After` value up to the
//! first newline, then the body.
#![no_main]

use chassis_http::client::{ClientError, ClientErrorKind};
use chassis_http::error::ErrorBody;
use http::header::RETRY_AFTER;
use http::{HeaderMap, StatusCode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let status = StatusCode::from_u16(400 + u16::from(selector) % 200).expect("400..=599");
    let (retry_after, body) = match rest.iter().position(|b| *b == b'\n') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (&rest[..0], rest),
    };
    let mut headers = HeaderMap::new();
    if let Ok(value) = http::HeaderValue::from_bytes(retry_after) {
        headers.insert(RETRY_AFTER, value);
    }

    let err = ClientError::from_answer_for_fuzzing(status, &headers, body);
    let _ = err.to_string();
    assert_eq!(err.status(), Some(status));
    match err.kind() {
        ClientErrorKind::Status4xx { body: excerpt, .. } => {
            assert!(status.is_client_error());
            // At most 1024 bytes of the body; lossy UTF-8 turns a bad byte into 3 at most.
            assert!(excerpt.len() <= 3 * 1024, "{} byte excerpt", excerpt.len());
            if body.len() <= 1024 {
                assert_eq!(excerpt.as_str(), String::from_utf8_lossy(body));
            }
            if let Some(api) = err.api_error() {
                let json = serde_json::to_string(&api).expect("an ErrorBody serialises");
                assert_eq!(
                    serde_json::from_str::<ErrorBody>(&json).expect("and parses"),
                    api
                );
            }
        }
        ClientErrorKind::Status5xx { .. } => {
            assert!(status.is_server_error());
            assert_eq!(err.api_error(), None);
        }
        other => panic!("an error answer became {other:?}"),
    }
});
