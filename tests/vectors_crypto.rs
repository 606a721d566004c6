//! Wycheproof vectors (tests/vectors/wycheproof/, README there names the
//! source) through the primitives qkdpfd relies on, called the way it calls
//! them: Ed25519 `verify_strict` (signify bundles, minisign keys, the peer
//! protocol), HKDF-SHA256 and HMAC-SHA256 (`proto::peer::crypto`).
//! FUZZING.md, "Crypto vectors", has the counts and decisions.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, VerifyingKey};
use hmac::{Hmac, Mac};
use qkdpfd::policy::{PublicKey, signify};
use serde_json::Value;
use sha2::Sha256;

/// Straight to fd 2: the harness would swallow eprintln! of a passing test.
fn say(line: String) {
    let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("{line}\n").as_bytes());
}

fn load(name: &str) -> Value {
    let path = format!(
        "{}/tests/vectors/wycheproof/{name}_test.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn bytes(v: &Value) -> Vec<u8> {
    let s = v.as_str().expect("a hex string");
    assert!(s.len() % 2 == 0, "odd hex {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Every test of every group, with its group; checks the declared count.
fn tests(v: &Value) -> Vec<(&Value, &Value)> {
    let mut out = Vec::new();
    for g in v["testGroups"].as_array().unwrap() {
        for t in g["tests"].as_array().unwrap() {
            out.push((g, t));
        }
    }
    assert_eq!(out.len() as u64, v["numberOfTests"].as_u64().unwrap());
    assert!(!out.is_empty());
    out
}

/// `true` for "valid"; "invalid" is `false`; anything else ("acceptable")
/// needs a decision recorded in FUZZING.md, so it fails here.
fn expected(t: &Value) -> bool {
    match t["result"].as_str().unwrap() {
        "valid" => true,
        "invalid" => false,
        other => panic!("tcId {}: result {other} has no decision", t["tcId"]),
    }
}

/// A `signify -S -e` file carrying `sig` over `msg` by key number 1.
fn signify_file(sig: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut raw = b"Ed".to_vec();
    raw.extend_from_slice(&[1; 8]);
    raw.extend_from_slice(sig);
    let mut out = format!("untrusted comment: wycheproof\n{}\n", B64.encode(raw)).into_bytes();
    out.extend_from_slice(msg);
    out
}

#[test]
fn ed25519_verify_strict() {
    let v = load("ed25519");
    let (mut valid, mut invalid) = (0, 0);
    for (g, t) in tests(&v) {
        let pk: [u8; 32] = bytes(&g["publicKey"]["pk"]).try_into().unwrap();
        let msg = bytes(&t["msg"]);
        let sig = bytes(&t["sig"]);
        let want = expected(t);
        let id = &t["tcId"];
        // The primitive, as peer.rs and signify.rs call it.
        let direct = VerifyingKey::from_bytes(&pk).is_ok_and(|vk| {
            <[u8; 64]>::try_from(sig.as_slice())
                .is_ok_and(|s| vk.verify_strict(&msg, &Signature::from_bytes(&s)).is_ok())
        });
        assert_eq!(direct, want, "tcId {id} ({}): verify_strict", t["comment"]);
        // Our own path: a signify file parsed and verified against a key.
        let ours = VerifyingKey::from_bytes(&pk).is_ok_and(|key| {
            let file = signify_file(&sig, &msg);
            let keys = [PublicKey {
                keynum: [1; 8],
                key,
                path: "wycheproof".into(),
            }];
            signify::parse_embedded(&file)
                .and_then(|emb| signify::verify_embedded(&emb, &keys).map(|_| ()))
                .is_ok()
        });
        assert_eq!(ours, want, "tcId {id}: signify::verify_embedded");
        match want {
            true => valid += 1,
            false => invalid += 1,
        }
    }
    say(format!(
        "ed25519: {valid} valid accepted, {invalid} invalid refused"
    ));
    assert!(valid > 0 && invalid > 0);
}

#[test]
fn hkdf_sha256() {
    let v = load("hkdf_sha256");
    let (mut valid, mut invalid) = (0, 0);
    for (_, t) in tests(&v) {
        let (ikm, salt, info) = (bytes(&t["ikm"]), bytes(&t["salt"]), bytes(&t["info"]));
        let size = t["size"].as_u64().unwrap() as usize;
        let mut okm = vec![0u8; size];
        // As crypto::derive: salt given, then one expand.
        let r = hkdf::Hkdf::<Sha256>::new(Some(&salt), &ikm).expand(&info, &mut okm);
        let id = &t["tcId"];
        if expected(t) {
            r.unwrap_or_else(|e| panic!("tcId {id}: {e}"));
            assert_eq!(okm, bytes(&t["okm"]), "tcId {id}");
            valid += 1;
        } else {
            assert!(r.is_err(), "tcId {id}: size {size} accepted");
            invalid += 1;
        }
    }
    say(format!(
        "hkdf-sha256: {valid} valid matched, {invalid} invalid refused"
    ));
    assert!(valid > 0 && invalid > 0);
}

#[test]
fn hmac_sha256() {
    let v = load("hmac_sha256");
    let (mut valid, mut invalid, mut full) = (0, 0, 0);
    for (g, t) in tests(&v) {
        let (key, msg, tag) = (bytes(&t["key"]), bytes(&t["msg"]), bytes(&t["tag"]));
        let tag_bits = g["tagSize"].as_u64().unwrap() as usize;
        assert_eq!(tag.len() * 8, tag_bits, "tcId {}", t["tcId"]);
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key size");
        mac.update(&msg);
        let ok = match tag.len() {
            // As crypto::check_tag: the whole tag, constant time.
            32 => {
                full += 1;
                mac.verify_slice(&tag).is_ok()
            }
            // Truncated tags: compare the leading bytes.
            n => mac.finalize().into_bytes()[..n] == tag[..],
        };
        assert_eq!(ok, expected(t), "tcId {}", t["tcId"]);
        match ok {
            true => valid += 1,
            false => invalid += 1,
        }
    }
    say(format!(
        "hmac-sha256: {valid} valid matched, {invalid} invalid refused ({full} full-length)"
    ));
    assert!(valid > 0 && invalid > 0 && full > 0);
}
