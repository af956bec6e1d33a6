//! The verified identity of an mTLS client ([`PeerIdentity`]), and [`RequirePeerLayer`], which
//! lets only some identities through.
//!
//! When [`Server`](crate::server::Server) verifies client certificates
//! ([`ServerTlsConfig::require_client_cert`](super::server::ServerTlsConfig::require_client_cert)),
//! every request of a connection whose client presented a certificate that verified carries a
//! [`PeerIdentity`] in its extensions: the subject alternative names of the client's leaf
//! certificate, its URIs (a SPIFFE id such as `spiffe://shop/orders`) and DNS names. A request
//! without one came from a client without a certificate (with
//! [`optional_client_cert`](super::server::ServerTlsConfig::optional_client_cert)) or over a
//! connection without TLS.
//!
//! [`RequirePeerLayer`] answers `403` with the chassis JSON error body (code `forbidden`) to a
//! request without a [`PeerIdentity`] or with one not on its allow list, so a service can say
//! "only the orders service may call `/reserve`" by wrapping just that route.
//!
//! The names are read from the certificate's subjectAltName extension with a small DER reader
//! of this module: rustls and webpki verify the certificate but do not hand out its names, and
//! the certificate reaching it has already been parsed and verified by webpki.
//!
//! # Example
//! ```
//! use axum::{Extension, Router, routing::post};
//! use chassis_http::tls::peer::{PeerIdentity, RequirePeerLayer};
//!
//! async fn reserve(Extension(peer): Extension<PeerIdentity>) -> String {
//!     format!("reserved for {}", peer.spiffe_id().unwrap_or("?"))
//! }
//!
//! let app: Router = Router::new()
//!     .route(
//!         "/reserve",
//!         post(reserve).route_layer(RequirePeerLayer::new().allow_uri("spiffe://shop/orders")),
//!     )
//!     .route("/stock", axum::routing::get(|| async { "open to every client" }));
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use rustls_pki_types::CertificateDer;
use tower_service::Service;

use crate::body::{Body, BoxError, boxed};
use crate::error::{ApiError, Error, ErrorKind};

/// The verified identity of an mTLS client, in the extensions of each of its requests; see
/// the [module docs](self).
///
/// Cheap to clone (one reference count).
#[derive(Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    inner: Arc<Inner>,
}

#[derive(PartialEq, Eq)]
struct Inner {
    uris: Vec<String>,
    dns_names: Vec<String>,
    certificate: CertificateDer<'static>,
}

crate::error::debug_inner!(PeerIdentity {
    uris,
    dns_names,
    ..
});

impl PeerIdentity {
    /// The identity named by the subject alternative names of `certificate` (DER), a client's
    /// leaf certificate. The server builds it after verifying the certificate; this does not
    /// verify anything. A certificate without the extension has an identity without names;
    /// one that is not DER is an [`ErrorKind::Tls`] error.
    pub fn from_certificate(certificate: CertificateDer<'static>) -> Result<Self, Error> {
        let names = san::names(certificate.as_ref()).ok_or_else(|| {
            Error::new(ErrorKind::Tls {
                reason: "the peer's certificate is not a well-formed X.509 certificate".into(),
            })
        })?;
        let (mut uris, mut dns_names) = (Vec::new(), Vec::new());
        for name in names {
            match name {
                san::Name::Uri(uri) => uris.push(uri),
                san::Name::Dns(dns) => dns_names.push(dns),
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                uris,
                dns_names,
                certificate,
            }),
        })
    }

    /// The certificate's SAN URIs, in certificate order (e.g. `spiffe://shop/orders`).
    pub fn uris(&self) -> &[String] {
        &self.inner.uris
    }

    /// The certificate's SAN DNS names, in certificate order.
    pub fn dns_names(&self) -> &[String] {
        &self.inner.dns_names
    }

    /// The first SAN URI with the `spiffe` scheme: the workload's SPIFFE id.
    pub fn spiffe_id(&self) -> Option<&str> {
        self.inner
            .uris
            .iter()
            .map(String::as_str)
            .find(|uri| uri.starts_with("spiffe://"))
    }

    /// Whether `uri` is one of the SAN URIs (compared exactly).
    pub fn has_uri(&self, uri: &str) -> bool {
        self.inner.uris.iter().any(|u| u == uri)
    }

    /// Whether `name` is one of the SAN DNS names (compared ignoring ASCII case).
    pub fn has_dns_name(&self, name: &str) -> bool {
        self.inner
            .dns_names
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
    }

    /// The client's leaf certificate, DER.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.inner.certificate
    }
}

