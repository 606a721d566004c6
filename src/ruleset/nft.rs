//! nftables rulesets (DESIGN §5): a `.nft` bundle file checked and turned
//! into statements for one link's chain, and every script qkdpfd pipes to
//! `nft -f -`, as text. The parent's nftables backend loads them and its
//! dry-run backend writes them to files.
//!
//! Layout of the table, rebuilt by [`skeleton`] except the link chains:
//!
//! ```text
//! table inet qkdpfd
//!   set peer4_<link> { type ipv4_addr }   set peer6_<link> { type ipv6_addr }
//!   chain input   (hook input,   priority filter - 10, policy accept)
//!     ip  saddr @peer4_<link> udp sport <wg_port> jump link_<link>   + same match: drop
//!     ip6 saddr @peer6_<link> udp sport <wg_port> jump link_<link>   + drop
//!     iifname "<wg_if>" jump link_<link>                               + drop
//!   chain output  (daddr / dport / oifname, likewise)
//!   chain forward (iifname and oifname "<wg_if>", likewise)
//!   set locked_<link> { type nf_proto }    empty: open; ipv4, ipv6: locked
//!   chain link_<link>   `meta nfproto @locked_<link> goto lock_<link>` (the
//!                       switch), then the open statements
//!   chain lock_<link>   the lockdown statements, preloaded ("staged")
//! ```
//!
//! A flip adds or flushes the elements of `locked_<link>` (over netlink,
//! see `parent/fw/nft/netlink.rs`): no rule, no jump, no process. The switch
//! and both chains are loaded with `nft -f` when a policy activates or a
//! link's text changes.
//!
//! Every protected packet is sent to its link chain and dropped unless that
//! chain reaches `accept`: an empty chain, a chain that returns, a missing
//! rule, all mean locked. A drop in our table is final whatever other tables
//! say. A flip to lockdown needs no conntrack flush: nftables evaluates every
//! packet of a flow against the hooks, and an established flow skips our link
//! chain only if a rule accepts it by `ct state established` *before* the
//! jump, which this table never does. Bundle authors must not put `ct state
//! established accept` ahead of their policy in `open.nft` believing it is a
//! shortcut: it is harmless within the link chain (the flip replaces the whole
//! chain) but such a rule in any base chain of ours would let old flows
//! through. Flows offloaded to a flowtable skip the forward hook: unsupported.
//!
//! A `.nft` bundle file holds statements for the link chain only, one per
//! line. Macros `$link`, `$wg_if`, `$wg_port`, `$peer4`, `$peer6` are
//! substituted here; anything that could leave the chain (`jump`, `goto`, `;`,
//! a command word, a raw `@set`) is refused.
//!
//! Every chain qkdpfd loads carries a tag rule (its comment names the state
//! and how many rules follow), so that reading the kernel back can tell
//! what it holds although nft prints rules in its own normal form.

use super::LinkTarget;

/// Comment of the tag rule heading an open `link_<link>` (then the count).
pub const OPEN_TAG: &str = "qkdpfd open n=";
/// Comment of the tag rule heading `lock_<link>` (then the count).
pub const LOCK_TAG: &str = "qkdpfd lockdown n=";
/// Comment of qkdpfd's own drop, ending `lock_<link>` or alone in `link_<link>`.
pub const DROP_TAG: &str = "qkdpfd drop";
/// Comment of the switch heading `link_<link>` once qkdpfd loaded it.
pub const SWITCH_TAG: &str = "qkdpfd switch";
/// Comment of the rules that let WireGuard handshakes through a lockdown.
pub const HANDSHAKE_TAG: &str = "qkdpfd handshake";
/// Comment of a guard table's drops (then the link's name).
pub const GUARD_TAG: &str = "qkdpfd guard ";
/// The dead-man switch's set (type nf_proto, flags timeout): every jump to
/// a link chain needs a live element in it.
pub const ALIVE_SET: &str = "alive";

/// Words that start an nft command; a statement line must not begin with one.
const COMMAND_WORDS: &[&str] = &[
    "table", "chain", "flush", "delete", "add", "insert", "include", "define", "replace", "create",
    "reset", "list", "rename", "destroy", "export", "import", "monitor", "describe", "set", "map",
    "element", "rule",
];

