//! The nftables backend's loads of many links in one nft run, against real
//! nftables (as tests/fw_nft.rs: a network namespace per test, nft reached
//! through a wrapper that also logs each run's arguments to `calls`). Needs
//! root: without it the tests are skipped loudly, unless CI=true.

#[path = "common/nft.rs"]
#[allow(dead_code)]
mod nft_listing;

#[path = "fw_nft/rig.rs"]
#[allow(dead_code)]
mod rig;

use std::path::Path;

use qkdpfd::lock::Enforcement;
use qkdpfd::parent::fw::Observed;
use qkdpfd::ruleset::LinkTarget;
use rig::*;

fn links(n: u8) -> Vec<LinkTarget> {
    (0..n)
        .map(|i| link(&format!("l{i}"), &format!("wg{i}"), [198, 51, 100, i + 1]))
        .collect()
}

/// How many nft runs (the wrapper's log) had arguments starting `first`.
fn runs(r: &Rig, first: &str) -> usize {
    std::fs::read_to_string(r._dir.path().join("calls"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(first))
        .count()
}

/// `n` links m0, m1, ... on interfaces wm0, wm1, ..., each its own address.
fn many(n: u32) -> Vec<LinkTarget> {
    (0..n)
        .map(|i| {
            let addr = [198, 18, (i / 250) as u8, (i % 250 + 1) as u8];
            link(&format!("m{i}"), &format!("wm{i}"), addr)
        })
        .collect()
}

/// How many lines of the table's listing are exactly `rule` (a lone
/// `accept` line is the open text in a link chain).
fn rule_count(r: &Rig, rule: &str) -> usize {
    let table = r.ns.nft("list table inet qkdpfd");
    table.lines().filter(|l| l.trim() == rule).count()
}

const OPEN: &str = "ip saddr $peer4 accept\niifname $wg_if accept\n";

/// The first slow open loads the same text into every locked link's open
/// chain in its run: those chains are not taken while their keys are in
/// the locked_ sets (the links stay locked), and each later open of that
/// text is a netlink flip, no nft run. An open link's chain is left alone.
#[test]
fn a_slow_open_preloads_the_locked_links_open_chains() {
    if !root_or_skip("a_slow_open_preloads_the_locked_links_open_chains") {
        return;
    }
    let mut r = rig();
    let ls = links(5);
    r.fw.init(&ls).unwrap();
    r.fw.apply(&ls[4], Enforcement::Open, "accept").unwrap();
    let before = runs(&r, "-f");
    r.fw.apply(&ls[0], Enforcement::Open, OPEN).unwrap();
    assert_eq!(runs(&r, "-f") - before, 1, "one run for the open");
    for l in &ls[1..4] {
        assert_eq!(
            rules(&r.ns, &format!("link_{}", l.name)),
            [
                format!("ip saddr {} accept", l.addrs4[0]),
                format!("iifname \"{}\" accept", l.wg_if)
            ]
        );
        // Its IPv4 address and interface (the IPv6 address all share is l0's).
        assert_eq!(keys_locked(&r.ns, l), 2, "{} still locked", l.name);
        assert_eq!(state(&mut r, &ls, &l.name), Observed::Locked);
    }
    assert_eq!(rules(&r.ns, "link_l4"), ["accept"], "an open link's chain");
    assert_eq!(keys_locked(&r.ns, &ls[4]), 0);
    for l in &ls[1..4] {
        r.fw.apply(l, Enforcement::Open, OPEN).unwrap();
        assert_eq!(keys_locked(&r.ns, l), 0);
        assert_eq!(state(&mut r, &ls, &l.name), Observed::Open);
    }
    assert_eq!(runs(&r, "-f") - before, 1, "the other opens ran no nft");
    // Another text for an open link: its own load only.
    r.fw.apply(&ls[4], Enforcement::Open, OPEN).unwrap();
    assert_eq!(runs(&r, "-f") - before, 2);
    assert_eq!(state(&mut r, &ls, "l4"), Observed::Open);
}

/// `stage` defers; `settle` loads every open link's lockdown chain in one
/// run, skips a link whose keys are locked by now (its lockdown chain is
/// in force), and when one text is refused, loads the others alone and
/// names only the refused one.
#[test]
fn settle_stages_every_open_link_in_one_run() {
    if !root_or_skip("settle_stages_every_open_link_in_one_run") {
        return;
    }
    let mut r = rig();
    let ls = links(4);
    r.fw.init(&ls).unwrap();
    for l in &ls {
        r.fw.apply(l, Enforcement::Open, "accept").unwrap();
    }
    let before = runs(&r, "-f");
    for l in &ls[..3] {
        r.fw.stage(l, Enforcement::Lockdown, "counter drop")
            .unwrap();
    }
    assert_eq!(runs(&r, "-f"), before, "stage alone runs nothing");
    // l2's keys locked behind the backend's back: its chain is in force.
    r.ns.nft("add element inet qkdpfd locked_if { \"wg2\" }");
    assert!(r.fw.settle().is_empty());
    assert_eq!(runs(&r, "-f") - before, 1);
    for l in &ls[..2] {
        assert_eq!(
            rules(&r.ns, &format!("lock_{}", l.name)),
            ["counter packets 0 bytes 0 drop"]
        );
    }
    assert_eq!(rules(&r.ns, "lock_l2"), Vec::<String>::new());
    // Staged: the lockdown is a flip, no nft run.
    r.fw.apply(&ls[0], Enforcement::Lockdown, "counter drop")
        .unwrap();
    assert_eq!(runs(&r, "-f") - before, 1);
    assert_eq!(state(&mut r, &ls, "l0"), Observed::Locked);
    // One refused by nft (not by qkdpfd's own checks).
    r.fw.stage(&ls[1], Enforcement::Lockdown, "udp dport 70000 drop")
        .unwrap();
    r.fw.stage(&ls[3], Enforcement::Lockdown, "counter drop")
        .unwrap();
    let failed = r.fw.settle();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].0, "l1");
    assert!(failed[0].1.to_string().contains("70000"), "{}", failed[0].1);
    assert_eq!(rules(&r.ns, "lock_l3"), ["counter packets 0 bytes 0 drop"]);
    assert_eq!(
        rules(&r.ns, "lock_l1"),
        ["counter packets 0 bytes 0 drop"],
        "as before"
    );
    assert!(r.fw.settle().is_empty(), "nothing left");
}
/// A slow open takes at most 2,048 locked links' open chains along (those
/// after it in name order first), and a settle loads at most 2,048 links'
/// lockdown chains and says it has more (`settling`): the parent's loop
/// reads the engine's reports between loads, so a QBER lockdown waits
/// behind one bounded load, not one for every link. The next settle loads
/// the rest (copies of the rules compiled for the first: no nft run);
/// every link's lockdown is then a flip (no nft run), read back locked.
#[test]
fn a_settle_loads_a_bounded_number_of_links_a_run() {
    if !root_or_skip("a_settle_loads_a_bounded_number_of_links_a_run") {
        return;
    }
    let mut r = rig();
    let n = 2100u32;
    let ls = many(n);
    r.fw.init(&ls).unwrap();
    let start = runs(&r, "-f");
    r.fw.apply(&ls[100], Enforcement::Open, "accept").unwrap();
    // The slow open takes 2,048 locked links' open chains along, no more:
    // those after it in name order, then round to it.
    assert_eq!(runs(&r, "-f") - start, 1);
    assert_eq!(rule_count(&r, "accept"), 1 + 2048);
    let mut names: Vec<&str> = ls.iter().map(|l| l.name.as_str()).collect();
    names.sort_unstable();
    let at = names.iter().position(|n| *n == "m100").unwrap();
    let after = |k: usize| format!("link_{}", names[(at + k) % names.len()]);
    for (k, loaded) in [(1, true), (2048, true), (2049, false), (2099, false)] {
        let chain = after(k);
        assert_eq!(rules(&r.ns, &chain) == ["accept"], loaded, "{chain}");
    }
    let rest: Vec<&LinkTarget> = ls.iter().filter(|l| l.name != "m100").collect();
    let opened = r.fw.open_many(&rest, "accept");
    assert!(opened.iter().all(Result::is_ok));
    // The first link beyond them took the rest along, copies of the rules
    // compiled for the first run: no run more.
    assert_eq!(runs(&r, "-f") - start, 1);
    assert_eq!(rule_count(&r, "accept"), n as usize);
    for l in &ls {
        r.fw.stage(l, Enforcement::Lockdown, "counter drop")
            .unwrap();
    }
    assert!(!r.fw.settling(), "nothing loaded yet");
    let before = runs(&r, "-f");
    assert!(r.fw.settle().is_empty());
    assert_eq!(runs(&r, "-f") - before, 1);
    assert!(r.fw.settling(), "more than one run's worth");
    // The bundle's rule, once in each loaded lockdown chain and nowhere else.
    let loaded = |r: &Rig| rule_count(r, "counter packets 0 bytes 0 drop");
    assert_eq!(loaded(&r), 2048);
    assert!(r.fw.settle().is_empty());
    assert_eq!(
        runs(&r, "-f") - before,
        1,
        "copies of the rules compiled lately"
    );
    assert!(!r.fw.settling(), "all loaded");
    assert_eq!(loaded(&r), n as usize);
    assert!(r.fw.settle().is_empty(), "nothing left");
    assert_eq!(runs(&r, "-f") - before, 1);
    for l in [&ls[0], &ls[n as usize - 1]] {
        r.fw.apply(l, Enforcement::Lockdown, "counter drop")
            .unwrap();
        assert_eq!(state(&mut r, &ls, &l.name), Observed::Locked);
    }
    assert_eq!(runs(&r, "-f") - before, 1, "the lockdowns are flips");
    // What a settle left is gone once the table is rebuilt: nothing to
    // come back for (the parent's loop would spin on it).
    for l in &ls {
        r.fw.stage(l, Enforcement::Lockdown, "drop").unwrap();
    }
    assert!(r.fw.settle().is_empty());
    assert!(r.fw.settling());
    r.fw.init(&ls).unwrap();
    assert!(!r.fw.settling(), "nothing pending after a rebuild");
}