/// The subjectAltName extension of an X.509 certificate, read from DER.
///
/// Reads only what it needs: the outer `Certificate` and `TBSCertificate` sequences, the
/// `[3]` extensions, the extension with id 2.5.29.17, and in its `GeneralNames` the
/// `dNSName` (`[2]`) and `uniformResourceIdentifier` (`[6]`) entries, which are IA5 strings;
/// other kinds of names are skipped. Lengths are checked against what is left at every step,
/// so a malformed certificate yields `None`, never a panic.
mod san {
    /// A name of the extension.
    #[derive(Debug, PartialEq, Eq)]
    pub(super) enum Name {
        Dns(String),
        Uri(String),
    }

    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    const BOOLEAN: u8 = 0x01;
    const OCTET_STRING: u8 = 0x04;
    const EXTENSIONS: u8 = 0xa3;
    const DNS_NAME: u8 = 0x82;
    const URI: u8 = 0x86;
    /// 2.5.29.17, subjectAltName.
    const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

    /// One TLV: its tag, its contents and what follows it. Single-byte tags only (X.509 has
    /// no others); definite lengths of up to 4 bytes.
    fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        if tag & 0x1f == 0x1f {
            return None;
        }
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 || rest.len() < count {
                return None;
            }
            let (bytes, after) = rest.split_at(count);
            rest = after;
            bytes.iter().fold(0usize, |n, &b| (n << 8) | usize::from(b))
        };
        if rest.len() < len {
            return None;
        }
        let (contents, after) = rest.split_at(len);
        Some((tag, contents, after))
    }

    /// The contents of a TLV with tag `want`, and what follows.
    fn expect(input: &[u8], want: u8) -> Option<(&[u8], &[u8])> {
        let (tag, contents, rest) = tlv(input)?;
        (tag == want).then_some((contents, rest))
    }

    /// The DNS names and URIs of the certificate's subjectAltName; empty without one. `None`
    /// if the DER is malformed.
    pub(super) fn names(der: &[u8]) -> Option<Vec<Name>> {
        let (certificate, _) = expect(der, SEQUENCE)?;
        let (mut tbs, _) = expect(certificate, SEQUENCE)?;
        // The extensions are the last field of the TBSCertificate, `[3]` explicit.
        let extensions = loop {
            if tbs.is_empty() {
                return Some(Vec::new());
            }
            let (tag, contents, rest) = tlv(tbs)?;
            if tag == EXTENSIONS {
                break contents;
            }
            tbs = rest;
        };
        let (mut list, _) = expect(extensions, SEQUENCE)?;
        while !list.is_empty() {
            let (extension, rest) = expect(list, SEQUENCE)?;
            list = rest;
            let (id, mut fields) = expect(extension, OID)?;
            if id != SUBJECT_ALT_NAME {
                continue;
            }
            if let Some((tag, _, rest)) = tlv(fields)
                && tag == BOOLEAN
            {
                fields = rest;
            }
            let (value, _) = expect(fields, OCTET_STRING)?;
            let (mut general_names, _) = expect(value, SEQUENCE)?;
            let mut names = Vec::new();
            while !general_names.is_empty() {
                let (tag, contents, rest) = tlv(general_names)?;
                general_names = rest;
                // IA5String: ASCII; anything else is not a name this certificate can mean.
                let text = || {
                    contents
                        .is_ascii()
                        .then(|| String::from_utf8_lossy(contents).into_owned())
                };
                match tag {
                    DNS_NAME => names.extend(text().map(Name::Dns)),
                    URI => names.extend(text().map(Name::Uri)),
                    _ => {}
                }
            }
            return Some(names);
        }
        Some(Vec::new())
    }
}

