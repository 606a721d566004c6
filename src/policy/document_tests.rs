//! Unit tests for the `policy.toml` parser.
use super::*;

const SAMPLE: &str = r#"serial = 42
not_after = "2027-01-31T00:00:00Z"

[defaults]
on_qber = "lockdown"
bands = [0.03, 0.05, 0.08, 0.11]
rotate = "300s"
max_key_age = "900s"
qber_lockdown = 0.08
trip_samples = 3
recover_below = 0.05
recover_after = "60s"
unlock = "auto"
qber_timeout = "10s"
peer_timeout = "900s"

[link.dr]
qber_lockdown = 0.06
unlock = "manual"

[rulesets]
open = "anchors/open"
lockdown = "anchors/lockdown"
"#;

fn errors(r: Reject) -> (String, Vec<String>) {
    let code = r.reason().to_string();
    match r {
        Reject::PolicySyntax { errors } | Reject::PolicyInvalid { errors } => (code, errors),
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn design_sample_parses_and_merges() {
    let (p, warnings) = parse(SAMPLE).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(p.serial, 42);
    assert_eq!(p.not_after, Some(1_801_353_600));
    assert_eq!(p.expired_action, ExpiredAction::Keep);
    assert_eq!(p.defaults, LinkPolicy::default());
    let dr = p.for_link("dr");
    assert_eq!(dr.qber_lockdown, 0.06);
    assert_eq!(dr.unlock, UnlockMode::Manual);
    assert_eq!(dr.rotate, Duration::from_secs(300));
    assert_eq!(p.for_link("other"), p.defaults);
    assert_eq!(
        p.rulesets.for_state(Enforcement::Lockdown),
        "anchors/lockdown"
    );
    let json = serde_json::to_string(&p).unwrap();
    assert_eq!(serde_json::from_str::<Policy>(&json).unwrap(), p);
}

#[test]
fn minimal_takes_defaults() {
    let (p, _) = parse("serial = 1\n[rulesets]\nopen = \"o\"\nlockdown = \"l\"\n").unwrap();
    assert_eq!(p.defaults, LinkPolicy::default());
    assert_eq!(p.not_after, None);
    assert!(p.links.is_empty());
}

#[test]
fn unknown_key_has_line_and_col() {
    let text = SAMPLE.replace("trip_samples = 3", "trip_samples = 3\n  colour = \"red\"");
    let (code, errs) = errors(parse(&text).unwrap_err());
    assert_eq!(code, "policy-syntax");
    assert_eq!(
        errs,
        ["policy.toml:11:3: unknown key \"colour\" in [defaults]"]
    );
    let (_, errs) = errors(parse(&format!("bogus = 1\n{SAMPLE}")).unwrap_err());
    assert_eq!(errs, ["policy.toml:1:1: unknown key \"bogus\""]);
}

#[test]
fn syntax_error_located() {
    let (code, errs) = errors(parse("serial = \n").unwrap_err());
    assert_eq!(code, "policy-syntax");
    assert!(errs[0].starts_with("policy.toml:1:"), "{errs:?}");
}

/// A key age or peer timeout no longer than a round's period plus its
/// jitter and the round itself would lock a healthy link between rounds:
/// said as a warning (a bundle valid before must still restore at start);
/// below rotate itself it is refused.
#[test]
fn key_age_and_peer_timeout_outlast_a_round() {
    let at = |age: &str, peer: &str| {
        SAMPLE
            .replace(
                "max_key_age = \"900s\"",
                &format!("max_key_age = \"{age}\""),
            )
            .replace(
                "peer_timeout = \"900s\"",
                &format!("peer_timeout = \"{peer}\""),
            )
    };
    let (_, warnings) = parse(&at("300s", "359s")).unwrap();
    let short: Vec<_> = (warnings.iter())
        .filter(|w| w.contains("a healthy link will lock between rounds"))
        .collect();
    assert_eq!(short.len(), 2, "{warnings:?}");
    assert!(
        short[0].contains("max_key_age 5m is shorter than 6m"),
        "{short:?}"
    );
    assert!(
        short[1].contains("peer_timeout 359s is shorter than 6m"),
        "{short:?}"
    );
    // Rotate 300 s: 330 s of jitter, 30 s for the round.
    let (_, warnings) = parse(&at("360s", "360s")).unwrap();
    assert!(
        !warnings.iter().any(|w| w.contains("between rounds")),
        "{warnings:?}"
    );
    let (_, errs) = errors(parse(&at("299s", "900s")).unwrap_err());
    assert!(
        errs[0].contains("max_key_age 299s must be at least rotate 5m"),
        "{errs:?}"
    );
}

#[test]
fn every_error_reported() {
    let text = SAMPLE
        .replace("rotate = \"300s\"", "rotate = \"60s\"")
        .replace("trip_samples = 3", "trip_samples = 0")
        .replace("recover_below = 0.05", "recover_below = 0.09");
    let (code, errs) = errors(parse(&text).unwrap_err());
    assert_eq!(code, "policy-invalid");
    // Three in [defaults], and [link.dr] breaks recover_below its own way.
    assert_eq!(errs.len(), 4, "{errs:?}");
    assert!(errs[0].starts_with("policy.toml:7:1: [defaults] rotate 1m must be at least 120s"));
    assert!(errs[3].contains("[link.dr] recover_below 0.09"), "{errs:?}");
}

#[test]
fn qber_limits() {
    let text = SAMPLE.replace("qber_lockdown = 0.08", "qber_lockdown = 0.12");
    let (code, errs) = errors(parse(&text).unwrap_err());
    assert_eq!(code, "policy-invalid");
    assert!(errs[0].contains("no secure key above 11 %"), "{errs:?}");
    let text = SAMPLE.replace("qber_lockdown = 0.08", "qber_lockdown = 0.1");
    let (_, warnings) = parse(&text).unwrap();
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].contains("[defaults] qber_lockdown 0.1 is above 0.094"));
}

