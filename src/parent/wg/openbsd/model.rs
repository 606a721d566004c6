//! A model of wg(4)'s SIOCSWG/SIOCGWG (if_wg.c 1.47 `wg_ioctl_set` and
//! `wg_ioctl_get`, OpenBSD facts W6-W19), for testing the backend's
//! sequence of calls where no wg(4) can run. It reads and writes the
//! structures by their OpenBSD layout, as the kernel does: peers applied
//! in order, a missing key created unless `REMOVE` or `UPDATE`, a size
//! too small answered with the size needed and nothing copied, and a
//! keepalive set on a peer without a session counted as the handshake it
//! starts. LP64 only, as the layout tests.

use std::mem::offset_of;

use super::peer::bytes;
use super::{
    AIP, IFACE, PEER, SIOCGWG, SIOCSWG, WG_INTERFACE_HAS_PUBLIC, WG_PEER_HAS_ENDPOINT,
    WG_PEER_HAS_PKA, WG_PEER_HAS_PSK, WG_PEER_HAS_PUBLIC, WG_PEER_REMOVE, WG_PEER_SET_DESCRIPTION,
    WG_PEER_UPDATE, WgAipIo, WgInterfaceIo, WgIoctl, WgPeerIo,
};
use crate::parent::wg::WgError;

#[derive(Clone)]
pub struct ModelPeer {
    pub public: [u8; 32],
    pub psk: [u8; 32],
    pub pka: u16,
    pub endpoint: [u8; 28],
    pub description: [u8; 64],
    pub aips: Vec<[u8; AIP]>,
    pub handshake: (i64, i64),
    /// Handshakes a keepalive set on this peer started (no session yet).
    pub initiations: u32,
}

impl Default for ModelPeer {
    fn default() -> ModelPeer {
        ModelPeer {
            public: [0; 32],
            psk: [0; 32],
            pka: 0,
            endpoint: [0; 28],
            description: [0; 64],
            aips: Vec::new(),
            handshake: (0, 0),
            initiations: 0,
        }
    }
}

#[derive(Default)]
pub struct Model {
    pub name: [u8; 16],
    pub public: [u8; 32],
    pub peers: Vec<ModelPeer>,
    /// SIOCSWG calls made.
    pub sets: u32,
    /// Drops every allowed IP a set adds: a kernel that does not do what
    /// it was asked, for the read-back to catch.
    pub lose_aips: bool,
}

fn ne<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    bytes(b, at).expect("in the request")
}

impl Model {
    fn find(&mut self, key: &[u8; 32]) -> Option<usize> {
        self.peers.iter().position(|p| &p.public == key)
    }

    fn set(&mut self, b: &[u8]) {
        self.sets += 1;
        let count = usize::from_ne_bytes(ne(b, offset_of!(WgInterfaceIo, i_peers_count)));
        let mut at = IFACE;
        for _ in 0..count {
            let h = &b[at..at + PEER];
            let flags = i32::from_ne_bytes(ne(h, offset_of!(WgPeerIo, p_flags)));
            let key: [u8; 32] = ne(h, offset_of!(WgPeerIo, p_public));
            let n = usize::from_ne_bytes(ne(h, offset_of!(WgPeerIo, p_aips_count)));
            let aips = &b[at + PEER..at + PEER + n * AIP];
            at += PEER + n * AIP;
            if flags & WG_PEER_HAS_PUBLIC == 0 {
                continue;
            }
            let i = match self.find(&key) {
                Some(i) => i,
                None if flags & (WG_PEER_REMOVE | WG_PEER_UPDATE) != 0 => continue,
                None => {
                    self.peers.push(ModelPeer {
                        public: key,
                        ..ModelPeer::default()
                    });
                    self.peers.len() - 1
                }
            };
            if flags & WG_PEER_REMOVE != 0 {
                self.peers.remove(i);
                continue;
            }
            let lose = self.lose_aips;
            let p = &mut self.peers[i];
            if flags & WG_PEER_HAS_ENDPOINT != 0 {
                p.endpoint = ne(h, offset_of!(WgPeerIo, p_endpoint));
            }
            if flags & WG_PEER_HAS_PSK != 0 {
                p.psk = ne(h, offset_of!(WgPeerIo, p_psk));
            }
            if flags & WG_PEER_HAS_PKA != 0 {
                p.pka = u16::from_ne_bytes(ne(h, offset_of!(WgPeerIo, p_pka)));
                // wg_timers_set_persistent_keepalive queues a keepalive;
                // with no session wg_send_keepalive initiates instead.
                if p.pka != 0 && p.handshake == (0, 0) {
                    p.initiations += 1;
                }
            }
            if flags & WG_PEER_SET_DESCRIPTION != 0 {
                p.description = ne(h, offset_of!(WgPeerIo, p_description));
                p.description[63] = 0;
            }
            if !lose {
                // LIST_INSERT_HEAD: a read lists them newest first.
                for a in aips.chunks_exact(AIP) {
                    p.aips.insert(0, ne(a, 0));
                }
            }
        }
    }

