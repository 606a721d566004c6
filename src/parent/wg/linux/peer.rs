//! The `linux` backend's whole-peer messages, for a new session under a
//! new PSK ([`super::WgBackend::new_session`]): a peer read back from a
//! WG_CMD_GET_DEVICE dump with its endpoint, allowed IPs and keepalive,
//! and the one WG_CMD_SET_DEVICE that removes it and adds it again. Pure
//! bytes, tested on every platform like the rest of this backend.
//!
//! The kernel handles the peers of one set in order under one lock, so
//! nothing comes between the removal and the addition. But a
//! WGPEER_F_REMOVE_ME for a peer that does not exist is no error: the
//! kernel's `set_peer` skips that block with 0 and goes on, and the block
//! after it creates the peer. So a peer that something else removed
//! between our read-back and our set (an operator's `wg set ... remove`)
//! comes back, with what we read. qkdpfd's own removal (the lockdown
//! ladder's `remove_peer`) waits for the same backend lock as the whole
//! `new_session`, never runs between the two, and so is not undone this
//! way (the OpenBSD backend has the same window). Netlink has no removal that fails for an absent peer, so the
//! window (one dump, then one set, nothing else between them) stays.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use zeroize::Zeroizing;

use super::super::{PeerConfig, WgError};
use super::{
    Msg, NLM_F_ACK, NLM_F_REQUEST, WG_CMD_SET_DEVICE, WG_GENL_VERSION, WGDEVICE_A_IFNAME,
    WGDEVICE_A_PEERS, WGPEER_A_FLAGS, WGPEER_A_PRESHARED_KEY, WGPEER_A_PUBLIC_KEY,
    WGPEER_F_REMOVE_ME, WGPEER_F_UPDATE_ONLY, attrs, c_name, for_peer,
};
use crate::secret::Psk;

pub const WGPEER_A_ENDPOINT: u16 = 4;
pub const WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL: u16 = 5;
pub const WGPEER_A_LAST_HANDSHAKE_TIME: u16 = 6;
pub const WGPEER_A_ALLOWEDIPS: u16 = 9;
pub const WGPEER_F_REPLACE_ALLOWEDIPS: u32 = 1 << 1;
pub const WGALLOWEDIP_A_FAMILY: u16 = 1;
pub const WGALLOWEDIP_A_IPADDR: u16 = 2;
pub const WGALLOWEDIP_A_CIDR_MASK: u16 = 3;
/// Linux's address family numbers (the same on every Linux architecture).
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

fn bad(what: &str) -> WgError {
    WgError::Protocol(format!("netlink: bad peer {what}"))
}

/// `struct sockaddr_in` / `sockaddr_in6` as the kernel sends and takes
/// them: family in host order, port in network order.
pub fn sockaddr_bytes(a: &SocketAddr) -> Vec<u8> {
    let mut v = Vec::with_capacity(28);
    match a {
        SocketAddr::V4(a) => {
            v.extend_from_slice(&AF_INET.to_ne_bytes());
            v.extend_from_slice(&a.port().to_be_bytes());
            v.extend_from_slice(&a.ip().octets());
            v.extend_from_slice(&[0; 8]);
        }
        SocketAddr::V6(a) => {
            v.extend_from_slice(&AF_INET6.to_ne_bytes());
            v.extend_from_slice(&a.port().to_be_bytes());
            v.extend_from_slice(&a.flowinfo().to_be_bytes());
            v.extend_from_slice(&a.ip().octets());
            v.extend_from_slice(&a.scope_id().to_ne_bytes());
        }
    }
    v
}

pub fn parse_sockaddr(d: &[u8]) -> Result<SocketAddr, WgError> {
    let family = u16::from_ne_bytes(
        d.get(..2)
            .ok_or_else(|| bad("endpoint"))?
            .try_into()
            .unwrap(),
    );
    let port = u16::from_be_bytes(
        d.get(2..4)
            .ok_or_else(|| bad("endpoint"))?
            .try_into()
            .unwrap(),
    );
    match (family, d.len()) {
        (AF_INET, 16) => {
            let ip: [u8; 4] = d[4..8].try_into().unwrap();
            Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
        }
        (AF_INET6, 28) => {
            let ip: [u8; 16] = d[8..24].try_into().unwrap();
            let flow = u32::from_be_bytes(d[4..8].try_into().unwrap());
            let scope = u32::from_ne_bytes(d[24..28].try_into().unwrap());
            Ok(SocketAddr::V6(std::net::SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                flow,
                scope,
            )))
        }
        _ => Err(bad("endpoint")),
    }
}

