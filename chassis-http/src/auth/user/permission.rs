//! [`RequirePermissionLayer`]: a route's permission requirement on the [`UserPrincipal`] that
//! [`RequireUserTokenLayer`](super::RequireUserTokenLayer) inserted.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use tower_service::Service;

use super::principal::UserPrincipal;
use crate::auth::claims::check_scope;
use crate::auth::error::{AuthError, AuthErrorKind};
use crate::auth::require::log_rejection;
use crate::body::Body;
use crate::future::ResponseFuture;
use chassis_core::BoxError;

/// Requires every request to carry a [`UserPrincipal`] with all of these permissions.
///
/// Put it inside [`RequireUserTokenLayer`](super::RequireUserTokenLayer) (under axum:
/// `route_layer` on the routes it guards, with the token layer applied outside). Answers:
/// - the principal lacks a permission: `403`, `WWW-Authenticate: Bearer realm="…",
///   error="insufficient_scope", scope="<required permissions>"`, body code
///   `insufficient_scope` with `details.missingPermissions`;
/// - no principal at all (the token layer is missing or outside): `401` `missing_token`, so a
///   misassembled stack fails closed.
#[derive(Clone, Debug)]
pub struct RequirePermissionLayer {
    required: Arc<[String]>,
    realm: Option<Arc<str>>,
}

impl RequirePermissionLayer {
    /// Requires all of `permissions`. A permission that is not a valid RFC 6749 scope token can
    /// never be granted by a validated [`RbacConfig`](super::RbacConfig): the route then always
    /// answers 403 (a warning is logged here).
    pub fn new(permissions: &[&str]) -> Self {
        for permission in permissions {
            if let Err(err) = check_scope(permission) {
                tracing::warn!(reason = %err, "required permission can never be granted; requests will get 403");
            }
        }
        Self {
            required: permissions.iter().map(|p| (*p).to_owned()).collect(),
            realm: None,
        }
    }

    /// The `realm` of the `WWW-Authenticate` challenge; use the token layer's (its audience
    /// unless set). Without one, the challenge names no realm.
    pub fn realm(mut self, realm: impl Into<String>) -> Self {
        self.realm = Some(realm.into().into());
        self
    }

    /// The permissions required.
    pub fn permissions(&self) -> &[String] {
        &self.required
    }

    fn check(&self, principal: Option<&UserPrincipal>) -> Result<(), Box<Response<Body>>> {
        let required: Vec<&str> = self.required.iter().map(String::as_str).collect();
        let result = match principal {
            Some(principal) => principal.require_all(&required),
            None => Err(AuthError::new(AuthErrorKind::MissingToken)),
        };
        result.map_err(|err| {
            log_rejection("user token", &err, principal.map(|p| p.subject.as_str()));
            Box::new(
                err.to_api_error_with(self.realm.as_deref(), &required, "missingPermissions")
                    .into_response(),
            )
        })
    }
}

crate::auth::service::layer_service!(RequirePermissionLayer => RequirePermission);

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequirePermission<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S::Error>;

    chassis_core::__forward_poll_ready!();

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        match self.layer.check(req.extensions().get::<UserPrincipal>()) {
            Ok(()) => ResponseFuture::inner(self.inner.call(req)),
            Err(response) => ResponseFuture::answered(*response),
        }
    }
}