#[test]
fn link_override_checked_after_merge() {
    let text = SAMPLE.replace("qber_lockdown = 0.06", "qber_lockdown = 0.04");
    let (code, errs) = errors(parse(&text).unwrap_err());
    assert_eq!(code, "policy-invalid");
    assert_eq!(errs.len(), 1);
    assert!(errs[0].contains("[link.dr] recover_below 0.05"), "{errs:?}");
    // recover_below is inherited: the section's header is the place.
    assert!(errs[0].starts_with("policy.toml:17:1: "), "{errs:?}");
    // The same for a built-in default under [defaults].
    let text = SAMPLE
        .replace("recover_below = 0.05\n", "")
        .replace("qber_lockdown = 0.08", "qber_lockdown = 0.04");
    let (_, errs) = errors(parse(&text).unwrap_err());
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("policy.toml:4:1: [defaults] recover_below"),
        "{errs:?}"
    );
    let text = SAMPLE.replace("[link.dr]", "[link.Dr]");
    assert_eq!(parse(&text).unwrap_err().reason(), "policy-syntax");
}

#[test]
fn inherited_problem_reported_once() {
    let text = SAMPLE.replace("peer_timeout = \"900s\"", "peer_timeout = \"10s\"");
    let (_, errs) = errors(parse(&text).unwrap_err());
    assert_eq!(errs.len(), 1, "{errs:?}");
}

#[test]
fn types_and_required() {
    for (from, to) in [
        ("serial = 42", "serial = \"42\""),
        ("rotate = \"300s\"", "rotate = 300"),
        (
            "bands = [0.03, 0.05, 0.08, 0.11]",
            "bands = [0.03, 0.05, 0.08]",
        ),
        ("on_qber = \"lockdown\"", "on_qber = \"panic\""),
        (
            "not_after = \"2027-01-31T00:00:00Z\"",
            "not_after = \"2027-01-31\"",
        ),
        ("lockdown = \"anchors/lockdown\"", ""),
        ("serial = 42", ""),
    ] {
        let r = parse(&SAMPLE.replace(from, to)).unwrap_err();
        assert_eq!(r.reason(), "policy-syntax", "{to}: {r}");
    }
    let r = parse(&SAMPLE.replace("serial = 42", "serial = 0")).unwrap_err();
    assert_eq!(r.reason(), "policy-invalid");
    let r = parse(&SAMPLE.replace("\"anchors/open\"", "\"../open\"")).unwrap_err();
    assert_eq!(r.reason(), "policy-invalid");
}

#[test]
fn bands_must_ascend() {
    let text = SAMPLE.replace("[0.03, 0.05, 0.08, 0.11]", "[0.03, 0.03, 0.08, 0.11]");
    assert_eq!(parse(&text).unwrap_err().reason(), "policy-invalid");
    let text = SAMPLE.replace("[0.03, 0.05, 0.08, 0.11]", "[0.03, 0.05, 0.08, 0.6]");
    assert_eq!(parse(&text).unwrap_err().reason(), "policy-invalid");
}

#[test]
fn utc_times() {
    assert_eq!(parse_utc("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(parse_utc("2000-03-01T00:00:00Z"), Some(951_868_800));
    assert_eq!(parse_utc("2024-02-29T12:34:56Z"), Some(1_709_210_096));
    for bad in [
        "2023-02-29T00:00:00Z",
        "2027-01-31T24:00:00Z",
        "2027-01-31 00:00:00Z",
        "2027-01-31T00:00:00+01:00",
        "1969-12-31T23:59:59Z",
        "2027-1-31T00:00:00Z",
        "+027-01-31T00:00:00Z",
    ] {
        assert_eq!(parse_utc(bad), None, "{bad}");
    }
    for t in [0, 951_868_800, 1_709_210_096, 1_801_353_600, 4_102_444_799] {
        assert_eq!(parse_utc(&format_utc(t)), Some(t));
    }
}
