//! Firewall backends (DESIGN §5). Run by the privileged parent only: these are
//! the one place qkdpfd touches pf anchors or nftables chains.
//!
//! Each backend sits behind [`Firewall`]: `pf` (pfctl, OpenBSD), `nft`
//! (nft(8), Linux) and `dryrun` (writes what it would load under
//! `state_dir/dry-run/`). What they load is rendered and checked by
//! [`crate::ruleset`]; the commands run through [`crate::tool`].

use std::fmt;
use std::path::Path;
use std::time::Duration;

use crate::conf::{FirewallBackend, FirewallConf};
use crate::lock::Enforcement;
use crate::ruleset::{Flavor, LinkCheck, LinkTarget};
use crate::tool::FwError;

pub mod dryrun;
pub mod nft;
pub mod pf;

/// One OS firewall. Every method touches only the link it is given.
/// Its [`LinkCheck`] checks a ruleset without applying it.
pub trait Firewall: LinkCheck + Send {
    fn name(&self) -> &'static str;
    /// Makes every configured link default-deny without disturbing a link's
    /// current rules (nft: table, base chains and sets replaced atomically,
    /// missing link chains created empty; pf: pf.conf holds the block rules,
    /// only check that pf is there and enabled). Called at every start and reload.
    fn init(&mut self, links: &[LinkTarget]) -> Result<(), FwError>;
    /// [`Firewall::init`] with the parent's own shared list of the links,
    /// which a backend that keeps them holds rather than a copy of each
    /// (nft: about 1.8 MB at 10,000 links).
    fn init_shared(&mut self, links: &std::sync::Arc<[LinkTarget]>) -> Result<(), FwError> {
        self.init(links)
    }
    /// Loads `ruleset` (the bundle's text for `state`) as the link's rules in
    /// one transaction; on lockdown also ends the link's existing states.
    fn apply(
        &mut self,
        link: &LinkTarget,
        state: Enforcement,
        ruleset: &str,
    ) -> Result<(), FwError>;
    /// [`Firewall::apply`] of `ruleset` (the bundle's open text) to each of
    /// `links`, in as few transactions as the backend can (nft: the links
    /// whose chains hold the text already, in one). One answer per link, in
    /// order; the caller reads each link back.
    fn open_many(&mut self, links: &[&LinkTarget], ruleset: &str) -> Vec<Result<(), FwError>> {
        (links.iter())
            .map(|l| self.apply(l, Enforcement::Open, ruleset))
            .collect()
    }
    /// [`Firewall::apply`] of `ruleset` (the bundle's lockdown text) to
    /// each of `links`, in as few tool runs as the backend can (nft: one
    /// for every chain to load, one transaction for the links whose chain
    /// holds it already). One answer per link, in order; the caller reads
    /// each link back and walks the lockdown ladder for any not shown
    /// locked. For a new bundle's re-application and for the links a
    /// lockdown holds with it (a shared interface), never a QBER lockdown.
    fn lock_many(&mut self, links: &[&LinkTarget], ruleset: &str) -> Vec<Result<(), FwError>> {
        (links.iter())
            .map(|l| self.apply(l, Enforcement::Lockdown, ruleset))
            .collect()
    }
    /// How many links the parent's loop hands [`Firewall::open_many`] (and a
    /// re-application [`Firewall::lock_many`]) at once: one where each is a
    /// transaction of its own (a QBER lockdown waits for at most one), more
    /// where they share one.
    fn links_at_once(&self) -> usize {
        1
    }
    /// How many of a re-application's lockdowns of locked links the loop
    /// hands [`Firewall::lock_many`] at once (its opens: `links_at_once`).
    fn relocks_at_once(&self) -> usize {
        self.links_at_once()
    }
    /// Replaces the link's chain/anchor with qkdpfd's own explicit drop of
    /// the link's traffic, independent of any bundle text and of the
    /// preloaded lockdown chain (and, on pf, kills its states). The lockdown
    /// without a policy, and the fallback after a failed one.
    fn clear(&mut self, link: &LinkTarget) -> Result<(), FwError>;
    /// [`Firewall::clear`] of many links, in as few tool runs as the
    /// backend allows (nft: 2,048 links a run; pf: one anchor load): one
    /// run a link takes minutes at 10,000 links. What each link got, in
    /// the order given.
    fn clear_many(&mut self, links: &[&LinkTarget]) -> Vec<Result<(), FwError>> {
        links.iter().map(|l| self.clear(l)).collect()
    }
    /// Loads `ruleset` ahead of time so that a later `apply` of the same
    /// text for `state` is quick (nft: the lockdown chain is preloaded and
    /// the flip only adds one rule). Off the critical path, and may wait
    /// for [`Firewall::settle`]; a backend without a fast path does nothing.
    fn stage(
        &mut self,
        link: &LinkTarget,
        state: Enforcement,
        ruleset: &str,
    ) -> Result<(), FwError> {
        let _ = (link, state, ruleset);
        Ok(())
    }
    /// Does the preloading `stage` deferred, for many links at once (nft:
    /// up to `relocks_at_once` links a run, the rest left for the next
    /// call: [`Firewall::settling`]). Off the critical path: the parent
    /// calls it when a burst of events is handled. The links whose
    /// preloading failed.
    fn settle(&mut self) -> Vec<(String, FwError)> {
        Vec::new()
    }
    /// Whether the last [`Firewall::settle`] left preloading for the next
    /// turn of the parent's loop (nft: a run loads a bounded number of
    /// links, so that a lockdown waits behind one such run, not one for
    /// every link).
    fn settling(&self) -> bool {
        false
    }
    /// Locks every link (`links`: all of them) in one transaction, for a
    /// lockdown of the whole gateway: nft with two elements in set `site`,
    /// whatever the number of links; pf with one anchor load of every
    /// link's `lockdown` ruleset (None: qkdpfd's own drop alone), as pf
    /// allows. The caller reads every link back after it. The next open
    /// ends it, each link then locked on its own. Ok(false): this backend
    /// has none; Ok(false) or Err: the caller locks link by link.
    fn lock_site(&mut self, links: &[LinkTarget], lockdown: Option<&str>) -> Result<bool, FwError> {
        let _ = (links, lockdown);
        Ok(false)
    }
    /// Whether [`Firewall::lock_site`] without a lockdown text gives every
    /// link exactly what [`Firewall::clear`] does (pf: qkdpfd's own block
    /// rules in every anchor, and the state kills), so that a
    /// [`Firewall::clear_many`] after it would do it all again.
    fn site_lock_clears(&self) -> bool {
        false
    }
    /// Locks every link fed by QBER section `source` (those of `links`
    /// whose `qber` it is) in one transaction: nft with set `src<i>`, pf
    /// with one anchor load, as [`Firewall::lock_site`]. What the kernel
    /// then holds is the next read-back's to say.
    fn lock_source(
        &mut self,
        source: &str,
        links: &[LinkTarget],
        lockdown: Option<&str>,
    ) -> Result<bool, FwError> {
        let _ = (source, links, lockdown);
        Ok(false)
    }
    /// Reads the kernel back (DESIGN §5 "enforcement is what the kernel
    /// holds"): for each link, in the order given, what its own chain or
    /// anchor holds now, and whether a guard (see [`Firewall::set_guard`])
    /// holds its drops. Never from the backend's own bookkeeping alone.
    /// `links` is every configured link (a base chain holding a rule for
    /// none of them is damage); `only` limits the answer to one link.
    fn observe(
        &mut self,
        links: &[LinkTarget],
        only: Option<&str>,
    ) -> Result<std::collections::BTreeMap<String, Readback>, FwError>;
    /// [`Firewall::observe`] of every link in `links`, in their order (a
    /// link the answer left out reads unknown): what a tick reads each
    /// second, without a map keyed by every link's name where the backend
    /// has the rows in order already.
    fn observe_each(&mut self, links: &[LinkTarget]) -> Result<Vec<Readback>, FwError> {
        let mut seen = self.observe(links, None)?;
        Ok((links.iter())
            .map(|l| {
                seen.remove(&l.name).unwrap_or(Readback {
                    state: Observed::unknown("not in the read-back"),
                    guarded: false,
                })
            })
            .collect())
    }
    /// The dead-man switch (nftables; DESIGN §2): `Some(t)` arms or
    /// refreshes it so the links' jumps live for `t` more; `None` disarms
    /// it (nothing in the daemon does: a stop that keeps the kernel state
    /// leaves it armed, DESIGN §2). Backends without one do nothing.
    fn keep_alive(&mut self, timeout: Option<Duration>) -> Result<(), FwError> {
        let _ = timeout;
        Ok(())
    }
    /// Whether the dead-man switch has lapsed (nftables: set `alive` lacks
    /// a family), read at start before it is refreshed: every link's
    /// traffic was dropped until now, whatever the chains hold. Backends
    /// without one: never.
    fn switch_lapsed(&mut self) -> Result<bool, FwError> {
        Ok(false)
    }
    /// Last resort of a failing lockdown: holds drops for exactly `links`
    /// outside the link's own chain (nftables: a separate table whose
    /// drops are final), replacing any earlier guard; `&[]` removes it.
    /// A backend without one says so.
    fn set_guard(&mut self, links: &[LinkTarget]) -> Result<(), FwError> {
        if links.is_empty() {
            return Ok(());
        }
        Err(FwError::refused(format!(
            "{}: no guard outside the link's anchor",
            self.name()
        )))
    }
    /// Whether the link's lockdown, as last loaded, lets WireGuard's
    /// handshake messages through (never its data), so that a new session
    /// can be made while it holds. A liveness fact, not a safety one: a
    /// wrong answer only keeps a `no-session` link locked longer. pf has
    /// no payload match: never.
    fn passes_handshakes(&self, link: &LinkTarget) -> bool {
        let _ = link;
        false
    }
    /// This run's lockdown loaded over the one in place for `links`, which
    /// the kernel shows locked: `ruleset` (the bundle's lockdown text) as
    /// [`Firewall::lock_many`] loads it, or without one qkdpfd's drop as
    /// [`Firewall::clear_many`] does, but with no link's own run after a
    /// load that fails: such links are locked already, and a run each (at
    /// 10,000 links ~75 ms, up to the timeout when nft hangs) would hold
    /// the loop, and every lockdown with it. One answer per link, in order.
    fn reload_locks(
        &mut self,
        links: &[&LinkTarget],
        ruleset: Option<&str>,
    ) -> Vec<Result<(), FwError>> {
        match ruleset {
            Some(r) => self.lock_many(links, r),
            None => self.clear_many(links),
        }
    }
    /// Whether the link's lockdown, as the last read-back found it, was
    /// loaded by an earlier run (or by another tool) and not by this one:
    /// what a lockdown lets through may have changed since (a restart into
    /// a new version), so a link locked by it is locked again with this
    /// run's text; also when this run's own text in it is older than the
    /// bundle's (its preload found the chain in force, after a site or
    /// source lock). Only ever a reason to load a lockdown, never to open.
    fn lock_inherited(&self, link: &LinkTarget) -> bool {
        let _ = link;
        false
    }
}

