//! The answer to a panicking handler, for the [guard](super::guard)'s catch-panic part.

use std::any::Any;

use http::Response;

use crate::body::Body;
use crate::error::ApiError;

/// The 500 a panicked request gets. The panic message is logged at ERROR (target
/// `chassis_http::panic`), never sent to the client.
pub(crate) fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response<Body> {
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(non-string panic payload)");
    tracing::error!(target: "chassis_http::panic", panic = message, "request handler panicked");
    ApiError::internal("internal error").into_response()
}
