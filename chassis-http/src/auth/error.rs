//! [`AuthError`]: what went wrong while loading keys, issuing or verifying a bearer token, and
//! the RFC 6750 answer each failure gets.

use std::fmt;

use http::StatusCode;
use http::header::{HeaderValue, WWW_AUTHENTICATE};
use jsonwebtoken::Algorithm;

use crate::error::ApiError;

/// What went wrong in bearer-token auth (service tokens and end-user tokens).
///
/// The verification kinds map to an HTTP answer as RFC 6750 §3.1 pairs them; status, the
/// `error` of the `WWW-Authenticate` challenge ([`AuthError::bearer_error`]) and the code of the
/// JSON error body ([`AuthError::code`]) always agree:
///
/// | kinds | status | `error=` | body `code` |
/// |---|---|---|---|
/// | [`MissingToken`](Self::MissingToken) | 401 | none (a bare `Bearer` challenge) | `missing_token` |
/// | [`MalformedHeader`](Self::MalformedHeader) | 400 | `invalid_request` | `invalid_request` |
/// | every other problem with the token: shape, key, algorithm, signature, claims, expiry, issuer, audience | 401 | `invalid_token` | `invalid_token` |
/// | [`InsufficientScope`](Self::InsufficientScope) (a scope or permission the route needs) | 403 | `insufficient_scope` | `insufficient_scope` |
///
/// The finer reason (`token_expired`, `wrong_audience`, …) is [`AuthError::reason_code`], sent
/// as `details.reason` of the body. Failures on our side (keys, configuration) are 500 and an
/// unreachable key set 503, without a challenge.
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
    /// The token was minted for another service: `aud` does not name this one. An invalid
    /// token for this service (RFC 6750 §3.1 `invalid_token`, 401), like an untrusted issuer.
    WrongAudience,
    /// A claim the verifier reads beyond the registered ones (e.g. the roles claim of an
    /// end-user token) has a type it cannot use.
    InvalidClaim {
        /// The claim's name (truncated for logs).
        claim: String,
    },
    /// The token is valid but lacks scopes (for end users: permissions) this route requires.
    InsufficientScope {
        /// The required scopes or permissions the token does not grant.
        missing: Vec<String>,
    },
    /// A key could not be loaded or used (bad PEM, wrong curve, secret too short, JWK without a
    /// key id, a symmetric key in a JWKS document…).
    InvalidKey {
        /// What is wrong with it.
        reason: String,
    },
    /// An RSA key whose modulus is shorter than the minimum
    /// ([`MIN_RSA_MODULUS_BITS`](super::MIN_RSA_MODULUS_BITS), 2048) or longer than the
    /// maximum ([`MAX_RSA_MODULUS_BITS`](super::MAX_RSA_MODULUS_BITS), 4096) the chassis
    /// accepts.
    RsaKeySize {
        /// The key id, or `-` for a key loaded without one.
        kid: String,
        /// The modulus length in bits.
        bits: usize,
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

impl AuthErrorKind {
    /// The words of [`AuthError::reason`] and the code of [`AuthError::reason_code`].
    fn reason_and_code(&self) -> (&'static str, &'static str) {
        match self {
            Self::MissingToken => ("missing token", "missing_token"),
            Self::MalformedHeader => ("malformed authorization header", "malformed_authorization"),
            Self::MalformedToken => ("malformed token", "malformed_token"),
            Self::UnknownKey { .. } => ("unknown key id", "unknown_key"),
            Self::AlgorithmMismatch { .. } => {
                ("algorithm does not match the key", "algorithm_mismatch")
            }
            Self::InvalidSignature => ("invalid signature", "invalid_signature"),
            Self::MissingClaim { .. } => ("missing or malformed claim", "missing_claim"),
            Self::InvalidClaim { .. } => ("malformed claim", "invalid_claim"),
            Self::Expired => ("token expired", "token_expired"),
            Self::NotYetValid => ("token not yet valid", "token_not_yet_valid"),
            Self::LifetimeTooLong => ("token lifetime too long", "token_lifetime_too_long"),
            Self::UntrustedIssuer { .. } => ("untrusted issuer", "untrusted_issuer"),
            Self::WrongAudience => ("token not issued for this service", "wrong_audience"),
            Self::InsufficientScope { .. } => ("insufficient scope", "insufficient_scope"),
            Self::InvalidKey { .. } => ("invalid key", "invalid_key"),
            Self::RsaKeySize { .. } => ("RSA key size outside 2048..=4096 bits", "rsa_key_size"),
            Self::KeySetUnavailable { .. } => ("key set unavailable", "key_set_unavailable"),
            Self::Signing => ("signing failed", "signing_failed"),
            Self::InvalidConfig { .. } => ("invalid configuration", "invalid_config"),
        }
    }
}

chassis_core::__define_error! {
    /// The error of the [`auth`](crate::auth) module: an [`AuthErrorKind`] plus, where there is
    /// one, the underlying error as its source.
    pub struct AuthError(AuthErrorKind);
    display = kind;
}

impl AuthError {
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

    /// The HTTP status a server answers this failure with (see the table on [`AuthErrorKind`]):
    /// `401 Unauthorized` for a missing or invalid token, `400 Bad Request` for a malformed
    /// `Authorization` header, `403 Forbidden` for a missing scope or permission, `500 Internal
    /// Server Error` for key, configuration and signing failures on our side and `503 Service
    /// Unavailable` when the key set cannot be loaded.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            AuthErrorKind::InsufficientScope { .. } => StatusCode::FORBIDDEN,
            AuthErrorKind::MalformedHeader => StatusCode::BAD_REQUEST,
            AuthErrorKind::InvalidKey { .. }
            | AuthErrorKind::RsaKeySize { .. }
            | AuthErrorKind::Signing
            | AuthErrorKind::InvalidConfig { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            AuthErrorKind::KeySetUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// The RFC 6750 §3.1 `error` of the `WWW-Authenticate: Bearer` challenge:
    /// `invalid_request` (400), `invalid_token` (401) or `insufficient_scope` (403); `None` for
    /// a missing token (RFC 6750 §3.1: no error code when the request had no credentials) and
    /// for failures on our side.
    pub fn bearer_error(&self) -> Option<&'static str> {
        match self.status() {
            StatusCode::BAD_REQUEST => Some("invalid_request"),
            StatusCode::FORBIDDEN => Some("insufficient_scope"),
            StatusCode::UNAUTHORIZED if self.kind != AuthErrorKind::MissingToken => {
                Some("invalid_token")
            }
            _ => None,
        }
    }

    /// The stable machine-readable code of the JSON error body: the RFC 6750 error code where
    /// there is one ([`bearer_error`](Self::bearer_error)), `missing_token` without
    /// credentials, `auth_misconfigured` or `key_set_unavailable` on our side. For why a token
    /// was refused, see [`reason_code`](Self::reason_code).
    pub fn code(&self) -> &'static str {
        match (&self.kind, self.bearer_error()) {
            (_, Some(code)) => code,
            (AuthErrorKind::MissingToken, None) => "missing_token",
            (AuthErrorKind::KeySetUnavailable { .. }, None) => "key_set_unavailable",
            _ => "auth_misconfigured",
        }
    }

    /// A stable machine-readable code per kind, finer than [`code`](Self::code): `token_expired`,
    /// `wrong_audience`, `untrusted_issuer`, `invalid_signature`, … Sent as `details.reason`
    /// of the JSON error body, so a client can tell "refresh the token" from "wrong token".
    pub fn reason_code(&self) -> &'static str {
        self.kind.reason_and_code().1
    }

    /// A short reason, safe to log: it never contains token or key material.
    pub fn reason(&self) -> &'static str {
        self.kind.reason_and_code().0
    }

    /// Whether this is a verification failure of the caller's request or token (as opposed to a
    /// problem with our own keys or configuration).
    pub fn is_rejection(&self) -> bool {
        matches!(
            self.status(),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::BAD_REQUEST
        )
    }

    /// The chassis JSON error answer for this failure, with the RFC 6750 challenge
    /// `WWW-Authenticate: Bearer realm="<realm>"[, error="…"][, scope="…"]` (no challenge
    /// for failures on our side). `details` holds `reason` ([`reason_code`](Self::reason_code))
    /// and, for a missing scope or permission, what is missing under `missing_key` (e.g.
    /// `missingScopes`); `required` goes into the challenge's `scope`.
    pub(crate) fn to_api_error_with(
        &self,
        realm: Option<&str>,
        required: &[&str],
        missing_key: &str,
    ) -> ApiError {
        let mut challenge = match realm {
            Some(realm) => format!("Bearer realm=\"{}\"", sanitize(realm)),
            None => "Bearer".to_owned(),
        };
        if let Some(error) = self.bearer_error() {
            let sep = if realm.is_some() { ", " } else { " " };
            challenge.push_str(&format!("{sep}error=\"{error}\""));
            match &self.kind {
                AuthErrorKind::InsufficientScope { missing } => {
                    let scope = if required.is_empty() {
                        missing.join(" ")
                    } else {
                        required.join(" ")
                    };
                    challenge.push_str(&format!(", scope=\"{}\"", sanitize(&scope)));
                }
                _ => challenge.push_str(&format!(", error_description=\"{}\"", self.reason())),
            }
        }
        let mut details = serde_json::json!({ "reason": self.reason_code() });
        if let AuthErrorKind::InsufficientScope { missing } = &self.kind {
            details[missing_key] = serde_json::json!(missing);
        }
        let mut api =
            ApiError::new(self.status(), self.code(), self.reason()).with_details(details);
        let challenged = self.bearer_error().is_some() || self.kind == AuthErrorKind::MissingToken;
        if challenged && let Ok(value) = HeaderValue::try_from(challenge) {
            api = api.with_header(WWW_AUTHENTICATE, value);
        }
        api
    }
}

