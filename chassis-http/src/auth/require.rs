//! The server side: [`RequireServiceTokenLayer`] verifies the bearer token of every request,
//! checks the scopes the route requires and hands the verified [`ServiceIdentity`] to the
//! handler as a request extension.

use std::sync::Arc;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Method, Request, Response};
use tower_service::Service;

use super::claims::{ServiceIdentity, check_scope};
use super::error::{AuthError, AuthErrorKind};
use super::verifier::{Checked, TokenVerifier, Verified};
use crate::body::{Body, boxed};
use crate::future::ResponseFuture;
use chassis_core::BoxError;

/// Scopes required for matching requests.
#[derive(Debug, Default, Clone)]
struct ScopeRules {
    always: Vec<String>,
    rules: Vec<ScopeRule>,
}

#[derive(Debug, Clone)]
struct ScopeRule {
    method: Option<Method>,
    prefix: String,
    scopes: Vec<String>,
}

impl ScopeRule {
    fn matches(&self, method: &Method, path: &str) -> bool {
        if self.method.as_ref().is_some_and(|m| m != method) {
            return false;
        }
        let prefix = self.prefix.trim_end_matches('/');
        // Prefixes match whole path segments: `/orders` covers `/orders` and `/orders/7`, not
        // `/orders-archive`.
        prefix.is_empty()
            || path == prefix
            || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
    }
}

impl ScopeRules {
    fn required<'a>(&'a self, method: &Method, path: &str) -> Vec<&'a str> {
        let mut required: Vec<&str> = self.always.iter().map(String::as_str).collect();
        for rule in self.rules.iter().filter(|r| r.matches(method, path)) {
            required.extend(rule.scopes.iter().map(String::as_str));
        }
        required
    }
}

/// Requires a valid service token on every request; see the [module docs](crate::auth).
///
/// Scopes: [`require_scopes`](Self::require_scopes) applies to every request through this layer
/// (use it on a sub-router, e.g. with axum's `route_layer`), and
/// [`require_scopes_for`](Self::require_scopes_for) /
/// [`require_scopes_for_method`](Self::require_scopes_for_method) add requirements by path prefix.
/// All matching requirements apply. A scope string that is not a valid RFC 6749 scope token
/// (e.g. contains a space) can never be granted, so a route requiring it always answers 403:
/// misconfiguration fails closed; a warning is logged when the layer is configured.
///
/// Answers (RFC 6750 §3.1; status, challenge and body code always agree, see
/// [`AuthErrorKind`]):
/// - no token (no `Authorization` header, or another scheme): `401`,
///   `WWW-Authenticate: Bearer realm="<audience>"` without an error code, body code `missing_token`;
/// - malformed header (two `Authorization` headers, `Bearer` with nothing or several words
///   after it, not text): `400` with `error="invalid_request"`;
/// - bad token (shape, unknown key, algorithm, signature, claims, expired, not yet valid,
///   untrusted issuer, another audience): `401` with `error="invalid_token"`;
/// - missing scope: `403` with `error="insufficient_scope", scope="<required scopes>"`;
/// - JWKS source down while a refetch was needed: `401` unknown key (the refetch failure is logged).
///
/// Bodies are the chassis JSON error ([`ApiError`](crate::ApiError)) with the RFC 6750 code
/// and the finer reason in `details.reason` (`token_expired`, `wrong_audience`, …). Logs carry
/// only the `kid`, `sub` and a reason — never the token.
#[derive(Clone)]
pub struct RequireServiceTokenLayer {
    verifier: TokenVerifier,
    scopes: Arc<ScopeRules>,
    realm: String,
}

impl RequireServiceTokenLayer {
    /// Requires tokens `verifier` accepts (and no particular scope).
    pub fn new(verifier: TokenVerifier) -> Self {
        Self {
            realm: verifier.audience().to_owned(),
            verifier,
            scopes: Arc::new(ScopeRules::default()),
        }
    }

    /// Also requires `scopes` on every request through this layer.
    pub fn require_scopes(mut self, scopes: &[&str]) -> Self {
        let rules = Arc::make_mut(&mut self.scopes);
        rules.always.extend(validated(scopes));
        self
    }

