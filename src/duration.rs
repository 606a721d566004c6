//! Durations as written in qkdpfd.conf and policy.toml: an unsigned integer
//! followed by a unit, `ms`, `s`, `m` or `h` (`"300s"`, `"500ms"`, `"1h"`).

use std::time::Duration;

/// Parses `"300s"`; the error says what was expected.
pub fn parse(s: &str) -> Result<Duration, String> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = s.split_at(digits);
    let expected = || {
        format!("expected a duration such as \"300s\", \"500ms\", \"5m\" or \"1h\", found \"{s}\"")
    };
    if num.is_empty() || num.len() > 12 {
        return Err(expected());
    }
    let n: u64 = num.parse().map_err(|_| expected())?;
    let ms = match unit {
        "ms" => n,
        "s" => n * 1000,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        _ => return Err(expected()),
    };
    Ok(Duration::from_millis(ms))
}

/// The shortest exact form: `"1h"`, `"90s"`, `"1500ms"`.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0s".to_string()
    } else if ms % 3_600_000 == 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for s in ["0s", "500ms", "1500ms", "1s", "90s", "5m", "1h", "25h"] {
            assert_eq!(format(parse(s).unwrap()), s);
        }
        assert_eq!(parse("120s").unwrap(), Duration::from_secs(120));
        assert_eq!(format(parse("60s").unwrap()), "1m");
    }

    #[test]
    fn rejects() {
        for s in [
            "",
            "s",
            "10",
            "1.5s",
            "-1s",
            "10 s",
            "10d",
            "9999999999999s",
        ] {
            assert!(parse(s).is_err(), "{s}");
        }
    }
}
