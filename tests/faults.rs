//! Rows of the fault matrix (FAULTS.md) that had no test: a read-only state
//! directory, a SIGHUP storm, a parent panic, an engine config too large
//! for the fd-3 channel, and a far end that moves while its link, on an
//! interface another link shares, is locked. Two gateway namespaces, a
//! wireguard-go tunnel and real nftables (tests/common/gateway.rs); every
//! test ends on packets across the tunnel or on the kernel read back with
//! `nft -j`, never only on qkdpfd's own word.
#![cfg(target_os = "linux")]

mod common;

use common::gateway::{Gateway, LOCKDOWN_NFT, OPEN_NFT, policy, unix_now};
use common::pair::has_reason;
use common::procfs;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

/// The verdicts of chain `chain` of gateway A's `inet qkdpfd`, in order, as
/// `nft -j` lists them: ("accept" | "drop" | "jump x" | ..., the
/// rule's comment).
fn verdicts(gw: &Gateway, chain: &str) -> Vec<(String, String)> {
    let out = gw.nft(&["-j", "list", "chain", "inet", "qkdpfd", chain]);
    let v: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("nft -j list chain {chain}: {e}: {out:?}"));
    let mut found = Vec::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        let Some(rule) = item.get("rule") else {
            continue;
        };
        let comment = rule["comment"].as_str().unwrap_or_default().to_string();
        for e in rule["expr"].as_array().into_iter().flatten() {
            let verdict = if e.get("drop").is_some() {
                "drop".to_string()
            } else if e.get("accept").is_some() {
                "accept".to_string()
            } else if let Some(t) = e.get("goto").or_else(|| e.get("jump")) {
                let kind = if e.get("goto").is_some() {
                    "goto"
                } else {
                    "jump"
                };
                format!("{kind} {}", t["target"].as_str().unwrap_or("?"))
            } else {
                continue;
            };
            found.push((verdict, comment.clone()));
        }
    }
    found
}

/// The kernel holds `link` locked: its chain starts with qkdpfd's own
/// drop, or switches into its lockdown chain, which drops.
fn locked_in_kernel(gw: &Gateway, link: &str) -> bool {
    gw.link_locked(link)
}

/// `show link LINK -j` of the running daemon.
fn show(gw: &Gateway, link: &str) -> serde_json::Value {
    let out = gw.ctl_ok(&["-j", "show", "link", link]);
    serde_json::from_str(&out).unwrap_or_default()
}

