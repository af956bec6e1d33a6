//! Macros shared by the chassis crates. Hidden from the docs: they generate items of the
//! chassis's own types and are not part of the public API.

/// The `get_ref` / `get_mut` / `into_inner` accessors of a middleware service whose wrapped
/// service is the field `inner` of type `S` (tower-http's `define_inner_service_accessors`).
///
/// Use inside `impl<S> FooService<S> { .. }`. `(borrow)` leaves out `into_inner`, for a
/// service that implements `Drop` (its field cannot be moved out).
#[doc(hidden)]
#[macro_export]
macro_rules! __define_inner_service_accessors {
    (borrow) => {
        /// Gets a reference to the underlying service.
        pub fn get_ref(&self) -> &S {
            &self.inner
        }

        /// Gets a mutable reference to the underlying service.
        pub fn get_mut(&mut self) -> &mut S {
            &mut self.inner
        }
    };
    () => {
        $crate::__define_inner_service_accessors!(borrow);

        /// Consumes `self`, returning the underlying service.
        pub fn into_inner(self) -> S {
            self.inner
        }
    };
}

/// The common part of the chassis's opaque error types: a struct holding a `#[non_exhaustive]`
/// kind and, where there is one, the boxed error that caused it.
///
/// `pub struct Error(ErrorKind);` generates the struct, `new(kind)`, `with_source(kind,
/// source)`, `kind()`, `Debug` (the kind, then the source when there is one) and
/// `std::error::Error` with `source()`. `display` says how the error shows: `kind` is the
/// kind's own `Display`; `kind_and_source` adds `: source` when there is one; without a
/// `display` line the type writes `Display` by hand (its message needs more than the kind).
///
/// A type with fields of its own lists them in braces after the kind; it then writes its
/// constructors and `Display` by hand, since they are what fills and shows those fields.
///
/// Per-type extras (shorthand constructors, classification such as `is_transient`) stay
/// hand-written beside the macro; they may read the fields `kind` and `source`.
///
/// ```
/// use std::fmt;
///
/// #[derive(Debug)]
/// #[non_exhaustive]
/// pub enum ErrorKind {
///     Connection,
/// }
///
/// impl fmt::Display for ErrorKind {
///     fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
///         f.write_str("connection failed")
///     }
/// }
///
/// chassis_core::__define_error! {
///     /// The error of this crate.
///     pub struct Error(ErrorKind);
///     display = kind_and_source;
/// }
///
/// chassis_core::__define_error! {
///     /// An error that names the peer it happened with.
///     pub struct PeerError(ErrorKind) {
///         peer: String,
///     }
/// }
///
/// impl fmt::Display for PeerError {
///     fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
///         write!(f, "{}: {}", self.peer, self.kind())
///     }
/// }
///
/// let err = Error::with_source(ErrorKind::Connection, std::io::Error::other("reset"));
/// assert_eq!(err.to_string(), "connection failed: reset");
/// assert!(std::error::Error::source(&err).is_some());
/// assert!(matches!(Error::new(ErrorKind::Connection).kind(), ErrorKind::Connection));
///
/// let err = PeerError { kind: ErrorKind::Connection, peer: "db".into(), source: None };
/// assert_eq!(err.to_string(), "db: connection failed");
/// ```
#[doc(hidden)]
#[macro_export]
macro_rules! __define_error {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident($kind:ty) {
            $( $(#[$fmeta:meta])* $field:ident : $fty:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            kind: $kind,
            $( $(#[$fmeta])* $field: $fty, )*
            source: ::core::option::Option<$crate::BoxError>,
        }

        $crate::__define_error!(@common $name, $kind, [$($field)*]);
    };
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident($kind:ty);
        $(display = $display:ident;)?
    ) => {
        $(#[$meta])*
        $vis struct $name {
            kind: $kind,
            source: ::core::option::Option<$crate::BoxError>,
        }

        impl $name {
            /// Builds an error of `kind` without a source.
            pub fn new(kind: $kind) -> Self {
                Self { kind, source: None }
            }

            /// Builds an error of `kind` caused by `source`.
            pub fn with_source(kind: $kind, source: impl Into<$crate::BoxError>) -> Self {
                Self {
                    kind,
                    source: Some(source.into()),
                }
            }
        }

        $crate::__define_error!(@common $name, $kind, []);
        $( $crate::__define_error!(@display $display $name); )?
    };
    (@common $name:ident, $kind:ty, [$($field:ident)*]) => {
        impl $name {
            /// What happened.
            pub fn kind(&self) -> &$kind {
                &self.kind
            }
        }

        impl ::core::fmt::Debug for $name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                let mut d = f.debug_struct(stringify!($name));
                d.field("kind", &self.kind);
                $( d.field(stringify!($field), &self.$field); )*
                if let Some(source) = &self.source {
                    d.field("source", source);
                }
                d.finish()
            }
        }

        impl ::std::error::Error for $name {
            fn source(&self) -> Option<&(dyn ::std::error::Error + 'static)> {
                self.source
                    .as_deref()
                    .map(|e| e as &(dyn ::std::error::Error + 'static))
            }
        }
    };
    (@display kind $name:ident) => {
        impl ::core::fmt::Display for $name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                ::core::fmt::Display::fmt(&self.kind, f)
            }
        }
    };
    (@display kind_and_source $name:ident) => {
        impl ::core::fmt::Display for $name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                ::core::fmt::Display::fmt(&self.kind, f)?;
                if let Some(source) = &self.source {
                    write!(f, ": {source}")?;
                }
                Ok(())
            }
        }
    };
}

