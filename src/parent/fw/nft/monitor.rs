//! Which nf_tables transactions touched our tables, from the kernel's own
//! notifications (NFNLGRP_NFTABLES, what `nft monitor` reads).
//!
//! Why: the ruleset generation counts every committed transaction of the
//! network namespace, not of our table. A read-back that trusts its last
//! listing only while the generation stands still lists again after any
//! other tool's change: on a gateway where sshguard or a container runtime
//! adds an element a second, every reconcile tick listed our whole table
//! (1.7 s of the parent's loop at 10,000 links, with lockdowns waiting).
//!
//! Each commit notifies every change it made, each naming its table
//! (attribute 1 of every nf_tables object: NFTA_TABLE_NAME,
//! NFTA_CHAIN_TABLE, NFTA_RULE_TABLE, NFTA_SET_TABLE, ...), and then one
//! NFT_MSG_NEWGEN with the new generation, in that order on one socket. So
//! a generation whose NEWGEN was read, with no change before it naming our
//! table or its guard, left both alone. Whatever cannot be shown that way
//! counts as touched: a change without a table name, a message of another
//! kind, notifications the kernel dropped for a full buffer (then the
//! transaction being read is unknown and every earlier record is
//! forgotten), a generation not read yet (its commit may still be
//! notifying). The caller lists then, as before.
//!
//! The ledger is pure and tested on every platform; only the socket is
//! Linux-only.

use std::collections::BTreeMap;

use super::chain::NFT_MSG_NEWRULE;
use super::copy::NFT_MSG_DELRULE;
use super::netlink::{NFNL_SUBSYS_NFTABLES, NFT_MSG_DELSETELEM, NFT_MSG_NEWSETELEM};
use crate::parent::wg::linux::{attrs, messages};

const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWGEN: u16 = 15;
const NFTA_GEN_ID: u16 = 1;
/// The thread that committed the generation (task_pid_nr(current)).
const NFTA_GEN_PROC_PID: u16 = 2;
/// The table-name attribute of every nf_tables object's message.
const NFTA_TABLE: u16 = 1;
/// nfnetlink's multicast group of nf_tables (NFNLGRP_NFTABLES).
pub const NFNLGRP_NFTABLES: u32 = 7;
/// Generations remembered at most; past that the ledger starts over (a
/// caller that never asks lets it grow otherwise).
const MAX_GENS: usize = 1 << 16;
/// Longest span of generations [`Ledger::untouched`] walks.
const MAX_SPAN: u32 = 1 << 16;

/// What the notifications read so far say about each generation.
#[derive(Debug)]
pub struct Ledger {
    /// Our table and its guard table.
    tables: [Vec<u8>; 2],
    /// Generation -> whether its transaction touched one of our tables,
    /// and the thread that committed it, for each generation whose NEWGEN
    /// was read.
    gens: BTreeMap<u32, (bool, Option<u32>)>,
    /// A change read since the last NEWGEN touched one of our tables, or
    /// may have (notifications were lost).
    touching: bool,
    /// The generation of the last NEWGEN read, since the last loss.
    newest: Option<u32>,
    /// A change read since the last NEWGEN touched our table's skeleton
    /// (what a link's own read-back does not read: [`skeletal`]), or may
    /// have.
    skeleton_touching: bool,
    /// The generation of the last transaction read that did.
    skeleton_last: Option<u32>,
    /// The next NEWGEN read ends a transaction that may have touched the
    /// skeleton unseen (notifications lost, or the socket new), unless
    /// [`Ledger::complete_after`] vouched for it.
    skeleton_unknown: bool,
}

