//! The Linux sandbox on this kernel (issue 4 item 2), on a real daemon in a
//! gateway namespace (tests/common/gateway.rs): the engine runs as the
//! configured user with no_new_privs and a seccomp filter, its landlock
//! ruleset and seccomp filter refuse files, exec and other TCP ports, and
//! the parent's landlock ruleset refuses files outside its list.
//!
//! Needs root (skipped loudly without it, fails under CI=true). The probe
//! test needs `--features sandbox-probe` (`make test` builds with it).

mod common;

use common::gateway::Gateway;
use common::procfs::{engine_pid, status_field};
use std::fs;
use std::time::{Duration, Instant};

/// Waits until the daemon's log has a line containing `what`; returns it.
fn log_line(gw: &Gateway, what: &str) -> String {
    let t = Instant::now();
    loop {
        if let Some(l) = gw.log().lines().find(|l| l.contains(what)) {
            return l.to_string();
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no {what:?} in the log:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn engine_runs_as_nobody_with_no_new_privs_and_seccomp() {
    let Some(mut gw) = Gateway::new("qks1", "200ms", "") else {
        return;
    };
    gw.start();
    let parent = gw.daemon.as_ref().unwrap().id();
    let engine = engine_pid(parent);
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let (uid, gid) = (nobody.uid.as_raw(), nobody.gid.as_raw());
    assert_eq!(
        status_field(engine, "Uid"),
        format!("{uid}\t{uid}\t{uid}\t{uid}")
    );
    assert_eq!(
        status_field(engine, "Gid"),
        format!("{gid}\t{gid}\t{gid}\t{gid}")
    );
    assert_eq!(status_field(engine, "Groups"), gid.to_string());
    assert_eq!(status_field(engine, "NoNewPrivs"), "1");
    assert_eq!(status_field(engine, "Seccomp"), "2");
    // The parent: landlock needs no_new_privs; no seccomp.
    assert_eq!(status_field(parent, "NoNewPrivs"), "1");
    assert_eq!(status_field(parent, "Seccomp"), "0");
    // What the kernel enforced, as logged (this kernel has landlock >= 4).
    let e = log_line(&gw, "event=sandbox process=engine");
    for want in [
        "landlock=fully-enforced",
        "tcp_connect=none",
        "seccomp=allow-list:",
        "seccomp_default=EPERM",
        // OpenBSD's promises, emulated (src/sandbox/linux/pledge.rs): the
        // whole test, policy load included, runs under them.
        "pledge_emulation=stdio,inet,sendfd",
    ] {
        assert!(e.contains(want), "{want} not in {e}");
    }
    let p = log_line(&gw, "event=sandbox process=parent");
    assert!(p.contains("landlock=fully-enforced"), "{p}");
    // Still a working daemon: a bundle loads and the link opens.
    let policy = common::gateway::policy(1, true, "");
    let b = gw.bundle(
        "b1",
        &policy,
        common::gateway::OPEN_NFT,
        common::gateway::LOCKDOWN_NFT,
    );
    gw.ctl_ok(&["policy", "load", b.to_str().unwrap()]);
    gw.wait_state("open", Duration::from_secs(10));
}

#[test]
fn engine_probe_open_exec_and_connect_refused() {
    if !cfg!(feature = "sandbox-probe") {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true: build the tests with --features sandbox-probe (make test does)");
        }
        eprintln!("SKIP: the probe needs --features sandbox-probe");
        return;
    }
    let Some(mut gw) = Gateway::new("qks2", "200ms", "") else {
        return;
    };
    gw.start();
    let line = log_line(&gw, "event=sandbox_probe process=engine");
    // landlock alone (before seccomp): no file, no TCP port outside the list.
    assert!(line.contains("landlock_open=EACCES"), "{line}");
    assert!(line.contains("landlock_connect=EACCES"), "{line}");
    // With seccomp on top: openat and execve never reach the kernel.
    assert!(line.contains(" open=EPERM"), "{line}");
    assert!(line.contains(" exec=EPERM"), "{line}");
    // Threads still start (clone3 gets ENOSYS, glibc falls back to clone).
    assert!(line.contains(" thread=ok"), "{line}");
    // The engine lives on after the refusals.
    assert!(gw.ctl(&["status"]).status.success());
}

#[test]
fn parent_reload_cannot_read_outside_its_paths() {
    let Some(mut gw) = Gateway::new("qks3", "200ms", "") else {
        return;
    };
    gw.start();
    // The same public key, in a directory the config did not name at start.
    let elsewhere = tempfile::tempdir().unwrap();
    let key = elsewhere.path().join("key.pub");
    fs::copy(&gw.keys.pubkey, &key).unwrap();
    let good = fs::read_to_string(&gw.conf).unwrap();
    let moved = good.replace(
        &gw.keys.pubkey.display().to_string(),
        &key.display().to_string(),
    );
    assert_ne!(good, moved);
    fs::write(&gw.conf, &moved).unwrap();
    let o = gw.ctl(&["reload"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "reload read {}", key.display());
    assert!(err.contains("Permission denied"), "{err}");
    // The old config stays; the original paths still reload.
    fs::write(&gw.conf, &good).unwrap();
    gw.ctl_ok(&["reload"]);
}
