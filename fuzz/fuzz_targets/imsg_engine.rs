//! The engine's side of the socketpair: frames the parent sends, read and
//! decoded as the engine does at start-up (read_frame_blocking; the async
//! reader after it shares parse_header and decode). A frame never exceeds
//! its limit, and what decodes encodes to a frame that decodes to the same
//! message.
#![no_main]
use libfuzzer_sys::fuzz_target;
use qkdpfd::imsg::{MAX_PAYLOAD, ToEngine, read_frame_blocking};

fuzz_target!(
    // One frame's payload (8 MiB) read in, its JSON, and its re-encoding.
    init: qkdpfd_fuzz::set_cap(64 * qkdpfd_fuzz::MIB),
    |data: &[u8]| {
        let framed = qkdpfd_fuzz::framed(data);
        let mut r = framed.as_deref().unwrap_or(data);
        while let Ok(Some((code, payload))) = read_frame_blocking(&mut r) {
            assert!(payload.len() <= MAX_PAYLOAD);
            let Ok(m) = ToEngine::decode(code, &payload) else { break };
            qkdpfd_fuzz::assert_reencodes(code, &m, ToEngine::encode, ToEngine::decode);
        }
    }
);
