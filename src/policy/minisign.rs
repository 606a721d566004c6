//! minisign signatures over the `SHA256` list (`SHA256` + `SHA256.minisig`).
//! Used by the parent and `qkdctl`; pure, no I/O.
//!
//! Only the prehashed "ED" algorithm is accepted (legacy "Ed" signatures
//! are refused), through minisign-verify. The key id is read here first so a
//! signature by an unconfigured key is reported as such.

use super::reject::Reject;
use super::signify::{MINISIG_FILE, PublicKey, keynum_hex};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// Largest `.minisig` accepted (4 short lines; trusted comments are small).
const MAX_MINISIG: usize = 8192;
const UNTRUSTED: &str = "untrusted comment: ";

/// Verifies `minisig` (the text of `SHA256.minisig`) over `list` (the bytes
/// of `SHA256`); returns the signer's key.
pub fn verify<'k>(
    list: &[u8],
    minisig: &[u8],
    keys: &'k [PublicKey],
) -> Result<&'k PublicKey, Reject> {
    let bad = |m: &str| Reject::bad_sig(MINISIG_FILE, m);
    if minisig.len() > MAX_MINISIG {
        return Err(bad("the signature file is too large"));
    }
    let text = std::str::from_utf8(minisig).map_err(|_| bad("not UTF-8"))?;
    // minisign itself refuses a first line without the prefix; the crate
    // below does not look at that line.
    if !text.starts_with(UNTRUSTED) {
        return Err(bad(
            "the first line does not start with \"untrusted comment: \"",
        ));
    }
    let keynum = key_id(text).ok_or_else(|| bad("not a minisign signature"))?;
    let sig = minisign_verify::Signature::decode(text)
        .map_err(|e| bad(&format!("not a minisign signature ({e})")))?;
    let candidates: Vec<&PublicKey> = keys.iter().filter(|k| k.keynum == keynum).collect();
    if candidates.is_empty() {
        return Err(Reject::UnknownSigner {
            file: MINISIG_FILE.into(),
            keynum: keynum_hex(&keynum),
        });
    }
    for k in candidates {
        let pk = minisign_verify::PublicKey::from_base64(&to_base64(k))
            .map_err(|e| bad(&format!("configured key {} unusable ({e})", k.path)))?;
        match pk.verify(list, &sig, false) {
            Ok(()) => return Ok(k),
            Err(minisign_verify::Error::UnexpectedAlgorithm) => {
                return Err(bad("legacy (non-prehashed) signatures are not accepted"));
            }
            Err(_) => {}
        }
    }
    Err(bad("the signature does not verify"))
}

/// The key id from the second line: base64 of alg[2] ‖ keyid[8] ‖ sig[64].
fn key_id(text: &str) -> Option<[u8; 8]> {
    let line = text.lines().nth(1)?;
    let raw = B64.decode(line.trim_end_matches('\r')).ok()?;
    if raw.len() != 74 {
        return None;
    }
    raw[2..10].try_into().ok()
}

/// A configured key in minisign's public key encoding ("Ed" ‖ id ‖ key).
fn to_base64(k: &PublicKey) -> String {
    let mut raw = b"Ed".to_vec();
    raw.extend_from_slice(&k.keynum);
    raw.extend_from_slice(k.key.as_bytes());
    B64.encode(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::signify::pubkey_from_base64;

    // Made with `minisign -G -W` and `minisign -S -m SHA256` on this machine.
    const PUB: &str = "RWTY0RWjNcElWfyStd9P/p9KvIqqKZbHMHpW0b4f3vlUoRkSg6fipNtS";
    const LIST: &str = "SHA256 (policy.toml) = b3dbd5aee8fdb99d3feaab96088f7e99e89d6ce663ad3f95f169f641e5895fae\n\
SHA256 (anchors/open.nft) = a7569daef68e7aa91f0cc9856e2461c5cb2bd5494eaf28818c3e059972d987e5\n";
    const SIG: &str = "untrusted comment: signature from minisign secret key\n\
RUTY0RWjNcElWWRecO81BZguoqkskc4sSZffOKplJ2Y6cWDInGUUVpCPnVuf5lzbjzBHiz5T0Avth7/J/xzAR81YlPWT5POA2Qw=\n\
trusted comment: timestamp:1795317429\tfile:SHA256\thashed\n\
YtVqovXVb49VjDF1cgFECGUqHIYaxyE6LzrgornsMtX022goFhGhYlPIz0qdOaIx0R6DEecPn12AtZnIzS2wBg==\n";

    #[test]
    fn real_minisig() {
        let k = pubkey_from_base64(PUB).unwrap();
        let keys = [k];
        verify(LIST.as_bytes(), SIG.as_bytes(), &keys).unwrap();
        let tampered = LIST.replace("b3db", "b3dc");
        let r = verify(tampered.as_bytes(), SIG.as_bytes(), &keys).unwrap_err();
        assert_eq!(r.reason(), "bad-signature");
        let other =
            pubkey_from_base64("RWTPo9VtkgMZXkmaiJiNH0W7G7FRJpPa+H5u7ugiJib/c+4TBgqD1mK9").unwrap();
        let r = verify(LIST.as_bytes(), SIG.as_bytes(), &[other]).unwrap_err();
        assert_eq!(r.reason(), "unknown-signer");
        let r = verify(LIST.as_bytes(), b"garbage", &keys).unwrap_err();
        assert_eq!(r.reason(), "bad-signature");
        // Found by tests/differential.rs: `minisign -V` refuses these.
        for first in [
            "",
            " untrusted comment: x",
            "untrusted comment:x",
            "untrusted: x",
        ] {
            let sig = SIG.replacen(
                "untrusted comment: signature from minisign secret key",
                first,
                1,
            );
            let r = verify(LIST.as_bytes(), sig.as_bytes(), &keys).unwrap_err();
            assert_eq!(r.reason(), "bad-signature", "{first:?}");
        }
    }
}
