//! The enforcement logic against a fake kernel: every flip is judged by
//! what the fake shows afterwards, so a backend that says "done" without
//! doing it is caught, and the ladder's order is checked call by call.

use super::*;
use crate::policy::{ExpiredAction, Files, Policy, Rulesets};
use crate::ruleset::LinkCheck;
use crate::state;
use crate::tool::FwError;
use std::sync::{Arc, Mutex};

/// A kernel in memory: what each link's chain holds and the guard, the
/// calls made, and knobs that make steps fail or lie.
#[derive(Default)]
struct Kernel {
    chain: BTreeMap<String, Observed>,
    guard: BTreeSet<String>,
    calls: Vec<String>,
    /// The first N applies fail.
    fail_applies: usize,
    /// apply(lockdown) answers Ok but changes nothing (a lying tool).
    lockdown_lies: bool,
    /// apply(lockdown) answers Ok and leaves the chain proving nothing.
    lockdown_breaks: bool,
    fail_clear: bool,
    fail_init: bool,
    fail_guard: bool,
    /// Links whose lockdown was loaded from the bundle (not the drop):
    /// it lets WireGuard handshakes through.
    handshakes: BTreeSet<String>,
    /// The backend has a site lock; it answers Ok but changes nothing.
    site_lock: bool,
    site_lies: bool,
    /// The site lock holds: every link reads locked.
    site: bool,
    /// Links whose lockdown an earlier run loaded.
    inherited: BTreeSet<String>,
    /// observe_each answers one read-back fewer than asked (a backend's bug).
    short_read_back: bool,
    /// Every read-back fails.
    fail_observe: bool,
}

#[derive(Default)]
struct Fake {
    k: Arc<Mutex<Kernel>>,
}

fn fake(knobs: Kernel) -> Fake {
    Fake {
        k: Arc::new(Mutex::new(knobs)),
    }
}

impl LinkCheck for Fake {
    fn extension(&self) -> &'static str {
        "nft"
    }
    fn check(&self, _: &LinkTarget, _: Enforcement, _: &str) -> Result<(), String> {
        Ok(())
    }
}

impl Firewall for Fake {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn init(&mut self, _: &[LinkTarget]) -> Result<(), FwError> {
        let mut k = self.k.lock().unwrap();
        k.calls.push("init".into());
        if k.fail_init {
            return Err(FwError::refused("injected"));
        }
        Ok(())
    }
    fn apply(&mut self, l: &LinkTarget, s: Enforcement, r: &str) -> Result<(), FwError> {
        let mut k = self.k.lock().unwrap();
        k.calls.push(format!("apply {} {s} {}", l.name, r.trim()));
        if k.fail_applies > 0 {
            k.fail_applies -= 1;
            return Err(FwError::refused("injected"));
        }
        match s {
            Enforcement::Lockdown if k.lockdown_lies => {}
            Enforcement::Lockdown if k.lockdown_breaks => {
                k.chain.insert(l.name.clone(), Observed::unknown("broken"));
            }
            Enforcement::Lockdown => {
                k.chain.insert(l.name.clone(), Observed::Locked);
                k.handshakes.insert(l.name.clone());
                k.inherited.remove(&l.name);
            }
            Enforcement::Open => {
                // As nft's: an open ends the site lock, each link locked.
                if std::mem::take(&mut k.site) {
                    for s in k.chain.values_mut() {
                        *s = Observed::Locked;
                    }
                }
                k.chain.insert(l.name.clone(), Observed::Open);
            }
        }
        Ok(())
    }
    fn open_many(&mut self, links: &[&LinkTarget], r: &str) -> Vec<Result<(), FwError>> {
        let names: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
        (self.k.lock().unwrap().calls).push(format!("open_many {}", names.join(",")));
        (links.iter())
            .map(|l| self.apply(l, Enforcement::Open, r))
            .collect()
    }
    fn lock_many(&mut self, links: &[&LinkTarget], r: &str) -> Vec<Result<(), FwError>> {
        let names: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
        (self.k.lock().unwrap().calls).push(format!("lock_many {}", names.join(",")));
        (links.iter())
            .map(|l| self.apply(l, Enforcement::Lockdown, r))
            .collect()
    }
    fn lock_site(&mut self, _: &[LinkTarget], _: Option<&str>) -> Result<bool, FwError> {
        let mut k = self.k.lock().unwrap();
        if !k.site_lock {
            return Ok(false);
        }
        k.calls.push("site".into());
        k.site |= !k.site_lies;
        Ok(true)
    }
    // The same knobs: the tests' links all read one QBER section.
    fn lock_source(
        &mut self,
        source: &str,
        _: &[LinkTarget],
        _: Option<&str>,
    ) -> Result<bool, FwError> {
        let mut k = self.k.lock().unwrap();
        if !k.site_lock {
            return Ok(false);
        }
        k.calls.push(format!("source {source}"));
        k.site |= !k.site_lies;
        Ok(true)
    }
    fn clear(&mut self, l: &LinkTarget) -> Result<(), FwError> {
        let mut k = self.k.lock().unwrap();
        k.calls.push(format!("clear {}", l.name));
        // As nft's: a chain this run tried to write is its own.
        k.inherited.remove(&l.name);
        if k.fail_clear {
            return Err(FwError::refused("injected"));
        }
        k.chain.insert(l.name.clone(), Observed::Locked);
        k.handshakes.remove(&l.name);
        Ok(())
    }
    fn passes_handshakes(&self, l: &LinkTarget) -> bool {
        self.k.lock().unwrap().handshakes.contains(&l.name)
    }
    fn lock_inherited(&self, l: &LinkTarget) -> bool {
        self.k.lock().unwrap().inherited.contains(&l.name)
    }
    fn relocks_at_once(&self) -> usize {
        2
    }
    fn observe(
        &mut self,
        links: &[LinkTarget],
        only: Option<&str>,
    ) -> Result<BTreeMap<String, Readback>, FwError> {
        let k = self.k.lock().unwrap();
        if k.fail_observe {
            return Err(FwError::refused("injected read-back failure"));
        }
        Ok(links
            .iter()
            .filter(|l| only.is_none_or(|o| o == l.name))
            .map(|l| {
                let state = match k.site {
                    true => Observed::Locked,
                    false => (k.chain.get(&l.name).cloned()).unwrap_or(Observed::unknown("empty")),
                };
                let guarded = k.guard.contains(&l.name);
                (l.name.clone(), Readback { state, guarded })
            })
            .collect())
    }
    fn observe_each(&mut self, links: &[LinkTarget]) -> Result<Vec<Readback>, FwError> {
        // In name order, as the links are.
        let mut seen: Vec<Readback> = self.observe(links, None)?.into_values().collect();
        if self.k.lock().unwrap().short_read_back {
            seen.pop();
        }
        Ok(seen)
    }
    fn set_guard(&mut self, links: &[LinkTarget]) -> Result<(), FwError> {
        let mut k = self.k.lock().unwrap();
        let names: Vec<String> = links.iter().map(|l| l.name.clone()).collect();
        k.calls.push(format!("guard [{}]", names.join(" ")));
        if k.fail_guard {
            return Err(FwError::refused("injected"));
        }
        k.guard = names.into_iter().collect();
        Ok(())
    }
}

fn bundle() -> Bundle {
    let mut m = BTreeMap::new();
    m.insert("anchors/open.nft".to_string(), b"accept\n".to_vec());
    m.insert("anchors/lockdown.nft".to_string(), b"drop\n".to_vec());
    Bundle {
        policy: Policy {
            serial: 1,
            not_after: None,
            expired_action: ExpiredAction::Keep,
            defaults: Default::default(),
            links: BTreeMap::new(),
            rulesets: Rulesets {
                open: "anchors/open".into(),
                lockdown: "anchors/lockdown".into(),
            },
        },
        files: Files::from_map(m).unwrap(),
        digest: [0; 32],
        signer: "test".into(),
        warnings: Vec::new(),
    }
}

fn links(fw: Fake, dir: &std::path::Path) -> Links {
    links_named(fw, dir, &["dr"])
}

/// Links `names`, each on an interface and address of its own.
fn links_named(fw: Fake, dir: &std::path::Path, names: &[&str]) -> Links {
    let ifs: Vec<String> = (0..names.len()).map(|i| format!("wg{i}")).collect();
    let on: Vec<(&str, &str)> = names
        .iter()
        .copied()
        .zip(ifs.iter().map(|s| &**s))
        .collect();
    links_on(fw, dir, &on)
}

/// Links (name, WireGuard interface), each with an address of its own.
fn links_on(fw: Fake, dir: &std::path::Path, on: &[(&str, &str)]) -> Links {
    let names: Vec<&str> = on.iter().map(|(n, _)| *n).collect();
    let mut text = "[policy]\npubkeys = [\"/k.pub\"]\n[qber.s]\ndriver = \"sim\"\n".to_string();
    for (i, (n, wg)) in on.iter().enumerate() {
        text.push_str(&format!(
            "[link.{n}]\nqber = \"s\"\nqber_id = \"x\"\nwg_interface = \"{wg}\"\n\
             wg_port = 51820\naddresses = [\"192.0.2.{}\"]\n",
            i + 2
        ));
    }
    let conf = crate::conf::parse("t.conf", &text).unwrap();
    let map = (names.iter())
        .map(|n| (n.to_string(), LinkCtl::new()))
        .collect();
    let targets = crate::ruleset::targets(&conf).into_values().collect();
    Links::new(
        map,
        targets,
        Box::new(fw),
        State::default(),
        dir.join("state"),
    )
}

/// Links `chains` names, each chain as the kernel holds it: the fake
/// kernel and the links over it.
fn in_kernel(
    fake: Fake,
    dir: &std::path::Path,
    chains: &[(&str, Observed)],
) -> (Links, Arc<Mutex<Kernel>>) {
    let k = fake.k.clone();
    for (n, state) in chains {
        k.lock().unwrap().chain.insert(n.to_string(), state.clone());
    }
    let names: Vec<&str> = chains.iter().map(|(n, _)| *n).collect();
    (links_named(fake, dir, &names), k)
}

