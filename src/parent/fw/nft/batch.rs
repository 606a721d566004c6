//! Many links' chains loaded in one nft(8) run. nft reads the whole table
//! before it applies any script (0.06-0.1 s at 10,000 links, whatever the
//! script), so one run per link made a start or an activation at 10,000
//! links quadratic; one run for all of them takes about 2 s.
//!
//! What rides along with a link's own load is decided from the `locked_`
//! sets as the kernel holds them, read just before:
//! - a slow open (the link chain does not hold the text yet) also loads
//!   that text into the link chain of every link whose keys are all in the
//!   `locked_` sets (the chain is not taken: nothing changes in force, and
//!   that link's own open of the same text is then a flip over netlink).
//!   An open link's chain is in force: it changes only by its own apply;
//! - the lockdown chains that `stage` asked for are loaded by `settle`, in
//!   one run, for the links none of whose keys is in the `locked_` sets
//!   (the chain is not taken), nor for those of a section whose source
//!   lock holds, and none while the site lock holds (every lockdown chain
//!   is taken then).

use std::collections::{HashMap, HashSet};

use super::readback::Holds;
use super::{Nft, netlink};
use crate::ruleset::nft::dispatch::{self, Kind};
use crate::ruleset::nft::{open_chain_script, render_statements, stage_script};
use crate::tool::{FwError, TOOL_TIMEOUT, Tool};

/// The keys in the `locked_` sets, per kind, as the kernel stores them.
pub(super) type Locked = HashMap<Kind, HashSet<Vec<u8>>>;

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
    fn holds_in(&self, locked: &Locked, name: &str) -> Option<Holds> {
        let keys = self.keys_of(name)?;
        Some(Holds::of_keys(keys, |k, b| {
            locked.get(&k).is_some_and(|s| s.contains(b))
        }))
    }

    /// The open chains loaded along with `link`'s slow open of `ruleset`
    /// (see the module's doc): their script and their links' places in
    /// `targets`. Nothing when the sets cannot be read.
    pub(super) fn open_others(&mut self, link: &str, ruleset: &str) -> (String, Vec<usize>) {
        let Ok(locked) = self.locked_now() else {
            return (String::new(), Vec::new());
        };
        let mut script = String::new();
        let mut others = Vec::new();
        for (i, (target, known)) in self.targets.iter().zip(&self.known).enumerate() {
            let name = target.name.as_str();
            if name == link || known.opened.as_deref() == Some(ruleset) {
                continue;
            }
            let unused = self.holds_in(&locked, name) == Some(Holds::All);
            if let (true, Ok(stmts)) = (unused, render_statements(target, ruleset)) {
                script.push_str(&open_chain_script(&self.table, target, &stmts));
                others.push(i);
            }
        }
        (script, others)
    }

    /// Loads the lockdown chains `stage` deferred, in one run; the links
    /// whose preloading failed, with why. A link whose keys are (partly)
    /// in the `locked_` sets by now is left: its lockdown chain is in force,
    /// and only an apply changes that.
    pub(super) fn settle_stages(&mut self) -> Vec<(String, FwError)> {
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
        let pending = std::mem::take(&mut self.pending);
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
        let mut script = String::new();
        let mut loading = Vec::new();
        for (i, ruleset) in pending {
            let target = &targets[i];
            if self.known[i].staged.as_ref() == Some(&ruleset)
                || self.holds_in(&locked, &target.name) != Some(Holds::None)
            {
                continue;
            }
            match self.lock_statements(target, &ruleset) {
                Ok(stmts) => {
                    script.push_str(&stage_script(&self.table, target, &stmts));
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
            (k.staged, k.lock_loaded) = (None, true);
        }
        let what = format!("preload lockdown rules for {} links", loading.len());
        match self.run_many(&what, &script, loading.len()) {
            Ok(_) => {
                for (i, ruleset) in loading {
                    self.known[i].staged = Some(ruleset);
                }
            }
            // One link's text refused fails them all: each alone, so that
            // only the refused ones are said.
            Err(e) if loading.len() == 1 => {
                errors.extend(loading.into_iter().map(|(i, _)| (name(i), e.clone())))
            }
            Err(_) => {
                for (i, ruleset) in loading {
                    let target = &targets[i];
                    let one = self.lock_statements(target, &ruleset).and_then(|stmts| {
                        let what = format!("preload lockdown rules for link {}", target.name);
                        self.run(&what, &stage_script(&self.table, target, &stmts))
                    });
                    match one {
                        Ok(_) => self.known[i].staged = Some(ruleset),
                        Err(e) => errors.push((name(i), e)),
                    }
                }
            }
        }
        errors
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
        let timeout = TOOL_TIMEOUT + std::time::Duration::from_millis(3 * links as u64);
        tool.run(what, script, timeout).map(|o| o.stdout)
    }
}
