//! The manual-unlock gate (DESIGN §2): under `unlock = "manual"` a QBER
//! lockdown is the parent's to release, at an operator's unlock the parent
//! ran after asking the kernel who the client is. The engine decides
//! whether the recovery condition held (it owns the samples and keys);
//! the gate makes sure that no word of the engine's alone, whatever
//! reached it from the network, reopens such a link.

use super::Links;
use crate::lock::LockReason;
use crate::policy::Bundle;
use crate::policy::params::UnlockMode;

impl Links {
    /// The active policy's unlock mode for each link: under manual unlock
    /// a link the engine or the state file holds for `qber` is held by the
    /// parent's gate too; under auto unlock the gate goes (the engine's
    /// recovery rules decide).
    pub fn set_policy(&mut self, bundle: Option<&Bundle>) {
        // A new bundle's lockdown may be loaded over any link again
        // (`pass.rs`'s once a run counts per bundle).
        self.relocked.clear();
        for (name, l) in self.links.iter_mut() {
            l.manual = bundle.is_some_and(|b| b.policy.for_link(name).unlock == UnlockMode::Manual);
            if !l.manual {
                l.held = false;
            } else if l.engine.unwrap_or(l.inherited).contains(LockReason::Qber) {
                l.held = true;
            }
        }
    }

    /// An operator's unlock of `name`, run by the parent (it asked the
    /// kernel who the client is): releases the manual-unlock gate. Where the
    /// engine still holds `qber`, the engine decides whether the recovery
    /// condition held: its report for the unlock may come before the
    /// request or after it, and the gate goes with the first report without
    /// `qber` within [`RELEASE_WINDOW`] (none comes when the engine kept
    /// its hold). `force` releases it at once.
    pub fn release_manual(&mut self, name: &str, force: bool) {
        let Some(l) = self.links.get_mut(name).filter(|l| l.held) else {
            return;
        };
        if force || !l.engine.unwrap_or(l.inherited).contains(LockReason::Qber) {
            l.held = false;
        } else {
            let until = std::time::Instant::now() + RELEASE_WINDOW;
            self.releasing.insert(name.to_string(), until);
        }
    }
}

/// How long after an operator's unlock the engine's report may release the
/// manual-unlock gate, or be logged as the operator's (`by=operator`): the
/// engine sends it in the same turn as the request.
pub(in crate::parent) const RELEASE_WINDOW: std::time::Duration = std::time::Duration::from_secs(2);
