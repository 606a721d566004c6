//! The lockdown ladder's last rung, through the running daemon (fail-closed
//! issue, item 1): when `nft` refuses or hangs on every change, no firewall
//! step can lock the link, so the parent removes the link's WireGuard peer
//! and reads back that it is gone. Proven with packets across a real
//! wireguard-go tunnel and `wg show`; then the firewall recovers, the peer
//! is not re-created, an operator restores it and the link opens again.
//!
//! `nft` is a wrapper (`[firewall] nft`) that runs the real one, except
//! that while its flag file exists every command but a listing fails
//! (`fail`) or sleeps past the tool timeout (`hang`).
#![cfg(target_os = "linux")]

mod common;

use common::gateway::policy;
use common::pair::{A, B, Pair};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MANUAL: &str = "rotate = \"1h\"\nmax_key_age = \"2h\"\nno_jitter = true";

/// Installs the wrapper as B's `nft`; returns its flag file. The parent's
/// landlock ruleset lets it execute only from the configured tool's
/// directory (and load libraries), so the wrapper's interpreter, `sleep`
/// and the real `nft` are copied there.
fn wrap_nft(p: &Pair) -> PathBuf {
    let which = |names: &[&str]| -> PathBuf {
        names
            .iter()
            .map(PathBuf::from)
            .find(|c| c.exists())
            .unwrap_or_else(|| panic!("none of {names:?}"))
    };
    let bin = p.work.path().join("fw-bin");
    fs::create_dir_all(&bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    for (name, from) in [
        ("sh", which(&["/usr/bin/dash", "/bin/dash", "/bin/sh"])),
        ("sleep", which(&["/usr/bin/sleep", "/bin/sleep"])),
        (
            "nft",
            which(&["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]),
        ),
    ] {
        fs::copy(from, bin.join(name)).unwrap();
    }
    // Beside the wrapper: readable under the parent's landlock ruleset.
    let flag = bin.join("flag");
    let script = bin.join("nft-wrapper");
    fs::write(
        &script,
        format!(
            "#!{bin}/sh\n\
             if [ -e {flag} ]; then\n\
             \tread mode < {flag}\n\
             \tcase \" $* \" in\n\
             \t*\" list \"*) ;;\n\
             \t*) [ \"$mode\" = hang ] && exec {bin}/sleep 60\n\
             \t   echo 'nft: injected failure' >&2; exit 1 ;;\n\
             \tesac\n\
             fi\n\
             exec {bin}/nft \"$@\"\n",
            bin = bin.display(),
            flag = flag.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let conf = p.path(B, "qkdpfd.conf");
    let text = fs::read_to_string(&conf).unwrap().replace(
        "[firewall]\nbackend = \"nftables\"\n",
        &format!(
            "[firewall]\nbackend = \"nftables\"\nnft = \"{}\"\n",
            script.display()
        ),
    );
    assert!(text.contains("nft-wrapper"));
    fs::write(&conf, text).unwrap();
    flag
}

/// An open keyed pair whose B runs `nft` through the wrapper.
fn open_pair(prefix: &str) -> Option<(Pair, PathBuf)> {
    let mut p = Pair::new(prefix, MANUAL)?;
    let flag = wrap_nft(&p);
    p.start_sim();
    p.start_both(&policy(1, true, ""));
    p.wait("both open", Duration::from_secs(20), |a, b| {
        [a, b].iter().all(|s| s["enforcement"] == "open")
    });
    p.traffic_within(Duration::from_secs(15));
    Some((p, flag))
}

/// Takes B's preloaded lockdown chain away behind its back while its
/// firewall tool refuses: the next tick forgets that it was preloaded and
/// cannot preload it again, so a lockdown must load it through the tool
/// instead of flipping the link's set over netlink, which no tool sees.
fn unstage(p: &Pair, flag: &Path) {
    fs::write(flag, "fail\n").unwrap();
    p.ns_must(B, &["nft", "flush", "chain", "inet", "qkdpfd", "lock_dr"]);
    p.wait_log(B, "event=stage_failed link=dr", Duration::from_secs(5));
}

/// Re-adds B's peer as `wg set` would, with the PSK it had.
fn restore_peer(p: &Pair, psk_b64: &str) {
    let net = p.work.path().join("net");
    let a_pub = fs::read_to_string(net.join(format!("{}.pub", p.ns(A)))).unwrap();
    let psk_file = p.work.path().join("psk-restore");
    fs::write(&psk_file, format!("{psk_b64}\n")).unwrap();
    p.ns_must(
        B,
        &[
            "wg",
            "set",
            &p.wg_if(B),
            "peer",
            a_pub.trim(),
            "endpoint",
            "192.0.2.1:51820",
            "allowed-ips",
            "10.99.0.1/32",
            "persistent-keepalive",
            "1",
            "preshared-key",
            psk_file.to_str().unwrap(),
        ],
    );
}

/// After the trip: the peer is gone (read back by `wg show`), nothing
/// crosses, and every place an operator looks says so.
fn assert_cut(p: &Pair) {
    let s = p.show(B);
    assert_eq!(s["enforcement"], "lockdown", "{s}\n{}", p.logs());
    assert_eq!(s["wg_peer_removed"], true, "{s}");
    assert_eq!(s["lockdown_failed"], false, "{s}");
    assert_eq!(p.wg_show_peers(B), 0, "the peer is still on B's interface");
    assert_eq!(p.pings(5), 0, "packets crossed a link whose peer was cut");
    let log = p.log(B);
    assert!(log.contains("event=wg_peer_removed link=dr"), "{log}");
    let m = p.metrics(B);
    assert!(m.contains("qkdpfd_wg_peer_removed{link=\"dr\"} 1"), "{m}");
    let text = p.ctl_ok(B, &["show", "link", "dr"]);
    assert!(text.contains("wg peer removed"), "{text}");
}

#[test]
fn a_firewall_that_refuses_everything_cuts_the_peer_and_recovers() {
    let Some((p, flag)) = open_pair("qlr1") else {
        return;
    };
    let psk = p.psk(B);
    unstage(&p, &flag);
    p.ctl_ok(B, &["lockdown", "dr"]);
    assert_cut(&p);
    // The firewall steps were tried first and failed (the order is the
    // ladder's unit tests'; the message is cut to the log's line limit).
    let log = p.log(B);
    assert!(
        log.contains("event=lockdown_fallback link=dr step=\"remove WireGuard peer\" msg=\"lockdown ruleset: load lockdown rules"),
        "{log}"
    );
    assert!(log.contains("nft: injected failure"), "{log}");
    // The firewall recovers: the next tick locks the link's chain, read
    // back; the peer is not re-created.
    fs::remove_file(&flag).unwrap();
    let t = Instant::now();
    loop {
        if p.link_locked(B, "dr") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "not locked");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(p.wg_show_peers(B), 0, "qkdpfd re-created a peer");
    assert_eq!(p.show(B)["wg_peer_removed"], true);
    // An operator restores the peer with the PSK it had: seen, and the
    // link opens again on unlock.
    restore_peer(&p, &psk);
    p.wait_log(B, "event=wg_peer_restored link=dr", Duration::from_secs(5));
    p.ctl_ok(B, &["unlock", "dr"]);
    p.wait("B open again", Duration::from_secs(10), |_, b| {
        b["enforcement"] == "open" && b["wg_peer_removed"] == false
    });
    p.traffic_within(Duration::from_secs(15));
}

#[test]
fn a_hanging_firewall_tool_cuts_the_peer_after_one_timeout() {
    let Some((p, flag)) = open_pair("qlr2") else {
        return;
    };
    unstage(&p, &flag);
    fs::write(&flag, "hang\n").unwrap();
    let t = Instant::now();
    // The reply waits for the ladder: one tool timeout (10 s), then the cut.
    p.ctl_ok(B, &["lockdown", "dr"]);
    let took = t.elapsed();
    assert_cut(&p);
    let log = p.log(B);
    assert!(log.contains("killed after"), "{log}");
    // Only the first step ran into the timeout: the others were skipped.
    assert!(took < Duration::from_secs(25), "lockdown took {took:?}");
    assert!(!log.contains("rebuild and drop:"), "{log}");
    fs::remove_file(&flag).unwrap();
    // The daemon is alive and answers; the link stays locked.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(p.show(B)["enforcement"], "lockdown");
    assert_eq!(p.pings(3), 0);
}
