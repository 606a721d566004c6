//! The http-json QBER driver's parser: an RFC 6901 pointer into any JSON
//! answer, the value and its sequence sibling. Input: the pointer up to
//! the first newline, then the body.
#![no_main]
use libfuzzer_sys::fuzz_target;
use qkdpfd::engine::qber::http_json;

fuzz_target!(
    init: qkdpfd_fuzz::set_cap(64 * qkdpfd_fuzz::MIB),
    |data: &[u8]| {
        let Some(nl) = data.iter().position(|&b| b == b'\n') else { return };
        let Ok(pointer) = std::str::from_utf8(&data[..nl]) else { return };
        match http_json::parse(&data[nl + 1..], pointer) {
            Ok((raw, _seq)) => qkdpfd_fuzz::check_qber(raw),
            Err(e) => qkdpfd_fuzz::check_error("http-json", &e),
        }
    }
);
