//! `policy.toml` (DESIGN §4) to a checked [`Policy`]. Parsed in the parent
//! (and `qkdctl`) only after the bundle's signature and digests verified;
//! the result crosses to the engine as JSON.
//!
//! Every error carries `policy.toml:line:col`, and one run reports all of
//! them. Unknown keys and wrong types are `policy-syntax`; values out of
//! range or inconsistent are `policy-invalid`.

use super::bundle::check_name;
use super::params::{LinkPolicy, OnQber, UnlockMode};
use super::reject::Reject;
use crate::lock::Enforcement;
pub use crate::utc::{format_utc, parse_utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use toml_edit::{ImDocument, Item, TableLike};

pub const POLICY_FILE: &str = "policy.toml";

/// What an active bundle does once `not_after` has passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExpiredAction {
    /// Stay in force, alert hourly.
    Keep,
    /// Lock every link.
    Lockdown,
}

/// Bundle-relative ruleset names without extension (the backend adds one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rulesets {
    pub open: String,
    pub lockdown: String,
}

impl Rulesets {
    pub fn for_state(&self, state: Enforcement) -> &str {
        match state {
            Enforcement::Open => &self.open,
            Enforcement::Lockdown => &self.lockdown,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub serial: u64,
    /// Unix seconds; `None` = never expires.
    pub not_after: Option<u64>,
    pub expired_action: ExpiredAction,
    pub defaults: LinkPolicy,
    /// `[link.NAME]` already merged over `defaults`.
    pub links: BTreeMap<String, LinkPolicy>,
    pub rulesets: Rulesets,
}

impl Policy {
    /// The parameters for a link: its merged override, else the defaults.
    pub fn for_link(&self, name: &str) -> LinkPolicy {
        self.links.get(name).unwrap_or(&self.defaults).clone()
    }
}

/// Secure key needs QBER below 11 % (Shor–Preskill), so no threshold above.
const QBER_MAX: f64 = 0.11;
/// With real error correction (f = 1.22) the key runs out at 9.4 %.
const QBER_WARN: f64 = 0.094;
pub const MIN_ROTATE: Duration = Duration::from_secs(120);
const MIN_QBER_TIMEOUT: Duration = Duration::from_millis(100);

/// Parses and checks `policy.toml`; returns the policy and its warnings.
pub fn parse(text: &str) -> Result<(Policy, Vec<String>), Reject> {
    let doc = ImDocument::parse(text).map_err(|e| Reject::PolicySyntax {
        errors: vec![format!(
            "{}: {}",
            locate(text, e.span().map(|s| s.start)),
            e.message().trim_end()
        )],
    })?;
    let mut p = Parser {
        text,
        syntax: Vec::new(),
        invalid: Vec::new(),
        warnings: Vec::new(),
    };
    let policy = p.document(doc.as_table());
    if !p.syntax.is_empty() {
        return Err(Reject::PolicySyntax { errors: p.syntax });
    }
    if !p.invalid.is_empty() {
        return Err(Reject::PolicyInvalid { errors: p.invalid });
    }
    let policy = policy.expect("no errors means a complete policy");
    Ok((policy, p.warnings))
}

/// `policy.toml:line:col` for a byte offset (1-based, columns in characters).
fn locate(text: &str, offset: Option<usize>) -> String {
    let Some(off) = offset else {
        return POLICY_FILE.to_string();
    };
    let before = &text[..off.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    format!("{POLICY_FILE}:{line}:{col}")
}

/// Where `key` of `t` is written, if it is.
fn span_of(t: &dyn TableLike, key: &str) -> Option<usize> {
    t.key(key).and_then(|k| k.span()).map(|s| s.start)
}

/// Where a table starts: its `[header]`, or an inline table's `{`.
fn table_span(item: &Item) -> Option<usize> {
    let span = match item {
        Item::Table(t) => t.span(),
        Item::Value(toml_edit::Value::InlineTable(t)) => t.span(),
        _ => None,
    };
    span.map(|s| s.start)
}

struct Parser<'t> {
    text: &'t str,
    syntax: Vec<String>,
    invalid: Vec<String>,
    warnings: Vec<String>,
}

/// A table and the name it is shown under (`[defaults]`, `[link.dr]`).
struct Section<'d> {
    name: String,
    table: &'d dyn TableLike,
    /// Where it starts: the place of a problem with a key it
    /// inherits (from `[defaults]` or the built-in values).
    at: Option<usize>,
}

impl<'t> Parser<'t> {
    fn at(&self, t: &dyn TableLike, key: &str) -> String {
        locate(self.text, span_of(t, key))
    }
    fn syntax_err(&mut self, t: &dyn TableLike, key: &str, msg: String) {
        let at = self.at(t, key);
        self.syntax.push(format!("{at}: {msg}"));
    }

