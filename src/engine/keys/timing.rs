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

/// One round's stamps; reset when the round ends either way.
#[derive(Debug, Default)]
pub struct RoundTiming {
    /// Master: its `enc_keys` call started. Slave: the OFFER arrived (its
    /// first action, the epoch persist, started).
    start_ns: Option<u64>,
    open: Option<(Step, u64)>,
    kme_ns: u64,
    persist_ns: u64,
    install_ns: u64,
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
        self.start_ns = Some(now);
        self.open = Some((step, now));
    }

    pub fn started(&self) -> bool {
        self.start_ns.is_some()
    }

    /// The engine began waiting on `step`.
    pub fn begin(&mut self, step: Step) {
        self.begin_at(step, monotonic_ns());
    }

    fn begin_at(&mut self, step: Step, now: u64) {
        if self.start_ns.is_some() {
            self.open = Some((step, now));
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
        let d = now.saturating_sub(t0);
        match step {
            Step::Kme => self.kme_ns += d,
            Step::Persist => self.persist_ns += d,
            Step::Install => self.install_ns += d,
        }
    }

    /// The round completed: its durations (None if it never started here,
    /// e.g. a slave answering a retransmitted OFFER from its cache).
    pub fn finish(&mut self) -> Option<Spent> {
        self.finish_at(monotonic_ns())
    }

    fn finish_at(&mut self, now: u64) -> Option<Spent> {
        let t = std::mem::take(self);
        let total = now.saturating_sub(t.start_ns?);
        let steps = t.kme_ns + t.persist_ns + t.install_ns;
        Some(Spent {
            total_us: total / 1000,
            kme_us: t.kme_ns / 1000,
            persist_us: t.persist_ns / 1000,
            install_us: t.install_ns / 1000,
            other_us: total.saturating_sub(steps) / 1000,
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
