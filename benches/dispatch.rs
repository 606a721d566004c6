//! Dispatch at scale, side by side (BENCHMARKS.md): what N links cost the
//! gateway in nftables, with the table-wide maps against the per-link
//! layout that came before them (its text is rebuilt here, as it was).
//!
//! For each N: a private network namespace A (this thread moves into it,
//! so the backend's netlink reaches its nftables) joined to B by a veth
//! pair; N links whose peers and interfaces are not on it, so B's pings
//! to A are unrelated traffic that every base chain must look at and let
//! pass. Measured, one after the other in the same run:
//!
//! - ping RTT B → A (ping -i 0.002, per-packet times) with no table, with
//!   the per-link layout loaded, with the backend's table loaded;
//! - loading each table: wall time and the nft process's peak RSS (the
//!   per-link layout with `nft -f`, ours through `Firewall::init`);
//! - lockdown and open of one link through the backend's `apply`, every
//!   link in turn of 50 with its lockdown preloaded, 200 flips each way.
//!
//! `cargo bench --features testing --bench dispatch` (QKD_BENCH_LINKS=a,b
//! default "100,1000,10000"; QKD_BENCH_LEGACY=0 skips the per-link layout,
//! which takes over a minute at 10,000).

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
use qkdpfd::parent::fw;
use qkdpfd::parent::fw::nft::netlink::{self, Change};
use qkdpfd::ruleset::LinkTarget;
use qkdpfd::ruleset::nft::dispatch::{Kind, LinkKeys};

fn link(i: usize) -> LinkTarget {
    LinkTarget {
        name: format!("l{i}"),
        wg_if: format!("wq{i}"),
        wg_port: 51820,
        rdomain: 0,
        udp_rdomain: 0,
        addrs4: vec![Ipv4Addr::new(
            198,
            18 + (i / 62500) as u8,
            (i / 250 % 250) as u8,
            (i % 250 + 1) as u8,
        )],
        addrs6: vec![],
        qber: "".into(),
    }
}

/// The per-link layout before the maps: three sets and two chains per
/// link, and in the base chains a jump and a drop per protected match
/// (eight matches per link), as `ruleset::nft::skeleton` wrote it.
fn legacy_table(links: &[LinkTarget]) -> String {
    let t = "qkdold";
    let mut s =
        format!("add table inet {t}\nadd set inet {t} alive {{ type nf_proto; flags timeout; }}\n");
    for hook in ["input", "forward", "output"] {
        s.push_str(&format!(
            "add chain inet {t} {hook} {{ type filter hook {hook} priority filter - 10; policy accept; }}\n"
        ));
    }
    for l in links {
        let n = &l.name;
        s.push_str(&format!(
            "add chain inet {t} link_{n}\nadd chain inet {t} lock_{n}\n\
             add set inet {t} locked_{n} {{ type nf_proto; }}\n\
             add set inet {t} peer4_{n} {{ type ipv4_addr; }}\n\
             add element inet {t} peer4_{n} {{ {} }}\n\
             add set inet {t} peer6_{n} {{ type ipv6_addr; }}\n",
            l.addrs4[0]
        ));
    }
    for l in links {
        let (n, p, i) = (&l.name, l.wg_port, &l.wg_if);
        for (hook, m) in [
            ("input", format!("ip saddr @peer4_{n} udp sport {p}")),
            ("input", format!("ip6 saddr @peer6_{n} udp sport {p}")),
            ("input", format!("iifname \"{i}\"")),
            ("output", format!("ip daddr @peer4_{n} udp dport {p}")),
            ("output", format!("ip6 daddr @peer6_{n} udp dport {p}")),
            ("output", format!("oifname \"{i}\"")),
            ("forward", format!("iifname \"{i}\"")),
            ("forward", format!("oifname \"{i}\"")),
        ] {
            s.push_str(&format!(
                "add rule inet {t} {hook} {m} meta nfproto @alive jump link_{n}\n\
                 add rule inet {t} {hook} {m} drop\n"
            ));
        }
    }
    s
}

/// Runs `nft -f -` on `script`; wall seconds and the process's peak RSS
/// (wait4 reaps the child: std's wait would not give its rusage).
#[allow(clippy::zombie_processes)]
fn nft_load(script: &str) -> (f64, u64) {
    let t = Instant::now();
    let c = nft::spawn_nft(script);
    let (status, rss) = wait_rss(c.id());
    assert!(status == 0, "nft -f refused the table");
    (t.elapsed().as_secs_f64(), rss)
}

/// Waits for child `pid`: its exit status and peak RSS in KiB.
fn wait_rss(pid: u32) -> (i32, u64) {
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to fill.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child with valid pointers.
    let rc = unsafe { libc::wait4(pid as i32, &mut status, 0, &mut ru) };
    assert_eq!(rc, pid as i32, "wait4: {}", std::io::Error::last_os_error());
    (status, ru.ru_maxrss as u64)
}

/// Per-packet RTTs (µs) of `count` pings from namespace `from` to `addr`.
fn rtts(from: &str, addr: &str, count: usize) -> Vec<u64> {
    let out = Command::new("ip")
        .args(["netns", "exec", from, "ping", "-n", "-i", "0.002", "-c"])
        .arg(count.to_string())
        .arg(addr)
        .output()
        .expect("ping");
    let mut v: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        .map(|ms| (ms * 1000.0) as u64)
        .collect();
    assert!(
        v.len() * 10 >= count * 9,
        "pings lost: {} of {count}",
        count - v.len()
    );
    v.sort_unstable();
    v
}

fn sh(args: &[&str]) {
    let ok = Command::new(args[0])
        .args(&args[1..])
        .status()
        .unwrap()
        .success();
    assert!(ok, "{args:?}");
}

