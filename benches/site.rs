//! Every link locked at once, side by side (BENCHMARKS.md, issue 13 item
//! 3). Needs root and nft: a private network namespace (this thread moves
//! into it, so the backend's netlink reaches its nftables) holding qkdpfd's
//! table for N links, all open with their lockdown preloaded. Then, each
//! measured from the call to every link read back locked:
//!
//! - the site lock (`Firewall::lock_site`: two elements into set `site`,
//!   one netlink transaction whatever N), then the read-back of every link
//!   (`observe`), R rounds;
//! - the source lock of one QBER section that feeds half the links
//!   (`Firewall::lock_source`: two elements into set `src0`), then the
//!   read-back of every link (that half locked, the other open), R rounds;
//! - link by link, as the daemon locked every link before the site lock
//!   (the engine lost, a stop, `lockdown all`): each link's `apply` (its
//!   keys into the `locked_` sets, one transaction each) and its own
//!   read-back, once;
//! - every link's keys in one transaction (`nft -f`, what ending a site
//!   lock runs), once: one commit, but its size grows with N.
//!
//! Between rounds the sets are emptied again behind the backend's back, and
//! a full read-back (a listing) shows every link open before the next.
//!
//! `cargo bench --features testing --bench site` (QKD_BENCH_LINKS=a,b
//! default "100,1000,10000"; QKD_BENCH_ROUNDS=R default 20). Then a
//! reconcile tick's read-back of every link (`observe`) right after another
//! tool's change to its own table (an element into its set, `nft` run
//! beside us), against right after a change to ours (a chain added to it
//! and removed by turns): R rounds and at most 5. Last, a full listing of
//! the table read whole and then parsed, against parsed from nft's pipe as
//! it comes, and one netlink dump of every rule of the table digested per
//! chain, what the listing's read-back adds (R rounds each).

#[path = "common/knobs.rs"]
mod knobs;
#[path = "common/nft.rs"]
mod nft;
#[path = "common/stats.rs"]
mod stats;

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use qkdpfd::lock::Enforcement;
use qkdpfd::parent::fw::nft::netlink::{self, Change};
use qkdpfd::parent::fw::{self, Firewall, Observed};
use qkdpfd::ruleset::LinkTarget;
use qkdpfd::ruleset::nft::dispatch::{Kind, LinkKeys, SITE_SET};

const OPEN: &str = "ip saddr $peer4 udp sport $wg_port counter accept\niifname $wg_if accept\n";
const LOCKDOWN: &str = "counter drop\n";

fn link(i: usize) -> LinkTarget {
    LinkTarget {
        name: format!("l{i}"),
        wg_if: format!("wq{i}"),
        wg_port: 51820,
        rdomain: 0,
        udp_rdomain: 0,
        addrs4: vec![Ipv4Addr::from(0x0a40_0000 + i as u32)],
        addrs6: vec![],
        qber: "".into(),
    }
}

/// Empties the `locked_` sets, `site` and both sections' sets in one
/// transaction, behind the
/// backend's back: every link open again.
fn open_all(seq: &mut u32) {
    let sets: Vec<String> = Kind::ALL.iter().map(|k| k.locked_set()).collect();
    let mut changes: Vec<Change<'_>> = sets.iter().map(|s| Change::Flush(s)).collect();
    changes.push(Change::Flush(SITE_SET));
    changes.push(Change::Flush("src0"));
    changes.push(Change::Flush("src1"));
    *seq += 16;
    netlink::transact("qkdpfd", *seq, &changes, "open all").expect("open all");
}

/// Every link's state as the backend reads it back; panics unless all are `want`.
fn all_are(fw: &mut Box<dyn Firewall>, links: &[LinkTarget], want: &Observed) {
    let seen = fw.observe(links, None).expect("observe");
    let bad: Vec<_> = seen.iter().filter(|(_, r)| r.state != *want).collect();
    assert!(bad.is_empty(), "not {want}: {:?}", &bad[..bad.len().min(3)]);
}

