//! The peer port's door (DESIGN §6, issue 8 item 4): every check a
//! datagram passes before a rotation sees it, and the budgets of the
//! `peer_auth_failed` log.
//!
//! Each datagram costs the same small, bounded work whoever sends it: the
//! [`Keyring`](crate::proto::peer::Keyring) checks (structure, receiver,
//! sender, link), then this door's (source address, role, epoch, the
//! answer budget), and only then the one Ed25519 verification. What is
//! refused before it:
//!
//! - a source that is not the link's configured peer address (the port
//!   may differ: answers go to the datagram's source, for NAT);
//! - a datagram for the other role (an OFFER to the master, an answer to
//!   the slave);
//! - at the master, a CONFIRM or NACK that does not echo the OFFER in
//!   flight (epoch and nonce): a replay, a late duplicate, an answer to an
//!   old round — nothing in it could change the round; and one that does,
//!   past the link's answer budget: the OFFER's epoch and nonce travel in
//!   the clear, so forged answers to it from the slave's address cost a
//!   verification each for as long as the round lasts;
//! - at the slave, a repeat of the OFFER whose round is still fetching its
//!   key or installing it (epoch, nonce and key_ID): the rotation ignores
//!   it, the CONFIRM leaving once the PSK is installed. A hub's master
//!   retransmits every second while its slave works through thousands of
//!   `dec_keys` at start, and each repeat cost an Ed25519 verification;
//! - at the slave, an OFFER whose epoch starts no round (≤ the last one
//!   accepted) once the link's answer budget is spent: such an OFFER can
//!   only earn a NACK or the cached CONFIRM, and those are what the budget
//!   bounds. Until it is spent they are verified and answered, because a
//!   master that lost its epoch learns the slave's only from a NACK.
//!
//! An OFFER above the slave's epoch is verified within the link's budget of
//! new-epoch OFFERs ([`OFFERS_PER_SEC`]), whatever its epoch: the master's
//! epoch runs ahead by one per failed round for as long as the slave was
//! away, and a slave that lost its state starts again at 0, so no upper
//! window is safe; nor would one help, as a forger picks any epoch inside
//! it. A flood of forged ones spends that link's budget (its rounds stall,
//! fail closed), not the engine's time.
//!
//! Datagrams from an address that is no configured peer's are refused
//! already in the receive task, but for a sample of them a second that
//! reaches the door to be logged. Drops are logged as `peer_auth_failed`
//! within two budgets: the first per source per minute, and a line a
//! second (after a burst) for all sources together, past which one
//! `from=*` line a minute counts the rest.

use crate::engine::rotate::Role;
use crate::log::{self, Event};
use crate::proto::peer::{Body, Message, Nonce};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// At most `PER_SEC` a second on average and `BURST` at once, kept as one
/// instant (GCRA: the time the next use is due), so a check is O(1). The
/// rates are constants of the type: every keyed link has a budget, and
/// two durations repeated in each were 32 bytes a link.
#[derive(Clone, Debug, Default)]
pub(super) struct Budget<const PER_SEC: u32, const BURST: u32> {
    due: Option<Instant>,
}

impl<const PER_SEC: u32, const BURST: u32> Budget<PER_SEC, BURST> {
    const INTERVAL: Duration = Duration::from_nanos(1_000_000_000 / max1(PER_SEC) as u64);
    /// How far ahead of `now` the due time may run: `BURST - 1` intervals.
    const SLACK: Duration = Self::INTERVAL.saturating_mul(max1(BURST) - 1);

    /// Spends one use; false when the budget is spent.
    pub(super) fn take(&mut self, now: Instant) -> bool {
        let due = self.due.map_or(now, |d| d.max(now));
        if due.duration_since(now) > Self::SLACK {
            return false;
        }
        self.due = Some(due + Self::INTERVAL);
        true
    }
}

const fn max1(n: u32) -> u32 {
    if n == 0 { 1 } else { n }
}

/// Answers to OFFERs that start no round (a NACK, the cached CONFIRM), per
/// link: a legitimate master retransmits at most once a second. The
/// master's budget of answers to its OFFER is the same: a real slave
/// answers each send once.
const ANSWERS_PER_SEC: u32 = 4;

/// OFFERs of a new epoch, per link: each costs an Ed25519 verification,
/// and one who can send from the peer's address could make them without
/// end (the link's ids travel in the clear). A real master starts a round
/// or two a second at most (a NACK's new round follows a KME call); past
/// the budget a flood holds back only the link it spoofs, not the engine.
const OFFERS_PER_SEC: u32 = 4;
const OFFERS_BURST: u32 = 8;

