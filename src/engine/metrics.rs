//! The optional Prometheus endpoint (DESIGN §8), run by the engine.
//!
//! The engine fills a [`Snapshot`] — plain numbers and link names — after
//! each tick and each event that changes a link, and publishes it on a
//! `tokio::sync::watch` channel; [`http::serve`] answers `GET /metrics` with
//! [`render`] of the latest one. Nothing here touches the engine's state,
//! the parent, the firewall or a key: the endpoint is read-only and cannot
//! change anything, and a `Snapshot` holds no key material (no PSK, no QKD
//! key, no key_ID, no certificate) — keep it that way, so that the endpoint
//! is safe to expose to a monitoring network. It has no TLS and no
//! authentication: bind it to loopback or a management address.
//!
//! Names: HIP-71's where it has one (a naming convenience; HIP-71 is a
//! draft), `qkdpfd_*` otherwise. HIP-71 metrics carry `link_id`, ours
//! `link`; both hold qkdpfd's link name (not the DESIGN §6 link_id hash,
//! not the QBER source's `qber_id`).
//!
//! - `qkd_qber{link_id}`: last fresh QBER reading (fraction, 0..1).
//! - `qkd_qber_threshold_exceeded_total{link_id,severity="critical"}`: trips,
//!   i.e. `trip_samples` consecutive fresh readings at or above
//!   `qber_lockdown`, whatever `on_qber` did. qkdpfd has one threshold, so
//!   severity is always HIP-71's "critical" (its suspend band); a fixed label
//!   keeps the counter one series (a label following the band at each trip
//!   would split it and break `rate()`). The band itself is
//!   `qkdpfd_qber_band`.
//! - `qkd_key_generation_halted_total{link_id}`: times the link stopped
//!   installing fresh keys (an `on_qber = "hold"` trip or a `key_stale`).
//! - `qkdpfd_*`: see [`FAMILIES`] for every name, type and help text.
//!
//! A value the engine does not know (no reading yet, no policy, no key yet)
//! is omitted, never rendered as NaN. Text exposition format 0.0.4.

pub mod http;

use crate::lock::{Band, LockReason, Reasons};
use std::time::{Duration, Instant};

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the endpoint shows, as of `taken`.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// When the engine filled it: ages grow by the time since (see [`render_at`]).
    pub taken: Instant,
    /// Wall-clock start of the daemon, seconds since the epoch.
    pub started_unix: u64,
    /// Serial of the active bundle; None without one.
    pub policy_serial: Option<u64>,
    /// The active bundle is past its `not_after`.
    pub policy_expired: bool,
    /// The active bundle's `not_after`, seconds since the epoch.
    pub policy_not_after: Option<u64>,
    /// `[policy] expiry_warning` in seconds (with an active bundle).
    pub policy_expiry_warning: Option<u64>,
    pub links: Vec<LinkMetrics>,
}

/// One link's numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkMetrics {
    /// The link's name from qkdpfd.conf.
    pub link: String,
    /// Last fresh QBER reading.
    pub qber: Option<f64>,
    pub band: Option<Band>,
    /// `qber_lockdown` of the active policy.
    pub threshold: Option<f64>,
    /// The firewall holds the link in lockdown (the parent's enforcement).
    pub locked: bool,
    /// The parent could not make the kernel show a wanted lockdown.
    pub lockdown_failed: bool,
    /// The ladder's last rung removed the link's WireGuard peer.
    pub wg_peer_removed: bool,
    /// Engine and parent reasons together.
    pub reasons: Reasons,
    /// Trips since start (`LinkStatus::trips`).
    pub trips: u64,
    /// Age of the last fresh reading, as of `Snapshot::taken`.
    pub sample_age_secs: Option<f64>,
    /// None on a link without key agreement: the key metrics are omitted.
    pub keys: Option<KeyMetrics>,
}

/// Key agreement numbers of one link (issue 3).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeyMetrics {
    /// Age of the installed PSK, as of `Snapshot::taken`; None before the first.
    pub age_secs: Option<f64>,
    /// `max_key_age` of the link's policy; None without a policy.
    pub max_age_secs: Option<f64>,
    /// Epoch of the installed PSK (`RotateStatus::installed`): equal on both
    /// gateways once a rotation converged.
    pub epoch: Option<u64>,
    pub rotations_ok: u64,
    pub rotations_failed: u64,
    /// `stored_key_count` from the KME's last status answer.
    pub kme_stored_keys: Option<u64>,
    /// The KME's `keys_low`.
    pub kme_keys_low: Option<u64>,
    /// Holds and key-stale events since start.
    pub generation_halted: u64,
}

