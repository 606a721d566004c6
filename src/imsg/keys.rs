//! The key-agreement part of the fd-3 vocabulary (DESIGN §2, §6): what the
//! parent hands the engine so it can run rounds (peering key, KME
//! credentials, per-link settings), and the two requests a round makes of
//! the parent — persist an epoch, install a PSK — with their answers.
//!
//! Every secret here (the peering key, the KME TLS keys, a PSK) sits in a
//! `Zeroizing` buffer and is left out of `Debug`; the frames that carry
//! them are zeroized by [`super::spawn_reader`] / [`super::spawn_writer`].

use crate::conf::Role;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use zeroize::Zeroizing;

/// `[peering]` as the engine needs it. The UDP socket itself is bound by
/// the parent and passed on fd 6 ([`crate::privsep::PEERING_FD`]).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeeringNet {
    /// The Ed25519 seed of the signify secret key `[peering] key`.
    #[serde(with = "super::bytes::secret32")]
    pub secret: Zeroizing<[u8; 32]>,
}

/// A `[kme.X]` with its TLS material read and its host resolved.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KmeNet {
    pub url: String,
    pub sae_id: String,
    #[serde(with = "super::bytes::vec")]
    pub ca: Vec<u8>,
    #[serde(with = "super::bytes::vec")]
    pub cert: Vec<u8>,
    #[serde(with = "super::bytes::secret")]
    pub key: Zeroizing<Vec<u8>>,
    pub addr: SocketAddr,
    /// enc_keys and dec_keys as GET (`[kme.X] method = "GET"`).
    pub get: bool,
    /// `kme_keys_low` below this stored_key_count (`[kme.X] keys_low`).
    pub keys_low: u64,
}

/// Key agreement of one link, checked and resolved by the parent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkKeys {
    /// Name of the `[kme.X]` section.
    pub kme: String,
    pub peer_sae_id: String,
    pub role: Role,
    /// The far qkdpfd (masters send there; slaves answer each datagram's source).
    pub peer: SocketAddr,
    /// Its Ed25519 peering public key.
    pub peer_pubkey: [u8; 32],
    /// DESIGN §6 link_id, computed by the parent from both SAE IDs and
    /// both WireGuard public keys (ours read from the interface).
    pub link_id: [u8; 32],
    /// The persisted epoch (master: last used; slave: last accepted).
    pub epoch: u64,
    /// Seconds since the PSK the state file proves was installed (its
    /// `installed_at`); `u64::MAX` when the wall clock is now before it.
    #[serde(default)]
    pub key_age_secs: Option<u64>,
}

/// Engine -> parent: make `epoch` durable for `link` (fsync) before the
/// round goes on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistEpoch {
    pub link: String,
    pub epoch: u64,
}

/// Engine -> parent: set `psk` on the link's WireGuard peer and read it back.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallPsk {
    pub link: String,
    pub epoch: u64,
    #[serde(with = "super::bytes::secret32")]
    pub psk: Zeroizing<[u8; 32]>,
}

/// Which request a [`KeyAck`] answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyStep {
    Persist,
    Install,
}

/// Parent -> engine: the answer to [`PersistEpoch`] or [`InstallPsk`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyAck {
    pub link: String,
    pub epoch: u64,
    pub step: KeyStep,
    /// None: done. Some: why not (a WireGuard reason such as
    /// `no-such-peer`, or the state file's error); never key material.
    pub error: Option<String>,
}

impl std::fmt::Debug for PeeringNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeeringNet { secret: <SECRET> }")
    }
}

impl std::fmt::Debug for KmeNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmeNet")
            .field("url", &self.url)
            .field("sae_id", &self.sae_id)
            .field("ca", &self.ca.len())
            .field("cert", &self.cert.len())
            .field("key", &"<SECRET>")
            .field("addr", &self.addr)
            .field("get", &self.get)
            .field("keys_low", &self.keys_low)
            .finish()
    }
}

impl std::fmt::Debug for InstallPsk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstallPsk")
            .field("link", &self.link)
            .field("epoch", &self.epoch)
            .field("psk", &"<SECRET>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_every_secret() {
        let p = PeeringNet {
            secret: Zeroizing::new([0xab; 32]),
        };
        let k = KmeNet {
            url: "https://kme:8443".into(),
            sae_id: "SAE-A".into(),
            ca: vec![1],
            cert: vec![2],
            key: Zeroizing::new(b"-----BEGIN PRIVATE KEY-----secret".to_vec()),
            addr: "127.0.0.1:8443".parse().unwrap(),
            get: false,
            keys_low: 10,
        };
        let i = InstallPsk {
            link: "dr".into(),
            epoch: 7,
            psk: Zeroizing::new([0xcd; 32]),
        };
        for d in [format!("{p:?}"), format!("{k:?}"), format!("{i:?}")] {
            assert!(d.contains("<SECRET>"), "{d}");
            for needle in ["171", "ab,", "205", "cd,", "begin", "private"] {
                assert!(!d.to_lowercase().contains(needle), "{needle} in {d}");
            }
        }
    }

    #[test]
    fn byte_fields_travel_as_base64_and_round_trip() {
        let pem =
            b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI\n-----END PRIVATE KEY-----\n"
                .repeat(100);
        let k = KmeNet {
            url: "https://kme:8443".into(),
            sae_id: "SAE-A".into(),
            ca: pem.clone(),
            cert: vec![],
            key: Zeroizing::new(pem.clone()),
            addr: "127.0.0.1:8443".parse().unwrap(),
            get: false,
            keys_low: 10,
        };
        let json = serde_json::to_string(&k).unwrap();
        // Not a JSON array of numbers, and about 4/3 of the bytes, not 3.5x.
        assert!(!json.contains("[45,"), "{}", &json[..200]);
        assert!(
            json.len() < pem.len() * 2 * 3 / 2,
            "{} for {}",
            json.len(),
            2 * pem.len()
        );
        let back: KmeNet = serde_json::from_str(&json).unwrap();
        assert!(back == k);
        let i = InstallPsk {
            link: "dr".into(),
            epoch: 7,
            psk: Zeroizing::new([0xcd; 32]),
        };
        let json = serde_json::to_string(&i).unwrap();
        let back: InstallPsk = serde_json::from_str(&json).unwrap();
        assert!(back == i);
        // A PSK of the wrong length is refused.
        let short = json.replace(
            &base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [0xcd; 32]),
            &base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [0xcd; 31]),
        );
        assert!(serde_json::from_str::<InstallPsk>(&short).is_err());
    }
}
