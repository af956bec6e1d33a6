//! [`TokenVerifier`]: checks a bearer token (a service token, or an end user's) and returns the
//! caller's [`ServiceIdentity`] (and, for the end-user layer, the verified claims).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::{Validation, decode, decode_header};
use serde_json::{Map, Value};

use super::claims::{ServiceIdentity, from_unix_seconds, unix_seconds};
use super::error::{AuthError, AuthErrorKind};
use super::jwks::JwksKeySource;
use super::keys::{KeySet, VerificationKey};

/// Default clock-skew allowance for `exp`/`nbf`/`iat`: 30 seconds.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// Default longest accepted token lifetime (`exp - iat`): 1 hour.
pub const DEFAULT_MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// Longest token accepted, in bytes; longer ones are rejected before any parsing.
const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Distinct tokens a verifier with static keys remembers as verified.
const VERIFIED_CACHE_CAPACITY: usize = 32;

/// Where a verifier finds keys.
#[derive(Clone, Debug)]
enum KeySource {
    Static(Arc<KeySet>),
    Jwks(JwksKeySource),
}

/// Verifies service tokens for one audience (this service). Cheap to clone (shared).
///
/// [`verify`](Self::verify) checks, in order (the first failure wins):
/// 1. shape: three base64url segments, a readable header with a known algorithm (so `alg: none`
///    is rejected here), no `crit` header, a `kid`;
/// 2. key: the `kid` is known (refetching a JWKS source once, rate-limited, if not);
/// 3. algorithm: the header's `alg` equals the algorithm the key is pinned to;
/// 4. signature;
/// 5. claims `iss`, `sub`, `aud`, `exp`, `iat`, `jti` present; `exp`/`nbf`/`iat` within the leeway;
///    `exp - iat` not longer than the maximum lifetime;
/// 6. `iss` on the allow-list;
/// 7. `aud` names this service.
///
/// Failures 1–6 mean "unauthenticated" (401); 7 means "authenticated, but not for us" (403).
/// Scopes are checked per route by [`RequireServiceTokenLayer`](super::RequireServiceTokenLayer).
///
/// With static keys ([`TokenVerifierBuilder::keys`]) the verifier remembers the last 32
/// distinct tokens it accepted: a caller reuses its token for many requests
/// ([`ServiceTokenSource`](super::ServiceTokenSource) renews it shortly before it expires), and
/// the signature check (an Ed25519 verification, tens of microseconds) then runs once per
/// token instead of once per request. A remembered token is the same bytes that passed every
/// check, so only time can change the answer: its `exp` is checked again on every use. Keys
/// from a JWKS are never remembered, so a key removed from the document stops being accepted
/// at once; static keys cannot be removed without building a new verifier.
#[derive(Clone)]
pub struct TokenVerifier {
    inner: Arc<VerifierInner>,
}

struct VerifierInner {
    audience: String,
    issuers: HashSet<String>,
    leeway: Duration,
    max_lifetime: Duration,
    require_jti: bool,
    keys: KeySource,
    /// Accepted tokens with their identity and `exp` (static keys only), oldest first.
    verified: Mutex<VecDeque<(Box<str>, Verified, u64)>>,
}

/// A token that passed every check: the identity and all its claims.
#[derive(Clone, Debug)]
pub(crate) struct Verified {
    pub(crate) identity: ServiceIdentity,
    pub(crate) claims: Arc<Map<String, Value>>,
}

/// Builds a [`TokenVerifier`]; see [`TokenVerifier::builder`].
#[derive(Debug)]
pub struct TokenVerifierBuilder {
    audience: String,
    issuers: HashSet<String>,
    leeway: Duration,
    max_lifetime: Duration,
    require_jti: bool,
    keys: Option<KeySource>,
}

impl TokenVerifierBuilder {
    chassis_core::__builder_setters! {
        /// Whether a token without a `jti` claim is refused. Defaults to `true`: service tokens
        /// always carry one. Set it to `false` for end-user tokens of identity providers that issue
        /// none (the identity's `jti` is then empty).
        require_jti: bool,
    }

