//! Every link's read-back at once (a tick's, after a site or section
//! lock): from the last verified listing while nothing but our own
//! read-back flips touched our tables since, else from a new listing.
//! In the links' order, as vectors: a map keyed by 10,000 names, built
//! and taken apart each second, was most of the tick's read-back.

use super::first_read::Baseline;
use super::reverify::Loaded;
use super::{Nft, SITE_SET, chain, readback};
use crate::parent::fw::{Observed, Readback};
use crate::ruleset::nft::dispatch;
use crate::ruleset::{LinkTarget, check_names};
use crate::tool::FwError;

impl Nft {
    /// What the kernel holds for each of `links`, in their order.
    pub(super) fn observe_every(&mut self, links: &[LinkTarget]) -> Result<Vec<Readback>, FwError> {
        for l in links {
            check_names(&self.table, l)?;
        }
        if let Some(after) = self.site_flip.take() {
            if let Some(seen) = self.observe_lock(links, None, after) {
                return Ok(seen);
            }
        }
        if let Some((i, after)) = self.source_flip.take() {
            if let Some(seen) = self.observe_lock(links, Some(i), after) {
                return Ok(seen);
            }
        }
        let gen_before = self.generation();
        let unchanged = match (self.verified_gen, gen_before) {
            (Some(v), Some(now)) => self.untouched(v, now),
            _ => false,
        };
        let places = self.places(links);
        let verified = |i: &Option<usize>| self.known[(*i)?].verified.clone();
        if let Some(seen) = unchanged
            .then(|| places.iter().map(verified).collect())
            .flatten()
        {
            self.set_verified_gen(gen_before);
            return Ok(seen);
        }
        self.set_verified_gen(None);
        // The table holds the chains of every link we know, and maybe of
        // some we no longer do: its listing's time grows with them.
        let held = links.len().max(self.known.len());
        let ours = self.table.clone();
        let mut table = self.list(&ours, held)?;
        // What the listing's judges cannot tell (a rule of ours replaced by
        // another of the same count): each link chain's content against
        // what the first read since our last write of it showed. One that
        // changed reads as missing. Chains read for the first time are
        // kept as read once nothing touched the table meanwhile.
        let mut first_reads = Vec::new();
        if let (Some(t), Some(contents)) = (table.as_mut(), self.chain_contents()?) {
            for (l, i) in links.iter().zip(&places) {
                let Some(i) = *i else { continue };
                for which in [Loaded::Link, Loaded::Lock] {
                    let chain = which.chain(&l.name);
                    let now = contents.get(&chain).copied();
                    let now = now.unwrap_or_else(chain::Content::empty);
                    let changed = match *self.known[i].content_mut(which) {
                        Baseline::Read(was) => was != now,
                        Baseline::Theirs => true,
                        Baseline::Unread(floor) => {
                            let theirs = !self.first_read(floor);
                            if theirs {
                                *self.known[i].content_mut(which) = Baseline::Theirs;
                            }
                            theirs
                        }
                    };
                    if changed {
                        t.chains.remove(&chain);
                        self.known[i].forget(which);
                    } else if !self.known[i].content_mut(which).is_read() {
                        first_reads.push((i, which, now));
                    }
                }
            }
        }
        let guard = if self.guard_may_exist {
            let guard = self.guard_table();
            let g = self.list(&guard, held)?;
            self.guard_may_exist = g.is_some();
            g
        } else {
            None
        };
        // What the listings show goes into vectors in the links' order, and
        // the listings are dropped before anything this backend keeps is
        // made: kept names and maps made while a 10,000-link listing's
        // hundreds of thousands of small pieces were live sat among them
        // and pinned the freed heap around them (the parent held 58 MiB
        // with 20 MB live).
        let judged = readback::judge(links, table.as_ref(), guard.as_ref(), &|n| {
            self.known_of(n).is_some_and(|k| k.lock_loaded)
        });
        // Whether each lockdown chain is whole, and whether it holds rules.
        let (lock_ok, lock_rules): (Vec<bool>, Vec<bool>) = (links.iter())
            .map(|l| (table.as_ref()).map_or((false, false), |t| readback::lock_chain(t, &l.name)))
            .unzip();
        let skeleton_whole = (table.as_ref()).is_some_and(|t| readback::skeleton_whole(links, t));
        let shapes: Option<Vec<readback::Shape>> = (table.as_ref()).map(|t| {
            let loaded = |l: &LinkTarget| self.known_of(&l.name).is_some_and(|k| k.lock_loaded);
            (links.iter())
                .map(|l| readback::shape_judged(l, t, loaded(l)))
                .collect()
        });
        drop((table, guard));
        // Cached only if nothing touched our tables while we listed.
        let gen_after = gen_before.and_then(|before| self.still(before));
        self.skeleton_gen = gen_after.filter(|_| skeleton_whole);
        if gen_after.is_some() {
            self.set_verified_gen(gen_after);
            for k in &mut self.known {
                (k.verified, k.shape) = (None, None);
            }
            for (i, which, now) in first_reads {
                *self.known[i].content_mut(which) = Baseline::Read(now);
            }
        }
        // Each link's row, found once. Cloned: a damage's text was made
        // among the listing's pieces.
        for (n, i) in places.iter().enumerate() {
            let Some(k) = i.map(|i| &mut self.known[i]) else {
                continue;
            };
            let rb = &judged[n];
            if !lock_ok[n] {
                k.staged = None;
            }
            k.lock_held_rules = lock_rules[n];
            if !matches!(rb.state, Observed::Open | Observed::Locked) {
                k.opened = None;
            }
            if gen_after.is_some() {
                k.verified = Some(rb.clone());
                k.shape = shapes.as_ref().map(|s| s[n]);
            }
        }
        Ok(judged)
    }

