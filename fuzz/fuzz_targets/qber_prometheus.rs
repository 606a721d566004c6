//! The prometheus QBER driver's parser (text exposition format, the
//! `qkd_qber{qber_id="..."}` sample). Input: the qber_id up to the first
//! newline, then the body.
#![no_main]
use libfuzzer_sys::fuzz_target;
use qkdpfd::engine::qber::prometheus;

fuzz_target!(
    init: qkdpfd_fuzz::set_cap(64 * qkdpfd_fuzz::MIB),
    |data: &[u8]| {
        let Some(nl) = data.iter().position(|&b| b == b'\n') else { return };
        let Ok(id) = std::str::from_utf8(&data[..nl]) else { return };
        match prometheus::parse(&data[nl + 1..], id) {
            Ok((raw, _seq)) => qkdpfd_fuzz::check_qber(raw),
            Err(e) => qkdpfd_fuzz::check_error("prometheus", &e),
        }
    }
);
