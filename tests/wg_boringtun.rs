//! The `userspace` WireGuard backend against real boringtun (boringtun-cli,
//! Cloudflare's userspace WireGuard), across a tunnel to wireguard-go: two
//! network namespaces joined by a veth pair, boringtun in one, wireguard-go
//! in the other, pings through the tunnel. boringtun reads the
//! configuration protocol its own way (`src/parent/wg/uapi/boringtun.rs`):
//! a PSK goes in by removing the peer and adding it back, and boringtun
//! must still answer afterwards (a set that changes a peer in place kills
//! its configuration thread). Needs root, boringtun-cli (PATH, or
//! target/boringtun/bin from scripts/boringtun.sh), wireguard-go and wg:
//! without them the test is skipped loudly, unless CI=true, where it fails.
#![cfg(target_os = "linux")]

mod common;

use common::gateway::{boringtun, wireguard_go_or_skip};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use qkdpfd::conf::UAPI_DIR;
use qkdpfd::parent::wg::{WgBackend, WgError, WgPeer, uapi::Uapi};
use qkdpfd::secret::Psk;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn ready_or_skip(test: &str) -> bool {
    let boringtun = boringtun()
        .is_none()
        .then_some("boringtun-cli (scripts/boringtun.sh)");
    wireguard_go_or_skip(test, &[boringtun])
}

