//! `openbsd` WireGuard backend (DESIGN §5, reference/openbsd.md "wg(4)
//! PSK"), run by the privileged parent: SIOCSWG/SIOCGWG on wg(4) through an
//! AF_INET datagram socket. It sets the PSK of one existing peer, re-creates
//! that peer for a new session under it (`peer.rs`, issue 13), reads its
//! last handshake, removes it as the lockdown ladder's last rung, and reads
//! the interface's own public key (`i_public`, never `i_private`). The
//! OpenBSD facts used are listed in `src/OPENBSD-FACTS.md` (W1-W19).
//!
//! The structures of sys/net/if_wg.h are plain `#[repr(C)]` Rust here, with
//! OpenBSD's own sockaddr and timespec (sa_family_t is one byte there), so
//! the layout, the request encoders and the reply decoders compile and are
//! tested on every platform, and the backend's calls are tested against a
//! model of wg(4) (`model.rs`). Only the `ioctl(2)` call is OpenBSD-only; on
//! other systems the backend fails with `Io`. Request and reply buffers are
//! zeroized (a SIOCGWG reply also holds the interface's private key).

use std::mem::{offset_of, size_of};

use zeroize::Zeroizing;

use super::{PeerConfig, WgBackend, WgError, WgPeer, check_ifname, verify, verify_recreated};
use crate::secret::Psk;

#[cfg(all(test, target_pointer_width = "64"))]
mod model;
pub mod peer;

pub const WG_PEER_HAS_PUBLIC: i32 = 1 << 0;
pub const WG_PEER_HAS_PSK: i32 = 1 << 1;
pub const WG_PEER_HAS_PKA: i32 = 1 << 2;
pub const WG_PEER_HAS_ENDPOINT: i32 = 1 << 3;
pub const WG_PEER_REMOVE: i32 = 1 << 5;
pub const WG_PEER_UPDATE: i32 = 1 << 6;
pub const WG_PEER_SET_DESCRIPTION: i32 = 1 << 7;
/// `i_flags`: the kernel filled `i_public` (the interface has a private
/// key and the caller is root).
pub const WG_INTERFACE_HAS_PUBLIC: u8 = 1 << 0;

/// OpenBSD `struct sockaddr`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Sockaddr {
    pub sa_len: u8,
    pub sa_family: u8,
    pub sa_data: [u8; 14],
}

/// OpenBSD `struct sockaddr_in`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SockaddrIn {
    pub sin_len: u8,
    pub sin_family: u8,
    pub sin_port: u16,
    pub sin_addr: u32,
    pub sin_zero: [u8; 8],
}

/// OpenBSD `struct sockaddr_in6` (28 bytes; `in6_addr` is 4-byte aligned).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SockaddrIn6 {
    pub sin6_len: u8,
    pub sin6_family: u8,
    pub sin6_port: u16,
    pub sin6_flowinfo: u32,
    pub sin6_addr: [u32; 4],
    pub sin6_scope_id: u32,
}

/// `union wg_peer_endpoint`.
#[repr(C)]
#[derive(Clone, Copy)]
pub union WgPeerEndpoint {
    pub sa: Sockaddr,
    pub sin: SockaddrIn,
    pub sin6: SockaddrIn6,
}

/// OpenBSD `struct timespec`: `time_t` is 64 bits on every OpenBSD arch.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Timespec {
    pub tv_sec: i64,
    pub tv_nsec: std::ffi::c_long,
}

/// `union wg_aip_addr`: `in_addr` or `in6_addr`, both 4-byte aligned.
#[repr(C)]
#[derive(Clone, Copy)]
pub union WgAipAddr {
    pub ipv4: u32,
    pub ipv6: [u32; 4],
}

/// `struct wg_aip_io` (24 bytes on every arch).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct WgAipIo {
    pub a_af: u8,
    pub a_cidr: i32,
    pub a_addr: WgAipAddr,
}

