//! Flip latency at the kernel, side by side (BENCHMARKS.md). Needs root
//! and nft: a private network namespace (this thread moves into it, so the
//! backend's netlink reaches its nftables) holding qkdpfd's table for N
//! links, each open with its lockdown preloaded. Then, F times, one link
//! picked in turn is flipped to lockdown and back to open by each path:
//!
//! - exec (the path before set-element flips): `nft -f -` with
//!   `insert rule ... link_<l> goto lock_<l>` for the lockdown — a new goto,
//!   which makes the kernel re-validate the table — and the link chain
//!   replaced whole for the open;
//! - netlink: the nftables backend's `apply` — for the lockdown the link's
//!   keys added to the `locked_` sets, for the open taken out, each one
//!   netlink transaction; and the bare transaction (`netlink::transact`:
//!   send, kernel commit, ACK), the kernel's share of it.
//!
//! Each flip's wall time is measured around the call; the read-back that
//! follows a flip in the daemon is not included (the daemon bench
//! `lockdown` measures sample -> commit and sample -> read back).
//!
//! `cargo bench --features testing --bench flip` (QKD_BENCH_LINKS=N,
//! QKD_BENCH_FLIPS=F; defaults 100 and 200). QKD_BENCH_IDLE_CHAINS=C adds
//! a table of C empty chains that nothing jumps to: every nf_tables commit
//! visits every chain of every table in the namespace (step 2 of
//! `nf_tables_commit`), so this shows what a flip pays for chains alone.
//! QKD_BENCH_COLD_MIB=M writes over M MiB of memory before each bare
//! transaction, so that it meets the chains out of the CPU's caches, as a
//! daemon's flip does between other work; by default each follows the
//! nft runs of the same loop, which have just walked the whole table.

#[path = "common/knobs.rs"]
mod knobs;
#[path = "common/nft.rs"]
mod nft;
#[path = "common/stats.rs"]
mod stats;

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use qkdpfd::lock::Enforcement;
use qkdpfd::parent::fw::{self, nft::netlink};
use qkdpfd::ruleset::LinkTarget;
use qkdpfd::ruleset::nft::dispatch::{Kind, LinkKeys};
use qkdpfd::ruleset::nft::{flip_script, render_statements};

const OPEN: &str = "ip saddr $peer4 udp sport $wg_port counter accept\niifname $wg_if accept\n\
                    oifname $wg_if accept\n";
const LOCKDOWN: &str = "counter drop\n";

fn nft_f(script: &str) {
    let ok = nft::spawn_nft(script).wait().unwrap().success();
    assert!(ok, "nft -f refused:\n{script}");
}

fn link(i: usize) -> LinkTarget {
    LinkTarget {
        name: format!("l{i}"),
        wg_if: format!("wg{i}"),
        wg_port: 51820,
        rdomain: 0,
        udp_rdomain: 0,
        addrs4: vec![Ipv4Addr::new(198, 18, (i / 250) as u8, (i % 250 + 1) as u8)],
        addrs6: vec![],
        qber: "".into(),
    }
}