/// The panic hook's clear of every link: 2,048 links' drops a run, not a
/// run a link (10,000 runs took minutes), each link's two chains then
/// qkdpfd's drop alone, read back locked.
#[test]
fn many_links_are_cleared_a_bounded_number_a_run() {
    if !root_or_skip("many_links_are_cleared_a_bounded_number_a_run") {
        return;
    }
    let mut r = rig();
    let n = 2100u32;
    let ls = many(n);
    r.fw.init(&ls).unwrap();
    let all: Vec<&LinkTarget> = ls.iter().collect();
    assert!(r.fw.open_many(&all, "accept").iter().all(Result::is_ok));
    assert_eq!(rule_count(&r, "accept"), n as usize);
    let before = runs(&r, "-f");
    let cleared = r.fw.clear_many(&all);
    assert_eq!(cleared.len(), ls.len());
    assert!(cleared.iter().all(Result::is_ok));
    assert_eq!(runs(&r, "-f") - before, 2, "2,100 links: two runs");
    assert_eq!(rule_count(&r, "accept"), 0);
    assert_eq!(
        rule_count(&r, "drop comment \"qkdpfd drop\""),
        2 * n as usize
    );
    for l in [&ls[0], &ls[2047], &ls[2048], &ls[2099]] {
        for chain in [format!("link_{}", l.name), format!("lock_{}", l.name)] {
            assert!(rules(&r.ns, &chain).is_empty(), "{chain}");
        }
        assert_eq!(state(&mut r, &ls, &l.name), Observed::Locked, "{}", l.name);
    }
}