/// The engine hears every link's state, as the loop's sends after each
/// handler make it (`to_engine.rs`).
fn tell(l: &Links) {
    for c in l.links.values() {
        c.tell();
    }
}

/// The engine hears link `name`'s state (a handler's own send).
fn tell_one(l: &Links, name: &str) {
    l.links[name].tell();
}

fn calls(k: &Arc<Mutex<Kernel>>) -> Vec<String> {
    std::mem::take(&mut k.lock().unwrap().calls)
}

/// An open link, as read back.
fn opened(fake: Fake, dir: &std::path::Path) -> (Links, Arc<Mutex<Kernel>>) {
    let k = fake.k.clone();
    k.lock().unwrap().chain.insert("dr".into(), Observed::Open);
    let mut l = links(fake, dir);
    l.set_engine_reasons("dr", Reasons::EMPTY, Some(0.02), Some(0.08));
    l.reconcile(Some(&bundle()), OpenedBy::Auto);
    assert_eq!(l.links["dr"].enforcement(), Enforcement::Open);
    calls(&k);
    tell(&l);
    (l, k)
}

#[test]
fn failed_lockdown_falls_back_to_the_drop() {
    let t = tempfile::tempdir().unwrap();
    let (mut l, k) = opened(
        fake(Kernel {
            fail_applies: 1,
            ..Kernel::default()
        }),
        t.path(),
    );
    l.set_parent_reason("dr", LockReason::Operator, true);
    assert_eq!(
        l.converge("dr", Some(&bundle()), OpenedBy::Auto, false),
        Some(Enforcement::Lockdown)
    );
    assert_eq!(calls(&k), ["apply dr lockdown drop", "clear dr"]);
    assert!(!l.links["dr"].lock_failed);
    // Lock = apply, then persist: the operator reason is on disk.
    let st = state::load(&t.path().join("state")).unwrap().unwrap();
    assert!(st.links["dr"].reasons.contains(LockReason::Operator));
}

#[test]
fn a_tool_that_lies_is_caught_by_the_read_back() {
    let t = tempfile::tempdir().unwrap();
    let (mut l, k) = opened(
        fake(Kernel {
            lockdown_lies: true,
            ..Kernel::default()
        }),
        t.path(),
    );
    l.set_parent_reason("dr", LockReason::Operator, true);
    l.converge("dr", Some(&bundle()), OpenedBy::Auto, false);
    // Ok from apply proved nothing: the drop was needed and was read back.
    assert_eq!(calls(&k), ["apply dr lockdown drop", "clear dr"]);
    assert_eq!(l.links["dr"].kernel.state, Observed::Locked);
}

#[test]
fn nothing_works_then_the_guard_holds_until_the_chain_is_repaired() {
    let t = tempfile::tempdir().unwrap();
    let (mut l, k) = opened(
        fake(Kernel {
            fail_applies: usize::MAX,
            fail_clear: true,
            fail_init: true,
            ..Kernel::default()
        }),
        t.path(),
    );
    l.set_parent_reason("dr", LockReason::Operator, true);
    l.converge("dr", Some(&bundle()), OpenedBy::Auto, false);
    assert_eq!(
        calls(&k),
        ["apply dr lockdown drop", "clear dr", "init", "guard [dr]"]
    );
    assert!(l.links["dr"].kernel.guarded);
    assert!(!l.links["dr"].lock_failed);
    assert_eq!(l.links["dr"].enforcement(), Enforcement::Lockdown);
    // Every tick walks the ladder again; once the chain shows the drop,
    // the guard goes.
    l.reconcile(Some(&bundle()), OpenedBy::Auto);
    assert_eq!(
        k.lock().unwrap().guard.len(),
        1,
        "guard kept while unrepaired"
    );
    calls(&k);
    {
        let mut k = k.lock().unwrap();
        (k.fail_applies, k.fail_clear, k.fail_init) = (0, false, false);
    }
    l.reconcile(Some(&bundle()), OpenedBy::Auto);
    assert_eq!(l.links["dr"].kernel.state, Observed::Locked);
    assert!(k.lock().unwrap().guard.is_empty());
    assert!(!l.links["dr"].kernel.guarded);
}

#[test]
fn no_step_works_is_lockdown_failed_and_retried_every_tick() {
    let t = tempfile::tempdir().unwrap();
    let (mut l, k) = opened(
        fake(Kernel {
            fail_applies: usize::MAX,
            fail_clear: true,
            fail_init: true,
            fail_guard: true,
            ..Kernel::default()
        }),
        t.path(),
    );
    l.set_parent_reason("dr", LockReason::Operator, true);
    l.converge("dr", Some(&bundle()), OpenedBy::Auto, false);
    tell(&l);
    assert!(l.links["dr"].lock_failed);
    // Never reported as locked: the kernel shows it open.
    assert_eq!(l.links["dr"].kernel.state, Observed::Open);
    calls(&k);
    let changed = l.reconcile(Some(&bundle()), OpenedBy::Auto);
    assert!(changed.is_empty());
    assert_eq!(calls(&k).len(), 4, "the whole ladder again");
    // The tool recovers: the next tick locks and clears the failure.
    k.lock().unwrap().fail_applies = 0;
    let changed = l.reconcile(Some(&bundle()), OpenedBy::Auto);
    assert_eq!(changed, [("dr".to_string(), Enforcement::Lockdown)]);
    assert!(!l.links["dr"].lock_failed);
}

#[test]
fn tampering_is_found_by_the_tick_and_undone() {
    let t = tempfile::tempdir().unwrap();
    let (mut l, k) = opened(Fake::default(), t.path());
    l.set_parent_reason("dr", LockReason::Operator, true);
    l.converge("dr", Some(&bundle()), OpenedBy::Auto, false);
    calls(&k);
    // Someone flushes the chain: the kernel no longer shows the lockdown.
    k.lock()
        .unwrap()
        .chain
        .insert("dr".into(), Observed::unknown("link_dr empty"));
    l.reconcile(Some(&bundle()), OpenedBy::Auto);
    assert_eq!(calls(&k), ["apply dr lockdown drop"]);
    assert_eq!(l.links["dr"].kernel.state, Observed::Locked);
}

/// A link the kernel shows locked, its engine reporting no reason, read
/// back: a converge now wants it open.
fn locked(fake: Fake, dir: &std::path::Path) -> (Links, Arc<Mutex<Kernel>>) {
    let k = fake.k.clone();
    k.lock()
        .unwrap()
        .chain
        .insert("dr".into(), Observed::Locked);
    let mut l = links(fake, dir);
    l.set_engine_reasons("dr", Reasons::EMPTY, Some(0.02), Some(0.08));
    l.observe_all();
    tell(&l);
    (l, k)
}