fn main() {
    if !knobs::root("dispatch", "network namespaces, nftables") {
        return;
    }
    let sizes = knobs::sizes_or("QKD_BENCH_LINKS", "100,1000,10000");
    let legacy = std::env::var("QKD_BENCH_LEGACY").map_or(true, |v| v != "0");
    let id = std::process::id();
    let (a, b) = (format!("qkddisa{id}"), format!("qkddisb{id}"));
    sh(&["ip", "netns", "add", &a]);
    sh(&["ip", "netns", "add", &b]);
    sh(&[
        "ip", "link", "add", "qdisa", "netns", &a, "type", "veth", "peer", "name", "qdisb",
        "netns", &b,
    ]);
    for (ns, dev, addr) in [(&a, "qdisa", "10.98.0.1/24"), (&b, "qdisb", "10.98.0.2/24")] {
        sh(&["ip", "-n", ns, "addr", "add", addr, "dev", dev]);
        sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    nft::enter_netns(&a);
    let pings = 1000;
    let base = rtts(&b, "10.98.0.1", pings);
    println!(
        "dispatch bench: unrelated ping B -> A, no table: {}",
        stats::percentiles_ms(&base)
    );
    let conf = nft::nft_conf();
    let tmp = std::env::temp_dir();
    for n in sizes {
        let links: Vec<LinkTarget> = (0..n).map(link).collect();
        println!("{n} links:");
        if legacy {
            let (secs, rss) = nft_load(&legacy_table(&links));
            println!(
                "  per-link layout: nft -f {secs:.2} s, nft peak RSS {:.0} MiB",
                rss as f64 / 1024.0
            );
            let r = rtts(&b, "10.98.0.1", pings);
            println!(
                "  per-link layout: unrelated ping {}",
                stats::percentiles_ms(&r)
            );
            sh(&["nft", "delete", "table", "inet", "qkdold"]);
        }
        let (secs, rss) = nft_load(&qkdpfd::ruleset::nft::skeleton("qkdpfd", &links));
        println!(
            "  maps: nft -f of the skeleton {secs:.2} s, nft peak RSS {:.0} MiB",
            rss as f64 / 1024.0
        );
        sh(&["nft", "delete", "table", "inet", "qkdpfd"]);
        let mut fw = fw::new(&conf, Path::new(&tmp));
        let t = Instant::now();
        fw.init(&links).expect("init");
        println!(
            "  maps: the backend's init (maps read over netlink, skeleton and new keys by nft -f) {:.2} s",
            t.elapsed().as_secs_f64()
        );
        fw.keep_alive(Some(std::time::Duration::from_secs(60)))
            .expect("alive");
        let r = rtts(&b, "10.98.0.1", pings);
        println!("  maps: unrelated ping {}", stats::percentiles_ms(&r));
        // Flips: 50 links opened with their lockdown preloaded.
        let some: Vec<&LinkTarget> = links.iter().step_by((n / 50).max(1)).take(50).collect();
        for l in &some {
            fw.apply(l, Enforcement::Open, "accept").expect("open");
            fw.stage(l, Enforcement::Lockdown, "counter drop")
                .expect("stage");
        }
        assert!(fw.settle().is_empty(), "stage");
        let (mut lock, mut open) = (Vec::new(), Vec::new());
        for f in 0..200 {
            let l = some[f % some.len()];
            let t = Instant::now();
            fw.apply(l, Enforcement::Lockdown, "counter drop").unwrap();
            lock.push(t.elapsed().as_micros() as u64);
            let t = Instant::now();
            fw.apply(l, Enforcement::Open, "accept").unwrap();
            open.push(t.elapsed().as_micros() as u64);
        }
        // The bare transactions, the kernel's share: the keys added, then
        // added and deleted.
        let (mut tx_lock, mut tx_open) = (Vec::new(), Vec::new());
        for f in 0..200 {
            let keys = LinkKeys::all(some[f % some.len()]);
            let (v4, wg) = (keys.bytes(Kind::V4), keys.bytes(Kind::If));
            let v4: Vec<&[u8]> = v4.iter().map(Vec::as_slice).collect();
            let wg: Vec<&[u8]> = wg.iter().map(Vec::as_slice).collect();
            let (s4, sif) = (Kind::V4.locked_set(), Kind::If.locked_set());
            let add = [Change::Add(&s4, &v4, None), Change::Add(&sif, &wg, None)];
            let seq = 2_000_000 + 16 * f as u32;
            let t = Instant::now();
            netlink::transact("qkdpfd", seq, &add, "lock").unwrap();
            tx_lock.push(t.elapsed().as_micros() as u64);
            let mut open = add.to_vec();
            open.extend([Change::Delete(&s4, &v4), Change::Delete(&sif, &wg)]);
            let t = Instant::now();
            netlink::transact("qkdpfd", seq + 8, &open, "open").unwrap();
            tx_open.push(t.elapsed().as_micros() as u64);
        }
        for v in [&mut lock, &mut open, &mut tx_lock, &mut tx_open] {
            v.sort_unstable();
        }
        println!(
            "  maps: lockdown, the transaction alone {}",
            stats::percentiles_ms(&tx_lock)
        );
        println!(
            "  maps: open, the transaction alone     {}",
            stats::percentiles_ms(&tx_open)
        );
        println!("  maps: lockdown (apply) {}", stats::percentiles_ms(&lock));
        println!("  maps: open (apply)     {}", stats::percentiles_ms(&open));
        sh(&["nft", "delete", "table", "inet", "qkdpfd"]);
    }
    let _ = Command::new("ip").args(["netns", "del", &a]).status();
    let _ = Command::new("ip").args(["netns", "del", &b]).status();
}
