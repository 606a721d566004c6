//! WireGuard PSK writers (DESIGN §5 "WireGuard"). Run by the privileged
//! parent only: the one place qkdpfd touches a WireGuard interface, and then
//! only a peer that already exists: its pre-shared key, or the whole peer
//! removed and added back as it was for a new session ([`WgBackend::new_session`]).
//!
//! Each backend sits behind [`WgBackend`]: `uapi` (the text protocol of
//! wireguard-go's socket), `linux` (generic netlink to the kernel module),
//! `openbsd` (SIOCSWG/SIOCGWG on wg(4)) and `dryrun` (records a fingerprint).
//! Every "set" asks the OS to update an existing peer only; since those
//! flags skip a missing peer silently, every write is read back and compared
//! in constant time. Key bytes never reach an error, a log line or a Debug
//! print: errors carry errno values and the tool's words, never a buffer.
//!
//! [`psk::PskWriter`] drives a backend for the keyed links: install,
//! restart proof, `key-stale`, and the drift check ([`check_drift`]).

use std::fmt;
use std::path::Path;
use std::time::SystemTime;

use base64::Engine;

use crate::conf::{UAPI_DIR, WireguardBackend, WireguardConf};
use crate::secret::Psk;

pub mod dryrun;
pub mod linux;
pub mod openbsd;
pub mod psk;
pub mod uapi;

pub use psk::{Drift, check_drift};

/// IFNAMSIZ on Linux and OpenBSD, including the terminating NUL.
pub const IFNAMSIZ: usize = 16;

/// One WireGuard peer of one interface: the config's `wg_interface` and
/// `wg_peer` (the far gateway's public key, not secret).
#[derive(Clone, PartialEq, Eq)]
pub struct WgPeer {
    pub interface: String,
    pub public_key: [u8; 32],
}

impl WgPeer {
    /// From the config's `wg_interface` and `wg_peer` (base64 of 32 bytes,
    /// already checked by the config parser; checked again here).
    pub fn from_conf(interface: &str, wg_peer_b64: &str) -> Result<WgPeer, String> {
        check_ifname(interface).map_err(|e| e.to_string())?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(wg_peer_b64.trim())
            .map_err(|_| format!("wg_peer {wg_peer_b64:?}: not base64"))?;
        let public_key: [u8; 32] = raw
            .try_into()
            .map_err(|_| format!("wg_peer {wg_peer_b64:?}: not 32 bytes"))?;
        Ok(WgPeer {
            interface: interface.to_string(),
            public_key,
        })
    }

    /// The public key as wg(8) shows it.
    pub fn public_b64(&self) -> String {
        pubkey_b64(&self.public_key)
    }
}

impl fmt::Debug for WgPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WgPeer({} {})", self.interface, self.public_b64())
    }
}

/// Why a PSK could not be written or read. `Display` never holds key bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WgError {
    NoSuchInterface,
    NoSuchPeer,
    /// The OS or the socket failed (errno text, timeouts, unsupported OS).
    Io(String),
    /// The other side answered something we do not understand or refused.
    Protocol(String),
    /// The read-back differs from what was written.
    Mismatch,
    /// A PSK of one byte repeated, refused before it is written.
    WeakPsk,
}

impl WgError {
    /// The `reason=` word for `key_rotation_failed` and similar events.
    pub fn reason(&self) -> &'static str {
        match self {
            WgError::NoSuchInterface => "no-such-interface",
            WgError::NoSuchPeer => "no-such-peer",
            WgError::Io(_) => "wg-io",
            WgError::Protocol(_) => "wg-protocol",
            WgError::Mismatch => "psk-mismatch",
            WgError::WeakPsk => "weak-psk",
        }
    }
}

impl fmt::Display for WgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WgError::NoSuchInterface => f.write_str("no such WireGuard interface"),
            WgError::NoSuchPeer => f.write_str("no such peer on the WireGuard interface"),
            WgError::Io(m) => write!(f, "WireGuard I/O: {m}"),
            WgError::Protocol(m) => write!(f, "WireGuard protocol: {m}"),
            WgError::Mismatch => f.write_str("PSK read back differs from the one written"),
            WgError::WeakPsk => {
                f.write_str("refused a PSK of one byte repeated (all zeros is no PSK)")
            }
        }
    }
}

impl std::error::Error for WgError {}

/// One backend shared by the PSK installer and the lockdown ladder's
/// last rung (links/tunnel.rs). The parent is one thread: the mutex only
/// makes the sharing explicit, it is never contended.
pub type SharedBackend = std::sync::Arc<std::sync::Mutex<Box<dyn WgBackend>>>;

