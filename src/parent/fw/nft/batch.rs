//! Many links' chains loaded in one nft(8) run. nft reads the whole table
//! before it applies any script (0.06-0.1 s at 10,000 links, whatever the
//! script), so one run per link made a start or an activation at 10,000
//! links quadratic; one run for all of them takes about 2 s.
//!
//! What rides along with a link's own load is decided from the `locked_`
//! sets as the kernel holds them, read just before:
//! - a slow open (the link chain does not hold the text yet) also loads
//!   that text into the link chains of up to [`LINKS_A_RUN`] links whose
//!   keys are all in the `locked_` sets (the chain is not taken: nothing
//!   changes in force, and that link's own open of the same text is then a
//!   flip over netlink; a link beyond them takes the next ones along).
//!   An open link's chain is in force: it changes only by its own apply;
//! - the lockdown chains that `stage` asked for are loaded by `settle`,
//!   [`LINKS_A_RUN`] links a run, for the links none of whose keys is in the `locked_` sets
//!   (the chain is not taken), nor for those of a section whose source
//!   lock holds, and none while the site lock holds (every lockdown chain
//!   is taken then).
//!
//! In a run, only the first link of each group whose statements are the
//! same text has its chain compiled by nft: the others' are copies of it
//! over netlink, after the run, and a group whose rules were compiled in
//! the last 30 s is all copies, with no run ([`super::copy`]).
//!
//! And many links opened in one netlink transaction: every commit walks
//! every chain of the network namespace in the kernel (about 0.3 ms a
//! commit at 10,000 links), so 10,000 opens one transaction each kept the
//! parent's loop busy for seconds after the first rounds.

use std::collections::{HashMap, HashSet};

use super::copy::Rules;
use super::netlink::Change;
use super::readback::Holds;
use super::reverify::Loaded;
use super::{Flipped, Nft, netlink};
use crate::lock::Enforcement;
use crate::parent::fw::Firewall;
use crate::ruleset::LinkTarget;
use crate::ruleset::nft::dispatch::{self, Kind, LinkKeys, locked_keys};
use crate::ruleset::nft::{
    clear_script, lock_script, open_chain_script, render_statements, stage_script,
};
use crate::tool::{FwError, Tool};

/// Links whose chains one nft run loads at most, beside a link's own: a
/// QBER lockdown waits behind one such run. At 10,000 links on a quiet
/// machine a run of 9,999 links' open chains took 0.6 s, one of 2,048
/// 0.17 s (about 40 ms a run, whatever its size, and 55 µs a link).
pub(super) const LINKS_A_RUN: usize = 2048;

/// The keys in the `locked_` sets, per kind, as the kernel stores them.
pub(super) type Locked = HashMap<Kind, HashSet<Vec<u8>>>;

/// One link's chain to load: its place in `targets`, the statements it is
/// to hold, the script that loads them and what that script does to the
/// link's keys (a lockdown adds them to the `locked_` sets, an open takes
/// them out, a preload leaves them).
pub(super) struct Load {
    pub place: usize,
    pub stmts: Vec<String>,
    pub script: String,
    pub keys: Option<Enforcement>,
}

/// How [`Nft::load_chains`] went: our transactions that committed, and the
/// links not loaded with why (the first run's error fails them all).
pub(super) struct Loads {
    pub commits: u32,
    pub failed: HashSet<usize>,
    pub error: Option<FwError>,
}

/// Links whose keys an open looks up one by one at most; more read the
/// `locked_` sets whole.
const LOOKED_UP: usize = 64;

/// Links opened in one transaction at most: each message's element list
/// stays well under a netlink attribute's 64 KiB.
const OPEN_CHUNK: usize = 256;

