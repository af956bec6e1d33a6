//! The shape the auth layers share: a layer whose service holds the wrapped service and a
//! clone of the layer, which decides each request.

/// The `Layer` impl of `$layer`, its service `$service { inner, layer }` (documented as the
/// service of `$layer`) and the service's inner-service accessors.
macro_rules! layer_service {
    ($layer:ident => $service:ident) => {
        impl<S> ::tower_layer::Layer<S> for $layer {
            type Service = $service<S>;

            fn layer(&self, inner: S) -> Self::Service {
                $service {
                    inner,
                    layer: self.clone(),
                }
            }
        }

        #[doc = concat!("The service of [`", stringify!($layer), "`].")]
        #[derive(Clone, Debug)]
        pub struct $service<S> {
            inner: S,
            layer: $layer,
        }

        impl<S> $service<S> {
            chassis_core::__define_inner_service_accessors!();
        }
    };
}

/// [`layer_service!`] for a layer that implements `BearerAuth`, with the service's `Service`
/// impl: every request goes through `call_with_bearer`.
macro_rules! bearer_service {
    ($layer:ident => $service:ident) => {
        $crate::auth::service::layer_service!($layer => $service);

        impl<S, ReqBody, ResBody> ::tower_service::Service<::http::Request<ReqBody>> for $service<S>
        where
            S: ::tower_service::Service<::http::Request<ReqBody>, Response = ::http::Response<ResBody>>
                + Clone
                + Send
                + 'static,
            S::Future: Send + 'static,
            ReqBody: Send + 'static,
            ResBody: ::http_body::Body<Data = ::bytes::Bytes> + Send + 'static,
            ResBody::Error: Into<::chassis_core::BoxError>,
        {
            type Response = ::http::Response<$crate::body::Body>;
            type Error = S::Error;
            type Future = $crate::future::ResponseFuture<S::Future, S::Error>;

            chassis_core::__forward_poll_ready!();

            fn call(&mut self, req: ::http::Request<ReqBody>) -> Self::Future {
                $crate::auth::require::call_with_bearer(&mut self.inner, &self.layer, req)
            }
        }
    };
}

pub(crate) use {bearer_service, layer_service};