/// A backend answering fewer read-backs than links (a bug of ours) leaves
/// no link with its last read-back: each counts as unknown, and the reason
/// says that it is a bug to report, not a setting to change.
#[test]
fn a_short_read_back_leaves_every_link_unknown() {
    let t = tempfile::tempdir().unwrap();
    let fake = fake(Kernel {
        short_read_back: true,
        ..Kernel::default()
    });
    let (l, _k) = locked(fake, t.path());
    match &l.links["dr"].kernel.state {
        Observed::Unknown { why, .. } => {
            assert!(why.contains("the fake backend answered 0 read-backs for 1 links"));
            assert!(why.contains("please report it"), "{why}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn failed_open_stays_locked_and_is_retried() {
    let t = tempfile::tempdir().unwrap();
    let fake = fake(Kernel {
        fail_applies: 1,
        ..Kernel::default()
    });
    let (mut l, k) = locked(fake, t.path());
    let b = bundle();
    assert_eq!(l.converge("dr", Some(&b), OpenedBy::Auto, false), None);
    assert_eq!(l.links["dr"].enforcement(), Enforcement::Lockdown);
    // The next tick's reconcile retries and opens.
    let changed = l.reconcile(Some(&b), OpenedBy::Auto);
    assert_eq!(changed, [("dr".to_string(), Enforcement::Open)]);
    assert_eq!(
        calls(&k)
            .iter()
            .filter(|c| c.starts_with("apply dr open"))
            .count(),
        2
    );
}

/// A gated link that was locked opens only once the parent has seen a
/// new WireGuard session: until then it is held with `no-session` under the
/// bundle's lockdown (which lets handshakes through, where the drop did
/// not), and its peer is due for re-creation. Every later open after a
/// lockdown is gated again.
#[test]
fn a_locked_link_opens_only_on_a_new_session() {
    let t = tempfile::tempdir().unwrap();
    let (mut l, k) = locked(Fake::default(), t.path());
    l.session_gate.insert("dr".into());
    let b = bundle();
    assert_eq!(l.converge("dr", Some(&b), OpenedBy::Auto, false), None);
    assert!(l.links["dr"].parent.contains(LockReason::NoSession));
    assert_eq!(l.links["dr"].enforcement(), Enforcement::Lockdown);
    assert_eq!(l.session_due, BTreeSet::from(["dr".to_string()]));
    assert_eq!(calls(&k), ["apply dr lockdown drop"]);
    tell(&l);
    // Ticks change nothing while no session is seen.
    assert!(l.reconcile(Some(&b), OpenedBy::Auto).is_empty());
    assert!(calls(&k).iter().all(|c| !c.starts_with("apply")));
    assert_eq!(l.session_made("dr", Some(&b)), Some(Enforcement::Open));
    assert!(!l.links["dr"].parent.contains(LockReason::NoSession));
    assert_eq!(calls(&k)[0], "apply dr open accept");
    // A lockdown, then its reason gone: held again.
    l.session_due.clear();
    l.set_engine_reasons(
        "dr",
        [LockReason::Qber].into_iter().collect(),
        Some(0.2),
        Some(0.08),
    );
    l.converge("dr", Some(&b), OpenedBy::Auto, false);
    l.set_engine_reasons("dr", Reasons::EMPTY, Some(0.02), Some(0.08));
    assert_eq!(l.converge("dr", Some(&b), OpenedBy::Auto, false), None);
    assert!(l.links["dr"].parent.contains(LockReason::NoSession));
    assert!(l.session_due.contains("dr"));
    // Without the gate the same link opens at once.
    l.session_gate.clear();
    l.set_parent_reason("dr", LockReason::NoSession, false);
    assert_eq!(
        l.converge("dr", Some(&b), OpenedBy::Auto, false),
        Some(Enforcement::Open)
    );
}

#[test]
fn no_policy_means_the_drop_and_never_opened() {
    let t = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let k = fake.k.clone();
    let mut l = links(fake, t.path());
    l.set_engine_reasons("dr", Reasons::EMPTY, None, None);
    l.set_parent_reason("dr", LockReason::NoPolicy, true);
    l.reconcile(None, OpenedBy::Auto);
    assert_eq!(calls(&k), ["clear dr"]);
    // Even with the reason gone, no bundle means no open ruleset: stays locked.
    l.set_parent_reason("dr", LockReason::NoPolicy, false);
    tell(&l);
    assert!(l.reconcile(None, OpenedBy::Auto).is_empty());
    assert_eq!(l.links["dr"].enforcement(), Enforcement::Lockdown);
}

#[test]
fn silent_engine_keeps_a_proven_state_and_locks_an_unproven_one() {
    let t = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let k = fake.k.clone();
    k.lock().unwrap().chain.insert("dr".into(), Observed::Open);
    let mut l = links(fake, t.path());
    assert_eq!(l.links["dr"].desired(), None);
    // The first read-back is news (the record was "not read yet"), and
    // nothing is touched: an open link is kept before the engine reports.
    assert_eq!(
        l.reconcile(Some(&bundle()), OpenedBy::Auto),
        [("dr".to_string(), Enforcement::Open)]
    );
    assert!(calls(&k).is_empty());
    // A chain that proves nothing is locked at once, reason or not.
    k.lock()
        .unwrap()
        .chain
        .insert("dr".into(), Observed::unknown("link_dr altered"));
    l.reconcile(Some(&bundle()), OpenedBy::Auto);
    assert_eq!(calls(&k), ["apply dr lockdown drop"]);
    // Engine's first report clears process-failure (fresh state).
    l.set_parent_reason("dr", LockReason::ProcessFailure, true);
    l.set_engine_reasons("dr", Reasons::EMPTY, Some(0.02), None);
    assert!(!l.links["dr"].parent.contains(LockReason::ProcessFailure));
}

/// Links `names`, each locked in the kernel by an earlier run's lockdown
/// (du excepted: this run's) and to stay locked (QBER).
fn inherited(fake: Fake, dir: &std::path::Path) -> (Links, Arc<Mutex<Kernel>>) {
    let names = ["dr", "dt", "du", "dv"];
    let locked: Vec<(&str, Observed)> = names.iter().map(|n| (*n, Observed::Locked)).collect();
    let (mut l, k) = in_kernel(fake, dir, &locked);
    k.lock().unwrap().inherited = ["dr".into(), "dt".into(), "dv".into()].into();
    for n in names {
        l.set_engine_reasons(n, [LockReason::Qber].into_iter().collect(), Some(0.2), None);
    }
    (l, k)
}

/// Sliced passes to the end, as the main loop runs a tick's.
fn sliced_pass(l: &mut Links, bundle: Option<&Bundle>) -> Vec<(String, Enforcement)> {
    let later = Some(std::time::Instant::now() + std::time::Duration::from_secs(60));
    l.start_reconcile();
    let mut changed = Vec::new();
    while l.reconciling() {
        changed.extend(l.reconcile_more(bundle, OpenedBy::Auto, 1024, later));
    }
    changed
}

#[test]
fn a_lockdown_an_earlier_run_loaded_is_loaded_again_once() {
    let t = tempfile::tempdir().unwrap();
    let (mut l, k) = inherited(Fake::default(), t.path());
    // A whole reconcile (start-up, a site lock) does not wait for them.
    l.reconcile(Some(&bundle()), OpenedBy::Auto);
    assert!(calls(&k).is_empty());
    tell(&l);
    // A tick's pass locks them again together, as many at once as the
    // firewall takes (here two), a slice each.
    assert!(
        sliced_pass(&mut l, Some(&bundle())).is_empty(),
        "still locked"
    );
    assert_eq!(
        calls(&k),
        [
            "lock_many dr,dt",
            "apply dr lockdown drop",
            "apply dt lockdown drop",
            "lock_many dv",
            "apply dv lockdown drop"
        ]
    );
    assert_eq!(l.links["dr"].kernel.state, Observed::Locked);
    // This run's now: the next tick leaves them as they are.
    sliced_pass(&mut l, Some(&bundle()));
    assert!(calls(&k).is_empty());
}

#[test]
fn without_a_policy_an_earlier_runs_lockdown_becomes_the_drop() {
    let t = tempfile::tempdir().unwrap();
    let (mut l, k) = inherited(Fake::default(), t.path());
    sliced_pass(&mut l, None);
    assert_eq!(calls(&k), ["clear dr", "clear dt", "clear dv"]);
    sliced_pass(&mut l, None);
    assert!(calls(&k).is_empty());
}

/// A load that fails leaves the link locked by what it had: said once,
/// not tried again, and no further step of the ladder (the link is
/// locked; removing its peer would only add an outage).
#[test]
fn a_failed_relock_keeps_the_earlier_lockdown_and_goes_no_further() {
    let t = tempfile::tempdir().unwrap();
    let fake = fake(Kernel {
        fail_applies: 10,
        ..Kernel::default()
    });
    let (mut l, k) = inherited(fake, t.path());
    sliced_pass(&mut l, Some(&bundle()));
    let seen = calls(&k);
    assert!(
        seen.iter()
            .all(|c| c.starts_with("lock_many") || c.starts_with("apply")),
        "{seen:?}"
    );
    assert_eq!(l.links["dr"].kernel.state, Observed::Locked);
    assert!(!l.links["dr"].lock_failed);
    sliced_pass(&mut l, Some(&bundle()));
    assert!(calls(&k).is_empty(), "tried once");
}

/// A load that leaves the link proving nothing (not locked as read back)
/// walks the ladder: here the bundle's lockdown again, then the drop.
#[test]
fn a_relock_that_unlocks_walks_the_ladder() {
    let t = tempfile::tempdir().unwrap();
    let fake = fake(Kernel {
        lockdown_breaks: true,
        ..Kernel::default()
    });
    let (mut l, k) = inherited(fake, t.path());
    k.lock().unwrap().inherited = ["dr".into()].into();
    sliced_pass(&mut l, Some(&bundle()));
    assert_eq!(
        calls(&k),
        [
            "lock_many dr",
            "apply dr lockdown drop",
            "apply dr lockdown drop",
            "clear dr"
        ]
    );
    assert_eq!(l.links["dr"].kernel.state, Observed::Locked);
}

/// WireGuard in memory for the ladder's last rung: which peers exist.
struct FakeWg {
    present: Arc<Mutex<bool>>,
    fail_remove: bool,
}

impl crate::parent::wg::WgBackend for FakeWg {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn set_psk(&mut self, _: &WgPeer, _: &crate::secret::Psk) -> Result<(), WgError> {
        Err(WgError::NoSuchPeer)
    }
    fn get_psk(&mut self, _: &WgPeer) -> Result<crate::secret::Psk, WgError> {
        match *self.present.lock().unwrap() {
            true => Ok(crate::secret::Psk::from_bytes([0; 32])),
            false => Err(WgError::NoSuchPeer),
        }
    }
    fn public_key(&mut self, _: &str) -> Result<[u8; 32], WgError> {
        Ok([1; 32])
    }
    fn remove_peer(&mut self, _: &WgPeer) -> Result<(), WgError> {
        if self.fail_remove {
            return Err(WgError::Io("injected".into()));
        }
        *self.present.lock().unwrap() = false;
        Ok(())
    }
    fn new_session(
        &mut self,
        _: &WgPeer,
        _: u16,
    ) -> Result<crate::parent::wg::PeerConfig, WgError> {
        Err(WgError::Io("fake".into()))
    }
}

use crate::parent::wg::{WgError, WgPeer};

/// `links` with a WireGuard peer for `dr` behind the ladder's last rung.
fn with_tunnel(l: &mut Links, fail_remove: bool) -> Arc<Mutex<bool>> {
    let present = Arc::new(Mutex::new(true));
    let wg: Box<dyn crate::parent::wg::WgBackend> = Box::new(FakeWg {
        present: present.clone(),
        fail_remove,
    });
    let peer = WgPeer {
        interface: "wg0".into(),
        public_key: [1; 32],
    };
    let peers = crate::parent::wg::Peers::from_list(vec![("dr".to_string(), peer)]);
    l.tunnel = Some(Tunnel::new(Arc::new(Mutex::new(wg)), peers));
    present
}

fn nothing_works() -> Kernel {
    Kernel {
        fail_applies: usize::MAX,
        fail_clear: true,
        fail_init: true,
        fail_guard: true,
        ..Kernel::default()
    }
}

#[test]
fn no_firewall_step_works_then_the_peer_goes_and_is_never_recreated() {
    let t = tempfile::tempdir().unwrap();
    let (mut l, k) = opened(fake(nothing_works()), t.path());
    let present = with_tunnel(&mut l, false);
    l.set_parent_reason("dr", LockReason::Operator, true);
    assert_eq!(
        l.converge("dr", Some(&bundle()), OpenedBy::Auto, false),
        Some(Enforcement::Lockdown)
    );
    // The four firewall steps, then the peer: removed and read back gone.
    assert_eq!(calls(&k).len(), 4);
    assert!(!*present.lock().unwrap());
    let d = &l.links["dr"];
    assert!(d.peer_removed && !d.lock_failed);
    // The kernel's firewall still shows it open; the tunnel is what holds.
    assert_eq!(d.kernel.state, Observed::Open);
    assert_eq!(d.enforcement(), Enforcement::Lockdown);
    // The firewall recovers: the chain locks, the peer stays gone.
    {
        let mut k = k.lock().unwrap();
        let chain = std::mem::take(&mut k.chain);
        *k = Kernel {
            chain,
            ..Kernel::default()
        };
    }
    l.reconcile(Some(&bundle()), OpenedBy::Auto);
    assert_eq!(l.links["dr"].kernel.state, Observed::Locked);
    assert!(l.links["dr"].peer_removed);
    assert!(!*present.lock().unwrap(), "never re-created");
    // An operator restores the peer: seen by the next tick; still locked.
    *present.lock().unwrap() = true;
    l.reconcile(Some(&bundle()), OpenedBy::Auto);
    assert!(!l.links["dr"].peer_removed);
    assert_eq!(l.links["dr"].enforcement(), Enforcement::Lockdown);
}

#[test]
fn a_peer_that_cannot_be_removed_is_lockdown_failed() {
    let t = tempfile::tempdir().unwrap();
    let (mut l, _k) = opened(fake(nothing_works()), t.path());
    let present = with_tunnel(&mut l, true);
    l.set_parent_reason("dr", LockReason::Operator, true);
    l.converge("dr", Some(&bundle()), OpenedBy::Auto, false);
    assert!(*present.lock().unwrap());
    assert!(l.links["dr"].lock_failed);
    assert!(!l.links["dr"].peer_removed);
}

/// A firewall whose every tool hangs: killed at the timeout.
struct Hung {
    calls: Arc<Mutex<Vec<String>>>,
}

impl LinkCheck for Hung {
    fn extension(&self) -> &'static str {
        "nft"
    }
    fn check(&self, _: &LinkTarget, _: Enforcement, _: &str) -> Result<(), String> {
        Ok(())
    }
}

impl Firewall for Hung {
    fn name(&self) -> &'static str {
        "hung"
    }
    fn init(&mut self, _: &[LinkTarget]) -> Result<(), FwError> {
        self.hang("init")
    }
    fn apply(&mut self, _: &LinkTarget, _: Enforcement, _: &str) -> Result<(), FwError> {
        self.hang("apply")
    }
    fn clear(&mut self, _: &LinkTarget) -> Result<(), FwError> {
        self.hang("clear")
    }
    fn observe(
        &mut self,
        links: &[LinkTarget],
        _: Option<&str>,
    ) -> Result<BTreeMap<String, Readback>, FwError> {
        self.calls.lock().unwrap().push("observe".into());
        Ok(links
            .iter()
            .map(|l| {
                let rb = Readback {
                    state: Observed::Open,
                    guarded: false,
                };
                (l.name.clone(), rb)
            })
            .collect())
    }
    fn set_guard(&mut self, _: &[LinkTarget]) -> Result<(), FwError> {
        self.hang("guard")
    }
}

impl Hung {
    fn hang(&self, what: &str) -> Result<(), FwError> {
        self.calls.lock().unwrap().push(what.into());
        Err(FwError {
            what: what.into(),
            command: "nft -f -".into(),
            status: "killed after 10s".into(),
            stderr: String::new(),
        })
    }
}

#[test]
fn a_hung_tool_skips_the_other_firewall_steps_for_the_peer() {
    let t = tempfile::tempdir().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut map = BTreeMap::new();
    let conf = crate::conf::parse(
        "t.conf",
        "[policy]\npubkeys = [\"/k.pub\"]\n[qber.s]\ndriver = \"sim\"\n\
         [link.dr]\nqber = \"s\"\nqber_id = \"x\"\nwg_interface = \"wg0\"\nwg_port = 51820\n\
         addresses = [\"192.0.2.2\"]\n",
    )
    .unwrap();
    map.insert("dr".to_string(), LinkCtl::new());
    let fw = Hung {
        calls: seen.clone(),
    };
    let targets = crate::ruleset::targets(&conf).into_values().collect();
    let mut l = Links::new(
        map,
        targets,
        Box::new(fw),
        State::default(),
        t.path().join("state"),
    );
    let present = with_tunnel(&mut l, false);
    l.set_engine_reasons("dr", Reasons::EMPTY, Some(0.02), Some(0.08));
    l.observe_all();
    seen.lock().unwrap().clear();
    l.set_parent_reason("dr", LockReason::Operator, true);
    l.converge("dr", Some(&bundle()), OpenedBy::Auto, false);
    // One hung call, no read-back (it would hang too), then the peer.
    assert_eq!(*seen.lock().unwrap(), ["apply"]);
    assert!(!*present.lock().unwrap());
    assert_eq!(l.links["dr"].enforcement(), Enforcement::Lockdown);
}

#[test]
fn records_match_agrees_with_building_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = links(fake(Kernel::default()), dir.path());
    // What `persist` wrote before it had a cheaper test: every record.
    let built = |l: &Links| -> BTreeMap<String, LinkRecord> {
        (l.links.iter())
            .map(|(n, c)| (n.clone(), l.record(n, c.reasons())))
            .filter(|(_, r)| !r.is_empty())
            .collect()
    };
    let rec = |reasons: Reasons, epoch: u64| LinkRecord {
        reasons,
        epoch,
        verifier: None,
        installed_at: None,
    };
    let operator = {
        let mut r = Reasons::EMPTY;
        r.insert(LockReason::Operator);
        r
    };
    assert!(
        !operator.persisted().is_empty(),
        "operator survives a restart"
    );
    let mut seen = Vec::new();
    for (link_reasons, on_disk) in [
        (Reasons::EMPTY, vec![]),
        (operator, vec![]),
        (Reasons::EMPTY, vec![("dr", rec(Reasons::EMPTY, 7))]),
        (operator, vec![("dr", rec(operator, 7))]),
        (operator, vec![("dr", rec(Reasons::EMPTY, 7))]),
        (Reasons::EMPTY, vec![("dr", rec(operator, 0))]),
        // An empty record on disk (a journal entry) is left out of a write.
        (Reasons::EMPTY, vec![("dr", rec(Reasons::EMPTY, 0))]),
        // Records of links no longer configured, sorting either side.
        (Reasons::EMPTY, vec![("a", rec(operator, 1))]),
        (Reasons::EMPTY, vec![("zz", rec(operator, 1))]),
        (
            operator,
            vec![("a", rec(operator, 1)), ("dr", rec(operator, 2))],
        ),
        (
            operator,
            vec![("dr", rec(operator, 2)), ("zz", rec(operator, 1))],
        ),
    ] {
        l.links.get_mut("dr").unwrap().parent = link_reasons;
        l.state.links = on_disk
            .into_iter()
            .map(|(n, r)| (n.to_string(), r))
            .collect();
        let want = built(&l) == l.state.links;
        assert_eq!(l.records_match(), want, "{:?}", l.state.links);
        seen.push(want);
    }
    assert!(seen.contains(&true) && seen.contains(&false));
}

