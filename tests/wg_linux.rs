//! The `linux` WireGuard backend: golden bytes of every netlink request and
//! parses of hand-made kernel replies (everywhere), then a real test against
//! the kernel module inside a fresh network namespace. The real test needs
//! root (CI=true without root fails) and the wireguard module: where
//! `ip link add dev qkdwgtest type wireguard` fails it is skipped loudly.

#![cfg(target_os = "linux")]

use std::io::Write;
use std::process::{Command, Stdio};

use base64::Engine;
use qkdpfd::parent::wg::linux::{self, *};
use qkdpfd::parent::wg::{self, Drift, WgBackend, WgError, WgPeer};
use qkdpfd::secret::Psk;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(target_endian = "little")]
#[test]
fn getfamily_golden_bytes() {
    let b = get_family_request(1, 0x1234);
    let want = concat!(
        "24000000100001000100000034120000", // nlmsghdr: 36, GENL_ID_CTRL, REQUEST, seq 1, pid
        "03010000",                         // CTRL_CMD_GETFAMILY, version 1
        "0e000200776972656775617264000000", // FAMILY_NAME "wireguard\0" + 2 pad
    );
    assert_eq!(hex(&b), want);
}

#[cfg(target_endian = "little")]
#[test]
fn set_psk_golden_bytes() {
    let b = set_psk_request(
        0x1b,
        7,
        0x1234,
        "wg0",
        &[0x11; 32],
        &Psk::from_bytes([0x22; 32]),
    );
    let want = [
        "740000001b000500070000003412000001010000080002007767300058000880",
        "5400008024000100111111111111111111111111111111111111111111111111",
        "1111111111111111240002002222222222222222222222222222222222222222",
        "2222222222222222222222220800030004000000",
    ]
    .concat();
    // 116 bytes: header (REQUEST|ACK), SET_DEVICE v1, IFNAME "wg0",
    // PEERS|NESTED { 0|NESTED { PUBLIC_KEY, PRESHARED_KEY, FLAGS=UPDATE_ONLY } }.
    assert_eq!(b.len(), 116);
    assert_eq!(hex(&b), want);
}

#[cfg(target_endian = "little")]
#[test]
fn get_device_golden_bytes() {
    let b = get_device_request(0x1b, 8, 0x1234, "wg0");
    assert_eq!(
        hex(&b),
        "1c0000001b0001030800000034120000000100000800020077673000"
    );
}

fn attr(ty: u16, data: &[u8]) -> Vec<u8> {
    let mut v = ((4 + data.len()) as u16).to_ne_bytes().to_vec();
    v.extend_from_slice(&ty.to_ne_bytes());
    v.extend_from_slice(data);
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v
}

fn msg(ty: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = ((16 + payload.len()) as u32).to_ne_bytes().to_vec();
    v.extend_from_slice(&ty.to_ne_bytes());
    v.extend_from_slice(&flags.to_ne_bytes());
    v.extend_from_slice(&seq.to_ne_bytes());
    v.extend_from_slice(&0u32.to_ne_bytes());
    v.extend_from_slice(payload);
    v
}

fn peer_attr(key: u8, psk: Option<u8>) -> Vec<u8> {
    let mut p = attr(WGPEER_A_PUBLIC_KEY, &[key; 32]);
    if let Some(k) = psk {
        p.extend(attr(WGPEER_A_PRESHARED_KEY, &[k; 32]));
    }
    p.extend(attr(9 | NLA_F_NESTED, &attr(NLA_F_NESTED, &[0; 8])));
    attr(NLA_F_NESTED, &p)
}

/// A dump as the kernel sends it: device attributes and two peers, then a
/// continuation repeating peer B without a PSK, then DONE.
fn dump() -> Vec<u8> {
    let mut first = vec![WG_CMD_GET_DEVICE, 1, 0, 0];
    first.extend(attr(WGDEVICE_A_IFNAME, b"wg0\0"));
    first.extend(attr(3, &[0xee; 32])); // private key: must be skipped
    first.extend(attr(WGDEVICE_A_PUBLIC_KEY, &[0x71; 32]));
    let peers = [peer_attr(0xa1, Some(0x5a)), peer_attr(0xb2, Some(0x6b))].concat();
    first.extend(attr(WGDEVICE_A_PEERS | NLA_F_NESTED, &peers));
    let mut cont = vec![WG_CMD_GET_DEVICE, 1, 0, 0];
    cont.extend(attr(
        WGDEVICE_A_PEERS | NLA_F_NESTED,
        &peer_attr(0xb2, None),
    ));
    let mut all = msg(0x1b, NLM_F_MULTI, 9, &first);
    all.extend(msg(0x1b, NLM_F_MULTI, 9, &cont));
    all.extend(msg(NLMSG_DONE, NLM_F_MULTI, 9, &0i32.to_ne_bytes()));
    all
}

