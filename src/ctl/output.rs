//! qkdctl's output: one [`Output`] trait with a human implementation
//! (aligned tables and `key: value` lines, as bgpctl's and ntpctl's) and a
//! JSON one (`-j`: the reply's data, one document; monitor events one object
//! per line), as bgpctl's `show_output` / `json_output`. Runs in qkdctl
//! only; writes to the writer it is given and touches nothing else.

use crate::duration;
use crate::proto::ctl::{DaemonStatus, LinkInfo, PolicyInfo};
use serde::Serialize;
use std::borrow::Cow;
use std::io::{self, Write};
use std::time::Duration;

/// How a reply is shown. Each method renders one reply's data.
pub trait Output {
    /// `Reply::Ok`.
    fn message(&self, w: &mut dyn Write, message: &str) -> io::Result<()>;
    fn status(&self, w: &mut dyn Write, status: &DaemonStatus) -> io::Result<()>;
    /// `show links`.
    fn links(&self, w: &mut dyn Write, links: &[LinkInfo]) -> io::Result<()>;
    /// `show link NAME`.
    fn link(&self, w: &mut dyn Write, link: &LinkInfo) -> io::Result<()>;
    fn policy(&self, w: &mut dyn Write, policy: Option<&PolicyInfo>) -> io::Result<()>;
    /// One `monitor` event line.
    fn event(&self, w: &mut dyn Write, line: &str) -> io::Result<()>;
}

/// The output `-j` asks for.
pub fn for_mode(json: bool) -> Box<dyn Output> {
    if json {
        Box::new(Json)
    } else {
        Box::new(Human)
    }
}

/// Tables and `key: value` lines for people.
pub struct Human;

/// One JSON document per reply (monitor: one object per line).
pub struct Json;

impl Output for Human {
    fn message(&self, w: &mut dyn Write, message: &str) -> io::Result<()> {
        writeln!(w, "{}", printable(message))
    }

    fn status(&self, w: &mut dyn Write, s: &DaemonStatus) -> io::Result<()> {
        let serial = s
            .policy_serial
            .map_or("none".to_string(), |n| n.to_string());
        key_values(
            w,
            &[
                ("version", s.version.clone()),
                ("uptime", span(s.uptime_secs)),
                ("policy serial", serial),
                ("links open", s.links_open.to_string()),
                ("links locked", s.links_locked.to_string()),
                ("log", if s.verbose { "verbose" } else { "brief" }.into()),
            ],
        )
    }

    fn links(&self, w: &mut dyn Write, links: &[LinkInfo]) -> io::Result<()> {
        let mut rows = vec![row(&["NAME", "STATE", "REASONS", "BAND", "QBER", "AGE"])];
        for l in links {
            rows.push(vec![
                l.name.clone(),
                state_word(l),
                l.reasons.to_string(),
                opt(l.band),
                qber(l.qber),
                age(l.sample_age_secs),
            ]);
        }
        table(w, &rows)
    }

    fn link(&self, w: &mut dyn Write, l: &LinkInfo) -> io::Result<()> {
        let mut pairs = vec![
            ("link", l.name.clone()),
            ("state", state_word(l)),
            ("reasons", l.reasons.to_string()),
            ("band", opt(l.band)),
            ("qber", qber(l.qber)),
            ("sample age", age(l.sample_age_secs)),
            ("threshold", qber(l.threshold)),
            ("trips", l.trip_count.to_string()),
            ("manual hold", yes_no(l.manual_hold)),
            ("qber source", l.qber_source.clone()),
        ];
        if let Some(k) = &l.keys {
            pairs.extend([
                ("key role", k.role.clone()),
                ("epoch", k.epoch.to_string()),
                ("installed epoch", opt(k.installed_epoch)),
                ("key id", opt(k.installed_key_id.as_deref())),
                ("psk fingerprint", opt(k.psk_fingerprint.clone())),
                ("key age", age(k.key_age_secs)),
                (
                    "rotations",
                    format!("ok {} failed {}", k.rotations_ok, k.rotations_failed),
                ),
                ("in round", yes_no(k.in_round)),
                ("rotation held", yes_no(k.held)),
                ("kme stored keys", opt(k.stored_key_count)),
            ]);
        }
        key_values(w, &pairs)
    }

    fn policy(&self, w: &mut dyn Write, p: Option<&PolicyInfo>) -> io::Result<()> {
        let Some(p) = p else {
            return writeln!(w, "no active policy");
        };
        key_values(
            w,
            &[
                ("serial", p.serial.to_string()),
                ("not after", p.not_after.map_or("none".into(), rfc3339)),
                ("expired", yes_no(p.expired)),
                ("signer", p.signer.clone()),
            ],
        )?;
        writeln!(w)?;
        policy_tables(w, p)
    }