/// With `defer_opens` (the daemon's loop), a tick queues the links it
/// would open instead of opening them (each open is a kernel transaction
/// that waits), while a lockdown is never deferred; `open_queued` opens
/// them, as many as it is asked for.
#[test]
fn a_tick_defers_opens_but_never_a_lockdown() {
    let t = tempfile::tempdir().unwrap();
    let (mut l, k) = locked(fake(Kernel::default()), t.path());
    l.defer_opens = true;
    let b = bundle();
    assert_eq!(l.reconcile(Some(&b), OpenedBy::Auto), []);
    assert!(calls(&k).iter().all(|c| !c.starts_with("apply")));
    assert_eq!(l.links["dr"].enforcement(), Enforcement::Lockdown);
    assert!(l.opening.contains_key("dr"));
    // Queued twice by two ticks, opened once.
    l.reconcile(Some(&b), OpenedBy::Auto);
    assert_eq!(
        l.open_queued(Some(&b), 8),
        [("dr".to_string(), Some(Enforcement::Open))]
    );
    assert_eq!(l.open_queued(Some(&b), 8), []);
    assert_eq!(l.links["dr"].enforcement(), Enforcement::Open);
    // A lockdown in a tick happens in it.
    let mut qber = Reasons::EMPTY;
    qber.insert(LockReason::Qber);
    l.set_engine_reasons("dr", qber, Some(0.12), Some(0.08));
    calls(&k);
    l.reconcile(Some(&b), OpenedBy::Auto);
    assert!(calls(&k).iter().any(|c| c.starts_with("apply dr lockdown")));
    assert_eq!(l.links["dr"].enforcement(), Enforcement::Lockdown);
    assert!(l.opening.is_empty());
}

/// `lock_all`: one site lock, read back, and no flip per link; the
/// `lockdown` events and the state file as for a link's own lockdown. A
/// site lock that changed nothing, or none, is caught by the read-back
/// and each link walks its ladder.
/// Queued opens go to the firewall together: the links `converge` would
/// only open in one `open_many`, no more than asked for; a link that must
/// wait for a new session (its lockdown may be a tool run) in a turn of
/// its own. Each is read back, and one whose open failed stays locked and
/// is queued again by the next tick.
#[test]
fn queued_opens_are_opened_together() {
    let t = tempfile::tempdir().unwrap();
    let fake = fake(Kernel {
        fail_applies: 1,
        ..Kernel::default()
    });
    let names = ["a", "b", "c", "d"];
    let chains = names.map(|n| (n, Observed::Locked));
    let (mut l, k) = in_kernel(fake, t.path(), &chains);
    for n in names {
        l.set_engine_reasons(n, Reasons::EMPTY, Some(0.02), Some(0.08));
    }
    l.defer_opens = true;
    l.session_gate.insert("c".into());
    let b = bundle();
    l.observe_all();
    tell(&l);
    assert_eq!(l.reconcile(Some(&b), OpenedBy::Auto), []);
    calls(&k);
    assert_eq!(l.open_queued(Some(&b), 0), []);
    assert_eq!(l.opening.len(), 4);
    let out = l.open_queued(Some(&b), 8);
    assert_eq!(
        calls(&k),
        [
            "open_many a,b",
            "apply a open accept",
            "apply b open accept"
        ]
    );
    assert_eq!(
        out,
        [
            ("a".to_string(), None),
            ("b".to_string(), Some(Enforcement::Open))
        ]
    );
    assert_eq!(l.links["a"].enforcement(), Enforcement::Lockdown);
    assert_eq!(l.open_queued(Some(&b), 8), [("c".to_string(), None)]);
    assert_eq!(calls(&k), ["apply c lockdown drop"]);
    assert!(l.links["c"].parent.contains(LockReason::NoSession));
    assert_eq!(
        l.open_queued(Some(&b), 8),
        [("d".to_string(), Some(Enforcement::Open))]
    );
    assert!(l.opening.is_empty());
    l.reconcile(Some(&b), OpenedBy::Auto);
    assert_eq!(l.opening.keys().collect::<Vec<_>>(), ["a"]);
    assert_eq!(
        l.open_queued(Some(&b), 1),
        [("a".to_string(), Some(Enforcement::Open))]
    );
}