/// Waits until the daemon's log holds `n` lines with `what`.
fn wait_log(gw: &Gateway, what: &str, n: usize, limit: Duration) {
    let t = Instant::now();
    while gw.log().matches(what).count() < n {
        assert!(
            t.elapsed() < limit,
            "{n} x {what:?} not logged within {limit:?}:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let t = Instant::now();
    while !done() {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn parent_pid(gw: &Gateway) -> u32 {
    gw.daemon.as_ref().expect("daemon started").id()
}

/// Alive and not a zombie.
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s[s.rfind(')').unwrap_or(0)..].starts_with(") Z"))
}

fn signal(pid: u32, sig: Signal) {
    kill(Pid::from_raw(pid as i32), sig).unwrap();
}

/// The daemon's exit, waited for at most `limit`.
fn wait_exit(gw: &mut Gateway, limit: Duration) -> ExitStatus {
    let t = Instant::now();
    loop {
        let c = gw.daemon.as_mut().expect("daemon started");
        if let Some(st) = c.try_wait().unwrap() {
            gw.daemon = None;
            return st;
        }
        assert!(
            t.elapsed() < limit,
            "daemon still running {limit:?} later:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A small tmpfs on `dir` for the test's lifetime, mounted before the
/// daemon starts (its mount namespace, made by `ip netns exec`, copies the
/// mount then; a remount changes the file system's superblock, which both
/// namespaces share).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Tmpfs {
        fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs"])
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs on {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }

    fn remount(&self, mode: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(&self.0)
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount {mode} {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// An open link, a bundle active: gateway A with qkdpfd running.
fn open_gateway(prefix: &str, conf_extra: &str) -> Option<Gateway> {
    let mut gw = Gateway::new(prefix, "200ms", conf_extra)?;
    gw.start_open();
    assert_eq!(gw.pings(3), 3, "open link passes traffic");
    Some(gw)
}

/// The state directory read-only (not full: EROFS). A QBER trip and an
/// operator lockdown are still applied and read back locked, the failed
/// writes are logged, and once the directory is writable again the next
/// change reaches the disk and is what a restart finds.
#[test]
fn a_read_only_state_directory_still_locks_and_the_next_change_persists() {
    let Some(mut gw) = Gateway::new("qft1", "200ms", "") else {
        return;
    };
    let dir = gw.path("state");
    let tmpfs = Tmpfs::mount(&dir);
    gw.start_open();
    assert_eq!(gw.pings(3), 3);
    let file = dir.join("state");
    let written = common::durable_state(&file);

    tmpfs.remount("ro");
    let probe = fs::write(dir.join("probe"), "x").unwrap_err();
    assert_eq!(probe.raw_os_error(), Some(libc::EROFS), "{probe}");

    // A QBER trip under it (an engine reason, persisted).
    gw.ctl_ok(&["sim", "eve", "dr", "1"]);
    gw.wait_state("lockdown", Duration::from_secs(5));
    assert!(
        locked_in_kernel(&gw, "dr"),
        "{:?}",
        verdicts(&gw, "link_dr")
    );
    let trip_pings = gw.pings(3);
    assert_eq!(trip_pings, 0, "QBER lockdown on a read-only state dir");
    wait_log(&gw, "event=state_write_failed", 1, Duration::from_secs(3));
    // It recovers (an unlock under a read-only directory leaves the file
    // with the older, stricter record: fail closed).
    gw.ctl_ok(&["sim", "eve", "dr", "0"]);
    gw.wait_state("open", Duration::from_secs(10));
    assert_eq!(gw.pings(3), 3);

    // The operator's lockdown: applied, read back, logged as not persisted
    // and answered so (a restart would not keep it).
    let failed = gw.log().matches("event=state_write_failed").count();
    let o = gw.ctl(&["lockdown", "dr"]);
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{said}");
    assert!(
        said.contains("locked in the kernel, but the state file could not record"),
        "{said}"
    );
    gw.wait_state("lockdown", Duration::from_secs(3));
    let chain = verdicts(&gw, "lock_dr");
    assert_eq!(
        chain.last().map(|(v, c)| (v.as_str(), c.as_str())),
        Some(("drop", "qkdpfd drop")),
        "{chain:?}"
    );
    assert!(locked_in_kernel(&gw, "dr"));
    let operator_pings = gw.pings(3);
    assert_eq!(
        operator_pings, 0,
        "operator lockdown on a read-only state dir"
    );
    wait_log(
        &gw,
        "event=state_write_failed",
        failed + 1,
        Duration::from_secs(3),
    );
    let log = gw.log();
    assert!(log.contains("Read-only file system"), "{log}");
    assert_eq!(
        common::durable_state(&file),
        written,
        "nothing reached the read-only directory"
    );
    let failures = log.matches("event=state_write_failed").count();

    // Writable again: the next changes reach the disk.
    tmpfs.remount("rw");
    gw.ctl_ok(&["unlock", "dr"]);
    gw.wait_state("open", Duration::from_secs(3));
    gw.ctl_ok(&["lockdown", "dr"]);
    gw.wait_state("lockdown", Duration::from_secs(3));
    let st = common::durable_state(&file);
    assert!(st.contains("operator"), "{st}");
    assert_eq!(
        gw.log().matches("event=state_write_failed").count(),
        failures,
        "{}",
        gw.log()
    );
    // And a restart finds it: locked by the operator, in the kernel.
    gw.stop();
    gw.start();
    std::thread::sleep(Duration::from_secs(2));
    let s = show(&gw, "dr");
    assert_eq!(s["enforcement"], "lockdown", "{s}");
    assert!(has_reason(&s, "operator"), "{s}");
    assert!(
        locked_in_kernel(&gw, "dr"),
        "{:?}",
        verdicts(&gw, "link_dr")
    );
    let restart_pings = gw.pings(3);
    assert_eq!(restart_pings, 0);
    eprintln!(
        "read-only state dir: {failures} state_write_failed; pings under the QBER trip \
         {trip_pings}/3, under the operator lockdown {operator_pings}/3, after the restart \
         {restart_pings}/3"
    );
}

/// Sends `n` SIGHUPs to `pid`, `gap` apart.
fn sighup_storm(pid: u32, n: usize, gap: Duration) {
    for _ in 0..n {
        signal(pid, Signal::SIGHUP);
        std::thread::sleep(gap);
    }
}

/// Waits until the count of `event=reload ` lines stops moving; returns it.
fn reloads_settled(gw: &Gateway) -> usize {
    let count = || gw.log().matches("event=reload ").count();
    let t = Instant::now();
    let mut last = count();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = count();
        if now == last {
            return now;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "reloads never settle"
        );
        last = now;
    }
}

/// 200 SIGHUPs 1 ms apart, with the link open on fresh QBER, then with it
/// locked by a QBER trip: the same parent and engine survive, reloads are
/// logged, memory stays put, the open link passes traffic afterwards and
/// the locked one passes none.
#[test]
fn a_sighup_storm_changes_no_link() {
    let Some(gw) = open_gateway("qft2", "") else {
        return;
    };
    let parent = parent_pid(&gw);
    let engine = procfs::engine_pid(parent);
    // Let start-up allocations settle before the first reading.
    std::thread::sleep(Duration::from_secs(1));
    let rss0 = procfs::status_kib(parent, "VmRSS");
    let erss0 = procfs::status_kib(engine, "VmRSS");
    let base = gw.log().matches("event=reload ").count();

    let t = Instant::now();
    sighup_storm(parent, 200, Duration::from_millis(1));
    let sent = t.elapsed();
    let open_reloads = reloads_settled(&gw) - base;
    assert!(alive(parent), "parent died in the storm:\n{}", gw.log());
    assert_eq!(procfs::engine_pid(parent), engine, "engine replaced");
    let rss1 = procfs::status_kib(parent, "VmRSS");
    let s = show(&gw, "dr");
    assert_eq!(s["enforcement"], "open", "{s}");
    assert!(!has_reason(&s, "source-lost"), "{s}");
    assert!(!locked_in_kernel(&gw, "dr"));
    assert!(verdicts(&gw, "link_dr").iter().any(|(v, _)| v == "accept"));
    let open_pings = gw.pings(5);
    assert_eq!(open_pings, 5, "open link after the storm");

    // Locked by a QBER trip, then the same storm.
    gw.ctl_ok(&["sim", "eve", "dr", "1"]);
    gw.wait_state("lockdown", Duration::from_secs(5));
    let base = gw.log().matches("event=reload ").count();
    sighup_storm(parent, 200, Duration::from_millis(1));
    let locked_reloads = reloads_settled(&gw) - base;
    assert!(alive(parent), "parent died in the storm:\n{}", gw.log());
    assert_eq!(procfs::engine_pid(parent), engine, "engine replaced");
    let s = show(&gw, "dr");
    assert_eq!(s["enforcement"], "lockdown", "{s}");
    assert!(has_reason(&s, "qber"), "{s}");
    assert!(
        locked_in_kernel(&gw, "dr"),
        "{:?}",
        verdicts(&gw, "link_dr")
    );
    let locked_pings = gw.pings(5);
    assert_eq!(locked_pings, 0, "locked link after the storm");
    let rss2 = procfs::status_kib(parent, "VmRSS");
    let erss2 = procfs::status_kib(engine, "VmRSS");

    let log = gw.log();
    for bad in [
        "event=engine_lost",
        "event=reload_failed",
        "reason=source-lost",
        "panicked",
    ] {
        assert!(!log.contains(bad), "{bad}:\n{log}");
    }
    eprintln!(
        "SIGHUP storm: 2 x 200 signals ({sent:?} to send the first 200); reloads logged: \
         {open_reloads} (open), {locked_reloads} (locked); parent VmRSS {rss0} -> {rss1} -> \
         {rss2} KiB, engine {erss0} -> {erss2} KiB; pings {open_pings}/5 open, {locked_pings}/5 \
         locked"
    );
    assert!(open_reloads >= 1 && locked_reloads >= 1);
    assert!(open_reloads <= 200 && locked_reloads <= 200);
    // Generous: 400 reloads may not cost the parent or the engine 16 MiB.
    assert!(rss2 < rss0 + 16 * 1024, "parent {rss0} -> {rss2} KiB");
    assert!(erss2 < erss0 + 16 * 1024, "engine {erss0} -> {erss2} KiB");
}

/// A parent that panics with links open (`[testing] panic_on_reload`
/// makes the running parent panic in its loop): the panic hook replaces
/// every link's chain by qkdpfd's drop before the process goes. The
/// dead-man switch would drop the links a few seconds later anyway, but it
/// never touches the link chains: the drop read back there is the hook's.
#[test]
fn a_parent_panic_locks_every_link_before_it_goes() {
    let Some(mut gw) = Gateway::new("qft3", "200ms", "") else {
        return;
    };
    // A second link, so that "every link" means more than one.
    let base = fs::read_to_string(&gw.conf).unwrap();
    fs::write(
        &gw.conf,
        format!(
            "{base}\n[link.dr2]\nqber = \"sim\"\nqber_id = \"t2\"\nwg_interface = \"qft3-wa\"\n\
             wg_port = 51821\naddresses = [\"192.0.2.3\"]\n"
        ),
    )
    .unwrap();
    gw.start_open();
    wait_for("dr2 open", Duration::from_secs(10), || {
        show(&gw, "dr2")["enforcement"] == "open"
    });
    for link in ["dr", "dr2"] {
        let chain = verdicts(&gw, &format!("link_{link}"));
        assert!(
            chain.iter().any(|(v, _)| v == "accept"),
            "{link}: {chain:?}"
        );
        assert!(!locked_in_kernel(&gw, link), "{link}: {chain:?}");
    }
    assert_eq!(gw.pings(3), 3, "open link passes traffic");
    let parent = parent_pid(&gw);
    let engine = procfs::engine_pid(parent);

    let conf = fs::read_to_string(&gw.conf).unwrap();
    fs::write(
        &gw.conf,
        format!("{conf}\n[testing]\npanic_on_reload = true\n"),
    )
    .unwrap();
    let t0 = unix_now();
    signal(parent, Signal::SIGHUP);
    let status = wait_exit(&mut gw, Duration::from_secs(10));
    let took = unix_now() - t0;
    // Read back at once, inside the dead-man switch's 3 s.
    let chains: Vec<_> = ["dr", "dr2"]
        .iter()
        .map(|l| (*l, verdicts(&gw, &format!("link_{l}"))))
        .collect();
    // Every link was first locked by one transaction: set `site`.
    let site = gw.nft(&["list", "set", "inet", "qkdpfd", "site"]);
    let pings = gw.pings(5);
    let log = gw.log();
    eprintln!(
        "parent panic: exit {status} {:.0} ms after the SIGHUP; link chains {chains:?}; \
         {pings}/5 pings",
        took * 1000.0
    );
    assert!(!status.success(), "{status}");
    assert!(
        log.contains("panicked") && log.contains("[testing] panic_on_reload"),
        "{log}"
    );
    for (link, chain) in &chains {
        assert_eq!(
            chain,
            &[("drop".to_string(), "qkdpfd drop".to_string())],
            "link_{link} after the panic"
        );
    }
    assert!(
        site.contains("ipv4") && site.contains("ipv6"),
        "site lock after the panic: {site}"
    );
    assert_eq!(pings, 0, "traffic after the parent panicked");
    wait_for("engine exits", Duration::from_secs(3), || !alive(engine));
}

/// A `[qber.X]` source whose CA bundle the parent reads and hands to the
/// engine (the bulk bytes of the engine's config).
fn qber_section(ca: &Path) -> String {
    format!(
        "\n[qber.big]\ndriver = \"http-json\"\nurl = \"https://192.0.2.2:8443/qber/{{qber_id}}\"\n\
         pointer = \"/links/0/qber\"\nscale = 0.01\nca = \"{}\"\n",
        ca.display()
    )
}

/// A CA bundle of real PEM certificates, over the channel's limit raw
/// (base64 in the frame makes it a third larger still).
fn big_bundle(one: &str) -> String {
    let want = qkdpfd::imsg::MAX_PAYLOAD + (512 << 10);
    let mut s = String::with_capacity(want + one.len());
    while s.len() <= want {
        s.push_str(one);
    }
    s
}

/// An engine config over the fd-3 channel's 8 MiB (a CA bundle of 8.5 MiB
/// for a QBER source): the start is refused with exit 1 naming the size
/// and the limit, the kernel as the boot include left it (every link
/// dropped); on reload the old config is kept, the daemon and its open
/// link go on.
#[test]
fn an_engine_config_over_the_channel_limit_is_refused() {
    let Some(mut gw) = Gateway::new("qft4", "200ms", "") else {
        return;
    };
    let pki = gw.path("pki");
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    qkdpfd::sim::pki::create(&pki, &names(&["a"]), &names(&["SAE-A"]), &[]).unwrap();
    let one = fs::read_to_string(pki.join("ca.pem")).unwrap();
    assert!(one.starts_with("-----BEGIN CERTIFICATE-----"), "{one}");
    let big = big_bundle(&one);
    let ca = gw.path("qber-ca.pem");
    fs::write(&ca, &big).unwrap();
    let base = fs::read_to_string(&gw.conf).unwrap();
    fs::write(&gw.conf, format!("{base}{}", qber_section(&ca))).unwrap();
    let limit = qkdpfd::imsg::MAX_PAYLOAD.to_string();

    // Start: refused, every link as the boot include dropped it.
    gw.load_boot_include();
    assert_eq!(gw.pings(3), 0, "boot include: dropped");
    let t = Instant::now();
    let o = Command::new("timeout")
        .args(["-s", "KILL", "30", "ip", "netns", "exec", "qft4-a"])
        .arg(common::gateway::BIN_QKDPFD)
        .arg("-df")
        .arg(&gw.conf)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    eprintln!(
        "start with a {} byte CA bundle: {} after {:?}:\n{err}",
        big.len(),
        o.status,
        t.elapsed()
    );
    assert_eq!(o.status.code(), Some(1), "{err}");
    // Refused before the firewall is touched, naming the file and the limit.
    assert!(
        err.contains("TLS files sent to the engine")
            && err.contains(&limit)
            && err.contains("[qber.big] ca")
            && err.contains(&ca.display().to_string())
            && !err.contains("panicked"),
        "{err}"
    );
    // `qkdpfd -n` says the same, before any start.
    let n = Command::new(common::gateway::BIN_QKDPFD)
        .arg("-nf")
        .arg(&gw.conf)
        .output()
        .unwrap();
    let n_err = String::from_utf8_lossy(&n.stderr);
    assert_eq!(n.status.code(), Some(1), "{n_err}");
    assert!(n_err.contains("[qber.big] ca"), "{n_err}");
    assert!(
        locked_in_kernel(&gw, "dr"),
        "{:?}",
        verdicts(&gw, "link_dr")
    );
    assert_eq!(gw.pings(3), 0, "still dropped after the refused start");

    // Reload: the same file small at start, 8.5 MiB when the reload reads
    // it (a CA bundle that grew). With the reload comes a clock step that
    // would expire the bundle: the link stays open only if the reload is
    // refused as a whole.
    fs::write(&ca, &one).unwrap();
    gw.start();
    let na = unix_now() as u64 + 1800;
    let p = policy(1, true, "").replace(
        "serial = 1\n",
        &format!(
            "serial = 1\nnot_after = \"{}\"\nexpired_action = \"lockdown\"\n",
            qkdpfd::utc::format_utc(na)
        ),
    );
    let b = gw.bundle("b1", &p, OPEN_NFT, LOCKDOWN_NFT);
    gw.ctl_ok(&["policy", "load", b.to_str().unwrap()]);
    gw.wait_state("open", Duration::from_secs(10));
    assert_eq!(gw.pings(3), 3);
    let parent = parent_pid(&gw);
    let engine = procfs::engine_pid(parent);
    let conf = fs::read_to_string(&gw.conf).unwrap();
    fs::write(
        &gw.conf,
        format!("{conf}\n[testing]\nwall_clock_offset = 3600\n"),
    )
    .unwrap();
    fs::write(&ca, &big).unwrap();
    let o = gw.ctl(&["reload"]);
    let reply = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        !o.status.success(),
        "reload of an oversized config accepted"
    );
    assert!(reply.contains(&limit), "{reply}");
    signal(parent, Signal::SIGHUP);
    wait_log(&gw, "event=reload_failed", 2, Duration::from_secs(3));
    // A few ticks: the expiry check would have locked by now.
    std::thread::sleep(Duration::from_secs(2));
    assert!(alive(parent) && alive(engine), "{}", gw.log());
    assert_eq!(procfs::engine_pid(parent), engine);
    let s = show(&gw, "dr");
    assert_eq!(s["enforcement"], "open", "{s}");
    assert!(
        !locked_in_kernel(&gw, "dr"),
        "{:?}",
        verdicts(&gw, "link_dr")
    );
    let kept = gw.pings(3);
    assert_eq!(kept, 3, "old config kept, link unchanged");
    let log = gw.log();
    for bad in ["event=engine_lost", "panicked", "event=policy_expired"] {
        assert!(!log.contains(bad), "{bad}:\n{log}");
    }
    // The same config with the CA small again is taken, clock step and
    // all: the link locks (what the refused reload would have done).
    fs::write(&ca, &one).unwrap();
    gw.ctl_ok(&["reload"]);
    gw.wait_state("lockdown", Duration::from_secs(4));
    assert!(locked_in_kernel(&gw, "dr"));
    let after = gw.pings(3);
    assert_eq!(after, 0);
    eprintln!(
        "oversized reload: refused ({}), {kept}/3 pings after it; the same config with a \
         small CA: taken, {after}/3 pings (expired bundle)",
        reply.trim()
    );
}

/// Found with the read-only test, fixed since: the operator's lockdown of
/// a link already locked (here by QBER) was never written to the state
/// file (`Links::converge` persisted only when the kernel flipped), so a
/// restart after the QBER recovered reopened a link the operator locked
/// (3 of 3 pings before the fix).
#[test]
fn an_operator_lockdown_of_a_locked_link_survives_a_restart() {
    let Some(mut gw) = open_gateway("qft5", "") else {
        return;
    };
    gw.ctl_ok(&["sim", "eve", "dr", "1"]);
    gw.wait_state("lockdown", Duration::from_secs(5));
    gw.ctl_ok(&["lockdown", "dr"]);
    gw.ctl_ok(&["sim", "eve", "dr", "0"]);
    wait_for(
        "qber clears, operator holds",
        Duration::from_secs(10),
        || {
            let s = show(&gw, "dr");
            has_reason(&s, "operator") && !has_reason(&s, "qber")
        },
    );
    gw.stop();
    gw.start();
    // Fresh QBER (which would reopen the link) well before this.
    std::thread::sleep(Duration::from_secs(4));
    let s = show(&gw, "dr");
    assert_eq!(s["enforcement"], "lockdown", "{s}");
    assert!(has_reason(&s, "operator"), "{s}");
    assert!(
        locked_in_kernel(&gw, "dr"),
        "{:?}",
        verdicts(&gw, "link_dr")
    );
    assert_eq!(gw.pings(3), 0, "the operator's lockdown lost in a restart");
}

/// Found with the read-only test, fixed since: a state write that failed
/// was never tried again (`Links::persist` took the new record into memory
/// before the write, so once the directory was writable it saw nothing to
/// write), and a restart before the next flip reopened the link the
/// operator locked (3 of 3 pings before the fix). Now every tick retries.
#[test]
fn a_lockdown_not_written_to_a_read_only_disk_is_written_once_it_is_writable() {
    let Some(mut gw) = Gateway::new("qft6", "200ms", "") else {
        return;
    };
    let dir = gw.path("state");
    let tmpfs = Tmpfs::mount(&dir);
    gw.start_open();
    tmpfs.remount("ro");
    // Locked, and answered as not yet kept across a restart.
    assert!(!gw.ctl(&["lockdown", "dr"]).status.success());
    gw.wait_state("lockdown", Duration::from_secs(3));
    wait_log(&gw, "event=state_write_failed", 1, Duration::from_secs(3));
    tmpfs.remount("rw");
    let file = dir.join("state");
    wait_for("operator reason on disk", Duration::from_secs(5), || {
        common::durable_state(&file).contains("operator")
    });
    gw.stop();
    gw.start();
    std::thread::sleep(Duration::from_secs(4));
    let s = show(&gw, "dr");
    assert_eq!(s["enforcement"], "lockdown", "{s}");
    assert!(
        locked_in_kernel(&gw, "dr"),
        "{:?}",
        verdicts(&gw, "link_dr")
    );
    assert_eq!(gw.pings(3), 0, "the operator's lockdown lost in a restart");
}

/// Two links on one WireGuard interface: `aa` (a far end that does not
/// exist) and `dr`, the tunnel's. Locked, `dr` once held only its far
/// end's address: `aa`, first in name order, judges the interface's
/// inner traffic, and it was open. The far end moves to another port, as
/// behind a NAT that rebinds (WireGuard follows an authenticated packet to
/// its new source, as for a roaming uplink): its pings passed while qkdpfd
/// and the kernel read `dr` back locked (5 of 5 before the fix). Now `aa`
/// is locked with it (reason `interface`), and the interface's traffic
/// stops whatever address or port the far end sends from.
#[test]
fn a_far_end_that_moves_finds_its_locked_link_locked() {
    let Some(mut gw) = Gateway::new("qft7", "200ms", "") else {
        return;
    };
    let p = gw.prefix.clone();
    let base = fs::read_to_string(&gw.conf).unwrap();
    fs::write(
        &gw.conf,
        format!(
            "{base}\n[link.aa]\nqber = \"sim\"\nqber_id = \"t2\"\nwg_interface = \"{p}-wa\"\n\
             wg_port = 51821\naddresses = [\"192.0.2.9\"]\n"
        ),
    )
    .unwrap();
    gw.start_open();
    wait_for("aa open", Duration::from_secs(10), || {
        show(&gw, "aa")["enforcement"] == "open"
    });
    assert_eq!(gw.pings(3), 3, "open links pass traffic");

    gw.ctl_ok(&["lockdown", "dr"]);
    let aa = show(&gw, "aa");
    assert_eq!(aa["enforcement"], "lockdown", "{aa}");
    assert!(has_reason(&aa, "interface"), "{aa}");
    assert!(
        locked_in_kernel(&gw, "aa"),
        "{:?}",
        verdicts(&gw, "link_aa")
    );
    assert_eq!(gw.pings(3), 0, "traffic of a locked link");

    // B's WireGuard moves to port 51830, as a NAT that rebinds does.
    let o = Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("{p}-b"),
            "wg",
            "set",
            &format!("{p}-wb"),
        ])
        .args(["listen-port", "51830"])
        .output()
        .unwrap();
    assert!(o.status.success(), "wg set listen-port: {o:?}");
    let pings = gw.pings(5);
    let log = gw.log();
    assert!(
        log.contains("event=lockdown link=aa reason=interface"),
        "{log}"
    );
    assert_eq!(pings, 0, "a locked link's far end from a new port");

    // The hold ends with the lockdown that made it: both open again, the
    // far end reached at its new port.
    gw.ctl_ok(&["unlock", "dr"]);
    wait_for("both open", Duration::from_secs(10), || {
        ["aa", "dr"]
            .iter()
            .all(|l| show(&gw, l)["enforcement"] == "open")
    });
    assert!(!has_reason(&show(&gw, "aa"), "interface"));
    assert!(gw.pings(5) >= 3, "open again");
}