impl Snapshot {
    /// Before the engine's first fill: no policy, no links.
    pub fn empty(started_unix: u64, taken: Instant) -> Snapshot {
        Snapshot {
            taken,
            started_unix,
            policy_serial: None,
            policy_expired: false,
            policy_not_after: None,
            policy_expiry_warning: None,
            links: Vec::new(),
        }
    }
}

impl LinkMetrics {
    /// A link the engine knows nothing about yet.
    pub fn new(link: &str) -> LinkMetrics {
        LinkMetrics {
            link: link.to_string(),
            qber: None,
            band: None,
            threshold: None,
            locked: true,
            lockdown_failed: false,
            wg_peer_removed: false,
            reasons: Reasons::EMPTY,
            trips: 0,
            sample_age_secs: None,
            keys: None,
        }
    }
}

/// Metric type in a `# TYPE` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        }
    }
}

/// Every family [`render`] writes, in output order: name, type, help.
pub const FAMILIES: [(&str, Kind, &str); 22] = [
    (
        "qkd_qber",
        Kind::Gauge,
        "Last fresh QBER reading (fraction).",
    ),
    (
        "qkd_qber_threshold_exceeded_total",
        Kind::Counter,
        "QBER trips: trip_samples consecutive readings at or above qber_lockdown.",
    ),
    (
        "qkd_key_generation_halted_total",
        Kind::Counter,
        "Times the link stopped installing fresh keys (QBER hold or key-stale).",
    ),
    (
        "qkdpfd_link_locked",
        Kind::Gauge,
        "1 if the firewall holds the link in lockdown.",
    ),
    (
        "qkdpfd_lockdown_failed",
        Kind::Gauge,
        "1 if a lockdown is wanted and the kernel read back does not show it.",
    ),
    (
        "qkdpfd_wg_peer_removed",
        Kind::Gauge,
        "1 if no firewall step held and the link's WireGuard peer was removed.",
    ),
    (
        "qkdpfd_link_lock_reason",
        Kind::Gauge,
        "1 for each lock reason the link currently has.",
    ),
    (
        "qkdpfd_qber_band",
        Kind::Gauge,
        "1 for the band of the last fresh QBER reading.",
    ),
    (
        "qkdpfd_qber_threshold_ratio",
        Kind::Gauge,
        "qber_lockdown of the active policy (fraction).",
    ),
    (
        "qkdpfd_qber_sample_age_seconds",
        Kind::Gauge,
        "Seconds since the last fresh QBER reading.",
    ),
    (
        "qkdpfd_key_age_seconds",
        Kind::Gauge,
        "Seconds since the current PSK was installed.",
    ),
    (
        "qkdpfd_key_max_age_seconds",
        Kind::Gauge,
        "max_key_age of the active policy: the key age at which the link locks (key-stale).",
    ),
    ("qkdpfd_key_epoch", Kind::Gauge, "Epoch of the current PSK."),
    (
        "qkdpfd_rotations_total",
        Kind::Counter,
        "PSK rotation rounds by result.",
    ),
    (
        "qkdpfd_kme_stored_keys",
        Kind::Gauge,
        "stored_key_count from the KME's last status answer.",
    ),
    (
        "qkdpfd_kme_stored_keys_low",
        Kind::Gauge,
        "keys_low of the link's KME: a stored_key_count below it is low.",
    ),
    (
        "qkdpfd_policy_serial",
        Kind::Gauge,
        "Serial of the active policy bundle.",
    ),
    (
        "qkdpfd_policy_expired",
        Kind::Gauge,
        "1 if the active policy bundle is past not_after.",
    ),
    (
        "qkdpfd_policy_not_after_seconds",
        Kind::Gauge,
        "not_after of the active policy bundle, seconds since the epoch.",
    ),
    (
        "qkdpfd_policy_expiry_warning_seconds",
        Kind::Gauge,
        "expiry_warning: how long before not_after the daemon warns.",
    ),
    (
        "qkdpfd_start_time_seconds",
        Kind::Gauge,
        "Start time of the daemon, seconds since the epoch.",
    ),
    ("qkdpfd_links", Kind::Gauge, "Links configured."),
];

const BANDS: [Band; 5] = [
    Band::Nominal,
    Band::Degraded,
    Band::Warning,
    Band::Critical,
    Band::Compromised,
];

/// The whole exposition of `s`, ages as the snapshot holds them.
pub fn render(s: &Snapshot) -> String {
    render_aged(s, Duration::ZERO)
}

/// The exposition as of `now`: ages grow by `now - s.taken`.
pub fn render_at(s: &Snapshot, now: Instant) -> String {
    render_aged(s, now.saturating_duration_since(s.taken))
}

