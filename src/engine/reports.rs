//! The links' reports on their way to the parent during one turn of the
//! engine's loop.
//!
//! A turn that handles many links at once (a poll of every link of the
//! built-in simulator, a shared QBER document's readings) holds the reports
//! back until its end, so that a section whose every link lost its source
//! in that turn is said first, as one message the parent locks in one
//! transaction. A report that locks a link for any other reason does not
//! wait for the rest of the turn: at 10,000 links the rest is ~15 ms of
//! other links' samples, and a QBER lockdown is due in milliseconds. It
//! leaves at once, after the same link's held reports (the parent takes a
//! link's reports in order: each carries its whole set of reasons, so the
//! last one read wins).

/// Reports held during a turn, and whether one left early.
#[derive(Debug, Default)]
pub(super) struct Reports {
    /// `Some` between [`Reports::hold`] and [`Reports::release`].
    held: Option<Vec<(Box<str>, Vec<u8>)>>,
    /// A report left during the turn: the loop lets the writer run.
    early: bool,
    /// The turn gave up its CPU for a report already (once is enough: the
    /// parent runs then, and a mass lockdown yielding per link slowed the
    /// turn).
    yielded: bool,
}

impl Reports {
    /// Starts holding reports back.
    pub(super) fn hold(&mut self) {
        self.held.get_or_insert_with(Vec::new);
        self.yielded = false;
    }

    /// Whether reports are being held (a turn of many links).
    pub(super) fn holding(&self) -> bool {
        self.held.is_some()
    }

    /// Link `link`'s report `frame`: the frames to send now, in order.
    /// `locks` says the report comes with a lock other than a lost source.
    pub(super) fn report(&mut self, link: &str, frame: Vec<u8>, locks: bool) -> Vec<Vec<u8>> {
        let Some(held) = self.held.as_mut() else {
            return vec![frame];
        };
        if !locks {
            held.push((link.into(), frame));
            return Vec::new();
        }
        let (mine, others): (Vec<_>, Vec<_>) =
            (std::mem::take(held).into_iter()).partition(|(l, _)| **l == *link);
        *held = others;
        let mut now: Vec<Vec<u8>> = mine.into_iter().map(|(_, f)| f).collect();
        now.push(frame);
        self.early = true;
        now
    }

    /// Ends the turn: the frames still held, in the order they came.
    pub(super) fn release(&mut self) -> Vec<Vec<u8>> {
        let held = self.held.take().unwrap_or_default();
        held.into_iter().map(|(_, f)| f).collect()
    }

    /// Whether a report left since the last call (then the loop yields, so
    /// that the writer sends it before the turn goes on).
    pub(super) fn left_early(&mut self) -> bool {
        std::mem::take(&mut self.early)
    }

    /// Whether this is the turn's first report to leave early: the turn
    /// then gives up its CPU once, for the parent.
    pub(super) fn first_to_leave(&mut self) -> bool {
        !std::mem::replace(&mut self.yielded, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    #[test]
    fn outside_a_turn_every_report_leaves_at_once() {
        let mut r = Reports::default();
        assert!(!r.holding());
        assert_eq!(r.report("l0", f("a"), false), vec![f("a")]);
        assert_eq!(r.report("l0", f("b"), true), vec![f("b")]);
        assert!(!r.left_early());
        assert!(r.release().is_empty());
    }

    #[test]
    fn a_lock_leaves_at_once_after_its_own_links_held_reports() {
        let mut r = Reports::default();
        r.hold();
        assert!(r.holding());
        assert!(r.report("l1", f("l1 open"), false).is_empty());
        assert!(r.report("l0", f("l0 first"), false).is_empty());
        assert!(r.report("l2", f("l2 lost"), false).is_empty());
        assert!(!r.left_early());
        // l0 locks: its earlier report first, then this one; the others wait.
        assert_eq!(
            r.report("l0", f("l0 qber"), true),
            vec![f("l0 first"), f("l0 qber")]
        );
        assert!(r.left_early());
        assert!(!r.left_early(), "said once");
        assert!(r.first_to_leave());
        assert_eq!(r.report("l4", f("l4 qber"), true), vec![f("l4 qber")]);
        assert!(r.left_early());
        assert!(!r.first_to_leave(), "the CPU is given up once a turn");
        assert!(r.report("l3", f("l3 open"), false).is_empty());
        assert_eq!(r.release(), vec![f("l1 open"), f("l2 lost"), f("l3 open")]);
        assert!(!r.holding());
        assert_eq!(r.report("l1", f("later"), false), vec![f("later")]);
        r.hold();
        assert!(r.first_to_leave(), "a new turn");
    }
}
