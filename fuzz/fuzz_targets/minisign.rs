//! minisign `.minisig` over the `SHA256` list. Input: a 2-byte length, the
//! list, then the signature file. The fuzz key signed one list only (the
//! seed in fuzz/seeds/minisign), so anything accepted must be that list.
#![no_main]
use libfuzzer_sys::fuzz_target;
use qkdpfd::policy::{minisign, signify};

/// Made by seeds/make-bundles.sh; the secret key was deleted there.
const PUB: &str = include_str!("../seeds/keys/minisign.pub");
const SIGNED_LIST: &[u8] = include_bytes!("../seeds/keys/minisign.list");

fuzz_target!(
    init: qkdpfd_fuzz::set_cap(16 * qkdpfd_fuzz::MIB),
    |data: &[u8]| {
        if data.len() < 2 {
            return;
        }
        let n = u16::from_be_bytes([data[0], data[1]]) as usize;
        let Some(list) = data[2..].get(..n) else { return };
        let sig = &data[2 + n..];
        let key = signify::parse_pubkey(PUB).expect("the fuzz key parses");
        if minisign::verify(list, sig, &[key]).is_ok() {
            assert_eq!(list, SIGNED_LIST, "a list the key never signed verifies");
        }
    }
);