/// `struct wg_peer_io` without its flexible `p_aips[]` (208 bytes on LP64).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct WgPeerIo {
    pub p_flags: i32,
    pub p_protocol_version: i32,
    pub p_public: [u8; 32],
    pub p_psk: [u8; 32],
    pub p_pka: u16,
    pub p_endpoint: WgPeerEndpoint,
    pub p_txbytes: u64,
    pub p_rxbytes: u64,
    pub p_last_handshake: Timespec,
    pub p_description: [u8; 64],
    pub p_aips_count: usize,
}

/// `struct wg_interface_io` without its flexible `i_peers[]` (80 on LP64).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct WgInterfaceIo {
    pub i_flags: u8,
    pub i_port: u16,
    pub i_rtable: i32,
    pub i_public: [u8; 32],
    pub i_private: [u8; 32],
    pub i_peers_count: usize,
}

/// `struct wg_data_io` (32 bytes on LP64): the ioctl argument.
#[repr(C)]
pub struct WgDataIo {
    pub wgd_name: [u8; 16],
    pub wgd_size: usize,
    pub wgd_interface: *mut WgInterfaceIo,
}

/// OpenBSD's `_IOWR(group, num, len)` (sys/ioccom.h).
pub const fn iowr(group: u8, num: u8, len: usize) -> u64 {
    const IOC_INOUT: u64 = 0x4000_0000 | 0x8000_0000;
    const IOCPARM_MASK: u64 = 0x1fff;
    IOC_INOUT | (((len as u64) & IOCPARM_MASK) << 16) | ((group as u64) << 8) | num as u64
}

pub const SIOCSWG: u64 = iowr(b'i', 210, size_of::<WgDataIo>());
pub const SIOCGWG: u64 = iowr(b'i', 211, size_of::<WgDataIo>());

const IFACE: usize = size_of::<WgInterfaceIo>();
const PEER: usize = size_of::<WgPeerIo>();
const AIP: usize = size_of::<WgAipIo>();

/// Largest SIOCGWG reply accepted (the kernel names the size it needs).
const MAX_GET: usize = 64 << 20;

fn put(buf: &mut [u8], off: usize, bytes: &[u8]) {
    buf[off..off + bytes.len()].copy_from_slice(bytes);
}

/// A SIOCSWG payload's header: `i_flags = 0` (W7), `peers` entries.
fn set_header(b: &mut [u8], peers: usize) {
    put(
        b,
        offset_of!(WgInterfaceIo, i_peers_count),
        &peers.to_ne_bytes(),
    );
}

/// The entry at `at`: its flags and the peer's public key.
fn peer_head(b: &mut [u8], at: usize, flags: i32, public_key: &[u8; 32]) {
    put(b, at + offset_of!(WgPeerIo, p_flags), &flags.to_ne_bytes());
    put(b, at + offset_of!(WgPeerIo, p_public), public_key);
}

/// The SIOCSWG payload that sets one existing peer's PSK and nothing else:
/// `i_flags = 0`, one peer, `p_flags = HAS_PUBLIC|HAS_PSK|UPDATE`, no
/// allowed IPs. Native byte order, padding zero. `wgd_size` = its length.
pub fn encode_set(public_key: &[u8; 32], psk: &Psk) -> Zeroizing<Vec<u8>> {
    let mut b = Zeroizing::new(vec![0u8; IFACE + PEER]);
    set_header(&mut b, 1);
    let flags = WG_PEER_HAS_PUBLIC | WG_PEER_HAS_PSK | WG_PEER_UPDATE;
    peer_head(&mut b, IFACE, flags, public_key);
    put(&mut b, IFACE + offset_of!(WgPeerIo, p_psk), psk.expose());
    b
}

