//! One wg(4) peer in full, for putting a new PSK in force (issue 13): the
//! walk of a SIOCGWG reply that finds a peer, the decoding of all a
//! re-added peer needs to carry the same traffic (endpoint, allowed IPs,
//! PSK, keepalive, description) and of its last handshake, and the one
//! SIOCSWG that removes the peer and adds it back with all of that.
//!
//! wg(4) applies the peers of one SIOCSWG in order under the interface's
//! lock (OpenBSD facts W15-W19), so a removal followed by the same key's
//! addition is one call: the new peer has no session, and the keepalive
//! set on it sends an empty packet at once, which, with no session,
//! starts a handshake. A third entry gives the peer its own keepalive back
//! in the same call; the packet already queued still goes.

use std::ffi::c_long;
use std::mem::offset_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::SystemTime;

use zeroize::Zeroizing;

use super::{
    AIP, IFACE, PEER, SockaddrIn, SockaddrIn6, Timespec, WG_PEER_HAS_ENDPOINT, WG_PEER_HAS_PKA,
    WG_PEER_HAS_PSK, WG_PEER_HAS_PUBLIC, WG_PEER_REMOVE, WG_PEER_SET_DESCRIPTION, WG_PEER_UPDATE,
    WgAipIo, WgInterfaceIo, WgPeerIo, peer_head, put, set_header,
};
use crate::parent::wg::{PeerConfig, WgError, handshake_time};
use crate::secret::Psk;

/// OpenBSD's address families (sys/socket.h; W17).
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 24;
#[cfg(target_os = "openbsd")]
const _: () = assert!(AF_INET as i32 == libc::AF_INET && AF_INET6 as i32 == libc::AF_INET6);

/// A peer's place in a SIOCGWG reply: its `wg_peer_io` and its allowed
/// IPs.
pub struct Found<'a> {
    pub head: &'a [u8],
    pub aips: &'a [u8],
}

/// A peer as read back: what re-creating it must keep, and its last
/// handshake. No `Debug` of its own: print `config`, whose `Debug` hides
/// the PSK.
pub struct Peer {
    pub config: PeerConfig,
    /// `p_description`, NUL-terminated as the kernel wrote it.
    pub description: [u8; 64],
    pub handshake: Option<SystemTime>,
}

fn truncated(what: &str) -> WgError {
    WgError::Protocol(format!("SIOCGWG reply truncated{what}"))
}

/// `N` bytes at `off`, or a truncated reply.
pub fn bytes<const N: usize>(b: &[u8], off: usize) -> Result<[u8; N], WgError> {
    b.get(off..off + N)
        .map(|s| s.try_into().expect("N bytes"))
        .ok_or_else(|| truncated(""))
}

fn usize_at(b: &[u8], off: usize) -> Result<usize, WgError> {
    bytes(b, off).map(usize::from_ne_bytes)
}

/// Walks the whole reply (the first `wgd_size` bytes), every count checked
/// against its length, for the peer whose public key is `want`. Each peer
/// takes 208 bytes plus `p_aips_count` × 24.
pub fn find<'a>(b: &'a [u8], want: &[u8; 32]) -> Result<Option<Found<'a>>, WgError> {
    let count = usize_at(b, offset_of!(WgInterfaceIo, i_peers_count))?;
    let key = offset_of!(WgPeerIo, p_public);
    let mut off = IFACE;
    let mut found = None;
    for _ in 0..count {
        let head = b
            .get(off..off + PEER)
            .ok_or_else(|| truncated(" in a peer"))?;
        let aips = usize_at(head, offset_of!(WgPeerIo, p_aips_count))?;
        let end = aips
            .checked_mul(AIP)
            .and_then(|a| a.checked_add(off + PEER))
            .filter(|&end| end <= b.len())
            .ok_or_else(|| WgError::Protocol("SIOCGWG reply: allowed IPs past its end".into()))?;
        if &head[key..key + 32] == want {
            found = Some(Found {
                head,
                aips: &b[off + PEER..end],
            });
        }
        off = end;
    }
    Ok(found)
}