    /// Also requires `scopes` on requests whose path is `prefix` or below it (any method).
    pub fn require_scopes_for(self, prefix: &str, scopes: &[&str]) -> Self {
        self.add_rule(None, prefix, scopes)
    }

    /// Also requires `scopes` on `method` requests whose path is `prefix` or below it.
    pub fn require_scopes_for_method(self, method: Method, prefix: &str, scopes: &[&str]) -> Self {
        self.add_rule(Some(method), prefix, scopes)
    }

    fn add_rule(mut self, method: Option<Method>, prefix: &str, scopes: &[&str]) -> Self {
        let rules = Arc::make_mut(&mut self.scopes);
        rules.rules.push(ScopeRule {
            method,
            prefix: prefix.to_owned(),
            scopes: validated(scopes).collect(),
        });
        self
    }

    /// The verifier.
    pub fn verifier(&self) -> &TokenVerifier {
        &self.verifier
    }
}

fn validated<'a>(scopes: &'a [&'a str]) -> impl Iterator<Item = String> + 'a {
    scopes.iter().map(|s| {
        if let Err(err) = check_scope(s) {
            tracing::warn!(reason = %err, "required scope can never be granted; requests will get 403");
        }
        (*s).to_owned()
    })
}

chassis_core::__debug_fields!(RequireServiceTokenLayer { verifier, scopes });

super::service::bearer_service!(RequireServiceTokenLayer => RequireServiceToken);

/// What a bearer-token layer makes of a request's token: the extension a verified token
/// grants, or the answer that refuses it.
pub(crate) trait BearerAuth: Clone + Send + 'static {
    /// Inserted into the request when the token is accepted.
    type Extension: Clone + Send + Sync + 'static;

    fn verifier(&self) -> &TokenVerifier;

    /// The answer to a request whose token is missing or malformed.
    fn reject(&self, err: &AuthError) -> Response<Body>;

    /// The extension for the verification result of the request's token, or the answer.
    fn admit<B>(
        &self,
        req: &Request<B>,
        verified: Result<Verified, AuthError>,
    ) -> Result<Self::Extension, Box<Response<Body>>>;
}

/// Calls `inner` with `req` once `auth` accepts its bearer token, or answers for `auth`.
pub(crate) fn call_with_bearer<S, A, ReqBody, ResBody>(
    inner: &mut S,
    auth: &A,
    mut req: Request<ReqBody>,
) -> ResponseFuture<S::Future, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    A: BearerAuth,
    ReqBody: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let token = match bearer_token(&req) {
        Ok(token) => token,
        Err(err) => return ResponseFuture::answered(auth.reject(&err)),
    };
    match auth.verifier().check(&token) {
        Checked::Done(verified) => match auth.admit(&req, verified) {
            Ok(extension) => {
                req.extensions_mut().insert(extension);
                ResponseFuture::inner(inner.call(req))
            }
            Err(response) => ResponseFuture::answered(*response),
        },
        Checked::NeedsRefetch => {
            // NOTE: `poll_ready` readied `inner`; the call happens later, after the refetch,
            // so the ready service moves into the future and a fresh clone stays.
            let clone = inner.clone();
            let mut ready = std::mem::replace(inner, clone);
            let auth = auth.clone();
            ResponseFuture::boxed(Box::pin(async move {
                let verified = auth.verifier().verify_after_refetch(&token).await;
                match auth.admit(&req, verified) {
                    Ok(extension) => {
                        req.extensions_mut().insert(extension);
                        ready.call(req).await.map(|r| r.map(boxed))
                    }
                    Err(response) => Ok(*response),
                }
            }))
        }
    }
}

impl BearerAuth for RequireServiceTokenLayer {
    type Extension = ServiceIdentity;

    fn verifier(&self) -> &TokenVerifier {
        &self.verifier
    }

    fn reject(&self, err: &AuthError) -> Response<Body> {
        self.refuse(err, None)
    }

    fn admit<B>(
        &self,
        req: &Request<B>,
        verified: Result<Verified, AuthError>,
    ) -> Result<ServiceIdentity, Box<Response<Body>>> {
        match verified {
            Ok(verified) => self.authorize(req, verified.identity),
            Err(err) => Err(Box::new(self.refuse(&err, None))),
        }
    }
}

