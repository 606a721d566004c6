//! Many links converged in one turn of the parent's loop (see `links.rs`):
//! the links that would only open go to the firewall together
//! ([`Firewall::open_many`]), and so do, in a new bundle's re-application,
//! those that would only lock again ([`Firewall::lock_many`]); any other
//! link converges on its own. At 10,000 links on nftables one transaction
//! per open kept the loop busy for seconds (every commit walks every chain
//! of the namespace), and one `nft` run per lockdown for each.

use super::{LinkCtl, Links, OpenedBy, say_opened, target_of};
use crate::lock::Enforcement;
use crate::parent::fw::Observed;
use crate::policy::Bundle;
use crate::ruleset::LinkTarget;

#[cfg(doc)]
use crate::parent::fw::Firewall;

impl Links {
    /// Converges the next queued links, [`Links::turn`] of them
    /// (`converge_many`).
    pub fn open_queued(
        &mut self,
        bundle: Option<&Bundle>,
        max: usize,
    ) -> Vec<(String, Option<Enforcement>)> {
        let n = self.turn(max, 0, self.opening.keys(), false);
        let queued = (0..n).filter_map(|_| self.opening.pop_first()).collect();
        self.converge_many(queued, bundle, false)
    }

    /// How many links from the front of a queue (`queued`, in order) to
    /// converge in one turn: those that [`Links::converge`] would only open
    /// (up to `opens`; with `force`, a re-application, also those open that
    /// stay open) or, with `force`, only lock again (up to `relocks`), until
    /// a link beyond either bound; or one other link alone (its lockdown
    /// ladder may be tool runs, which a QBER lockdown must not wait behind
    /// many of).
    pub fn turn<'a>(
        &self,
        opens: usize,
        relocks: usize,
        queued: impl IntoIterator<Item = &'a String>,
        force: bool,
    ) -> usize {
        let (mut n, mut opened, mut relocked) = (0, 0, 0);
        for name in queued {
            let room = if self.opens_plainly(name) || (force && self.stays_open(name)) {
                opened += 1;
                opened <= opens
            } else if force && self.relocks(name) {
                relocked += 1;
                relocked <= relocks
            } else {
                return n.max(1);
            };
            if !room {
                break;
            }
            n += 1;
        }
        n
    }

    /// Whether a forced [`Links::converge`] would lock the link again (a
    /// new bundle's lockdown text): it is to be locked, and nothing failed.
    pub(super) fn relocks(&self, name: &str) -> bool {
        (self.links.get(name))
            .is_some_and(|l| l.desired() == Some(Enforcement::Lockdown) && !l.lock_failed)
    }

    /// Whether a forced [`Links::converge`] would open the link again (a
    /// new bundle's open text, or the same): it is open in the kernel and
    /// to stay open. At 10,000 links, the ~5,000 a tick had opened before
    /// the re-application reached them took a turn each (~10 s in all,
    /// every preload waiting behind them).
    fn stays_open(&self, name: &str) -> bool {
        self.links.get(name).is_some_and(|l| {
            l.desired() == Some(Enforcement::Open)
                && l.kernel.state == Observed::Open
                && !l.kernel.guarded
        })
    }

    /// Whether [`Links::converge`] would only open the link: it is locked
    /// in the kernel, to be opened, and need not wait for a session.
    fn opens_plainly(&self, name: &str) -> bool {
        let before = self.links.get(name).map(LinkCtl::enforcement);
        self.would_open(name) && before.is_some_and(|b| !self.waits_for_session(name, b))
    }

    /// Re-applies the current state of each of `names` (a new bundle's
    /// rulesets; `converge_many`).
    pub fn reapply_many(
        &mut self,
        names: Vec<String>,
        bundle: Option<&Bundle>,
    ) -> Vec<(String, Option<Enforcement>)> {
        let links = names.into_iter().map(|n| (n, OpenedBy::Auto)).collect();
        self.converge_many(links, bundle, true)
    }

    /// [`Links::converge`] of each link: those it would only open together
    /// ([`Firewall::open_many`]: at 10,000 links a transaction each kept
    /// the loop busy for seconds), with `force` those it would only lock
    /// again together ([`Firewall::lock_many`]), any other on its own.
    /// Each link's name and its new enforcement if that changed.
    fn converge_many(
        &mut self,
        links: Vec<(String, OpenedBy)>,
        bundle: Option<&Bundle>,
        force: bool,
    ) -> Vec<(String, Option<Enforcement>)> {
        let mut out = Vec::new();
        let mut plain = Vec::new();
        let mut relock = Vec::new();
        // Every link's group first: a lock among them must hold the others
        // of its interface before any of those is sorted to open.
        let mut moved = Vec::new();
        for (name, _) in &links {
            moved.extend(self.regroup(name));
        }
        for (name, by) in links {
            let Some(before) = self.links.get(&name).map(LinkCtl::enforcement) else {
                continue;
            };
            // Locked in the kernel and to be opened: `force` changes nothing;
            // open and to stay open: forced, an open again.
            if self.opens_plainly(&name) || (force && self.stays_open(&name)) {
                plain.push((name, by, before));
            } else if force && self.relocks(&name) {
                relock.push((name, before));
            } else {
                let changed = self.converge(&name, bundle, by, force);
                out.push((name, changed));
            }
        }
        // Those whose hold changed first: a new hold locks now.
        self.converge_moved(moved, bundle, OpenedBy::Auto);
        out.extend(self.open_many(plain, bundle));
        out.extend(self.lock_many(relock, bundle));
        out
    }

    /// The lockdown half of a forced [`Links::converge`] for many links at
    /// once (and of the links of a shared interface that a lockdown holds
    /// with it): the bundle's lockdown loaded for all of them
    /// ([`Firewall::lock_many`]), each read back; a link not shown locked
    /// walks the whole ladder on its own.
    pub(super) fn lock_many(
        &mut self,
        links: Vec<(String, Enforcement)>,
        bundle: Option<&Bundle>,
    ) -> Vec<(String, Option<Enforcement>)> {
        let names = links.iter().map(|(n, _)| n.as_str());
        let mut applied = self
            .apply_many(names, Enforcement::Lockdown, bundle)
            .into_iter();
        let mut out = Vec::with_capacity(links.len());
        for (name, before) in links {
            let locked = applied.next().is_some_and(|r| r.is_ok()) && {
                self.observe_one(&name);
                self.links[&name].kernel.state == Observed::Locked
            };
            match locked {
                true => {
                    self.release_guard(&name);
                    self.mark_locked(&name, true);
                }
                false => self.lock(&name, bundle),
            }
            self.persist_link(&name);
            let after = self.links[&name].enforcement();
            out.push((name, (before != after).then_some(after)));
        }
        out
    }

    /// The open half of [`Links::converge`] for many links at once.
    fn open_many(
        &mut self,
        links: Vec<(String, OpenedBy, Enforcement)>,
        bundle: Option<&Bundle>,
    ) -> Vec<(String, Option<Enforcement>)> {
        if links.is_empty() {
            return Vec::new();
        }
        for (name, ..) in &links {
            self.persist_link(name);
        }
        let names = links.iter().map(|(n, ..)| n.as_str());
        let mut applied = self
            .apply_many(names, Enforcement::Open, bundle)
            .into_iter();
        let mut out = Vec::with_capacity(links.len());
        for (name, by, before) in links {
            // No open text: nothing to open, as `open` says.
            if let Some(r) = applied.next() {
                if self.read_open(&name, r, bundle) && before != Enforcement::Open {
                    say_opened(&name, by);
                }
            }
            let after = self.links[&name].enforcement();
            out.push((name, (before != after).then_some(after)));
        }
        out
    }

    /// The bundle's `state` ruleset applied to every link of `names` at
    /// once ([`Firewall::open_many`], [`Firewall::lock_many`]): one answer
    /// per link, none when the bundle has no such ruleset or no link is
    /// given.
    fn apply_many<'a>(
        &mut self,
        names: impl Iterator<Item = &'a str>,
        state: Enforcement,
        bundle: Option<&Bundle>,
    ) -> Vec<Result<(), crate::tool::FwError>> {
        let ext = self.fw.extension();
        let Some(r) = bundle.and_then(|b| b.ruleset(state, ext)) else {
            return Vec::new();
        };
        let targets: Vec<&LinkTarget> = names.map(|n| target_of(&self.targets, n)).collect();
        if targets.is_empty() {
            return Vec::new();
        }
        let started = crate::imsg::monotonic_ns();
        let applied = match state {
            Enforcement::Open => self.fw.open_many(&targets, r),
            Enforcement::Lockdown => self.fw.lock_many(&targets, r),
        };
        if let Some(ok) = applied.iter().find(|r| r.is_ok()) {
            self.stamp_commit(started, ok);
        }
        applied
    }
}