/// The peer's PSK: all zero when the kernel reports none (W10).
pub fn psk(f: &Found) -> Result<Psk, WgError> {
    let flags = i32::from_ne_bytes(bytes(f.head, offset_of!(WgPeerIo, p_flags))?);
    let mut k = Zeroizing::new([0u8; 32]);
    if flags & WG_PEER_HAS_PSK != 0 {
        k.copy_from_slice(&f.head[offset_of!(WgPeerIo, p_psk)..][..32]);
    }
    Ok(Psk::from_bytes(*k))
}

/// Everything about the peer, checked: an address family or prefix length
/// wg(4) would not have written is an error, never a guess.
pub fn decode(f: &Found) -> Result<Peer, WgError> {
    let h = f.head;
    let flags = i32::from_ne_bytes(bytes(h, offset_of!(WgPeerIo, p_flags))?);
    let endpoint = if flags & WG_PEER_HAS_ENDPOINT != 0 {
        Some(endpoint(&bytes::<28>(
            h,
            offset_of!(WgPeerIo, p_endpoint),
        )?)?)
    } else {
        None
    };
    let keepalive = if flags & WG_PEER_HAS_PKA != 0 {
        u16::from_ne_bytes(bytes(h, offset_of!(WgPeerIo, p_pka))?)
    } else {
        0
    };
    let ts = offset_of!(WgPeerIo, p_last_handshake);
    let sec = i64::from_ne_bytes(bytes(h, ts + offset_of!(Timespec, tv_sec))?);
    let nsec = c_long::from_ne_bytes(bytes(h, ts + offset_of!(Timespec, tv_nsec))?);
    let mut description = bytes::<64>(h, offset_of!(WgPeerIo, p_description))?;
    // strlcpy wrote it; a reply without its NUL keeps 63 bytes of it.
    description[63] = 0;
    let allowed_ips = f
        .aips
        .chunks_exact(AIP)
        .map(allowed_ip)
        .collect::<Result<_, _>>()?;
    Ok(Peer {
        config: PeerConfig {
            psk: psk(f)?,
            endpoint,
            allowed_ips,
            keepalive,
        },
        description,
        // c_long is i32 on OpenBSD's 32-bit platforms.
        #[allow(clippy::useless_conversion)]
        handshake: handshake_time(sec, i64::from(nsec))?,
    })
}

/// `union wg_peer_endpoint`: a sockaddr_in or sockaddr_in6 (port and flow
/// label in network order, scope id in host order).
fn endpoint(e: &[u8; 28]) -> Result<SocketAddr, WgError> {
    let port = u16::from_be_bytes([e[2], e[3]]);
    match e[1] {
        AF_INET => {
            let a = Ipv4Addr::new(e[4], e[5], e[6], e[7]);
            Ok(SocketAddr::V4(SocketAddrV4::new(a, port)))
        }
        AF_INET6 => {
            let flow = u32::from_be_bytes(e[4..8].try_into().expect("4"));
            let a: [u8; 16] = e[8..24].try_into().expect("16");
            let scope = u32::from_ne_bytes(e[24..28].try_into().expect("4"));
            Ok(SocketAddr::V6(SocketAddrV6::new(
                a.into(),
                port,
                flow,
                scope,
            )))
        }
        f => Err(WgError::Protocol(format!(
            "SIOCGWG: endpoint of address family {f}"
        ))),
    }
}

fn endpoint_bytes(a: &SocketAddr) -> [u8; 28] {
    let mut e = [0u8; 28];
    e[2..4].copy_from_slice(&a.port().to_be_bytes());
    match a {
        SocketAddr::V4(v4) => {
            e[0] = size_of::<SockaddrIn>() as u8;
            e[1] = AF_INET;
            e[4..8].copy_from_slice(&v4.ip().octets());
        }
        SocketAddr::V6(v6) => {
            e[0] = size_of::<SockaddrIn6>() as u8;
            e[1] = AF_INET6;
            e[4..8].copy_from_slice(&v6.flowinfo().to_be_bytes());
            e[8..24].copy_from_slice(&v6.ip().octets());
            e[24..28].copy_from_slice(&v6.scope_id().to_ne_bytes());
        }
    }
    e
}

