//! One chain's rules, read over netlink: an NFT_MSG_GETRULE dump that the
//! kernel filters to the table and chain. The read-back of one link (after
//! each flip or load) lists the link's two chains; `nft -j list chain`
//! fetches the whole table first, rules and set elements (0.70 s a chain
//! at 10,000 links, BENCHMARKS.md), where this dump answers with the
//! chain's own rules only.
//!
//! What a read-back judges of a link's chain is its rules' count, each
//! rule's comment (qkdpfd's tags) and whether a rule is exactly a drop
//! (a counter before it allowed): [`readback::Rule`]s are built with those
//! facts and an opaque marker for every other expression, so the judges
//! are the ones the `nft -j` listing goes through. A chain that does not
//! exist answers as an empty one: both prove nothing.
//!
//! Count and ends do not see a rule of ours replaced by another (`nft
//! replace rule` keeps the count, and may copy the tag): so each read also
//! gives the chain's [`Content`], a digest of every rule as the kernel
//! dumped it, which the backend compares with what the first read after its
//! own load of the chain gave (a first read the kernel shows to be ours:
//! `first_read.rs`).
//!
//! The builder and parser are pure and tested with bytes everywhere; only
//! the socket is Linux-only.

use super::netlink::{
    NFNL_SUBSYS_NFTABLES, NFPROTO_INET, NFTA_LIST_ELEM, NLM_F_DUMP, NLMSG_DONE, msg, request,
    request_dump,
};
use super::readback::{Expr, Rule};
use crate::parent::wg::linux::{NLM_F_REQUEST, NLMSG_ERROR, attrs, c_name, errno_of, messages};

pub(super) const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
pub(super) const NFTA_RULE_TABLE: u16 = 1;
pub(super) const NFTA_RULE_CHAIN: u16 = 2;
pub(super) const NFTA_RULE_EXPRESSIONS: u16 = 4;
pub(super) const NFTA_RULE_USERDATA: u16 = 7;
pub(super) const NFTA_EXPR_NAME: u16 = 1;
pub(super) const NFTA_EXPR_DATA: u16 = 2;
const NFTA_IMMEDIATE_DREG: u16 = 1;
pub(super) const NFTA_IMMEDIATE_DATA: u16 = 2;
pub(super) const NFTA_DATA_VERDICT: u16 = 2;
pub(super) const NFTA_VERDICT_CODE: u16 = 1;
/// The verdict register, and the verdict `drop` (NF_DROP), big endian.
const NFT_REG_VERDICT: u32 = 0;
const NF_DROP: u32 = 0;
/// libnftnl's user-data TLV type of a rule's comment.
const UDATA_RULE_COMMENT: u8 = 0;
/// Set by the kernel on a dump's message when the ruleset changed since the
/// dump began: a dump of many datagrams resumes by counting rules, so a
/// rule may have been skipped or read twice.
const NLM_F_DUMP_INTR: u16 = 0x10;
/// The error of a dump the kernel marked interrupted ([`NLM_F_DUMP_INTR`]).
const INTERRUPTED: &str = "rules: the dump was interrupted by a change to the ruleset";
/// Dumps read again after an interrupted one, at most.
const AGAIN: usize = 3;

/// NFT_MSG_GETRULE: a dump of `inet <table> <chain>`'s rules.
pub fn request_bytes(table: &str, chain: &str, seq: u32) -> Vec<u8> {
    let ty = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETRULE;
    let mut m = msg(ty, NLM_F_REQUEST | NLM_F_DUMP, seq, NFPROTO_INET, 0);
    m.attr(NFTA_RULE_TABLE, &c_name(table));
    m.attr(NFTA_RULE_CHAIN, &c_name(chain));
    m.finish().to_vec()
}

/// NFT_MSG_GETRULE: a dump of every rule of `inet <table>`, chain by
/// chain, each chain's rules in order.
pub fn table_request_bytes(table: &str, seq: u32) -> Vec<u8> {
    let ty = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETRULE;
    let mut m = msg(ty, NLM_F_REQUEST | NLM_F_DUMP, seq, NFPROTO_INET, 0);
    m.attr(NFTA_RULE_TABLE, &c_name(table));
    m.finish().to_vec()
}