/// A clear of many links whose one run fails falls back to each link's
/// own clear: every link ends a drop, read back locked.
#[test]
fn a_failed_clear_of_many_links_clears_each_alone() {
    if !root_or_skip("a_failed_clear_of_many_links_clears_each_alone") {
        return;
    }
    let mut r = rig();
    let ls = links(5);
    r.fw.init(&ls).unwrap();
    let all: Vec<&LinkTarget> = ls.iter().collect();
    assert!(r.fw.open_many(&all, "accept").iter().all(Result::is_ok));
    let before = runs(&r, "-f");
    std::fs::write(r._dir.path().join("fail_next_load"), "").unwrap();
    let cleared = r.fw.clear_many(&all);
    assert!(cleared.iter().all(Result::is_ok), "{cleared:?}");
    assert_eq!(
        runs(&r, "-f") - before,
        1 + ls.len(),
        "the run, then one a link"
    );
    assert_eq!(rule_count(&r, "accept"), 0);
    for l in &ls {
        assert_eq!(state(&mut r, &ls, &l.name), Observed::Locked, "{}", l.name);
    }
}

#[test]
fn many_links_are_checked_in_one_nft_run() {
    if !root_or_skip("many_links_are_checked_in_one_nft_run") {
        return;
    }
    let r = rig();
    let links: Vec<_> = (0..40u8)
        .map(|i| link(&format!("l{i}"), &format!("wg{i}"), [198, 51, 100, i + 1]))
        .collect();
    let refs: Vec<_> = links.iter().collect();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pf-anchors/bundle/anchors");
    let runs = || {
        std::fs::read_to_string(r._dir.path().join("calls"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("-c"))
            .count()
    };
    for (file, state) in [
        ("open.nft", Enforcement::Open),
        ("lockdown.nft", Enforcement::Lockdown),
    ] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let before = runs();
        r.fw.check_links(&refs, state, &text)
            .unwrap_or_else(|(l, e)| panic!("{file} for {l}: {e}"));
        assert_eq!(runs() - before, 1, "{file}: one nft -c for 40 links");
    }
    // nft itself refuses it for every link: the first one is named, with
    // nft's own words, after halving down to it.
    let (l, e) =
        r.fw.check_links(&refs, Enforcement::Open, "udp dport 70000 accept\n")
            .unwrap_err();
    assert_eq!(l, "l0");
    assert!(
        e.contains("check open rules for link l0") && e.contains("70000"),
        "{e}"
    );
    let tables = r.ns.nft("list tables");
    assert!(
        !tables.contains("qkdpfd"),
        "check touched nothing: {tables}"
    );
}

/// The read-back's per-key lookups against the kernel: a key there, a key
/// not there, a set not there, a table not there.
#[test]
fn lookups_tell_a_key_a_missing_key_and_a_missing_set() {
    use qkdpfd::parent::fw::nft::netlink::{Lookup, exists};
    if !root_or_skip("lookups_tell_a_key_a_missing_key_and_a_missing_set") {
        return;
    }
    let mut r = rig();
    let ls = links(2);
    assert_eq!(
        exists("qkdpfd", Lookup::Set("locked_4"), 1),
        Ok(false),
        "no table"
    );
    r.fw.init(&ls).unwrap();
    r.fw.apply(&ls[1], Enforcement::Open, "accept").unwrap();
    let key = |i: u8| [198, 51, 100, i + 1, 0xca, 0x6c, 0, 0];
    let locked = exists("qkdpfd", Lookup::Element("locked_4", &key(0)), 2);
    assert_eq!(locked, Ok(true), "l0 is locked");
    let open = exists("qkdpfd", Lookup::Element("locked_4", &key(1)), 3);
    assert_eq!(open, Ok(false), "l1 is not");
    let mut wg0 = [0u8; 16];
    wg0[..3].copy_from_slice(b"wg0");
    assert_eq!(
        exists("qkdpfd", Lookup::Element("locked_if", &wg0), 4),
        Ok(true)
    );
    assert_eq!(exists("qkdpfd", Lookup::Set("locked_4"), 5), Ok(true));
    assert_eq!(exists("qkdpfd", Lookup::Set("nope"), 6), Ok(false));
    let e = exists("qkdpfd", Lookup::Element("nope", &key(0)), 7);
    assert_eq!(e, Ok(false), "a missing set answers as a missing key");
    // What the backend makes of it, reading one link right after a change.
    let one = |r: &mut Rig, n: &str| r.fw.observe(&ls, Some(n)).unwrap()[n].state.clone();
    assert_eq!(one(&mut r, "l1"), Observed::Open);
    r.fw.apply(&ls[0], Enforcement::Lockdown, "drop").unwrap();
    assert_eq!(one(&mut r, "l0"), Observed::Locked);
    r.fw.apply(&ls[1], Enforcement::Lockdown, "drop").unwrap();
    assert_eq!(one(&mut r, "l1"), Observed::Locked);
}

/// The netfilter socket is kept from one call to the next (closing it
/// after a delete waits for an RCU grace period), so an answer a caller
/// left unread must never pass for the answer to the next request: here a
/// lookup stops at the object and leaves its ACK queued, with the very
/// sequence number the next transaction's change carries. That change
/// names a set that does not exist; the stale ACK would make it look
/// committed.
#[test]
fn a_kept_socket_never_takes_an_old_answer_for_a_new_one() {
    use qkdpfd::parent::fw::nft::netlink::{self, Change, Lookup};
    if !root_or_skip("a_kept_socket_never_takes_an_old_answer_for_a_new_one") {
        return;
    }
    let mut r = rig();
    let ls = links(1);
    r.fw.init(&ls).unwrap();
    let req = netlink::lookup_request("qkdpfd", Lookup::Set("locked_4"), 10);
    let mut datagrams = 0;
    netlink::request(&req, |_| {
        datagrams += 1;
        Ok(Some(()))
    })
    .unwrap();
    assert_eq!(datagrams, 1, "stopped before the ACK");
    let change = [Change::Add("nope", &[&[2u8][..]], None)];
    let e = netlink::transact("qkdpfd", 9, &change, "add to a missing set");
    assert!(
        e.as_ref().is_err_and(|e| e.contains("No such file")),
        "{e:?}"
    );
    // After the error a new socket serves the next call.
    let there = netlink::exists("qkdpfd", Lookup::Set("locked_4"), 11);
    assert_eq!(there, Ok(true));
}

