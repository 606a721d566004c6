//! Key agreement end to end (DESIGN §5, §6, §10; issue 3 item 8): a qkdpfd
//! on each of two gateway namespaces, qkdsim's ETSI 014 KMEs over mutual
//! TLS, real wireguard-go tunnels and nftables. A PSK counts only if the
//! tunnel works with it: after rotations both `wg show preshared-keys`
//! agree, and a forced new session handshakes and carries traffic.

mod common;

use common::gateway::{policy, reply_times, unix_now};
use common::pair::{A, B, Pair};
use std::time::Duration;

/// A long period: the test drives rounds with `qkdctl rotate`.
const MANUAL: &str = "rotate = \"1h\"\nmax_key_age = \"2h\"\nno_jitter = true";

fn up(prefix: &str, testing: &str) -> Option<Pair> {
    let mut p = Pair::new(prefix, testing)?;
    p.start_sim();
    p.start_both(&policy(1, true, ""));
    // The first round starts at once (jitter off); both ends open.
    p.wait("first rotation", Duration::from_secs(15), |a, b| {
        a["keys"]["installed_epoch"].as_u64() >= Some(1)
            && a["keys"]["installed_epoch"] == b["keys"]["installed_epoch"]
            && a["enforcement"] == "open"
            && b["enforcement"] == "open"
    });
    Some(p)
}

#[test]
fn rotations_agree_and_the_tunnel_handshakes_with_each_psk() {
    let Some(p) = up("qkk1", MANUAL) else {
        return;
    };
    let mut last = p.psk(A);
    assert_eq!(last, p.psk(B), "first PSK differs\n{}", p.logs());
    assert_ne!(last, "(none)");
    for round in 0..5 {
        let epoch = p.installed(A);
        let out = p.ctl_ok(A, &["rotate", "dr"]);
        assert!(out.contains("round started"), "{out}");
        p.wait("rotation", Duration::from_secs(10), |a, b| {
            a["keys"]["installed_epoch"].as_u64() == Some(epoch + 1)
                && b["keys"]["installed_epoch"].as_u64() == Some(epoch + 1)
        });
        let (pa, pb) = (p.psk(A), p.psk(B));
        assert_eq!(pa, pb, "round {round}: PSKs differ\n{}", p.logs());
        assert_ne!(pa, last, "round {round}: PSK did not change");
        // Both ends show the same fingerprint (DESIGN §7).
        let fp = |e| p.show(e)["keys"]["psk_fingerprint"].clone();
        assert_eq!(fp(A), fp(B));
        assert!(fp(A).is_string());
        last = pa;
        // A PSK that only matches on paper proves nothing: a new session
        // must handshake with it and carry traffic.
        let before = p.handshake(A).max(p.handshake(B));
        std::thread::sleep(Duration::from_millis(1100));
        p.new_session();
        assert_eq!(p.pings(3), 3, "round {round}: no traffic\n{}", p.logs());
        let after = p.handshake(A);
        assert!(
            after > before,
            "round {round}: latest-handshake {after} did not advance past {before}"
        );
    }
    // The control: PSKs that differ make the same forced session fail.
    let bad = p.work.path().join("bad.psk");
    std::fs::write(&bad, "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n").unwrap();
    let wif = p.wg_if(B);
    let peer_a =
        std::fs::read_to_string(p.work.path().join("net").join(format!("{}.pub", p.ns(A))))
            .unwrap();
    let set = [
        "wg",
        "set",
        &wif,
        "peer",
        peer_a.trim(),
        "preshared-key",
        bad.to_str().unwrap(),
    ];
    assert!(p.ns_ok(B, &set));
    let before = p.handshake(A).max(p.handshake(B));
    std::thread::sleep(Duration::from_millis(1100));
    p.new_session();
    assert_eq!(
        p.pings(3),
        0,
        "a session with different PSKs carried traffic"
    );
    assert!(p.handshake(A) <= before, "a handshake with different PSKs");
    let show = p.ctl_ok(A, &["show", "link", "dr"]);
    assert!(show.contains("rotations:       ok 6 failed 0"), "{show}");
    assert!(p.log(A).contains("event=key_rotated link=dr epoch=6"));
    assert!(p.log(B).contains("event=key_rotated link=dr epoch=6"));
    // Where the KME tells it, stored_key_count is tracked.
    assert!(
        p.show(A)["keys"]["stored_key_count"].is_u64(),
        "{}",
        p.show(A)
    );
}

#[test]
fn a_ping_stream_loses_nothing_across_rotations() {
    let Some(p) = up(
        "qkk2",
        "rotate = \"2s\"\nmax_key_age = \"1h\"\nno_jitter = true",
    ) else {
        return;
    };
    let (mut ping, out) = {
        let out = p.work.path().join("pings.txt");
        let f = std::fs::File::create(&out).unwrap();
        let c = std::process::Command::new("ip")
            .args(["netns", "exec", &p.ns(B)])
            .args(["ping", "-n", "-D", "-i", "0.05", "-W", "1", "10.99.0.1"])
            .stdout(f)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        (c, out)
    };
    let t0 = unix_now();
    let start = p.installed(A);
    p.wait("three more rotations", Duration::from_secs(20), |a, b| {
        a["keys"]["installed_epoch"].as_u64() >= Some(start + 3)
            && b["keys"]["installed_epoch"].as_u64() >= Some(start + 3)
    });
    std::thread::sleep(Duration::from_millis(500));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(ping.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let _ = ping.wait();
    let text = std::fs::read_to_string(&out).unwrap();
    let sent = text.lines().filter(|l| l.contains("icmp_seq=")).count();
    let replies = reply_times(&out).len();
    let summary = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or("");
    assert!(
        summary.contains(" 0% packet loss"),
        "{summary}\n{}",
        p.logs()
    );
    assert!(
        replies > 40,
        "only {replies} replies in {:.1}s",
        unix_now() - t0
    );
    assert_eq!(sent, replies);
}
