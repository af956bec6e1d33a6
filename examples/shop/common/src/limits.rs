//! Size limits of everything a client controls, and the typed error for a value outside them.
//!
//! The shop stores and republishes what a client sends: a customer id travels into the orders
//! table, `order.placed`, `order.confirmed` and every answer that shows the order. Without a
//! limit a 1 MB `customer_id` was accepted, stored and published, and the order's own answer grew
//! past what the gateway relays. Each service therefore checks the same limits on its own
//! (the gateway at the edge, orders on its API, every consumer on each event it decodes), so a
//! service reached by another path (an internal call, an old event in a queue) is still safe.
//!
//! Lengths are in bytes of UTF-8 (what a column, a message and a response body hold), not
//! characters. [`FieldError`] names the field by its JSON path (`items[2].sku`) and never
//! echoes the value: an over-long value would make the error as large as the request.
//!
//! | what | limit |
//! |---|---|
//! | a gateway API request body | [`MAX_API_BODY_BYTES`] (64 KiB) → 413 |
//! | `customer_id` | [`MAX_CUSTOMER_ID_LEN`] (128) → 422 |
//! | `payment_method` | [`MAX_PAYMENT_METHOD_LEN`] (128) → 422 |
//! | `items` | 1..=[`MAX_ORDER_ITEMS`] (50) lines → 422 |
//! | `items[].sku` | [`MAX_SKU_LEN`] (64) → 422 |
//! | `items[].quantity` | 1..=[`MAX_QUANTITY`] (1000) → 422 |
//! | an order id (path, event) | [`MAX_ORDER_ID_LEN`] (64) |
//! | a reason (free text in events) | [`MAX_REASON_LEN`] (256) |
//! | a provider charge id | [`MAX_CHARGE_ID_LEN`] (128) |
//! | `Idempotency-Key` from an end user / as orders gets it | [`MAX_IDEMPOTENCY_KEY_LEN`] (200) / [`MAX_SCOPED_IDEMPOTENCY_KEY_LEN`] (512) |
//!
//! # Example
//! ```
//! use shop_common::events::Item;
//! use shop_common::limits::{self, FieldError, MAX_CUSTOMER_ID_LEN};
//!
//! let items = [Item { sku: "tea".into(), quantity: 1 }];
//! assert!(limits::check_order("c-1", &items, "card_ok").is_ok());
//! let long = "x".repeat(MAX_CUSTOMER_ID_LEN + 1);
//! let err = limits::check_order(&long, &items, "card_ok").unwrap_err();
//! assert_eq!(err.field(), "customer_id");
//! assert!(matches!(err, FieldError::TooLong { limit: 128, len: 129, .. }));
//! assert!(!err.to_string().contains("xxx"), "the value is never echoed");
//! ```

use std::fmt;

use chassis_http::ApiError;
use chassis_http::error::codes;
use http::StatusCode;
use serde_json::json;

use crate::events::Item;

/// Largest request body the gateway's public API takes, in bytes (64 KiB): the largest valid
/// order (50 lines at the limits above) is under 10 KiB.
pub const MAX_API_BODY_BYTES: usize = 64 * 1024;
/// Longest `customer_id`, in bytes.
pub const MAX_CUSTOMER_ID_LEN: usize = 128;
/// Longest `payment_method` token, in bytes.
pub const MAX_PAYMENT_METHOD_LEN: usize = 128;
/// Most lines in one order.
pub const MAX_ORDER_ITEMS: usize = 50;
/// Longest SKU, in bytes.
pub const MAX_SKU_LEN: usize = 64;
/// Largest quantity of one line.
pub const MAX_QUANTITY: i64 = 1000;
/// Longest order id, in bytes (the shop's ids are 36-byte UUIDs).
pub const MAX_ORDER_ID_LEN: usize = 64;
/// Longest reason (a failure code or a short free text) in an event, in bytes.
pub const MAX_REASON_LEN: usize = 256;
/// Longest provider charge id, in bytes.
pub const MAX_CHARGE_ID_LEN: usize = 128;
/// Longest `Idempotency-Key` an end user may send the gateway, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 200;
/// Longest idempotency key the orders service stores, in bytes: the gateway scopes the end
/// user's key by the client name (`<client>:<key>`), so this leaves room for the name.
pub const MAX_SCOPED_IDEMPOTENCY_KEY_LEN: usize = 512;

/// A value outside its limit. [`field`](Self::field) is the JSON path of the value; the value
/// itself is never part of the error.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FieldError {
    /// A text longer than its limit.
    TooLong {
        /// The JSON path of the field.
        field: String,
        /// The limit, in bytes.
        limit: usize,
        /// The value's length, in bytes.
        len: usize,
    },
    /// A required text that is empty (or only whitespace).
    Empty {
        /// The JSON path of the field.
        field: String,
    },
    /// A number or a count outside its range.
    OutOfRange {
        /// The JSON path of the field.
        field: String,
        /// The smallest allowed value.
        min: i64,
        /// The largest allowed value.
        max: i64,
        /// The value (or the count) given.
        value: i64,
    },
}

impl FieldError {
    /// The JSON path of the offending field (`customer_id`, `items[2].sku`).
    pub fn field(&self) -> &str {
        match self {
            Self::TooLong { field, .. }
            | Self::Empty { field }
            | Self::OutOfRange { field, .. } => field,
        }
    }

