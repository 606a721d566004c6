//! Two gateway namespaces with a real wireguard-go tunnel
//! (scripts/gateways.sh), qkdpfd on gateway A with real nftables, and
//! helpers to drive it with qkdctl and to send packets across.
//!
//! Needs root. Without root: under CI=true the test fails, otherwise it is
//! skipped loudly.

use super::bundle::{TestKeys, make_bundle, sign};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub const BIN_QKDPFD: &str = env!("CARGO_BIN_EXE_qkdpfd");
pub const BIN_QKDCTL: &str = env!("CARGO_BIN_EXE_qkdctl");

/// True when the test may run; panics under CI=true without root.
pub fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true: namespace tests need root");
    }
    let _ = writeln!(std::io::stderr(), "SKIP: namespace tests need root");
    false
}

/// `tool` is on PATH.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What a WireGuard test on wireguard-go needs (root, wireguard-go, wg,
/// /dev/net/tun) and whatever `more` names as missing: true when nothing
/// is; else a loud skip, or with CI=true a failure.
pub fn wireguard_go_or_skip(test: &str, more: &[Option<&str>]) -> bool {
    let missing: Vec<&str> = [
        (!nix::unistd::geteuid().is_root()).then_some("root"),
        (!have("wireguard-go")).then_some("wireguard-go"),
        (!have("wg")).then_some("wg"),
        (!Path::new("/dev/net/tun").exists()).then_some("/dev/net/tun"),
    ]
    .into_iter()
    .chain(more.iter().copied())
    .flatten()
    .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: needs {} (CI=true)", missing.join(", "));
    }
    let _ = writeln!(
        std::io::stderr(),
        "!!!!! SKIPPED {test}: needs {} !!!!!",
        missing.join(", ")
    );
    false
}

/// boringtun-cli: target/boringtun/bin's (scripts/boringtun.sh) or the
/// one on PATH.
pub fn boringtun() -> Option<PathBuf> {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/boringtun/bin/boringtun-cli");
    if built.exists() {
        return Some(built);
    }
    let out = std::process::Command::new("sh")
        .args(["-c", "command -v boringtun-cli"])
        .output()
        .ok()?;
    let path = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !path.trim().is_empty()).then(|| PathBuf::from(path.trim()))
}

/// [`boringtun`], or None with a loud skip; with CI=true a missing one
/// fails the test.
pub fn boringtun_or_skip(test: &str) -> Option<PathBuf> {
    let found = boringtun();
    if found.is_none() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test}: needs boringtun-cli (scripts/boringtun.sh) (CI=true)");
        }
        let _ = writeln!(
            std::io::stderr(),
            "!!!!! SKIPPED {test}: needs boringtun-cli (scripts/boringtun.sh) !!!!!"
        );
    }
    found
}

/// Firewall tests run one at a time (DESIGN §10): a lock file shared by
/// every test process, whatever the runner.
pub struct Serial(nix::fcntl::Flock<fs::File>);

pub fn serial() -> Serial {
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/tmp/qkdpfd-fw-tests.lock")
        .unwrap();
    let lock = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap();
    Serial(lock)
}

/// A policy.toml with the demo's fast timers; `extra` is appended to [defaults].
pub fn policy(serial: u64, poll_fast: bool, extra: &str) -> String {
    let (timeout, after) = if poll_fast {
        ("3s", "2s")
    } else {
        ("10s", "60s")
    };
    format!(
        "serial = {serial}\n\n[defaults]\nqber_lockdown = 0.08\ntrip_samples = 3\n\
         recover_below = 0.05\nrecover_after = \"{after}\"\nqber_timeout = \"{timeout}\"\n{extra}\n\
         [rulesets]\nopen = \"anchors/open\"\nlockdown = \"anchors/lockdown\"\n"
    )
}

pub const OPEN_NFT: &str = "ip saddr $peer4 udp sport $wg_port accept\n\
ip daddr $peer4 udp dport $wg_port accept\niifname $wg_if accept\noifname $wg_if accept\n";
pub const LOCKDOWN_NFT: &str = "counter drop\n";

pub struct Gateway {
    pub prefix: String,
    pub work: TempDir,
    pub keys: TestKeys,
    pub conf: PathBuf,
    pub daemon: Option<Child>,
    _serial: Serial,
}

