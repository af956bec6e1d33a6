//! JSON text primitives writing straight into a byte buffer: escaped strings (also through
//! `fmt::Write`, so `Debug`/`Display` values are escaped as they are formatted, without an
//! intermediate `String`), integers and hex ids.

use std::fmt::{self, Write as _};

/// `ESCAPE[b]` is 0 when byte `b` is copied as is, otherwise the character after the backslash
/// (`u` for the `\u00XX` form).
const ESCAPE: [u8; 256] = {
    let mut t = [0_u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[b'\n' as usize] = b'n';
    t[b'\r' as usize] = b'r';
    t[b'\t' as usize] = b't';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The two hex digits of every byte value.
const HEX_PAIRS: [[u8; 2]; 256] = {
    let mut t = [[0_u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    t
};

/// Appends `s` escaped for the inside of a JSON string literal (no quotes). Bytes needing no
/// escape, which is nearly all of them, are copied in runs. Non-ASCII UTF-8 passes through.
pub(crate) fn escape_into(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    // Fast path: check eight bytes at a time, then the tail byte by byte; a string needing no
    // escape, nearly every one, is then copied in one go.
    let mut clean = 0;
    while let Some(word) = bytes.get(clean..clean + 8) {
        let word: [u8; 8] = word.try_into().unwrap_or_default();
        if needs_escape(u64::from_le_bytes(word)) {
            break;
        }
        clean += 8;
    }
    while clean < bytes.len() && ESCAPE[bytes[clean] as usize] == 0 {
        clean += 1;
    }
    if clean == bytes.len() {
        out.extend_from_slice(bytes);
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate().skip(clean) {
        let esc = ESCAPE[b as usize];
        if esc == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        if esc == b'u' {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 0xf) as usize],
            ]);
        } else {
            out.extend_from_slice(&[b'\\', esc]);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// Whether any of the eight bytes is a control character, `"` or `\\` (SWAR: a byte's high bit
/// is set in `has_zero(x)` when that byte of `x` is zero, in `less_than_0x20` when it is below
/// 0x20; bytes of 0x80 and above, UTF-8 continuation, never match).
fn needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let less_than_0x20 = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    let quote = has_zero(word ^ (ONES * u64::from(b'"')));
    let backslash = has_zero(word ^ (ONES * u64::from(b'\\')));
    less_than_0x20 | quote | backslash != 0
}

/// Writes `value`'s `Debug` text as a JSON string into `out`.
pub(crate) fn debug_str(out: &mut Vec<u8>, value: &dyn fmt::Debug) {
    out.push(b'"');
    let _ = write!(Escaped(out), "{value:?}");
    out.push(b'"');
}

/// Appends `s` as a JSON string literal, quotes included.
pub(crate) fn push_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    escape_into(out, s);
    out.push(b'"');
}

/// A `fmt::Write` that escapes everything written to it into a JSON string body: `Debug` and
/// `Display` values go through it straight into the line.
pub(crate) struct Escaped<'a>(pub(crate) &'a mut Vec<u8>);

impl fmt::Write for Escaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape_into(self.0, s);
        Ok(())
    }
}

/// A `fmt::Write` appending as is (numbers formatted by `core::fmt`).
pub(crate) struct Raw<'a>(pub(crate) &'a mut Vec<u8>);