/// The site lock: every link locked by one transaction of two elements
/// (the generation moves by one, the `locked_` sets are untouched), read
/// back over netlink without a listing, proven by packets; it outlives a
/// rebuilt skeleton; the next open ends it, every other link then locked
/// on its own.
/// `n` links and `dr`, whose far end (10.99.0.2, kept while the first
/// value lives) answers pings.
fn links_and_far_end(r: &Rig, n: u8) -> (Netns, Vec<LinkTarget>) {
    let (far, a) = far_end(r, "10.99.0.1/24", "10.99.0.2/24");
    let mut ls = links(n);
    ls.push(link("dr", &a, [10, 99, 0, 2]));
    (far, ls)
}

/// The table for `ls` with the dead-man switch armed and every link open.
fn every_link_open(r: &mut Rig, ls: &[LinkTarget]) {
    r.fw.init(ls).unwrap();
    r.fw.keep_alive(Some(SWITCH)).unwrap();
    for l in ls {
        r.fw.apply(l, Enforcement::Open, "accept").unwrap();
    }
}

/// [`every_link_open`], each link's lockdown preloaded, read back open,
/// and the far end answering.
fn every_link_open_and_staged(r: &mut Rig, ls: &[LinkTarget]) {
    every_link_open(r, ls);
    for l in ls {
        r.fw.stage(l, Enforcement::Lockdown, "counter drop")
            .unwrap();
    }
    assert!(r.fw.settle().is_empty());
    for l in ls {
        assert_eq!(state(r, ls, &l.name), Observed::Open);
    }
    assert!(ping(&r.ns, "10.99.0.2"), "open");
}

#[test]
fn a_site_lock_locks_every_link_in_one_transaction() {
    use qkdpfd::parent::fw::nft::alive::generation;
    if !root_or_skip("a_site_lock_locks_every_link_in_one_transaction") {
        return;
    }
    let mut r = rig();
    let (_far, ls) = links_and_far_end(&r, 4);
    every_link_open_and_staged(&mut r, &ls);
    let (before, runs) = (generation(1).unwrap(), nft_runs(&r));

    assert!(r.fw.lock_site(&[], None).unwrap());
    assert_eq!(
        generation(2).unwrap(),
        before.wrapping_add(1),
        "one transaction"
    );
    assert!(locked_keys(&r.ns).is_empty(), "no link's keys moved");
    assert!(!ping(&r.ns, "10.99.0.2"), "the site lock drops");
    let seen = r.fw.observe(&ls, None).unwrap();
    assert!(
        seen.values().all(|rb| rb.state == Observed::Locked),
        "{seen:?}"
    );
    assert_eq!(nft_runs(&r), runs, "read back without a listing");
    // The listing agrees, and so does a rebuilt skeleton (a restart).
    r.ns.nft("add element inet qkdpfd alive { ipv4, ipv6 }");
    r.fw.init(&ls).unwrap();
    for l in &ls {
        assert_eq!(state(&mut r, &ls, &l.name), Observed::Locked, "{}", l.name);
    }
    assert!(!ping(&r.ns, "10.99.0.2"), "kept by a restart");
    // Every lockdown chain is in force: a preload waits.
    r.fw.stage(&ls[1], Enforcement::Lockdown, "drop").unwrap();
    assert!(r.fw.settle().is_empty());
    assert!(
        rules(&r.ns, "lock_l1")
            .iter()
            .any(|l| l.contains("counter")),
        "{:?}",
        rules(&r.ns, "lock_l1")
    );

    // An open ends it: the other links locked on their own.
    r.fw.apply(&ls[4], Enforcement::Open, "accept").unwrap();
    assert!(ping(&r.ns, "10.99.0.2"), "dr opened");
    assert!(nft_listing::elements(&r.ns.nft("list set inet qkdpfd site")).is_empty());
    for l in &ls[..4] {
        assert!(keys_locked(&r.ns, l) > 0, "{} locked on its own", l.name);
        assert_eq!(state(&mut r, &ls, &l.name), Observed::Locked);
    }
    assert_eq!(state(&mut r, &ls, "dr"), Observed::Open);
    r.fw.apply(&ls[0], Enforcement::Open, "accept").unwrap();
    assert_eq!(state(&mut r, &ls, "l0"), Observed::Open);
}