impl Nft {
    /// The `locked_` sets, read over netlink, with the keys of every
    /// section whose source lock may hold (their lockdown chains are in
    /// force as well).
    pub(super) fn locked_now(&mut self) -> Result<Locked, String> {
        let mut sets = self.key_sets(Kind::locked_set)?;
        let sections: Vec<usize> = self.sources_may_be_locked.iter().copied().collect();
        for i in sections {
            if self.families(&dispatch::source_set(i))? == [false, false] {
                continue;
            }
            for (kind, keys) in self.key_sets(|k| k.source_keys_set(i))? {
                sets.entry(kind).or_default().extend(keys);
            }
        }
        Ok(sets)
    }

    /// The keys of one set per kind (`name(kind)`), read over netlink.
    pub(super) fn key_sets(&mut self, name: impl Fn(Kind) -> String) -> Result<Locked, String> {
        let mut sets = HashMap::new();
        for kind in Kind::ALL {
            self.seq = self.seq.wrapping_add(4);
            let set = name(kind);
            let have = netlink::elements(&self.table, &set, self.seq)
                .map_err(|e| format!("set {set}: {e}"))?;
            sets.insert(kind, have.into_iter().collect());
        }
        Ok(sets)
    }

    /// Which of `name`'s keys `locked` holds; None for a link not in the
    /// table's maps.
    pub(super) fn holds_in(&self, locked: &Locked, name: &str) -> Option<Holds> {
        let keys = self.keys_of(name)?;
        Some(Holds::of_keys(keys, |k, b| {
            locked.get(&k).is_some_and(|s| s.contains(b))
        }))
    }

    /// The open chains loaded along with `link`'s slow open of `ruleset`
    /// (see the module's doc), [`LINKS_A_RUN`] at most, the links after it
    /// in name order first. Nothing when the sets cannot be read.
    pub(super) fn open_others(&mut self, link: &str, ruleset: &str) -> Vec<Load> {
        let Ok(locked) = self.locked_now() else {
            return Vec::new();
        };
        let mut others = Vec::new();
        // From `link` on, round to it: the links queued with it (in name
        // order) come along, not a first 2,048 that one of them would each
        // load again in its own run.
        let n = self.targets.len();
        let from = self.index(link).unwrap_or(0);
        for i in (from..n).chain(0..from) {
            if others.len() == LINKS_A_RUN {
                break;
            }
            let (target, known) = (&self.targets[i], &self.known[i]);
            let name = target.name.as_str();
            if name == link || known.opened.as_deref() == Some(ruleset) {
                continue;
            }
            let unused = self.holds_in(&locked, name) == Some(Holds::All);
            if let (true, Ok(stmts)) = (unused, render_statements(target, ruleset)) {
                let script = open_chain_script(&self.table, target, &stmts);
                others.push(Load {
                    place: i,
                    stmts,
                    script,
                    keys: None,
                });
            }
        }
        others
    }

