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

#[cfg(test)]
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
}