/// What the door does with a datagram that passed the keyring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Worth an Ed25519 verification.
    Verify,
    /// Refused before it, logged as `peer_auth_failed reason=…`.
    Refuse(&'static str),
    /// Refused before it, silently: what duplicates and late answers look
    /// like on a real network too.
    Drop,
}

/// What the door keeps of one keyed link (its peer's address and its role
/// are the link's route's, given at each check).
#[derive(Default)]
pub struct Gate {
    /// Master: the OFFER on the wire (epoch, nonce), the only one an answer
    /// may be about.
    offered: Option<(u64, Nonce)>,
    /// Slave: NACKs and repeated CONFIRMs; master: answers to its OFFER;
    /// see [`ANSWERS_PER_SEC`].
    answers: Budget<ANSWERS_PER_SEC, ANSWERS_PER_SEC>,
    /// Slave: OFFERs of a new epoch, see [`OFFERS_PER_SEC`].
    offers: Budget<OFFERS_PER_SEC, OFFERS_BURST>,
}

impl Gate {
    /// The engine sent `m` on this link.
    pub fn sent(&mut self, m: &Message) {
        if m.body == Body::Offer {
            self.offered = Some((m.epoch, m.nonce));
        }
    }

    /// The master's round moved past its OFFER (a new fetch, the CONFIRM
    /// accepted, the round failed): no answer is awaited any more.
    pub fn settled(&mut self) {
        self.offered = None;
    }

    /// The checks before the signature. `peer`: the configured peer's
    /// address (the port is free: NAT); `role`: ours on the link. `epoch` is
    /// the rotation's: the last one the slave accepted (unused for the
    /// master, which knows its OFFER exactly); `busy`: `m` repeats the
    /// OFFER of the slave's round in progress
    /// ([`Rotation::repeats_busy_offer`](crate::engine::rotate::Rotation::repeats_busy_offer)).
    pub fn check(
        &mut self,
        (peer, role): (IpAddr, Role),
        from: IpAddr,
        m: &Message,
        (epoch, busy): (u64, bool),
        now: Instant,
    ) -> Verdict {
        if from.to_canonical() != peer.to_canonical() {
            return Verdict::Refuse("wrong-source");
        }
        match (role, m.body) {
            (Role::Master, Body::Offer)
            | (Role::Slave, Body::Confirm { .. } | Body::Nack { .. }) => {
                Verdict::Refuse("wrong-role")
            }
            (Role::Master, _) if self.offered != Some((m.epoch, m.nonce)) => Verdict::Drop,
            (Role::Master, _) if self.answers.take(now) => Verdict::Verify,
            (Role::Master, _) => Verdict::Refuse("answer-budget"),
            (Role::Slave, _) if busy => Verdict::Drop,
            (Role::Slave, _) if m.epoch > epoch && self.offers.take(now) => Verdict::Verify,
            (Role::Slave, _) if m.epoch > epoch => Verdict::Refuse("offer-budget"),
            (Role::Slave, _) if self.answers.take(now) => Verdict::Verify,
            (Role::Slave, _) => Verdict::Refuse("answer-budget"),
        }
    }
}

/// Sources the auth log tracks one by one; past them, one budget for all.
const AUTH_LOG_SOURCES: usize = 4096;
/// `peer_auth_failed` lines of all sources together: a burst, then one a
/// second (the rest are counted in a `from=*` line once a minute).
const AUTH_LINES_PER_SEC: u32 = 1;
const AUTH_LINES_BURST: u32 = 20;

/// `peer_auth_failed`: the first per source per minute, then one line with
/// `suppressed=N` (DESIGN §8), within a budget of lines for all sources
/// together. Constant cost per datagram: the table of sources is pruned
/// once a minute, not per datagram; sources past [`AUTH_LOG_SOURCES`] (a
/// spoofed-source flood) and lines past the shared budget are only
/// counted, in one `from=*` line a minute.
#[derive(Default)]
pub(super) struct AuthLog {
    /// Per source; a held count notes its last reason and link.
    seen: log::PerMinute<IpAddr, (String, Option<String>)>,
    pruned: Option<Instant>,
    lines: Budget<AUTH_LINES_PER_SEC, AUTH_LINES_BURST>,
    /// Failures counted but not logged since the last `from=*` line, and
    /// the last one's reason.
    held: u64,
    held_why: String,
    summarised: Option<Instant>,
}

