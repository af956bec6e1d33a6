//! [`ClientError`]: what went wrong calling another service, typed so callers can act.

use std::fmt;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};

use crate::auth::AuthError;
use crate::error::ErrorBody;
use chassis_core::{BoxError, ErrorKind};

/// Longest body excerpt kept in [`ClientErrorKind::Status4xx`], in bytes.
const BODY_EXCERPT_LEN: usize = 1024;

/// What went wrong calling a downstream service.
///
/// The kind names the *cause*. When retries ran out, the kind is the last attempt's cause
/// (`Unreachable`, `TimedOut`, `Status5xx`…) and [`ClientError::attempts`] says how many
/// attempts were made; [`ClientError::retries_exhausted`] tells that case apart.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientErrorKind {
    /// The downstream answered 4xx: our request is wrong (or not allowed). Not retried, except
    /// 408 and 429.
    Status4xx {
        /// The status.
        status: StatusCode,
        /// The start of the response body (lossy UTF-8), for logs and for
        /// [`ClientError::api_error`].
        body: String,
    },
    /// The downstream answered 5xx (after any retries the policy allowed).
    Status5xx {
        /// The status.
        status: StatusCode,
        /// The downstream's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// No connection could be made (refused, DNS failure, connect timeout): the request was
    /// never sent.
    Unreachable,
    /// The connection failed after the request may have been sent (reset, protocol error,
    /// broken body): the downstream may or may not have acted on it.
    Transport,
    /// An attempt (or the overall deadline) timed out.
    TimedOut {
        /// The timeout that elapsed.
        after: Duration,
    },
    /// The circuit breaker for this downstream is open: the call was rejected locally, without
    /// reaching the downstream.
    CircuitOpen {
        /// Time until the breaker lets a probe through.
        retry_after: Duration,
    },
    /// A local bulkhead or rate limiter rejected the call (too many calls in flight or per
    /// second to this downstream).
    Overloaded {
        /// When a permit becomes available, if known.
        retry_after: Option<Duration>,
    },
    /// The request could not be built or sent as given (bad URL, unserialisable body).
    InvalidRequest {
        /// What is wrong.
        reason: String,
    },
    /// The response could not be read or decoded (body error, body too large, JSON that does not
    /// match the expected type).
    InvalidResponse {
        /// What is wrong.
        reason: String,
    },
    /// The service token could not be produced.
    Auth,
    /// The TLS handshake with the downstream failed, for the reason given: its certificate is
    /// not trusted, not for this host or out of its validity period, or it refused our client
    /// certificate. Not retried (another attempt meets the same certificate), but counted by
    /// the circuit breaker like any failure to connect.
    Tls(TlsFailure),
}

/// Why a TLS handshake failed; see [`ClientErrorKind::Tls`].
///
/// The rustls error with the details (the names the certificate is valid for, its expiry
/// date) is the [`source`](std::error::Error::source) of the [`ClientError`] and part of its
/// message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TlsFailure {
    /// The server's certificate does not chain to a trusted root: a self-signed certificate,
    /// a private CA that was not added
    /// ([`ClientTlsConfig::add_ca_file`](crate::tls::client::ClientTlsConfig::add_ca_file)),
    /// or a missing intermediate.
    UnknownIssuer,
    /// The server's certificate is not valid for the host name of the URL.
    NotValidForName,
    /// The server's certificate (or one of its chain) has expired.
    Expired,
    /// The server's certificate (or one of its chain) is not valid yet (or a clock is wrong).
    NotYetValid,
    /// The server's certificate has been revoked.
    Revoked,
    /// The server's certificate is unusable for another reason (bad signature or encoding,
    /// not meant for TLS servers, an unsupported algorithm).
    BadCertificate,
    /// The server requires a client certificate and none was configured.
    ClientCertificateRequired,
    /// The server rejected the client certificate (unknown CA, expired, revoked, not allowed).
    ClientCertificateRejected,
    /// No TLS version, cipher suite or ALPN protocol in common with the server.
    Incompatible,
    /// Any other TLS failure (a protocol error, a peer that misbehaved).
    Other,
}

