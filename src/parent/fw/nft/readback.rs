//! Reading nftables back (DESIGN §5 "enforcement is what the kernel
//! holds"): `nft -j list table inet <t>` parsed into chains of rules, sets
//! and maps, and each link judged against what qkdpfd must have put there.
//!
//! nft prints rules in its own normal form, so the text we loaded is not
//! compared with the text we read. Instead every chain qkdpfd loads carries
//! a tag rule whose comment names its state and how many rules follow
//! (`qkdpfd open n=4`, `qkdpfd lockdown n=1`), the lockdown chain ends with
//! qkdpfd's own `drop`, and the base chains hold exactly the fixed rules of
//! [`crate::ruleset::nft::dispatch::BaseRule`], compared expression by
//! expression in nft's JSON. A link, by the keys it owns, is:
//!
//! - locked: every key in the `locked_` sets and `lock_<l>` tagged, whole
//!   and ending with the drop (or a bare drop); or no key there and
//!   `link_<l>` starting with a bare `drop` (the fallback,
//!   [`crate::ruleset::nft::clear_script`], which makes both chains drops);
//! - open: no key in the `locked_` sets and `link_<l>` tagged open and whole;
//! - unknown otherwise — and "damaged" when a base chain, a dispatch
//!   element or a `locked_` set is not as loaded (a foreign `accept` ahead
//!   of our jump would pass the link's traffic).
//!
//! Tag, count and ends do not show a rule of ours replaced in place by
//! another. So once netlink is proven to reach the table, the backend also
//! digests each link chain as the kernel dumps it (`chain::Content`) and
//! compares it with the first such read since its own last successful load
//! of that chain: a chain that changed is judged as missing, until a load
//! of ours succeeds.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

use super::super::{Observed, Readback};
use crate::ruleset::LinkTarget;
use crate::ruleset::nft::dispatch::{self, BaseRule, KeyExpr, Kind, LinkKeys, SITE_SET, Step};
use crate::ruleset::nft::{
    ALIVE_SET, DROP_TAG, GUARD_TAG, HANDSHAKE_SET, HANDSHAKE_SHAPES, LOCK_TAG, OPEN_TAG, guard_set,
    protected_matches,
};

/// One expression of a rule, as nft printed it (JSON text). Kept as text:
/// a 100-link table lists as half a megabyte, and a tree of values for
/// all of it every second would be ten times that; the few expressions a
/// judgement looks into are parsed when it does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expr(pub String);

impl Expr {
    fn value(&self) -> Value {
        serde_json::from_str(&self.0).unwrap_or(Value::Null)
    }
}

/// One rule as listed: its expressions and comment.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub expr: Vec<Expr>,
    pub comment: Option<String>,
}

/// One table as listed: rules per chain, in order; base chains by hook.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Listing {
    pub chains: HashMap<String, Vec<Rule>>,
    /// Chain name -> hook, for base chains.
    pub hooks: HashMap<String, String>,
    /// Set name -> its elements as [`element_text`] writes them (a set:
    /// every link's keys are looked up in the same few sets).
    pub sets: HashMap<String, HashSet<String>>,
    /// Map name -> key (as [`element_text`]) -> verdict (`jump link_dr`).
    pub maps: HashMap<String, HashMap<String, String>>,
    /// The table is dormant: its base chains see no packet, whatever they
    /// hold (read over netlink, [`super::table`]; nft's JSON garbles it).
    pub dormant: bool,
}

/// One element of the listing; others (metainfo, table) are skipped.
#[derive(serde::Deserialize)]
struct Item<'a> {
    #[serde(borrow)]
    chain: Option<ChainJ<'a>>,
    #[serde(borrow)]
    rule: Option<RuleJ<'a>>,
    #[serde(borrow)]
    set: Option<SetJ<'a>>,
    #[serde(borrow)]
    map: Option<SetJ<'a>>,
}

#[derive(serde::Deserialize)]
struct SetJ<'a> {
    #[serde(borrow)]
    name: std::borrow::Cow<'a, str>,
    #[serde(default)]
    elem: Vec<Box<serde_json::value::RawValue>>,
}

#[derive(serde::Deserialize)]
struct ChainJ<'a> {
    #[serde(borrow)]
    name: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    hook: Option<std::borrow::Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct RuleJ<'a> {
    #[serde(borrow)]
    chain: std::borrow::Cow<'a, str>,
    expr: Vec<Box<serde_json::value::RawValue>>,
    #[serde(borrow)]
    comment: Option<std::borrow::Cow<'a, str>>,
}

/// An element's key as text: a string or number as itself, a
/// concatenation as its parts joined by " . " (`198.51.100.2 . 51820`);
/// anything else (a range, a prefix, an element with a timeout) as its
/// JSON, which matches no key of ours.
pub fn element_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Object(o) if o.len() == 1 && o.contains_key("concat") => match &o["concat"] {
            Value::Array(parts) => parts
                .iter()
                .map(element_text)
                .collect::<Vec<_>>()
                .join(" . "),
            other => other.to_string(),
        },
        other => other.to_string(),
    }
}

/// A map element's verdict as text (`jump link_dr`).
fn verdict_text(v: &Value) -> String {
    for kind in ["jump", "goto"] {
        if let Some(t) = v
            .get(kind)
            .and_then(|j| j.get("target"))
            .and_then(Value::as_str)
        {
            return format!("{kind} {t}");
        }
    }
    v.to_string()
}