    fn document(&mut self, root: &dyn TableLike) -> Option<Policy> {
        let mut serial = None;
        let mut not_after = None;
        let mut expired_action = ExpiredAction::Keep;
        let mut defaults = None;
        let mut links = None;
        let mut rulesets = None;
        for (key, item) in root.iter() {
            match key {
                "serial" => serial = self.serial(root, item),
                "not_after" => not_after = self.not_after(root, item),
                "expired_action" => {
                    let v = self.word(root, key, item, &["keep", "lockdown"]);
                    if v == Some("lockdown") {
                        expired_action = ExpiredAction::Lockdown;
                    }
                }
                "defaults" => defaults = self.table(root, key, item),
                "link" => links = self.table(root, key, item),
                "rulesets" => rulesets = self.table(root, key, item),
                _ => self.syntax_err(root, key, format!("unknown key \"{key}\"")),
            }
        }
        if serial.is_none() && root.get("serial").is_none() {
            self.syntax
                .push(format!("{POLICY_FILE}: serial is required"));
        }
        let defaults_at = root.get("defaults").and_then(table_span);
        let defaults = self.defaults(defaults, defaults_at);
        let links = self.links(links, &defaults);
        let rulesets = self.rulesets(rulesets);
        Some(Policy {
            serial: serial?,
            not_after,
            expired_action,
            defaults: defaults.0,
            links,
            rulesets: rulesets?,
        })
    }

