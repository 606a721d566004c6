//! pf backend (DESIGN §5), run by the privileged parent on OpenBSD through
//! pfctl(8). Each link owns anchor `<root>/<link>`; pf.conf holds `anchor
//! "<root>/*"` followed by `block quick` rules for every link's protected
//! traffic (see `pf-anchors/pf.conf.example`), so an empty or missing anchor
//! means locked and there is nothing to create at start-up.
//!
//! A load is one `pfctl -a <root>/<link> -D ... -f -`: pfctl wraps the anchor's
//! rules and tables in one DIOCXBEGIN/DIOCXCOMMIT transaction, and the link's
//! table `<qkd_peer>` is rendered into the same input, so rules and addresses
//! change together or not at all (on error the old anchor stays).
//!
//! A lockdown of every link (or of a QBER source's links) is one load too:
//! `pfctl -a <root> -f -` with each link as a brace anchor, its macros set
//! before it (`ruleset::pf::many_lockdown_input`), one DIOCXCOMMIT for all
//! (OpenBSD facts F22-F24); then the links' state kills, each distinct
//! argv once. Where that one load could differ from the links' own loads
//! it is refused, and the links lock one by one.
//!
//! pf passes packets that match an existing state without evaluating rules,
//! so a lockdown also kills the link's states (the pfctl argv come from
//! [`crate::ruleset::pf::kill_args`]; that module says what each one kills).
//!
//! A read-back judges an anchor by qkdpfd's labelled block rules, which
//! an anchor loaded by someone else with a `pass quick` ahead of those
//! rules would still hold. So the first listing of a link's anchor after
//! our own last load of it is kept (digested), and a later listing that
//! differs proves nothing until we load the anchor again. One first
//! listing per kind: the tick's wildcard listing expands a named anchor
//! called inside the link's anchor, the link's own listing does not.
//!
//! Every OpenBSD fact relied on here is listed, with the source revision
//! it was checked against, in `src/OPENBSD-FACTS.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::{Firewall, Observed, Readback};
use crate::lock::Enforcement;
use crate::ruleset::pf::{
    LOCK_LABEL, anchor_path, check_ruleset, kill_args, load_args, load_input, lockdown_input,
    many_load_args, many_lockdown_input, rule_labels,
};
use crate::ruleset::{Check, LinkCheck, LinkTarget, check_names};
use crate::tool::{FwError, TOOL_TIMEOUT, Tool};

/// The pf backend.
pub struct Pf {
    pfctl: PathBuf,
    anchor: String,
    /// Links whose last state kill failed: their states may still pass,
    /// so a read-back does not call them locked until a kill succeeds.
    kill_failed: BTreeSet<String>,
    /// The labels of each link's open rules as last loaded: a lockdown
    /// also kills the states those rules created (`pfctl -k label -k L`).
    open_labels: std::collections::HashMap<String, Vec<String>>,
    /// Per link and kind of listing (true: the tick's wildcard listing),
    /// the digest of the first listing of its anchor since our last
    /// successful load of it ([`listing_digest`]).
    first_read: std::collections::HashMap<(String, bool), u64>,
    /// The key of those digests, this process's own.
    key: std::hash::RandomState,
}

/// A digest of an anchor's listing: its lines trimmed, blank ones left
/// out (the wildcard listing indents), keyed.
fn listing_digest(key: &std::hash::RandomState, rules: &str) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = key.build_hasher();
    for line in rules.lines().map(str::trim).filter(|l| !l.is_empty()) {
        h.write(line.as_bytes());
        h.write_u8(b'\n');
    }
    h.finish()
}

impl Pf {
    pub fn new(pfctl: &Path, anchor: &str) -> Pf {
        Pf {
            pfctl: pfctl.to_path_buf(),
            anchor: anchor.to_string(),
            kill_failed: BTreeSet::new(),
            open_labels: std::collections::HashMap::new(),
            first_read: std::collections::HashMap::new(),
            key: std::hash::RandomState::new(),
        }
    }