/// Parses `nft -j list table` output. Anything but the expected shape is
/// an error: a listing we cannot read proves nothing.
///
/// Item by item, never the whole list at once, and a rule of a chain that
/// is not a base chain keeps its expressions only when it is a bare drop:
/// judging a link chain needs its length, its tag comment and whether it
/// starts or ends with a drop (see [`shape`]). At 10,000 links the whole
/// parse held 40 MiB; the base chains are kept whole.
pub fn parse(json: &str) -> Result<Listing, String> {
    parse_reader(&mut json.as_bytes())
}

/// [`parse`], reading `r` as it comes (nft's stdout): the JSON text is
/// never held whole, only the listing it makes.
pub fn parse_reader(r: &mut dyn std::io::Read) -> Result<Listing, String> {
    use serde::de::DeserializeSeed;
    let mut out = Listing::default();
    let buffered = std::io::BufReader::with_capacity(64 * 1024, r);
    let mut de = serde_json::Deserializer::from_reader(buffered);
    Top(&mut out)
        .deserialize(&mut de)
        .and_then(|()| de.end())
        .map_err(|e| format!("nft -j output: {e}"))?;
    Ok(out)
}

/// The top object: its `nftables` list goes item by item into the listing.
struct Top<'l>(&'l mut Listing);

/// The `nftables` list, item by item.
struct Items<'l>(&'l mut Listing);

impl<'de> serde::de::DeserializeSeed<'de> for Top<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Top<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object with an nftables list")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = false;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "nftables" {
                map.next_value_seed(Items(&mut *self.0))?;
                seen = true;
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        match seen {
            true => Ok(()),
            false => Err(serde::de::Error::missing_field("nftables")),
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Items<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Items<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of nftables objects")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(item) = seq.next_element::<Item<'de>>()? {
            self.0.add(item);
        }
        Ok(())
    }
}

impl Listing {
    fn add(&mut self, item: Item<'_>) {
        if let Some(c) = item.chain {
            self.chains.entry(c.name.to_string()).or_default();
            if let Some(h) = c.hook {
                self.hooks.insert(c.name.to_string(), h.to_string());
            }
        } else if let Some(s) = item.set {
            let elems = s
                .elem
                .iter()
                .map(|e| element_text(&serde_json::from_str(e.get()).unwrap_or(Value::Null)))
                .collect();
            self.sets.insert(s.name.to_string(), elems);
        } else if let Some(m) = item.map {
            let mut elems = HashMap::new();
            for e in &m.elem {
                let v: Value = serde_json::from_str(e.get()).unwrap_or(Value::Null);
                if let Some([k, d]) = v.as_array().map(Vec::as_slice) {
                    elems.insert(element_text(k), verdict_text(d));
                }
            }
            self.maps.insert(m.name.to_string(), elems);
        } else if let Some(r) = item.rule {
            let mut rule = Rule {
                expr: r.expr.iter().map(|e| Expr(e.get().to_string())).collect(),
                comment: r.comment.map(|c| c.to_string()),
            };
            // A chain declared without a hook (nft lists every chain
            // before any rule): only its shape is judged.
            let link_chain = self.chains.contains_key(r.chain.as_ref())
                && !self.hooks.contains_key(r.chain.as_ref());
            if link_chain && !bare_drop(&rule) {
                rule.expr = Vec::new();
            }
            match self.chains.get_mut(r.chain.as_ref()) {
                Some(rules) => rules.push(rule),
                None => drop(self.chains.insert(r.chain.to_string(), vec![rule])),
            }
        }
    }
}

fn is_verdict(e: &Expr, verdict: &str) -> bool {
    e.value()
        .as_object()
        .is_some_and(|o| o.len() == 1 && o.get(verdict).is_some_and(Value::is_null))
}

/// A rule that is exactly `drop` (a counter before it is fine).
fn bare_drop(r: &Rule) -> bool {
    match r.expr.as_slice() {
        [d] => is_verdict(d, "drop"),
        [c, d] => c.value().get("counter").is_some() && is_verdict(d, "drop"),
        _ => false,
    }
}

/// The `n` of a tag comment `<prefix><n>`.
fn tagged(r: &Rule, prefix: &str) -> Option<usize> {
    r.comment.as_deref()?.strip_prefix(prefix)?.parse().ok()
}

/// A key expression as nft -j lists it.
fn key_json(k: KeyExpr) -> Value {
    let payload =
        |proto: &str, field: &str| json!({"payload": {"protocol": proto, "field": field}});
    let fam = |kind| if kind == Kind::V6 { "ip6" } else { "ip" };
    match k {
        KeyExpr::Source(kind) => {
            json!({"concat": [payload(fam(kind), "saddr"), payload("udp", "sport")]})
        }
        KeyExpr::Dest(kind) => {
            json!({"concat": [payload(fam(kind), "daddr"), payload("udp", "dport")]})
        }
        KeyExpr::Iif => json!({"meta": {"key": "iifname"}}),
        KeyExpr::Oif => json!({"meta": {"key": "oifname"}}),
    }
}