impl TlsFailure {
    /// Maps a rustls error to the failure it says.
    #[cfg(feature = "tls")]
    pub(crate) fn from_rustls(err: &rustls::Error) -> Self {
        use rustls::{AlertDescription as Alert, CertificateError as Cert, Error as E};
        match err {
            E::InvalidCertificate(cert) => match cert {
                Cert::UnknownIssuer => Self::UnknownIssuer,
                Cert::NotValidForName | Cert::NotValidForNameContext { .. } => {
                    Self::NotValidForName
                }
                Cert::Expired | Cert::ExpiredContext { .. } => Self::Expired,
                Cert::NotValidYet | Cert::NotValidYetContext { .. } => Self::NotYetValid,
                Cert::Revoked => Self::Revoked,
                _ => Self::BadCertificate,
            },
            E::AlertReceived(Alert::CertificateRequired) => Self::ClientCertificateRequired,
            E::AlertReceived(
                Alert::BadCertificate
                | Alert::UnknownCA
                | Alert::CertificateExpired
                | Alert::CertificateRevoked
                | Alert::CertificateUnknown
                | Alert::UnsupportedCertificate
                | Alert::AccessDenied,
            ) => Self::ClientCertificateRejected,
            E::AlertReceived(
                Alert::HandshakeFailure
                | Alert::ProtocolVersion
                | Alert::InsufficientSecurity
                | Alert::NoApplicationProtocol,
            )
            | E::PeerIncompatible(_)
            | E::NoApplicationProtocol => Self::Incompatible,
            _ => Self::Other,
        }
    }

    /// The failure of the first rustls error in `err`'s source chain, if any.
    pub(crate) fn find(err: &(dyn std::error::Error + 'static)) -> Option<Self> {
        #[cfg(feature = "tls")]
        {
            find_rustls_error(err)
                .map(Self::from_rustls)
                .or_else(|| find_flattened_alert(err))
        }
        #[cfg(not(feature = "tls"))]
        {
            let _ = err;
            None
        }
    }
}

/// `err` and its sources, opening each `io::Error`: its `source()` skips the error it wraps
/// (it returns *that* error's source), so it is opened with `get_ref` instead.
#[cfg(feature = "tls")]
fn chain<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(err), |e| {
        match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        }
    })
}

/// The first [`rustls::Error`] in `err`'s source chain (hyper-rustls and tokio-rustls wrap it
/// in `io::Error`s).
#[cfg(feature = "tls")]
pub(crate) fn find_rustls_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    chain(err).find_map(|e| e.downcast_ref::<rustls::Error>())
}

/// A TLS alert that reached us through HTTP/2, which keeps only the kind and the text of an
/// `io::Error`: the server's refusal of our client certificate arrives after our side of a
/// TLS 1.3 handshake is over, on a connection hyper already drives as HTTP/2, and what is left
/// of rustls's error is an `InvalidData` error with rustls's text. The text is compared with
/// what this rustls version writes for each alert the mapping knows.
#[cfg(feature = "tls")]
fn find_flattened_alert(err: &(dyn std::error::Error + 'static)) -> Option<TlsFailure> {
    use rustls::AlertDescription as Alert;
    const ALERTS: [Alert; 12] = [
        Alert::CertificateRequired,
        Alert::BadCertificate,
        Alert::UnknownCA,
        Alert::CertificateExpired,
        Alert::CertificateRevoked,
        Alert::CertificateUnknown,
        Alert::UnsupportedCertificate,
        Alert::AccessDenied,
        Alert::HandshakeFailure,
        Alert::ProtocolVersion,
        Alert::InsufficientSecurity,
        Alert::NoApplicationProtocol,
    ];
    chain(err).find_map(|e| {
        let io = e.downcast_ref::<std::io::Error>()?;
        if io.kind() != std::io::ErrorKind::InvalidData {
            return None;
        }
        let text = io.get_ref()?.to_string();
        ALERTS.iter().find_map(|alert| {
            let received = rustls::Error::AlertReceived(*alert);
            (received.to_string() == text).then(|| TlsFailure::from_rustls(&received))
        })
    })
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::UnknownIssuer => "the server's certificate is not issued by a trusted CA",
            Self::NotValidForName => "the server's certificate is not valid for this host name",
            Self::Expired => "the server's certificate has expired",
            Self::NotYetValid => "the server's certificate is not valid yet",
            Self::Revoked => "the server's certificate is revoked",
            Self::BadCertificate => "the server's certificate is invalid",
            Self::ClientCertificateRequired => "the server requires a client certificate",
            Self::ClientCertificateRejected => "the server rejected our client certificate",
            Self::Incompatible => "no TLS version, cipher suite or protocol in common",
            Self::Other => "TLS protocol error",
        })
    }
}

