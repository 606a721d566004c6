//! pf rulesets (DESIGN §5): a `.pf` bundle file checked, and what
//! pfctl(8) gets for one link's anchor `<root>/<link>`, as text and argv:
//! the `-D` macros, the anchor's input (the link's table `<qkd_peer>`, the
//! bundle's rules, on lockdown qkdpfd's own labelled block rules after
//! them) and the state kills. The parent's pf backend runs them and its
//! dry-run backend writes them to files.
//!
//! pf passes packets that match an existing state without evaluating rules,
//! so a lockdown also kills the link's states (pfctl.c
//! `pfctl_net_kill_states`, pf_ioctl.c DIOCKILLSTATES):
//! - `-k A` kills states whose initiator is A (A's connections to us);
//! - `-k 0.0.0.0/0 -k A` (`::/0` for IPv6: the second host must have the
//!   first one's address family) kills states towards A (ours to A);
//! - `-i IF -k 0.0.0.0/0` and `-i IF -k ::/0` kill states bound to IF. The
//!   kernel compares the state's interface, and floating states (pf's default
//!   state-policy) belong to no interface: rulesets pass tunnel traffic with
//!   `keep state (if-bound)` so these kills find them (see `open.pf`).
//!
//! pfctl cannot restrict `-k host` to a port, so a lockdown also resets other
//! states with the peer's address (an underlay SSH session to it, say); the
//! peer protocol is UDP and recovers with its next datagram.
//!
//! Every OpenBSD fact relied on here is listed, with the source revision
//! it was checked against, in `src/OPENBSD-FACTS.md`.

use super::LinkTarget;

/// The label of qkdpfd's own block rules, appended to every lockdown: a
/// read-back finds them in the anchor whatever the bundle's rules say.
pub const LOCK_LABEL: &str = "qkdpfd-lockdown";

/// Macros pfctl gets with `-D`; a ruleset may use no other.
const MACROS: &[&str] = &["link", "wg_if", "wg_port", "peer4", "peer6"];

/// Words that would make pfctl read other files or load other anchors.
const FORBIDDEN_WORDS: &[&str] = &["include", "load", "file"];

/// The link's anchor, `<root>/<link>`.
pub fn anchor_path(anchor: &str, link: &LinkTarget) -> String {
    format!("{anchor}/{}", link.name)
}

/// `pfctl [-n] -a <root>/<link> -D link=.. -D wg_if=.. -D wg_port=..
/// [-D peer4=..] [-D peer6=..] -f -`
pub fn load_args(anchor: &str, link: &LinkTarget, parse_only: bool) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    if parse_only {
        a.push("-n".into());
    }
    a.extend(["-a".into(), anchor_path(anchor, link)]);
    for (k, v) in macros(link) {
        a.extend(["-D".to_string(), format!("{k}={v}")]);
    }
    a.extend(["-f".into(), "-".into()]);
    a
}

/// The macros a link's rulesets may use, as `-D` sets them: `peer4` and
/// `peer6` only when the link has such addresses.
fn macros(link: &LinkTarget) -> Vec<(&'static str, String)> {
    let mut m = vec![
        ("link", link.name.clone()),
        ("wg_if", link.wg_if.clone()),
        ("wg_port", link.wg_port.to_string()),
    ];
    let v4: Vec<String> = link.addrs4.iter().map(|x| x.to_string()).collect();
    let v6: Vec<String> = link.addrs6.iter().map(|x| x.to_string()).collect();
    if !v4.is_empty() {
        m.push(("peer4", pf_list(&v4)));
    }
    if !v6.is_empty() {
        m.push(("peer6", pf_list(&v6)));
    }
    m
}

/// `pfctl -a <root> -f -`: several links' anchors in one load, as brace
/// anchors (`many_lockdown_input`), which sets each link's macros itself.
pub fn many_load_args(anchor: &str) -> Vec<String> {
    ["-a", anchor, "-f", "-"].map(String::from).to_vec()
}