fn scan(want: u8) -> Option<Psk> {
    let d = dump();
    let mut found = None;
    for m in linux::messages(&d).unwrap() {
        if m.ty == 0x1b {
            scan_device(m.payload, &[want; 32], &mut found).unwrap();
        }
    }
    found
}

#[test]
fn dump_parse_finds_peers_across_fragments() {
    assert_eq!(linux::messages(&dump()).unwrap().len(), 3);
    assert_eq!(scan(0xa1).unwrap().expose(), &[0x5a; 32]);
    assert_eq!(scan(0xb2).unwrap().expose(), &[0x6b; 32]);
    assert!(scan(0xc3).is_none());
}

/// The first message of a WG_CMD_GET_DEVICE dump of an interface with a
/// private key: IFNAME, PRIVATE_KEY (0xee…, skipped), PUBLIC_KEY (0x71…),
/// LISTEN_PORT 51820.
#[cfg(target_endian = "little")]
#[test]
fn device_public_key_golden_bytes() {
    let golden = [
        "6c0000001b0002000900000000000000", // nlmsghdr: 108, family 0x1b, MULTI, seq 9
        "00010000",                         // WG_CMD_GET_DEVICE, version 1
        "0800020077673000",                 // IFNAME "wg0\0"
        "24000300",                         // PRIVATE_KEY
        &"ee".repeat(32),
        "24000400", // PUBLIC_KEY
        &"71".repeat(32),
        "060006006cca0000", // LISTEN_PORT 51820 + 2 pad
    ]
    .concat();
    let bytes: Vec<u8> = (0..golden.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&golden[i..i + 2], 16).unwrap())
        .collect();
    let m = linux::messages(&bytes).unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!((m[0].ty, m[0].seq, m[0].payload.len()), (0x1b, 9, 92));
    let mut found = None;
    scan_public_key(m[0].payload, &mut found).unwrap();
    assert_eq!(found, Some([0x71; 32]));
}

#[test]
fn device_public_key_across_a_dump() {
    let d = dump();
    let mut found = None;
    for m in linux::messages(&d).unwrap() {
        if m.ty == 0x1b {
            scan_public_key(m.payload, &mut found).unwrap();
        }
    }
    assert_eq!(found, Some([0x71; 32]));
    // No private key on the interface: the kernel sends neither key.
    let mut bare = vec![WG_CMD_GET_DEVICE, 1, 0, 0];
    bare.extend(attr(WGDEVICE_A_IFNAME, b"wg0\0"));
    let mut none = None;
    scan_public_key(&bare, &mut none).unwrap();
    assert_eq!(none, None);
    // A short key, a second different key, a short message: refused.
    let mut short = bare.clone();
    short.extend(attr(WGDEVICE_A_PUBLIC_KEY, &[0x71; 31]));
    assert!(matches!(
        scan_public_key(&short, &mut None),
        Err(WgError::Protocol(_))
    ));
    let mut other = bare.clone();
    other.extend(attr(WGDEVICE_A_PUBLIC_KEY, &[0x72; 32]));
    assert!(scan_public_key(&other, &mut found).is_err());
    assert!(scan_public_key(&bare[..2], &mut None).is_err());
}

#[test]
fn errors_and_family_reply_parse() {
    let e = msg(NLMSG_ERROR, 0, 1, &(-libc::ENODEV).to_ne_bytes());
    let m = linux::messages(&e).unwrap();
    let errno = linux::errno_of(m[0].payload).unwrap();
    assert_eq!(map_errno("x", errno), WgError::NoSuchInterface);
    assert!(matches!(
        map_errno("x", -libc::EOPNOTSUPP),
        WgError::Protocol(_)
    ));
    assert!(matches!(map_errno("x", -libc::EPERM), WgError::Io(m) if m.contains("x: ")));
    let mut fam = vec![1, 2, 0, 0];
    fam.extend(attr(CTRL_ATTR_FAMILY_NAME, b"wireguard\0"));
    fam.extend(attr(CTRL_ATTR_FAMILY_ID, &0x1bu16.to_ne_bytes()));
    assert_eq!(parse_family(&fam).unwrap(), 0x1b);
    assert!(parse_family(&fam[..4]).is_err());
}

