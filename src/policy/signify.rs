//! signify(1) keys and embedded signatures, and the signed `SHA256` list
//! (reference/openbsd.md, "signify"). Used by the parent and `qkdctl`.
//!
//! Public keys are read from the paths the config names; signatures and
//! lists come from untrusted bundles and are parsed strictly.

use super::bundle::check_name;
use super::reject::{Reject, printable};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, VerifyingKey};
use std::collections::BTreeMap;
use std::path::Path;

/// The algorithm tag of signify and minisign Ed25519 keys and signatures.
const PKALG: &[u8; 2] = b"Ed";
const COMMENT: &str = "untrusted comment: ";
/// Longest accepted comment line (signify writes up to 1024).
const MAX_COMMENT: usize = 1024;

/// The signature files that may exist outside the signed list.
pub const SIG_FILE: &str = "SHA256.sig";
pub const LIST_FILE: &str = "SHA256";
pub const MINISIG_FILE: &str = "SHA256.minisig";

/// An Ed25519 public key from a signify or minisign `.pub` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    /// signify's keynum, minisign's key id: which key made a signature.
    pub keynum: [u8; 8],
    pub key: VerifyingKey,
    /// Where it was read from (names the signer in logs).
    pub path: String,
}

impl PublicKey {
    /// The key id as minisign prints it (`5925C135A315D1D8`).
    pub fn keynum_hex(&self) -> String {
        keynum_hex(&self.keynum)
    }
}

/// minisign shows the 8 id bytes as a little-endian number in hex.
pub fn keynum_hex(k: &[u8; 8]) -> String {
    k.iter().rev().map(|b| format!("{b:02X}")).collect()
}

/// Reads a `.pub` file.
pub fn read_pubkey(path: &Path) -> Result<PublicKey, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut key = parse_pubkey(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    key.path = path.display().to_string();
    Ok(key)
}

/// Parses the text of a `.pub` file: an `untrusted comment:` line, then
/// base64 of "Ed" ‖ keynum ‖ key. Extra lines are refused (a secret key
/// file pasted by mistake must not pass).
pub fn parse_pubkey(text: &str) -> Result<PublicKey, String> {
    pubkey_from_base64(key_line(text)?)
}

/// The base64 line of a signify key file (public or secret): an
/// `untrusted comment:` line, the key line, and nothing else.
pub fn key_line(text: &str) -> Result<&str, String> {
    let mut lines = text.lines();
    if !lines.next().unwrap_or("").starts_with(COMMENT) {
        return Err("expected a first line starting with \"untrusted comment: \"".into());
    }
    let b64 = lines
        .next()
        .ok_or("expected a base64 key line after the comment")?;
    if lines.any(|l| !l.trim().is_empty()) {
        return Err("unexpected text after the key line".into());
    }
    Ok(b64)
}

/// Parses the key line alone (`RWS…`, as `peer_pubkey` in qkdpfd.conf).
pub fn pubkey_from_base64(line: &str) -> Result<PublicKey, String> {
    let raw = B64
        .decode(line.trim_end_matches('\r'))
        .map_err(|_| "the key line is not valid base64")?;
    if raw.len() != 42 || &raw[..2] != PKALG {
        return Err("not an Ed25519 signify/minisign public key".into());
    }
    let keynum: [u8; 8] = raw[2..10].try_into().expect("8 bytes");
    let bytes: [u8; 32] = raw[10..].try_into().expect("32 bytes");
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| "not a valid Ed25519 point")?;
    Ok(PublicKey {
        keynum,
        key,
        path: String::new(),
    })
}

/// A parsed `signify -S -e` file.
pub struct Embedded<'a> {
    pub keynum: [u8; 8],
    pub sig: Signature,
    /// The signed message, byte for byte (the SHA256 list).
    pub message: &'a [u8],
}