/// The links of one QBER section locked in one transaction of two
/// elements (`src<i>`), the other sections' links untouched; read back
/// without a listing, kept as locks of their own by a restart whose
/// sections changed, and ended by the first open of one of them.
#[test]
fn a_source_lock_locks_its_sections_links_in_one_transaction() {
    use qkdpfd::parent::fw::nft::alive::generation;
    if !root_or_skip("a_source_lock_locks_its_sections_links_in_one_transaction") {
        return;
    }
    let mut r = rig();
    let (_far, mut ls) = links_and_far_end(&r, 4);
    // Section "b" feeds l2 and l3; "a" feeds l0, l1 and dr.
    for (i, l) in ls.iter_mut().enumerate() {
        l.qber = if i == 2 || i == 3 { "b" } else { "a" }.into();
    }
    every_link_open_and_staged(&mut r, &ls);
    let (before, runs) = (generation(1).unwrap(), nft_runs(&r));

    assert!(r.fw.lock_source("a", &[], None).unwrap());
    assert!(
        !r.fw.lock_source("nowhere", &[], None).unwrap(),
        "no set: link by link"
    );
    assert_eq!(
        generation(2).unwrap(),
        before.wrapping_add(1),
        "one transaction"
    );
    assert!(locked_keys(&r.ns).is_empty(), "no link's keys moved");
    assert!(!ping(&r.ns, "10.99.0.2"), "the source lock drops dr");
    let seen = r.fw.observe(&ls, None).unwrap();
    for (name, want) in [
        ("l0", Observed::Locked),
        ("l1", Observed::Locked),
        ("l2", Observed::Open),
        ("l3", Observed::Open),
        ("dr", Observed::Locked),
    ] {
        assert_eq!(seen[name].state, want, "{name}: {seen:?}");
    }
    assert_eq!(nft_runs(&r), runs, "read back without a listing");
    // A listing agrees; one link's own read-back too.
    r.ns.nft("add element inet qkdpfd alive { ipv4, ipv6 }");
    let listed = r.fw.observe(&ls, None).unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|(n, rb)| (n, &rb.state))
            .collect::<Vec<_>>(),
        seen.iter()
            .map(|(n, rb)| (n, &rb.state))
            .collect::<Vec<_>>()
    );
    assert_eq!(state(&mut r, &ls, "l1"), Observed::Locked);
    // Its lockdown chains are in force: a preload waits.
    r.fw.stage(&ls[1], Enforcement::Lockdown, "drop").unwrap();
    assert!(r.fw.settle().is_empty());
    assert!(
        rules(&r.ns, "lock_l1")
            .iter()
            .any(|l| l.contains("counter")),
        "{:?}",
        rules(&r.ns, "lock_l1")
    );

    // A restart with other sections: dr now alone in "c". Every link the
    // lock covered is locked on its own; the set is emptied.
    let mut again = ls.clone();
    again[4].qber = "c".into();
    r.fw.init(&again).unwrap();
    assert!(nft_listing::elements(&r.ns.nft("list set inet qkdpfd src0")).is_empty());
    for l in &again {
        let want = if &*l.qber == "b" {
            Observed::Open
        } else {
            Observed::Locked
        };
        assert_eq!(state(&mut r, &again, &l.name), want, "{}", l.name);
    }
    assert!(!ping(&r.ns, "10.99.0.2"), "dr kept locked by the restart");

    // Back to the first sections; lock "a" again, then open dr: the lock
    // ends, l0 and l1 locked on their own, dr open.
    r.fw.init(&ls).unwrap();
    for l in &ls[..2] {
        r.fw.apply(l, Enforcement::Open, "accept").unwrap();
    }
    assert!(r.fw.lock_source("a", &[], None).unwrap());
    assert!(!ping(&r.ns, "10.99.0.2"));
    r.fw.apply(&ls[4], Enforcement::Open, "accept").unwrap();
    assert!(ping(&r.ns, "10.99.0.2"), "dr opened");
    assert!(nft_listing::elements(&r.ns.nft("list set inet qkdpfd src0")).is_empty());
    for l in &ls[..2] {
        assert!(keys_locked(&r.ns, l) > 0, "{} locked on its own", l.name);
        assert_eq!(state(&mut r, &ls, &l.name), Observed::Locked);
    }
    for l in &ls[2..4] {
        assert_eq!(state(&mut r, &ls, &l.name), Observed::Open, "{}", l.name);
    }
}

/// Another tool's changes to its own table (sshguard's set, a container
/// runtime's rules) do not make a read-back list ours: the kernel's
/// notifications show they left it alone, so a flip, the heartbeat and a
/// reconcile tick amid them still read back without a listing. A change
/// that touches our table is listed, and the listing finds it.
#[test]
fn another_tables_changes_need_no_listing_ours_do() {
    use qkdpfd::parent::fw::nft::alive::generation;
    if !root_or_skip("another_tables_changes_need_no_listing_ours_do") {
        return;
    }
    let mut r = rig();
    let (_far, ls) = links_and_far_end(&r, 3);
    every_link_open_and_staged(&mut r, &ls);
    let runs = nft_runs(&r);
    let before = generation(1).unwrap();

    r.ns.nft("add table inet other");
    r.ns.nft("add set inet other banned { type ipv4_addr ; }");
    for i in 1..=5 {
        r.ns.nft(&format!("add element inet other banned {{ 192.0.2.{i} }}"));
    }
    assert_eq!(generation(2).unwrap(), before.wrapping_add(7));
    let seen = r.fw.observe(&ls, None).unwrap();
    assert!(
        seen.values().all(|rb| rb.state == Observed::Open),
        "{seen:?}"
    );
    assert_eq!(
        nft_runs(&r),
        runs,
        "a tick amid other tables' changes lists nothing"
    );

    r.ns.nft("add element inet other banned { 192.0.2.9 }");
    r.fw.keep_alive(Some(SWITCH)).unwrap();
    r.ns.nft("delete element inet other banned { 192.0.2.9 }");
    r.fw.apply(&ls[3], Enforcement::Lockdown, "counter drop")
        .unwrap();
    let seen = r.fw.observe(&ls, Some("dr")).unwrap();
    assert_eq!(seen["dr"].state, Observed::Locked);
    assert!(!ping(&r.ns, "10.99.0.2"), "locked");
    r.ns.nft("add element inet other banned { 192.0.2.10 }");
    let seen = r.fw.observe(&ls, None).unwrap();
    assert_eq!(seen["dr"].state, Observed::Locked);
    assert_eq!(seen["l0"].state, Observed::Open);
    assert_eq!(
        nft_runs(&r),
        runs,
        "the heartbeat and a flip amid them list nothing"
    );

    // Someone else empties one of our chains: listed, and seen.
    r.ns.nft("flush chain inet qkdpfd link_l1");
    let seen = r.fw.observe(&ls, None).unwrap();
    assert_ne!(seen["l1"].state, Observed::Open, "{seen:?}");
    assert_eq!(seen["l0"].state, Observed::Open);
    assert!(nft_runs(&r) > runs, "a change to our table is listed");
}