fn allowed_ip(d: &[u8]) -> Result<(IpAddr, u8), WgError> {
    let a = attrs(d)?;
    let get = |ty| a.iter().find(|(t, _)| *t == ty).map(|(_, d)| *d);
    let family = get(WGALLOWEDIP_A_FAMILY)
        .and_then(|d| Some(u16::from_ne_bytes(d.try_into().ok()?)))
        .ok_or_else(|| bad("allowed IP family"))?;
    let addr = get(WGALLOWEDIP_A_IPADDR).ok_or_else(|| bad("allowed IP"))?;
    let mask = *get(WGALLOWEDIP_A_CIDR_MASK)
        .and_then(|d| d.first())
        .ok_or_else(|| bad("allowed IP mask"))?;
    let ip = match (family, addr.len()) {
        (AF_INET, 4) if mask <= 32 => {
            IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(addr).unwrap()))
        }
        (AF_INET6, 16) if mask <= 128 => {
            IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(addr).unwrap()))
        }
        _ => return Err(bad("allowed IP")),
    };
    Ok((ip, mask))
}

/// Folds one WG_CMD_GET_DEVICE message into `found`: `want`'s latest
/// handshake (a `struct __kernel_timespec`, two native i64), once `want`
/// is seen (Some(None): seen, never handshook).
pub fn scan_handshake(
    payload: &[u8],
    want: &[u8; 32],
    found: &mut Option<Option<std::time::SystemTime>>,
) -> Result<(), WgError> {
    for_peer(payload, want, |a| {
        let seen = found.get_or_insert(None);
        if let Some((_, d)) = a.iter().find(|(t, _)| *t == WGPEER_A_LAST_HANDSHAKE_TIME) {
            let ts: &[u8; 16] = (*d).try_into().map_err(|_| bad("handshake time"))?;
            let sec = i64::from_ne_bytes(ts[..8].try_into().expect("8 bytes"));
            let nsec = i64::from_ne_bytes(ts[8..].try_into().expect("8 bytes"));
            *seen = crate::parent::wg::handshake_time(sec, nsec)?;
        }
        Ok(())
    })
}

/// Folds one WG_CMD_GET_DEVICE message into `found`: `want`'s whole
/// config. A peer with many allowed IPs comes in several messages, each
/// repeating its public key; the later ones add allowed IPs only.
pub fn scan_peer(
    payload: &[u8],
    want: &[u8; 32],
    found: &mut Option<PeerConfig>,
) -> Result<(), WgError> {
    for_peer(payload, want, |a| {
        let get = |ty| a.iter().find(|(t, _)| *t == ty).map(|(_, d)| *d);
        let c = found.get_or_insert_with(|| PeerConfig {
            psk: Psk::from_bytes([0; 32]),
            endpoint: None,
            allowed_ips: Vec::new(),
            keepalive: 0,
        });
        if let Some(d) = get(WGPEER_A_PRESHARED_KEY) {
            let mut k = Zeroizing::new([0u8; 32]);
            k.copy_from_slice(<&[u8; 32]>::try_from(d).map_err(|_| bad("PSK"))?);
            c.psk = Psk::from_bytes(*k);
        }
        if let Some(d) = get(WGPEER_A_ENDPOINT) {
            c.endpoint = Some(parse_sockaddr(d)?);
        }
        if let Some(d) = get(WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL) {
            c.keepalive = u16::from_ne_bytes(d.try_into().map_err(|_| bad("keepalive"))?);
        }
        if let Some(ips) = get(WGPEER_A_ALLOWEDIPS) {
            for (_, ip) in attrs(ips)? {
                c.allowed_ips.push(allowed_ip(ip)?);
            }
        }
        Ok(())
    })
}

