//! The client side: [`AddServiceTokenLayer`] attaches `Authorization: Bearer <token>` for one
//! target service, reusing a cached token and renewing it before it expires.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::Request;
use http::header::{AUTHORIZATION, HeaderValue};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_service::Service;

use super::claims::check_scope;
use super::error::AuthError;
use super::issuer::TokenIssuer;
use chassis_core::BoxError;

/// Default point of a token's lifetime at which it is renewed: 80%.
pub const DEFAULT_RENEW_FRACTION: f64 = 0.8;

/// Tokens for one target audience with fixed scopes, cached and renewed before expiry.
///
/// Cheap to clone; clones share the cache. Signing happens outside the cache lock: under
/// contention at renewal time two callers may both sign, and the later token wins the cache.
#[derive(Clone)]
pub struct ServiceTokenSource {
    issuer: TokenIssuer,
    audience: Arc<str>,
    scopes: Arc<[String]>,
    renew_fraction: f64,
    cache: Arc<Mutex<Option<Cached>>>,
}

struct Cached {
    header: HeaderValue,
    renew_at: Instant,
}

impl ServiceTokenSource {
    /// Tokens from `issuer` for `audience` granting `scopes`. Fails when the audience is empty or
    /// a scope is not a valid RFC 6749 scope token.
    pub fn new(issuer: TokenIssuer, audience: &str, scopes: &[&str]) -> Result<Self, AuthError> {
        if audience.is_empty() {
            return Err(AuthError::invalid_config("audience must not be empty"));
        }
        for scope in scopes {
            check_scope(scope)?;
        }
        Ok(Self {
            issuer,
            audience: audience.into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            renew_fraction: DEFAULT_RENEW_FRACTION,
            cache: Arc::new(Mutex::new(None)),
        })
    }

    /// Renew a cached token once this fraction of its lifetime has passed. Defaults to 0.8
    /// ([`DEFAULT_RENEW_FRACTION`]); clamped to `0.1..=0.95` so a token is neither re-signed
    /// for every call nor sent in its last moments.
    pub fn renew_at(mut self, fraction: f64) -> Self {
        self.renew_fraction = if fraction.is_nan() {
            DEFAULT_RENEW_FRACTION
        } else {
            fraction.clamp(0.1, 0.95)
        };
        self
    }

    /// The target audience.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// `Bearer <token>` for the audience (sensitive header value): the cached token while it is
    /// fresh, a new one otherwise.
    pub fn bearer_header(&self) -> Result<HeaderValue, AuthError> {
        let now = Instant::now();
        if let Some(cached) = self.lock().as_ref()
            && now < cached.renew_at
        {
            return Ok(cached.header.clone());
        }
        // Sign without holding the lock.
        let scopes: Vec<&str> = self.scopes.iter().map(String::as_str).collect();
        let token = self.issuer.issue(&self.audience, &scopes)?;
        let header = token.bearer_header()?;
        let renew_at = now + Duration::from_secs_f64(token.ttl.as_secs_f64() * self.renew_fraction);
        tracing::debug!(aud = %self.audience, jti = %token.jti, "service token issued");
        *self.lock() = Some(Cached {
            header: header.clone(),
            renew_at,
        });
        Ok(header)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Cached>> {
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl fmt::Debug for ServiceTokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceTokenSource")
            .field("subject", &self.issuer.subject())
            .field("audience", &self.audience)
            .field("scopes", &self.scopes)
            .field("renew_fraction", &self.renew_fraction)
            .finish_non_exhaustive()
    }
}

/// Attaches a service token to every request; see the [module docs](crate::auth).
///
/// A request that already has an `Authorization` header keeps it. If signing fails, the call
/// fails with the [`AuthError`] (boxed) without reaching the inner service.
#[derive(Clone, Debug)]
pub struct AddServiceTokenLayer {
    source: ServiceTokenSource,
}

impl AddServiceTokenLayer {
    /// Attaches tokens from `source`.
    pub fn new(source: ServiceTokenSource) -> Self {
        Self { source }
    }

    /// Shorthand for `AddServiceTokenLayer::new(ServiceTokenSource::new(issuer, audience, scopes)?)`.
    pub fn for_audience(
        issuer: TokenIssuer,
        audience: &str,
        scopes: &[&str],
    ) -> Result<Self, AuthError> {
        Ok(Self::new(ServiceTokenSource::new(
            issuer, audience, scopes,
        )?))
    }

    /// The token source.
    pub fn source(&self) -> &ServiceTokenSource {
        &self.source
    }
}

chassis_core::__impl_layer!(AddServiceTokenLayer => AddServiceToken { source });

/// The service of [`AddServiceTokenLayer`].
#[derive(Clone, Debug)]
pub struct AddServiceToken<S> {
    inner: S,
    source: ServiceTokenSource,
}

impl<S> AddServiceToken<S> {
    chassis_core::__define_inner_service_accessors!();
}

impl<S, B> Service<Request<B>> for AddServiceToken<S>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    chassis_core::__forward_poll_ready!(into);

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if !req.headers().contains_key(AUTHORIZATION) {
            match self.source.bearer_header() {
                Ok(value) => {
                    req.headers_mut().insert(AUTHORIZATION, value);
                }
                Err(err) => {
                    tracing::error!(aud = %self.source.audience, reason = %err, "cannot sign service token");
                    return ResponseFuture {
                        state: State::Failed { error: Some(err) },
                    };
                }
            }
        }
        ResponseFuture {
            state: State::Inner {
                future: self.inner.call(req),
            },
        }
    }
}

pin_project! {
    /// Response future of [`AddServiceToken`].
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Inner { #[pin] future: F },
        Failed { error: Option<AuthError> },
    }
}

chassis_core::__debug_fields!(<F> ResponseFuture {});

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Inner { future } => Poll::Ready(ready!(future.poll(cx)).map_err(Into::into)),
            StateProj::Failed { error } => Poll::Ready(Err(error
                .take()
                .expect("ResponseFuture polled after completion")
                .into())),
        }
    }
}
