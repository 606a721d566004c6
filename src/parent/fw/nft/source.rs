//! The source lock: every link of one `[qber.X]` section locked in one
//! transaction of two elements (`ipv4` and `ipv6` into set `src<i>`),
//! whatever the number of its links, as the site lock does for every link
//! (see `ruleset::nft::dispatch`). Taken when the engine finds the
//! section's source lost for all its links at once; ended by the first
//! open of one of them, which first locks each of them on its own.
//!
//! A source lock outlives a restart only as locks of its own links: `init`
//! finds the `src<i>` sets an earlier run left holding anything, puts into
//! the `locked_` sets the keys of every link that any of them covered (the
//! sections and their links may have changed since), and empties them, in
//! the skeleton's transaction. Nothing a source lock held opens on the way.

use super::Nft;
use super::netlink::{self, BOTH_FAMILIES, Change, Lookup};
use crate::ruleset::LinkTarget;
use crate::ruleset::nft::dispatch::{self, Kind, LinkKeys};
use crate::ruleset::nft::end_lock;
use crate::tool::FwError;

/// A source lock an earlier run left: its set, and the keys it covered.
pub(super) struct Held {
    set: String,
    keys: super::batch::Locked,
}

impl Nft {
    /// The index of `link`'s section among the table's (`src<i>`).
    pub(super) fn source_of(&self, link: &LinkTarget) -> Option<usize> {
        self.sources.iter().position(|s| **s == *link.qber)
    }

    /// Which families nf_proto set `set` holds, over netlink.
    pub(super) fn families(&mut self, set: &str) -> Result<[bool; 2], String> {
        let mut have = [false; 2];
        for (there, family) in have.iter_mut().zip(BOTH_FAMILIES) {
            self.seq = self.seq.wrapping_add(4);
            *there = netlink::exists(&self.table, Lookup::Element(set, family), self.seq)
                .map_err(|e| format!("set {set}: {e}"))?;
        }
        Ok(have)
    }

    /// Whether `link`'s section is locked (its set holds both families);
    /// false without a lookup while none of ours may be.
    pub(super) fn source_locked(&mut self, link: &LinkTarget) -> Result<Option<usize>, String> {
        let Some(i) = self.source_of(link) else {
            return Ok(None);
        };
        if !self.sources_may_be_locked.contains(&i) {
            return Ok(None);
        }
        let locked = self.families(&dispatch::source_set(i))? == [true, true];
        Ok(locked.then_some(i))
    }

    /// The source locks the table holds before `init` rebuilds it: `src0`,
    /// `src1`, ... while they exist, those holding any family, with the
    /// keys of their `src<i>_` sets. Err when that cannot be read.
    pub(super) fn held_source_locks(&mut self) -> Result<Vec<Held>, String> {
        let mut held = Vec::new();
        for i in 0.. {
            let set = dispatch::source_set(i);
            self.seq = self.seq.wrapping_add(4);
            match netlink::exists(&self.table, Lookup::Set(&set), self.seq) {
                Ok(true) => {}
                // No such set, or no table yet: no more of them.
                Ok(false) => break,
                Err(e) => return Err(format!("set {set}: {e}")),
            }
            if self.families(&set)? == [false, false] {
                continue;
            }
            let keys = self.key_sets(|k| k.source_keys_set(i))?;
            held.push(Held { set, keys });
        }
        Ok(held)
    }

    /// What `init` appends to the skeleton for `held` (see the module's
    /// doc): every link with a key that a held lock covered, locked on its
    /// own, and the held sets emptied. `held` None (unreadable): every link
    /// locked on its own and every section's set emptied.
    pub(super) fn end_held(&self, held: Option<&[Held]>) -> String {
        let (keys, sets): (Vec<LinkKeys>, Vec<String>) = match held {
            Some([]) => return String::new(),
            Some(held) => {
                let covered = |k: &LinkKeys| {
                    held.iter().any(|h| {
                        Kind::ALL
                            .iter()
                            .any(|kind| (k.bytes(*kind).iter()).any(|b| h.keys[kind].contains(b)))
                    })
                };
                let keys = self
                    .known
                    .iter()
                    .map(|k| &k.keys)
                    .filter(|k| covered(k))
                    .cloned();
                (keys.collect(), held.iter().map(|h| h.set.clone()).collect())
            }
            None => (
                self.all_keys(),
                (0..self.sources.len()).map(dispatch::source_set).collect(),
            ),
        };
        end_lock(&self.table, &keys, &sets)
    }

    /// Ends the lock of `link`'s section before the link opens: each link
    /// of the section locked on its own, the section's set emptied, in one
    /// transaction. Nothing in force opens.
    pub(super) fn end_source_lock(&mut self, link: &LinkTarget) -> Result<(), FwError> {
        let Some(i) = self.source_of(link) else {
            return Ok(());
        };
        if !self.sources_may_be_locked.contains(&i) {
            return Ok(());
        }
        let set = dispatch::source_set(i);
        let have = self.families(&set).map_err(FwError::refused)?;
        if have.contains(&true) {
            let keys: Vec<LinkKeys> = (self.targets.iter())
                .filter(|t| t.qber == link.qber)
                .filter_map(|t| self.keys_of(&t.name).cloned())
                .collect();
            let script = end_lock(&self.table, &keys, &[set]);
            let what = format!(
                "end the lock of qber {}, its links locked each on its own",
                link.qber
            );
            self.run(&what, &script)?;
        }
        self.sources_may_be_locked.remove(&i);
        Ok(())
    }

    /// Locks every link of section `source` in one transaction; false
    /// when the table has no set for it (the caller locks link by link).
    pub(super) fn lock_source_set(&mut self, source: &str) -> Result<bool, FwError> {
        let Some(i) = self.sources.iter().position(|s| s == source) else {
            return Ok(false);
        };
        let set = dispatch::source_set(i);
        let change = [Change::Add(&set, &BOTH_FAMILIES, None)];
        crate::log::debug(format_args!("fw: netlink {change:?}"));
        self.seq = self.seq.wrapping_add(6);
        self.sources_may_be_locked.insert(i);
        netlink::transact(&self.table, self.seq, &change, "source lock")
            .map_err(FwError::refused)?;
        self.source_flip = Some((i, self.generation()));
        Ok(true)
    }
}
