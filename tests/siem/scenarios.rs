//! The scenarios of tests/siem.rs, each provoked as the daemon tests do
//! (tests/daemon.rs, tests/keys.rs): names and files are the contract with
//! the rules (contrib/siem/).

use super::common::bundle::{make_bundle, sign};
use super::common::flood::in_netns;
use super::common::gateway::{BIN_QKDCTL, LOCKDOWN_NFT, OPEN_NFT, policy};
use super::common::pair::{A, B};
use super::common::siem::{Mark, want};
use super::{BANDS, CLEAN, SERIAL, Siem, play};
use std::time::{Duration, Instant};

/// Forged datagrams come from these addresses, added to A's side of the
/// fibre: more sources than the log's burst of 20 lines.
const FORGERS: std::ops::RangeInclusive<u8> = 11..=40;
/// Datagrams per source in the first wave: a minute later each source's
/// line says `suppressed=19` (the rules' burst is 10 or more).
const PER_SOURCE: usize = 20;

/// `clean` on A for [`CLEAN`]; meanwhile `peer_auth_flood` on B.
pub fn clean_and_flood(s: &mut Siem, failures: &mut Vec<String>) {
    let (from, started) = s.begin(A);
    if super::chosen("peer_auth_flood") {
        play(failures, "peer_auth_flood", || peer_auth_flood(s));
        play(failures, "syslog_restart", || syslog_restart(s));
    }
    if !super::chosen("clean") {
        return;
    }
    if let Some(rest) = CLEAN.checked_sub(started.elapsed()) {
        std::thread::sleep(rest);
    }
    play(failures, "clean", || {
        let objects = s.finish(
            A,
            "clean",
            &from,
            started,
            &[want("key_rotated", &[("link", "dr")])],
        );
        let incidents: Vec<_> = objects
            .iter()
            .filter(|o| {
                ["emerg", "alert", "crit", "err", "warning"]
                    .contains(&o["severity"].as_str().unwrap())
            })
            .collect();
        assert!(incidents.is_empty(), "clean: incidents: {incidents:?}");
        let rotations = objects
            .iter()
            .filter(|o| o["event"] == "key_rotated")
            .count();
        assert!(
            rotations as u64 >= CLEAN.as_secs() / 10,
            "clean: {rotations} rotations"
        );
    });
}