    fn get(&self, b: &mut [u8]) -> usize {
        let size = IFACE
            + self
                .peers
                .iter()
                .map(|p| PEER + p.aips.len() * AIP)
                .sum::<usize>();
        if b.len() < size {
            return size;
        }
        b.fill(0);
        b[offset_of!(WgInterfaceIo, i_flags)] = WG_INTERFACE_HAS_PUBLIC;
        let at = offset_of!(WgInterfaceIo, i_public);
        b[at..at + 32].copy_from_slice(&self.public);
        let at = offset_of!(WgInterfaceIo, i_peers_count);
        b[at..at + 8].copy_from_slice(&self.peers.len().to_ne_bytes());
        let mut at = IFACE;
        for p in &self.peers {
            let mut flags = WG_PEER_HAS_PUBLIC;
            if p.psk != [0; 32] {
                flags |= WG_PEER_HAS_PSK;
            }
            if p.pka != 0 {
                flags |= WG_PEER_HAS_PKA;
            }
            if p.endpoint[1] != 0 {
                flags |= WG_PEER_HAS_ENDPOINT;
            }
            let mut put = |off: usize, v: &[u8]| b[at + off..at + off + v.len()].copy_from_slice(v);
            put(offset_of!(WgPeerIo, p_flags), &flags.to_ne_bytes());
            put(
                offset_of!(WgPeerIo, p_protocol_version),
                &1i32.to_ne_bytes(),
            );
            put(offset_of!(WgPeerIo, p_public), &p.public);
            put(offset_of!(WgPeerIo, p_psk), &p.psk);
            put(offset_of!(WgPeerIo, p_pka), &p.pka.to_ne_bytes());
            put(offset_of!(WgPeerIo, p_endpoint), &p.endpoint);
            let ts = offset_of!(WgPeerIo, p_last_handshake);
            put(ts, &p.handshake.0.to_ne_bytes());
            put(ts + 8, &p.handshake.1.to_ne_bytes());
            put(offset_of!(WgPeerIo, p_description), &p.description);
            put(
                offset_of!(WgPeerIo, p_aips_count),
                &p.aips.len().to_ne_bytes(),
            );
            at += PEER;
            for a in &p.aips {
                b[at..at + AIP].copy_from_slice(a);
                at += AIP;
            }
        }
        size
    }
}

impl WgIoctl for std::sync::Arc<std::sync::Mutex<Model>> {
    fn ioctl(&mut self, req: u64, name: &[u8; 16], buf: &mut [u8]) -> Result<usize, WgError> {
        let mut m = self.lock().unwrap();
        if name != &m.name {
            return Err(WgError::NoSuchInterface);
        }
        match req {
            SIOCSWG => {
                m.set(buf);
                Ok(buf.len())
            }
            SIOCGWG => Ok(m.get(buf)),
            _ => Err(WgError::Protocol("not a wg(4) ioctl".into())),
        }
    }
}