    /// Accepts tokens issued by `issuer`. At least one issuer is required.
    pub fn trust_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuers.insert(issuer.into());
        self
    }

    /// Accepts tokens issued by any of `issuers`.
    pub fn trust_issuers<I, S>(mut self, issuers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.issuers.extend(issuers.into_iter().map(Into::into));
        self
    }

    chassis_core::__builder_setters! {
        /// Clock-skew allowance for `exp`, `nbf` and `iat`. Defaults to 30 seconds
        /// ([`DEFAULT_LEEWAY`]).
        leeway: Duration,
    }

    /// Longest accepted token lifetime (`exp - iat`): service tokens are meant to be short-lived.
    /// Defaults to 1 hour ([`DEFAULT_MAX_TOKEN_LIFETIME`]).
    pub fn max_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.max_lifetime = lifetime;
        self
    }

    /// Verify with a fixed set of keys (static public keys, or an HS256 shared secret).
    pub fn keys(mut self, keys: KeySet) -> Self {
        self.keys = Some(KeySource::Static(Arc::new(keys)));
        self
    }

    /// Verify with keys from a JWKS document, refreshed and refetched on unknown key ids.
    pub fn jwks(mut self, source: JwksKeySource) -> Self {
        self.keys = Some(KeySource::Jwks(source));
        self
    }

    /// Validates the configuration and builds the verifier.
    pub fn build(self) -> Result<TokenVerifier, AuthError> {
        if self.audience.is_empty() {
            return Err(AuthError::invalid_config("the audience must not be empty"));
        }
        if self.issuers.is_empty() || self.issuers.iter().any(String::is_empty) {
            return Err(AuthError::invalid_config(
                "a verifier needs at least one trusted issuer",
            ));
        }
        let Some(keys) = self.keys else {
            return Err(AuthError::invalid_config("a verifier needs keys"));
        };
        Ok(TokenVerifier {
            inner: Arc::new(VerifierInner {
                audience: self.audience,
                issuers: self.issuers,
                leeway: self.leeway,
                max_lifetime: self.max_lifetime,
                require_jti: self.require_jti,
                keys,
                verified: Mutex::new(VecDeque::new()),
            }),
        })
    }
}

/// The outcome of a verification that needs no I/O.
pub(crate) enum Checked {
    Done(Result<Verified, AuthError>),
    /// The key id is unknown to a JWKS source; a refetch may find it.
    NeedsRefetch,
}

impl TokenVerifier {
    /// Starts building a verifier for tokens addressed to `audience` (this service's name).
    pub fn builder(audience: impl Into<String>) -> TokenVerifierBuilder {
        TokenVerifierBuilder {
            audience: audience.into(),
            issuers: HashSet::new(),
            leeway: DEFAULT_LEEWAY,
            max_lifetime: DEFAULT_MAX_TOKEN_LIFETIME,
            require_jti: true,
            keys: None,
        }
    }

    /// Verifies `token` (the compact JWS, without `Bearer `).
    pub async fn verify(&self, token: &str) -> Result<ServiceIdentity, AuthError> {
        self.verify_token(token).await.map(|v| v.identity)
    }

    /// Verifies `token` and returns the identity with every claim of the token.
    pub(crate) async fn verify_token(&self, token: &str) -> Result<Verified, AuthError> {
        match self.check(token) {
            Checked::Done(result) => result,
            Checked::NeedsRefetch => self.verify_after_refetch(token).await,
        }
    }

    /// The audience this verifier accepts.
    pub fn audience(&self) -> &str {
        &self.inner.audience
    }

