//! The rig of the nftables backend tests: a network namespace per test,
//! a wrapper script that runs nft inside it, the backend, and readers of
//! what the kernel holds.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use qkdpfd::conf::{FirewallBackend, FirewallConf};
use qkdpfd::lock::Enforcement;
use qkdpfd::parent::fw::{self, Firewall, Observed};
use qkdpfd::ruleset::LinkTarget;

use super::nft_listing;

pub fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: needs root (CI=true)");
    }
    eprintln!("!!!!! SKIPPED {test}: needs root for network namespaces and nftables !!!!!");
    false
}

pub fn sh(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A network namespace deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Netns {
        let name = format!("qkdfw_{:08x}", rand::random::<u32>());
        sh(&["ip", "netns", "add", &name]);
        Netns { name }
    }

    pub fn exec(&self, cmd: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(cmd);
        sh(&full)
    }

    pub fn nft(&self, args: &str) -> String {
        let mut cmd = vec!["nft"];
        cmd.extend(args.split_whitespace());
        self.exec(&cmd)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A second backend on the rig's namespace and wrapper, as a restarted
/// (or upgraded) daemon's: it knows nothing the first one loaded.
pub fn restarted(r: &Rig, handshakes: bool) -> Box<dyn Firewall> {
    let conf = FirewallConf {
        backend: FirewallBackend::Nftables,
        anchor: "qkdpfd".into(),
        pfctl: PathBuf::from("/sbin/pfctl"),
        nft: r._dir.path().join("nft"),
        handshakes,
    };
    fw::new(&conf, r._dir.path())
}

/// A namespace, a wrapper script running nft inside it, and the backend.
pub struct Rig {
    pub ns: Netns,
    pub _dir: tempfile::TempDir,
    pub fw: Box<dyn Firewall>,
}

/// Moves this thread into `ns`: the backend's netlink (the flips, as the
/// parent sends them from inside its namespace) then reaches the rig's
/// nftables, never the host's.
pub fn enter(ns: &Netns) {
    enter_name(&ns.name)
}

/// Moves this thread into the namespace named `name`.
pub fn enter_name(name: &str) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(format!("/run/netns/{name}")).unwrap();
        // SAFETY: setns on this thread only, with a namespace fd we own.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
    }
    let _ = name;
}

/// The dead-man switch's timeout where a test arms it without testing it:
/// longer than any of these tests runs (the kernel lane's emulated VM ran
/// one for over 30 s, and every link dropped mid-test when it lapsed).
#[allow(dead_code)]
pub const SWITCH: std::time::Duration = std::time::Duration::from_secs(600);

pub fn rig() -> Rig {
    rig_with(false)
}

/// The rig, its lockdowns letting WireGuard handshakes through or not.
pub fn rig_with(handshakes: bool) -> Rig {
    let ns = Netns::new();
    enter(&ns);
    let dir = tempfile::tempdir().unwrap();
    let wrapper = write_wrapper(dir.path(), &ns.name);
    let conf = FirewallConf {
        backend: FirewallBackend::Nftables,
        anchor: "qkdpfd".into(),
        pfctl: PathBuf::from("/sbin/pfctl"),
        nft: wrapper,
        handshakes,
    };
    let fw = fw::new(&conf, dir.path());
    Rig { ns, _dir: dir, fw }
}

