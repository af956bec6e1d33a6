//! What the layers that keep responses share: the layer type over its settings, and the
//! checks of their configuration.

use crate::error::{Error, ErrorKind};

/// The layer `$layer` and its service `$service`, which share the layer's `Settings` (the
/// module's own type of that name, with a `Debug` named after the layer) behind an `Arc`.
/// Generates both structs with their `Debug`, the layer's `new` (documented by the attributes
/// before it) and the private `settings` that its setters change through, the `Layer`, and
/// the service's inner-service accessors. The service's fields are visible to the module's
/// siblings, where its `Service` impl lives.
macro_rules! settings_layer {
    (
        $(#[$meta:meta])*
        pub struct $layer:ident;
        $(#[$new:meta])*
        pub fn new(store: impl $store:ident);
        $(#[$smeta:meta])*
        pub struct $service:ident<S>;
    ) => {
        $(#[$meta])*
        #[derive(Clone)]
        pub struct $layer {
            pub(crate) settings: ::std::sync::Arc<Settings>,
        }

        impl ::std::fmt::Debug for $layer {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                self.settings.fmt(f)
            }
        }

        impl $layer {
            $(#[$new])*
            pub fn new(store: impl $store) -> Self {
                Self::with_store(::std::sync::Arc::new(store))
            }

            fn settings(&mut self) -> &mut Settings {
                ::std::sync::Arc::make_mut(&mut self.settings)
            }
        }

        impl<S> ::tower_layer::Layer<S> for $layer {
            type Service = $service<S>;

            fn layer(&self, inner: S) -> Self::Service {
                $service {
                    inner,
                    settings: self.settings.clone(),
                }
            }
        }

        $(#[$smeta])*
        #[derive(Clone)]
        pub struct $service<S> {
            pub(super) inner: S,
            pub(super) settings: ::std::sync::Arc<Settings>,
        }

        chassis_core::__debug_fields!(<S> $service { settings });

        impl<S> $service<S> {
            chassis_core::__define_inner_service_accessors!();
        }
    };
}

pub(crate) use settings_layer;

/// The configuration error `reason`.
pub(crate) fn invalid_config(reason: String) -> Error {
    Error::new(ErrorKind::InvalidConfig { reason })
}

/// Each of `names` as `parse` reads it; the first it cannot read is the configuration error
/// `reason(name)`.
pub(crate) fn parse_all<T, E>(
    names: &[String],
    parse: impl Fn(&str) -> Result<T, E>,
    reason: impl Fn(&str) -> String,
) -> Result<Vec<T>, Error> {
    names
        .iter()
        .map(|name| parse(name).map_err(|_| invalid_config(reason(name))))
        .collect()
}