/// Many opens in one netlink transaction: the links whose chains hold the
/// text already open together (the generation moves by one), each reads
/// back open without a listing, and packets pass. A batch with a link not
/// in the table's maps fails whole, opening nothing: each link is then
/// opened alone, and only that one fails.
#[test]
fn many_opens_share_one_transaction() {
    use qkdpfd::parent::fw::nft::alive::generation;
    if !root_or_skip("many_opens_share_one_transaction") {
        return;
    }
    let mut r = rig();
    let (_far, ls) = links_and_far_end(&r, 4);
    r.fw.init(&ls).unwrap();
    r.fw.keep_alive(Some(SWITCH)).unwrap();
    // l0's slow open loads the text into every locked link's chain.
    r.fw.apply(&ls[0], Enforcement::Open, "accept").unwrap();
    let rest: Vec<&LinkTarget> = ls[1..].iter().collect();
    for l in &rest {
        assert_eq!(state(&mut r, &ls, &l.name), Observed::Locked);
    }
    assert!(!ping(&r.ns, "10.99.0.2"), "dr locked");
    let runs = nft_runs(&r);
    let before = generation(1).unwrap();
    let opened = r.fw.open_many(&rest, "accept");
    assert!(opened.iter().all(Result::is_ok), "{opened:?}");
    assert_eq!(generation(2).unwrap(), before.wrapping_add(1));
    for l in &rest {
        let seen = r.fw.observe(&ls, Some(&l.name)).unwrap();
        assert_eq!(seen[&l.name].state, Observed::Open, "{}", l.name);
        assert_eq!(keys_locked(&r.ns, l), 0, "{}", l.name);
    }
    assert_eq!(nft_runs(&r), runs, "no nft run, no listing");
    assert!(ping(&r.ns, "10.99.0.2"), "dr open");

    // Open already (a re-application reaching them): nothing committed,
    // each still read back open, packets pass. One of them locked: only
    // it is in the transaction.
    let before = generation(3).unwrap();
    let again = r.fw.open_many(&rest, "accept");
    assert!(again.iter().all(Result::is_ok), "{again:?}");
    assert_eq!(generation(4).unwrap(), before, "no transaction");
    let dr = *rest.last().unwrap();
    r.fw.apply(dr, Enforcement::Lockdown, "counter drop")
        .unwrap();
    assert!(!ping(&r.ns, "10.99.0.2"), "dr locked");
    let before = generation(5).unwrap();
    let again = r.fw.open_many(&rest, "accept");
    assert!(again.iter().all(Result::is_ok), "{again:?}");
    assert_eq!(generation(6).unwrap(), before.wrapping_add(1));
    for l in &rest {
        assert_eq!(state(&mut r, &ls, &l.name), Observed::Open, "{}", l.name);
        assert_eq!(keys_locked(&r.ns, l), 0, "{}", l.name);
    }
    assert!(ping(&r.ns, "10.99.0.2"), "dr open again");

    for l in &rest {
        r.fw.apply(l, Enforcement::Lockdown, "counter drop")
            .unwrap();
    }
    assert!(!ping(&r.ns, "10.99.0.2"), "dr locked again");
    let stranger = link("zz", "wgzz", [198, 51, 100, 99]);
    let mut with: Vec<&LinkTarget> = rest.clone();
    with.insert(1, &stranger);
    let opened = r.fw.open_many(&with, "accept");
    assert_eq!(opened.len(), with.len());
    for (l, res) in with.iter().zip(&opened) {
        match l.name.as_str() {
            "zz" => {
                let e = res.as_ref().unwrap_err().to_string();
                assert!(e.contains("not in the table's maps"), "{e}");
            }
            _ => {
                assert!(res.is_ok(), "{}: {res:?}", l.name);
                assert_eq!(state(&mut r, &ls, &l.name), Observed::Open);
            }
        }
    }
    assert!(ping(&r.ns, "10.99.0.2"), "dr open, each alone");
}

/// Our own preload of lockdown chains (`settle`) needs no listing after
/// it: those chains are read back one by one, the rest stays verified, and
/// the lockdown that follows is a flip proven by packets. A change to one
/// of those chains by anyone else is still listed and seen.
#[test]
fn a_settle_reads_back_only_the_chains_it_loaded() {
    if !root_or_skip("a_settle_reads_back_only_the_chains_it_loaded") {
        return;
    }
    let mut r = rig();
    let (_far, ls) = links_and_far_end(&r, 3);
    every_link_open(&mut r, &ls);
    let seen = r.fw.observe(&ls, None).unwrap();
    assert!(
        seen.values().all(|rb| rb.state == Observed::Open),
        "{seen:?}"
    );
    let runs = nft_runs(&r);
    for l in &ls {
        r.fw.stage(l, Enforcement::Lockdown, "counter drop")
            .unwrap();
    }
    assert!(r.fw.settle().is_empty());
    assert_eq!(nft_runs(&r), runs + 1, "one run: the preload");
    let seen = r.fw.observe(&ls, None).unwrap();
    assert!(
        seen.values().all(|rb| rb.state == Observed::Open),
        "{seen:?}"
    );
    assert_eq!(nft_runs(&r), runs + 1, "no listing after our own preload");
    r.fw.apply(&ls[3], Enforcement::Lockdown, "counter drop")
        .unwrap();
    assert_eq!(nft_runs(&r), runs + 1, "the lockdown is a flip");
    let seen = r.fw.observe(&ls, Some("dr")).unwrap();
    assert_eq!(seen["dr"].state, Observed::Locked);
    assert!(!ping(&r.ns, "10.99.0.2"), "locked");
    // Someone else empties l1's preloaded chain, then l1 locks: listed,
    // and l1 is not shown locked by a chain that drops nothing.
    r.ns.nft("flush chain inet qkdpfd lock_l1");
    let seen = r.fw.observe(&ls, None).unwrap();
    assert!(nft_runs(&r) > runs + 1, "a change to our table is listed");
    assert_eq!(seen["l1"].state, Observed::Open);
    r.fw.apply(&ls[1], Enforcement::Lockdown, "counter drop")
        .unwrap();
    assert_eq!(state(&mut r, &ls, "l1"), Observed::Locked);
    assert_eq!(rules(&r.ns, "lock_l1"), ["counter packets 0 bytes 0 drop"]);
}

