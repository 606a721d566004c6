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
//! daemons' (issue 13 item 7). Run twice, side by side: `[wireguard]
//! new_session = false` (WireGuard's own cadence), then true (the master's
//! install also re-creates its peer), and with it the new-session phase
//! (`sessions`): install -> next handshake, and packets lost per direction
//! in a 100 pps stream.
//!
//! `cargo bench --features testing --bench rotation_wire`
//! (QKD_BENCH_ROUNDS=N, default 200; QKD_BENCH_SESSIONS=N, default 100;
//! QKD_BENCH_BORINGTUN=1: gateway A's tunnel on boringtun-cli, which takes
//! each PSK by re-creating its peer, B's on wireguard-go).
//! Root: network namespaces.

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

/// Both gateways up, the first round done; `new_session` for both configs.
fn pair(new_session: bool) -> Option<Pair> {
    let mut p = match std::env::var("QKD_BENCH_BORINGTUN").as_deref() {
        Ok("1") => Pair::with_boringtun_at_a("qkbw", MANUAL)?,
        _ => Pair::new("qkbw", MANUAL)?,
    };
    p.wireguard_conf(&format!("new_session = {new_session}"));
    p.verbose = true;
    p.start_sim();
    p.start_both(&policy(1, true, ""));
    wait_for(Duration::from_secs(30), "first rotation", || {
        round_of(&p, B, 1)?;
        round_of(&p, A, 1)
    });
    Some(p)
}

/// One round by `qkdctl rotate`: A's and B's `round` lines once both ends
/// agree; with the wall clock (ns) just before qkdctl ran.
fn one_round(p: &Pair) -> (String, String, u128) {
    let epoch = p.installed(A);
    let t0 = wall_ns();
    let out = p.ctl_ok(A, &["rotate", "dr"]);
    assert!(out.contains("round started"), "{out}");
    let a = wait_for(Duration::from_secs(10), "rotation", || {
        round_of(p, A, epoch + 1)
    });
    let b = wait_for(Duration::from_secs(2), "B's round line", || {
        round_of(p, B, epoch + 1)
    });
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
    (a, b, t0)
}

fn wall_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// The latest handshake of `end`'s one peer, in ns of the wall clock, from
/// the UAPI (`wg show` has whole seconds only); boringtun lists the time
/// since, counted back from now here (0: no session).
fn handshake_ns(p: &Pair, end: usize) -> u128 {
    use std::io::{Read, Write};
    let path = format!("/var/run/wireguard/{}.sock", p.wg_if(end));
    let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
    s.write_all(b"get=1\n\n").unwrap();
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    while !reply.ends_with(b"\n\n") {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "UAPI closed");
        reply.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&reply);
    let get = |k: &str| -> u128 {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('=')?.parse().ok())
            .unwrap_or(0)
    };
    let listed = get("last_handshake_time_sec") * 1_000_000_000 + get("last_handshake_time_nsec");
    match text.contains("own_public_key=") && listed > 0 {
        true => wall_ns() - listed,
        false => listed,
    }
}

/// ICMP echo requests arriving at A over the tunnel, echo replies at B.
const COUNT_A: &str = "table inet qkbench {\n chain c {\n  type filter hook input priority -300;\n  iifname \"qkbw-wa\" icmp type echo-request counter\n }\n}\n";
const COUNT_B: &str = "table inet qkbench {\n chain c {\n  type filter hook input priority -300;\n  iifname \"qkbw-wb\" icmp type echo-reply counter\n }\n}\n";

fn counted(p: &Pair, end: usize) -> u64 {
    let out = p.ns_must(end, &["nft", "list", "table", "inet", "qkbench"]);
    out.split("packets ")
        .nth(1)
        .and_then(|r| r.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no counter in {out}"))
}

/// Issue 13 item 5: rounds with new_session on, each followed by a wait
/// for A's next handshake (polled every ms); its time less the install's
/// (qkdctl's start plus enc_keys_to_installed_us: an upper bound by the
/// sub-ms before enc_keys starts). Meanwhile B pings A at 100 pps; nft
/// counters in each gateway tell the direction a packet was lost in.
fn sessions(p: &Pair, rounds: usize) {
    p.nft(A, COUNT_A);
    p.nft(B, COUNT_B);
    let ping = p.ping_stream("0.01");
    std::thread::sleep(Duration::from_millis(500));
    let mut us = Vec::with_capacity(rounds);
    let t = Instant::now();
    for _ in 0..rounds {
        let before = handshake_ns(p, A);
        let (a, _, t0) = one_round(p);
        let installed = t0 + 1000 * stats::field(&a, "enc_keys_to_installed_us").unwrap() as u128;
        let hs = wait_for(Duration::from_secs(10), "a new handshake", || {
            // A millisecond's margin: boringtun's time of one session,
            // counted back from now, moves by microseconds between reads.
            let h = handshake_ns(p, A);
            (h > before + 1_000_000).then_some(h)
        });
        us.push((hs.saturating_sub(installed) / 1000) as u64);
        std::thread::sleep(Duration::from_millis(200));
    }
    let elapsed = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    let (_, sent) = ping.stop();
    let (at_a, at_b) = (counted(p, A), counted(p, B));
    us.sort_unstable();
    println!(
        "new session (new_session on), {rounds} rounds in {elapsed:.1}s: A's install -> A's \
         next handshake (UAPI ns): {}",
        stats::percentiles_ms(&us)
    );
    println!(
        "  100 pps B -> A across them: {sent} echo requests sent, {at_a} reached A \
         (slave -> master lost {}), {at_b} replies reached B (master -> slave lost {}, \
         of {at_a} A answered; the last in flight at the interrupt may count)",
        sent.saturating_sub(at_a),
        at_a.saturating_sub(at_b)
    );
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
    // Side by side: WireGuard's own cadence, then a new session per round
    // (the master's install then also re-creates its peer).
    for new_session in [false, true] {
        let Some(p) = pair(new_session) else {
            eprintln!("rotation_wire bench: no signify-openbsd or not root");
            return;
        };
        latency(&p, rounds, gap, new_session);
        if new_session {
            sessions(&p, env("QKD_BENCH_SESSIONS", 100) as usize);
        }
    }
}

fn latency(p: &Pair, rounds: usize, gap: Duration, new_session: bool) {
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
        let (a, b, _) = one_round(p);
        parts.add(A, &a);
        parts.add(B, &b);
    }
    let elapsed = t.elapsed().as_secs_f64();
    assert_eq!(p.psk(A), p.psk(B), "wg show: the PSKs differ");
    let failed = p.log(A).matches("event=key_rotation_failed ").count();
    println!(
        "rotation on the wire ({} WireGuard, nftables, qkdsim; new_session {new_session}), \
         enc_keys start -> PSK installed on both ends, {rounds} rounds in {elapsed:.1}s \
         ({failed} failed rounds):",
        common::pair::wg_backend(),
    );
    parts.print();
    let mut line = String::from("  CPU seconds over the rounds:");
    for ((name, pid), c0) in procs.iter().zip(&cpu0) {
        line += &format!(" {name} {:.2};", procfs::cpu_secs(*pid) - c0);
    }
    println!("{line}");
}