/// One `wg_aip_io`.
fn allowed_ip(a: &[u8]) -> Result<(IpAddr, u8), WgError> {
    let cidr = i32::from_ne_bytes(bytes(a, offset_of!(WgAipIo, a_cidr))?);
    let at = offset_of!(WgAipIo, a_addr);
    let (ip, max) = match a[offset_of!(WgAipIo, a_af)] {
        AF_INET => (IpAddr::V4(Ipv4Addr::from(bytes::<4>(a, at)?)), 32),
        AF_INET6 => (IpAddr::V6(Ipv6Addr::from(bytes::<16>(a, at)?)), 128),
        f => {
            return Err(WgError::Protocol(format!(
                "SIOCGWG: allowed IP of address family {f}"
            )));
        }
    };
    match u8::try_from(cidr) {
        Ok(c) if c <= max => Ok((ip, c)),
        _ => Err(WgError::Protocol(format!(
            "SIOCGWG: allowed IP {ip} with prefix length {cidr}"
        ))),
    }
}

fn allowed_ip_bytes(ip: &IpAddr, cidr: u8) -> [u8; AIP] {
    let mut a = [0u8; AIP];
    let at = offset_of!(WgAipIo, a_addr);
    match ip {
        IpAddr::V4(v4) => {
            a[0] = AF_INET;
            a[at..at + 4].copy_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            a[0] = AF_INET6;
            a[at..at + 16].copy_from_slice(&v6.octets());
        }
    }
    let c = offset_of!(WgAipIo, a_cidr);
    a[c..c + 4].copy_from_slice(&i32::from(cidr).to_ne_bytes());
    a
}

/// The SIOCSWG payload that re-creates a peer in one call: (1) `REMOVE`;
/// (2) the same key added with the PSK, endpoint, description and allowed
/// IPs read back, and a keepalive of `pka` seconds; (3) when `pka` is not
/// the peer's own, `UPDATE` with its own keepalive. `i_flags` 0 (W7): the
/// interface's keys, port and other peers stay as they are.
pub fn encode_recreate(public: &[u8; 32], was: &Peer, pka: u16) -> Zeroizing<Vec<u8>> {
    let c = &was.config;
    let restore = pka != c.keepalive;
    let peers = 2 + usize::from(restore);
    let mut b = Zeroizing::new(vec![0u8; IFACE + peers * PEER + c.allowed_ips.len() * AIP]);
    set_header(&mut b, peers);
    let mut at = IFACE;
    peer_head(&mut b, at, WG_PEER_HAS_PUBLIC | WG_PEER_REMOVE, public);
    at += PEER;

    let mut flags =
        WG_PEER_HAS_PUBLIC | WG_PEER_HAS_PSK | WG_PEER_HAS_PKA | WG_PEER_SET_DESCRIPTION;
    if let Some(e) = &c.endpoint {
        flags |= WG_PEER_HAS_ENDPOINT;
        put(
            &mut b,
            at + offset_of!(WgPeerIo, p_endpoint),
            &endpoint_bytes(e),
        );
    }
    peer_head(&mut b, at, flags, public);
    put(&mut b, at + offset_of!(WgPeerIo, p_psk), c.psk.expose());
    put(&mut b, at + offset_of!(WgPeerIo, p_pka), &pka.to_ne_bytes());
    put(
        &mut b,
        at + offset_of!(WgPeerIo, p_description),
        &was.description,
    );
    put(
        &mut b,
        at + offset_of!(WgPeerIo, p_aips_count),
        &c.allowed_ips.len().to_ne_bytes(),
    );
    at += PEER;
    for (ip, cidr) in &c.allowed_ips {
        put(&mut b, at, &allowed_ip_bytes(ip, *cidr));
        at += AIP;
    }

    if restore {
        let flags = WG_PEER_HAS_PUBLIC | WG_PEER_HAS_PKA | WG_PEER_UPDATE;
        peer_head(&mut b, at, flags, public);
        put(
            &mut b,
            at + offset_of!(WgPeerIo, p_pka),
            &c.keepalive.to_ne_bytes(),
        );
    }
    b
}

