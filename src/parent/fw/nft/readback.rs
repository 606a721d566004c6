//! Reading nftables back (DESIGN §5 "enforcement is what the kernel
//! holds"): `nft -j list table inet <t>` parsed into chains of rules, and
//! each link judged against what qkdpfd must have put there.
//!
//! nft prints rules in its own normal form, so the text we loaded is not
//! compared with the text we read. Instead every chain qkdpfd loads carries
//! a tag rule whose comment names its state and how many rules follow
//! (`qkdpfd open n=4`, `qkdpfd lockdown n=1`), the lockdown chain ends with
//! qkdpfd's own `drop`, and the base chains hold nothing but jump-then-drop
//! pairs with identical matches. A link is:
//!
//! - locked: its chain starts with the switch (`meta nfproto @locked_<l>
//!   goto lock_<l>`), `locked_<l>` holds both families and `lock_<l>` is
//!   tagged, whole and ends with the drop (an unconditional `goto lock_<l>`,
//!   as earlier versions loaded it, counts the same); or its chain starts
//!   with a bare `drop` (the fallback, [`crate::ruleset::nft::clear_script`]);
//! - open: its chain is the switch, then tagged open and whole, and
//!   `locked_<l>` is empty;
//! - unknown otherwise — and "damaged" when a base-chain pair of the link is
//!   missing or a base chain holds anything else (a foreign `accept` ahead
//!   of our jump would pass the link's traffic).

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::super::{Observed, Readback};
use crate::ruleset::LinkTarget;
use crate::ruleset::nft::{
    ALIVE_SET, DROP_TAG, GUARD_TAG, LOCK_TAG, OPEN_TAG, locked_set, protected_matches,
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
    /// Set name -> its elements as nft prints them.
    pub sets: HashMap<String, Vec<String>>,
}

#[derive(serde::Deserialize)]
struct Top<'a> {
    #[serde(borrow)]
    nftables: Vec<Item<'a>>,
}

/// One element of the listing; others (metainfo, table, set) are skipped.
#[derive(serde::Deserialize)]
struct Item<'a> {
    #[serde(borrow)]
    chain: Option<ChainJ<'a>>,
    #[serde(borrow)]
    rule: Option<RuleJ<'a>>,
    #[serde(borrow)]
    set: Option<SetJ<'a>>,
}

#[derive(serde::Deserialize)]
struct SetJ<'a> {
    #[serde(borrow)]
    name: std::borrow::Cow<'a, str>,
    /// Plain addresses print as strings; anything else (a range, a
    /// prefix) is kept as its JSON text and matches no configured address.
    #[serde(borrow, default)]
    elem: Vec<&'a serde_json::value::RawValue>,
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
    #[serde(borrow)]
    expr: Vec<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    comment: Option<std::borrow::Cow<'a, str>>,
}

/// Parses `nft -j list table` output. Anything but the expected shape is
/// an error: a listing we cannot read proves nothing.
pub fn parse(json: &str) -> Result<Listing, String> {
    let top: Top<'_> = serde_json::from_str(json).map_err(|e| format!("nft -j output: {e}"))?;
    let mut out = Listing::default();
    for item in top.nftables {
        if let Some(c) = item.chain {
            out.chains.entry(c.name.to_string()).or_default();
            if let Some(h) = c.hook {
                out.hooks.insert(c.name.to_string(), h.to_string());
            }
        } else if let Some(s) = item.set {
            let elems = s
                .elem
                .iter()
                .map(|e| {
                    serde_json::from_str::<String>(e.get()).unwrap_or_else(|_| e.get().to_string())
                })
                .collect();
            out.sets.insert(s.name.to_string(), elems);
        } else if let Some(r) = item.rule {
            let expr = r.expr.iter().map(|e| Expr(e.get().to_string())).collect();
            out.chains
                .entry(r.chain.to_string())
                .or_default()
                .push(Rule {
                    expr,
                    comment: r.comment.map(|c| c.to_string()),
                });
        }
    }
    Ok(out)
}

fn is_verdict(e: &Expr, verdict: &str) -> bool {
    e.value()
        .as_object()
        .is_some_and(|o| o.len() == 1 && o.get(verdict).is_some_and(Value::is_null))
}