    /// Loads the lockdown chains `stage` deferred, in one load of at most
    /// [`LINKS_A_RUN`] links (at 10,000 links all in one nft run
    /// took ~1.4 s, which a QBER lockdown arriving then waited behind); the links
    /// whose preloading failed, with why. A link whose keys are (partly)
    /// in the `locked_` sets by now is left: its lockdown chain is in force,
    /// and only an apply or a reload of locks changes that (it is marked
    /// for the latter).
    pub(super) fn settle_stages(&mut self) -> Vec<(String, FwError)> {
        self.settling = false;
        if self.pending.is_empty() {
            return Vec::new();
        }
        // Under a site lock every lockdown chain is in force: they wait
        // for the next settle after it ends (the next open ends it).
        let locked = match self.site_locked() {
            Ok(true) => return Vec::new(),
            Ok(false) => self.locked_now(),
            Err(e) => Err(e),
        };
        // One run's worth: the rest in the loop's next turns, each after
        // whatever the engine reported meanwhile.
        let rest = match self.pending.keys().nth(LINKS_A_RUN) {
            Some(&from) => self.pending.split_off(&from),
            None => Default::default(),
        };
        let pending = std::mem::replace(&mut self.pending, rest);
        self.settling = !self.pending.is_empty();
        let targets = self.targets.clone();
        let name = |i: usize| targets[i].name.clone();
        let locked = match locked {
            Ok(l) => l,
            Err(e) => {
                let e = FwError::refused(format!("preload lockdown rules: {e}"));
                return (pending.into_keys())
                    .map(|i| (name(i), e.clone()))
                    .collect();
            }
        };
        let mut errors = Vec::new();
        let mut loads = Vec::new();
        let mut loading = Vec::new();
        for (i, ruleset) in pending {
            let target = &targets[i];
            if self.known[i].staged.as_ref() == Some(&ruleset) {
                continue;
            }
            // Its lockdown chain is in force (a site or source lock ended
            // with its keys in the `locked_` sets): not loaded here, but
            // its text is older than the bundle's, which `lock_inherited`
            // says, so that the tick loads it over, read back.
            if self.holds_in(&locked, &target.name) != Some(Holds::None) {
                self.known[i].lock_stale = true;
                continue;
            }
            match self.lock_statements(target, &ruleset) {
                Ok(stmts) => {
                    let script = stage_script(&self.table, target, &stmts);
                    loads.push(Load {
                        place: i,
                        stmts,
                        script,
                        keys: None,
                    });
                    loading.push((i, ruleset));
                }
                Err(e) => errors.push((name(i), e)),
            }
        }
        if loading.is_empty() {
            return errors;
        }
        for (i, _) in &loading {
            let k = &mut self.known[*i];
            k.staged = None;
            k.lock_writing();
        }
        let what = format!("preload lockdown rules for {} links", loading.len());
        let done = self.load_chains(&what, Loaded::Lock, loads);
        let mut loaded: Vec<(usize, Loaded)> = Vec::new();
        let mut failed = Vec::new();
        for (i, ruleset) in loading {
            match done.failed.contains(&i) {
                false => {
                    self.known[i].staged = Some(ruleset);
                    loaded.push((i, Loaded::Lock));
                }
                true => failed.push((i, ruleset)),
            }
        }
        if done.commits > 0 && done.failed.is_empty() {
            self.reverify(&loaded, done.commits);
        }
        match (failed.len(), done.error) {
            (0, _) | (_, None) => {}
            // One link's text refused fails them all: each alone, so that
            // only the refused ones are said.
            (1, Some(e)) => errors.extend(failed.into_iter().map(|(i, _)| (name(i), e.clone()))),
            (_, Some(_)) => {
                for (i, ruleset) in failed {
                    let target = &targets[i];
                    let floor = self.floor();
                    let one = self.lock_statements(target, &ruleset).and_then(|stmts| {
                        let what = format!("preload lockdown rules for link {}", target.name);
                        self.run(&what, &stage_script(&self.table, target, &stmts))
                    });
                    match one {
                        Ok(_) => {
                            self.wrote(i, Loaded::Lock, floor);
                            self.known[i].staged = Some(ruleset);
                        }
                        Err(e) => errors.push((name(i), e)),
                    }
                }
            }
        }
        errors
    }

