//! How a packet finds its link, in O(1) whatever the number of links: the
//! keys that identify a link's traffic, and the table-wide maps and sets
//! keyed by them.
//!
//! A link's traffic is its underlay (the far gateway's address with its
//! WireGuard port, as source or destination) and the traffic of its
//! WireGuard interface. Three kinds of key cover both: `ipv4_addr .
//! inet_service`, `ipv6_addr . inet_service` and `ifname`. For each kind the
//! table holds
//!
//! - map `open_<k>`: key → `jump link_<link>`, loaded with the skeleton;
//! - map `lock_<k>`: key → `jump lock_<link>`, loaded with the skeleton;
//! - set `keys_<k>`: every key of the maps, for the drop that follows the
//!   jump (a lookup in a map itself is refused by Linux 6.1);
//! - set `locked_<k>`: the keys of the links that are locked, the only
//!   thing a flip changes (no verdict, so no table re-validation);
//!
//! and set `site` (type nf_proto) locks every link while it holds `ipv4`
//! and `ipv6`. Each `[qber.X]` section that feeds links has the same pair
//! for its own links: set `src<i>` (nf_proto) and sets `src<i>_<k>` of
//! their keys (`i` its place among the sections in name order).
//!
//! Every base chain walks the same rules per kind, whatever the number of
//! links: six, and two per QBER section (see [`BaseRule`]). Why no set per
//! link: nft and the kernel find a set by name in a list, so 30,000
//! per-link sets took a minute to load; chains cost a few microseconds
//! each.
//!
//! A key belongs to the first link (in link order) that has it: two links
//! on one interface share its inner traffic, which the first link's chains
//! judge (as the per-link rules of earlier versions did, first match
//! first); each still has its own underlay. Such links therefore lock
//! together (reason `interface`, `parent/links/shared.rs`).

use std::collections::{BTreeMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::ruleset::LinkTarget;

/// The site lock's set: `ipv4` and `ipv6` in it lock every link.
pub const SITE_SET: &str = "site";

/// The `[qber.X]` sections that feed `links`, in name order: section `i`
/// locks its links with set `src<i>` ([`source_set`]).
pub fn sources(links: &[LinkTarget]) -> Vec<String> {
    let names: std::collections::BTreeSet<&str> = (links.iter())
        .map(|l| &*l.qber)
        .filter(|q| !q.is_empty())
        .collect();
    names.into_iter().map(str::to_string).collect()
}

/// Set `src<i>` (nf_proto): `ipv4` and `ipv6` in it lock every link of
/// QBER section `i`.
pub fn source_set(i: usize) -> String {
    format!("src{i}")
}

/// A kind of key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    V4,
    V6,
    If,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::V4, Kind::V6, Kind::If];

    fn suffix(self) -> &'static str {
        match self {
            Kind::V4 => "4",
            Kind::V6 => "6",
            Kind::If => "if",
        }
    }

    /// The nft type of the key.
    pub fn nft_type(self) -> &'static str {
        match self {
            Kind::V4 => "ipv4_addr . inet_service",
            Kind::V6 => "ipv6_addr . inet_service",
            Kind::If => "ifname",
        }
    }

    /// Map `open_<k>`: key → `jump link_<link>`.
    pub fn open_map(self) -> String {
        format!("open_{}", self.suffix())
    }

    /// Map `lock_<k>`: key → `jump lock_<link>`.
    pub fn lock_map(self) -> String {
        format!("lock_{}", self.suffix())
    }

    /// Set `keys_<k>`: every key the maps dispatch.
    pub fn keys_set(self) -> String {
        format!("keys_{}", self.suffix())
    }

    /// Set `locked_<k>`: the keys of locked links.
    pub fn locked_set(self) -> String {
        format!("locked_{}", self.suffix())
    }

    /// Set `src<i>_<k>`: the keys of QBER section `i`'s links.
    pub fn source_keys_set(self, i: usize) -> String {
        format!("src{i}_{}", self.suffix())
    }
}

/// Where a base rule reads its key from the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyExpr {
    /// `ip saddr . udp sport` (`ip6` for V6): traffic from the far gateway.
    Source(Kind),
    /// `ip daddr . udp dport`: traffic to the far gateway.
    Dest(Kind),
    Iif,
    Oif,
}

impl KeyExpr {
    pub fn kind(self) -> Kind {
        match self {
            KeyExpr::Source(k) | KeyExpr::Dest(k) => k,
            KeyExpr::Iif | KeyExpr::Oif => Kind::If,
        }
    }