/// A base rule's expressions as nft -j lists them.
pub fn base_rule_json(r: BaseRule) -> Vec<Value> {
    let key = key_json(r.key);
    let kind = r.key.kind();
    let lookup = |left: Value, set: String| json!({"match": {"op": "==", "left": left, "right": format!("@{set}")}});
    let alive = lookup(json!({"meta": {"key": "nfproto"}}), ALIVE_SET.to_string());
    let vmap = |map: String| json!({"vmap": {"key": key.clone(), "data": format!("@{map}")}});
    let drop = json!({"drop": null});
    let site = lookup(json!({"meta": {"key": "nfproto"}}), SITE_SET.to_string());
    match r.step {
        Step::SiteLock => vec![alive, site, vmap(kind.lock_map())],
        Step::SiteDrop => vec![site, lookup(key.clone(), kind.keys_set()), drop],
        Step::SourceLock(i) => vec![
            alive,
            lookup(json!({"meta": {"key": "nfproto"}}), dispatch::source_set(i)),
            lookup(key.clone(), kind.source_keys_set(i)),
            vmap(kind.lock_map()),
        ],
        Step::SourceDrop(i) => vec![
            lookup(json!({"meta": {"key": "nfproto"}}), dispatch::source_set(i)),
            lookup(key.clone(), kind.source_keys_set(i)),
            drop,
        ],
        Step::Lock => vec![
            alive,
            lookup(key.clone(), kind.locked_set()),
            vmap(kind.lock_map()),
        ],
        Step::LockedDrop => vec![lookup(key.clone(), kind.locked_set()), drop],
        Step::Open => vec![alive, vmap(kind.open_map())],
        Step::OpenDrop => vec![lookup(key.clone(), kind.keys_set()), drop],
    }
}

/// Whether the base chains hold exactly the dispatch rules (with
/// `sources` QBER sections) and set `wg_handshakes` exactly WireGuard's
/// handshake shapes (every lockdown chain that lets handshakes through
/// passes what it holds); why not.
fn base_chains(l: &Listing, sources: usize) -> Result<(), String> {
    if l.dormant {
        return Err("the table is dormant: its base chains see no packet".into());
    }
    let shapes: HashSet<String> = (HANDSHAKE_SHAPES.iter())
        .map(|(len, word)| format!("{len} . {word}"))
        .collect();
    match l.sets.get(HANDSHAKE_SET) {
        None => return Err(format!("set {HANDSHAKE_SET} missing")),
        Some(have) if *have != shapes => {
            return Err(format!(
                "set {HANDSHAKE_SET} holds other than WireGuard's handshakes"
            ));
        }
        Some(_) => {}
    }
    for hook in ["input", "forward", "output"] {
        if l.hooks.get(hook).map(String::as_str) != Some(hook) {
            return Err(format!("base chain {hook} missing"));
        }
        let have = &l.chains[hook];
        let want = BaseRule::of_hook(hook, sources);
        if have.len() != want.len() {
            return Err(format!(
                "{hook}: {} rules where qkdpfd loaded {}",
                have.len(),
                want.len()
            ));
        }
        for (i, (h, w)) in have.iter().zip(want).enumerate() {
            let h: Vec<Value> = h.expr.iter().map(Expr::value).collect();
            if h != base_rule_json(w) {
                return Err(format!("{hook}: rule {} is not qkdpfd's", i + 1));
            }
        }
    }
    Ok(())
}

/// Judges every link of `links` (all of the table's: their QBER sections
/// are the base chains' source locks) against `table` (None: our table is
/// gone) and `guard` (the guard table, when listed), in the order of
/// `links`.
///
/// `loaded(link)`: qkdpfd loaded the link's lockdown chain since the
/// table was last built. An empty lockdown chain then was emptied behind
/// our back (not as loaded); otherwise it is a new link's, locked (see
/// [`judge_link_chains`]).
/// Whether the table's skeleton (its flags, base chains and handshake set)
/// is whole for `links`.
pub fn skeleton_whole(links: &[LinkTarget], table: &Listing) -> bool {
    base_chains(table, dispatch::sources(links).len()).is_ok()
}

pub fn judge(
    links: &[LinkTarget],
    table: Option<&Listing>,
    guard: Option<&Listing>,
    loaded: &dyn Fn(&str) -> bool,
) -> Vec<Readback> {
    let owned = dispatch::owned(links);
    let sources = dispatch::sources(links);
    let base = table.map(|t| base_chains(t, sources.len()));
    links
        .iter()
        .map(|link| {
            let keys = &owned[&link.name];
            let source = sources.iter().position(|s| **s == *link.qber);
            let state = match (table, &base) {
                (Some(t), Some(Ok(()))) => judge_link(link, keys, source, t, loaded(&link.name)),
                (Some(_), Some(Err(why))) => Observed::damaged(why.clone()),
                _ => Observed::damaged("table missing"),
            };
            let g = guard.is_some_and(|g| guarded(g, link));
            Readback { state, guarded: g }
        })
        .collect()
}

fn judge_link(
    link: &LinkTarget,
    keys: &LinkKeys,
    source: Option<usize>,
    t: &Listing,
    loaded: bool,
) -> Observed {
    // A key missing from a map would take its traffic past the link's
    // chains; one sent elsewhere, to another link's.
    for kind in Kind::ALL {
        for (map, chain) in [(kind.open_map(), "link"), (kind.lock_map(), "lock")] {
            let Some(elems) = t.maps.get(&map) else {
                return Observed::damaged(format!("map {map} missing"));
            };
            let want = format!("jump {chain}_{}", link.name);
            for key in keys.texts(kind) {
                if elems.get(&key) != Some(&want) {
                    return Observed::damaged(format!("map {map}: {key} does not {want}"));
                }
            }
        }
        // A key missing from keys_ would pass when its jump is not taken.
        if let Some(damage) = lacks(t, &kind.keys_set(), keys, kind) {
            return damage;
        }
        let set = kind.locked_set();
        if !t.sets.contains_key(&set) {
            return Observed::damaged(format!("set {set} missing"));
        }
        // A key missing from its section's set would escape a source lock.
        if let Some(damage) = source.and_then(|i| lacks(t, &kind.source_keys_set(i), keys, kind)) {
            return damage;
        }
    }
    judge_link_chains(link, keys, source, t, loaded)
}

