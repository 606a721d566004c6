//! The read-back after the nftables backend's own `nft -f` runs, against
//! real nftables (as tests/fw_nft.rs: a network namespace per test, nft
//! reached through a wrapper that logs each run to `calls`): when the run
//! was the only change since the last listing, the links it loaded are read
//! from the kernel and the next tick lists nothing; a change by anyone else
//! is still listed and seen. Needs root: without it the tests are skipped
//! loudly, unless CI=true.

#[path = "common/nft.rs"]
#[allow(dead_code)]
mod nft_listing;

#[path = "fw_nft/rig.rs"]
#[allow(dead_code)]
mod rig;

use qkdpfd::lock::Enforcement;
use qkdpfd::parent::fw::Observed;
use qkdpfd::ruleset::LinkTarget;
use rig::*;

/// `n` locked links and `dr`, whose far end (10.99.0.2, kept while the
/// first value lives) answers pings; the table built, the dead-man switch
/// armed (netlink proven to reach it) and one listing made.
fn locked_links(r: &mut Rig, n: u8) -> (Netns, Vec<LinkTarget>) {
    let (far, a) = far_end(r, "10.99.0.1/24", "10.99.0.2/24");
    let mut ls: Vec<LinkTarget> = (0..n)
        .map(|i| link(&format!("l{i}"), &format!("wg{i}"), [198, 51, 100, i + 1]))
        .collect();
    ls.push(link("dr", &a, [10, 99, 0, 2]));
    r.fw.init(&ls).unwrap();
    r.fw.keep_alive(Some(SWITCH)).unwrap();
    let seen = r.fw.observe(&ls, None).unwrap();
    assert!(seen.values().all(|rb| rb.state == Observed::Locked));
    (far, ls)
}

/// What the parent does after an apply: that link read back on its own.
fn apply(r: &mut Rig, ls: &[LinkTarget], n: usize, state: Enforcement, text: &str) -> Observed {
    r.fw.apply(&ls[n], state, text).unwrap();
    let name = &ls[n].name;
    r.fw.observe(ls, Some(name)).unwrap()[name].state.clone()
}

/// A slow open (one run that also loads the open text of every locked
/// link), a flip, a slow lockdown and bulk lockdowns: after each, a tick
/// answers without listing, each link as the kernel holds it (packets
/// agree). `n` = 3 reads the loaded links one by one, 80 from one dump of
/// the table.
fn loads_of_our_own(n: u8) {
    let mut r = rig();
    let (_far, ls) = locked_links(&mut r, n);
    let runs = |r: &Rig| nft_runs(r);
    let before = runs(&r);

    let n = n as usize;
    assert_eq!(
        apply(&mut r, &ls, n, Enforcement::Open, "accept"),
        Observed::Open
    );
    assert_eq!(runs(&r), before + 1, "one run: the slow open");
    let seen = r.fw.observe(&ls, None).unwrap();
    assert_eq!(runs(&r), before + 1, "n={n}: no listing after it");
    assert_eq!(seen["dr"].state, Observed::Open);
    assert!(ping(&r.ns, "10.99.0.2"), "open");
    for l in &ls[..n] {
        assert_eq!(seen[&l.name].state, Observed::Locked, "{}", l.name);
        assert_eq!(rules(&r.ns, &format!("link_{}", l.name)), ["accept"]);
    }

    // The others' chains hold the text: a flip, read back over netlink.
    assert_eq!(
        apply(&mut r, &ls, 0, Enforcement::Open, "accept"),
        Observed::Open
    );
    let seen = r.fw.observe(&ls, None).unwrap();
    assert_eq!(seen["l0"].state, Observed::Open);
    assert_eq!(runs(&r), before + 1, "a flip runs and lists nothing");

    // A lockdown text not preloaded: its own run, then no listing.
    let locked = apply(&mut r, &ls, n, Enforcement::Lockdown, "counter drop");
    assert_eq!(locked, Observed::Locked);
    assert_eq!(runs(&r), before + 2);
    let seen = r.fw.observe(&ls, None).unwrap();
    assert_eq!(runs(&r), before + 2, "no listing after our lockdown");
    assert_eq!(seen["dr"].state, Observed::Locked);
    assert_eq!(seen["l0"].state, Observed::Open);
    assert!(!ping(&r.ns, "10.99.0.2"), "locked");

    // A re-application's lockdowns of every locked link, in one run.
    let rest: Vec<&LinkTarget> = ls[1..n].iter().collect();
    let locked = r.fw.lock_many(&rest, "drop");
    assert!(locked.iter().all(Result::is_ok), "{locked:?}");
    let seen = r.fw.observe(&ls, None).unwrap();
    assert_eq!(runs(&r), before + 3, "one run, and no listing after it");
    for l in &rest {
        assert_eq!(seen[&l.name].state, Observed::Locked, "{}", l.name);
        assert_eq!(rules(&r.ns, &format!("lock_{}", l.name)), ["drop"]);
    }
    assert_eq!(seen["l0"].state, Observed::Open);
}