chassis_core::__define_error! {
    /// The error of [`HttpClient`](super::HttpClient).
    pub struct ClientError(ClientErrorKind) {
        downstream: String,
        attempts: u32,
        retries_exhausted: bool,
        /// The status of an answer that arrived but whose body could not be read or decoded.
        answered: Option<StatusCode>,
    }
}

impl ClientError {
    pub(crate) fn new(kind: ClientErrorKind, downstream: &str) -> Self {
        Self {
            kind,
            downstream: downstream.to_owned(),
            attempts: 1,
            retries_exhausted: false,
            answered: None,
            source: None,
        }
    }

    /// The error for a non-2xx answer that was read whole: `Status4xx` with the start of the
    /// body, `Status5xx` with the `Retry-After` delay.
    pub(crate) fn from_answer(
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        downstream: &str,
    ) -> Self {
        let kind = if status.is_client_error() {
            let cut = body.len().min(BODY_EXCERPT_LEN);
            ClientErrorKind::Status4xx {
                status,
                body: String::from_utf8_lossy(&body[..cut]).into_owned(),
            }
        } else {
            ClientErrorKind::Status5xx {
                status,
                retry_after: super::policy::parse_retry_after(headers, SystemTime::now()),
            }
        };
        Self::new(kind, downstream)
    }