#[test]
fn hostile_lengths_are_refused() {
    let mut d = dump();
    d[0] = 0xff; // first message claims more than the datagram
    assert!(linux::messages(&d).is_err());
    assert!(linux::messages(&dump()[..10]).is_err());
    let mut bad = vec![WG_CMD_GET_DEVICE, 1, 0, 0];
    bad.extend_from_slice(&[0xff, 0x00, 0x08, 0x80]); // attribute longer than its message
    assert!(scan_device(&bad, &[1; 32], &mut None).is_err());
}

// ---- the real kernel ----

/// Runs anywhere on Linux: a real GETFAMILY (and, with the module, a
/// WG_CMD_GET_DEVICE) through the socket code.
#[cfg(target_os = "linux")]
#[test]
fn netlink_socket_round_trip() {
    let ghost = WgPeer {
        interface: format!("qkdwgn{:06x}", rand::random::<u32>() & 0xff_ffff),
        public_key: [1; 32],
    };
    match linux::Linux::new().get_psk(&ghost) {
        Err(WgError::NoSuchInterface) => {}
        Err(WgError::Io(m)) if m.contains("kernel module not loaded") => {
            eprintln!("netlink_socket_round_trip: GETFAMILY answered: {m}");
        }
        other => panic!("unexpected: {other:?}"),
    }
    assert!(matches!(
        map_errno("GETFAMILY", -libc::ENOENT),
        WgError::Io(m) if m.contains("kernel module")
    ));
}

fn sh(cmd: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut c = Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut input = c.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    let out = c.wait_with_output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8(out.stdout).unwrap())
}

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

impl Netns {
    fn run(&self, cmd: &[&str], stdin: Option<&str>) -> Result<String, String> {
        let mut full = vec!["ip", "netns", "exec", &self.0];
        full.extend_from_slice(cmd);
        sh(&full, stdin)
    }

    /// Runs `f` on a thread that has entered the namespace, so the netlink
    /// socket it opens talks to that namespace's kernel state.
    fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.0);
        std::thread::scope(|s| {
            s.spawn(|| {
                let fd = std::fs::File::open(&path).unwrap();
                let r = unsafe {
                    libc::setns(std::os::fd::AsRawFd::as_raw_fd(&fd), libc::CLONE_NEWNET)
                };
                assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap()
        })
    }
}

