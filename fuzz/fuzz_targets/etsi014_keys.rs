//! ETSI 014 key containers (enc_keys and dec_keys answers), walked by hand.
//! Input: a size byte, a count or ID-list byte, then the body. What is
//! accepted has exactly the keys asked for, unique IDs of the one KeyId
//! syntax, each key `size/8` bytes, dec_keys in the order asked; what is
//! refused says so printably and never quotes a key (one that could not
//! pass for a key_ID: the one rule cannot tell those apart).
#![no_main]
use libfuzzer_sys::fuzz_target;
use qkdpfd::engine::kme::answer::{Expect, parse_keys};
use qkdpfd::engine::kme::{Call, KmeError};
use qkdpfd::proto::peer::KeyId;
use std::collections::HashSet;

/// Base64 of at least 8 bytes that could not pass for a key_ID.
fn looks_like_a_key(s: &str) -> bool {
    use base64::Engine as _;
    s.len() >= 12
        && KeyId::new(s).is_err()
        && base64::engine::general_purpose::STANDARD.decode(s).is_ok()
}

const IDS: [&str; 4] = ["a-1", "b", "0f0e-77", "Z"];

fuzz_target!(
    init: qkdpfd_fuzz::set_cap(64 * qkdpfd_fuzz::MIB),
    |data: &[u8]| {
        if data.len() < 2 {
            return;
        }
        let size_bits = [8u32, 32, 256, 512][(data[0] & 3) as usize];
        let body = &data[2..];
        let ids: Vec<KeyId>;
        let expect = if data[1] & 0x80 != 0 {
            let n = (data[1] & 3) as usize + 1;
            ids = IDS[..n].iter().map(|s| KeyId::new(s).unwrap()).collect();
            Expect::Ids(&ids)
        } else {
            ids = Vec::new();
            Expect::Count((data[1] & 7) as usize)
        };
        let want = match &expect {
            Expect::Count(n) => *n,
            Expect::Ids(i) => i.len(),
        };
        match parse_keys(body, expect, size_bits) {
            Ok(keys) => {
                assert_eq!(keys.len(), want);
                let mut seen = HashSet::new();
                for (id, key) in &keys {
                    assert!(seen.insert(id.clone()), "duplicate {id}");
                    assert_eq!(KeyId::new(id.as_str()).as_ref(), Ok(id));
                    // At least the size asked (a longer key is taken whole).
                    assert!(key.len() >= size_bits as usize / 8, "{} bytes", key.len());
                }
                if !ids.is_empty() {
                    let got: Vec<&KeyId> = keys.iter().map(|(id, _)| id).collect();
                    assert_eq!(got, ids.iter().collect::<Vec<_>>(), "dec_keys out of order");
                }
            }
            Err(kind) => {
                let shown = KmeError::new("fuzz", Call::EncKeys, kind).to_string();
                // Escaped by the log, once (errors keep the KME's text).
                let logged = qkdpfd::log::event(qkdpfd::log::Event::KmeError).msg(&shown);
                qkdpfd_fuzz::assert_printable("KME error", logged.line());
                assert!(shown.len() <= 1024, "error of {} bytes", shown.len());
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
                    for k in v.get("keys").and_then(|k| k.as_array()).into_iter().flatten() {
                        if let Some(key) = k.get("key").and_then(|s| s.as_str()) {
                            assert!(
                                !looks_like_a_key(key) || !shown.contains(key),
                                "a key is quoted in an error: {shown}"
                            );
                        }
                    }
                }
            }
        }
    }
);