    /// [`Firewall::open_many`]: a link whose chain does not hold `ruleset`
    /// yet is opened by `apply` (whose load takes along the chains of the
    /// other locked links); a link open already is left as it is; every
    /// other link's keys leave the `locked_` sets in one transaction per
    /// [`OPEN_CHUNK`] links. A transaction
    /// that fails opens nothing: its links are then applied one by one,
    /// each opening or failing alone.
    pub(super) fn open_links(
        &mut self,
        links: &[&LinkTarget],
        ruleset: &str,
    ) -> Vec<Result<(), FwError>> {
        let mut out: Vec<Option<Result<(), FwError>>> = links.iter().map(|_| None).collect();
        for (l, r) in links.iter().zip(out.iter_mut()) {
            let loaded = self.known_of(&l.name).and_then(|k| k.opened.as_deref());
            if loaded != Some(ruleset) {
                *r = Some(self.apply(l, Enforcement::Open, ruleset));
            }
        }
        let mut quick: Vec<usize> = (0..links.len()).filter(|i| out[*i].is_none()).collect();
        // Open already (a re-application reaching links opened since): no
        // key in the `locked_` sets, no site or section lock. Nothing to
        // change, and a transaction with a delete waits for the kernel
        // (~10 ms at 10,000 links). A loop turn's few links are looked up
        // key by key: reading the sets whole for each turn of 64 was 40 % of
        // the hub parent's samples in its first rounds at 10,000 links. More
        // links, or a section lock of ours that may hold (the lookups would
        // not count one holding a single family), read the sets once. On
        // any error a link takes the transaction. The caller reads each
        // link back.
        let looked_up = quick.len() <= LOOKED_UP && self.sources_may_be_locked.is_empty();
        if looked_up {
            quick.retain(|i| {
                let open = self.locked_holds(links[*i]) == Ok(Holds::None);
                if open {
                    out[*i] = Some(Ok(()));
                }
                !open
            });
        }
        let locked = match !looked_up && !quick.is_empty() {
            true if self.site_locked() == Ok(false) => self.locked_now().ok(),
            _ => None,
        };
        if let Some(locked) = locked {
            quick.retain(|i| {
                let open = self.holds_in(&locked, &links[*i].name) == Some(Holds::None);
                if open {
                    out[*i] = Some(Ok(()));
                }
                !open
            });
        }
        for chunk in quick.chunks(OPEN_CHUNK) {
            let batch: Vec<&LinkTarget> = chunk.iter().map(|i| links[*i]).collect();
            let r = self.flip_open(&batch);
            for i in chunk {
                out[*i] = Some(match r {
                    Ok(()) => Ok(()),
                    Err(_) => self.apply(links[*i], Enforcement::Open, ruleset),
                });
            }
        }
        (out.into_iter())
            .map(|r| r.unwrap_or_else(|| Err(FwError::refused("not opened"))))
            .collect()
    }

    /// [`Firewall::lock_many`]: the lockdown chains of the links that do not
    /// hold `ruleset` yet loaded, and their keys added to the `locked_`
    /// sets, in one load ([`Nft::load_chains`]: an nft run and copies); a
    /// link whose chain holds it already is a flip of its own (`apply`). A
    /// link the load did not lock (a run or copy that failed changes
    /// nothing for its links) is then applied alone, locking or failing;
    /// without `each_alone`, it is that load's error.
    pub(super) fn lock_links(
        &mut self,
        links: &[&LinkTarget],
        ruleset: &str,
        each_alone: bool,
    ) -> Vec<Result<(), FwError>> {
        let mut out: Vec<Option<Result<(), FwError>>> = links.iter().map(|_| None).collect();
        let mut loads = Vec::new();
        let mut loading = Vec::new();
        let mut flips = Vec::new();
        for (n, l) in links.iter().enumerate() {
            let staged = self.known_of(&l.name).and_then(|k| k.staged.as_deref());
            let load = (staged != Some(ruleset))
                .then(|| super::check_names(&self.table, l).ok())
                .flatten()
                .and_then(|()| self.lock_statements(l, ruleset).ok())
                .zip(self.index(&l.name));
            match load {
                Some((stmts, i)) => {
                    let keys = &self.known[i].keys;
                    let script = lock_script(&self.table, l, keys, &stmts);
                    loads.push(Load {
                        place: i,
                        stmts,
                        script,
                        keys: Some(Enforcement::Lockdown),
                    });
                    loading.push((n, i));
                }
                // Staged: a flip, with the others staged (below).
                None if staged == Some(ruleset) => flips.push(n),
                // Refused: `apply` says why.
                None => out[n] = Some(self.apply(l, Enforcement::Lockdown, ruleset)),
            }
        }
        // Links locked one transaction each: every commit walks every chain
        // of the namespace, so the links of a 10,000-link interface that a
        // lockdown holds with it took seconds one by one.
        for chunk in flips.chunks(OPEN_CHUNK) {
            let batch: Vec<&LinkTarget> = chunk.iter().map(|n| links[*n]).collect();
            let r = self.flip_lock(&batch);
            for n in chunk {
                out[*n] = Some(match r {
                    Ok(()) => Ok(()),
                    Err(_) => self.apply(links[*n], Enforcement::Lockdown, ruleset),
                });
            }
        }
        if !loading.is_empty() {
            // As `apply`: only a success proves what the chains hold.
            let mut opened = Vec::with_capacity(loading.len());
            for &(_, i) in &loading {
                self.pending.remove(&i);
                let k = &mut self.known[i];
                k.staged = None;
                k.lock_writing();
                opened.push(k.opened.take());
            }
            let what = format!("load lockdown rules for {} links", loading.len());
            let done = self.load_chains(&what, Loaded::Lock, loads);
            let text = self.texts.of(ruleset);
            let mut loaded: Vec<(usize, Loaded)> = Vec::new();
            for (&(n, i), was) in loading.iter().zip(opened) {
                out[n] = Some(match done.failed.contains(&i) {
                    false => {
                        let k = &mut self.known[i];
                        (k.staged, k.opened) = (Some(text.clone()), was);
                        loaded.push((i, Loaded::Lock));
                        Ok(())
                    }
                    true if each_alone => self.apply(links[n], Enforcement::Lockdown, ruleset),
                    true => Err((done.error.clone())
                        .unwrap_or_else(|| FwError::refused("lockdown rules not loaded"))),
                });
            }
            if done.commits > 0 && done.failed.is_empty() {
                self.reverify(&loaded, done.commits);
            }
        }
        (out.into_iter())
            .map(|r| r.unwrap_or_else(|| Err(FwError::refused("not locked"))))
            .collect()
    }

