//! Control requests, as the engine's control server and the parent's
//! reader take them off a client's connection: one JSON line. What parses
//! serialises back to a line that parses to the same request; the engine
//! and the parent agree on whose it is; no read-only request is the parent's.
#![no_main]
use libfuzzer_sys::fuzz_target;
use qkdpfd::imsg::{ParentCommand, ParentRequest};
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
        // What the engine hands the parent, and what the parent then runs
        // from the same line, are the same command; nothing a read-only
        // member may ask reaches the parent.
        let handed = ParentCommand::of(&r);
        assert_eq!(handed, ParentRequest::from_request(r.clone()).map(|p| p.command()));
        assert!(!(r.read_only() && handed.is_some()), "{r:?} read-only and the parent's");
    }
);