    /// `from_answer` (what `HttpClient::execute` makes of an error answer) for the fuzz targets in
    /// the repository's `fuzz/` crate, which feed it arbitrary answers; not part of the API.
    #[doc(hidden)]
    pub fn from_answer_for_fuzzing(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Self {
        Self::from_answer(status, headers, body, "fuzz")
    }

    pub(crate) fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Records the status of the answer whose body failed (`InvalidResponse`, `Transport`).
    pub(crate) fn with_answered(mut self, status: StatusCode) -> Self {
        self.answered = Some(status);
        self
    }

    pub(crate) fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    pub(crate) fn set_exhausted(&mut self) {
        self.retries_exhausted = true;
    }

    pub(crate) fn invalid_request(downstream: &str, reason: impl Into<String>) -> Self {
        Self::new(
            ClientErrorKind::InvalidRequest {
                reason: reason.into(),
            },
            downstream,
        )
    }

    pub(crate) fn invalid_response(downstream: &str, reason: impl Into<String>) -> Self {
        Self::new(
            ClientErrorKind::InvalidResponse {
                reason: reason.into(),
            },
            downstream,
        )
    }

    /// Maps an error out of the client's middleware stack to its cause.
    pub(crate) fn from_stack(err: BoxError, downstream: &str) -> Self {
        let mut exhausted = false;
        let mut err = err;
        loop {
            let core = match chassis_core::Error::from_boxed(err) {
                Ok(core) => core,
                Err(other) => {
                    let mut mapped = Self::from_transport(other, downstream);
                    mapped.retries_exhausted = exhausted;
                    return mapped;
                }
            };
            let kind = match core.kind() {
                ErrorKind::RetriesExhausted { .. }
                | ErrorKind::RetryBudgetExhausted { .. }
                | ErrorKind::RequestNotCloneable => None,
                ErrorKind::CircuitOpen { retry_after, .. } => Some(ClientErrorKind::CircuitOpen {
                    retry_after: *retry_after,
                }),
                ErrorKind::BulkheadFull { .. } | ErrorKind::ConcurrencyLimited { .. } => {
                    Some(ClientErrorKind::Overloaded { retry_after: None })
                }
                ErrorKind::RateLimited { retry_after, .. } => Some(ClientErrorKind::Overloaded {
                    retry_after: Some(*retry_after),
                }),
                ErrorKind::Timeout { after } | ErrorKind::DeadlineExceeded { after, .. } => {
                    Some(ClientErrorKind::TimedOut { after: *after })
                }
                ErrorKind::InvalidConfig { reason } => Some(ClientErrorKind::InvalidRequest {
                    reason: reason.clone(),
                }),
                _ => Some(ClientErrorKind::Transport),
            };
            let Some(kind) = kind else {
                // A retry wrapper: the cause is its source (the last attempt's error).
                exhausted |= !matches!(core.kind(), ErrorKind::RequestNotCloneable);
                match core.into_source() {
                    Some(source) => {
                        err = source;
                        continue;
                    }
                    None => {
                        let mut mapped = Self::new(ClientErrorKind::Transport, downstream);
                        mapped.retries_exhausted = exhausted;
                        return mapped;
                    }
                }
            };
            let mut mapped = Self::new(kind, downstream).with_source(core);
            mapped.retries_exhausted = exhausted;
            return mapped;
        }
    }

    fn from_transport(err: BoxError, downstream: &str) -> Self {
        if err.downcast_ref::<AuthError>().is_some() {
            return Self::new(ClientErrorKind::Auth, downstream).with_source(err);
        }
        if let Some(failure) = TlsFailure::find(err.as_ref()) {
            return Self::new(ClientErrorKind::Tls(failure), downstream).with_source(err);
        }
        let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err.as_ref());
        let mut kind = ClientErrorKind::Transport;
        while let Some(e) = current {
            if let Some(legacy) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
                if legacy.is_connect() {
                    kind = ClientErrorKind::Unreachable;
                }
                break;
            }
            current = e.source();
        }
        Self::new(kind, downstream).with_source(err)
    }

    /// The downstream's name (as configured on the client).
    pub fn downstream(&self) -> &str {
        &self.downstream
    }

    /// How many attempts were made (1 when the call was not retried).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Whether the policy retried and gave up (attempts, budget or deadline ran out).
    pub fn retries_exhausted(&self) -> bool {
        self.retries_exhausted
    }

    /// The HTTP status the downstream answered: for `Status4xx`/`Status5xx`, and for an
    /// `InvalidResponse` or `Transport` error that arose while reading or decoding the body of
    /// an answer that did arrive (too large, cut off, not the expected JSON).
    ///
    /// A 2xx here means the downstream **did act** on the request; only its answer was lost.
    /// A caller relaying a write must not report it as failed (a client would retry it and
    /// apply it twice): see [`ClientError::answered_success`].
    pub fn status(&self) -> Option<StatusCode> {
        match &self.kind {
            ClientErrorKind::Status4xx { status, .. }
            | ClientErrorKind::Status5xx { status, .. } => Some(*status),
            _ => self.answered,
        }
    }

    /// Whether the downstream answered with a 2xx whose body could not be read or decoded:
    /// the request succeeded, its answer did not arrive whole.
    pub fn answered_success(&self) -> bool {
        self.answered.is_some_and(|s| s.is_success())
    }

    /// When to try again, if the downstream or a local layer said.
    pub fn retry_after(&self) -> Option<Duration> {
        match &self.kind {
            ClientErrorKind::CircuitOpen { retry_after } => Some(*retry_after),
            ClientErrorKind::Overloaded { retry_after }
            | ClientErrorKind::Status5xx { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The downstream's chassis JSON error body, when a `Status4xx` body is one.
    pub fn api_error(&self) -> Option<ErrorBody> {
        match &self.kind {
            ClientErrorKind::Status4xx { body, .. } => serde_json::from_str(body).ok(),
            _ => None,
        }
    }

    /// Whether the call was rejected locally (open circuit, bulkhead, rate limit) without load
    /// on the downstream.
    pub fn is_rejection(&self) -> bool {
        matches!(
            self.kind,
            ClientErrorKind::CircuitOpen { .. } | ClientErrorKind::Overloaded { .. }
        )
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = &self.downstream;
        match &self.kind {
            ClientErrorKind::Status4xx { status, .. } => write!(f, "{name} answered {status}")?,
            ClientErrorKind::Status5xx { status, .. } => write!(f, "{name} answered {status}")?,
            ClientErrorKind::Unreachable => write!(f, "{name} is unreachable")?,
            ClientErrorKind::Transport => write!(f, "connection to {name} failed")?,
            ClientErrorKind::TimedOut { after } => {
                write!(f, "call to {name} timed out after {}ms", after.as_millis())?
            }
            ClientErrorKind::CircuitOpen { retry_after } => write!(
                f,
                "circuit to {name} is open; retry after {}ms",
                retry_after.as_millis()
            )?,
            ClientErrorKind::Overloaded { .. } => {
                write!(f, "too many calls to {name} (local limit)")?
            }
            ClientErrorKind::InvalidRequest { reason } => {
                write!(f, "invalid request to {name}: {reason}")?
            }
            ClientErrorKind::InvalidResponse { reason } => {
                write!(f, "invalid response from {name}: {reason}")?
            }
            ClientErrorKind::Auth => write!(f, "no service token for {name}")?,
            ClientErrorKind::Tls(failure) => {
                write!(f, "TLS handshake with {name} failed: {failure}")?;
                #[cfg(feature = "tls")]
                if let Some(tls) = self.source.as_deref().and_then(|e| find_rustls_error(e)) {
                    write!(f, " ({tls})")?;
                }
            }
        }
        if self.attempts > 1 {
            write!(f, " ({} attempts)", self.attempts)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwraps_retry_errors_to_the_cause() {
        let err: BoxError = Box::new(chassis_core::Error::with_source(
            ErrorKind::RetriesExhausted { attempts: 3 },
            chassis_core::Error::timeout(Duration::from_millis(200)),
        ));
        let mapped = ClientError::from_stack(err, "inventory").with_attempts(3);
        assert_eq!(
            mapped.kind(),
            &ClientErrorKind::TimedOut {
                after: Duration::from_millis(200)
            }
        );
        assert!(mapped.retries_exhausted());
        assert_eq!(
            mapped.to_string(),
            "call to inventory timed out after 200ms (3 attempts)"
        );
    }

    #[cfg(feature = "tls")]
    #[test]
    fn tls_failures_are_found_through_io_errors_and_say_which() {
        use rustls::{AlertDescription, CertificateError};
        use std::io;
        // What hyper-util hands over: a connect error whose source is the io::Error of
        // hyper-rustls around the io::Error of tokio-rustls around the rustls error.
        let wrap = |e: rustls::Error| -> BoxError {
            Box::new(io::Error::other(io::Error::new(
                io::ErrorKind::InvalidData,
                e,
            )))
        };
        let cases = [
            (
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
                TlsFailure::UnknownIssuer,
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
                TlsFailure::NotValidForName,
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::Expired),
                TlsFailure::Expired,
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::NotValidYet),
                TlsFailure::NotYetValid,
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::BadSignature),
                TlsFailure::BadCertificate,
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
                TlsFailure::ClientCertificateRequired,
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::UnknownCA),
                TlsFailure::ClientCertificateRejected,
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::ProtocolVersion),
                TlsFailure::Incompatible,
            ),
            (rustls::Error::DecryptError, TlsFailure::Other),
        ];
        for (rustls_error, failure) in cases {
            let text = rustls_error.to_string();
            let mapped = ClientError::from_stack(wrap(rustls_error), "ledger");
            assert_eq!(mapped.kind(), &ClientErrorKind::Tls(failure));
            let display = mapped.to_string();
            assert!(
                display.starts_with("TLS handshake with ledger failed: ")
                    && display.contains(&failure.to_string())
                    && display.contains(&text),
                "{display}"
            );
        }
        // HTTP/2 keeps only the kind and text of an io::Error.
        let flattened: BoxError = Box::new(io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(AlertDescription::CertificateRequired).to_string(),
        ));
        assert_eq!(
            ClientError::from_stack(flattened, "ledger").kind(),
            &ClientErrorKind::Tls(TlsFailure::ClientCertificateRequired)
        );
        let other: BoxError = Box::new(io::Error::new(io::ErrorKind::InvalidData, "bad frame"));
        assert_eq!(
            ClientError::from_stack(other, "ledger").kind(),
            &ClientErrorKind::Transport
        );
    }

    #[test]
    fn circuit_open_is_a_rejection() {
        let err: BoxError = Box::new(chassis_core::Error::circuit_open(
            "inventory".into(),
            Duration::from_secs(5),
        ));
        let mapped = ClientError::from_stack(err, "inventory");
        assert!(mapped.is_rejection());
        assert_eq!(mapped.retry_after(), Some(Duration::from_secs(5)));
        assert!(!mapped.retries_exhausted());
    }
}
