//! OpenBSD wg(4) SIOCGWG answers (struct wg_interface_io, then each
//! wg_peer_io followed by its allowed IPs), raw or built from peers the
//! fuzzer chose with the same struct layouts the backend uses. Raw bytes
//! never read past the end; a built answer gives back exactly the PSK put
//! in for the wanted peer and the interface's public key.
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use qkdpfd::parent::wg::openbsd::{
    WG_INTERFACE_HAS_PUBLIC, WG_PEER_HAS_PSK, WgAipIo, WgInterfaceIo, WgPeerIo, decode_get,
    decode_public,
};
use std::mem::{offset_of, size_of};

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
enum Input {
    Raw(Vec<u8>, [u8; 32]),
    Built(Answer),
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
        }
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
