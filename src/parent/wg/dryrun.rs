//! dry-run WireGuard backend (DESIGN §5), run by the privileged parent when
//! the config says `[wireguard] backend = "dry-run"`: for demos, benchmarks
//! and hosts whose tunnels must not change. It touches only
//! `<state_dir>/dry-run/wg-<if>.psk-fp`, which it rewrites atomically with
//! one line `<peer public key, base64> <PSK fingerprint>` per peer it was
//! asked to set on that interface. The key itself stays in memory (for
//! get_psk) and never reaches the file. Every peer "exists" with no PSK
//! (all zero) until it is set, as on a freshly configured interface. There
//! is no interface, so no own public key either: a dry-run link names it
//! in the config (`wg_pubkey`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{PeerConfig, WgBackend, WgError, WgPeer, check_ifname};
use crate::log;
use crate::parent::fw::dryrun::write_atomic;
use crate::secret::Psk;

pub struct DryRun {
    dir: PathBuf,
    /// (interface, peer public key) -> PSK. One flat map: a hub has an
    /// interface per link, and a map per interface cost a B-tree node of
    /// 700 bytes for its one peer.
    psks: BTreeMap<(String, [u8; 32]), Psk>,
    /// Peers "removed" by the last rung of the lockdown ladder: gone for
    /// every later call, as on a real interface.
    removed: std::collections::BTreeSet<(String, [u8; 32])>,
    /// Peers "re-created": a dry run's peer handshakes at once, so each
    /// later look finds a handshake of that moment.
    recreated: std::collections::BTreeSet<(String, [u8; 32])>,
}

impl DryRun {
    pub fn new(state_dir: &Path) -> DryRun {
        DryRun {
            dir: state_dir.join("dry-run"),
            psks: BTreeMap::new(),
            removed: Default::default(),
            recreated: Default::default(),
        }
    }

    /// The fingerprint file of one interface.
    pub fn path(&self, ifname: &str) -> PathBuf {
        self.dir.join(format!("wg-{ifname}.psk-fp"))
    }

    fn write(&self, ifname: &str) -> Result<(), WgError> {
        let mut text = String::new();
        let on_if = (ifname.to_string(), [0; 32])..=(ifname.to_string(), [0xff; 32]);
        for ((_, pk), psk) in self.psks.range(on_if) {
            let peer = WgPeer {
                interface: ifname.to_string(),
                public_key: *pk,
            };
            text += &format!("{} {}\n", peer.public_b64(), psk.fingerprint());
        }
        let path = self.path(ifname);
        std::fs::create_dir_all(&self.dir)
            .and_then(|_| write_atomic(&path, text.as_bytes()))
            .map_err(|e| WgError::Io(format!("dry-run: cannot write {}: {e}", path.display())))
    }
}

impl WgBackend for DryRun {
    fn name(&self) -> &'static str {
        "dry-run"
    }

    fn set_psk(&mut self, peer: &WgPeer, psk: &Psk) -> Result<(), WgError> {
        check_ifname(&peer.interface)?;
        self.present(peer)?;
        let key = (peer.interface.clone(), peer.public_key);
        let old = self.psks.insert(key.clone(), psk.clone());
        if let Err(e) = self.write(&peer.interface) {
            // The file is what a dry run shows: keep memory equal to it.
            match old {
                Some(o) => self.psks.insert(key, o),
                None => self.psks.remove(&key),
            };
            return Err(e);
        }
        log::debug(format!(
            "dry-run: would set the PSK of peer {} on {} (fp {})",
            peer.public_b64(),
            peer.interface,
            psk.fingerprint()
        ));
        Ok(())
    }

    fn get_psk(&mut self, peer: &WgPeer) -> Result<Psk, WgError> {
        check_ifname(&peer.interface)?;
        self.present(peer)?;
        Ok(self
            .psks
            .get(&(peer.interface.clone(), peer.public_key))
            .cloned()
            .unwrap_or_else(|| Psk::from_bytes([0; 32])))
    }

    fn public_key(&mut self, interface: &str) -> Result<[u8; 32], WgError> {
        check_ifname(interface)?;
        Err(WgError::Protocol(
            "dry-run has no interface: set wg_pubkey for the link".into(),
        ))
    }

    fn remove_peer(&mut self, peer: &WgPeer) -> Result<(), WgError> {
        check_ifname(&peer.interface)?;
        self.removed
            .insert((peer.interface.clone(), peer.public_key));
        self.psks.remove(&(peer.interface.clone(), peer.public_key));
        log::warn(format!(
            "dry-run: would remove peer {} from {}",
            peer.public_b64(),
            peer.interface
        ));
        self.write(&peer.interface)
    }

    fn new_session(&mut self, peer: &WgPeer, keepalive: u16) -> Result<PeerConfig, WgError> {
        let psk = self.get_psk(peer)?;
        log::debug(format!(
            "dry-run: would re-create peer {} on {} with keepalive {keepalive} for a new session",
            peer.public_b64(),
            peer.interface
        ));
        Ok(PeerConfig {
            psk,
            endpoint: None,
            allowed_ips: Vec::new(),
            keepalive: 0,
        })
        .inspect(|_| {
            self.recreated
                .insert((peer.interface.clone(), peer.public_key));
        })
    }

    fn last_handshake(&mut self, peer: &WgPeer) -> Result<Option<std::time::SystemTime>, WgError> {
        self.get_psk(peer)?;
        let key = (peer.interface.clone(), peer.public_key);
        Ok(self
            .recreated
            .contains(&key)
            .then(std::time::SystemTime::now))
    }
}