/// The identities a [`RequirePeerLayer`] lets through.
#[derive(Debug, Clone, Default)]
struct Allowed {
    uris: Vec<String>,
    dns_names: Vec<String>,
}

impl Allowed {
    fn permits(&self, peer: &PeerIdentity) -> bool {
        if self.uris.is_empty() && self.dns_names.is_empty() {
            return true;
        }
        self.uris.iter().any(|uri| peer.has_uri(uri))
            || self.dns_names.iter().any(|name| peer.has_dns_name(name))
    }
}

/// Lets through only requests from an mTLS client with an allowed [`PeerIdentity`]; answers
/// the others `403` with the chassis JSON error body (code `forbidden`). See the
/// [module docs](self).
///
/// A peer is allowed if one of its SAN URIs is an allowed URI, or one of its DNS names an
/// allowed DNS name. Without any [`allow_uri`](Self::allow_uri) or
/// [`allow_dns`](Self::allow_dns), every client with a verified certificate is allowed.
#[derive(Debug, Clone, Default)]
pub struct RequirePeerLayer {
    allowed: Arc<Allowed>,
}

impl RequirePeerLayer {
    /// Requires a verified client certificate; any identity, until some are allowed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Allows a peer with this SAN URI (compared exactly), e.g. a SPIFFE id
    /// `spiffe://shop/orders`. Defaults to none.
    pub fn allow_uri(mut self, uri: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.allowed).uris.push(uri.into());
        self
    }

    /// Allows a peer with this SAN DNS name (compared ignoring ASCII case). Defaults to none.
    pub fn allow_dns(mut self, name: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.allowed).dns_names.push(name.into());
        self
    }
}

chassis_core::__impl_layer!(RequirePeerLayer => RequirePeer { allowed });

/// The service of a [`RequirePeerLayer`].
#[derive(Debug, Clone)]
pub struct RequirePeer<S> {
    inner: S,
    allowed: Arc<Allowed>,
}

impl<S> RequirePeer<S> {
    chassis_core::__define_inner_service_accessors!();
}

#[cold]
#[inline(never)]
fn forbidden(peer: Option<&PeerIdentity>) -> Response<Body> {
    let message = match peer {
        None => "this endpoint requires a verified client certificate",
        Some(_) => "the client's certificate identity is not allowed to call this endpoint",
    };
    tracing::debug!(
        target: "chassis_http::tls",
        peer = ?peer,
        "request refused: peer identity missing or not allowed"
    );
    ApiError::forbidden(message).into_response()
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for RequirePeer<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    chassis_core::__forward_poll_ready!();

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let peer = req.extensions().get::<PeerIdentity>();
        if peer.is_some_and(|peer| self.allowed.permits(peer)) {
            ResponseFuture {
                state: State::Called {
                    future: self.inner.call(req),
                },
            }
        } else {
            // NOTE: the inner service's readiness from `poll_ready` goes unused, as with any
            // request a layer answers itself.
            ResponseFuture {
                state: State::Refused {
                    response: Some(forbidden(peer)),
                },
            }
        }
    }
}

pin_project! {
    /// The response future of [`RequirePeer`].
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // The peer is allowed: the inner service's future.
        Called { #[pin] future: F },
        // The peer is not: the 403.
        Refused { response: Option<Response<Body>> },
    }
}