/// A re-application's lockdowns in one nft run: every chain loaded and
/// every key locked by it, each link read back locked and the far end no
/// longer answering. A run with a link not in the table's maps locks each
/// link alone, and only that one fails.
#[test]
fn many_lockdowns_share_one_run() {
    if !root_or_skip("many_lockdowns_share_one_run") {
        return;
    }
    let mut r = rig();
    let (_far, ls) = links_and_far_end(&r, 3);
    every_link_open(&mut r, &ls);
    assert!(ping(&r.ns, "10.99.0.2"), "open");
    let refs: Vec<&LinkTarget> = ls.iter().collect();
    let before = runs(&r, "-f");
    let locked = r.fw.lock_many(&refs, "counter drop");
    assert!(locked.iter().all(Result::is_ok), "{locked:?}");
    assert_eq!(runs(&r, "-f") - before, 1, "one run for four links");
    for l in &ls {
        assert_eq!(state(&mut r, &ls, &l.name), Observed::Locked, "{}", l.name);
        // Uncounted: the far end's own traffic (an IPv6 multicast listener
        // report, say) may already have met dr's drop.
        assert_eq!(
            rules_uncounted(&r.ns, &format!("lock_{}", l.name)),
            ["counter drop"]
        );
    }
    assert!(!ping(&r.ns, "10.99.0.2"), "locked");

    locks_each_alone_beside_a_stranger(&mut r, &ls, &refs, 0, "drop");
    assert!(!ping(&r.ns, "10.99.0.2"), "still locked");
}

/// `lock_many` of `refs` with a link not in the table's maps put at `at`:
/// only that one fails, every other link reads back locked.
fn locks_each_alone_beside_a_stranger(
    r: &mut Rig,
    ls: &[LinkTarget],
    refs: &[&LinkTarget],
    at: usize,
    ruleset: &str,
) {
    let stranger = link("zz", "wgzz", [198, 51, 100, 99]);
    let mut with = refs.to_vec();
    with.insert(at, &stranger);
    let locked = r.fw.lock_many(&with, ruleset);
    for (l, res) in with.iter().zip(&locked) {
        match l.name.as_str() {
            "zz" => assert!(res.is_err()),
            _ => {
                assert!(res.is_ok(), "{}: {res:?}", l.name);
                assert_eq!(state(r, ls, &l.name), Observed::Locked);
            }
        }
    }
}

/// Links whose lockdown is preloaded lock together in one netlink
/// transaction (the others of a shared interface, which a lockdown holds
/// with it), with no nft run: each read back locked without a listing,
/// the far end no longer answering. A batch with a link not in the
/// table's maps locks each link alone, and only that one fails.
#[test]
fn many_staged_lockdowns_share_one_transaction() {
    use qkdpfd::parent::fw::nft::alive::generation;
    if !root_or_skip("many_staged_lockdowns_share_one_transaction") {
        return;
    }
    let mut r = rig();
    let (_far, ls) = links_and_far_end(&r, 4);
    every_link_open_and_staged(&mut r, &ls);
    let refs: Vec<&LinkTarget> = ls[1..].iter().collect();
    let (before, runs) = (generation(1).unwrap(), nft_runs(&r));
    let locked = r.fw.lock_many(&refs, "counter drop");
    assert!(locked.iter().all(Result::is_ok), "{locked:?}");
    assert_eq!(
        generation(2).unwrap(),
        before.wrapping_add(1),
        "one transaction"
    );
    for l in &refs {
        let seen = r.fw.observe(&ls, Some(&l.name)).unwrap();
        assert_eq!(seen[&l.name].state, Observed::Locked, "{}", l.name);
        assert!(keys_locked(&r.ns, l) > 0, "{}", l.name);
    }
    assert_eq!(nft_runs(&r), runs, "no nft run, no listing");
    assert_eq!(state(&mut r, &ls, "l0"), Observed::Open, "l0 not asked");
    assert!(!ping(&r.ns, "10.99.0.2"), "dr locked");

    for l in &refs {
        r.fw.apply(l, Enforcement::Open, "accept").unwrap();
    }
    assert!(ping(&r.ns, "10.99.0.2"), "dr open");
    locks_each_alone_beside_a_stranger(&mut r, &ls, &refs, 1, "counter drop");
    assert!(!ping(&r.ns, "10.99.0.2"), "dr locked, each alone");
}

/// Every chain's rules in a listing of the table, as [`all_rules`] reads
/// one chain's.
fn table_chains(listing: &str) -> std::collections::HashMap<String, Vec<String>> {
    let mut out = std::collections::HashMap::new();
    let mut chain: Option<(String, Vec<String>)> = None;
    for line in listing.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("chain ") {
            let name = name.trim_end_matches(" {").to_string();
            chain = Some((name, Vec::new()));
        } else if line == "}" {
            if let Some((name, rules)) = chain.take() {
                out.insert(name, rules);
            }
        } else if let Some((_, rules)) = chain.as_mut() {
            if !(line.is_empty() || line.starts_with("type ")) {
                rules.push(line.to_string());
            }
        }
    }
    out
}

/// What nft's runs read (the wrapper keeps every script).
fn scripts(r: &Rig) -> String {
    std::fs::read_to_string(r._dir.path().join("scripts")).unwrap_or_default()
}