/// Each link's WireGuard peer (the links with a `wg_peer`), in name order:
/// made once from the config and shared by the PSK writer and the lockdown
/// ladder's last rung (the second copy was 0.8 MB of the parent at 10,000
/// links).
#[derive(Clone)]
pub struct Peers(std::sync::Arc<[(String, WgPeer)]>);

impl Peers {
    /// The peers a config names; a link whose `wg_peer` does not decode
    /// has none (the config parser refused it already).
    pub fn of(conf: &crate::conf::Config) -> Peers {
        let peers = (conf.link.values()).filter_map(|l| {
            let peer = WgPeer::from_conf(&l.wg_interface, l.wg_peer.as_deref()?).ok()?;
            Some((l.name.clone(), peer))
        });
        Peers::from_list(peers.collect())
    }

    /// Links (by name) and their peers; the first of a name counts.
    pub fn from_list(mut peers: Vec<(String, WgPeer)>) -> Peers {
        peers.sort_by(|a, b| a.0.cmp(&b.0));
        peers.dedup_by(|a, b| a.0 == b.0);
        Peers(peers.into())
    }

    /// Where link `link` is in [`Peers::iter`].
    pub fn position(&self, link: &str) -> Option<usize> {
        self.0.binary_search_by(|(n, _)| n.as_str().cmp(link)).ok()
    }

    pub fn get(&self, link: &str) -> Option<&WgPeer> {
        self.position(link).map(|i| &self.0[i].1)
    }

    pub fn iter(&self) -> impl Iterator<Item = &(String, WgPeer)> {
        self.0.iter()
    }
}

/// One way of reaching WireGuard.
pub trait WgBackend: Send {
    fn name(&self) -> &'static str;
    /// Sets ONLY the PSK of an EXISTING peer (never creates a peer, never
    /// touches anything else), then reads it back; a missing peer is
    /// `Err(NoSuchPeer)` (the update-only flags skip a missing peer
    /// silently, so the read-back is what detects it).
    fn set_psk(&mut self, peer: &WgPeer, psk: &Psk) -> Result<(), WgError>;
    /// Reads the peer's current PSK (all zero when it has none).
    fn get_psk(&mut self, peer: &WgPeer) -> Result<Psk, WgError>;
    /// This gateway's own public key on `interface` (read from the
    /// interface): one half of the link_id (DESIGN §6). An interface
    /// without a private key is `Err(Protocol)`, never a made-up key.
    fn public_key(&mut self, interface: &str) -> Result<[u8; 32], WgError>;
    /// The last rung of the lockdown ladder (DESIGN §5), when no firewall
    /// step holds: removes the peer, which ends every session through it
    /// at once (a random PSK alone would not, for up to 180 s), then reads
    /// back that it is gone. A peer already gone is Ok. qkdpfd never
    /// brings a removed peer back: the operator restores it (`ifconfig`,
    /// `wg`) once the firewall is repaired.
    fn remove_peer(&mut self, peer: &WgPeer) -> Result<(), WgError>;
    /// Puts the PSK just installed in force (issue 13): a PSK change alone
    /// starts no handshake, so traffic would stay on session keys made
    /// with the previous PSK until WireGuard's own rekey (up to 120 s).
    /// Reads the EXISTING peer back (endpoint, allowed IPs, PSK,
    /// keepalive), then in one set call removes it and adds it again with
    /// all of that and a persistent keepalive of `keepalive` seconds: the
    /// new peer has no session, and the keepalive makes it handshake at
    /// once. Its own keepalive is then restored. An absent peer is
    /// `NoSuchPeer` and stays absent: a peer the lockdown ladder removed
    /// is never brought back here. Returns what was read back.
    fn new_session(&mut self, peer: &WgPeer, keepalive: u16) -> Result<PeerConfig, WgError>;
    /// When the peer's latest handshake completed, on the OS's wall clock
    /// (CLOCK_REALTIME, as WireGuard keeps it), with its nanoseconds; None
    /// when it never did. An absent peer is `NoSuchPeer`. What a link held
    /// for `no-session` waits on after its peer was re-created.
    fn last_handshake(&mut self, peer: &WgPeer) -> Result<Option<SystemTime>, WgError> {
        let _ = peer;
        Err(WgError::Io(format!(
            "the {} backend does not read handshake times",
            self.name()
        )))
    }
}

/// A handshake time as WireGuard reports it (seconds and nanoseconds since
/// the epoch; both zero: never), checked.
pub fn handshake_time(sec: i64, nsec: i64) -> Result<Option<SystemTime>, WgError> {
    if sec == 0 && nsec == 0 {
        return Ok(None);
    }
    if sec < 0 || !(0..1_000_000_000).contains(&nsec) {
        return Err(WgError::Protocol("bad last handshake time".into()));
    }
    Ok(Some(
        SystemTime::UNIX_EPOCH + std::time::Duration::new(sec as u64, nsec as u32),
    ))
}