/// The damage when set `set` is missing or lacks one of the link's keys
/// of `kind`.
fn lacks(t: &Listing, set: &str, keys: &LinkKeys, kind: Kind) -> Option<Observed> {
    let Some(have) = t.sets.get(set) else {
        return Some(Observed::damaged(format!("set {set} missing")));
    };
    let k = keys.texts(kind).into_iter().find(|k| !have.contains(k))?;
    Some(Observed::damaged(format!("set {set} lacks {k}")))
}

fn judge_link_chains(
    link: &LinkTarget,
    keys: &LinkKeys,
    source: Option<usize>,
    t: &Listing,
    loaded: bool,
) -> Observed {
    // The site lock sends every key of `keys_` (checked above) to its
    // lockdown chain, then drops it, as if each were in `locked_`; a source
    // lock likewise each key in its `src<i>_` sets.
    let by_source = source.filter(|i| lock_set_holds(t, &dispatch::source_set(*i)));
    let holds = match site_locked(t) {
        true => Holds::of(keys, |kind| keys.texts(kind).len()),
        false => Holds::of(keys, |kind| {
            let locked = &t.sets[&kind.locked_set()];
            let empty = Default::default();
            let of_source = match by_source {
                Some(i) => t.sets.get(&kind.source_keys_set(i)).unwrap_or(&empty),
                None => &empty,
            };
            keys.texts(kind)
                .iter()
                .filter(|k| locked.contains(*k) || of_source.contains(*k))
                .count()
        }),
    };
    // A link new to the table: its lockdown chain was made empty and every
    // key put in the `locked_` sets, in the skeleton's transaction. An empty
    // chain accepts nothing; the base chains' drop right after the jump,
    // checked in this same listing, takes all of its traffic. Closed as a
    // drop is, so the first start needs no load per link. One that
    // qkdpfd loaded and finds empty was tampered with: not as loaded.
    judge_shape(link, shape_judged(link, t, loaded), holds)
}

/// Whether set `site` holds both families: the base chains (checked in
/// the same listing) then lock every link. One family alone locks only
/// that family's traffic, which a link's own state does not depend on.
/// Without a config (`qkdpfd -L` when it does not parse): whether every
/// packet the table dispatches is dropped, and why not. The table awake,
/// its base chains exactly qkdpfd's (as many QBER sections as it has
/// `src<i>` sets), the site lock in, and each of `links`' chains holding
/// a drop alone: every key then takes its lockdown chain, which drops.
/// Which keys are a link's, only a config can say.
pub fn site_drops_all(t: &Listing, links: &[String]) -> Result<(), String> {
    let sources = (t.sets.keys())
        .filter(|s| {
            s.strip_prefix("src")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .count();
    base_chains(t, sources)?;
    if !site_locked(t) {
        return Err(format!("set {SITE_SET} does not hold both families"));
    }
    for name in links {
        for chain in [format!("link_{name}"), format!("lock_{name}")] {
            match t.chains.get(&chain).map(Vec::as_slice) {
                Some([rule]) if bare_drop(rule) => {}
                Some(_) => return Err(format!("{chain} holds more than a drop")),
                None => return Err(format!("{chain} missing")),
            }
        }
    }
    Ok(())
}

pub fn site_locked(t: &Listing) -> bool {
    lock_set_holds(t, SITE_SET)
}

/// Whether nf_proto set `set` (`site`, `src<i>`) holds both families.
fn lock_set_holds(t: &Listing, set: &str) -> bool {
    t.sets
        .get(set)
        .is_some_and(|s| s.contains("ipv4") && s.contains("ipv6"))
}

/// Which of a link's keys are in the `locked_` sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holds {
    /// Every key: all of the link's traffic takes its lockdown chain.
    All,
    None,
    /// Some keys only (their traffic locked, the rest open), or the link
    /// owns no key at all (its traffic is another link's).
    Part(String),
}

impl Holds {
    /// From a count of the link's keys found, per kind.
    fn of(keys: &LinkKeys, mut found: impl FnMut(Kind) -> usize) -> Holds {
        let total: usize = Kind::ALL.iter().map(|k| keys.texts(*k).len()).sum();
        let have: usize = Kind::ALL.into_iter().map(&mut found).sum();
        match (total, have) {
            (0, _) => Holds::Part("the link owns no key (each is an earlier link's)".into()),
            (t, h) if t == h => Holds::All,
            (_, 0) => Holds::None,
            (t, h) => Holds::Part(format!("{h} of its {t} keys in the locked_ sets")),
        }
    }

    /// From a test of each of the link's keys, as the kernel stores them.
    pub fn of_keys(keys: &LinkKeys, locked: impl Fn(Kind, &[u8]) -> bool) -> Holds {
        Holds::of(keys, |kind| {
            keys.bytes(kind).iter().filter(|k| locked(kind, k)).count()
        })
    }
}

/// How one of a link's chains reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chain {
    /// Tagged and whole: the open statements (`link_<l>`), or the lockdown
    /// statements ending with qkdpfd's drop (`lock_<l>`).
    Whole,
    /// Starting with a bare drop (the fallback).
    Drop,
    /// Missing, empty or not as loaded.
    Other,
}