    /// Verification without I/O: everything unless the key id is unknown to a JWKS source.
    pub(crate) fn check(&self, token: &str) -> Checked {
        if let Some(result) = self.remembered(token, unix_seconds(SystemTime::now())) {
            return Checked::Done(result);
        }
        let header = match parse_header(token) {
            Ok(header) => header,
            Err(err) => return Checked::Done(Err(err)),
        };
        let kid = header.kid.as_deref().unwrap_or_default();
        let key = match &self.inner.keys {
            KeySource::Static(set) => set.get(kid).cloned(),
            KeySource::Jwks(source) => source.lookup(kid),
        };
        match key {
            Some(key) => {
                let result = self.check_with_key(token, &header, &key);
                if let (Ok(verified), KeySource::Static(_)) = (&result, &self.inner.keys) {
                    self.remember(token, verified);
                }
                Checked::Done(result)
            }
            None if matches!(self.inner.keys, KeySource::Jwks(_)) && header.kid.is_some() => {
                Checked::NeedsRefetch
            }
            None => Checked::Done(Err(AuthError::new(AuthErrorKind::UnknownKey {
                kid: header.kid.map(truncate_kid),
            }))),
        }
    }

    pub(crate) async fn verify_after_refetch(&self, token: &str) -> Result<Verified, AuthError> {
        let header = parse_header(token)?;
        let kid = header.kid.as_deref().unwrap_or_default();
        let key = match &self.inner.keys {
            KeySource::Jwks(source) => source.lookup_after_refetch(kid).await,
            KeySource::Static(set) => set.get(kid).cloned(),
        };
        match key {
            Some(key) => self.check_with_key(token, &header, &key),
            None => Err(AuthError::new(AuthErrorKind::UnknownKey {
                kid: header.kid.map(truncate_kid),
            })),
        }
    }

    /// The answer for a token accepted before, at `now` (Unix seconds): its identity while its
    /// `exp` (plus the leeway) has not passed, else `Expired` (and it is forgotten).
    fn remembered(&self, token: &str, now: u64) -> Option<Result<Verified, AuthError>> {
        let mut verified = self
            .inner
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let i = verified.iter().position(|(t, _, _)| &**t == token)?;
        if now >= verified[i].2.saturating_add(self.inner.leeway.as_secs()) {
            verified.remove(i);
            return Some(Err(AuthError::new(AuthErrorKind::Expired)));
        }
        Some(Ok(verified[i].1.clone()))
    }

    fn remember(&self, token: &str, entry: &Verified) {
        let mut verified = self
            .inner
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if verified.len() >= VERIFIED_CACHE_CAPACITY {
            verified.pop_front();
        }
        verified.push_back((
            token.into(),
            entry.clone(),
            unix_seconds(entry.identity.expires_at),
        ));
    }

    fn check_with_key(
        &self,
        token: &str,
        header: &jsonwebtoken::Header,
        key: &VerificationKey,
    ) -> Result<Verified, AuthError> {
        // The algorithm is the key's, never the token's: a token claiming another one is refused
        // before any cryptography runs (this stops HS256-signed-with-the-public-key forgeries).
        if header.alg != key.algorithm() {
            return Err(AuthError::new(AuthErrorKind::AlgorithmMismatch {
                expected: key.algorithm(),
                found: header.alg,
            }));
        }
        let mut validation = Validation::new(key.algorithm());
        // jsonwebtoken checks only the signature here; the claims are checked below, against our
        // own clock, so each failure gets its own kind.
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let data =
            decode::<Map<String, Value>>(token, key.decoding_key(), &validation).map_err(|e| {
                let kind = match e.kind() {
                    JwtErrorKind::InvalidSignature => AuthErrorKind::InvalidSignature,
                    JwtErrorKind::InvalidAlgorithm => AuthErrorKind::AlgorithmMismatch {
                        expected: key.algorithm(),
                        found: header.alg,
                    },
                    JwtErrorKind::InvalidEcdsaKey
                    | JwtErrorKind::InvalidEddsaKey
                    | JwtErrorKind::InvalidRsaKey(_)
                    | JwtErrorKind::InvalidKeyFormat => AuthErrorKind::InvalidKey {
                        reason: format!("key '{}' cannot verify", key.kid()),
                    },
                    _ => AuthErrorKind::MalformedToken,
                };
                AuthError::with_source(kind, e)
            })?;
        let identity = self.check_claims(&data.claims, SystemTime::now())?;
        Ok(Verified {
            identity,
            claims: Arc::new(data.claims),
        })
    }