/// What a peer is made of, as read back before it is re-created: all a
/// re-added peer needs to carry the same traffic. `Debug` hides the PSK.
#[derive(Clone, PartialEq)]
pub struct PeerConfig {
    pub psk: Psk,
    pub endpoint: Option<std::net::SocketAddr>,
    /// (address, prefix length), in the order the OS listed them.
    pub allowed_ips: Vec<(std::net::IpAddr, u8)>,
    /// Persistent keepalive interval in seconds (0: off).
    pub keepalive: u16,
}

impl fmt::Debug for PeerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerConfig")
            .field("psk", &"<hidden>")
            .field("endpoint", &self.endpoint)
            .field("allowed_ips", &self.allowed_ips)
            .field("keepalive", &self.keepalive)
            .finish()
    }
}

/// The check after a re-creation: the peer is back with exactly what it
/// had (its PSK compared in constant time).
pub fn verify_recreated(before: &PeerConfig, after: Option<PeerConfig>) -> Result<(), WgError> {
    let after = after.ok_or(WgError::NoSuchPeer)?;
    verify(Some(after.psk.clone()), &before.psk)?;
    let (mut a, mut b) = (before.allowed_ips.clone(), after.allowed_ips.clone());
    a.sort_unstable();
    b.sort_unstable();
    if a != b || before.endpoint != after.endpoint || before.keepalive != after.keepalive {
        return Err(WgError::Protocol(format!(
            "re-created peer differs: {before:?} became {after:?}"
        )));
    }
    Ok(())
}

/// The backend the config names. Kernel backends on the wrong OS are still
/// built; their methods then fail with `Io` (fail closed, never silently).
pub fn new(conf: &WireguardConf, state_dir: &Path) -> Box<dyn WgBackend> {
    match conf.backend {
        WireguardBackend::Userspace => Box::new(uapi::Uapi::new(Path::new(UAPI_DIR))),
        WireguardBackend::Linux => Box::new(linux::Linux::new()),
        WireguardBackend::Openbsd => Box::new(openbsd::OpenBsd::new()),
        WireguardBackend::DryRun => Box::new(dryrun::DryRun::new(state_dir)),
    }
}

/// The read-back every backend does after a write: the peer must exist
/// (absent = `NoSuchPeer`) and hold exactly `psk`.
pub fn verify(found: Option<Psk>, psk: &Psk) -> Result<(), WgError> {
    match found {
        None => Err(WgError::NoSuchPeer),
        Some(now) if ct_eq(now.expose(), psk.expose()) => Ok(()),
        Some(_) => Err(WgError::Mismatch),
    }
}

/// Constant-time equality of two strings of one length (hex verifiers).
pub fn ct_eq_str(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let acc = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(acc) == 0
}

/// Constant-time equality of two keys: no early exit on the first
/// differing byte.
pub fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut acc = 0u8;
    for i in 0..32 {
        acc |= a[i] ^ b[i];
    }
    std::hint::black_box(acc) == 0
}

/// An interface name both kernels would accept: 1..=15 bytes of
/// `[A-Za-z0-9_.-]`, not `.`/`..` (it also becomes a socket file name).
pub fn check_ifname(name: &str) -> Result<(), WgError> {
    let ok = !name.is_empty()
        && name.len() < IFNAMSIZ
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(WgError::Protocol(format!(
            "invalid interface name {name:?} (1-15 of [A-Za-z0-9_.-])"
        )))
    }
}

/// A public key as wg(8) shows it (standard base64, 44 characters).
pub fn pubkey_b64(k: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(k)
}

/// The error every backend gives for an interface that has no private key
/// yet (so no public key either).
pub(crate) fn no_private_key() -> WgError {
    WgError::Protocol("interface has no private key".into())
}

/// Lower-case hex of a key, as UAPI wants it.
pub(crate) fn hex_into(out: &mut String, key: &[u8; 32]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in key {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 15) as usize] as char);
    }
}