impl fmt::Write for Raw<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Appends `v` in decimal.
pub(crate) fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0_u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends `v` as a JSON number (serde_json's shortest round-trip formatting, several times
/// faster than `core::fmt`'s), or as a string when it is NaN or infinite, which JSON numbers
/// cannot be.
pub(crate) fn push_f64(out: &mut Vec<u8>, v: f64) {
    if v.is_finite() {
        let _ = serde_json::to_writer(&mut *out, &v);
    } else {
        let _ = write!(Raw(out), "\"{v}\"");
    }
}

/// Appends an error and its chain of sources as one JSON string, the way operators read it.
pub(crate) fn push_error(out: &mut Vec<u8>, error: &(dyn std::error::Error + 'static)) {
    out.push(b'"');
    let _ = write!(Escaped(out), "{error}");
    let mut source = error.source();
    while let Some(s) = source {
        let _ = write!(Escaped(out), ": {s}");
        source = s.source();
    }
    out.push(b'"');
}

/// Appends `v` in decimal.
pub(crate) fn push_i64(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    push_u64(out, v.unsigned_abs());
}

/// Appends `n` zero-padded to `width` digits (`width` at most 6, `n` below `10^width`).
pub(crate) fn push_padded(out: &mut Vec<u8>, n: u32, width: usize) {
    let mut digits = [b'0'; 6];
    let mut n = n;
    for d in digits[..width].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&digits[..width]);
}

/// Appends `bytes` as lower-case hex (the W3C form of trace and span ids).
pub(crate) fn push_hex<const N: usize>(out: &mut Vec<u8>, bytes: [u8; N]) {
    // Into a stack buffer first: one copy into `out` instead of a capacity check per byte.
    let mut text = [[0_u8; 2]; N];
    for (pair, b) in text.iter_mut().zip(bytes) {
        *pair = HEX_PAIRS[b as usize];
    }
    out.extend_from_slice(text.as_flattened());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut v = Vec::new();
        f(&mut v);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn strings_are_escaped_as_json() {
        let s = text(|v| push_str(v, "a\"b\\c\nd\u{1}é\t\r\u{1f}"));
        assert_eq!(s, r#""a\"b\\c\nd\u0001é\t\r\u001f""#);
        let back: String = serde_json::from_str(&s).unwrap();
        assert_eq!(back, "a\"b\\c\nd\u{1}é\t\r\u{1f}");
        assert_eq!(text(|v| push_str(v, "")), "\"\"");
        assert_eq!(text(|v| push_str(v, "plain")), "\"plain\"");
    }

    #[test]
    fn every_byte_at_every_position_of_a_word_is_escaped_right() {
        // Each ASCII byte in each position of a long clean string, against serde_json.
        for b in 0_u8..0x80 {
            for pos in 0..20 {
                let mut s = "abcdefghijklmnopqrst".to_owned().into_bytes();
                s[pos] = b;
                let s = String::from_utf8(s).unwrap();
                let ours = text(|v| push_str(v, &s));
                let back: String = serde_json::from_str(&ours)
                    .unwrap_or_else(|e| panic!("byte {b:#x} at {pos}: {e}: {ours}"));
                assert_eq!(back, s, "byte {b:#x} at {pos}");
                let escaped = b < 0x20 || b == b'"' || b == b'\\';
                assert_eq!(
                    ours.len(),
                    s.len()
                        + 2
                        + usize::from(escaped)
                            * if b < 0x20 && !matches!(b, b'\n' | b'\r' | b'\t') {
                                5
                            } else {
                                1
                            },
                    "{ours}"
                );
            }
        }
        let s = "ééééé\u{1}ü€𝄞 \"q\" ok";
        let back: String = serde_json::from_str(&text(|v| push_str(v, s))).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn debug_values_are_escaped_while_formatted() {
        let s = text(|v| {
            v.push(b'"');
            write!(Escaped(v), "{:?}", "q\"uote\n").unwrap();
            v.push(b'"');
        });
        let back: String = serde_json::from_str(&s).unwrap();
        assert_eq!(back, "\"q\\\"uote\\n\"");
    }

    #[test]
    fn numbers_and_hex() {
        for n in [0_u64, 7, 10, 42, 999, 1_000_000, u64::MAX] {
            assert_eq!(text(|v| push_u64(v, n)), n.to_string());
        }
        for n in [0_i64, -1, -42, i64::MIN, i64::MAX] {
            assert_eq!(text(|v| push_i64(v, n)), n.to_string());
        }
        assert_eq!(text(|v| push_padded(v, 7, 2)), "07");
        assert_eq!(text(|v| push_padded(v, 123, 6)), "000123");
        assert_eq!(text(|v| push_hex(v, [0x00, 0xf0, 0x67, 0xaa])), "00f067aa");
        let all: Vec<u8> = (0..=255).collect();
        let mut bytes = [0_u8; 256];
        bytes.copy_from_slice(&all);
        let expected: String = all.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(text(|v| push_hex(v, bytes)), expected);
    }
}
