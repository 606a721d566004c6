//! nftables rulesets (DESIGN §5): a `.nft` bundle file checked and turned
//! into statements for one link's chain, and every script qkdpfd pipes to
//! `nft -f -`, as text. The parent's nftables backend loads them and its
//! dry-run backend writes them to files.
//!
//! Layout of the table, rebuilt by [`skeleton`] except the link chains
//! and the `locked_` sets (see [`dispatch`] for the maps and keys):
//!
//! ```text
//! table inet qkdpfd
//!   set alive    { type nf_proto; flags timeout }   the dead-man switch
//!   set wg_handshakes { typeof udp length . @th,64,32 }  WireGuard's handshakes
//!   map open_4   { type ipv4_addr . inet_service : verdict }  peer . port : jump link_<link>
//!   map lock_4   (same keys)                                   peer . port : jump lock_<link>
//!   set keys_4   (same type)    every key of the maps (for the drops)
//!   set locked_4 (same type)    the keys of locked links: empty, every link open
//!   set site     { type nf_proto }  ipv4 and ipv6 in it: every link locked
//!   set src0     { type nf_proto }  the same for the links of the first
//!   set src0_4   (keys_4's type)    [qber.X] section (name order) and its
//!                                   links' keys; src1 ... for the next
//!   ... _6 (ipv6_addr . inet_service), _if (ifname: the WireGuard interface)
//!   chain input   (hook input,   priority filter - 10, policy accept)
//!     per key kind: site locked -> jump lock_<link>, then drop;
//!                   its section locked -> jump lock_<link>, then drop;
//!                   locked -> jump lock_<link>, then drop;
//!                   otherwise -> jump link_<link>, then drop
//!   chain output, chain forward: likewise
//!   chain link_<link>   the open statements (tagged)
//!   chain lock_<link>   the lockdown statements, preloaded ("staged"), then a drop;
//!                       with new_session first the handshakes' pass, the same
//!                       for every link ([`handshake_statements`])
//! ```
//!
//! A flip adds the link's keys to the `locked_` sets or deletes them (over
//! netlink, see `parent/fw/nft/netlink.rs`): no rule, no jump, no process,
//! and no set per link. A lockdown of every link adds two elements to
//! `site`; it ends by moving every link's keys to the `locked_` sets and
//! emptying `site`, in one transaction. A lockdown of the links of one
//! QBER section (its source lost for all of them) does the same with
//! `src<i>`. The chains are loaded with `nft -f` when a policy
//! activates or a link's text changes.
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
//! substituted here (`$peer4` and `$peer6` as the set of the link's far
//! addresses of that family: a statement that names an empty one can never
//! match and is left out, unless negated, which is refused); anything that
//! could leave the chain (`jump`, `goto`, `;`, a command word, a raw `@set`)
//! is refused.
//!
//! Every chain qkdpfd loads carries a tag rule (its comment names the state
//! and how many rules follow), so that reading the kernel back can tell
//! what it holds although nft prints rules in its own normal form.

use super::LinkTarget;

pub mod dispatch;

use dispatch::{BaseRule, KeyExpr, Kind, LinkKeys, SITE_SET};

/// Comment of the tag rule heading an open `link_<link>` (then the count).
pub const OPEN_TAG: &str = "qkdpfd open n=";
/// Comment of the tag rule heading `lock_<link>` (then the count).
pub const LOCK_TAG: &str = "qkdpfd lockdown n=";
/// Comment of qkdpfd's own drop, ending `lock_<link>` or alone in `link_<link>`.
pub const DROP_TAG: &str = "qkdpfd drop";
/// Comment of the rules that let WireGuard handshakes through a lockdown.
pub const HANDSHAKE_TAG: &str = "qkdpfd handshake";
/// Comment of a guard table's drops.
pub const GUARD_TAG: &str = "qkdpfd guard";
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
        out.extend(stmt);
    }
    Ok(out)
}

