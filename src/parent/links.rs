//! The parent's per-link enforcement: combines the engine's reasons with
//! the parent-owned ones, flips the firewall, reads the kernel back,
//! persists (DESIGN §5, §6).
//!
//! A link's record is what the kernel showed at the last read-back
//! ([`Observed`]), never what was asked for. Lock = apply, then persist;
//! unlock = persist, then apply. A lockdown walks a fallback ladder until a
//! read-back shows the link locked: the bundle's lockdown; the link chain
//! replaced by qkdpfd's own drop; the skeleton rebuilt and the drop again;
//! a guard outside the link's chain; the link's WireGuard peer removed
//! (`tunnel.rs`); the ladder is `ladder.rs`. A step counts only if it returned success *and* the
//! read-back shows it. A tool that hung skips the remaining firewall
//! steps: the next would hang too, and the main loop waits meanwhile.
//! When no step works the link is `lockdown_failed`, a state of its own
//! (event, ctl, metrics), and the next tick ([`Links::start_reconcile`],
//! every second, `pass.rs`) walks the ladder again.
//! The same tick reads every link back and repairs what changed behind our
//! back: a flushed or deleted chain, a removed jump or drop, the whole
//! table gone, pf disabled. Links that share a WireGuard interface lock
//! together (reason `interface`, `shared.rs`).

use crate::lock::{Enforcement, LockReason, Owner, Reasons};
use crate::log::{self, Event};
use crate::parent::fw::{Firewall, Observed, Readback};
use crate::policy::Bundle;
use crate::ruleset::LinkTarget;
use crate::state::{LinkRecord, State};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

mod bulk;
mod gate;
pub(super) use gate::RELEASE_WINDOW;
mod ladder;
mod pass;
mod shared;
mod tunnel;
pub use pass::{RECONCILE_AT_ONCE, SLICE_TIME};
pub use tunnel::Tunnel;

/// One link as the parent sees it (what the firewall knows it by is
/// [`Links::target`]).
pub struct LinkCtl {
    /// Engine-owned reasons; None until the engine's first report.
    pub engine: Option<Reasons>,
    pub parent: Reasons,
    /// Engine-owned reasons the state file held at start (`qber`), in
    /// force until the engine's first report: until then the engine has
    /// said nothing, and a write of the state file must not drop them
    /// (DESIGN §6: a restart never opens a link that was locked).
    pub inherited: Reasons,
    /// The active policy says `unlock = "manual"` for the link.
    pub manual: bool,
    /// The manual-unlock gate (DESIGN §2): a QBER lockdown under manual
    /// unlock stays until the parent itself runs an operator's unlock of
    /// the link; no report of the engine's releases it.
    pub held: bool,
    /// Reasons added and not yet said in a `lockdown` event: said once the
    /// kernel reads the link back locked, as the event promises.
    unsaid: Reasons,
    /// What the kernel showed at the last read-back.
    pub kernel: Readback,
    /// A lockdown is wanted and the kernel does not show one.
    pub lock_failed: bool,
    /// The ladder's last rung removed the link's WireGuard peer and it has
    /// not been seen on the interface since (an operator restores it).
    pub peer_removed: bool,
    pub qber: Option<f64>,
    pub threshold: Option<f64>,
    /// What the engine was last told of the link (`to_engine.rs` sets it
    /// when it sends the link's state): a tick reports every link whose
    /// state differs from it, whatever changed it meanwhile.
    pub told: std::cell::Cell<Option<Told>>,
}

/// A link's state as the engine hears it (`LinkState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Told {
    pub enforcement: Enforcement,
    pub lock_failed: bool,
    pub peer_removed: bool,
    pub parent: Reasons,
}

impl LinkCtl {
    #[allow(clippy::new_without_default)]
    pub fn new() -> LinkCtl {
        LinkCtl {
            engine: None,
            parent: Reasons::EMPTY,
            inherited: Reasons::EMPTY,
            manual: false,
            held: false,
            unsaid: Reasons::EMPTY,
            kernel: Readback {
                state: Observed::unknown("not read yet"),
                guarded: false,
            },
            lock_failed: false,
            peer_removed: false,
            qber: None,
            threshold: None,
            told: std::cell::Cell::new(None),
        }
    }

    /// A link as the state file left it: the parent's persisted reasons
    /// back in force, the engine's held until it reports.
    pub fn restored(rec: Option<&LinkRecord>) -> LinkCtl {
        let mut l = LinkCtl::new();
        if let Some(rec) = rec {
            let kept = rec.reasons.persisted();
            l.parent = kept.owned_by(Owner::Parent);
            l.inherited = kept.owned_by(Owner::Engine);
        }
        l
    }

