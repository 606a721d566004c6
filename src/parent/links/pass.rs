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
use std::time::{Duration, Instant};

/// Links a turn of the main loop converges in a tick's reconcile: about
/// a millisecond's work when nothing needs a flip.
pub const RECONCILE_AT_ONCE: usize = 1024;

/// How long a slice goes on converging links once one of them took a
/// flip: a lockdown's own flip is ~2 ms at 10,000 links, an nft run tens
/// of milliseconds, and a slice of links that each walk their ladder
/// would keep the engine's reports (and the heartbeat) waiting for all.
pub const SLICE_TIME: Duration = Duration::from_millis(2);

/// A reconcile under way: it goes round every link once from `start`.
pub(super) struct Pass {
    /// Where the pass started, by place in name order.
    start: usize,
    /// How many links it has converged.
    done: usize,
    /// Each link's enforcement (and whether its lockdown failed) before the
    /// listing this pass converges from, in name order: a link the listing
    /// found changed counts as changed even if its slice leaves it so.
    before: Vec<(Enforcement, bool)>,
}

impl Pass {
    /// Whether the pass has converged link `i` of `len`.
    fn reached(&self, i: usize, len: usize) -> bool {
        (i + len - self.start) % len < self.done
    }
}

impl Links {
    /// The whole reconcile at once: reads every link back, then brings each
    /// to its desired state; returns the links whose enforcement changed
    /// (since the listing of a tick's pass it overtakes, for the links
    /// that pass had not reached).
    pub fn reconcile(
        &mut self,
        bundle: Option<&Bundle>,
        by: OpenedBy,
    ) -> Vec<(String, Enforcement)> {
        self.start_reconcile();
        self.reconcile_more(bundle, by, usize::MAX, None)
    }

    /// A tick: reads every link back and starts a pass that goes round
    /// every link once. A pass still under way is taken over: the new one
    /// starts where it was (links it had not reached come first), and
    /// those links keep their state from before its listing, so that a
    /// change that listing found is still reported.
    pub fn start_reconcile(&mut self) {
        let len = self.targets.len();
        // In link order (the set of links never changes while we run).
        let mut before: Vec<(Enforcement, bool)> = (self.links.values())
            .map(|l| (l.enforcement(), l.lock_failed))
            .collect();
        let mut start = 0;
        if let Some(old) = self.pass.take() {
            for (i, b) in before.iter_mut().enumerate() {
                if !old.reached(i, len) {
                    *b = old.before[i];
                }
            }
            start = (old.start + old.done) % len.max(1);
            // Its end would have retried a failed write: each tick does.
            self.persist();
        }
        self.observe_all();
        self.check_restored_peers();
        self.pass = Some(Pass {
            start,
            done: 0,
            before,
        });
    }

    /// Whether a pass has links left ([`Links::reconcile_more`]).
    pub fn reconciling(&self) -> bool {
        self.pass.is_some()
    }

    /// Converges the pass's next links, `at_most` of them, and none after
    /// `deadline` once one is done; returns those whose enforcement
    /// changed. The last slice ends the pass and writes the state file if
    /// a record changed (or a write failed before).
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
        let mut n = 0;
        while pass.done < len && n < at_most {
            if n > 0 && deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            let i = (pass.start + pass.done) % len;
            (pass.done, n) = (pass.done + 1, n + 1);
            let name = self.targets[i].name.clone();
            // A link queued to open is reported as the listing found it
            // (an open link found damaged reads locked until its open).
            if !self.queue_open(&name, by) {
                self.converge(&name, bundle, by, false);
            }
            let l = &self.links[&name];
            if pass.before[i] != (l.enforcement(), l.lock_failed) {
                changed.push((name, l.enforcement()));
            }
        }
        if pass.done < len {
            self.pass = Some(pass);
        } else {
            // A write that failed (a full or read-only disk) is retried here.
            self.persist();
        }
        changed
    }
}