#[test]
fn our_own_loads_need_no_listing_few_links() {
    if root_or_skip("our_own_loads_need_no_listing_few_links") {
        loads_of_our_own(3);
    }
}

#[test]
fn our_own_loads_need_no_listing_many_links() {
    if root_or_skip("our_own_loads_need_no_listing_many_links") {
        loads_of_our_own(80);
    }
}

/// A change by anyone else before our run: the run was not the only
/// transaction since the listing, so the next tick lists the table, and
/// sees the change.
#[test]
fn a_change_before_our_run_is_listed_and_seen() {
    if !root_or_skip("a_change_before_our_run_is_listed_and_seen") {
        return;
    }
    let mut r = rig();
    let (_far, ls) = locked_links(&mut r, 3);
    r.fw.apply(&ls[3], Enforcement::Open, "accept").unwrap();
    r.fw.apply(&ls[1], Enforcement::Open, "accept").unwrap();
    r.fw.observe(&ls, None).unwrap();
    let before = nft_runs(&r);
    // l1's open chain emptied behind our back, then our own lockdown run.
    r.ns.nft("flush chain inet qkdpfd link_l1");
    r.fw.apply(&ls[3], Enforcement::Lockdown, "counter drop")
        .unwrap();
    let seen = r.fw.observe(&ls, None).unwrap();
    assert!(nft_runs(&r) > before + 1, "listed");
    assert_ne!(seen["l1"].state, Observed::Open, "{seen:?}");
    assert_eq!(seen["dr"].state, Observed::Locked);
}

/// A turn's opens as the parent makes them: the first link's chain lacks
/// the text, so it opens alone (its run loads the text into the others'
/// chains), and the rest open in one netlink transaction. The link opened
/// alone is read back first: the flip's own links are still read back from
/// the flip, and the next tick lists nothing.
#[test]
fn a_link_read_back_amid_a_flips_links_leaves_them_the_flip() {
    if !root_or_skip("a_link_read_back_amid_a_flips_links_leaves_them_the_flip") {
        return;
    }
    let mut r = rig();
    let (_far, ls) = locked_links(&mut r, 3);
    let before = nft_runs(&r);
    let order: Vec<&LinkTarget> = [1, 2, 3, 0].iter().map(|i| &ls[*i]).collect();
    let opened = r.fw.open_many(&order, "accept");
    assert!(opened.iter().all(Result::is_ok), "{opened:?}");
    assert_eq!(nft_runs(&r), before + 1, "one run: l1's slow open");
    for l in &order {
        let seen = r.fw.observe(&ls, Some(&l.name)).unwrap();
        assert_eq!(seen[&l.name].state, Observed::Open, "{}", l.name);
    }
    let seen = r.fw.observe(&ls, None).unwrap();
    assert!(seen.values().all(|rb| rb.state == Observed::Open));
    assert_eq!(nft_runs(&r), before + 1, "no listing");
    assert!(ping(&r.ns, "10.99.0.2"), "open");
}

/// A link read back on its own after our load answers from what that load
/// read back only while nothing else has touched the table: a lockdown
/// chain emptied behind our back since is seen.
#[test]
fn a_change_after_our_run_is_seen_by_the_next_read_back() {
    if !root_or_skip("a_change_after_our_run_is_seen_by_the_next_read_back") {
        return;
    }
    let mut r = rig();
    let (_far, ls) = locked_links(&mut r, 3);
    let locked = apply(&mut r, &ls, 3, Enforcement::Lockdown, "counter drop");
    assert_eq!(locked, Observed::Locked);
    r.ns.nft("flush chain inet qkdpfd lock_dr");
    let seen = r.fw.observe(&ls, Some("dr")).unwrap();
    assert!(
        matches!(seen["dr"].state, Observed::Unknown { .. }),
        "{seen:?}"
    );
}

/// Link `name` read back on its own, as after a flip.
fn one(r: &mut Rig, ls: &[LinkTarget], name: &str) -> Observed {
    r.fw.observe(ls, Some(name)).unwrap()[name].state.clone()
}