    /// The link's state as the engine is to hear it.
    pub fn state(&self) -> Told {
        let mut parent = self.parent;
        if self.held {
            parent.insert(LockReason::Qber);
        }
        Told {
            enforcement: self.enforcement(),
            lock_failed: self.lock_failed,
            peer_removed: self.peer_removed,
            parent,
        }
    }

    /// Whether the engine was last told another state than the link's.
    pub fn untold(&self) -> bool {
        self.told.get() != Some(self.state())
    }

    /// The link's state, noted as told: what `to_engine.rs` sends.
    pub fn tell(&self) -> Told {
        let now = self.state();
        self.told.set(Some(now));
        now
    }

    pub fn reasons(&self) -> Reasons {
        let mut r = self.engine.unwrap_or(self.inherited).union(self.parent);
        if self.held {
            r.insert(LockReason::Qber);
        }
        r
    }

    /// What the link should be: until the engine has reported, only a
    /// reason the state file or the parent holds changes anything (a
    /// restart neither opens a locked link nor locks an open one without
    /// a reason).
    pub fn desired(&self) -> Option<Enforcement> {
        match self.engine {
            None if self.reasons().is_empty() => None,
            _ => Some(self.reasons().enforcement()),
        }
    }

    /// What the kernel does for the link: open only when a read-back showed
    /// the open ruleset, no guard drops it and its peer is there.
    pub fn enforcement(&self) -> Enforcement {
        if self.kernel.state == Observed::Open && !self.kernel.guarded && !self.peer_removed {
            Enforcement::Open
        } else {
            Enforcement::Lockdown
        }
    }
}

/// All links plus what they need to flip: the firewall, the active bundle,
/// the state file.
pub struct Links {
    pub links: BTreeMap<String, LinkCtl>,
    /// Every link's target, in name order, for the firewall calls that
    /// need them all, and each link's by [`Links::target`]: built once, as
    /// the set of links changes only with a restart (a read-back after each
    /// flip copied them: O(links) per flip). Shared with the panic hook
    /// (`parent::lock_on_panic`): one copy of the links' addresses.
    targets: std::sync::Arc<[LinkTarget]>,
    pub fw: Box<dyn Firewall>,
    pub state: State,
    pub state_path: PathBuf,
    /// Links held by the firewall's guard until their own chain is repaired.
    pub guard: BTreeSet<String>,
    /// Never write the state file (`qkdpfd -L` with one it could not read).
    pub persist_disabled: bool,
    /// The ladder's last rung; None where WireGuard is not reachable
    /// (`qkdpfd -L`, which needs nothing but the firewall).
    pub tunnel: Option<Tunnel>,
    /// Damage to the default-deny is logged once a minute (the flood
    /// rule) while it lasts (pf stays disabled until an operator enables it).
    damage_logged: log::PerMinute<()>,
    /// When a failing state write was last logged, and what it failed to
    /// write (each tick tries again; the same failure is said once a minute).
    write_failing: Option<(std::time::Instant, BTreeMap<String, LinkRecord>)>,
    /// CLOCK_MONOTONIC (ns) when the firewall call of the last flip it
    /// accepted started and returned (the kernel had committed it then;
    /// the read-back follows).
    pub committed_ns: Option<(u64, u64)>,
    /// Keyed links that open only on a WireGuard session made after they
    /// were locked (`[wireguard] new_session` with a firewall that lets
    /// handshakes through a lockdown); empty when that is off.
    pub session_gate: BTreeSet<String>,
    /// Links whose manual-unlock gate an operator's unlock releases at the
    /// engine's next report, if that report no longer holds `qber` and
    /// comes before the instant ([`Links::release_manual`]).
    releasing: BTreeMap<String, std::time::Instant>,
    /// Links just held for `no-session`: the parent re-creates their peers
    /// and waits for the handshake (`parent/session.rs`).
    pub session_due: BTreeSet<String>,
    /// The link whose new session was just seen, while it opens.
    session_made: Option<String>,
    /// Entries appended to the state's journal since it was last emptied.
    journaled: usize,
    /// Links a tick or an install found to open, when `defer_opens`: the
    /// main loop opens a few per turn ([`Links::open_queued`]). An open is
    /// a kernel transaction that waits (about 10 ms at 10,000 links): a
    /// tick that opened 10,000 links at once kept lockdowns and the
    /// dead-man switch's heartbeat waiting for 2 minutes.
    /// Each with who asked for it, for the `unlock` event.
    pub opening: BTreeMap<String, OpenedBy>,
    /// Set by the daemon's main loop; off, a tick opens links itself.
    pub defer_opens: bool,
    /// While set, a link's change is not journaled on its own: the caller
    /// writes every record at once (`lock_all`: 10,000 links, one write).
    hold_writes: bool,
    /// The tick's reconcile under way, a slice of links a turn (`pass.rs`).
    pass: Option<pass::Pass>,
    /// Links whose earlier run's lockdown this run has tried to load over
    /// (`pass.rs`): once a run, whatever the backend remembers.
    relocked: BTreeSet<String>,
    /// After a start that found the dead-man switch lapsed: the switch is
    /// not refreshed while a link fails to lock (Some(whether said)).
    lapse_held: Option<bool>,
    /// The links of each shared WireGuard interface, which lock together
    /// (`shared.rs`).
    shared: shared::Groups,
    /// Links whose `interface` a change of another link's moved, for the
    /// loop to tell the engine with that link ([`Links::take_moved`]).
    moved: std::cell::RefCell<Vec<String>>,
}

