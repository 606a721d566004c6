//! The prometheus QBER driver's parser (text exposition format, the
//! `qkd_qber{link_id="..."}` sample). Raw input: the link id up to the
//! first newline, then the body. Built input (first byte `BUILT`): the
//! value and time stamp of our link's sample, among comments, other
//! metrics and other links' samples, are exactly what parses.
#![no_main]
use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use qkdpfd::engine::qber::prometheus;
use qkdpfd_fuzz::{BUILT, Reading};

fn body(r: &Reading) -> String {
    let mut lines: Vec<String> = r
        .noise
        .iter()
        .map(|b| match b % 4 {
            0 => format!("# HELP qkd_qber x{b}"),
            1 => format!("qkd_skr{{link_id=\"ab\"}} {b}"),
            2 => format!("qkd_qber{{link_id=\"other{b}\",site=\"x\"}} 0.{b}"),
            _ => String::new(),
        })
        .collect();
    let stamp = r.seq.map(|s| format!(" {s}")).unwrap_or_default();
    let at = r
        .noise
        .first()
        .map_or(0, |&b| b as usize % (lines.len() + 1));
    lines.insert(
        at,
        format!("qkd_qber{{site=\"x\",link_id=\"ab\"}} {}{stamp}", r.value),
    );
    lines.join("\n") + "\n"
}

fuzz_target!(
    init: qkdpfd_fuzz::set_cap(64 * qkdpfd_fuzz::MIB),
    |data: &[u8]| {
        if let Some((&BUILT, rest)) = data.split_first() {
            let Ok(r) = Reading::arbitrary(&mut Unstructured::new(rest)) else { return };
            let b = body(&r);
            assert_eq!(prometheus::parse(b.as_bytes(), "ab"), Ok((r.value, r.seq)), "{b}");
            return;
        }
        let Some(nl) = data.iter().position(|&b| b == b'\n') else { return };
        let Ok(id) = std::str::from_utf8(&data[..nl]) else { return };
        match prometheus::parse(&data[nl + 1..], id) {
            Ok((raw, _seq)) => qkdpfd_fuzz::check_qber(raw),
            Err(e) => qkdpfd_fuzz::check_error("prometheus", &e),
        }
    }
);