/// The most allowed IPs [`recreate_request`] takes: 40 bytes each (an
/// IPv6 one), under the 64 KiB of the nest that holds them all.
pub const RECREATE_MAX_ALLOWED_IPS: usize = 1_600;

/// WG_CMD_SET_DEVICE with two peers: the first removes `public_key`
/// (skipped if it is already gone, and the kernel goes on), the second
/// adds it again with `c` and a persistent keepalive of `keepalive`
/// seconds: it creates the peer whether or not the first found it. When
/// `keepalive` is not the peer's own, a third, update-only, gives its own
/// back in the same request: the kernel sends the keepalive that starts
/// the handshake when the second sets it (from none), and a restore in a
/// request of its own could fail and leave ours as the peer's for good.
pub fn recreate_request(
    family: u16,
    seq: u32,
    pid: u32,
    ifname: &str,
    public_key: &[u8; 32],
    c: &PeerConfig,
    keepalive: u16,
) -> Zeroizing<Vec<u8>> {
    let flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut m = Msg::new(family, flags, seq, pid, WG_CMD_SET_DEVICE, WG_GENL_VERSION);
    // 208 bytes and 40 per allowed IP: no reallocation once the PSK is in.
    let room = 256 + 48 * c.allowed_ips.len();
    m.reserve(room);
    m.attr(WGDEVICE_A_IFNAME, &c_name(ifname));
    m.nest(WGDEVICE_A_PEERS).nest(0);
    m.attr(WGPEER_A_PUBLIC_KEY, public_key);
    m.attr(WGPEER_A_FLAGS, &WGPEER_F_REMOVE_ME.to_ne_bytes());
    m.end().nest(1);
    m.attr(WGPEER_A_PUBLIC_KEY, public_key);
    m.attr(WGPEER_A_PRESHARED_KEY, c.psk.expose());
    m.attr(WGPEER_A_FLAGS, &WGPEER_F_REPLACE_ALLOWEDIPS.to_ne_bytes());
    if let Some(e) = &c.endpoint {
        m.attr(WGPEER_A_ENDPOINT, &sockaddr_bytes(e));
    }
    m.attr(
        WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL,
        &keepalive.to_ne_bytes(),
    );
    m.nest(WGPEER_A_ALLOWEDIPS);
    for (i, (ip, mask)) in c.allowed_ips.iter().enumerate() {
        m.nest(i as u16);
        let (family, bytes) = match ip {
            IpAddr::V4(a) => (AF_INET, a.octets().to_vec()),
            IpAddr::V6(a) => (AF_INET6, a.octets().to_vec()),
        };
        m.attr(WGALLOWEDIP_A_FAMILY, &family.to_ne_bytes());
        m.attr(WGALLOWEDIP_A_IPADDR, &bytes);
        m.attr(WGALLOWEDIP_A_CIDR_MASK, &[*mask]);
        m.end();
    }
    m.end().end();
    if keepalive != c.keepalive {
        m.nest(2);
        m.attr(WGPEER_A_PUBLIC_KEY, public_key);
        m.attr(WGPEER_A_FLAGS, &WGPEER_F_UPDATE_ONLY.to_ne_bytes());
        m.attr(
            WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL,
            &c.keepalive.to_ne_bytes(),
        );
        m.end();
    }
    m.end();
    let req = m.finish();
    debug_assert!(req.len() <= room);
    req
}

#[cfg(test)]
mod tests {
    use super::super::GENL_HDRLEN;
    use super::*;

    fn config() -> PeerConfig {
        PeerConfig {
            psk: Psk::from_bytes([0x42; 32]),
            endpoint: Some("192.0.2.2:51820".parse().unwrap()),
            allowed_ips: vec![
                ("10.99.0.2".parse().unwrap(), 32),
                ("fd00::".parse().unwrap(), 64),
            ],
            keepalive: 0,
        }
    }