impl AuthLog {
    /// Logs (or counts) one dropped datagram.
    pub(super) fn failed(&mut self, from: IpAddr, link: Option<&str>, why: &str, now: Instant) {
        if let Some(ev) = self.line(from, link, why, now) {
            ev.send();
        }
    }

    /// The lines owed for counts a minute old that no later failure
    /// carried (a flood that stopped): per source, then `from=*`.
    pub(super) fn overdue(&mut self, now: Instant) -> Vec<log::Record> {
        let mut out = Vec::new();
        for (from, n, noted) in self.seen.overdue(now) {
            let (why, link) = noted.unwrap_or_default();
            let mut ev = log::event(Event::PeerAuthFailed)
                .kv("from", from)
                .kv("reason", why);
            if let Some(l) = link {
                ev = ev.kv("link", l);
            }
            out.push(ev.suppressed(n));
        }
        let minute = Duration::from_secs(60);
        let summary_due = self
            .summarised
            .is_none_or(|t| now.duration_since(t) >= minute);
        if self.held > 0 && summary_due {
            let why = std::mem::take(&mut self.held_why);
            out.push(self.summary(&why, now));
        }
        out
    }

    /// The `from=*` line: every failure counted for no source of its own.
    fn summary(&mut self, why: &str, now: Instant) -> log::Record {
        self.summarised = Some(now);
        let n = std::mem::take(&mut self.held);
        log::event(Event::PeerAuthFailed)
            .kv("from", "*")
            .kv("reason", why)
            .kv("suppressed", n)
            .msg(format!(
                "more failing datagrams than {AUTH_LOG_SOURCES} sources or a line a second can tell (a flood?)"
            ))
    }

    /// The line to log for one drop, if any.
    fn line(
        &mut self,
        from: IpAddr,
        link: Option<&str>,
        why: &str,
        now: Instant,
    ) -> Option<log::Record> {
        let minute = Duration::from_secs(60);
        let from = from.to_canonical();
        let tracked = self.seen.contains(&from);
        // Pruned only for a new source, which needs the room: a source we
        // track keeps the count its next line reports, and so does an idle
        // one holding a count (prune keeps it). Only a table still full
        // lets those go, and their counts go to the `from=*` line: new
        // sources get their own lines, and no count is dropped unsaid.
        if !tracked && self.pruned.is_none_or(|t| now.duration_since(t) >= minute) {
            self.seen.prune(now);
            if self.seen.len() >= AUTH_LOG_SOURCES {
                self.held += self.seen.evict(now);
            }
            self.pruned = Some(now);
        }
        let own = if !self.seen.contains(&from) && self.seen.len() >= AUTH_LOG_SOURCES {
            None
        } else {
            let noted = || Some((why.to_string(), link.map(str::to_string)));
            match self.seen.admit_noting(from, now, noted) {
                // Counted against the source; its next line says how many.
                None => return None,
                Some(held) => Some(held),
            }
        };
        match own {
            Some(held) if self.lines.take(now) => {
                let mut ev = log::event(Event::PeerAuthFailed)
                    .kv("from", from)
                    .kv("reason", why);
                if let Some(l) = link {
                    ev = ev.kv("link", l);
                }
                return Some(ev.suppressed(held));
            }
            Some(held) => self.held += 1 + held,
            None => self.held += 1,
        }
        if self
            .summarised
            .is_some_and(|t| now.duration_since(t) < minute)
        {
            why.clone_into(&mut self.held_why);
            return None;
        }
        Some(self.summary(why, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::peer::{KeyId, LinkId};

    fn ip(i: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i))
    }

    #[test]
    fn a_budget_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = Budget::<4, 4>::default();
        assert_eq!((0..10).filter(|_| b.take(t0)).count(), 4);
        // A quarter second buys one more, not a burst.
        let t = t0 + Duration::from_millis(250);
        assert_eq!((0..10).filter(|_| b.take(t)).count(), 1);
        // Over ten seconds of constant demand: the burst plus 4 a second.
        let mut b = Budget::<4, 4>::default();
        let taken = (0..10_000u64)
            .filter(|i| b.take(t0 + Duration::from_millis(*i)))
            .count();
        assert!((40..=44).contains(&taken), "{taken}");
        // Idle time refills only up to the burst.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!((0..10).filter(|_| b.take(later)).count(), 4);
    }

