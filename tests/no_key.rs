//! No key, no traffic (DESIGN §6 `no-key`; fail-closed issue item 0): a
//! keyed link stays locked until its first QKD-derived PSK is installed
//! and read back on this end, and after a restart until the PSK on the
//! interface matches the state file's verifier. Proven with packets across
//! real wireguard-go tunnels and nftables, two qkdpfds, qkdsim's KMEs.
#![cfg(target_os = "linux")]

mod common;

use common::gateway::policy;
use common::pair::{A, B, Pair, has_reason};
use std::time::Duration;

const MANUAL: &str = "rotate = \"1h\"\nmax_key_age = \"2h\"\nno_jitter = true";

#[test]
fn kmes_unreachable_from_the_start_pass_nothing() {
    let Some(mut p) = Pair::new("qnk1", MANUAL) else {
        return;
    };
    // QBER is fresh (the built-in source) and a bundle is active, but no
    // KME answers: before this fix both ends opened on whatever PSK the
    // tunnels had.
    p.start_both(&policy(1, true, ""));
    p.wait("no-key on both", Duration::from_secs(10), |a, b| {
        [a, b].iter().all(|s| {
            s["enforcement"] == "lockdown" && has_reason(s, "no-key") && !has_reason(s, "no-policy")
        })
    });
    // The engine has fresh QBER by now and still nothing passes.
    std::thread::sleep(Duration::from_secs(2));
    for end in [A, B] {
        let s = p.show(end);
        assert_eq!(s["enforcement"], "lockdown", "{s}");
        assert!(s["keys"]["installed_epoch"].is_null(), "{s}");
        assert!(
            p.log(end).contains("event=lockdown link=dr reason=no-key"),
            "{}",
            p.log(end)
        );
        let m = p.metrics(end);
        assert!(
            m.contains("qkdpfd_link_lock_reason{link=\"dr\",reason=\"no-key\"} 1"),
            "{m}"
        );
    }
    assert_eq!(p.pings(10), 0, "packets crossed a link without a key");
    // The KMEs come up: the first round keys both ends and they open.
    p.start_sim();
    // Do not wait out the failed rounds' backoff.
    let _ = p.ctl(A, &["rotate", "dr"]);
    p.wait("first key opens", Duration::from_secs(20), |a, b| {
        [a, b]
            .iter()
            .all(|s| s["enforcement"] == "open" && !has_reason(s, "no-key"))
    });
    assert_eq!(p.psk(A), p.psk(B));
    p.traffic_within(Duration::from_secs(15));
}

#[test]
fn a_restart_reopens_only_on_the_verified_psk() {
    let Some(mut p) = Pair::new("qnk2", MANUAL) else {
        return;
    };
    p.start_sim();
    p.start_both(&policy(1, true, ""));
    p.wait("first rotation", Duration::from_secs(15), |a, b| {
        a["enforcement"] == "open" && b["enforcement"] == "open"
    });
    p.traffic_within(Duration::from_secs(15));
    let psk = p.psk(A);
    // The state file and its journal keep a verifier, never the key.
    let file = p.path(A, "state/state");
    let state = common::durable_state(&file);
    assert!(state.contains("\"verifier\""), "{state}");
    let raw = [file.clone(), file.with_file_name("state.journal")]
        .map(|f| std::fs::read_to_string(f).unwrap_or_default())
        .concat();
    assert!(!raw.contains(&psk), "{raw}");
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD
        .decode(&psk)
        .unwrap();
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    assert!(!raw.contains(&hex), "{raw}");

    // The KMEs go away, so no round can rekey what a restart finds.
    p.stop_sim();
    // A restart with the same PSK on the interface: open again at once.
    let before = p.log(A).matches("reason=no-key").count();
    p.stop(A);
    p.start(A);
    p.wait("A open again", Duration::from_secs(10), |a, _| {
        a["enforcement"] == "open"
    });
    assert_eq!(p.log(A).matches("reason=no-key").count(), before);
    assert_eq!(p.psk(A), psk, "no round could have run");
    p.traffic_within(Duration::from_secs(15));

    // The PSK changed while qkdpfd was down: it does not match the verifier.
    p.stop(A);
    p.set_psk_behind_qkdpfd(A, "AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM=");
    p.start(A);
    p.wait("A held by no-key", Duration::from_secs(10), |a, _| {
        a["enforcement"] == "lockdown" && has_reason(a, "no-key")
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(p.show(A)["enforcement"], "lockdown");
    assert!(
        p.raw_log(A)
            .contains("event=lockdown proc=parent link=dr reason=no-key"),
        "{}",
        p.raw_log(A)
    );
    // The kernel holds the lockdown: A's link chain diverts or drops.
    assert!(p.link_locked(A, "dr"));
    assert_eq!(p.pings(3), 0);
    p.start_sim();
    // A round keys it again and it opens.
    let _ = p.ctl(A, &["rotate", "dr"]);
    p.wait("keyed again", Duration::from_secs(15), |a, b| {
        a["enforcement"] == "open" && b["enforcement"] == "open"
    });
    assert_eq!(p.psk(A), p.psk(B));
    p.traffic_within(Duration::from_secs(15));
}
