//! Keeping secrets out of logs, two ways.
//!
//! 1. By type: wrap a value in [`Secret`] and its `Debug` and `Display` print `[REDACTED]`, so
//!    it is safe in any log field, error message or `{:?}` dump. [`Secret::expose`] is the one
//!    explicit way to get the value.
//! 2. By field name: the chassis formatters replace the value of any event field whose name looks
//!    sensitive ([`is_sensitive_field`]: `password`, `token`, `secret`, `authorization`,
//!    `api_key`, `cookie`, ...) with `[REDACTED]`, whatever its type. This catches the
//!    `tracing::info!(token = %t, ...)` written in a hurry.
//!
//! The message text itself is not inspected: do not format secrets into it.
//!
//! ```
//! use chassis_observability::redact::{is_sensitive_field, Secret};
//! let password = Secret::new("hunter2".to_owned());
//! assert_eq!(format!("{password:?} {password}"), "[REDACTED] [REDACTED]");
//! assert_eq!(password.expose(), "hunter2");
//! assert!(is_sensitive_field("http.request.header.authorization"));
//! assert!(!is_sensitive_field("user.id"));
//! ```

use std::fmt;

/// The text printed instead of a sensitive value.
pub const REDACTED: &str = "[REDACTED]";

/// Substrings (matched case-insensitively, `-` treated as `_`) that make a field name sensitive.
pub const SENSITIVE_FIELD_PATTERNS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "authorization",
    "api_key",
    "apikey",
    "cookie",
    "private_key",
    "credential",
    "session_id",
];

/// Whether a field called `name` holds a secret (see [`SENSITIVE_FIELD_PATTERNS`]).
pub fn is_sensitive_field(name: &str) -> bool {
    // Called for every field of every log line: compare in place instead of allocating a
    // lower-cased copy.
    let norm = |c: u8| {
        if c == b'-' {
            b'_'
        } else {
            c.to_ascii_lowercase()
        }
    };
    let name = name.as_bytes();
    SENSITIVE_FIELD_PATTERNS.iter().any(|p| {
        let p = p.as_bytes();
        name.len() >= p.len()
            && name
                .windows(p.len())
                .any(|w| w.iter().zip(p).all(|(&a, &b)| norm(a) == b))
    })
}

/// A value that must never be printed: `Debug` and `Display` show `[REDACTED]`.
///
/// `Secret` deliberately implements neither `Serialize` nor `Deref`; call [`expose`](Self::expose)
/// where the value is really needed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T>(T);

/// A `Secret<String>`, the usual case.
pub type Redacted = Secret<String>;

impl<T> Secret<T> {
    /// Wraps `value`.
    pub const fn new(value: T) -> Self {
        Self(value)
    }

    /// The secret value.
    pub fn expose(&self) -> &T {
        &self.0
    }

    /// Unwraps the secret value.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Secret<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(d).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new(String::from("s3cr3t"));
        assert_eq!(format!("{s}"), REDACTED);
        assert_eq!(format!("{s:?}"), REDACTED);
        assert_eq!(format!("{s:#?}"), REDACTED);
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Login {
            user: String,
            password: Secret<String>,
        }
        let dump = format!(
            "{:?}",
            Login {
                user: "ann".into(),
                password: "s3cr3t".to_owned().into()
            }
        );
        assert!(!dump.contains("s3cr3t"), "{dump}");
        assert!(dump.contains("ann"));
        let de: Secret<String> = serde_json::from_str("\"tok\"").unwrap();
        assert_eq!(de.expose(), "tok");
    }

    #[test]
    fn sensitive_names() {
        for name in [
            "password",
            "db_password",
            "Authorization",
            "http.request.header.authorization",
            "api_key",
            "X-Api-Key",
            "apiKey",
            "access_token",
            "refresh-token",
            "client_secret",
            "cookie",
            "set_cookie",
        ] {
            assert!(is_sensitive_field(name), "{name}");
        }
        for name in ["message", "user.id", "http.route", "order_id", "trace_id"] {
            assert!(!is_sensitive_field(name), "{name}");
        }
    }
}
