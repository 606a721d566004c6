//! The man pages against the code: `mandoc -Tlint -Wwarning` is clean, and
//! every qkdpfd flag, config key, policy key, qkdctl command word and log
//! event, and every qkdsim option, config key and control, the sources
//! name is documented. The names are read from the
//! sources' own tables (section.rs's key lists, document.rs's match arms,
//! parser.rs's keywords, every `event(Prio::…, "name")` call), so a new key
//! or event without documentation fails here.

mod common;

use common::bundle::require_tool;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The double-quoted strings in `text`.
fn quoted(text: &str) -> Vec<String> {
    text.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The strings of `const NAME: &[&str] = &[ ... ];` in `src`.
fn const_list(src: &str, name: &str) -> Vec<String> {
    let start = src
        .find(&format!("const {name}: &[&str] = &["))
        .unwrap_or_else(|| panic!("const {name} not found"));
    let body = &src[start..];
    let end = body.find("];").unwrap();
    let open = body.find("= &[").unwrap() + 4;
    quoted(&body[open..end])
}

/// Every word of the man page's `.It` lines and inline `Ic`/`Cm` macros.
fn documented(man: &str) -> Vec<String> {
    man.lines()
        .filter(|l| l.starts_with(".It ") || l.contains("Ic ") || l.contains("Cm "))
        .flat_map(|l| l.split([' ', ',']))
        .map(|w| w.trim_matches(['[', ']', '.']).to_string())
        .collect()
}

fn assert_documented(man_name: &str, names: &[String]) {
    let man = read(&format!("man/{man_name}"));
    let words = documented(&man);
    let missing: Vec<&String> = names.iter().filter(|n| !words.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "{man_name} does not document {missing:?}"
    );
}

#[test]
fn mandoc_lint_is_clean() {
    if !require_tool("mandoc") {
        return;
    }
    let mut pages: Vec<PathBuf> = fs::read_dir(repo().join("man"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    pages.sort();
    let names: Vec<String> = pages
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "qkdpfd.8",
        "qkdctl.8",
        "qkdpfd.conf.5",
        "qkdpfd-policy.5",
        "qkdsim.1",
    ] {
        assert!(names.iter().any(|n| n == want), "man/{want} missing");
    }
    let out = Command::new("mandoc")
        .args(["-Tlint", "-Wwarning"])
        .args(&pages)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mandoc -Tlint -Wwarning:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_config_key_is_in_qkdpfd_conf_5() {
    let src = read("src/conf/parse/section.rs");
    let mut keys = Vec::new();
    for list in [
        "DAEMON_KEYS",
        "POLICY_KEYS",
        "FIREWALL_KEYS",
        "WIREGUARD_KEYS",
        "PEERING_KEYS",
        "KME_KEYS",
        "QBER_KEYS",
        "LINK_KEYS",
    ] {
        keys.extend(const_list(&src, list));
    }
    assert!(keys.len() > 40, "too few keys found: {keys:?}");
    assert_documented("qkdpfd.conf.5", &keys);
}

/// The `pub name:` fields of `pub struct NAME { ... }` in `src`.
fn struct_fields(src: &str, name: &str) -> Vec<String> {
    let start = src
        .find(&format!("pub struct {name} {{"))
        .unwrap_or_else(|| panic!("struct {name} not found"));
    let body = &src[start..];
    let body = &body[..body.find("\n}").unwrap()];
    body.lines()
        .filter_map(|l| l.trim().strip_prefix("pub ")?.split_once(':'))
        .map(|(f, _)| f.to_string())
        .collect()
}

#[test]
fn every_qkdsim_key_option_and_control_is_in_qkdsim_1() {
    let conf = read("src/sim/conf.rs");
    let mut keys = Vec::new();
    for s in ["KmeSimConf", "RawLink", "FeedConf"] {
        keys.extend(struct_fields(&conf, s));
    }
    for k in [
        "listen",
        "kmes",
        "pulse_rate",
        "ec_efficiency",
        "measure_interval",
    ] {
        assert!(keys.iter().any(|x| x == k), "{k} not found in {keys:?}");
    }
    keys.retain(|k| k != "physics");
    // [link.NAME.physics] takes the keys of a sim QBER source.
    keys.extend(const_list(&read("src/conf/parse/section.rs"), "SIM_KEYS"));
    assert_documented("qkdsim.1", &keys);

    let man = read("man/qkdsim.1");
    let bin = read("src/bin/qkdsim.rs");
    let options: Vec<String> = quoted(&bin)
        .into_iter()
        .filter(|q| q.starts_with("--") && q.len() > 2 && !q.contains(' '))
        .collect();
    assert!(options.len() >= 5, "{options:?}");
    for o in options.iter().map(|o| o.trim_start_matches('-')) {
        assert!(man.contains(&format!("Fl -{o}")), "qkdsim.1 lacks --{o}");
    }
    for w in ["Cm serve", "Cm pki", "Cm help", "Fl v", "Fl h"] {
        assert!(man.contains(w), "qkdsim.1 lacks {w}");
    }
    for knob in ["eve", "noise", "stall"] {
        assert!(
            man.contains(&format!("POST /sim/ Ns Ar link Ns Li /{knob}")),
            "qkdsim.1 lacks POST /sim/LINK/{knob}"
        );
    }
}

#[test]
fn every_policy_key_is_in_qkdpfd_policy_5() {
    let src = read("src/policy/document.rs");
    // Match arms: `"key" =>`.
    let keys: Vec<String> = src
        .split("=>")
        .filter_map(|before| {
            let t = before.trim_end();
            let t = t.strip_suffix('"')?;
            let open = t.rfind('"')?;
            let k = &t[open + 1..];
            k.bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_')
                .then(|| k.to_string())
        })
        .collect();
    for k in ["serial", "not_after", "on_qber", "peer_timeout", "open"] {
        assert!(keys.iter().any(|x| x == k), "{k} not found in {keys:?}");
    }
    assert_documented("qkdpfd-policy.5", &keys);
}

#[test]
fn every_qkdctl_word_is_in_qkdctl_8() {
    let src = read("src/ctl/parser.rs");
    let words: Vec<String> = src
        .split("K::Keyword(\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .filter(|w| !w.starts_with('-'))
        .map(str::to_string)
        .collect();
    assert!(words.iter().any(|w| w == "verify"), "{words:?}");
    assert_documented("qkdctl.8", &words);
    let man = read("man/qkdctl.8");
    // -p of policy verify, and the options.
    for f in ["Fl p", "Fl j", "Fl f", "Fl s"] {
        assert!(man.contains(f), "qkdctl.8 lacks {f}");
    }
    for w in ["rotate", "unlock", "lockdown"] {
        assert!(man.contains(&format!(".It Cm {w}")), "qkdctl.8 lacks {w}");
    }
}

#[test]
fn every_qkdpfd_flag_is_in_qkdpfd_8() {
    let src = read("src/bin/qkdpfd.rs");
    let man = read("man/qkdpfd.8");
    let mut flags: Vec<char> = src
        .split('\'')
        .skip(1)
        .step_by(2)
        .filter_map(|s| {
            let mut c = s.chars();
            let f = c.next()?;
            (c.next().is_none() && f.is_ascii_alphabetic()).then_some(f)
        })
        .collect();
    flags.sort();
    flags.dedup();
    assert_eq!(flags, ['B', 'L', 'P', 'd', 'f', 'n', 'v']);
    for f in flags {
        assert!(man.contains(&format!("Fl {f}")), "qkdpfd.8 lacks -{f}");
        if f != 'P' {
            assert!(
                man.contains(&format!(".It Fl {f}")),
                "qkdpfd.8: no entry for -{f}"
            );
        }
    }
}

/// The LOGGING table of qkdpfd.8 is the event catalogue
/// (src/log/catalogue.rs) rendered: the test fails when they differ, and
/// with QKDPFD_BLESS=1 it writes the rendered rows into the page.
#[test]
fn the_event_table_is_the_catalogue() {
    let path = repo().join("man/qkdpfd.8");
    let man = read("man/qkdpfd.8");
    let head = ".It Sy event Ta Sy priority Ta Sy fields: meaning\n";
    let start = man.find(head).expect("qkdpfd.8: no event table") + head.len();
    let end = start + man[start..].find(".El\n").unwrap();
    let want = qkdpfd::log::catalogue::man_rows();
    if man[start..end] != want && std::env::var("QKDPFD_BLESS").as_deref() == Ok("1") {
        fs::write(&path, format!("{}{want}{}", &man[..start], &man[end..])).unwrap();
        return;
    }
    assert!(
        man[start..end] == want,
        "qkdpfd.8's event table differs from src/log/catalogue.rs \
         (QKDPFD_BLESS=1 cargo test --test man rewrites it):\n--- page\n{}\n--- catalogue\n{want}",
        &man[start..end]
    );
}

/// Every catalogue entry is logged somewhere (no name documented for an
/// event that cannot happen), and DESIGN §8's key events are in it.
#[test]
fn every_catalogue_event_is_logged() {
    fn walk(dir: &Path, out: &mut String) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if !p.ends_with("log") {
                    walk(&p, out);
                }
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push_str(&fs::read_to_string(&p).unwrap());
            }
        }
    }
    let mut src = String::new();
    walk(&repo().join("src"), &mut src);
    let src: String = src
        .split_whitespace()
        .collect::<String>()
        .replace("crate::log::Event::", "Event::");
    for e in qkdpfd::log::Event::ALL {
        let variant = format!("{e:?}");
        assert!(
            src.contains(&format!("event(Event::{variant})")),
            "{} is in the catalogue but never logged",
            e.name()
        );
    }
    for n in [
        "startup",
        "lockdown",
        "policy_rejected",
        "band",
        "key_rotated",
        "key_rotation_failed",
        "key_stale",
        "psk_drift",
        "kme_error",
        "peer_auth_failed",
        "ctl_denied",
        "ctl_command",
        "policy_expiring",
        "kme_keys_low",
    ] {
        assert!(qkdpfd::log::Event::by_name(n).is_some(), "{n}");
    }
}

/// Every Prometheus family the endpoint renders (metrics.rs's FAMILIES, the
/// one list) has an entry in qkdpfd(8) METRICS with its type.
#[test]
fn every_metric_is_in_qkdpfd_8() {
    use qkdpfd::engine::metrics::{FAMILIES, Kind};
    let man = read("man/qkdpfd.8");
    let section = man
        .split("\n.Sh METRICS\n")
        .nth(1)
        .and_then(|s| s.split("\n.Sh ").next())
        .expect("qkdpfd.8 has a METRICS section");
    for (name, kind, _) in FAMILIES {
        let kind = match kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        };
        let entry = format!(".It Cm {name} No ({kind}");
        assert!(
            section.contains(&entry),
            "qkdpfd.8 METRICS has no {entry:?}"
        );
    }
}