fn jump_target(e: &Expr, kind: &str) -> Option<String> {
    e.value()
        .get(kind)?
        .get("target")?
        .as_str()
        .map(String::from)
}

/// `meta nfproto @<set>`, as nft -j lists it.
fn is_nfproto_match(e: &Expr, set: &str) -> bool {
    let v = e.value();
    let Some(m) = v.get("match") else {
        return false;
    };
    m.get("op").and_then(Value::as_str) == Some("==")
        && m.get("left")
            .and_then(|l| l.get("meta"))
            .and_then(|k| k.get("key"))
            .and_then(Value::as_str)
            == Some("nfproto")
        && m.get("right").and_then(Value::as_str) == Some(&format!("@{set}"))
}

fn is_alive_match(e: &Expr) -> bool {
    is_nfproto_match(e, ALIVE_SET)
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

/// The base-chain pairs per link: (link, hook) -> count of jump-then-drop
/// pairs, and the hooks holding anything else.
fn base_pairs(l: &Listing) -> (HashMap<(String, String), usize>, Vec<String>) {
    let mut pairs = HashMap::new();
    let mut foreign = Vec::new();
    for (chain, hook) in &l.hooks {
        let rules = &l.chains[chain];
        let mut i = 0;
        while i < rules.len() {
            let pair = rules.get(i + 1).and_then(|next| {
                let (jv, jm) = rules[i].expr.split_last()?;
                let (dv, dm) = next.expr.split_last()?;
                // The jump also needs the dead-man switch's heartbeat.
                let (alive, jm) = jm.split_last()?;
                let target = jump_target(jv, "jump")?;
                (is_alive_match(alive) && jm == dm && is_verdict(dv, "drop")).then_some(target)
            });
            match pair.as_deref().and_then(|t| t.strip_prefix("link_")) {
                Some(link) => {
                    *pairs.entry((link.to_string(), hook.clone())).or_insert(0) += 1;
                    i += 2;
                }
                None => {
                    foreign.push(hook.clone());
                    i += 1;
                }
            }
        }
    }
    (pairs, foreign)
}

/// Judges every link of `links` against `table` (None: our table is gone)
/// and `guard` (the guard table, when listed).
pub fn judge(
    links: &[LinkTarget],
    table: Option<&Listing>,
    guard: Option<&Listing>,
) -> BTreeMap<String, Readback> {
    let guarded = guard.map(guarded_links).unwrap_or_default();
    let base = table.map(base_pairs);
    links
        .iter()
        .map(|link| {
            let state = match (table, &base) {
                (Some(t), Some((pairs, foreign))) => judge_link(link, t, pairs, foreign),
                _ => Observed::damaged("table missing"),
            };
            let g = guarded.get(&link.name) == Some(&protected_matches(link).len());
            (link.name.clone(), Readback { state, guarded: g })
        })
        .collect()
}

fn judge_link(
    link: &LinkTarget,
    t: &Listing,
    pairs: &HashMap<(String, String), usize>,
    foreign: &[String],
) -> Observed {
    let mut want: HashMap<&str, usize> = HashMap::new();
    for (hook, _) in protected_matches(link) {
        *want.entry(hook).or_insert(0) += 1;
    }
    for (hook, n) in &want {
        let have = pairs
            .get(&(link.name.clone(), hook.to_string()))
            .copied()
            .unwrap_or(0);
        if have != *n {
            return Observed::damaged(format!(
                "{hook}: {have} of {n} jump-and-drop rules for link_{}",
                link.name
            ));
        }
        if foreign.iter().any(|f| f == hook) {
            return Observed::damaged(format!("{hook}: a rule qkdpfd did not put there"));
        }
    }
    // An address taken out of a peer set would take its traffic past the
    // link's chain: the sets must hold exactly the configured addresses.
    let want4: Vec<String> = link.addrs4.iter().map(|a| a.to_string()).collect();
    let want6: Vec<String> = link.addrs6.iter().map(|a| a.to_string()).collect();
    for (set, want) in [("peer4", want4), ("peer6", want6)] {
        let name = format!("{set}_{}", link.name);
        let mut have = match t.sets.get(&name) {
            Some(h) => h.clone(),
            None => return Observed::damaged(format!("set {name} missing")),
        };
        let mut want = want;
        have.sort();
        want.sort();
        if have != want {
            return Observed::damaged(format!("set {name} holds {have:?}, not {want:?}"));
        }
    }
    // Without it the flip to lockdown has nothing to fill.
    let set = locked_set(link);
    if !t.sets.contains_key(&set) {
        return Observed::damaged(format!("set {set} missing"));
    }
    judge_chains(link, t)
}

/// The link's own chains only (`link_<l>`, `lock_<l>`): what a read-back
/// right after a flip looks at; the base chains are judged every tick.
pub fn judge_chains(link: &LinkTarget, t: &Listing) -> Observed {
    let chain = format!("link_{}", link.name);
    let Some(rules) = t.chains.get(&chain) else {
        return Observed::damaged(format!("{chain} missing"));
    };
    let Some(first) = rules.first() else {
        return Observed::unknown(format!("{chain} empty"));
    };
    let lock = format!("lock_{}", link.name);
    let lock_chain = || match t.chains.get(&lock).map(|r| lock_chain_whole(r)) {
        Some(true) => Observed::Locked,
        Some(false) => Observed::unknown(format!("{lock} altered")),
        None => Observed::unknown(format!("{lock} missing")),
    };
    let goto_lock = |e: &Expr| jump_target(e, "goto").as_deref() == Some(lock.as_str());
    if bare_drop(first) {
        return Observed::Locked;
    }
    if let [g] = first.expr.as_slice()
        && goto_lock(g)
    {
        return lock_chain();
    }
    if !is_switch(link, first) {
        return Observed::unknown(format!("{chain} altered"));
    }
    let set = locked_set(link);
    let Some(elems) = t.sets.get(&set) else {
        return Observed::damaged(format!("set {set} missing"));
    };
    let holds = Holds::of_names(elems);
    if holds == Holds::Both {
        return lock_chain();
    }
    match switch_shape(link, &rules[1..]) {
        Ok(shape) => judge_shape(link, shape, holds),
        Err(why) => why,
    }
}

/// `meta nfproto @locked_<l> goto lock_<l>`: the link's switch.
fn is_switch(link: &LinkTarget, r: &Rule) -> bool {
    let lock = format!("lock_{}", link.name);
    matches!(r.expr.as_slice(), [m, g]
        if is_nfproto_match(m, &locked_set(link))
            && jump_target(g, "goto").as_deref() == Some(lock.as_str()))
}

/// What a link's `locked_` set holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holds {
    /// ipv4 and ipv6: every packet of the link takes its lockdown chain.
    Both,
    Empty,
    /// Anything else (one family only: its traffic takes the open rules).
    Other(String),
}