/// Words refused anywhere in a statement: they leave the link's chain.
const ESCAPE_WORDS: &[&str] = &["jump", "goto"];

/// Checks a `.nft` bundle file and substitutes the link's macros; one
/// statement per returned line. Errors name the line.
pub fn render_statements(link: &LinkTarget, ruleset: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (i, raw) in ruleset.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let stmt = check_statement(link, line).map_err(|e| format!("line {}: {e}", i + 1))?;
        out.push(stmt);
    }
    Ok(out)
}

fn check_statement(link: &LinkTarget, line: &str) -> Result<String, String> {
    if let Some(c) = line
        .chars()
        .find(|c| !(c.is_ascii_graphic() || *c == ' ' || *c == '\t'))
    {
        return Err(format!("character {c:?} not allowed"));
    }
    for (c, why) in [
        (';', "';' would start another command"),
        ('\\', "backslash not allowed"),
        ('@', "refer to sets with $peer4 / $peer6, not '@'"),
    ] {
        if line.contains(c) {
            return Err(why.to_string());
        }
    }
    let first = line.split_whitespace().next().unwrap_or("");
    if COMMAND_WORDS.contains(&first.to_ascii_lowercase().as_str()) {
        return Err(format!("a statement may not start with {first:?}"));
    }
    let words = line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
    if let Some(w) = words
        .into_iter()
        .find(|w| ESCAPE_WORDS.contains(&w.to_ascii_lowercase().as_str()))
    {
        return Err(format!("{w:?} would leave the link's chain"));
    }
    substitute(link, line)
}