/// A re-application reaching links a tick opened meanwhile (open in the
/// kernel and to stay open) opens them again together, in one turn and one
/// `open_many`, not in a turn each (at 10,000 links ~5,000 turns, which
/// held back every preload behind them).
#[test]
fn a_reapplication_opens_again_in_bulk() {
    let t = tempfile::tempdir().unwrap();
    let names = ["a", "b", "c"];
    let chains = names.map(|n| (n, Observed::Open));
    let (mut l, k) = in_kernel(fake(Kernel::default()), t.path(), &chains);
    for n in names {
        l.set_engine_reasons(n, Reasons::EMPTY, Some(0.02), Some(0.08));
    }
    l.observe_all();
    calls(&k);
    let all: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    assert_eq!(l.turn(8, 8, &all, true), 3);
    assert_eq!(l.turn(2, 8, &all, true), 2, "two opens at most");
    assert_eq!(l.turn(8, 8, &all, false), 1, "unforced, nothing to open");
    let out = l.reapply_many(all, Some(&bundle()));
    assert_eq!(
        out,
        [
            ("a".to_string(), None),
            ("b".to_string(), None),
            ("c".to_string(), None)
        ]
    );
    let c = calls(&k);
    assert_eq!(c[0], "open_many a,b,c", "{c:?}");
    assert_eq!(c.iter().filter(|x| x.starts_with("open_many")).count(), 1);
    for n in names {
        assert_eq!(l.links[n].enforcement(), Enforcement::Open);
    }
}

/// A re-application (`reapply_many`) locks the links it would only lock
/// again in one `lock_many` and opens those it would only open in one
/// `open_many`; a link whose lockdown the kernel does not show walks the
/// ladder alone (here: the bundle's lockdown again, then the drop). The
/// links QBER holds are open in the kernel still, as right after a sample.
#[test]
fn a_reapplication_locks_and_opens_in_bulk() {
    let t = tempfile::tempdir().unwrap();
    let fake = fake(Kernel::default());
    let k = fake.k.clone();
    let names = ["a", "b", "c", "d"];
    for n in names {
        let s = if n == "d" {
            Observed::Locked
        } else {
            Observed::Open
        };
        k.lock().unwrap().chain.insert(n.into(), s);
    }
    let mut l = links_named(fake, t.path(), &names);
    let mut qber = Reasons::EMPTY;
    qber.insert(LockReason::Qber);
    for n in names {
        let r = if n == "d" { Reasons::EMPTY } else { qber };
        l.set_engine_reasons(n, r, Some(0.02), Some(0.08));
    }
    l.observe_all();
    calls(&k);
    let b = bundle();
    let all: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    assert_eq!(l.turn(8, 8, &all, true), 4);
    assert_eq!(l.turn(8, 2, &all, true), 2, "two relocks at most");
    assert_eq!(l.turn(8, 8, &all, false), 1, "a lock is no open");
    // b's bulk lockdown is a lie: the ladder takes it from there.
    k.lock().unwrap().lockdown_lies = true;
    let mut out = l.reapply_many(all, Some(&b));
    out.sort_by(|x, y| x.0.cmp(&y.0));
    let locked = Some(Enforcement::Lockdown);
    assert_eq!(
        out,
        [
            ("a".to_string(), locked),
            ("b".to_string(), locked),
            ("c".to_string(), locked),
            ("d".to_string(), Some(Enforcement::Open))
        ]
    );
    let c = calls(&k);
    assert_eq!(
        c[..5],
        [
            "open_many d",
            "apply d open accept",
            "lock_many a,b,c",
            "apply a lockdown drop",
            "apply b lockdown drop"
        ]
    );
    // The lie is caught for every link; each then walks the ladder.
    for n in ["a", "b", "c"] {
        assert!(c.contains(&format!("clear {n}")), "{c:?}");
        assert_eq!(l.links[n].enforcement(), Enforcement::Lockdown);
        assert!(!l.links[n].lock_failed, "{n}");
    }
}

#[test]
fn lock_all_is_one_site_lock_proven_by_the_read_back() {
    let b = bundle();
    for (site_lock, site_lies, want) in [
        (true, false, vec!["site"]),
        (true, true, vec!["site", "apply dr lockdown drop"]),
        (false, false, vec!["apply dr lockdown drop"]),
    ] {
        let t = tempfile::tempdir().unwrap();
        let knobs = Kernel {
            site_lock,
            site_lies,
            ..Kernel::default()
        };
        let (mut l, k) = opened(fake(knobs), t.path());
        let changed = l.lock_all(LockReason::Operator, Some(&b), OpenedBy::Operator);
        assert_eq!(calls(&k), want, "site lock {site_lock}, lies {site_lies}");
        assert_eq!(changed, [("dr".to_string(), Enforcement::Lockdown)]);
        assert_eq!(l.links["dr"].enforcement(), Enforcement::Lockdown);
        assert!(!l.links["dr"].lock_failed);
        let st = state::load(&t.path().join("state")).unwrap().unwrap();
        assert!(st.links["dr"].reasons.contains(LockReason::Operator));
        // The operator's unlock opens it: the site lock ends first.
        l.set_parent_reason("dr", LockReason::Operator, false);
        l.converge("dr", Some(&b), OpenedBy::Operator, false);
        assert_eq!(l.links["dr"].enforcement(), Enforcement::Open);
        assert!(!k.lock().unwrap().site);
    }
}

/// `lock_source`: one source lock, then `source-lost` on the link, read
/// back with no flip of its own; one that changed nothing, or none, is
/// caught by the read-back and the link walks its ladder. A link the
/// engine has not reported on keeps its reasons.
#[test]
fn lock_source_is_one_source_lock_proven_by_the_read_back() {
    let b = bundle();
    for (source_lock, lies, want) in [
        (true, false, vec!["source s"]),
        (true, true, vec!["source s", "apply dr lockdown drop"]),
        (false, false, vec!["apply dr lockdown drop"]),
    ] {
        let t = tempfile::tempdir().unwrap();
        let knobs = Kernel {
            site_lock: source_lock,
            site_lies: lies,
            ..Kernel::default()
        };
        let (mut l, k) = opened(fake(knobs), t.path());
        assert_eq!(&*l.target("dr").unwrap().qber, "s");
        let changed = l.lock_source("s", None, Some(&b));
        assert_eq!(calls(&k), want, "source lock {source_lock}, lies {lies}");
        assert_eq!(changed, [("dr".to_string(), Enforcement::Lockdown)]);
        assert_eq!(l.links["dr"].enforcement(), Enforcement::Lockdown);
        assert!(l.links["dr"].reasons().contains(LockReason::SourceLost));
        // A fresh reading clears it: the open ends the source lock first.
        l.set_engine_reasons("dr", Reasons::EMPTY, Some(0.02), Some(0.08));
        l.converge("dr", Some(&b), OpenedBy::Auto, false);
        assert_eq!(l.links["dr"].enforcement(), Enforcement::Open);
        assert!(!k.lock().unwrap().site);
    }
    // Not reported on yet: the kernel is locked, the reasons wait for the
    // engine's own report.
    let t = tempfile::tempdir().unwrap();
    let knobs = Kernel {
        site_lock: true,
        ..Kernel::default()
    };
    let mut l = links(fake(knobs), t.path());
    l.lock_source("s", None, Some(&b));
    assert!(l.links["dr"].engine.is_none());
    assert_eq!(l.links["dr"].enforcement(), Enforcement::Lockdown);
}

/// A tick's reconcile in slices: each slice converges only its links,
/// from what the kernel holds when it comes (a flip between slices read
/// its own link back), and the pass ends with the last link. A link the
/// listing found changed is reported even if its slice leaves it so.
#[test]
fn a_tick_reconciles_a_slice_of_links_a_turn() {
    let t = tempfile::tempdir().unwrap();
    let chains = ["a", "b", "c"].map(|n| (n, Observed::Open));
    let (mut l, k) = in_kernel(Fake::default(), t.path(), &chains);
    let b = bundle();
    for n in ["a", "b"] {
        l.set_engine_reasons(n, Reasons::EMPTY, Some(0.02), Some(0.08));
    }
    l.reconcile(Some(&b), OpenedBy::Auto);
    assert!(!l.reconciling());
    calls(&k);
    tell(&l);
    // Behind our back: every chain flushed, and c (the engine has not
    // reported on it: kept as the kernel holds it) now reads locked.
    for n in ["a", "b"] {
        k.lock()
            .unwrap()
            .chain
            .insert(n.into(), Observed::unknown("flushed"));
    }
    k.lock().unwrap().chain.insert("c".into(), Observed::Locked);
    l.start_reconcile();
    assert!(l.reconciling());
    assert_eq!(calls(&k), [] as [String; 0], "the listing flips nothing");
    // First slice: a alone, repaired.
    assert_eq!(l.reconcile_more(Some(&b), OpenedBy::Auto, 1, None), []);
    assert_eq!(calls(&k), ["apply a open accept"]);
    assert!(l.reconciling());
    // Between slices, b locks for QBER (its own flip, read back).
    let mut qber = Reasons::EMPTY;
    qber.insert(LockReason::Qber);
    l.set_engine_reasons("b", qber, Some(0.12), Some(0.08));
    l.converge("b", Some(&b), OpenedBy::Auto, false);
    assert_eq!(calls(&k), ["apply b lockdown drop"]);
    tell_one(&l, "b");
    // b's slice keeps it locked (the listing's "flushed" is not used) and
    // the engine has heard it; c, which the listing found locked, is
    // reported.
    assert_eq!(
        l.reconcile_more(Some(&b), OpenedBy::Auto, 8, None),
        [("c".to_string(), Enforcement::Lockdown)]
    );
    assert_eq!(calls(&k), [] as [String; 0]);
    assert!(!l.reconciling());
    assert_eq!(l.reconcile_more(Some(&b), OpenedBy::Auto, 8, None), []);
}