/// The input that locks `links` in one load, one transaction for all of
/// them (OpenBSD facts F2, F22-F24): for each link its macros, set in the
/// input as `-D` would set them, then `anchor "<link>" {`, the link's own
/// lockdown input ([`lockdown_input`]) and `}`: pfctl loads each brace
/// anchor into `<root>/<link>` with its table, as the link's own load
/// would. Refused (the caller then locks link by link) where the one load
/// could differ from the per-link loads: a macro set for one link stays
/// set for the next, so a ruleset using `$peer4`/`$peer6` that a link
/// lacks; braces that do not pair up (a `}` would end the link's anchor);
/// and a root or link name with `_` then a digit, which pfctl's renaming
/// of brace anchors' tables would match (F24).
pub fn many_lockdown_input(
    anchor: &str,
    links: &[&LinkTarget],
    ruleset: &str,
) -> Result<String, String> {
    let used = macros_used(ruleset);
    if !braces_pair(ruleset) {
        return Err("the lockdown ruleset's braces do not pair up".into());
    }
    let renamed_by_substring = |name: &str| {
        let hit = (name.as_bytes().windows(2)).any(|w| w[0] == b'_' && w[1].is_ascii_digit());
        match hit {
            true => Err(format!(
                "{name:?}: pfctl would confuse its brace anchors' tables (\"_\" then a digit)"
            )),
            false => Ok(()),
        }
    };
    renamed_by_substring(anchor)?;
    let mut s = String::new();
    for link in links {
        renamed_by_substring(&link.name)?;
        let defined = macros(link);
        if let Some(m) = used.iter().find(|u| !defined.iter().any(|(k, _)| k == *u)) {
            return Err(format!(
                "link {}: the lockdown ruleset uses ${m}, which the link does not have",
                link.name
            ));
        }
        for (k, v) in defined {
            s.push_str(&format!("{k} = \"{v}\"\n"));
        }
        s.push_str(&format!("anchor \"{}\" {{\n", link.name));
        s.push_str(&lockdown_input(link, ruleset));
        s.push_str("}\n");
    }
    Ok(s)
}

/// The macros (`$name`) a ruleset uses, comments skipped.
fn macros_used(ruleset: &str) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for m in ruleset.lines().flat_map(|l| macro_names(strip_comment(l))) {
        if !out.contains(&m) {
            out.push(m);
        }
    }
    out
}

/// The name after each `$` of `line` (letters, digits, `_`; maybe empty).
fn macro_names(line: &str) -> impl Iterator<Item = &str> {
    line.split('$').skip(1).map(|after| {
        let len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        &after[..len]
    })
}

/// Every `}` closes a `{` of the same ruleset, outside comments and
/// quoted strings.
fn braces_pair(ruleset: &str) -> bool {
    let mut depth = 0i64;
    for line in ruleset.lines() {
        let mut quoted = false;
        for c in strip_comment(line).chars() {
            match c {
                '"' => quoted = !quoted,
                '{' if !quoted => depth += 1,
                '}' if !quoted => {
                    depth -= 1;
                    if depth < 0 {
                        return false;
                    }
                }
                _ => {}
            }
        }
    }
    depth == 0
}

/// One address as is, several as a pf list `{ a b }`.
fn pf_list(addrs: &[String]) -> String {
    match addrs {
        [one] => one.clone(),
        many => format!("{{ {} }}", many.join(" ")),
    }
}