#[test]
fn kernel_module_set_read_back_and_drift() {
    if !nix::unistd::geteuid().is_root() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("kernel_module_set_read_back_and_drift: needs root (CI=true)");
        }
        eprintln!("!!!!! SKIP: kernel_module_set_read_back_and_drift needs root !!!!!");
        return;
    }
    let ns = Netns(format!("qkdwgl_{:08x}", rand::random::<u32>()));
    sh(&["ip", "netns", "add", &ns.0], None).unwrap();
    if let Err(e) = ns.run(
        &["ip", "link", "add", "dev", "qkdwgtest", "type", "wireguard"],
        None,
    ) {
        // The kernel lane (WG=linux) is where the module is: there a
        // missing one is a failure, never a skip.
        assert!(
            std::env::var("WG").as_deref() != Ok("linux"),
            "WG=linux: no wireguard kernel module ({})",
            e.trim()
        );
        eprintln!(
            "!!!!! SKIP: no wireguard kernel module ({}) !!!!!",
            e.trim()
        );
        return;
    }
    // Our own public key: none before the interface has a private key,
    // then exactly what wg(8) shows.
    let own = ns.enter(|| linux::Linux::new().public_key("qkdwgtest"));
    assert_eq!(
        own,
        Err(WgError::Protocol("interface has no private key".into()))
    );
    let own_private = sh(&["wg", "genkey"], None).unwrap();
    ns.run(
        &["wg", "set", "qkdwgtest", "private-key", "/dev/stdin"],
        Some(&own_private),
    )
    .unwrap();
    let shown_own = ns
        .run(&["wg", "show", "qkdwgtest", "public-key"], None)
        .unwrap();
    let own = ns.enter(|| linux::Linux::new().public_key("qkdwgtest").unwrap());
    assert_eq!(wg::pubkey_b64(&own), shown_own.trim());
    let private = sh(&["wg", "genkey"], None).unwrap();
    let public = sh(&["wg", "pubkey"], Some(&private)).unwrap();
    let public = public.trim();
    let peer = WgPeer::from_conf("qkdwgtest", public).unwrap();
    ns.run(
        &[
            "wg",
            "set",
            "qkdwgtest",
            "peer",
            public,
            "allowed-ips",
            "10.9.0.2/32",
        ],
        None,
    )
    .unwrap();
    let shown = || {
        let out = ns
            .run(&["wg", "show", "qkdwgtest", "preshared-keys"], None)
            .unwrap();
        out.lines()
            .find_map(|l| l.strip_prefix(public).map(|r| r.trim().to_string()))
            .unwrap()
    };
    let (k1, k2) = (Psk::random(), Psk::random());
    ns.enter(|| {
        let mut b = linux::Linux::new();
        assert_eq!(b.get_psk(&peer).unwrap().expose(), &[0; 32]);
        b.set_psk(&peer, &k1).unwrap();
    });
    assert_eq!(shown(), B64.encode(k1.expose()));
    ns.enter(|| {
        let mut b = linux::Linux::new();
        b.set_psk(&peer, &k2).unwrap();
        let stranger = WgPeer {
            public_key: [0x5c; 32],
            ..peer.clone()
        };
        assert_eq!(b.set_psk(&stranger, &k1), Err(WgError::NoSuchPeer));
        let ghost = WgPeer {
            interface: "qkdwgnone".into(),
            ..peer.clone()
        };
        assert_eq!(b.set_psk(&ghost, &k1), Err(WgError::NoSuchInterface));
    });
    assert_eq!(shown(), B64.encode(k2.expose()));
    // A new session: the peer removed and added again in one set call with
    // everything it had; its keepalive (off) restored; a stranger is not
    // created.
    ns.run(
        &[
            "wg",
            "set",
            "qkdwgtest",
            "peer",
            public,
            "endpoint",
            "192.0.2.9:51820",
            "allowed-ips",
            "10.9.0.2/32,fd00::/64",
        ],
        None,
    )
    .unwrap();
    let dump = || ns.run(&["wg", "show", "qkdwgtest", "dump"], None).unwrap();
    let before = dump();
    ns.enter(|| {
        let mut b = linux::Linux::new();
        let read = b.new_session(&peer, 25).unwrap();
        assert_eq!(read.psk, k2);
        assert_eq!(read.endpoint, Some("192.0.2.9:51820".parse().unwrap()));
        assert_eq!(read.allowed_ips.len(), 2);
        assert_eq!(read.keepalive, 0);
        let stranger = WgPeer {
            public_key: [0x5c; 32],
            ..peer.clone()
        };
        assert_eq!(b.new_session(&stranger, 25), Err(WgError::NoSuchPeer));
        // Nobody answers here: the re-created peer never handshook (a
        // handshake's time is read by the kernel lane's key tests).
        assert_eq!(b.last_handshake(&peer), Ok(None));
        assert_eq!(b.last_handshake(&stranger), Err(WgError::NoSuchPeer));
    });
    assert_eq!(dump(), before, "the re-created peer differs");
    assert_eq!(shown(), B64.encode(k2.expose()));
    let peers = ns.run(&["wg", "show", "qkdwgtest", "peers"], None).unwrap();
    assert_eq!(peers.lines().collect::<Vec<_>>(), vec![public]);
    let theirs = Psk::random();
    ns.run(
        &[
            "wg",
            "set",
            "qkdwgtest",
            "peer",
            public,
            "preshared-key",
            "/dev/stdin",
        ],
        Some(&format!("{}\n", B64.encode(theirs.expose()))),
    )
    .unwrap();
    ns.enter(|| {
        let mut b = linux::Linux::new();
        assert_eq!(wg::check_drift(&mut b, &peer, &k2), Ok(Drift::Changed));
        assert_eq!(b.get_psk(&peer).unwrap(), theirs);
        // The lockdown ladder's last rung: gone, read back; twice is Ok.
        b.remove_peer(&peer).unwrap();
        assert_eq!(b.get_psk(&peer), Err(WgError::NoSuchPeer));
        b.remove_peer(&peer).unwrap();
    });
    let peers = ns.run(&["wg", "show", "qkdwgtest", "peers"], None).unwrap();
    assert_eq!(peers.trim(), "");
}

#[cfg(target_endian = "little")]
#[test]
fn remove_peer_golden_bytes() {
    let b = remove_peer_request(0x1b, 9, 0x1234, "wg0", &[0x11; 32]);
    let want = [
        "500000001b000500090000003412000001010000080002007767300034000880",
        "3000008024000100",
        &"11".repeat(32),
        "0800030001000000",
    ]
    .concat();
    // 80 bytes: header (REQUEST|ACK), SET_DEVICE v1, IFNAME "wg0",
    // PEERS|NESTED { 0|NESTED { PUBLIC_KEY, FLAGS=REMOVE_ME } }: no PSK.
    assert_eq!(b.len(), 80);
    assert_eq!(hex(&b), want);
}
