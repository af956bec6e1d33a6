//! The HTTP decisions plugged into chassis-core's [`ResiliencePolicy`]: what is retried, how
//! long the server asked us to wait, which requests may be sent twice, what trips the breaker.
//!
//! They are public so a hand-built tower stack over an HTTP client can reuse them with
//! [`ResilienceLayer::with_retry_classifier`] and friends.
//!
//! [`ResiliencePolicy`]: chassis_core::resilience::policy::ResiliencePolicy
//! [`ResilienceLayer::with_retry_classifier`]: chassis_core::resilience::policy::ResilienceLayer::with_retry_classifier

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use chassis_core::BoxError;
use chassis_core::resilience::circuit_breaker::{Classify, Outcome};
use chassis_core::resilience::retry::{
    CloneRequest, DefaultRetryClassifier, RetryAfter, RetryClassifier,
};
use http::header::RETRY_AFTER;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Full;

/// The request header that makes a non-idempotent request (POST, PATCH) retryable: the server
/// promises to apply one key at most once.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// A request extension that allows retrying this request even though its method is not
/// idempotent and it has no `Idempotency-Key` (the caller knows the operation is safe to repeat).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllowRetry;

/// Whether a status is worth another attempt: 408, 429, and 5xx except 501 and 505 (which will
/// not change on retry).
pub fn is_retryable_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429)
        || (status.is_server_error()
            && status != StatusCode::NOT_IMPLEMENTED
            && status != StatusCode::HTTP_VERSION_NOT_SUPPORTED)
}

/// Whether `method` is idempotent per RFC 9110 §9.2.2 (GET, HEAD, PUT, DELETE, OPTIONS, TRACE).
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

/// Retries retryable statuses (see [`is_retryable_status`]) and transport errors and attempt
/// timeouts (as [`DefaultRetryClassifier`] does: never local rejections such as an open
/// circuit); a 429/503 whose `Retry-After` asks for more than `max_retry_after` is not retried,
/// but returned.
///
/// TLS failures (see [`is_tls_failure`]) are not retried either: an untrusted, expired or
/// misnamed certificate, or a refused client certificate, is the same on the next attempt.
#[derive(Clone, Copy, Debug)]
pub struct HttpRetryClassifier {
    /// Longest server-requested wait still honoured by retrying.
    pub max_retry_after: Duration,
}

impl<B> RetryClassifier<Response<B>> for HttpRetryClassifier {
    fn should_retry(&self, outcome: Result<&Response<B>, &BoxError>) -> bool {
        match outcome {
            Ok(response) => {
                is_retryable_status(response.status())
                    && server_delay(response).is_none_or(|d| d <= self.max_retry_after)
            }
            Err(err) => {
                !is_tls_failure(err)
                    && RetryClassifier::<Response<B>>::should_retry(
                        &DefaultRetryClassifier,
                        outcome,
                    )
            }
        }
    }
}

/// Whether `err` is a failed TLS handshake (or a TLS alert from the server): a rustls error
/// anywhere in its source chain, including inside the `io::Error`s the TLS connector wraps it
/// in. Always `false` without the `tls` feature.
pub fn is_tls_failure(err: &BoxError) -> bool {
    super::error::TlsFailure::find(err.as_ref()).is_some()
}

/// Reads `Retry-After` (delta-seconds or an HTTP-date) from 429 and 503 responses.
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpRetryAfter;

impl<B> RetryAfter<Response<B>> for HttpRetryAfter {
    fn retry_after(&self, outcome: Result<&Response<B>, &BoxError>) -> Option<Duration> {
        server_delay(outcome.ok()?)
    }
}

fn server_delay<B>(response: &Response<B>) -> Option<Duration> {
    match response.status() {
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
            parse_retry_after(response.headers(), SystemTime::now())
        }
        _ => None,
    }
}