/// Whether a change to our table named by nf_tables command `cmd` and its
/// attributes touches what a read-back of one link after a flip does not
/// read: anything but the link chains (`link_*`, `lock_*`: read by it) and
/// the sets a lock switches (`locked_*`: looked up by it; `site` and
/// `src<i>`, the alive heartbeat: they only lock more, or less than our
/// claim counts on). The table's flags, the base chains, the maps and
/// the key sets are. `attr(ty)`: the attribute's bytes up to its NUL.
fn skeletal<'a>(cmd: u16, attr: &dyn Fn(u16) -> Option<&'a [u8]>) -> bool {
    let link_chain =
        |c: Option<&[u8]>| c.is_some_and(|c| c.starts_with(b"link_") || c.starts_with(b"lock_"));
    match cmd {
        // NFTA_RULE_CHAIN, NFTA_CHAIN_NAME
        NFT_MSG_NEWRULE | NFT_MSG_DELRULE => !link_chain(attr(2)),
        NFT_MSG_NEWCHAIN | NFT_MSG_DELCHAIN => !link_chain(attr(3)),
        // NFTA_SET_ELEM_LIST_SET
        NFT_MSG_NEWSETELEM | NFT_MSG_DELSETELEM => !attr(2).is_some_and(|set| {
            let src = set
                .strip_prefix(b"src")
                .is_some_and(|i| !i.is_empty() && i.iter().all(u8::is_ascii_digit));
            set.starts_with(b"locked_")
                || set == crate::ruleset::nft::ALIVE_SET.as_bytes()
                || set == crate::ruleset::nft::dispatch::SITE_SET.as_bytes()
                || src
        }),
        _ => true,
    }
}

/// What the ledger says of a span of generations ([`Ledger::touching_in`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Count {
    /// Every transaction of the span was read: this many touched our tables.
    Touching(u32),
    /// The span ends after the last NEWGEN read: its commit may still be
    /// notifying.
    NotYet,
    /// A transaction of the span is unknown (lost, forgotten, never read).
    Unknown,
}

impl Ledger {
    /// A ledger for a socket subscribed just now: the transaction it may
    /// have joined halfway is unknown, as after a loss.
    pub fn new(table: &str, guard: &str) -> Ledger {
        Ledger {
            tables: [table.as_bytes().to_vec(), guard.as_bytes().to_vec()],
            gens: BTreeMap::new(),
            touching: true,
            newest: None,
            skeleton_touching: false,
            skeleton_last: None,
            skeleton_unknown: true,
        }
    }

    /// Takes one datagram of notifications.
    pub fn feed(&mut self, datagram: &[u8]) {
        let Ok(msgs) = messages(datagram) else {
            return self.lost();
        };
        for m in msgs {
            let (subsys, cmd) = (m.ty >> 8, m.ty & 0xff);
            // The body starts with the 4-byte nfgenmsg.
            let body = m.payload.get(4..).and_then(|b| attrs(b).ok());
            if subsys != NFNL_SUBSYS_NFTABLES {
                (self.touching, self.skeleton_touching) = (true, true);
                continue;
            }
            let Some(body) = body else {
                (self.touching, self.skeleton_touching) = (true, true);
                continue;
            };
            let attr = |ty: u16| body.iter().find(|(t, _)| *t == ty).map(|(_, d)| *d);
            let named = |ty: u16| attr(ty).map(|d| d.split(|b| *b == 0).next().unwrap_or(d));
            if cmd == NFT_MSG_NEWGEN {
                match attr(NFTA_GEN_ID).and_then(|d| <[u8; 4]>::try_from(d).ok()) {
                    Some(id) => {
                        let id = u32::from_be_bytes(id);
                        let touched = std::mem::take(&mut self.touching);
                        if self.gens.len() >= MAX_GENS {
                            self.gens.clear();
                        }
                        let pid = attr(NFTA_GEN_PROC_PID)
                            .and_then(|d| <[u8; 4]>::try_from(d).ok())
                            .map(u32::from_be_bytes);
                        self.gens.insert(id, (touched, pid));
                        self.newest = Some(id);
                        let unknown = std::mem::take(&mut self.skeleton_unknown);
                        if std::mem::take(&mut self.skeleton_touching) || unknown {
                            self.skeleton_touched_at(id);
                        }
                    }
                    None => self.lost(),
                }
                continue;
            }
            let name = named(NFTA_TABLE);
            if name.is_none_or(|n| self.tables.iter().any(|t| t == n)) {
                self.touching = true;
            }
            if name.is_none_or(|n| *n == self.tables[0][..]) && skeletal(cmd, &named) {
                self.skeleton_touching = true;
            }
        }
    }

