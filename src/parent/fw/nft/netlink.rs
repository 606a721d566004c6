//! nf_tables over netlink, for the changes that must not wait for a
//! process: set elements added, deleted or flushed in one batched
//! transaction (begin, the changes, end), each change acknowledged, on one
//! socket per thread kept open (see `SOCKET`). The flips of a link (its
//! keys in the `locked_` sets) and the dead-man switch's heartbeat
//! (`alive`) are built here; chains and rules load with `nft -f`, or as
//! copies of rules nft compiled (`copy.rs`).
//!
//! Why set elements: in nf_tables a transaction that adds a `jump` or
//! `goto` makes the kernel re-validate every chain of the table (measured
//! here ~5 ms at 1,000 links), while a set element changes no chain. A
//! transaction that only adds frees nothing; one that deletes leaves its
//! frees to an RCU grace period, which whoever closes a netfilter socket
//! next waits for. The flip to lockdown is an addition all the same.
//!
//! The builders are pure and tested with golden bytes on every platform;
//! only the socket is Linux-only.

use std::time::Duration;

use zeroize::Zeroizing;

use crate::parent::wg::linux::{Msg, NLM_F_ACK, NLM_F_REQUEST, NLMSG_ERROR, c_name};

pub const NETLINK_NETFILTER: i32 = 12;
pub(super) const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_GETSET: u16 = 10;
pub(super) const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
pub(super) const NFT_MSG_DELSETELEM: u16 = 14;
pub(super) const NLM_F_DUMP: u16 = 0x300;
pub(super) const NLMSG_DONE: u16 = 3;
const NLM_F_CREATE: u16 = 0x400;
pub(super) const NFPROTO_INET: u8 = 1;
/// The keys of a set of type nf_proto (`meta nfproto`): ipv4 and ipv6.
pub const NFPROTO_IPV4: u8 = 2;
pub const NFPROTO_IPV6: u8 = 10;
/// Both families: what the dead-man switch's `alive` set holds when armed.
pub const BOTH_FAMILIES: [&[u8]; 2] = [&[NFPROTO_IPV4], &[NFPROTO_IPV6]];
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
pub(super) const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
const NFTA_DATA_VALUE: u16 = 1;