    fn msg(epoch: u64, body: Body) -> Message {
        Message {
            link_id: LinkId([9; 32]),
            sender: [1; 32],
            receiver: [2; 32],
            epoch,
            nonce: [7; 16],
            key_id: KeyId::new("k1").unwrap(),
            body,
        }
    }

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const NACK: Body = Body::Nack { last: 3 };

    #[test]
    fn only_the_configured_peer_address_gets_in_whatever_the_port() {
        let t0 = Instant::now();
        let route = (PEER, Role::Slave);
        let mut g = Gate::default();
        let offer = msg(5, Body::Offer);
        assert_eq!(
            g.check(route, ip(1), &offer, (4, false), t0),
            Verdict::Refuse("wrong-source")
        );
        assert_eq!(
            g.check(route, PEER, &offer, (4, false), t0),
            Verdict::Verify
        );
        // An IPv4-mapped IPv6 source is the same address.
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(
            g.check(route, mapped, &offer, (4, false), t0),
            Verdict::Verify
        );
    }

    #[test]
    fn the_master_verifies_only_answers_to_its_offer_on_the_wire() {
        let t0 = Instant::now();
        let route = (PEER, Role::Master);
        let mut g = Gate::default();
        let confirm = msg(5, Body::Confirm { tag: [0; 32] });
        assert_eq!(
            g.check(route, PEER, &msg(5, Body::Offer), (0, false), t0),
            Verdict::Refuse("wrong-role")
        );
        // Nothing offered yet: a CONFIRM or NACK is a replay.
        assert_eq!(
            g.check(route, PEER, &confirm, (5, false), t0),
            Verdict::Drop
        );
        let offer = msg(5, Body::Offer);
        g.sent(&offer);
        assert_eq!(
            g.check(route, PEER, &confirm, (5, false), t0),
            Verdict::Verify
        );
        assert_eq!(
            g.check(route, PEER, &msg(5, NACK), (5, false), t0),
            Verdict::Verify
        );
        // Another epoch or nonce is about another OFFER.
        assert_eq!(
            g.check(route, PEER, &msg(4, NACK), (5, false), t0),
            Verdict::Drop
        );
        let mut other = confirm.clone();
        other.nonce[0] ^= 1;
        assert_eq!(g.check(route, PEER, &other, (5, false), t0), Verdict::Drop);
        // Answers to it past the budget (forged: its epoch and nonce are in
        // the clear) are refused unverified; the budget comes back.
        let verified = (0..10_000)
            .filter(|_| g.check(route, PEER, &confirm, (5, false), t0) == Verdict::Verify)
            .count();
        assert_eq!(verified, ANSWERS_PER_SEC as usize - 2, "two spent above");
        assert_eq!(
            g.check(route, PEER, &confirm, (5, false), t0),
            Verdict::Refuse("answer-budget")
        );
        let later = t0 + Duration::from_secs(1);
        assert_eq!(
            g.check(route, PEER, &confirm, (5, false), later),
            Verdict::Verify
        );
        // Once the round moved on, even the right CONFIRM again is dropped:
        // as often as it comes, it costs no verification.
        g.settled();
        for _ in 0..1000 {
            assert_eq!(
                g.check(route, PEER, &confirm, (5, false), t0),
                Verdict::Drop
            );
        }
    }

    #[test]
    fn the_slave_answers_offers_that_start_no_round_within_the_budget() {
        let t0 = Instant::now();
        let route = (PEER, Role::Slave);
        let mut g = Gate::default();
        assert_eq!(
            g.check(
                route,
                PEER,
                &msg(5, Body::Confirm { tag: [0; 32] }),
                (4, false),
                t0
            ),
            Verdict::Refuse("wrong-role")
        );
        assert_eq!(
            g.check(route, PEER, &msg(5, NACK), (4, false), t0),
            Verdict::Refuse("wrong-role")
        );
        // A new epoch, however far ahead (a master far ahead is
        // legitimate): verified within its own budget, which a flood of
        // them spends without touching the answers' budget.
        let mut fresh = 0;
        for (i, e) in [5, 6, 1_000_000, u64::MAX]
            .into_iter()
            .cycle()
            .take(400)
            .enumerate()
        {
            let t = t0 + Duration::from_millis(i as u64 * 10);
            match g.check(route, PEER, &msg(e, Body::Offer), (4, false), t) {
                Verdict::Verify => fresh += 1,
                v => assert_eq!(v, Verdict::Refuse("offer-budget")),
            }
        }
        // 4 s of 100 a second: the burst of 8 and 4 a second.
        assert!((20..=26).contains(&fresh), "{fresh}");
        // The current and older epochs: a retransmit or a replay, answered
        // (NACK or cached CONFIRM) at most ANSWERS_PER_SEC a second.
        let mut verified = 0;
        for i in 0..10_000u64 {
            let t = t0 + Duration::from_micros(i * 500);
            let e = [4, 3, 0][i as usize % 3];
            match g.check(route, PEER, &msg(e, Body::Offer), (4, false), t) {
                Verdict::Verify => verified += 1,
                v => assert_eq!(v, Verdict::Refuse("answer-budget")),
            }
        }
        // 5 s of 2,000 a second: the burst of 4 and 4 a second.
        assert!((20..=25).contains(&verified), "{verified}");
    }

