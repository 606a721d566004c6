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

/// `event(Prio::X, "name")` calls in the daemon's sources (not qkdsim's
/// and not log.rs's own tests).
fn events() -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&repo().join("src"), &mut files);
    let mut names = Vec::new();
    for f in files {
        let rel = f.strip_prefix(repo()).unwrap().display().to_string();
        if rel == "src/log.rs" || rel.starts_with("src/sim/") || rel.ends_with("tests.rs") {
            continue;
        }
        let text = fs::read_to_string(&f).unwrap();
        for part in text.split("event(").skip(1) {
            let compact: String = part
                .chars()
                .take(120)
                .filter(|c| !c.is_whitespace())
                .collect();
            let Some(rest) = compact.split_once(',') else {
                continue;
            };
            if !rest.0.contains("Prio::") {
                continue;
            }
            if let Some(name) = rest.1.strip_prefix('"').and_then(|r| r.split('"').next()) {
                names.push(name.to_string());
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

#[test]
fn every_event_is_in_qkdpfd_8() {
    let mut names = events();
    for n in ["startup", "lockdown", "policy_rejected", "band"] {
        assert!(names.iter().any(|x| x == n), "{n} not found in {names:?}");
    }
    // DESIGN §8's key events, whichever the code logs yet.
    for n in [
        "key_rotated",
        "key_rotation_failed",
        "key_stale",
        "psk_drift",
        "kme_error",
        "peer_auth_failed",
        "ctl_denied",
        "ctl_command",
    ] {
        names.push(n.to_string());
    }
    let man = read("man/qkdpfd.8");
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !man.contains(&format!(".It Cm {n} Ta")))
        .collect();
    assert!(missing.is_empty(), "qkdpfd.8 LOGGING lacks {missing:?}");
}
