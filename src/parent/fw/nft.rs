//! nftables backend (DESIGN §5), run by the privileged parent on Linux. It
//! renders nft(8) scripts and pipes each to one `nft -f -`, which the kernel
//! applies as one transaction: a rejected script leaves every chain as it was.
//! It touches only table `inet <anchor>`.
//!
//! Layout of the table, rebuilt by [`Nft::init`] except the link chains:
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
//!   chain link_<link>   the open statements; when locked, first a `goto lock_<link>`
//!   chain lock_<link>   the lockdown statements, preloaded ("staged")
//! ```
//!
//! Why the lockdown chain is preloaded: in nf_tables, a transaction that
//! deletes rules or elements waits for an RCU grace period before it
//! returns (about 15 ms on our test VMs), one that only adds does not (about
//! 3 ms). So a flip to lockdown only inserts `goto lock_<link>` at the head of
//! `link_<link>`: every packet from then on takes the lockdown statements and,
//! with no verdict there, returns to the base chain and its drop. A flip to
//! open replaces `link_<link>` as a whole (flush plus the statements: slow,
//! and it may be). Unstaged or changed lockdown text is loaded in the same
//! transaction as the goto.
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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{Firewall, Readback};
use crate::lock::Enforcement;
use crate::ruleset::{LinkTarget, check_names, valid_name};
use crate::tool::{FwError, TOOL_TIMEOUT, Tool};

pub mod alive;
pub mod readback;
mod render;
#[cfg(test)]
mod tests;

use readback::{DROP_TAG, GUARD_TAG, LOCK_TAG, OPEN_TAG};
pub use render::render_statements;

/// The nftables backend.
pub struct Nft {
    nft: PathBuf,
    table: String,
    /// Lockdown text known to be loaded in `lock_<link>`, per link.
    staged: std::collections::HashMap<String, String>,
    /// The guard table may exist (a guard set by us, or left by an earlier
    /// run): read-backs list it too.
    guard_may_exist: bool,
    /// The dead-man switch as last asked for: None until the parent arms
    /// it; Some(None) disarmed; Some(Some(t)) armed with timeout t.
    alive: Option<Option<std::time::Duration>>,
    /// Netlink sequence numbers of the refreshes.
    seq: u32,
    /// The ruleset generation at which `verified` was read, while it is
    /// known that nothing but our own heartbeat has changed since: a tick
    /// then skips the listing (half a megabyte at 100 links). Used only
    /// once the heartbeat works, which proves this process's netlink sees
    /// the nftables that `nft` lists.
    verified_gen: Option<u32>,
    verified: BTreeMap<String, Readback>,
}

impl Nft {
    pub fn new(nft: &Path, table: &str) -> Nft {
        Nft {
            nft: nft.to_path_buf(),
            table: table.to_string(),
            staged: std::collections::HashMap::new(),
            guard_may_exist: true,
            alive: None,
            seq: 0,
            verified_gen: None,
            verified: BTreeMap::new(),
        }
    }

    /// The ruleset generation, once the heartbeat has shown that netlink
    /// reaches our nftables; None otherwise or on any error.
    fn generation(&mut self) -> Option<u32> {
        if !matches!(self.alive, Some(Some(_))) {
            return None;
        }
        self.seq = self.seq.wrapping_add(4);
        alive::generation(self.seq).ok()
    }

    fn refresh_alive(&mut self, timeout: Option<std::time::Duration>) -> Result<(), FwError> {
        // Our own heartbeat touches only the `alive` set: if nothing else
        // changed before it and nothing else slipped in with it (exactly one
        // more generation), what was verified still holds.
        let before = self.generation();
        self.seq = self.seq.wrapping_add(4);
        let r = alive::refresh(&self.table, self.seq, timeout)
            .map_err(|e| FwError::refused(format!("dead-man switch: {e}")));
        let after = self.generation();
        self.verified_gen = match (self.verified_gen, before, after, &r) {
            (Some(v), Some(b), Some(a), Ok(())) if v == b && a == b.wrapping_add(1) => Some(a),
            _ => None,
        };
        r
    }

