//! A link's last fresh QBER samples, kept as just enough to answer the one
//! question a trip asks: how many of the newest are at or above a
//! threshold. The threshold is the policy's and may change between two
//! samples, so a plain counter would not do; but the whole window (up to
//! [`MAX_TRIP_SAMPLES`] readings, 2 KiB a link) is not needed either.
//!
//! For k = 1, 2, … the minimum of the newest k samples never grows with
//! k, and the newest k samples are all at or above t exactly when that
//! minimum is. So the window is held as runs of equal suffix minimum:
//! (minimum, how many k share it), oldest first, minima strictly rising
//! towards the newest. A new sample swallows every run whose minimum is
//! not below it. For noisy readings that is a handful of runs (the
//! records of a random sequence, about ln n); at most one per sample, for
//! a steadily rising QBER.

use super::MAX_TRIP_SAMPLES;

#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Trailing {
    /// (suffix minimum, run length), oldest first.
    runs: Vec<(f64, u16)>,
    /// Samples in the window: the sum of the run lengths.
    len: usize,
}

/// Room for this many runs is made with the link: a handful is the rule,
/// and a buffer grown later, during the first rounds, would lie among
/// their short-lived allocations and keep freed pages resident.
const RUNS_EXPECTED: usize = 8;

impl Trailing {
    pub(super) fn new() -> Trailing {
        Trailing {
            runs: Vec::with_capacity(RUNS_EXPECTED),
            len: 0,
        }
    }

    /// Adds the newest sample; the oldest leaves once the window is full.
    pub(super) fn push(&mut self, q: f64) {
        let mut n: u16 = 1;
        while let Some(&(min, count)) = self.runs.last() {
            if min < q {
                break;
            }
            n += count;
            self.runs.pop();
        }
        self.runs.push((q, n));
        self.len += 1;
        if self.len > MAX_TRIP_SAMPLES {
            // The oldest sample is the last one counted by the first run.
            self.len -= 1;
            match self.runs.first_mut() {
                Some((_, 1)) => {
                    self.runs.remove(0);
                }
                Some((_, count)) => *count -= 1,
                None => {}
            }
        }
    }

    /// How many of the newest samples, in a row, are at or above `t`.
    pub(super) fn at_or_above(&self, t: f64) -> usize {
        self.runs
            .iter()
            .rev()
            .take_while(|(min, _)| *min >= t)
            .map(|(_, count)| *count as usize)
            .sum()
    }

    pub(super) fn clear(&mut self) {
        self.runs = Vec::new();
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The whole window, as the link kept it before.
    fn by_window(samples: &[f64], t: f64) -> usize {
        let start = samples.len().saturating_sub(MAX_TRIP_SAMPLES);
        samples[start..]
            .iter()
            .rev()
            .take_while(|q| **q >= t)
            .count()
    }

    #[test]
    fn counts_the_newest_run_at_or_above() {
        let mut w = Trailing::default();
        assert_eq!(w.at_or_above(0.0), 0);
        for q in [0.05, 0.12, 0.02, 0.15, 0.11, 0.13] {
            w.push(q);
        }
        assert_eq!(w.at_or_above(0.11), 3);
        assert_eq!(w.at_or_above(0.12), 1, "0.11 breaks the run");
        assert_eq!(w.at_or_above(0.14), 0);
        assert_eq!(w.at_or_above(0.03), 3, "0.02 breaks it");
        assert_eq!(w.at_or_above(0.02), 6, "equal counts");
        w.clear();
        assert_eq!(w.at_or_above(0.0), 0);
    }

    #[test]
    fn keeps_the_window_and_little_memory() {
        let mut w = Trailing::default();
        for _ in 0..1000 {
            w.push(0.2);
        }
        assert_eq!(w.at_or_above(0.1), MAX_TRIP_SAMPLES);
        assert_eq!(w.runs.len(), 1, "equal samples are one run");
        // A steadily rising QBER is the worst case: a run per sample, and
        // never more than the window.
        let mut w = Trailing::default();
        for i in 0..1000 {
            w.push(i as f64 / 1000.0);
        }
        assert_eq!(w.runs.len(), MAX_TRIP_SAMPLES);
        assert_eq!(w.at_or_above(0.0), MAX_TRIP_SAMPLES);
        assert_eq!(w.at_or_above(0.999), 1);
    }

    proptest! {
        #[test]
        fn agrees_with_the_whole_window(
            samples in prop::collection::vec(0u8..20, 0..700),
            t in 0u8..21,
        ) {
            // Few distinct values: ties and equal thresholds are common.
            let samples: Vec<f64> = samples.iter().map(|s| *s as f64 / 40.0).collect();
            let t = t as f64 / 40.0;
            let mut w = Trailing::default();
            for (i, q) in samples.iter().enumerate() {
                w.push(*q);
                prop_assert_eq!(w.at_or_above(t), by_window(&samples[..=i], t));
                prop_assert_eq!(w.len, (i + 1).min(MAX_TRIP_SAMPLES));
            }
        }
    }
}