/// Parses 64 hex digits (either case) into a key. The error never quotes
/// the input: it may be a key.
pub(crate) fn hex_key(s: &str) -> Option<zeroize::Zeroizing<[u8; 32]>> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let mut out = zeroize::Zeroizing::new([0u8; 32]);
    for (i, pair) in s.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend holding one peer's PSK (None: no such peer).
    pub(super) struct Fake(pub(super) Option<Psk>);

    impl WgBackend for Fake {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn set_psk(&mut self, _: &WgPeer, psk: &Psk) -> Result<(), WgError> {
            self.0 = Some(psk.clone());
            Ok(())
        }
        fn get_psk(&mut self, _: &WgPeer) -> Result<Psk, WgError> {
            self.0.clone().ok_or(WgError::NoSuchPeer)
        }
        fn remove_peer(&mut self, _: &WgPeer) -> Result<(), WgError> {
            Ok(())
        }
        fn new_session(&mut self, _: &WgPeer, _: u16) -> Result<PeerConfig, WgError> {
            Err(WgError::Io("fake".into()))
        }

        fn public_key(&mut self, _: &str) -> Result<[u8; 32], WgError> {
            Err(no_private_key())
        }
    }

    pub(super) fn peer() -> WgPeer {
        WgPeer::from_conf("wg0", "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=").unwrap()
    }

    #[test]
    fn peers_are_found_by_name_whatever_the_order_given() {
        let p = |k| WgPeer {
            interface: "wg0".into(),
            public_key: [k; 32],
        };
        let given = vec![("b".into(), p(2)), ("a".into(), p(1)), ("b".into(), p(3))];
        let peers = Peers::from_list(given);
        let key = |l| peers.get(l).map(|x| x.public_key[0]);
        assert_eq!(key("a"), Some(1));
        assert_eq!(key("b"), Some(2), "the first of a name counts");
        assert_eq!(peers.position("c"), None);
        let names: Vec<&str> = peers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(peers.position("b"), Some(1));
    }

    #[test]
    fn peer_from_conf_checks_key_and_name() {
        let p = peer();
        assert_eq!(p.public_key, [1; 32]);
        assert_eq!(
            p.public_b64(),
            "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="
        );
        assert!(WgPeer::from_conf("wg0", "AAAA").is_err());
        assert!(WgPeer::from_conf("wg0", "not base64!").is_err());
        assert!(WgPeer::from_conf("../x", &p.public_b64()).is_err());
        assert!(WgPeer::from_conf("0123456789abcdef", &p.public_b64()).is_err());
        assert!(WgPeer::from_conf("", &p.public_b64()).is_err());
        assert!(check_ifname("wg0").is_ok() && check_ifname("a.b-c_d").is_ok());
        assert!(check_ifname("..").is_err() && check_ifname("a/b").is_err());
    }

    #[test]
    fn verify_maps_absent_and_different() {
        let k = Psk::from_bytes([9; 32]);
        assert_eq!(verify(None, &k), Err(WgError::NoSuchPeer));
        assert_eq!(
            verify(Some(Psk::from_bytes([8; 32])), &k),
            Err(WgError::Mismatch)
        );
        assert_eq!(verify(Some(k.clone()), &k), Ok(()));
        let mut b = [9; 32];
        b[31] = 0;
        assert!(!ct_eq(&b, k.expose()) && ct_eq(k.expose(), k.expose()));
    }

    #[test]
    fn pubkey_b64_is_wg_format() {
        // RFC 7748 §6.1 Alice's public key, as `wg pubkey` prints it.
        let mut k = [0u8; 32];
        let hex = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";
        k.copy_from_slice(&*hex_key(hex).unwrap());
        assert_eq!(
            pubkey_b64(&k),
            "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
        );
        assert_eq!(peer().public_b64(), pubkey_b64(&[1; 32]));
        let mut f = Fake(None);
        let e = f.public_key("wg0").unwrap_err();
        assert_eq!(e.reason(), "wg-protocol");
    }

    #[test]
    fn hex_round_trip() {
        let mut key = [0u8; 32];
        for (i, b) in key.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37);
        }
        let mut s = String::new();
        hex_into(&mut s, &key);
        assert_eq!(&s[..6], "00254a");
        assert_eq!(*hex_key(&s).unwrap(), key);
        assert_eq!(*hex_key(&s.to_uppercase()).unwrap(), key);
        assert!(hex_key(&s[1..]).is_none());
        assert!(hex_key(&s.replace('a', "g")).is_none());
    }

    #[test]
    fn errors_name_reasons_without_secrets() {
        let all = [
            WgError::NoSuchInterface,
            WgError::NoSuchPeer,
            WgError::Io("x".into()),
            WgError::Protocol("y".into()),
            WgError::Mismatch,
        ];
        let reasons: Vec<_> = all.iter().map(|e| e.reason()).collect();
        assert_eq!(reasons[1], "no-such-peer");
        let mut dedup = reasons.clone();
        dedup.dedup();
        assert_eq!(dedup.len(), all.len());
        for e in &all {
            assert!(!e.to_string().is_empty());
        }
    }
}