/// What the kernel showed for one link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    /// The link's own chain or anchor holds an explicit drop of its traffic
    /// (the lockdown ruleset followed by qkdpfd's own drop, or that drop alone).
    Locked,
    /// The link's chain or anchor holds an open ruleset as qkdpfd loaded it
    /// (its tag and rule count), and the default-deny around it is intact.
    Open,
    /// Neither could be proven; says what is missing or changed.
    /// `skeleton` is set when the default-deny around the link is damaged
    /// (a base chain, jump or drop gone; pf disabled or pf.conf without the
    /// anchor or block rules): the cure is to rebuild it.
    Unknown { skeleton: bool, why: String },
}

impl Observed {
    pub fn unknown(why: impl Into<String>) -> Observed {
        Observed::Unknown {
            skeleton: false,
            why: why.into(),
        }
    }

    pub fn damaged(why: impl Into<String>) -> Observed {
        Observed::Unknown {
            skeleton: true,
            why: why.into(),
        }
    }
}

impl fmt::Display for Observed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Observed::Locked => f.write_str("locked"),
            Observed::Open => f.write_str("open"),
            Observed::Unknown { why, .. } => write!(f, "unknown ({why})"),
        }
    }
}

/// One link's read-back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readback {
    pub state: Observed,
    /// A guard outside the link's chain drops its traffic.
    pub guarded: bool,
}