/// Sends `rounds` garbage datagrams from each of `sources` (the last
/// octet of an address on A's side) to B's peering port, one per source
/// in turn, a round every 20 ms (B's socket buffer is not the test).
fn forge(s: &Siem, sources: Vec<u8>, rounds: usize) {
    in_netns(&s.pair.ns(A), move || {
        let socks: Vec<_> = sources
            .iter()
            .map(|i| std::net::UdpSocket::bind(format!("192.0.2.{i}:0")).unwrap())
            .collect();
        for _ in 0..rounds {
            for sock in &socks {
                sock.send_to(b"not a qkdpfd datagram", "192.0.2.2:8071")
                    .unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .join()
    .unwrap();
}

/// A burst from 30 sources: the first line per source, past the burst a
/// `from=*` line with the count; a minute later one more datagram per
/// source brings each its own `suppressed=N`.
fn peer_auth_flood(s: &mut Siem) {
    let veth = format!("{}-va", s.pair.prefix);
    for i in FORGERS {
        s.pair.ns_must(
            A,
            &[
                "ip",
                "addr",
                "add",
                &format!("192.0.2.{i}/24"),
                "dev",
                &veth,
            ],
        );
    }
    let (from, started) = s.begin(B);
    forge(s, FORGERS.collect(), PER_SOURCE);
    s.logs[B].wait_for(
        &from,
        &want(
            "peer_auth_failed",
            &[("from", "192.0.2.11"), ("proc", "engine")],
        ),
        Duration::from_secs(10),
    );
    // The flood stops. Once its minute is over, each of the three says how
    // many of its datagrams went unlogged, with no datagram to carry it.
    let counted = |o: &serde_json::Value| {
        o["event"] == "peer_auth_failed"
            && ["192.0.2.11", "192.0.2.12", "192.0.2.13"]
                .contains(&o["from"].as_str().unwrap_or(""))
            && o["suppressed"].as_str().and_then(|n| n.parse::<u64>().ok()) > Some(0)
    };
    let t = Instant::now();
    while s.logs[B].since(&from).iter().filter(|o| counted(o)).count() < 3 {
        assert!(
            t.elapsed() < Duration::from_secs(75),
            "no suppressed=N a minute later"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let objects = s.finish(
        B,
        "peer_auth_flood",
        &from,
        started,
        &[
            want(
                "peer_auth_failed",
                &[
                    ("from", "192.0.2.11"),
                    ("reason", "bad-magic"),
                    ("proc", "engine"),
                ],
            ),
            // Past the burst of lines: the sources not told one by one.
            want("peer_auth_failed", &[("from", "*"), ("proc", "engine")]),
        ],
    );
    let first = objects
        .iter()
        .filter(|o| o["event"] == "peer_auth_failed" && o["from"] == "192.0.2.12")
        .count();
    assert_eq!(first, 2, "one line a minute per source, then the count");
    assert!(
        objects
            .iter()
            .any(|o| o["from"] == "*" && o["suppressed"].is_string())
    );
    assert_eq!(s.show(B)["enforcement"], "open");
}

/// B's rsyslogd is killed and started again (log rotation, an upgrade):
/// B's parent must reconnect to `/dev/log` from inside its sandbox, so
/// its next lines arrive. No scenario file: a check of the path.
fn syslog_restart(s: &mut Siem) {
    s.logs[B].restart();
    let from = s.logs[B].mark();
    let rotated = want("key_rotated", &[("link", "dr"), ("proc", "engine")]);
    s.logs[B].wait_for(&from, &rotated, Duration::from_secs(15));
    s.pair.ctl_ok(B, &["sim", "eve", "dr", "0"]);
    let parent = want("sim_control", &[("link", "dr"), ("eve", "0")]);
    s.logs[B].wait_for(&from, &parent, Duration::from_secs(5));
}

/// A read-only member and a uid outside the group try `lockdown dr`.
pub fn ctl_denied(s: &mut Siem) {
    let (from, started) = s.begin(A);
    let sock = s.pair.path(A, "qkdpfd.sock");
    // 65534:65534 is nobody in nogroup (socket_group); 4242 reaches the
    // socket only through a supplementary group, which the daemon does
    // not count.
    for ids in [
        ["--reuid=65534", "--regid=65534", "--clear-groups"],
        ["--reuid=4242", "--regid=4242", "--groups=65534"],
    ] {
        let o = std::process::Command::new("setpriv")
            .args(ids)
            .arg(BIN_QKDCTL)
            .arg("-s")
            .arg(&sock)
            .args(["lockdown", "dr"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{ids:?}: {o:?}");
        // A stranger is answered and dropped before its request is read:
        // qkdctl may then fail to send it (EPIPE) before it reads the
        // denial. The log line is what this scenario is about.
        let err = String::from_utf8_lossy(&o.stderr);
        let member = ids[0] == "--reuid=65534";
        assert!(
            err.contains("denied") || (!member && err.contains("Broken pipe")),
            "{o:?}"
        );
    }
    s.finish(
        A,
        "ctl_denied",
        &from,
        started,
        &[
            want(
                "ctl_denied",
                &[
                    ("uid", "65534"),
                    ("command", "lockdown"),
                    ("proc", "engine"),
                ],
            ),
            // Read nothing from a stranger: the command is not known.
            want("ctl_denied", &[("uid", "4242"), ("proc", "engine")]),
        ],
    );
    assert_eq!(s.show(A)["enforcement"], "open");
}

/// A signed bundle whose ruleset was changed after signing; then one
/// holding a file under a name no bundle may have (its line's msg= then
/// has spaces and escaped quotes, for the parsers to agree on).
pub fn policy_tampered(s: &mut Siem) {
    let b = s.bundle("tampered", &policy(SERIAL + 1, true, BANDS));
    std::fs::write(b.join("anchors/open.nft"), "accept\n").unwrap();
    let odd = s.pair.work.path().join("bundles/oddname");
    make_bundle(
        &odd,
        &[
            ("policy.toml", &policy(SERIAL + 1, true, BANDS)),
            ("anchors/open.nft", OPEN_NFT),
            ("anchors/lockdown.nft", LOCKDOWN_NFT),
            ("notes \"v2\" final.txt", "x"),
        ],
    );
    sign(&odd, &s.pair.policy_keys);
    let (from, started) = s.begin(A);
    for dir in [&b, &odd] {
        let o = s.pair.ctl(A, &["policy", "load", dir.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "{o:?}");
    }
    let objects = s.finish(
        A,
        "policy_tampered",
        &from,
        started,
        &[
            want(
                "policy_rejected",
                &[("reason", "digest-mismatch"), ("proc", "parent")],
            ),
            want(
                "policy_rejected",
                &[("reason", "bad-name"), ("proc", "parent")],
            ),
        ],
    );
    let quoted = objects
        .iter()
        .filter_map(|o| o["msg"].as_str())
        .any(|m| m.contains(r#"name: "notes \"v2\" final.txt" has"#));
    // The message quotes the name as Rust does: the line escapes it once
    // more (`\\\"`), and rsyslog's value must be the message itself.
    assert!(quoted, "no msg with the name unescaped: {objects:?}");
}

/// A validly signed bundle with a serial below the active one.
pub fn policy_rollback(s: &mut Siem) {
    let b = s.bundle("rollback", &policy(SERIAL - 5, true, BANDS));
    let (from, started) = s.begin(A);
    let o = s.pair.ctl(A, &["policy", "load", b.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    s.finish(
        A,
        "policy_rollback",
        &from,
        started,
        &[want(
            "policy_rejected",
            &[("reason", "rollback"), ("proc", "parent")],
        )],
    );
}

/// A bundle whose `not_after` is a day away: loaded, with a warning.
pub fn policy_expiring(s: &mut Siem) {
    let not_after = qkdpfd::utc::now_unix() + 86_400;
    let text = policy(SERIAL + 2, true, BANDS).replacen(
        "\n\n[defaults]",
        &format!(
            "\nnot_after = \"{}\"\n\n[defaults]",
            qkdpfd::utc::format_utc(not_after)
        ),
        1,
    );
    let b = s.bundle("expiring", &text);
    let (from, started) = s.begin(A);
    s.pair.ctl_ok(A, &["policy", "load", b.to_str().unwrap()]);
    s.finish(
        A,
        "policy_expiring",
        &from,
        started,
        &[
            want("policy_loaded", &[("proc", "parent")]),
            want("policy_expiring", &[("proc", "parent")]),
        ],
    );
}

/// The PSK on A's interface changed behind qkdpfd's back.
pub fn psk_drift(s: &mut Siem) {
    let (from, started) = s.begin(A);
    s.pair
        .set_psk_behind_qkdpfd(A, "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=");
    // The next rotation clears it.
    s.logs[A].wait_for(&from, &want("psk_drift", &[]), Duration::from_secs(10));
    s.wait_enforcement(A, "open", Duration::from_secs(20));
    let objects = s.finish(
        A,
        "psk_drift",
        &from,
        started,
        &[
            want(
                "psk_drift",
                &[("link", "dr"), ("reason", "changed"), ("proc", "parent")],
            ),
            want(
                "lockdown",
                &[("link", "dr"), ("reason", "psk-drift"), ("proc", "parent")],
            ),
            want(
                "unlock",
                &[("link", "dr"), ("by", "auto"), ("proc", "parent")],
            ),
        ],
    );
    // Re-read every second until the rotation, said once.
    let drifts = objects.iter().filter(|o| o["event"] == "psk_drift").count();
    assert_eq!(drifts, 1, "psk_drift once per drift");
}

/// The `n`th eavesdropper since `from`: `sim eve dr 0.5` on A until the
/// `n`th QBER lockdown is logged, then off until the `n`th automatic
/// unlock is (the log, not `show`, decides: it is what the rules read).
fn eve_cycle(s: &Siem, from: &Mark, n: usize) {
    let count = |event: &str, key: &str, value: &str| {
        s.logs[A]
            .since(from)
            .iter()
            .filter(|o| o["event"] == event && o[key] == value)
            .count()
    };
    let until = |what: &str, done: &dyn Fn() -> bool| {
        let t = Instant::now();
        while !done() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "{what} {n}: {}",
                s.show(A)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    s.pair.ctl_ok(A, &["sim", "eve", "dr", "0.5"]);
    until("lockdown", &|| count("lockdown", "reason", "qber") >= n);
    s.pair.ctl_ok(A, &["sim", "eve", "dr", "0"]);
    until("unlock", &|| count("unlock", "by", "auto") >= n);
}

pub fn eavesdropper(s: &mut Siem) {
    let (from, started) = s.begin(A);
    eve_cycle(s, &from, 1);
    s.finish(
        A,
        "eavesdropper",
        &from,
        started,
        &[
            want(
                "lockdown",
                &[("link", "dr"), ("reason", "qber"), ("proc", "parent")],
            ),
            want(
                "unlock",
                &[("link", "dr"), ("by", "auto"), ("proc", "parent")],
            ),
        ],
    );
}

/// Four eavesdropper cycles on one link in a row.
pub fn flapping(s: &mut Siem) {
    let (from, started) = s.begin(A);
    for n in 1..=4 {
        eve_cycle(s, &from, n);
    }
    let objects = s.finish(
        A,
        "flapping",
        &from,
        started,
        &[want("lockdown", &[("link", "dr"), ("reason", "qber")])],
    );
    let locks = objects
        .iter()
        .filter(|o| o["event"] == "lockdown" && o["reason"] == "qber")
        .count();
    assert!(locks >= 4, "{locks} lockdowns");
    assert!(
        started.elapsed() < Duration::from_secs(150),
        "{:?}",
        started.elapsed()
    );
}

/// A foreign accept put ahead of qkdpfd's jumps, then the ruleset flushed.
pub fn firewall_tampered(s: &mut Siem) {
    let (from, started) = s.begin(A);
    s.pair.ns_must(
        A,
        &[
            "nft", "insert", "rule", "inet", "qkdpfd", "output", "accept",
        ],
    );
    s.logs[A].wait_for(&from, &want("firewall_lost", &[]), Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(3));
    s.pair.ns_must(A, &["nft", "flush", "ruleset"]);
    let t = Instant::now();
    let rebuilt = || {
        let o = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &s.pair.ns(A),
                "nft",
                "list",
                "table",
                "inet",
                "qkdpfd",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).contains("jump link_dr")
    };
    while !rebuilt() {
        assert!(t.elapsed() < Duration::from_secs(5), "not rebuilt");
        std::thread::sleep(Duration::from_millis(50));
    }
    s.wait_enforcement(A, "open", Duration::from_secs(20));
    let objects = s.finish(
        A,
        "firewall_tampered",
        &from,
        started,
        &[want("firewall_lost", &[("proc", "parent")])],
    );
    let lost = objects
        .iter()
        .filter(|o| o["event"] == "firewall_lost")
        .count();
    assert!(lost >= 2, "{lost} firewall_lost");
}

/// The KMEs stop: no key past max_key_age; they come back, the link reopens.
pub fn key_stale(s: &mut Siem) {
    let (from, started) = s.begin(A);
    s.pair.stop_sim();
    s.logs[A].wait_for(
        &from,
        &want("key_stale", &[("link", "dr")]),
        Duration::from_secs(40),
    );
    s.pair.start_sim();
    s.wait_enforcement(A, "open", Duration::from_secs(60));
    s.finish(
        A,
        "key_stale",
        &from,
        started,
        &[
            want(
                "key_stale",
                &[("link", "dr"), ("psk", "random"), ("proc", "parent")],
            ),
            want(
                "lockdown",
                &[("link", "dr"), ("reason", "key-stale"), ("proc", "parent")],
            ),
            want(
                "unlock",
                &[("link", "dr"), ("by", "auto"), ("proc", "parent")],
            ),
        ],
    );
}

/// A's engine killed: the parent locks every link and exits non-zero.
pub fn engine_failure(s: &mut Siem) {
    let (from, started) = s.begin(A);
    let parent = s.pids[A].expect("A runs");
    let engine = super::common::procfs::engine_pid(parent);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(engine as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let t = Instant::now();
    while std::path::Path::new(&format!("/proc/{parent}")).exists() {
        assert!(t.elapsed() < Duration::from_secs(10), "parent still runs");
        std::thread::sleep(Duration::from_millis(20));
    }
    s.pids[A] = None;
    let state = super::common::durable_state(&s.pair.path(A, "state/state"));
    assert!(state.contains("process-failure"), "{state}");
    s.finish(
        A,
        "engine_failure",
        &from,
        started,
        &[
            want("engine_lost", &[("proc", "parent")]),
            want("shutdown", &[("reason", "process-failure")]),
        ],
    );
}