/// Builder setters that store their argument in the field of the same name and return `self`.
///
/// Use inside an `impl` block of a builder or configuration type. Each entry is the setter's
/// docs, then `name: Type` (stores the value), `name: Some(Type)` (stores `Some(value)`, for a
/// field of type `Option<Type>`) or `name: into Type` (takes `impl Into<Type>`). The argument
/// is called after the field unless named in parentheses: `name(arg): Type` (likewise with
/// `Some` and `into`). A setter whose body does more (validation, clamping, two fields) stays
/// hand-written.
///
/// ```
/// use std::time::Duration;
///
/// #[derive(Debug, Default)]
/// pub struct PoolConfig {
///     name: String,
///     size: usize,
///     idle: Option<Duration>,
///     retries: u32,
/// }
///
/// impl PoolConfig {
///     chassis_core::__builder_setters! {
///         /// Names the pool.
///         name: into String,
///         /// Sets the pool's size.
///         size: usize,
///         /// Closes connections idle this long.
///         idle: Some(Duration),
///         /// Retries a failed checkout `n` times.
///         retries(n): u32,
///     }
/// }
///
/// let c = PoolConfig::default().name("db").size(4).idle(Duration::from_secs(1)).retries(2);
/// assert_eq!((c.name.as_str(), c.size, c.idle), ("db", 4, Some(Duration::from_secs(1))));
/// assert_eq!(c.retries, 2);
/// ```
#[doc(hidden)]
#[macro_export]
macro_rules! __builder_setters {
    () => {};
    ($(#[$m:meta])* $name:ident($arg:ident) : Some($ty:ty) $(, $($rest:tt)*)?) => {
        $(#[$m])*
        pub fn $name(mut self, $arg: $ty) -> Self {
            self.$name = ::core::option::Option::Some($arg);
            self
        }
        $( $crate::__builder_setters!($($rest)*); )?
    };
    ($(#[$m:meta])* $name:ident($arg:ident) : into $ty:ty $(, $($rest:tt)*)?) => {
        $(#[$m])*
        pub fn $name(mut self, $arg: impl ::core::convert::Into<$ty>) -> Self {
            self.$name = $arg.into();
            self
        }
        $( $crate::__builder_setters!($($rest)*); )?
    };
    ($(#[$m:meta])* $name:ident($arg:ident) : $ty:ty $(, $($rest:tt)*)?) => {
        $(#[$m])*
        pub fn $name(mut self, $arg: $ty) -> Self {
            self.$name = $arg;
            self
        }
        $( $crate::__builder_setters!($($rest)*); )?
    };
    ($(#[$m:meta])* $name:ident : Some($ty:ty) $(, $($rest:tt)*)?) => {
        $(#[$m])*
        pub fn $name(mut self, $name: $ty) -> Self {
            self.$name = ::core::option::Option::Some($name);
            self
        }
        $( $crate::__builder_setters!($($rest)*); )?
    };
    ($(#[$m:meta])* $name:ident : into $ty:ty $(, $($rest:tt)*)?) => {
        $(#[$m])*
        pub fn $name(mut self, $name: impl ::core::convert::Into<$ty>) -> Self {
            self.$name = $name.into();
            self
        }
        $( $crate::__builder_setters!($($rest)*); )?
    };
    ($(#[$m:meta])* $name:ident : $ty:ty $(, $($rest:tt)*)?) => {
        $(#[$m])*
        pub fn $name(mut self, $name: $ty) -> Self {
            self.$name = $name;
            self
        }
        $( $crate::__builder_setters!($($rest)*); )?
    };
}

/// The `new(name)` of a configuration type with a `name: String` field and a `Default`: the
/// default configuration under that name. Use inside the type's `impl` block.
///
/// ```
/// #[derive(Debug, Default)]
/// pub struct PoolConfig {
///     name: String,
///     size: usize,
/// }
///
/// impl PoolConfig {
///     chassis_core::__named_config_new!();
/// }
///
/// let c = PoolConfig::new("db");
/// assert_eq!((c.name.as_str(), c.size), ("db", 0));
/// ```
#[doc(hidden)]
#[macro_export]
macro_rules! __named_config_new {
    () => {
        /// A default configuration named `name`.
        pub fn new(name: impl ::core::convert::Into<::std::string::String>) -> Self {
            Self {
                name: name.into(),
                ..::core::default::Default::default()
            }
        }
    };
}

/// `impl tower::Layer` for a layer whose service is `Service { inner, ..fields }`, each field
/// cloned from the layer's field of the same name.
///
/// `Layer => Service { a, b }`; a layer with generics lists them first: `<T: Clone> Layer<T>
/// => Service<T> { a }` (the service's own type parameter for the wrapped service is always
/// `S`, its last one, or its first when written out: `<T: Clone> Layer<T> => Service<S, T> { a }`).
/// A layer that builds its service in any other way writes its impl by hand.
///
/// ```
/// #[derive(Clone)]
/// pub struct TagLayer {
///     tag: &'static str,
/// }
///
/// pub struct Tag<S> {
///     inner: S,
///     tag: &'static str,
/// }
///
/// chassis_core::__impl_layer!(TagLayer => Tag { tag });
///
/// use tower::Layer;
/// let svc = TagLayer { tag: "a" }.layer(());
/// assert_eq!(svc.tag, "a");
/// # let () = svc.inner;
///
/// #[derive(Clone)]
/// pub struct PickLayer<P> {
///     pick: P,
/// }
///
/// pub struct Pick<S, P> {
///     inner: S,
///     pick: P,
/// }
///
/// chassis_core::__impl_layer!(<P: Clone> PickLayer<P> => Pick<S, P> { pick });
///
/// let svc = PickLayer { pick: 2_u8 }.layer(());
/// assert_eq!(svc.pick, 2);
/// # let () = svc.inner;
/// ```
#[doc(hidden)]
#[macro_export]
macro_rules! __impl_layer {
    ($layer:ident => $service:ident { $($field:ident),* $(,)? }) => {
        impl<S> $crate::__private::Layer<S> for $layer {
            type Service = $service<S>;

            fn layer(&self, inner: S) -> Self::Service {
                $service {
                    inner,
                    $( $field: ::core::clone::Clone::clone(&self.$field), )*
                }
            }
        }
    };
    (<$($g:ident $(: $bound:path)?),+> $layer:ident<$($lg:ident),+>
        => $service:ident<S, $($sg:ident),+> { $($field:ident),* $(,)? }) => {
        impl<$($g $(: $bound)?,)+ S> $crate::__private::Layer<S> for $layer<$($lg),+> {
            type Service = $service<S, $($sg),+>;

            fn layer(&self, inner: S) -> Self::Service {
                $service {
                    inner,
                    $( $field: ::core::clone::Clone::clone(&self.$field), )*
                }
            }
        }
    };
    (<$($g:ident $(: $bound:path)?),+> $layer:ident<$($lg:ident),+>
        => $service:ident<$($sg:ident),+> { $($field:ident),* $(,)? }) => {
        impl<$($g $(: $bound)?,)+ S> $crate::__private::Layer<S> for $layer<$($lg),+> {
            type Service = $service<$($sg,)+ S>;

            fn layer(&self, inner: S) -> Self::Service {
                $service {
                    inner,
                    $( $field: ::core::clone::Clone::clone(&self.$field), )*
                }
            }
        }
    };
}

/// The `impl Service<Req>` of a middleware service `Name<S>` that boxes its errors: it wraps
/// an `S: Service<Req>` whose error converts into [`BoxError`](crate::BoxError), answers with
/// `S::Response` and fails with `BoxError`. The caller gives the future type and the bodies
/// of `poll_ready` and `call`, in which `S` and `Req` name the wrapped service's and the
/// request's types. A service with other bounds or generics writes its impl by hand.
///
/// ```
/// use std::task::{Context, Poll};
/// use chassis_core::BoxError;
/// use futures_util::TryFutureExt;
/// use futures_util::future::ErrInto;
/// use tower::{Service, ServiceExt, service_fn};
///
/// pub struct Boxing<S> {
///     inner: S,
/// }
///
/// chassis_core::__impl_boxed_service!(Boxing => ErrInto<S::Future, BoxError> {
///     fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
///         self.inner.poll_ready(cx).map_err(Into::into)
///     }
///
///     fn call(&mut self, req: Req) -> Self::Future {
///         self.inner.call(req).err_into()
///     }
/// });
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let svc = Boxing { inner: service_fn(|()| async { Err::<(), _>(std::io::Error::other("x")) }) };
/// let err: BoxError = svc.oneshot(()).await.unwrap_err();
/// assert_eq!(err.to_string(), "x");
/// # }
/// ```
#[doc(hidden)]
#[macro_export]
macro_rules! __impl_boxed_service {
    ($service:ident => $future:ty { $($body:tt)* }) => {
        impl<S, Req> $crate::__private::Service<Req> for $service<S>
        where
            S: $crate::__private::Service<Req>,
            S::Error: ::core::convert::Into<$crate::BoxError>,
        {
            type Response = S::Response;
            type Error = $crate::BoxError;
            type Future = $future;

            $($body)*
        }
    };
}

/// The `poll_ready` of a middleware service that is ready when its wrapped service `inner`
/// is. Use inside `impl Service for ..`, whose `Error` is the wrapped service's (or converts
/// from it with `From`: write `(into)`).
#[doc(hidden)]
#[macro_export]
macro_rules! __forward_poll_ready {
    () => {
        #[inline]
        fn poll_ready(
            &mut self,
            cx: &mut ::core::task::Context<'_>,
        ) -> ::core::task::Poll<::core::result::Result<(), Self::Error>> {
            self.inner.poll_ready(cx)
        }
    };
    (into) => {
        #[inline]
        fn poll_ready(
            &mut self,
            cx: &mut ::core::task::Context<'_>,
        ) -> ::core::task::Poll<::core::result::Result<(), Self::Error>> {
            self.inner
                .poll_ready(cx)
                .map_err(::core::convert::Into::into)
        }
    };
}

/// A `Debug` impl that shows the listed fields and marks the rest as left out
/// (`finish_non_exhaustive`): for types holding a field with no `Debug` (a closure, a key, a
/// client) or one not worth printing.
///
/// ```
/// pub struct Client {
///     name: String,
///     secret: Vec<u8>,
/// }
///
/// chassis_core::__debug_fields!(Client { name });
///
/// let c = Client { name: "a".into(), secret: vec![1] };
/// assert_eq!(format!("{c:?}"), r#"Client { name: "a", .. }"#);
/// # let _ = c.secret;
/// ```
#[doc(hidden)]
#[macro_export]
macro_rules! __debug_fields {
    ($(<$($g:ident),+>)? $ty:ident { $($field:ident),* $(,)? }) => {
        impl$(<$($g),+>)? ::core::fmt::Debug for $ty$(<$($g),+>)? {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.debug_struct(::core::stringify!($ty))
                    $( .field(::core::stringify!($field), &self.$field) )*
                    .finish_non_exhaustive()
            }
        }
    };
}

#[cfg(test)]
// The macros generate `pub` items, as the public types that use them need; here they sit in a
// private module.
#[allow(unreachable_pub)]
mod tests {
    struct Wrapper<S> {
        inner: S,
    }

    impl<S> Wrapper<S> {
        crate::__define_inner_service_accessors!();
    }

    #[test]
    fn accessors_reach_the_inner_service() {
        let mut w = Wrapper { inner: 1_u8 };
        *w.get_mut() += 1;
        assert_eq!(*w.get_ref(), 2);
        assert_eq!(w.into_inner(), 2);
    }

    struct Dropping<S> {
        inner: S,
    }

    impl<S> Drop for Dropping<S> {
        fn drop(&mut self) {}
    }

    impl<S> Dropping<S> {
        crate::__define_inner_service_accessors!(borrow);
    }

    #[test]
    fn borrow_accessors_suit_a_service_with_drop() {
        let mut d = Dropping { inner: 1_u8 };
        *d.get_mut() += 1;
        assert_eq!(*d.get_ref(), 2);
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum TestKind {
        Broken,
        Late { after_ms: u64 },
    }

    impl std::fmt::Display for TestKind {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                Self::Broken => f.write_str("broken"),
                Self::Late { after_ms } => write!(f, "late by {after_ms}ms"),
            }
        }
    }

    crate::__define_error! {
        /// With the source in the message.
        pub struct Chained(TestKind);
        display = kind_and_source;
    }

    crate::__define_error! {
        /// The kind alone in the message.
        pub struct Plain(TestKind);
        display = kind;
    }

    crate::__define_error! {
        /// A field of its own, constructors and `Display` by hand.
        pub struct Named(TestKind) {
            name: String,
        }
    }

    impl std::fmt::Display for Named {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}: {}", self.name, self.kind)
        }
    }

    #[test]
    fn error_macro_builds_kind_source_and_messages() {
        use std::error::Error as _;

        let plain = Chained::new(TestKind::Late { after_ms: 5 });
        assert_eq!(plain.kind(), &TestKind::Late { after_ms: 5 });
        assert!(plain.source().is_none());
        assert_eq!(plain.to_string(), "late by 5ms");
        assert_eq!(
            format!("{plain:?}"),
            "Chained { kind: Late { after_ms: 5 } }"
        );

        let caused = Chained::with_source(TestKind::Broken, std::io::Error::other("reset"));
        assert_eq!(caused.to_string(), "broken: reset");
        assert_eq!(
            caused.source().map(|e| e.to_string()).as_deref(),
            Some("reset")
        );
        assert_eq!(
            format!("{caused:?}"),
            "Chained { kind: Broken, source: Custom { kind: Other, error: \"reset\" } }"
        );

        let quiet = Plain::with_source(TestKind::Broken, std::io::Error::other("reset"));
        assert_eq!(quiet.to_string(), "broken");
        assert!(quiet.source().is_some());
        assert_eq!(Plain::new(TestKind::Broken).kind(), &TestKind::Broken);

        let boxed: crate::BoxError = Box::new(Named {
            kind: TestKind::Broken,
            name: "db".to_owned(),
            source: None,
        });
        let named = boxed.downcast_ref::<Named>().expect("a Named error");
        assert_eq!(named.kind(), &TestKind::Broken);
        assert_eq!(named.to_string(), "db: broken");
        assert_eq!(format!("{named:?}"), "Named { kind: Broken, name: \"db\" }");
    }
}