impl DryRun {
    fn present(&self, peer: &WgPeer) -> Result<(), WgError> {
        match self
            .removed
            .contains(&(peer.interface.clone(), peer.public_key))
        {
            true => Err(WgError::NoSuchPeer),
            false => Ok(()),
        }
    }
}

impl std::fmt::Debug for DryRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DryRun({})", self.dir.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_fingerprints_not_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let mut d = DryRun::new(tmp.path());
        let a = WgPeer {
            interface: "wg0".into(),
            public_key: [1; 32],
        };
        let b = WgPeer {
            public_key: [2; 32],
            ..a.clone()
        };
        assert_eq!(d.get_psk(&a).unwrap().expose(), &[0; 32]);
        let ka = Psk::from_bytes([0x41; 32]);
        let kb = Psk::from_bytes([0x42; 32]);
        d.set_psk(&a, &ka).unwrap();
        d.set_psk(&b, &kb).unwrap();
        assert_eq!(d.get_psk(&a).unwrap(), ka);
        assert_eq!(d.get_psk(&b).unwrap(), kb);
        let text = std::fs::read_to_string(tmp.path().join("dry-run/wg-wg0.psk-fp")).unwrap();
        assert_eq!(
            text,
            format!(
                "{} {}\n{} {}\n",
                a.public_b64(),
                ka.fingerprint(),
                b.public_b64(),
                kb.fingerprint()
            )
        );
        assert!(!text.contains("QUFB") && !text.contains("4141"));
        assert!(format!("{d:?}").starts_with("DryRun("));
        // Each interface's file names its own peers only ("wg0" sorts
        // before "wg00" and "wg1": neither may leak into wg0's file).
        for ifname in ["wg00", "wg1"] {
            let c = WgPeer {
                interface: ifname.into(),
                public_key: [0; 32],
            };
            d.set_psk(&c, &Psk::from_bytes([0x43; 32])).unwrap();
            let theirs =
                std::fs::read_to_string(tmp.path().join(format!("dry-run/wg-{ifname}.psk-fp")))
                    .unwrap();
            assert_eq!(theirs.lines().count(), 1, "{ifname}");
        }
        let again = std::fs::read_to_string(tmp.path().join("dry-run/wg-wg0.psk-fp")).unwrap();
        assert_eq!(again, text);
        d.set_psk(&a, &ka).unwrap();
        let again = std::fs::read_to_string(tmp.path().join("dry-run/wg-wg0.psk-fp")).unwrap();
        assert_eq!(again, text, "rewritten with its two peers only");
    }

    #[test]
    fn public_key_asks_for_the_config_override() {
        let tmp = tempfile::tempdir().unwrap();
        let mut d = DryRun::new(tmp.path());
        let e = d.public_key("wg0").unwrap_err();
        assert_eq!(
            e,
            WgError::Protocol("dry-run has no interface: set wg_pubkey for the link".into())
        );
        assert!(e.to_string().contains("wg_pubkey"));
        assert!(!tmp.path().join("dry-run").exists());
    }

    #[test]
    fn failed_write_keeps_the_old_psk() {
        let tmp = tempfile::tempdir().unwrap();
        // A file where the dry-run directory should be.
        std::fs::write(tmp.path().join("dry-run"), b"").unwrap();
        let mut d = DryRun::new(tmp.path());
        let p = WgPeer {
            interface: "wg0".into(),
            public_key: [1; 32],
        };
        assert!(matches!(
            d.set_psk(&p, &Psk::from_bytes([3; 32])),
            Err(WgError::Io(_))
        ));
        assert_eq!(d.get_psk(&p).unwrap().expose(), &[0; 32]);
    }
}