/// A change to our table that changes no link (a chain added and
/// deleted): the next tick lists the table.
fn touch_table(ns: &Netns) {
    ns.nft("add chain inet qkdpfd touched");
    ns.nft("delete chain inet qkdpfd touched");
}

/// Someone else replaces, in place (`nft replace rule`: same handle,
/// same count), the rule of `chain` whose listing contains `text` and no
/// comment of ours, with the statements `with`.
fn replace_rule(ns: &Netns, chain: &str, text: &str, with: &str) {
    let listing = ns.nft(&format!("-a list chain inet qkdpfd {chain}"));
    let line = (listing.lines())
        .find(|l| l.contains(text) && !l.contains("comment"))
        .unwrap_or_else(|| panic!("no rule with {text} in {listing}"));
    let h = line.rsplit("# handle ").next().unwrap().trim();
    ns.nft(&format!(
        "replace rule inet qkdpfd {chain} handle {h} {with}"
    ));
}

/// A lockdown whose first rule the tests below replace with an accept.
const LOCKDOWN: &str = "icmp type echo-request counter drop\ncounter drop";

/// Someone replaces a rule of ours in place (`nft replace rule`: the
/// count, the tags and the final drop as they were) with an accept, and
/// pings cross a link that read back locked. Both read-backs see it now —
/// the tick's listing of the table and the link's own — and the link's
/// lockdown loaded again stops the pings. Traffic counted by our rules
/// changes nothing: still locked.
#[test]
fn a_rule_replaced_in_place_is_seen_by_every_read_back() {
    if !root_or_skip("a_rule_replaced_in_place_is_seen_by_every_read_back") {
        return;
    }
    let mut r = rig();
    let (_far, ls) = locked_links(&mut r, 3);
    let locked = apply(&mut r, &ls, 3, Enforcement::Lockdown, LOCKDOWN);
    assert_eq!(locked, Observed::Locked);
    assert!(!ping(&r.ns, "10.99.0.2"), "locked");
    // Counted (the echo requests just dropped) and read from a listing.
    touch_table(&r.ns);
    let seen = r.fw.observe(&ls, None).unwrap();
    assert_eq!(seen["dr"].state, Observed::Locked, "counts are not changes");
    assert_eq!(one(&mut r, &ls, "dr"), Observed::Locked);

    for tick in [true, false] {
        replace_rule(&r.ns, "lock_dr", "echo-request", "accept");
        assert_eq!(all_rules(&r.ns, "lock_dr").len(), 4, "the same count");
        assert!(ping(&r.ns, "10.99.0.2"), "the replaced rule lets pings by");
        let seen = match tick {
            true => r.fw.observe(&ls, None).unwrap()["dr"].state.clone(),
            false => one(&mut r, &ls, "dr"),
        };
        assert!(
            matches!(seen, Observed::Unknown { .. }),
            "tick {tick}: {seen:?}"
        );
        // Not ours until we write it again: the other read-back agrees.
        let other = match tick {
            true => one(&mut r, &ls, "dr"),
            false => r.fw.observe(&ls, None).unwrap()["dr"].state.clone(),
        };
        assert!(matches!(other, Observed::Unknown { .. }), "{other:?}");
        // What the parent does then: the lockdown again, loaded anew.
        let relocked = apply(&mut r, &ls, 3, Enforcement::Lockdown, LOCKDOWN);
        assert_eq!(relocked, Observed::Locked, "tick {tick}");
        assert!(!ping(&r.ns, "10.99.0.2"), "tick {tick}: locked again");
        touch_table(&r.ns);
        let seen = r.fw.observe(&ls, None).unwrap();
        assert_eq!(seen["dr"].state, Observed::Locked, "tick {tick}");
    }
}

/// An open link's rule replaced in place by one that passes something
/// else reads back as not open, by the tick's listing and on its own.
#[test]
fn an_open_rule_replaced_in_place_is_seen() {
    if !root_or_skip("an_open_rule_replaced_in_place_is_seen") {
        return;
    }
    let mut r = rig();
    let (_far, ls) = locked_links(&mut r, 3);
    let opened = apply(&mut r, &ls, 3, Enforcement::Open, "ip protocol icmp accept");
    assert_eq!(opened, Observed::Open);
    assert!(ping(&r.ns, "10.99.0.2"), "open");
    replace_rule(&r.ns, "link_dr", "icmp", "ip protocol udp accept");
    assert!(!ping(&r.ns, "10.99.0.2"), "no longer what was loaded");
    let seen = r.fw.observe(&ls, None).unwrap();
    assert!(
        matches!(seen["dr"].state, Observed::Unknown { .. }),
        "{seen:?}"
    );
    assert!(matches!(one(&mut r, &ls, "dr"), Observed::Unknown { .. }));
    assert_eq!(
        seen["l1"].state,
        Observed::Locked,
        "the others as they were"
    );
}