    fn event(&self, w: &mut dyn Write, line: &str) -> io::Result<()> {
        writeln!(w, "{}", printable(line))
    }
}

/// The per-link thresholds, then the per-link timers.
fn policy_tables(w: &mut dyn Write, p: &PolicyInfo) -> io::Result<()> {
    let mut rows = vec![row(&[
        "LINK", "ON-QBER", "LOCKDOWN", "TRIPS", "RECOVER", "AFTER", "UNLOCK", "BANDS",
    ])];
    for (name, l) in &p.links {
        let bands: Vec<String> = l.bands.iter().map(|b| b.to_string()).collect();
        rows.push(vec![
            name.clone(),
            lower(&l.on_qber),
            l.qber_lockdown.to_string(),
            l.trip_samples.to_string(),
            l.recover_below.to_string(),
            duration::format(l.recover_after),
            lower(&l.unlock),
            bands.join("/"),
        ]);
    }
    table(w, &rows)?;
    writeln!(w)?;
    let mut rows = vec![row(&[
        "LINK",
        "ROTATE",
        "MAX-KEY-AGE",
        "QBER-TIMEOUT",
        "PEER-TIMEOUT",
    ])];
    for (name, l) in &p.links {
        let d = |d: Duration| duration::format(d);
        rows.push(vec![
            name.clone(),
            d(l.rotate),
            d(l.max_key_age),
            d(l.qber_timeout),
            d(l.peer_timeout),
        ]);
    }
    table(w, &rows)
}

impl Output for Json {
    fn message(&self, w: &mut dyn Write, message: &str) -> io::Result<()> {
        pretty(w, &serde_json::json!({ "message": message }))
    }
    fn status(&self, w: &mut dyn Write, status: &DaemonStatus) -> io::Result<()> {
        pretty(w, status)
    }
    fn links(&self, w: &mut dyn Write, links: &[LinkInfo]) -> io::Result<()> {
        pretty(w, &links)
    }
    fn link(&self, w: &mut dyn Write, link: &LinkInfo) -> io::Result<()> {
        pretty(w, link)
    }
    fn policy(&self, w: &mut dyn Write, policy: Option<&PolicyInfo>) -> io::Result<()> {
        pretty(w, &policy)
    }
    fn event(&self, w: &mut dyn Write, line: &str) -> io::Result<()> {
        let obj = event_fields(line).unwrap_or_else(|| {
            let mut m = serde_json::Map::new();
            m.insert("raw".into(), line.into());
            m
        });
        serde_json::to_writer(&mut *w, &obj)?;
        writeln!(w)
    }
}

fn pretty<T: Serialize + ?Sized>(w: &mut dyn Write, v: &T) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *w, v)?;
    writeln!(w)
}

/// Splits an `event=name k=v k="quoted \"v\""` line (crate::log's format)
/// into an object, undoing the escapes; `None` if the line is not in that form.
pub fn event_fields(line: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let mut map = serde_json::Map::new();
    let mut rest = line.as_bytes();
    while !rest.is_empty() {
        let eq = rest.iter().position(|&b| b == b'=')?;
        let key = &rest[..eq];
        if key.is_empty() || key.contains(&b' ') || key.contains(&b'"') {
            return None;
        }
        let (value, tail) = event_value(&rest[eq + 1..])?;
        map.insert(String::from_utf8_lossy(key).into_owned(), value.into());
        rest = match tail {
            [] => tail,
            [b' ', more @ ..] => more,
            _ => return None,
        };
    }
    map.contains_key("event").then_some(map)
}