    /// Notifications were dropped: the transaction being read is unknown,
    /// and so is whatever generation no NEWGEN was read for.
    pub fn lost(&mut self) {
        self.gens.clear();
        self.touching = true;
        self.newest = None;
        self.skeleton_unknown = true;
    }

    /// The socket was subscribed before generation `g` was read: every
    /// transaction after `g` was notified whole (the kernel counts the
    /// generation up before it notifies), and what came before is unknown.
    pub fn complete_after(&mut self, g: u32) {
        self.skeleton_unknown = false;
        self.skeleton_touched_at(g);
    }

    fn skeleton_touched_at(&mut self, g: u32) {
        let later = |a: u32, b: u32| (a.wrapping_sub(b) as i32) > 0;
        if self.skeleton_last.is_none_or(|l| later(g, l)) {
            self.skeleton_last = Some(g);
        }
    }

    /// Every transaction up to generation `now` was read, and none after
    /// generation `since` touched our table's skeleton ([`skeletal`]).
    /// Unlike [`Ledger::untouched`], kept across [`Ledger::forget_through`].
    pub fn skeleton_untouched(&self, since: u32, now: u32) -> bool {
        let after = |a: u32, b: u32| (a.wrapping_sub(b) as i32) > 0;
        match (self.newest, self.skeleton_last) {
            (Some(newest), Some(last)) => !after(now, newest) && !after(last, since),
            _ => false,
        }
    }

    /// How many transactions after generation `from`, up to and including
    /// `to`, touched our tables.
    pub fn touching_in(&self, from: u32, to: u32) -> Count {
        let span = to.wrapping_sub(from);
        if span > MAX_SPAN {
            return Count::Unknown;
        }
        let mut n = 0;
        for i in 1..=span {
            let g = from.wrapping_add(i);
            match self.gens.get(&g) {
                Some((t, _)) => n += u32::from(*t),
                // Past the newest NEWGEN read, and nothing lost since.
                None if self.newest.is_some_and(|l| (g.wrapping_sub(l) as i32) > 0) => {
                    return Count::NotYet;
                }
                None => return Count::Unknown,
            }
        }
        Count::Touching(n)
    }

    /// Every transaction after generation `from`, up to and including
    /// `to`, was read and touched neither of our tables.
    pub fn untouched(&self, from: u32, to: u32) -> bool {
        self.touching_in(from, to) == Count::Touching(0)
    }

    /// Whether generation `g` was committed by thread `tid`; false when
    /// its NEWGEN was not read or named no thread.
    pub fn committed_by(&self, g: u32, tid: u32) -> bool {
        self.gens.get(&g).is_some_and(|(_, pid)| *pid == Some(tid))
    }

    /// Forgets the generations up to `upto` (no one asks about them).
    pub fn forget_through(&mut self, upto: u32) {
        // Wrapping order: g is after `upto` when the difference, signed, is positive.
        self.gens.retain(|g, _| (g.wrapping_sub(upto) as i32) > 0);
    }
}

/// The ledger fed from a socket subscribed to the notifications.
pub struct Monitor {
    nl: crate::parent::wg::linux::sys::Nl,
    pub ledger: Ledger,
}

impl Monitor {
    /// Subscribes; an error where netlink or the group is not there (then
    /// the caller goes on as without).
    pub fn open(table: &str, guard: &str) -> Result<Monitor, String> {
        let nl =
            crate::parent::wg::linux::sys::Nl::open_protocol(super::netlink::NETLINK_NETFILTER)
                .map_err(|e| e.to_string())?;
        // Enough for the notifications of a few thousand changes between two
        // reads; a larger burst (a whole skeleton loaded) overruns and is
        // then simply unknown.
        nl.subscribe(NFNLGRP_NFTABLES, 4 << 20)
            .map_err(|e| e.to_string())?;
        Ok(Monitor {
            nl,
            ledger: Ledger::new(table, guard),
        })
    }

