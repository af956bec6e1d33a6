//! [`SpanFields`]: a span's fields as JSON, formatted once when the span is created (and when
//! it records a field later), kept in the span's extensions and copied into each line logged
//! inside it.
//!
//! A span's fields are the context of every event inside it (the request id, the route, the
//! order being placed), so every line carries them, at the top level like the event's own.
//! Formatting them per event would repeat the same work for each line of a request; here each
//! span holds its fields and its ancestors' as ready-made `,"name":value` bytes, and an event
//! costs one copy of them.
//!
//! Which value wins when names repeat: an event's field over its spans' fields, an inner span's
//! over an outer one's, a value recorded later over the earlier one. A span's copy of its
//! ancestors' fields is taken when it is created: a field an ancestor records after that shows
//! on the ancestor's own lines only. `otel.*` fields (directives for the OpenTelemetry layer) and
//! the `log.*` metadata of the tracing-log bridge are not written; sensitive names are redacted
//! as in events.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};

use super::format::{Raw, debug_str, push_f64, push_i64, push_str, push_u64};
use super::layer::{NameCache, NameKind};

/// A name's bit in the 64-bit filter an event builds of its own field names: a span field
/// whose bit is not set cannot repeat an event field, and is copied without a name comparison.
pub(crate) fn name_bit(name: &str) -> u64 {
    // FNV-1a: names are short, and this runs once per name and thread, or once per span field.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in name.as_bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    // FNV's last multiply barely reaches the top bits: a Fibonacci multiply spreads them.
    1 << (h.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58)
}

/// One written field of a span.
#[derive(Debug, Clone, Copy)]
struct Entry {
    name: &'static str,
    bit: u64,
    /// Where its `,"name":value` is in [`SpanFields::bytes`].
    start: usize,
    end: usize,
}

/// The written fields of a span and its ancestors (see the [module docs](self)).
#[derive(Debug, Default)]
pub(crate) struct SpanFields {
    bytes: Vec<u8>,
    entries: Vec<Entry>,
    /// The union of the entries' [`name_bit`]s.
    bits: u64,
}

impl SpanFields {
    /// The fields `record` visits (a span's attributes or a later `record` call).
    /// `expected` is how many fields there may be: the buffers are sized once for them (growing
    /// them field by field cost more than formatting the fields).
    pub(crate) fn of(
        names: &mut NameCache,
        expected: usize,
        record: impl FnOnce(&mut dyn Visit),
    ) -> Self {
        let mut fields = Self {
            bytes: Vec::with_capacity(expected * 48),
            entries: Vec::with_capacity(expected),
            bits: 0,
        };
        record(&mut SpanVisitor {
            fields: &mut fields,
            names,
        });
        fields
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `self` (a new span's own fields) after the fields of `parent` that it does not repeat,
    /// which come first: outer context before inner.
    pub(crate) fn inherit(self, parent: &SpanFields) -> Self {
        if parent.is_empty() {
            return self;
        }
        let mut merged = Self {
            bytes: Vec::with_capacity(parent.bytes.len() + self.bytes.len()),
            entries: Vec::with_capacity(parent.entries.len() + self.entries.len()),
            bits: 0,
        };
        for e in &parent.entries {
            if !self.has(e.name, e.bit) {
                merged.push(e.name, e.bit, &parent.bytes[e.start..e.end]);
            }
        }
        for e in &self.entries {
            merged.push(e.name, e.bit, &self.bytes[e.start..e.end]);
        }
        merged
    }

    /// Takes in fields recorded later: each replaces a field of the same name.
    pub(crate) fn update(&mut self, recorded: SpanFields) {
        for e in &recorded.entries {
            self.remove(e.name, e.bit);
        }
        for e in &recorded.entries {
            self.push(e.name, e.bit, &recorded.bytes[e.start..e.end]);
        }
    }

    /// Appends the fields to `line`, but those whose name is in `event_names` (the names the
    /// event wrote; `event_bits` the union of their [`name_bit`]s).
    pub(crate) fn write_to(&self, line: &mut Vec<u8>, event_names: &[&str], event_bits: u64) {
        if self.bits & event_bits == 0 {
            line.extend_from_slice(&self.bytes);
            return;
        }
        for e in &self.entries {
            if e.bit & event_bits == 0 || !event_names.contains(&e.name) {
                line.extend_from_slice(&self.bytes[e.start..e.end]);
            }
        }
    }

    fn has(&self, name: &str, bit: u64) -> bool {
        self.bits & bit != 0 && self.entries.iter().any(|e| e.name == name)
    }

    fn push(&mut self, name: &'static str, bit: u64, text: &[u8]) {
        self.push_with(name, bit, |bytes| bytes.extend_from_slice(text));
    }

    /// Adds the entry of `name`: the bytes `write` appends.
    fn push_with(&mut self, name: &'static str, bit: u64, write: impl FnOnce(&mut Vec<u8>)) {
        let start = self.bytes.len();
        write(&mut self.bytes);
        self.entries.push(Entry {
            name,
            bit,
            start,
            end: self.bytes.len(),
        });
        self.bits |= bit;
    }

    fn remove(&mut self, name: &str, bit: u64) {
        if !self.has(name, bit) {
            return;
        }
        let Some(i) = self.entries.iter().position(|e| e.name == name) else {
            return;
        };
        let gone = self.entries.remove(i);
        self.bytes.drain(gone.start..gone.end);
        let len = gone.end - gone.start;
        for e in &mut self.entries[i..] {
            e.start -= len;
            e.end -= len;
        }
        self.bits = self.entries.iter().fold(0, |bits, e| bits | e.bit);
    }
}

/// Writes a span's fields into a [`SpanFields`], one entry per field.
struct SpanVisitor<'a> {
    fields: &'a mut SpanFields,
    /// The thread's cache of field names' kinds and keys, shared with the events.
    names: &'a mut NameCache,
}

impl SpanVisitor<'_> {
    /// Writes the key and, unless the name is sensitive, the value `write` appends.
    fn field(&mut self, field: &Field, write: impl FnOnce(&mut Vec<u8>)) {
        let name = field.name();
        // The cached key is the one events write: `field.` before a reserved name, the whole
        // `"[REDACTED]"` for a sensitive one; a span's `message` is a field like any other.
        let (kind, key, bit) = self.names.get_with_bit(name);
        if matches!(kind, NameKind::LogTarget | NameKind::Skipped) || name.starts_with("otel.") {
            return;
        }
        let fields = &mut *self.fields;
        // A name recorded twice in one call keeps its last value.
        fields.remove(name, bit);
        fields.push_with(name, bit, |bytes| {
            bytes.extend_from_slice(key);
            if kind != NameKind::Sensitive {
                write(bytes);
            }
        });
    }
}

