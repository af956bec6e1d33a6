//! What the layers that keep responses share: the layer type over its settings, and the
//! checks of their configuration.

use crate::error::{Error, ErrorKind};

/// The layer `$layer`: its `Settings` (the module's own type of that name, with a `Debug`
/// named after the layer) behind an `Arc` every service it makes shares. Generates the
/// struct, its `Debug`, `new` (documented by the attributes before it), the private
/// `settings` that setters change through, and the `Layer` that wraps a service in
/// `$service::new(inner, settings)`.
macro_rules! settings_layer {
    (
        $(#[$meta:meta])*
        pub struct $layer:ident => $service:ident;
        $(#[$new:meta])*
        pub fn new(store: impl $store:ident);
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
                $service::new(inner, self.settings.clone())
            }
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
