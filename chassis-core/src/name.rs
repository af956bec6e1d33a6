//! [`ComponentName`]: the name of a breaker, bulkhead or limiter, as its errors carry it.
//!
//! A rejection is the hot path of an overloaded service: a breaker open, a bulkhead full, a
//! limit reached, thousands of times a second. Its [`Error`](crate::Error) names the component
//! that rejected the call, so the name is cloned into every one. As an `Arc<str>` that clone
//! and the drop after it are two atomic read-modify-writes on one shared cache line per
//! rejection. A `ComponentName` is an interned `&'static str` instead: cloning copies a
//! pointer and dropping does nothing.
//!
//! Each distinct name is kept once, for the life of the process (a few bytes each). Names come
//! from configuration ("payments", "login"): a service has a handful. A program that builds
//! components with ever new names (one per tenant, say) keeps every one of them; the
//! [`Display`](fmt::Display) of the name is what such a program should put in its errors instead.
//!
//! ```
//! use chassis_core::ComponentName;
//!
//! let name = ComponentName::new("payments");
//! let again = ComponentName::from(String::from("payments"));
//! assert_eq!(name, again);
//! // The same text is kept once.
//! assert!(std::ptr::eq(name.as_str(), again.as_str()));
//! assert_eq!(name, "payments");
//! assert_eq!(format!("breaker '{name}'"), "breaker 'payments'");
//! ```

use std::borrow::Borrow;
use std::collections::HashSet;
use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

/// An interned component name: `Copy`, compared and hashed as its text; see the
/// [module docs](self).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ComponentName(&'static str);

impl ComponentName {
    /// The interned `name`: the first call for a text keeps it, later ones find it.
    pub fn new(name: &str) -> Self {
        static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
        let mut names = NAMES
            .get_or_init(Default::default)
            .lock()
            // A panic cannot leave the set half-changed: an insert either happened or not.
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(kept) = names.get(name) {
            return Self(kept);
        }
        let kept: &'static str = Box::leak(name.into());
        names.insert(kept);
        Self(kept)
    }

    /// The name's text, for the life of the process.
    pub fn as_str(&self) -> &'static str {
        self.0
    }
}

impl Deref for ComponentName {
    type Target = str;

    fn deref(&self) -> &str {
        self.0
    }
}

impl AsRef<str> for ComponentName {
    fn as_ref(&self) -> &str {
        self.0
    }
}

impl Borrow<str> for ComponentName {
    fn borrow(&self) -> &str {
        self.0
    }
}

impl fmt::Display for ComponentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl fmt::Debug for ComponentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0, f)
    }
}

impl From<&str> for ComponentName {
    fn from(name: &str) -> Self {
        Self::new(name)
    }
}

impl From<&String> for ComponentName {
    fn from(name: &String) -> Self {
        Self::new(name)
    }
}

impl From<String> for ComponentName {
    fn from(name: String) -> Self {
        Self::new(&name)
    }
}

impl From<Arc<str>> for ComponentName {
    fn from(name: Arc<str>) -> Self {
        Self::new(&name)
    }
}

impl From<&Arc<str>> for ComponentName {
    fn from(name: &Arc<str>) -> Self {
        Self::new(name)
    }
}

impl From<ComponentName> for Arc<str> {
    fn from(name: ComponentName) -> Self {
        Arc::from(name.0)
    }
}

impl From<ComponentName> for String {
    fn from(name: ComponentName) -> Self {
        name.0.to_owned()
    }
}

impl PartialEq<str> for ComponentName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for ComponentName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<ComponentName> for &str {
    fn eq(&self, other: &ComponentName) -> bool {
        *self == other.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_text_is_kept_once_and_different_texts_apart() {
        let a = ComponentName::new("name-test-a");
        let b = ComponentName::from(String::from("name-test-a"));
        let c = ComponentName::from(Arc::<str>::from("name-test-c"));
        assert!(std::ptr::eq(a.as_str(), b.as_str()));
        assert_ne!(a, c);
        assert_eq!(c, "name-test-c");
        assert_eq!(format!("{a:?}"), "\"name-test-a\"");
    }

    #[test]
    fn names_interned_from_many_threads_agree() {
        let names: Vec<ComponentName> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| ComponentName::new("name-test-threads")))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(
            names
                .iter()
                .all(|n| std::ptr::eq(n.as_str(), names[0].as_str()))
        );
    }
}