pub fn write_wrapper(dir: &Path, ns: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("nft");
    std::fs::write(
        &path,
        // Each script read from stdin is kept (appended to `scripts`); a
        // file `fail_next_load` fails the next one (and is removed).
        format!(
            "#!/bin/sh\necho \"$*\" >> {d}/calls\n\
             case \"$*\" in\n\
             *'-f -'*) if rm {d}/fail_next_load 2>/dev/null; then cat >/dev/null; \
             echo 'Error: failed by the test' >&2; exit 1; fi\n\
             tee -a {d}/scripts | ip netns exec {ns} nft \"$@\" ;;\n\
             *) exec ip netns exec {ns} nft \"$@\" ;;\n\
             esac\n",
            d = dir.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

pub fn link(name: &str, wg_if: &str, addr: [u8; 4]) -> LinkTarget {
    LinkTarget {
        name: name.into(),
        wg_if: wg_if.into(),
        wg_port: 51820,
        rdomain: 0,
        udp_rdomain: 0,
        addrs4: vec![Ipv4Addr::from(addr)],
        addrs6: vec!["2001:db8::2".parse().unwrap()],
        qber: "".into(),
    }
}

/// How many times the backend ran nft so far.
pub fn nft_runs(r: &Rig) -> usize {
    std::fs::read_to_string(r._dir.path().join("calls"))
        .unwrap_or_default()
        .lines()
        .count()
}

/// What a read-back of all `links` shows for `name`.
pub fn state(r: &mut Rig, links: &[LinkTarget], name: &str) -> Observed {
    r.fw.observe(links, None).unwrap()[name].state.clone()
}

/// Every element of the three `locked_` sets, as nft lists them.
pub fn locked_keys(ns: &Netns) -> Vec<String> {
    let mut out = Vec::new();
    for set in ["locked_4", "locked_6", "locked_if"] {
        // A set deleted behind the backend lists as nothing.
        let listed = Command::new("ip")
            .args([
                "netns", "exec", &ns.name, "nft", "list", "set", "inet", "qkdpfd", set,
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&listed.stdout);
        let Some(start) = text.find("elements = {") else {
            continue;
        };
        let body = &text[start + "elements = {".len()..];
        let body = &body[..body.find('}').unwrap_or(body.len())];
        out.extend(
            body.split(',')
                .map(|e| e.trim().trim_matches('"').to_string())
                .filter(|e| !e.is_empty()),
        );
    }
    out
}

/// How many of the link's keys (its addresses with port 51820, its
/// interface) are in the `locked_` sets.
pub fn keys_locked(ns: &Netns, l: &LinkTarget) -> usize {
    let have = locked_keys(ns);
    let mut want: Vec<String> = l.addrs4.iter().map(|a| format!("{a} . 51820")).collect();
    want.extend(l.addrs6.iter().map(|a| format!("{a} . 51820")));
    want.push(l.wg_if.clone());
    want.iter().filter(|w| have.contains(w)).count()
}

/// The rules of `chain` as nft lists them, without qkdpfd's own tag and
/// drop rules (`comment "qkdpfd ..."`).
pub fn rules(ns: &Netns, chain: &str) -> Vec<String> {
    all_rules(ns, chain)
        .into_iter()
        .filter(|l| !l.contains("comment \"qkdpfd "))
        .collect()
}

/// [`rules`] with each counter's figures left out: what was loaded,
/// whatever traffic has met it since.
pub fn rules_uncounted(ns: &Netns, chain: &str) -> Vec<String> {
    (rules(ns, chain).into_iter())
        .map(|r| {
            let mut words = r.split(' ').peekable();
            let mut out = Vec::new();
            while let Some(w) = words.next() {
                out.push(w);
                if w == "counter" && words.peek() == Some(&"packets") {
                    // "packets N bytes M"
                    words.nth(3);
                }
            }
            out.join(" ")
        })
        .collect()
}

/// The rules of `chain`, one per line, as nft lists them.
pub fn all_rules(ns: &Netns, chain: &str) -> Vec<String> {
    nft_listing::rules(&ns.nft(&format!("list chain inet qkdpfd {chain}")))
}

pub fn ping(ns: &Netns, addr: &str) -> bool {
    Command::new("ip")
        .args([
            "netns", "exec", &ns.name, "ping", "-c", "1", "-W", "1", "-q", addr,
        ])
        .output()
        .unwrap()
        .status
        .success()
}

/// A far end for the rig: a namespace joined to the rig's by a veth pair,
/// `here` and `there` (CIDR) on its two ends. Returns the far namespace
/// and the name of the rig's end.
pub fn far_end(r: &Rig, here: &str, there: &str) -> (Netns, String) {
    let far = Netns::new();
    let (a, b) = (
        format!("qa{}", &r.ns.name[6..]),
        format!("qb{}", &far.name[6..]),
    );
    sh(&[
        "ip", "link", "add", &a, "netns", &r.ns.name, "type", "veth", "peer", "name", &b, "netns",
        &far.name,
    ]);
    r.ns.exec(&["ip", "addr", "add", here, "dev", &a]);
    r.ns.exec(&["ip", "link", "set", &a, "up"]);
    far.exec(&["ip", "addr", "add", there, "dev", &b]);
    far.exec(&["ip", "link", "set", &b, "up"]);
    (far, a)
}

/// The skeleton for `dr` alone, the link open on `accept` and the lockdown
/// `counter drop` preloaded: where a netlink flip is the next step.
pub fn open_and_staged(r: &mut Rig, dr: &LinkTarget) {
    open_and_staged_with(r, dr, None);
}

/// [`open_and_staged`], the dead-man switch armed for `switch` first when
/// given (the generation checks of the read-backs then run).
pub fn open_and_staged_with(r: &mut Rig, dr: &LinkTarget, switch: Option<std::time::Duration>) {
    r.fw.init(std::slice::from_ref(dr)).unwrap();
    if switch.is_some() {
        r.fw.keep_alive(switch).unwrap();
    }
    r.fw.apply(dr, Enforcement::Open, "accept").unwrap();
    r.fw.stage(dr, Enforcement::Lockdown, "counter drop")
        .unwrap();
    assert!(r.fw.settle().is_empty());
}