/// Links a, b and c, open, the engine reporting no reason, read back and
/// told.
fn open_abc(dir: &std::path::Path) -> (Links, Arc<Mutex<Kernel>>) {
    let chains = ["a", "b", "c"].map(|n| (n, Observed::Open));
    let (mut l, k) = in_kernel(Fake::default(), dir, &chains);
    for n in ["a", "b", "c"] {
        l.set_engine_reasons(n, Reasons::EMPTY, Some(0.02), Some(0.08));
    }
    l.reconcile(Some(&bundle()), OpenedBy::Auto);
    calls(&k);
    tell(&l);
    (l, k)
}

/// A tick that comes while a pass is under way reads every link back
/// again and the pass goes on from where it was to its end (a pass that
/// went round instead would never end while passes took longer than a
/// tick, and the loop's opens come after it); a whole reconcile covers
/// every link.
#[test]
fn a_tick_during_a_pass_goes_on_from_where_it_was() {
    let t = tempfile::tempdir().unwrap();
    let (mut l, k) = open_abc(t.path());
    let b = bundle();
    let flush = |k: &Arc<Mutex<Kernel>>, n: &str| {
        (k.lock().unwrap().chain).insert(n.into(), Observed::unknown("flushed"));
    };
    for n in ["a", "b", "c"] {
        flush(&k, n);
    }
    l.start_reconcile();
    l.reconcile_more(Some(&b), OpenedBy::Auto, 2, None);
    assert_eq!(calls(&k), ["apply a open accept", "apply b open accept"]);
    l.start_reconcile();
    l.reconcile_more(Some(&b), OpenedBy::Auto, 2, None);
    assert_eq!(calls(&k), ["apply c open accept"]);
    assert!(!l.reconciling());
    l.start_reconcile();
    l.reconcile_more(Some(&b), OpenedBy::Auto, 1, None);
    for n in ["a", "b", "c"] {
        flush(&k, n);
    }
    l.reconcile(Some(&b), OpenedBy::Auto);
    assert_eq!(calls(&k).len(), 3);
    assert!(!l.reconciling());
}

/// A change a listing found is reported even when another listing comes
/// before the pass reaches the link: a tick's, or a whole reconcile's (a
/// source lock's). Here link c, on which the engine has not reported (kept
/// as the kernel holds it), turns open behind our back: the engine must
/// hear that it is open.
#[test]
fn a_change_a_listing_found_is_reported_by_the_pass_that_takes_over() {
    for whole in [false, true] {
        let t = tempfile::tempdir().unwrap();
        let chains = [
            ("a", Observed::Open),
            ("b", Observed::Open),
            ("c", Observed::Locked),
        ];
        let (mut l, k) = in_kernel(Fake::default(), t.path(), &chains);
        let b = bundle();
        for n in ["a", "b"] {
            l.set_engine_reasons(n, Reasons::EMPTY, Some(0.02), Some(0.08));
        }
        l.reconcile(Some(&b), OpenedBy::Auto);
        assert_eq!(l.links["c"].enforcement(), Enforcement::Lockdown);
        tell(&l);
        k.lock().unwrap().chain.insert("c".into(), Observed::Open);
        l.start_reconcile();
        assert_eq!(l.reconcile_more(Some(&b), OpenedBy::Auto, 1, None), []);
        let changed = match whole {
            false => {
                l.start_reconcile();
                l.reconcile_more(Some(&b), OpenedBy::Auto, 8, None)
            }
            true => l.reconcile(Some(&b), OpenedBy::Auto),
        };
        assert_eq!(
            changed,
            [("c".to_string(), Enforcement::Open)],
            "whole: {whole}"
        );
    }
}

/// A slice stops once its time is up, after at least one link: a slice of
/// links that each take a flip would keep the engine's reports waiting.
#[test]
fn a_slice_ends_when_its_time_is_up() {
    let t = tempfile::tempdir().unwrap();
    let (mut l, k) = open_abc(t.path());
    let b = bundle();
    for n in ["a", "b", "c"] {
        (k.lock().unwrap().chain).insert(n.into(), Observed::unknown("flushed"));
    }
    l.start_reconcile();
    let past = Some(std::time::Instant::now());
    l.reconcile_more(Some(&b), OpenedBy::Auto, 8, past);
    assert_eq!(calls(&k), ["apply a open accept"]);
    l.reconcile_more(Some(&b), OpenedBy::Auto, 8, past);
    assert_eq!(calls(&k), ["apply b open accept"]);
    assert!(l.reconciling());
}

/// An open link the listing finds damaged is queued to open again (the
/// loop's opens) and reported locked now: if the open then fails, the
/// engine must not still hold it open.
#[test]
fn a_damaged_open_link_queued_to_open_again_is_reported_locked() {
    let t = tempfile::tempdir().unwrap();
    let (mut l, k) = opened(Fake::default(), t.path());
    l.defer_opens = true;
    let b = bundle();
    (k.lock().unwrap().chain).insert("dr".into(), Observed::unknown("flushed"));
    l.start_reconcile();
    let changed = l.reconcile_more(Some(&b), OpenedBy::Auto, 8, None);
    assert_eq!(changed, [("dr".to_string(), Enforcement::Lockdown)]);
    assert!(l.opening.contains_key("dr"));
    assert!(calls(&k).iter().all(|c| !c.starts_with("apply")));
}

/// What a tick reports is measured against what the engine was last told,
/// not against the state before a listing: a link the engine heard open
/// from another handler while a pass was under way, then found damaged by
/// the next tick's listing, is reported locked (queued to open again).
#[test]
fn a_link_told_open_meanwhile_and_found_damaged_is_reported() {
    let t = tempfile::tempdir().unwrap();
    let chains = ["a", "b", "x"].map(|n| (n, Observed::Locked));
    let (mut l, k) = in_kernel(Fake::default(), t.path(), &chains);
    let b = bundle();
    let mut qber = Reasons::EMPTY;
    qber.insert(LockReason::Qber);
    for n in ["a", "b", "x"] {
        l.set_engine_reasons(n, qber, Some(0.12), Some(0.08));
    }
    l.reconcile(Some(&b), OpenedBy::Auto);
    tell(&l);
    l.defer_opens = true;
    l.start_reconcile();
    assert_eq!(l.reconcile_more(Some(&b), OpenedBy::Auto, 1, None), []);
    // The engine clears x: its report opens it and says so.
    l.set_engine_reasons("x", Reasons::EMPTY, Some(0.02), Some(0.08));
    assert_eq!(
        l.converge("x", Some(&b), OpenedBy::Auto, false),
        Some(Enforcement::Open)
    );
    tell_one(&l, "x");
    // Flushed behind our back; the next tick takes over the pass.
    (k.lock().unwrap().chain).insert("x".into(), Observed::unknown("flushed"));
    l.start_reconcile();
    assert_eq!(
        l.reconcile_more(Some(&b), OpenedBy::Auto, 8, None),
        [("x".to_string(), Enforcement::Lockdown)]
    );
    assert!(l.opening.contains_key("x"));
}

/// Every log line of this test binary from now on, for tests that look
/// for a link's own lines (the sink is process-wide: each test names a
/// link no other test uses).
fn logged() -> &'static Mutex<Vec<String>> {
    static LINES: std::sync::OnceLock<&'static Mutex<Vec<String>>> = std::sync::OnceLock::new();
    LINES.get_or_init(|| {
        let lines: &'static Mutex<Vec<String>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        crate::log::init(Box::new(move |_, line| {
            lines.lock().unwrap().push(line.to_string())
        }));
        lines
    })
}

fn lines_of(link: &str) -> Vec<String> {
    let key = format!(" link={link} ");
    (logged().lock().unwrap().iter())
        .filter(|l| l.contains(&key) || l.ends_with(&format!(" link={link}")))
        .cloned()
        .collect()
}

fn qber() -> Reasons {
    let mut r = Reasons::EMPTY;
    r.insert(LockReason::Qber);
    r
}

#[test]
fn a_start_keeps_the_engines_persisted_reasons_until_it_reports() {
    let dir = tempfile::tempdir().unwrap();
    let (mut l, k) = in_kernel(
        fake(Kernel::default()),
        dir.path(),
        &[("dr", Observed::Locked)],
    );
    let rec = LinkRecord {
        reasons: qber(),
        epoch: 3,
        verifier: None,
        installed_at: None,
    };
    l.state.links.insert("dr".into(), rec.clone());
    state::save(&dir.path().join("state"), &l.state).unwrap();
    // As the parent starts: the state file's reasons, nothing from the engine.
    *l.links.get_mut("dr").unwrap() = LinkCtl::restored(Some(&rec));
    l.reconcile(Some(&bundle()), OpenedBy::Auto);
    assert_eq!(l.links["dr"].reasons(), qber());
    assert_eq!(l.state.links.get("dr"), Some(&rec), "kept for the engine");
    let on_disk = state::load(&dir.path().join("state")).unwrap().unwrap();
    assert_eq!(on_disk.links.get("dr"), Some(&rec), "and on disk");
    // The file says locked, the kernel shows open (a flushed ruleset at
    // boot): the start locks it.
    k.lock().unwrap().chain.insert("dr".into(), Observed::Open);
    l.reconcile(Some(&bundle()), OpenedBy::Auto);
    assert_eq!(l.links["dr"].kernel.state, Observed::Locked);
    // The engine's first report decides (auto unlock: it releases).
    l.set_engine_reasons("dr", Reasons::EMPTY, Some(0.02), Some(0.08));
    l.reconcile(Some(&bundle()), OpenedBy::Auto);
    assert_eq!(l.links["dr"].enforcement(), Enforcement::Open);
    assert!(l.state.links.get("dr").is_none_or(|r| r.reasons.is_empty()));
}