/// The statement with its macros expanded; None when it names an empty
/// `$peer4` / `$peer6` and so can never match.
fn check_statement(link: &LinkTarget, line: &str) -> Result<Option<String>, String> {
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
fn substitute(link: &LinkTarget, line: &str) -> Result<Option<String>, String> {
    let mut out = String::with_capacity(line.len() + 16);
    let mut empty = None;
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
            "peer4" | "peer6" => {
                let addrs: Vec<String> = match name {
                    "peer4" => link.addrs4.iter().map(|a| a.to_string()).collect(),
                    _ => link.addrs6.iter().map(|a| a.to_string()).collect(),
                };
                if addrs.is_empty() {
                    empty = Some(name);
                }
                format!("{{ {} }}", addrs.join(", "))
            }
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
    match empty {
        None => Ok(Some(out)),
        Some(m) if negates(line) => Err(format!(
            "${m} is empty for this link (no address of that family): \
             a negated match against it would match every packet"
        )),
        Some(_) => Ok(None),
    }
}

/// Whether a statement negates a match, in any of nft's spellings: `!=`
/// and its keyword `ne` (both NEQ in nft's scanner) and a bare `!` (NOT).
/// Quoted strings and a trailing `#` comment are not code; any other `!`
/// counts, and `ne` counts as a whole word in either case, so that a
/// spelling nft would refuse is refused here too rather than left out.
fn negates(line: &str) -> bool {
    let mut code = String::with_capacity(line.len());
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            '#' if !quoted => break,
            _ if quoted => code.push(' '),
            _ => code.push(c),
        }
    }
    code.contains('!')
        || code
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .any(|w| w.eq_ignore_ascii_case("ne"))
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

/// Elements are added in chunks: one command per chunk keeps each line
/// short for nft's parser.
const CHUNK: usize = 512;

/// The table, base chains and dispatch maps, rebuilt in one transaction;
/// link chains are created if missing (empty = locked) and never flushed
/// here, nor are the `locked_` sets and `site` (a reload keeps a lockdown).
pub fn skeleton(table: &str, links: &[LinkTarget]) -> String {
    let mut s = format!("add table inet {table}\n");
    // The dead-man switch's set: never flushed here (its elements are the
    // parent's heartbeat; see parent/fw/nft/alive.rs).
    s.push_str(&format!(
        "add set inet {table} {ALIVE_SET} {{ type nf_proto; flags timeout; }}\n"
    ));
    s.push_str(&format!(
        "add set inet {table} {HANDSHAKE_SET} {{ typeof udp length . @th,64,32; }}\n\
         flush set inet {table} {HANDSHAKE_SET}\n\
         add element inet {table} {HANDSHAKE_SET} {{ {} }}\n",
        handshake_shapes_script()
    ));
    for hook in ["input", "forward", "output"] {
        s.push_str(&format!(
            "add chain inet {table} {hook} {{ type filter hook {hook} priority filter - 10; policy accept; }}\n\
             flush chain inet {table} {hook}\n"
        ));
    }
    for l in links {
        s.push_str(&format!(
            "add chain inet {table} link_{n}\nadd chain inet {table} lock_{n}\n",
            n = l.name
        ));
    }
    // Like the `locked_` sets, never flushed here: a site lock outlives a
    // restart (the engine lost, then `rcctl start`).
    s.push_str(&format!(
        "add set inet {table} {SITE_SET} {{ type nf_proto; }}\n"
    ));
    let owned = dispatch::owned(links);
    let sources = dispatch::sources(links);
    for (i, source) in sources.iter().enumerate() {
        // Never flushed here either; its key sets are rebuilt.
        let set = dispatch::source_set(i);
        s.push_str(&format!(
            "add set inet {table} {set} {{ type nf_proto; }}\n"
        ));
        for kind in Kind::ALL {
            let keys = kind.source_keys_set(i);
            s.push_str(&format!(
                "add set inet {table} {keys} {{ type {}; }}\nflush set inet {table} {keys}\n",
                kind.nft_type()
            ));
            let elems: Vec<String> = (links.iter())
                .filter(|l| *l.qber == **source)
                .flat_map(|l| owned[&l.name].script_elems(kind))
                .collect();
            push_elements(&mut s, "add", table, &keys, &elems);
        }
    }
    for kind in Kind::ALL {
        let ty = kind.nft_type();
        s.push_str(&format!(
            "add set inet {table} {} {{ type {ty}; }}\n",
            kind.locked_set()
        ));
        let keys: Vec<(&str, String)> = links
            .iter()
            .flat_map(|l| {
                let n = l.name.as_str();
                owned[n].script_elems(kind).into_iter().map(move |k| (n, k))
            })
            .collect();
        for (map, chain) in [(kind.open_map(), "link"), (kind.lock_map(), "lock")] {
            s.push_str(&format!(
                "add map inet {table} {map} {{ type {ty} : verdict; }}\nflush map inet {table} {map}\n"
            ));
            let elems: Vec<String> = keys
                .iter()
                .map(|(n, k)| format!("{k} : jump {chain}_{n}"))
                .collect();
            push_elements(&mut s, "add", table, &map, &elems);
        }
        let set = kind.keys_set();
        s.push_str(&format!(
            "add set inet {table} {set} {{ type {ty}; }}\nflush set inet {table} {set}\n"
        ));
        let elems: Vec<String> = keys.into_iter().map(|(_, k)| k).collect();
        push_elements(&mut s, "add", table, &set, &elems);
    }
    for hook in ["input", "forward", "output"] {
        for r in BaseRule::of_hook(hook, sources.len()) {
            s.push_str(&format!(
                "add rule inet {table} {hook} {}\n",
                r.text(ALIVE_SET)
            ));
        }
    }
    s
}