    /// [`Firewall::clear_many`]: [`LINKS_A_RUN`] links' drops a run. A run
    /// that fails changes nothing: its links are then cleared one by one,
    /// each succeeding or failing alone (without `each_alone`, each gets
    /// the run's error).
    pub(super) fn clear_links(
        &mut self,
        links: &[&LinkTarget],
        each_alone: bool,
    ) -> Vec<Result<(), FwError>> {
        let mut out = Vec::with_capacity(links.len());
        for run in links.chunks(LINKS_A_RUN) {
            let named: Vec<Result<(), FwError>> = (run.iter())
                .map(|l| super::check_names(&self.table, l))
                .collect();
            let mut script = String::new();
            for (l, _) in run.iter().zip(&named).filter(|(_, n)| n.is_ok()) {
                self.forget_loaded(&l.name);
                script.push_str(&clear_script(&self.table, l));
            }
            let what = format!("replace the chains of {} links by drops", run.len());
            let floor = self.floor();
            let ran = match script.is_empty() {
                true => Ok(()),
                false => self.run_many(&what, &script, run.len()).map(drop),
            };
            for (l, named) in run.iter().zip(named) {
                out.push(match (named, &ran) {
                    (Ok(()), Ok(())) => {
                        self.wrote_both(&l.name, floor);
                        Ok(())
                    }
                    (Ok(()), Err(_)) if each_alone => self.clear(l),
                    (Ok(()), Err(e)) => Err(e.clone()),
                    (Err(e), _) => Err(e),
                });
            }
        }
        out
    }

    /// One netlink transaction adding every key of `links` to the `locked_`
    /// sets: their lockdown chains hold the text already (as `apply`'s
    /// flip of one staged link; the caller reads each link back).
    fn flip_lock(&mut self, links: &[&LinkTarget]) -> Result<(), FwError> {
        let mut places = Vec::with_capacity(links.len());
        let mut owned = Vec::with_capacity(links.len());
        for l in links {
            super::check_names(&self.table, l)?;
            owned.push(self.link_keys(l).map_err(FwError::refused)?);
            places.extend(self.index(&l.name));
        }
        let what = format!("lock {} links in one transaction", links.len());
        self.commit_locked(&owned, places, true, &what)
    }

