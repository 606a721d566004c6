//! Fixed keys for the structure-aware targets: they sign what they build,
//! so the fuzzer spends its time past the signature check. Test keys only,
//! derived from constant seeds; nothing here protects anything.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer, SigningKey};
use qkdpfd::policy::signify::PublicKey;
use std::sync::OnceLock;

/// signify's key number for the bundle key (any 8 bytes; signify picks
/// them at random).
pub const KEYNUM: [u8; 8] = *b"qkdfuzz1";

/// Made once: deriving a key's public half costs as much as a signature.
pub fn bundle_key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::from_bytes(&[0x42; 32]))
}

/// The bundle key as the daemon holds a configured `.pub`.
pub fn bundle_pub() -> &'static PublicKey {
    static PUB: OnceLock<PublicKey> = OnceLock::new();
    PUB.get_or_init(|| PublicKey {
        keynum: KEYNUM,
        key: bundle_key().verifying_key(),
        path: "fuzz.pub".into(),
    })
}

/// `SHA256.sig` as `signify -S -e` writes it: comment, signature line,
/// then the message itself.
pub fn signify_embedded(msg: &[u8]) -> Vec<u8> {
    let sig = bundle_key().sign(msg);
    let mut raw = b"Ed".to_vec();
    raw.extend_from_slice(&KEYNUM);
    raw.extend_from_slice(&sig.to_bytes());
    let mut out = b"untrusted comment: verify with fuzz.pub\n".to_vec();
    out.extend_from_slice(B64.encode(raw).as_bytes());
    out.push(b'\n');
    out.extend_from_slice(msg);
    out
}

/// The two peering keys of the datagram targets: ours and the far end's.
pub fn peer_keys() -> &'static (SigningKey, SigningKey) {
    static KEYS: OnceLock<(SigningKey, SigningKey)> = OnceLock::new();
    KEYS.get_or_init(|| {
        (
            SigningKey::from_bytes(&[0x11; 32]),
            SigningKey::from_bytes(&[0x22; 32]),
        )
    })
}
