//! Prometheus alerting and the Grafana dashboard (contrib/), against the
//! real tools (issue 12 item 5): `promtool check rules` and `promtool test
//! rules` on contrib/prometheus; then a real `prometheus` server scrapes a
//! running qkdpfd in its gateway namespace (two keyed gateways, qkdsim's
//! KMEs, wireguard-go, nftables), loads the contrib rules, and the
//! link-locked alert goes firing when an eavesdropper raises the QBER —
//! read from the server's HTTP API. Every panel query of
//! contrib/grafana/qkdpfd.json, its template variables substituted, is then
//! evaluated by that server and must return data.
//!
//! Needs `prometheus` and `promtool` (Debian's `prometheus` package) and,
//! for the server part, root. Under CI=true a missing tool or root fails.
#![cfg(target_os = "linux")]

mod common;

use common::bundle::require_tool;
use common::gateway::{policy, unix_now};
use common::pair::{A, B, Pair, has_reason, slow};
use serde_json::Value;
use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const RULES: &str = "contrib/prometheus/qkdpfd.rules.yml";
const RULES_TEST: &str = "contrib/prometheus/qkdpfd.rules.test.yml";
const DASHBOARD: &str = "contrib/grafana/qkdpfd.json";

/// Where Prometheus listens inside gateway A's namespace.
const PROM: &str = "127.0.0.1:9090";
/// The qkdpfd endpoint of gateway A (tests/common/pair.rs).
const TARGET: &str = "127.0.0.1:9107";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn output(c: &mut Command) -> Output {
    c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"))
}

/// The alert names of the rules file, in order.
fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(|n| n.trim().to_string())
        .collect()
}

#[test]
fn promtool_checks_the_rules_and_runs_their_unit_tests() {
    if !require_tool("promtool") {
        return;
    }
    let names = alert_names(&read(RULES));
    assert!(names.len() >= 10, "{names:?}");
    let check = output(
        Command::new("promtool")
            .args(["check", "rules"])
            .arg(repo().join(RULES)),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(check.status.success(), "promtool check rules:\n{text}");
    assert!(
        text.contains(&format!("SUCCESS: {} rules found", names.len())),
        "{text}"
    );
    // rule_files in the test file are relative to it.
    let test = output(
        Command::new("promtool")
            .args(["test", "rules"])
            .arg(repo().join(RULES_TEST)),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
    assert!(test.status.success(), "promtool test rules:\n{text}");
    assert!(text.contains("SUCCESS"), "{text}");
}

/// Every alert has a unit test where it fires and one where it must not:
/// an `alertname:` line followed by `exp_alerts: []` (silent) or by
/// `exp_alerts:` and its alerts (firing).
#[test]
fn every_alert_has_a_firing_and_a_silent_unit_test() {
    let tests = read(RULES_TEST);
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    let mut firing = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for (i, l) in lines.iter().enumerate() {
        let Some(name) = l.strip_prefix("alertname: ") else {
            continue;
        };
        match lines.get(i + 1) {
            Some(&"exp_alerts: []") => silent.insert(name.to_string()),
            Some(&"exp_alerts:") => firing.insert(name.to_string()),
            other => panic!("{name}: exp_alerts expected after alertname, got {other:?}"),
        };
    }
    for name in alert_names(&read(RULES)) {
        assert!(
            firing.contains(&name),
            "{name}: no unit test where it fires"
        );
        assert!(
            silent.contains(&name),
            "{name}: no unit test where it is silent"
        );
    }
}

/// The runbook the annotations point to: each alert in qkdpfd(8)'s ALERTS
/// section, and each description naming its entry.
#[test]
fn every_alert_has_a_runbook_entry_in_qkdpfd_8() {
    let man = read("man/qkdpfd.8");
    let section = man
        .split("\n.Sh ALERTS\n")
        .nth(1)
        .and_then(|s| s.split("\n.Sh ").next())
        .expect("qkdpfd.8 has an ALERTS section");
    let rules = read(RULES);
    // Folded YAML (`>-`) joins lines with one space.
    let flat = rules.split_whitespace().collect::<Vec<_>>().join(" ");
    let names = alert_names(&rules);
    for name in &names {
        assert!(
            section.contains(&format!(".It Sy {name}\n")),
            "{name} is not in qkdpfd(8) ALERTS"
        );
        assert!(
            [".", ")"]
                .iter()
                .any(|end| flat.contains(&format!("qkdpfd(8), ALERTS, {name}{end}"))),
            "{name}: its description does not point to qkdpfd(8) ALERTS"
        );
    }
    // And no entry for an alert that does not exist.
    for l in section.lines() {
        if let Some(n) = l.strip_prefix(".It Sy Qkdpfd") {
            let n = format!("Qkdpfd{n}");
            assert!(names.contains(&n), "qkdpfd(8) ALERTS lists {n}, not a rule");
        }
    }
}

/// Every metric the rules and the dashboard read is one the endpoint
/// renders (FAMILIES), so a rename cannot leave them reading nothing.
#[test]
fn the_rules_and_the_dashboard_read_only_exported_metrics() {
    let families: BTreeSet<&str> = qkdpfd::engine::metrics::FAMILIES
        .iter()
        .map(|(n, _, _)| *n)
        .collect();
    for (file, text) in [(RULES, read(RULES)), (DASHBOARD, read(DASHBOARD))] {
        let names = metric_names(&text);
        assert!(names.contains("qkdpfd_link_locked"), "{file}: {names:?}");
        for n in names.iter().filter(|n| n.starts_with("qkd")) {
            assert!(
                families.contains(n.as_str()),
                "{file} reads {n}, not a family"
            );
        }
    }
}

#[path = "prometheus/server.rs"]
mod server;
use server::{Server, alert, value_of};

/// The metric names an expression reads (`qkd_`/`qkdpfd_` names, `up`,
/// `ALERTS`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| {
            let ours = (w.starts_with("qkd_") || w.starts_with("qkdpfd_")) && !w.ends_with('_');
            ours || *w == "up" || *w == "ALERTS"
        })
        .map(str::to_string)
        .collect()
}

