//! Recovery after an eavesdropper, with and without a new session (issue
//! 13 item 5; BENCHMARKS.md). The demo's set-up (tests/common/pair.rs: two
//! gateway namespaces, a wireguard-go tunnel, nftables, qkdsim's KMEs and
//! its simulated QBER). Each round: the eavesdropper on at both ends until
//! both lock, off again, then `qkdctl rotate dr` (the fresh key recovery
//! needs) and the time until both ends show open, polled with qkdctl.
//! With `[wireguard] new_session = true` (the default) each end then also
//! reports `session_made after_ms=`: from its hold for `no-session` to a
//! handshake newer than its re-created peer, on the daemon's own clock.
//! After each round a ping crosses the tunnel.
//!
//! `cargo bench --features testing --bench recovery` (QKD_BENCH_ROUNDS=N,
//! default 10). Root: network namespaces.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "common/stats.rs"]
mod stats;

use common::gateway::policy;
use common::pair::{A, B, Pair};
use std::time::Duration;

/// Rounds are driven by hand: the period never fires.
const MANUAL: &str = "rotate = \"1h\"\nmax_key_age = \"2h\"\nno_jitter = true";

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("recovery bench: needs root (network namespaces)");
        return;
    }
    let rounds: usize = std::env::var("QKD_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    for new_session in [false, true] {
        let Some(mut p) = Pair::new("qkbr", MANUAL) else {
            eprintln!("recovery bench: no signify-openbsd or not root");
            return;
        };
        p.wireguard_conf(&format!("new_session = {new_session}"));
        p.start_sim();
        p.start_both(&policy(1, true, ""));
        p.wait("first rotation", Duration::from_secs(30), |a, b| {
            [a, b].iter().all(|s| {
                s["enforcement"] == "open" && s["keys"]["installed_epoch"].as_u64() >= Some(1)
            })
        });
        let mut open_us = Vec::new();
        for _ in 0..rounds {
            open_us.push(one_round(&p).as_micros() as u64);
        }
        open_us.sort_unstable();
        println!(
            "recovery (wireguard-go, nftables, qkdsim; new_session {new_session}), \
             rotate -> both ends open, {rounds} rounds: {}",
            stats::percentiles_ms(&open_us)
        );
        if new_session {
            for (end, name) in [(A, "A"), (B, "B")] {
                let log = p.log(end);
                let mut lines: Vec<&str> = log
                    .lines()
                    .filter(|l| l.starts_with("event=session_made link=dr "))
                    .collect();
                // The first wait is the start's (policy load), the far end
                // perhaps not yet ready: said apart.
                let first = lines.remove(0);
                println!("  {name}: at the start: {first}");
                let mut ms: Vec<u64> = lines
                    .iter()
                    .filter_map(|l| stats::field(l, "after_ms"))
                    .map(|v| v * 1000)
                    .collect();
                ms.sort_unstable();
                let retried = lines
                    .iter()
                    .filter(|l| stats::field(l, "tries").is_some_and(|t| t > 1))
                    .count();
                println!(
                    "  {name}: held for no-session -> handshake after re-creation, {} recoveries \
                     ({retried} needed a second re-creation): {}",
                    ms.len(),
                    stats::percentiles_ms(&ms)
                );
            }
        }
    }
}

/// One incident and its recovery; the time from `rotate` to both open.
fn one_round(p: &Pair) -> Duration {
    p.eavesdropper(true);
    p.eavesdropper(false);
    // The QBER must have stayed low for recover_after before a new key
    // may clear `qber`: wait for the engine to say it is waiting for one.
    std::thread::sleep(Duration::from_secs(3));
    p.ctl_ok(A, &["rotate", "dr"]);
    let took = p.wait("both ends open", Duration::from_secs(30), |a, b| {
        [a, b].iter().all(|s| s["enforcement"] == "open")
    });
    if p.pings(3) == 0 {
        // Said, not hidden: how long until traffic passes, and both ends'
        // WireGuard state at the moment it did not.
        let dumps = [A, B].map(|e| p.wg_show(e, "dump"));
        let t = std::time::Instant::now();
        while p.pings(1) == 0 {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "no traffic\n{}",
                p.logs()
            );
        }
        println!(
            "  STALL: both open, no echo answered; traffic after {:.2} s more\n  A: {}\n  B: {}",
            t.elapsed().as_secs_f64(),
            dumps[0].replace('\n', " | "),
            dumps[1].replace('\n', " | ")
        );
    }
    took
}