chassis_core::__debug_fields!(<F> ResponseFuture {});

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Output = Result<Response<Body>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called { future } => future
                .poll(cx)
                .map(|result| result.map(|response| response.map(boxed))),
            StateProj::Refused { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::BodyExt;
    use tower::{Layer, ServiceExt};

    use super::*;

    fn certificate(sans: Vec<rcgen::SanType>) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans;
        params.self_signed(&key).unwrap().der().clone()
    }

    fn uri(s: &str) -> rcgen::SanType {
        rcgen::SanType::URI(s.try_into().unwrap())
    }

    fn dns(s: &str) -> rcgen::SanType {
        rcgen::SanType::DnsName(s.try_into().unwrap())
    }

    #[test]
    fn reads_uris_and_dns_names_and_skips_other_names() {
        let cert = certificate(vec![
            dns("orders.shop.svc"),
            rcgen::SanType::IpAddress([10, 0, 0, 1].into()),
            uri("spiffe://shop/orders"),
            rcgen::SanType::Rfc822Name("ops@example.com".try_into().unwrap()),
            uri("https://example.com/orders"),
            dns("orders"),
        ]);
        let peer = PeerIdentity::from_certificate(cert.clone()).unwrap();
        assert_eq!(
            peer.uris(),
            ["spiffe://shop/orders", "https://example.com/orders"]
        );
        assert_eq!(peer.dns_names(), ["orders.shop.svc", "orders"]);
        assert_eq!(peer.spiffe_id(), Some("spiffe://shop/orders"));
        assert!(peer.has_dns_name("ORDERS.shop.svc"));
        assert!(!peer.has_uri("spiffe://shop/order"));
        assert_eq!(peer.certificate(), &cert);
    }

    #[test]
    fn a_certificate_without_names_has_an_empty_identity() {
        let peer = PeerIdentity::from_certificate(certificate(Vec::new())).unwrap();
        assert!(peer.uris().is_empty() && peer.dns_names().is_empty());
        assert_eq!(peer.spiffe_id(), None);
    }

    #[test]
    fn long_names_use_long_form_lengths() {
        let long = format!("spiffe://shop/{}", "a".repeat(300));
        let peer = PeerIdentity::from_certificate(certificate(vec![uri(&long)])).unwrap();
        assert_eq!(peer.uris(), [long]);
    }

    #[test]
    fn malformed_der_is_an_error_not_a_panic() {
        let cert = certificate(vec![uri("spiffe://shop/orders")]);
        let der = cert.as_ref();
        for len in 0..der.len() {
            // Every truncation of the certificate, and a byte flipped at every offset.
            let _ = PeerIdentity::from_certificate(CertificateDer::from(der[..len].to_vec()));
            let mut flipped = der.to_vec();
            flipped[len] ^= 0xff;
            let _ = PeerIdentity::from_certificate(CertificateDer::from(flipped));
        }
        assert!(PeerIdentity::from_certificate(CertificateDer::from(vec![0x30, 0x85])).is_err());
        assert!(PeerIdentity::from_certificate(CertificateDer::from(Vec::new())).is_err());
    }

    async fn status(layer: &RequirePeerLayer, peer: Option<PeerIdentity>) -> (u16, String) {
        let svc = layer.layer(tower::service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(String::from("ok")))
        }));
        let mut req = Request::new(());
        if let Some(peer) = peer {
            req.extensions_mut().insert(peer);
        }
        let res = svc.oneshot(req).await.unwrap();
        let status = res.status().as_u16();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn only_allowed_peers_pass() {
        let orders = PeerIdentity::from_certificate(certificate(vec![
            uri("spiffe://shop/orders"),
            dns("orders.shop.svc"),
        ]))
        .unwrap();
        let payments =
            PeerIdentity::from_certificate(certificate(vec![uri("spiffe://shop/payments")]))
                .unwrap();
        let layer = RequirePeerLayer::new().allow_uri("spiffe://shop/orders");
        assert_eq!(status(&layer, Some(orders.clone())).await.0, 200);
        let (code, body) = status(&layer, Some(payments.clone())).await;
        assert_eq!(code, 403);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["error"]["code"], "forbidden");
        assert_eq!(json["success"], false);
        assert_eq!(status(&layer, None).await.0, 403);

        let by_dns = RequirePeerLayer::new().allow_dns("Orders.Shop.Svc");
        assert_eq!(status(&by_dns, Some(orders.clone())).await.0, 200);
        assert_eq!(status(&by_dns, Some(payments.clone())).await.0, 403);

        let any = RequirePeerLayer::new();
        assert_eq!(status(&any, Some(payments)).await.0, 200);
        assert_eq!(status(&any, None).await.0, 403);
    }
}