/// The listing a full read-back parses, both ways in turn: nft's output
/// read whole, then parsed (before), and parsed from the pipe as it comes.
fn listing_both_ways(rounds: usize) {
    use qkdpfd::parent::fw::nft::readback;
    use qkdpfd::tool::{TOOL_TIMEOUT, Tool};
    let tool = Tool::new(Path::new("nft"), &["-j", "list", "table", "inet", "qkdpfd"]);
    let (mut whole, mut piped) = (Vec::new(), Vec::new());
    let mut size = 0;
    for _ in 0..rounds {
        let t = Instant::now();
        let out = tool.run("list", "", TOOL_TIMEOUT).expect("nft list");
        let a = readback::parse(&out.stdout).expect("parse");
        whole.push(micros(t));
        size = out.stdout.len();
        let t = Instant::now();
        let (b, _) = tool
            .run_reading("list", "", TOOL_TIMEOUT, readback::parse_reader)
            .expect("nft list");
        piped.push(micros(t));
        // The same chains and maps both ways (the heartbeat's element
        // lists its expiry, which moves between the two listings).
        let b = b.expect("parse");
        assert!(a.chains == b.chains && a.maps == b.maps && a.hooks == b.hooks);
    }
    whole.sort_unstable();
    piped.sort_unstable();
    println!(
        "  a full listing ({} KiB of JSON), read whole then parsed: {}",
        size / 1024,
        stats::percentiles_ms(&whole)
    );
    println!(
        "  a full listing, parsed from nft's pipe as it comes:      {}",
        stats::percentiles_ms(&piped)
    );
    // What the listing's read-back adds to compare each link chain with
    // what was first read after our load: one dump of the table's rules.
    let mut dumps = Vec::new();
    let mut chains = 0;
    for r in 0..rounds {
        let t = Instant::now();
        let seen = qkdpfd::parent::fw::nft::chain::contents("qkdpfd", 9_000_000 + 4 * r as u32)
            .expect("rules dump");
        dumps.push(micros(t));
        chains = seen.len();
    }
    dumps.sort_unstable();
    println!(
        "  every rule of the table dumped and digested ({chains} chains with rules): {}",
        stats::percentiles_ms(&dumps)
    );
}

/// A tick's read-back after another table's change, and after one to ours.
fn tick_after_changes(fw: &mut Box<dyn Firewall>, links: &[LinkTarget], rounds: usize) {
    let nft = |args: &str| {
        let ok = Command::new("nft").args(args.split_whitespace()).status();
        assert!(ok.is_ok_and(|s| s.success()), "nft {args}");
    };
    nft("add table inet other");
    nft("add set inet other banned { type ipv4_addr ; }");
    all_are(fw, links, &Observed::Open);
    let (mut other, mut ours) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        nft(&format!(
            "add element inet other banned {{ 192.0.2.{} }}",
            i % 250 + 1
        ));
        let t = Instant::now();
        all_are(fw, links, &Observed::Open);
        other.push(micros(t));
    }
    for i in 0..rounds.min(5) {
        match i % 2 {
            0 => nft("add chain inet qkdpfd touched"),
            _ => nft("delete chain inet qkdpfd touched"),
        }
        let t = Instant::now();
        all_are(fw, links, &Observed::Open);
        ours.push(micros(t));
    }
    let _ = Command::new("nft")
        .args(["delete", "table", "inet", "other"])
        .status();
    let _ = Command::new("nft")
        .args(["delete", "chain", "inet", "qkdpfd", "touched"])
        .status();
    other.sort_unstable();
    ours.sort_unstable();
    println!(
        "  tick read-back after another table's change: {}",
        stats::percentiles_ms(&other)
    );
    println!(
        "  tick read-back after a change to ours (listed): {}",
        stats::percentiles_ms(&ours)
    );
}

fn micros(t: Instant) -> u64 {
    t.elapsed().as_micros() as u64
}