/// The chassis JSON error answer of an auth failure, with its RFC 6750 `WWW-Authenticate`
/// challenge (without a realm), so a handler can write `principal.require("orders:write")?`
/// and return `Result<_, ApiError>`.
impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        err.to_api_error_with(None, &[], "missingPermissions")
    }
}

/// Keeps a value safe inside a quoted-string of a `WWW-Authenticate` header.
pub(crate) fn sanitize(value: &str) -> String {
    value
        .chars()
        .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
        .collect()
}

/// The message of an [`AuthError`] (its source is not part of it).
impl fmt::Display for AuthErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
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
            AuthErrorKind::InvalidClaim { claim } => write!(f, "claim '{claim}' is malformed"),
            AuthErrorKind::RsaKeySize { kid, bits } => write!(
                f,
                "RSA key '{kid}' has a {bits}-bit modulus; accepted are {}..={} bits",
                super::keys::MIN_RSA_MODULUS_BITS,
                super::keys::MAX_RSA_MODULUS_BITS
            ),
            AuthErrorKind::KeySetUnavailable { location } => {
                write!(f, "key set unavailable from {location}")
            }
            AuthErrorKind::InvalidConfig { reason } => {
                write!(f, "invalid auth configuration: {reason}")
            }
            _ => f.write_str(self.reason_and_code().0),
        }
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
        // A token for another audience is an invalid token here (RFC 6750 §3.1), not a 403.
        let aud = AuthError::new(AuthErrorKind::WrongAudience);
        assert_eq!(aud.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(aud.bearer_error(), Some("invalid_token"));
        assert_eq!(aud.code(), "invalid_token");
        assert_eq!(aud.reason_code(), "wrong_audience");
        let scope = AuthError::new(AuthErrorKind::InsufficientScope {
            missing: vec!["a".into(), "b".into()],
        });
        assert_eq!(scope.status(), StatusCode::FORBIDDEN);
        assert_eq!(scope.to_string(), "token lacks required scope(s): a b");
        assert!(scope.is_rejection());
        assert!(!AuthError::invalid_key("x").is_rejection());
    }

    /// Every kind: status, challenge error and body code agree as RFC 6750 §3.1 pairs them.
    #[test]
    fn status_and_codes_agree_for_every_kind() {
        let kinds = [
            AuthErrorKind::MissingToken,
            AuthErrorKind::MalformedHeader,
            AuthErrorKind::MalformedToken,
            AuthErrorKind::UnknownKey { kid: None },
            AuthErrorKind::AlgorithmMismatch {
                expected: Algorithm::RS256,
                found: Algorithm::ES256,
            },
            AuthErrorKind::InvalidSignature,
            AuthErrorKind::MissingClaim { claim: "sub" },
            AuthErrorKind::InvalidClaim {
                claim: "roles".into(),
            },
            AuthErrorKind::Expired,
            AuthErrorKind::NotYetValid,
            AuthErrorKind::LifetimeTooLong,
            AuthErrorKind::UntrustedIssuer { issuer: "x".into() },
            AuthErrorKind::WrongAudience,
            AuthErrorKind::InsufficientScope { missing: vec![] },
            AuthErrorKind::InvalidKey { reason: "x".into() },
            AuthErrorKind::RsaKeySize {
                kid: "k".into(),
                bits: 1024,
            },
            AuthErrorKind::KeySetUnavailable {
                location: "x".into(),
            },
            AuthErrorKind::Signing,
            AuthErrorKind::InvalidConfig { reason: "x".into() },
        ];
        for kind in kinds {
            let err = AuthError::new(kind.clone());
            let expected = match err.status() {
                StatusCode::BAD_REQUEST => ("invalid_request", Some("invalid_request")),
                StatusCode::FORBIDDEN => ("insufficient_scope", Some("insufficient_scope")),
                StatusCode::UNAUTHORIZED if kind == AuthErrorKind::MissingToken => {
                    ("missing_token", None)
                }
                StatusCode::UNAUTHORIZED => ("invalid_token", Some("invalid_token")),
                StatusCode::SERVICE_UNAVAILABLE => ("key_set_unavailable", None),
                StatusCode::INTERNAL_SERVER_ERROR => ("auth_misconfigured", None),
                other => panic!("{kind:?}: unexpected status {other}"),
            };
            assert_eq!((err.code(), err.bearer_error()), expected, "{kind:?}");
            let api = ApiError::from(err);
            let challenge = api.headers().get(WWW_AUTHENTICATE);
            match expected.1 {
                Some(code) => assert!(
                    challenge
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .contains(&format!("error=\"{code}\"")),
                    "{kind:?}"
                ),
                None if kind == AuthErrorKind::MissingToken => {
                    assert_eq!(challenge.unwrap(), "Bearer");
                }
                None => assert!(challenge.is_none(), "{kind:?}"),
            }
        }
    }
}
