//! The etsi015 QBER driver's body parser (ETSI GS QKD 015 qkdl_performance).
//! After the driver's range check a QBER is a number in [0, 0.5]; errors
//! are bounded in length (they go to the log with the source's URL).
#![no_main]
use libfuzzer_sys::fuzz_target;
use qkdpfd::engine::qber::etsi015;

fuzz_target!(
    init: qkdpfd_fuzz::set_cap(64 * qkdpfd_fuzz::MIB),
    |data: &[u8]| {
        match etsi015::parse(data) {
            Ok((raw, _seq)) => qkdpfd_fuzz::check_qber(raw),
            Err(e) => qkdpfd_fuzz::check_error("etsi015", &e),
        }
    }
);
