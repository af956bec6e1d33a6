//! [`TokenIssuer`]: signs short-lived service tokens and publishes its public keys as JWKS.

use std::convert::Infallible;
use std::fmt;
use std::future::{Ready, ready};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Request, Response, StatusCode};
use jsonwebtoken::Header;
use jsonwebtoken::jwk::JwkSet;

use super::claims::{ServiceClaims, check_scope, unix_seconds};
use super::error::{AuthError, AuthErrorKind};
use super::keys::{KeySet, SigningKey};
use crate::body::{Body, full};

/// Default lifetime of an issued token: 5 minutes.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(300);

/// Signs short-lived service tokens for one calling service.
///
/// Cheap to clone (shared). Holds one active [`SigningKey`] and, during a rotation, the keys it
/// still publishes so verifiers keep accepting tokens signed before the switch.
#[derive(Clone)]
pub struct TokenIssuer {
    inner: Arc<IssuerInner>,
}

struct IssuerInner {
    issuer: String,
    subject: String,
    ttl: Duration,
    ring: RwLock<Arc<KeyRing>>,
}

struct KeyRing {
    active: SigningKey,
    /// Every published key, the active one first.
    published: Vec<SigningKey>,
}

/// A signed token and when it stops being valid.
///
/// `Debug` redacts the token itself.
#[derive(Clone)]
pub struct IssuedToken {
    token: String,
    /// The token id (`jti`).
    pub jti: String,
    /// When the token expires (`exp`).
    pub expires_at: SystemTime,
    /// The lifetime it was issued with.
    pub ttl: Duration,
}

impl IssuedToken {
    /// The compact JWS. **Secret**: do not log it.
    pub fn as_str(&self) -> &str {
        &self.token
    }

    /// `Bearer <token>` as a header value marked sensitive (kept out of logs and HPACK tables).
    pub fn bearer_header(&self) -> Result<HeaderValue, AuthError> {
        let mut value = HeaderValue::try_from(format!("Bearer {}", self.token))
            .map_err(|e| AuthError::with_source(AuthErrorKind::Signing, e))?;
        value.set_sensitive(true);
        Ok(value)
    }
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedToken")
            .field("token", &"[redacted]")
            .field("jti", &self.jti)
            .field("expires_at", &self.expires_at)
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// Builds a [`TokenIssuer`]; see [`TokenIssuer::builder`].
#[derive(Debug)]
pub struct TokenIssuerBuilder {
    subject: String,
    issuer: Option<String>,
    ttl: Duration,
    key: Option<SigningKey>,
    also_publish: Vec<SigningKey>,
}

impl TokenIssuerBuilder {
    /// The `iss` claim. Defaults to the service name given to [`TokenIssuer::builder`]
    /// (self-issued tokens); set it when a central token service signs for others.
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// The key that signs. Required.
    pub fn signing_key(mut self, key: SigningKey) -> Self {
        self.key = Some(key);
        self
    }

    chassis_core::__builder_setters! {
        /// Token lifetime. Defaults to 5 minutes ([`DEFAULT_TOKEN_TTL`]); must be between 1 second
        /// and 1 hour.
        ttl: Duration,
    }

    /// Also publish `key`'s public half in the JWKS without signing with it (the previous key
    /// during a rotation).
    pub fn also_publish(mut self, key: SigningKey) -> Self {
        self.also_publish.push(key);
        self
    }

    /// Validates the configuration and builds the issuer.
    pub fn build(self) -> Result<TokenIssuer, AuthError> {
        let Some(active) = self.key else {
            return Err(AuthError::invalid_config(
                "a token issuer needs a signing key",
            ));
        };
        let issuer = self.issuer.unwrap_or_else(|| self.subject.clone());
        if self.subject.is_empty() || issuer.is_empty() {
            return Err(AuthError::invalid_config(
                "issuer and subject must not be empty",
            ));
        }
        if self.ttl < Duration::from_secs(1) || self.ttl > Duration::from_secs(3600) {
            return Err(AuthError::invalid_config(
                "token ttl must be between 1 second and 1 hour",
            ));
        }
        let mut published = vec![active.clone()];
        for key in self.also_publish {
            if published.iter().all(|k| k.kid() != key.kid()) {
                published.push(key);
            }
        }
        Ok(TokenIssuer {
            inner: Arc::new(IssuerInner {
                issuer,
                subject: self.subject,
                ttl: self.ttl,
                ring: RwLock::new(Arc::new(KeyRing { active, published })),
            }),
        })
    }
}

impl TokenIssuer {
    /// Starts building an issuer for the calling service `service` (its `sub`, and by default
    /// its `iss`).
    pub fn builder(service: impl Into<String>) -> TokenIssuerBuilder {
        TokenIssuerBuilder {
            subject: service.into(),
            issuer: None,
            ttl: DEFAULT_TOKEN_TTL,
            key: None,
            also_publish: Vec::new(),
        }
    }

    /// Signs a token for `audience` granting `scopes`, valid from now for the configured TTL.
    pub fn issue(&self, audience: &str, scopes: &[&str]) -> Result<IssuedToken, AuthError> {
        self.issue_at(audience, scopes, SystemTime::now())
    }

