//! chassis-http (being written).

pub mod auth;
pub mod body;
pub mod error;

pub use body::Body;
pub use error::ApiError;