impl Holds {
    fn of_names(elems: &[String]) -> Holds {
        let mut e: Vec<&str> = elems.iter().map(String::as_str).collect();
        e.sort_unstable();
        match e.as_slice() {
            ["ipv4", "ipv6"] => Holds::Both,
            [] => Holds::Empty,
            _ => Holds::Other(format!("{elems:?}")),
        }
    }

    /// From the keys read over netlink (NFPROTO_IPV4 = 2, NFPROTO_IPV6 = 10).
    pub fn of_keys(keys: &[u8]) -> Holds {
        let mut k = keys.to_vec();
        k.sort_unstable();
        match k.as_slice() {
            [2, 10] => Holds::Both,
            [] => Holds::Empty,
            _ => Holds::Other(format!("{keys:?}")),
        }
    }
}

/// A link chain headed by its switch, as a verified listing showed it,
/// with `lock_<l>` whole: with the set read back, enough to judge the link
/// after a transaction that changed nothing but the set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// The switch, then the open statements, tagged and whole.
    SwitchOpen,
    /// The switch alone (a lockdown's slow path).
    SwitchOnly,
}

/// The shape of `link_<l>` in `t`, if it is headed by the switch and
/// `lock_<l>` is whole; None otherwise.
pub fn shape(link: &LinkTarget, t: &Listing) -> Option<Shape> {
    let rules = t.chains.get(&format!("link_{}", link.name))?;
    if !is_switch(link, rules.first()?) || !lock_chain_ok(t, &link.name) {
        return None;
    }
    switch_shape(link, &rules[1..]).ok()
}

