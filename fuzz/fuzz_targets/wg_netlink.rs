//! Netlink replies the parent reads: the WireGuard genl family (GETFAMILY,
//! GET_DEVICE dumps: the wanted peer's PSK, the device's public key) and
//! nf_tables' NEWGEN (the dead-man switch's generation) and NEWSETELEM
//! (a link's `locked_` set, read back after a flip). Raw bytes must
//! never read past a length; a dump built from peers the fuzzer chose —
//! split over several messages as the kernel splits them — gives back
//! exactly the PSK and public key put in, and a set dump the keys put in.
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use qkdpfd::parent::fw::nft::alive::parse_gen;
use qkdpfd::parent::fw::nft::netlink::parse_elements;
use qkdpfd::parent::wg::linux::{
    NLM_F_MULTI, WGDEVICE_A_IFNAME, WGDEVICE_A_PEERS, WGDEVICE_A_PUBLIC_KEY,
    WGPEER_A_PRESHARED_KEY, WGPEER_A_PUBLIC_KEY, errno_of, messages, parse_family, scan_device,
    scan_public_key,
};
use qkdpfd_fuzz::wire::{nested, nla, nlmsg};

#[derive(Arbitrary, Debug)]
struct Peer {
    key: [u8; 32],
    psk: Option<[u8; 32]>,
    /// Allowed IPs that push the rest of the peer into the next message.
    split: bool,
}

#[derive(Arbitrary, Debug)]
struct Dump {
    public: Option<[u8; 32]>,
    peers: Vec<Peer>,
    want: u8,
    absent: [u8; 32],
    gen_id: u32,
    /// One-byte keys of a `locked_` set.
    elems: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
enum Input {
    Raw(Vec<u8>, [u8; 32], u32),
    Built(Dump),
}

const FAMILY: u16 = 0x1c;

fn genl(attrs: &[Vec<u8>]) -> Vec<u8> {
    [vec![0u8, 1, 0, 0], attrs.concat()].concat()
}

/// The dump as the kernel sends it: the device attributes in the first
/// message, then peers; a split peer ends one message and is repeated
/// (public key only, no PSK) at the start of the next.
fn render(d: &Dump) -> Vec<u8> {
    let mut msgs = Vec::new();
    let mut head = vec![nla(WGDEVICE_A_IFNAME, b"wg0\0")];
    if let Some(k) = d.public {
        head.push(nla(WGDEVICE_A_PUBLIC_KEY, &k));
    }
    let mut peers = Vec::new();
    for (i, p) in d.peers.iter().enumerate() {
        let mut a = vec![nla(WGPEER_A_PUBLIC_KEY, &p.key)];
        if let Some(k) = p.psk {
            a.push(nla(WGPEER_A_PRESHARED_KEY, &k));
        }
        peers.push(nested(i as u16, &a));
        if p.split {
            let body = genl(&[head.concat(), nested(WGDEVICE_A_PEERS, &peers)]);
            msgs.push(nlmsg(FAMILY, NLM_F_MULTI, 7, &body));
            head = vec![nla(WGDEVICE_A_IFNAME, b"wg0\0")];
            peers = vec![nested(0, &[nla(WGPEER_A_PUBLIC_KEY, &p.key)])];
        }
    }
    let body = genl(&[head.concat(), nested(WGDEVICE_A_PEERS, &peers)]);
    msgs.push(nlmsg(FAMILY, NLM_F_MULTI, 7, &body));
    msgs.concat()
}

fuzz_target!(
    init: qkdpfd_fuzz::set_cap(16 * qkdpfd_fuzz::MIB),
    |input: Input| match input {
        Input::Raw(buf, want, seq) => {
            let _ = parse_gen(&buf, seq);
            let mut keys = Vec::new();
            let _ = parse_elements(&buf, seq, &mut keys);
            assert!(keys.len() <= buf.len() / 8, "a key needs an attribute");
            let Ok(msgs) = messages(&buf) else { return };
            let mut psk = None;
            let mut public = None;
            for m in msgs {
                assert!(m.payload.len() <= buf.len());
                let _ = errno_of(m.payload);
                let _ = parse_family(m.payload);
                let _ = scan_device(m.payload, &want, &mut psk);
                let _ = scan_public_key(m.payload, &mut public);
            }
        }
        Input::Built(d) => {
            if d.peers.len() > 500 {
                return; // one message's attribute holds at most 64 KiB of peers
            }
            let mut keys: Vec<[u8; 32]> = d.peers.iter().map(|p| p.key).collect();
            keys.sort();
            keys.dedup();
            if keys.len() != d.peers.len() {
                return;
            }
            let (want, expected) = match d.peers.get(d.want as usize) {
                Some(p) => (p.key, Some(p.psk.unwrap_or([0; 32]))),
                None if keys.contains(&d.absent) => return,
                None => (d.absent, None),
            };
            let buf = render(&d);
            let mut psk = None;
            let mut public = None;
            for m in messages(&buf).expect("a built dump splits") {
                scan_device(m.payload, &want, &mut psk).expect("a built dump scans");
                scan_public_key(m.payload, &mut public).expect("a built dump has one key");
            }
            assert_eq!(psk.map(|p| *p.expose()), expected);
            assert_eq!(public, d.public);
            // NEWGEN answer to request 9, after an unrelated message.
            let gen_body = [vec![1u8, 0, 0, 0], nla(1, &d.gen_id.to_be_bytes())].concat();
            let reply = [
                nlmsg(FAMILY, 0, 8, b"\0\0\0\0"),
                nlmsg((10 << 8) | 15, 0, 9, &gen_body),
            ]
            .concat();
            assert_eq!(parse_gen(&reply, 9), Ok(Some(d.gen_id)));
            // A NEWSETELEM dump to request 11, then DONE (one attribute
            // holds at most 4,095 elements of 16 bytes).
            if d.elems.len() <= 4000 {
                let list: Vec<Vec<u8>> = d
                    .elems
                    .iter()
                    .map(|k| nested(1, &[nested(1, &[nla(1, &[*k])])]))
                    .collect();
                let body = [vec![1u8, 0, 0, 0], nla(1, b"qkdpfd\0"), nested(3, &list)].concat();
                let dump = [
                    nlmsg((10 << 8) | 12, NLM_F_MULTI, 11, &body),
                    nlmsg(3, NLM_F_MULTI, 11, &0i32.to_ne_bytes()),
                ]
                .concat();
                let mut keys = Vec::new();
                assert_eq!(parse_elements(&dump, 11, &mut keys), Ok(true));
                let want: Vec<Vec<u8>> = d.elems.iter().map(|k| vec![*k]).collect();
                assert_eq!(keys, want);
            }
        }
    }
);