    /// One netlink transaction taking every key of `links` out of the
    /// `locked_` sets, after ending a site lock and their sections' locks
    /// as an open does. Their chains hold the open text already.
    fn flip_open(&mut self, links: &[&LinkTarget]) -> Result<(), FwError> {
        self.end_site_lock()?;
        let mut places = Vec::with_capacity(links.len());
        let mut owned = Vec::with_capacity(links.len());
        for l in links {
            super::check_names(&self.table, l)?;
            self.end_source_lock(l)?;
            owned.push(self.link_keys(l).map_err(FwError::refused)?);
            places.extend(self.index(&l.name));
        }
        let what = format!("open {} links in one transaction", links.len());
        self.commit_locked(&owned, places, false, &what)
    }

    /// One netlink transaction on the `locked_` sets for the links at
    /// `places`, whose keys are `owned`: every key added (a lockdown) or,
    /// for an open, added and then deleted (a delete of a key that is not
    /// there would fail the transaction). Element lists of at most
    /// KEYS_A_MESSAGE keys: 256 links of eight IPv6 addresses each passed
    /// the 64 KiB a netlink attribute's length can say, and the kernel
    /// refused the wrapped batch.
    pub(super) fn commit_locked(
        &mut self,
        owned: &[LinkKeys],
        places: Vec<usize>,
        lock: bool,
        what: &str,
    ) -> Result<(), FwError> {
        let keys = locked_keys(owned.iter());
        let sets: Vec<(&str, Vec<&[u8]>)> = (keys.iter())
            .map(|(set, b)| (set.as_str(), b.iter().map(Vec::as_slice).collect()))
            .collect();
        let chunks = |b: &'_ Vec<&'_ [u8]>| b.len().div_ceil(super::copy::KEYS_A_MESSAGE);
        let n: usize = sets.iter().map(|(_, b)| chunks(b)).sum();
        let mut changes: Vec<Change<'_>> = Vec::with_capacity(if lock { n } else { 2 * n });
        for (set, b) in &sets {
            changes.extend(
                b.chunks(super::copy::KEYS_A_MESSAGE)
                    .map(|c| Change::Add(set, c, None)),
            );
        }
        if !lock {
            for (set, b) in &sets {
                changes.extend(
                    b.chunks(super::copy::KEYS_A_MESSAGE)
                        .map(|c| Change::Delete(set, c)),
                );
            }
        }
        crate::log::debug(format_args!("fw: netlink: {what}"));
        // Whatever happens, only a success proves what the sets hold.
        for i in &places {
            self.pending.remove(i);
        }
        self.seq = self.seq.wrapping_add(4 + 2 * changes.len() as u32);
        netlink::transact(&self.table, self.seq, &changes, what).map_err(FwError::refused)?;
        self.last_flip = Some(Flipped::new(places, self.generation()));
        Ok(())
    }

    /// Loads chain `which` of each of `loads`. Links whose statements are
    /// equal form a group: a group whose rules were compiled lately is
    /// copied ([`super::copy`]), with no nft run; of every other group, the
    /// first link's script goes to one nft run and the others' chains are
    /// then copies of its chain (a group whose rules were found lately not
    /// to copy goes to that run whole). A copy also does to its link's keys
    /// what the link's script would. Links that could not be copied go to
    /// a second run of their own scripts.
    pub(super) fn load_chains(&mut self, what: &str, which: Loaded, loads: Vec<Load>) -> Loads {
        let places: Vec<usize> = loads.iter().map(|l| l.place).collect();
        let floor = self.floor();
        let done = self.load_chains_of(what, which, loads);
        for p in places.into_iter().filter(|p| !done.failed.contains(p)) {
            self.wrote(p, which, floor);
        }
        done
    }