    /// Signs a token as if the time were `now` (`iat = nbf = now`, `exp = now + ttl`).
    pub fn issue_at(
        &self,
        audience: &str,
        scopes: &[&str],
        now: SystemTime,
    ) -> Result<IssuedToken, AuthError> {
        if audience.is_empty() {
            return Err(AuthError::invalid_config("audience must not be empty"));
        }
        for scope in scopes {
            check_scope(scope)?;
        }
        let key = self.ring().active.clone();
        let iat = unix_seconds(now);
        let ttl_secs = self.inner.ttl.as_secs();
        let jti = uuid::Uuid::new_v4().to_string();
        let claims = ServiceClaims {
            iss: self.inner.issuer.clone(),
            sub: self.inner.subject.clone(),
            aud: audience.to_owned(),
            iat,
            nbf: iat,
            exp: iat + ttl_secs,
            jti: jti.clone(),
            scope: scopes.join(" "),
        };
        let mut header = Header::new(key.algorithm());
        header.kid = Some(key.kid().to_owned());
        let token = jsonwebtoken::encode(&header, &claims, key.encoding_key())
            .map_err(|e| AuthError::with_source(AuthErrorKind::Signing, e))?;
        Ok(IssuedToken {
            token,
            jti,
            expires_at: super::claims::from_unix_seconds(iat + ttl_secs),
            ttl: Duration::from_secs(ttl_secs),
        })
    }

    /// Makes `key` the signing key. The previous keys stay published (verifiers must keep
    /// accepting tokens already issued) until [`retire`](Self::retire)d.
    pub fn rotate(&self, key: SigningKey) {
        let mut guard = self
            .inner
            .ring
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut published = vec![key.clone()];
        published.extend(
            guard
                .published
                .iter()
                .filter(|k| k.kid() != key.kid())
                .cloned(),
        );
        *guard = Arc::new(KeyRing {
            active: key,
            published,
        });
    }

    /// Stops publishing the key `kid`. The active key cannot be retired; returns whether a key
    /// was removed.
    pub fn retire(&self, kid: &str) -> bool {
        let mut guard = self
            .inner
            .ring
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if guard.active.kid() == kid || guard.published.iter().all(|k| k.kid() != kid) {
            return false;
        }
        let published = guard
            .published
            .iter()
            .filter(|k| k.kid() != kid)
            .cloned()
            .collect();
        *guard = Arc::new(KeyRing {
            active: guard.active.clone(),
            published,
        });
        true
    }

    /// The public keys as a JWKS document (HS256 secrets are never included).
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: self
                .ring()
                .published
                .iter()
                .filter_map(|k| k.public_jwk().cloned())
                .collect(),
        }
    }

    /// The JWKS document as JSON.
    pub fn jwks_json(&self) -> String {
        // A JwkSet of well-formed keys always serialises.
        serde_json::to_string(&self.jwks()).unwrap_or_else(|_| "{\"keys\":[]}".to_owned())
    }

    /// The verification keys of every published key, for a verifier in the same process or
    /// one sharing an HS256 secret.
    pub fn key_set(&self) -> KeySet {
        self.ring()
            .published
            .iter()
            .map(SigningKey::verification_key)
            .collect()
    }

    /// A tower service answering every request with the JWKS document
    /// (`application/jwk-set+json`). Mount it at e.g. `/.well-known/jwks.json`; under axum:
    /// `Router::new().route_service("/.well-known/jwks.json", issuer.jwks_service())`.
    pub fn jwks_service(&self) -> JwksService {
        JwksService {
            issuer: self.clone(),
        }
    }

    /// The `iss` claim.
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// The `sub` claim (the calling service).
    pub fn subject(&self) -> &str {
        &self.inner.subject
    }

    /// Token lifetime.
    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// The key id currently signing.
    pub fn active_kid(&self) -> String {
        self.ring().active.kid().to_owned()
    }

    fn ring(&self) -> Arc<KeyRing> {
        self.inner
            .ring
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

crate::error::debug_inner!(TokenIssuer {
    issuer, subject, ttl;
    active_kid = |issuer| issuer.active_kid(),
});

/// Serves the issuer's JWKS document; see [`TokenIssuer::jwks_service`].
#[derive(Clone, Debug)]
pub struct JwksService {
    issuer: TokenIssuer,
}

impl<B> tower_service::Service<Request<B>> for JwksService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<B>) -> Self::Future {
        let mut response = Response::new(full(self.issuer.jwks_json()));
        *response.status_mut() = StatusCode::OK;
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/jwk-set+json"),
        );
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=60"));
        ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_old_key_published_until_retired() {
        let old = SigningKey::generate_ed25519().unwrap();
        let new = SigningKey::generate_es256().unwrap();
        let issuer = TokenIssuer::builder("orders")
            .signing_key(old.clone())
            .build()
            .unwrap();
        issuer.rotate(new.clone());
        assert_eq!(issuer.active_kid(), new.kid());
        assert_eq!(issuer.jwks().keys.len(), 2);
        assert!(
            !issuer.retire(new.kid()),
            "the active key cannot be retired"
        );
        assert!(issuer.retire(old.kid()));
        assert_eq!(issuer.jwks().keys.len(), 1);
        assert_eq!(issuer.key_set().len(), 1);
    }

    #[test]
    fn issued_token_has_the_active_kid_and_redacts_debug() {
        let key = SigningKey::generate_ed25519().unwrap();
        let issuer = TokenIssuer::builder("orders")
            .signing_key(key.clone())
            .build()
            .unwrap();
        let token = issuer.issue("billing", &["invoices:write"]).unwrap();
        let header = jsonwebtoken::decode_header(token.as_str()).unwrap();
        assert_eq!(header.kid.as_deref(), Some(key.kid()));
        assert!(!format!("{token:?}").contains(token.as_str()));
        assert!(token.bearer_header().unwrap().is_sensitive());
        assert!(issuer.issue("billing", &["bad scope"]).is_err());
    }

    #[test]
    fn builder_validates() {
        assert!(TokenIssuer::builder("a").build().is_err());
        let key = SigningKey::generate_ed25519().unwrap();
        assert!(
            TokenIssuer::builder("a")
                .signing_key(key)
                .ttl(Duration::ZERO)
                .build()
                .is_err()
        );
    }
}
