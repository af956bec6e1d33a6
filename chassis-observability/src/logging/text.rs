//! The field formatter of the human-readable (pretty and compact) formats: `name=value`,
//! sensitive names redacted.

use std::fmt;

use tracing::field::Field;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

use crate::redact::{REDACTED, is_sensitive_field};

/// The field formatter of the pretty and compact formats: `name=value`, sensitive names
/// redacted.
pub fn redacting_fields() -> impl for<'w> FormatFields<'w> + Send + Sync + 'static {
    use tracing_subscriber::field::MakeExt as _;
    tracing_subscriber::fmt::format::debug_fn(
        |w: &mut Writer<'_>, field: &Field, value: &dyn fmt::Debug| {
            let name = field.name();
            if name == "message" {
                write!(w, "{value:?}")
            } else if is_sensitive_field(name) {
                write!(w, "{name}={REDACTED}")
            } else {
                write!(w, "{name}={value:?}")
            }
        },
    )
    .delimited(" ")
}
