//! Attack to first dropped packet, end to end (BENCHMARKS.md; issue 13
//! item 2). The demo's set-up as the key tests build it
//! (tests/common/pair.rs): two gateway namespaces, a wireguard-go tunnel
//! (kernel WireGuard with `WG=linux`), nftables, keyed by qkdsim's KMEs;
//! each gateway's QBER comes from its engine's built-in simulator, polled
//! every 200 ms, policy `trip_samples = 3`.
//!
//! Each round: B pings A's tunnel address 1,000 times a second
//! ([`Pair::ping_stream`], `ping -i 0.001 -D`); after 300 ms of steady traffic the eavesdropper is
//! switched on in A's simulator (`qkdctl sim eve dr 1`), at a random phase
//! of A's poll cycle; once A shows lockdown the stream runs 200 ms more and
//! stops. The last echo answered is the last packet through: the first
//! dropped one left B at most one interval (1 ms) after it. Reported: the
//! time from the eavesdropper switched on (the wall clock just before the
//! control command; its own duration is reported beside) to the receipt of
//! that last answer, against the bound (trip_samples + 1) x poll + 1 ms.
//! The eavesdropper is then switched off, a new key agreed (a keyed link
//! reopens only on a key from after the incident) and the link recovers
//! before the next round.
//!
//! `cargo bench --features testing --bench attack_wire`
//! (QKD_BENCH_ROUNDS=N, default 30). Root: network namespaces.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "common/stats.rs"]
mod stats;

use common::gateway::policy;
use common::pair::{A, Pair};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const MANUAL: &str = "rotate = \"1h\"\nmax_key_age = \"2h\"\nno_jitter = true";
const POLL_MS: u64 = 200;
const TRIP_SAMPLES: u64 = 3;

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// (receipt time, icmp_seq) of each answered echo in `ping -D` output.
fn answers(text: &str) -> Vec<(f64, u64)> {
    text.lines()
        .filter_map(|l| {
            let ts = l.strip_prefix('[')?.split(']').next()?.parse().ok()?;
            let seq = l
                .split("icmp_seq=")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()?;
            l.contains(" bytes from ").then_some((ts, seq))
        })
        .collect()
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("attack_wire bench: needs root (network namespaces)");
        return;
    }
    let rounds: usize = std::env::var("QKD_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let Some(mut p) = Pair::new("qat", MANUAL) else {
        eprintln!("attack_wire bench: the demo's tools are missing");
        return;
    };
    p.start_sim();
    p.start_both(&policy(1, true, ""));
    p.wait("both open", Duration::from_secs(30), |a, b| {
        [a, b].iter().all(|s| s["enforcement"] == "open")
    });
    p.traffic_within(Duration::from_secs(15));

    let bound_ms = ((TRIP_SAMPLES + 1) * POLL_MS + 1) as f64;
    let (mut delays, mut ctl_us) = (Vec::new(), Vec::new());
    let mut rates = Vec::new();
    for round in 0..rounds {
        let ping = p.ping_stream("0.001");
        // A random phase of A's poll cycle.
        std::thread::sleep(Duration::from_millis(300 + rand::random::<u64>() % POLL_MS));
        let on = now_s();
        let t = Instant::now();
        p.ctl_ok(A, &["sim", "eve", "dr", "1"]);
        ctl_us.push(t.elapsed().as_micros() as u64);
        p.wait("A locked", Duration::from_secs(10), |a, _| {
            a["enforcement"] == "lockdown"
        });
        std::thread::sleep(Duration::from_millis(200));
        let (text, _) = ping.stop();
        let got = answers(&text);
        let Some(&(last_ts, last_seq)) = got.iter().max_by_key(|(_, s)| *s) else {
            panic!("round {round}: no echo answered\n{text}");
        };
        let before: Vec<_> = got.iter().filter(|(ts, _)| *ts < on).collect();
        if let (Some(first), Some(last)) = (before.first(), before.last()) {
            if last.0 > first.0 {
                rates.push(((last.1 - first.1) as f64 / (last.0 - first.0)) as u64);
            }
        }
        let delay_us = ((last_ts - on) * 1e6).max(0.0) as u64;
        println!(
            "round {round}: last answer icmp_seq={last_seq} {:.1} ms after the eavesdropper",
            delay_us as f64 / 1000.0
        );
        delays.push(delay_us);
        // A keyed link reopens once the QBER has been low for recover_after
        // (2 s) and then a new key is in force.
        p.ctl_ok(A, &["sim", "eve", "dr", "0"]);
        std::thread::sleep(Duration::from_secs(3));
        p.ctl_ok(A, &["rotate", "dr"]);
        p.wait("both open again", Duration::from_secs(30), |a, b| {
            [a, b].iter().all(|s| s["enforcement"] == "open")
        });
        p.traffic_within(Duration::from_secs(15));
    }
    delays.sort_unstable();
    ctl_us.sort_unstable();
    rates.sort_unstable();
    println!(
        "attack -> last packet through (the first dropped left within 1 ms after), {rounds} rounds, \
         poll {POLL_MS} ms, trip_samples {TRIP_SAMPLES}:"
    );
    println!("  {}", stats::percentiles_ms(&delays));
    println!(
        "  bound (trip_samples + 1) x poll + 1 ms = {bound_ms:.0} ms; worst round {:.1} ms, {:.0} ms under it",
        *delays.last().unwrap() as f64 / 1000.0,
        bound_ms - *delays.last().unwrap() as f64 / 1000.0
    );
    println!(
        "  the control command switching the eavesdropper on: {}",
        stats::percentiles_ms(&ctl_us)
    );
    if let Some(r) = rates.get(rates.len() / 2) {
        println!("  stream rate achieved before the attack, median: {r} echoes answered a second");
    }
}