    /// Reads every notification queued, without waiting.
    pub fn drain(&mut self) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match self.nl.try_recv(&mut buf) {
                Ok(Some(n)) => self.ledger.feed(&buf[..n]),
                Ok(None) => return,
                Err(_) => {
                    // An overrun is said once; the socket reads on after it.
                    self.ledger.lost();
                    return;
                }
            }
        }
    }

    /// [`Ledger::untouched`] after reading what is queued.
    pub fn untouched(&mut self, from: u32, to: u32) -> bool {
        self.drain();
        self.ledger.untouched(from, to)
    }
}

/// The generation checks of the read-backs.
impl super::Nft {
    /// Nothing that touched our tables committed after generation `from`,
    /// up to `to` (our own transactions count as touching).
    pub(super) fn untouched(&mut self, from: u32, to: u32) -> bool {
        from == to || self.monitor.as_mut().is_some_and(|m| m.untouched(from, to))
    }

    /// The generation now, if nothing touched our tables since `since`.
    pub(super) fn still(&mut self, since: u32) -> Option<u32> {
        let now = self.generation()?;
        self.untouched(since, now).then_some(now)
    }

    /// `after`, read right after one netlink batch of this thread, if that
    /// batch committed generation `after` and nothing else that touched
    /// our tables committed since the verified listing. A batch that
    /// changes nothing (elements added that the sets hold already) commits
    /// no generation: counted as ours, it took the generation of whatever
    /// committed before it, say an operator's `nft` that flushed `input`,
    /// for our own, and a read-back judged from the verified shapes called
    /// the link locked. The kernel names the committing thread in NEWGEN.
    pub(super) fn our_batch_since_verified(&mut self, after: Option<u32>) -> Option<u32> {
        let a = self.only_ours_since_verified(after, 1)?;
        let tid = this_thread()?;
        let m = self.monitor.as_mut()?;
        m.drain();
        m.ledger.committed_by(a, tid).then_some(a)
    }

    /// `after`, read right after `ours` transactions of ours committed, if
    /// nothing else that touched our tables committed since the verified
    /// listing: every committed transaction adds one to the generation,
    /// and the ones before ours were shown to leave our tables alone. (If
    /// ours were not the last ones, one of them is among those before,
    /// and it touched our table: no. Counting fewer of ours than there were
    /// can only say no.)
    pub(super) fn only_ours_since_verified(
        &mut self,
        after: Option<u32>,
        ours: u32,
    ) -> Option<u32> {
        let (v, a) = (self.verified_gen?, after?);
        (ours > 0 && self.untouched(v, a.wrapping_sub(ours))).then_some(a)
    }

    /// Nothing changed our table's skeleton since a whole listing showed
    /// it whole, as far as the notifications tell.
    pub(super) fn skeleton_still(&mut self) -> bool {
        let (Some(since), Some(now)) = (self.skeleton_gen, self.generation()) else {
            return false;
        };
        let Some(m) = self.monitor.as_mut() else {
            return false;
        };
        m.drain();
        m.ledger.skeleton_untouched(since, now)
    }

    /// Records the generation the verified read-back holds at; the
    /// notifications of the ones up to it are no longer needed.
    pub(super) fn set_verified_gen(&mut self, verified: Option<u32>) {
        self.verified_gen = verified;
        if let (Some(v), Some(m)) = (verified, self.monitor.as_mut()) {
            m.ledger.forget_through(v);
        }
    }

    /// Subscribes to the notifications, once: from before the first
    /// generation is read, so that every later one can be accounted for.
    pub(super) fn start_monitor(&mut self) {
        if !std::mem::replace(&mut self.monitor_tried, true) {
            let guard = self.guard_table();
            self.monitor = monitor_or_log(&self.table, &guard);
            self.seq = self.seq.wrapping_add(4);
            match super::alive::generation(self.seq) {
                Ok(g) => {
                    if let Some(m) = self.monitor.as_mut() {
                        m.ledger.complete_after(g);
                    }
                }
                Err(_) => self.monitor = None,
            }
        }
    }
}

