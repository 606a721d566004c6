//! Links that share a WireGuard interface lock together: reason
//! `interface` (see `links.rs`).
//!
//! The traffic inside a tunnel crosses the firewall by its interface,
//! and an interface has one guard: nftables dispatches a key to one link
//! (the first in name order that has it, `ruleset/nft/dispatch.rs`), and
//! pf passes what any link's open anchor passes. A locked link on a
//! shared interface therefore held only its endpoint addresses: a far end
//! that sent from another address or port (NAT, a roaming endpoint: WireGuard
//! follows an authenticated packet to its new source) reached the open
//! guard of the interface and passed, while the link read back locked.
//! Conversely the first link's lockdown stopped every tunnel of the
//! interface while the others said open.
//!
//! So while any link of an interface is held by a reason of its own ([`holds`]),
//! every other link of that interface is held by `interface`: the lockdown is
//! the one the kernel can give, and what each link reports is what its
//! traffic meets. `interface` and `no-session` are not reasons of a
//! link's own here: the first would hold the group by itself, and the
//! second, which every gated link takes as it reopens, would pass the hold
//! round the group for ever (a sibling's session, not the link's, is what
//! it waits for; the lockdown it waits under still stops its data).

use super::{LinkCtl, Links};
use crate::lock::{LockReason, Reasons};
use crate::parent::fw::Observed;
use crate::ruleset::LinkTarget;
use std::collections::{BTreeMap, BTreeSet};

/// The links of each shared interface, and which of them hold a reason of
/// their own.
#[derive(Default)]
pub(super) struct Groups {
    /// A link on a shared interface → its group.
    of: BTreeMap<String, usize>,
    groups: Vec<Group>,
}

struct Group {
    /// In name order.
    members: Vec<String>,
    /// Members held by a reason of their own, as last regrouped.
    holding: BTreeSet<String>,
}

impl Groups {
    /// The groups of `targets`: one per interface with two links or more.
    pub(super) fn of(targets: &[LinkTarget]) -> Groups {
        let mut by_if: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for t in targets {
            by_if.entry(&t.wg_if).or_default().push(t.name.clone());
        }
        let mut g = Groups::default();
        for members in by_if.into_values().filter(|m| m.len() > 1) {
            for m in &members {
                g.of.insert(m.clone(), g.groups.len());
            }
            g.groups.push(Group {
                members,
                holding: BTreeSet::new(),
            });
        }
        g
    }
}

/// A link's reasons that hold its group ([module docs](self)).
fn own(reasons: Reasons) -> Reasons {
    let mut r = reasons;
    r.remove(LockReason::Interface);
    r.remove(LockReason::NoSession);
    r
}

/// Whether a link holds its group: a reason of its own, or, until the
/// engine's first report on it, a lockdown the kernel holds. After a
/// restart a link locked for a reason not written to the state file
/// (`source-lost`, say) has no reason until that report; its lockdown
/// stays, and so must its interface's, or a sibling reopened by its own
/// report would pass the link's traffic meanwhile.
fn holds(l: &LinkCtl) -> bool {
    !own(l.reasons()).is_empty() || (l.engine.is_none() && l.kernel.state != Observed::Open)
}

impl Links {
    /// [`Links::regroup`] of each of `names` (a request that changed all
    /// their reasons at once: `unlock all`), then the others moved,
    /// converged or queued: none is judged on a reason the same request
    /// cleared from another.
    pub fn regroup_all(
        &mut self,
        names: &[String],
        bundle: Option<&crate::policy::Bundle>,
        by: super::OpenedBy,
    ) {
        let mut moved = Vec::new();
        for n in names {
            moved.extend(self.regroup(n));
        }
        self.converge_moved(moved, bundle, by);
    }

    /// Brings `interface` on the links of `name`'s group in line with
    /// whether `name` holds a reason of its own now. Returns the other
    /// links whose `interface` changed: the caller converges them.
    ///
    /// Each member wants `interface` while another member holds; with two
    /// holders or more that is every member, so only a change through
    /// fewer than two holders walks the group (a 10,000-link interface
    /// locking link by link walks it twice, not 10,000 times).
    pub(super) fn regroup(&mut self, name: &str) -> Vec<String> {
        let Some(&g) = self.shared.of.get(name) else {
            return Vec::new();
        };
        let holds = self.links.get(name).is_some_and(holds);
        let group = &mut self.shared.groups[g];
        let before = group.holding.len();
        let changed = match holds {
            true => group.holding.insert(name.to_string()),
            false => group.holding.remove(name),
        };
        if !changed || before.min(group.holding.len()) >= 2 {
            return Vec::new();
        }
        let want: Vec<(String, bool)> = (group.members.iter())
            .map(|m| {
                let others = group.holding.len() - usize::from(group.holding.contains(m));
                (m.clone(), others > 0)
            })
            .collect();
        let mut moved = Vec::new();
        for (m, on) in want {
            let has = self.links[&m].parent.contains(LockReason::Interface);
            if has != on {
                self.set_parent_reason(&m, LockReason::Interface, on);
                if m != name {
                    moved.push(m);
                }
            }
        }
        moved
    }
}