/// An aip entry, for building model peers.
pub fn aip(af: u8, cidr: i32, addr: &[u8]) -> [u8; AIP] {
    let mut a = [0u8; AIP];
    a[offset_of!(WgAipIo, a_af)] = af;
    let c = offset_of!(WgAipIo, a_cidr);
    a[c..c + 4].copy_from_slice(&cidr.to_ne_bytes());
    let at = offset_of!(WgAipIo, a_addr);
    a[at..at + addr.len()].copy_from_slice(addr);
    a
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::parent::wg::openbsd::OpenBsd;
    use crate::parent::wg::openbsd::peer::{AF_INET, AF_INET6};
    use crate::parent::wg::{WgBackend, WgPeer};
    use crate::secret::Psk;

    const A: [u8; 32] = [0xa1; 32];
    const B: [u8; 32] = [0xb2; 32];

    /// wg0 with peer A (PSK 0x22, endpoint 192.0.2.2:51820, two allowed
    /// IPs, a description, a session from 1,764,900,000.5 s) and peer B.
    fn rig() -> (Arc<Mutex<Model>>, OpenBsd) {
        let mut name = [0u8; 16];
        name[..3].copy_from_slice(b"wg0");
        let mut endpoint = [0u8; 28];
        endpoint[..8].copy_from_slice(&[16, AF_INET, 0xca, 0x6c, 192, 0, 2, 2]);
        let mut description = [0u8; 64];
        description[..6].copy_from_slice(b"branch");
        let a = ModelPeer {
            public: A,
            psk: [0x22; 32],
            endpoint,
            description,
            aips: vec![
                aip(AF_INET, 16, &[10, 1, 0, 0]),
                aip(AF_INET6, 32, &[0x20, 0x01, 0x0d, 0xb8]),
            ],
            handshake: (1_764_900_000, 500_000_000),
            ..ModelPeer::default()
        };
        let b = ModelPeer {
            public: B,
            psk: [0x33; 32],
            aips: vec![aip(AF_INET, 24, &[10, 2, 0, 0])],
            ..ModelPeer::default()
        };
        let m = Arc::new(Mutex::new(Model {
            name,
            public: [0x71; 32],
            peers: vec![a, b],
            ..Model::default()
        }));
        (m.clone(), OpenBsd::with(Box::new(m)))
    }

    fn peer(key: [u8; 32]) -> WgPeer {
        WgPeer {
            interface: "wg0".into(),
            public_key: key,
        }
    }

    fn model_peer(m: &Arc<Mutex<Model>>, key: [u8; 32]) -> Option<ModelPeer> {
        let m = m.lock().unwrap();
        m.peers.iter().find(|p| p.public == key).cloned()
    }

    #[test]
    fn new_session_recreates_in_one_set_and_starts_a_handshake() {
        let (m, mut o) = rig();
        let was = model_peer(&m, A).unwrap();
        let b_was = model_peer(&m, B).unwrap();
        let c = o.new_session(&peer(A), 25).unwrap();
        assert_eq!(c.keepalive, 0);
        assert_eq!(c.endpoint, Some("192.0.2.2:51820".parse().unwrap()));
        assert_eq!(c.allowed_ips.len(), 2);
        assert_eq!(m.lock().unwrap().sets, 1);
        let now = model_peer(&m, A).unwrap();
        // A new peer: no session, one handshake started by the keepalive,
        // its own keepalive (none) back, the rest as it was (allowed IPs
        // listed in the other order, as wg(4) does).
        assert_eq!(now.handshake, (0, 0));
        assert_eq!(now.initiations, 1);
        assert_eq!(now.pka, 0);
        assert_eq!(now.psk, was.psk);
        assert_eq!(now.endpoint, was.endpoint);
        assert_eq!(now.description, was.description);
        assert_eq!(now.aips, was.aips.iter().rev().cloned().collect::<Vec<_>>());
        let b_now = model_peer(&m, B).unwrap();
        assert_eq!((b_now.psk, b_now.aips), (b_was.psk, b_was.aips));
        assert_eq!(m.lock().unwrap().peers.len(), 2);
    }

    #[test]
    fn a_peer_with_its_own_keepalive_keeps_it() {
        let (m, mut o) = rig();
        m.lock().unwrap().peers[0].pka = 7;
        o.new_session(&peer(A), 25).unwrap();
        let now = model_peer(&m, A).unwrap();
        assert_eq!((now.pka, now.initiations), (7, 1));
    }

    /// A peer that is gone stays gone: no set call at all.
    #[test]
    fn an_absent_peer_is_never_created() {
        let (m, mut o) = rig();
        let c = [0xc3; 32];
        assert_eq!(
            o.new_session(&peer(c), 25).unwrap_err(),
            WgError::NoSuchPeer
        );
        assert_eq!(o.last_handshake(&peer(c)).unwrap_err(), WgError::NoSuchPeer);
        assert_eq!(m.lock().unwrap().sets, 0);
        assert!(model_peer(&m, c).is_none());
        let other = WgPeer {
            interface: "wg1".into(),
            public_key: A,
        };
        assert_eq!(
            o.new_session(&other, 25).unwrap_err(),
            WgError::NoSuchInterface
        );
    }

    /// A kernel that re-creates the peer without what it was told is
    /// caught by the read-back.
    #[test]
    fn a_recreated_peer_that_differs_is_an_error() {
        let (m, mut o) = rig();
        m.lock().unwrap().lose_aips = true;
        match o.new_session(&peer(A), 25) {
            Err(WgError::Protocol(msg)) => {
                assert!(msg.contains("re-created peer differs"), "{msg}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn last_handshake_is_the_wall_clock_with_nanoseconds() {
        let (_m, mut o) = rig();
        let want = SystemTime::UNIX_EPOCH + Duration::new(1_764_900_000, 500_000_000);
        assert_eq!(o.last_handshake(&peer(A)).unwrap(), Some(want));
        assert_eq!(o.last_handshake(&peer(B)).unwrap(), None);
    }

    /// The PSK and removal calls against the same model, and a reply that
    /// needs more than the first guess (W9: the size, nothing copied).
    #[test]
    fn psk_and_removal_and_a_large_interface() {
        let (m, mut o) = rig();
        o.set_psk(&peer(B), &Psk::from_bytes([0x44; 32])).unwrap();
        assert_eq!(model_peer(&m, B).unwrap().psk, [0x44; 32]);
        let c = peer([0xc3; 32]);
        let psk = Psk::from_bytes([0x55; 32]);
        assert_eq!(o.set_psk(&c, &psk).unwrap_err(), WgError::NoSuchPeer);
        assert_eq!(m.lock().unwrap().sets, 1);
        {
            let mut m = m.lock().unwrap();
            for i in 0..200u8 {
                let mut p = ModelPeer {
                    public: [i; 32],
                    ..ModelPeer::default()
                };
                p.public[31] = 0xee;
                p.aips = vec![aip(AF_INET, 32, &[10, 9, 0, i]); 1];
                m.peers.push(p);
            }
        }
        assert_eq!(o.get_psk(&peer(B)).unwrap().expose(), &[0x44; 32]);
        assert_eq!(o.public_key("wg0").unwrap(), [0x71; 32]);
        o.remove_peer(&peer(A)).unwrap();
        assert!(model_peer(&m, A).is_none());
        o.remove_peer(&peer(A)).unwrap();
        assert_eq!(m.lock().unwrap().sets, 2);
    }
}
