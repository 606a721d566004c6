//! Control requests, as the engine's control server and the parent's
//! reader take them off a client's connection: one JSON line. What parses
//! serialises back to a line that parses to the same request.
#![no_main]
use libfuzzer_sys::fuzz_target;
use qkdpfd::proto::ctl::{MAX_REQUEST, parse_request};

fuzz_target!(
    init: qkdpfd_fuzz::set_cap(64 * qkdpfd_fuzz::MIB),
    |data: &[u8]| {
        if data.len() > MAX_REQUEST {
            return;
        }
        let Ok(r) = parse_request(data) else { return };
        let mut line = serde_json::to_vec(&r).expect("serialises");
        line.push(b'\n');
        assert_eq!(parse_request(&line).as_ref(), Ok(&r), "{}", String::from_utf8_lossy(&line));
        let _ = r.read_only();
        let _ = qkdpfd::imsg::ParentCommand::of(&r);
    }
);
