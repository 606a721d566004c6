//! ETSI 014 Status answers and error bodies. A parsed Status survives its
//! own JSON round trip; an error body becomes a short message, printable
//! once the log has escaped it (errors keep the KME's text; the log's
//! value rule escapes it, once).
#![no_main]
use libfuzzer_sys::fuzz_target;
use qkdpfd::engine::kme::answer::{Status, error_message, parse_status};
use qkdpfd::engine::kme::{Call, KmeError, KmeErrorKind};
use qkdpfd::log::{self, Event};

/// An error as the engine logs it (`kme_error`'s `msg=`).
fn logged(shown: &str) -> String {
    log::event(Event::KmeError).msg(shown).line().to_string()
}

fuzz_target!(
    init: qkdpfd_fuzz::set_cap(64 * qkdpfd_fuzz::MIB),
    |data: &[u8]| {
        match parse_status(data) {
            Ok(s) => {
                let json = serde_json::to_vec(&s).expect("serialises");
                let back: Status = serde_json::from_slice(&json).expect("parses back");
                assert_eq!(back, s);
            }
            Err(kind) => {
                let shown = KmeError::new("fuzz", Call::Status, kind).to_string();
                qkdpfd_fuzz::assert_printable("KME error", &logged(&shown));
            }
        }
        let msg = error_message(data);
        qkdpfd_fuzz::assert_printable("error body", &logged(&msg));
        // excerpt(): at most 200 characters of 4 bytes, and "...".
        assert!(msg.len() <= 200 * 4 + 3, "message of {} bytes", msg.len());
        let shown = KmeError::new(
            "fuzz",
            Call::Status,
            KmeErrorKind::Status { status: 503, message: msg },
        )
        .to_string();
        qkdpfd_fuzz::assert_printable("KME error", &logged(&shown));
    }
);
