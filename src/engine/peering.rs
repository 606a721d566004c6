//! The engine's peering socket (DESIGN §6): the UDP sockets the parent
//! bound (fd 6, fd 8) and their receive tasks, the `[peering]` signing key
//! and the [`Keyring`] of the keyed links' peers, and the logs of the peer
//! port (`peer_auth_failed`, `peer_send_failed`). Every received datagram
//! passes the keyring, then the door (`door.rs`: source, role, epoch,
//! budgets), and only then one Ed25519 verification before a rotation
//! sees it; every sent one is signed here. The rounds themselves are
//! driven by [`crate::engine::keys`].

mod door;

pub use door::{Gate, Verdict};

use crate::imsg::EngineConfig;
use crate::log::{self, Event};
use crate::proto::peer::{self, Keyring, LinkId, Message, PeerKey};
use door::{AuthLog, Budget};
use ed25519_dalek::{SigningKey, VerifyingKey};
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// A received datagram, from the socket task.
pub struct Datagram {
    pub from: SocketAddr,
    pub bytes: Vec<u8>,
}

/// The addresses of the configured peers (shared with the receive tasks).
pub type Known = Arc<RwLock<HashSet<IpAddr>>>;

/// Datagrams a second from addresses that are no configured peer's that
/// the receive task passes on. The door refuses every one of them, so they
/// only feed the auth log, which logs a line a second at most: the rest
/// are dropped at the socket, before they cost an allocation or a turn of
/// the engine's loop. (Their count in `suppressed=` is of this sample.)
const STRANGERS_PER_SEC: u32 = 100;

