//! The QBER measurement clock of one simulated link (qkdsim process):
//! every `measure_interval` ([`FeedConf`]) one new sample from the link's
//! model, served unchanged until the next tick (see `sim::qber` for the
//! feeds that serve it). Pure: the caller passes `now`.

use crate::sim::conf::{FeedConf, INTERVAL_MIN};
use std::time::{Duration, Instant};

/// One QBER measurement as every feed serves it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measurement {
    /// Fraction, 0..=0.5.
    pub qber: f64,
    /// 1 for the first tick after start, then the tick count.
    pub seq: u64,
    /// Unix milliseconds of the tick.
    pub measured_at_ms: u64,
}

/// The measurement clock of one link.
#[derive(Debug)]
pub struct Feed {
    interval: Duration,
    start: Instant,
    start_ms: u64,
    last: Option<Measurement>,
    stalled: bool,
}

impl Feed {
    /// `start_ms` is the wall-clock time (unix ms) of `start`.
    pub fn new(interval: Duration, start: Instant, start_ms: u64) -> Feed {
        Feed {
            interval: interval.max(INTERVAL_MIN),
            start,
            start_ms,
            last: None,
            stalled: false,
        }
    }

    /// The measurement to serve at `now`: a new one from `sample` if a tick
    /// passed since the last (and the link is not stalled), else the last.
    /// Measurements are taken lazily, only the latest tick counts.
    pub fn current(&mut self, now: Instant, sample: impl FnOnce() -> f64) -> Measurement {
        let elapsed = now.saturating_duration_since(self.start).as_nanos();
        let tick = (elapsed / self.interval.as_nanos()) as u64;
        let seq = tick + 1;
        match self.last {
            Some(m) if self.stalled || m.seq >= seq => m,
            _ => {
                let offset = self.interval.as_millis() as u64 * tick;
                let m = Measurement {
                    qber: sample(),
                    seq,
                    measured_at_ms: self.start_ms + offset,
                };
                self.last = Some(m);
                m
            }
        }
    }

    pub fn set_stalled(&mut self, stalled: bool) {
        self.stalled = stalled;
    }

    pub fn stalled(&self) -> bool {
        self.stalled
    }
}

/// A new link's feed, started now.
pub fn start(conf: &FeedConf) -> Feed {
    Feed::new(
        conf.measure_interval,
        Instant::now(),
        crate::utc::now_unix_ms(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_measurement_holds_until_the_next_tick() {
        let t0 = Instant::now();
        let mut f = Feed::new(Duration::from_millis(100), t0, 1_000_000);
        let mut n = 0.0;
        let mut next = || {
            n += 0.01;
            n
        };
        let a = f.current(t0, &mut next);
        assert_eq!((a.seq, a.measured_at_ms), (1, 1_000_000));
        let b = f.current(t0 + Duration::from_millis(99), &mut next);
        assert_eq!(a, b);
        let c = f.current(t0 + Duration::from_millis(350), &mut next);
        assert_eq!((c.seq, c.measured_at_ms), (4, 1_000_300));
        assert!(c.qber > a.qber);
        f.set_stalled(true);
        let d = f.current(t0 + Duration::from_secs(5), &mut next);
        assert_eq!(c, d);
        f.set_stalled(false);
        let e = f.current(t0 + Duration::from_secs(5), &mut next);
        assert_eq!((e.seq, e.measured_at_ms), (51, 1_005_000));
    }
}