impl Gateway {
    /// Namespaces, tunnel, a signify key and a config; no daemon yet.
    /// `conf_extra` goes into [daemon]; `poll` is the sim source's poll.
    pub fn new(prefix: &str, poll: &str, conf_extra: &str) -> Option<Gateway> {
        if !require_root() {
            return None;
        }
        let s = serial();
        let keys = TestKeys::signify()?;
        let work = tempfile::Builder::new().prefix("qkdgw").tempdir().unwrap();
        fs::set_permissions(
            work.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let status = Command::new("sh")
            .arg(script("gateways.sh"))
            .args(["up", prefix])
            .arg(work.path().join("net"))
            .status()
            .unwrap();
        assert!(status.success(), "gateways.sh up failed");
        let w = work.path();
        let conf = w.join("qkdpfd.conf");
        let text = format!(
            "[daemon]\nuser = \"nobody\"\nstate_dir = \"{w}/state\"\nsocket = \"{w}/qkdpfd.sock\"\n{conf_extra}\n\
             [policy]\npubkeys = [\"{pk}\"]\ndir = \"{w}/state/policy\"\nincoming = \"{w}/incoming\"\n\n\
             [firewall]\nbackend = \"nftables\"\n\n[wireguard]\nbackend = \"dry-run\"\n\n\
             [qber.sim]\ndriver = \"sim\"\npoll = \"{poll}\"\nseed = 3\n\n\
             [link.dr]\nqber = \"sim\"\nqber_id = \"t\"\nwg_interface = \"{prefix}-wa\"\nwg_port = 51820\n\
             addresses = [\"192.0.2.2\"]\n",
            w = w.display(),
            pk = keys.pubkey.display(),
        );
        fs::write(&conf, text).unwrap();
        fs::create_dir_all(w.join("incoming")).unwrap();
        Some(Gateway {
            prefix: prefix.into(),
            work,
            keys,
            conf,
            daemon: None,
            _serial: s,
        })
    }

    /// Replaces the `[qber.sim]` section with `section` (which must define
    /// `[qber.net]`) and points link dr at it with `qber_id`.
    pub fn set_qber(&self, section: &str, qber_id: &str) {
        let text = fs::read_to_string(&self.conf).unwrap();
        let start = text.find("[qber.sim]").unwrap();
        let end = text.find("[link.dr]").unwrap();
        let text = format!("{}{section}\n\n{}", &text[..start], &text[end..])
            .replace("qber = \"sim\"", "qber = \"net\"")
            .replace("qber_id = \"t\"", &format!("qber_id = \"{qber_id}\""));
        fs::write(&self.conf, text).unwrap();
    }

    pub fn ns_a(&self) -> String {
        format!("{}-a", self.prefix)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    /// A signed bundle directory from policy text and rulesets.
    pub fn bundle(&self, name: &str, policy: &str, open: &str, lockdown: &str) -> PathBuf {
        let dir = self.path(name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        make_bundle(
            &dir,
            &[
                ("policy.toml", policy),
                ("anchors/open.nft", open),
                ("anchors/lockdown.nft", lockdown),
            ],
        );
        sign(&dir, &self.keys);
        dir
    }

    /// `qkdpfd FLAGS -f conf` inside gateway A, to completion.
    pub fn qkdpfd(&self, flags: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns_a(), BIN_QKDPFD])
            .args(flags)
            .arg("-f")
            .arg(&self.conf)
            .output()
            .unwrap()
    }

    /// Starts the daemon in the foreground (-d), stderr to `qkdpfd.log`,
    /// and waits until `qkdctl status` answers.
    pub fn start(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("qkdpfd.log"))
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns_a(), BIN_QKDPFD, "-d", "-f"])
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemon = Some(child);
        let t = Instant::now();
        while !self.ctl(&["status"]).status.success() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "daemon did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The daemon's log without the `proc=` stamps (tests match events by
    /// their fields; [`Gateway::raw_log`] keeps them).
    pub fn log(&self) -> String {
        unstamped(&self.raw_log())
    }

    pub fn raw_log(&self) -> String {
        fs::read_to_string(self.path("qkdpfd.log")).unwrap_or_default()
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(BIN_QKDCTL)
            .arg("-s")
            .arg(self.path("qkdpfd.sock"))
            .args(args)
            .output()
            .unwrap()
    }

    /// `qkdctl ARGS`, which must succeed; returns stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let o = self.ctl(args);
        assert!(
            o.status.success(),
            "qkdctl {args:?}: {}{}\nlog:\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            self.log()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The link's state word from `show link dr -j`.
    pub fn state(&self) -> String {
        let o = self.ctl(&["-j", "show", "link", "dr"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        v["enforcement"].as_str().unwrap_or("?").to_string()
    }

    /// Starts the daemon, loads the sample bundle (serial 1, fast
    /// polling, [`OPEN_NFT`] and [`LOCKDOWN_NFT`]) and waits until the
    /// link is open: where most tests begin.
    pub fn start_open(&mut self) {
        self.start();
        let b = self.bundle("b1", &policy(1, true, ""), OPEN_NFT, LOCKDOWN_NFT);
        self.ctl_ok(&["policy", "load", b.to_str().unwrap()]);
        self.wait_state("open", Duration::from_secs(10));
    }

    pub fn wait_state(&self, want: &str, limit: Duration) -> Duration {
        let t = Instant::now();
        while self.state() != want {
            assert!(
                t.elapsed() < limit,
                "link not {want} after {limit:?}: {}\nlog:\n{}",
                self.ctl_ok(&["show", "link", "dr"]),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        t.elapsed()
    }

    /// Pings from gateway B to A's tunnel address; returns replies received.
    pub fn pings(&self, count: u32) -> u32 {
        pings_from(&format!("{}-b", self.prefix), count)
    }

    /// A ping stream (every 20 ms, -D timestamps) from B, to a file.
    pub fn ping_stream(&self) -> (Child, PathBuf) {
        let out = self.path("pings.txt");
        let f = fs::File::create(&out).unwrap();
        let c = Command::new("ip")
            .args(["netns", "exec", &format!("{}-b", self.prefix)])
            .args([
                "ping",
                "-n",
                "-D",
                "-O",
                "-i",
                "0.02",
                "-W",
                "1",
                "10.99.0.1",
            ])
            .stdout(f)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        (c, out)
    }

    /// What `nftables.service` does at boot: loads `qkdpfd -B`'s include
    /// into gateway A; both must succeed.
    pub fn load_boot_include(&self) {
        let boot = self.qkdpfd(&["-B"]);
        assert!(
            boot.status.success(),
            "{}",
            String::from_utf8_lossy(&boot.stderr)
        );
        let mut nft = Command::new("ip")
            .args(["netns", "exec", &self.ns_a(), "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(nft.stdin.as_mut().unwrap(), &boot.stdout).unwrap();
        assert!(
            nft.wait().unwrap().success(),
            "nft refused the boot include"
        );
    }

    pub fn nft(&self, args: &[&str]) -> String {
        let o = Command::new("ip")
            .args(["netns", "exec", &self.ns_a(), "nft"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Whether nftables drops the link's traffic by its own chains
    /// ([`super::nft::link_locked`]).
    pub fn link_locked(&self, link: &str) -> bool {
        super::nft::link_locked(|a| self.nft(a), link)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
        let _ = Command::new("sh")
            .arg(script("gateways.sh"))
            .args(["down", &self.prefix])
            .arg(self.work.path().join("net"))
            .status();
    }
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// Pings A's tunnel address (10.99.0.1) from namespace `ns`, 100 ms
/// apart with a 1 s wait; the number of replies.
pub fn pings_from(ns: &str, count: u32) -> u32 {
    let o = Command::new("ip")
        .args(["netns", "exec", ns])
        .args([
            "ping",
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            "0.1",
            "-W",
            "1",
        ])
        .arg("10.99.0.1")
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&o.stdout);
    s.split(',')
        .find_map(|p| {
            p.trim()
                .strip_suffix(" received")
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// Unix timestamps of the replies in a `ping -D` log.
pub fn reply_times(path: &Path) -> Vec<f64> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect()
}

/// A log with the `proc=parent|engine` stamp after each `event=` removed.
pub fn unstamped(log: &str) -> String {
    log.replace(" proc=parent", "").replace(" proc=engine", "")
}

pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}