/// Expands `$name` macros; an unknown one is an error, not left to nft.
fn substitute(link: &LinkTarget, line: &str) -> Result<String, String> {
    let mut out = String::with_capacity(line.len() + 16);
    let mut rest = line;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let name = &after[..len];
        let value = match name {
            "link" => link.name.clone(),
            "wg_if" => format!("\"{}\"", link.wg_if),
            "wg_port" => link.wg_port.to_string(),
            "peer4" => format!("@peer4_{}", link.name),
            "peer6" => format!("@peer6_{}", link.name),
            "" => return Err("'$' without a macro name".to_string()),
            _ => {
                return Err(format!(
                    "unknown macro ${name} (known: $link $wg_if $wg_port $peer4 $peer6)"
                ));
            }
        };
        out.push_str(&value);
        rest = &after[len..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The boot include (`qkdpfd -B`): the skeleton, then every link chain
/// with qkdpfd's drop. Loaded after Debian's `flush ruleset` it recreates
/// the table locked; loaded over a live table it only appends drops after
/// whatever a link chain holds.
pub fn boot_script(table: &str, links: &[LinkTarget]) -> String {
    let mut s = String::from(
        "# qkdpfd -B: every protected link dropped until qkdpfd(8) runs.\n\
         # Regenerated at each start; include it from /etc/nftables.conf.\n",
    );
    s.push_str(&skeleton(table, links));
    for l in links {
        s.push_str(&format!(
            "add rule inet {table} link_{} drop comment \"{DROP_TAG}\"\n",
            l.name
        ));
    }
    s
}

/// The table, base chains and per-link sets, rebuilt in one transaction;
/// link chains are created if missing (empty = locked) and never flushed here.
pub fn skeleton(table: &str, links: &[LinkTarget]) -> String {
    let mut s = format!("add table inet {table}\n");
    // The dead-man switch's set: never flushed here (its elements are the
    // parent's heartbeat; see parent/fw/nft/alive.rs).
    s.push_str(&format!(
        "add set inet {table} {} {{ type nf_proto; flags timeout; }}\n",
        ALIVE_SET
    ));
    for hook in ["input", "forward", "output"] {
        s.push_str(&format!(
            "add chain inet {table} {hook} {{ type filter hook {hook} priority filter - 10; policy accept; }}\n\
             flush chain inet {table} {hook}\n"
        ));
    }
    for l in links {
        let n = &l.name;
        s.push_str(&format!("add chain inet {table} link_{n}\n"));
        s.push_str(&format!("add chain inet {table} lock_{n}\n"));
        // The link's state: never flushed here (a reload keeps a lockdown).
        s.push_str(&format!(
            "add set inet {table} {} {{ type nf_proto; }}\n",
            locked_set(l)
        ));
        let v4: Vec<String> = l.addrs4.iter().map(|a| a.to_string()).collect();
        let v6: Vec<String> = l.addrs6.iter().map(|a| a.to_string()).collect();
        push_set(&mut s, table, &format!("peer4_{n}"), "ipv4_addr", &v4);
        push_set(&mut s, table, &format!("peer6_{n}"), "ipv6_addr", &v6);
    }
    for l in links {
        for (hook, m) in protected_matches(l) {
            // The jump needs a live heartbeat; the drop does not.
            let jump = format!("meta nfproto @{} jump link_{}", ALIVE_SET, l.name);
            for verdict in [jump, "drop".to_string()] {
                s.push_str(&format!("add rule inet {table} {hook} {m} {verdict}\n"));
            }
        }
    }
    s
}

fn push_set(s: &mut String, table: &str, set: &str, ty: &str, elems: &[String]) {
    s.push_str(&format!(
        "add set inet {table} {set} {{ type {ty}; }}\nflush set inet {table} {set}\n"
    ));
    if !elems.is_empty() {
        s.push_str(&format!(
            "add element inet {table} {set} {{ {} }}\n",
            elems.join(", ")
        ));
    }
}

/// (base chain, match) for each kind of the link's protected traffic.
pub fn protected_matches(l: &LinkTarget) -> Vec<(&'static str, String)> {
    let (n, p, i) = (&l.name, l.wg_port, &l.wg_if);
    vec![
        ("input", format!("ip saddr @peer4_{n} udp sport {p}")),
        ("input", format!("ip6 saddr @peer6_{n} udp sport {p}")),
        ("input", format!("iifname \"{i}\"")),
        ("output", format!("ip daddr @peer4_{n} udp dport {p}")),
        ("output", format!("ip6 daddr @peer6_{n} udp dport {p}")),
        ("output", format!("oifname \"{i}\"")),
        ("forward", format!("iifname \"{i}\"")),
        ("forward", format!("oifname \"{i}\"")),
    ]
}

/// WireGuard's handshake messages between the link's peer and us, by UDP
/// length and first four bytes (message type, little-endian, then three
/// reserved zero bytes): initiation (type 1, 148 bytes), response (2, 92),
/// cookie reply (3, 64), and the keepalive: a data message (4) with nothing
/// in it, 32 bytes (header and tag), where the smallest that carries a
/// packet is 48. Never a packet: a session may be made while locked,
/// nothing may be carried on it. The keepalive is what confirms a new
/// session to its responder; without it the end that answered a handshake
/// keeps sending on a session the other end no longer has (its peer was
/// re-created) until WireGuard gives up on it. Heads `lock_<link>` when the
/// lockdown lets handshakes through (`[wireguard] new_session`). Only
/// underlay packets reach here with this shape: inner packets of a locked
/// tunnel are data messages of 48 bytes or more on the underlay.
pub fn handshake_statements(link: &LinkTarget) -> Vec<String> {
    const SHAPES: &str = "udp length . @th,64,32 { 156 . 0x01000000, 100 . 0x02000000, 72 . 0x03000000, 40 . 0x04000000 }";
    let (n, p) = (&link.name, link.wg_port);
    [
        format!("ip saddr @peer4_{n} udp sport {p}"),
        format!("ip6 saddr @peer6_{n} udp sport {p}"),
        format!("ip daddr @peer4_{n} udp dport {p}"),
        format!("ip6 daddr @peer6_{n} udp dport {p}"),
    ]
    .into_iter()
    .map(|m| format!("{m} {SHAPES} accept comment \"{HANDSHAKE_TAG}\""))
    .collect()
}

/// The set whose elements (ipv4, ipv6) send all of the link's traffic to
/// its lockdown chain.
pub fn locked_set(link: &LinkTarget) -> String {
    format!("locked_{}", link.name)
}

/// The switch heading `link_<link>`: while `locked_<link>` holds the
/// packet's family, the lockdown chain decides, and with no verdict there
/// the base chain's drop.
fn switch_rule(table: &str, link: &LinkTarget) -> String {
    let n = &link.name;
    format!(
        "add rule inet {table} link_{n} meta nfproto @{} goto lock_{n} comment \"{SWITCH_TAG}\"\n",
        locked_set(link)
    )
}

/// Opens the link: its chain becomes the switch, a tag rule that lets a
/// read-back count the statements, and the statements; its `locked_` set
/// is emptied in the same transaction.
pub fn flip_script(table: &str, link: &LinkTarget, stmts: &[String]) -> String {
    let chain = format!("link_{}", link.name);
    let mut s = format!("flush chain inet {table} {chain}\n");
    s.push_str(&switch_rule(table, link));
    s.push_str(&tagged_rules(table, &chain, OPEN_TAG, stmts));
    s.push_str(&format!("flush set inet {table} {}\n", locked_set(link)));
    s
}

/// Locks the link whatever its chains held: the lockdown chain loaded,
/// the link chain reduced to the switch, the `locked_` set filled. The
/// slow path, when the lockdown text is not preloaded or the link chain
/// was not loaded by us.
pub fn lock_script(table: &str, link: &LinkTarget, stmts: &[String]) -> String {
    let mut s = stage_script(table, link, stmts);
    s.push_str(&format!("flush chain inet {table} link_{}\n", link.name));
    s.push_str(&switch_rule(table, link));
    s.push_str(&lock_elements(table, link));
    s
}

/// The flip to lockdown as nft text (the daemon's fast path sends it over
/// netlink instead).
fn lock_elements(table: &str, link: &LinkTarget) -> String {
    format!(
        "add element inet {table} {} {{ ipv4, ipv6 }}\n",
        locked_set(link)
    )
}

/// The counting tag rule (`tag` + statement count), then the statements.
fn tagged_rules(table: &str, chain: &str, tag: &str, stmts: &[String]) -> String {
    let mut s = format!(
        "add rule inet {table} {chain} counter comment \"{tag}{}\"\n",
        stmts.len()
    );
    for st in stmts {
        s.push_str(&format!("add rule inet {table} {chain} {st}\n"));
    }
    s
}

/// Replaces the lockdown chain's contents (preloading; nothing diverts to
/// it yet): tag, the bundle's statements, then qkdpfd's own drop, so the
/// chain drops whatever the bundle's text says.
pub fn stage_script(table: &str, link: &LinkTarget, stmts: &[String]) -> String {
    let chain = format!("lock_{}", link.name);
    let mut s = format!("flush chain inet {table} {chain}\n");
    s.push_str(&tagged_rules(table, &chain, LOCK_TAG, stmts));
    s.push_str(&format!(
        "add rule inet {table} {chain} drop comment \"{DROP_TAG}\"\n"
    ));
    s
}

/// The link chain becomes one explicit drop: the lockdown without a
/// policy, and the fallback that needs neither `lock_<l>` nor a bundle.
pub fn clear_script(table: &str, link: &LinkTarget) -> String {
    let chain = format!("link_{}", link.name);
    format!(
        "add chain inet {table} {chain}\nflush chain inet {table} {chain}\n\
         add rule inet {table} {chain} drop comment \"{DROP_TAG}\"\n"
    )
}

/// The guard table, rebuilt to drop exactly `links`' protected traffic at
/// a priority before our own table; no links: the table is removed. A drop
/// here is final whatever our table says.
pub fn guard_script(guard: &str, links: &[LinkTarget]) -> String {
    let mut s = format!("add table inet {guard}\ndelete table inet {guard}\n");
    if links.is_empty() {
        return s;
    }
    s.push_str(&format!("add table inet {guard}\n"));
    for hook in ["input", "forward", "output"] {
        s.push_str(&format!(
            "add chain inet {guard} {hook} {{ type filter hook {hook} priority filter - 20; policy accept; }}\n"
        ));
    }
    for l in links {
        let n = &l.name;
        let v4: Vec<String> = l.addrs4.iter().map(|a| a.to_string()).collect();
        let v6: Vec<String> = l.addrs6.iter().map(|a| a.to_string()).collect();
        push_set(&mut s, guard, &format!("peer4_{n}"), "ipv4_addr", &v4);
        push_set(&mut s, guard, &format!("peer6_{n}"), "ipv6_addr", &v6);
        for (hook, m) in protected_matches(l) {
            s.push_str(&format!(
                "add rule inet {guard} {hook} {m} drop comment \"{GUARD_TAG}{n}\"\n"
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dr() -> LinkTarget {
        LinkTarget::sample()
    }

    #[test]
    fn macros_expand() {
        let got = render_statements(
            &dr(),
            "# comment\n\n ip saddr $peer4 udp sport $wg_port iifname $wg_if counter accept\r\n\
             ip6 daddr $peer6 log prefix \"qkd $link \" drop\n",
        )
        .unwrap();
        assert_eq!(
            got,
            [
                "ip saddr @peer4_dr udp sport 51820 iifname \"wg0\" counter accept",
                "ip6 daddr @peer6_dr log prefix \"qkd dr \" drop",
            ]
        );
    }

    #[test]
    fn forbidden_constructs() {
        for (bad, why) in [
            ("accept; add rule inet qkdpfd link_x accept", "';'"),
            ("jump link_other", "leave"),
            ("udp dport 1 goto x", "leave"),
            ("meta l4proto vmap { udp : jump x }", "leave"),
            ("ip saddr $unknown accept", "unknown macro $unknown"),
            ("ip saddr $ accept", "without a macro"),
            ("ip saddr @peer4_other accept", "'@'"),
            ("table inet x { }", "may not start"),
            ("flush ruleset", "may not start"),
            ("include \"/etc/x\"", "may not start"),
            ("accept \\", "backslash"),
            ("accept\u{7}", "character"),
        ] {
            let e = render_statements(&dr(), &format!("accept\n{bad}\n")).unwrap_err();
            assert!(e.starts_with("line 2: "), "{bad}: {e}");
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn open_and_lock_scripts_put_the_switch_first() {
        let stmts = vec!["accept".to_string()];
        let switch = "add rule inet qkdpfd link_dr meta nfproto @locked_dr goto lock_dr comment \"qkdpfd switch\"\n";
        assert_eq!(
            flip_script("qkdpfd", &dr(), &stmts),
            format!(
                "flush chain inet qkdpfd link_dr\n{switch}\
                 add rule inet qkdpfd link_dr counter comment \"qkdpfd open n=1\"\n\
                 add rule inet qkdpfd link_dr accept\n\
                 flush set inet qkdpfd locked_dr\n"
            )
        );
        let lock = lock_script("qkdpfd", &dr(), &["counter drop".to_string()]);
        assert!(lock.starts_with(&stage_script("qkdpfd", &dr(), &["counter drop".into()])));
        assert!(lock.ends_with(&format!(
            "flush chain inet qkdpfd link_dr\n{switch}\
             add element inet qkdpfd locked_dr {{ ipv4, ipv6 }}\n"
        )));
        let s = skeleton("qkdpfd", &[dr()]);
        assert!(s.contains("add set inet qkdpfd locked_dr { type nf_proto; }\n"));
        assert!(
            !s.contains("flush set inet qkdpfd locked_dr"),
            "a reload keeps the state"
        );
    }

    #[test]
    fn handshakes_only_by_type_and_length_to_and_from_the_peer() {
        let h = handshake_statements(&dr());
        assert_eq!(h.len(), 4);
        assert_eq!(
            h[0],
            "ip saddr @peer4_dr udp sport 51820 udp length . @th,64,32 \
             { 156 . 0x01000000, 100 . 0x02000000, 72 . 0x03000000, 40 . 0x04000000 } \
             accept comment \"qkdpfd handshake\""
        );
        assert!(h[3].starts_with("ip6 daddr @peer6_dr udp dport 51820 udp length"));
        // Type 4 only at the keepalive's length: never a packet.
        assert_eq!(h[0].matches("0x04000000").count(), 1);
        assert!(h[0].contains("40 . 0x04000000"));
    }

    #[test]
    fn skeleton_jumps_then_drops() {
        let s = skeleton("qkdpfd", &[dr()]);
        assert!(s.contains(
            "add rule inet qkdpfd input ip saddr @peer4_dr udp sport 51820 meta nfproto @alive jump link_dr\n\
             add rule inet qkdpfd input ip saddr @peer4_dr udp sport 51820 drop\n"
        ));
        assert!(s.contains("add element inet qkdpfd peer4_dr { 198.51.100.2 }\n"));
        assert!(!s.contains("add element inet qkdpfd peer6_dr"));
        assert!(!s.contains("flush chain inet qkdpfd link_dr"));
        assert_eq!(s.matches(" drop\n").count(), 8);
    }
}