    /// A WG_CMD_GET_DEVICE message with two peers; the second has a
    /// handshake time `ts` when given.
    fn device_with(ts: Option<[u8; 16]>) -> Vec<u8> {
        let mut m = super::super::Msg::new(0x1c, 0, 1, 0, super::super::WG_CMD_GET_DEVICE, 1);
        m.nest(WGDEVICE_A_PEERS);
        m.nest(0).attr(WGPEER_A_PUBLIC_KEY, &[1; 32]).end();
        m.nest(1).attr(WGPEER_A_PUBLIC_KEY, &[2; 32]);
        if let Some(ts) = ts {
            m.attr(WGPEER_A_LAST_HANDSHAKE_TIME, &ts);
        }
        m.end().end();
        m.finish()[16..].to_vec()
    }

    #[test]
    fn handshake_time_is_a_kernel_timespec_of_the_wanted_peer() {
        let mut ts = [0u8; 16];
        ts[..8].copy_from_slice(&1_700_000_000i64.to_ne_bytes());
        ts[8..].copy_from_slice(&5i64.to_ne_bytes());
        let msg = device_with(Some(ts));
        let mut found = None;
        scan_handshake(&msg, &[2; 32], &mut found).unwrap();
        let want = std::time::UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 5);
        assert_eq!(found, Some(Some(want)));
        // The other peer: seen, with no time of its own.
        let mut found = None;
        scan_handshake(&msg, &[1; 32], &mut found).unwrap();
        assert_eq!(found, Some(None));
        let mut found = None;
        scan_handshake(&msg, &[3; 32], &mut found).unwrap();
        assert_eq!(found, None);
        // Zero: never; a bad nanosecond count or length: refused.
        let mut found = None;
        scan_handshake(&device_with(Some([0; 16])), &[2; 32], &mut found).unwrap();
        assert_eq!(found, Some(None));
        ts[8..].copy_from_slice(&1_000_000_000i64.to_ne_bytes());
        assert!(scan_handshake(&device_with(Some(ts)), &[2; 32], &mut None).is_err());
    }

    #[test]
    fn sockaddrs_round_trip_in_the_kernels_layout() {
        let v4: SocketAddr = "192.0.2.2:51820".parse().unwrap();
        let b = sockaddr_bytes(&v4);
        assert_eq!(b.len(), 16);
        assert_eq!(&b[2..8], &[0xca, 0x6c, 192, 0, 2, 2]);
        assert_eq!(parse_sockaddr(&b).unwrap(), v4);
        let v6: SocketAddr = "[2001:db8::1]:7".parse().unwrap();
        let b = sockaddr_bytes(&v6);
        assert_eq!(b.len(), 28);
        assert_eq!(&b[2..4], &[0, 7]);
        assert_eq!(b[8], 0x20);
        assert_eq!(parse_sockaddr(&b).unwrap(), v6);
        assert!(parse_sockaddr(&b[..20]).is_err());
        assert!(parse_sockaddr(&[9, 9]).is_err());
    }

    /// The set request, read back as a dump would carry the same peer:
    /// what scan_peer finds in the second peer is what was read.
    #[test]
    fn recreate_removes_then_adds_the_same_peer_with_everything_read() {
        let c = config();
        let req = recreate_request(0x1c, 7, 9, "wg0", &[1; 32], &c, 25);
        // nlmsghdr (16) + genl (4), then IFNAME "wg0\0" (8).
        assert_eq!(u16::from_ne_bytes([req[4], req[5]]), 0x1c);
        assert_eq!(
            u16::from_ne_bytes([req[6], req[7]]),
            NLM_F_REQUEST | NLM_F_ACK
        );
        assert_eq!(req[16], WG_CMD_SET_DEVICE);
        let body = &req[16..];
        let top = attrs(&body[GENL_HDRLEN..]).unwrap();
        assert_eq!(top[0], (WGDEVICE_A_IFNAME, &b"wg0\0"[..]));
        let peers = attrs(top[1].1).unwrap();
        assert_eq!(peers.len(), 3, "remove, add, the peer's own keepalive back");
        let first = attrs(peers[0].1).unwrap();
        assert_eq!(
            first,
            vec![
                (WGPEER_A_PUBLIC_KEY, &[1u8; 32][..]),
                (WGPEER_A_FLAGS, &WGPEER_F_REMOVE_ME.to_ne_bytes()[..])
            ]
        );
        let mut found = None;
        scan_peer(&req[16..], &[1; 32], &mut found).unwrap();
        let got = found.unwrap();
        assert_eq!(got.psk.expose(), &[0x42; 32]);
        assert_eq!(got.endpoint, c.endpoint);
        assert_eq!(got.allowed_ips, c.allowed_ips);
        assert_eq!(got.keepalive, 0, "the peer's own, once the request is done");
        let second = attrs(peers[1].1).unwrap();
        assert!(second.contains(&(
            WGPEER_A_FLAGS,
            &WGPEER_F_REPLACE_ALLOWEDIPS.to_ne_bytes()[..]
        )));
        assert!(second.contains(&(
            WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL,
            &25u16.to_ne_bytes()[..]
        )));
        assert_eq!(
            attrs(peers[2].1).unwrap(),
            vec![
                (WGPEER_A_PUBLIC_KEY, &[1u8; 32][..]),
                (WGPEER_A_FLAGS, &WGPEER_F_UPDATE_ONLY.to_ne_bytes()[..]),
                (
                    WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL,
                    &0u16.to_ne_bytes()[..]
                ),
            ]
        );
        // A peer with a keepalive of its own keeps it: two peers.
        let own = PeerConfig {
            keepalive: 25,
            ..c.clone()
        };
        let req = recreate_request(0x1c, 7, 9, "wg0", &[1; 32], &own, 25);
        let top = attrs(&req[16 + GENL_HDRLEN..]).unwrap();
        assert_eq!(attrs(top[1].1).unwrap().len(), 2);
        // No endpoint read back: none sent.
        let mut c2 = c.clone();
        c2.endpoint = None;
        let req = recreate_request(0x1c, 7, 9, "wg0", &[1; 32], &c2, 25);
        let mut found = None;
        scan_peer(&req[16..], &[1; 32], &mut found).unwrap();
        assert_eq!(found.unwrap().endpoint, None);
        let mut other = None;
        scan_peer(&req[16..], &[2; 32], &mut other).unwrap();
        assert!(other.is_none());
    }

    /// Many allowed IPs: the request fits the room reserved before the
    /// PSK went in (the debug assertion), and reads back whole.
    #[test]
    fn many_allowed_ips_fit_the_reserved_room() {
        let mut c = config();
        c.endpoint = Some("[fe80::1234:5678:9abc:def0%7]:65535".parse().unwrap());
        c.allowed_ips = (0..300u16)
            .map(|i| {
                let ip =
                    std::net::Ipv6Addr::new(0xfd00, i, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, i);
                (IpAddr::V6(ip), 128)
            })
            .collect();
        let req = recreate_request(0x1c, 7, 9, "wg0", &[1; 32], &c, 25);
        let mut found = None;
        scan_peer(&req[16..], &[1; 32], &mut found).unwrap();
        assert_eq!(found.unwrap().allowed_ips, c.allowed_ips);
        // The most it takes: every length fits (the debug assertions).
        c.allowed_ips = (0..RECREATE_MAX_ALLOWED_IPS)
            .map(|i| {
                let ip = std::net::Ipv6Addr::new(0xfd00, i as u16, 0, 0, 0, 0, 0, 1);
                (IpAddr::V6(ip), 128)
            })
            .collect();
        let req = recreate_request(0x1c, 7, 9, "wg0", &[1; 32], &c, 25);
        let mut found = None;
        scan_peer(&req[16..], &[1; 32], &mut found).unwrap();
        assert_eq!(found.unwrap().allowed_ips.len(), RECREATE_MAX_ALLOWED_IPS);
    }

    #[test]
    fn bad_allowed_ips_are_refused() {
        let mut c = config();
        c.allowed_ips = vec![("10.0.0.0".parse().unwrap(), 33)];
        let req = recreate_request(0x1c, 7, 9, "wg0", &[1; 32], &c, 25);
        let mut found = None;
        assert!(scan_peer(&req[16..], &[1; 32], &mut found).is_err());
    }
}