/// The link's two chains, as a listing showed them: with the `locked_`
/// keys read back, enough to judge the link after a transaction that
/// changed nothing but the sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub link: Chain,
    pub lock: Chain,
}

/// The shape of the link's chains in `t`.
pub fn shape(link: &LinkTarget, t: &Listing) -> Shape {
    let chain = |prefix: &str| t.chains.get(&format!("{prefix}_{}", link.name));
    Shape {
        link: chain("link").map_or(Chain::Other, |r| Ends::of(r).link_chain()),
        lock: chain("lock").map_or(Chain::Other, |r| lock_shape(r)),
    }
}

/// The shape of the link's chains in `t` as [`judge`] reads them: a
/// lockdown chain that qkdpfd did not load (`loaded` false) and finds empty
/// is a new link's, closed as a drop is (see [`judge_link_chains`]).
pub fn shape_judged(link: &LinkTarget, t: &Listing, loaded: bool) -> Shape {
    let mut shape = shape(link, t);
    if !loaded
        && t.chains
            .get(&format!("lock_{}", link.name))
            .is_some_and(Vec::is_empty)
    {
        shape.lock = Chain::Drop;
    }
    shape
}

/// How `lock_<l>` reads, from its rules.
pub fn lock_shape(rules: &[Rule]) -> Chain {
    Ends::of(rules).lock_chain()
}

/// What the judges of a link's chain read of it: how many rules it has,
/// its first and its last (kept while a dump of a whole table streams by).
#[derive(Clone, Copy, Default)]
pub struct Ends<'a> {
    len: usize,
    first: Option<&'a Rule>,
    last: Option<&'a Rule>,
}