fn run(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn pubkey(private: &str) -> String {
    let mut c = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(private.as_bytes())
        .unwrap();
    String::from_utf8(c.wait_with_output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string()
}

fn key_bytes(b64: &str) -> [u8; 32] {
    B64.decode(b64).unwrap().try_into().unwrap()
}

/// One end: a namespace, its WireGuard daemon, its keys.
struct End {
    ns: String,
    ifname: String,
    daemon: Child,
    public: String,
}

impl End {
    fn sh(&self, cmd: &[&str]) -> String {
        let mut all = vec!["ip", "netns", "exec", &self.ns];
        all.extend_from_slice(cmd);
        run(&all)
    }

    fn sock(&self) -> PathBuf {
        Path::new(UAPI_DIR).join(format!("{}.sock", self.ifname))
    }

    fn ping(&self, addr: &str) -> bool {
        Command::new("ip")
            .args([
                "netns", "exec", &self.ns, "ping", "-c", "1", "-W", "1", addr,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// A ping gets through within `secs` (a first one may wait for a
    /// handshake).
    fn pings_within(&self, addr: &str, secs: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if self.ping(addr) {
                return true;
            }
        }
        false
    }

    /// The process is up. (A panicked configuration thread leaves it up:
    /// the UAPI read that follows each check is what would see that.)
    fn alive(&mut self) -> bool {
        matches!(self.daemon.try_wait(), Ok(None))
    }

    fn peers(&self) -> Vec<String> {
        let out = self.sh(&["wg", "show", &self.ifname, "peers"]);
        out.lines().map(str::to_string).collect()
    }

    fn peer(&self, far: &End) -> WgPeer {
        WgPeer {
            interface: self.ifname.clone(),
            public_key: key_bytes(&far.public),
        }
    }
}

/// boringtun in A (10.77.0.1), wireguard-go in B (10.77.0.2), each the
/// other's only peer, over a veth pair (192.0.2.1 - 192.0.2.2).
struct Tunnel {
    a: End,
    b: End,
    _keys: tempfile::TempDir,
}

impl Tunnel {
    fn new() -> Tunnel {
        let r: u32 = rand::random::<u32>() & 0xff_ffff;
        let keys = tempfile::tempdir().unwrap();
        let mut ends = Vec::new();
        for (side, tool) in [("a", boringtun().unwrap()), ("b", "wireguard-go".into())] {
            let ns = format!("qkdbt{side}_{r:06x}");
            let ifname = format!("qkdbt{side}{r:06x}");
            run(&["ip", "netns", "add", &ns]);
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &ns]).arg(&tool);
            if side == "a" {
                cmd.args(["--disable-drop-privileges", "-f", &ifname]);
            } else {
                cmd.arg(&ifname).env("WG_PROCESS_FOREGROUND", "1");
            }
            let daemon = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut end = End {
                ns,
                ifname,
                daemon,
                public: String::new(),
            };
            let private = run(&["wg", "genkey"]);
            let file = keys.path().join(side);
            std::fs::write(&file, &private).unwrap();
            end.public = pubkey(&private);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !end.sock().exists() {
                assert!(Instant::now() < deadline, "{tool:?} made no socket");
                std::thread::sleep(Duration::from_millis(50));
            }
            ends.push((end, file));
        }
        let (b, bkey) = ends.pop().unwrap();
        let (a, akey) = ends.pop().unwrap();
        let (va, vb) = (format!("qbva{r:06x}"), format!("qbvb{r:06x}"));
        // Made in the namespaces: nothing is left in the host's.
        run(&[
            "ip", "link", "add", &va, "netns", &a.ns, "type", "veth", "peer", "name", &vb, "netns",
            &b.ns,
        ]);
        for (end, veth, under, inner, far, far_under, key) in [
            (
                &a,
                &va,
                "192.0.2.1/24",
                "10.77.0.1/24",
                &b,
                "192.0.2.2",
                &akey,
            ),
            (
                &b,
                &vb,
                "192.0.2.2/24",
                "10.77.0.2/24",
                &a,
                "192.0.2.1",
                &bkey,
            ),
        ] {
            end.sh(&["ip", "link", "set", "lo", "up"]);
            end.sh(&["ip", "addr", "add", under, "dev", veth]);
            end.sh(&["ip", "link", "set", veth, "up"]);
            let far_inner = if far_under.ends_with(".1") {
                "10.77.0.1/32"
            } else {
                "10.77.0.2/32"
            };
            end.sh(&[
                "wg",
                "set",
                &end.ifname,
                "listen-port",
                "51820",
                "private-key",
                key.to_str().unwrap(),
                "peer",
                &far.public,
                "endpoint",
                &format!("{far_under}:51820"),
                "allowed-ips",
                far_inner,
            ]);
            end.sh(&["ip", "addr", "add", inner, "dev", &end.ifname]);
            end.sh(&["ip", "link", "set", &end.ifname, "up"]);
        }
        Tunnel { a, b, _keys: keys }
    }
}

/// Each end goes whole, whenever it is dropped: a set-up that fails half
/// way leaves no daemon, socket or namespace behind.
impl Drop for End {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.daemon.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while self.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        let _ = std::fs::remove_file(self.sock());
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

#[test]
fn boringtun_takes_psks_new_sessions_and_removal() {
    if !ready_or_skip("boringtun_takes_psks_new_sessions_and_removal") {
        return;
    }
    let mut t = Tunnel::new();
    assert!(t.a.pings_within("10.77.0.2", 10), "no tunnel to begin with");
    let mut u = Uapi::new(Path::new(UAPI_DIR));
    let (pa, pb) = (t.a.peer(&t.b), t.b.peer(&t.a));

    // Its own key, as boringtun lists it (wireguard-go's derived).
    assert_eq!(u.public_key(&t.a.ifname).unwrap(), key_bytes(&t.a.public));
    assert_eq!(u.public_key(&t.b.ifname).unwrap(), key_bytes(&t.b.public));

    // Two rotations: each end takes the PSK, reads it back, boringtun
    // still answers, and traffic resumes on a session made with it.
    for round in 1..=2u8 {
        let psk = Psk::from_bytes(rand::random());
        u.set_psk(&pa, &psk).unwrap();
        assert!(t.a.alive(), "boringtun died in round {round}");
        u.set_psk(&pb, &psk).unwrap();
        assert_eq!(u.get_psk(&pa).unwrap().expose(), psk.expose());
        let shown = t.a.sh(&["wg", "show", &t.a.ifname, "preshared-keys"]);
        assert!(shown.contains(&B64.encode(psk.expose())), "round {round}");
        assert!(
            t.a.pings_within("10.77.0.2", 10),
            "no traffic after round {round}"
        );
        assert!(t.b.ping("10.77.0.1"), "B to A after round {round}");
    }

    // A new session: the peer comes back as it was (read back), and the
    // handshake time that follows is later than the re-creation.
    let since = SystemTime::now();
    let before = u.new_session(&pa, 25).unwrap();
    assert_eq!(before.endpoint, Some("192.0.2.2:51820".parse().unwrap()));
    assert_eq!(before.allowed_ips, vec![("10.77.0.2".parse().unwrap(), 32)]);
    assert_eq!(before.keepalive, 0, "boringtun's peer keeps its keepalive");
    assert_eq!(u.last_handshake(&pa).unwrap(), None, "no session yet");
    // boringtun stamps a session with its last timer turn (250 ms).
    std::thread::sleep(Duration::from_millis(600));
    let pinged = SystemTime::now();
    assert!(
        t.a.pings_within("10.77.0.2", 10),
        "no session after re-creation"
    );
    let made = u.last_handshake(&pa).unwrap().expect("a session");
    assert!(made > since, "{made:?} not after {since:?}");
    // The ping started the handshake: its time, counted back from
    // boringtun's time since, is no earlier than a timer turn before it
    // (250 ms; a second allows for that thread waking late on a loaded
    // machine, still well after the sleep above began).
    let earliest = pinged - Duration::from_millis(1000);
    assert!(made >= earliest, "{made:?} before {earliest:?}");

    // The PSK it holds already: nothing rewritten, the session kept (a
    // re-created peer has none; the time, counted back from now, may move
    // by the microseconds between two reads).
    let same = u.get_psk(&pa).unwrap();
    u.set_psk(&pa, &same).unwrap();
    let still = u.last_handshake(&pa).unwrap().expect("the session kept");
    let moved = still.duration_since(made).unwrap_or_else(|e| e.duration());
    assert!(moved < Duration::from_millis(100), "{moved:?}");

    // A peer the interface does not have is never created.
    let stranger = WgPeer {
        interface: t.a.ifname.clone(),
        public_key: [9; 32],
    };
    let k = Psk::from_bytes([7; 32]);
    assert_eq!(u.set_psk(&stranger, &k), Err(WgError::NoSuchPeer));
    assert_eq!(u.new_session(&stranger, 25), Err(WgError::NoSuchPeer));
    assert_eq!(t.a.peers(), vec![t.b.public.clone()]);

    // The last rung: the peer goes, traffic stops, boringtun answers on.
    u.remove_peer(&pa).unwrap();
    assert!(t.a.peers().is_empty());
    assert!(!t.a.ping("10.77.0.2"));
    u.remove_peer(&pa).unwrap();
    assert!(t.a.alive());
    assert_eq!(u.get_psk(&pa), Err(WgError::NoSuchPeer));
}