    #[test]
    fn the_slave_drops_a_repeat_of_the_offer_it_is_working_on_unverified() {
        let t0 = Instant::now();
        let route = (PEER, Role::Slave);
        let mut g = Gate::default();
        // Thousands of repeats while the key is fetched: none verified, and
        // the answer budget is left for the NACKs and CONFIRMs it bounds.
        for _ in 0..10_000 {
            let v = g.check(route, PEER, &msg(5, Body::Offer), (5, true), t0);
            assert_eq!(v, Verdict::Drop);
        }
        assert_eq!(
            g.check(route, PEER, &msg(5, Body::Offer), (5, false), t0),
            Verdict::Verify
        );
        // Still only from the peer, and only OFFERs.
        let busy = (5, true);
        let offer = msg(5, Body::Offer);
        assert_eq!(
            g.check(route, ip(1), &offer, busy, t0),
            Verdict::Refuse("wrong-source")
        );
        assert_eq!(
            g.check(route, PEER, &msg(5, NACK), busy, t0),
            Verdict::Refuse("wrong-role")
        );
    }

    #[test]
    fn auth_log_is_bounded_per_source_and_for_all_sources_together() {
        let mut log = AuthLog::default();
        let t0 = Instant::now();
        // 20,000 spoofed sources in one instant: the table is capped, and
        // the lines are the shared burst plus one `from=*` summary.
        let lines: Vec<String> = (0..20_000u32)
            .filter_map(|i| log.line(ip(i), None, "bad-magic", t0))
            .map(|e| e.line().to_string())
            .collect();
        assert_eq!(log.seen.len(), AUTH_LOG_SOURCES);
        assert_eq!(lines.len(), AUTH_LINES_BURST as usize + 1, "{lines:?}");
        assert!(lines[AUTH_LINES_BURST as usize].contains("from=* "));
        // A minute of a steady flood from the sources already seen costs
        // nothing (each is within its minute), and from new sources at
        // most a line a second, plus one summary.
        let mut n = 0;
        for s in 0..60u64 {
            let t = t0 + Duration::from_secs(s) + Duration::from_millis(500);
            for i in 0..1000u32 {
                n += log.line(ip(i), None, "bad-magic", t).is_some() as u32;
            }
        }
        assert_eq!(n, 0);
        let mut n = 0;
        for s in 0..60u32 {
            let t = t0 + Duration::from_secs(60 + s as u64);
            for i in 0..1000u32 {
                let src = ip(1_000_000 + s * 1000 + i);
                n += log.line(src, None, "bad-magic", t).is_some() as u32;
            }
        }
        assert!(n <= AUTH_LINES_BURST + 60 + 2, "{n} lines");
        // One source: one line a minute, the next says how many it held.
        let mut log = AuthLog::default();
        let one = ip(1);
        assert!(log.line(one, Some("dr"), "stale-epoch", t0).is_some());
        for _ in 0..99 {
            assert!(log.line(one, Some("dr"), "stale-epoch", t0).is_none());
        }
        let next = log
            .line(one, Some("dr"), "stale-epoch", t0 + Duration::from_secs(60))
            .unwrap();
        assert!(next.line().contains("link=dr"), "{}", next.line());
        assert!(next.line().contains("suppressed=99"), "{}", next.line());
    }

