//! The peering key (DESIGN §3 `[peering] key`): a signify secret key made
//! with `signify -G -n` (no passphrase), and the far ends' public key lines
//! (`peer_pubkey = "RWS..."`). The parent reads the file (the engine reads
//! none) and hands the key to the engine, which signs every peer datagram.
//!
//! Secret key file: an `untrusted comment:` line, then base64 of
//! `"Ed" ‖ "BK" ‖ kdfrounds (u32 BE) ‖ salt[16] ‖ checksum[8] ‖ keynum[8] ‖
//! seckey[64]`, where seckey = Ed25519 seed ‖ public key and checksum =
//! the first 8 bytes of SHA-512(seckey). With `-n` kdfrounds is 0 and the
//! seckey is stored in the clear; a passphrase-protected key (rounds > 0)
//! is refused, since a daemon cannot type a passphrase.

use crate::policy::signify::{PublicKey, pubkey_from_base64};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha512};
use std::path::Path;
use zeroize::Zeroizing;

const RAW_LEN: usize = 2 + 2 + 4 + 16 + 8 + 8 + 64;

/// An Ed25519 signing key from a signify secret key file.
pub struct SecretKey {
    keynum: [u8; 8],
    key: SigningKey,
}

impl SecretKey {
    /// Reads and checks a secret key file; errors name the file.
    pub fn read(path: &Path) -> Result<SecretKey, String> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?,
        );
        SecretKey::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses the text of a secret key file.
    pub fn parse(text: &str) -> Result<SecretKey, String> {
        let b64 = crate::policy::signify::key_line(text)?;
        let raw = Zeroizing::new(
            B64.decode(b64.trim_end_matches('\r'))
                .map_err(|_| "the key line is not valid base64")?,
        );
        if raw.len() != RAW_LEN || &raw[..2] != b"Ed" {
            return Err(
                "not a signify Ed25519 secret key (a .pub file, or another format?)".into(),
            );
        }
        if &raw[2..4] != b"BK" {
            return Err("unknown signify key derivation (expected \"BK\")".into());
        }
        let rounds = u32::from_be_bytes(raw[4..8].try_into().expect("4"));
        if rounds != 0 {
            return Err(format!(
                "the secret key is passphrase-protected ({rounds} bcrypt rounds); \
                 qkdpfd cannot ask for a passphrase: make the peering key with `signify -G -n`"
            ));
        }
        let checksum = &raw[24..32];
        let keynum: [u8; 8] = raw[32..40].try_into().expect("8");
        let seckey = &raw[40..104];
        let digest: Zeroizing<[u8; 64]> = Zeroizing::new(Sha512::digest(seckey).into());
        if &digest[..8] != checksum {
            return Err("the secret key's checksum does not match (corrupted file?)".into());
        }
        let mut seed = Zeroizing::new([0u8; 32]);
        seed.copy_from_slice(&seckey[..32]);
        let key = SigningKey::from_bytes(&seed);
        if key.verifying_key().as_bytes()[..] != seckey[32..] {
            return Err("the secret key's public half does not match its seed".into());
        }
        Ok(SecretKey { keynum, key })
    }

    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    pub fn keynum(&self) -> [u8; 8] {
        self.keynum
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<SECRET>)")
    }
}

/// Parses a `peer_pubkey` line (`RWS…`: base64 of "Ed" ‖ keynum ‖ key).
pub fn parse_pubkey_line(line: &str) -> Result<PublicKey, String> {
    pubkey_from_base64(line.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made with `signify-openbsd -G -n` on Debian 12.
    const SEC: &str = "untrusted comment: signify secret key\n\
        RWRCSwAAAADx70+z4iRt2uj6R8A7yKA6/FLsHbmse+wQQwsHMYa41IaR6Ubj0ONrOVW5UcP4hqi7C62fOk973tVW8KhRxXE0OjRpJ2mcfDqZ59nZnaZ1+HnoLtVZ7aZyVX4a2gLZLjY=\n";
    const PUB: &str = "RWQQQwsHMYa41Do0aSdpnHw6mefZ2Z2mdfh56C7VWe2mclV+GtoC2S42";

    fn raw(text: &str) -> Vec<u8> {
        B64.decode(text.lines().nth(1).unwrap()).unwrap()
    }

    fn with_raw(r: &[u8]) -> String {
        format!("untrusted comment: x\n{}\n", B64.encode(r))
    }

    #[test]
    fn reads_a_signify_key_and_matches_its_pub_line() {
        let k = SecretKey::parse(SEC).unwrap();
        let p = parse_pubkey_line(PUB).unwrap();
        assert_eq!(k.verifying_key(), p.key);
        assert_eq!(k.keynum(), p.keynum);
        assert_eq!(format!("{k:?}"), "SecretKey(<SECRET>)");
    }

    #[test]
    fn refuses_passphrase_keys() {
        let mut r = raw(SEC);
        r[4..8].copy_from_slice(&42u32.to_be_bytes());
        let e = SecretKey::parse(&with_raw(&r)).unwrap_err();
        assert!(
            e.contains("passphrase-protected (42 bcrypt rounds)") && e.contains("-G -n"),
            "{e}"
        );
    }

    #[test]
    fn refuses_bad_checksum_and_mismatched_halves() {
        let mut r = raw(SEC);
        r[24] ^= 1;
        assert!(
            SecretKey::parse(&with_raw(&r))
                .unwrap_err()
                .contains("checksum")
        );
        // A consistent checksum over a seckey whose public half is wrong.
        let mut r = raw(SEC);
        r[103] ^= 1;
        let d = Sha512::digest(&r[40..104]);
        r[24..32].copy_from_slice(&d[..8]);
        assert!(
            SecretKey::parse(&with_raw(&r))
                .unwrap_err()
                .contains("public half")
        );
    }

    #[test]
    fn refuses_other_shapes() {
        assert!(
            SecretKey::parse("RWRCS\n")
                .unwrap_err()
                .contains("untrusted comment")
        );
        assert!(SecretKey::parse("untrusted comment: x\n").is_err());
        let pubfile = format!("untrusted comment: signify public key\n{PUB}\n");
        assert!(
            SecretKey::parse(&pubfile)
                .unwrap_err()
                .contains("not a signify Ed25519 secret")
        );
        assert!(
            SecretKey::parse(&format!("{SEC}more\n"))
                .unwrap_err()
                .contains("unexpected")
        );
        let mut r = raw(SEC);
        r[2] = b'X';
        assert!(
            SecretKey::parse(&with_raw(&r))
                .unwrap_err()
                .contains("derivation")
        );
        assert!(parse_pubkey_line("RWQ").is_err());
    }
}
