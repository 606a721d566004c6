//! The key-agreement derivations of DESIGN §6: `link_id`, the HKDF that
//! turns a QKD key into `PSK ‖ confirm_key`, and the confirmation tag.
//! Pure functions, used by the engine on both ends; the published test
//! vectors (`tests/vectors/peer-v1.json`) pin every byte of them.

use super::ids::{KeyId, LinkId, Nonce};
use crate::secret::{Psk, QkdKey};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// HKDF `info` prefix; followed by epoch (u64 BE) ‖ key_ID bytes.
pub const KDF_INFO: &[u8] = b"qkdpfd-psk-v1";
/// Confirmation tag prefix; followed by link_id ‖ epoch ‖ nonce ‖ key_ID.
pub const TAG_LABEL: &[u8] = b"confirm";
/// DESIGN §6: `enc_keys` asks for 256 bits; shorter keys are refused.
pub const MIN_QKD_KEY: usize = 32;

/// The second half of the HKDF output: authenticates the slave's CONFIRM.
#[derive(Clone, PartialEq, Eq)]
pub struct ConfirmKey(Zeroizing<[u8; 32]>);

impl ConfirmKey {
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for ConfirmKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConfirmKey(<SECRET>)")
    }
}

/// `link_id = SHA-256(len ‖ master SAE ID ‖ len ‖ slave SAE ID ‖ master WG
/// pubkey ‖ slave WG pubkey)`, len = one byte, the SAE ID's length in
/// bytes; WG pubkeys are the 32 raw bytes (not base64).
pub fn link_id(
    master_sae: &str,
    slave_sae: &str,
    master_wg: &[u8; 32],
    slave_wg: &[u8; 32],
) -> Result<LinkId, String> {
    let mut h = Sha256::new();
    for sae in [master_sae, slave_sae] {
        let len = u8::try_from(sae.len())
            .map_err(|_| format!("SAE ID longer than 255 bytes: {:.40}...", sae))?;
        if len == 0 {
            return Err("empty SAE ID".into());
        }
        h.update([len]);
        h.update(sae.as_bytes());
    }
    h.update(master_wg);
    h.update(slave_wg);
    Ok(LinkId(h.finalize().into()))
}

/// `PSK ‖ confirm_key = HKDF-SHA256(ikm = QKD key, salt = link_id,
/// info = "qkdpfd-psk-v1" ‖ epoch (u64 BE) ‖ key_ID)`, 64 bytes.
pub fn derive(
    key: &QkdKey,
    link_id: &LinkId,
    epoch: u64,
    key_id: &KeyId,
) -> Result<(Psk, ConfirmKey), String> {
    if key.len() < MIN_QKD_KEY {
        return Err(format!(
            "QKD key of {} bits refused: at least {} bits needed",
            key.len() * 8,
            MIN_QKD_KEY * 8
        ));
    }
    let mut info = Vec::with_capacity(KDF_INFO.len() + 8 + key_id.len());
    info.extend_from_slice(KDF_INFO);
    info.extend_from_slice(&epoch.to_be_bytes());
    info.extend_from_slice(key_id.as_bytes());
    let mut okm = Zeroizing::new([0u8; 64]);
    hkdf::Hkdf::<Sha256>::new(Some(&link_id.0), key.expose())
        .expand(&info, &mut okm[..])
        .expect("64 bytes is a valid HKDF-SHA256 length");
    let mut psk = [0u8; 32];
    psk.copy_from_slice(&okm[..32]);
    let mut ck = Zeroizing::new([0u8; 32]);
    ck.copy_from_slice(&okm[32..]);
    let psk_out = Psk::from_bytes(psk);
    zeroize::Zeroize::zeroize(&mut psk);
    Ok((psk_out, ConfirmKey(ck)))
}

fn tag_mac(
    ck: &ConfirmKey,
    link_id: &LinkId,
    epoch: u64,
    nonce: &Nonce,
    key_id: &KeyId,
) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(ck.expose()).expect("any key size");
    m.update(TAG_LABEL);
    m.update(&link_id.0);
    m.update(&epoch.to_be_bytes());
    m.update(nonce);
    m.update(key_id.as_bytes());
    m
}

/// `tag = HMAC-SHA256(confirm_key, "confirm" ‖ link_id ‖ epoch (u64 BE) ‖
/// nonce ‖ key_ID)`.
pub fn confirm_tag(
    ck: &ConfirmKey,
    link_id: &LinkId,
    epoch: u64,
    nonce: &Nonce,
    key_id: &KeyId,
) -> [u8; 32] {
    tag_mac(ck, link_id, epoch, nonce, key_id)
        .finalize()
        .into_bytes()
        .into()
}

/// Checks a received tag in constant time.
pub fn check_tag(
    ck: &ConfirmKey,
    link_id: &LinkId,
    epoch: u64,
    nonce: &Nonce,
    key_id: &KeyId,
    tag: &[u8; 32],
) -> bool {
    tag_mac(ck, link_id, epoch, nonce, key_id)
        .verify_slice(tag)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_keys_are_refused() {
        let id = KeyId::new("k1").unwrap();
        let l = LinkId([1; 32]);
        let e = derive(&QkdKey::new(vec![7; 31]), &l, 1, &id).unwrap_err();
        assert!(e.contains("248 bits refused"), "{e}");
        assert!(derive(&QkdKey::new(vec![7; 64]), &l, 1, &id).is_ok());
    }

    #[test]
    fn every_input_changes_the_output() {
        let id = KeyId::new("k1").unwrap();
        let k = QkdKey::new(vec![7; 32]);
        let l = LinkId([1; 32]);
        let (p, c) = derive(&k, &l, 1, &id).unwrap();
        assert_ne!(p.expose(), c.expose());
        assert_ne!(p, derive(&k, &l, 2, &id).unwrap().0);
        assert_ne!(p, derive(&k, &LinkId([2; 32]), 1, &id).unwrap().0);
        assert_ne!(p, derive(&k, &l, 1, &KeyId::new("k2").unwrap()).unwrap().0);
        let t = confirm_tag(&c, &l, 1, &[0; 16], &id);
        assert!(check_tag(&c, &l, 1, &[0; 16], &id, &t));
        assert!(!check_tag(&c, &l, 1, &[1; 16], &id, &t));
        assert!(format!("{c:?}").contains("<SECRET>"));
    }

    #[test]
    fn link_id_refuses_bad_sae_ids() {
        assert!(link_id("", "b", &[0; 32], &[1; 32]).is_err());
        assert!(link_id(&"a".repeat(256), "b", &[0; 32], &[1; 32]).is_err());
        let ab = link_id("a", "b", &[0; 32], &[1; 32]).unwrap();
        assert_ne!(ab, link_id("b", "a", &[0; 32], &[1; 32]).unwrap());
        assert_ne!(ab, link_id("a", "b", &[1; 32], &[0; 32]).unwrap());
    }
}