/// Links whose statements are the same text: nft compiles the first
/// link's chain and the others get copies of its rules over netlink, which
/// nft lists as it lists its own; rules compiled lately are copied again
/// with no run; a text with a rule that is not copied (an anonymous set, a
/// limit) goes to a second run of the others' scripts, and once known so,
/// to one run whole; texts that differ per link (a macro) are all compiled
/// in the one run. Lockdowns, preloads and slow opens alike, each read
/// back.
#[test]
fn equal_texts_are_copied_and_the_rest_compiled_by_nft() {
    if !root_or_skip("equal_texts_are_copied_and_the_rest_compiled_by_nft") {
        return;
    }
    let mut r = rig();
    let n = 100;
    let ls = many(n);
    r.fw.init(&ls).unwrap();
    let all: Vec<&LinkTarget> = ls.iter().collect();
    // Each link's chain `prefix<link>`, from one listing of the table (a
    // listing a chain made this test minutes long in the kernel lane's VM).
    let chains = |r: &Rig, prefix: &str| -> Vec<Vec<String>> {
        let listed = table_chains(&r.ns.nft("list table inet qkdpfd"));
        (ls.iter())
            .map(|l| listed[&format!("{prefix}{}", l.name)].clone())
            .collect()
    };
    // Links whose chain `prefix<link>` a script gave rules to since the
    // scripts were `from` bytes long.
    let compiled = |r: &Rig, from: usize, prefix: &str| {
        let s = scripts(r);
        let s = s.get(from..).unwrap_or("");
        (ls.iter())
            .filter(|l| s.contains(&format!("add rule inet qkdpfd {prefix}{} ", l.name)))
            .count()
    };
    let mark = |r: &Rig| (runs(r, "-f"), scripts(r).len());

    // Lockdowns: the first half's load compiles one chain; the second
    // half's, right after, compiles none.
    let lock = "tcp dport 22 ct state new,established counter accept\n\
                meta l4proto icmp log prefix \"qkd \" drop\n\
                ip saddr 192.0.2.0/24 reject\n";
    let (runs0, from) = mark(&r);
    assert!(r.fw.lock_many(&all[..50], lock).iter().all(Result::is_ok));
    assert!(r.fw.lock_many(&all[50..], lock).iter().all(Result::is_ok));
    assert_eq!(runs(&r, "-f") - runs0, 1, "the second half ran no nft");
    assert_eq!(compiled(&r, from, "lock_"), 1, "one link's chain compiled");
    let got = chains(&r, "lock_");
    let first_lock = got[0].clone();
    assert_eq!(got[0].len(), 3 + 2, "tag, three rules, drop: {:?}", got[0]);
    assert!(got[0][2].contains("log prefix"), "{:?}", got[0]);
    assert!(
        got.iter().all(|c| *c == got[0]),
        "every copy as nft lists the first"
    );
    for l in [&ls[0], &ls[50], &ls[99]] {
        // Its IPv4 address, the IPv6 address all share, its interface.
        assert_eq!(keys_locked(&r.ns, l), 3, "{}: keys locked", l.name);
        assert_eq!(state(&mut r, &ls, &l.name), Observed::Locked, "{}", l.name);
    }

    // A slow open copies its chain into the locked links', which stay
    // locked; their opens are flips.
    let open = "ip daddr 203.0.113.0/25 udp dport 53 accept\nmeta mark 0x10 accept\n";
    let (runs0, from) = mark(&r);
    r.fw.apply(&ls[0], Enforcement::Open, open).unwrap();
    assert_eq!(runs(&r, "-f") - runs0, 1);
    assert_eq!(compiled(&r, from, "link_"), 1);
    let got = chains(&r, "link_");
    assert!(
        got.iter().all(|c| *c == got[0] && c.len() == 3),
        "{:?}",
        got[1]
    );
    assert_eq!(state(&mut r, &ls, "m0"), Observed::Open);
    for l in [&ls[1], &ls[99]] {
        // Its own two keys; the IPv6 address all share is m0's, open.
        assert_eq!(keys_locked(&r.ns, l), 2, "{}: still locked", l.name);
        assert_eq!(state(&mut r, &ls, &l.name), Observed::Locked, "{}", l.name);
    }
    assert!(r.fw.open_many(&all[1..], open).iter().all(Result::is_ok));
    assert_eq!(runs(&r, "-f") - runs0, 1, "the other opens are flips");
    for l in [&ls[1], &ls[99]] {
        assert_eq!(state(&mut r, &ls, &l.name), Observed::Open, "{}", l.name);
    }

    // Preloads: one chain compiled, the rest copied.
    for l in &ls {
        r.fw.stage(l, Enforcement::Lockdown, "ip protocol icmp counter drop")
            .unwrap();
    }
    let (runs0, from) = mark(&r);
    assert!(r.fw.settle().is_empty());
    assert_eq!(runs(&r, "-f") - runs0, 1);
    assert_eq!(compiled(&r, from, "lock_"), 1);
    let got = chains(&r, "lock_");
    assert!(got[0][1].contains("icmp"), "{:?}", got[0]);
    assert!(got.iter().all(|c| *c == got[0]));

    // Not copied: an anonymous set; a limit. The first link's chain, then
    // the others' in a second run; the next load of the text, one run.
    for uncopied in [
        "ip saddr { 192.0.2.1, 192.0.2.7 } drop",
        "limit rate 5/second accept",
    ] {
        for l in &ls {
            r.fw.stage(l, Enforcement::Lockdown, uncopied).unwrap();
        }
        let (runs0, from) = mark(&r);
        assert!(r.fw.settle().is_empty());
        assert_eq!(runs(&r, "-f") - runs0, 2, "{uncopied}");
        assert_eq!(compiled(&r, from, "lock_"), n as usize, "{uncopied}");
        let got = chains(&r, "lock_");
        assert!(
            got.iter().all(|c| *c == got[0] && c.len() == 3),
            "{:?}",
            got[0]
        );
        for l in &ls {
            r.fw.stage(l, Enforcement::Lockdown, "drop").unwrap();
        }
        assert!(r.fw.settle().is_empty());
        for l in &ls {
            r.fw.stage(l, Enforcement::Lockdown, uncopied).unwrap();
        }
        let runs0 = runs(&r, "-f");
        assert!(r.fw.settle().is_empty());
        assert_eq!(runs(&r, "-f") - runs0, 1, "{uncopied}: known not to copy");
    }

    // A macro: a text per link, all compiled in one run.
    for l in &ls {
        r.fw.stage(l, Enforcement::Lockdown, "log prefix \"q $link \" drop")
            .unwrap();
    }
    let runs0 = runs(&r, "-f");
    assert!(r.fw.settle().is_empty());
    assert_eq!(runs(&r, "-f") - runs0, 1);
    for (l, c) in ls.iter().zip(chains(&r, "lock_")) {
        assert!(c[1].contains(&format!("\"q {} \"", l.name)), "{c:?}");
    }

    // A rebuilt table forgets what was compiled: one link's slow lockdown
    // runs nft again.
    r.fw.init(&ls).unwrap();
    let runs0 = runs(&r, "-f");
    r.fw.apply(&ls[4], Enforcement::Lockdown, lock).unwrap();
    assert_eq!(runs(&r, "-f") - runs0, 1);
    assert_eq!(all_rules(&r.ns, "lock_m4"), first_lock);
    assert_eq!(state(&mut r, &ls, "m4"), Observed::Locked);
}