impl Visit for SpanVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, |out| push_str(out, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, |out| debug_str(out, value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, |out| push_i64(out, value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, |out| push_u64(out, value));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.field(field, |out| {
            let _ = write!(Raw(out), "{value}");
        });
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.field(field, |out| {
            let _ = write!(Raw(out), "{value}");
        });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.field(field, |out| push_f64(out, value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, |out| {
            out.extend_from_slice(if value { b"true" } else { b"false" })
        });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.field(field, |out| super::format::push_error(out, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `SpanFields` of `(name, json value)` pairs, as the visitor would write them.
    fn fields(pairs: &[(&'static str, &str)]) -> SpanFields {
        let mut f = SpanFields::default();
        for &(name, value) in pairs {
            f.push(
                name,
                name_bit(name),
                format!(",\"{name}\":{value}").as_bytes(),
            );
        }
        f
    }

    fn written(f: &SpanFields, event_names: &[&str]) -> String {
        let bits = event_names.iter().fold(0, |b, n| b | name_bit(n));
        let mut line = Vec::new();
        f.write_to(&mut line, event_names, bits);
        String::from_utf8(line).unwrap()
    }

    #[test]
    fn inner_spans_and_events_win_over_outer_fields() {
        let outer = fields(&[("request_id", "\"r1\""), ("url.path", "\"/a\"")]);
        let inner = fields(&[("url.path", "\"/b\""), ("order.id", "7")]).inherit(&outer);
        assert_eq!(
            written(&inner, &[]),
            r#","request_id":"r1","url.path":"/b","order.id":7"#
        );
        assert_eq!(
            written(&inner, &["order.id", "status"]),
            r#","request_id":"r1","url.path":"/b""#
        );
        assert_eq!(written(&outer, &["request_id"]), r#","url.path":"/a""#);
    }

    #[test]
    fn a_later_record_replaces_the_value() {
        let mut f = fields(&[("a", "1"), ("b", "2"), ("c", "3")]);
        f.update(fields(&[("b", "20"), ("d", "4")]));
        assert_eq!(written(&f, &[]), r#","a":1,"c":3,"b":20,"d":4"#);
        f.update(fields(&[("a", "10")]));
        assert_eq!(written(&f, &["c"]), r#","b":20,"d":4,"a":10"#);
        assert_eq!(
            f.bits,
            ["b", "d", "a", "c"].iter().fold(0, |b, n| b | name_bit(n))
        );
    }

    #[test]
    fn name_bits_spread_over_the_word() {
        let bits: std::collections::HashSet<u64> =
            (0..200).map(|i| name_bit(&format!("field{i}"))).collect();
        assert!(bits.len() > 40, "{}", bits.len());
        assert!(bits.iter().all(|b| b.count_ones() == 1));
    }
}