/// What one read showed of a chain's rules, digested: each rule's
/// expressions (name and data) and user data (its comment), rule after
/// rule. What counts the packets that pass is left out (a `counter`'s and
/// a `last`'s data, what a `quota` has used and its depleted flag), so
/// that traffic changes nothing; every other expression dumps what it was
/// compiled with. Keyed with this process's random key, which nothing
/// outside it sees: a rule cannot be made to digest like another. Only
/// equality means anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Content(u64);

/// Expressions whose dumped data changes with the packets they see.
const COUNTING: &[&str] = &["counter", "last"];
/// A quota's attributes: its limit and flags are settings, what it has
/// consumed (and the flag saying it is used up) change with the packets.
const NFTA_QUOTA_FLAGS: u16 = 2;
const NFTA_QUOTA_CONSUMED: u16 = 3;
const NFT_QUOTA_F_DEPLETED: u32 = 2;

fn keyed() -> &'static std::hash::RandomState {
    static KEY: std::sync::OnceLock<std::hash::RandomState> = std::sync::OnceLock::new();
    KEY.get_or_init(std::hash::RandomState::new)
}

impl Content {
    /// A chain without rules.
    pub fn empty() -> Content {
        Content(0x716b_6470_6664)
    }

    /// This content with `rule` (its attributes, as dumped) after it.
    pub fn then(self, rule: &[Attr<'_>]) -> Result<Content, String> {
        use std::hash::{BuildHasher, Hasher};
        let bad = |e: crate::parent::wg::WgError| format!("rules: {e}");
        let mut h = keyed().build_hasher();
        h.write_u64(self.0);
        for &(t, v) in rule {
            match t {
                NFTA_RULE_EXPRESSIONS => {
                    for (t, e) in attrs(v).map_err(bad)? {
                        if t != NFTA_LIST_ELEM {
                            continue;
                        }
                        let a = attrs(e).map_err(bad)?;
                        let name = a.iter().find(|(t, _)| *t == NFTA_EXPR_NAME);
                        let name = name.map_or(&[][..], |(_, v)| *v);
                        h.write_u8(1);
                        h.write(name);
                        let bare = name.split(|b| *b == 0).next().unwrap_or(&[]);
                        let counting = COUNTING.iter().any(|c| c.as_bytes() == bare);
                        for &(t, v) in a.iter().filter(|_| !counting) {
                            h.write_u16(t);
                            match (bare, t) {
                                (b"quota", NFTA_EXPR_DATA) => quota_settings(&mut h, v)?,
                                _ => {
                                    h.write_usize(v.len());
                                    h.write(v);
                                }
                            }
                        }
                    }
                }
                NFTA_RULE_USERDATA => {
                    h.write_u8(2);
                    h.write_usize(v.len());
                    h.write(v);
                }
                _ => {}
            }
        }
        h.write_u8(3);
        Ok(Content(h.finish()))
    }
}

/// A quota's data without what it has consumed.
fn quota_settings(h: &mut impl std::hash::Hasher, data: &[u8]) -> Result<(), String> {
    let bad = |e: crate::parent::wg::WgError| format!("rules: {e}");
    for (t, v) in attrs(data).map_err(bad)? {
        match (t, <[u8; 4]>::try_from(v)) {
            (NFTA_QUOTA_CONSUMED, _) => continue,
            (NFTA_QUOTA_FLAGS, Ok(f)) => {
                h.write_u16(t);
                h.write_u32(u32::from_be_bytes(f) & !NFT_QUOTA_F_DEPLETED);
            }
            _ => {
                h.write_u16(t);
                h.write_usize(v.len());
                h.write(v);
            }
        }
    }
    Ok(())
}

/// Reads one datagram of the answer to [`request_bytes`] sent with `seq`,
/// each rule pushed to `rules`; true once the dump is done. An error or an
/// answer of another shape is an error: a chain we cannot read proves
/// nothing.
pub fn parse(buf: &[u8], seq: u32, rules: &mut Vec<Rule>) -> Result<bool, String> {
    parse_digesting(buf, seq, rules, &mut Content::empty())
}

/// [`parse`], and each rule added to `content`.
pub fn parse_digesting(
    buf: &[u8],
    seq: u32,
    rules: &mut Vec<Rule>,
    content: &mut Content,
) -> Result<bool, String> {
    let bad = |e: crate::parent::wg::WgError| format!("rules: {e}");
    each_rule(buf, seq, &mut |a| {
        *content = content.then(a)?;
        let mut rule = Rule {
            expr: Vec::new(),
            comment: None,
        };
        for &(t, v) in a {
            match t {
                NFTA_RULE_EXPRESSIONS => {
                    for (t, e) in attrs(v).map_err(bad)? {
                        if t == NFTA_LIST_ELEM {
                            rule.expr.push(expression(e)?);
                        }
                    }
                }
                NFTA_RULE_USERDATA => rule.comment = comment(v),
                _ => {}
            }
        }
        rules.push(rule);
        Ok(())
    })
}

/// One attribute of a rule message: its type and value.
pub(super) type Attr<'a> = (u16, &'a [u8]);

