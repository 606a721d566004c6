//! Recomputes the published peer-protocol vectors (tests/vectors/peer-v1.json,
//! made by an independent Python implementation) with qkdpfd's own code.

use ed25519_dalek::SigningKey;
use qkdpfd::proto::peer::{self, Body, KeyId, Keyring, Message};
use qkdpfd::secret::QkdKey;
use serde_json::Value;

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/peer-v1.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd hex");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn arr<const N: usize>(v: &Value) -> [u8; N] {
    unhex(v.as_str().unwrap()).try_into().unwrap()
}

struct Case {
    i: Value,
    o: Value,
}

impl Case {
    fn load() -> Case {
        let v = vectors();
        assert!(v["description"].as_array().is_some_and(|d| !d.is_empty()));
        Case {
            i: v["inputs"].clone(),
            o: v["outputs"].clone(),
        }
    }
    fn s(&self, k: &str) -> &str {
        self.i[k].as_str().unwrap()
    }
    fn out(&self, k: &str) -> Vec<u8> {
        unhex(self.o[k].as_str().unwrap())
    }
    fn link_id(&self) -> peer::LinkId {
        peer::link_id(
            self.s("master_sae_id"),
            self.s("slave_sae_id"),
            &arr(&self.i["master_wg_pubkey"]),
            &arr(&self.i["slave_wg_pubkey"]),
        )
        .unwrap()
    }
    fn epoch(&self) -> u64 {
        self.i["epoch"].as_u64().unwrap()
    }
    fn key_id(&self) -> KeyId {
        KeyId::new(self.s("key_id")).unwrap()
    }
    fn keys(&self) -> (SigningKey, SigningKey) {
        (
            SigningKey::from_bytes(&arr(&self.i["master_ed25519_seed"])),
            SigningKey::from_bytes(&arr(&self.i["slave_ed25519_seed"])),
        )
    }
    fn message(&self, from_master: bool, body: Body) -> Message {
        let (m, s) = self.keys();
        let (m, s) = (m.verifying_key().to_bytes(), s.verifying_key().to_bytes());
        Message {
            link_id: self.link_id(),
            sender: if from_master { m } else { s },
            receiver: if from_master { s } else { m },
            epoch: self.epoch(),
            nonce: arr(&self.i["nonce"]),
            key_id: self.key_id(),
            body,
        }
    }
}

#[test]
fn link_id_matches() {
    let c = Case::load();
    assert_eq!(c.link_id().0.to_vec(), c.out("link_id"));
}

#[test]
fn kdf_matches() {
    let c = Case::load();
    let key = QkdKey::new(unhex(c.s("qkd_key")));
    let (psk, ck) = peer::derive(&key, &c.link_id(), c.epoch(), &c.key_id()).unwrap();
    assert_eq!(psk.expose().to_vec(), c.out("psk"));
    assert_eq!(ck.expose().to_vec(), c.out("confirm_key"));
    // The info string as documented.
    let mut info = peer::KDF_INFO.to_vec();
    info.extend_from_slice(&c.epoch().to_be_bytes());
    info.extend_from_slice(c.key_id().as_bytes());
    assert_eq!(info, c.out("hkdf_info"));
}

#[test]
fn tag_matches() {
    let c = Case::load();
    let key = QkdKey::new(unhex(c.s("qkd_key")));
    let (_, ck) = peer::derive(&key, &c.link_id(), c.epoch(), &c.key_id()).unwrap();
    let nonce = arr(&c.i["nonce"]);
    let tag = peer::confirm_tag(&ck, &c.link_id(), c.epoch(), &nonce, &c.key_id());
    assert_eq!(tag.to_vec(), c.out("tag"));
    let t: [u8; 32] = c.out("tag").try_into().unwrap();
    assert!(peer::check_tag(
        &ck,
        &c.link_id(),
        c.epoch(),
        &nonce,
        &c.key_id(),
        &t
    ));
}

#[test]
fn datagrams_match_and_open() {
    let c = Case::load();
    let (mk, sk) = c.keys();
    assert_eq!(
        mk.verifying_key().to_bytes().to_vec(),
        c.out("master_ed25519_pubkey")
    );
    assert_eq!(
        sk.verifying_key().to_bytes().to_vec(),
        c.out("slave_ed25519_pubkey")
    );
    let tag: [u8; 32] = c.out("tag").try_into().unwrap();
    let last = c.i["nack_last"].as_u64().unwrap();
    let cases = [
        ("offer", true, Body::Offer),
        ("confirm", false, Body::Confirm { tag }),
        ("nack", false, Body::Nack { last }),
    ];
    let mut at_slave = Keyring::new(&sk.verifying_key());
    at_slave.add_link(c.link_id(), mk.verifying_key());
    let mut at_master = Keyring::new(&mk.verifying_key());
    at_master.add_link(c.link_id(), sk.verifying_key());
    for (name, from_master, body) in cases {
        let m = c.message(from_master, body);
        let (key, ring) = if from_master {
            (&mk, &at_slave)
        } else {
            (&sk, &at_master)
        };
        let wire = c.out(name);
        assert_eq!(m.encode(key), wire, "{name} encoding");
        assert_eq!(ring.open(&wire), Ok(m), "{name} decoding");
    }
}
