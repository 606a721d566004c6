//! Key material types (DESIGN §5 "Secrets"): zeroized on drop, `Debug`
//! prints `<SECRET>`, no `Display`, no serde. Keys travel by ioctl, netlink,
//! UAPI socket or fd 3 — never argv, logs, errors or files other than where
//! they belong.

use zeroize::{Zeroize, Zeroizing};

/// A WireGuard pre-shared key.
#[derive(Clone, PartialEq, Eq)]
pub struct Psk(Zeroizing<[u8; 32]>);

/// A key delivered by the KME (ETSI 014 `key`, decoded), any length.
#[derive(Clone, PartialEq, Eq)]
pub struct QkdKey(Zeroizing<Vec<u8>>);

impl Psk {
    pub fn from_bytes(b: [u8; 32]) -> Psk {
        Psk(Zeroizing::new(b))
    }

    /// Fresh random bytes: what replaces a PSK whose key went stale.
    pub fn random() -> Psk {
        let mut b = Zeroizing::new([0u8; 32]);
        rand::Rng::fill(&mut rand::thread_rng(), &mut b[..]);
        Psk(b)
    }

    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// Every byte the same: all zeros is WireGuard's "no PSK" (the tunnel
    /// then rests on its classical keys alone), and no HKDF output or
    /// random draw is ever like it (odds 2^-248).
    pub fn is_degenerate(&self) -> bool {
        self.0.iter().all(|b| *b == self.0[0])
    }

    /// DESIGN §7: first 4 bytes of HMAC-SHA256(PSK, "fp") — safe to show.
    pub fn fingerprint(&self) -> Fingerprint {
        let mac = self.mac(b"fp");
        Fingerprint([mac[0], mac[1], mac[2], mac[3]])
    }

    /// HMAC-SHA256(PSK, "qkdpfd-psk-verify-v1"), hex: what the state file
    /// keeps so a restart can tell the installed PSK from any other without
    /// storing it (DESIGN §6 `no-key`).
    pub fn verifier(&self) -> String {
        crate::text::hex(&self.mac(b"qkdpfd-psk-verify-v1"))
    }

    fn mac(&self, msg: &[u8]) -> [u8; 32] {
        use hmac::Mac;
        let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.0[..]).expect("any key size");
        m.update(msg);
        m.finalize().into_bytes().into()
    }
}

impl QkdKey {
    pub fn new(mut bytes: Vec<u8>) -> QkdKey {
        let k = QkdKey(Zeroizing::new(bytes.clone()));
        bytes.zeroize();
        k
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Psk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Psk(<SECRET>)")
    }
}

impl std::fmt::Debug for QkdKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QkdKey(<SECRET> {} bytes)", self.0.len())
    }
}

/// A PSK's fingerprint ([`Psk::fingerprint`]), shown in hex. Four bytes
/// held as they are: each keyed link of a hub keeps one or two.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint([u8; 4]);

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::text::hex(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_key() {
        let p = Psk::from_bytes([0x41; 32]);
        let d = format!("{p:?}");
        assert_eq!(d, "Psk(<SECRET>)");
        let k = QkdKey::new(vec![0x41; 32]);
        assert!(!format!("{k:?}").contains("41") && !format!("{k:?}").contains('A'));
    }

    #[test]
    fn fingerprint_is_stable_and_short() {
        let p = Psk::from_bytes([7; 32]);
        assert_eq!(p.fingerprint().to_string().len(), 8);
        assert_eq!(p.fingerprint(), Psk::from_bytes([7; 32]).fingerprint());
        assert_ne!(p.fingerprint(), Psk::from_bytes([8; 32]).fingerprint());
        assert_ne!(Psk::random(), Psk::random());
    }
}
