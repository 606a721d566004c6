//! Two keyed gateways (DESIGN §10): the namespaces and WireGuard tunnel of
//! scripts/gateways.sh, a qkdpfd on EACH gateway (A master, B slave) with
//! real nftables and wireguard-go through the userspace backend — or, with
//! `WG=linux` (the kernel VM lane), kernel WireGuard through the netlink
//! backend — and qkdsim's two
//! ETSI 014 KMEs (SAE-A, SAE-B) in gateway A on the underlay. Helpers read
//! PSKs and handshakes with `wg show`, bounce a tunnel, ping across it.

use super::bundle::{SIGNIFY, TestKeys, make_bundle, sign};
use super::gateway::{BIN_QKDCTL, BIN_QKDPFD, LOCKDOWN_NFT, OPEN_NFT, Serial, require_root};
use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub const BIN_QKDSIM: &str = env!("CARGO_BIN_EXE_qkdsim");
pub const A: usize = 0;
pub const B: usize = 1;
const UNDERLAY: [&str; 2] = ["192.0.2.1", "192.0.2.2"];

/// A time limit as the host needs it, stretched by `TEST_TIME_SCALE` (the
/// kernel VM lane runs under TCG, several times slower): limits bound how
/// long a test waits for an outcome, never the outcome itself.
pub fn slow(limit: Duration) -> Duration {
    let scale: f64 = std::env::var("TEST_TIME_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|s: &f64| *s >= 1.0)
        .unwrap_or(1.0);
    limit.mul_f64(scale)
}

/// The `[testing]` section with its periods (`rotate = "2s"`,
/// `max_key_age = "6s"`, ...) stretched by `TEST_TIME_SCALE` as [`slow`]
/// stretches limits, all by the same factor so that their order holds: a
/// round must fit in a period however slow the machine.
fn scaled_testing(testing: &str) -> String {
    testing
        .lines()
        .map(|l| {
            let scaled = l.split_once(" = \"").and_then(|(k, v)| {
                let n = v.strip_suffix("s\"")?.parse::<u64>().ok()?;
                Some(format!(
                    "{k} = \"{}s\"",
                    slow(Duration::from_secs(n)).as_secs()
                ))
            });
            scaled.unwrap_or_else(|| l.to_string())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `[wireguard] backend` the gateways run: `WG=linux` is kernel
/// WireGuard (scripts/gateways.sh makes the interfaces to match).
pub fn wg_backend() -> &'static str {
    match std::env::var("WG").as_deref() {
        Ok("linux") => "linux",
        Ok("userspace") | Err(_) => "userspace",
        Ok(other) => panic!("WG={other}: linux or userspace"),
    }
}

pub struct Pair {
    pub prefix: String,
    pub work: TempDir,
    pub policy_keys: TestKeys,
    pub daemons: [Option<Child>; 2],
    pub sim: Option<Child>,
    /// Start the daemons with `-v` (debug events such as `round`).
    pub verbose: bool,
    _serial: Serial,
}

impl Pair {
    /// Namespaces, tunnel, keys, PKI and both configs; nothing running.
    /// `testing` is the body of each config's `[testing]` section.
    pub fn new(prefix: &str, testing: &str) -> Option<Pair> {
        Pair::build(prefix, testing, None)
    }

    /// [`Pair::new`] with gateway A's tunnel on boringtun (the userspace
    /// backend either way), B's on wireguard-go: None where the test is
    /// skipped ([`super::gateway::boringtun_or_skip`]).
    pub fn with_boringtun_at_a(prefix: &str, testing: &str) -> Option<Pair> {
        if wg_backend() != "userspace" {
            eprintln!(
                "!!!!! SKIPPED {prefix}: boringtun needs the userspace backend, not WG=linux"
            );
            return None;
        }
        let bt = super::gateway::boringtun_or_skip(prefix)?;
        Pair::build(prefix, testing, Some(bt))
    }

    fn build(prefix: &str, testing: &str, boringtun: Option<PathBuf>) -> Option<Pair> {
        if !require_root() {
            return None;
        }
        let serial = super::gateway::serial();
        let policy_keys = TestKeys::signify()?;
        let work = tempfile::Builder::new()
            .prefix("qkdpair")
            .tempdir()
            .unwrap();
        let w = work.path();
        fs::set_permissions(w, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let mut up = Command::new("sh");
        up.arg(script("gateways.sh"))
            .args(["up", prefix])
            .arg(w.join("net"));
        match &boringtun {
            Some(bt) => up.env("WG_A", "boringtun").env("BORINGTUN", bt),
            None => up.env_remove("WG_A"),
        };
        let up = up.status().unwrap();
        assert!(up.success(), "gateways.sh up failed");
        let pki = w.join("pki");
        run(Command::new(BIN_QKDSIM)
            .args(["pki", "--dir"])
            .arg(&pki)
            .args([
                "--kme", "a", "--kme", "b", "--sae", "SAE-A", "--sae", "SAE-B",
            ])
            .args(["--host", UNDERLAY[A]]));
        let p = pki.display();
        fs::write(
            w.join("qkdsim.toml"),
            format!(
                "[kme.a]\nlisten = \"{a}:8443\"\nkme_id = \"KME-A\"\nsae_ids = [\"SAE-A\"]\n\
                 ca = \"{p}/ca.pem\"\ncert = \"{p}/kme-a.pem\"\nkey = \"{p}/kme-a.key\"\n\
                 [kme.b]\nlisten = \"{a}:8444\"\nkme_id = \"KME-B\"\nsae_ids = [\"SAE-B\"]\n\
                 ca = \"{p}/ca.pem\"\ncert = \"{p}/kme-b.pem\"\nkey = \"{p}/kme-b.key\"\n\
                 [link.dr]\nkmes = [\"a\", \"b\"]\n",
                a = UNDERLAY[A]
            ),
        )
        .unwrap();
        for end in [A, B] {
            let d = w.join(side(end));
            fs::create_dir_all(&d).unwrap();
            run(Command::new(SIGNIFY)
                .args(["-G", "-n", "-c", "qkdpfd peering key", "-p"])
                .arg(d.join("peer.pub"))
                .arg("-s")
                .arg(d.join("peer.sec")));
        }
        for end in [A, B] {
            let far = 1 - end;
            let d = w.join(side(end));
            let net = w.join("net");
            let wg_peer = fs::read_to_string(net.join(format!("{prefix}-{}.pub", side(far))))
                .unwrap()
                .trim()
                .to_string();
            let peer_pubkey = fs::read_to_string(w.join(side(far)).join("peer.pub"))
                .unwrap()
                .lines()
                .nth(1)
                .unwrap()
                .to_string();
            // B asks its KME with GET (ETSI 014's other form), A with POST.
            let (sae, peer_sae, role, port, method) = match end {
                A => ("SAE-A", "SAE-B", "master", 8443, "POST"),
                _ => ("SAE-B", "SAE-A", "slave", 8444, "GET"),
            };
            let conf = format!(
                "[daemon]\nuser = \"nobody\"\nstate_dir = \"{d}/state\"\nsocket = \"{d}/qkdpfd.sock\"\n\
                 metrics = \"127.0.0.1:9107\"\n\n\
                 [policy]\npubkeys = [\"{pk}\"]\ndir = \"{d}/state/policy\"\n\n\
                 [firewall]\nbackend = \"nftables\"\n\n[wireguard]\nbackend = \"{wg}\"\n\n\
                 [peering]\nlisten = \"{me}:8071\"\nkey = \"{d}/peer.sec\"\n\n\
                 [kme.site]\nurl = \"https://{kme}:{port}\"\nca = \"{p}/ca.pem\"\n\
                 cert = \"{p}/sae-{sae}.pem\"\nkey = \"{p}/sae-{sae}.key\"\nsae_id = \"{sae}\"\n\
                 method = \"{method}\"\n\n\
                 [qber.sim]\ndriver = \"sim\"\npoll = \"200ms\"\nseed = {seed}\n\n\
                 [link.dr]\nqber = \"sim\"\nqber_id = \"t\"\nkme = \"site\"\npeer_sae_id = \"{peer_sae}\"\n\
                 role = \"{role}\"\npeer = \"{far_ip}:8071\"\npeer_pubkey = \"{peer_pubkey}\"\n\
                 wg_interface = \"{prefix}-w{me_side}\"\nwg_peer = \"{wg_peer}\"\nwg_port = 51820\n\
                 addresses = [\"{far_ip}\"]\n\n[testing]\n{testing}\n",
                d = d.display(),
                pk = policy_keys.pubkey.display(),
                me = UNDERLAY[end],
                kme = UNDERLAY[A],
                far_ip = UNDERLAY[far],
                seed = 3 + end,
                me_side = side(end),
                wg = wg_backend(),
                testing = scaled_testing(testing),
            );
            fs::write(d.join("qkdpfd.conf"), conf).unwrap();
        }
        Some(Pair {
            prefix: prefix.into(),
            work,
            policy_keys,
            daemons: [None, None],
            sim: None,
            verbose: false,
            _serial: serial,
        })
    }

    pub fn ns(&self, end: usize) -> String {
        format!("{}-{}", self.prefix, side(end))
    }

    pub fn wg_if(&self, end: usize) -> String {
        format!("{}-w{}", self.prefix, side(end))
    }

    pub fn path(&self, end: usize, name: &str) -> PathBuf {
        self.work.path().join(side(end)).join(name)
    }

    /// qkdsim's KMEs in gateway A; waits until both ports answer.
    pub fn start_sim(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.work.path().join("qkdsim.log"))
            .unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(A),
                BIN_QKDSIM,
                "serve",
                "--config",
            ])
            .arg(self.work.path().join("qkdsim.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.sim = Some(child);
        let t = Instant::now();
        while !self.ns_ok(A, &["sh", "-c", "ss -ltn | grep -q ':8444 '"]) {
            assert!(
                t.elapsed() < slow(Duration::from_secs(10)),
                "qkdsim did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop_sim(&mut self) {
        if let Some(mut c) = self.sim.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts qkdpfd in the foreground in its gateway; waits for the socket.
    pub fn start(&mut self, end: usize) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(end, "qkdpfd.log"))
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(end), BIN_QKDPFD, "-d", "-f"])
            .arg(self.path(end, "qkdpfd.conf"))
            .args(self.verbose.then_some("-v"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemons[end] = Some(child);
        let t = Instant::now();
        while !self.ctl(end, &["status"]).status.success() {
            assert!(
                t.elapsed() < slow(Duration::from_secs(10)),
                "qkdpfd {} did not start:\n{}",
                side(end),
                self.log(end)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self, end: usize) {
        if let Some(mut c) = self.daemons[end].take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = c.wait();
        }
    }

    /// Both daemons, then one signed bundle (fast QBER timers) loaded on each.
    pub fn start_both(&mut self, policy: &str) {
        self.start(A);
        self.start(B);
        let dir = self.work.path().join("bundle");
        make_bundle(
            &dir,
            &[
                ("policy.toml", policy),
                ("anchors/open.nft", OPEN_NFT),
                ("anchors/lockdown.nft", LOCKDOWN_NFT),
            ],
        );
        sign(&dir, &self.policy_keys);
        for end in [A, B] {
            self.ctl_ok(end, &["policy", "load", dir.to_str().unwrap()]);
        }
    }

    /// qkdsim, both daemons with the sample policy, and the first round:
    /// it starts at once (jitter off), and both ends agree and open.
    pub fn start_keyed(&mut self) {
        self.start_sim();
        self.start_both(&super::gateway::policy(1, true, ""));
        self.wait("first rotation", Duration::from_secs(15), |a, b| {
            a["keys"]["installed_epoch"].as_u64() >= Some(1)
                && a["keys"]["installed_epoch"] == b["keys"]["installed_epoch"]
                && a["enforcement"] == "open"
                && b["enforcement"] == "open"
        });
    }

    /// A daemon's log without the `proc=` stamps; [`Pair::raw_log`] keeps them.
    pub fn log(&self, end: usize) -> String {
        super::gateway::unstamped(&self.raw_log(end))
    }

    pub fn raw_log(&self, end: usize) -> String {
        fs::read_to_string(self.path(end, "qkdpfd.log")).unwrap_or_default()
    }

    /// Waits until `end`'s log holds `needle` (engine events reach the
    /// log through the parent, after the engine's own answers).
    pub fn wait_log(&self, end: usize, needle: &str, limit: Duration) -> String {
        let limit = slow(limit);
        let t = Instant::now();
        loop {
            let log = self.log(end);
            if log.contains(needle) {
                return log;
            }
            assert!(
                t.elapsed() < limit,
                "no {needle:?} in the log of {}:\n{log}",
                side(end)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn logs(&self) -> String {
        format!(
            "--- A:\n{}\n--- B:\n{}\n--- qkdsim:\n{}",
            self.log(A),
            self.log(B),
            fs::read_to_string(self.work.path().join("qkdsim.log")).unwrap_or_default()
        )
    }

    pub fn ctl(&self, end: usize, args: &[&str]) -> Output {
        Command::new(BIN_QKDCTL)
            .arg("-s")
            .arg(self.path(end, "qkdpfd.sock"))
            .args(args)
            .output()
            .unwrap()
    }

    pub fn ctl_ok(&self, end: usize, args: &[&str]) -> String {
        let o = self.ctl(end, args);
        assert!(
            o.status.success(),
            "qkdctl {args:?} on {}: {}{}\n{}",
            side(end),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `show link dr -j`.
    pub fn show(&self, end: usize) -> serde_json::Value {
        let o = self.ctl(end, &["-j", "show", "link", "dr"]);
        serde_json::from_slice(&o.stdout).unwrap_or_default()
    }

    /// The epoch of the PSK installed last on `end` (0: none).
    pub fn installed(&self, end: usize) -> u64 {
        self.show(end)["keys"]["installed_epoch"]
            .as_u64()
            .unwrap_or(0)
    }

    /// Waits until `pred(show A, show B)` holds.
    pub fn wait(
        &self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&serde_json::Value, &serde_json::Value) -> bool,
    ) -> Duration {
        let limit = slow(limit);
        let t = Instant::now();
        loop {
            if pred(&self.show(A), &self.show(B)) {
                return t.elapsed();
            }
            assert!(
                t.elapsed() < limit,
                "{what}: not after {limit:?}\nA: {}\nB: {}\n{}",
                self.show(A),
                self.show(B),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `wg show <if> preshared-keys` in a gateway: the PSK (base64) of its one peer.
    pub fn psk(&self, end: usize) -> String {
        let out = self.wg_show(end, "preshared-keys");
        out.split_whitespace().nth(1).unwrap_or("").to_string()
    }

    /// Adds `line` to both configs' `[wireguard]` section (before start).
    pub fn wireguard_conf(&self, line: &str) {
        for end in [A, B] {
            let path = self.path(end, "qkdpfd.conf");
            let conf = fs::read_to_string(&path).unwrap();
            let conf = conf.replacen("[wireguard]\n", &format!("[wireguard]\n{line}\n"), 1);
            fs::write(&path, conf).unwrap();
        }
    }

    /// `wg show <if> latest-handshakes`: unix seconds of the last handshake.
    pub fn handshake(&self, end: usize) -> u64 {
        let out = self.wg_show(end, "latest-handshakes");
        out.split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// How many peers a gateway's interface has.
    pub fn wg_show_peers(&self, end: usize) -> usize {
        self.wg_show(end, "peers")
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count()
    }

    pub fn wg_show(&self, end: usize, what: &str) -> String {
        let o = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(end),
                "wg",
                "show",
                &self.wg_if(end),
                what,
            ])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "wg show: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Forces a new WireGuard session: each end's peer is removed and
    /// added again with the PSK the interface holds now (read back with
    /// `wg show`, passed by file), so the next packet needs a fresh
    /// handshake that succeeds only if both PSKs agree. (wireguard-go keeps
    /// its sessions across `ip link set down/up`.)
    pub fn new_session(&self) {
        let net = self.work.path().join("net");
        for end in [A, B] {
            let far = 1 - end;
            let far_pub = fs::read_to_string(net.join(format!("{}.pub", self.ns(far)))).unwrap();
            let far_pub = far_pub.trim();
            let psk_file = self.work.path().join(format!("psk-{}", side(end)));
            let psk = self.psk(end);
            assert_eq!(
                psk.len(),
                44,
                "{}: {:?}\n{}",
                self.ns(end),
                self.wg_show(end, "dump"),
                self.logs()
            );
            let mut f = fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(&psk_file)
                .unwrap();
            std::io::Write::write_all(&mut f, format!("{psk}\n").as_bytes()).unwrap();
            let wif = self.wg_if(end);
            let endpoint = format!("{}:51820", UNDERLAY[far]);
            let allowed = format!("10.99.0.{}/32", far + 1);
            let remove = ["wg", "set", &wif, "peer", far_pub, "remove"];
            self.ns_must(end, &remove);
            let add = [
                "wg",
                "set",
                &wif,
                "peer",
                far_pub,
                "endpoint",
                &endpoint,
                "allowed-ips",
                &allowed,
                "persistent-keepalive",
                "1",
                "preshared-key",
                psk_file.to_str().unwrap(),
            ];
            self.ns_must(end, &add);
        }
    }

    /// A ping stream from B to A's tunnel address every `interval` seconds
    /// (`-n -D -W 1`), its output in `pings.txt`, until [`PingStream::stop`].
    pub fn ping_stream(&self, interval: &str) -> PingStream {
        let out = self.work.path().join("pings.txt");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(B)])
            .args(["ping", "-n", "-D", "-i", interval, "-W", "1", "10.99.0.1"])
            .stdout(fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        PingStream { child, out }
    }

    /// Pings from B to A's tunnel address; replies received.
    pub fn pings(&self, count: u32) -> u32 {
        super::gateway::pings_from(&self.ns(B), count)
    }

    /// qkdsim's eavesdropper on the fibre, as both ends' simulated QBER
    /// sees it: on (intercept-resend of every photon) until both ends are
    /// locked for `qber`, or off.
    pub fn eavesdropper(&self, on: bool) {
        let fraction = if on { "1" } else { "0" };
        for end in [A, B] {
            self.ctl_ok(end, &["sim", "eve", "dr", fraction]);
        }
        if on {
            self.wait("both ends locked", Duration::from_secs(15), |a, b| {
                [a, b]
                    .iter()
                    .all(|s| s["enforcement"] == "lockdown" && has_reason(s, "qber"))
            });
        }
    }

    /// An incident and its end, as both ends must live them: qkdsim's
    /// eavesdropper locks both for `qber` and nothing crosses; once it has
    /// left, a low QBER alone reopens neither (the key in force saw the
    /// incident) and nothing crosses; a rotation then reopens both on a key
    /// agreed after it. Returns the instant before that rotation: every
    /// session either end had then began before it.
    pub fn incident_and_recovery(&self) -> std::time::SystemTime {
        let epoch = self.installed(A);
        self.eavesdropper(true);
        assert_eq!(
            self.pings(3),
            0,
            "traffic through a locked tunnel\n{}",
            self.logs()
        );
        self.eavesdropper(false);
        // The policy's recover_after passes, the QBER low all along.
        std::thread::sleep(Duration::from_secs(3));
        for s in [self.show(A), self.show(B)] {
            assert!(has_reason(&s, "qber"), "reopened on the old key: {s}");
        }
        assert_eq!(
            self.pings(2),
            0,
            "traffic on the incident's key\n{}",
            self.logs()
        );
        let fresh_from = std::time::SystemTime::now();
        self.ctl_ok(A, &["rotate", "dr"]);
        self.wait("both ends reopened", Duration::from_secs(30), |a, b| {
            [a, b].iter().all(|s| {
                s["enforcement"] == "open"
                    && !has_reason(s, "qber")
                    && s["keys"]["installed_epoch"].as_u64() > Some(epoch)
            })
        });
        fresh_from
    }

    /// Pings until 3 of 3 pass (WireGuard retries a handshake every 5 s).
    pub fn traffic_within(&self, limit: Duration) {
        let limit = slow(limit);
        let t = Instant::now();
        while self.pings(3) < 3 {
            assert!(t.elapsed() < limit, "no traffic\n{}", self.logs());
        }
    }

    /// The Prometheus text of a gateway's qkdpfd (127.0.0.1:9107 in its namespace).
    pub fn metrics(&self, end: usize) -> String {
        let o = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(end),
                "curl",
                "-sS",
                "--max-time",
                "5",
            ])
            .arg("http://127.0.0.1:9107/metrics")
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs a command in a gateway; true on success.
    pub fn ns_ok(&self, end: usize, argv: &[&str]) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(end)])
            .args(argv)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Sets `end`'s PSK for the far gateway's peer with `wg set`, behind
    /// qkdpfd's back (a drift it must notice); `psk` is base64.
    pub fn set_psk_behind_qkdpfd(&self, end: usize, psk: &str) {
        let net = self.work.path().join("net");
        let far = fs::read_to_string(net.join(format!("{}.pub", self.ns(1 - end)))).unwrap();
        let file = self.work.path().join("other.psk");
        fs::write(&file, format!("{psk}\n")).unwrap();
        let wif = self.wg_if(end);
        let set = ["wg", "set", &wif, "peer", far.trim(), "preshared-key"];
        self.ns_must(end, &[&set[..], &[file.to_str().unwrap()]].concat());
    }

    /// Whether nftables in gateway `end` drops the link's traffic by its
    /// own chains ([`super::nft::link_locked`]).
    pub fn link_locked(&self, end: usize, link: &str) -> bool {
        super::nft::link_locked(|a| self.ns_must(end, &[&["nft"][..], a].concat()), link)
    }

    /// Runs a command in a gateway; it must succeed. Its stdout.
    pub fn ns_must(&self, end: usize, argv: &[&str]) -> String {
        let o = Command::new("ip")
            .args(["netns", "exec", &self.ns(end)])
            .args(argv)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{argv:?} in {}: {}{}",
            self.ns(end),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// An nft script run in a gateway (for test-only drop rules).
    pub fn nft(&self, end: usize, script: &str) {
        let mut c = Command::new("ip")
            .args(["netns", "exec", &self.ns(end), "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(c.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
        assert!(c.wait().unwrap().success(), "nft: {script}");
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.stop(A);
        self.stop(B);
        self.stop_sim();
        let _ = Command::new("sh")
            .arg(script("gateways.sh"))
            .args(["down", &self.prefix])
            .arg(self.work.path().join("net"))
            .status();
    }
}

/// A running [`Pair::ping_stream`].
pub struct PingStream {
    child: Child,
    /// ping's output so far.
    pub out: PathBuf,
}

impl PingStream {
    /// Interrupts ping (SIGINT: it prints its summary); its whole output
    /// and the number of echoes it sent.
    pub fn stop(mut self) -> (String, u64) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let _ = self.child.wait();
        let text = fs::read_to_string(&self.out).unwrap();
        let sent = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .and_then(|l| l.split(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no ping summary in\n{text}"));
        (text, sent)
    }
}

pub fn side(end: usize) -> &'static str {
    if end == A { "a" } else { "b" }
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

fn run(c: &mut Command) {
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "{c:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Whether a `qkdctl -j show link` answer lists lock reason `r`.
pub fn has_reason(s: &serde_json::Value, r: &str) -> bool {
    s["reasons"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x == r))
}