/// Reads the peering socket until it fails; datagrams of the wrong size
/// are dropped here (the door checks everything else). Datagrams from a
/// configured peer's address go to `known`, a sample of all others
/// (`STRANGERS_PER_SEC`) to `other`: each queue drops when full, so a
/// flood from addresses we do not know can fill only its own queue, and
/// real OFFERs and CONFIRMs still get through.
pub async fn receive(
    sock: Arc<tokio::net::UdpSocket>,
    peers: Known,
    known: mpsc::Sender<Datagram>,
    other: mpsc::Sender<Datagram>,
) {
    let mut buf = vec![0u8; 2048];
    let mut strangers = Budget::<STRANGERS_PER_SEC, STRANGERS_PER_SEC>::default();
    loop {
        match sock.recv_from(&mut buf).await {
            Ok((n, from)) if n <= peer::MAX_DATAGRAM => {
                let ours = peers
                    .read()
                    .map(|p| p.contains(&from.ip().to_canonical()))
                    .unwrap_or(false);
                let queue = if ours {
                    &known
                } else if strangers.take(Instant::now()) {
                    &other
                } else {
                    continue;
                };
                // A full queue drops the datagram, as a busy network would.
                let _ = queue.try_send(Datagram {
                    from,
                    bytes: buf[..n].to_vec(),
                });
            }
            Ok(_) => {}
            Err(e) => {
                log::warn(format!("peer: receive: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The engine's end of the peer port: sockets, keys, logs.
#[derive(Default)]
pub struct Peering {
    signing: Option<SigningKey>,
    ring: Option<Keyring>,
    /// The peering sockets, one per address family (fd 6, fd 8).
    sockets: Vec<Arc<tokio::net::UdpSocket>>,
    /// Failed sends, logged once per destination a minute.
    send_log: log::PerMinute<SocketAddr>,
    /// The configured peers' addresses: the receive tasks queue their
    /// datagrams apart from everyone else's (see [`receive`]).
    known: Known,
    auth_log: AuthLog,
}

impl Peering {
    /// Logs the `peer_auth_failed` counts no later failure carried.
    pub fn log_overdue(&mut self, now: Instant) {
        for line in self.auth_log.overdue(now) {
            line.send();
        }
    }

    /// A peering socket (fd 6, fd 8: taken once at start-up).
    pub fn add_socket(&mut self, s: Arc<tokio::net::UdpSocket>) {
        self.sockets.push(s);
    }

    /// The configured peers' addresses, for the receive tasks.
    pub fn known_peers(&self) -> Known {
        self.known.clone()
    }

    /// A new config: the `[peering]` key (none without that section) and
    /// the keyed links' peer addresses; each keyed link's peer key follows
    /// with [`Peering::add_link`].
    pub fn configure(&mut self, cfg: &EngineConfig) {
        self.signing = cfg
            .peering
            .as_ref()
            .map(|p| SigningKey::from_bytes(&p.secret));
        self.ring = self
            .signing
            .as_ref()
            .map(|s| Keyring::new(&s.verifying_key()));
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        known.clear();
        known.extend(
            cfg.links
                .iter()
                .filter_map(|l| l.keys.as_ref())
                .map(|k| k.peer.ip().to_canonical()),
        );
    }

    /// Our peering public key; None without a `[peering]` key.
    pub fn ours(&self) -> Option<PeerKey> {
        self.signing.as_ref().map(|s| s.verifying_key().to_bytes())
    }

    /// Room for `n` more links in the keyring, exactly.
    pub fn reserve_links(&mut self, n: usize) {
        if let Some(ring) = self.ring.as_mut() {
            ring.reserve_links(n);
        }
    }

    /// Admits the datagrams of `link_id` signed by `peer` (the link's
    /// `peer_pubkey`); an error if that is no Ed25519 public key.
    pub fn add_link(&mut self, link_id: LinkId, peer: &PeerKey) -> Result<(), String> {
        let peer = VerifyingKey::from_bytes(peer).map_err(|_| "bad peer_pubkey".to_string())?;
        if let Some(ring) = self.ring.as_mut() {
            ring.add_link(link_id, peer);
        }
        Ok(())
    }

    /// Signs `m` with the peering key and sends it to `dest`. Lost
    /// datagrams are what retransmits are for.
    pub fn send(&mut self, m: &Message, dest: SocketAddr) {
        if let Some(bytes) = self.signing.as_ref().map(|sk| m.encode(sk)) {
            self.send_to(&bytes, dest);
        }
    }

    /// Sends from the socket of `dest`'s address family; a failure is a
    /// warning an operator sees, once per destination a minute.
    fn send_to(&mut self, bytes: &[u8], dest: SocketAddr) {
        let sock = self
            .sockets
            .iter()
            .find(|s| s.local_addr().is_ok_and(|a| a.is_ipv4() == dest.is_ipv4()));
        let r = match sock {
            Some(s) => s
                .try_send_to(bytes, dest)
                .map(drop)
                .map_err(|e| e.to_string()),
            None => Err(format!(
                "no peering socket for {} (set [peering] listen to [::]:PORT or an address of that family)",
                if dest.is_ipv4() { "IPv4" } else { "IPv6" }
            )),
        };
        let Err(why) = r else { return };
        if self.send_log.len() > 4096 {
            self.send_log.clear();
        }
        if let Some(held) = self.send_log.admit(dest, Instant::now()) {
            log::event(Event::PeerSendFailed)
                .kv("to", dest)
                .suppressed(held)
                .msg(why)
                .send();
        }
    }

    /// A datagram from the socket: checked by the keyring, then by `door`
    /// (given what the datagram claims, the link's name and the verdict
    /// of its [`Gate`]; None for a link we do not run), and only then is
    /// its signature verified. Drops are logged within the auth log's
    /// budgets. The link's name and the message, if it passed everything.
    pub fn open<'n>(
        &mut self,
        d: &Datagram,
        now: Instant,
        door: impl FnOnce(&Message) -> Option<(&'n str, Verdict)>,
    ) -> Option<(&'n str, Message)> {
        let ring = self.ring.as_ref()?;
        let from = d.from.ip();
        let unverified = match ring.check(&d.bytes) {
            Ok(u) => u,
            Err(e) => {
                self.auth_log.failed(from, None, e.as_str(), now);
                return None;
            }
        };
        let (name, verdict) = door(unverified.claims())?;
        match verdict {
            Verdict::Verify => {}
            Verdict::Refuse(why) => {
                self.auth_log.failed(from, Some(name), why, now);
                return None;
            }
            Verdict::Drop => return None,
        }
        match unverified.verify() {
            Ok(m) => Some((name, m)),
            Err(e) => {
                self.auth_log.failed(from, Some(name), e.as_str(), now);
                None
            }
        }
    }

    /// A datagram a rotation refused after its signature checked out
    /// (`peer_auth_failed`, within the auth log's budgets).
    pub fn auth_failed(&mut self, from: IpAddr, link: &str, why: &str, now: Instant) {
        self.auth_log.failed(from, Some(link), why, now);
    }
}