    fn guard_table(&self) -> String {
        format!("{}_guard", self.table)
    }

    /// The read-back right after a flip: the link's own chains (small,
    /// whatever the number of links), and the guard if one may exist.
    fn observe_one(
        &mut self,
        links: &[LinkTarget],
        name: &str,
    ) -> Result<BTreeMap<String, Readback>, FwError> {
        let Some(link) = links.iter().find(|l| l.name == name) else {
            return Ok(BTreeMap::new());
        };
        let mut listing = readback::Listing::default();
        for chain in [format!("link_{name}"), format!("lock_{name}")] {
            if let Some(l) = self.list_chain(&chain)? {
                listing.chains.extend(l.chains);
            }
        }
        let guarded = if self.guard_may_exist {
            let g = self.list(&self.guard_table())?;
            readback::judge(std::slice::from_ref(link), None, g.as_ref())[name].guarded
        } else {
            false
        };
        if !readback::lock_chain_ok(&listing, name) {
            self.staged.remove(name);
        }
        let state = readback::judge_chains(link, &listing);
        Ok(BTreeMap::from([(
            name.to_string(),
            Readback { state, guarded },
        )]))
    }

    /// `nft -j list chain inet <t> <chain>`; None when it does not exist.
    fn list_chain(&self, chain: &str) -> Result<Option<readback::Listing>, FwError> {
        self.list_json(&["chain", "inet", &self.table, chain])
    }

    /// `nft -j list table inet <t>`; None when the table does not exist.
    fn list(&self, table: &str) -> Result<Option<readback::Listing>, FwError> {
        self.list_json(&["table", "inet", table])
    }