/// The SIOCSWG payload that removes one peer: `p_flags =
/// HAS_PUBLIC|REMOVE`, no PSK, no allowed IPs (if_wg.c destroys a peer it
/// finds and skips one it does not).
pub fn encode_remove(public_key: &[u8; 32]) -> Vec<u8> {
    let mut b = vec![0u8; IFACE + PEER];
    set_header(&mut b, 1);
    peer_head(
        &mut b,
        IFACE,
        WG_PEER_HAS_PUBLIC | WG_PEER_REMOVE,
        public_key,
    );
    b
}

/// `wgd_name`: the interface name, NUL-padded.
pub fn ifname_bytes(name: &str) -> Result<[u8; 16], WgError> {
    check_ifname(name)?;
    let mut n = [0u8; 16];
    n[..name.len()].copy_from_slice(name.as_bytes());
    Ok(n)
}

/// Walks a SIOCGWG reply (the first `wgd_size` bytes) for `want`: its PSK
/// (all zero when the kernel reports none) or `None` when it is no peer.
pub fn decode_get(b: &[u8], want: &[u8; 32]) -> Result<Option<Psk>, WgError> {
    peer::find(b, want)?.map(|f| peer::psk(&f)).transpose()
}

/// The interface's own public key from a SIOCGWG reply: `i_public` when
/// `i_flags` has WG_INTERFACE_HAS_PUBLIC. Touches nothing else (in
/// particular not `i_private`).
pub fn decode_public(b: &[u8]) -> Result<[u8; 32], WgError> {
    let flags_at = offset_of!(WgInterfaceIo, i_flags);
    let at = offset_of!(WgInterfaceIo, i_public);
    let (Some(&flags), Some(public)) = (b.get(flags_at), b.get(at..at + 32)) else {
        return Err(WgError::Protocol("SIOCGWG reply truncated".into()));
    };
    if flags & WG_INTERFACE_HAS_PUBLIC == 0 {
        return Err(super::no_private_key());
    }
    Ok(public.try_into().expect("32 bytes"))
}

/// The ioctl(2) itself: the seam where the tests put a model of wg(4)
/// (`model.rs`), so that the backend's whole sequence of calls is tested on
/// every OS.
pub trait WgIoctl: Send {
    /// One SIOCSWG/SIOCGWG on `name` with `buf` as `wgd_interface`;
    /// returns the `wgd_size` the kernel left.
    fn ioctl(&mut self, req: u64, name: &[u8; 16], buf: &mut [u8]) -> Result<usize, WgError>;
}

/// The running kernel.
struct Kernel;

impl WgIoctl for Kernel {
    fn ioctl(&mut self, req: u64, name: &[u8; 16], buf: &mut [u8]) -> Result<usize, WgError> {
        ioctl_wg(req, name, buf)
    }
}

/// The `openbsd` backend.
pub struct OpenBsd {
    kernel: Box<dyn WgIoctl>,
}

impl std::fmt::Debug for OpenBsd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpenBsd")
    }
}

impl Default for OpenBsd {
    fn default() -> OpenBsd {
        OpenBsd::new()
    }
}

impl OpenBsd {
    pub fn new() -> OpenBsd {
        OpenBsd::with(Box::new(Kernel))
    }

    pub fn with(kernel: Box<dyn WgIoctl>) -> OpenBsd {
        OpenBsd { kernel }
    }

    fn set(&mut self, ifname: &str, req: &mut [u8]) -> Result<(), WgError> {
        let name = ifname_bytes(ifname)?;
        self.kernel.ioctl(SIOCSWG, &name, req).map(|_| ())
    }

    fn get(&mut self, peer: &WgPeer) -> Result<Option<Psk>, WgError> {
        decode_get(&self.read(&peer.interface)?, &peer.public_key)
    }

    /// The whole peer, as re-creating it needs.
    fn peer(&mut self, peer: &WgPeer) -> Result<Option<peer::Peer>, WgError> {
        let reply = self.read(&peer.interface)?;
        peer::find(&reply, &peer.public_key)?
            .map(|f| peer::decode(&f))
            .transpose()
    }