/// What follows the switch.
fn switch_shape(link: &LinkTarget, rest: &[Rule]) -> Result<Shape, Observed> {
    let chain = format!("link_{}", link.name);
    match rest.first().and_then(|r| tagged(r, OPEN_TAG)) {
        Some(n) if rest.len() == n + 1 => Ok(Shape::SwitchOpen),
        Some(n) => Err(Observed::unknown(format!(
            "{chain} holds {} rules, tagged for {n}",
            rest.len() - 1
        ))),
        None if rest.is_empty() => Ok(Shape::SwitchOnly),
        None => Err(Observed::unknown(format!("{chain} altered"))),
    }
}

/// A link whose chains have `shape` (and a whole `lock_<l>`) and whose
/// set `holds` this.
pub fn judge_shape(link: &LinkTarget, shape: Shape, holds: Holds) -> Observed {
    match (holds, shape) {
        (Holds::Both, _) => Observed::Locked,
        (Holds::Empty, Shape::SwitchOpen) => Observed::Open,
        (Holds::Empty, Shape::SwitchOnly) => {
            Observed::unknown(format!("link_{} holds only the switch", link.name))
        }
        (Holds::Other(what), _) => {
            Observed::unknown(format!("set {} holds {what}", locked_set(link)))
        }
    }
}

/// Whether `lock_<name>` is listed and whole; a backend that preloaded it
/// forgets what it loaded when it is not.
pub fn lock_chain_ok(t: &Listing, name: &str) -> bool {
    t.chains
        .get(&format!("lock_{name}"))
        .is_some_and(|r| lock_chain_whole(r))
}

/// `lock_<l>`: the tag, its `n` statements, then qkdpfd's drop.
fn lock_chain_whole(rules: &[Rule]) -> bool {
    let (Some(first), Some(last)) = (rules.first(), rules.last()) else {
        return false;
    };
    tagged(first, LOCK_TAG).is_some_and(|n| rules.len() == n + 2)
        && bare_drop(last)
        && last.comment.as_deref() == Some(DROP_TAG)
}