/// Reads one datagram of a GETRULE dump sent with `seq`, each rule's
/// attributes handed to `each`; true once the dump is done. An error or
/// an answer of another shape is an error.
pub(super) fn each_rule(
    buf: &[u8],
    seq: u32,
    each: &mut dyn FnMut(&[Attr<'_>]) -> Result<(), String>,
) -> Result<bool, String> {
    let newrule = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE;
    let bad = |e: crate::parent::wg::WgError| format!("rules: {e}");
    for m in messages(buf).map_err(bad)? {
        if m.seq != seq {
            continue;
        }
        if m.flags & NLM_F_DUMP_INTR != 0 {
            return Err(INTERRUPTED.to_string());
        }
        match m.ty {
            // A dump that failed part way says so in its DONE.
            NLMSG_DONE => match errno_of(m.payload).map_err(bad)? {
                0 => return Ok(true),
                errno => {
                    let e = std::io::Error::from_raw_os_error(-errno);
                    return Err(format!("rules: {e}"));
                }
            },
            NLMSG_ERROR => {
                let errno = errno_of(m.payload).map_err(bad)?;
                let e = std::io::Error::from_raw_os_error(-errno);
                return Err(format!("rules: {e}"));
            }
            t if t == newrule => {}
            t => return Err(format!("rules: unexpected message type {t:#x}")),
        }

        let body = m.payload.get(4..).ok_or("rules: short answer")?;
        each(&attrs(body).map_err(bad)?)?;
    }
    Ok(false)
}

/// The rules of `inet <table> <chain>`, in order, read from the kernel
/// (Linux); a missing chain has none.
pub fn rules(table: &str, chain: &str, seq: u32) -> Result<Vec<Rule>, String> {
    Ok(read(table, chain, seq)?.0)
}

/// [`rules`], and their [`Content`].
pub fn read(table: &str, chain: &str, seq: u32) -> Result<(Vec<Rule>, Content), String> {
    again(|| {
        let (mut out, mut content) = (Vec::new(), Content::empty());
        request(&request_bytes(table, chain, seq), |b| {
            Ok(parse_digesting(b, seq, &mut out, &mut content)?.then_some(()))
        })?;
        Ok((out, content))
    })
}

/// `dump`, done again while the kernel says it was interrupted by a change
/// ([`AGAIN`] times at most): a rule skipped or read twice would make an
/// unchanged chain read as changed.
fn again<T>(mut dump: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let mut tries = 0;
    loop {
        tries += 1;
        match dump() {
            Err(e) if e == INTERRUPTED && tries <= AGAIN => continue,
            r => return r,
        }
    }
}

/// Every chain of `inet <table>` that holds rules, with their [`Content`],
/// from one dump (Linux). A chain without rules is not named.
pub fn contents(
    table: &str,
    seq: u32,
) -> Result<std::collections::HashMap<String, Content>, String> {
    again(|| contents_once(table, seq))
}

fn contents_once(
    table: &str,
    seq: u32,
) -> Result<std::collections::HashMap<String, Content>, String> {
    let mut out: std::collections::HashMap<String, Content> = Default::default();
    request_dump(&table_request_bytes(table, seq), |b| {
        let done = each_rule(b, seq, &mut |a| {
            let chain = a.iter().find(|(t, _)| *t == NFTA_RULE_CHAIN);
            let Some(&(_, name)) = chain else {
                return Err("rules: a rule without its chain".to_string());
            };
            let name = String::from_utf8_lossy(name.split(|b| *b == 0).next().unwrap_or(&[]));
            match out.get_mut(name.as_ref()) {
                Some(c) => *c = c.then(a)?,
                None => drop(out.insert(name.into_owned(), Content::empty().then(a)?)),
            }
            Ok(())
        })?;
        Ok(done.then_some(()))
    })?;
    Ok(out)
}

/// One expression as the judges read `nft -j`: a counter, the verdict
/// `drop`, or something else (named, never mistaken for either).
fn expression(e: &[u8]) -> Result<Expr, String> {
    let bad = |e: crate::parent::wg::WgError| format!("rules: {e}");
    let a = attrs(e).map_err(bad)?;
    let name = a
        .iter()
        .find(|(t, _)| *t == NFTA_EXPR_NAME)
        .map(|(_, v)| String::from_utf8_lossy(v.split(|b| *b == 0).next().unwrap_or(&[])))
        .ok_or("rules: an expression without a name")?;
    let data = a
        .iter()
        .find(|(t, _)| *t == NFTA_EXPR_DATA)
        .map(|(_, v)| *v);
    let json = match (name.as_ref(), data) {
        ("counter", _) => r#"{"counter":{}}"#.to_string(),
        ("immediate", Some(d)) if is_drop(d)? => r#"{"drop":null}"#.to_string(),
        (other, _) => serde_json::json!({ "netlink": other }).to_string(),
    };
    Ok(Expr(json))
}

/// An immediate expression's data: the verdict register set to NF_DROP.
fn is_drop(d: &[u8]) -> Result<bool, String> {
    let bad = |e: crate::parent::wg::WgError| format!("rules: {e}");
    let be32 = |v: &[u8]| v.try_into().ok().map(u32::from_be_bytes);
    let dreg = attrs(d)
        .map_err(bad)?
        .into_iter()
        .find(|(t, _)| *t == NFTA_IMMEDIATE_DREG);
    if dreg.and_then(|(_, v)| be32(v)) != Some(NFT_REG_VERDICT) {
        return Ok(false);
    }
    let Some(verdict) = verdict_of(d)? else {
        return Ok(false);
    };
    let code = verdict.into_iter().find(|(t, _)| *t == NFTA_VERDICT_CODE);
    Ok(code.and_then(|(_, v)| be32(v)) == Some(NF_DROP))
}

/// The attributes of an immediate expression's verdict (its code, and the
/// chain of a jump or goto), if its data is one.
pub(super) fn verdict_of(d: &[u8]) -> Result<Option<Vec<Attr<'_>>>, String> {
    let bad = |e: crate::parent::wg::WgError| format!("rules: {e}");
    let a = attrs(d).map_err(bad)?;
    let Some((_, data)) = a.into_iter().find(|(t, _)| *t == NFTA_IMMEDIATE_DATA) else {
        return Ok(None);
    };
    match attrs(data)
        .map_err(bad)?
        .into_iter()
        .find(|(t, _)| *t == NFTA_DATA_VERDICT)
    {
        Some((_, verdict)) => Ok(Some(attrs(verdict).map_err(bad)?)),
        None => Ok(None),
    }
}

/// The comment in a rule's user data (libnftnl's TLVs: type, length,
/// value; the comment NUL-terminated).
fn comment(mut u: &[u8]) -> Option<String> {
    while let [ty, len, rest @ ..] = u {
        let value = rest.get(..*len as usize)?;
        if *ty == UDATA_RULE_COMMENT {
            let text = value.split(|b| *b == 0).next().unwrap_or(&[]);
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        u = &rest[*len as usize..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An attribute: length, type, value, padded to four bytes.
    fn nla(ty: u16, v: &[u8]) -> Vec<u8> {
        let mut b = ((4 + v.len()) as u16).to_ne_bytes().to_vec();
        b.extend(ty.to_ne_bytes());
        b.extend(v);
        while b.len() % 4 != 0 {
            b.push(0);
        }
        b
    }

    fn expr(name: &str, data: &[u8]) -> Vec<u8> {
        let mut e = nla(NFTA_EXPR_NAME, &c_name(name));
        e.extend(nla(NFTA_EXPR_DATA, data));
        nla(NFTA_LIST_ELEM, &e)
    }

    fn immediate(code: u32) -> Vec<u8> {
        let verdict = nla(NFTA_VERDICT_CODE, &code.to_be_bytes());
        let data = nla(NFTA_DATA_VERDICT, &verdict);
        let mut d = nla(NFTA_IMMEDIATE_DREG, &NFT_REG_VERDICT.to_be_bytes());
        d.extend(nla(NFTA_IMMEDIATE_DATA, &data));
        expr("immediate", &d)
    }

    fn rule_msg(seq: u32, exprs: &[Vec<u8>], comment: Option<&str>) -> Vec<u8> {
        let ty = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE;
        let mut m = msg(ty, 0, seq, NFPROTO_INET, 0);
        m.attr(NFTA_RULE_TABLE, &c_name("qkdpfd"));
        m.attr(NFTA_RULE_CHAIN, &c_name("link_dr"));
        m.attr(NFTA_RULE_EXPRESSIONS, &exprs.concat());
        if let Some(c) = comment {
            let mut u = vec![UDATA_RULE_COMMENT, c.len() as u8 + 1];
            u.extend(c.as_bytes());
            u.push(0);
            m.attr(NFTA_RULE_USERDATA, &u);
        }
        m.finish().to_vec()
    }

    fn done(seq: u32) -> Vec<u8> {
        raw(NLMSG_DONE, seq, &[0, 0, 0, 0])
    }

    #[test]
    fn request_names_the_table_and_chain() {
        let b = request_bytes("qkdpfd", "link_dr", 9);
        let m = &messages(&b).unwrap()[0];
        assert_eq!(m.ty, (10 << 8) | 7, "NFT_MSG_GETRULE");
        assert_eq!(m.flags, NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!((m.seq, m.payload[0]), (9, NFPROTO_INET));
        let a = attrs(&m.payload[4..]).unwrap();
        assert_eq!(a[0], (NFTA_RULE_TABLE, &b"qkdpfd\0"[..]));
        assert_eq!(a[1], (NFTA_RULE_CHAIN, &b"link_dr\0"[..]));
    }

    #[test]
    fn rules_keep_their_order_comments_and_drops() {
        let seq = 5;
        let mut buf = rule_msg(
            seq,
            &[expr("payload", b""), immediate(1)],
            Some("qkdpfd open 1"),
        );
        buf.extend(rule_msg(
            seq,
            &[expr("counter", b""), immediate(NF_DROP)],
            None,
        ));
        buf.extend(rule_msg(seq, &[immediate(NF_DROP)], Some("qkdpfd drop")));
        // A drop of a data register, not the verdict, is no drop.
        let mut not_verdict = nla(NFTA_IMMEDIATE_DREG, &1u32.to_be_bytes());
        not_verdict.extend(nla(NFTA_IMMEDIATE_DATA, &nla(NFTA_DATA_VERDICT, &[])));
        buf.extend(rule_msg(seq, &[expr("immediate", &not_verdict)], None));
        // Another request's answer is not ours.
        buf.extend(rule_msg(seq + 1, &[immediate(NF_DROP)], None));
        let mut rules = Vec::new();
        assert!(!parse(&buf, seq, &mut rules).unwrap());
        assert!(parse(&done(seq), seq, &mut rules).unwrap());
        let texts: Vec<(Vec<String>, Option<String>)> = rules
            .iter()
            .map(|r| {
                (
                    r.expr.iter().map(|e| e.0.clone()).collect(),
                    r.comment.clone(),
                )
            })
            .collect();
        assert_eq!(
            texts,
            vec![
                (
                    vec![
                        r#"{"netlink":"payload"}"#.into(),
                        r#"{"netlink":"immediate"}"#.into()
                    ],
                    Some("qkdpfd open 1".into())
                ),
                (
                    vec![r#"{"counter":{}}"#.into(), r#"{"drop":null}"#.into()],
                    None
                ),
                (vec![r#"{"drop":null}"#.into()], Some("qkdpfd drop".into())),
                (vec![r#"{"netlink":"immediate"}"#.into()], None),
            ]
        );
    }

    /// A bare netlink message: header, then `payload`.
    fn raw(ty: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = ((16 + payload.len()) as u32).to_ne_bytes().to_vec();
        b.extend(ty.to_ne_bytes());
        b.extend(0u16.to_ne_bytes());
        b.extend(seq.to_ne_bytes());
        b.extend(0u32.to_ne_bytes());
        b.extend(payload);
        b
    }

    /// The content of the chain whose rules are `msgs` (each a rule's
    /// expressions and comment), as a read digests it.
    fn content_of(msgs: &[(Vec<Vec<u8>>, Option<&str>)]) -> Content {
        let mut buf = Vec::new();
        for (exprs, comment) in msgs {
            buf.extend(rule_msg(3, exprs, *comment));
        }
        buf.extend(done(3));
        let (mut rules, mut content) = (Vec::new(), Content::empty());
        assert!(parse_digesting(&buf, 3, &mut rules, &mut content).unwrap());
        assert_eq!(rules.len(), msgs.len());
        content
    }

    #[test]
    fn a_chains_content_ignores_counts_and_sees_any_other_change() {
        let counter = |n: u64| expr("counter", &nla(1, &n.to_be_bytes()));
        // A quota of 1 MiB: its use and the depleted flag change, not its limit.
        let quota = |used: u64| {
            let flags: u32 = if used >= 1 << 20 { 2 } else { 0 };
            let mut d = nla(1, &(1u64 << 20).to_be_bytes());
            d.extend(nla(2, &flags.to_be_bytes()));
            d.extend(nla(3, &used.to_be_bytes()));
            expr("quota", &d)
        };
        let port = |p: u16| expr("cmp", &nla(3, &p.to_be_bytes()));
        let tag = Some("qkdpfd lockdown n=1");
        let ours = || {
            vec![
                (vec![], tag),
                (vec![port(51820), quota(0), immediate(1)], None),
                (vec![counter(0), immediate(NF_DROP)], Some("qkdpfd drop")),
            ]
        };
        let base = content_of(&ours());
        assert_eq!(content_of(&ours()), base, "the same rules again");
        let mut counted = ours();
        counted[1].0[1] = quota(1 << 20);
        counted[2].0[0] = counter(99);
        assert_eq!(content_of(&counted), base, "only counts changed");
        // A rule replaced by another: same count, same tags.
        let mut bigger = ours();
        let mut d = nla(1, &(1u64 << 40).to_be_bytes());
        d.extend(nla(2, &0u32.to_be_bytes()));
        d.extend(nla(3, &0u64.to_be_bytes()));
        bigger[1].0[1] = expr("quota", &d);
        assert_ne!(content_of(&bigger), base, "a quota's limit");
        let mut replaced = ours();
        replaced[1].0[0] = port(51821);
        assert_ne!(content_of(&replaced), base, "a compared value");
        let mut verdict = ours();
        verdict[2].0[1] = immediate(1);
        assert_ne!(content_of(&verdict), base, "drop made accept");
        let mut retagged = ours();
        retagged[2].1 = Some("qkdpfd drop ");
        assert_ne!(content_of(&retagged), base, "a comment");
        let mut swapped = ours();
        swapped.swap(1, 2);
        assert_ne!(content_of(&swapped), base, "the order");
        let mut moved = ours();
        let e = moved[1].0.pop().unwrap();
        moved[2].0.push(e);
        assert_ne!(content_of(&moved), base, "an expression moved on");
        let mut more = ours();
        more.push((vec![], None));
        assert_ne!(content_of(&more), base, "a rule with nothing in it added");
        assert_ne!(content_of(&[]), base);
        assert_eq!(content_of(&[]), Content::empty());
    }

    #[test]
    fn a_table_dump_names_the_table_only() {
        let b = table_request_bytes("qkdpfd", 9);
        let m = &messages(&b).unwrap()[0];
        assert_eq!(m.ty, (10 << 8) | 7, "NFT_MSG_GETRULE");
        assert_eq!(m.flags, NLM_F_REQUEST | NLM_F_DUMP);
        let a = attrs(&m.payload[4..]).unwrap();
        assert_eq!(a, vec![(NFTA_RULE_TABLE, &b"qkdpfd\0"[..])]);
    }

    #[test]
    fn errors_and_strange_answers_prove_nothing() {
        let mut rules = Vec::new();
        let mut enoent = (-2i32).to_ne_bytes().to_vec();
        enoent.extend([0u8; 16]);
        let e = parse(&raw(NLMSG_ERROR, 3, &enoent), 3, &mut rules).unwrap_err();
        assert!(
            e.starts_with("rules: ") && e.contains("No such file"),
            "{e}"
        );
        let other = raw(0x0a0c, 3, &[1, 0, 0, 0]);
        assert!(
            parse(&other, 3, &mut rules)
                .unwrap_err()
                .contains("unexpected")
        );
        let cut = raw(NLMSG_DONE, 3, &(-4i32).to_ne_bytes());
        assert!(parse(&cut, 3, &mut rules).unwrap_err().contains("rules: "));
        let nameless = rule_msg(3, &[nla(NFTA_LIST_ELEM, &nla(NFTA_EXPR_DATA, b""))], None);
        assert!(parse(&nameless, 3, &mut rules).is_err());
        assert!(rules.is_empty());
    }

    /// A dump the kernel marks interrupted (the ruleset changed while it
    /// went on) proves nothing and is read again, a few times at most.
    #[test]
    fn an_interrupted_dump_is_read_again() {
        let mut buf = rule_msg(3, &[immediate(NF_DROP)], None);
        buf[6..8].copy_from_slice(&NLM_F_DUMP_INTR.to_ne_bytes());
        let mut rules = Vec::new();
        assert_eq!(parse(&buf, 3, &mut rules).unwrap_err(), INTERRUPTED);
        let mut done_intr = done(3);
        done_intr[6..8].copy_from_slice(&NLM_F_DUMP_INTR.to_ne_bytes());
        assert_eq!(parse(&done_intr, 3, &mut rules).unwrap_err(), INTERRUPTED);
        let mut calls = 0;
        let r = again(|| {
            calls += 1;
            match calls {
                1 | 2 => Err(INTERRUPTED.to_string()),
                _ => Ok(calls),
            }
        });
        assert_eq!(r, Ok(3));
        calls = 0;
        let r: Result<(), String> = again(|| {
            calls += 1;
            Err(INTERRUPTED.to_string())
        });
        assert_eq!((r.unwrap_err().as_str(), calls), (INTERRUPTED, AGAIN + 1));
        calls = 0;
        let r: Result<(), String> = again(|| {
            calls += 1;
            Err("rules: another".to_string())
        });
        assert_eq!((r.is_err(), calls), (true, 1), "other errors at once");
    }

    #[test]
    fn comments_are_read_from_their_tlv_only() {
        assert_eq!(comment(&[0, 3, b'a', b'b', 0]), Some("ab".into()));
        // Another TLV first, then the comment.
        assert_eq!(comment(&[1, 1, 9, 0, 2, b'x', 0]), Some("x".into()));
        assert_eq!(comment(&[1, 1, 9]), None);
        assert_eq!(comment(&[0, 9, b'a']), None, "cut short");
    }
}
