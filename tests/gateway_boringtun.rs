//! Two gateways whose tunnel runs boringtun at A (the master) and
//! wireguard-go at B, each with its qkdpfd on the userspace backend, real
//! nftables and qkdsim's KMEs (tests/common/pair.rs). boringtun cannot
//! change a peer in place (`src/parent/wg/uapi/boringtun.rs`): every PSK
//! goes in by removing A's peer and adding it back. Proven with packets:
//! rotations agree and carry traffic, an eavesdropper locks both ends and
//! the tunnel carries nothing, and A reopens only on a session made after
//! the incident, which it learns from boringtun's handshake times (seconds
//! since, not since the epoch).
#![cfg(target_os = "linux")]

mod common;

use common::pair::{A, B, Pair};
use qkdpfd::conf::UAPI_DIR;
use qkdpfd::parent::wg::{WgBackend, WgPeer, uapi::Uapi};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// A long period: the test drives rounds with `qkdctl rotate`.
const MANUAL: &str = "rotate = \"1h\"\nmax_key_age = \"2h\"\nno_jitter = true";

/// boringtun's daemon, by the pid file scripts/gateways.sh keeps, answers.
fn boringtun_alive(p: &Pair) -> bool {
    let pid_file = p
        .work
        .path()
        .join("net")
        .join(format!("{}.wg.pid", p.ns(A)));
    let pid: i32 = std::fs::read_to_string(pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
        && p.ns_ok(A, &["wg", "show", &p.wg_if(A), "peers"])
}

#[test]
fn a_boringtun_gateway_rotates_locks_and_reopens_on_a_new_session() {
    let Some(mut p) = Pair::with_boringtun_at_a("qkbt", MANUAL) else {
        return;
    };
    p.start_keyed();
    p.traffic_within(Duration::from_secs(10));
    let mut last = String::new();
    for round in 0..3 {
        let epoch = p.installed(A);
        p.ctl_ok(A, &["rotate", "dr"]);
        p.wait("rotation", Duration::from_secs(10), |a, b| {
            a["keys"]["installed_epoch"].as_u64() == Some(epoch + 1)
                && b["keys"]["installed_epoch"].as_u64() == Some(epoch + 1)
        });
        let (pa, pb) = (p.psk(A), p.psk(B));
        assert_eq!(pa, pb, "round {round}: PSKs differ\n{}", p.logs());
        assert_ne!(pa, last, "round {round}: PSK did not change");
        last = pa;
        assert!(boringtun_alive(&p), "round {round}: boringtun gone");
        // A's peer was re-created with the key: traffic flows again on a
        // session that needed it at both ends.
        p.traffic_within(Duration::from_secs(10));
    }
    assert_eq!(p.wg_show_peers(A), 1);

    let fresh_from = p.incident_and_recovery();
    for end in [A, B] {
        assert!(
            p.log(end).contains("event=session_made link=dr"),
            "end {end}\n{}",
            p.logs()
        );
    }
    // B (wireguard-go) lists its handshake in seconds since the epoch: the
    // session both ends reopened on was made after the incident.
    let b_secs: u64 = p
        .wg_show(B, "latest-handshakes")
        .split_whitespace()
        .nth(1)
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let from = fresh_from
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(b_secs >= from, "B's session from {b_secs}, before {from}");
    // A's, as the backend reads it from boringtun (time since, counted
    // back): after the incident too, within boringtun's 250 ms stamp.
    let b_pub = std::fs::read_to_string(p.work.path().join("net").join(format!("{}.pub", p.ns(B))))
        .unwrap();
    let peer = WgPeer::from_conf(&p.wg_if(A), b_pub.trim()).unwrap();
    let a_made = Uapi::new(Path::new(UAPI_DIR))
        .last_handshake(&peer)
        .unwrap()
        .expect("A has a session");
    let earliest = fresh_from - Duration::from_millis(300);
    assert!(
        a_made >= earliest,
        "A's session from {a_made:?}, before {earliest:?}"
    );
    p.traffic_within(Duration::from_secs(10));
    assert_eq!(p.psk(A), p.psk(B));
    assert!(boringtun_alive(&p));
    for end in [A, B] {
        let log = p.log(end);
        for bad in [
            "event=key_rotation_failed",
            "event=wg_session_kept",
            "event=session_failed",
            "event=lockdown_failed",
            "event=psk_drift",
        ] {
            assert!(!log.contains(bad), "end {end}: {bad}\n{}", p.logs());
        }
    }
}