/// Guard drops per link (each rule commented `qkdpfd guard <link>`).
fn guarded_links(g: &Listing) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for (chain, rules) in &g.chains {
        if !g.hooks.contains_key(chain) {
            continue;
        }
        for r in rules {
            let link = r.comment.as_deref().and_then(|c| c.strip_prefix(GUARD_TAG));
            if let (Some(link), Some(v)) = (link, r.expr.last())
                && is_verdict(v, "drop")
            {
                *out.entry(link.to_string()).or_insert(0) += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dr() -> LinkTarget {
        LinkTarget::sample()
    }

    fn rule(chain: &str, expr: &str, comment: Option<&str>) -> String {
        let c = comment.map_or(String::new(), |c| format!(", \"comment\": \"{c}\""));
        format!(
            "{{\"rule\": {{\"family\": \"inet\", \"table\": \"qkdpfd\", \"chain\": \"{chain}\", \"handle\": 1{c}, \"expr\": [{expr}]}}}}"
        )
    }

    const ALIVE: &str = "{\"match\": {\"op\": \"==\", \"left\": {\"meta\": {\"key\": \"nfproto\"}}, \"right\": \"@alive\"}}";
    const M: &str = "{\"match\": {\"op\": \"==\", \"left\": {\"meta\": {\"key\": \"iifname\"}}, \"right\": \"wg0\"}}";

    /// A listing as nft prints it: the skeleton for dr plus `link` and `lock` rules.
    fn listing(link: &[String], lock: &[String], extra_base: Option<String>) -> String {
        listing_with(link, lock, extra_base, &[])
    }

    /// The same with `locked_dr` holding `locked`.
    fn listing_with(
        link: &[String],
        lock: &[String],
        extra_base: Option<String>,
        locked: &[&str],
    ) -> String {
        let mut items = vec![
            "{\"metainfo\": {\"version\": \"1.0.6\"}}".to_string(),
            "{\"table\": {\"family\": \"inet\", \"name\": \"qkdpfd\", \"handle\": 1}}".to_string(),
        ];
        for hook in ["input", "output", "forward"] {
            items.push(format!(
                "{{\"chain\": {{\"family\": \"inet\", \"table\": \"qkdpfd\", \"name\": \"{hook}\", \"handle\": 1, \"type\": \"filter\", \"hook\": \"{hook}\", \"prio\": -10, \"policy\": \"accept\"}}}}"
            ));
        }
        items.push("{\"set\": {\"family\": \"inet\", \"name\": \"peer4_dr\", \"table\": \"qkdpfd\", \"type\": \"ipv4_addr\", \"handle\": 1, \"elem\": [\"198.51.100.2\"]}}".into());
        items.push("{\"set\": {\"family\": \"inet\", \"name\": \"peer6_dr\", \"table\": \"qkdpfd\", \"type\": \"ipv6_addr\", \"handle\": 2}}".into());
        let elem = if locked.is_empty() {
            String::new()
        } else {
            format!(", \"elem\": {}", serde_json::to_string(locked).unwrap())
        };
        items.push(format!("{{\"set\": {{\"family\": \"inet\", \"name\": \"locked_dr\", \"table\": \"qkdpfd\", \"type\": \"nf_proto\", \"handle\": 3{elem}}}}}"));
        items.push("{\"chain\": {\"family\": \"inet\", \"table\": \"qkdpfd\", \"name\": \"link_dr\", \"handle\": 2}}".into());
        items.push("{\"chain\": {\"family\": \"inet\", \"table\": \"qkdpfd\", \"name\": \"lock_dr\", \"handle\": 3}}".into());
        if let Some(x) = extra_base {
            items.push(x);
        }
        for (hook, _) in protected_matches(&dr()) {
            items.push(rule(
                hook,
                &format!("{M}, {ALIVE}, {{\"jump\": {{\"target\": \"link_dr\"}}}}"),
                None,
            ));
            items.push(rule(hook, &format!("{M}, {{\"drop\": null}}"), None));
        }
        items.extend(link.iter().cloned());
        items.extend(lock.iter().cloned());
        format!("{{\"nftables\": [{}]}}", items.join(", "))
    }

    fn state(json: &str) -> Observed {
        let l = parse(json).unwrap();
        judge(&[dr()], Some(&l), None)["dr"].state.clone()
    }

    const SWITCH: &str = "{\"match\": {\"op\": \"==\", \"left\": {\"meta\": {\"key\": \"nfproto\"}}, \"right\": \"@locked_dr\"}}, {\"goto\": {\"target\": \"lock_dr\"}}";

    fn open_rules() -> Vec<String> {
        vec![
            rule("link_dr", SWITCH, Some("qkdpfd switch")),
            rule(
                "link_dr",
                "{\"counter\": {\"packets\": 0, \"bytes\": 0}}",
                Some("qkdpfd open n=1"),
            ),
            rule("link_dr", &format!("{M}, {{\"accept\": null}}"), None),
        ]
    }

    fn lock_rules() -> Vec<String> {
        vec![
            rule(
                "lock_dr",
                "{\"counter\": {\"packets\": 0, \"bytes\": 0}}",
                Some("qkdpfd lockdown n=1"),
            ),
            rule(
                "lock_dr",
                "{\"counter\": {\"packets\": 3, \"bytes\": 9}}, {\"drop\": null}",
                None,
            ),
            rule("lock_dr", "{\"drop\": null}", Some(DROP_TAG)),
        ]
    }

    fn goto() -> String {
        rule("link_dr", "{\"goto\": {\"target\": \"lock_dr\"}}", None)
    }

    #[test]
    fn open_locked_and_fallback_drop() {
        assert_eq!(
            state(&listing(&open_rules(), &lock_rules(), None)),
            Observed::Open
        );
        let mut diverted = vec![goto()];
        diverted.extend(open_rules());
        assert_eq!(
            state(&listing(&diverted, &lock_rules(), None)),
            Observed::Locked
        );
        let dropped = vec![rule("link_dr", "{\"drop\": null}", Some(DROP_TAG))];
        assert_eq!(state(&listing(&dropped, &[], None)), Observed::Locked);
        // The flip: both families in locked_dr, the chains untouched.
        let both = ["ipv6", "ipv4"];
        assert_eq!(
            state(&listing_with(&open_rules(), &lock_rules(), None, &both)),
            Observed::Locked
        );
        // The slow path's chain: the switch alone.
        let switch = vec![rule("link_dr", SWITCH, Some("qkdpfd switch"))];
        assert_eq!(
            state(&listing_with(&switch, &lock_rules(), None, &both)),
            Observed::Locked
        );
    }

    #[test]
    fn a_shape_and_the_set_alone_judge_a_link() {
        let l = |link: &[String], lock: &[String]| parse(&listing(link, lock, None)).unwrap();
        let switch = vec![rule("link_dr", SWITCH, Some("qkdpfd switch"))];
        assert_eq!(
            shape(&dr(), &l(&open_rules(), &lock_rules())),
            Some(Shape::SwitchOpen)
        );
        assert_eq!(
            shape(&dr(), &l(&switch, &lock_rules())),
            Some(Shape::SwitchOnly)
        );
        assert_eq!(
            shape(&dr(), &l(&open_rules(), &[])),
            None,
            "lock chain gone"
        );
        let mut extra = open_rules();
        extra.push(rule("link_dr", "{\"accept\": null}", None));
        assert_eq!(shape(&dr(), &l(&extra, &lock_rules())), None);
        let dropped = vec![rule("link_dr", "{\"drop\": null}", Some(DROP_TAG))];
        assert_eq!(shape(&dr(), &l(&dropped, &lock_rules())), None);
        assert_eq!(Holds::of_keys(&[10, 2]), Holds::Both);
        assert_eq!(Holds::of_keys(&[]), Holds::Empty);
        assert!(matches!(Holds::of_keys(&[2]), Holds::Other(_)));
        assert!(matches!(Holds::of_keys(&[2, 10, 10]), Holds::Other(_)));
        let j = |s, h| judge_shape(&dr(), s, h);
        assert_eq!(j(Shape::SwitchOpen, Holds::Both), Observed::Locked);
        assert_eq!(j(Shape::SwitchOnly, Holds::Both), Observed::Locked);
        assert_eq!(j(Shape::SwitchOpen, Holds::Empty), Observed::Open);
        assert!(matches!(
            j(Shape::SwitchOnly, Holds::Empty),
            Observed::Unknown { .. }
        ));
        assert!(matches!(
            j(Shape::SwitchOpen, Holds::of_keys(&[10])),
            Observed::Unknown { .. }
        ));
    }

    #[test]
    fn a_switch_proves_only_what_its_set_and_chains_hold() {
        let unknown = |json: String| {
            assert!(
                matches!(state(&json), Observed::Unknown { .. }),
                "{:?}",
                state(&json)
            )
        };
        // One family only: the other's traffic takes the open rules.
        unknown(listing_with(&open_rules(), &lock_rules(), None, &["ipv4"]));
        unknown(listing_with(&open_rules(), &lock_rules(), None, &["ipv6"]));
        // Locked by the set into an emptied or damaged lockdown chain.
        let both = ["ipv4", "ipv6"];
        unknown(listing_with(&open_rules(), &[], None, &both));
        let mut lock = lock_rules();
        lock.pop();
        unknown(listing_with(&open_rules(), &lock, None, &both));
        // Open by the set, but the chain is only the switch.
        let switch = vec![rule("link_dr", SWITCH, Some("qkdpfd switch"))];
        unknown(listing(&switch, &lock_rules(), None));
        // The switch looking at another set, or negated.
        let other = open_rules()
            .into_iter()
            .map(|r| r.replace("@locked_dr", "@locked_hq"))
            .collect::<Vec<_>>();
        unknown(listing_with(&other, &lock_rules(), None, &both));
        let negated = open_rules()
            .into_iter()
            .map(|r| r.replacen("\"op\": \"==\", \"left\": {\"meta\": {\"key\": \"nfproto\"}}, \"right\": \"@locked", "\"op\": \"!=\", \"left\": {\"meta\": {\"key\": \"nfproto\"}}, \"right\": \"@locked", 1))
            .collect::<Vec<_>>();
        assert!(negated[0].contains("!="));
        unknown(listing(&negated, &lock_rules(), None));
        // The set gone: the skeleton is damaged.
        let json = listing(&open_rules(), &lock_rules(), None);
        let mut l = parse(&json).unwrap();
        l.sets.remove("locked_dr");
        assert!(matches!(
            judge(&[dr()], Some(&l), None)["dr"].state,
            Observed::Unknown { skeleton: true, .. }
        ));
    }

    #[test]
    fn tampering_is_not_locked() {
        // goto into an emptied lock chain: the base chain's drop still
        // holds, but the link's own chains no longer prove it.
        let diverted = vec![goto()];
        assert!(matches!(
            state(&listing(&diverted, &[], None)),
            Observed::Unknown {
                skeleton: false,
                ..
            }
        ));
        // The lock chain's own drop removed.
        let mut lock = lock_rules();
        lock.pop();
        assert!(matches!(
            state(&listing(&diverted, &lock, None)),
            Observed::Unknown { .. }
        ));
        // A rule added to an open chain.
        let mut open = open_rules();
        open.push(rule("link_dr", "{\"accept\": null}", None));
        assert!(matches!(
            state(&listing(&open, &lock_rules(), None)),
            Observed::Unknown {
                skeleton: false,
                ..
            }
        ));
        // An empty link chain proves nothing by itself.
        assert!(matches!(
            state(&listing(&[], &lock_rules(), None)),
            Observed::Unknown {
                skeleton: false,
                ..
            }
        ));
    }

    #[test]
    fn base_chain_damage() {
        // A foreign accept in a base chain.
        let extra = rule("input", "{\"accept\": null}", None);
        assert!(matches!(
            state(&listing(&open_rules(), &lock_rules(), Some(extra))),
            Observed::Unknown { skeleton: true, .. }
        ));
        // A drop of the pairs gone.
        let json = listing(&open_rules(), &lock_rules(), None);
        let mut l = parse(&json).unwrap();
        l.chains.get_mut("output").unwrap().pop();
        assert!(matches!(
            judge(&[dr()], Some(&l), None)["dr"].state,
            Observed::Unknown { skeleton: true, .. }
        ));
        // An address taken out of the peer set.
        let json = listing(&open_rules(), &lock_rules(), None)
            .replace(", \"elem\": [\"198.51.100.2\"]", "");
        assert!(matches!(
            state(&json),
            Observed::Unknown { skeleton: true, .. }
        ));
        // No table at all.
        assert!(matches!(
            judge(&[dr()], None, None)["dr"].state,
            Observed::Unknown { skeleton: true, .. }
        ));
    }

    #[test]
    fn guard_counts_every_match() {
        let mut items = vec![
            "{\"chain\": {\"family\": \"inet\", \"table\": \"g\", \"name\": \"input\", \"hook\": \"input\"}}".to_string(),
        ];
        let n = protected_matches(&dr()).len();
        for _ in 0..n {
            items.push(rule(
                "input",
                &format!("{M}, {{\"drop\": null}}"),
                Some("qkdpfd guard dr"),
            ));
        }
        let g = parse(&format!("{{\"nftables\": [{}]}}", items.join(", "))).unwrap();
        let rb = judge(&[dr()], None, Some(&g));
        assert!(rb["dr"].guarded);
        assert!(rb["dr"].locked());
        items.pop();
        let g = parse(&format!("{{\"nftables\": [{}]}}", items.join(", "))).unwrap();
        assert!(!judge(&[dr()], None, Some(&g))["dr"].guarded);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse("").is_err());
        assert!(parse("{\"x\": 1}").is_err());
        assert!(parse("{\"nftables\": [{\"rule\": {\"chain\": \"x\"}}]}").is_err());
    }
}
