//! Firewall backends (DESIGN §5). Run by the privileged parent only: these are
//! the one place qkdpfd touches pf anchors or nftables chains.
//!
//! Each backend sits behind [`Firewall`]: `pf` (pfctl, OpenBSD), `nft`
//! (nft(8), Linux) and `dryrun` (writes what it would load under
//! `state_dir/dry-run/`). The rulesets come from a verified policy bundle; the
//! link facts come from the parent's checked config. Both are re-checked here
//! before they reach a command line or a script, because a name that could
//! smuggle syntax into another link's anchor must never get that far.
//! The commands run through [`crate::tool`].

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

use crate::conf::{FirewallBackend, FirewallConf, LinkConf};
use crate::lock::Enforcement;
use crate::tool::FwError;

pub mod dryrun;
pub mod nft;
pub mod pf;

/// One protected link, as the firewall sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkTarget {
    /// `^[a-z][a-z0-9_]{0,30}$`: pf anchor `<root>/<name>`, nft chain `link_<name>`.
    pub name: String,
    pub wg_if: String,
    /// The far gateway's WireGuard UDP port.
    pub wg_port: u16,
    /// pf: the routing domain of the link's states (`pfctl -V`); 0 default.
    pub rdomain: u32,
    pub addrs4: Vec<Ipv4Addr>,
    pub addrs6: Vec<Ipv6Addr>,
}

impl LinkTarget {
    pub fn from_conf(link: &LinkConf) -> LinkTarget {
        let mut t = LinkTarget {
            name: link.name.clone(),
            wg_if: link.wg_interface.clone(),
            wg_port: link.wg_port,
            rdomain: link.rdomain,
            addrs4: Vec::new(),
            addrs6: Vec::new(),
        };
        for a in &link.addresses {
            match a {
                std::net::IpAddr::V4(a) => t.addrs4.push(*a),
                std::net::IpAddr::V6(a) => t.addrs6.push(*a),
            }
        }
        t
    }
}

/// One OS firewall. Every method touches only the link it is given.
pub trait Firewall: Send {
    fn name(&self) -> &'static str;
    /// Extension of the bundle's ruleset files: "nft" or "pf".
    fn extension(&self) -> &'static str;
    /// Makes every configured link default-deny without disturbing a link's
    /// current rules (nft: table, base chains and sets replaced atomically,
    /// missing link chains created empty; pf: pf.conf holds the block rules,
    /// only check that pf is there and enabled). Called at every start and reload.
    fn init(&mut self, links: &[LinkTarget]) -> Result<(), FwError>;
    /// Loads `ruleset` (the bundle's text for `state`) as the link's rules in
    /// one transaction; on lockdown also ends the link's existing states.
    fn apply(
        &mut self,
        link: &LinkTarget,
        state: Enforcement,
        ruleset: &str,
    ) -> Result<(), FwError>;
    /// Replaces the link's chain/anchor with qkdpfd's own explicit drop of
    /// the link's traffic, independent of any bundle text and of the
    /// preloaded lockdown chain (and, on pf, kills its states). The lockdown
    /// without a policy, and the fallback after a failed one.
    fn clear(&mut self, link: &LinkTarget) -> Result<(), FwError>;
    /// Loads `ruleset` ahead of time so that a later `apply` of the same
    /// text for `state` is quick (nft: the lockdown chain is preloaded and
    /// the flip only adds one rule). Off the critical path; a backend without
    /// a fast path does nothing.
    fn stage(
        &mut self,
        link: &LinkTarget,
        state: Enforcement,
        ruleset: &str,
    ) -> Result<(), FwError> {
        let _ = (link, state, ruleset);
        Ok(())
    }
    /// Renders for `link` and checks without applying (`nft -c`, `pfctl -n`).
    fn check(&self, link: &LinkTarget, state: Enforcement, ruleset: &str) -> Result<(), String>;
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
    /// The dead-man switch (nftables; DESIGN §2): `Some(t)` arms or
    /// refreshes it so the links' jumps live for `t` more; `None` disarms
    /// it (a stop that keeps the kernel state). Backends without one do
    /// nothing.
    fn keep_alive(&mut self, timeout: Option<Duration>) -> Result<(), FwError> {
        let _ = timeout;
        Ok(())
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

/// The backend the config names.
pub fn new(conf: &FirewallConf, state_dir: &Path) -> Box<dyn Firewall> {
    match conf.backend {
        FirewallBackend::Pf => Box::new(pf::Pf::new(&conf.pfctl, &conf.anchor)),
        FirewallBackend::Nftables => Box::new(nft::Nft::new(&conf.nft, &conf.anchor)),
        FirewallBackend::DryRun => Box::new(dryrun::DryRun::new(
            dryrun::Flavor::native(),
            &conf.anchor,
            state_dir,
        )),
    }
}

/// `^[a-z][a-z0-9_]{0,30}$`: link names and the anchor/table name. They end
/// up inside pf and nft syntax, so nothing else may pass.
pub fn valid_name(s: &str) -> bool {
    crate::conf::valid_link_name(s)
}

/// An interface name as the kernels accept it (IFNAMSIZ 16 incl. NUL), with
/// no character that means something to pf or nft.
pub fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// Re-checks the names that reach a script or argv.
pub fn check_names(anchor: &str, link: &LinkTarget) -> Result<(), FwError> {
    if !valid_name(anchor) {
        return Err(FwError::refused(format!(
            "firewall anchor {anchor:?} is not a valid name ([a-z][a-z0-9_]{{0,30}})"
        )));
    }
    if !valid_name(&link.name) {
        return Err(FwError::refused(format!(
            "link name {:?} is not a valid name ([a-z][a-z0-9_]{{0,30}})",
            link.name
        )));
    }
    if !valid_ifname(&link.wg_if) {
        return Err(FwError::refused(format!(
            "link {}: wg_interface {:?} is not a valid interface name",
            link.name, link.wg_if
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("dr"));
        assert!(valid_name("a_1"));
        assert!(!valid_name("1a"));
        assert!(!valid_name("Dr"));
        assert!(!valid_name("dr;"));
        assert!(!valid_name(&"a".repeat(32)));
        assert!(valid_ifname("wg0"));
        assert!(valid_ifname("veth-a.1"));
        assert!(!valid_ifname("wg0\""));
        assert!(!valid_ifname("wg 0"));
        assert!(!valid_ifname(&"w".repeat(16)));
    }
}