/// Link `name`'s target in `targets` (in name order), if it is one.
fn find_target<'a>(targets: &'a [LinkTarget], name: &str) -> Option<&'a LinkTarget> {
    (targets.binary_search_by(|t| t.name.as_str().cmp(name)).ok()).map(|i| &targets[i])
}

/// Link `name`'s target: the caller knows it is a link.
fn target_of<'a>(targets: &'a [LinkTarget], name: &str) -> &'a LinkTarget {
    find_target(targets, name).expect("a configured link")
}

/// The `unlock` event of a link that opened.
fn say_opened(name: &str, by: OpenedBy) {
    let by = match by {
        OpenedBy::Auto => "auto",
        OpenedBy::Operator => "operator",
    };
    log::event(Event::Unlock)
        .kv("link", name)
        .kv("by", by)
        .send();
}

/// Links read back open from which a start after a lapsed dead-man switch
/// locks them all in one transaction rather than one flip each.
const SITE_LOCK_FROM: usize = 64;

/// How a link was opened, for the `unlock` event.
#[derive(Clone, Copy)]
pub enum OpenedBy {
    Auto,
    Operator,
}

impl Links {
    /// `targets`: every link's, in name order: one for each of `links`.
    pub fn new(
        links: BTreeMap<String, LinkCtl>,
        targets: std::sync::Arc<[LinkTarget]>,
        fw: Box<dyn Firewall>,
        state: State,
        state_path: PathBuf,
    ) -> Links {
        assert!(
            targets.iter().map(|t| &t.name).eq(links.keys()),
            "a target for each link, in name order"
        );
        Links {
            shared: shared::Groups::of(&targets),
            moved: Default::default(),
            targets,
            links,
            fw,
            state,
            state_path,
            guard: BTreeSet::new(),
            persist_disabled: false,
            tunnel: None,
            damage_logged: log::PerMinute::default(),
            write_failing: None,
            committed_ns: None,
            session_gate: BTreeSet::new(),
            session_due: BTreeSet::new(),
            session_made: None,
            releasing: BTreeMap::new(),
            journaled: 0,
            opening: BTreeMap::new(),
            defer_opens: false,
            hold_writes: false,
            pass: None,
            relocked: BTreeSet::new(),
            lapse_held: None,
        }
    }

    /// Locks every link for `reason` (parent-owned): first in one kernel
    /// transaction where the firewall has a site lock (its size does not
    /// grow with the links), then as a tick does, from a read-back of every
    /// link; a link it does not show locked walks its ladder. The kernel
    /// first, then the `lockdown` events and one write of the state file.
    /// The engine lost, a stop that locks, `qkdctl lockdown all`.
    pub fn lock_all(
        &mut self,
        reason: LockReason,
        bundle: Option<&Bundle>,
        by: OpenedBy,
    ) -> Vec<(String, Enforcement)> {
        debug_assert_eq!(reason.owner(), Owner::Parent);
        let mut newly = Vec::new();
        for (name, l) in self.links.iter_mut() {
            if l.parent.insert(reason) {
                newly.push(name.clone());
            }
        }
        let started = crate::imsg::monotonic_ns();
        let lockdown = bundle.and_then(|b| b.ruleset(Enforcement::Lockdown, self.fw.extension()));
        let site = self.fw.lock_site(&self.targets, lockdown);
        match &site {
            // A backend without one committed nothing.
            Ok(true) => self.stamp_commit(started, &site),
            Ok(false) => {}
            Err(e) => log::debug(format!("site lock: {e} (locking link by link)")),
        }
        for name in newly {
            if let Some(l) = self.links.get_mut(&name) {
                l.unsaid.insert(reason);
            }
        }
        // The tick's own write at its end takes every record at once.
        self.hold_writes = true;
        let changed = self.reconcile(bundle, by);
        self.hold_writes = false;
        changed
    }

