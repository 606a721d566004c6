//! The tick's reconcile (see `links.rs`): every link read back in one
//! listing, then each brought to its desired state. At 10,000 links the
//! second half took 8-17 ms of one loop turn, and a lockdown reported
//! meanwhile waited for all of it; the main loop now converges a slice
//! of links a turn ([`Links::reconcile_more`]) and reads the engine's
//! reports between slices. A flip made between slices reads its own link
//! back, so a slice converges from what the kernel holds, not from the
//! listing alone.

use super::{Links, OpenedBy};
use crate::lock::Enforcement;
use crate::policy::Bundle;

/// Links a turn of the main loop converges in a tick's reconcile: about
/// a millisecond's work when nothing needs a flip.
pub const RECONCILE_AT_ONCE: usize = 1024;

/// A reconcile under way.
pub(super) struct Pass {
    /// The next link to converge, by its place in name order.
    next: usize,
    /// Each link's enforcement (and whether its lockdown failed) before the
    /// listing this pass converges from, in name order: a link the listing
    /// found changed counts as changed even if its slice leaves it as the
    /// listing showed it.
    before: Vec<(Enforcement, bool)>,
}

impl Links {
    /// The whole reconcile at once: reads every link back, then brings each
    /// to its desired state; returns the links whose enforcement changed.
    /// A tick's pass under way starts over (this one covers every link).
    pub fn reconcile(
        &mut self,
        bundle: Option<&Bundle>,
        by: OpenedBy,
    ) -> Vec<(String, Enforcement)> {
        self.pass = None;
        self.start_reconcile();
        self.reconcile_more(bundle, by, usize::MAX)
    }

    /// A tick: reads every link back and starts a pass over them (a pass
    /// still under way goes on from where it is, so that every link is
    /// reached even if passes took longer than a tick).
    pub fn start_reconcile(&mut self) {
        // In link order (the set of links never changes while we run).
        let before = (self.links.values())
            .map(|l| (l.enforcement(), l.lock_failed))
            .collect();
        self.observe_all();
        self.check_restored_peers();
        let next = self.pass.as_ref().map_or(0, |p| p.next);
        self.pass = Some(Pass { next, before });
    }

    /// Whether a pass has links left ([`Links::reconcile_more`]).
    pub fn reconciling(&self) -> bool {
        self.pass.is_some()
    }

    /// Converges the pass's next `at_most` links; returns those whose
    /// enforcement changed. The last slice ends the pass and writes the
    /// state file if a record changed (or a write failed before).
    pub fn reconcile_more(
        &mut self,
        bundle: Option<&Bundle>,
        by: OpenedBy,
        at_most: usize,
    ) -> Vec<(String, Enforcement)> {
        let Some(pass) = self.pass.take() else {
            return Vec::new();
        };
        let end = pass.next.saturating_add(at_most).min(self.targets.len());
        let mut changed = Vec::new();
        for i in pass.next..end {
            let name = self.targets[i].name.clone();
            if self.queue_open(&name, by) {
                continue;
            }
            self.converge(&name, bundle, by, false);
            let l = &self.links[&name];
            if pass.before[i] != (l.enforcement(), l.lock_failed) {
                changed.push((name, l.enforcement()));
            }
        }
        if end < self.targets.len() {
            self.pass = Some(Pass { next: end, ..pass });
        } else {
            // A write that failed (a full or read-only disk) is retried here.
            self.persist();
        }
        changed
    }
}