    /// One whole SIOCGWG reply (its first `wgd_size` bytes).
    fn read(&mut self, ifname: &str) -> Result<Zeroizing<Vec<u8>>, WgError> {
        let name = ifname_bytes(ifname)?;
        let mut len = IFACE + 8 * PEER + 64 * AIP;
        // The kernel writes the size it needs when ours is too small; peers
        // may be added in between, so try a few times.
        for _ in 0..4 {
            let mut buf = Zeroizing::new(vec![0u8; len]);
            let need = self.kernel.ioctl(SIOCGWG, &name, &mut buf)?;
            if need <= len {
                buf.truncate(need);
                return Ok(buf);
            }
            if need > MAX_GET {
                return Err(WgError::Protocol(format!("SIOCGWG wants {need} bytes")));
            }
            len = need + 4 * PEER;
        }
        Err(WgError::Io("SIOCGWG: interface keeps growing".into()))
    }
}

impl WgBackend for OpenBsd {
    fn name(&self) -> &'static str {
        "openbsd"
    }

    fn set_psk(&mut self, peer: &WgPeer, psk: &Psk) -> Result<(), WgError> {
        if self.get(peer)?.is_none() {
            return Err(WgError::NoSuchPeer);
        }
        let mut req = encode_set(&peer.public_key, psk);
        self.set(&peer.interface, &mut req)?;
        drop(req);
        verify(self.get(peer)?, psk)
    }

    fn get_psk(&mut self, peer: &WgPeer) -> Result<Psk, WgError> {
        self.get(peer)?.ok_or(WgError::NoSuchPeer)
    }

    fn public_key(&mut self, interface: &str) -> Result<[u8; 32], WgError> {
        decode_public(&self.read(interface)?)
    }

    fn remove_peer(&mut self, peer: &WgPeer) -> Result<(), WgError> {
        if self.get(peer)?.is_none() {
            return Ok(());
        }
        self.set(&peer.interface, &mut encode_remove(&peer.public_key))?;
        match self.get(peer)? {
            None => Ok(()),
            Some(_) => Err(WgError::Protocol("peer still there after remove".into())),
        }
    }

    /// One SIOCSWG removes the peer and adds it back with what it had and
    /// a keepalive (`peer::encode_recreate`); then the read-back must show
    /// it all again. The read and the set are two calls: a peer an
    /// operator removes between them comes back, which no lockdown can
    /// cause (the ladder's removal runs on this same thread, never between
    /// them).
    fn new_session(&mut self, peer: &WgPeer, keepalive: u16) -> Result<PeerConfig, WgError> {
        let before = self.peer(peer)?.ok_or(WgError::NoSuchPeer)?;
        let pka = match before.config.keepalive {
            0 => keepalive,
            own => own,
        };
        let mut req = peer::encode_recreate(&peer.public_key, &before, pka);
        self.set(&peer.interface, &mut req)?;
        drop(req);
        let after = self.peer(peer)?;
        if after
            .as_ref()
            .is_some_and(|a| a.description != before.description)
        {
            return Err(WgError::Protocol(
                "re-created peer lost its description".into(),
            ));
        }
        verify_recreated(&before.config, after.map(|a| a.config))?;
        Ok(before.config)
    }

    /// `p_last_handshake`: wg(4) stamps it with nanotime(9), the wall
    /// clock, when a handshake completes (W18).
    fn last_handshake(&mut self, peer: &WgPeer) -> Result<Option<std::time::SystemTime>, WgError> {
        Ok(self.peer(peer)?.ok_or(WgError::NoSuchPeer)?.handshake)
    }
}