/// The anchor's input: the link's table, then the bundle's rules.
pub fn load_input(link: &LinkTarget, ruleset: &str) -> String {
    let addrs: Vec<String> = link
        .addrs4
        .iter()
        .map(|a| a.to_string())
        .chain(link.addrs6.iter().map(|a| a.to_string()))
        .collect();
    let mut s = if addrs.is_empty() {
        "table <qkd_peer> const persist\n".to_string()
    } else {
        format!("table <qkd_peer> const {{ {} }}\n", addrs.join(" "))
    };
    s.push_str(ruleset);
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

/// The labels (`label "..."`) of a ruleset's rules, as written (pf.conf
/// expands no macro inside quotes); only plain ones (`[A-Za-z0-9._-]`),
/// so none reaches pfctl's argv as anything but a label.
pub fn rule_labels(ruleset: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in ruleset.lines() {
        let mut rest = strip_comment(line);
        while let Some(at) = rest.find("label \"") {
            let after = &rest[at + 7..];
            let Some(end) = after.find('"') else { break };
            let l = after[..end].to_string();
            if !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
                && !out.contains(&l)
            {
                out.push(l);
            }
            rest = &after[end + 1..];
        }
    }
    out
}

/// The state kills for a lockdown, one pfctl argv each (see module docs),
/// then by the labels of its open rules. pfctl -k matches states of one
/// routing domain (`-V`, when not 0; DIOCKILLSTATES compares it), and a
/// link's states may live in two: the interface's (`rdomain`, the
/// tunnel's inner traffic) and its UDP socket's (`udp_rdomain`, wg(4)'s
/// `wgrtable`, 0 unless set). The kills by the peer's addresses and by
/// label run in both; those on the interface in its own.
pub fn kill_args(link: &LinkTarget, labels: &[String]) -> Vec<Vec<String>> {
    let v = |rd: u32, xs: &[&str]| {
        let mut a: Vec<String> = Vec::new();
        if rd != 0 {
            a.extend(["-V".to_string(), rd.to_string()]);
        }
        a.extend(xs.iter().map(|s| s.to_string()));
        a
    };
    let mut domains = vec![link.rdomain];
    if link.udp_rdomain != link.rdomain {
        domains.push(link.udp_rdomain);
    }
    let mut out = Vec::new();
    let addrs = link
        .addrs4
        .iter()
        .map(|a| (a.to_string(), "0.0.0.0/0"))
        .chain(link.addrs6.iter().map(|a| (a.to_string(), "::/0")));
    for (a, any) in addrs {
        for &rd in &domains {
            out.push(v(rd, &["-k", &a]));
            out.push(v(rd, &["-k", any, "-k", &a]));
        }
    }
    out.push(v(link.rdomain, &["-i", &link.wg_if, "-k", "0.0.0.0/0"]));
    out.push(v(link.rdomain, &["-i", &link.wg_if, "-k", "::/0"]));
    for l in labels {
        for &rd in &domains {
            out.push(v(rd, &["-k", "label", "-k", l]));
        }
    }
    out
}

/// The anchor's input for a lockdown: the bundle's rules, then qkdpfd's
/// own labelled block rules for the link's traffic (never `block all`:
/// the anchor sees every packet of the gateway).
pub fn lockdown_input(link: &LinkTarget, ruleset: &str) -> String {
    let mut s = load_input(link, ruleset);
    for r in [
        "block drop quick proto udp to <qkd_peer> port $wg_port",
        "block drop quick proto udp from <qkd_peer> port $wg_port",
        "block drop quick on $wg_if",
    ] {
        s.push_str(&format!("{r} label \"{LOCK_LABEL}\"\n"));
    }
    s
}

/// Refuses what would let a ruleset reach beyond its anchor: reading files
/// (`include`, `load anchor`, `table ... file`), line continuations (which
/// can glue a keyword together) and macros other than the link's own
/// (a ruleset-defined macro can expand to a keyword). Comments are skipped;
/// words inside quoted strings are refused too, to keep the rule simple.
pub fn check_ruleset(ruleset: &str) -> Result<(), String> {
    for (i, raw) in ruleset.lines().enumerate() {
        let line = strip_comment(raw).trim();
        check_line(line).map_err(|e| format!("line {}: {e}", i + 1))?;
    }
    Ok(())
}

/// Cuts a `#` comment, except inside a quoted string (pf keeps those).
fn strip_comment(line: &str) -> &str {
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '#' if !quoted => return &line[..i],
            _ => {}
        }
    }
    line
}

