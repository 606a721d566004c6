//! Where a round's time goes, for the debug `event=round` line (-v) and
//! BENCHMARKS.md: CLOCK_MONOTONIC stamps around each step the engine waits
//! for — the KME call, the parent's epoch persist, the parent's install —
//! and, on the master, the rest (the wait for the far end's CONFIRM).

use crate::imsg::monotonic_ns;

/// A step of the round the engine waits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Kme,
    Persist,
    Install,
}

/// One round's stamps; reset when the round ends either way. Every keyed
/// link has one, so steps are kept in microseconds from the round's start
/// in 32 bits: 71 minutes, past which (a round that long needs a `rotate`
/// as long) a step's time saturates; the total stays exact.
#[derive(Debug, Default)]
pub struct RoundTiming {
    started: bool,
    /// Master: its `enc_keys` call started. Slave: the OFFER arrived (its
    /// first action, the epoch persist, started).
    start_ns: u64,
    /// The step waited on and when that began.
    open: Option<(Step, u32)>,
    kme_us: u32,
    persist_us: u32,
    install_us: u32,
}

/// Microseconds from `from` to `to`, saturating.
fn us(from: u64, to: u64) -> u32 {
    u32::try_from(to.saturating_sub(from) / 1000).unwrap_or(u32::MAX)
}

/// The durations of a finished round, in microseconds.
#[derive(Debug, PartialEq, Eq)]
pub struct Spent {
    pub total_us: u64,
    pub kme_us: u64,
    pub persist_us: u64,
    pub install_us: u64,
    /// What none of the three steps account for: on the master, chiefly
    /// the wait from OFFER to CONFIRM (the slave's whole round).
    pub other_us: u64,
}

impl RoundTiming {
    /// A round starts with this step (now).
    pub fn start(&mut self, step: Step) {
        *self = RoundTiming::default();
        self.start_at(step, monotonic_ns());
    }

    fn start_at(&mut self, step: Step, now: u64) {
        self.started = true;
        self.start_ns = now;
        self.open = Some((step, 0));
    }

    pub fn started(&self) -> bool {
        self.started
    }

    /// The engine began waiting on `step`.
    pub fn begin(&mut self, step: Step) {
        self.begin_at(step, monotonic_ns());
    }

    fn begin_at(&mut self, step: Step, now: u64) {
        if self.started {
            self.open = Some((step, us(self.start_ns, now)));
        }
    }

    /// `step` answered.
    pub fn end(&mut self, step: Step) {
        self.end_at(step, monotonic_ns());
    }

    fn end_at(&mut self, step: Step, now: u64) {
        let Some((open, t0)) = self.open else {
            return;
        };
        if open != step {
            return;
        }
        self.open = None;
        let d = us(self.start_ns, now).saturating_sub(t0);
        let spent = match step {
            Step::Kme => &mut self.kme_us,
            Step::Persist => &mut self.persist_us,
            Step::Install => &mut self.install_us,
        };
        *spent = spent.saturating_add(d);
    }

    /// The round completed: its durations (None if it never started here,
    /// e.g. a slave answering a retransmitted OFFER from its cache).
    pub fn finish(&mut self) -> Option<Spent> {
        self.finish_at(monotonic_ns())
    }

    fn finish_at(&mut self, now: u64) -> Option<Spent> {
        let t = std::mem::take(self);
        if !t.started {
            return None;
        }
        let total_us = now.saturating_sub(t.start_ns) / 1000;
        let (kme_us, persist_us, install_us) = (
            u64::from(t.kme_us),
            u64::from(t.persist_us),
            u64::from(t.install_us),
        );
        Some(Spent {
            total_us,
            kme_us,
            persist_us,
            install_us,
            other_us: total_us.saturating_sub(kme_us + persist_us + install_us),
        })
    }

    /// The round failed: forget it.
    pub fn reset(&mut self) {
        *self = RoundTiming::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_add_up_and_the_rest_is_other() {
        let mut t = RoundTiming::default();
        t.start_at(Step::Kme, 1_000_000);
        t.end_at(Step::Kme, 3_000_000);
        t.begin_at(Step::Persist, 3_000_000);
        t.end_at(Step::Persist, 4_500_000);
        // OFFER out, CONFIRM back 5 ms later.
        t.begin_at(Step::Install, 9_500_000);
        t.end_at(Step::Install, 10_000_000);
        let s = t.finish_at(10_000_000).unwrap();
        assert_eq!(
            s,
            Spent {
                total_us: 9000,
                kme_us: 2000,
                persist_us: 1500,
                install_us: 500,
                other_us: 5000,
            }
        );
        // Finished: a second finish has nothing.
        assert_eq!(t.finish_at(11_000_000), None);
    }

    #[test]
    fn an_answer_for_another_step_or_no_round_is_ignored() {
        let mut t = RoundTiming::default();
        t.begin_at(Step::Kme, 1);
        t.end_at(Step::Kme, 5);
        assert!(!t.started());
        assert_eq!(t.finish_at(10), None);
        t.start_at(Step::Persist, 0);
        t.end_at(Step::Install, 2_000);
        t.end_at(Step::Persist, 1_000);
        t.end_at(Step::Persist, 9_000);
        let s = t.finish_at(10_000).unwrap();
        assert_eq!((s.persist_us, s.install_us, s.other_us), (1, 0, 9));
        t.start_at(Step::Kme, 0);
        t.reset();
        assert_eq!(t.finish_at(5), None);
    }
}
