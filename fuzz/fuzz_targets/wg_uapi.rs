//! WireGuard UAPI `get` answers (wireguard-go's or boringtun's control
//! socket), raw or built from peers the fuzzer chose. For a built answer
//! the PSK found for the wanted peer is exactly the one put in (all zero
//! when the peer has none, nothing when it is absent); an answer is
//! boringtun's exactly when it lists `own_public_key` before the peers, and
//! that key is given back; a handshake time counted back from now is never
//! later than now; errors never quote a key.
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use qkdpfd::parent::wg::uapi::boringtun::{Server, own_public_key};
use qkdpfd::parent::wg::uapi::{errno_of, parse_get, parse_handshake_at, parse_peer};
use std::time::{Duration, SystemTime};
use qkdpfd_fuzz::wire::hex;

#[derive(Arbitrary, Debug)]
enum Extra {
    Endpoint(u16),
    AllowedIp(u8),
    Handshake(u64),
    RxBytes(u64),
    Keepalive(u16),
    Protocol(u8),
}

#[derive(Arbitrary, Debug)]
struct Peer {
    key: [u8; 32],
    psk: Option<[u8; 32]>,
    extra: Vec<Extra>,
}

#[derive(Arbitrary, Debug)]
struct Built {
    private: Option<[u8; 32]>,
    /// boringtun's line in place of (or beside) wireguard-go's.
    own: Option<[u8; 32]>,
    peers: Vec<Peer>,
    errno: i16,
    want: u8,
    absent: [u8; 32],
}

#[derive(Arbitrary, Debug)]
enum Input {
    Raw(Vec<u8>, [u8; 32]),
    Built(Built),
}

fn render(b: &Built) -> String {
    let mut s = String::new();
    if let Some(k) = b.own {
        s += &format!("own_public_key={}\n", hex(&k));
    }
    if let Some(k) = b.private {
        s += &format!("private_key={}\n", hex(&k));
    }
    s += "listen_port=51820\n";
    for p in &b.peers {
        s += &format!("public_key={}\n", hex(&p.key));
        if let Some(k) = p.psk {
            s += &format!("preshared_key={}\n", hex(&k));
        }
        for e in &p.extra {
            s += &match e {
                Extra::Endpoint(port) => format!("endpoint=192.0.2.1:{port}\n"),
                Extra::AllowedIp(n) => format!("allowed_ip=10.0.{n}.0/24\n"),
                Extra::Handshake(t) => format!("last_handshake_time_sec={t}\n"),
                Extra::RxBytes(n) => format!("rx_bytes={n}\n"),
                Extra::Keepalive(n) => format!("persistent_keepalive_interval={n}\n"),
                Extra::Protocol(n) => format!("protocol_version={n}\n"),
            };
        }
    }
    s + &format!("errno={}\n\n", b.errno)
}

fuzz_target!(
    init: qkdpfd_fuzz::set_cap(16 * qkdpfd_fuzz::MIB),
    |input: Input| match input {
        Input::Raw(reply, want) => {
            let _ = errno_of(&reply);
            let _ = Server::of(&reply);
            let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
            let errors = [
                parse_get(&reply, &want).err(),
                own_public_key(&reply).err(),
                parse_peer(&reply, &want).err(),
                parse_handshake_at(&reply, &want, now).err(),
            ];
            for e in errors.into_iter().flatten() {
                let shown = e.to_string();
                assert!(shown.len() <= 256, "{shown}");
            }
            if let Ok(Some(Some(t))) = parse_handshake_at(&reply, &want, now) {
                if Server::of(&reply) == Server::Boringtun {
                    assert!(t <= now && t > SystemTime::UNIX_EPOCH, "{t:?}");
                }
            }
        }
        Input::Built(b) => {
            let mut keys: Vec<[u8; 32]> = b.peers.iter().map(|p| p.key).collect();
            keys.sort();
            keys.dedup();
            if keys.len() != b.peers.len() {
                return; // two peers with one key: wireguard-go never says that
            }
            let (want, expected) = match b.peers.get(b.want as usize) {
                Some(p) => (p.key, Some(p.psk.unwrap_or([0; 32]))),
                None if keys.contains(&b.absent) => return,
                None => (b.absent, None),
            };
            let reply = render(&b);
            let server = Server::of(reply.as_bytes());
            match b.own {
                Some(_) => assert_eq!(server, Server::Boringtun),
                None => assert_eq!(server, Server::WireguardGo),
            }
            match own_public_key(reply.as_bytes()) {
                Ok(k) => {
                    assert_eq!(b.errno, 0, "errno={} accepted", b.errno);
                    assert_eq!(k, b.own.filter(|k| *k != [0; 32]));
                }
                Err(_) => assert_ne!(b.errno, 0, "a good own_public_key refused"),
            }
            match parse_get(reply.as_bytes(), &want) {
                Ok(found) => {
                    assert_eq!(b.errno, 0, "errno={} accepted", b.errno);
                    assert_eq!(found.map(|p| *p.expose()), expected);
                }
                Err(e) => {
                    assert_ne!(b.errno, 0, "a good reply refused: {e}");
                    let shown = e.to_string();
                    for p in &b.peers {
                        if let Some(k) = p.psk {
                            assert!(!shown.contains(&hex(&k)), "a PSK in an error: {shown}");
                        }
                    }
                }
            }
        }
    }
);
