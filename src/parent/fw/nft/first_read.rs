//! Whether the first read of a chain after our own write of it shows what
//! we wrote.
//!
//! A read-back tells a rule of ours replaced in place (`nft replace rule`:
//! same count, tag copied) by the chain's content against what the first
//! read after our last write showed ([`super::chain::Content`]). That first
//! read is only ours if nobody else changed the chain between our write and
//! it: a tamperer watching `nft monitor` could replace a rule of our
//! lockdown right after we load it, and the tampered chain would then be
//! the one every later read is held to.
//!
//! Every committed transaction adds one to the ruleset's generation, and
//! the kernel's notifications ([`super::monitor`]) tell which generations
//! touched our tables. The backend's thread counts its own commits
//! ([`super::netlink::commits`]). So each write of a chain notes a
//! [`Floor`] first: the generation read right before the write began, and
//! the commits counted when it was read. At the first read, with the
//! generation read after the read: if more transactions touched our tables
//! since the floor than we committed, someone else changed them, and the
//! chain is not taken as ours ([`Baseline::Theirs`]: it reads as changed
//! until we write it again). If as many did, they were all ours, and so
//! is the content. Where the notifications cannot say (lost for a full
//! buffer, or no monitor), where the write had no generation to start from
//! (the skeleton's chains, loaded before the dead-man heartbeat shows that
//! netlink reaches the table), or where we counted more than touched, the
//! first read is taken as before. We count a successful `nft -f` run of a
//! script that is not empty as one commit; a run whose every command was
//! a no-op (an `add` of what exists) commits nothing, and such a count
//! could hide one transaction of someone else's in its span.

use super::Nft;
use super::chain::Content;
use super::monitor::Count;
use super::netlink;

/// A ruleset generation read, and the commits of this thread counted by
/// then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Floor {
    generation: u32,
    commits: u32,
}

/// What a chain of a link is held to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Baseline {
    /// Not read since our last write, which began after the floor (None:
    /// not known, as for a chain written before the heartbeat was armed).
    Unread(Option<Floor>),
    /// The first read since our last write showed this.
    Read(Content),
    /// Someone else's transaction on our tables came between our last
    /// write and its first read: not ours, whatever a later read shows,
    /// until we write it again (kept here, not left to the ledger, which
    /// forgets generations once they are verified).
    Theirs,
}

impl Default for Baseline {
    fn default() -> Baseline {
        Baseline::Unread(None)
    }
}

impl Baseline {
    pub(super) fn is_read(&self) -> bool {
        matches!(self, Baseline::Read(_))
    }
}

/// Tries at most this many times, a millisecond apart, for the
/// notifications of a commit that is still notifying.
const LATE: usize = 5;

impl Nft {
    /// The floor for a write about to begin: the generation now (a
    /// transaction of anyone's before our write is not held against it).
    pub(super) fn floor(&mut self) -> Option<Floor> {
        let generation = self.generation()?;
        Some(Floor {
            generation,
            commits: netlink::commits(),
        })
    }

    /// A read of our table begins: what it shows is judged against the
    /// generation read after it.
    pub(super) fn reading(&mut self) {
        self.read_gen = None;
        self.proofs.clear();
    }

    /// Whether a chain first read since our write that began after
    /// `floor` may be taken as ours: false when the notifications show a
    /// transaction on our tables that we did not make.
    pub(super) fn first_read(&mut self, floor: Option<Floor>) -> bool {
        let Some(floor) = floor else {
            return true;
        };
        if let Some(&(_, ours)) = self.proofs.iter().find(|(f, _)| *f == floor) {
            return ours;
        }
        let Some(now) = self.read_gen.or_else(|| self.generation()) else {
            return true;
        };
        self.read_gen = Some(now);
        let made = netlink::commits().wrapping_sub(floor.commits);
        let touching = self.touching_since(floor.generation, now);
        let ours = touching.is_none_or(|n| n <= made);
        if let (false, Some(n)) = (ours, touching) {
            crate::log::debug(format_args!(
                "fw: {n} transactions touched table {} after generation {}, {made} of them ours: a chain first read now is not taken as ours",
                self.table, floor.generation
            ));
        }
        self.proofs.push((floor, ours));
        ours
    }

    /// The transactions after `from`, up to `to`, that touched our tables;
    /// None when the notifications cannot say.
    fn touching_since(&mut self, from: u32, to: u32) -> Option<u32> {
        let m = self.monitor.as_mut()?;
        for _ in 0..LATE {
            m.drain();
            match m.ledger.touching_in(from, to) {
                Count::Touching(n) => return Some(n),
                Count::Unknown => return None,
                Count::NotYet => std::thread::sleep(std::time::Duration::from_millis(1)),
            }
        }
        None
    }
}