    fn load_chains_of(&mut self, what: &str, which: Loaded, loads: Vec<Load>) -> Loads {
        struct Group {
            first: usize,
            others: Vec<usize>,
            // Some(None): found lately not to copy, all to nft.
            kept: Option<Option<Rules>>,
        }
        let mut groups: Vec<Group> = Vec::new();
        let mut group_of: HashMap<&[String], usize> = HashMap::new();
        for (n, l) in loads.iter().enumerate() {
            match group_of.get(l.stmts.as_slice()) {
                Some(&g) => groups[g].others.push(n),
                None => {
                    group_of.insert(&l.stmts, groups.len());
                    let kept = self.kept(which, &l.stmts);
                    groups.push(Group {
                        first: n,
                        others: Vec::new(),
                        kept,
                    });
                }
            }
        }
        // Compiled by nft: the first link of each group without kept rules,
        // every link of a group found not to copy.
        let mut script = String::new();
        let mut compiled = 0;
        for g in &groups {
            let all = match g.kept {
                Some(Some(_)) => continue,
                Some(None) => true,
                None => false,
            };
            let others = g.others.iter().filter(|_| all);
            for &n in std::iter::once(&g.first).chain(others) {
                script.push_str(&loads[n].script);
                compiled += 1;
            }
        }
        let mut commits = 0;
        if !script.is_empty() {
            if let Err(e) = self.run_many(what, &script, compiled) {
                return Loads {
                    commits: 0,
                    failed: loads.iter().map(|l| l.place).collect(),
                    error: Some(e),
                };
            }
            commits = 1;
        }
        let mut left: Vec<usize> = Vec::new();
        for g in groups {
            let (rules, to) = match g.kept {
                Some(Some(rules)) => {
                    let mut all = vec![g.first];
                    all.extend(g.others);
                    (Ok(rules), all)
                }
                Some(None) => continue,
                None if g.others.is_empty() => continue,
                None => {
                    let first = &loads[g.first];
                    (
                        self.compiled_from(which, first.place, &first.stmts),
                        g.others,
                    )
                }
            };
            let rules = match rules {
                Ok(r) => r,
                Err(e) => {
                    crate::log::debug(format_args!("fw: {what}: copies left to nft: {e}"));
                    left.extend(to);
                    continue;
                }
            };
            let targets: Vec<(usize, Option<Enforcement>)> = to
                .iter()
                .map(|&n| (loads[n].place, loads[n].keys))
                .collect();
            let copied = self.copy_rules(which, &rules, &targets);
            commits += copied.commits;
            if let Some(e) = copied.error {
                crate::log::debug(format_args!("fw: {what}: copies left to nft: {e}"));
            }
            left.extend(&to[copied.done..]);
        }
        if left.is_empty() {
            return Loads {
                commits,
                failed: HashSet::new(),
                error: None,
            };
        }
        let rest: String = left.iter().map(|&n| loads[n].script.as_str()).collect();
        let more = format!("{what}: {} links not copied", left.len());
        match self.run_many(&more, &rest, left.len()) {
            Ok(_) => Loads {
                commits: commits + 1,
                failed: HashSet::new(),
                error: None,
            },
            Err(e) => Loads {
                commits,
                failed: left.iter().map(|&n| loads[n].place).collect(),
                error: Some(e),
            },
        }
    }

    /// `nft -f -` of a script for `links` links: its timeout grows with
    /// them (about 2 s for 10,000 here).
    pub(super) fn run_many(
        &self,
        what: &str,
        script: &str,
        links: usize,
    ) -> Result<String, FwError> {
        let tool = Tool::new(&self.nft, &["-f", "-"]);
        crate::log::debug(format_args!(
            "fw: {} ({what}, {} bytes)",
            tool.line(),
            script.len()
        ));
        let out = tool.run(what, script, crate::tool::timeout_for(links))?;
        if !script.trim().is_empty() {
            netlink::committed();
        }
        Ok(out.stdout)
    }
}