/// One value, bare or quoted; returns it unescaped and the unread bytes.
fn event_value(s: &[u8]) -> Option<(String, &[u8])> {
    let quoted = s.first() == Some(&b'"');
    let mut out = Vec::new();
    let mut i = usize::from(quoted);
    loop {
        match (s.get(i), quoted) {
            (None, true) => return None,
            (None, false) | (Some(b' '), false) => break,
            (Some(b'"'), true) => {
                i += 1;
                break;
            }
            (Some(b'\\'), _) => {
                let (byte, used) = unescape(&s[i + 1..])?;
                out.push(byte);
                i += 1 + used;
            }
            (Some(&b), _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    // A value cut at 256 bytes may end inside a UTF-8 sequence.
    Some((String::from_utf8_lossy(&out).into_owned(), &s[i..]))
}

fn unescape(s: &[u8]) -> Option<(u8, usize)> {
    match s {
        [b'"', ..] => Some((b'"', 1)),
        [b'\\', ..] => Some((b'\\', 1)),
        [b'x', h, l, ..] => {
            let hex = std::str::from_utf8(&[*h, *l]).ok()?.to_string();
            Some((u8::from_str_radix(&hex, 16).ok()?, 3))
        }
        _ => None,
    }
}

/// Text from the daemon as it may reach a terminal ([`crate::text`]):
/// newline kept, so no reply can drive the terminal.
pub fn printable(s: &str) -> Cow<'_, str> {
    crate::text::for_terminal(s)
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

/// Left-aligned columns two spaces apart; the last column is not padded.
fn table(w: &mut dyn Write, rows: &[Vec<String>]) -> io::Result<()> {
    let rows: Vec<Vec<Cow<'_, str>>> = rows
        .iter()
        .map(|r| r.iter().map(|c| printable(c)).collect())
        .collect();
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in &rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        writeln!(w, "{line}")?;
    }
    Ok(())
}

/// `key: value` lines with the values aligned.
fn key_values(w: &mut dyn Write, pairs: &[(&str, String)]) -> io::Result<()> {
    let width = pairs.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    for (k, v) in pairs {
        writeln!(w, "{:<width$} {}", format!("{k}:"), printable(v))?;
    }
    Ok(())
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

/// QBER as the fraction policy.toml uses (0.08), four decimals.
fn qber(v: Option<f64>) -> String {
    v.map_or("-".into(), |q| format!("{q:.4}"))
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

/// A policy enum in its policy.toml spelling (`lockdown`, `manual`).
fn lower<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "?".into(),
    }
}

/// Seconds since the last sample: `0.8s`, `42s`, `3m05s`, `2h10m`.
fn age(secs: Option<f64>) -> String {
    let Some(s) = secs.filter(|s| s.is_finite() && *s >= 0.0) else {
        return "-".into();
    };
    if s < 10.0 {
        format!("{s:.1}s")
    } else {
        short_span(s as u64)
    }
}

fn short_span(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// Uptime: `3d04h05m`, or the short form under a day.
fn span(s: u64) -> String {
    if s < 86_400 {
        short_span(s)
    } else {
        format!(
            "{}d{:02}h{:02}m",
            s / 86_400,
            s % 86_400 / 3600,
            s % 3600 / 60
        )
    }
}

/// Unix seconds as RFC 3339 UTC (`2027-01-31T00:00:00Z`).
pub fn rfc3339(unix: u64) -> String {
    crate::utc::format_utc(unix)
}

/// `open`, `lockdown`, or `LOCKDOWN-FAILED` when the kernel does not show
/// a lockdown the link needs (loud on purpose: traffic may pass).
fn state_word(l: &LinkInfo) -> String {
    if l.lockdown_failed {
        "LOCKDOWN-FAILED".to_string()
    } else if l.wg_peer_removed {
        format!("{} (wg peer removed)", l.enforcement)
    } else {
        l.enforcement.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_801_353_600), "2027-01-31T00:00:00Z");
        assert_eq!(rfc3339(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(rfc3339(4_102_444_800), "2100-01-01T00:00:00Z");
    }

    #[test]
    fn spans() {
        assert_eq!(age(Some(0.84)), "0.8s");
        assert_eq!(age(Some(42.0)), "42s");
        assert_eq!(age(Some(185.0)), "3m05s");
        assert_eq!(age(Some(7800.0)), "2h10m");
        assert_eq!(age(None), "-");
        assert_eq!(age(Some(f64::NAN)), "-");
        assert_eq!(span(3 * 86_400 + 4 * 3600 + 5 * 60), "3d04h05m");
    }

    #[test]
    fn event_lines_to_objects() {
        let m = event_fields(r#"event=lockdown link=dr qber=0.1 msg="a \"b\" \\ \x0a=""#).unwrap();
        assert_eq!(m["event"], "lockdown");
        assert_eq!(m["link"], "dr");
        assert_eq!(m["qber"], "0.1");
        assert_eq!(m["msg"], "a \"b\" \\ \n=");
        let m = event_fields(r#"event=x k="" v=\xc3\xa9"#).unwrap();
        assert_eq!(m["k"], "");
        assert_eq!(m["v"], "é");
        assert!(event_fields("no equals here").is_none());
        assert!(event_fields(r#"event=x k="unterminated"#).is_none());
        assert!(event_fields("link=dr").is_none());
    }

    #[test]
    fn control_characters_escaped() {
        assert_eq!(printable("ok\nline"), "ok\nline");
        assert_eq!(printable("a\x1b[2Jb\r"), "a\\x1b[2Jb\\x0d");
    }

    #[test]
    fn table_aligns() {
        let mut out = Vec::new();
        table(
            &mut out,
            &[row(&["A", "BB", "C"]), row(&["long", "x", "y"])],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "A     BB  C\nlong  x   y\n"
        );
    }
}
