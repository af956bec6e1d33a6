//! [`AuthError`]: what went wrong while loading keys, issuing or verifying a service token.

use std::fmt;

use http::StatusCode;
use jsonwebtoken::Algorithm;

use chassis_core::BoxError;

/// What went wrong in service-token auth.
///
/// The verification kinds map to an HTTP answer with [`AuthError::status`]: everything that
/// means "we do not know who you are" is `401 Unauthorized`, everything that means "we know who
/// you are, but this token does not let you in here" ([`WrongAudience`](Self::WrongAudience),
/// [`InsufficientScope`](Self::InsufficientScope)) is `403 Forbidden`.
///
/// No variant ever carries token or key material: only key ids, claim names and service names.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthErrorKind {
    /// The request carries no `Authorization: Bearer …` header (or another scheme).
    MissingToken,
    /// The `Authorization` header is present but unusable (not valid text, several of them,
    /// `Bearer` with nothing after it).
    MalformedHeader,
    /// The token is not a well-formed JWS (not three base64url segments, unreadable header or
    /// claims, an algorithm we do not know such as `none`, an unsupported `crit` header).
    MalformedToken,
    /// The token names a key id (`kid`) no configured key has, even after refetching the key set,
    /// or names none at all.
    UnknownKey {
        /// The key id from the token header, if it had one.
        kid: Option<String>,
    },
    /// The token header asks for a different algorithm than the one the key is pinned to (the
    /// algorithm-confusion attack, e.g. HS256 signed with a public key).
    AlgorithmMismatch {
        /// The algorithm the key with that `kid` is pinned to.
        expected: Algorithm,
        /// The algorithm the token header claims.
        found: Algorithm,
    },
    /// The signature does not verify: the token was forged or altered.
    InvalidSignature,
    /// A claim the chassis requires (`iss`, `sub`, `aud`, `exp`, `iat`, `jti`) is missing or has
    /// the wrong type.
    MissingClaim {
        /// The claim's name.
        claim: &'static str,
    },
    /// `exp` is in the past (beyond the leeway).
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    NotYetValid,
    /// `exp - iat` is longer than the verifier accepts for a short-lived service token.
    LifetimeTooLong,
    /// `iss` is not on the verifier's issuer allow-list.
    UntrustedIssuer {
        /// The issuer the token names.
        issuer: String,
    },
    /// The token is valid but was minted for another service: `aud` does not name this one.
    WrongAudience,
    /// The token is valid but lacks scopes this route requires.
    InsufficientScope {
        /// The required scopes the token does not grant.
        missing: Vec<String>,
    },
    /// A key could not be loaded or used (bad PEM, wrong curve, secret too short, JWK without a
    /// key id, a symmetric key in a JWKS document…).
    InvalidKey {
        /// What is wrong with it.
        reason: String,
    },
    /// The JWKS document could not be fetched or read.
    KeySetUnavailable {
        /// Where it was loaded from.
        location: String,
    },
    /// Signing a token failed.
    Signing,
    /// A builder was given an unusable configuration.
    InvalidConfig {
        /// What is wrong with it.
        reason: String,
    },
}

/// The error of the [`auth`](crate::auth) module: an [`AuthErrorKind`] plus, where there is one,
/// the underlying error as its source.
pub struct AuthError {
    kind: AuthErrorKind,
    source: Option<BoxError>,
}

impl AuthError {
    /// Builds an error of `kind` without a source.
    pub fn new(kind: AuthErrorKind) -> Self {
        Self { kind, source: None }
    }

    /// Builds an error of `kind` caused by `source`.
    pub fn with_source(kind: AuthErrorKind, source: impl Into<BoxError>) -> Self {
        Self {
            kind,
            source: Some(source.into()),
        }
    }

    pub(crate) fn invalid_key(reason: impl Into<String>) -> Self {
        Self::new(AuthErrorKind::InvalidKey {
            reason: reason.into(),
        })
    }

    pub(crate) fn invalid_config(reason: impl Into<String>) -> Self {
        Self::new(AuthErrorKind::InvalidConfig {
            reason: reason.into(),
        })
    }

    /// What happened.
    pub fn kind(&self) -> &AuthErrorKind {
        &self.kind
    }

