//! AMQP header carriers: conversions between the chassis [`HeaderValue`] map and lapin's
//! [`FieldTable`], and OpenTelemetry [`Injector`]/[`Extractor`] implementations so trace
//! context (`traceparent`, `tracestate`, `baggage`) travels in AMQP application headers.
//!
//! ```
//! use chassis_messaging::amqp::headers::{HeaderMapCarrier};
//! use chassis_messaging::message::HeaderValue;
//! use opentelemetry::propagation::{Extractor, Injector};
//! use std::collections::BTreeMap;
//!
//! let mut headers = BTreeMap::new();
//! HeaderMapCarrier(&mut headers).set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
//! assert!(matches!(headers.get("traceparent"), Some(HeaderValue::String(_))));
//! ```

use std::collections::BTreeMap;

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use opentelemetry::propagation::{Extractor, Injector};

use crate::message::HeaderValue;

/// The longest AMQP field-table key (a short string), in bytes.
pub const MAX_HEADER_NAME_LEN: usize = 255;

/// Converts chassis headers to an AMQP field table. A header whose name is longer than an AMQP
/// short string ([`MAX_HEADER_NAME_LEN`] bytes) cannot travel and is left out with a warning
/// (lapin panics on such a key; a stored outbox row must not stop the relay).
pub fn to_field_table(headers: &BTreeMap<String, HeaderValue>) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in headers {
        match short_key(k) {
            Some(key) => {
                table.insert(key, to_amqp(v));
            }
            None => tracing::warn!(
                name_len = k.len(),
                "header name longer than {MAX_HEADER_NAME_LEN} bytes left out of the AMQP message"
            ),
        }
    }
    table
}

fn short_key(key: &str) -> Option<ShortString> {
    (key.len() <= MAX_HEADER_NAME_LEN).then(|| ShortString::from(key))
}

/// Converts one chassis header value to an AMQP value.
pub fn to_amqp(v: &HeaderValue) -> AMQPValue {
    match v {
        HeaderValue::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes())),
        HeaderValue::Int(i) => AMQPValue::LongLongInt(*i),
        HeaderValue::Bool(b) => AMQPValue::Boolean(*b),
    }
}

/// Converts one AMQP value to a chassis header value; `None` for types the chassis does not
/// model (arrays, tables, floats, byte arrays, non-UTF-8 strings).
pub fn from_amqp(v: &AMQPValue) -> Option<HeaderValue> {
    Some(match v {
        AMQPValue::LongString(s) => {
            HeaderValue::String(String::from_utf8(s.as_bytes().to_vec()).ok()?)
        }
        AMQPValue::ShortString(s) => HeaderValue::String(s.as_str().to_owned()),
        AMQPValue::Boolean(b) => HeaderValue::Bool(*b),
        AMQPValue::ShortShortInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::ShortShortUInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::ShortInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::ShortUInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::LongInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::LongUInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::LongLongInt(i) => HeaderValue::Int(*i),
        AMQPValue::Timestamp(t) => HeaderValue::Int(i64::try_from(*t).ok()?),
        _ => return None,
    })
}

/// Converts an AMQP field table to chassis headers, skipping values [`from_amqp`] cannot map.
pub fn from_field_table(table: &FieldTable) -> BTreeMap<String, HeaderValue> {
    table
        .inner()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), from_amqp(v)?)))
        .collect()
}

/// OpenTelemetry carrier over a chassis header map (inject and extract).
#[derive(Debug)]
pub struct HeaderMapCarrier<'a>(pub &'a mut BTreeMap<String, HeaderValue>);

impl Injector for HeaderMapCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), HeaderValue::String(value));
    }
}

/// OpenTelemetry extractor over a chassis header map.
#[derive(Debug)]
pub struct HeaderMapExtractor<'a>(pub &'a BTreeMap<String, HeaderValue>);

impl Extractor for HeaderMapExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match self.0.get(key) {
            Some(HeaderValue::String(s)) => Some(s.as_str()),
            _ => None,
        }
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// OpenTelemetry injector writing into a lapin [`FieldTable`].
#[derive(Debug)]
pub struct FieldTableInjector<'a>(pub &'a mut FieldTable);

impl Injector for FieldTableInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // Propagators only set their own short field names; skip anything that cannot travel.
        if let Some(key) = short_key(key) {
            self.0.insert(
                key,
                AMQPValue::LongString(LongString::from(value.into_bytes())),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt;

    #[test]
    fn over_long_header_names_are_left_out() {
        // Found by the message_json fuzz target: lapin's ShortString panics past 255 bytes.
        let mut h = BTreeMap::new();
        h.insert("k".repeat(MAX_HEADER_NAME_LEN), HeaderValue::from(1_i64));
        h.insert(
            "k".repeat(MAX_HEADER_NAME_LEN + 1),
            HeaderValue::from(2_i64),
        );
        let back = from_field_table(&to_field_table(&h));
        assert_eq!(back.len(), 1);
        assert_eq!(
            back["k".repeat(MAX_HEADER_NAME_LEN).as_str()],
            HeaderValue::from(1_i64)
        );
        let mut table = FieldTable::default();
        FieldTableInjector(&mut table).set(&"k".repeat(300), "v".into());
        assert!(table.inner().is_empty());
    }

    #[test]
    fn round_trip_and_trace_context() {
        let mut h = BTreeMap::new();
        h.insert("a".to_owned(), HeaderValue::from("x"));
        h.insert("b".to_owned(), HeaderValue::from(7_i64));
        h.insert("c".to_owned(), HeaderValue::from(true));
        let table = to_field_table(&h);
        assert_eq!(from_field_table(&table), h);

        let cx = crate::test_support::sampled_context();
        let mut table = FieldTable::default();
        chassis_observability::propagation::inject_context(
            &cx,
            &mut FieldTableInjector(&mut table),
        );
        let headers = from_field_table(&table);
        let back =
            chassis_observability::propagation::extract_context(&HeaderMapExtractor(&headers));
        assert_eq!(
            back.span().span_context().trace_id(),
            cx.span().span_context().trace_id()
        );
    }
}
