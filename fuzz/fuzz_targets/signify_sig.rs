//! signify files: `SHA256.sig` (embedded signature) and `.pub` keys. What
//! parses re-renders to bytes that parse the same; a signature that
//! verifies under the seed key carries the one message that key signed.
#![no_main]
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use libfuzzer_sys::fuzz_target;
use qkdpfd::policy::signify;

/// Made by seeds/make-bundles.sh; the secret key was deleted there.
const PUB: &str = include_str!("../seeds/keys/signify.pub");
const SIGNED_LIST: &[u8] = include_bytes!("../seeds/keys/signify.list");

fuzz_target!(
    init: qkdpfd_fuzz::set_cap(16 * qkdpfd_fuzz::MIB),
    |data: &[u8]| {
        if let Ok(emb) = signify::parse_embedded(data) {
            let mut raw = b"Ed".to_vec();
            raw.extend_from_slice(&emb.keynum);
            raw.extend_from_slice(&emb.sig.to_bytes());
            let mut again = b"untrusted comment: x\n".to_vec();
            again.extend_from_slice(B64.encode(&raw).as_bytes());
            again.push(b'\n');
            again.extend_from_slice(emb.message);
            let back = signify::parse_embedded(&again).expect("re-rendered signature parses");
            assert_eq!((back.keynum, back.sig, back.message), (emb.keynum, emb.sig, emb.message));
            let pk = [signify::parse_pubkey(PUB).expect("seed key")];
            if signify::verify_embedded(&emb, &pk).is_ok() {
                assert_eq!(emb.message, SIGNED_LIST, "a message the key never signed verifies");
            }
        }
        if let Ok(text) = std::str::from_utf8(data)
            && let Ok(k) = signify::parse_pubkey(text)
        {
            let mut raw = b"Ed".to_vec();
            raw.extend_from_slice(&k.keynum);
            raw.extend_from_slice(k.key.as_bytes());
            let line = B64.encode(&raw);
            let back = signify::pubkey_from_base64(&line).expect("re-rendered key parses");
            assert_eq!(back, k);
        }
    }
);
