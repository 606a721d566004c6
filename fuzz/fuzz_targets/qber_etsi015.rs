//! The etsi015 QBER driver's body parser (ETSI GS QKD 015
//! qkdl_performance). Raw bodies: after the driver's range check a QBER is
//! a number in [0, 0.5]; errors are bounded (they go to the log with the
//! source's URL). Built bodies (first byte `BUILT`): the value and time
//! stamp put in, among other performance entries, are exactly what parses.
#![no_main]
use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use qkdpfd::engine::qber::etsi015;
use qkdpfd::utc::format_rfc3339_ms;
use qkdpfd_fuzz::{BUILT, Reading};

fn body(r: &Reading, yang: bool) -> String {
    let mut entries: Vec<String> = r
        .noise
        .iter()
        .map(|b| format!(r#"{{"perf_type": "SKR{b}", "value": {b}}}"#))
        .collect();
    let stamp = match r.seq {
        Some(ms) => format!(r#", "time_stamp": "{}""#, format_rfc3339_ms(ms)),
        None => String::new(),
    };
    let ty = if yang {
        "etsi-qkd-node-types:QBER"
    } else {
        "QBER"
    };
    let at = r
        .noise
        .first()
        .map_or(0, |&b| b as usize % (entries.len() + 1));
    entries.insert(
        at,
        format!(r#"{{"perf_type": "{ty}", "value": {}{stamp}}}"#, r.value),
    );
    let top = if yang {
        "etsi-qkd-sdn-node:qkdl_performance"
    } else {
        "qkdl_performance"
    };
    format!(
        r#"{{"{top}": {{"skr": 1, "phys_perf": [{}]}}}}"#,
        entries.join(", ")
    )
}

fuzz_target!(
    init: qkdpfd_fuzz::set_cap(64 * qkdpfd_fuzz::MIB),
    |data: &[u8]| {
        if let Some((&BUILT, rest)) = data.split_first() {
            let mut u = Unstructured::new(rest);
            let (Ok(r), Ok(yang)) = (Reading::arbitrary(&mut u), bool::arbitrary(&mut u)) else {
                return;
            };
            let b = body(&r, yang);
            assert_eq!(etsi015::parse(b.as_bytes()), Ok((r.value, r.seq)), "{b}");
            return;
        }
        match etsi015::parse(data) {
            Ok((raw, _seq)) => qkdpfd_fuzz::check_qber(raw),
            Err(e) => qkdpfd_fuzz::check_error("etsi015", &e),
        }
    }
);