fn check_line(line: &str) -> Result<(), String> {
    if let Some(c) = line
        .chars()
        .find(|c| !(c.is_ascii_graphic() || *c == ' ' || *c == '\t'))
    {
        return Err(format!("character {c:?} not allowed"));
    }
    if line.contains('\\') {
        return Err("line continuation (backslash) not allowed".to_string());
    }
    // pfctl applies some options the moment it parses them, whatever `-a`
    // says (`set skip on` reaches DIOCSETIFFLAG, `set limit`, `set debug`):
    // they would change pf for every interface and outlive the anchor.
    if line.split_whitespace().next() == Some("set") {
        return Err("\"set\" options are global to pf and outlive the link's anchor".to_string());
    }
    let words = line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
    for w in words {
        if FORBIDDEN_WORDS.contains(&w.to_ascii_lowercase().as_str()) {
            return Err(format!("{w:?} would reach beyond the link's anchor"));
        }
    }
    if let Some(m) = macro_names(line).find(|m| !MACROS.contains(m)) {
        return Err(format!(
            "unknown macro ${m} (known: $link $wg_if $wg_port $peer4 $peer6)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(name: &str, v4: &[&str], v6: &[&str]) -> LinkTarget {
        LinkTarget {
            name: name.into(),
            wg_if: "wg0".into(),
            wg_port: 51820,
            rdomain: 0,
            udp_rdomain: 0,
            addrs4: v4.iter().map(|a| a.parse().unwrap()).collect(),
            addrs6: v6.iter().map(|a| a.parse().unwrap()).collect(),
            qber: "".into(),
        }
    }

    #[test]
    fn many_links_lock_in_one_input_with_their_own_macros() {
        let a = target("a", &["192.0.2.1", "192.0.2.2"], &["2001:db8::1"]);
        let b = target("b", &["192.0.2.9"], &[]);
        let rules = "block drop quick on $wg_if from $peer4\n";
        let s = many_lockdown_input("qkd", &[&a, &b], rules).unwrap();
        let lock = |t: &LinkTarget| lockdown_input(t, rules);
        let want = format!(
            "link = \"a\"\nwg_if = \"wg0\"\nwg_port = \"51820\"\n\
             peer4 = \"{{ 192.0.2.1 192.0.2.2 }}\"\npeer6 = \"2001:db8::1\"\n\
             anchor \"a\" {{\n{}}}\n\
             link = \"b\"\nwg_if = \"wg0\"\nwg_port = \"51820\"\npeer4 = \"192.0.2.9\"\n\
             anchor \"b\" {{\n{}}}\n",
            lock(&a),
            lock(&b)
        );
        assert_eq!(s, want);
        assert_eq!(many_load_args("qkd"), ["-a", "qkd", "-f", "-"]);
    }

    #[test]
    fn one_load_is_refused_where_it_could_differ() {
        let a = target("a", &["192.0.2.1"], &["2001:db8::1"]);
        let b = target("b", &["192.0.2.9"], &[]);
        // b has no peer6: the one load would give it a's.
        let e = many_lockdown_input("qkd", &[&a, &b], "block from $peer6\n").unwrap_err();
        assert!(e.contains("link b") && e.contains("$peer6"), "{e}");
        // In a comment it is no use.
        assert!(many_lockdown_input("qkd", &[&a, &b], "block # $peer6\n").is_ok());
        let e = many_lockdown_input("qkd", &[&a], "block\n}\nanchor \"x\" {\n").unwrap_err();
        assert!(e.contains("braces"), "{e}");
        assert!(many_lockdown_input("qkd", &[&a], "pass to { $peer4 } label \"}\"\n").is_ok());
        let c = target("site_1", &[], &[]);
        let e = many_lockdown_input("qkd", &[&a, &c], "").unwrap_err();
        assert!(e.contains("site_1"), "{e}");
        assert!(many_lockdown_input("qkd_2", &[&a], "").is_err());
        assert!(many_lockdown_input("qkd_x", &[&target("a_b", &[], &[])], "").is_ok());
    }

    #[test]
    fn ruleset_checks() {
        assert!(check_ruleset("pass quick on $wg_if keep state (if-bound) # load\n").is_ok());
        for (bad, why) in [
            ("include \"/etc/x\"", "\"include\""),
            ("load anchor x from \"/etc/x\"", "\"load\""),
            ("table <t> file \"/etc/x\"", "\"file\""),
            ("pass \\", "continuation"),
            ("pass to $other", "unknown macro $other"),
            ("pass label \"a#\" load anchor", "\"load\""),
            ("set skip on $wg_if", "global to pf"),
            ("  set limit states 10", "global to pf"),
        ] {
            let e = check_ruleset(&format!("pass\n{bad}\n")).unwrap_err();
            assert!(e.starts_with("line 2: ") && e.contains(why), "{bad}: {e}");
        }
    }
}