fn render_aged(s: &Snapshot, extra: Duration) -> String {
    let mut out = String::with_capacity(512 + s.links.len() * 1024);
    for (name, kind, help) in FAMILIES {
        family_header(&mut out, name, kind, help);
        family_samples(&mut out, s, name, extra.as_secs_f64());
    }
    out
}

fn family_header(out: &mut String, name: &str, kind: Kind, help: &str) {
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    out.push_str(&escape_help(help));
    out.push_str("\n# TYPE ");
    out.push_str(name);
    out.push(' ');
    out.push_str(kind.as_str());
    out.push('\n');
}

/// The samples of one family: a flat dispatch on its name.
fn family_samples(out: &mut String, s: &Snapshot, name: &str, extra: f64) {
    match name {
        "qkdpfd_policy_serial" => {
            if let Some(v) = s.policy_serial {
                sample(out, name, &[], &v.to_string());
            }
        }
        "qkdpfd_policy_expired" => sample(out, name, &[], flag(s.policy_expired)),
        "qkdpfd_policy_not_after_seconds" => opt(out, name, &[], s.policy_not_after.map(int)),
        "qkdpfd_policy_expiry_warning_seconds" => {
            opt(out, name, &[], s.policy_expiry_warning.map(int))
        }
        "qkdpfd_start_time_seconds" => sample(out, name, &[], &s.started_unix.to_string()),
        "qkdpfd_links" => sample(out, name, &[], &s.links.len().to_string()),
        _ => {
            for l in &s.links {
                link_samples(out, l, name, extra);
            }
        }
    }
}

fn link_samples(out: &mut String, l: &LinkMetrics, name: &str, extra: f64) {
    let id = [("link_id", l.link.as_str())];
    let link = [("link", l.link.as_str())];
    let keys = l.keys.as_ref();
    match name {
        "qkd_qber" => opt(out, name, &id, l.qber.map(float)),
        "qkd_qber_threshold_exceeded_total" => {
            let labels = [("link_id", l.link.as_str()), ("severity", "critical")];
            sample(out, name, &labels, &l.trips.to_string());
        }
        "qkd_key_generation_halted_total" => opt(
            out,
            name,
            &id,
            keys.map(|k| k.generation_halted.to_string()),
        ),
        "qkdpfd_link_locked" => sample(out, name, &link, flag(l.locked)),
        "qkdpfd_lockdown_failed" => sample(out, name, &link, flag(l.lockdown_failed)),
        "qkdpfd_wg_peer_removed" => sample(out, name, &link, flag(l.wg_peer_removed)),
        "qkdpfd_link_lock_reason" => lock_reasons(out, name, l),
        "qkdpfd_qber_band" => bands(out, name, l),
        "qkdpfd_qber_threshold_ratio" => opt(out, name, &link, l.threshold.map(float)),
        "qkdpfd_qber_sample_age_seconds" => {
            let age = l.sample_age_secs.map(|a| float(a + extra));
            opt(out, name, &link, age)
        }
        "qkdpfd_key_age_seconds" => {
            let age = keys.and_then(|k| k.age_secs).map(|a| float(a + extra));
            opt(out, name, &link, age)
        }
        "qkdpfd_key_max_age_seconds" => opt(
            out,
            name,
            &link,
            keys.and_then(|k| k.max_age_secs).map(float),
        ),
        "qkdpfd_key_epoch" => opt(out, name, &link, keys.and_then(|k| k.epoch).map(int)),
        "qkdpfd_rotations_total" => rotations(out, name, l),
        "qkdpfd_kme_stored_keys" => opt(
            out,
            name,
            &link,
            keys.and_then(|k| k.kme_stored_keys).map(int),
        ),
        "qkdpfd_kme_stored_keys_low" => {
            opt(out, name, &link, keys.and_then(|k| k.kme_keys_low).map(int))
        }
        _ => {}
    }
}

fn lock_reasons(out: &mut String, name: &str, l: &LinkMetrics) {
    for r in LockReason::ALL {
        let labels = [("link", l.link.as_str()), ("reason", r.as_str())];
        sample(out, name, &labels, flag(l.reasons.contains(r)));
    }
}

fn bands(out: &mut String, name: &str, l: &LinkMetrics) {
    let Some(current) = l.band else { return };
    for b in BANDS {
        let labels = [("link", l.link.as_str()), ("band", b.as_str())];
        sample(out, name, &labels, flag(b == current));
    }
}

fn rotations(out: &mut String, name: &str, l: &LinkMetrics) {
    let Some(k) = &l.keys else { return };
    for (result, n) in [("ok", k.rotations_ok), ("failed", k.rotations_failed)] {
        let labels = [("link", l.link.as_str()), ("result", result)];
        sample(out, name, &labels, &n.to_string());
    }
}

