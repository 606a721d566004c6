//! Link chains loaded by copying, over netlink, the rules the kernel holds
//! for another link's chain that one of our `nft` runs loaded from the same
//! statements.
//!
//! An `nft -f` run first reads the table (about 40 ms at 10,000 links,
//! whatever the script) and then compiles every statement of every link:
//! a bundle's re-application or a slow open at 10,000 links loads 2,048
//! links' chains a run, 0.27-0.46 s each on a busy 2-core machine, and the
//! parent's loop (with any QBER lockdown) waits behind each. When links'
//! statements are the same text, nft would compile them to the same rules:
//! it compiles the first link's, and the others get that chain's rules as
//! the kernel holds them (an NFT_MSG_GETRULE dump, `chain.rs`), each
//! chain's old rules deleted and the copies appended, with the keys the
//! link's own script would have changed, in one transaction where the
//! socket's send buffer takes it (every transaction that adds a rule with a
//! verdict makes the kernel validate the whole table at its commit). The
//! rules are kept a short while ([`Kept`]): a load of the same statements
//! meanwhile (the next 2,048 links of a re-application, one link's slow
//! lockdown) is a copy with no nft run at all.
//!
//! Only rules every expression of which is in [`COPIED`] are copied: those
//! re-create exactly from their dump, hold no state a copy would share or
//! lose (a counter starts again at zero) and name no chain, object or set
//! but the skeleton's own (an anonymous set belongs to the rule that uses
//! it, a jump names a chain). Any other rule sends its group to `nft -f`.
//! What a copy loaded is read back as any load of ours is.
//!
//! The builders are pure and tested with bytes everywhere; only the socket
//! is Linux-only.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::chain::{
    NFT_MSG_NEWRULE, NFTA_EXPR_DATA, NFTA_EXPR_NAME, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS,
    NFTA_RULE_TABLE, NFTA_RULE_USERDATA, NFTA_VERDICT_CODE,
};
use super::netlink::{
    Change, NFNL_SUBSYS_NFTABLES, NFPROTO_INET, NFTA_LIST_ELEM, batch_frame, change_message, msg,
};
use super::reverify::Loaded;
use super::{Nft, chain, netlink};
use crate::lock::Enforcement;
use crate::parent::wg::linux::{NLA_F_NESTED, NLM_F_ACK, NLM_F_REQUEST, attrs, c_name};
use crate::ruleset::nft::HANDSHAKE_SET;
use crate::ruleset::nft::dispatch::{Kind, locked_keys};

pub(super) const NFT_MSG_DELRULE: u16 = 8;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFTA_VERDICT_CHAIN_ID: u16 = 3;
/// NFT_JUMP and NFT_GOTO, as the kernel writes them (big endian).
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;
const NFTA_CT_SREG: u16 = 4;
const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SREG: u16 = 2;
const NFTA_LOOKUP_FLAGS: u16 = 5;

/// Expressions copied from their dump: loads, compares and arithmetic on
/// registers, packet metadata, verdicts without a chain, counters (their
/// counts left behind), log and reject. A `ct` expression only reads; a
/// `lookup` only in one of [`shared_sets`].
pub const COPIED: &[&str] = &[
    "lookup",
    "payload",
    "cmp",
    "bitwise",
    "byteorder",
    "range",
    "meta",
    "ct",
    "immediate",
    "counter",
    "log",
    "reject",
];

/// One rule as the kernel compiled it, ready to be created in another
/// chain: its expression list (each checked, counters without counts) and
/// its user data (the comment).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compiled {
    exprs: Vec<u8>,
    userdata: Option<Vec<u8>>,
}

