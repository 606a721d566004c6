//! Bundle rulesets as pfctl and nft get them, for one link (DESIGN §4,
//! §5): the text work, and the tool's own check of it, that the parent's
//! firewall backends and `qkdctl policy verify` both need, so that the
//! control tool never links the privileged parent.
//!
//! The rulesets come from a verified policy bundle; the link facts come
//! from the checked config ([`LinkTarget`]). Both are re-checked here
//! before they reach a command line or a script, because a name that could
//! smuggle syntax into another link's anchor must never get that far.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::conf::{Config, LinkConf};
use crate::tool::FwError;

mod check;
pub mod nft;
pub mod pf;

pub use check::{Check, Checker, LinkCheck};

/// Which firewall's ruleset language: a bundle holds both, a gateway loads one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Nft,
    Pf,
}

impl Flavor {
    /// pf on OpenBSD, nftables elsewhere.
    pub fn native() -> Flavor {
        if cfg!(target_os = "openbsd") {
            Flavor::Pf
        } else {
            Flavor::Nft
        }
    }

    /// Extension of the bundle's ruleset files: "nft" or "pf".
    pub fn extension(self) -> &'static str {
        match self {
            Flavor::Nft => "nft",
            Flavor::Pf => "pf",
        }
    }
}

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
    /// pf: the routing domain of the tunnel's UDP states (wg(4)'s
    /// `wgrtable`); 0 default.
    pub udp_rdomain: u32,
    pub addrs4: Vec<Ipv4Addr>,
    pub addrs6: Vec<Ipv6Addr>,
    /// The `[qber.X]` section that feeds the link; empty for none. The
    /// links of one section can be locked together (nft: one transaction).
    /// The config's copy, shared.
    pub qber: Arc<str>,
}

impl LinkTarget {
    /// Link "dr" on wg0, far gateway 198.51.100.2: the unit tests' link.
    #[cfg(test)]
    pub(crate) fn sample() -> LinkTarget {
        LinkTarget {
            name: "dr".into(),
            wg_if: "wg0".into(),
            wg_port: 51820,
            rdomain: 0,
            udp_rdomain: 0,
            addrs4: vec!["198.51.100.2".parse().unwrap()],
            addrs6: vec![],
            qber: "".into(),
        }
    }

    pub fn from_conf(link: &LinkConf) -> LinkTarget {
        let mut t = LinkTarget {
            name: link.name.clone(),
            wg_if: link.wg_interface.clone(),
            wg_port: link.wg_port,
            rdomain: link.rdomain,
            udp_rdomain: link.udp_rdomain,
            addrs4: Vec::new(),
            addrs6: Vec::new(),
            qber: link.qber.clone(),
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

/// Every configured link, by name.
pub fn targets(conf: &Config) -> BTreeMap<String, LinkTarget> {
    conf.link
        .iter()
        .map(|(n, l)| (n.clone(), LinkTarget::from_conf(l)))
        .collect()
}

/// `links` in name order, one of each name (the first), for a lookup by
/// binary search: the list itself when it is so already (as the parent
/// keeps it), else a sorted copy.
pub fn in_name_order(links: &Arc<[LinkTarget]>) -> Arc<[LinkTarget]> {
    if links.is_sorted_by(|a, b| a.name < b.name) {
        return links.clone();
    }
    let mut sorted = links.to_vec();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    sorted.dedup_by(|a, b| a.name == b.name);
    Arc::from(sorted)
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

    #[test]
    fn links_in_name_order_are_shared_others_sorted_once() {
        let named = |n: &str, port| LinkTarget {
            name: n.into(),
            wg_port: port,
            ..LinkTarget::sample()
        };
        let ordered: Arc<[LinkTarget]> = Arc::from([named("a", 1), named("b", 2)]);
        assert!(Arc::ptr_eq(&in_name_order(&ordered), &ordered));
        let mixed: Arc<[LinkTarget]> = Arc::from([named("b", 2), named("a", 1), named("b", 3)]);
        let sorted = in_name_order(&mixed);
        let got: Vec<(&str, u16)> = sorted
            .iter()
            .map(|l| (l.name.as_str(), l.wg_port))
            .collect();
        assert_eq!(got, [("a", 1), ("b", 2)], "the first of a name counts");
    }
}
