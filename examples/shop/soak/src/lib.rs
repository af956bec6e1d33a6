//! # shop-soak
//!
//! A long run of the whole shop at a steady load, watching for leaks: the `shop-soak` binary
//! starts every service with the launcher's library ([`shop_launcher::System`], a SQLite file
//! per service, the local RabbitMQ), places orders through the gateway at a fixed rate, open
//! loop ([`load`]), and every sampling interval records for every service process its resident
//! memory, open file descriptors and open database connections ([`probe`]) and the depth of
//! every queue of the run ([`queues`]). At the end it writes the samples as CSV, an SVG chart
//! ([`chart`]) and a summary, and judges each service's memory after the warm-up
//! ([`analysis`]): growth above the limit (10 % by default) fails the run.
//!
//! ```text
//! cargo build --release -p shop-soak -p shop-launcher -p shop-gateway -p shop-orders \
//!     -p shop-inventory -p shop-payments -p shop-notifications -p shop-payment-provider
//! target/release/shop-soak --rate 20 --duration 30m --sample 10s --out soak-out
//! ```
//!
//! Exit status: 0 when every service passed, 1 when one grew beyond the limit, could not be
//! judged or exited during the run, 2 when the soak could not run (broker down, binaries
//! missing, a service not ready), 130/143 after SIGINT/SIGTERM.

pub mod analysis;
pub mod chart;
pub mod load;
pub mod probe;
pub mod queues;

pub use shop_launcher::BoxError;

/// Parses a duration: a number with an optional unit `s`, `m` or `h` (`90`, `30s`, `30m`, `1h`).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (number, scale) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1.0),
        Some((i, 'm')) => (&s[..i], 60.0),
        Some((i, 'h')) => (&s[..i], 3600.0),
        _ => (s, 1.0),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 30s, 30m, 1h)"))?;
    if !(value.is_finite() && value > 0.0) {
        return Err(format!("{s:?} is not a positive duration"));
    }
    Ok(std::time::Duration::from_secs_f64(value * scale))
}

/// The UTC date (`YYYY-MM-DD`) of a Unix time in seconds.
pub fn utc_date(unix_secs: u64) -> String {
    // Howard Hinnant's days-to-civil algorithm.
    let z = (unix_secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        for bad in ["", "m", "-3s", "ten", "0"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dates_are_utc_calendar_days() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        assert_eq!(utc_date(1_796_558_400), "2026-12-06");
    }
}
