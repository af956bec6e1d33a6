//! The claims of a service token and the verified caller identity handlers see.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::error::{AuthError, AuthErrorKind};

/// The claims the chassis puts in a service token (RFC 7519 registered claims plus the RFC 8693
/// `scope`, a space-separated list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceClaims {
    /// Who issued the token (the issuing service or a central token service).
    pub iss: String,
    /// The calling service.
    pub sub: String,
    /// The target service.
    pub aud: String,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Not before, seconds since the Unix epoch.
    pub nbf: u64,
    /// Expires at, seconds since the Unix epoch.
    pub exp: u64,
    /// Unique token id (a UUID).
    pub jti: String,
    /// Granted scopes, space-separated; omitted when there are none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
}

/// The verified caller of a request, inserted as a request extension by
/// [`RequireServiceTokenLayer`](super::RequireServiceTokenLayer).
///
/// Under axum, extract it with `Extension<ServiceIdentity>`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServiceIdentity {
    /// The calling service (`sub`).
    pub subject: String,
    /// Who vouched for it (`iss`).
    pub issuer: String,
    /// The scopes the token grants.
    pub scopes: Vec<String>,
    /// The token id (`jti`), for audit logs and replay detection.
    pub jti: String,
    /// When the token expires.
    pub expires_at: SystemTime,
}

impl ServiceIdentity {
    /// Whether the token grants `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// The scopes of `required` this identity lacks (empty when it has them all).
    pub fn missing_scopes<'a>(&self, required: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        required
            .into_iter()
            .filter(|r| !self.has_scope(r))
            .map(str::to_owned)
            .collect()
    }
}

/// Checks a scope token against RFC 6749 §3.3 (`%x21 / %x23-5B / %x5D-7E`, at least one char).
pub(crate) fn check_scope(scope: &str) -> Result<(), AuthError> {
    let ok = !scope.is_empty()
        && scope
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
    if ok {
        Ok(())
    } else {
        Err(AuthError::new(AuthErrorKind::InvalidConfig {
            reason: format!("invalid scope token {scope:?} (RFC 6749 §3.3)"),
        }))
    }
}

pub(crate) fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub(crate) fn from_unix_seconds(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_tokens_follow_rfc_6749() {
        assert!(check_scope("orders:read").is_ok());
        assert!(check_scope("a b").is_err());
        assert!(check_scope("").is_err());
        assert!(check_scope("quote\"").is_err());
    }

    #[test]
    fn missing_scopes_lists_only_absent_ones() {
        let id = ServiceIdentity {
            subject: "a".into(),
            issuer: "a".into(),
            scopes: vec!["x".into(), "y".into()],
            jti: "j".into(),
            expires_at: UNIX_EPOCH,
        };
        assert!(id.missing_scopes(["x", "y"]).is_empty());
        assert_eq!(id.missing_scopes(["x", "z"]), vec!["z".to_owned()]);
    }
}