fn main() {
    if !knobs::root("site", "a network namespace, nftables") {
        return;
    }
    let sizes = knobs::sizes_or("QKD_BENCH_LINKS", "100,1000,10000");
    let rounds = knobs::usize_or("QKD_BENCH_ROUNDS", 20).max(1);
    let ns = format!("qkdsite{}", std::process::id());
    let ok = Command::new("ip").args(["netns", "add", &ns]).status();
    assert!(ok.is_ok_and(|s| s.success()), "ip netns add");
    nft::enter_netns(&ns);
    let conf = nft::nft_conf();
    let tmp = std::env::temp_dir();
    let mut seq = 5_000_000u32;
    for n in sizes {
        // Two QBER sections: "a" feeds the first half, "b" the rest.
        let links: Vec<LinkTarget> = (0..n)
            .map(|i| LinkTarget {
                qber: if i < n / 2 { "a" } else { "b" }.into(),
                ..link(i)
            })
            .collect();
        let mut fw = fw::new(&conf, Path::new(&tmp));
        fw.init(&links).expect("init");
        fw.keep_alive(Some(Duration::from_secs(600)))
            .expect("alive");
        // Every link opened as the parent opens many: a slow open loads the
        // open text into up to 2,048 locked links' chains at a time, and
        // those then open by the sets alone.
        let all: Vec<&LinkTarget> = links.iter().collect();
        for r in fw.open_many(&all, OPEN) {
            r.expect("open");
        }
        for l in &links {
            fw.stage(l, Enforcement::Lockdown, LOCKDOWN).expect("stage");
        }
        // A settle loads a bounded number of links: as the parent's loop,
        // turn after turn until none is left.
        loop {
            assert!(fw.settle().is_empty(), "stage");
            if !fw.settling() {
                break;
            }
        }
        all_are(&mut fw, &links, &Observed::Open);
        println!("{n} links:");

        let (mut commit, mut proven) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let t = Instant::now();
            assert!(
                fw.lock_site(&[], None).expect("site lock"),
                "nft has a site lock"
            );
            commit.push(micros(t));
            all_are(&mut fw, &links, &Observed::Locked);
            proven.push(micros(t));
            open_all(&mut seq);
            all_are(&mut fw, &links, &Observed::Open);
        }
        commit.sort_unstable();
        proven.sort_unstable();
        println!(
            "  site lock, the transaction ({rounds} rounds): {}",
            stats::percentiles_ms(&commit)
        );
        println!(
            "  site lock, every link read back locked:     {}",
            stats::percentiles_ms(&proven)
        );

        // One section's links (half of them) by its source lock.
        let (mut commit, mut proven) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let t = Instant::now();
            assert!(
                fw.lock_source("a", &[], None).expect("source lock"),
                "a set"
            );
            commit.push(micros(t));
            let seen = fw.observe(&links, None).expect("observe");
            proven.push(micros(t));
            for l in &links {
                let want = match &*l.qber == "a" {
                    true => Observed::Locked,
                    false => Observed::Open,
                };
                assert_eq!(seen[&l.name].state, want, "{}", l.name);
            }
            open_all(&mut seq);
            all_are(&mut fw, &links, &Observed::Open);
        }
        commit.sort_unstable();
        proven.sort_unstable();
        println!(
            "  source lock of {} links, the transaction: {}",
            n / 2,
            stats::percentiles_ms(&commit)
        );
        println!(
            "  source lock, every link read back:          {}",
            stats::percentiles_ms(&proven)
        );

        // Link by link, each flip read back as the daemon does.
        let t = Instant::now();
        let mut flips = Vec::with_capacity(n);
        for l in &links {
            let f = Instant::now();
            fw.apply(l, Enforcement::Lockdown, LOCKDOWN)
                .expect("lockdown");
            let rb = fw.observe(&links, Some(&l.name)).expect("read back");
            assert_eq!(rb[&l.name].state, Observed::Locked, "{}", l.name);
            flips.push(micros(f));
        }
        let total = t.elapsed();
        all_are(&mut fw, &links, &Observed::Locked);
        flips.sort_unstable();
        println!(
            "  link by link: every link locked and read back {:.3} s; one link {}",
            total.as_secs_f64(),
            stats::percentiles_ms(&flips)
        );
        open_all(&mut seq);
        all_are(&mut fw, &links, &Observed::Open);

        // Every key in one transaction: one commit, N links' elements.
        let keys: Vec<LinkKeys> = links.iter().map(LinkKeys::all).collect();
        let script = qkdpfd::ruleset::nft::lock_new_keys("qkdpfd", &keys);
        let t = Instant::now();
        let status = nft::spawn_nft(&script).wait().expect("nft");
        let one = t.elapsed();
        assert!(status.success(), "nft -f refused the keys");
        all_are(&mut fw, &links, &Observed::Locked);
        println!(
            "  every link's keys in one nft -f: {:.3} s ({} KiB of script)",
            one.as_secs_f64(),
            script.len() / 1024
        );
        open_all(&mut seq);
        tick_after_changes(&mut fw, &links, rounds);
        listing_both_ways(rounds);
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", "qkdpfd"])
            .status();
    }
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
}