/// Splits `SHA256.sig` into signature and embedded message.
pub fn parse_embedded(data: &[u8]) -> Result<Embedded<'_>, Reject> {
    let bad = |m: &str| Reject::bad_sig(SIG_FILE, m);
    let (comment, rest) = split_line(data).ok_or_else(|| bad("no comment line"))?;
    if !comment.starts_with(COMMENT.as_bytes()) || comment.len() > MAX_COMMENT {
        return Err(bad("the first line is not an untrusted comment"));
    }
    // As signify -C: some text after the prefix, and no NUL (signify reads
    // the line as a C string and then finds no end of line).
    if comment.len() == COMMENT.len() || comment.contains(&0) {
        return Err(bad("the untrusted comment is empty or holds a NUL byte"));
    }
    let (line, message) = split_line(rest).ok_or_else(|| bad("no signature line"))?;
    let raw = B64
        .decode(line)
        .map_err(|_| bad("the signature line is not valid base64"))?;
    if raw.len() != 74 || &raw[..2] != PKALG {
        return Err(bad("not an Ed25519 signify signature"));
    }
    let keynum: [u8; 8] = raw[2..10].try_into().expect("8 bytes");
    let sig = Signature::from_bytes(&raw[10..].try_into().expect("64 bytes"));
    Ok(Embedded {
        keynum,
        sig,
        message,
    })
}

/// Checks an embedded signature against the configured keys; returns the
/// signer's key.
pub fn verify_embedded<'k>(
    emb: &Embedded<'_>,
    keys: &'k [PublicKey],
) -> Result<&'k PublicKey, Reject> {
    let candidates: Vec<&PublicKey> = keys.iter().filter(|k| k.keynum == emb.keynum).collect();
    if candidates.is_empty() {
        return Err(Reject::UnknownSigner {
            file: SIG_FILE.into(),
            keynum: keynum_hex(&emb.keynum),
        });
    }
    candidates
        .into_iter()
        .find(|k| k.key.verify_strict(emb.message, &emb.sig).is_ok())
        .ok_or_else(|| Reject::bad_sig(SIG_FILE, "the signature does not verify"))
}

fn split_line(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = data.iter().position(|&b| b == b'\n')?;
    Some((&data[..i], &data[i + 1..]))
}

/// The signed list: name → SHA-256.
pub type List = BTreeMap<String, [u8; 32]>;

/// Parses `SHA256 (name) = <64 lowercase hex>` lines (`sha256sum --tag`,
/// OpenBSD `sha256 -h`). Every line ends in `\n`; no blank lines, no
/// duplicates, no signature files, names as in the bundle.
pub fn parse_list(msg: &[u8]) -> Result<List, Reject> {
    let text = std::str::from_utf8(msg).map_err(|_| Reject::BadList {
        line: 0,
        msg: "the signed list is not UTF-8".into(),
    })?;
    if text.is_empty() {
        return Err(Reject::BadList {
            line: 0,
            msg: "the signed list is empty".into(),
        });
    }
    if !text.ends_with('\n') {
        return Err(Reject::BadList {
            line: text.lines().count(),
            msg: "the last line does not end with a newline".into(),
        });
    }
    let mut list = List::new();
    for (i, line) in text.lines().enumerate() {
        let bad = |msg: String| Reject::BadList { line: i + 1, msg };
        let (name, digest) = parse_list_line(line).map_err(bad)?;
        if [SIG_FILE, LIST_FILE, MINISIG_FILE].contains(&name) {
            return Err(bad(format!("{name} may not be listed")));
        }
        if list.insert(name.to_string(), digest).is_some() {
            return Err(bad(format!("{name} is listed twice")));
        }
    }
    Ok(list)
}

fn parse_list_line(line: &str) -> Result<(&str, [u8; 32]), String> {
    let expected = || {
        format!(
            "expected \"SHA256 (name) = <64 hex digits>\", found \"{}\"",
            printable(line)
        )
    };
    let rest = line.strip_prefix("SHA256 (").ok_or_else(expected)?;
    let (name, hex) = rest.rsplit_once(") = ").ok_or_else(expected)?;
    check_name(name).map_err(|r| r.to_string())?;
    let digest = parse_hex32(hex).ok_or_else(expected)?;
    Ok((name, digest))
}