/// Grafana's substitution for a regex matcher (`=~"$var"`): the value with
/// regex metacharacters escaped, as a PromQL string body.
fn regex_value(v: &str) -> String {
    let mut out = String::new();
    for c in v.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push_str("\\\\");
        }
        out.push(c);
    }
    out
}

/// `expr` with the dashboard's variables and Grafana's built-ins replaced;
/// panics on any `$` left (an unknown variable).
fn substitute(expr: &str, vars: &[(&str, String)]) -> String {
    let mut e = expr.to_string();
    let mut all: Vec<(String, String)> = Vec::new();
    for (k, v) in vars {
        all.push((format!("${{{k}}}"), v.clone()));
        all.push((format!("${k}"), v.clone()));
    }
    for (k, v) in [
        ("__rate_interval", "1m"),
        ("__interval", "15s"),
        ("__range", "5m"),
        ("__range_s", "300"),
    ] {
        all.push((format!("${{{k}}}"), v.to_string()));
        all.push((format!("${k}"), v.to_string()));
    }
    // Longest first: `$__range_s` before `$__range`.
    all.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
    for (k, v) in &all {
        e = e.replace(k.as_str(), v);
    }
    assert!(!e.contains('$'), "unknown variable left in {expr:?}: {e}");
    e
}

#[test]
fn a_real_prometheus_fires_link_locked_and_answers_every_panel() {
    if !(require_tool("prometheus") && require_tool("promtool")) {
        return;
    }
    let queued = Instant::now();
    let Some(mut p) = Pair::new(
        "qp",
        "rotate = \"1h\"\nmax_key_age = \"2h\"\nno_jitter = true",
    ) else {
        return;
    };
    // Pair::new waits for the namespace tests' shared lock first.
    let (queued, t0) = (queued.elapsed(), Instant::now());
    p.start_sim();
    // A not_after three days ahead: the expiry panel and alert have a value.
    let not_after = unix_now() as u64 + 3 * 86400;
    let pol = policy(1, true, "").replacen(
        "serial = 1\n",
        &format!(
            "serial = 1\nnot_after = \"{}\"\n",
            qkdpfd::utc::format_utc(not_after)
        ),
        1,
    );
    p.start_both(&pol);
    p.wait("first key, both open", Duration::from_secs(20), |a, b| {
        a["keys"]["installed_epoch"].as_u64() >= Some(1)
            && a["keys"]["installed_epoch"] == b["keys"]["installed_epoch"]
            && a["enforcement"] == "open"
            && b["enforcement"] == "open"
    });
    let exported: BTreeSet<String> = p
        .metrics(A)
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect();
    assert!(exported.contains("qkdpfd_link_locked"), "{exported:?}");
    let read_by_contrib = metric_names(&format!("{}{}", read(RULES), read(DASHBOARD)));
    for name in read_by_contrib.iter().filter(|n| n.starts_with("qkd")) {
        assert!(
            exported.contains(name),
            "{name} is not exported: {exported:?}"
        );
    }

    let s = Server::start(&p, &p.ns(A));
    // The server scrapes the open link (its `up` and a value of 0).
    let sel = format!("qkdpfd_link_locked{{job=\"qkdpfd\",instance=\"{TARGET}\",link=\"dr\"}}");
    s.wait("a scrape of the open link", Duration::from_secs(20), |s| {
        let up = s.query(&format!("up{{job=\"qkdpfd\",instance=\"{TARGET}\"}}"));
        let locked = s.query(&sel);
        (up.len() == 1
            && value_of(&up[0]) == 1.0
            && locked.len() == 1
            && value_of(&locked[0]) == 0.0)
            .then_some(())
    });
    // The policy's limits the alerts compare against, as the server has
    // them: qber_lockdown 0.08 (common::gateway::policy) and the [testing]
    // max_key_age, 2 h stretched as the harness stretches it.
    let one = |expr: &str| {
        let v = s.query(expr);
        assert_eq!(v.len(), 1, "{expr}: {v:?}");
        value_of(&v[0])
    };
    let dr = format!("{{job=\"qkdpfd\",instance=\"{TARGET}\",link=\"dr\"}}");
    assert_eq!(one(&format!("qkdpfd_qber_threshold_ratio{dr}")), 0.08);
    assert_eq!(
        one(&format!("qkdpfd_key_max_age_seconds{dr}")),
        slow(Duration::from_secs(7200)).as_secs() as f64
    );
    // Every rule loaded and evaluates without error against the real series.
    let rules = s.api("/api/v1/rules", &[]);
    let loaded: Vec<&Value> = rules["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    let names = alert_names(&read(RULES));
    assert_eq!(loaded.len(), names.len(), "{rules}");
    s.wait("every rule evaluated", Duration::from_secs(10), |_| {
        let rules = s.api("/api/v1/rules", &[]);
        let all: Vec<Value> = rules["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        all.iter()
            .all(|r| {
                r["lastEvaluation"]
                    .as_str()
                    .is_some_and(|t| !t.starts_with("0001"))
            })
            .then_some(all)
    })
    .iter()
    .for_each(|r| {
        assert_eq!(
            r["health"], "ok",
            "rule {} evaluates with an error: {r}",
            r["name"]
        );
        assert!(
            matches!(
                r["labels"]["severity"].as_str(),
                Some("critical" | "warning")
            ),
            "{r}"
        );
        for a in ["summary", "description", "runbook_url"] {
            assert!(r["annotations"][a].is_string(), "{}: no {a}", r["name"]);
        }
    });
    // The open link: no QkdpfdLinkLocked, pending or firing.
    assert!(
        s.query("ALERTS{alertname=\"QkdpfdLinkLocked\"}").is_empty(),
        "{}",
        s.api("/api/v1/alerts", &[])
    );

    // The eavesdropper: the QBER rises on both ends' sources, both lock.
    for end in [A, B] {
        p.ctl_ok(end, &["sim", "eve", "dr", "1"]);
    }
    p.wait(
        "both ends locked for the QBER",
        Duration::from_secs(15),
        |a, b| {
            [a, b]
                .iter()
                .all(|s| s["enforcement"] == "lockdown" && has_reason(s, "qber"))
        },
    );
    let firing = s.wait("QkdpfdLinkLocked firing", Duration::from_secs(90), |s| {
        let v = s.query(
            "ALERTS{alertname=\"QkdpfdLinkLocked\",alertstate=\"firing\",job=\"qkdpfd\",link=\"dr\"}",
        );
        (!v.is_empty()).then_some(v)
    });
    assert_eq!(firing.len(), 1, "{firing:?}");
    assert_eq!(firing[0]["metric"]["instance"], TARGET);
    assert_eq!(firing[0]["metric"]["severity"], "critical");
    // The annotations, rendered by the server from the real series.
    let a = alert(&s, "QkdpfdLinkLocked", "firing").expect("in /api/v1/alerts");
    let desc = a["annotations"]["description"].as_str().unwrap_or_default();
    let summary = a["annotations"]["summary"].as_str().unwrap_or_default();
    assert!(summary.contains("link dr on 127.0.0.1:9107"), "{a}");
    assert!(desc.contains("Reasons: qber "), "{a}");
    assert!(desc.contains("qkdpfd(8), ALERTS, QkdpfdLinkLocked"), "{a}");
    // A bundle three days from not_after, expiry_warning 7 days by default.
    // Its value: the seconds left, computed by the server from the daemon's
    // qkdpfd_policy_not_after_seconds.
    let expiring = s.wait(
        "QkdpfdPolicyExpiringSoon firing",
        Duration::from_secs(10),
        |s| alert(s, "QkdpfdPolicyExpiringSoon", "firing"),
    );
    let left: f64 = expiring["value"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("alert value");
    let want = not_after as f64 - unix_now();
    assert!(
        (want - 300.0..=want + 1.0).contains(&left),
        "{left} s left, want about {want}: {expiring}"
    );

    // ---- the dashboard: every panel query returns data ----
    let dash: Value = serde_json::from_str(&read(DASHBOARD)).expect("dashboard JSON");
    assert!(dash["schemaVersion"].as_u64() >= Some(36), "schemaVersion");
    let vars = dash["templating"]["list"].as_array().expect("templating");
    let var = |n: &str| {
        vars.iter()
            .find(|v| v["name"] == n)
            .unwrap_or_else(|| panic!("no template variable {n}"))
    };
    assert_eq!(var("DS_PROMETHEUS")["type"], "datasource");
    assert_eq!(var("DS_PROMETHEUS")["query"], "prometheus");
    // Template variables: `label_values(SELECTOR, LABEL)`, through the
    // label-values API as Grafana asks it; each lists what this server has.
    let mut values = Vec::new();
    for (name, want) in [("instance", TARGET), ("link", "dr")] {
        let def = var(name)["definition"].as_str().expect("definition");
        assert_eq!(var(name)["query"]["query"].as_str(), Some(def));
        let inner = def
            .strip_prefix("label_values(")
            .and_then(|d| d.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{name}: {def}"));
        let (selector, label) = inner.rsplit_once(',').expect("selector, label");
        assert!(selector.starts_with("qkdpfd_link_locked"), "{def}");
        let selector = substitute(selector.trim(), &values);
        let got = s.api(
            &format!("/api/v1/label/{}/values", label.trim()),
            &[("match[]", &selector)],
        );
        let got: Vec<&str> = got
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        assert!(got.contains(&want), "{name}: {def} gives {got:?}");
        values.push((name, regex_value(want)));
    }
    let mut checked = 0;
    let ds = |v: &Value| v["uid"] == "${DS_PROMETHEUS}" && v["type"] == "prometheus";
    for panel in dash["panels"].as_array().expect("panels") {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap_or("?");
        assert!(ds(&panel["datasource"]), "{title}: datasource");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            assert!(ds(&t["datasource"]), "{title}: target datasource");
            let raw = t["expr"].as_str().expect("expr");
            let expr = substitute(raw, &values);
            let result = if t["instant"] == true {
                s.query(&expr)
            } else {
                s.query_range(&expr, 60)
            };
            assert!(
                !result.is_empty(),
                "panel {title:?}: {expr} returns no data"
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "{checked} panel queries evaluated");
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!(
            "prometheus test: {checked} panel queries; {:?} after {queued:?} waiting for the lock\n",
            t0.elapsed()
        )
        .as_bytes(),
    );
    drop(s);
}
