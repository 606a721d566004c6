//! The command lines that need no daemon: `qkdpfd -n` and `qkdctl policy
//! verify`, with real signify-openbsd bundles.

mod common;

use common::bundle::{TestKeys, sample_bundle};
use std::process::Command;

const QKDPFD: &str = env!("CARGO_BIN_EXE_qkdpfd");
const QKDCTL: &str = env!("CARGO_BIN_EXE_qkdctl");

fn config(dir: &std::path::Path, pubkey: &std::path::Path) -> std::path::PathBuf {
    let d = dir.display();
    let text = format!(
        "[daemon]\nuser = \"nobody\"\nstate_dir = \"{d}/state\"\nsocket = \"{d}/sock\"\n\
         [policy]\npubkeys = [\"{}\"]\ndir = \"{d}/state/policy\"\n\
         [firewall]\nbackend = \"nftables\"\n\
         [qber.s]\ndriver = \"sim\"\n\
         [link.dr]\nqber = \"s\"\nqber_id = \"x\"\nwg_interface = \"wg0\"\nwg_port = 51820\n\
         addresses = [\"192.0.2.2\"]\n",
        pubkey.display()
    );
    let p = dir.join("qkdpfd.conf");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn check_mode_reports_every_error_with_position() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("bad.conf");
    std::fs::write(&p, "[daemon]\non_stop = \"maybe\"\ncolour = 1\n").unwrap();
    let o = Command::new(QKDPFD)
        .args(["-n", "-f"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    let file = p.display().to_string();
    assert!(err.contains(&format!("{file}:2:11: on_stop")), "{err}");
    assert!(
        err.contains(&format!("{file}:3:1: unknown key \"colour\"")),
        "{err}"
    );
    let o = Command::new(QKDPFD).arg("-x").output().unwrap();
    assert_eq!(o.status.code(), Some(2), "usage error");
}

#[test]
fn check_mode_accepts_shipped_demo_config_and_prints_normalised() {
    let conf = concat!(env!("CARGO_MANIFEST_DIR"), "/etc/qkdpfd-sim.conf");
    let parsed = qkdpfd::conf::load(std::path::Path::new(conf)).unwrap();
    assert_eq!(parsed.link["dr"].wg_interface, "qkdemo-wa");
    let t = tempfile::tempdir().unwrap();
    let keys = TestKeys::signify();
    let Some(keys) = keys else { return };
    let p = config(t.path(), &keys.pubkey);
    let o = Command::new(QKDPFD)
        .args(["-nv", "-f"])
        .arg(&p)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("configuration OK"), "{out}");
    assert!(
        out.contains("[link.dr]") && out.contains("on_stop = \"keep\""),
        "normalised: {out}"
    );
    // Run as root, -n checks the engine's user as the start does.
    if nix::unistd::geteuid().is_root() {
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, text.replace("\"nobody\"", "\"qkd_no_such_user\"")).unwrap();
        let o = Command::new(QKDPFD)
            .args(["-n", "-f"])
            .arg(&p)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains("unknown user qkd_no_such_user"), "{err}");
    }
}

#[test]
fn policy_verify_needs_no_daemon() {
    let Some(keys) = TestKeys::signify() else {
        return;
    };
    let (_t, dir) = sample_bundle(&keys);
    let o = Command::new(QKDCTL)
        .args(["-s", "/nonexistent.sock", "policy", "verify", "-p"])
        .arg(&keys.pubkey)
        .arg(&dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "OK serial=42\n");

    // Tampered: the failing check is named, exit 1.
    std::fs::write(dir.join("anchors/open.nft"), "accept # changed\n").unwrap();
    let o = Command::new(QKDCTL)
        .args(["policy", "verify", "-p"])
        .arg(&keys.pubkey)
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("digest") && err.contains("anchors/open.nft"),
        "{err}"
    );
}

#[test]
fn policy_verify_with_config_checks_rulesets_with_nft() {
    if !common::bundle::require_tool("nft") {
        return;
    }
    let Some(keys) = TestKeys::signify() else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let conf = config(t.path(), &keys.pubkey);
    let (_b, dir) = common::bundle::signed_bundle(
        &keys,
        &[
            ("policy.toml", &common::bundle::policy_with_serial(3)),
            (
                "anchors/open.nft",
                "ip saddr $peer4 udp sport $wg_port accept\n",
            ),
            ("anchors/lockdown.nft", "counter drop\n"),
        ],
    );
    let o = Command::new(QKDCTL)
        .arg("-f")
        .arg(&conf)
        .args(["-j", "policy", "verify"])
        .arg(&dir)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("\"serial\": 3") && out.contains("\"dr\""),
        "{out}"
    );
    let (_b, bad) = common::bundle::signed_bundle(
        &keys,
        &[
            ("policy.toml", &common::bundle::policy_with_serial(3)),
            ("anchors/open.nft", "ip saddr $peer4 frobnicate accept\n"),
            ("anchors/lockdown.nft", "counter drop\n"),
        ],
    );
    let o = Command::new(QKDCTL)
        .arg("-f")
        .arg(&conf)
        .args(["-j", "policy", "verify"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("\"reason\": \"ruleset-check\""), "{out}");
}
