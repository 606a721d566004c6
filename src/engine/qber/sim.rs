//! The `sim` QBER driver: reads the simulated link model in-process.
//!
//! Runs in the engine; no I/O. Each poll is one new measurement, so the
//! sequence number advances on every call.

use super::sample::{Sample, SimControl};
use crate::conf::SimLinkConf;
use crate::sim::model::LinkModel;

#[derive(Debug)]
pub struct SimSource {
    model: LinkModel,
    seq: u64,
}

impl SimSource {
    pub fn new(conf: &SimLinkConf) -> Result<SimSource, String> {
        Ok(SimSource {
            model: LinkModel::new(conf)?,
            seq: 0,
        })
    }

    /// One estimate from a fresh block of sifted bits.
    pub fn poll(&mut self) -> Sample {
        self.seq += 1;
        Sample {
            qber: self.model.sample(),
            seq: self.seq,
        }
    }

    pub fn control(&mut self, c: SimControl) -> Result<(), String> {
        match c {
            SimControl::Eve(p) => self.model.set_eve(p),
            SimControl::Noise(n) => self.model.set_noise(n),
        }
    }

    pub fn model(&self) -> &LinkModel {
        &self.model
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_advances_and_a_seed_reproduces() {
        let conf = SimLinkConf {
            seed: 7,
            ..SimLinkConf::default()
        };
        let mut a = SimSource::new(&conf).unwrap();
        let mut b = SimSource::new(&conf).unwrap();
        for want in 1..=5 {
            let (x, y) = (a.poll(), b.poll());
            assert_eq!(x.seq, want);
            assert_eq!(x, y);
        }
    }

    #[test]
    fn controls_change_the_expected_qber() {
        let mut s = SimSource::new(&SimLinkConf::default()).unwrap();
        let base = s.model().expected_qber();
        s.control(SimControl::Noise(0.05)).unwrap();
        assert!(s.model().expected_qber() > base + 0.04);
        assert!(s.control(SimControl::Eve(f64::NAN)).is_err());
    }
}