impl<'a> Ends<'a> {
    pub fn of(rules: &'a [Rule]) -> Ends<'a> {
        Ends {
            len: rules.len(),
            first: rules.first(),
            last: rules.last(),
        }
    }

    /// `link_<l>`: tagged open and whole, or starting with a bare drop.
    pub fn link_chain(&self) -> Chain {
        let whole =
            (self.first.and_then(|r| tagged(r, OPEN_TAG))).is_some_and(|n| self.len == n + 1);
        self.read(whole)
    }

    /// `lock_<l>`: the tag, its `n` statements, then qkdpfd's drop; or
    /// starting with a bare drop.
    pub fn lock_chain(&self) -> Chain {
        self.read(self.lock_whole())
    }

    fn lock_whole(&self) -> bool {
        let (Some(first), Some(last)) = (self.first, self.last) else {
            return false;
        };
        tagged(first, LOCK_TAG).is_some_and(|n| self.len == n + 2)
            && bare_drop(last)
            && last.comment.as_deref() == Some(DROP_TAG)
    }

    fn read(&self, whole: bool) -> Chain {
        match (whole, self.first.is_some_and(bare_drop)) {
            (true, _) => Chain::Whole,
            (false, true) => Chain::Drop,
            (false, false) => Chain::Other,
        }
    }
}

/// A link whose chains have `shape` and whose keys `holds` says.
pub fn judge_shape(link: &LinkTarget, shape: Shape, holds: Holds) -> Observed {
    let n = &link.name;
    let lock_closed = matches!(shape.lock, Chain::Whole | Chain::Drop);
    match holds {
        Holds::All if lock_closed => Observed::Locked,
        Holds::All => Observed::unknown(format!("locked, but lock_{n} is not as loaded")),
        Holds::None => match shape.link {
            Chain::Whole => Observed::Open,
            Chain::Drop => Observed::Locked,
            Chain::Other => Observed::unknown(format!("link_{n} is not as loaded")),
        },
        Holds::Part(_) if shape.link == Chain::Drop && lock_closed => Observed::Locked,
        Holds::Part(what) => Observed::unknown(format!("link {n}: {what}")),
    }
}

/// Whether `lock_<name>` in `t` is listed and whole (a backend that
/// preloaded it forgets what it loaded when it is not), and whether it
/// holds any rule (a new link's is empty).
pub fn lock_chain(t: &Listing, name: &str) -> (bool, bool) {
    t.chains
        .get(&format!("lock_{name}"))
        .map_or((false, false), |r| {
            (Ends::of(r).lock_whole(), !r.is_empty())
        })
}

/// Whether the guard table drops every key of `link`: its drop rules all
/// there, each kind's set holding the link's keys.
fn guarded(g: &Listing, link: &LinkTarget) -> bool {
    if g.dormant {
        return false;
    }
    let drops = g
        .chains
        .iter()
        .filter(|(c, _)| g.hooks.contains_key(*c))
        .flat_map(|(_, rules)| rules)
        .filter(|r| {
            r.comment.as_deref() == Some(GUARD_TAG)
                && r.expr.last().is_some_and(|v| is_verdict(v, "drop"))
        })
        .count();
    let keys = LinkKeys::all(link);
    drops == protected_matches().len()
        && Kind::ALL.into_iter().all(|kind| {
            let have = g.sets.get(&guard_set(kind));
            keys.texts(kind)
                .iter()
                .all(|k| have.is_some_and(|h| h.contains(k)))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dr() -> LinkTarget {
        LinkTarget::sample()
    }

    /// A chain's ends, for every length a judge tells apart.
    #[test]
    fn a_chains_ends_tell_its_shape() {
        let r = |e: &str, c: Option<&str>| Rule {
            expr: vec![Expr(e.to_string())],
            comment: c.map(String::from),
        };
        let drop = r(r#"{"drop":null}"#, None);
        let our_drop = r(r#"{"drop":null}"#, Some(DROP_TAG));
        let accept = r(r#"{"accept":null}"#, None);
        let lock1 = r(r#"{"counter":{}}"#, Some(&format!("{LOCK_TAG}1")));
        let open1 = r(r#"{"counter":{}}"#, Some(&format!("{OPEN_TAG}1")));
        let chains: Vec<Vec<Rule>> = vec![
            vec![],
            vec![drop.clone()],
            vec![open1.clone(), accept.clone()],
            vec![open1, accept.clone(), accept.clone()],
            vec![lock1.clone(), accept.clone(), our_drop.clone()],
            vec![lock1.clone(), accept.clone(), drop],
            vec![lock1, our_drop.clone()],
            vec![our_drop, accept],
        ];
        let mut read = Vec::new();
        for rules in &chains {
            let ends = Ends::of(rules);
            read.push((ends.link_chain(), ends.lock_chain()));
        }
        use Chain::*;
        assert_eq!(
            read,
            [
                (Other, Other),
                (Drop, Drop),
                (Whole, Other),
                (Other, Other),
                (Other, Whole),
                (Other, Other),
                (Other, Other),
                (Drop, Drop)
            ]
        );
    }

    fn rule(chain: &str, expr: &[Value], comment: Option<&str>) -> Value {
        let mut r =
            json!({"family": "inet", "table": "qkdpfd", "chain": chain, "handle": 1, "expr": expr});
        if let Some(c) = comment {
            r["comment"] = json!(c);
        }
        json!({ "rule": r })
    }

    const KEY4: &str = "198.51.100.2";

    /// A table as nft -j lists it for link dr: base chains and maps as the
    /// skeleton loads them, `locked` keys in the locked_ sets, then the
    /// link's chains; `edit` may change anything before it is printed.
    fn listing(
        link: Vec<Value>,
        lock: Vec<Value>,
        locked: bool,
        edit: impl FnOnce(&mut Vec<Value>),
    ) -> Listing {
        let mut items = vec![json!({"metainfo": {"version": "1.0.6"}})];
        for hook in ["input", "output", "forward"] {
            items.push(json!({"chain": {"family": "inet", "table": "qkdpfd", "name": hook, "hook": hook, "prio": -10}}));
        }
        let shapes: Vec<Value> = (HANDSHAKE_SHAPES.iter())
            .map(|(len, word)| json!({"concat": [len, word]}))
            .collect();
        items.push(json!({"set": {"name": HANDSHAKE_SET, "elem": shapes}}));
        let key4 = json!({"concat": [KEY4, 51820]});
        let elems = |kind: Kind| -> Vec<Value> {
            match kind {
                Kind::V4 => vec![key4.clone()],
                Kind::V6 => vec![],
                Kind::If => vec![json!("wg0")],
            }
        };
        for kind in Kind::ALL {
            let set: Vec<Value> = if locked { elems(kind) } else { vec![] };
            items.push(json!({"set": {"name": kind.locked_set(), "elem": set}}));
            items.push(json!({"set": {"name": kind.keys_set(), "elem": elems(kind)}}));
            for (map, chain) in [(kind.open_map(), "link_dr"), (kind.lock_map(), "lock_dr")] {
                let e: Vec<Value> = elems(kind)
                    .into_iter()
                    .map(|k| json!([k, {"jump": {"target": chain}}]))
                    .collect();
                items.push(json!({"map": {"name": map, "map": "verdict", "elem": e}}));
            }
        }
        for hook in ["input", "output", "forward"] {
            for r in BaseRule::of_hook(hook, 0) {
                items.push(rule(hook, &base_rule_json(r), None));
            }
        }
        items.push(json!({"chain": {"name": "link_dr"}}));
        items.push(json!({"chain": {"name": "lock_dr"}}));
        items.extend(link);
        items.extend(lock);
        edit(&mut items);
        parse(&json!({ "nftables": items }).to_string()).unwrap()
    }

    fn state(l: &Listing) -> Observed {
        judge(&[dr()], Some(l), None, &|_| false)[0].state.clone()
    }

    fn counter() -> Value {
        json!({"counter": {"packets": 0, "bytes": 0}})
    }

    fn open_rules() -> Vec<Value> {
        vec![
            rule("link_dr", &[counter()], Some("qkdpfd open n=1")),
            rule("link_dr", &[json!({"accept": null})], None),
        ]
    }

    fn lock_rules() -> Vec<Value> {
        vec![
            rule("lock_dr", &[counter()], Some("qkdpfd lockdown n=1")),
            rule("lock_dr", &[counter(), json!({"drop": null})], None),
            rule("lock_dr", &[json!({"drop": null})], Some(DROP_TAG)),
        ]
    }

    fn drop_rule(chain: &str) -> Vec<Value> {
        vec![rule(chain, &[json!({"drop": null})], Some(DROP_TAG))]
    }

    #[test]
    fn open_locked_and_fallback_drop() {
        let l = |locked| listing(open_rules(), lock_rules(), locked, |_| {});
        assert_eq!(state(&l(false)), Observed::Open);
        assert_eq!(state(&l(true)), Observed::Locked, "the keys in locked_");
        // The fallback: both chains a drop, whatever the sets hold.
        for locked in [false, true] {
            let f = listing(drop_rule("link_dr"), drop_rule("lock_dr"), locked, |_| {});
            assert_eq!(state(&f), Observed::Locked);
        }
        // The boot script: the link chain a drop, nothing locked.
        let boot = listing(drop_rule("link_dr"), vec![], false, |_| {});
        assert_eq!(state(&boot), Observed::Locked);
    }

    #[test]
    fn a_link_chain_keeps_its_shape_not_its_statements() {
        let l = listing(open_rules(), lock_rules(), false, |_| {});
        assert!(l.chains["input"].iter().all(|r| !r.expr.is_empty()));
        let (open, lock) = (&l.chains["link_dr"], &l.chains["lock_dr"]);
        assert_eq!((open.len(), lock.len()), (2, 3));
        assert!(open[0].expr.is_empty(), "the tag: its comment is enough");
        assert_eq!(open[0].comment.as_deref(), Some("qkdpfd open n=1"));
        assert!(open[1].expr.is_empty(), "accept");
        assert!(bare_drop(&lock[1]) && bare_drop(&lock[2]), "drops kept");
        assert_eq!(
            shape(&dr(), &l),
            Shape {
                link: Chain::Whole,
                lock: Chain::Whole
            }
        );
        assert!(parse(r#"{"other": 1}"#).is_err(), "no nftables list");
        assert!(parse(r#"{"nftables": [{"rule": 1}]}"#).is_err());
    }

    #[test]
    fn the_site_lock_locks_an_open_link() {
        let site = |elems: Value| {
            move |items: &mut Vec<Value>| {
                items.push(json!({"set": {"name": SITE_SET, "type": "nf_proto", "elem": elems}}))
            }
        };
        let l = listing(
            open_rules(),
            lock_rules(),
            false,
            site(json!(["ipv4", "ipv6"])),
        );
        assert!(site_locked(&l));
        assert_eq!(state(&l), Observed::Locked);
        // One family only: the link's own state decides.
        let l = listing(open_rules(), lock_rules(), false, site(json!(["ipv4"])));
        assert_eq!(state(&l), Observed::Open);
        let l = listing(open_rules(), lock_rules(), false, site(json!([])));
        assert_eq!(state(&l), Observed::Open);
        // A lockdown chain not as loaded proves nothing, site lock or not.
        let tampered = vec![rule("lock_dr", &[json!({"accept": null})], None)];
        let l = listing(open_rules(), tampered, false, site(json!(["ipv4", "ipv6"])));
        assert!(
            matches!(state(&l), Observed::Unknown { .. }),
            "{}",
            state(&l)
        );
        // Without its base rules the site set locks nothing: damaged.
        let l = listing(open_rules(), lock_rules(), false, |items| {
            site(json!(["ipv4", "ipv6"]))(items);
            items.retain(|i| {
                i["rule"]["expr"].to_string().matches("@site").count() == 0
                    || i["rule"]["chain"] != "input"
            });
        });
        assert!(
            matches!(state(&l), Observed::Unknown { skeleton: true, .. }),
            "{}",
            state(&l)
        );
    }

    #[test]
    fn a_new_link_is_locked_by_its_keys_and_an_empty_lock_chain() {
        // As the skeleton leaves a link new to the table: both chains
        // empty, every key in the locked_ sets.
        assert_eq!(
            state(&listing(vec![], vec![], true, |_| {})),
            Observed::Locked
        );
        // Not without the keys: its traffic would take the empty link chain.
        assert!(matches!(
            state(&listing(vec![], vec![], false, |_| {})),
            Observed::Unknown { .. }
        ));
        // Not once qkdpfd has loaded it: emptied behind its back.
        let l = listing(vec![], vec![], true, |_| {});
        assert!(matches!(
            judge(&[dr()], Some(&l), None, &|n| n == "dr")[0].state,
            Observed::Unknown { .. }
        ));
        // Not with anything in the lockdown chain but what qkdpfd loads.
        let one = vec![rule("lock_dr", &[json!({"accept": null})], None)];
        assert!(matches!(
            state(&listing(vec![], one, true, |_| {})),
            Observed::Unknown { .. }
        ));
        // Not when the base chains' drop after the jump is gone.
        let cut = listing(vec![], vec![], true, |items| {
            items.retain(|i| {
                !(i["rule"]["chain"] == "input"
                    && i["rule"]["expr"].to_string().contains("\"drop\""))
            })
        });
        assert!(matches!(
            state(&cut),
            Observed::Unknown { skeleton: true, .. }
        ));
    }

    #[test]
    fn a_shape_and_the_keys_alone_judge_a_link() {
        let l = listing(open_rules(), lock_rules(), false, |_| {});
        let sh = shape(&dr(), &l);
        assert_eq!(
            sh,
            Shape {
                link: Chain::Whole,
                lock: Chain::Whole
            }
        );
        let keys = dispatch::owned(&[dr()]).remove("dr").unwrap();
        let all = Holds::of_keys(&keys, |_, _| true);
        assert_eq!(all, Holds::All);
        let none = Holds::of_keys(&keys, |_, _| false);
        assert_eq!(none, Holds::None);
        let part = Holds::of_keys(&keys, |k, _| k == Kind::If);
        assert!(matches!(part, Holds::Part(_)));
        assert_eq!(judge_shape(&dr(), sh, all), Observed::Locked);
        assert_eq!(judge_shape(&dr(), sh, none), Observed::Open);
        assert!(matches!(
            judge_shape(&dr(), sh, part),
            Observed::Unknown {
                skeleton: false,
                ..
            }
        ));
        let lock_gone = Shape {
            lock: Chain::Other,
            ..sh
        };
        assert!(matches!(
            judge_shape(&dr(), lock_gone, Holds::All),
            Observed::Unknown { .. }
        ));
    }

    #[test]
    fn tampering_is_not_locked() {
        // The lock chain's drop taken away while locked.
        let mut cut = lock_rules();
        cut.pop();
        assert!(matches!(
            state(&listing(open_rules(), cut, true, |_| {})),
            Observed::Unknown { .. }
        ));
        // One key only in the locked_ sets.
        let part = listing(open_rules(), lock_rules(), false, |items| {
            for i in items.iter_mut() {
                if i["set"]["name"] == "locked_if" {
                    i["set"]["elem"] = json!(["wg0"]);
                }
            }
        });
        assert!(matches!(
            state(&part),
            Observed::Unknown {
                skeleton: false,
                ..
            }
        ));
        // An open chain with a rule added.
        let mut more = open_rules();
        more.push(rule("link_dr", &[json!({"accept": null})], None));
        assert!(matches!(
            state(&listing(more, lock_rules(), false, |_| {})),
            Observed::Unknown { .. }
        ));
    }

    #[test]
    fn base_chain_and_map_damage() {
        let damaged = |edit: &dyn Fn(&mut Vec<Value>)| {
            let l = listing(open_rules(), lock_rules(), false, |i| edit(i));
            match state(&l) {
                Observed::Unknown { skeleton, why } => {
                    assert!(skeleton, "{why}");
                    why
                }
                other => panic!("{other:?}"),
            }
        };
        // A foreign accept in a base chain.
        let why = damaged(&|i| i.push(rule("input", &[json!({"accept": null})], None)));
        assert!(why.contains("input: 19 rules"), "{why}");
        // A base rule's key changed (daddr for saddr).
        let why = damaged(&|i| {
            for x in i.iter_mut() {
                if x["rule"]["chain"] == "input" {
                    let t = x.to_string().replace("saddr", "daddr");
                    *x = serde_json::from_str(&t).unwrap();
                }
            }
        });
        assert!(why.contains("input: rule 1 is not qkdpfd's"), "{why}");
        // A data message's shape added to the handshakes', or the set gone.
        let why = damaged(&|i| {
            for x in i.iter_mut() {
                if x["set"]["name"] == "wg_handshakes" {
                    let e = x["set"]["elem"].as_array_mut().unwrap();
                    e.push(json!({"concat": [1440, 0x0400_0000]}));
                }
            }
        });
        assert!(why.contains("wg_handshakes holds other than"), "{why}");
        let why = damaged(&|i| i.retain(|x| x["set"]["name"] != "wg_handshakes"));
        assert!(why.contains("set wg_handshakes missing"), "{why}");
        // A key taken out of the open map, or sent to another chain.
        let why = damaged(&|i| {
            for x in i.iter_mut() {
                if x["map"]["name"] == "open_4" {
                    x["map"]["elem"] = json!([]);
                }
            }
        });
        assert!(why.contains("map open_4: 198.51.100.2 . 51820"), "{why}");
        let why = damaged(&|i| {
            for x in i.iter_mut() {
                if x["map"]["name"] == "lock_if" {
                    x["map"]["elem"] = json!([["wg0", {"jump": {"target": "link_dr"}}]]);
                }
            }
        });
        assert!(why.contains("lock_if: wg0 does not jump lock_dr"), "{why}");
        // A key taken out of the drop's set.
        let why = damaged(&|i| {
            for x in i.iter_mut() {
                if x["set"]["name"] == "keys_4" {
                    x["set"]["elem"] = json!([]);
                }
            }
        });
        assert!(
            why.contains("set keys_4 lacks 198.51.100.2 . 51820"),
            "{why}"
        );
        // A locked_ set deleted.
        let why = damaged(&|i| i.retain(|x| x["set"]["name"] != "locked_6"));
        assert!(why.contains("set locked_6 missing"), "{why}");
        // No table at all.
        assert!(matches!(
            judge(&[dr()], None, None, &|_| false)[0].state,
            Observed::Unknown { skeleton: true, .. }
        ));
    }

    #[test]
    fn guard_holds_every_key_and_every_drop() {
        let mut items = Vec::new();
        for hook in ["input", "output", "forward"] {
            items.push(json!({"chain": {"name": hook, "hook": hook}}));
        }
        items.push(json!({"set": {"name": "guard_4", "elem": [{"concat": [KEY4, 51820]}]}}));
        items.push(json!({"set": {"name": "guard_if", "elem": ["wg0"]}}));
        for (hook, _) in protected_matches() {
            items.push(rule(hook, &[json!({"drop": null})], Some(GUARD_TAG)));
        }
        let g = |items: &Vec<Value>| parse(&json!({ "nftables": items }).to_string()).unwrap();
        assert!(guarded(&g(&items), &dr()));
        let mut other = dr();
        other.wg_if = "wg1".into();
        assert!(!guarded(&g(&items), &other), "wg1 is not in guard_if");
        items.pop();
        assert!(!guarded(&g(&items), &dr()), "a drop missing");
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse("").is_err());
        assert!(parse("{\"x\": 1}").is_err());
        assert!(parse("{\"nftables\": [{\"rule\": {\"chain\": \"x\"}}]}").is_err());
    }
}
