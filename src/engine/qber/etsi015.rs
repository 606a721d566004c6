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
//! date-time ([`crate::utc::parse_rfc3339_ms`], the parser of qkdsim's
//! formatter), which becomes the sample's sequence (unix ms). Without a
//! `time_stamp` the driver falls back to "fresh only if the value changed".

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
        Some(Value::String(s)) => Some(crate::utc::parse_rfc3339_ms(s)?),
        Some(_) => return Err("phys_perf QBER time_stamp is not a string".into()),
    };
    Ok((value, stamp))
}

#[cfg(test)]
mod tests {
    use super::*;

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