    /// As nft text.
    pub fn text(self) -> &'static str {
        match self {
            KeyExpr::Source(Kind::V6) => "ip6 saddr . udp sport",
            KeyExpr::Source(_) => "ip saddr . udp sport",
            KeyExpr::Dest(Kind::V6) => "ip6 daddr . udp dport",
            KeyExpr::Dest(_) => "ip daddr . udp dport",
            KeyExpr::Iif => "iifname",
            KeyExpr::Oif => "oifname",
        }
    }

    /// The keys of each base chain, in order.
    pub fn of_hook(hook: &str) -> &'static [KeyExpr] {
        use KeyExpr::*;
        match hook {
            "input" => &[Source(Kind::V4), Source(Kind::V6), Iif],
            "output" => &[Dest(Kind::V4), Dest(Kind::V6), Oif],
            "forward" => &[Iif, Oif],
            _ => &[],
        }
    }
}

/// The six rules each base chain holds per key, in this order. While the
/// site is locked every key takes its lockdown chain and is dropped; a
/// locked key likewise; an open key takes its link chain and is dropped
/// unless that chain accepts. Every jump also needs the dead-man switch's
/// heartbeat.
///
/// The site lock (set `site`, type nf_proto, holding `ipv4` and `ipv6`)
/// locks every link in one transaction of two elements whatever the
/// number of links: a lockdown of the whole gateway (the engine lost, a
/// stop with `on_stop = "lockdown"`, `qkdctl lockdown all`) changes one
/// set, not 10,000 links' keys. A source lock does the same for the links
/// of one QBER section (its source lost for all of them at once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// `meta nfproto @alive meta nfproto @site <key> vmap @lock_<k>`
    SiteLock,
    /// `meta nfproto @site <key> @keys_<k> drop`
    SiteDrop,
    /// `meta nfproto @alive meta nfproto @src<i> <key> @src<i>_<k> <key> vmap @lock_<k>`
    SourceLock(usize),
    /// `meta nfproto @src<i> <key> @src<i>_<k> drop`
    SourceDrop(usize),
    /// `meta nfproto @alive <key> @locked_<k> <key> vmap @lock_<k>`
    Lock,
    /// `<key> @locked_<k> drop`
    LockedDrop,
    /// `meta nfproto @alive <key> vmap @open_<k>`
    Open,
    /// `<key> @keys_<k> drop`
    OpenDrop,
}

impl Step {
    /// The steps of one key, in order, with `sources` QBER sections.
    pub fn all(sources: usize) -> Vec<Step> {
        let mut v = vec![Step::SiteLock, Step::SiteDrop];
        v.extend((0..sources).flat_map(|i| [Step::SourceLock(i), Step::SourceDrop(i)]));
        v.extend([Step::Lock, Step::LockedDrop, Step::Open, Step::OpenDrop]);
        v
    }
}

/// One rule of a base chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseRule {
    pub key: KeyExpr,
    pub step: Step,
}

impl BaseRule {
    /// Every rule of `hook`'s chain, in order, with `sources` QBER
    /// sections.
    pub fn of_hook(hook: &str, sources: usize) -> Vec<BaseRule> {
        let steps = Step::all(sources);
        KeyExpr::of_hook(hook)
            .iter()
            .flat_map(|&key| steps.iter().map(move |&step| BaseRule { key, step }))
            .collect()
    }

    /// The rule as nft text (after `add rule inet <t> <hook> `).
    pub fn text(self, alive: &str) -> String {
        let (k, kind) = (self.key.text(), self.key.kind());
        match self.step {
            Step::SiteLock => format!(
                "meta nfproto @{alive} meta nfproto @{SITE_SET} {k} vmap @{}",
                kind.lock_map()
            ),
            Step::SiteDrop => format!("meta nfproto @{SITE_SET} {k} @{} drop", kind.keys_set()),
            Step::SourceLock(i) => format!(
                "meta nfproto @{alive} meta nfproto @{} {k} @{} {k} vmap @{}",
                source_set(i),
                kind.source_keys_set(i),
                kind.lock_map()
            ),
            Step::SourceDrop(i) => format!(
                "meta nfproto @{} {k} @{} drop",
                source_set(i),
                kind.source_keys_set(i)
            ),
            Step::Lock => format!(
                "meta nfproto @{alive} {k} @{} {k} vmap @{}",
                kind.locked_set(),
                kind.lock_map()
            ),
            Step::LockedDrop => format!("{k} @{} drop", kind.locked_set()),
            Step::Open => format!("meta nfproto @{alive} {k} vmap @{}", kind.open_map()),
            Step::OpenDrop => format!("{k} @{} drop", kind.keys_set()),
        }
    }
}

/// The keys of one link.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkKeys {
    pub v4: Vec<(Ipv4Addr, u16)>,
    pub v6: Vec<(Ipv6Addr, u16)>,
    pub wg_if: Option<String>,
}

