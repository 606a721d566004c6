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
//! - locked: its chain starts with `goto lock_<l>` and `lock_<l>` is tagged,
//!   whole and ends with the drop; or its chain starts with a bare `drop`
//!   (the fallback, [`crate::ruleset::nft::clear_script`]);
//! - open: its chain is tagged open and whole;
//! - unknown otherwise — and "damaged" when a base-chain pair of the link is
//!   missing or a base chain holds anything else (a foreign `accept` ahead
//!   of our jump would pass the link's traffic).

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::super::{Observed, Readback};
use crate::ruleset::LinkTarget;
use crate::ruleset::nft::{ALIVE_SET, DROP_TAG, GUARD_TAG, LOCK_TAG, OPEN_TAG, protected_matches};

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

/// `meta nfproto @alive`, as nft -j lists it.
fn is_alive_match(e: &Expr) -> bool {
    let v = e.value();
    let Some(m) = v.get("match") else {
        return false;
    };
    m.get("left")
        .and_then(|l| l.get("meta"))
        .and_then(|k| k.get("key"))
        .and_then(Value::as_str)
        == Some("nfproto")
        && m.get("right").and_then(Value::as_str) == Some(&format!("@{ALIVE_SET}"))
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
    if first.expr.len() == 1
        && jump_target(&first.expr[0], "goto").as_deref() == Some(lock.as_str())
    {
        return match t.chains.get(&lock).map(|r| lock_chain_whole(r)) {
            Some(true) => Observed::Locked,
            Some(false) => Observed::unknown(format!("{lock} altered")),
            None => Observed::unknown(format!("{lock} missing")),
        };
    }
    if bare_drop(first) {
        return Observed::Locked;
    }
    match tagged(first, OPEN_TAG) {
        Some(n) if rules.len() == n + 1 => Observed::Open,
        Some(n) => Observed::unknown(format!(
            "{chain} holds {} rules, tagged for {n}",
            rules.len() - 1
        )),
        None => Observed::unknown(format!("{chain} altered")),
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

    fn open_rules() -> Vec<String> {
        vec![
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