/// `<verb> element inet <table> <set> { ... }`, in chunks; nothing when
/// there are no elements.
fn push_elements(s: &mut String, verb: &str, table: &str, set: &str, elems: &[String]) {
    for chunk in elems.chunks(CHUNK) {
        s.push_str(&format!(
            "{verb} element inet {table} {set} {{ {} }}\n",
            chunk.join(", ")
        ));
    }
}

/// The key expressions of the link's protected traffic, per base chain.
pub fn protected_matches() -> Vec<(&'static str, KeyExpr)> {
    ["input", "output", "forward"]
        .into_iter()
        .flat_map(|h| KeyExpr::of_hook(h).iter().map(move |k| (h, *k)))
        .collect()
}

/// WireGuard's handshake messages, by UDP length and first four bytes
/// (message type, little-endian, then three reserved zero bytes):
/// initiation (type 1, 148 bytes), response (2, 92), cookie reply (3, 64),
/// and the keepalive: a data message (4) with nothing in it, 32 bytes
/// (header and tag), where the smallest that carries a packet is 48. Never
/// a packet: a session may be made while locked, nothing may be carried on
/// it. The keepalive is what confirms a new session to its responder;
/// without it the end that answered a handshake keeps sending on a session
/// the other end no longer has (its peer was re-created) until WireGuard
/// gives up on it. The skeleton's set [`HANDSHAKE_SET`] holds them, each
/// as UDP length . first word (big-endian, as the packet has it).
pub const HANDSHAKE_SHAPES: [(u16, u32); 4] = [
    (156, 0x0100_0000),
    (100, 0x0200_0000),
    (72, 0x0300_0000),
    (40, 0x0400_0000),
];