/// The keys of `links` per `locked_` set that any of them has a key for,
/// each set's keys sorted and without repeats (links may share a key).
pub fn locked_keys<'a>(
    links: impl Iterator<Item = &'a LinkKeys> + Clone,
) -> Vec<(String, Vec<Vec<u8>>)> {
    (Kind::ALL.into_iter())
        .filter_map(|kind| {
            let mut b: Vec<Vec<u8>> = links.clone().flat_map(|k| k.bytes(kind)).collect();
            b.sort_unstable();
            b.dedup();
            (!b.is_empty()).then(|| (kind.locked_set(), b))
        })
        .collect()
}

impl LinkKeys {
    /// Every key of the link, owned or not (the guard drops them all).
    pub fn all(link: &LinkTarget) -> LinkKeys {
        LinkKeys {
            v4: link.addrs4.iter().map(|a| (*a, link.wg_port)).collect(),
            v6: link.addrs6.iter().map(|a| (*a, link.wg_port)).collect(),
            wg_if: Some(link.wg_if.clone()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty() && self.wg_if.is_none()
    }

    /// The keys of `kind` as nft lists them in JSON, joined by " . "
    /// (`198.51.100.2 . 51820`, `wg0`): what a read-back compares.
    pub fn texts(&self, kind: Kind) -> Vec<String> {
        match kind {
            Kind::V4 => self.v4.iter().map(|(a, p)| format!("{a} . {p}")).collect(),
            Kind::V6 => self.v6.iter().map(|(a, p)| format!("{a} . {p}")).collect(),
            Kind::If => self.wg_if.iter().cloned().collect(),
        }
    }

    /// The keys of `kind` as an nft script writes them.
    pub fn script_elems(&self, kind: Kind) -> Vec<String> {
        match kind {
            Kind::If => self.wg_if.iter().map(|i| format!("\"{i}\"")).collect(),
            _ => self.texts(kind),
        }
    }

    /// The keys of `kind` as the kernel stores them: each field in 4-byte
    /// registers (an address, then the port in network order and two zero
    /// bytes); an interface name NUL-padded to IFNAMSIZ.
    pub fn bytes(&self, kind: Kind) -> Vec<Vec<u8>> {
        match kind {
            Kind::V4 => self
                .v4
                .iter()
                .map(|(a, p)| addr_key(&a.octets(), *p))
                .collect(),
            Kind::V6 => self
                .v6
                .iter()
                .map(|(a, p)| addr_key(&a.octets(), *p))
                .collect(),
            Kind::If => self.wg_if.iter().map(|i| if_key(i)).collect(),
        }
    }

    /// The keys for which `keep(kind, bytes)` holds.
    pub fn filter(&self, keep: impl Fn(Kind, &[u8]) -> bool) -> LinkKeys {
        LinkKeys {
            v4: (self.v4.iter().copied())
                .filter(|(a, p)| keep(Kind::V4, &addr_key(&a.octets(), *p)))
                .collect(),
            v6: (self.v6.iter().copied())
                .filter(|(a, p)| keep(Kind::V6, &addr_key(&a.octets(), *p)))
                .collect(),
            wg_if: self.wg_if.clone().filter(|i| keep(Kind::If, &if_key(i))),
        }
    }
}

/// An address key: the address, then the port in network order padded to
/// a 4-byte register.
fn addr_key(octets: &[u8], port: u16) -> Vec<u8> {
    let p = port.to_be_bytes();
    [octets, &[p[0], p[1], 0, 0]].concat()
}

/// An interface key: the name NUL-padded to IFNAMSIZ.
fn if_key(name: &str) -> Vec<u8> {
    let mut b = name.as_bytes().to_vec();
    b.resize(16, 0);
    b
}

/// The keys each link owns: a key belongs to the first link that has it.
pub fn owned(links: &[LinkTarget]) -> BTreeMap<String, LinkKeys> {
    let mut seen4 = HashSet::new();
    let mut seen6 = HashSet::new();
    let mut seen_if = HashSet::new();
    let mut out = BTreeMap::new();
    for l in links {
        let all = LinkKeys::all(l);
        let keys = LinkKeys {
            v4: all.v4.into_iter().filter(|k| seen4.insert(*k)).collect(),
            v6: all.v6.into_iter().filter(|k| seen6.insert(*k)).collect(),
            wg_if: all.wg_if.filter(|i| seen_if.insert(i.clone())),
        };
        out.insert(l.name.clone(), keys);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locked_keys_are_per_set_sorted_once_each() {
        let b = LinkKeys::all(&link("b", "wg1", "198.51.100.9"));
        let a = LinkKeys::all(&link("a", "wg0", "198.51.100.1"));
        let mut no_if = a.clone();
        no_if.wg_if = None;
        let sets = locked_keys([&b, &a].into_iter());
        let names: Vec<&str> = sets.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(names, ["locked_4", "locked_6", "locked_if"]);
        assert_eq!(
            sets[0].1,
            [a.bytes(Kind::V4), b.bytes(Kind::V4)].concat(),
            "sorted"
        );
        assert_eq!(sets[1].1.len(), 1, "the IPv6 key both have, once");
        let alone = locked_keys([&no_if].into_iter());
        assert!(
            alone.iter().all(|(s, _)| s != "locked_if"),
            "no key, no set"
        );
    }

    fn link(name: &str, wg_if: &str, a: &str) -> LinkTarget {
        LinkTarget {
            name: name.into(),
            wg_if: wg_if.into(),
            wg_port: 51820,
            rdomain: 0,
            udp_rdomain: 0,
            addrs4: vec![a.parse().unwrap()],
            addrs6: vec!["2001:db8::2".parse().unwrap()],
            qber: "".into(),
        }
    }

    #[test]
    fn the_first_link_owns_a_shared_key() {
        let a = link("a", "wg0", "192.0.2.1");
        let b = link("b", "wg0", "192.0.2.2");
        let o = owned(&[a, b]);
        assert_eq!(o["a"].wg_if.as_deref(), Some("wg0"));
        assert_eq!(o["b"].wg_if, None, "wg0 is a's");
        assert_eq!(o["b"].texts(Kind::V4), ["192.0.2.2 . 51820"]);
        assert!(o["b"].v6.is_empty(), "the same v6 underlay is a's");
        assert_eq!(o["a"].texts(Kind::V6), ["2001:db8::2 . 51820"]);
    }

    #[test]
    fn keys_as_the_kernel_stores_them() {
        let k = LinkKeys::all(&link("a", "wg0", "192.0.2.1"));
        assert_eq!(k.bytes(Kind::V4), [vec![192, 0, 2, 1, 0xca, 0x6c, 0, 0]]);
        let v6 = &k.bytes(Kind::V6)[0];
        assert_eq!(v6.len(), 20);
        assert_eq!(&v6[16..], &[0xca, 0x6c, 0, 0]);
        let i = &k.bytes(Kind::If)[0];
        assert_eq!(i.len(), 16);
        assert_eq!(&i[..4], b"wg0\0");
        assert_eq!(k.script_elems(Kind::If), ["\"wg0\""]);
    }

    #[test]
    fn every_base_chain_has_six_rules_per_key() {
        assert_eq!(BaseRule::of_hook("input", 0).len(), 18);
        assert_eq!(BaseRule::of_hook("forward", 0).len(), 12);
        let all = BaseRule::of_hook("input", 0);
        assert_eq!(
            all[0].text("alive"),
            "meta nfproto @alive meta nfproto @site ip saddr . udp sport vmap @lock_4"
        );
        assert_eq!(
            all[1].text("alive"),
            "meta nfproto @site ip saddr . udp sport @keys_4 drop"
        );
        let r = &all[2..];
        assert_eq!(
            r[0].text("alive"),
            "meta nfproto @alive ip saddr . udp sport @locked_4 ip saddr . udp sport vmap @lock_4"
        );
        assert_eq!(r[1].text("alive"), "ip saddr . udp sport @locked_4 drop");
        assert_eq!(
            r[2].text("alive"),
            "meta nfproto @alive ip saddr . udp sport vmap @open_4"
        );
        assert_eq!(r[3].text("alive"), "ip saddr . udp sport @keys_4 drop");
        assert_eq!(
            BaseRule::of_hook("output", 0)[15].text("x"),
            "oifname @locked_if drop"
        );
    }

    #[test]
    fn each_qber_section_adds_two_rules_per_key() {
        let mut a = link("a", "wg0", "192.0.2.1");
        let mut b = link("b", "wg1", "192.0.2.2");
        let c = link("c", "wg2", "192.0.2.3");
        (a.qber, b.qber) = ("zeta".into(), "alpha".into());
        // In name order; a link without a section is in none.
        assert_eq!(sources(&[a, b.clone(), c, b]), ["alpha", "zeta"]);
        let all = BaseRule::of_hook("input", 2);
        assert_eq!(all.len(), 30);
        let texts: Vec<String> = all[..10].iter().map(|r| r.text("alive")).collect();
        assert_eq!(
            texts[4],
            "meta nfproto @alive meta nfproto @src1 ip saddr . udp sport @src1_4 \
             ip saddr . udp sport vmap @lock_4"
        );
        assert_eq!(
            texts[5],
            "meta nfproto @src1 ip saddr . udp sport @src1_4 drop"
        );
        assert!(texts[6].contains("@locked_4 ip saddr"), "{}", texts[6]);
        assert_eq!(
            BaseRule::of_hook("output", 1)[19].text("x"),
            "meta nfproto @src0 oifname @src0_if drop"
        );
    }
}
