//! RFC 3339 UTC timestamps with microseconds (`2026-11-22T02:40:00.123456Z`, the format of
//! tracing-subscriber's `SystemTime`), with the date-and-time part cached per second.
//!
//! Most lines of a busy service fall in the same second as the previous line on their thread, so
//! the `YYYY-MM-DDTHH:MM:SS.` prefix is computed once per second per thread and each line only
//! reads the clock and appends six digits of microseconds.

use std::time::{SystemTime, UNIX_EPOCH};

use super::format::push_padded;

/// The formatted prefix of one second.
#[derive(Debug, Clone, Default)]
pub(crate) struct TimestampCache {
    second: u64,
    /// `YYYY-MM-DDTHH:MM:SS.`
    prefix: [u8; 20],
    valid: bool,
}

impl TimestampCache {
    /// Appends the current time.
    pub(crate) fn push_now(&mut self, out: &mut Vec<u8>) {
        // A clock before 1970 is written as the epoch rather than failing the line.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.push(out, now.as_secs(), now.subsec_micros());
    }

    /// Appends the time `secs` seconds and `micros` microseconds after the Unix epoch.
    pub(crate) fn push(&mut self, out: &mut Vec<u8>, secs: u64, micros: u32) {
        if !self.valid || self.second != secs {
            self.prefix = prefix(secs);
            self.second = secs;
            self.valid = true;
        }
        out.extend_from_slice(&self.prefix);
        push_padded(out, micros, 6);
        out.push(b'Z');
    }
}

/// `YYYY-MM-DDTHH:MM:SS.` for a Unix time (years 1970..=9999).
fn prefix(secs: u64) -> [u8; 20] {
    let days = secs / 86_400;
    let rem = (secs % 86_400) as u32;
    let (year, month, day) = civil_from_days(days);
    let mut v = Vec::with_capacity(20);
    push_padded(&mut v, year.min(9999), 4);
    v.push(b'-');
    push_padded(&mut v, month, 2);
    v.push(b'-');
    push_padded(&mut v, day, 2);
    v.push(b'T');
    push_padded(&mut v, rem / 3600, 2);
    v.push(b':');
    push_padded(&mut v, rem / 60 % 60, 2);
    v.push(b':');
    push_padded(&mut v, rem % 60, 2);
    v.push(b'.');
    let mut out = [0_u8; 20];
    out.copy_from_slice(&v);
    out
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar (Howard
/// Hinnant's `civil_from_days`, for non-negative day counts).
fn civil_from_days(days: u64) -> (u32, u32, u32) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year as u32, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, micros: u32) -> String {
        let mut out = Vec::new();
        TimestampCache::default().push(&mut out, secs, micros);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn known_instants() {
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 1), "2000-02-29T00:00:00.000001Z");
        assert_eq!(at(951_868_799, 999_999), "2000-02-29T23:59:59.999999Z");
        assert_eq!(at(1_763_779_200, 123_456), "2025-11-22T02:40:00.123456Z");
        assert_eq!(at(4_102_444_800, 0), "2100-01-01T00:00:00.000000Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000000Z");
    }

    #[test]
    fn every_day_of_four_centuries_follows_the_previous() {
        // Walk day by day from 1970 to 2400 and check the calendar's own rules: days advance by
        // one, months roll over at their length (leap years by the Gregorian rule).
        let (mut y, mut m, mut d) = (1970, 1, 1);
        for days in 0..157_000_u64 {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = match m {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            d += 1;
            if d > len {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }

    #[test]
    fn the_cache_follows_the_clock_across_seconds() {
        let mut cache = TimestampCache::default();
        let mut out = Vec::new();
        cache.push(&mut out, 59, 5);
        out.push(b' ');
        cache.push(&mut out, 59, 6);
        out.push(b' ');
        cache.push(&mut out, 60, 0);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "1970-01-01T00:00:59.000005Z 1970-01-01T00:00:59.000006Z 1970-01-01T00:01:00.000000Z"
        );
    }

    #[test]
    fn now_looks_like_rfc3339() {
        let mut out = Vec::new();
        TimestampCache::default().push_now(&mut out);
        let s = String::from_utf8(out).unwrap();
        assert_eq!(s.len(), 27, "{s}");
        assert!(s.ends_with('Z') && s.as_bytes()[10] == b'T', "{s}");
    }
}
