//! The crate's error type: [`Error`] with an [`ErrorKind`] saying what went wrong.
//!
//! ```
//! use chassis_observability::{Error, ErrorKind};
//! let err = Error::invalid_config("sample ratio must be within 0..=1");
//! assert!(matches!(err.kind(), ErrorKind::InvalidConfig { .. }));
//! ```

use std::fmt;
use std::time::Duration;

use crate::config::OtlpProtocol;

/// What went wrong while setting up or shutting down telemetry.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A global `tracing` subscriber is already installed (for example by another test in the
    /// same process). Nothing was changed.
    GlobalSubscriberExists,
    /// A global `metrics` recorder is already installed. Nothing was changed.
    GlobalRecorderExists,
    /// The configuration (or an `OTEL_*` / `LOG_FORMAT` / `RUST_LOG` variable) is invalid.
    InvalidConfig {
        /// What is wrong, naming the setting.
        reason: String,
    },
    /// OTLP export was configured (an endpoint is set) over a transport this build leaves out:
    /// the crate feature named here compiles it in (`otlp-http` for `http/protobuf`, `grpc` for
    /// gRPC). Nothing was installed. Enable the feature, or leave the endpoint unset (or set
    /// `OTEL_TRACES_EXPORTER=none`) to run without export.
    TransportNotEnabled {
        /// The protocol asked for.
        protocol: OtlpProtocol,
        /// The crate feature that compiles its transport in.
        feature: &'static str,
    },
    /// TLS for OTLP export could not be set up: a CA bundle, client certificate or key file that
    /// cannot be read or holds no usable PEM, or a key that does not match its certificate.
    Tls {
        /// What is wrong, naming the file and the setting (and variable) that points at it.
        reason: String,
    },
    /// The OTLP exporter could not be built.
    Exporter {
        /// What the exporter reported.
        reason: String,
    },
    /// An OTLP export needs a tokio runtime, and none was running when `init`/`build` was called.
    NoRuntime,
    /// Flushing telemetry did not finish within the shutdown deadline.
    ShutdownTimedOut {
        /// The deadline that passed.
        after: Duration,
    },
    /// Flushing telemetry failed (the spans still queued are lost).
    Shutdown {
        /// What the SDK reported.
        reason: String,
    },
}

chassis_core::__define_error! {
    /// The error of chassis-observability: an [`ErrorKind`] plus, where there is one, the
    /// underlying error as [`source`](std::error::Error::source).
    pub struct Error(ErrorKind);
    display = kind;
}

impl Error {
    /// An [`ErrorKind::InvalidConfig`] error.
    pub fn invalid_config(reason: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidConfig {
            reason: reason.into(),
        })
    }
}

/// The message of an [`Error`] (its source is not part of it).
impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::GlobalSubscriberExists => {
                f.write_str("a global tracing subscriber is already installed")
            }
            ErrorKind::GlobalRecorderExists => {
                f.write_str("a global metrics recorder is already installed")
            }
            ErrorKind::InvalidConfig { reason } => write!(f, "invalid telemetry config: {reason}"),
            ErrorKind::TransportNotEnabled { protocol, feature } => write!(
                f,
                "OTLP export over {} is not compiled in: enable chassis-observability's `{feature}` \
                 feature, or configure no OTLP endpoint to run without export",
                protocol.as_str()
            ),
            ErrorKind::Tls { reason } => write!(f, "OTLP export over TLS: {reason}"),
            ErrorKind::Exporter { reason } => write!(f, "cannot build the OTLP exporter: {reason}"),
            ErrorKind::NoRuntime => {
                f.write_str("OTLP export needs a tokio runtime: call init() from within one")
            }
            ErrorKind::ShutdownTimedOut { after } => {
                write!(f, "telemetry flush did not finish within {after:?}")
            }
            ErrorKind::Shutdown { reason } => write!(f, "telemetry shutdown failed: {reason}"),
        }
    }
}