    /// At a start that found the dead-man switch lapsed: every link whose
    /// chains read back open is held for `process-failure` until the
    /// engine reports (said by its reasons, not by an event each), then
    /// all converge as a start's reconcile does; one read back locked stays
    /// so until then anyway. Where many read back open (a crash of a hub),
    /// they lock together in one transaction where the firewall can (set
    /// `site`), not one flip each. A fresh table (a boot: every link
    /// locked) holds nothing and writes nothing.
    pub fn hold_after_lapse(&mut self, bundle: Option<&Bundle>) {
        self.pass = None;
        self.start_reconcile();
        let mut open = 0;
        for l in self.links.values_mut() {
            if l.kernel.state == Observed::Open {
                l.parent.insert(LockReason::ProcessFailure);
                open += 1;
            }
        }
        if open > SITE_LOCK_FROM {
            let ext = self.fw.extension();
            let lockdown = bundle.and_then(|b| b.ruleset(Enforcement::Lockdown, ext));
            match self.fw.lock_site(&self.targets, lockdown) {
                // Read back under it: the links lock without a flip each.
                Ok(_) => self.start_reconcile(),
                Err(e) => log::debug(format!("site lock: {e} (locking link by link)")),
            }
        }
        self.hold_writes = true;
        self.reconcile_more(bundle, OpenedBy::Auto, usize::MAX, None);
        self.hold_writes = false;
        self.persist();
        self.lapse_held = Some(false);
    }

    /// Whether the main loop may refresh the dead-man switch. Not after a
    /// lapse while a link fails to lock: the lapsed switch is what drops
    /// its traffic, and a refresh would let its chains pass it again. Said
    /// once; refreshed from the first tick at which every link is locked
    /// or open by its own state.
    pub fn may_refresh_switch(&mut self) -> bool {
        let Some(said) = self.lapse_held else {
            return true;
        };
        let failed: Vec<&str> = (self.links.iter())
            .filter(|(_, l)| l.lock_failed)
            .map(|(n, _)| n.as_str())
            .collect();
        if failed.is_empty() {
            self.lapse_held = None;
            return true;
        }
        if !said {
            log::event(Event::DeadmanFailed)
                .msg(format!(
                    "not refreshed after its lapse: {} link(s) failed to lock ({}); the lapsed switch keeps dropping every link",
                    failed.len(),
                    failed.iter().take(8).copied().collect::<Vec<_>>().join(" ")
                ))
                .send();
            self.lapse_held = Some(true);
        }
        false
    }

    /// Locks every link of QBER section `source` for `source-lost`, which
    /// the engine found for all of them at once: in one kernel transaction
    /// where the firewall has a source lock, then as a tick does, from a
    /// read-back of every link (a link not shown locked walks its ladder).
    /// A link the engine has not reported on yet keeps its reasons: the
    /// engine's own report for it follows. `found_ns`: when the engine
    /// found it (CLOCK_MONOTONIC), for the event's timing.
    pub fn lock_source(
        &mut self,
        source: &str,
        found_ns: Option<u64>,
        bundle: Option<&Bundle>,
    ) -> Vec<(String, Enforcement)> {
        let names: Vec<String> = (self.targets.iter())
            .filter(|t| *t.qber == *source)
            .map(|t| t.name.clone())
            .collect();
        // The kernel first, then what is said about it.
        self.committed_ns = None;
        let started = crate::imsg::monotonic_ns();
        let lockdown = bundle.and_then(|b| b.ruleset(Enforcement::Lockdown, self.fw.extension()));
        let locked = self.fw.lock_source(source, &self.targets, lockdown);
        match &locked {
            Ok(true) => self.stamp_commit(started, &locked),
            Ok(false) => {}
            Err(e) => log::debug(format!("source lock {source}: {e} (locking link by link)")),
        }
        let mut ev = log::event(Event::SourceLost)
            .kv("source", source)
            .kv("links", names.len());
        if let Some((start, commit)) = self.committed_ns {
            ev = ev.kv("commit_us", commit.saturating_sub(start) / 1000);
            if let Some(t0) = found_ns {
                ev = ev.kv("found_to_commit_us", commit.saturating_sub(t0) / 1000);
            }
        }
        ev.send();
        for name in &names {
            let l = &self.links[name];
            if let Some(mut r) = l.engine {
                if r.insert(LockReason::SourceLost) {
                    let (q, t) = (l.qber, l.threshold);
                    self.set_engine_reasons(name, r, q, t);
                }
            }
        }
        self.hold_writes = true;
        let changed = self.reconcile(bundle, OpenedBy::Auto);
        self.hold_writes = false;
        changed
    }

    /// Notes when a flip the firewall accepted was committed.
    fn stamp_commit<T, E>(&mut self, started_ns: u64, r: &Result<T, E>) {
        if r.is_ok() {
            self.committed_ns = Some((started_ns, crate::imsg::monotonic_ns()));
        }
    }

    /// The firewall's view of link `name`, if it is one.
    pub fn target(&self, name: &str) -> Option<&LinkTarget> {
        find_target(&self.targets, name)
    }

    /// Every link's target, in name order.
    pub fn targets(&self) -> &[LinkTarget] {
        &self.targets
    }

