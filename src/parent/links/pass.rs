//! The tick's reconcile (see `links.rs`): every link read back in one
//! listing, then each brought to its desired state. At 10,000 links the
//! second half took 8-17 ms of one loop turn, and a lockdown reported
//! meanwhile waited for all of it; the main loop now converges a slice
//! of links a turn ([`Links::reconcile_more`]) and reads the engine's
//! reports between slices. A flip made between slices reads its own link
//! back, so a slice converges from what the kernel holds, not from the
//! listing alone. What a slice reports is each link whose state differs
//! from what the engine was last told ([`super::LinkCtl::untold`]), not a
//! difference from a snapshot: other handlers report links between
//! slices, and a second listing may come before the pass reaches a link.

use super::{Links, OpenedBy, target_of};
use crate::lock::Enforcement;
use crate::log::{self, Event};
use crate::parent::fw::Observed;
use crate::policy::Bundle;
use crate::ruleset::LinkTarget;
use crate::tool::FwError;
use std::time::{Duration, Instant};

/// Links a turn of the main loop converges in a tick's reconcile: about
/// a millisecond's work when nothing needs a flip.
pub const RECONCILE_AT_ONCE: usize = 1024;

/// How long a slice goes on once a link is done: a lockdown's own flip
/// is ~2 ms at 10,000 links, an nft run tens of milliseconds, and a slice
/// of links that each walk their ladder would keep the engine's reports
/// (and the heartbeat) waiting for all of them.
pub const SLICE_TIME: Duration = Duration::from_millis(2);

/// A reconcile under way: the next link to converge, by its place in
/// name order. It ends with the last link: a tick that comes meanwhile
/// reads every link back and the pass goes on (links it passed wait for
/// the next pass; one that went round instead never ended while passes
/// took longer than a tick, and the loop's opens, re-applications and
/// preloads, which come after it, never had their turn).
pub(super) struct Pass {
    next: usize,
}

impl Links {
    /// The whole reconcile at once: reads every link back, then brings each
    /// to its desired state; returns the links whose state the engine was
    /// not told. A tick's pass under way ends: this one covers every link.
    pub fn reconcile(
        &mut self,
        bundle: Option<&Bundle>,
        by: OpenedBy,
    ) -> Vec<(String, Enforcement)> {
        self.pass = None;
        self.start_reconcile();
        self.reconcile_more(bundle, by, usize::MAX, None)
    }

    /// A tick: reads every link back and starts a pass over them (a pass
    /// still under way goes on from where it is).
    pub fn start_reconcile(&mut self) {
        if self.pass.is_some() {
            // Its end would have retried a failed write: each tick does.
            self.persist();
        }
        self.observe_all();
        self.check_restored_peers();
        let next = self.pass.as_ref().map_or(0, |p| p.next);
        self.pass = Some(Pass { next });
    }

    /// Whether a pass has links left ([`Links::reconcile_more`]).
    pub fn reconciling(&self) -> bool {
        self.pass.is_some()
    }

    /// Converges the pass's next links, `at_most` of them, and none after
    /// `deadline` once one is done; returns those whose state the engine
    /// was not told. The last slice ends the pass and writes the state
    /// file if a record changed (or a write failed before).
    pub fn reconcile_more(
        &mut self,
        bundle: Option<&Bundle>,
        by: OpenedBy,
        at_most: usize,
        deadline: Option<Instant>,
    ) -> Vec<(String, Enforcement)> {
        let Some(mut pass) = self.pass.take() else {
            return Vec::new();
        };
        let len = self.targets.len();
        let mut changed = Vec::new();
        // Links locked by an earlier run's lockdown, locked again together
        // with this run's at the slice's end (the slice ends when they are
        // as many as the firewall takes at once). Only in a sliced pass: a
        // whole reconcile (start-up, a site lock) does not wait for them.
        let mut relock = Vec::new();
        let relocks_at_once = self.fw.relocks_at_once();
        let mut n = 0;
        while pass.next < len && n < at_most && relock.len() < relocks_at_once {
            if n > 0 && deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            let name = self.targets[pass.next].name.clone();
            (pass.next, n) = (pass.next + 1, n + 1);
            // A link queued to open is reported as the listing found it
            // (an open link found damaged reads locked until its open).
            if !self.queue_open(&name, by, bundle) {
                self.converge(&name, bundle, by, false);
                if deadline.is_some() && self.lock_inherited(&name) {
                    relock.push(name);
                    continue;
                }
            }
            let l = &self.links[&name];
            if l.untold() {
                changed.push((name, l.enforcement()));
            }
        }
        for name in self.relock_inherited(relock, bundle) {
            let l = &self.links[&name];
            if l.untold() {
                changed.push((name, l.enforcement()));
            }
        }
        if pass.next < len {
            self.pass = Some(pass);
        } else {
            // A write that failed (a full or read-only disk) is retried here.
            self.persist();
        }
        changed
    }

    /// Whether the link is to stay locked, the kernel shows it locked, and
    /// by a lockdown an earlier run loaded ([`crate::parent::fw::Firewall::lock_inherited`]).
    fn lock_inherited(&self, name: &str) -> bool {
        !self.relocked.contains(name)
            && self.relocks(name)
            && self.links[name].kernel.state == Observed::Locked
            && self.fw.lock_inherited(target_of(&self.targets, name))
    }

    /// Loads this run's lockdown over an earlier run's for `names`, which
    /// the kernel shows locked: the bundle's, or without one qkdpfd's drop,
    /// in as few loads as the firewall can and none for a link alone
    /// ([`crate::parent::fw::Firewall::reload_locks`]); each read back. One
    /// left locked keeps what it had if the load failed, said once (it is
    /// not tried again this run); one no longer shown locked walks the
    /// lockdown ladder. Returns `names`.
    fn relock_inherited(&mut self, names: Vec<String>, bundle: Option<&Bundle>) -> Vec<String> {
        if names.is_empty() {
            return names;
        }
        let ext = self.fw.extension();
        let ruleset = bundle.and_then(|b| b.ruleset(Enforcement::Lockdown, ext));
        let targets: Vec<&LinkTarget> = names.iter().map(|n| target_of(&self.targets, n)).collect();
        let mut loaded = self.fw.reload_locks(&targets, ruleset).into_iter();
        for name in &names {
            self.relocked.insert(name.clone());
            let r = loaded
                .next()
                .unwrap_or_else(|| Err(FwError::refused("not loaded")));
            self.observe_one(name);
            if self.links[name].kernel.state != Observed::Locked {
                self.lock(name, bundle);
                continue;
            }
            self.mark_locked(name, true);
            if let Err(e) = r {
                log::event(Event::StageFailed)
                    .kv("link", name)
                    .msg(format!("an earlier run's lockdown rules kept: {e}"))
                    .send();
            }
        }
        names
    }
}