    /// Our load of `link`'s anchor succeeded: its next listing is what we
    /// loaded. Only then: a load that failed left the anchor as it was
    /// (one pf transaction), and what was listed of it before still holds.
    fn loaded(&mut self, link: &str) {
        for wildcard in [false, true] {
            self.first_read.remove(&(link.to_string(), wildcard));
        }
    }

    /// Whether the anchor listing `rules` of `link` (from the tick's
    /// wildcard listing or not) is what the first listing of that kind
    /// since our last load of it showed; the first one is kept.
    fn as_loaded(&mut self, link: &str, wildcard: bool, rules: &str) -> bool {
        let now = listing_digest(&self.key, rules);
        let key = (link.to_string(), wildcard);
        *self.first_read.entry(key).or_insert(now) == now
    }

    /// Kills the states of `links` and remembers, per link, whether all of
    /// its kills worked. Each distinct pfctl argv runs once: a hub's links
    /// share their interface's kills and their open rules' labels. Every
    /// kill is tried; the first failure is reported (a partial kill is
    /// still better than none).
    fn end_states(&mut self, links: &[&LinkTarget]) -> Result<(), FwError> {
        let mut done: std::collections::HashMap<Vec<String>, bool> = Default::default();
        let mut first = None;
        for link in links {
            let what = format!("kill states of link {}", link.name);
            let labels = self
                .open_labels
                .get(&link.name)
                .map_or(&[][..], Vec::as_slice);
            let mut all = true;
            for args in kill_args(link, labels) {
                let worked = match done.get(&args) {
                    Some(&w) => w,
                    None => {
                        let r = self.run(&what, &args, "");
                        let w = r.is_ok();
                        if let Err(e) = r {
                            first.get_or_insert(e);
                        }
                        done.insert(args, w);
                        w
                    }
                };
                all &= worked;
            }
            if all {
                self.kill_failed.remove(&link.name);
            } else {
                self.kill_failed.insert(link.name.clone());
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// After one load of `links`: each link's answer, an error where its
    /// states were not all killed (they may pass).
    fn kills_of(&self, links: &[&LinkTarget]) -> Vec<Result<(), FwError>> {
        (links.iter())
            .map(|l| match self.kill_failed.contains(&l.name) {
                true => Err(FwError::refused(format!("kill states of link {}", l.name))),
                false => Ok(()),
            })
            .collect()
    }

    /// `lock_site`, `lock_source` and `lock_many`: every one of `links` locked by one
    /// anchor load (`many_lockdown_input`), then their states killed. A
    /// refusal or a failed load changed nothing (pfctl rolls back, F2): Err,
    /// and the caller locks link by link, whose ladder kills states too.
    fn lock_together(
        &mut self,
        links: &[&LinkTarget],
        lockdown: Option<&str>,
    ) -> Result<bool, FwError> {
        if links.is_empty() {
            return Ok(false);
        }
        for l in links {
            check_names(&self.anchor, l)?;
        }
        let ruleset = lockdown.unwrap_or("");
        let input = check_ruleset(ruleset)
            .and_then(|()| many_lockdown_input(&self.anchor, links, ruleset))
            .map_err(|e| FwError::refused(format!("one load for {} links: {e}", links.len())))?;
        let what = format!(
            "load the lockdown of {} links in one transaction",
            links.len()
        );
        self.run(&what, &many_load_args(&self.anchor), &input)?;
        for l in links {
            self.loaded(&l.name);
        }
        // Whatever the kills do, the load is in: a link whose kill failed
        // is not read back as locked (`kill_failed`), and its ladder runs.
        let _ = self.end_states(links);
        Ok(true)
    }

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    /// The anchor's rules as pfctl lists them; empty for an anchor that
    /// does not exist: the kernel answers EINVAL, pfctl prints "Anchor does
    /// not exist" and still exits 0 (it ignores the result of `-s`,
    /// pfctl.c 1.397), so stdout decides. An exit 1 with that message (an
    /// older or patched pfctl) means the same.
    fn anchor_rules(&self, link: &LinkTarget) -> Result<String, FwError> {
        let path = anchor_path(&self.anchor, link);
        let args = Self::args(&["-a", &path, "-s", "rules"]);
        match self.run(&format!("read back anchor {path}"), &args, "") {
            Ok(out) => Ok(out),
            Err(e)
                if e.stderr.contains("Invalid argument") || e.stderr.contains("does not exist") =>
            {
                Ok(String::new())
            }
            Err(e) => Err(e),
        }
    }

    fn tool(&self, args: &[String]) -> Tool {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Tool::new(&self.pfctl, &args)
    }

    fn run(&self, what: &str, args: &[String], stdin: &str) -> Result<String, FwError> {
        let tool = self.tool(args);
        crate::log::debug(format_args!("fw: {}", tool.line()));
        tool.run(what, stdin, TOOL_TIMEOUT).map(|o| o.stdout)
    }
}

impl LinkCheck for Pf {
    fn extension(&self) -> &'static str {
        "pf"
    }

    fn check(&self, link: &LinkTarget, state: Enforcement, ruleset: &str) -> Result<(), String> {
        Check::pf(&self.pfctl, &self.anchor).check(link, state, ruleset)
    }

    fn shared_check(&self) -> Option<Check> {
        Some(Check::pf(&self.pfctl, &self.anchor))
    }
}

impl Firewall for Pf {
    fn name(&self) -> &'static str {
        "pf"
    }

    fn init(&mut self, links: &[LinkTarget]) -> Result<(), FwError> {
        for l in links {
            check_names(&self.anchor, l)?;
        }
        // pf.conf holds the block rules; a disabled pf enforces nothing at all.
        let args = vec!["-s".to_string(), "info".to_string()];
        let out = self.run("read pf status", &args, "")?;
        if !out.lines().any(|l| l.starts_with("Status: Enabled")) {
            // pfctl exits 0 even when it could not read the status (it
            // ignores the result of `-s`): say which of the two it was.
            let what = match out.trim().is_empty() {
                true => "pf status could not be read (pfctl -s info printed nothing)",
                false => "pf is not enabled (pfctl -e, pf=YES in rc.conf.local)",
            };
            return Err(FwError {
                what: what.to_string(),
                command: self.tool(&args).line(),
                status: "exit status 0".to_string(),
                stderr: String::new(),
            });
        }
        Ok(())
    }

    fn apply(
        &mut self,
        link: &LinkTarget,
        state: Enforcement,
        ruleset: &str,
    ) -> Result<(), FwError> {
        check_names(&self.anchor, link)?;
        check_ruleset(ruleset).map_err(|e| {
            FwError::refused(format!("link {}: {state} ruleset refused: {e}", link.name))
        })?;
        let what = format!("load {state} rules for link {}", link.name);
        let input = match state {
            Enforcement::Open => load_input(link, ruleset),
            Enforcement::Lockdown => lockdown_input(link, ruleset),
        };
        let loaded = self.run(&what, &load_args(&self.anchor, link, false), &input);
        if loaded.is_ok() {
            self.loaded(&link.name);
        }
        if state == Enforcement::Open {
            if loaded.is_ok() {
                self.open_labels
                    .insert(link.name.clone(), rule_labels(ruleset));
            }
            return loaded.map(drop);
        }
        // Even after a failed load the kill runs: whatever the anchor holds,
        // old states must not keep passing.
        let killed = self.end_states(&[link]);
        loaded.and(killed)
    }

    fn clear(&mut self, link: &LinkTarget) -> Result<(), FwError> {
        check_names(&self.anchor, link)?;
        // A load, not a flush: it creates a missing anchor instead of
        // failing on it ("Anchor does not exist"), and leaves qkdpfd's
        // own block rules in it. The state kill runs whatever happened.
        let what = format!("replace anchor of link {} by its block rules", link.name);
        let loaded = self.run(
            &what,
            &load_args(&self.anchor, link, false),
            &lockdown_input(link, ""),
        );
        if loaded.is_ok() {
            self.loaded(&link.name);
        }
        let killed = self.end_states(&[link]);
        loaded.and(killed)
    }

    // qkdpfd's own block rules in every anchor by one load, as a site lock
    // without a bundle; a link whose states were not killed is not clear.
    // A failed load changed nothing: then link by link.
    fn clear_many(&mut self, links: &[&LinkTarget]) -> Vec<Result<(), FwError>> {
        match self.lock_together(links, None) {
            Ok(true) => self.kills_of(links),
            _ => links.iter().map(|l| self.clear(l)).collect(),
        }
    }

    // The bundle's lockdown in every anchor by one load (a new bundle's
    // re-application; the links of a shared interface, which a lockdown
    // holds with it: one pfctl run each kept the loop waiting); a link
    // whose states were not killed has failed. A failed load changed
    // nothing: then link by link.
    fn lock_many(&mut self, links: &[&LinkTarget], ruleset: &str) -> Vec<Result<(), FwError>> {
        let together = links.len() > 1 && self.lock_together(links, Some(ruleset)) == Ok(true);
        match together {
            true => self.kills_of(links),
            false => (links.iter())
                .map(|l| self.apply(l, Enforcement::Lockdown, ruleset))
                .collect(),
        }
    }

    fn site_lock_clears(&self) -> bool {
        true
    }

    fn lock_site(&mut self, links: &[LinkTarget], lockdown: Option<&str>) -> Result<bool, FwError> {
        self.lock_together(&links.iter().collect::<Vec<_>>(), lockdown)
    }

    fn lock_source(
        &mut self,
        source: &str,
        links: &[LinkTarget],
        lockdown: Option<&str>,
    ) -> Result<bool, FwError> {
        let of: Vec<&LinkTarget> = links.iter().filter(|l| *l.qber == *source).collect();
        self.lock_together(&of, lockdown)
    }

    fn observe(
        &mut self,
        links: &[LinkTarget],
        only: Option<&str>,
    ) -> Result<BTreeMap<String, Readback>, FwError> {
        for l in super::covered(links, only) {
            check_names(&self.anchor, l)?;
        }
        let info = self.run("read pf status", &Self::args(&["-s", "info"]), "")?;
        let main = self.run("read the main ruleset", &Self::args(&["-s", "rules"]), "")?;
        let enabled = info.lines().any(|l| l.starts_with("Status: Enabled"));
        // The tick reads every link: one listing of all the root's child
        // anchors instead of one pfctl per link, so that a tick costs three
        // processes whatever the number of links. A link missing from it
        // (no anchor, or a pfctl that does not recurse) is read on its own.
        let all = match only {
            Some(_) => BTreeMap::new(),
            None => {
                let root = format!("{}/*", self.anchor);
                let args = Self::args(&["-a", &root, "-s", "rules"]);
                self.run("read back every link's anchor", &args, "")
                    .map(|o| split_anchors(&o))
                    .unwrap_or_default()
            }
        };
        let mut out = BTreeMap::new();
        for link in super::covered(links, only) {
            let state = if !enabled {
                Observed::damaged("pf is disabled")
            } else if let Err(why) = main_guards(&main, &self.anchor, link) {
                Observed::damaged(why)
            } else {
                let (rules, wildcard) = match all.get(&link.name) {
                    Some(r) => (r.clone(), true),
                    None => (self.anchor_rules(link)?, false),
                };
                match self.as_loaded(&link.name, wildcard, &rules) {
                    true => judge_anchor(&rules, self.kill_failed.contains(&link.name)),
                    false => Observed::unknown(format!(
                        "anchor {} changed since qkdpfd loaded it",
                        anchor_path(&self.anchor, link)
                    )),
                }
            };
            out.insert(
                link.name.clone(),
                Readback {
                    state,
                    guarded: false,
                },
            );
        }
        Ok(out)
    }
}

/// `pfctl -a '<root>/*' -s rules` split per child anchor. pfctl (pfctl.c
/// 1.397 `pfctl_show_rules`, wildcard with recursion) prints each child
/// ruleset as `anchor "NAME" all {`, its rules indented, then `}`; an
/// anchor inside a rule (`anchor "_1" { ... }`) nests the same way and
/// stays part of its link's text, as it is in the link's own listing.
pub fn split_anchors(listing: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    let mut depth = 0usize;
    for raw in listing.lines() {
        let line = raw.trim();
        match &mut current {
            None => {
                let name = line
                    .strip_prefix("anchor \"")
                    .and_then(|r| r.strip_suffix("\" all {"));
                if let Some(name) = name.filter(|n| !n.contains('"')) {
                    current = Some((name.to_string(), String::new()));
                    depth = 1;
                }
            }
            Some((name, text)) => {
                if line == "}" {
                    depth -= 1;
                    if depth == 0 {
                        out.insert(std::mem::take(name), std::mem::take(text));
                        current = None;
                        continue;
                    }
                } else if line.ends_with('{') {
                    depth += 1;
                }
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    // An unclosed block (a listing cut short) proves nothing: left out,
    // so that link is read on its own.
    out
}

/// What a link's anchor listing proves: qkdpfd's labelled block rules mean
/// locked (if its states were killed), other rules open, none nothing.
pub fn judge_anchor(rules: &str, kill_failed: bool) -> Observed {
    let lines: Vec<&str> = rules
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let ours = lines
        .iter()
        .filter(|l| l.starts_with("block") && l.contains(&format!("label \"{LOCK_LABEL}\"")))
        .count();
    match (lines.is_empty(), ours) {
        (true, _) => Observed::unknown("anchor empty (pf.conf's block rules hold)"),
        (false, 3) if kill_failed => Observed::unknown("state kill failed"),
        (false, 3) => Observed::Locked,
        (false, 0) => Observed::Open,
        (false, n) => Observed::unknown(format!("{n} of 3 lockdown rules")),
    }
}

/// pf.conf as loaded must evaluate our anchors and then block the link's
/// traffic: `anchor "<root>/*"`, and after it a `block ... quick on <wg_if>`.
pub fn main_guards(main: &str, root: &str, link: &LinkTarget) -> Result<(), String> {
    let anchor = format!("anchor \"{root}/*\"");
    let mut lines = main.lines().map(str::trim);
    if !lines.any(|l| l.starts_with(&anchor)) {
        return Err(format!("the main ruleset lacks {anchor}"));
    }
    let on = format!("quick on {} ", link.wg_if);
    if !lines.any(|l| l.starts_with("block") && (l.contains(&on) || l.ends_with(on.trim_end()))) {
        return Err(format!(
            "no block quick rule on {} after {anchor} in the main ruleset",
            link.wg_if
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_listing_is_split_per_link_anchor() {
        let listing = "anchor \"dr\" all {\n  pass quick on wg0 all\n  anchor \"_1\" all {\n    pass in all\n  }\n}\n\
                       anchor \"lab\" all {\n  block drop quick on wg1 all label \"qkdpfd-lockdown\"\n}\n\
                       anchor \"cut\" all {\n  pass all\n";
        let m = split_anchors(listing);
        assert_eq!(
            m["dr"],
            "pass quick on wg0 all\nanchor \"_1\" all {\npass in all\n}\n"
        );
        assert_eq!(
            m["lab"],
            "block drop quick on wg1 all label \"qkdpfd-lockdown\"\n"
        );
        assert!(!m.contains_key("cut"), "an unclosed block proves nothing");
        assert!(split_anchors("").is_empty());
    }
}