    /// The HTTP status a server answers this verification failure with: `403 Forbidden` for
    /// [`WrongAudience`](AuthErrorKind::WrongAudience) and
    /// [`InsufficientScope`](AuthErrorKind::InsufficientScope), `500 Internal Server Error` for
    /// configuration, key and signing failures on our side, and `401 Unauthorized` for the rest.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            AuthErrorKind::WrongAudience | AuthErrorKind::InsufficientScope { .. } => {
                StatusCode::FORBIDDEN
            }
            AuthErrorKind::InvalidKey { .. }
            | AuthErrorKind::Signing
            | AuthErrorKind::InvalidConfig { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            AuthErrorKind::KeySetUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// The stable machine-readable code used in the JSON error body (`"unauthorized"`,
    /// `"token_expired"`, `"forbidden"`, `"insufficient_scope"`, …).
    pub fn code(&self) -> &'static str {
        match self.kind {
            AuthErrorKind::MissingToken => "missing_token",
            AuthErrorKind::MalformedHeader => "malformed_authorization",
            AuthErrorKind::Expired => "token_expired",
            AuthErrorKind::NotYetValid => "token_not_yet_valid",
            AuthErrorKind::WrongAudience => "wrong_audience",
            AuthErrorKind::InsufficientScope { .. } => "insufficient_scope",
            AuthErrorKind::UntrustedIssuer { .. } => "untrusted_issuer",
            AuthErrorKind::KeySetUnavailable { .. } => "key_set_unavailable",
            AuthErrorKind::InvalidKey { .. }
            | AuthErrorKind::Signing
            | AuthErrorKind::InvalidConfig { .. } => "auth_misconfigured",
            _ => "invalid_token",
        }
    }

    /// A short reason, safe to log: it never contains token or key material.
    pub fn reason(&self) -> &'static str {
        match self.kind {
            AuthErrorKind::MissingToken => "missing token",
            AuthErrorKind::MalformedHeader => "malformed authorization header",
            AuthErrorKind::MalformedToken => "malformed token",
            AuthErrorKind::UnknownKey { .. } => "unknown key id",
            AuthErrorKind::AlgorithmMismatch { .. } => "algorithm does not match the key",
            AuthErrorKind::InvalidSignature => "invalid signature",
            AuthErrorKind::MissingClaim { .. } => "missing or malformed claim",
            AuthErrorKind::Expired => "token expired",
            AuthErrorKind::NotYetValid => "token not yet valid",
            AuthErrorKind::LifetimeTooLong => "token lifetime too long",
            AuthErrorKind::UntrustedIssuer { .. } => "untrusted issuer",
            AuthErrorKind::WrongAudience => "token not issued for this service",
            AuthErrorKind::InsufficientScope { .. } => "insufficient scope",
            AuthErrorKind::InvalidKey { .. } => "invalid key",
            AuthErrorKind::KeySetUnavailable { .. } => "key set unavailable",
            AuthErrorKind::Signing => "signing failed",
            AuthErrorKind::InvalidConfig { .. } => "invalid configuration",
        }
    }

    /// Whether this is a verification failure of the caller's token (as opposed to a problem
    /// with our own keys or configuration).
    pub fn is_rejection(&self) -> bool {
        matches!(
            self.status(),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        )
    }
}

impl fmt::Debug for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("AuthError");
        d.field("kind", &self.kind);
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            AuthErrorKind::UnknownKey { kid: Some(kid) } => write!(f, "unknown key id '{kid}'"),
            AuthErrorKind::AlgorithmMismatch { expected, found } => write!(
                f,
                "token algorithm {found:?} does not match the key's algorithm {expected:?}"
            ),
            AuthErrorKind::MissingClaim { claim } => {
                write!(f, "claim '{claim}' is missing or malformed")
            }
            AuthErrorKind::UntrustedIssuer { issuer } => {
                write!(f, "issuer '{issuer}' is not trusted")
            }
            AuthErrorKind::InsufficientScope { missing } => {
                write!(f, "token lacks required scope(s): {}", missing.join(" "))
            }
            AuthErrorKind::InvalidKey { reason } => write!(f, "invalid key: {reason}"),
            AuthErrorKind::KeySetUnavailable { location } => {
                write!(f, "key set unavailable from {location}")
            }
            AuthErrorKind::InvalidConfig { reason } => {
                write!(f, "invalid auth configuration: {reason}")
            }
            _ => f.write_str(self.reason()),
        }
    }
}

impl std::error::Error for AuthError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_split_authentication_from_authorization() {
        assert_eq!(
            AuthError::new(AuthErrorKind::Expired).status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            AuthError::new(AuthErrorKind::WrongAudience).status(),
            StatusCode::FORBIDDEN
        );
        let scope = AuthError::new(AuthErrorKind::InsufficientScope {
            missing: vec!["a".into(), "b".into()],
        });
        assert_eq!(scope.status(), StatusCode::FORBIDDEN);
        assert_eq!(scope.to_string(), "token lacks required scope(s): a b");
        assert!(scope.is_rejection());
        assert!(!AuthError::invalid_key("x").is_rejection());
    }
}