fn opt(out: &mut String, name: &str, labels: &[(&str, &str)], value: Option<String>) {
    if let Some(v) = value {
        sample(out, name, labels, &v);
    }
}

/// One line: `name{k="v",…} value`.
fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: &str) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            out.push_str(&escape_label(v));
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(value);
    out.push('\n');
}

fn flag(b: bool) -> &'static str {
    if b { "1" } else { "0" }
}

fn int(v: u64) -> String {
    v.to_string()
}

/// Rust's shortest round-trip form, which Prometheus parses; the
/// exposition's spellings for the non-finite values.
pub fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        format!("{v}")
    }
}

/// Label values: backslash, double quote and line feed escaped.
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// HELP text: backslash and line feed escaped.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
        assert_eq!(escape_label("plain-link_1"), "plain-link_1");
    }

    #[test]
    fn floats_use_exposition_spellings() {
        assert_eq!(float(0.031), "0.031");
        assert_eq!(float(1.0), "1");
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(float(f64::NEG_INFINITY), "-Inf");
        assert_eq!(float(f64::NAN), "NaN");
        assert_eq!("1e-7".parse::<f64>().ok(), float(1e-7).parse::<f64>().ok());
    }

    #[test]
    fn ages_grow_with_time_since_taken() {
        let t0 = Instant::now();
        let mut s = Snapshot::empty(0, t0);
        let mut l = LinkMetrics::new("a");
        l.sample_age_secs = Some(1.0);
        l.keys = Some(KeyMetrics {
            age_secs: Some(10.0),
            ..KeyMetrics::default()
        });
        s.links.push(l);
        let text = render_at(&s, t0 + Duration::from_secs(5));
        assert!(text.contains("qkdpfd_qber_sample_age_seconds{link=\"a\"} 6\n"));
        assert!(text.contains("qkdpfd_key_age_seconds{link=\"a\"} 15\n"));
        // A `now` before `taken` adds nothing rather than going negative.
        let text = render_at(&s, t0.checked_sub(Duration::from_secs(1)).unwrap_or(t0));
        assert!(text.contains("qkdpfd_key_age_seconds{link=\"a\"} 10\n"));
    }

    /// HIP-71's names, kept exactly (DESIGN §8).
    const HIP71: [&str; 3] = [
        "qkd_qber",
        "qkd_qber_threshold_exceeded_total",
        "qkd_key_generation_halted_total",
    ];

    /// Prometheus' naming rules, for every family: snake case, our prefix
    /// unless HIP-71 has the name, `_total` on counters and only on them,
    /// base units (seconds, ratios) as suffixes, times and durations in
    /// seconds, fractions as `_ratio`.
    #[test]
    fn names_follow_prometheus_rules() {
        for h in HIP71 {
            assert!(FAMILIES.iter().any(|(n, _, _)| *n == h), "{h} kept");
        }
        let mut seen = std::collections::HashSet::new();
        for (name, kind, help) in FAMILIES {
            assert!(seen.insert(name), "{name} twice");
            let snake = name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            assert!(
                snake && !name.contains("__") && !name.ends_with('_'),
                "{name}"
            );
            let hip = HIP71.contains(&name);
            assert!(hip || name.starts_with("qkdpfd_"), "{name}: prefix");
            assert_eq!(kind == Kind::Counter, name.ends_with("_total"), "{name}");
            let base = name.strip_suffix("_total").unwrap_or(name);
            let words: Vec<&str> = base.split('_').collect();
            for bad in [
                "ms",
                "us",
                "ns",
                "milliseconds",
                "microseconds",
                "minutes",
                "hours",
                "days",
                "percent",
                "kb",
                "mb",
                "kilobytes",
                "megabytes",
                "bits",
            ] {
                assert!(!words.contains(&bad), "{name}: not a base unit: {bad}");
            }
            let timed = ["age", "time", "timeout", "interval", "duration", "after"];
            if words.iter().any(|w| timed.contains(w)) {
                assert!(base.ends_with("_seconds"), "{name}: a time is in seconds");
            }
            if help.contains("(fraction)") && !hip {
                assert!(base.ends_with("_ratio"), "{name}: a fraction is a _ratio");
            }
            assert!(!help.is_empty() && help.ends_with('.'), "{name}: help");
        }
    }

    #[test]
    fn every_family_has_help_and_type() {
        let text = render(&Snapshot::empty(0, Instant::now()));
        for (name, kind, _) in FAMILIES {
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
            assert!(text.contains(&format!("# TYPE {name} {}\n", kind.as_str())));
        }
        assert!(
            !text.contains("\nqkdpfd_policy_serial "),
            "absent serial omitted"
        );
    }
}
