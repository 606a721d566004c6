//! Key rotation with the real parts (BENCHMARKS.md; issue 13 item 6): the
//! demo's set-up instead of benches/rotation.rs's dry-run backends on
//! loopback. Two gateway namespaces joined by a veth underlay, a
//! wireguard-go tunnel (kernel WireGuard with `WG=linux`), nftables, and
//! qkdsim's two ETSI 014 KMEs in gateway A (tests/common/pair.rs builds it
//! exactly as the key tests do). One link, rounds driven by
//! `qkdctl rotate dr`; the same measure as the dry-run bench: A's engine,
//! at -v, logs `enc_keys_to_installed_us` from the start of its `enc_keys`
//! call to its parent's answer that the PSK is installed and read back,
//! which comes after B installed (B CONFIRMs only a PSK in its kernel).
//! After each round both ends' installed epoch and PSK fingerprint agree.
//! Both engines' `round` lines split the time: each end's KME call, epoch
//! persist (the parent's state file: write, fsync, rename) and install
//! (the parent's WireGuard set and read-back, then the state file), and
//! on A the wait from OFFER out to CONFIRM in (`peer_us`). QKD_BENCH_GAP_MS
//! waits between rounds (default 0: back to back).
//! CPU seconds of every process over the rounds, qkdsim's beside the
//! daemons' (issue 13 item 7).
//!
//! `cargo bench --features testing --bench rotation_wire`
//! (QKD_BENCH_ROUNDS=N, default 200). Root: network namespaces.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "common/stats.rs"]
mod stats;

use common::gateway::policy;
use common::pair::{A, B, Pair};
use common::procfs;
use std::time::{Duration, Instant};

/// Rounds are driven by hand: the period never fires.
const MANUAL: &str = "rotate = \"1h\"\nmax_key_age = \"2h\"\nno_jitter = true";

/// `end`'s debug `round` line for `epoch`, once logged.
fn round_of(p: &Pair, end: usize, epoch: u64) -> Option<String> {
    let want = format!("event=round link=dr epoch={epoch} ");
    let log = p.log(end);
    Some(log.lines().find(|l| l.starts_with(&want))?.to_string())
}

/// Microsecond samples of the fields of each round line, sorted.
struct Parts(Vec<(&'static str, usize, Vec<u64>)>);

impl Parts {
    fn new() -> Parts {
        let mut v = Vec::new();
        for key in [
            "enc_keys_to_installed_us",
            "kme_us",
            "persist_us",
            "peer_us",
            "install_us",
        ] {
            v.push((key, A, Vec::new()));
        }
        for key in [
            "offer_to_installed_us",
            "kme_us",
            "persist_us",
            "install_us",
        ] {
            v.push((key, B, Vec::new()));
        }
        Parts(v)
    }

    fn add(&mut self, end: usize, line: &str) {
        for (key, e, samples) in &mut self.0 {
            if *e == end {
                samples.push(stats::field(line, key).unwrap_or_else(|| panic!("{key} in {line}")));
            }
        }
    }

    fn print(&mut self) {
        for (key, end, samples) in &mut self.0 {
            samples.sort_unstable();
            println!(
                "  {} {key:<25} {}",
                ["A", "B"][*end],
                stats::percentiles_ms(samples)
            );
        }
    }
}

fn wait_for<T>(limit: Duration, what: &str, mut ok: impl FnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = ok() {
            return v;
        }
        assert!(t.elapsed() < limit, "{what}: not after {limit:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("rotation_wire bench: needs root (network namespaces)");
        return;
    }
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let rounds = env("QKD_BENCH_ROUNDS", 200) as usize;
    let gap = Duration::from_millis(env("QKD_BENCH_GAP_MS", 0));
    let Some(mut p) = Pair::new("qkbw", MANUAL) else {
        eprintln!("rotation_wire bench: no signify-openbsd or not root");
        return;
    };
    p.verbose = true;
    p.start_sim();
    p.start_both(&policy(1, true, ""));
    wait_for(Duration::from_secs(30), "first rotation", || {
        round_of(&p, B, 1)?;
        round_of(&p, A, 1)
    });
    let pid = |c: &Option<std::process::Child>| c.as_ref().expect("running").id();
    let (pa, pb) = (pid(&p.daemons[A]), pid(&p.daemons[B]));
    let procs = [
        ("A parent", pa),
        ("A engine", procfs::engine_pid(pa)),
        ("B parent", pb),
        ("B engine", procfs::engine_pid(pb)),
        ("qkdsim", pid(&p.sim)),
    ];
    let cpu0: Vec<f64> = procs.iter().map(|(_, p)| procfs::cpu_secs(*p)).collect();
    let mut parts = Parts::new();
    let t = Instant::now();
    for _ in 0..rounds {
        std::thread::sleep(gap);
        let epoch = p.installed(A);
        let out = p.ctl_ok(A, &["rotate", "dr"]);
        assert!(out.contains("round started"), "{out}");
        let a = wait_for(Duration::from_secs(10), "rotation", || {
            round_of(&p, A, epoch + 1)
        });
        parts.add(A, &a);
        let b = wait_for(Duration::from_secs(2), "B's round line", || {
            round_of(&p, B, epoch + 1)
        });
        parts.add(B, &b);
        let (sa, sb) = (p.show(A), p.show(B));
        assert_eq!(sa["keys"]["installed_epoch"].as_u64(), Some(epoch + 1));
        assert_eq!(
            (
                &sa["keys"]["installed_epoch"],
                &sa["keys"]["psk_fingerprint"]
            ),
            (
                &sb["keys"]["installed_epoch"],
                &sb["keys"]["psk_fingerprint"]
            ),
            "A and B disagree after epoch {}",
            epoch + 1
        );
    }
    let elapsed = t.elapsed().as_secs_f64();
    assert_eq!(p.psk(A), p.psk(B), "wg show: the PSKs differ");
    let failed = p.log(A).matches("event=key_rotation_failed ").count();
    println!(
        "rotation on the wire ({} WireGuard, nftables, qkdsim), enc_keys start -> PSK \
         installed on both ends, {} rounds in {elapsed:.1}s ({failed} failed rounds):",
        common::pair::wg_backend(),
        rounds
    );
    parts.print();
    let mut line = String::from("  CPU seconds over the rounds:");
    for ((name, pid), c0) in procs.iter().zip(&cpu0) {
        line += &format!(" {name} {:.2};", procfs::cpu_secs(*pid) - c0);
    }
    println!("{line}");
}