    fn check_claims(
        &self,
        claims: &Map<String, Value>,
        now: SystemTime,
    ) -> Result<ServiceIdentity, AuthError> {
        let missing = |claim: &'static str| AuthError::new(AuthErrorKind::MissingClaim { claim });
        let string = |claim: &'static str| {
            claims
                .get(claim)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| missing(claim))
        };
        let numeric = |claim: &'static str| -> Result<Option<u64>, AuthError> {
            match claims.get(claim) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                    .map(Some)
                    .ok_or_else(|| missing(claim)),
            }
        };
        let iss = string("iss")?;
        let sub = string("sub")?;
        let jti = match string("jti") {
            Ok(jti) => jti,
            Err(_) if !self.inner.require_jti && !claims.contains_key("jti") => "",
            Err(err) => return Err(err),
        };
        let exp = numeric("exp")?.ok_or_else(|| missing("exp"))?;
        let iat = numeric("iat")?.ok_or_else(|| missing("iat"))?;
        let nbf = numeric("nbf")?;
        let audiences: Vec<&str> = match claims.get("aud") {
            Some(Value::String(aud)) => vec![aud.as_str()],
            Some(Value::Array(auds)) => auds.iter().filter_map(Value::as_str).collect(),
            _ => return Err(missing("aud")),
        };
        let scopes = match claims.get("scope") {
            None => Vec::new(),
            Some(Value::String(scope)) => {
                scope.split_ascii_whitespace().map(str::to_owned).collect()
            }
            Some(_) => return Err(missing("scope")),
        };

        let now = unix_seconds(now);
        let leeway = self.inner.leeway.as_secs();
        if now >= exp.saturating_add(leeway) {
            return Err(AuthError::new(AuthErrorKind::Expired));
        }
        if nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway))
            || iat > now.saturating_add(leeway)
        {
            return Err(AuthError::new(AuthErrorKind::NotYetValid));
        }
        if exp.saturating_sub(iat) > self.inner.max_lifetime.as_secs() {
            return Err(AuthError::new(AuthErrorKind::LifetimeTooLong));
        }
        if !self.inner.issuers.contains(iss) {
            return Err(AuthError::new(AuthErrorKind::UntrustedIssuer {
                issuer: truncate_kid(iss.to_owned()),
            }));
        }
        if !audiences.contains(&self.inner.audience.as_str()) {
            return Err(AuthError::new(AuthErrorKind::WrongAudience));
        }
        Ok(ServiceIdentity {
            subject: sub.to_owned(),
            issuer: iss.to_owned(),
            scopes,
            jti: jti.to_owned(),
            expires_at: from_unix_seconds(exp),
        })
    }
}

crate::error::debug_inner!(TokenVerifier {
    audience,
    issuers,
    leeway,
    max_lifetime,
    require_jti,
    keys
});

fn parse_header(token: &str) -> Result<jsonwebtoken::Header, AuthError> {
    let malformed = || AuthError::new(AuthErrorKind::MalformedToken);
    if token.len() > MAX_TOKEN_LEN
        || token.split('.').count() != 3
        || token.split('.').any(str::is_empty)
    {
        return Err(malformed());
    }
    let header = decode_header(token)
        .map_err(|e| AuthError::with_source(AuthErrorKind::MalformedToken, e))?;
    if header.crit.is_some() {
        // RFC 7515 §4.1.11: we understand no extensions, so a token marking any as critical
        // must be rejected.
        return Err(malformed());
    }
    Ok(header)
}