#[cfg(all(test, target_pointer_width = "64"))]
mod tests {
    use super::*;

    fn v6_endpoint() -> SocketAddr {
        SocketAddr::V6(SocketAddrV6::new(
            "fe80::1:2".parse().unwrap(),
            51820,
            0x000a_bcde,
            3,
        ))
    }

    fn was(endpoint: Option<SocketAddr>, keepalive: u16) -> Peer {
        let mut description = [0u8; 64];
        description[..6].copy_from_slice(b"branch");
        Peer {
            config: PeerConfig {
                psk: Psk::from_bytes([0x22; 32]),
                endpoint,
                allowed_ips: vec![
                    ("10.1.0.0".parse().unwrap(), 16),
                    ("2001:db8::".parse().unwrap(), 32),
                ],
                keepalive,
            },
            description,
            handshake: None,
        }
    }

    fn ne32(b: &[u8], at: usize) -> i32 {
        i32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
    }

    /// 80 + 3 × 208 + 2 × 24 bytes. Entry 1 at 80: HAS_PUBLIC|REMOVE and
    /// the key. Entry 2 at 288: HAS_PUBLIC|PSK|PKA|ENDPOINT|DESCRIPTION
    /// (0x8f), key, PSK, keepalive 25, a sockaddr_in 192.0.2.2:51820, the
    /// description, two allowed IPs after it. Entry 3 at 544:
    /// HAS_PUBLIC|PKA|UPDATE (0x45) with keepalive 0. Zero elsewhere.
    #[test]
    fn recreate_request_golden_bytes() {
        let key = [0x11; 32];
        let w = was(Some("192.0.2.2:51820".parse().unwrap()), 0);
        let b = encode_recreate(&key, &w, 25);
        assert_eq!(b.len(), 80 + 3 * 208 + 2 * 24);
        let mut want = vec![0u8; b.len()];
        let mut put = |at: usize, bytes: &[u8]| want[at..at + bytes.len()].copy_from_slice(bytes);
        put(72, &3usize.to_ne_bytes());
        put(80, &0x21i32.to_ne_bytes());
        put(88, &key);
        let p = 288;
        put(p, &0x8fi32.to_ne_bytes());
        put(p + 8, &key);
        put(p + 40, &[0x22; 32]);
        put(p + 72, &25u16.to_ne_bytes());
        // sin_len 16, AF_INET, port 51820 big-endian, 192.0.2.2.
        put(p + 76, &[16, 2, 0xca, 0x6c, 192, 0, 2, 2]);
        put(p + 136, b"branch");
        put(p + 200, &2usize.to_ne_bytes());
        // a_af, a_cidr at 4, a_addr at 8.
        put(p + 208, &[2]);
        put(p + 212, &16i32.to_ne_bytes());
        put(p + 216, &[10, 1, 0, 0]);
        put(p + 232, &[24]);
        put(p + 236, &32i32.to_ne_bytes());
        put(p + 240, &[0x20, 0x01, 0x0d, 0xb8]);
        let r = p + 208 + 48;
        assert_eq!(r, 544);
        put(r, &0x45i32.to_ne_bytes());
        put(r + 8, &key);
        assert_eq!(&b[..], &want[..]);
    }

    /// A peer that has its own keepalive keeps it: two entries, the second
    /// with that keepalive, no endpoint flag without an endpoint.
    #[test]
    fn own_keepalive_needs_no_third_entry() {
        let w = was(None, 7);
        let b = encode_recreate(&[0x11; 32], &w, 7);
        assert_eq!(b.len(), 80 + 2 * 208 + 2 * 24);
        assert_eq!(&b[72..80], &2usize.to_ne_bytes());
        assert_eq!(ne32(&b, 288), 0x87);
        assert_eq!(&b[288 + 72..288 + 74], &7u16.to_ne_bytes());
        assert!(b[288 + 76..288 + 104].iter().all(|&x| x == 0));
    }