/// Parses a `Retry-After` header: delta-seconds (`120`) or an IMF-fixdate
/// (`Sun, 06 Nov 1994 08:49:37 GMT`, relative to `now`; a date in the past means no wait).
pub fn parse_retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = parse_imf_fixdate(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` (RFC 9110 §5.6.7; the obsolete formats are not accepted).
fn parse_imf_fixdate(value: &str) -> Option<SystemTime> {
    let rest = value.get(5..)?; // skip "Sun, "
    let mut parts = rest.split(' ');
    let day: u64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    // RFC 9110's date has a four-digit year; bounding it keeps the day arithmetic below far
    // from overflow (a year near i64::MAX overflowed it, found by the retry_after fuzz target).
    let year: i64 = parts
        .next()?
        .parse()
        .ok()
        .filter(|y| (1..=9999).contains(y))?;
    let mut hms = parts.next()?.split(':');
    let (h, m, s): (u64, u64, u64) = (
        hms.next()?.parse().ok()?,
        hms.next()?.parse().ok()?,
        hms.next()?.parse().ok()?,
    );
    if parts.next()? != "GMT" || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days).ok()? * 86_400 + h * 3600 + m * 60 + s;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Copies requests for retries, but only those that may be sent twice: idempotent methods, or
/// requests with an `Idempotency-Key` header or the [`AllowRetry`] extension, or any request
/// when `retry_non_idempotent` is set. For the others it returns `None`, which the retry layer
/// answers by not retrying (a failed response is returned as is, a failed call becomes
/// `RequestNotCloneable` with the failure as its source).
#[derive(Clone, Copy, Debug, Default)]
pub struct IdempotentRequests {
    /// Retry every method.
    pub retry_non_idempotent: bool,
}

impl IdempotentRequests {
    /// Whether `req` may be retried under this rule.
    pub fn allows<B>(&self, req: &Request<B>) -> bool {
        self.retry_non_idempotent
            || is_idempotent(req.method())
            || req.headers().contains_key(IDEMPOTENCY_KEY)
            || req.extensions().get::<AllowRetry>().is_some()
    }
}

impl CloneRequest<Request<Full<Bytes>>> for IdempotentRequests {
    fn clone_request(&self, req: &Request<Full<Bytes>>) -> Option<Request<Full<Bytes>>> {
        if !self.allows(req) {
            return None;
        }
        let mut copy = Request::new(req.body().clone());
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        *copy.extensions_mut() = req.extensions().clone();
        Some(copy)
    }
}

/// What the breaker counts: 5xx responses and transport errors and timeouts are failures, 429 is
/// ignored (the downstream is protecting itself, not broken), everything else is a success.
///
/// A failed TLS handshake is a failure, as a refused connection is: the downstream cannot be
/// used through this client until its certificate (or ours) changes, and an open breaker spares
/// every caller a handshake that will fail. Unlike a refused connection it is not retried
/// first (see [`HttpRetryClassifier`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpBreakerClassifier;

impl<B> Classify<Response<B>, BoxError> for HttpBreakerClassifier {
    fn classify(&self, result: Result<&Response<B>, &BoxError>) -> Outcome {
        match result {
            Ok(r) if r.status().is_server_error() => Outcome::Failure,
            Ok(r) if r.status() == StatusCode::TOO_MANY_REQUESTS => Outcome::Ignored,
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, retry_after: Option<&str>) -> Response<()> {
        let mut builder = Response::builder().status(status);
        if let Some(v) = retry_after {
            builder = builder.header(RETRY_AFTER, v);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn retry_after_in_seconds_and_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        let at = |v: &str| parse_retry_after(response(503, Some(v)).headers(), now);
        assert_eq!(at("3"), Some(Duration::from_secs(3)));
        assert_eq!(
            at("Sun, 06 Nov 1994 08:49:47 GMT"),
            Some(Duration::from_secs(10))
        );
        assert_eq!(at("Sun, 06 Nov 1994 08:49:30 GMT"), Some(Duration::ZERO));
        assert_eq!(at("soon"), None);
    }

    #[test]
    fn out_of_range_years_are_not_dates() {
        // Found by the retry_after fuzz target: a huge year overflowed the day arithmetic (a
        // panic with overflow checks, a wrong delay without).
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        let at = |v: &str| parse_retry_after(response(503, Some(v)).headers(), now);
        assert_eq!(at("Sun, 06 Nov 9223372036854775807 08:49:37 GMT"), None);
        assert_eq!(at("Sun, 06 Nov -9223372036854775808 08:49:37 GMT"), None);
        assert_eq!(at("Sun, 06 Nov 10000 08:49:37 GMT"), None);
        assert_eq!(at("Sun, 06 Nov 0 08:49:37 GMT"), None);
        assert_eq!(
            at("Fri, 31 Dec 9999 23:59:59 GMT"),
            Some(Duration::from_secs(253_402_300_799 - 784_111_777))
        );
    }

    #[test]
    fn statuses_and_delays_decide_retries() {
        let c = HttpRetryClassifier {
            max_retry_after: Duration::from_secs(5),
        };
        assert!(c.should_retry(Ok(&response(503, None))));
        assert!(c.should_retry(Ok(&response(429, Some("2")))));
        assert!(
            !c.should_retry(Ok(&response(503, Some("60")))),
            "too long a wait"
        );
        assert!(!c.should_retry(Ok(&response(404, None))));
        assert!(!c.should_retry(Ok(&response(501, None))));
        assert!(!c.should_retry(Ok(&response(200, None))));
        assert_eq!(
            HttpRetryAfter.retry_after(Ok(&response(429, Some("2")))),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            HttpRetryAfter.retry_after(Ok(&response(500, Some("2")))),
            None
        );
    }

    #[cfg(feature = "tls")]
    #[test]
    fn tls_failures_are_not_retried_but_trip_the_breaker() {
        use std::io;
        // As hyper-rustls hands it over: tokio-rustls's `InvalidData` error wrapped again.
        let rustls_error =
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let tls: BoxError = Box::new(io::Error::other(io::Error::new(
            io::ErrorKind::InvalidData,
            rustls_error,
        )));
        let reset: BoxError = Box::new(io::Error::from(io::ErrorKind::ConnectionReset));
        let c = HttpRetryClassifier {
            max_retry_after: Duration::from_secs(5),
        };
        assert!(is_tls_failure(&tls));
        assert!(!is_tls_failure(&reset));
        assert!(!RetryClassifier::<Response<()>>::should_retry(
            &c,
            Err(&tls)
        ));
        assert!(RetryClassifier::<Response<()>>::should_retry(
            &c,
            Err(&reset)
        ));
        assert_eq!(
            Classify::<Response<()>, BoxError>::classify(&HttpBreakerClassifier, Err(&tls)),
            Outcome::Failure
        );
    }

    #[test]
    fn only_idempotent_requests_are_copied() {
        let rule = IdempotentRequests::default();
        let req = |m: Method| {
            Request::builder()
                .method(m)
                .body(Full::<Bytes>::default())
                .unwrap()
        };
        assert!(rule.clone_request(&req(Method::GET)).is_some());
        assert!(rule.clone_request(&req(Method::PUT)).is_some());
        assert!(rule.clone_request(&req(Method::POST)).is_none());
        let mut keyed = req(Method::POST);
        keyed
            .headers_mut()
            .insert(IDEMPOTENCY_KEY, "k-1".parse().unwrap());
        let copy = rule.clone_request(&keyed).unwrap();
        assert_eq!(copy.headers()[IDEMPOTENCY_KEY], "k-1");
        let mut allowed = req(Method::PATCH);
        allowed.extensions_mut().insert(AllowRetry);
        assert!(rule.clone_request(&allowed).is_some());
        assert!(
            IdempotentRequests {
                retry_non_idempotent: true
            }
            .clone_request(&req(Method::POST))
            .is_some()
        );
    }
}