/// Values from an unverified token end up in logs and errors: keep them short.
fn truncate_kid(mut kid: String) -> String {
    if kid.len() > 64 {
        let mut cut = 64;
        while !kid.is_char_boundary(cut) {
            cut -= 1;
        }
        kid.truncate(cut);
    }
    kid
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{IssuedToken, SigningKey, TokenIssuer};

    fn setup() -> (TokenIssuer, TokenVerifier) {
        let key = SigningKey::generate_ed25519().unwrap();
        let issuer = TokenIssuer::builder("orders")
            .signing_key(key)
            .build()
            .unwrap();
        let verifier = TokenVerifier::builder("billing")
            .trust_issuer("orders")
            .keys(issuer.key_set())
            .build()
            .unwrap();
        (issuer, verifier)
    }

    /// A token for `billing` whose expiry passed `secs` seconds ago.
    fn expired_since(issuer: &TokenIssuer, secs: u64) -> IssuedToken {
        let issued = SystemTime::now() - issuer.ttl() - Duration::from_secs(secs);
        issuer.issue_at("billing", &[], issued).unwrap()
    }

    /// A token for `billing` issued `secs` seconds from now.
    fn issued_in(issuer: &TokenIssuer, secs: u64) -> IssuedToken {
        issuer
            .issue_at(
                "billing",
                &[],
                SystemTime::now() + Duration::from_secs(secs),
            )
            .unwrap()
    }

    #[tokio::test]
    async fn leeway_applies_to_exp_and_nbf() {
        let (issuer, verifier) = setup();
        // Expired 10 s ago: inside the 30 s leeway.
        let t = expired_since(&issuer, 10);
        assert!(verifier.verify(t.as_str()).await.is_ok());
        // Expired 60 s ago: outside.
        let t = expired_since(&issuer, 60);
        assert_eq!(
            verifier.verify(t.as_str()).await.unwrap_err().kind(),
            &AuthErrorKind::Expired
        );
        // Issued 10 s in the future: inside the leeway; 120 s: outside.
        let t = issued_in(&issuer, 10);
        assert!(verifier.verify(t.as_str()).await.is_ok());
        let t = issued_in(&issuer, 120);
        assert_eq!(
            verifier.verify(t.as_str()).await.unwrap_err().kind(),
            &AuthErrorKind::NotYetValid
        );
    }

    #[tokio::test]
    async fn an_accepted_token_is_remembered_until_it_expires() {
        let (issuer, verifier) = setup();
        // Expired 10 s ago, inside the 30 s leeway: accepted, and remembered.
        let t = expired_since(&issuer, 10);
        let first = verifier.verify(t.as_str()).await.unwrap();
        assert_eq!(verifier.inner.verified.lock().unwrap().len(), 1);
        let now = unix_seconds(SystemTime::now());
        assert_eq!(
            verifier
                .remembered(t.as_str(), now)
                .unwrap()
                .unwrap()
                .identity,
            first
        );
        assert_eq!(verifier.verify(t.as_str()).await.unwrap(), first);
        // 25 s later it is past the leeway: refused, and forgotten.
        assert_eq!(
            verifier
                .remembered(t.as_str(), now + 25)
                .unwrap()
                .unwrap_err()
                .kind(),
            &AuthErrorKind::Expired
        );
        assert!(verifier.remembered(t.as_str(), now).is_none());
        // A token for another audience is refused and not remembered; neither is a forgery
        // that differs from a remembered token.
        let other = issuer.issue("shipping", &[]).unwrap();
        assert!(verifier.verify(other.as_str()).await.is_err());
        let good = issuer.issue("billing", &[]).unwrap();
        verifier.verify(good.as_str()).await.unwrap();
        // One signature character changed (well inside it: the last carries padding bits).
        let mut forged = good.as_str().as_bytes().to_vec();
        let i = forged.len() - 10;
        forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        assert!(verifier.verify(&forged).await.is_err());
        assert_eq!(verifier.inner.verified.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn at_most_the_capacity_is_remembered() {
        let (issuer, verifier) = setup();
        for _ in 0..VERIFIED_CACHE_CAPACITY + 5 {
            let t = issuer.issue("billing", &[]).unwrap();
            verifier.verify(t.as_str()).await.unwrap();
        }
        assert_eq!(
            verifier.inner.verified.lock().unwrap().len(),
            VERIFIED_CACHE_CAPACITY
        );
    }

    #[test]
    fn builder_requires_issuer_and_keys() {
        assert!(
            TokenVerifier::builder("a")
                .keys(KeySet::new())
                .build()
                .is_err()
        );
        assert!(
            TokenVerifier::builder("a")
                .trust_issuer("b")
                .build()
                .is_err()
        );
    }

    #[test]
    fn long_kids_are_truncated_for_logs() {
        assert_eq!(truncate_kid("é".repeat(40)).len(), 64);
    }
}
