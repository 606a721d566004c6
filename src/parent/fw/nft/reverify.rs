//! The read-back after one of our own `nft -f` runs, without a listing.
//!
//! A tick reads every link back; while nothing but our own netlink flips
//! has touched our table since the last listing, it answers from that
//! listing ([`super::monitor`]). Any `nft` run of ours used to end that: the
//! next tick listed the whole table again, 0.85-1.7 s at 10,000 links, and
//! while installs trickled in after a bundle's activation each slow open
//! (which loads the open text of every locked link) or preload did so.
//!
//! When the run (and the copies after it) were the only transactions
//! since the verified listing, what they could have changed is known: the
//! chains they loaded and the keys of their links in the `locked_` sets.
//! Those are read from the kernel (a dump per chain; a lookup per key for
//! a few links, one dump of each `locked_` set for more), each such link is
//! judged again from its chains' shapes and its keys as a flip's read-back
//! is, and the rest of the table — base chains, maps, the other chain of
//! each link, every other link — stays as listed. Otherwise, or when
//! anything cannot be read, nothing is kept and the next tick lists it all.

use super::Nft;
use super::readback::{self, Chain, Ends, Holds};
use crate::parent::fw::{Observed, Readback};

/// Which of a link's chains one of our runs loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Loaded {
    /// `link_<l>`, the open text.
    Link,
    /// `lock_<l>`, the lockdown text.
    Lock,
}

impl Loaded {
    /// The name of this chain of link `link`.
    pub(super) fn chain(self, link: &str) -> String {
        match self {
            Loaded::Link => format!("link_{link}"),
            Loaded::Lock => format!("lock_{link}"),
        }
    }
}

/// Up to this many links' keys are looked up one by one; more are read
/// from one dump of each set.
const ONE_BY_ONE: usize = 64;

impl Nft {
    /// After `ours` transactions of ours (an `nft -f` run and the copies
    /// after it, [`super::copy`]) that loaded the chains `loaded` (places
    /// in `targets`): see the module's doc.
    pub(super) fn reverify(&mut self, loaded: &[(usize, Loaded)], ours: u32) {
        if loaded.is_empty() || !matches!(self.alive, Some(Some(_))) {
            return;
        }
        let after = self.generation();
        let Some(after) = self.only_ours_since_verified(after, ours) else {
            return;
        };
        // What the last listing (or read-back since) showed of each.
        let mut seen = Vec::with_capacity(loaded.len());
        for &(i, _) in loaded {
            let k = &self.known[i];
            let (Some(rb), Some(shape)) = (k.verified.as_ref(), k.shape) else {
                return;
            };
            seen.push((rb.guarded, shape));
        }
        // A dump each: 8-28 µs a chain at 10,000 links here, where one
        // dump of the table's rules grows with every rule of the table
        // (19-506 ms at 10,000 links, the more the fuller the link chains)
        // and a run of ours loads 2,049 links' chains at most.
        let Some(read) = self.chains_one_by_one(loaded) else {
            return;
        };
        let Some(holds) = self.holds_of(loaded) else {
            return;
        };
        for ((&(i, which), (guarded, mut shape)), (chain, holds)) in
            loaded.iter().zip(seen).zip(read.into_iter().zip(holds))
        {
            match which {
                Loaded::Link => shape.link = chain,
                Loaded::Lock => shape.lock = chain,
            }
            let state = readback::judge_shape(&self.targets[i], shape, holds);
            let k = &mut self.known[i];
            if shape.lock != Chain::Whole {
                k.staged = None;
            }
            if !matches!(state, Observed::Open | Observed::Locked) {
                k.opened = None;
            }
            k.shape = Some(shape);
            k.verified = Some(Readback { state, guarded });
        }
        // Nothing may have slipped in while they were read.
        if let Some(now) = self.still(after) {
            self.set_verified_gen(Some(now));
        }
    }

    /// The loaded chains, a netlink dump each (as a link's own read-back).
    fn chains_one_by_one(&mut self, loaded: &[(usize, Loaded)]) -> Option<Vec<Chain>> {
        let mut out = Vec::with_capacity(loaded.len());
        for &(i, which) in loaded {
            let chain = which.chain(&self.targets[i].name);
            let (rules, content) = self.chain_rules(&chain).ok()?.unwrap_or_default();
            out.push(match self.as_loaded(i, which, content) {
                true => shape_of(which, Ends::of(&rules)),
                false => Chain::Other,
            });
        }
        Some(out)
    }

    /// Each loaded link's keys against the `locked_` sets (and a site or
    /// section lock), as a flip's read-back takes them.
    fn holds_of(&mut self, loaded: &[(usize, Loaded)]) -> Option<Vec<Holds>> {
        let targets = self.targets.clone();
        if loaded.len() <= ONE_BY_ONE {
            return (loaded.iter())
                .map(|&(i, _)| self.locked_holds(&targets[i]).ok())
                .collect();
        }
        if self.site_locked().ok()? {
            let all = |i: usize| Holds::of_keys(&self.known[i].keys, |_, _| true);
            return Some(loaded.iter().map(|&(i, _)| all(i)).collect());
        }
        let locked = self.locked_now().ok()?;
        (loaded.iter())
            .map(|&(i, _)| self.holds_in(&locked, &targets[i].name))
            .collect()
    }
}

fn shape_of(which: Loaded, ends: Ends<'_>) -> Chain {
    match which {
        Loaded::Link => ends.link_chain(),
        Loaded::Lock => ends.lock_chain(),
    }
}