    /// Reads every link back (one listing); rebuilds the default-deny
    /// skeleton first if any link's is damaged. Records what it saw.
    pub fn observe_all(&mut self) {
        debug_assert!(self.targets.iter().map(|t| &t.name).eq(self.links.keys()));
        let mut seen = self.observe_each();
        let damaged: Vec<String> = match &seen {
            Ok(m) => (self.targets.iter().zip(m))
                .filter_map(|(t, rb)| match &rb.state {
                    Observed::Unknown {
                        skeleton: true,
                        why,
                    } => Some(format!("{}: {why}", t.name)),
                    _ => None,
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        if damaged.is_empty() {
            self.damage_logged.clear();
        } else {
            let now = std::time::Instant::now();
            let say = self.damage_logged.admit((), now).is_some();
            if say {
                log::event(Event::FirewallLost)
                    .kv("firewall", self.fw.name())
                    .msg(format!(
                        "default-deny damaged, rebuilding: {}",
                        damaged.join("; ")
                    ))
                    .send();
            }
            if let Err(e) = self.fw.init_shared(&self.targets) {
                if say {
                    log::event(Event::FirewallRebuildFailed).msg(e).send();
                }
            }
            seen = self.observe_each();
        }
        match seen {
            Ok(m) => {
                for (l, rb) in self.links.values_mut().zip(m) {
                    l.kernel = rb;
                }
            }
            Err(e) => {
                log::event(Event::FirewallCheckFailed).msg(&e).send();
                for l in self.links.values_mut() {
                    l.kernel.state = Observed::unknown(format!("read-back failed: {}", e.what));
                    l.kernel.guarded = false;
                }
            }
        }
    }

    /// Every link's read-back, in name order: one for each.
    fn observe_each(&mut self) -> Result<Vec<Readback>, crate::tool::FwError> {
        let seen = self.fw.observe_each(&self.targets)?;
        if seen.len() != self.targets.len() {
            // A backend's bug; a link left without a read-back would keep
            // its last one. Said so: no setting of the operator's fixes it.
            let what = format!(
                "the {} backend answered {} read-backs for {} links (a bug in \
                 qkdpfd: please report it); every link counts as unknown until \
                 a read-back answers for each",
                self.fw.name(),
                seen.len(),
                self.targets.len()
            );
            return Err(crate::tool::FwError::refused(what));
        }
        Ok(seen)
    }

    /// Reads one link back right after a change.
    fn observe_one(&mut self, name: &str) {
        let rb = match self.fw.observe(&self.targets, Some(name)) {
            Ok(mut m) => m.remove(name).unwrap_or(Readback {
                state: Observed::unknown("not in the read-back"),
                guarded: false,
            }),
            // Whether the guard holds is the kernel's to show too, not
            // our record of having set it.
            Err(e) => Readback {
                state: Observed::unknown(format!("read-back failed: {}", e.what)),
                guarded: false,
            },
        };
        if let Some(l) = self.links.get_mut(name) {
            l.kernel = rb;
        }
    }

    /// Whether `converge` would open the link (or hold it for a session).
    fn would_open(&self, name: &str) -> bool {
        self.links.get(name).is_some_and(|l| {
            l.desired() == Some(Enforcement::Open)
                && (l.kernel.state != Observed::Open || l.kernel.guarded)
        })
    }

    /// With `defer_opens`, queues the link for [`Links::open_queued`] if
    /// `converge` would open it; whether it did. The links of its
    /// interface whose `interface` that changed converge (or queue) too.
    pub fn queue_open(&mut self, name: &str, by: OpenedBy, bundle: Option<&Bundle>) -> bool {
        let moved = self.regroup(name);
        let queued = self.queue_if_opening(name, by);
        self.converge_moved(moved, bundle, by);
        queued
    }

    fn queue_if_opening(&mut self, name: &str, by: OpenedBy) -> bool {
        if !self.defer_opens || !self.would_open(name) {
            return false;
        }
        self.opening.entry(name.to_string()).or_insert(by);
        true
    }

    /// The links of a shared interface whose `interface` changed, each
    /// toward its state (an open said as `by`'s, whose change it follows):
    /// queued if it only opens, else converged now (a
    /// lock must not wait); those to lock, together
    /// ([`Firewall::lock_many`](crate::parent::fw::Firewall::lock_many):
    /// a transaction each took seconds for a 10,000-link interface, and
    /// the loop, the dead-man switch's heartbeat with it, waited).
    fn converge_moved(&mut self, moved: Vec<String>, bundle: Option<&Bundle>, by: OpenedBy) {
        self.moved.borrow_mut().extend(moved.iter().cloned());
        let mut locks = Vec::new();
        for name in moved {
            if self.queue_if_opening(&name, by) {
                continue;
            }
            let l = &self.links[&name];
            match l.desired() == Some(Enforcement::Lockdown) && l.kernel.state != Observed::Locked {
                true => locks.push((name, l.enforcement())),
                false => {
                    self.converge_link(&name, bundle, by, false);
                }
            }
        }
        match locks.len() {
            0 => {}
            1 => {
                self.converge_link(&locks[0].0, bundle, by, false);
            }
            _ => {
                self.lock_many(locks, bundle);
            }
        }
    }

    /// The links [`Links::converge`] moved with another since the last
    /// call: the loop tells the engine their state with that link's (a
    /// handler names only the link it was about).
    pub fn take_moved(&self) -> Vec<String> {
        std::mem::take(&mut *self.moved.borrow_mut())
    }

    /// One link toward its desired state. Returns the new enforcement if it
    /// changed. A link nothing has decided yet stays as the kernel holds
    /// it, unless the kernel proves neither open nor locked: then it locks.
    /// Then the links of its interface whose `interface` its change moved.
    pub fn converge(
        &mut self,
        name: &str,
        bundle: Option<&Bundle>,
        by: OpenedBy,
        force: bool,
    ) -> Option<Enforcement> {
        let moved = self.regroup(name);
        let changed = self.converge_link(name, bundle, by, force);
        // The flip's commit time is this link's, not its siblings'.
        let committed = self.committed_ns;
        self.converge_moved(moved, bundle, by);
        self.committed_ns = committed;
        changed
    }

    fn converge_link(
        &mut self,
        name: &str,
        bundle: Option<&Bundle>,
        by: OpenedBy,
        force: bool,
    ) -> Option<Enforcement> {
        let l = self.links.get(name)?;
        let before = l.enforcement();
        let want = match l.desired() {
            Some(w) => w,
            None if matches!(l.kernel.state, Observed::Unknown { .. }) => Enforcement::Lockdown,
            None => return None,
        };
        match want {
            Enforcement::Lockdown => {
                if l.kernel.state == Observed::Locked && !force {
                    self.release_guard(name);
                    self.mark_locked(name, true);
                    // Nothing to flip, but a new reason (an operator's
                    // lockdown of a QBER-locked link) must survive a restart.
                    self.persist_link(name);
                    return None;
                }
                self.lock(name, bundle);
                self.persist_link(name);
            }
            Enforcement::Open => {
                if l.kernel.state == Observed::Open && !l.kernel.guarded && !force {
                    // No lockdown is wanted any more: none has failed (a
                    // link left lockdown_failed would keep the dead-man
                    // switch from a refresh after a lapse, and show so).
                    if let Some(l) = self.links.get_mut(name) {
                        l.lock_failed = false;
                    }
                    // Open from before a restart: preload lockdown (a no-op once done).
                    self.stage_lockdown(name, bundle);
                    return None;
                }
                if self.hold_for_session(name, before, bundle) {
                    return None;
                }
                self.persist_link(name);
                if !self.open(name, bundle) {
                    return None;
                }
                if before != Enforcement::Open {
                    say_opened(name, by);
                }
            }
        }
        let after = self.links[name].enforcement();
        (before != after).then_some(after)
    }

    /// A gated link that is locked opens only on a new WireGuard session:
    /// until one is seen it is held with `no-session`, under a lockdown that
    /// lets handshakes through (the bundle's, loaded if the lock in place
    /// is another), and the parent re-creates its peer (`session_due`).
    /// Whatever session the peer had may be older than the lockdown.
    fn hold_for_session(
        &mut self,
        name: &str,
        before: Enforcement,
        bundle: Option<&Bundle>,
    ) -> bool {
        if !self.waits_for_session(name, before) {
            return false;
        }
        // Not a new lockdown (the link is locked already): no `lockdown`
        // event, which would count twice per incident in a SIEM; the wait
        // ends with `session_made` or says `session_failed`.
        let l = self.links.get_mut(name).expect("converge checked it");
        l.parent.insert(LockReason::NoSession);
        if !self.fw.passes_handshakes(target_of(&self.targets, name)) {
            self.lock(name, bundle);
        }
        self.session_due.insert(name.to_string());
        true
    }

    /// Whether opening the link must wait for a new WireGuard session
    /// ([`Links::hold_for_session`]).
    fn waits_for_session(&self, name: &str, before: Enforcement) -> bool {
        before != Enforcement::Open
            && self.session_gate.contains(name)
            && self.session_made.as_deref() != Some(name)
    }

    /// The parent saw a handshake newer than the link's re-created peer:
    /// `no-session` ends and the link opens if nothing else holds it.
    pub fn session_made(&mut self, name: &str, bundle: Option<&Bundle>) -> Option<Enforcement> {
        self.set_parent_reason(name, LockReason::NoSession, false);
        self.session_made = Some(name.to_string());
        let r = self.converge(name, bundle, OpenedBy::Auto, false);
        self.session_made = None;
        r
    }

    fn open(&mut self, name: &str, bundle: Option<&Bundle>) -> bool {
        let ext = self.fw.extension();
        let Some(r) = bundle.and_then(|b| b.ruleset(Enforcement::Open, ext)) else {
            return false;
        };
        let target = target_of(&self.targets, name);
        let started = crate::imsg::monotonic_ns();
        let applied = self.fw.apply(target, Enforcement::Open, r);
        self.stamp_commit(started, &applied);
        self.read_open(name, applied, bundle)
    }

    /// After an open: the link read back; open in the kernel, it is
    /// marked so and its lockdown staged; else `unlock_failed` says why.
    /// Whether the link is open now.
    fn read_open(
        &mut self,
        name: &str,
        applied: Result<(), crate::tool::FwError>,
        bundle: Option<&Bundle>,
    ) -> bool {
        self.observe_one(name);
        if applied.is_ok() && self.links[name].kernel.state == Observed::Open {
            self.mark_locked(name, true);
            self.release_guard(name);
            self.stage_lockdown(name, bundle);
            return self.links[name].enforcement() == Enforcement::Open;
        }
        let why = match applied {
            Err(e) => e.to_string(),
            Ok(()) => format!("kernel shows {}", self.links[name].kernel.state),
        };
        log::event(Event::UnlockFailed)
            .kv("link", name)
            .msg(why)
            .send();
        false
    }

    /// Preloads the link's lockdown rules so the next flip is quick.
    fn stage_lockdown(&mut self, name: &str, bundle: Option<&Bundle>) {
        let fw = &mut self.fw;
        let Some(target) = find_target(&self.targets, name) else {
            return;
        };
        let lock = bundle.and_then(|b| b.ruleset(Enforcement::Lockdown, fw.extension()));
        if let Some(Err(e)) = lock.map(|r| fw.stage(target, Enforcement::Lockdown, r)) {
            log::event(Event::StageFailed)
                .kv("link", name)
                .msg(e)
                .send();
        }
    }

    /// Whether [`Links::settle`] has more to load ([`Firewall::settling`]).
    pub fn settling(&self) -> bool {
        self.fw.settling()
    }

    /// Loads what the firewall deferred (lockdown rules staged after opens),
    /// for many links at once.
    pub fn settle(&mut self) {
        for (name, e) in self.fw.settle() {
            log::event(Event::StageFailed)
                .kv("link", &name)
                .msg(e)
                .send();
        }
    }

    /// `persist` when `name`'s record differs from the one on disk (or the
    /// last write failed): converge runs for every link, and building every
    /// link's record for each of them cost O(n²) (10,000 links: longer than
    /// the engine's hello deadline at start).
    fn persist_link(&mut self, name: &str) {
        let Some(l) = self.links.get(name).filter(|_| !self.hold_writes) else {
            return;
        };
        let rec = self.record(name, l.reasons());
        let same = match self.state.links.get(name) {
            Some(on_disk) => *on_disk == rec,
            None => rec.is_empty(),
        };
        if same && self.write_failing.is_none() {
            return;
        }
        // One journal entry, not the whole file (`state/journal.rs`); if
        // that fails, the whole write says so and the tick retries it.
        let entry = crate::state::journal::Entry::record(name, &rec);
        if self.persist_disabled || self.write_failing.is_some() || !self.journal(vec![entry]) {
            self.persist();
        }
    }

    /// `name`'s record as it is to be written: the reasons that survive a
    /// restart from `reasons`, the rest (key epoch, verifier, install
    /// time) as the state holds it.
    pub(super) fn record(&self, name: &str, reasons: Reasons) -> LinkRecord {
        let mut rec = self.state.links.get(name).cloned().unwrap_or_default();
        rec.reasons = reasons.persisted();
        rec
    }

    /// Appends to the state's journal; true once the entries are durable
    /// (and in `self.state`). Writes the state whole when the journal has
    /// grown to about twice the links' records, so a change costs O(1)
    /// amortised and a restart replays a bounded journal.
    pub fn journal(&mut self, entries: Vec<crate::state::journal::Entry>) -> bool {
        let n = entries.len();
        if crate::state::journal::append(&self.state_path, &mut self.state, entries).is_err() {
            return false;
        }
        self.journaled += n;
        if self.journaled > 2 * self.links.len() + 1024 {
            // The entries are durable already: a failure here only leaves
            // the journal longer, and the next change tries again.
            if crate::state::compact(&self.state_path, &self.state).is_ok() {
                self.journaled = 0;
            }
        }
        true
    }

    /// Writes the persisted reasons of every link (write, fsync, rename).
    pub fn persist(&mut self) {
        // Every tick comes here: most find nothing to write, and knowing
        // that must not cost a record per link (10,000 String keys built,
        // sorted and compared each second).
        if self.persist_disabled || self.records_match() {
            self.write_failing = None;
            return;
        }
        let mut links = BTreeMap::new();
        for (name, l) in &self.links {
            let rec = self.record(name, l.reasons());
            if !rec.is_empty() {
                links.insert(name.clone(), rec);
            }
        }
        if links == self.state.links || self.persist_disabled {
            self.write_failing = None;
            return;
        }
        // Kept in memory only once it is on disk: a write that failed is
        // tried again by the next call (every tick), not forgotten.
        let mut next = self.state.clone();
        next.links = links;
        match crate::state::compact(&self.state_path, &next) {
            Ok(()) => {
                self.state = next;
                self.journaled = 0;
                if self.write_failing.take().is_some() {
                    log::event(Event::StateWriteRecovered)
                        .kv("path", self.state_path.display())
                        .send();
                }
            }
            Err(e) => {
                // Said for every record that could not be written, and
                // once a minute while the same one keeps failing.
                let now = std::time::Instant::now();
                let say = self.write_failing.as_ref().is_none_or(|(t, last)| {
                    *last != next.links
                        || now.duration_since(*t) >= std::time::Duration::from_secs(60)
                });
                if say {
                    self.write_failing = Some((now, next.links.clone()));
                    log::event(Event::StateWriteFailed)
                        .kv("path", self.state_path.display())
                        .msg(e)
                        .send();
                }
            }
        }
    }

    /// Whether the state in memory (what is on disk) already holds the
    /// record `persist` would write for every link, and no other. A link
    /// decides only its reasons: its epoch and verifier are taken from
    /// that state. One walk over both maps, in name order.
    fn records_match(&self) -> bool {
        let mut on_disk = self.state.links.iter().peekable();
        for (name, l) in &self.links {
            let reasons = l.reasons().persisted();
            match on_disk.peek() {
                Some((n, r)) if *n == name => {
                    // An empty record is left out of the file.
                    if r.reasons != reasons || r.is_empty() {
                        return false;
                    }
                    on_disk.next();
                }
                // A record of a link no longer configured.
                Some((n, _)) if n.as_str() < name.as_str() => return false,
                _ if !reasons.is_empty() => return false,
                _ => {}
            }
        }
        on_disk.next().is_none()
    }

    /// The persisted key-agreement epoch of a link (0: none yet).
    pub fn epoch(&self, name: &str) -> u64 {
        self.state.links.get(name).map_or(0, |r| r.epoch)
    }

    /// Changes the state file in one write (write, fsync, rename, fsync
    /// the directory); on error the file is unchanged on disk and so is
    /// the state in memory.
    pub fn update_state(&mut self, change: impl FnOnce(&mut State)) -> std::io::Result<()> {
        let mut next = self.state.clone();
        change(&mut next);
        crate::state::compact(&self.state_path, &next)?;
        self.state = next;
        self.journaled = 0;
        Ok(())
    }

    /// Sets or clears parent-owned reasons; an added one is said in a
    /// `lockdown` event once the kernel shows the link locked.
    pub fn set_parent_reason(&mut self, name: &str, r: LockReason, on: bool) {
        debug_assert_eq!(r.owner(), Owner::Parent);
        let Some(l) = self.links.get_mut(name) else {
            return;
        };
        if on {
            if l.parent.insert(r) {
                l.unsaid.insert(r);
            }
        } else {
            l.parent.remove(r);
            l.unsaid.remove(r);
        }
    }

    /// Takes a new engine-owned reason set; logs `lockdown` for each added one.
    pub fn set_engine_reasons(
        &mut self,
        name: &str,
        reasons: Reasons,
        qber: Option<f64>,
        threshold: Option<f64>,
    ) {
        let releasing = self.releasing.remove(name);
        let Some(l) = self.links.get_mut(name) else {
            return;
        };
        let before = l.engine.unwrap_or(l.inherited);
        for r in reasons.iter().filter(|r| !before.contains(*r)) {
            l.unsaid.insert(r);
        }
        for r in before.iter().filter(|r| !reasons.contains(*r)) {
            l.unsaid.remove(r);
        }
        // First fresh report: the engine has fresh state, process-failure ends.
        if l.engine.is_none() {
            l.parent.remove(LockReason::ProcessFailure);
        }
        l.engine = Some(reasons);
        l.inherited = Reasons::EMPTY;
        if l.manual && reasons.contains(LockReason::Qber) {
            l.held = true;
        }
        if let Some(until) = releasing {
            // The report that follows an operator's unlock the parent ran:
            // the engine found the recovery condition held, or it did not.
            if !reasons.contains(LockReason::Qber) && std::time::Instant::now() <= until {
                l.held = false;
            }
        }
        l.qber = qber;
        l.threshold = threshold;
    }
}

#[cfg(test)]
mod tests;
