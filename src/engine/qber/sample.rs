//! What every QBER source yields (engine): a range-checked [`Sample`], the
//! per-link [`Freshness`] that tells a new measurement from a repeat, and
//! the simulated link's demo knobs ([`SimControl`]).

/// One QBER reading.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Fraction of sifted bits in error, 0..=0.5.
    pub qber: f64,
    /// The source's measurement sequence number or time stamp; a reading is
    /// new only if this advanced.
    pub seq: u64,
}

/// Checks a reading from a source: outside [0, 0.5] (or NaN) is an error,
/// never clamped, since a wrong scale (percent vs fraction) must not pass.
pub fn validate(qber: f64) -> Result<f64, String> {
    if qber.is_nan() || !(0.0..=0.5).contains(&qber) {
        return Err(format!("QBER must be between 0 and 0.5, found {qber}"));
    }
    Ok(qber)
}

/// Tells a new measurement from a stalled agent repeating its last value
/// (DESIGN §3). Keep one per link: a sample is fresh only if its `seq` is
/// greater than every `seq` seen before on that stream.
#[derive(Clone, Debug, Default)]
pub struct Freshness {
    last: Option<u64>,
    /// The next reading only sets the high mark ([`Freshness::baseline`]).
    baseline: bool,
}

impl Freshness {
    pub fn new() -> Freshness {
        Freshness::default()
    }

    /// For a source opened again under a link that runs on (a reload
    /// changed its section, its TLS files or its address): the first
    /// reading only sets the high mark, as a stalled agent's repeated
    /// value would otherwise count once as fresh and clear `source-lost`.
    pub fn baseline() -> Freshness {
        Freshness {
            last: None,
            baseline: true,
        }
    }

    /// True, and remembered, if `s.seq` advanced. A sequence that goes back
    /// (a restarted agent) is not fresh until it passes the old high mark or
    /// the driver calls [`Freshness::reset`] after reconnecting.
    pub fn is_fresh(&mut self, s: &Sample) -> bool {
        if std::mem::take(&mut self.baseline) {
            self.last = Some(s.seq);
            return false;
        }
        if self.last.is_some_and(|last| s.seq <= last) {
            return false;
        }
        self.last = Some(s.seq);
        true
    }

    /// Forgets the high mark (a driver that knows its source restarted).
    pub fn reset(&mut self) {
        self.last = None;
    }
}

/// Demo knobs of the simulated link (`qkdctl sim eve 0.5`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SimControl {
    /// Fraction of photons intercepted and resent, 0..=1.
    Eve(f64),
    /// Extra QBER from channel noise, 0..=0.5.
    Noise(f64),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reopened_source_needs_a_reading_past_its_first() {
        let mut f = Freshness::baseline();
        let s = |seq| Sample { qber: 0.01, seq };
        assert!(!f.is_fresh(&s(7)), "a stalled agent's repeat counted");
        assert!(!f.is_fresh(&s(7)));
        assert!(f.is_fresh(&s(8)));
        assert!(Freshness::new().is_fresh(&s(7)));
    }

    #[test]
    fn validate_refuses_out_of_range() {
        assert_eq!(validate(0.0), Ok(0.0));
        assert_eq!(validate(0.5), Ok(0.5));
        assert_eq!(validate(0.031), Ok(0.031));
        for bad in [-0.0001, 0.5001, 3.1, f64::NAN, f64::INFINITY] {
            let e = validate(bad).unwrap_err();
            assert!(e.contains("between 0 and 0.5"), "{e}");
        }
    }

    #[test]
    fn freshness_needs_an_advancing_seq() {
        let mut f = Freshness::new();
        let s = |seq| Sample { qber: 0.01, seq };
        assert!(f.is_fresh(&s(0)));
        assert!(!f.is_fresh(&s(0)));
        assert!(f.is_fresh(&s(5)));
        assert!(!f.is_fresh(&s(3)));
        assert!(!f.is_fresh(&s(5)));
        assert!(f.is_fresh(&s(6)));
        f.reset();
        assert!(f.is_fresh(&s(1)));
    }
}