    /// The read-back of every link right after our site lock (`section`
    /// None) or the lock of QBER section `section`, without a listing, as
    /// [`Nft::observe_flip`] does for one link: the lock was the only
    /// transaction since the verified listing, so each link's chains, and
    /// every link the lock does not cover, are as verified; the lock's set
    /// is looked up. None when that cannot be shown.
    fn observe_lock(
        &mut self,
        links: &[LinkTarget],
        section: Option<usize>,
        after: Option<u32>,
    ) -> Option<Vec<Readback>> {
        self.our_batch_since_verified(after)?;
        let covers = |n: &Nft, l: &LinkTarget| section.is_none_or(|i| n.source_of(l) == Some(i));
        let known = |l: &LinkTarget| {
            self.known_of(&l.name)
                .is_some_and(|k| k.shape.is_some() && (covers(self, l) || k.verified.is_some()))
        };
        if self.guard_may_exist || !links.iter().all(known) {
            return None;
        }
        let set = section.map_or(SITE_SET.to_string(), dispatch::source_set);
        if self.families(&set).ok()? != [true, true] {
            return None;
        }
        // Nothing that touched our tables slipped in while the set was read.
        let now = self.still(after?)?;
        // Every link is known, with its shape (checked above).
        let seen: Vec<Readback> = (links.iter())
            .map(|l| {
                let k = self.known_of(&l.name)?;
                if !covers(self, l) {
                    return k.verified.clone();
                }
                // Each of its keys is in the lock's reach (the verified
                // listing showed them in `keys_`, or in `src<i>_`), so all
                // of them take the lockdown chain.
                let holds = readback::Holds::of_keys(&k.keys, |_, _| true);
                let state = readback::judge_shape(l, k.shape?, holds);
                let rb = Readback {
                    state,
                    guarded: false,
                };
                Some(rb)
            })
            .collect::<Option<_>>()?;
        self.set_verified_gen(Some(now));
        self.keep_verified(links, &seen);
        Some(seen)
    }

    /// `seen` is the verified read-back; nothing is, of the other links.
    fn keep_verified(&mut self, links: &[LinkTarget], seen: &[Readback]) {
        for k in &mut self.known {
            k.verified = None;
        }
        for (i, rb) in self.places(links).into_iter().zip(seen) {
            if let Some(i) = i {
                self.known[i].verified = Some(rb.clone());
            }
        }
    }

    /// Each of `links`' place in `targets`: walked side by side where both
    /// are in name order, as the parent's are (one comparison a link, not
    /// a search among 10,000 names); a link out of that order is looked up.
    fn places(&self, links: &[LinkTarget]) -> Vec<Option<usize>> {
        let mut next = 0;
        (links.iter())
            .map(|l| {
                let place = match self.targets.get(next) {
                    Some(t) if t.name == l.name => Some(next),
                    _ => self.index(&l.name),
                };
                next = place.map_or(next, |i| i + 1);
                place
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(n: &str) -> LinkTarget {
        LinkTarget {
            name: n.into(),
            ..LinkTarget::sample()
        }
    }

    /// In order, with gaps, out of order, unknown: each link's own place.
    #[test]
    fn places_are_each_links_own() {
        let mut nft = Nft::new(std::path::Path::new("/nonexistent/nft"), "t");
        nft.targets = ["a", "b", "c", "d"].map(named).into();
        let places = |names: &[&str]| {
            let links: Vec<LinkTarget> = names.iter().map(|n| named(n)).collect();
            nft.places(&links)
        };
        assert_eq!(places(&["a", "b", "c", "d"]), [0, 1, 2, 3].map(Some));
        assert_eq!(places(&["b", "d"]), [Some(1), Some(3)]);
        assert_eq!(places(&["c", "a", "b"]), [Some(2), Some(0), Some(1)]);
        assert_eq!(
            places(&["a", "x", "b", "zz"]),
            [Some(0), None, Some(1), None]
        );
        assert_eq!(places(&[]), []);
    }
}
