//! UTC wall-clock times by hand (no date crate for a few fixed formats):
//! `policy.toml`'s `not_after` (bundle expiry, DESIGN §2), qkdctl's display
//! of it, and QBER sources' RFC 3339 time stamps (the engine's parsers and
//! qkdsim's feed): one parser ([`parse_rfc3339_ms`]), one formatter, one
//! clock ([`now_unix`], [`now_unix_ms`]). The calendar arithmetic (H.
//! Hinnant's civil-day algorithms) lives here once.

/// A step of the wall clock, for the fault tests (`[testing]
/// wall_clock_offset`): every wall-clock reading of the daemon goes
/// through [`now_unix`], so a test can move it without moving the host's.
/// Timers are monotonic and never read it (DESIGN §2).
static OFFSET: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

pub fn set_offset(secs: i64) {
    OFFSET.store(secs, std::sync::atomic::Ordering::Relaxed);
}

/// Unix milliseconds now, the same clock as [`now_unix`]: QBER
/// measurement stamps (qkdsim's feed).
pub fn now_unix_ms() -> u64 {
    let real = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let offset = OFFSET.load(std::sync::atomic::Ordering::Relaxed);
    real.saturating_add_signed(offset.saturating_mul(1000))
}

/// Unix seconds now: bundle expiry and log stamps only.
pub fn now_unix() -> u64 {
    now_unix_ms() / 1000
}

/// `YYYY-MM-DDTHH:MM:SSZ` to Unix seconds; nothing else is accepted: the
/// strict subset of RFC 3339 `policy.toml` writes (upper-case `T` and
/// `Z`, no fraction, no offset, no leap second), read by
/// [`parse_rfc3339_ms`].
pub fn parse_utc(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 20 || b[10] != b'T' || b[19] != b'Z' || &b[17..19] == b"60" {
        return None;
    }
    parse_rfc3339_ms(s).ok().map(|ms| ms / 1000)
}

/// Unix seconds to `YYYY-MM-DDTHH:MM:SSZ` (for messages).
pub fn format_utc(secs: u64) -> String {
    format(secs, None)
}

/// Unix milliseconds to `2025-01-02T03:04:05.678Z` (QBER time stamps).
pub fn format_rfc3339_ms(ms: u64) -> String {
    format(ms / 1000, Some(ms % 1000))
}

/// The one formatter: RFC 3339 in UTC, with milliseconds when given.
fn format(secs: u64, millis: Option<u64>) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    let frac = millis.map(|ms| format!(".{ms:03}")).unwrap_or_default();
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{frac}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The one parser: Unix milliseconds of an RFC 3339 date-time
/// (`YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`), fraction truncated to ms.
/// Times before 1970 are refused (they cannot be a live measurement).
/// The error names the text as a QBER source's `time_stamp`.
pub fn parse_rfc3339_ms(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "time_stamp {} is not an RFC 3339 date-time",
            crate::text::printable(s, 40)
        )
    };
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Result<i64, String> {
        let part = b.get(from..from + len).ok_or_else(bad)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        Ok(part.iter().fold(0, |a, d| a * 10 + i64::from(d - b'0')))
    };
    let sep = |at: usize, want: &[u8]| b.get(at).is_some_and(|c| want.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt") && sep(13, b":") && sep(16, b":")) {
        return Err(bad());
    }
    let (y, mo, d) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (h, mi, sec) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 {
        return Err(bad());
    }
    // A leap second (:60) is read as :59.999.
    let (sec, leap) = match sec {
        0..=59 => (sec, false),
        60 => (59, true),
        _ => return Err(bad()),
    };
    let mut i = 19;
    let mut ms = 0i64;
    if b.get(i) == Some(&b'.') {
        let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 || digits > 9 {
            return Err(bad());
        }
        for k in 0..3 {
            ms = ms * 10
                + b.get(i + 1 + k)
                    .filter(|_| k < digits)
                    .map_or(0, |c| i64::from(c - b'0'));
        }
        i += 1 + digits;
    }
    if leap {
        ms = 999;
    }
    let offset = match b.get(i..) {
        Some(b"Z" | b"z") => 0,
        Some(&[sign @ (b'+' | b'-'), ..]) if b.len() == i + 6 && b[i + 3] == b':' => {
            let (oh, om) = (num(i + 1, 2)?, num(i + 4, 2)?);
            if oh > 23 || om > 59 {
                return Err(bad());
            }
            let o = (oh * 60 + om) * 60;
            if sign == b'+' { o } else { -o }
        }
        _ => return Err(bad()),
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset;
    let total = secs * 1000 + ms;
    u64::try_from(total).map_err(|_| format!("{}: before 1970", bad()))
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

/// Days in month `m` (1..=12) of year `y`.
pub fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse: (year, month, day) of a day count since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_stamps_round_trip() {
        for ms in [
            0,
            1,
            999,
            86_400_000,
            951_782_400_123,
            1_735_787_045_678,
            4_102_444_799_999,
        ] {
            let s = format_rfc3339_ms(ms);
            assert_eq!(parse_rfc3339_ms(&s), Ok(ms), "{s}");
        }
        assert_eq!(
            format_rfc3339_ms(1_735_787_045_678),
            "2025-01-02T03:04:05.678Z"
        );
        assert_eq!(
            format_rfc3339_ms(951_782_400_000),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(format_utc(1_735_787_045), "2025-01-02T03:04:05Z");
    }

    #[test]
    fn time_stamps_with_offsets_and_fractions() {
        let z = parse_rfc3339_ms("2025-01-02T03:04:05Z").unwrap();
        assert_eq!(parse_rfc3339_ms("2025-01-02T04:04:05+01:00"), Ok(z));
        assert_eq!(parse_rfc3339_ms("2025-01-01T22:34:05-04:30"), Ok(z));
        assert_eq!(parse_rfc3339_ms("2025-01-02t03:04:05.5z"), Ok(z + 500));
        assert_eq!(
            parse_rfc3339_ms("2025-01-02T03:04:05.123456789Z"),
            Ok(z + 123)
        );
        assert_eq!(
            parse_rfc3339_ms("2016-12-31T23:59:60Z").unwrap() % 1000,
            999
        );
        for bad in [
            "",
            "2025-01-02",
            "2025-01-02T03:04:05",
            "2025-13-02T03:04:05Z",
            "2025-02-29T03:04:05Z",
            "2025-01-02T24:04:05Z",
            "2025-01-02T03:04:05.Z",
            "2025-01-02T03:04:05+0100",
            "2025-01-02T03:04:05Zjunk",
            "1969-12-31T23:59:59Z",
            "２０２５-01-02T03:04:05Z",
            "+025-01-02T03:04:05Z",
        ] {
            assert!(parse_rfc3339_ms(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_policy_form_is_the_strict_subset() {
        assert_eq!(parse_utc("2025-01-02T03:04:05Z"), Some(1_735_787_045));
        for other_forms in [
            "2025-01-02t03:04:05Z",
            "2025-01-02T03:04:05z",
            "2025-01-02T03:04:05.5Z",
            "2025-01-02T04:04:05+01:00",
            "2016-12-31T23:59:60Z",
            "２０２５-01-02T03:04:05Z",
        ] {
            assert_eq!(parse_utc(other_forms), None, "{other_forms}");
        }
    }

    #[test]
    fn both_clocks_agree() {
        let (s, ms) = (now_unix(), now_unix_ms());
        assert!(ms / 1000 >= s && ms / 1000 - s <= 1);
    }
}
