//! [`memory_store!`]: the part both in-memory stores share, their shared state and bounds.

/// An in-memory store: the struct `$store`, whose clones share its `$state` behind a lock,
/// bounded by entries (`max_entries`, at least 1, default 10,000) and by bytes (`max_bytes`,
/// default 64 MiB). Generates the struct, `Default`, `new`, both bound setters (documented by
/// the attributes before their names), `lock`, and a `Debug` showing the bounds and the
/// store's method `$shown`.
macro_rules! memory_store {
    (
        $(#[$meta:meta])*
        pub struct $store:ident($state:ty);
        debug = $shown:ident;
        $(#[$entries:meta])* max_entries;
        $(#[$bytes:meta])* max_bytes;
    ) => {
        $(#[$meta])*
        #[derive(Clone)]
        pub struct $store {
            inner: ::std::sync::Arc<::std::sync::Mutex<$state>>,
            max_entries: usize,
            max_bytes: usize,
        }

        impl Default for $store {
            fn default() -> Self {
                Self::new()
            }
        }

        impl ::std::fmt::Debug for $store {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.debug_struct(stringify!($store))
                    .field("max_entries", &self.max_entries)
                    .field("max_bytes", &self.max_bytes)
                    .field(stringify!($shown), &self.$shown())
                    .finish()
            }
        }

        impl $store {
            /// An empty store with the default bounds.
            pub fn new() -> Self {
                Self {
                    inner: ::std::sync::Arc::default(),
                    max_entries: 10_000,
                    max_bytes: 64 << 20,
                }
            }

            $(#[$entries])*
            pub fn max_entries(mut self, max: usize) -> Self {
                self.max_entries = max.max(1);
                self
            }

            chassis_core::__builder_setters! {
                $(#[$bytes])*
                max_bytes: usize,
            }

            fn lock(&self) -> ::std::sync::MutexGuard<'_, $state> {
                // The critical sections leave the state consistent at every step that can
                // panic.
                self.inner
                    .lock()
                    .unwrap_or_else(::std::sync::PoisonError::into_inner)
            }
        }
    };
}

pub(crate) use memory_store;