    fn table<'d>(
        &mut self,
        t: &dyn TableLike,
        key: &str,
        item: &'d Item,
    ) -> Option<&'d dyn TableLike> {
        let tl = item.as_table_like();
        if tl.is_none() {
            self.syntax_err(t, key, format!("{key}: expected a table"));
        }
        tl
    }

    fn serial(&mut self, t: &dyn TableLike, item: &Item) -> Option<u64> {
        let Some(n) = item.as_integer() else {
            self.syntax_err(t, "serial", "serial: expected an integer".into());
            return None;
        };
        if n < 1 {
            let at = self.at(t, "serial");
            self.invalid
                .push(format!("{at}: serial must be 1 or more, found {n}"));
            return None;
        }
        Some(n as u64)
    }

    fn not_after(&mut self, t: &dyn TableLike, item: &Item) -> Option<u64> {
        let s = match (item.as_str(), item.as_datetime()) {
            (Some(s), _) => s.to_string(),
            (None, Some(dt)) => dt.to_string(),
            _ => String::new(),
        };
        let v = parse_utc(&s);
        if v.is_none() {
            self.syntax_err(
                t,
                "not_after",
                format!(
                    "not_after: expected a UTC time such as \"2027-01-31T00:00:00Z\", found {}",
                    item.to_string().trim()
                ),
            );
        }
        v
    }

    /// A string that must be one of `words`.
    fn word<'w>(
        &mut self,
        t: &dyn TableLike,
        key: &str,
        item: &Item,
        words: &[&'w str],
    ) -> Option<&'w str> {
        let found = item
            .as_str()
            .and_then(|s| words.iter().find(|w| **w == s).copied());
        if found.is_none() {
            let list = words
                .iter()
                .map(|w| format!("\"{w}\""))
                .collect::<Vec<_>>()
                .join(" or ");
            self.syntax_err(
                t,
                key,
                format!("{key}: expected {list}, found {}", item.to_string().trim()),
            );
        }
        found
    }

    fn number(&mut self, t: &dyn TableLike, key: &str, item: &Item) -> Option<f64> {
        let v = item
            .as_float()
            .or_else(|| item.as_integer().map(|i| i as f64));
        if v.is_none() {
            self.syntax_err(t, key, format!("{key}: expected a number"));
        }
        v
    }

    fn duration(&mut self, t: &dyn TableLike, key: &str, item: &Item) -> Option<Duration> {
        let r = match item.as_str() {
            Some(s) => crate::duration::parse(s),
            None => Err("expected a duration string such as \"300s\"".to_string()),
        };
        r.map_err(|e| self.syntax_err(t, key, format!("{key}: {e}")))
            .ok()
    }

    fn bands(&mut self, t: &dyn TableLike, item: &Item) -> Option<[f64; 4]> {
        let vals: Option<Vec<f64>> = item.as_array().map(|a| {
            a.iter()
                .filter_map(|v| v.as_float().or_else(|| v.as_integer().map(|i| i as f64)))
                .collect()
        });
        let arr = match vals {
            Some(v) if Some(v.len()) == item.as_array().map(|a| a.len()) => {
                <[f64; 4]>::try_from(v).ok()
            }
            _ => None,
        };
        if arr.is_none() {
            self.syntax_err(t, "bands", "bands: expected an array of 4 numbers".into());
        }
        arr
    }

    /// Applies the keys of one `[defaults]`/`[link.X]` table onto `lp`.
    fn link_keys(&mut self, sec: &Section<'_>, lp: &mut LinkPolicy) {
        let t = sec.table;
        for (key, item) in t.iter() {
            match key {
                "on_qber" => match self.word(t, key, item, &["lockdown", "hold", "alert"]) {
                    Some("lockdown") => lp.on_qber = OnQber::Lockdown,
                    Some("hold") => lp.on_qber = OnQber::Hold,
                    Some(_) => lp.on_qber = OnQber::Alert,
                    None => {}
                },
                "unlock" => match self.word(t, key, item, &["auto", "manual"]) {
                    Some("auto") => lp.unlock = UnlockMode::Auto,
                    Some(_) => lp.unlock = UnlockMode::Manual,
                    None => {}
                },
                "bands" => set(&mut lp.bands, self.bands(t, item)),
                "rotate" => set(&mut lp.rotate, self.duration(t, key, item)),
                "max_key_age" => set(&mut lp.max_key_age, self.duration(t, key, item)),
                "recover_after" => set(&mut lp.recover_after, self.duration(t, key, item)),
                "qber_timeout" => set(&mut lp.qber_timeout, self.duration(t, key, item)),
                "peer_timeout" => set(&mut lp.peer_timeout, self.duration(t, key, item)),
                "qber_lockdown" => set(&mut lp.qber_lockdown, self.number(t, key, item)),
                "recover_below" => set(&mut lp.recover_below, self.number(t, key, item)),
                "trip_samples" => match item.as_integer().and_then(|n| u32::try_from(n).ok()) {
                    Some(n) => lp.trip_samples = n,
                    None => self.syntax_err(
                        t,
                        key,
                        "trip_samples: expected an integer from 1 to 100".into(),
                    ),
                },
                _ => self.syntax_err(t, key, format!("unknown key \"{key}\" in {}", sec.name)),
            }
        }
    }

    /// `[defaults]` over `LinkPolicy::default()`, checked; the problems found
    /// are returned so links that inherit them do not repeat them.
    fn defaults(
        &mut self,
        table: Option<&dyn TableLike>,
        at: Option<usize>,
    ) -> (LinkPolicy, Vec<Problem>) {
        let mut lp = LinkPolicy::default();
        let Some(table) = table else {
            return (lp, Vec::new());
        };
        let sec = Section {
            name: "[defaults]".into(),
            table,
            at,
        };
        self.link_keys(&sec, &mut lp);
        let problems = check_link(&lp);
        self.report(&problems, &sec, &[]);
        (lp, problems)
    }

    fn links(
        &mut self,
        table: Option<&dyn TableLike>,
        defaults: &(LinkPolicy, Vec<Problem>),
    ) -> BTreeMap<String, LinkPolicy> {
        let mut out = BTreeMap::new();
        let Some(table) = table else {
            return out;
        };
        for (name, item) in table.iter() {
            if !valid_link_name(name) {
                self.syntax_err(
                    table,
                    name,
                    format!("link.{name}: a link name must match ^[a-z][a-z0-9_]{{0,30}}$"),
                );
                continue;
            }
            let Some(t) = self.table(table, name, item) else {
                continue;
            };
            let sec = Section {
                name: format!("[link.{name}]"),
                table: t,
                at: table_span(item),
            };
            let mut lp = defaults.0.clone();
            self.link_keys(&sec, &mut lp);
            let problems = check_link(&lp);
            self.report(&problems, &sec, &defaults.1);
            out.insert(name.to_string(), lp);
        }
        out
    }

    /// Records problems not already reported for the defaults.
    fn report(&mut self, problems: &[Problem], sec: &Section<'_>, already: &[Problem]) {
        for p in problems.iter().filter(|p| !already.contains(p)) {
            let at = locate(self.text, span_of(sec.table, p.key).or(sec.at));
            let line = format!("{at}: {} {}", sec.name, p.msg);
            if p.warning {
                self.warnings.push(line);
            } else {
                self.invalid.push(line);
            }
        }
    }

    fn rulesets(&mut self, t: Option<&dyn TableLike>) -> Option<Rulesets> {
        let Some(t) = t else {
            self.syntax.push(format!(
                "{POLICY_FILE}: [rulesets] with open and lockdown is required"
            ));
            return None;
        };
        let mut open = None;
        let mut lockdown = None;
        for (key, item) in t.iter() {
            let slot = match key {
                "open" => &mut open,
                "lockdown" => &mut lockdown,
                _ => {
                    self.syntax_err(t, key, format!("unknown key \"{key}\" in [rulesets]"));
                    continue;
                }
            };
            match item.as_str() {
                Some(s) if ruleset_name_ok(s) => *slot = Some(s.to_string()),
                Some(s) => {
                    let at = self.at(t, key);
                    self.invalid.push(format!("{at}: [rulesets] {key}: \"{s}\" is not a bundle file name such as \"anchors/open\""));
                }
                None => self.syntax_err(t, key, format!("[rulesets] {key}: expected a string")),
            }
        }
        for (key, v) in [("open", &open), ("lockdown", &lockdown)] {
            if v.is_none() && t.get(key).is_none() {
                self.syntax
                    .push(format!("{POLICY_FILE}: [rulesets] {key} is required"));
            }
        }
        Some(Rulesets {
            open: open?,
            lockdown: lockdown?,
        })
    }
}