fn main() {
    if !knobs::root("flip", "network namespace, nftables") {
        return;
    }
    let n = knobs::usize_or("QKD_BENCH_LINKS", 100);
    let flips = knobs::usize_or("QKD_BENCH_FLIPS", 200);
    let ns = format!("qkdflip{}", std::process::id());
    assert!(
        Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .unwrap()
            .success()
    );
    nft::enter_netns(&ns);

    let conf = nft::nft_conf();
    let tmp = std::env::temp_dir();
    let mut fw = fw::new(&conf, Path::new(&tmp));
    let links: Vec<LinkTarget> = (0..n).map(link).collect();
    let t = Instant::now();
    fw.init(&links).expect("init");
    for l in &links {
        fw.apply(l, Enforcement::Open, OPEN).expect("open");
        fw.stage(l, Enforcement::Lockdown, LOCKDOWN).expect("stage");
    }
    // A settle loads a bounded number of links: turn after turn, as the
    // parent's loop, until none is left.
    loop {
        assert!(fw.settle().is_empty(), "stage");
        if !fw.settling() {
            break;
        }
    }
    let idle = knobs::usize_or("QKD_BENCH_IDLE_CHAINS", 0);
    if idle > 0 {
        let chains: String = (0..idle)
            .map(|i| format!("  chain c{i} {{\n  }}\n"))
            .collect();
        nft_f(&format!("table inet idle {{\n{chains}}}\n"));
        println!("flip bench: {idle} empty chains in table inet idle beside qkdpfd's");
    }
    println!(
        "flip bench: {n} links, table loaded and every link opened in {:.1} s; {flips} flips each way per path",
        t.elapsed().as_secs_f64()
    );

    let mut cold = vec![0u8; knobs::usize_or("QKD_BENCH_COLD_MIB", 0) << 20];
    let mut evict = || {
        for b in cold.iter_mut().step_by(64) {
            *b = b.wrapping_add(1);
        }
        std::hint::black_box(&cold);
    };
    let (mut exec_lock, mut exec_open) = (Vec::new(), Vec::new());
    let (mut nl_lock, mut nl_open) = (Vec::new(), Vec::new());
    let (mut tx_lock, mut tx_open) = (Vec::new(), Vec::new());
    let us = |t: Instant| t.elapsed().as_micros() as u64;
    for f in 0..flips {
        let l = &links[f % n];
        let name = &l.name;
        // exec: a goto inserted, then the chain replaced whole.
        let t = Instant::now();
        nft_f(&format!(
            "insert rule inet qkdpfd link_{name} goto lock_{name}\n"
        ));
        exec_lock.push(us(t));
        let stmts = render_statements(l, OPEN).unwrap();
        let t = Instant::now();
        nft_f(&flip_script("qkdpfd", l, &LinkKeys::all(l), &stmts));
        exec_open.push(us(t));
        // netlink, through the backend (it re-learns the chain it loaded).
        fw.apply(l, Enforcement::Open, OPEN).unwrap();
        let t = Instant::now();
        fw.apply(l, Enforcement::Lockdown, LOCKDOWN).unwrap();
        nl_lock.push(us(t));
        let t = Instant::now();
        fw.apply(l, Enforcement::Open, OPEN).unwrap();
        nl_open.push(us(t));
        // The bare transactions.
        let keys = LinkKeys::all(l);
        let (v4, wg) = (keys.bytes(Kind::V4), keys.bytes(Kind::If));
        let v4: Vec<&[u8]> = v4.iter().map(Vec::as_slice).collect();
        let wg: Vec<&[u8]> = wg.iter().map(Vec::as_slice).collect();
        let (s4, sif) = (Kind::V4.locked_set(), Kind::If.locked_set());
        let add = [
            netlink::Change::Add(&s4, &v4, None),
            netlink::Change::Add(&sif, &wg, None),
        ];
        let seq = 1_000_000 + 16 * f as u32;
        evict();
        let t = Instant::now();
        netlink::transact("qkdpfd", seq, &add, "lock").unwrap();
        tx_lock.push(us(t));
        let mut open = add.to_vec();
        open.push(netlink::Change::Delete(&s4, &v4));
        open.push(netlink::Change::Delete(&sif, &wg));
        evict();
        let t = Instant::now();
        netlink::transact("qkdpfd", seq + 8, &open, "open").unwrap();
        tx_open.push(us(t));
    }
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    let p99 = |v: &Vec<u64>| v[((v.len() as f64 - 1.0) * 0.99).round() as usize].max(1);
    for (what, v) in [
        ("lockdown, exec (nft -f, insert goto)", &mut exec_lock),
        ("lockdown, netlink (apply)", &mut nl_lock),
        ("lockdown, netlink transaction alone", &mut tx_lock),
        ("open, exec (nft -f, chain replaced)", &mut exec_open),
        ("open, netlink (apply)", &mut nl_open),
        ("open, netlink transaction alone", &mut tx_open),
    ] {
        v.sort_unstable();
        println!("  {what:<40} {}", stats::percentiles_ms(v));
    }
    println!(
        "  p99 ratio exec / netlink: lockdown {:.0}x, open {:.1}x",
        p99(&exec_lock) as f64 / p99(&nl_lock) as f64,
        p99(&exec_open) as f64 / p99(&nl_open) as f64
    );
}