    #[test]
    fn a_flood_that_stops_is_still_told_once_its_minute_is_over() {
        let mut log = AuthLog::default();
        let t0 = Instant::now();
        let one = ip(1);
        // 100 forgeries from one source in 50 s, then silence.
        for i in 0..100u64 {
            let t = t0 + Duration::from_millis(500 * i);
            let line = log.line(one, Some("dr"), "bad-signature", t);
            assert_eq!(line.is_some(), i == 0);
        }
        assert!(log.overdue(t0 + Duration::from_secs(59)).is_empty());
        let owed = log.overdue(t0 + Duration::from_secs(61));
        let lines: Vec<&str> = owed.iter().map(|r| r.line()).collect();
        assert_eq!(lines.len(), 1, "{lines:?}");
        for want in [
            "from=10.0.0.1",
            "reason=bad-signature",
            "link=dr",
            "suppressed=99",
        ] {
            assert!(lines[0].contains(want), "{want}: {lines:?}");
        }
        // Said once; a later failure starts a count of its own.
        assert!(log.overdue(t0 + Duration::from_secs(200)).is_empty());
        assert!(
            log.line(one, None, "x", t0 + Duration::from_secs(62))
                .is_none()
        );
        let owed = log.overdue(t0 + Duration::from_secs(122));
        assert!(
            owed[0].line().contains("suppressed=1"),
            "{}",
            owed[0].line()
        );
        // Past the table, the `from=*` count is told the same way.
        let mut log = AuthLog::default();
        for i in 0..(AUTH_LOG_SOURCES as u32 + 500) {
            log.line(ip(i), None, "bad-magic", t0);
        }
        log.line(
            ip(9_999_999),
            None,
            "wrong-source",
            t0 + Duration::from_secs(1),
        );
        let owed = log.overdue(t0 + Duration::from_secs(61));
        let lines: Vec<&str> = owed.iter().map(|r| r.line()).collect();
        let star: Vec<&&str> = lines.iter().filter(|l| l.contains("from=* ")).collect();
        assert_eq!(star.len(), 1, "{lines:?}");
        // Every failure after the burst's summary at t0, the last one's reason.
        assert!(
            star[0].contains("reason=wrong-source suppressed=4576 "),
            "{star:?}"
        );
        assert!(log.overdue(t0 + Duration::from_secs(62)).is_empty());
    }

    #[test]
    fn a_new_source_does_not_prune_away_a_count_another_source_holds() {
        let mut log = AuthLog::default();
        let t0 = Instant::now();
        let (a, b) = (ip(1), ip(2));
        assert!(log.line(a, None, "bad-signature", t0).is_some());
        for _ in 0..5 {
            assert!(log.line(a, None, "bad-signature", t0).is_none());
        }
        // A minute on, a new source makes the table prune: `a` holds 5.
        let minute = Duration::from_secs(60);
        assert!(log.line(b, None, "bad-signature", t0 + minute).is_some());
        let next = log
            .line(
                a,
                None,
                "bad-signature",
                t0 + minute + Duration::from_secs(1),
            )
            .unwrap();
        assert!(next.line().contains("suppressed=5"), "{}", next.line());
    }

    #[test]
    fn counts_a_full_table_must_let_go_of_go_to_the_summary() {
        let mut log = AuthLog::default();
        let t0 = Instant::now();
        // Every source logged once and held once: the table is full of
        // counts a line owes.
        for i in 0..AUTH_LOG_SOURCES as u32 {
            log.line(ip(i), None, "bad-magic", t0);
            assert!(log.line(ip(i), None, "bad-magic", t0).is_none());
        }
        log.held = 0;
        log.summarised = None;
        let t = t0 + Duration::from_secs(61);
        // A new source gets in (the idle sources make room) ...
        assert!(log.line(ip(1_000_000), None, "bad-magic", t).is_some());
        assert!(log.seen.len() < AUTH_LOG_SOURCES);
        // ... and the counts they held are told in the next summary.
        let mut summary = None;
        for i in 0..AUTH_LINES_BURST * 2 {
            if let Some(e) = log.line(ip(2_000_000 + i), None, "bad-magic", t) {
                if e.line().contains("from=*") {
                    summary = Some(e.line().to_string());
                }
            }
        }
        let summary = summary.expect("a from=* line");
        let n: u64 = summary
            .split(' ')
            .find_map(|kv| kv.strip_prefix("suppressed="))
            .unwrap()
            .parse()
            .unwrap();
        assert!(n >= AUTH_LOG_SOURCES as u64, "{summary}");
    }
}