/// A ruleset name is a bundle file name with either backend's extension
/// added (`.pf`, `.nft`): one that passes only bare would name a file no
/// bundle can hold (the policy_toml fuzz target found one 252 bytes long).
fn ruleset_name_ok(s: &str) -> bool {
    ["", ".pf", ".nft"]
        .iter()
        .all(|ext| check_name(&format!("{s}{ext}")).is_ok())
}

fn set<T>(slot: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *slot = v;
    }
}

/// `^[a-z][a-z0-9_]{0,30}$` (pf anchor, nft chain, label).
pub fn valid_link_name(s: &str) -> bool {
    crate::names::valid_link_name(s)
}

/// A range or consistency problem with one key of a merged link policy.
#[derive(Clone, Debug, PartialEq)]
struct Problem {
    key: &'static str,
    msg: String,
    warning: bool,
}

/// The errors (not the warnings) the parser would report for `lp`: none
/// for any policy [`parse`] returned (the fuzz target holds it to that).
pub fn link_errors(lp: &LinkPolicy) -> Vec<String> {
    check_link(lp)
        .into_iter()
        .filter(|p| !p.warning)
        .map(|p| format!("{}: {}", p.key, p.msg))
        .collect()
}

fn check_link(lp: &LinkPolicy) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut err = |key, msg: String| {
        out.push(Problem {
            key,
            msg,
            warning: false,
        })
    };
    let b = lp.bands;
    if b.iter().any(|v| !(*v > 0.0 && *v <= 0.5)) || b.windows(2).any(|w| w[0] >= w[1]) {
        err(
            "bands",
            format!("bands {b:?} must be 4 strictly ascending values in (0, 0.5]"),
        );
    }
    if lp.rotate < MIN_ROTATE {
        err(
            "rotate",
            format!(
                "rotate {} must be at least 120s (WireGuard rekeys every 120 s)",
                fmt_d(lp.rotate)
            ),
        );
    }
    if lp.max_key_age < lp.rotate {
        err(
            "max_key_age",
            format!(
                "max_key_age {} must be at least rotate {}",
                fmt_d(lp.max_key_age),
                fmt_d(lp.rotate)
            ),
        );
    }
    let q = lp.qber_lockdown;
    if !(q > 0.0 && q <= QBER_MAX) {
        err(
            "qber_lockdown",
            format!("qber_lockdown {q} must be in (0, 0.11]: no secure key above 11 %"),
        );
    }
    if !(1..=100).contains(&lp.trip_samples) {
        err(
            "trip_samples",
            format!("trip_samples {} must be from 1 to 100", lp.trip_samples),
        );
    }
    if !(lp.recover_below > 0.0 && lp.recover_below < q) {
        err(
            "recover_below",
            format!(
                "recover_below {} must be above 0 and below qber_lockdown {q}",
                lp.recover_below
            ),
        );
    }
    if lp.qber_timeout < MIN_QBER_TIMEOUT {
        err(
            "qber_timeout",
            format!(
                "qber_timeout {} must be at least 100ms",
                fmt_d(lp.qber_timeout)
            ),
        );
    }
    if lp.peer_timeout < lp.rotate {
        err(
            "peer_timeout",
            format!(
                "peer_timeout {} must be at least rotate {}",
                fmt_d(lp.peer_timeout),
                fmt_d(lp.rotate)
            ),
        );
    }
    // A warning, not an error: bundles that were valid before this check
    // must still be restored at start (an error there holds every link).
    let floor = outlasts_a_round(lp.rotate);
    for (key, value) in [
        ("max_key_age", lp.max_key_age),
        ("peer_timeout", lp.peer_timeout),
    ] {
        if value >= lp.rotate && value < floor {
            out.push(Problem {
                key,
                msg: format!(
                    "{key} {} is shorter than {} (rotate {} with its 10 % jitter and 30 s for \
                     the round): a healthy link will lock between rounds",
                    fmt_d(value),
                    fmt_d(floor),
                    fmt_d(lp.rotate)
                ),
                warning: true,
            });
        }
    }
    if q > QBER_WARN && q <= QBER_MAX {
        out.push(Problem {
            key: "qber_lockdown",
            msg: format!("qber_lockdown {q} is above 0.094: with practical error correction no secure key is left above 9.4 %"),
            warning: true,
        });
    }
    out
}

/// The shortest `max_key_age` or `peer_timeout` a period of `rotate`
/// allows: a round comes up to 10 % after its period (the jitter) and takes
/// its time; with no more than `rotate`, about half the rounds of a healthy
/// link would lock it for `key-stale` or `peer-lost` first.
fn outlasts_a_round(rotate: Duration) -> Duration {
    rotate + rotate / 10 + Duration::from_secs(30)
}

fn fmt_d(d: Duration) -> String {
    crate::duration::format(d)
}

#[cfg(test)]
#[path = "document_tests.rs"]
mod tests;