    /// The error's details for an API answer: the field and the limit it broke.
    pub fn details(&self) -> serde_json::Value {
        match self {
            Self::TooLong { field, limit, len } => {
                json!({"field": field, "reason": "too_long", "limit": limit, "length": len})
            }
            Self::Empty { field } => json!({"field": field, "reason": "empty"}),
            Self::OutOfRange {
                field,
                min,
                max,
                value,
            } => {
                json!({"field": field, "reason": "out_of_range", "min": min, "max": max, "value": value})
            }
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLong { field, limit, len } => {
                write!(
                    f,
                    "{field} is {len} bytes long; at most {limit} are allowed"
                )
            }
            Self::Empty { field } => write!(f, "{field} must not be empty"),
            Self::OutOfRange {
                field,
                min,
                max,
                value,
            } => write!(f, "{field} is {value}; it must be within {min}..={max}"),
        }
    }
}

impl std::error::Error for FieldError {}

impl From<FieldError> for ApiError {
    /// 422 `unprocessable_entity` with the field and its limit as details.
    fn from(e: FieldError) -> Self {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            codes::UNPROCESSABLE_ENTITY,
            e.to_string(),
        )
        .with_details(e.details())
    }
}

/// `value` (the field `field`) is at most `limit` bytes long.
pub fn check_len(field: &str, value: &str, limit: usize) -> Result<(), FieldError> {
    if value.len() > limit {
        return Err(FieldError::TooLong {
            field: field.to_owned(),
            limit,
            len: value.len(),
        });
    }
    Ok(())
}

/// `value` is not blank and at most `limit` bytes long.
pub fn check_required(field: &str, value: &str, limit: usize) -> Result<(), FieldError> {
    check_len(field, value, limit)?;
    if value.trim().is_empty() {
        return Err(FieldError::Empty {
            field: field.to_owned(),
        });
    }
    Ok(())
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// An order's lines: 1..=[`MAX_ORDER_ITEMS`] of them, each with a SKU of at most
/// [`MAX_SKU_LEN`] bytes and a quantity within 1..=[`MAX_QUANTITY`].
pub fn check_items(items: &[Item]) -> Result<(), FieldError> {
    if items.is_empty() || items.len() > MAX_ORDER_ITEMS {
        return Err(FieldError::OutOfRange {
            field: "items".into(),
            min: 1,
            max: count(MAX_ORDER_ITEMS),
            value: count(items.len()),
        });
    }
    for (i, item) in items.iter().enumerate() {
        check_required(&format!("items[{i}].sku"), &item.sku, MAX_SKU_LEN)?;
        if !(1..=MAX_QUANTITY).contains(&item.quantity) {
            return Err(FieldError::OutOfRange {
                field: format!("items[{i}].quantity"),
                min: 1,
                max: MAX_QUANTITY,
                value: item.quantity,
            });
        }
    }
    Ok(())
}

/// An order placement: `customer_id`, `items` ([`check_items`]) and `payment_method`, each
/// present and within its limit. The first field out of its limit is the error.
pub fn check_order(
    customer_id: &str,
    items: &[Item],
    payment_method: &str,
) -> Result<(), FieldError> {
    check_required("customer_id", customer_id, MAX_CUSTOMER_ID_LEN)?;
    check_items(items)?;
    check_required("payment_method", payment_method, MAX_PAYMENT_METHOD_LEN)
}

/// An order id (in a path or an event): present and at most [`MAX_ORDER_ID_LEN`] bytes.
pub fn check_order_id(field: &str, id: &str) -> Result<(), FieldError> {
    check_required(field, id, MAX_ORDER_ID_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(sku: &str, quantity: i64) -> Item {
        Item {
            sku: sku.into(),
            quantity,
        }
    }

    #[test]
    fn every_field_is_checked_against_its_own_limit() {
        let ok = [item("tea", 1)];
        assert_eq!(check_order("c", &ok, "card_ok"), Ok(()));
        let at_limit = "c".repeat(MAX_CUSTOMER_ID_LEN);
        assert_eq!(check_order(&at_limit, &ok, "card_ok"), Ok(()));

        let long_sku = [item("tea", 1), item(&"s".repeat(MAX_SKU_LEN + 1), 1)];
        let e = check_order("c", &long_sku, "card_ok").unwrap_err();
        assert_eq!(
            e,
            FieldError::TooLong {
                field: "items[1].sku".into(),
                limit: MAX_SKU_LEN,
                len: MAX_SKU_LEN + 1
            }
        );
        let e = check_order("c", &ok, &"p".repeat(MAX_PAYMENT_METHOD_LEN + 1)).unwrap_err();
        assert_eq!(e.field(), "payment_method");
        let e = check_order(" ", &ok, "card_ok").unwrap_err();
        assert_eq!(
            e,
            FieldError::Empty {
                field: "customer_id".into()
            }
        );
        let many: Vec<Item> = (0..=MAX_ORDER_ITEMS)
            .map(|i| item(&format!("s{i}"), 1))
            .collect();
        let e = check_order("c", &many, "card_ok").unwrap_err();
        assert_eq!(e.field(), "items");
        assert!(matches!(e, FieldError::OutOfRange { value: 51, .. }));
        let e = check_order("c", &[item("tea", MAX_QUANTITY + 1)], "card_ok").unwrap_err();
        assert_eq!(e.field(), "items[0].quantity");
        assert_eq!(
            check_order_id("order_id", &"o".repeat(65))
                .unwrap_err()
                .field(),
            "order_id"
        );
    }

    #[test]
    fn the_api_error_is_a_422_naming_the_field_without_the_value() {
        let long = "x".repeat(1_000_000);
        let e = ApiError::from(check_order(&long, &[item("tea", 1)], "card_ok").unwrap_err());
        assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e.code(), "unprocessable_entity");
        assert!(e.message().len() < 100, "{}", e.message());
        let details = e.details().unwrap();
        assert_eq!(
            (&details["field"], &details["limit"], &details["length"]),
            (&json!("customer_id"), &json!(128), &json!(1_000_000))
        );
    }
}
