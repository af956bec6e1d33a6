//! The `Service` impls shared by the chassis's HTTP middleware ([`impl_middleware!`]) and by
//! its endpoints that answer every request themselves ([`impl_endpoint!`]).

/// The accessors and the `impl Service<Request<ReqB>>` of a middleware `$service<S>` whose
/// wrapped service is its field `inner: S`: ready when `inner` is, failing with its errors,
/// answering through `$future<S::Future>`. The response is the inner service's
/// (`Response<ResB>`) or, after `boxed`, a `Response<Body>` (for an inner body that `boxed`
/// takes). After the head come the impl's remaining items: its `call`.
///
/// `boxed` with `own_accessors` leaves the accessors to the service.
macro_rules! impl_middleware {
    (boxed, own_accessors, $service:ident => $future:ident; $($call:tt)*) => {
        impl<S, ReqB, ResB> ::tower_service::Service<::http::Request<ReqB>> for $service<S>
        where
            S: ::tower_service::Service<::http::Request<ReqB>, Response = ::http::Response<ResB>>,
            ResB: ::http_body::Body<Data = ::bytes::Bytes> + Send + 'static,
            ResB::Error: Into<crate::body::BoxError>,
        {
            type Response = ::http::Response<crate::body::Body>;
            type Error = S::Error;
            type Future = $future<S::Future>;

            chassis_core::__forward_poll_ready!();

            $($call)*
        }
    };
    (boxed, $service:ident => $future:ident; $($call:tt)*) => {
        impl<S> $service<S> {
            chassis_core::__define_inner_service_accessors!();
        }

        $crate::middleware::impl_middleware!(boxed, own_accessors, $service => $future; $($call)*);
    };
    ($service:ident => $future:ident; $($call:tt)*) => {
        impl<S> $service<S> {
            chassis_core::__define_inner_service_accessors!();
        }

        impl<S, ReqB, ResB> ::tower_service::Service<::http::Request<ReqB>> for $service<S>
        where
            S: ::tower_service::Service<::http::Request<ReqB>, Response = ::http::Response<ResB>>,
        {
            type Response = ::http::Response<ResB>;
            type Error = S::Error;
            type Future = $future<S::Future>;

            chassis_core::__forward_poll_ready!();

            $($call)*
        }
    };
}

pub(crate) use impl_middleware;

/// The `impl Service<Request<B>>` of an endpoint `$service` that answers every request itself
/// with its `async fn answer(self, req: Request<B>) -> Response<Body>`, run on a clone of the
/// service: always ready, never failing, its future boxed (the answer waits on I/O anyway).
macro_rules! impl_endpoint {
    ($service:ident) => {
        impl<B> ::tower_service::Service<::http::Request<B>> for $service
        where
            B: ::http_body::Body<Data = ::bytes::Bytes> + Send + 'static,
            B::Error: Into<crate::body::BoxError>,
        {
            type Response = ::http::Response<crate::body::Body>;
            type Error = ::std::convert::Infallible;
            type Future = ::futures_util::future::BoxFuture<
                'static,
                Result<::http::Response<crate::body::Body>, ::std::convert::Infallible>,
            >;

            fn poll_ready(
                &mut self,
                _cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<Result<(), Self::Error>> {
                ::std::task::Poll::Ready(Ok(()))
            }

            fn call(&mut self, req: ::http::Request<B>) -> Self::Future {
                let this = self.clone();
                Box::pin(async move { Ok(this.answer(req).await) })
            }
        }
    };
}

pub(crate) use impl_endpoint;