    /// What the kernel stores from the add entry is what it reports: the
    /// entry read as a reply peer decodes to the same config, an IPv6
    /// endpoint's flow label and scope included.
    #[test]
    fn the_added_entry_reads_back_as_the_peer() {
        let w = was(Some(v6_endpoint()), 0);
        let b = encode_recreate(&[0x11; 32], &w, 0);
        assert_eq!(&b[72..80], &2usize.to_ne_bytes());
        assert_eq!(&b[288 + 76..288 + 80], &[28, 24, 0xca, 0x6c]);
        // One peer in a reply: the interface header, then entry 2.
        let mut reply = b[..80].to_vec();
        reply[72..80].copy_from_slice(&1usize.to_ne_bytes());
        reply.extend_from_slice(&b[288..]);
        let f = find(&reply, &[0x11; 32]).unwrap().unwrap();
        let got = decode(&f).unwrap();
        assert!(got.config == w.config, "{:?} != {:?}", got.config, w.config);
        assert_eq!(got.description, w.description);
        assert_eq!(got.handshake, None);
        assert!(find(&reply, &[0x12; 32]).unwrap().is_none());
    }

    fn one_peer() -> Vec<u8> {
        let w = was(Some("192.0.2.2:51820".parse().unwrap()), 25);
        let b = encode_recreate(&[0x11; 32], &w, 25);
        let mut reply = b[..80].to_vec();
        reply[72..80].copy_from_slice(&1usize.to_ne_bytes());
        reply.extend_from_slice(&b[288..]);
        reply
    }

    #[test]
    fn handshake_time_is_read_with_its_nanoseconds() {
        let mut r = one_peer();
        let ts = 80 + 120;
        r[ts..ts + 8].copy_from_slice(&1_764_900_000i64.to_ne_bytes());
        r[ts + 8..ts + 16].copy_from_slice(&123_456_789i64.to_ne_bytes());
        let p = decode(&find(&r, &[0x11; 32]).unwrap().unwrap()).unwrap();
        let want = SystemTime::UNIX_EPOCH + std::time::Duration::new(1_764_900_000, 123_456_789);
        assert_eq!(p.handshake, Some(want));
        assert_eq!(p.config.keepalive, 25);
        r[ts + 8..ts + 16].copy_from_slice(&1_000_000_000i64.to_ne_bytes());
        assert!(decode(&find(&r, &[0x11; 32]).unwrap().unwrap()).is_err());
    }

    /// What wg(4) would never write is refused, not guessed: another
    /// address family, a prefix longer than the address, a negative one.
    #[test]
    fn decode_refuses_what_wg_would_not_write() {
        let bad = |at: usize, bytes: &[u8]| {
            let mut r = one_peer();
            r[at..at + bytes.len()].copy_from_slice(bytes);
            match decode(&find(&r, &[0x11; 32]).unwrap().unwrap()) {
                Err(WgError::Protocol(m)) => m,
                other => panic!("{:?}", other.map(|p| p.config)),
            }
        };
        let aip = 80 + 208;
        assert!(bad(aip, &[1]).contains("address family 1"));
        assert!(bad(aip + 4, &33i32.to_ne_bytes()).contains("prefix length 33"));
        assert!(bad(aip + 24 + 4, &129i32.to_ne_bytes()).contains("prefix length 129"));
        assert!(bad(aip + 4, &(-1i32).to_ne_bytes()).contains("prefix length -1"));
        assert!(bad(80 + 77, &[17]).contains("endpoint of address family 17"));
        // Without HAS_ENDPOINT the bytes are not read.
        let mut r = one_peer();
        let flags = ne32(&r, 80) & !WG_PEER_HAS_ENDPOINT;
        r[80..84].copy_from_slice(&flags.to_ne_bytes());
        r[80 + 77] = 17;
        let p = decode(&find(&r, &[0x11; 32]).unwrap().unwrap()).unwrap();
        assert_eq!(p.config.endpoint, None);
        // A description without its NUL keeps 63 bytes.
        let mut r = one_peer();
        r[80 + 136..80 + 200].fill(b'x');
        let p = decode(&find(&r, &[0x11; 32]).unwrap().unwrap()).unwrap();
        assert_eq!(&p.description[..63], &[b'x'; 63]);
        assert_eq!(p.description[63], 0);
    }
}