/// A netfilter netlink message: the shared builder with nfgenmsg as its
/// family header (family, version NFNETLINK_V0, res_id big endian).
pub(super) fn msg(ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Msg {
    let r = res_id.to_be_bytes();
    Msg::with_header(ty, flags, seq, 0, [family, 0, r[0], r[1]])
}

/// One change to one set of table `inet <table>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change<'a> {
    /// Remove every element (DELSETELEM without elements).
    Flush(&'a str),
    /// Add these keys (as the kernel stores them), each with `timeout` if
    /// given; an element already there stays (and keeps its old expiry).
    Add(&'a str, &'a [&'a [u8]], Option<Duration>),
    /// Remove these keys; one that is not there fails the transaction.
    Delete(&'a str, &'a [&'a [u8]]),
}

/// One transaction: begin, `changes` in order with sequence numbers
/// `seq + 1 ..`, each asking for an ACK, end. The kernel applies all or
/// none of them.
pub fn batch(table: &str, seq: u32, changes: &[Change<'_>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + 96 * changes.len());
    out.extend_from_slice(&frame(NFNL_MSG_BATCH_BEGIN, seq));
    let mut n = seq;
    for change in changes {
        n = n.wrapping_add(1);
        out.extend_from_slice(&change_message(table, n, change, true));
    }
    out.extend_from_slice(&frame(NFNL_MSG_BATCH_END, n.wrapping_add(1)));
    out
}

/// A batch's begin (`begin`: true) or end message.
pub(super) fn batch_frame(begin: bool, seq: u32) -> Zeroizing<Vec<u8>> {
    frame(
        match begin {
            true => NFNL_MSG_BATCH_BEGIN,
            false => NFNL_MSG_BATCH_END,
        },
        seq,
    )
}

fn frame(ty: u16, seq: u32) -> Zeroizing<Vec<u8>> {
    msg(ty, NLM_F_REQUEST, seq, 0, NFNL_SUBSYS_NFTABLES).finish()
}

/// One change's message with sequence number `n`, asking for an ACK when
/// `ack` (an error is answered either way).
pub(super) fn change_message(
    table: &str,
    n: u32,
    change: &Change<'_>,
    ack: bool,
) -> Zeroizing<Vec<u8>> {
    let ty = |cmd: u16| (NFNL_SUBSYS_NFTABLES << 8) | cmd;
    let flags = NLM_F_REQUEST | if ack { NLM_F_ACK } else { 0 };
    let m = match *change {
        Change::Flush(set) => {
            let mut m = msg(ty(NFT_MSG_DELSETELEM), flags, n, NFPROTO_INET, 0);
            m.attr(NFTA_SET_ELEM_LIST_TABLE, &c_name(table));
            m.attr(NFTA_SET_ELEM_LIST_SET, &c_name(set));
            m
        }
        Change::Add(set, keys, timeout) => {
            let mut m = msg(
                ty(NFT_MSG_NEWSETELEM),
                flags | NLM_F_CREATE,
                n,
                NFPROTO_INET,
                0,
            );
            push_elements(&mut m, table, set, keys, timeout);
            m
        }
        Change::Delete(set, keys) => {
            let mut m = msg(ty(NFT_MSG_DELSETELEM), flags, n, NFPROTO_INET, 0);
            push_elements(&mut m, table, set, keys, None);
            m
        }
    };
    m.finish()
}

/// Table, set and the element list of a NEWSETELEM / DELSETELEM.
fn push_elements(m: &mut Msg, table: &str, set: &str, keys: &[&[u8]], timeout: Option<Duration>) {
    m.attr(NFTA_SET_ELEM_LIST_TABLE, &c_name(table));
    m.attr(NFTA_SET_ELEM_LIST_SET, &c_name(set));
    m.nest(NFTA_SET_ELEM_LIST_ELEMENTS);
    for key in keys {
        m.nest(NFTA_LIST_ELEM);
        m.nest(NFTA_SET_ELEM_KEY).attr(NFTA_DATA_VALUE, key).end();
        if let Some(t) = timeout {
            let ms = u64::try_from(t.as_millis()).unwrap_or(u64::MAX);
            m.attr(NFTA_SET_ELEM_TIMEOUT, &ms.to_be_bytes());
        }
        m.end();
    }
    m.end();
}

/// Reads the kernel's answers to a batch of `count` changes sent with
/// `seq` until every ACK arrived; the first error's errno otherwise,
/// naming `what`. An error for the batch's begin is a commit that failed
/// (the kernel then still acknowledges each change). `recv` returns one
/// datagram.
pub fn await_acks(
    seq: u32,
    count: usize,
    what: &str,
    mut recv: impl FnMut(&mut [u8]) -> Result<usize, String>,
) -> Result<(), String> {
    let mut pending: Vec<u32> = (1..=count as u32).map(|i| seq.wrapping_add(i)).collect();
    let mut buf = vec![0u8; 8192];
    while !pending.is_empty() {
        let n = recv(&mut buf)?;
        for (at, errno) in answers(&buf[..n])? {
            if at != seq && !pending.contains(&at) {
                continue;
            }
            if errno != 0 {
                return Err(format!(
                    "{what}: {}",
                    std::io::Error::from_raw_os_error(-errno)
                ));
            }
            pending.retain(|s| *s != at);
        }
    }
    Ok(())
}

/// Reads the kernel's answers to a batch whose begin is `seq` and whose
/// last message, `last`, alone asks for an ACK: done at that ACK, an error
/// at any error answered for the begin (the commit) or a message of the
/// batch. The kernel answers a batch's errors in the order of its
/// messages and before the ACKs, so none can follow the last's ACK.
pub fn await_last(
    seq: u32,
    last: u32,
    what: &str,
    mut recv: impl FnMut(&mut [u8]) -> Result<usize, String>,
) -> Result<(), String> {
    let mut buf = vec![0u8; 8192];
    let ours = |at: u32| at.wrapping_sub(seq) <= last.wrapping_sub(seq);
    loop {
        let n = recv(&mut buf)?;
        for (at, errno) in answers(&buf[..n])? {
            if !ours(at) {
                continue;
            }
            if errno != 0 {
                return Err(format!(
                    "{what}: {}",
                    std::io::Error::from_raw_os_error(-errno)
                ));
            }
            if at == last {
                return Ok(());
            }
        }
    }
}

/// The (sequence number, errno) of each NLMSG_ERROR in one datagram.
fn answers(buf: &[u8]) -> Result<Vec<(u32, i32)>, String> {
    use crate::parent::wg::linux::{errno_of, messages};
    let msgs = messages(buf).map_err(|e| e.to_string())?;
    (msgs.into_iter())
        .filter(|m| m.ty == NLMSG_ERROR)
        .map(|m| Ok((m.seq, errno_of(m.payload).map_err(|e| e.to_string())?)))
        .collect()
}

thread_local! {
    /// The nf_tables transactions this thread has committed, netlink and
    /// `nft -f` alike (a count that wraps): a read-back weighs it against
    /// the kernel's notifications of the transactions that touched our
    /// tables (`Nft::first_read`). Per thread, as the sockets are: a
    /// backend runs on one thread, and another thread's commits (another
    /// backend's, in another namespace) are none of its own.
    static COMMITS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

pub fn commits() -> u32 {
    COMMITS.with(std::cell::Cell::get)
}

/// One more transaction of this thread committed.
pub fn committed() {
    COMMITS.with(|c| c.set(c.get().wrapping_add(1)));
}

/// Sends one transaction and waits until the kernel acknowledged every
/// change (Linux; an error elsewhere). Returns once it is committed.
pub fn transact(table: &str, seq: u32, changes: &[Change<'_>], what: &str) -> Result<(), String> {
    with_socket(|nl| {
        nl.send(&batch(table, seq, changes))
            .map_err(|e| e.to_string())?;
        await_acks(seq, changes.len(), what, |b| {
            nl.recv(b).map_err(|e| e.to_string())
        })
    })
    // A batch of no change commits nothing (no generation either).
    .inspect(|()| {
        if !changes.is_empty() {
            committed();
        }
    })
}

/// Raises this thread's socket's send buffer towards `bytes`; the largest
/// batch it now takes (Linux; an error elsewhere).
pub fn raise_send_buffer(bytes: usize) -> Result<usize, String> {
    with_socket(|nl| nl.raise_sndbuf(bytes).map_err(|e| e.to_string()))
}

/// Sends a batch built whole by the caller (see [`await_last`]) and waits
/// until it is committed (Linux; an error elsewhere).
pub fn transact_built(batch: &[u8], seq: u32, last: u32, what: &str) -> Result<(), String> {
    with_socket(|nl| {
        nl.send(batch).map_err(|e| e.to_string())?;
        await_last(seq, last, what, |b| nl.recv(b).map_err(|e| e.to_string()))
    })
    .inspect(|()| committed())
}

thread_local! {
    /// This thread's netfilter socket, kept open. Closing one makes the
    /// kernel first finish the clean-up that earlier transactions left for
    /// later (nf_tables flushes its destroy work on NETLINK_URELEASE), and
    /// after any transaction that deleted something that clean-up waits
    /// for an RCU grace period: with a socket per call every open (a
    /// delete from the `locked_` sets) and the lookup after it took
    /// 10-30 ms in close(2). Kept, the clean-up runs in the kernel's own
    /// worker and an open returns in the time an addition does. A socket
    /// speaks to the network namespace it was opened in: no thread of
    /// ours changes namespace after its first call.
    static SOCKET: std::cell::RefCell<Option<crate::parent::wg::linux::sys::Nl>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` on this thread's kept socket, opened on first use. Whatever an
/// earlier caller left unread is dropped first; after an error the socket
/// is closed (its state is unknown) and the next call opens another.
fn with_socket<T>(
    f: impl FnOnce(&crate::parent::wg::linux::sys::Nl) -> Result<T, String>,
) -> Result<T, String> {
    use crate::parent::wg::linux::sys::Nl;
    SOCKET.with(|cell| {
        // A request made inside another's (the panic hook's lock, after a
        // panic in a request's parse) gets a socket of its own: a second
        // borrow would panic again, and a panic in the hook aborts before
        // anything is locked.
        let Ok(mut slot) = cell.try_borrow_mut() else {
            let nl = Nl::open_protocol(NETLINK_NETFILTER).map_err(|e| e.to_string())?;
            return f(&nl);
        };
        let nl = match slot.take() {
            Some(nl) => nl,
            None => Nl::open_protocol(NETLINK_NETFILTER).map_err(|e| e.to_string())?,
        };
        nl.discard_pending().map_err(|e| e.to_string())?;
        let r = f(&nl);
        if r.is_ok() {
            *slot = Some(nl);
        }
        r
    })
}

/// NFT_MSG_GETSETELEM: a dump of one set's elements.
pub fn get_elements_request(table: &str, set: &str, seq: u32) -> Vec<u8> {
    let ty = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM;
    let mut m = msg(ty, NLM_F_REQUEST | NLM_F_DUMP, seq, NFPROTO_INET, 0);
    m.attr(NFTA_SET_ELEM_LIST_TABLE, &c_name(table));
    m.attr(NFTA_SET_ELEM_LIST_SET, &c_name(set));
    m.finish().to_vec()
}

/// Reads one datagram of the answer to a GETSETELEM dump sent with `seq`:
/// each element's key is pushed to `keys`. True once the dump is done. An
/// error or an answer of another shape is an error: a set we cannot read
/// proves nothing.
pub fn parse_elements(buf: &[u8], seq: u32, keys: &mut Vec<Vec<u8>>) -> Result<bool, String> {
    use crate::parent::wg::linux::{attrs, errno_of, messages};
    let newsetelem = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM;
    let bad = |e: crate::parent::wg::WgError| format!("set elements: {e}");
    for m in messages(buf).map_err(bad)? {
        if m.seq != seq {
            continue;
        }
        match m.ty {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = errno_of(m.payload).map_err(bad)?;
                return Err(format!(
                    "set elements: {}",
                    std::io::Error::from_raw_os_error(-errno)
                ));
            }
            t if t == newsetelem => {}
            t => return Err(format!("set elements: unexpected message type {t:#x}")),
        }
        let body = m.payload.get(4..).ok_or("set elements: short answer")?;
        for (t, list) in attrs(body).map_err(bad)? {
            if t != NFTA_SET_ELEM_LIST_ELEMENTS {
                continue;
            }
            for (t, elem) in attrs(list).map_err(bad)? {
                if t != NFTA_LIST_ELEM {
                    continue;
                }
                let key = attrs(elem)
                    .map_err(bad)?
                    .into_iter()
                    .find(|(t, _)| *t == NFTA_SET_ELEM_KEY)
                    .ok_or("set elements: an element without a key")?
                    .1;
                match attrs(key).map_err(bad)?.as_slice() {
                    [(NFTA_DATA_VALUE, k)] if !k.is_empty() => keys.push(k.to_vec()),
                    _ => return Err("set elements: a key of another type".into()),
                }
            }
        }
    }
    Ok(false)
}

/// Sends one request and reads the kernel's answers, a datagram at a time,
/// until `take` has what it wants (Linux; an error elsewhere).
pub fn request<T>(
    req: &[u8],
    mut take: impl FnMut(&[u8]) -> Result<Option<T>, String>,
) -> Result<T, String> {
    with_socket(|nl| {
        nl.send(req).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 8192];
        loop {
            let n = nl.recv(&mut buf).map_err(|e| e.to_string())?;
            if let Some(t) = take(&buf[..n])? {
                return Ok(t);
            }
        }
    })
}

/// [`request`] for a long dump, on a socket of its own read with a buffer
/// the kernel may fill to its limit (32 KiB a datagram, where the kept
/// socket's reads take 8 KiB). A dump of every rule of a table starts each
/// datagram by counting the rules up to where the last one stopped: at
/// 10,000 links that walk, once a datagram, is most of the dump's time, so
/// fewer, larger datagrams cost less. Its own socket: the kernel sizes a
/// socket's datagrams by the largest read it has seen, which the kept
/// socket's smaller reads would then refuse.
pub fn request_dump<T>(
    req: &[u8],
    mut take: impl FnMut(&[u8]) -> Result<Option<T>, String>,
) -> Result<T, String> {
    use crate::parent::wg::linux::sys::Nl;
    let nl = Nl::open_protocol(NETLINK_NETFILTER).map_err(|e| e.to_string())?;
    nl.send(req).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = nl.recv(&mut buf).map_err(|e| e.to_string())?;
        if let Some(t) = take(&buf[..n])? {
            return Ok(t);
        }
    }
}

/// One object of table `inet <table>` to look up, by its key: a set
/// element or a set. A dump reads a whole set (its cost grows with the
/// links); a lookup costs the same at 10 links and at 10,000.
#[derive(Clone, Copy, Debug)]
pub enum Lookup<'a> {
    /// GETSETELEM of one key, not a dump.
    Element(&'a str, &'a [u8]),
    /// GETSET of one set.
    Set(&'a str),
}

/// The lookup's request, asking for an ACK: the kernel answers with the
/// object and the ACK, or with an error alone (ENOENT: not there).
pub fn lookup_request(table: &str, what: Lookup<'_>, seq: u32) -> Vec<u8> {
    let flags = NLM_F_REQUEST | NLM_F_ACK;
    let m = match what {
        Lookup::Element(set, key) => {
            let ty = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM;
            let mut m = msg(ty, flags, seq, NFPROTO_INET, 0);
            push_elements(&mut m, table, set, &[key], None);
            m
        }
        Lookup::Set(set) => {
            let ty = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSET;
            let mut m = msg(ty, flags, seq, NFPROTO_INET, 0);
            m.attr(NFTA_SET_TABLE, &c_name(table));
            m.attr(NFTA_SET_NAME, &c_name(set));
            m
        }
    };
    m.finish().to_vec()
}

/// Reads one datagram of the answer to a lookup sent with `seq`: Some(true)
/// once the kernel acknowledged it (the object is there), Some(false) on
/// ENOENT (the object, its set or its table is not), an error on any other
/// errno. For an element, ENOENT does not tell a missing element from a
/// missing set: the caller asks for the set when it matters.
pub fn parse_lookup(buf: &[u8], seq: u32) -> Result<Option<bool>, String> {
    use crate::parent::wg::linux::{errno_of, messages};
    let bad = |e: crate::parent::wg::WgError| format!("lookup: {e}");
    for m in messages(buf).map_err(bad)? {
        if m.seq != seq || m.ty != NLMSG_ERROR {
            continue;
        }
        return match -errno_of(m.payload).map_err(bad)? {
            0 => Ok(Some(true)),
            libc::ENOENT => Ok(Some(false)),
            e => Err(format!("lookup: {}", std::io::Error::from_raw_os_error(e))),
        };
    }
    Ok(None)
}

/// Whether the kernel holds the object (Linux; an error elsewhere).
pub fn exists(table: &str, what: Lookup<'_>, seq: u32) -> Result<bool, String> {
    request(&lookup_request(table, what, seq), |b| parse_lookup(b, seq))
}

/// The keys of `<table> <set>`, read from the kernel (Linux).
pub fn elements(table: &str, set: &str, seq: u32) -> Result<Vec<Vec<u8>>, String> {
    let mut keys = Vec::new();
    request(&get_elements_request(table, set, seq), |b| {
        Ok(parse_elements(b, seq, &mut keys)?.then_some(()))
    })?;
    Ok(keys)
}

/// Kernel answers built by hand, for the tests of this backend's parsers.
#[cfg(test)]
pub(super) mod answers {
    use super::NLMSG_ERROR;

    /// One netlink message as the kernel sends it.
    pub fn nlmsg(ty: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&(16 + payload.len() as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        m
    }

    pub fn nla(ty: u16, data: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&(4 + data.len() as u16).to_ne_bytes());
        a.extend_from_slice(&ty.to_ne_bytes());
        a.extend_from_slice(data);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    /// The kernel's answer to request `seq`: an ACK (`errno` 0) or an
    /// error (a negative errno, as the kernel writes it).
    pub fn ack(seq: u32, errno: i32) -> Vec<u8> {
        let mut p = errno.to_ne_bytes().to_vec();
        p.extend_from_slice(&[0u8; 16]);
        nlmsg(NLMSG_ERROR, seq, &p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use answers::{nla, nlmsg};

    /// A request inside another's (the panic hook after a panic in a
    /// request's parse) gets a socket of its own instead of a second
    /// borrow of the kept one, which would panic in the hook.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_request_inside_another_has_its_own_socket() {
        let inner = with_socket(|_| with_socket(|_| Ok(7)));
        assert_eq!(inner, Ok(7));
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// The most keys a list takes, of the longest key with a timeout: every
    /// length fits its u16 (the builder's debug assertions) and the list
    /// reads back whole.
    #[test]
    fn a_full_element_list_fits_its_attribute() {
        let key = [0xfdu8; 20];
        let keys: Vec<&[u8]> = vec![&key[..]; super::super::copy::KEYS_A_MESSAGE];
        let timeout = Some(Duration::from_secs(3));
        let b = batch("qkdpfd", 1, &[Change::Add("locked_6", &keys, timeout)]);
        let msgs = crate::parent::wg::linux::messages(&b).unwrap();
        assert_eq!(msgs.len(), 3, "begin, the change, end");
        let body = crate::parent::wg::linux::attrs(&msgs[1].payload[4..]).unwrap();
        let list = (body.iter())
            .find(|(t, _)| *t == NFTA_SET_ELEM_LIST_ELEMENTS)
            .map(|(_, d)| *d)
            .unwrap();
        assert_eq!(
            crate::parent::wg::linux::attrs(list).unwrap().len(),
            keys.len()
        );
    }

    #[test]
    fn lock_batch_golden_bytes() {
        if !cfg!(target_endian = "little") {
            return; // golden bytes written for little-endian hosts
        }
        let b = batch(
            "qkdpfd",
            40,
            &[Change::Add("locked_dr", &BOTH_FAMILIES, None)],
        );
        // Begin (seq 40), one NEWSETELEM (seq 41, REQUEST|ACK|CREATE), end (seq 42).
        assert_eq!(hex(&b[..20]), "140000001000010028000000000000000000000a");
        let add = &b[20..b.len() - 20];
        assert_eq!(
            u32::from_le_bytes(add[..4].try_into().unwrap()) as usize,
            add.len()
        );
        assert_eq!(hex(&add[4..12]), "0c0a050429000000");
        assert_eq!(hex(&add[16..20]), "01000000", "NFPROTO_INET, v0, res_id 0");
        assert_eq!(hex(&add[20..32]), "0b000100716b647066640000");
        // "locked_dr\0" padded: len 14, type NFTA_SET_ELEM_LIST_SET.
        assert_eq!(hex(&add[32..48]), "0e0002006c6f636b65645f6472000000");
        // Elements: nested list, two elements with a 1-byte key, no timeout.
        let h = hex(&add[48..]);
        assert_eq!(
            &h[4..8],
            "0380",
            "NLA_F_NESTED | NFTA_SET_ELEM_LIST_ELEMENTS"
        );
        assert!(h.contains("0c0001800500010002000000"), "{h}");
        assert!(h.contains("0c000180050001000a000000"), "{h}");
        assert!(!h.contains("0c000400"), "no timeout: {h}");
        assert_eq!(
            hex(&b[b.len() - 20..b.len() - 8]),
            "14000000110001002a000000"
        );
    }

    #[test]
    fn delete_batch_names_its_keys() {
        let k: &[u8] = &[192, 0, 2, 1, 0xca, 0x6c, 0, 0];
        let b = batch("qkdpfd", 7, &[Change::Delete("locked_4", &[k])]);
        if cfg!(target_endian = "little") {
            // DELSETELEM, REQUEST | ACK, no CREATE.
            assert_eq!(hex(&b[24..32]), "0e0a050008000000");
        }
        // The key as a NFTA_DATA_VALUE of 8 bytes.
        assert!(hex(&b).contains("0c000100c0000201ca6c0000"), "{}", hex(&b));
    }

    #[test]
    fn flush_batch_has_no_elements() {
        let b = batch("qkdpfd", 7, &[Change::Flush("locked_dr")]);
        assert_eq!(b.len(), 20 + 20 + 12 + 16 + 20);
        if cfg!(target_endian = "little") {
            assert_eq!(hex(&b[24..32]), "0e0a050008000000");
        }
    }

    #[test]
    fn lookups_ask_for_one_key_or_one_set_and_an_ack() {
        let k: &[u8] = &[192, 0, 2, 1, 0xca, 0x6c, 0, 0];
        let e = lookup_request("qkdpfd", Lookup::Element("locked_4", k), 9);
        let s = lookup_request("qkdpfd", Lookup::Set("locked_4"), 9);
        if cfg!(target_endian = "little") {
            // GETSETELEM / GETSET, REQUEST | ACK: no DUMP, no CREATE.
            assert_eq!(hex(&e[4..12]), "0d0a050009000000");
            assert_eq!(hex(&s[4..12]), "0a0a050009000000");
        }
        assert!(hex(&e).contains("0c000100c0000201ca6c0000"), "{}", hex(&e));
        // Table then set name, as NFTA_SET_TABLE and NFTA_SET_NAME.
        assert_eq!(hex(&s[20..32]), "0b000100716b647066640000");
        assert_eq!(hex(&s[32..]), "0d0002006c6f636b65645f3400000000");
        assert_eq!(s.len(), 48);
    }

    #[test]
    fn a_lookup_is_answered_by_its_ack_or_enoent() {
        let err = answers::ack;
        let elem = nlmsg((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM, 9, &[0; 4]);
        assert_eq!(
            parse_lookup(&elem, 9),
            Ok(None),
            "the element, then the ACK"
        );
        assert_eq!(parse_lookup(&err(9, 0), 9), Ok(Some(true)));
        assert_eq!(parse_lookup(&err(9, -libc::ENOENT), 9), Ok(Some(false)));
        assert!(parse_lookup(&err(9, -libc::EPERM), 9).is_err());
        assert_eq!(parse_lookup(&err(8, 0), 9), Ok(None), "another request's");
    }

    /// A NEWSETELEM answer holding elements with these keys.
    fn answer(seq: u32, keys: &[&[u8]]) -> Vec<u8> {
        let mut list = Vec::new();
        for k in keys {
            let key = nla(0x8000 | NFTA_SET_ELEM_KEY, &nla(NFTA_DATA_VALUE, k));
            list.extend(nla(0x8000 | NFTA_LIST_ELEM, &key));
        }
        let mut p = vec![1, 0, 0, 0];
        p.extend(nla(NFTA_SET_ELEM_LIST_TABLE, b"qkdpfd\0"));
        p.extend(nla(NFTA_SET_ELEM_LIST_SET, b"locked_dr\0"));
        p.extend(nla(0x8000 | NFTA_SET_ELEM_LIST_ELEMENTS, &list));
        nlmsg((10 << 8) | NFT_MSG_NEWSETELEM, seq, &p)
    }

    #[test]
    fn set_elements_request_and_answer() {
        let r = get_elements_request("qkdpfd", "locked_dr", 5);
        if cfg!(target_endian = "little") {
            // GETSETELEM, REQUEST | DUMP, seq 5, NFPROTO_INET.
            assert_eq!(hex(&r[4..20]), "0d0a0103050000000000000001000000");
        }
        let mut keys = Vec::new();
        let mut d = answer(5, &[&[2], &[10]]);
        assert!(!parse_elements(&d, 5, &mut keys).unwrap());
        d = nlmsg(NLMSG_DONE, 5, &0i32.to_ne_bytes());
        assert!(parse_elements(&d, 5, &mut keys).unwrap());
        assert_eq!(keys, [vec![2], vec![10]]);
        // A concatenation's key (address, port, padding) as it came.
        let mut wide = Vec::new();
        let k4: &[u8] = &[192, 0, 2, 1, 0xca, 0x6c, 0, 0];
        assert!(!parse_elements(&answer(5, &[k4]), 5, &mut wide).unwrap());
        assert_eq!(wide, [k4.to_vec()]);
        // Another request's answer is not ours.
        let mut other = Vec::new();
        assert!(!parse_elements(&answer(4, &[&[2]]), 5, &mut other).unwrap());
        assert!(other.is_empty());
        // An empty set: done at once.
        let mut none = Vec::new();
        assert!(parse_elements(&nlmsg(NLMSG_DONE, 5, &[0; 4]), 5, &mut none).unwrap());
        assert!(none.is_empty());
        // An empty key, an error, a foreign type: errors.
        let mut k = Vec::new();
        assert!(parse_elements(&answer(5, &[&[]]), 5, &mut k).is_err());
        let e = parse_elements(
            &nlmsg(NLMSG_ERROR, 5, &(-libc::ENOENT).to_ne_bytes()),
            5,
            &mut k,
        )
        .unwrap_err();
        assert!(e.contains("No such file"), "{e}");
        assert!(parse_elements(&nlmsg(0x0a01, 5, &[0; 4]), 5, &mut k).is_err());
        // Truncated.
        let a = answer(5, &[&[2]]);
        assert!(parse_elements(&a[..a.len() - 3], 5, &mut k).is_err());
    }

    #[test]
    fn acks_and_errors() {
        let ack = |seq: u32, errno: i32| {
            let mut m = Vec::new();
            m.extend_from_slice(&36u32.to_ne_bytes());
            m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            m.extend_from_slice(&0u16.to_ne_bytes());
            m.extend_from_slice(&seq.to_ne_bytes());
            m.extend_from_slice(&0u32.to_ne_bytes());
            m.extend_from_slice(&errno.to_ne_bytes());
            m.extend_from_slice(&[0u8; 16]);
            m
        };
        let feed = |q: &mut Vec<Vec<u8>>, b: &mut [u8]| {
            let m = q.remove(0);
            b[..m.len()].copy_from_slice(&m);
            Ok(m.len())
        };
        let mut q = vec![ack(11, 0), ack(99, -1), ack(12, 0)];
        assert!(await_acks(10, 2, "x", |b| feed(&mut q, b)).is_ok());
        let mut q = vec![ack(11, 0), ack(12, -libc::ENOENT)];
        let e = await_acks(10, 2, "set locked_dr", |b| feed(&mut q, b)).unwrap_err();
        assert!(e.starts_with("set locked_dr: No such file"), "{e}");
        let mut q = vec![ack(11, 0)];
        assert!(await_acks(10, 1, "x", |b| feed(&mut q, b)).is_ok());
        // A commit that failed: an error for the begin, then each ACK.
        let mut q = vec![ack(10, -libc::ENOMEM), ack(11, 0), ack(12, 0)];
        let e = await_acks(10, 2, "x", |b| feed(&mut q, b)).unwrap_err();
        assert!(e.contains("memory"), "{e}");
        // Only the last asks for an ACK: done at it, failed at any error
        // of the batch (the begin's included) before it.
        let mut q = vec![ack(9, -1), ack(15, 0)];
        assert!(await_last(10, 15, "x", |b| feed(&mut q, b)).is_ok());
        for bad in [10, 12, 15] {
            let mut q = vec![ack(bad, -libc::ENOENT), ack(15, 0)];
            assert!(
                await_last(10, 15, "x", |b| feed(&mut q, b)).is_err(),
                "{bad}"
            );
        }
        // Sequence numbers that wrap.
        let mut q = vec![ack(1, 0)];
        assert!(await_last(u32::MAX - 1, 1, "x", |b| feed(&mut q, b)).is_ok());
        let mut q = vec![ack(0, -libc::ENOENT), ack(1, 0)];
        assert!(await_last(u32::MAX - 1, 1, "x", |b| feed(&mut q, b)).is_err());
    }
}