/// [`HANDSHAKE_SHAPES`] as the elements of an nft script.
fn handshake_shapes_script() -> String {
    (HANDSHAKE_SHAPES.iter())
        .map(|(len, word)| format!("{len} . {word:#010x}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The skeleton's set of [`HANDSHAKE_SHAPES`] (`udp length . @th,64,32`).
pub const HANDSHAKE_SET: &str = "wg_handshakes";

/// The rules that head `lock_<link>` when the lockdown lets handshakes
/// through (`[wireguard] new_session`): WireGuard's handshake messages
/// from and to a far gateway's underlay address and port, the keys the
/// skeleton's `keys_4`/`keys_6` sets hold. A packet reaches `lock_<link>`
/// only by one of the link's own keys, so an underlay packet here is from
/// or to the link's own far gateway, as when these rules named its
/// addresses; and no packet that came in or goes out on any link's
/// WireGuard interface (in `keys_if`) passes, whatever it claims to be:
/// what a locked tunnel carries is not a handshake of the underlay (it was
/// one before: the far gateway's address and port, claimed from inside the
/// tunnel, let its handshake shapes cross). The price: a link whose
/// underlay runs through another link's tunnel cannot make a session while
/// locked, and with `new_session` it stays locked (`no-session`). The same
/// text for every link: loads of
/// many links' lockdown chains copy one compiled chain
/// (`parent/fw/nft/copy.rs`) where per-link addresses made each chain an
/// `nft` compile of its own.
pub fn handshake_statements() -> Vec<String> {
    let tunnel = Kind::If.keys_set();
    [Kind::V4, Kind::V6]
        .into_iter()
        .flat_map(|kind| [KeyExpr::Source(kind), KeyExpr::Dest(kind)])
        .map(|key| {
            format!(
                "meta iifname != @{tunnel} meta oifname != @{tunnel} {} @{} \
                 udp length . @th,64,32 @{HANDSHAKE_SET} accept comment \"{HANDSHAKE_TAG}\"",
                key.text(),
                key.kind().keys_set()
            )
        })
        .collect()
}

/// Keys that a reload dispatches for the first time (a new link, a new
/// address): added to the `locked_` sets in the reload's transaction, so
/// that traffic on them starts locked whatever the link's chains hold
/// (a locked link whose address changed stays locked), until a flip opens
/// the link.
pub fn lock_new_keys(table: &str, new: &[LinkKeys]) -> String {
    let mut s = String::new();
    for kind in Kind::ALL {
        let elems: Vec<String> = new.iter().flat_map(|k| k.script_elems(kind)).collect();
        push_elements(&mut s, "add", table, &kind.locked_set(), &elems);
    }
    s
}

/// Ends a site lock without opening anything: every link's keys (`keys`,
/// as each owns them) added to the `locked_` sets and `site` emptied, in
/// one transaction.
pub fn end_site_lock(table: &str, keys: &[LinkKeys]) -> String {
    end_lock(table, keys, &[SITE_SET.to_string()])
}

/// Ends the locks of sets `sets` (`site`, `src<i>`) without opening
/// anything: the keys of the links they locked (`keys`) added to the
/// `locked_` sets and the sets emptied, in one transaction.
pub fn end_lock(table: &str, keys: &[LinkKeys], sets: &[String]) -> String {
    let mut s = lock_new_keys(table, keys);
    for set in sets {
        s.push_str(&format!("flush set inet {table} {set}\n"));
    }
    s
}

/// The link's keys added to the `locked_` sets (`add`) or taken out of
/// them (`add` then `delete`: deleting a key that is not there is an
/// error, and the two in one transaction take it out either way).
fn locked_elements(table: &str, keys: &LinkKeys, lock: bool) -> String {
    let mut s = String::new();
    let verbs: &[&str] = if lock { &["add"] } else { &["add", "delete"] };
    for verb in verbs {
        for kind in Kind::ALL {
            push_elements(
                &mut s,
                verb,
                table,
                &kind.locked_set(),
                &keys.script_elems(kind),
            );
        }
    }
    s
}

/// Opens the link: its chain becomes a tag rule that lets a read-back
/// count the statements, then the statements; its keys leave the
/// `locked_` sets in the same transaction.
pub fn flip_script(table: &str, link: &LinkTarget, keys: &LinkKeys, stmts: &[String]) -> String {
    let mut s = open_chain_script(table, link, stmts);
    s.push_str(&locked_elements(table, keys, false));
    s
}

/// Replaces the link chain's contents with the open statements, and
/// nothing else: preloading it while the link's keys take its lockdown
/// chain changes nothing in force.
pub fn open_chain_script(table: &str, link: &LinkTarget, stmts: &[String]) -> String {
    let chain = format!("link_{}", link.name);
    let mut s = format!("flush chain inet {table} {chain}\n");
    s.push_str(&tagged_rules(table, &chain, OPEN_TAG, stmts));
    s
}

/// Locks the link whatever `lock_<link>` held: the lockdown chain loaded
/// and the link's keys added to the `locked_` sets. The slow path, when
/// the lockdown text is not preloaded.
pub fn lock_script(table: &str, link: &LinkTarget, keys: &LinkKeys, stmts: &[String]) -> String {
    let mut s = stage_script(table, link, stmts);
    s.push_str(&locked_elements(table, keys, true));
    s
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

/// Replaces the lockdown chain's contents (preloading; nothing takes it
/// until the link's keys are in the `locked_` sets): tag, the bundle's
/// statements, then qkdpfd's own drop, so the chain drops whatever the
/// bundle's text says.
pub fn stage_script(table: &str, link: &LinkTarget, stmts: &[String]) -> String {
    let chain = format!("lock_{}", link.name);
    let mut s = format!("add chain inet {table} {chain}\nflush chain inet {table} {chain}\n");
    s.push_str(&tagged_rules(table, &chain, LOCK_TAG, stmts));
    s.push_str(&format!(
        "add rule inet {table} {chain} drop comment \"{DROP_TAG}\"\n"
    ));
    s
}

/// Both of the link's chains become one explicit drop, whichever of them
/// its keys take: the lockdown without a policy, and the fallback that
/// needs no bundle and works with either chain deleted or damaged.
pub fn clear_script(table: &str, link: &LinkTarget) -> String {
    let mut s = String::new();
    for chain in [format!("link_{}", link.name), format!("lock_{}", link.name)] {
        s.push_str(&format!(
            "add chain inet {table} {chain}\nflush chain inet {table} {chain}\n\
             add rule inet {table} {chain} drop comment \"{DROP_TAG}\"\n"
        ));
    }
    s
}

/// The guard table, rebuilt to drop exactly `links`' protected traffic at
/// a priority before our own table; no links: the table is removed. A drop
/// here is final whatever our table says. Sets `guard_<k>` hold every key
/// of every guarded link (shared or not).
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
    let all: Vec<LinkKeys> = links.iter().map(LinkKeys::all).collect();
    for kind in Kind::ALL {
        let set = guard_set(kind);
        s.push_str(&format!(
            "add set inet {guard} {set} {{ type {}; }}\n",
            kind.nft_type()
        ));
        let mut elems: Vec<String> = all.iter().flat_map(|k| k.script_elems(kind)).collect();
        elems.sort();
        elems.dedup();
        push_elements(&mut s, "add", guard, &set, &elems);
    }
    for (hook, key) in protected_matches() {
        s.push_str(&format!(
            "add rule inet {guard} {hook} {} @{} drop comment \"{GUARD_TAG}\"\n",
            key.text(),
            guard_set(key.kind())
        ));
    }
    s
}

/// The guard table's set of `kind`'s keys.
pub fn guard_set(kind: Kind) -> String {
    format!("guard_{}", kind.locked_set().trim_start_matches("locked_"))
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
             ip daddr $peer4 log prefix \"qkd $link \" drop\n",
        )
        .unwrap();
        assert_eq!(
            got,
            [
                "ip saddr { 198.51.100.2 } udp sport 51820 iifname \"wg0\" counter accept",
                "ip daddr { 198.51.100.2 } log prefix \"qkd dr \" drop",
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
    fn peer_macros_are_the_links_addresses() {
        let mut l = dr();
        l.addrs4.push("192.0.2.9".parse().unwrap());
        let got = render_statements(&l, "ip saddr $peer4 accept\nip6 saddr $peer6 accept\n");
        assert_eq!(
            got.unwrap(),
            ["ip saddr { 198.51.100.2, 192.0.2.9 } accept"],
            "a statement on an empty $peer6 never matches: left out"
        );
        let e = render_statements(&l, "ip6 saddr != $peer6 drop\n").unwrap_err();
        assert!(e.contains("$peer6 is empty"), "{e}");
    }

    #[test]
    fn every_negation_of_an_empty_peer_macro_is_refused() {
        // nft's scanner: "!=" and "ne" are NEQ, "!" alone is NOT.
        for bad in [
            "ip6 saddr ne $peer6 drop",
            "ip6 saddr NE $peer6 drop",
            "ip6 saddr!=$peer6 drop",
            "ip6 saddr ! $peer6 drop",
            "ip6 saddr !$peer6 drop",
            "ip6 saddr $peer6 tcp dport ne 22 drop",
        ] {
            let e = render_statements(&dr(), &format!("{bad}\n")).unwrap_err();
            assert!(e.contains("$peer6 is empty"), "{bad}: {e}");
        }
        // Not negations: a word that only contains "ne", a quoted or
        // commented "!".
        for left_out in [
            "ip6 saddr $peer6 iifname \"ne\" drop",
            "ip6 saddr $peer6 iifname \"wg!\" drop",
            "ip6 saddr $peer6 drop comment \"never!\"",
            "ip6 saddr $peer6 meta l4proto sctp drop",
            "ip6 saddr $peer6 drop # ne !",
        ] {
            let got = render_statements(&dr(), &format!("{left_out}\n"));
            assert_eq!(got.unwrap(), Vec::<String>::new(), "{left_out}");
        }
    }

    #[test]
    fn open_and_lock_scripts_move_the_links_keys() {
        let stmts = vec!["accept".to_string()];
        let keys = LinkKeys::all(&dr());
        assert_eq!(
            flip_script("qkdpfd", &dr(), &keys, &stmts),
            "flush chain inet qkdpfd link_dr\n\
             add rule inet qkdpfd link_dr counter comment \"qkdpfd open n=1\"\n\
             add rule inet qkdpfd link_dr accept\n\
             add element inet qkdpfd locked_4 { 198.51.100.2 . 51820 }\n\
             add element inet qkdpfd locked_if { \"wg0\" }\n\
             delete element inet qkdpfd locked_4 { 198.51.100.2 . 51820 }\n\
             delete element inet qkdpfd locked_if { \"wg0\" }\n"
        );
        let lock = lock_script("qkdpfd", &dr(), &keys, &["counter drop".to_string()]);
        assert!(lock.starts_with(&stage_script("qkdpfd", &dr(), &["counter drop".into()])));
        assert!(lock.ends_with(
            "add rule inet qkdpfd lock_dr drop comment \"qkdpfd drop\"\n\
             add element inet qkdpfd locked_4 { 198.51.100.2 . 51820 }\n\
             add element inet qkdpfd locked_if { \"wg0\" }\n"
        ));
        let s = skeleton("qkdpfd", &[dr()]);
        assert!(s.contains("add set inet qkdpfd locked_4 { type ipv4_addr . inet_service; }\n"));
        assert!(
            !s.contains("flush set inet qkdpfd locked_"),
            "a reload keeps the state"
        );
        assert!(s.contains("add element inet qkdpfd keys_if { \"wg0\" }\n"));
    }

    #[test]
    fn handshakes_only_by_type_and_length_from_and_to_a_far_gateway() {
        let h = handshake_statements();
        assert_eq!(h.len(), 4, "from and to, IPv4 and IPv6");
        assert_eq!(
            h[0],
            "meta iifname != @keys_if meta oifname != @keys_if \
             ip saddr . udp sport @keys_4 udp length . @th,64,32 @wg_handshakes \
             accept comment \"qkdpfd handshake\""
        );
        assert!(h[1].contains(" ip daddr . udp dport @keys_4 "));
        assert!(h[2].contains(" ip6 saddr . udp sport @keys_6 "));
        assert!(h[3].contains(" ip6 daddr . udp dport @keys_6 "));
        // Type 4 only at the keepalive's length: never a packet.
        let data: Vec<_> = HANDSHAKE_SHAPES
            .iter()
            .filter(|s| s.1 == 0x0400_0000)
            .collect();
        assert_eq!(data, [&(40, 0x0400_0000)]);
        let s = skeleton("qkdpfd", &[dr()]);
        assert!(s.contains(
            "add set inet qkdpfd wg_handshakes { typeof udp length . @th,64,32; }\n\
             flush set inet qkdpfd wg_handshakes\n\
             add element inet qkdpfd wg_handshakes { 156 . 0x01000000, 100 . 0x02000000, \
             72 . 0x03000000, 40 . 0x04000000 }\n"
        ));
    }

    #[test]
    fn skeleton_dispatches_by_maps_whatever_the_link_count() {
        let s = skeleton("qkdpfd", &[dr()]);
        assert!(
            s.contains("add element inet qkdpfd open_4 { 198.51.100.2 . 51820 : jump link_dr }\n")
        );
        assert!(s.contains("add element inet qkdpfd lock_if { \"wg0\" : jump lock_dr }\n"));
        assert!(
            !s.contains("element inet qkdpfd open_6"),
            "no IPv6 address, no element"
        );
        let many: Vec<LinkTarget> = (0..1000)
            .map(|i| LinkTarget {
                name: format!("l{i}"),
                wg_if: format!("wg{i}"),
                ..dr()
            })
            .collect();
        let big = skeleton("qkdpfd", &many);
        let rules = |t: &str| t.lines().filter(|l| l.starts_with("add rule")).count();
        assert_eq!(rules(&s), 48);
        assert_eq!(rules(&big), 48, "the base chains do not grow with links");
        assert!(s.contains("add set inet qkdpfd site { type nf_proto; }\n"));
        assert!(
            !s.contains("flush set inet qkdpfd site"),
            "a site lock outlives a restart"
        );
        // 1,000 links on one address: l0 owns it.
        assert_eq!(big.matches("198.51.100.2 . 51820 : jump").count(), 2);
        assert!(big.contains("\"wg999\" : jump link_l999"));
    }

    #[test]
    fn the_guard_drops_every_key_of_its_links() {
        let g = guard_script("g", &[dr()]);
        assert!(g.contains("add element inet g guard_4 { 198.51.100.2 . 51820 }\n"));
        assert!(
            g.contains("add rule inet g input iifname @guard_if drop comment \"qkdpfd guard\"\n")
        );
        assert_eq!(g.matches(" drop comment").count(), 8);
        assert_eq!(
            guard_script("g", &[]),
            "add table inet g\ndelete table inet g\n"
        );
    }
}