impl Compiled {
    /// From a dumped rule's attributes; an error names the first
    /// expression that is not copied.
    pub fn of_rule(rule: &[chain::Attr<'_>]) -> Result<Compiled, String> {
        let mut out = Compiled {
            exprs: Vec::new(),
            userdata: None,
        };
        for &(t, v) in rule {
            match t {
                NFTA_RULE_EXPRESSIONS => out.exprs = checked(v)?,
                NFTA_RULE_USERDATA => out.userdata = Some(v.to_vec()),
                _ => {}
            }
        }
        Ok(out)
    }

    /// Bytes of its NEWRULE message for `chain`, an upper bound.
    fn size(&self, table: &str, chain: &str) -> usize {
        let ud = self.userdata.as_ref().map_or(0, Vec::len);
        16 + 4 + 3 * 8 + table.len() + chain.len() + self.exprs.len() + ud
    }
}

/// The rules of `inet <table> <chain>` as the kernel compiled them (Linux),
/// each checked to be one that a copy re-creates; a missing chain has none.
pub fn compiled(table: &str, chain: &str, seq: u32) -> Result<Vec<Compiled>, String> {
    let mut out = Vec::new();
    let req = chain::request_bytes(table, chain, seq);
    netlink::request(&req, |b| {
        let done = chain::each_rule(b, seq, &mut |a| {
            out.push(Compiled::of_rule(a)?);
            Ok(())
        })?;
        Ok(done.then_some(()))
    })?;
    Ok(out)
}

/// An attribute: length, type, value, padded to four bytes.
fn nla(ty: u16, v: &[u8]) -> Vec<u8> {
    let mut b = ((4 + v.len()) as u16).to_ne_bytes().to_vec();
    b.extend(ty.to_ne_bytes());
    b.extend(v);
    b.resize(b.len().next_multiple_of(4), 0);
    b
}

/// The expression list `list` as it is to be sent: each element kept
/// byte for byte, but a counter's counts; an expression not in [`COPIED`],
/// a verdict naming a chain, or a `ct` that writes refuses the rule.
fn checked(list: &[u8]) -> Result<Vec<u8>, String> {
    let bad = |e: crate::parent::wg::WgError| format!("rule: {e}");
    let mut out = Vec::with_capacity(list.len());
    for (t, elem) in attrs(list).map_err(bad)? {
        if t != NFTA_LIST_ELEM {
            return Err(format!("rule: attribute {t} in its expression list"));
        }
        let a = attrs(elem).map_err(bad)?;
        let name = a
            .iter()
            .find(|(t, _)| *t == NFTA_EXPR_NAME)
            .map(|(_, v)| v.split(|b| *b == 0).next().unwrap_or(&[]))
            .ok_or("rule: an expression without a name")?;
        let name = std::str::from_utf8(name).map_err(|_| "rule: an expression's name")?;
        if !COPIED.contains(&name) {
            return Err(format!("expression {name:?} is not copied"));
        }
        let data = a
            .iter()
            .find(|(t, _)| *t == NFTA_EXPR_DATA)
            .map(|(_, v)| *v);
        match (name, data) {
            ("counter", _) => {
                let e = nla(NFTA_EXPR_NAME, &c_name("counter"));
                out.extend(nla(NFTA_LIST_ELEM | NLA_F_NESTED, &e));
                continue;
            }
            ("immediate", Some(d)) if names_a_chain(d)? => {
                return Err("a verdict that names a chain is not copied".into());
            }
            ("lookup", d) => shared_set_lookup(d.unwrap_or_default())?,
            ("ct", Some(d))
                if attrs(d)
                    .map_err(bad)?
                    .iter()
                    .any(|(t, _)| *t == NFTA_CT_SREG) =>
            {
                return Err("a ct expression that writes is not copied".into());
            }
            _ => {}
        }
        out.extend(nla(NFTA_LIST_ELEM | NLA_F_NESTED, elem));
    }
    Ok(out)
}

/// The skeleton's named sets that a copied rule may look a packet up in:
/// table-wide, never anonymous (an anonymous set belongs to the rule that
/// uses it), rebuilt only with the table. The lockdown chains' handshake
/// rules use them (`ruleset::nft::handshake_statements`).
fn shared_sets() -> Vec<String> {
    let mut v: Vec<String> = Kind::ALL.iter().map(|k| k.keys_set()).collect();
    v.push(HANDSHAKE_SET.to_string());
    v
}

/// Refuses a lookup that is not a plain membership test (source register,
/// optionally inverted) in one of [`shared_sets`]: a map's lookup writes a
/// register, a set id names a set of the same transaction.
fn shared_set_lookup(d: &[u8]) -> Result<(), String> {
    let a = attrs(d).map_err(|e| format!("rule: {e}"))?;
    let mut named = None;
    for (t, v) in &a {
        match *t {
            NFTA_LOOKUP_SET => named = Some(v.split(|b| *b == 0).next().unwrap_or(&[])),
            NFTA_LOOKUP_SREG | NFTA_LOOKUP_FLAGS => {}
            t => return Err(format!("a lookup with attribute {t} is not copied")),
        }
    }
    let named = named.ok_or("a lookup without a set")?;
    match shared_sets().iter().any(|s| s.as_bytes() == named) {
        true => Ok(()),
        false => Err(format!(
            "a lookup in set {:?} is not copied",
            String::from_utf8_lossy(named)
        )),
    }
}

/// Whether an immediate expression's data is a jump or goto (or names a
/// chain at all).
fn names_a_chain(d: &[u8]) -> Result<bool, String> {
    let verdict = chain::verdict_of(d)?.unwrap_or_default();
    Ok(verdict.into_iter().any(|(t, v)| match t {
        NFTA_VERDICT_CHAIN | NFTA_VERDICT_CHAIN_ID => true,
        NFTA_VERDICT_CODE => {
            let code = v.try_into().ok().map(i32::from_be_bytes);
            matches!(code, Some(NFT_JUMP | NFT_GOTO))
        }
        _ => false,
    }))
}

/// The send buffer asked for: one datagram carries a transaction, and
/// every transaction that adds a rule with a verdict makes the kernel
/// validate the whole table at its commit (nft_immediate has a validate
/// hook; a copy into 50 chains took 3-5 ms in a 2,100-link table, most of
/// it that), so 2,048 links' chains (about 1 MiB) go in one where the
/// socket takes it.
pub const SEND_BUFFER: usize = 4 << 20;

/// A transaction's bytes where the send buffer could not be read: the
/// default one (208 KiB) takes it.
pub const SMALL_TRANSACTION: usize = 128 * 1024;

/// Keys in one element list at most: a netlink attribute stays under
/// 64 KiB (an ifname key and its headers take 28 bytes).
pub const KEYS_A_MESSAGE: usize = 1024;

/// How many chains of `rules` (with `keys` bytes of keys each) one
/// transaction of at most `budget` bytes loads.
pub fn chains_a_transaction(
    table: &str,
    longest_chain: &str,
    rules: &[Compiled],
    keys: usize,
    budget: usize,
) -> usize {
    let per = 64
        + keys
        + rules
            .iter()
            .map(|r| r.size(table, longest_chain))
            .sum::<usize>();
    (budget.saturating_sub(4096) / per).max(1)
}

/// One transaction beginning at `seq`: each chain of `chains` emptied and
/// given `rules`, then `changes` (a lockdown's keys). Only the last
/// message asks for an ACK (the kernel answers errors whatever the flags:
/// ACKs for thousands of messages could overflow the socket's receive
/// buffer). Returns the batch and the last message's sequence number.
pub fn batch(
    table: &str,
    seq: u32,
    chains: &[String],
    rules: &[Compiled],
    changes: &[Change<'_>],
) -> (Vec<u8>, u32) {
    let count = chains.len() * (1 + rules.len()) + changes.len();
    let mut out = Vec::new();
    out.extend_from_slice(&batch_frame(true, seq));
    let mut n = seq;
    let mut left = count;
    let mut flags = |base: u16| {
        left -= 1;
        base | NLM_F_REQUEST | if left == 0 { NLM_F_ACK } else { 0 }
    };
    let ty = |cmd: u16| (NFNL_SUBSYS_NFTABLES << 8) | cmd;
    for chain in chains {
        n = n.wrapping_add(1);
        let mut m = msg(ty(NFT_MSG_DELRULE), flags(0), n, NFPROTO_INET, 0);
        m.attr(NFTA_RULE_TABLE, &c_name(table));
        m.attr(NFTA_RULE_CHAIN, &c_name(chain));
        out.extend_from_slice(&m.finish());
        for r in rules {
            n = n.wrapping_add(1);
            let f = flags(NLM_F_CREATE | NLM_F_APPEND);
            let mut m = msg(ty(NFT_MSG_NEWRULE), f, n, NFPROTO_INET, 0);
            m.attr(NFTA_RULE_TABLE, &c_name(table));
            m.attr(NFTA_RULE_CHAIN, &c_name(chain));
            m.attr(NFTA_RULE_EXPRESSIONS | NLA_F_NESTED, &r.exprs);
            if let Some(u) = &r.userdata {
                m.attr(NFTA_RULE_USERDATA, u);
            }
            out.extend_from_slice(&m.finish());
        }
    }
    for change in changes {
        n = n.wrapping_add(1);
        let ack = flags(0) & NLM_F_ACK != 0;
        out.extend_from_slice(&change_message(table, n, change, ack));
    }
    out.extend_from_slice(&batch_frame(false, n.wrapping_add(1)));
    (out, n)
}

/// Compiled rules kept per chain kind and statements, each with when it
/// was read. Kept a short while only: nft resolves some words when it
/// compiles (an interface's index for `meta iif`, a user's id, a host
/// name), and a copy must not carry a resolution older than a load of ours
/// around it would.
/// A text found not to copy is kept as such (None): its next loads go
/// to nft whole, not a first link and then the rest.
#[derive(Default)]
pub(super) struct Kept(HashMap<Text, (Instant, Option<Rules>)>);

/// A chain kind and the statements it holds.
type Text = (Loaded, Vec<String>);

/// A chain's rules as compiled, shared by the loads that copy them.
pub(super) type Rules = Arc<[Compiled]>;

/// How long compiled rules are kept, and how many texts at most.
const KEPT_FOR: Duration = Duration::from_secs(30);
const TEXTS_KEPT: usize = 16;

impl Kept {
    pub fn clear(&mut self) {
        self.0.clear();
    }

    fn get(&self, which: Loaded, stmts: &[String]) -> Option<Option<Rules>> {
        let (at, rules) = self.0.get(&(which, stmts.to_vec()))?;
        (at.elapsed() < KEPT_FOR).then(|| rules.clone())
    }

    fn keep(&mut self, which: Loaded, stmts: &[String], rules: Option<Rules>) {
        self.0.retain(|_, (at, _)| at.elapsed() < KEPT_FOR);
        if self.0.len() >= TEXTS_KEPT {
            self.0.clear();
        }
        self.0
            .insert((which, stmts.to_vec()), (Instant::now(), rules));
    }
}

/// What a copy did: the transactions that committed and how many of the
/// links it was given it loaded (the first ones: transactions go in
/// order), and why it stopped if it did.
pub(super) struct Copied {
    pub commits: u32,
    pub done: usize,
    pub error: Option<String>,
}

impl Nft {
    /// Rules kept for chain `which` holding `stmts`, compiled lately:
    /// Some(None) when they were found not to copy.
    pub(super) fn kept(&self, which: Loaded, stmts: &[String]) -> Option<Option<Rules>> {
        self.compiled.get(which, stmts)
    }

    /// The rules the kernel holds in chain `which` of the link at `from`,
    /// which one of our runs loaded just before from `stmts`; kept for the
    /// next loads of the same statements.
    pub(super) fn compiled_from(
        &mut self,
        which: Loaded,
        from: usize,
        stmts: &[String],
    ) -> Result<Rules, String> {
        let chain = which.chain(&self.targets[from].name);
        self.seq = self.seq.wrapping_add(4);
        let rules = match compiled(&self.table, &chain, self.seq) {
            Ok(r) if r.is_empty() => Err(format!("{chain} is empty")),
            r => r,
        };
        let rules = rules.map(Arc::<[Compiled]>::from);
        self.compiled
            .keep(which, stmts, rules.as_ref().ok().cloned());
        rules
    }

    /// Chain `which` of each link at `to` (its place in `targets`, and what
    /// its load does to its keys: a lockdown adds them to the `locked_`
    /// sets, an open takes them out, a preload leaves them) given `rules`,
    /// in as few transactions as the socket's send buffer allows.
    pub(super) fn copy_rules(
        &mut self,
        which: Loaded,
        rules: &[Compiled],
        to: &[(usize, Option<Enforcement>)],
    ) -> Copied {
        let chain = |nft: &Nft, i: usize| which.chain(&nft.targets[i].name);
        let mut out = Copied {
            commits: 0,
            done: 0,
            error: None,
        };
        let longest = (to.iter().map(|&(i, _)| chain(self, i)))
            .max_by_key(String::len)
            .unwrap_or_default();
        let budget = netlink::raise_send_buffer(SEND_BUFFER).unwrap_or(SMALL_TRANSACTION);
        // The most bytes of keys a link brings, twice for an open: an
        // element's headers and its key.
        let keys = (to.iter().filter(|(_, k)| k.is_some()))
            .map(|&(i, _)| {
                let keys = &self.known[i].keys;
                let bytes: usize = (Kind::ALL.into_iter())
                    .flat_map(|kind| keys.bytes(kind))
                    .map(|k| 20 + k.len())
                    .sum();
                2 * bytes
            })
            .max()
            .unwrap_or(0);
        let per = chains_a_transaction(&self.table, &longest, rules, keys, budget);
        for part in to.chunks(per) {
            let chains: Vec<String> = part.iter().map(|&(i, _)| chain(self, i)).collect();
            // Per key change (add; add then delete), per set: the keys.
            let mut keys: Vec<(bool, String, Vec<Vec<u8>>)> = Vec::new();
            for (state, delete) in [(Enforcement::Lockdown, false), (Enforcement::Open, true)] {
                let of = (part.iter())
                    .filter(|(_, k)| *k == Some(state))
                    .map(|&(i, _)| &self.known[i].keys);
                keys.extend(locked_keys(of).into_iter().map(|(set, b)| (delete, set, b)));
            }
            let slices: Vec<(bool, &str, Vec<&[u8]>)> = (keys.iter())
                .map(|(d, set, b)| (*d, set.as_str(), b.iter().map(Vec::as_slice).collect()))
                .collect();
            // An open's keys are added, then deleted: a delete of a key
            // that is not there would fail the transaction.
            let mut changes: Vec<Change<'_>> = Vec::new();
            for (_, set, b) in &slices {
                changes.extend(b.chunks(KEYS_A_MESSAGE).map(|c| Change::Add(set, c, None)));
            }
            for (_, set, b) in slices.iter().filter(|(d, _, _)| *d) {
                changes.extend(b.chunks(KEYS_A_MESSAGE).map(|c| Change::Delete(set, c)));
            }
            self.seq = self.seq.wrapping_add(4);
            let (bytes, last) = batch(&self.table, self.seq, &chains, rules, &changes);
            let what = format!("copy {} rules into {} chains", rules.len(), chains.len());
            crate::log::debug(format_args!("fw: netlink: {what} ({} bytes)", bytes.len()));
            let r = netlink::transact_built(&bytes, self.seq, last, &what);
            self.seq = last.wrapping_add(1);
            if let Err(e) = r {
                out.error = Some(e);
                return out;
            }
            out.commits += 1;
            out.done += part.len();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::chain::{NFTA_DATA_VERDICT, NFTA_IMMEDIATE_DATA};
    use super::*;
    use crate::parent::wg::linux::messages;

    fn expr(name: &str, data: &[u8]) -> Vec<u8> {
        let mut e = nla(NFTA_EXPR_NAME, &c_name(name));
        e.extend(nla(NFTA_EXPR_DATA | NLA_F_NESTED, data));
        nla(NFTA_LIST_ELEM | NLA_F_NESTED, &e)
    }

    fn verdict(code: i32, chain: Option<&str>) -> Vec<u8> {
        let mut v = nla(NFTA_VERDICT_CODE, &code.to_be_bytes());
        if let Some(c) = chain {
            v.extend(nla(NFTA_VERDICT_CHAIN, &c_name(c)));
        }
        let data = nla(NFTA_DATA_VERDICT | NLA_F_NESTED, &v);
        let mut d = nla(1, &0u32.to_be_bytes());
        d.extend(nla(NFTA_IMMEDIATE_DATA | NLA_F_NESTED, &data));
        expr("immediate", &d)
    }

    fn counter(packets: u64) -> Vec<u8> {
        let mut d = nla(1, &(packets * 100).to_be_bytes());
        d.extend(nla(2, &packets.to_be_bytes()));
        expr("counter", &d)
    }

    fn rule(exprs: &[Vec<u8>], comment: Option<&[u8]>) -> Vec<(u16, Vec<u8>)> {
        let mut r = vec![
            (NFTA_RULE_TABLE, c_name("qkdpfd")),
            (NFTA_RULE_CHAIN, c_name("lock_a")),
            (NFTA_RULE_EXPRESSIONS, exprs.concat()),
        ];
        if let Some(c) = comment {
            r.push((NFTA_RULE_USERDATA, c.to_vec()));
        }
        r
    }

    fn of(r: &[(u16, Vec<u8>)]) -> Result<Compiled, String> {
        let a: Vec<(u16, &[u8])> = r.iter().map(|(t, v)| (*t, v.as_slice())).collect();
        Compiled::of_rule(&a)
    }

    #[test]
    fn a_rule_is_copied_byte_for_byte_but_its_counts() {
        let cmp = expr("cmp", &nla(1, &1u32.to_be_bytes()));
        let drop = verdict(0, None);
        let c = of(&rule(
            &[counter(7), cmp.clone(), drop.clone()],
            Some(b"\0\x05tag\0"),
        ))
        .unwrap();
        let bare = nla(
            NFTA_LIST_ELEM | NLA_F_NESTED,
            &nla(NFTA_EXPR_NAME, &c_name("counter")),
        );
        assert_eq!(c.exprs, [bare, cmp, drop].concat());
        assert_eq!(c.userdata.as_deref(), Some(&b"\0\x05tag\0"[..]));
    }

    #[test]
    fn a_lookup_in_the_skeletons_sets_is_copied() {
        for set in ["keys_4", "keys_6", "keys_if", "wg_handshakes"] {
            let data = [
                nla(NFTA_LOOKUP_SET, &c_name(set)),
                nla(NFTA_LOOKUP_SREG, &1u32.to_be_bytes()),
                nla(NFTA_LOOKUP_FLAGS, &1u32.to_be_bytes()),
            ]
            .concat();
            let lookup = expr("lookup", &data);
            let c = of(&rule(&[lookup.clone(), verdict(1, None)], None)).unwrap();
            assert_eq!(c.exprs, [lookup, verdict(1, None)].concat(), "{set}");
        }
    }

    #[test]
    fn sets_chains_and_state_are_not_copied() {
        for (e, why) in [
            (expr("lookup", &nla(1, &c_name("__set0"))), "set \"__set0\""),
            (expr("lookup", &nla(1, &c_name("peers"))), "set \"peers\""),
            (
                expr(
                    "lookup",
                    &[nla(1, &c_name("keys_4")), nla(3, &1u32.to_be_bytes())].concat(),
                ),
                "attribute 3",
            ),
            (
                expr(
                    "lookup",
                    &[nla(1, &c_name("keys_4")), nla(4, &1u32.to_be_bytes())].concat(),
                ),
                "attribute 4",
            ),
            (expr("limit", &nla(1, &1u64.to_be_bytes())), "\"limit\""),
            (expr("dynset", &[]), "\"dynset\""),
            (expr("match", &[]), "\"match\""),
            (verdict(NFT_JUMP, Some("link_b")), "names a chain"),
            (verdict(NFT_GOTO, None), "names a chain"),
            (verdict(0, Some("x")), "names a chain"),
            (
                expr("ct", &nla(NFTA_CT_SREG, &1u32.to_be_bytes())),
                "writes",
            ),
        ] {
            let accept = verdict(1, None);
            let e = of(&rule(&[accept, e], None)).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        // A ct that reads, a verdict without a chain: copied.
        let ct = expr("ct", &nla(1, &1u32.to_be_bytes()));
        assert!(of(&rule(&[ct, verdict(1, None)], None)).is_ok());
    }

    #[test]
    fn a_batch_empties_each_chain_then_appends_and_asks_one_ack() {
        let c = of(&rule(&[verdict(0, None)], Some(b"\0\x03ab\0"))).unwrap();
        let chains = ["lock_a".to_string(), "lock_b".to_string()];
        let key: &[u8] = &[1, 2, 3, 4];
        let keys = [key];
        let changes = [Change::Add("locked_4", &keys, None)];
        let (b, last) = batch("qkdpfd", 100, &chains, &[c.clone(), c], &changes);
        assert_eq!(last, 107);
        let m = messages(&b).unwrap();
        let types: Vec<u16> = m.iter().map(|m| m.ty & 0xff).collect();
        assert_eq!(types, [0x10, 8, 6, 6, 8, 6, 6, 12, 0x11]);
        let seqs: Vec<u32> = m.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (100..=108).collect::<Vec<u32>>());
        for (i, m) in m.iter().enumerate() {
            let acked = m.flags & NLM_F_ACK != 0;
            assert_eq!(acked, m.seq == last, "message {i}");
        }
        // DELRULE names its table and chain, and no rule.
        let del = attrs(&m[1].payload[4..]).unwrap();
        assert_eq!(
            del,
            [
                (NFTA_RULE_TABLE, &b"qkdpfd\0"[..]),
                (NFTA_RULE_CHAIN, &b"lock_a\0"[..])
            ]
        );
        // NEWRULE appends to the chain with the expressions and comment.
        assert_eq!(m[2].flags, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_APPEND);
        let new = attrs(&m[5].payload[4..]).unwrap();
        assert_eq!(new[1], (NFTA_RULE_CHAIN, &b"lock_b\0"[..]));
        assert_eq!(new[2].0, NFTA_RULE_EXPRESSIONS);
        assert_eq!(new[3], (NFTA_RULE_USERDATA, &b"\0\x03ab\0"[..]));
        assert_eq!(m[0].payload[2..4], NFNL_SUBSYS_NFTABLES.to_be_bytes());
    }

    #[test]
    fn a_transaction_stays_within_its_budget() {
        let c = of(&rule(&[verdict(0, None)], Some(&[0; 40]))).unwrap();
        let big = vec![c; 20];
        for (keys, budget) in [(0, SMALL_TRANSACTION), (120, SEND_BUFFER), (0, 100)] {
            let n = chains_a_transaction("qkdpfd", "lock_00000", &big, keys, budget);
            let chains: Vec<String> = (0..n).map(|i| format!("lock_{i:05}")).collect();
            let (b, _) = batch("qkdpfd", 1, &chains, &big, &[]);
            assert!(n == 1 || b.len() + keys * n <= budget, "{n} {}", b.len());
            assert!(
                n == 1 || b.len() * 2 > budget / 2,
                "{n} {}: uses its budget",
                b.len()
            );
        }
    }
}