/// What was first read of a chain after our load stays what it must hold
/// until a load of ours succeeds: not a rebuild of the table (which anyone
/// can bring about by damaging a base chain), not a load that failed (it
/// left the chain as it was).
#[test]
fn a_changed_chain_stays_changed_across_a_rebuild_and_a_failed_load() {
    if !root_or_skip("a_changed_chain_stays_changed_across_a_rebuild_and_a_failed_load") {
        return;
    }
    let mut r = rig();
    let (_far, ls) = locked_links(&mut r, 3);
    assert_eq!(
        apply(&mut r, &ls, 3, Enforcement::Lockdown, LOCKDOWN),
        Observed::Locked
    );
    replace_rule(&r.ns, "lock_dr", "echo-request", "accept");
    // The parent's repair of a damaged skeleton, before any read.
    r.fw.init(&ls).unwrap();
    touch_table(&r.ns);
    let seen = r.fw.observe(&ls, None).unwrap();
    assert!(
        matches!(seen["dr"].state, Observed::Unknown { .. }),
        "after a rebuild: {seen:?}"
    );
    // A clear that fails changes nothing: still not ours.
    std::fs::write(r._dir.path().join("fail_next_load"), "").unwrap();
    assert!(r.fw.clear(&ls[3]).is_err());
    assert!(ping(&r.ns, "10.99.0.2"), "the accept still in place");
    // Read again, not answered from the last verified read-back.
    touch_table(&r.ns);
    assert!(matches!(one(&mut r, &ls, "dr"), Observed::Unknown { .. }));
    touch_table(&r.ns);
    assert!(matches!(
        r.fw.observe(&ls, None).unwrap()["dr"].state,
        Observed::Unknown { .. }
    ));
    // One that works is ours again.
    r.fw.clear(&ls[3]).unwrap();
    assert_eq!(one(&mut r, &ls, "dr"), Observed::Locked);
    assert!(!ping(&r.ns, "10.99.0.2"));
}

/// Someone replaces a rule of ours in place after our load and before
/// its first read: here our run was not the only change since the last
/// listing (another tool touched the table first), so the run's read-back
/// waits for the next read, the link's own or the tick's listing; a
/// tamperer watching `nft monitor` could aim for the same window. The
/// kernel's notifications show a transaction that touched our table
/// between the load and the read, one more than we made: what the read
/// shows is not taken as ours, by either read-back, and stays not ours
/// once those generations are verified and forgotten.
#[test]
fn a_rule_replaced_before_the_link_reads_its_load_is_seen() {
    if !root_or_skip("a_rule_replaced_before_the_link_reads_its_load_is_seen") {
        return;
    }
    replaced_before_the_first_read(true);
}

/// The same, first read by the tick's listing of the table.
#[test]
fn a_rule_replaced_before_the_listing_reads_our_load_is_seen() {
    if !root_or_skip("a_rule_replaced_before_the_listing_reads_our_load_is_seen") {
        return;
    }
    replaced_before_the_first_read(false);
}

fn replaced_before_the_first_read(own_read_first: bool) {
    let mut r = rig();
    let (_far, ls) = locked_links(&mut r, 3);
    touch_table(&r.ns);
    r.fw.apply(&ls[3], Enforcement::Lockdown, LOCKDOWN).unwrap();
    replace_rule(&r.ns, "lock_dr", "echo-request", "accept");
    assert!(ping(&r.ns, "10.99.0.2"), "the accept lets pings through");
    if own_read_first {
        assert_ne!(one(&mut r, &ls, "dr"), Observed::Locked);
    }
    for _ in 0..3 {
        let seen = r.fw.observe(&ls, None).unwrap();
        assert_ne!(seen["dr"].state, Observed::Locked, "{seen:?}");
        touch_table(&r.ns);
    }
    assert_ne!(one(&mut r, &ls, "dr"), Observed::Locked);
    // Our own load again: locked, and read back so.
    assert_eq!(
        apply(&mut r, &ls, 3, Enforcement::Lockdown, LOCKDOWN),
        Observed::Locked
    );
    assert!(!ping(&r.ns, "10.99.0.2"), "locked");
}
