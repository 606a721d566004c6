//! The lockdown ladder's last rung (DESIGN §5): when no firewall step
//! holds, the link's WireGuard peer is removed, which ends every session
//! through it at once. "Works" is the read-back: the peer is gone from the
//! interface. qkdpfd never re-creates a peer (it would not know its
//! endpoint and allowed IPs, and the project never creates peers): the
//! operator restores it once the firewall is repaired, and a restored peer
//! is seen by the same read-back.

use crate::parent::wg::{Peers, SharedBackend, WgError};

pub struct Tunnel {
    wg: SharedBackend,
    /// Links with a configured WireGuard peer (every keyed link has one).
    peers: Peers,
}

impl Tunnel {
    pub fn new(wg: SharedBackend, peers: Peers) -> Tunnel {
        Tunnel { wg, peers }
    }

    pub fn has_peer(&self, link: &str) -> bool {
        self.peers.position(link).is_some()
    }

    /// Removes the link's peer and reads back that it is gone.
    pub fn cut(&self, link: &str) -> Result<(), String> {
        let peer = self.peers.get(link).ok_or("no WireGuard peer configured")?;
        let mut wg = self.wg.lock().unwrap_or_else(|e| e.into_inner());
        wg.remove_peer(peer).map_err(|e| e.to_string())
    }

    /// Whether the link's peer is (still, or again) on the interface;
    /// Err when the interface cannot be read.
    pub fn present(&self, link: &str) -> Result<bool, String> {
        let Some(peer) = self.peers.get(link) else {
            return Ok(false);
        };
        let mut wg = self.wg.lock().unwrap_or_else(|e| e.into_inner());
        match wg.get_psk(peer) {
            Ok(_) => Ok(true),
            Err(WgError::NoSuchPeer) => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }
}