/// One SIOCSWG/SIOCGWG; returns the `wgd_size` the kernel left.
#[cfg(target_os = "openbsd")]
fn ioctl_wg(req: u64, name: &[u8; 16], buf: &mut [u8]) -> Result<usize, WgError> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let what = if req == SIOCSWG { "SIOCSWG" } else { "SIOCGWG" };
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(WgError::Io(format!("socket: {e}")));
    }
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut data = WgDataIo {
        wgd_name: *name,
        wgd_size: buf.len(),
        wgd_interface: buf.as_mut_ptr().cast(),
    };
    // SAFETY: `data` points at `buf`, which lives across the call and is
    // `wgd_size` bytes long; the kernel copies in/out at most that much.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), req as libc::c_ulong, &mut data) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ENXIO) => WgError::NoSuchInterface,
            Some(libc::ENOTTY) => WgError::Protocol(format!("{what}: not a wg(4) interface")),
            _ => WgError::Io(format!("{what}: {e}")),
        });
    }
    Ok(data.wgd_size)
}

#[cfg(not(target_os = "openbsd"))]
fn ioctl_wg(_req: u64, _name: &[u8; 16], _buf: &mut [u8]) -> Result<usize, WgError> {
    Err(WgError::Io("openbsd backend on non-OpenBSD".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers() {
        assert_eq!(iowr(b'i', 210, 32), 0xc020_69d2);
        assert_eq!(iowr(b'i', 211, 32), 0xc020_69d3);
        #[cfg(target_pointer_width = "64")]
        assert_eq!((SIOCSWG, SIOCGWG), (0xc020_69d2, 0xc020_69d3));
    }

    #[test]
    fn pieces_have_openbsd_sizes() {
        assert_eq!(size_of::<Sockaddr>(), 16);
        assert_eq!(size_of::<SockaddrIn>(), 16);
        assert_eq!(size_of::<SockaddrIn6>(), 28);
        assert_eq!(size_of::<WgPeerEndpoint>(), 28);
        assert_eq!(std::mem::align_of::<WgPeerEndpoint>(), 4);
        assert_eq!(size_of::<WgAipIo>(), 24);
        assert_eq!(offset_of!(WgAipIo, a_cidr), 4);
        assert_eq!(offset_of!(WgAipIo, a_addr), 8);
        assert_eq!(offset_of!(SockaddrIn6, sin6_addr), 8);
        assert_eq!(offset_of!(SockaddrIn6, sin6_scope_id), 24);
    }

    #[cfg(target_pointer_width = "64")]
    #[test]
    fn lp64_layout_matches_reference() {
        assert_eq!(size_of::<WgDataIo>(), 32);
        assert_eq!(offset_of!(WgDataIo, wgd_size), 16);
        assert_eq!(offset_of!(WgDataIo, wgd_interface), 24);
        assert_eq!(size_of::<WgInterfaceIo>(), 80);
        assert_eq!(offset_of!(WgInterfaceIo, i_port), 2);
        assert_eq!(offset_of!(WgInterfaceIo, i_rtable), 4);
        assert_eq!(offset_of!(WgInterfaceIo, i_public), 8);
        assert_eq!(offset_of!(WgInterfaceIo, i_private), 40);
        assert_eq!(offset_of!(WgInterfaceIo, i_peers_count), 72);
        assert_eq!(offset_of!(WgInterfaceIo, i_flags), 0);
        assert_eq!(size_of::<Timespec>(), 16);
        assert_eq!(size_of::<WgPeerIo>(), 208);
        assert_eq!(offset_of!(WgPeerIo, p_protocol_version), 4);
        assert_eq!(offset_of!(WgPeerIo, p_public), 8);
        assert_eq!(offset_of!(WgPeerIo, p_psk), 40);
        assert_eq!(offset_of!(WgPeerIo, p_pka), 72);
        assert_eq!(offset_of!(WgPeerIo, p_endpoint), 76);
        assert_eq!(offset_of!(WgPeerIo, p_txbytes), 104);
        assert_eq!(offset_of!(WgPeerIo, p_rxbytes), 112);
        assert_eq!(offset_of!(WgPeerIo, p_last_handshake), 120);
        assert_eq!(offset_of!(WgPeerIo, p_description), 136);
        assert_eq!(offset_of!(WgPeerIo, p_aips_count), 200);
    }

    /// 80 + 208 bytes: peers_count 1 at 72; p_flags 0x43 at 80, public key
    /// at 88, PSK at 120, everything else zero.
    #[cfg(all(target_pointer_width = "64", target_endian = "little"))]
    #[test]
    fn set_request_golden_bytes() {
        const GOLDEN: [&str; 9] = [
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0000000000000000010000000000000043000000000000001111111111111111",
            "1111111111111111111111111111111111111111111111112222222222222222",
            "2222222222222222222222222222222222222222222222220000000000000000",
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0000000000000000000000000000000000000000000000000000000000000000",
        ];
        let b = encode_set(&[0x11; 32], &Psk::from_bytes([0x22; 32]));
        assert_eq!(b.len(), 288);
        let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
        assert_eq!(hex, GOLDEN.concat());
    }

    #[cfg(target_pointer_width = "64")]
    #[test]
    fn remove_request_golden_bytes() {
        let b = encode_remove(&[0x11; 32]);
        assert_eq!(b.len(), 288);
        // i_peers_count = 1 at 72; p_flags = HAS_PUBLIC|REMOVE (0x21) at
        // 80; p_public at 88; no PSK, no allowed IPs: zero elsewhere.
        assert_eq!(&b[72..80], &1usize.to_ne_bytes());
        assert_eq!(&b[80..84], &0x21i32.to_ne_bytes());
        assert_eq!(&b[88..120], &[0x11; 32]);
        let mut rest = b.clone();
        rest[72..80].fill(0);
        rest[80..84].fill(0);
        rest[88..120].fill(0);
        assert!(rest.iter().all(|&x| x == 0));
    }

    /// A reply as the kernel writes it: peer A with two allowed IPs (24
    /// bytes each), then peer B with a PSK, then peer C without one.
    #[cfg(target_pointer_width = "64")]
    fn reply() -> Vec<u8> {
        let mut b = vec![0u8; 80 + 208 + 2 * 24 + 208 + 208];
        b[72..80].copy_from_slice(&3usize.to_ne_bytes());
        let mut peer = |at: usize, key: u8, psk: Option<u8>, aips: usize| {
            let flags = WG_PEER_HAS_PUBLIC | if psk.is_some() { WG_PEER_HAS_PSK } else { 0 };
            b[at..at + 4].copy_from_slice(&flags.to_ne_bytes());
            b[at + 8..at + 40].fill(key);
            b[at + 40..at + 72].fill(psk.unwrap_or(0));
            b[at + 200..at + 208].copy_from_slice(&aips.to_ne_bytes());
        };
        peer(80, 0xa1, Some(0x5a), 2);
        peer(80 + 208 + 48, 0xb2, Some(0x6b), 0);
        peer(80 + 208 + 48 + 208, 0xc3, None, 0);
        b
    }

    #[cfg(target_pointer_width = "64")]
    #[test]
    fn decode_walks_peers_and_allowed_ips() {
        let b = reply();
        let a = decode_get(&b, &[0xa1; 32]).unwrap().unwrap();
        assert_eq!(a.expose(), &[0x5a; 32]);
        let bb = decode_get(&b, &[0xb2; 32]).unwrap().unwrap();
        assert_eq!(bb.expose(), &[0x6b; 32]);
        let c = decode_get(&b, &[0xc3; 32]).unwrap().unwrap();
        assert_eq!(c.expose(), &[0; 32]);
        assert!(decode_get(&b, &[0xd4; 32]).unwrap().is_none());
    }

    #[cfg(target_pointer_width = "64")]
    #[test]
    fn decode_refuses_counts_past_the_end() {
        let b = reply();
        assert!(decode_get(&b[..b.len() - 1], &[0xc3; 32]).is_err());
        let mut huge = b.clone();
        huge[80 + 200..80 + 208].copy_from_slice(&usize::MAX.to_ne_bytes());
        assert!(matches!(
            decode_get(&huge, &[0xb2; 32]),
            Err(WgError::Protocol(_))
        ));
        let mut many = b.clone();
        many[72..80].copy_from_slice(&1000usize.to_ne_bytes());
        assert!(decode_get(&many, &[0xb2; 32]).is_err());
        assert!(decode_get(&b[..40], &[0xb2; 32]).is_err());
    }

    /// The interface header as the kernel writes it for root: flags
    /// HAS_PUBLIC|HAS_PRIVATE|HAS_PORT at 0, port 51820 at 2, public key
    /// (0x71…) at 8, private key (0x9e…) at 40, no peers.
    #[cfg(all(target_pointer_width = "64", target_endian = "little"))]
    #[test]
    fn decode_public_golden_bytes() {
        const GOLDEN: [&str; 3] = [
            "07006cca00000000717171717171717171717171717171717171717171717171",
            "71717171717171719e9e9e9e9e9e9e9e9e9e9e9e9e9e9e9e9e9e9e9e9e9e9e9e",
            "9e9e9e9e9e9e9e9e0000000000000000",
        ];
        let hex = GOLDEN.concat();
        let b: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        assert_eq!(b.len(), 80);
        assert_eq!(u16::from_ne_bytes([b[2], b[3]]), 51820);
        assert_eq!(decode_public(&b).unwrap(), [0x71; 32]);
        // With peers after it, still the header's key.
        let mut r = reply();
        r[..72].copy_from_slice(&b[..72]);
        assert_eq!(decode_public(&r).unwrap(), [0x71; 32]);
        assert_eq!(
            decode_get(&r, &[0xb2; 32]).unwrap().unwrap().expose(),
            &[0x6b; 32]
        );
    }

    #[cfg(target_pointer_width = "64")]
    #[test]
    fn decode_public_needs_the_flag_and_the_bytes() {
        // No private key (or not root): HAS_PORT only, i_public zero.
        let mut b = vec![0u8; 80];
        b[0] = 1 << 2;
        let e = decode_public(&b).unwrap_err();
        assert_eq!(e, WgError::Protocol("interface has no private key".into()));
        b[0] = WG_INTERFACE_HAS_PUBLIC;
        b[8..40].fill(0x33);
        assert_eq!(decode_public(&b).unwrap(), [0x33; 32]);
        assert!(matches!(decode_public(&b[..39]), Err(WgError::Protocol(_))));
        assert!(decode_public(&[]).is_err());
    }

    #[test]
    fn names_are_nul_padded_and_checked() {
        let n = ifname_bytes("wg0").unwrap();
        assert_eq!(&n[..4], b"wg0\0");
        assert_eq!(n[4..], [0; 12]);
        assert!(ifname_bytes("wg0123456789abcd").is_err());
    }

    #[cfg(not(target_os = "openbsd"))]
    #[test]
    fn elsewhere_fails_closed() {
        let mut o = OpenBsd::new();
        let p = WgPeer {
            interface: "wg0".into(),
            public_key: [1; 32],
        };
        let e = o.set_psk(&p, &Psk::from_bytes([2; 32])).unwrap_err();
        assert_eq!(e, WgError::Io("openbsd backend on non-OpenBSD".into()));
        assert_eq!(o.get_psk(&p).unwrap_err(), e);
        assert_eq!(o.public_key("wg0").unwrap_err(), e);
        assert_eq!(o.new_session(&p, 25).unwrap_err(), e);
        assert_eq!(o.last_handshake(&p).unwrap_err(), e);
        assert_eq!(o.remove_peer(&p).unwrap_err(), e);
    }
}