    /// `nft -j list <what...>`, parsed; None when nft says it does not exist.
    fn list_json(&self, what: &[&str]) -> Result<Option<readback::Listing>, FwError> {
        let mut args = vec!["-j", "list"];
        args.extend_from_slice(what);
        let what = format!("read back {}", what.join(" "));
        match Tool::new(&self.nft, &args).run(&what, "", TOOL_TIMEOUT) {
            Ok(out) => readback::parse(&out.stdout)
                .map(Some)
                .map_err(|e| FwError::refused(format!("{what}: {e}"))),
            Err(e) if e.stderr.contains("No such file or directory") => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn run(&self, what: &str, script: &str) -> Result<String, FwError> {
        let tool = Tool::new(&self.nft, &["-f", "-"]);
        crate::log::debug(format_args!("fw: {} <<'EOF'\n{script}EOF", tool.line()));
        tool.run(what, script, TOOL_TIMEOUT).map(|o| o.stdout)
    }
}

impl Firewall for Nft {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn extension(&self) -> &'static str {
        "nft"
    }

    fn init(&mut self, links: &[LinkTarget]) -> Result<(), FwError> {
        for l in links {
            check_names(&self.table, l)?;
        }
        // A rebuilt table may have lost the preloaded lockdown chains.
        self.staged.clear();
        let script = skeleton(&self.table, links);
        self.run("create nftables table and base chains", &script)?;
        // A rebuilt set is empty: re-arm at once, not at the next tick.
        match self.alive {
            Some(t) => self.refresh_alive(t),
            None => Ok(()),
        }
    }

    fn keep_alive(&mut self, timeout: Option<std::time::Duration>) -> Result<(), FwError> {
        self.alive = Some(timeout);
        self.refresh_alive(timeout)
    }

    fn apply(
        &mut self,
        link: &LinkTarget,
        state: Enforcement,
        ruleset: &str,
    ) -> Result<(), FwError> {
        check_names(&self.table, link)?;
        let stmts = render_statements(link, ruleset).map_err(|e| {
            FwError::refused(format!("link {}: {state} ruleset refused: {e}", link.name))
        })?;
        let what = format!("load {state} rules for link {}", link.name);
        let script = match state {
            Enforcement::Open => flip_script(&self.table, link, &stmts),
            Enforcement::Lockdown => {
                if self.staged.get(&link.name).map(String::as_str) == Some(ruleset) {
                    divert_script(&self.table, link)
                } else {
                    // Slow path: load the lockdown chain and leave the link
                    // chain holding only the goto.
                    let mut s = stage_script(&self.table, link, &stmts);
                    s.push_str(&format!(
                        "flush chain inet {} link_{}\n",
                        self.table, link.name
                    ));
                    s.push_str(&divert_script(&self.table, link));
                    s
                }
            }
        };
        // Whatever happens, only a success proves what lock_<link> holds.
        self.staged.remove(&link.name);
        self.run(&what, &script)?;
        if state == Enforcement::Lockdown {
            self.staged.insert(link.name.clone(), ruleset.to_string());
        }
        Ok(())
    }

    fn stage(
        &mut self,
        link: &LinkTarget,
        state: Enforcement,
        ruleset: &str,
    ) -> Result<(), FwError> {
        if state != Enforcement::Lockdown
            || self.staged.get(&link.name).map(String::as_str) == Some(ruleset)
        {
            return Ok(());
        }
        check_names(&self.table, link)?;
        let stmts = render_statements(link, ruleset).map_err(|e| {
            FwError::refused(format!("link {}: lockdown ruleset refused: {e}", link.name))
        })?;
        self.staged.remove(&link.name);
        let script = stage_script(&self.table, link, &stmts);
        self.run(
            &format!("preload lockdown rules for link {}", link.name),
            &script,
        )?;
        self.staged.insert(link.name.clone(), ruleset.to_string());
        Ok(())
    }

    fn clear(&mut self, link: &LinkTarget) -> Result<(), FwError> {
        check_names(&self.table, link)?;
        // Touches only link_<l>: works with lock_<l> deleted or damaged.
        let script = clear_script(&self.table, link);
        self.run(
            &format!("replace chain of link {} by a drop", link.name),
            &script,
        )
        .map(drop)
    }

    fn check(&self, link: &LinkTarget, state: Enforcement, ruleset: &str) -> Result<(), String> {
        check_names(&self.table, link).map_err(|e| e.to_string())?;
        let stmts = render_statements(link, ruleset)
            .map_err(|e| format!("link {}: {state} ruleset: {e}", link.name))?;
        let mut script = skeleton(&self.table, std::slice::from_ref(link));
        match state {
            Enforcement::Open => script.push_str(&flip_script(&self.table, link, &stmts)),
            Enforcement::Lockdown => {
                script.push_str(&stage_script(&self.table, link, &stmts));
                script.push_str(&divert_script(&self.table, link));
            }
        }
        // nft -c still asks the kernel; without root a private user and
        // network namespace gives it one to ask, touching nothing real.
        let tool = if nix::unistd::geteuid().is_root() {
            Tool::new(&self.nft, &["-c", "-f", "-"])
        } else {
            let nft = self.nft.display().to_string();
            Tool::new(Path::new("unshare"), &["-rn", &nft, "-c", "-f", "-"])
        };
        let what = format!("check {state} rules for link {}", link.name);
        tool.run(&what, &script, TOOL_TIMEOUT)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn observe(
        &mut self,
        links: &[LinkTarget],
        only: Option<&str>,
    ) -> Result<BTreeMap<String, Readback>, FwError> {
        for l in links {
            check_names(&self.table, l)?;
        }
        if let Some(name) = only {
            return self.observe_one(links, name);
        }
        let gen_before = self.generation();
        if gen_before.is_some()
            && gen_before == self.verified_gen
            && links.iter().all(|l| self.verified.contains_key(&l.name))
        {
            return Ok(links
                .iter()
                .map(|l| (l.name.clone(), self.verified[&l.name].clone()))
                .collect());
        }
        self.verified_gen = None;
        let table = self.list(&self.table)?;
        let guard = if self.guard_may_exist {
            let g = self.list(&self.guard_table())?;
            self.guard_may_exist = g.is_some();
            g
        } else {
            None
        };
        for l in links {
            if !table
                .as_ref()
                .is_some_and(|t| readback::lock_chain_ok(t, &l.name))
            {
                self.staged.remove(&l.name);
            }
        }
        let seen = readback::judge(links, table.as_ref(), guard.as_ref());
        // Cached only if nothing changed while we listed.
        let gen_after = self.generation();
        if gen_before.is_some() && gen_before == gen_after {
            self.verified_gen = gen_after;
            self.verified = seen.clone();
        }
        Ok(seen)
    }

    fn set_guard(&mut self, links: &[LinkTarget]) -> Result<(), FwError> {
        for l in links {
            check_names(&self.table, l)?;
        }
        if links.is_empty() && !self.guard_may_exist {
            return Ok(());
        }
        let script = guard_script(&self.guard_table(), links);
        self.guard_may_exist = true;
        self.run("replace the guard table", &script).map(drop)
    }
}

/// The names of the links whose chains `link_<name>` are in our table:
/// what `qkdpfd -L` locks when the config does not parse.
pub fn link_chains(nft: &Path, table: &str) -> Result<Vec<String>, FwError> {
    let n = Nft::new(nft, table);
    let listing = n.list(table)?.ok_or_else(|| {
        FwError::refused(format!("table inet {table} does not exist: no link found"))
    })?;
    let mut names: Vec<String> = listing
        .chains
        .keys()
        .filter_map(|c| c.strip_prefix("link_"))
        .filter(|n| valid_name(n))
        .map(String::from)
        .collect();
    names.sort();
    Ok(names)
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
    // parent's heartbeat; see `alive`).
    s.push_str(&format!(
        "add set inet {table} {} {{ type nf_proto; flags timeout; }}\n",
        alive::SET
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
        let v4: Vec<String> = l.addrs4.iter().map(|a| a.to_string()).collect();
        let v6: Vec<String> = l.addrs6.iter().map(|a| a.to_string()).collect();
        push_set(&mut s, table, &format!("peer4_{n}"), "ipv4_addr", &v4);
        push_set(&mut s, table, &format!("peer6_{n}"), "ipv6_addr", &v6);
    }
    for l in links {
        for (hook, m) in protected_matches(l) {
            // The jump needs a live heartbeat; the drop does not.
            let jump = format!("meta nfproto @{} jump link_{}", alive::SET, l.name);
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
fn protected_matches(l: &LinkTarget) -> Vec<(&'static str, String)> {
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

/// Replaces the link chain's contents with the open statements, behind a
/// tag rule that lets a read-back count them ([`readback`]).
pub fn flip_script(table: &str, link: &LinkTarget, stmts: &[String]) -> String {
    let chain = format!("link_{}", link.name);
    let mut s = format!("flush chain inet {table} {chain}\n");
    s.push_str(&format!(
        "add rule inet {table} {chain} counter comment \"{OPEN_TAG}{}\"\n",
        stmts.len()
    ));
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
    s.push_str(&format!(
        "add rule inet {table} {chain} counter comment \"{LOCK_TAG}{}\"\n",
        stmts.len()
    ));
    for st in stmts {
        s.push_str(&format!("add rule inet {table} {chain} {st}\n"));
    }
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

/// The flip to lockdown: every packet of the link now takes the lockdown
/// statements (an addition only: no RCU wait in the kernel).
pub fn divert_script(table: &str, link: &LinkTarget) -> String {
    format!(
        "insert rule inet {table} link_{n} goto lock_{n}\n",
        n = link.name
    )
}
