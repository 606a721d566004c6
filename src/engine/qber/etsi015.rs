//! The `etsi015` QBER driver's parser: RESTCONF JSON of an ETSI GS QKD 015
//! node's `qkdl_performance` (YANG module `etsi-qkd-sdn-node`, path
//! `qkd_node/qkd_links/qkd_link[link_id]/qkdl_performance/phys_perf`), as
//! qkdsim serves it (`sim::qber`). Runs in the engine; pure.
//!
//! Accepted: `{"qkdl_performance": {...}}` or the RFC 7951 module-qualified
//! `{"etsi-qkd-sdn-node:qkdl_performance": {...}}`; in its `phys_perf`
//! list exactly one entry whose `perf_type` is `QBER` (or a qualified
//! `prefix:QBER` identity); its `value` a JSON number or a decimal string
//! (RFC 7951 encodes decimal64 as a string); its `time_stamp` an RFC 3339
//! date-time, which becomes the sample's sequence (unix ms). Without a
//! `time_stamp` the driver falls back to "fresh only if the value changed".
//!
//! Also the RFC 3339 formatting qkdsim uses, so both sides agree.

use super::http_json::number;
use serde_json::Value;

/// One reading: the value as the source gives it and its time stamp.
pub fn parse(body: &[u8]) -> Result<(f64, Option<u64>), String> {
    let v: Value = serde_json::from_slice(body).map_err(|_| "answer is not JSON".to_string())?;
    let perf = v
        .get("qkdl_performance")
        .or_else(|| v.get("etsi-qkd-sdn-node:qkdl_performance"))
        .ok_or("answer has no qkdl_performance object")?;
    let list = perf
        .get("phys_perf")
        .and_then(Value::as_array)
        .ok_or("qkdl_performance has no phys_perf list")?;
    let is_qber = |e: &&Value| {
        e.get("perf_type")
            .and_then(Value::as_str)
            .is_some_and(|t| t == "QBER" || t.rsplit_once(':').is_some_and(|(_, n)| n == "QBER"))
    };
    let mut found = list.iter().filter(is_qber);
    let entry = found
        .next()
        .ok_or("phys_perf has no entry with perf_type QBER")?;
    if found.next().is_some() {
        return Err("phys_perf has more than one QBER entry".into());
    }
    let value = entry
        .get("value")
        .and_then(number)
        .ok_or("phys_perf QBER entry has no numeric value")?;
    let stamp = match entry.get("time_stamp") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(parse_time_stamp(s)?),
        Some(_) => return Err("phys_perf QBER time_stamp is not a string".into()),
    };
    Ok((value, stamp))
}

/// `2025-01-02T03:04:05.678Z` for unix milliseconds.
pub fn format_time_stamp(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (y, m, d) = crate::utc::civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        ms % 1000
    )
}

/// Unix milliseconds of an RFC 3339 date-time
/// (`YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`), fraction truncated to ms.
/// Times before 1970 are refused (they cannot be a live measurement).
pub fn parse_time_stamp(s: &str) -> Result<u64, String> {
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
    if !(1..=12).contains(&mo) || d < 1 || d > crate::utc::days_in_month(y, mo) || h > 23 || mi > 59
    {
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
    let secs = crate::utc::days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset;
    let total = secs * 1000 + ms;
    u64::try_from(total).map_err(|_| format!("{}: before 1970", bad()))
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
            let s = format_time_stamp(ms);
            assert_eq!(parse_time_stamp(&s), Ok(ms), "{s}");
        }
        assert_eq!(
            format_time_stamp(1_735_787_045_678),
            "2025-01-02T03:04:05.678Z"
        );
        assert_eq!(
            format_time_stamp(951_782_400_000),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn time_stamps_with_offsets_and_fractions() {
        let z = parse_time_stamp("2025-01-02T03:04:05Z").unwrap();
        assert_eq!(parse_time_stamp("2025-01-02T04:04:05+01:00"), Ok(z));
        assert_eq!(parse_time_stamp("2025-01-01T22:34:05-04:30"), Ok(z));
        assert_eq!(parse_time_stamp("2025-01-02t03:04:05.5z"), Ok(z + 500));
        assert_eq!(
            parse_time_stamp("2025-01-02T03:04:05.123456789Z"),
            Ok(z + 123)
        );
        assert_eq!(
            parse_time_stamp("2016-12-31T23:59:60Z").unwrap() % 1000,
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
            assert!(parse_time_stamp(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn finds_the_qber_entry() {
        let body = br#"{"qkdl_performance": {"skr": 10, "phys_perf": [
            {"perf_type": "SNR", "value": 30},
            {"perf_type": "QBER", "value": 0.031, "time_stamp": "1970-01-01T00:00:01.000Z"}]}}"#;
        assert_eq!(parse(body), Ok((0.031, Some(1000))));
        let qualified = br#"{"etsi-qkd-sdn-node:qkdl_performance": {"phys_perf": [
            {"perf_type": "etsi-qkd-node-types:QBER", "value": "0.02"}]}}"#;
        assert_eq!(parse(qualified), Ok((0.02, None)));
    }

    #[test]
    fn refuses_malformed_answers() {
        let cases: [(&[u8], &str); 7] = [
            (b"<html>", "not JSON"),
            (b"{}", "no qkdl_performance"),
            (
                br#"{"qkdl_performance": {"phys_perf": {}}}"#,
                "no phys_perf list",
            ),
            (
                br#"{"qkdl_performance": {"phys_perf": []}}"#,
                "no entry with perf_type QBER",
            ),
            (
                br#"{"qkdl_performance": {"phys_perf": [{"perf_type": "QBER", "value": true}]}}"#,
                "no numeric value",
            ),
            (
                br#"{"qkdl_performance": {"phys_perf": [{"perf_type": "QBER", "value": 0.1},
                    {"perf_type": "QBER", "value": 0.2}]}}"#,
                "more than one",
            ),
            (
                br#"{"qkdl_performance": {"phys_perf": [{"perf_type": "QBER", "value": 0.1,
                    "time_stamp": 12}]}}"#,
                "not a string",
            ),
        ];
        for (body, want) in cases {
            let e = parse(body).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }
}
