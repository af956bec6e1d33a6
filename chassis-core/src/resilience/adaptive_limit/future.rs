//! [`ResponseFuture`] of [`AdaptiveLimit`](super::AdaptiveLimit).

use super::limiter::{Ending, Permit};
use crate::BoxError;
use crate::resilience::future::{Hold, gated_response_future};

gated_response_future! {
    /// Response future of [`AdaptiveLimit`](super::AdaptiveLimit): the inner call, whose end
    /// (its latency, or its timeout) is the limiter's sample, or the shed call's rejection.
    Permit
}

impl Hold for Permit {
    const REJECTED: &'static str = "shed";

    #[inline]
    fn end<T>(&mut self, result: &Result<T, BoxError>) {
        self.finish(Ending::of(result));
    }
}