/// 64 lowercase hex digits (what signify -C compares against).
pub fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    let b = hex.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = nib(b[2 * i])? << 4 | nib(b[2 * i + 1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn keypair(keynum: [u8; 8]) -> (SigningKey, PublicKey) {
        let sk = SigningKey::from_bytes(&[7u8; 32]);
        let mut raw = b"Ed".to_vec();
        raw.extend_from_slice(&keynum);
        raw.extend_from_slice(sk.verifying_key().as_bytes());
        let text = format!("untrusted comment: test\n{}\n", B64.encode(&raw));
        (sk, parse_pubkey(&text).unwrap())
    }

    fn embedded(sk: &SigningKey, keynum: [u8; 8], msg: &[u8]) -> Vec<u8> {
        let mut raw = b"Ed".to_vec();
        raw.extend_from_slice(&keynum);
        raw.extend_from_slice(&sk.sign(msg).to_bytes());
        let mut out = format!(
            "untrusted comment: verify with k.pub\n{}\n",
            B64.encode(&raw)
        )
        .into_bytes();
        out.extend_from_slice(msg);
        out
    }

    #[test]
    fn real_signify_pubkey() {
        let k = parse_pubkey(
            "untrusted comment: signify public key\n\
             RWTPo9VtkgMZXkmaiJiNH0W7G7FRJpPa+H5u7ugiJib/c+4TBgqD1mK9\n",
        )
        .unwrap();
        assert_eq!(k.keynum, [0xcf, 0xa3, 0xd5, 0x6d, 0x92, 0x03, 0x19, 0x5e]);
        assert!(parse_pubkey("RWTPo9VtkgMZXkmaiJiNH0W7G7FRJpPa+H5u7ugiJib/c+4TBgqD1mK9").is_err());
        assert!(parse_pubkey("untrusted comment: x\nRWTPo9Vtkg\n").is_err());
    }

    #[test]
    fn minisign_keynum_hex() {
        let k =
            pubkey_from_base64("RWTY0RWjNcElWfyStd9P/p9KvIqqKZbHMHpW0b4f3vlUoRkSg6fipNtS").unwrap();
        assert_eq!(k.keynum_hex(), "5925C135A315D1D8");
    }

    #[test]
    fn embedded_round_trip() {
        let (sk, pk) = keypair([1; 8]);
        let msg = b"SHA256 (policy.toml) = 00\n";
        let sig = embedded(&sk, [1; 8], msg);
        let emb = parse_embedded(&sig).unwrap();
        assert_eq!(emb.message, msg);
        assert!(verify_embedded(&emb, std::slice::from_ref(&pk)).is_ok());

        let mut tampered = sig.clone();
        *tampered.last_mut().unwrap() = b'x';
        let emb = parse_embedded(&tampered).unwrap();
        let r = verify_embedded(&emb, std::slice::from_ref(&pk)).unwrap_err();
        assert_eq!(r.reason(), "bad-signature");

        // Found by tests/differential.rs: signify -C refuses these comments.
        let good = b"untrusted comment: verify with k.pub\n";
        for comment in [&b"untrusted comment: \n"[..], b"untrusted comment: a\0b\n"] {
            let mut s = comment.to_vec();
            s.extend_from_slice(&sig[good.len()..]);
            let r = parse_embedded(&s).map(|_| ()).unwrap_err();
            assert_eq!(r.reason(), "bad-signature", "{comment:?}");
        }

        let other = embedded(&sk, [2; 8], msg);
        let r = verify_embedded(&parse_embedded(&other).unwrap(), &[pk]).unwrap_err();
        assert_eq!(r.reason(), "unknown-signer");
        assert!(r.to_string().contains("not signed by any configured key"));
    }

    #[test]
    fn list_lines() {
        let d = "ab".repeat(32);
        let ok = format!("SHA256 (policy.toml) = {d}\nSHA256 (anchors/open.nft) = {d}\n");
        let l = parse_list(ok.as_bytes()).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l["policy.toml"], [0xab; 32]);
        let bad = [
            String::new(),
            format!("SHA256 (a) = {d}"),
            format!("SHA256 (a) = {d}\nSHA256 (a) = {d}\n"),
            format!("SHA256 (a) = {}\n", d.to_uppercase()),
            format!("SHA512 (a) = {d}\n"),
            format!("SHA256 (../a) = {d}\n"),
            format!("SHA256 (SHA256.sig) = {d}\n"),
            format!("SHA256 (a) = {d}\n\n"),
            format!("SHA256 (a)= {d}\n"),
            format!("SHA256 (a) = {d}0\n"),
        ];
        for b in bad {
            assert_eq!(
                parse_list(b.as_bytes()).unwrap_err().reason(),
                "bad-list",
                "{b:?}"
            );
        }
    }
}