impl Readback {
    /// Whether nothing of the link's traffic can pass.
    pub fn locked(&self) -> bool {
        self.state == Observed::Locked || self.guarded
    }
}

/// The links a read-back covers: all of `links`, or link `only` alone,
/// found by halves when `links` are in name order (the parent's are: a
/// scan of every name per link made 10,000 one-link read-backs quadratic,
/// a quarter of a dry-run parent's CPU at start), else one by one.
pub fn covered<'a>(links: &'a [LinkTarget], only: Option<&str>) -> &'a [LinkTarget] {
    let Some(name) = only else {
        return links;
    };
    let at = match links.binary_search_by(|l| l.name.as_str().cmp(name)) {
        Ok(i) => Some(i),
        Err(_) => links.iter().position(|l| l.name == name),
    };
    at.map_or(&[], |i| &links[i..=i])
}

/// The backend the config names.
pub fn new(conf: &FirewallConf, state_dir: &Path) -> Box<dyn Firewall> {
    match conf.backend {
        FirewallBackend::Pf => Box::new(pf::Pf::new(&conf.pfctl, &conf.anchor)),
        FirewallBackend::Nftables => {
            Box::new(nft::Nft::new(&conf.nft, &conf.anchor).with_handshakes(conf.handshakes))
        }
        FirewallBackend::DryRun => Box::new(dryrun::DryRun::new(
            Flavor::native(),
            &conf.anchor,
            state_dir,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(names: &[&str]) -> Vec<LinkTarget> {
        (names.iter())
            .map(|n| LinkTarget {
                name: n.to_string(),
                wg_if: "wg0".into(),
                wg_port: 51820,
                rdomain: 0,
                udp_rdomain: 0,
                addrs4: vec![],
                addrs6: vec![],
                qber: "".into(),
            })
            .collect()
    }

    fn names(links: &[LinkTarget]) -> Vec<&str> {
        links.iter().map(|l| l.name.as_str()).collect()
    }

    #[test]
    fn a_read_back_covers_every_link_or_the_one_asked_for() {
        let sorted = named(&["a", "b", "c", "d"]);
        assert_eq!(names(covered(&sorted, None)), ["a", "b", "c", "d"]);
        for n in ["a", "c", "d"] {
            assert_eq!(names(covered(&sorted, Some(n))), [n]);
        }
        assert!(covered(&sorted, Some("bb")).is_empty());
        // Out of order, as a caller other than the parent may pass them.
        let unsorted = named(&["d", "a", "c", "b"]);
        for n in ["a", "b", "c", "d"] {
            assert_eq!(names(covered(&unsorted, Some(n))), [n]);
        }
        assert!(covered(&unsorted, Some("e")).is_empty());
        assert!(covered(&[], Some("a")).is_empty());
    }
}
