//! [`RequireUserTokenLayer`]: verifies an end user's bearer JWT and inserts the
//! [`UserPrincipal`] with its roles and permissions.

use std::sync::Arc;

use http::{Request, Response};

use super::principal::UserPrincipal;
use super::rbac::RbacConfig;
use crate::auth::error::AuthError;
use crate::auth::require::{BearerAuth, log_rejection};
use crate::auth::verifier::{TokenVerifier, Verified};
use crate::body::Body;

/// Requires a valid end-user token on every request and inserts its [`UserPrincipal`]; see the
/// [module docs](super).
///
/// The token is checked by a [`TokenVerifier`] (keys from a [`KeySet`](crate::auth::KeySet) or
/// the identity provider's JWKS through [`JwksKeySource`](crate::auth::JwksKeySource); its
/// issuer and this API's audience), the roles are read from the claims the [`RbacConfig`]
/// names and mapped to permissions. Answers (RFC 6750 §3.1):
/// - no token: `401` with a bare `WWW-Authenticate: Bearer realm="…"`, body code `missing_token`;
/// - malformed `Authorization` header: `400` `invalid_request`;
/// - invalid token (signature — so also any edited claim, roles included —, key, algorithm,
///   expired, issuer, audience, a roles claim that is not strings): `401` `invalid_token`.
///
/// It checks no permission itself: add [`RequirePermissionLayer`](super::RequirePermissionLayer)
/// per route, or call [`UserPrincipal::require`] in the handler (403 `insufficient_scope`).
#[derive(Clone, Debug)]
pub struct RequireUserTokenLayer {
    verifier: TokenVerifier,
    rbac: Arc<RbacConfig>,
    realm: Arc<str>,
}

impl RequireUserTokenLayer {
    /// Requires tokens `verifier` accepts and maps their roles with `rbac`. Fails when `rbac`
    /// does not [validate](RbacConfig::validate).
    ///
    /// Build the verifier for end-user tokens: the identity provider as trusted issuer, this
    /// API as audience, usually `require_jti(false)` and a `max_token_lifetime` as long as the
    /// provider's access tokens live.
    pub fn new(verifier: TokenVerifier, rbac: RbacConfig) -> Result<Self, AuthError> {
        rbac.validate()?;
        Ok(Self {
            realm: verifier.audience().into(),
            verifier,
            rbac: Arc::new(rbac),
        })
    }

    /// The `realm` of the `WWW-Authenticate` challenge. Defaults to the verifier's audience.
    pub fn realm(mut self, realm: impl Into<String>) -> Self {
        self.realm = realm.into().into();
        self
    }

    /// The verifier.
    pub fn verifier(&self) -> &TokenVerifier {
        &self.verifier
    }

    /// The role map.
    pub fn rbac(&self) -> &RbacConfig {
        &self.rbac
    }

    /// Verifies `token` (the compact JWS, without `Bearer `) and returns its principal, for
    /// code that authenticates outside a layer.
    pub async fn authenticate(&self, token: &str) -> Result<UserPrincipal, AuthError> {
        let verified = self.verifier.verify_token(token).await?;
        self.rbac.principal(&verified)
    }
}

impl BearerAuth for RequireUserTokenLayer {
    type Extension = UserPrincipal;

    fn verifier(&self) -> &TokenVerifier {
        &self.verifier
    }

    fn reject(&self, err: &AuthError) -> Response<Body> {
        log_rejection("user token", err, None);
        err.to_api_error_with(Some(&self.realm), &[], "missingPermissions")
            .into_response()
    }

    fn admit<B>(
        &self,
        _req: &Request<B>,
        verified: Result<Verified, AuthError>,
    ) -> Result<UserPrincipal, Box<Response<Body>>> {
        match verified.and_then(|v| self.rbac.principal(&v)) {
            Ok(principal) => {
                tracing::trace!(sub = %principal.subject, "user token accepted");
                Ok(principal)
            }
            Err(err) => Err(Box::new(self.reject(&err))),
        }
    }
}

crate::auth::service::bearer_service!(RequireUserTokenLayer => RequireUserToken);
