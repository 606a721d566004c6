//! The `userspace` WireGuard backend against real wireguard-go: each test
//! starts `wireguard-go <unique if>` inside its own network namespace (the
//! UAPI socket lands in the shared /var/run/wireguard/, hence the unique
//! names) and checks what we write with wg(8). Needs root, wireguard-go
//! and wg: without them the tests are skipped loudly, unless CI=true, where
//! they fail.

mod common;

use common::gateway::{have, wireguard_go_or_skip};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use qkdpfd::conf::{UAPI_DIR, WireguardBackend, WireguardConf};
use qkdpfd::parent::wg::{self, Drift, WgBackend, WgError, WgPeer, uapi::Uapi};
use qkdpfd::secret::Psk;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn ready_or_skip(test: &str) -> bool {
    wireguard_go_or_skip(test, &[])
}

fn run(cmd: &[&str], stdin: Option<&str>) -> String {
    let mut c = Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = c.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A namespace running wireguard-go with one peer (no PSK); all torn down on drop.
struct Rig {
    ns: String,
    ifname: String,
    wggo: Child,
    peer: WgPeer,
}

impl Rig {
    /// With one peer (fresh key, no PSK) on the interface.
    fn new() -> Rig {
        let mut rig = Rig::start();
        let private = run(&["wg", "genkey"], None);
        let public = run(&["wg", "pubkey"], Some(&private));
        rig.peer.public_key = B64.decode(public.trim()).unwrap().try_into().unwrap();
        let args = [
            "set",
            &rig.ifname,
            "peer",
            public.trim(),
            "allowed-ips",
            "10.9.0.2/32",
        ];
        rig.wg(&args, None);
        rig
    }

    /// A namespace and wireguard-go with no peer yet (`peer` is a placeholder).
    fn start() -> Rig {
        let r: u32 = rand::random();
        let ns = format!("qkdwgu_{r:08x}");
        let ifname = format!("qkdwg{:06x}", r & 0xff_ffff);
        run(&["ip", "netns", "add", &ns], None);
        let wggo = Command::new("ip")
            .args(["netns", "exec", &ns, "wireguard-go", &ifname])
            .env("WG_PROCESS_FOREGROUND", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let rig = Rig {
            ns,
            ifname: ifname.clone(),
            wggo,
            peer: WgPeer {
                interface: ifname,
                public_key: [0; 32],
            },
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !rig.sock().exists() {
            assert!(Instant::now() < deadline, "wireguard-go made no socket");
            std::thread::sleep(Duration::from_millis(50));
        }
        rig
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut cmd = vec!["ip", "netns", "exec", &self.ns, "ip"];
        cmd.extend_from_slice(args);
        run(&cmd, None)
    }

    fn ping(&self, addr: &str) -> bool {
        Command::new("ip")
            .args([
                "netns", "exec", &self.ns, "ping", "-c", "1", "-W", "2", addr,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The only peer's `latest-handshakes` time (0 = never).
    fn handshake(&self) -> u64 {
        let out = self.wg(&["show", &self.ifname, "latest-handshakes"], None);
        let line = out.lines().next().expect("one peer");
        line.split('\t').nth(1).unwrap().trim().parse().unwrap()
    }

    /// (Re)creates the peer `far` from scratch: no session, no PSK. That is
    /// how a test gets a fresh handshake: wireguard-go keeps sessions across
    /// PSK changes.
    fn fresh_peer(&self, far: &Rig, endpoint: &str, allowed: &str) {
        let b64 = B64.encode(far.own_public());
        self.wg(&["set", &self.ifname, "peer", &b64, "remove"], None);
        let args = [
            "set",
            &self.ifname,
            "peer",
            &b64,
            "endpoint",
            endpoint,
            "allowed-ips",
            allowed,
        ];
        self.wg(&args, None);
    }

    fn own_public(&self) -> [u8; 32] {
        let out = self.wg(&["show", &self.ifname, "public-key"], None);
        B64.decode(out.trim()).unwrap().try_into().unwrap()
    }

    fn sock(&self) -> PathBuf {
        Path::new(UAPI_DIR).join(format!("{}.sock", self.ifname))
    }

    fn wg(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut cmd = vec!["ip", "netns", "exec", &self.ns, "wg"];
        cmd.extend_from_slice(args);
        run(&cmd, stdin)
    }

    /// `wg show <if> preshared-keys` for our peer ("(none)" when unset).
    fn shown_psk(&self) -> String {
        let out = self.wg(&["show", &self.ifname, "preshared-keys"], None);
        let line = out
            .lines()
            .find(|l| l.starts_with(&self.peer.public_b64()))
            .expect("peer listed");
        line.split('\t').nth(1).unwrap().to_string()
    }

    fn peers(&self) -> Vec<String> {
        let out = self.wg(&["show", &self.ifname, "peers"], None);
        out.lines().map(str::to_string).collect()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.wggo.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while matches!(self.wggo.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.wggo.kill();
        let _ = self.wggo.wait();
        let _ = std::fs::remove_file(self.sock());
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

fn backend() -> Uapi {
    Uapi::new(Path::new(UAPI_DIR))
}

fn secrets_of(psk: &Psk) -> Vec<String> {
    let hex: String = psk.expose().iter().map(|b| format!("{b:02x}")).collect();
    vec![hex.clone(), hex.to_uppercase(), B64.encode(psk.expose())]
}

fn assert_no_secret(text: &str, psk: &Psk) {
    for s in secrets_of(psk) {
        assert!(!text.contains(&s), "key material in {text:?}");
    }
}

#[test]
fn set_psk_installs_reads_back_and_rotates() {
    if !ready_or_skip("set_psk_installs_reads_back_and_rotates") {
        return;
    }
    let rig = Rig::new();
    let mut b = backend();
    assert_eq!(rig.shown_psk(), "(none)");
    assert_eq!(b.get_psk(&rig.peer).unwrap().expose(), &[0; 32]);
    let k1 = Psk::random();
    b.set_psk(&rig.peer, &k1).unwrap();
    assert_eq!(rig.shown_psk(), B64.encode(k1.expose()));
    assert_eq!(b.get_psk(&rig.peer).unwrap(), k1);
    let k2 = Psk::random();
    b.set_psk(&rig.peer, &k2).unwrap();
    assert_eq!(rig.shown_psk(), B64.encode(k2.expose()));
    assert_ne!(k1, k2);
    assert_eq!(wg::check_drift(&mut b, &rig.peer, &k2), Ok(Drift::Same));
    assert_no_secret(&format!("{b:?}"), &k2);
}

#[test]
fn missing_peer_is_refused_and_not_created() {
    if !ready_or_skip("missing_peer_is_refused_and_not_created") {
        return;
    }
    let rig = Rig::new();
    let mut b = backend();
    let stranger = WgPeer {
        public_key: [0x5c; 32],
        ..rig.peer.clone()
    };
    let k = Psk::random();
    let e = b.set_psk(&stranger, &k).unwrap_err();
    assert_eq!(e, WgError::NoSuchPeer);
    assert_eq!(b.get_psk(&stranger), Err(WgError::NoSuchPeer));
    assert_eq!(rig.peers(), vec![rig.peer.public_b64()]);
    // The race the get-first cannot close (peer removed between get and
    // set): our raw set request itself must not create the peer.
    let mut s = std::os::unix::net::UnixStream::connect(rig.sock()).unwrap();
    s.write_all(wg::uapi::set_request(&stranger.public_key, &k).as_bytes())
        .unwrap();
    let mut reply = [0u8; 64];
    let n = std::io::Read::read(&mut s, &mut reply).unwrap();
    assert_eq!(&reply[..n], b"errno=0\n\n");
    assert_eq!(rig.peers(), vec![rig.peer.public_b64()]);
    assert_eq!(rig.shown_psk(), "(none)");
    assert_no_secret(&format!("{e} {e:?}"), &k);
}

#[test]
fn missing_interface_is_no_such_interface() {
    if !ready_or_skip("missing_interface_is_no_such_interface") {
        return;
    }
    let mut b = backend();
    let ghost = WgPeer {
        interface: format!("qkdwgx{:06x}", rand::random::<u32>() & 0xff_ffff),
        public_key: [1; 32],
    };
    let k = Psk::random();
    assert_eq!(b.set_psk(&ghost, &k), Err(WgError::NoSuchInterface));
    assert_eq!(b.get_psk(&ghost), Err(WgError::NoSuchInterface));
}

/// Our own public key is X25519 of the private key wireguard-go holds:
/// what `wg show <if> public-key` prints, and nothing before a key is set.
#[test]
fn public_key_matches_wg_show() {
    if !ready_or_skip("public_key_matches_wg_show") {
        return;
    }
    let rig = Rig::start();
    let mut b = backend();
    let none = b.public_key(&rig.ifname);
    assert_eq!(
        none,
        Err(WgError::Protocol("interface has no private key".into()))
    );
    let private = run(&["wg", "genkey"], None);
    let public = run(&["wg", "pubkey"], Some(&private));
    let args = ["set", &rig.ifname, "private-key", "/dev/stdin"];
    rig.wg(&args, Some(&private));
    let shown = rig.wg(&["show", &rig.ifname, "public-key"], None);
    assert_eq!(shown.trim(), public.trim());
    let ours = b.public_key(&rig.ifname).unwrap();
    assert_eq!(wg::pubkey_b64(&ours), shown.trim());
    assert_eq!(ours, rig.own_public());
    // A new private key is a new public key (nothing cached).
    let private2 = run(&["wg", "genkey"], None);
    rig.wg(&args, Some(&private2));
    let ours2 = b.public_key(&rig.ifname).unwrap();
    assert_ne!(ours2, ours);
    assert_eq!(ours2, rig.own_public());
    let ghost = format!("qkdwgy{:06x}", rand::random::<u32>() & 0xff_ffff);
    assert_eq!(b.public_key(&ghost), Err(WgError::NoSuchInterface));
}

#[test]
fn change_behind_our_back_is_drift() {
    if !ready_or_skip("change_behind_our_back_is_drift") {
        return;
    }
    let rig = Rig::new();
    let mut b = backend();
    let ours = Psk::random();
    b.set_psk(&rig.peer, &ours).unwrap();
    let theirs = Psk::random();
    let theirs_b64 = B64.encode(theirs.expose());
    rig.wg(
        &[
            "set",
            &rig.ifname,
            "peer",
            &rig.peer.public_b64(),
            "preshared-key",
            "/dev/stdin",
        ],
        Some(&format!("{theirs_b64}\n")),
    );
    assert_eq!(rig.shown_psk(), theirs_b64);
    let now = b.get_psk(&rig.peer).unwrap();
    assert_ne!(now, ours);
    assert_eq!(now, theirs);
    assert_eq!(
        wg::check_drift(&mut b, &rig.peer, &ours),
        Ok(Drift::Changed)
    );
}

/// Runs everywhere: no error and no backend prints key material.
#[test]
fn errors_and_backends_print_no_keys() {
    let psk = Psk::from_bytes([0x3e; 32]);
    let tmp = tempfile::tempdir().unwrap();
    let peer = WgPeer {
        interface: "wg0".into(),
        public_key: [1; 32],
    };
    let mut texts = Vec::new();
    for backend in [
        WireguardBackend::Userspace,
        WireguardBackend::Linux,
        WireguardBackend::Openbsd,
        WireguardBackend::DryRun,
    ] {
        let conf = WireguardConf {
            backend,
            new_session: true,
        };
        let mut b = wg::new(&conf, tmp.path());
        if let Err(e) = b.set_psk(&peer, &psk) {
            texts.push(format!("{e} {e:?}"));
        }
        if let Err(e) = b.public_key("wg0") {
            texts.push(format!("{e} {e:?}"));
        }
        texts.push(b.name().to_string());
    }
    let mut dry = wg::dryrun::DryRun::new(tmp.path());
    dry.set_psk(&peer, &psk).unwrap();
    texts.push(format!("{dry:?} {:?}", dry.get_psk(&peer).unwrap()));
    texts.push(std::fs::read_to_string(dry.path("wg0")).unwrap());
    for e in [
        WgError::NoSuchInterface,
        WgError::NoSuchPeer,
        WgError::Mismatch,
        WgError::Io("x".into()),
        WgError::Protocol("y".into()),
    ] {
        texts.push(format!("{e} {e:?}"));
    }
    assert!(texts.len() >= 12);
    for t in &texts {
        assert_no_secret(t, &psk);
    }
}

/// Two gateways joined by a veth: equal PSKs give a handshake and traffic;
/// a random PSK on one end (what `key-stale` installs) makes a fresh
/// handshake fail; equal again, traffic again.
#[test]
fn random_psk_breaks_the_handshake() {
    if !ready_or_skip("random_psk_breaks_the_handshake") {
        return;
    }
    assert!(have("ping"), "ping(8) is needed (iputils-ping)");
    let (a, b) = (Rig::start(), Rig::start());
    let r: u32 = rand::random();
    let (va, vb) = (format!("qkva{r:08x}"), format!("qkvb{r:08x}"));
    run(
        &[
            "ip", "link", "add", &va, "type", "veth", "peer", "name", &vb,
        ],
        None,
    );
    run(&["ip", "link", "set", &va, "netns", &a.ns], None);
    run(&["ip", "link", "set", &vb, "netns", &b.ns], None);
    let sides = [
        (&a, &va, "192.0.2.1/24", "10.9.0.1/24"),
        (&b, &vb, "192.0.2.2/24", "10.9.0.2/24"),
    ];
    for (g, v, under, tun) in sides {
        let private = run(&["wg", "genkey"], None);
        let args = [
            "set",
            &g.ifname,
            "listen-port",
            "51820",
            "private-key",
            "/dev/stdin",
        ];
        g.wg(&args, Some(&private));
        g.ip(&["addr", "add", under, "dev", v]);
        g.ip(&["link", "set", v, "up"]);
        g.ip(&["addr", "add", tun, "dev", &g.ifname]);
        g.ip(&["link", "set", &g.ifname, "up"]);
    }
    let pa = WgPeer {
        interface: a.ifname.clone(),
        public_key: b.own_public(),
    };
    let pb = WgPeer {
        interface: b.ifname.clone(),
        public_key: a.own_public(),
    };
    let connect = |ka: &Psk, kb: &Psk| {
        a.fresh_peer(&b, "192.0.2.2:51820", "10.9.0.2/32");
        b.fresh_peer(&a, "192.0.2.1:51820", "10.9.0.1/32");
        let mut u = backend();
        u.set_psk(&pa, ka).unwrap();
        u.set_psk(&pb, kb).unwrap();
        a.ping("10.9.0.2")
    };
    let k = Psk::random();
    assert!(connect(&k, &k), "equal PSKs: no traffic");
    assert!(a.handshake() > 0);
    let stale = Psk::random();
    assert!(!connect(&stale, &k), "random PSK on one end: traffic flows");
    assert_eq!(a.handshake(), 0, "a handshake completed under a random PSK");
    assert!(connect(&k, &k), "equal PSKs again: no traffic");
    assert!(a.handshake() > 0);
}
