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

use std::collections::{BTreeMap, HashMap, HashSet};

use super::netlink::{self, BOTH_FAMILIES, Change, Lookup};
use super::{Nft, Readback, readback};
use crate::ruleset::LinkTarget;
use crate::ruleset::nft::dispatch::{self, Kind, LinkKeys};
use crate::ruleset::nft::end_lock;
use crate::tool::FwError;

/// A source lock an earlier run left: its set, and the keys it covered.
pub(super) struct Held {
    set: String,
    keys: HashMap<Kind, HashSet<Vec<u8>>>,
}

impl Nft {
    /// The index of `link`'s section among the table's (`src<i>`).
    pub(super) fn source_of(&self, link: &LinkTarget) -> Option<usize> {
        self.sources.iter().position(|s| *s == link.qber)
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
            let mut keys = HashMap::new();
            for kind in Kind::ALL {
                let name = kind.source_keys_set(i);
                self.seq = self.seq.wrapping_add(4);
                let have = netlink::elements(&self.table, &name, self.seq)
                    .map_err(|e| format!("set {name}: {e}"))?;
                keys.insert(kind, have.into_iter().collect());
            }
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
                let keys = self.keys.values().filter(|k| covered(k)).cloned();
                (keys.collect(), held.iter().map(|h| h.set.clone()).collect())
            }
            None => (
                self.keys.values().cloned().collect(),
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
            let keys: Vec<LinkKeys> = (self.targets.values())
                .filter(|t| t.qber == link.qber)
                .filter_map(|t| self.keys.get(&t.name).cloned())
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

    /// The read-back of every link right after our source lock, without a
    /// listing, as the site lock's: the lock was the only transaction
    /// since the verified listing, so every chain and every other link is
    /// as verified; `src<i>` is looked up. None when that cannot be shown.
    pub(super) fn observe_source(
        &mut self,
        links: &[LinkTarget],
        i: usize,
        after: Option<u32>,
    ) -> Option<BTreeMap<String, Readback>> {
        self.only_ours_since_verified(after)?;
        let known = |l: &LinkTarget| {
            self.shapes.contains_key(&l.name) && self.verified.contains_key(&l.name)
        };
        if self.guard_may_exist || !links.iter().all(known) {
            return None;
        }
        let set = dispatch::source_set(i);
        if self.families(&set).ok()? != [true, true] || self.generation() != after {
            return None;
        }
        let seen: BTreeMap<String, Readback> = (links.iter())
            .map(|l| {
                if self.source_of(l) != Some(i) {
                    return (l.name.clone(), self.verified[&l.name].clone());
                }
                // Each of its keys is in `src<i>_` (the verified listing
                // showed it), so all of them take the lockdown chain.
                let holds = match self.keys.get(&l.name) {
                    Some(k) => readback::Holds::of_keys(k, |_, _| true),
                    None => readback::Holds::Part("not in the table's maps".into()),
                };
                let state = readback::judge_shape(l, self.shapes[&l.name], holds);
                let rb = Readback {
                    state,
                    guarded: false,
                };
                (l.name.clone(), rb)
            })
            .collect();
        self.verified_gen = after;
        self.verified = seen.clone();
        Some(seen)
    }
}