/// The id the kernel gives this thread (NEWGEN's PROC_PID).
fn this_thread() -> Option<u32> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid(2) has no arguments and cannot fail.
        u32::try_from(unsafe { libc::gettid() }).ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

fn monitor_or_log(table: &str, guard: &str) -> Option<Monitor> {
    match Monitor::open(table, guard) {
        Ok(m) => Some(m),
        Err(e) => {
            crate::log::debug(format_args!(
                "fw: nf_tables notifications unavailable ({e}): any change lists the table"
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parent::fw::nft::netlink::msg;
    use crate::parent::wg::linux::c_name;

    /// A notification of nf_tables command `cmd` naming `table` (none: no name).
    fn change(cmd: u16, table: Option<&str>) -> Vec<u8> {
        let mut m = msg((NFNL_SUBSYS_NFTABLES << 8) | cmd, 0, 0, 1, 0);
        if let Some(t) = table {
            m.attr(NFTA_TABLE, &c_name(t));
        }
        m.attr(2, &c_name("whatever"));
        m.finish().to_vec()
    }

    fn newgen(id: u32) -> Vec<u8> {
        newgen_by(id, 77)
    }

    /// As the kernel writes it: the id, the thread, its name.
    fn newgen_by(id: u32, pid: u32) -> Vec<u8> {
        let mut m = msg((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN, 0, 0, 0, 0);
        m.attr(NFTA_GEN_ID, &id.to_be_bytes());
        m.attr(NFTA_GEN_PROC_PID, &pid.to_be_bytes());
        m.attr(3, &c_name("nft"));
        m.finish().to_vec()
    }

    /// A notification naming `table` and, as attribute 2 (a rule's chain,
    /// an element's set) or 3 (a chain's name), `name`.
    fn naming(cmd: u16, table: &str, ty: u16, name: &str) -> Vec<u8> {
        let mut m = msg((NFNL_SUBSYS_NFTABLES << 8) | cmd, 0, 0, 1, 0);
        m.attr(NFTA_TABLE, &c_name(table));
        m.attr(ty, &c_name(name));
        m.finish().to_vec()
    }

    /// What a link's own read-back reads (its chains, the locked_ sets) and
    /// what only locks more (site, src<i>, alive) leave the skeleton; the
    /// table, base chains, maps and key sets do not. Kept past forgetting.
    #[test]
    fn changes_to_the_skeleton_are_told_apart() {
        let mut l = ledger();
        for (cmd, ty, name) in [
            (NEWRULE, 2, "link_dr"),
            (DELRULE, 2, "lock_dr"),
            (NEWCHAIN, 3, "lock_dr"),
            (NEWSETELEM, 2, "locked_4"),
            (DELSETELEM, 2, "site"),
            (NEWSETELEM, 2, "src0"),
            (NEWSETELEM, 2, "alive"),
        ] {
            l.feed(&naming(cmd, "qkdpfd", ty, name));
        }
        l.feed(&naming(NEWRULE, "qkdpfd_guard", 2, "input"));
        l.feed(&naming(NEWRULE, "filter", 2, "input"));
        l.feed(&newgen(1));
        assert!(l.skeleton_untouched(0, 1));
        assert!(!l.untouched(0, 1), "but the table was touched");
        for (i, (cmd, ty, name)) in [
            (NEWRULE, 2, "input"),
            (DELCHAIN, 3, "forward"),
            (NEWSETELEM, 2, "lock_4"),
            (DELSETELEM, 2, "keys_6"),
            (NEWSETELEM, 2, "src0_4"),
            (NEWSETELEM, 2, "wg_handshakes"),
            (NEWTABLE, 1, "qkdpfd"),
        ]
        .into_iter()
        .enumerate()
        {
            let g = 2 + i as u32;
            l.feed(&naming(cmd, "qkdpfd", ty, name));
            l.feed(&newgen(g));
            assert!(!l.skeleton_untouched(g - 1, g), "{name}");
            assert!(l.skeleton_untouched(g, g), "{name}");
        }
        assert!(!l.skeleton_untouched(8, 9), "9 not read yet");
        l.forget_through(8);
        assert!(l.skeleton_untouched(8, 8), "kept past forgetting");
        assert!(!l.skeleton_untouched(7, 8));
        l.lost();
        l.feed(&newgen(9));
        assert!(!l.skeleton_untouched(8, 9), "lost: unknown");
        // A socket vouched for from generation 20 on.
        let mut l = Ledger::new("qkdpfd", "qkdpfd_guard");
        l.complete_after(20);
        l.feed(&newgen(19));
        l.feed(&newgen(21));
        assert!(l.skeleton_untouched(20, 21));
        assert!(!l.skeleton_untouched(19, 21), "before it: unknown");
    }

    /// A batch of ours that changed nothing committed no generation: the
    /// one read after it is another thread's, which is not ours.
    #[test]
    fn the_committing_thread_is_kept() {
        let mut l = ledger();
        l.feed(&change(NEWRULE, Some("qkdpfd")));
        l.feed(&newgen_by(1, 4242));
        l.feed(&change(NEWSETELEM, Some("qkdpfd")));
        l.feed(&newgen_by(2, 99));
        assert!(l.committed_by(2, 99));
        assert!(!l.committed_by(1, 99), "another thread's");
        assert!(!l.committed_by(3, 99), "not read");
        let mut bare = msg((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN, 0, 0, 0, 0);
        bare.attr(NFTA_GEN_ID, &3u32.to_be_bytes());
        l.feed(&bare.finish());
        assert!(!l.committed_by(3, 99), "no thread named");
        assert!(l.untouched(2, 3));
    }

    const NEWTABLE: u16 = 0;
    const DELTABLE: u16 = 2;
    const NEWCHAIN: u16 = NFT_MSG_NEWCHAIN;
    const DELCHAIN: u16 = NFT_MSG_DELCHAIN;
    const NEWRULE: u16 = NFT_MSG_NEWRULE;
    const DELRULE: u16 = NFT_MSG_DELRULE;
    const NEWSETELEM: u16 = NFT_MSG_NEWSETELEM;
    const DELSETELEM: u16 = NFT_MSG_DELSETELEM;

    /// A ledger that has read generation 0 (whose own transaction, joined
    /// halfway, is unknown).
    fn ledger() -> Ledger {
        let mut l = Ledger::new("qkdpfd", "qkdpfd_guard");
        l.feed(&newgen(0));
        l
    }

    #[test]
    fn the_transaction_read_first_is_unknown() {
        let mut l = Ledger::new("qkdpfd", "qkdpfd_guard");
        l.feed(&newgen(5));
        l.feed(&newgen(6));
        assert!(!l.untouched(4, 5));
        assert!(l.untouched(5, 6));
    }

    #[test]
    fn another_tables_changes_leave_ours_untouched() {
        let mut l = ledger();
        // One datagram may carry several notifications.
        let mut d = change(NEWSETELEM, Some("sshguard"));
        d.extend(change(NEWRULE, Some("filter")));
        d.extend(newgen(41));
        l.feed(&d);
        l.feed(&newgen(42));
        assert!(l.untouched(40, 42));
        assert!(l.untouched(42, 42));
        assert!(
            !l.untouched(40, 43),
            "43 not read yet: its commit may still be notifying"
        );
        assert!(!l.untouched(39, 42), "40 was never read");
        assert!(!l.untouched(u32::MAX, 42), "0 was read first: unknown");
    }

    #[test]
    fn a_change_naming_our_table_or_guard_or_none_touches_it() {
        for table in [Some("qkdpfd"), Some("qkdpfd_guard"), None] {
            let mut l = ledger();
            l.feed(&newgen(1));
            l.feed(&change(DELTABLE, table));
            l.feed(&newgen(2));
            l.feed(&newgen(3));
            assert!(l.untouched(0, 1), "{table:?}");
            assert!(!l.untouched(1, 2), "{table:?}");
            assert!(!l.untouched(0, 3), "{table:?}");
            assert!(l.untouched(2, 3), "{table:?}: only the one transaction");
        }
        // A prefix of our name is another table.
        let mut l = ledger();
        l.feed(&change(NEWRULE, Some("qkdpf")));
        l.feed(&newgen(1));
        assert!(l.untouched(0, 1));
    }

    #[test]
    fn what_cannot_be_read_counts_as_touched() {
        // A message of another subsystem, a NEWGEN without an id, a
        // datagram that does not parse.
        let mut l = ledger();
        let mut other = msg((11 << 8) | NEWRULE, 0, 0, 1, 0);
        other.attr(NFTA_TABLE, &c_name("filter"));
        l.feed(&other.finish());
        l.feed(&newgen(1));
        assert!(!l.untouched(0, 1));

        let mut l = ledger();
        l.feed(&newgen(1));
        l.feed(&msg((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN, 0, 0, 0, 0).finish());
        l.feed(&newgen(2));
        assert!(
            !l.untouched(0, 2),
            "a NEWGEN without an id loses what came before"
        );
        assert!(!l.untouched(1, 2), "and the transaction after it");

        let mut l = ledger();
        l.feed(&newgen(1));
        l.feed(&[1, 2, 3]);
        l.feed(&newgen(2));
        assert!(!l.untouched(0, 1) && !l.untouched(1, 2));
    }

    #[test]
    fn lost_notifications_forget_every_generation_before_the_next_newgen() {
        let mut l = ledger();
        l.feed(&newgen(7));
        l.lost();
        l.feed(&change(NEWRULE, Some("filter")));
        l.feed(&newgen(8));
        l.feed(&newgen(9));
        assert!(!l.untouched(6, 7), "forgotten");
        assert!(
            !l.untouched(7, 8),
            "the transaction read when the loss came"
        );
        assert!(l.untouched(8, 9));
    }

    #[test]
    fn touching_transactions_are_counted_over_a_span_read_whole() {
        let mut l = ledger();
        l.feed(&change(NEWSETELEM, Some("qkdpfd")));
        l.feed(&newgen(1));
        l.feed(&change(NEWRULE, Some("filter")));
        l.feed(&newgen(2));
        l.feed(&change(NEWRULE, Some("qkdpfd")));
        l.feed(&newgen(3));
        assert_eq!(l.touching_in(0, 3), Count::Touching(2));
        assert_eq!(l.touching_in(1, 2), Count::Touching(0));
        assert_eq!(l.touching_in(3, 3), Count::Touching(0));
        assert_eq!(l.touching_in(2, 5), Count::NotYet, "4 and 5 not read yet");
        assert_eq!(
            l.touching_in(u32::MAX - 1, 3),
            Count::Unknown,
            "0 read first"
        );
        l.lost();
        assert_eq!(l.touching_in(0, 3), Count::Unknown, "forgotten");
        assert_eq!(
            l.touching_in(3, 4),
            Count::Unknown,
            "after a loss, not just late"
        );
        l.feed(&newgen(4));
        l.feed(&newgen(5));
        assert_eq!(l.touching_in(4, 5), Count::Touching(0));
        assert_eq!(l.touching_in(1, 1 + MAX_SPAN + 1), Count::Unknown);
    }

    #[test]
    fn generations_wrap_and_are_forgotten_once_passed() {
        let mut l = Ledger::new("qkdpfd", "qkdpfd_guard");
        for g in [u32::MAX - 2, u32::MAX - 1, u32::MAX, 0, 1] {
            l.feed(&newgen(g));
        }
        assert!(l.untouched(u32::MAX - 2, 1));
        l.forget_through(u32::MAX);
        assert!(!l.untouched(u32::MAX - 2, 1));
        assert!(l.untouched(u32::MAX, 1));
        assert_eq!(l.gens.len(), 2, "0 and 1 are left");
        // A span past the walk's bound is not walked.
        assert!(!l.untouched(1, 1 + MAX_SPAN + 1));
    }
}
