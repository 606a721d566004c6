//! The WireGuard interface deleted and re-created behind the daemon's back
//! (fail-closed issue, item 7): the periodic PSK re-read finds the
//! interface gone and locks the link (`psk-drift`); the interface comes
//! back as an operator's script would make it, with the same keys and peer
//! but no PSK, and the link stays locked — read back in nftables, not only
//! said — until a rotation installs a fresh key on the new interface. Real
//! wireguard-go tunnels, two qkdpfds, qkdsim's KMEs.
#![cfg(target_os = "linux")]

mod common;

use common::gateway::policy;
use common::pair::{A, B, Pair, has_reason};
use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TESTING: &str = "rotate = \"1h\"\nmax_key_age = \"2h\"\nno_jitter = true\npsk_check = \"1s\"";

/// B's link chains as nftables holds them: locked means the bundle's
/// lockdown switched on or qkdpfd's own drop.
fn b_chain_locked(p: &Pair) -> bool {
    p.link_locked(B, "dr")
}

/// B's interface as scripts/gateways.sh makes it, again: a new
/// wireguard-go, the same private key, A as its peer, no PSK.
fn recreate_b(p: &Pair) {
    let net = p.work.path().join("net");
    let (ns, wif) = (p.ns(B), p.wg_if(B));
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            "env",
            "WG_PROCESS_FOREGROUND=1",
            "wireguard-go",
            &wif,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // gateways.sh down kills the process named here; a thread reaps it.
    fs::write(net.join(format!("{ns}.wg.pid")), child.id().to_string()).unwrap();
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    let t = Instant::now();
    while !p.ns_ok(B, &["wg", "show", &wif]) {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "wireguard-go did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let key = net.join(format!("{ns}.key"));
    let a_pub = fs::read_to_string(net.join(format!("{}.pub", p.ns(A)))).unwrap();
    p.ns_must(B, &["ip", "addr", "add", "10.99.0.2/24", "dev", &wif]);
    p.ns_must(
        B,
        &[
            "wg",
            "set",
            &wif,
            "listen-port",
            "51820",
            "private-key",
            key.to_str().unwrap(),
            "peer",
            a_pub.trim(),
            "endpoint",
            "192.0.2.1:51820",
            "allowed-ips",
            "10.99.0.1/32",
            "persistent-keepalive",
            "1",
        ],
    );
    p.ns_must(B, &["ip", "link", "set", &wif, "up"]);
}

#[test]
fn a_recreated_interface_stays_locked_until_a_fresh_key() {
    let Some(mut p) = Pair::new("qwr1", TESTING) else {
        return;
    };
    p.start_sim();
    p.start_both(&policy(1, true, ""));
    p.wait("both open", Duration::from_secs(20), |a, b| {
        [a, b].iter().all(|s| s["enforcement"] == "open")
    });
    p.traffic_within(Duration::from_secs(15));
    let old_psk = p.psk(B);
    // The interface goes (its wireguard-go with it).
    p.ns_must(B, &["ip", "link", "del", &p.wg_if(B)]);
    p.wait("B locks", Duration::from_secs(5), |_, b| {
        b["enforcement"] == "lockdown" && has_reason(b, "psk-drift")
    });
    assert!(b_chain_locked(&p), "B's link chain is not locked");
    let log = p.log(B);
    assert!(log.contains("event=psk_drift link=dr"), "{log}");
    // It comes back without a PSK: still locked, in the kernel too.
    recreate_b(&p);
    std::thread::sleep(Duration::from_secs(3));
    let b = p.show(B);
    assert_eq!(b["enforcement"], "lockdown", "{b}");
    assert!(has_reason(&b, "psk-drift"), "{b}");
    assert!(b_chain_locked(&p));
    assert_eq!(p.pings(3), 0);
    // A rotation installs a fresh key on the new interface: open again.
    // (A never locked: wait for both ends to install the new epoch.)
    let before = p.installed(A);
    p.ctl_ok(A, &["rotate", "dr"]);
    p.wait("fresh key opens both", Duration::from_secs(15), |a, b| {
        let epoch = |s: &serde_json::Value| s["keys"]["installed_epoch"].as_u64().unwrap_or(0);
        [a, b].iter().all(|s| s["enforcement"] == "open")
            && epoch(a) > before
            && epoch(a) == epoch(b)
    });
    assert_eq!(p.psk(A), p.psk(B));
    assert_ne!(p.psk(B), old_psk);
    p.traffic_within(Duration::from_secs(15));
}