impl RequireServiceTokenLayer {
    fn authorize<B>(
        &self,
        req: &Request<B>,
        identity: ServiceIdentity,
    ) -> Result<ServiceIdentity, Box<Response<Body>>> {
        let required = self.scopes.required(req.method(), req.uri().path());
        let missing = identity.missing_scopes(required.iter().copied());
        if missing.is_empty() {
            tracing::trace!(sub = %identity.subject, "service token accepted");
            return Ok(identity);
        }
        let err = AuthError::new(AuthErrorKind::InsufficientScope { missing });
        Err(Box::new(self.refuse(&err, Some((&identity, &required)))))
    }

    fn refuse(
        &self,
        err: &AuthError,
        scope: Option<(&ServiceIdentity, &[&str])>,
    ) -> Response<Body> {
        let sub = scope.map(|(identity, _)| identity.subject.as_str());
        log_rejection("service token", err, sub);
        let required = scope.map(|(_, s)| s).unwrap_or_default();
        err.to_api_error_with(Some(&self.realm), required, "missingScopes")
            .into_response()
    }
}

/// Logs a refused bearer token: debug for a missing one, warning for a rejection (key id,
/// subject and reason only, never the token), error for a failure on our side.
pub(crate) fn log_rejection(what: &'static str, err: &AuthError, sub: Option<&str>) {
    let kid = match err.kind() {
        AuthErrorKind::UnknownKey { kid } => kid.as_deref(),
        _ => None,
    };
    match err.kind() {
        AuthErrorKind::MissingToken => {
            tracing::debug!(what, reason = err.reason(), "bearer token missing");
        }
        _ if err.is_rejection() => tracing::warn!(
            what,
            kid = kid.unwrap_or("-"),
            sub = sub.unwrap_or("-"),
            reason = err.reason(),
            "{what} rejected"
        ),
        _ => tracing::error!(what, reason = %err, "{what} could not be checked"),
    }
}

/// The token of the request's `Authorization: Bearer` header.
///
/// No header, or another scheme (`Basic …`): [`MissingToken`](AuthErrorKind::MissingToken).
/// Two `Authorization` headers, a value that is not text, `Bearer` with nothing or more than
/// one word after it: [`MalformedHeader`](AuthErrorKind::MalformedHeader).
pub(crate) fn bearer_token<B>(req: &Request<B>) -> Result<String, AuthError> {
    let mut values = req.headers().get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(AuthError::new(AuthErrorKind::MissingToken));
    };
    if values.next().is_some() {
        return Err(AuthError::new(AuthErrorKind::MalformedHeader));
    }
    let value = value
        .to_str()
        .map_err(|_| AuthError::new(AuthErrorKind::MalformedHeader))?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        // Another scheme (Basic, ...) carries no bearer token.
        return Err(AuthError::new(AuthErrorKind::MissingToken));
    }
    let token = token.trim();
    if token.is_empty() || token.contains(' ') {
        return Err(AuthError::new(AuthErrorKind::MalformedHeader));
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(value: Option<&str>) -> Request<()> {
        let mut builder = Request::get("/");
        if let Some(value) = value {
            builder = builder.header(AUTHORIZATION, value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer_token(&request(Some("Bearer abc"))).unwrap(), "abc");
        assert_eq!(bearer_token(&request(Some("bearer abc"))).unwrap(), "abc");
        let kind = |v| bearer_token(&request(v)).unwrap_err().kind().clone();
        assert_eq!(kind(None), AuthErrorKind::MissingToken);
        assert_eq!(
            kind(Some("Basic dXNlcjpwYXNz")),
            AuthErrorKind::MissingToken
        );
        assert_eq!(kind(Some("Bearer")), AuthErrorKind::MalformedHeader);
        assert_eq!(kind(Some("Bearer a b")), AuthErrorKind::MalformedHeader);
    }

    #[test]
    fn scope_rules_match_whole_segments() {
        let rule = ScopeRule {
            method: Some(Method::POST),
            prefix: "/orders/".into(),
            scopes: vec!["orders:write".into()],
        };
        assert!(rule.matches(&Method::POST, "/orders"));
        assert!(rule.matches(&Method::POST, "/orders/7"));
        assert!(!rule.matches(&Method::POST, "/orders-archive"));
        assert!(!rule.matches(&Method::GET, "/orders/7"));
    }
}