fn manual_bundle() -> Bundle {
    let mut b = bundle();
    b.policy.defaults.unlock = crate::policy::params::UnlockMode::Manual;
    b
}

#[test]
fn a_manual_hold_is_released_only_by_an_unlock_the_parent_runs() {
    let t = tempfile::tempdir().unwrap();
    let (mut l, _k) = opened(fake(Kernel::default()), t.path());
    let b = manual_bundle();
    l.set_policy(Some(&b));
    l.set_engine_reasons("dr", qber(), Some(0.2), Some(0.08));
    l.converge("dr", Some(&b), OpenedBy::Auto, false);
    assert_eq!(l.links["dr"].enforcement(), Enforcement::Lockdown);
    // The engine alone says the hold is over: the parent's gate stays.
    l.set_engine_reasons("dr", Reasons::EMPTY, Some(0.01), Some(0.08));
    l.reconcile(Some(&b), OpenedBy::Auto);
    assert_eq!(l.links["dr"].enforcement(), Enforcement::Lockdown);
    assert_eq!(l.links["dr"].reasons(), qber());
    assert!(l.links["dr"].state().parent.contains(LockReason::Qber));
    // The operator's unlock, run by the parent after the engine's report.
    l.release_manual("dr", false);
    l.converge("dr", Some(&b), OpenedBy::Operator, false);
    assert_eq!(l.links["dr"].enforcement(), Enforcement::Open);

    // The unlock's request first, the engine's report after it.
    l.set_engine_reasons("dr", qber(), Some(0.2), Some(0.08));
    l.converge("dr", Some(&b), OpenedBy::Auto, false);
    l.release_manual("dr", false);
    l.converge("dr", Some(&b), OpenedBy::Operator, false);
    assert_eq!(l.links["dr"].enforcement(), Enforcement::Lockdown);
    l.set_engine_reasons("dr", Reasons::EMPTY, Some(0.01), Some(0.08));
    l.converge("dr", Some(&b), OpenedBy::Operator, false);
    assert_eq!(l.links["dr"].enforcement(), Enforcement::Open);

    // An unlock the engine refused (its hold kept, no report): a report
    // after the window does not release the gate.
    l.set_engine_reasons("dr", qber(), Some(0.2), Some(0.08));
    l.converge("dr", Some(&b), OpenedBy::Auto, false);
    l.release_manual("dr", false);
    let past = std::time::Instant::now() - std::time::Duration::from_secs(1);
    l.releasing.insert("dr".into(), past);
    l.set_engine_reasons("dr", Reasons::EMPTY, Some(0.01), Some(0.08));
    l.converge("dr", Some(&b), OpenedBy::Auto, false);
    assert_eq!(l.links["dr"].enforcement(), Enforcement::Lockdown);
    // `unlock -f` releases it at once; auto unlock has no gate.
    l.release_manual("dr", true);
    l.converge("dr", Some(&b), OpenedBy::Operator, false);
    assert_eq!(l.links["dr"].enforcement(), Enforcement::Open);
    l.set_engine_reasons("dr", qber(), Some(0.2), Some(0.08));
    l.set_policy(Some(&bundle()));
    l.set_engine_reasons("dr", Reasons::EMPTY, Some(0.01), Some(0.08));
    l.converge("dr", Some(&b), OpenedBy::Auto, false);
    assert_eq!(l.links["dr"].enforcement(), Enforcement::Open);
}

#[test]
fn a_restart_under_manual_unlock_holds_a_persisted_qber_lockdown() {
    let t = tempfile::tempdir().unwrap();
    let (mut l, _k) = in_kernel(
        fake(Kernel::default()),
        t.path(),
        &[("dr", Observed::Locked)],
    );
    let rec = LinkRecord {
        reasons: qber(),
        epoch: 0,
        verifier: None,
        installed_at: None,
    };
    *l.links.get_mut("dr").unwrap() = LinkCtl::restored(Some(&rec));
    let b = manual_bundle();
    l.set_policy(Some(&b));
    // An engine (or one that lost its state) says nothing holds the link.
    l.set_engine_reasons("dr", Reasons::EMPTY, None, None);
    l.reconcile(Some(&b), OpenedBy::Auto);
    assert_eq!(l.links["dr"].enforcement(), Enforcement::Lockdown);
}

#[test]
fn a_lockdown_is_said_once_the_kernel_shows_it() {
    let t = tempfile::tempdir().unwrap();
    logged();
    let fake = fake(Kernel {
        fail_applies: usize::MAX,
        fail_clear: true,
        fail_init: true,
        fail_guard: true,
        ..Kernel::default()
    });
    let k = fake.k.clone();
    k.lock().unwrap().chain.insert("evx".into(), Observed::Open);
    let mut l = links_named(fake, t.path(), &["evx"]);
    l.set_engine_reasons("evx", Reasons::EMPTY, Some(0.02), Some(0.08));
    l.reconcile(Some(&bundle()), OpenedBy::Auto);
    l.set_engine_reasons("evx", qber(), Some(0.2), Some(0.08));
    l.converge("evx", Some(&bundle()), OpenedBy::Auto, false);
    assert!(l.links["evx"].lock_failed);
    let said = lines_of("evx");
    assert!(
        said.iter().any(|s| s.starts_with("event=lockdown_failed ")),
        "{said:?}"
    );
    assert!(
        !said.iter().any(|s| s.starts_with("event=lockdown ")),
        "{said:?}"
    );
    // The kernel takes it at a later tick: said then, with its QBER.
    k.lock().unwrap().fail_applies = 0;
    l.reconcile(Some(&bundle()), OpenedBy::Auto);
    let said = lines_of("evx");
    let lockdowns: Vec<&String> = said
        .iter()
        .filter(|s| s.starts_with("event=lockdown "))
        .collect();
    assert_eq!(lockdowns.len(), 1, "{said:?}");
    assert!(lockdowns[0].contains("reason=qber") && lockdowns[0].contains("qber=0.2000"));
}

/// A start that found the dead-man switch lapsed holds every link for
/// process-failure until the engine reports: the links the chains show
/// open lock (together, where many do), and each opens again only on its
/// engine report.
#[test]
fn a_start_after_a_lapsed_switch_holds_every_link_until_the_engine_reports() {
    let t = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..70).map(|i| format!("l{i:02}")).collect();
    let chains: Vec<(&str, Observed)> =
        names.iter().map(|n| (n.as_str(), Observed::Open)).collect();
    let (mut l, k) = in_kernel(
        fake(Kernel {
            site_lock: true,
            ..Kernel::default()
        }),
        t.path(),
        &chains,
    );
    l.hold_after_lapse(Some(&bundle()));
    assert!(calls(&k).contains(&"site".to_string()), "one transaction");
    for n in &names {
        assert_eq!(l.links[n].enforcement(), Enforcement::Lockdown, "{n}");
        assert!(l.links[n].reasons().contains(LockReason::ProcessFailure));
    }
    l.set_engine_reasons("l00", Reasons::EMPTY, Some(0.02), Some(0.08));
    l.converge("l00", Some(&bundle()), OpenedBy::Auto, false);
    assert_eq!(l.links["l00"].enforcement(), Enforcement::Open);
    assert_eq!(l.links["l01"].enforcement(), Enforcement::Lockdown);

    // A few links open: each locks on its own, no site lock.
    let t = tempfile::tempdir().unwrap();
    let (mut l, k) = in_kernel(
        fake(Kernel {
            site_lock: true,
            ..Kernel::default()
        }),
        t.path(),
        &[("dr", Observed::Open)],
    );
    l.hold_after_lapse(Some(&bundle()));
    let made = calls(&k);
    assert!(!made.contains(&"site".to_string()), "{made:?}");
    assert_eq!(l.links["dr"].kernel.state, Observed::Locked);
}

/// After a lapse, a link the chains show open that then fails to lock
/// keeps the switch from being refreshed (the lapsed switch is what drops
/// its traffic); once it locks, the switch may be refreshed again.
#[test]
fn a_link_that_fails_to_lock_after_a_lapse_keeps_the_switch_lapsed() {
    let t = tempfile::tempdir().unwrap();
    let (mut l, k) = in_kernel(fake(nothing_works()), t.path(), &[("dr", Observed::Open)]);
    // No tunnel to cut: the last rung fails too.
    assert!(l.may_refresh_switch(), "no lapse: refreshed as always");
    l.hold_after_lapse(Some(&bundle()));
    assert!(l.links["dr"].lock_failed);
    assert!(!l.may_refresh_switch());
    assert!(!l.may_refresh_switch(), "every tick");
    {
        let mut k = k.lock().unwrap();
        let chain = std::mem::take(&mut k.chain);
        *k = Kernel {
            chain,
            ..Kernel::default()
        };
    }
    l.reconcile(Some(&bundle()), OpenedBy::Auto);
    assert!(!l.links["dr"].lock_failed);
    assert_eq!(l.links["dr"].kernel.state, Observed::Locked);
    assert!(l.may_refresh_switch());
}

