//! nftables backend (DESIGN §5), run by the privileged parent on Linux. It
//! pipes each nft(8) script to one `nft -f -`, which the kernel applies as
//! one transaction: a rejected script leaves every chain as it was.
//! It touches only table `inet <anchor>`.
//!
//! The table's layout, the scripts and the checks of a bundle's statements
//! are [`crate::ruleset::nft`]'s; this backend decides which script runs
//! when, and reads the kernel back ([`readback`]).
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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{Firewall, Readback};
use crate::lock::Enforcement;
use crate::ruleset::nft::{
    clear_script, divert_script, flip_script, guard_script, render_statements, skeleton,
    stage_script,
};
use crate::ruleset::{Check, LinkCheck, LinkTarget, check_names, valid_name};
use crate::tool::{FwError, TOOL_TIMEOUT, Tool};

pub mod alive;
pub mod readback;

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

impl LinkCheck for Nft {
    fn extension(&self) -> &'static str {
        "nft"
    }

    fn check(&self, link: &LinkTarget, state: Enforcement, ruleset: &str) -> Result<(), String> {
        Check::nft(&self.nft, &self.table).check(link, state, ruleset)
    }
}

impl Firewall for Nft {
    fn name(&self) -> &'static str {
        "nftables"
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
