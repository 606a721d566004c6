//! OpenBSD wg(4) SIOCGWG answers (struct wg_interface_io, then each
//! wg_peer_io followed by its allowed IPs), raw or built from peers the
//! fuzzer chose with the same struct layouts the backend uses. Raw bytes
//! never read past the end; a built answer gives back exactly the PSK put
//! in for the wanted peer and the interface's public key; a peer re-created
//! by `encode_recreate` reads back, as the kernel would store it, as the
//! same peer (endpoint, allowed IPs, PSK, keepalive, description).
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use qkdpfd::parent::wg::PeerConfig;
use qkdpfd::parent::wg::openbsd::peer::{self, encode_recreate};
use qkdpfd::parent::wg::openbsd::{
    WG_INTERFACE_HAS_PUBLIC, WG_PEER_HAS_PSK, WgAipIo, WgInterfaceIo, WgPeerIo, decode_get,
    decode_public,
};
use qkdpfd::secret::Psk;
use std::mem::{offset_of, size_of};
use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};

#[derive(Arbitrary, Debug)]
struct Peer {
    key: [u8; 32],
    psk: [u8; 32],
    has_psk: bool,
    aips: u8,
}

#[derive(Arbitrary, Debug)]
struct Answer {
    public: [u8; 32],
    has_public: bool,
    peers: Vec<Peer>,
    want: u8,
    absent: [u8; 32],
    /// Bytes cut from the end (a truncated answer).
    cut: u8,
}

#[derive(Arbitrary, Debug)]
enum Endpoint {
    None,
    V4([u8; 4], u16),
    V6([u8; 16], u16, u32, u32),
}

#[derive(Arbitrary, Debug)]
struct Recreated {
    psk: [u8; 32],
    endpoint: Endpoint,
    /// (is IPv6, address bytes, prefix length before it is cut to fit).
    aips: Vec<(bool, [u8; 16], u8)>,
    keepalive: u16,
    pka: u16,
    description: [u8; 64],
}

#[derive(Arbitrary, Debug)]
enum Input {
    Raw(Vec<u8>, [u8; 32]),
    Built(Answer),
    Recreated(Recreated),
}

/// The add entry of a re-creation, as the reply that lists that peer alone.
fn recreated(r: &Recreated) {
    let endpoint = match r.endpoint {
        Endpoint::None => None,
        Endpoint::V4(a, port) => Some(SocketAddr::V4(SocketAddrV4::new(a.into(), port))),
        Endpoint::V6(a, port, flow, scope) => Some(SocketAddr::V6(SocketAddrV6::new(
            a.into(),
            port,
            flow,
            scope,
        ))),
    };
    let allowed_ips = r
        .aips
        .iter()
        .map(|&(v6, a, cidr)| match v6 {
            true => (IpAddr::from(a), cidr % 129),
            false => (IpAddr::from([a[0], a[1], a[2], a[3]]), cidr % 33),
        })
        .collect();
    let mut description = r.description;
    description[63] = 0;
    let was = peer::Peer {
        config: PeerConfig {
            psk: Psk::from_bytes(r.psk),
            endpoint,
            allowed_ips,
            keepalive: r.keepalive,
        },
        description,
        handshake: None,
    };
    let key = [0x11; 32];
    let b = encode_recreate(&key, &was, r.pka);
    let peers = usize::from_ne_bytes(b[72..80].try_into().unwrap());
    assert_eq!(peers, if r.pka == r.keepalive { 2 } else { 3 });
    let (iface, head) = (size_of::<WgInterfaceIo>(), size_of::<WgPeerIo>());
    let add = iface + head;
    let aips = was.config.allowed_ips.len() * size_of::<WgAipIo>();
    let mut reply = b[..iface].to_vec();
    reply[72..80].copy_from_slice(&1usize.to_ne_bytes());
    reply.extend_from_slice(&b[add..add + head + aips]);
    let found = peer::find(&reply, &key).unwrap().expect("the peer");
    let got = peer::decode(&found).unwrap();
    let mut want = was.config.clone();
    want.keepalive = r.pka;
    assert!(got.config == want, "{:?} != {:?}", got.config, want);
    assert_eq!(got.description, was.description);
}

fn put(b: &mut [u8], at: usize, v: &[u8]) {
    b[at..at + v.len()].copy_from_slice(v);
}

fn render(a: &Answer) -> Vec<u8> {
    let mut out = vec![0u8; size_of::<WgInterfaceIo>()];
    out[offset_of!(WgInterfaceIo, i_flags)] = if a.has_public {
        WG_INTERFACE_HAS_PUBLIC
    } else {
        0
    };
    put(&mut out, offset_of!(WgInterfaceIo, i_public), &a.public);
    put(&mut out, offset_of!(WgInterfaceIo, i_private), &[0x77; 32]);
    put(
        &mut out,
        offset_of!(WgInterfaceIo, i_peers_count),
        &a.peers.len().to_ne_bytes(),
    );
    for p in &a.peers {
        let mut peer = vec![0u8; size_of::<WgPeerIo>()];
        let flags = if p.has_psk { WG_PEER_HAS_PSK } else { 0 };
        put(
            &mut peer,
            offset_of!(WgPeerIo, p_flags),
            &flags.to_ne_bytes(),
        );
        put(&mut peer, offset_of!(WgPeerIo, p_public), &p.key);
        put(&mut peer, offset_of!(WgPeerIo, p_psk), &p.psk);
        put(
            &mut peer,
            offset_of!(WgPeerIo, p_aips_count),
            &(p.aips as usize).to_ne_bytes(),
        );
        out.extend_from_slice(&peer);
        out.extend(std::iter::repeat_n(
            0xa5,
            p.aips as usize * size_of::<WgAipIo>(),
        ));
    }
    out
}

fuzz_target!(
    init: qkdpfd_fuzz::set_cap(16 * qkdpfd_fuzz::MIB),
    |input: Input| match input {
        Input::Raw(b, want) => {
            let _ = decode_get(&b, &want);
            let _ = decode_public(&b);
            if let Ok(Some(f)) = peer::find(&b, &want) {
                let _ = peer::decode(&f);
            }
        }
        Input::Recreated(r) => recreated(&r),
        Input::Built(a) => {
            let mut keys: Vec<[u8; 32]> = a.peers.iter().map(|p| p.key).collect();
            keys.sort();
            keys.dedup();
            if keys.len() != a.peers.len() {
                return;
            }
            let (want, expected) = match a.peers.get(a.want as usize) {
                Some(p) => (p.key, Some(if p.has_psk { p.psk } else { [0; 32] })),
                None if keys.contains(&a.absent) => return,
                None => (a.absent, None),
            };
            let mut b = render(&a);
            let whole = b.len();
            b.truncate(whole - (a.cut as usize).min(whole));
            match decode_get(&b, &want) {
                Ok(found) => {
                    assert_eq!(b.len(), whole, "a truncated answer accepted");
                    assert_eq!(found.map(|p| *p.expose()), expected);
                }
                Err(e) => assert!(b.len() < whole, "a whole answer refused: {e}"),
            }
            match decode_public(&b) {
                Ok(k) => assert!(a.has_public && k == a.public),
                Err(_) => assert!(!a.has_public || b.len() < size_of::<WgInterfaceIo>()),
            }
        }
    }
);