/// A guard the kernel accepted but no read-back shows is no lock: the link
/// is lockdown_failed, not locked on our word, after one link's change and
/// after a tick's read-back of all.
#[test]
fn a_guard_no_read_back_shows_is_not_a_lock() {
    let t = tempfile::tempdir().unwrap();
    let (mut l, k) = opened(fake(Kernel::default()), t.path());
    {
        let mut k = k.lock().unwrap();
        k.fail_applies = usize::MAX;
        k.fail_clear = true;
        k.fail_observe = true;
    }
    l.set_parent_reason("dr", LockReason::Operator, true);
    l.converge("dr", Some(&bundle()), OpenedBy::Auto, false);
    assert!(k.lock().unwrap().guard.contains("dr"), "the guard was set");
    let d = &l.links["dr"];
    assert!(!d.kernel.locked(), "{:?}", d.kernel.state);
    assert!(d.lock_failed);
    l.observe_all();
    assert!(!l.links["dr"].kernel.locked());
}

/// A link whose lockdown failed and that is then wanted open again, the
/// kernel showing it open, is no longer lockdown_failed (it would keep the
/// dead-man switch lapsed after a start and be shown failed for ever).
#[test]
fn a_failed_lockdown_no_longer_wanted_is_not_failed() {
    let t = tempfile::tempdir().unwrap();
    let (mut l, _k) = in_kernel(fake(nothing_works()), t.path(), &[("dr", Observed::Open)]);
    l.hold_after_lapse(Some(&bundle()));
    assert!(l.links["dr"].lock_failed);
    assert!(!l.may_refresh_switch());
    l.set_engine_reasons("dr", Reasons::EMPTY, Some(0.02), Some(0.08));
    l.set_parent_reason("dr", LockReason::ProcessFailure, false);
    l.converge("dr", Some(&bundle()), OpenedBy::Auto, false);
    assert!(!l.links["dr"].lock_failed);
    assert!(l.may_refresh_switch());
}

/// Links aa, dr and zz on wg0 and "own" on wg1, all open.
fn sharing(dir: &std::path::Path) -> (Links, Arc<Mutex<Kernel>>) {
    let fake = fake(Kernel::default());
    let k = fake.k.clone();
    let on = [("aa", "wg0"), ("dr", "wg0"), ("own", "wg1"), ("zz", "wg0")];
    for (n, _) in on {
        k.lock().unwrap().chain.insert(n.into(), Observed::Open);
    }
    let mut l = links_on(fake, dir, &on);
    for (n, _) in on {
        l.set_engine_reasons(n, Reasons::EMPTY, Some(0.02), Some(0.08));
    }
    l.reconcile(Some(&bundle()), OpenedBy::Auto);
    calls(&k);
    (l, k)
}

fn enforcement(l: &Links) -> Vec<(&str, Enforcement, String)> {
    (l.links.iter())
        .map(|(n, c)| (n.as_str(), c.enforcement(), c.reasons().to_string()))
        .collect()
}

/// A lockdown of one link on a shared interface locks the others of that
/// interface with `interface`, at once and in the kernel, and none
/// elsewhere; the hold lasts while any of them is held by a reason of its
/// own, and ends with the last.
#[test]
fn links_on_one_interface_lock_together() {
    use Enforcement::{Lockdown, Open};
    let t = tempfile::tempdir().unwrap();
    let (mut l, k) = sharing(t.path());
    let b = bundle();
    l.set_parent_reason("dr", LockReason::Operator, true);
    l.converge("dr", Some(&b), OpenedBy::Auto, false);
    assert_eq!(
        enforcement(&l),
        [
            ("aa", Lockdown, "interface".into()),
            ("dr", Lockdown, "operator".into()),
            ("own", Open, "-".into()),
            ("zz", Lockdown, "interface".into()),
        ]
    );
    // The loop tells the engine of them with dr.
    assert_eq!(l.take_moved(), ["aa", "zz"]);
    assert!(l.take_moved().is_empty());
    let calls = calls(&k);
    // The others of the interface together (one transaction on nftables).
    assert!(calls.contains(&"lock_many aa,zz".to_string()), "{calls:?}");
    let flips: Vec<&String> = calls.iter().filter(|c| c.starts_with("apply")).collect();
    assert_eq!(
        flips
            .iter()
            .map(|c| &c[..c.find(" lockdown").unwrap()])
            .collect::<Vec<_>>(),
        ["apply dr", "apply aa", "apply zz"]
    );

    // A second holder: the first one's unlock leaves the group locked.
    l.set_engine_reasons(
        "zz",
        [LockReason::Qber].into_iter().collect(),
        Some(0.2),
        Some(0.08),
    );
    l.converge("zz", Some(&b), OpenedBy::Auto, false);
    l.set_parent_reason("dr", LockReason::Operator, false);
    l.converge("dr", Some(&b), OpenedBy::Operator, false);
    assert_eq!(
        enforcement(&l),
        [
            ("aa", Lockdown, "interface".into()),
            ("dr", Lockdown, "interface".into()),
            ("own", Open, "-".into()),
            ("zz", Lockdown, "qber".into()),
        ]
    );
    // The last holder's recovery opens them all.
    l.set_engine_reasons("zz", Reasons::EMPTY, Some(0.02), Some(0.08));
    l.converge("zz", Some(&b), OpenedBy::Auto, false);
    assert!(
        (l.links.values()).all(|c| c.enforcement() == Open && c.reasons().is_empty()),
        "{:?}",
        enforcement(&l)
    );
    // Derived, never written: a restart works it out again.
    let st = state::load(&t.path().join("state")).unwrap().unwrap();
    assert!(
        st.links
            .values()
            .all(|r| !r.reasons.contains(LockReason::Interface))
    );
}

/// `no-session`, which a gated link takes as it reopens, does not hold
/// the others: a sibling's session is not what they wait for, and
/// counting it would pass the hold round the group for ever.
#[test]
fn a_wait_for_a_new_session_does_not_hold_the_interface() {
    let t = tempfile::tempdir().unwrap();
    let (mut l, _k) = sharing(t.path());
    l.set_parent_reason("dr", LockReason::NoSession, true);
    l.converge("dr", Some(&bundle()), OpenedBy::Auto, false);
    assert_eq!(l.links["dr"].enforcement(), Enforcement::Lockdown);
    for n in ["aa", "zz"] {
        assert!(
            l.links[n].reasons().is_empty(),
            "{n}: {}",
            l.links[n].reasons()
        );
        assert_eq!(l.links[n].enforcement(), Enforcement::Open, "{n}");
    }
}

/// The daemon's loop opens in turns (`defer_opens`): the end of a hold
/// queues the others of the interface with the link that ended it, and a
/// tick's pass locks a sibling whose holder changed without a converge.
#[test]
fn deferred_opens_and_the_tick_keep_the_interface_together() {
    let t = tempfile::tempdir().unwrap();
    let (mut l, _k) = sharing(t.path());
    let b = bundle();
    l.defer_opens = true;
    l.set_parent_reason("zz", LockReason::Operator, true);
    l.converge("zz", Some(&b), OpenedBy::Auto, false);
    assert_eq!(l.links["aa"].enforcement(), Enforcement::Lockdown);
    l.set_parent_reason("zz", LockReason::Operator, false);
    assert!(l.queue_open("zz", OpenedBy::Operator, Some(&b)));
    let queued: Vec<&String> = l.opening.keys().collect();
    assert_eq!(queued, ["aa", "dr", "zz"]);
    l.open_queued(Some(&b), 16);
    assert!(
        l.links
            .values()
            .all(|c| c.enforcement() == Enforcement::Open)
    );

    // A reason set with no converge of its own: the tick's pass finds it.
    l.set_parent_reason("aa", LockReason::Operator, true);
    l.reconcile(Some(&b), OpenedBy::Auto);
    for n in ["aa", "dr", "zz"] {
        assert_eq!(l.links[n].enforcement(), Enforcement::Lockdown, "{n}");
    }
    assert_eq!(l.links["own"].enforcement(), Enforcement::Open);
}

/// After a restart a link locked in the kernel for a reason the state
/// file does not keep (`source-lost`) has no reason until the engine's
/// first report on it: until then it holds its interface, and a sibling
/// the engine reports first stays locked.
#[test]
fn until_its_first_report_a_locked_link_holds_its_interface() {
    let t = tempfile::tempdir().unwrap();
    let fake = fake(Kernel::default());
    let k = fake.k.clone();
    for n in ["aa", "dr"] {
        k.lock().unwrap().chain.insert(n.into(), Observed::Locked);
    }
    let mut l = links_on(fake, t.path(), &[("aa", "wg0"), ("dr", "wg0")]);
    let b = bundle();
    l.reconcile(Some(&b), OpenedBy::Auto);
    l.set_engine_reasons("aa", Reasons::EMPTY, Some(0.02), Some(0.08));
    l.converge("aa", Some(&b), OpenedBy::Auto, false);
    assert_eq!(l.links["aa"].enforcement(), Enforcement::Lockdown);
    assert_eq!(l.links["aa"].reasons().to_string(), "interface");
    l.set_engine_reasons("dr", Reasons::EMPTY, Some(0.02), Some(0.08));
    l.converge("dr", Some(&b), OpenedBy::Auto, false);
    for n in ["aa", "dr"] {
        assert_eq!(l.links[n].enforcement(), Enforcement::Open, "{n}");
    }
}

/// `unlock all` clears every link's reasons, then brings their interfaces'
/// holds up to date at once: the first link it converges is not held by
/// a reason the same request cleared from a later one.
#[test]
fn a_request_that_clears_many_links_judges_none_on_the_others_old_reasons() {
    let t = tempfile::tempdir().unwrap();
    let (mut l, _k) = sharing(t.path());
    let b = bundle();
    for n in ["aa", "dr"] {
        l.set_parent_reason(n, LockReason::Operator, true);
        l.converge(n, Some(&b), OpenedBy::Auto, false);
    }
    let names: Vec<String> = l.links.keys().cloned().collect();
    for n in &names {
        l.set_parent_reason(n, LockReason::Operator, false);
    }
    l.regroup_all(&names, Some(&b), OpenedBy::Operator);
    l.converge("aa", Some(&b), OpenedBy::Operator, false);
    assert_eq!(
        l.links["aa"].enforcement(),
        Enforcement::Open,
        "{}",
        l.links["aa"].reasons()
    );
}
