//! Physical model of a simulated QKD link (reference/qkd-physics.md):
//! decoy-state BB84 over fibre, with an optional intercept-resend
//! eavesdropper and extra channel noise. This module gives the measured
//! figures (gains and QBERs of signal and decoy pulses) and the true
//! single-photon yield and error rate; [`super::keyrate`] turns them into a
//! secret key rate.
//!
//! Runs inside whichever process hosts the simulator (`qkdsim`, or the engine
//! for `driver = "sim"`). Pure computation: no I/O, no clock; the only state
//! is a seeded random generator, so a seed reproduces a run exactly.

use crate::conf::SimLinkConf;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand_distr::{Binomial, Distribution};

/// QBER of a detector click that carries no signal (a dark count): a coin.
pub const E0: f64 = 0.5;
/// Largest QBER any estimate may report: beyond it the bits are uncorrelated.
const QBER_MAX: f64 = 0.5;

/// Binary entropy h(x) = −x·log2 x − (1−x)·log2(1−x), with h(0) = h(1) = 0.
pub fn binary_entropy(x: f64) -> f64 {
    if x <= 0.0 || x >= 1.0 {
        return 0.0;
    }
    -x * x.log2() - (1.0 - x) * (1.0 - x).log2()
}

/// Two independent bit-flip channels with rates a and b flip a bit with
/// probability a + b − 2ab (a double flip restores it).
fn compose_flips(a: f64, b: f64) -> f64 {
    a + b - 2.0 * a * b
}

/// One simulated link: fixed physics plus the two knobs a demo turns (the
/// intercepted fraction and extra noise).
#[derive(Debug)]
pub struct LinkModel {
    conf: SimLinkConf,
    eve: f64,
    noise: f64,
    rng: SmallRng,
}

impl LinkModel {
    /// Checks every parameter: the config is the only input and a nonsense
    /// value (negative length, efficiency above 1) would give a nonsense QBER.
    pub fn new(conf: &SimLinkConf) -> Result<LinkModel, String> {
        check_conf(conf)?;
        let mut m = LinkModel {
            conf: conf.clone(),
            eve: 0.0,
            noise: 0.0,
            rng: SmallRng::seed_from_u64(conf.seed),
        };
        m.set_eve(conf.eve)?;
        m.set_noise(conf.noise)?;
        Ok(m)
    }

    /// Fraction of photons intercepted and resent, 0..=1.
    pub fn set_eve(&mut self, fraction: f64) -> Result<(), String> {
        self.eve = in_range("eve", fraction, 0.0, 1.0)?;
        Ok(())
    }

    /// Extra QBER from channel noise, 0..=0.5.
    pub fn set_noise(&mut self, qber: f64) -> Result<(), String> {
        self.noise = in_range("noise", qber, 0.0, QBER_MAX)?;
        Ok(())
    }

    pub fn eve(&self) -> f64 {
        self.eve
    }

    pub fn noise(&self) -> f64 {
        self.noise
    }

    /// Channel transmittance including the detector: η = η_det·10^(−αL/10).
    pub fn transmittance(&self) -> f64 {
        let c = &self.conf;
        c.detector_efficiency * 10f64.powf(-c.loss_db_km * c.length_km / 10.0)
    }

    /// The physical parameters the model was made from.
    pub fn conf(&self) -> &SimLinkConf {
        &self.conf
    }

    /// Probability that a pulse of mean photon number `mu` gives a signal
    /// click: 1 − e^(−ημ).
    fn signal_detection(&self, mu: f64) -> f64 {
        -(-self.transmittance() * mu).exp_m1()
    }

    /// Gain Q_x = Y0 + 1 − e^(−ηx): detections per pulse of mean photon
    /// number `mu`, signal or dark.
    pub fn gain_at(&self, mu: f64) -> f64 {
        self.conf.dark_count + self.signal_detection(mu)
    }

    /// Gain of the signal pulses, Q_μ.
    pub fn gain(&self) -> f64 {
        self.gain_at(self.conf.mean_photon)
    }

    /// QBER of pulses of mean photon number `mu` from detector noise and
    /// misalignment alone: E_x·Q_x = e0·Y0 + e_det·(1 − e^(−ηx)).
    fn detector_qber_at(&self, mu: f64) -> f64 {
        let c = &self.conf;
        let gain = self.gain_at(mu);
        if gain <= 0.0 {
            return E0;
        }
        (E0 * c.dark_count + c.misalignment * self.signal_detection(mu)) / gain
    }

    /// QBER of the signal pulses from detector noise and misalignment alone.
    pub fn detector_qber(&self) -> f64 {
        self.detector_qber_at(self.conf.mean_photon)
    }

    /// A detector-level error rate `e` as the link shows it: Eve's resent
    /// photon is in the wrong basis half the time, and then Bob's result is
    /// a coin (0.25·p errors on bits that were right), then channel noise.
    fn disturbed(&self, e: f64) -> f64 {
        let with_eve = compose_flips(e, 0.25 * self.eve);
        compose_flips(with_eve, self.noise).clamp(0.0, QBER_MAX)
    }

    /// The QBER E_x pulses of mean photon number `mu` would show on an
    /// infinite sample.
    pub fn expected_qber_at(&self, mu: f64) -> f64 {
        self.disturbed(self.detector_qber_at(mu))
    }

    /// The QBER the link (its signal pulses, E_μ) would show on an infinite
    /// sample.
    pub fn expected_qber(&self) -> f64 {
        self.expected_qber_at(self.conf.mean_photon)
    }

    /// The true yield and error rate of single-photon pulses, (Y1, e1):
    /// Y1 = Y0 + η − Y0·η (a dark count or the photon), e1·Y1 = e0·Y0 +
    /// e_det·η, then Eve and noise as on every bit. Decoy states estimate
    /// these; with infinitely many decoys the estimate is exact.
    pub fn single_photon(&self) -> (f64, f64) {
        let c = &self.conf;
        let eta = self.transmittance();
        let y1 = c.dark_count + eta - c.dark_count * eta;
        let e1 = if y1 > 0.0 {
            (E0 * c.dark_count + c.misalignment * eta) / y1
        } else {
            E0
        };
        (y1, self.disturbed(e1))
    }

    /// A QBER estimate from `sample_bits` sifted bits: errors are drawn from
    /// Binomial(sample_bits, Q), so small samples fluctuate as real ones do.
    pub fn sample(&mut self) -> f64 {
        let n = self.conf.sample_bits;
        let q = self.expected_qber();
        let errors = match Binomial::new(n, q) {
            Ok(b) => b.sample(&mut self.rng),
            // Unreachable with checked parameters; report the mean rather
            // than an invented value.
            Err(_) => return q,
        };
        (errors as f64 / n as f64).clamp(0.0, QBER_MAX)
    }
}

fn in_range(what: &str, v: f64, lo: f64, hi: f64) -> Result<f64, String> {
    if v.is_nan() || v < lo || v > hi {
        return Err(format!("{what} must be between {lo} and {hi}, found {v}"));
    }
    Ok(v)
}

fn check_conf(c: &SimLinkConf) -> Result<(), String> {
    in_range("length_km", c.length_km, 0.0, 10_000.0)?;
    in_range("loss_db_km", c.loss_db_km, 0.0, 100.0)?;
    in_range("detector_efficiency", c.detector_efficiency, 0.0, 1.0)?;
    in_range("dark_count", c.dark_count, 0.0, 1.0)?;
    in_range("misalignment", c.misalignment, 0.0, QBER_MAX)?;
    in_range("mean_photon", c.mean_photon, 0.0, 100.0)?;
    if c.detector_efficiency <= 0.0 && c.dark_count <= 0.0 {
        // No click ever: the QBER is undefined (0/0).
        return Err("detector_efficiency and dark_count cannot both be 0".into());
    }
    if c.mean_photon <= 0.0 && c.dark_count <= 0.0 {
        return Err("mean_photon and dark_count cannot both be 0".into());
    }
    if c.sample_bits == 0 {
        return Err("sample_bits must be at least 1".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gys(length_km: f64) -> SimLinkConf {
        SimLinkConf {
            length_km,
            ..SimLinkConf::default()
        }
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn gys_at_50_km_is_about_3_3_percent() {
        let m = LinkModel::new(&gys(50.0)).unwrap();
        let e = m.expected_qber();
        assert!(close(e, 0.0334, 0.0005), "E = {e}");
        // η = 0.045·10^(−1.05) ≈ 4.01e-3
        assert!(close(m.transmittance(), 4.01e-3, 0.01e-3));
    }

    #[test]
    fn dark_counts_dominate_at_long_range() {
        let near = LinkModel::new(&gys(10.0)).unwrap().expected_qber();
        let far = LinkModel::new(&gys(200.0)).unwrap().expected_qber();
        assert!(near < far, "{near} !< {far}");
        assert!(far > 0.1 && far <= 0.5, "far = {far}");
    }

    #[test]
    fn full_eve_gives_a_quarter_plus_detector_errors() {
        let mut m = LinkModel::new(&gys(25.0)).unwrap();
        let e = m.expected_qber();
        m.set_eve(1.0).unwrap();
        let q = m.expected_qber();
        assert!(q > 0.25 && q < 0.27, "Q = {q}");
        assert!(close(q, e + 0.25 * (1.0 - 2.0 * e), 1e-12));
        m.set_eve(0.4).unwrap();
        assert!(close(m.expected_qber(), e + 0.1 * (1.0 - 2.0 * e), 1e-12));
    }

    #[test]
    fn noise_composes_as_independent_flips() {
        let mut m = LinkModel::new(&gys(25.0)).unwrap();
        let e = m.expected_qber();
        m.set_noise(0.02).unwrap();
        assert!(close(m.expected_qber(), e + 0.02 - 2.0 * e * 0.02, 1e-12));
        m.set_noise(0.5).unwrap();
        assert!(close(m.expected_qber(), 0.5, 1e-12));
    }

    #[test]
    fn knobs_reject_out_of_range_values() {
        let mut m = LinkModel::new(&gys(25.0)).unwrap();
        for bad in [-0.1, 1.1, f64::NAN, f64::INFINITY] {
            assert!(m.set_eve(bad).is_err(), "eve {bad}");
        }
        for bad in [-0.01, 0.51, f64::NAN] {
            assert!(m.set_noise(bad).is_err(), "noise {bad}");
        }
        assert_eq!((m.eve(), m.noise()), (0.0, 0.0));
        let err = m.set_eve(2.0).unwrap_err();
        assert!(err.contains("eve must be between 0 and 1"), "{err}");
    }

    #[test]
    fn bad_conf_is_refused() {
        let bad = [
            SimLinkConf {
                length_km: -1.0,
                ..gys(1.0)
            },
            SimLinkConf {
                detector_efficiency: 1.5,
                ..gys(1.0)
            },
            SimLinkConf {
                sample_bits: 0,
                ..gys(1.0)
            },
            SimLinkConf {
                eve: 1.5,
                ..gys(1.0)
            },
            SimLinkConf {
                mean_photon: f64::NAN,
                ..gys(1.0)
            },
            SimLinkConf {
                detector_efficiency: 0.0,
                dark_count: 0.0,
                ..gys(1.0)
            },
        ];
        for c in bad {
            assert!(LinkModel::new(&c).is_err(), "{c:?}");
        }
    }

    #[test]
    fn binary_entropy_values() {
        assert_eq!(binary_entropy(0.0), 0.0);
        assert_eq!(binary_entropy(1.0), 0.0);
        assert!(close(binary_entropy(0.5), 1.0, 1e-12));
        assert!(close(binary_entropy(0.11), 0.4999, 0.0001));
        assert!(close(binary_entropy(0.08), 0.4022, 0.0001));
    }

    #[test]
    fn gain_and_single_photon_yield_at_50_km() {
        let m = LinkModel::new(&gys(50.0)).unwrap();
        // η·μ ≈ 1.92e-3 → Q_μ ≈ 1.93e-3; Y1 ≈ Y0 + η ≈ 4.01e-3.
        assert!(close(m.gain(), 1.927e-3, 0.005e-3), "{}", m.gain());
        let (y1, e1) = m.single_photon();
        assert!(close(y1, 4.012e-3, 0.005e-3), "{y1}");
        // Misalignment dominates; dark counts add a little.
        assert!(close(e1, 0.0332, 0.0001), "{e1}");
        // A weaker pulse has less gain and, with the same dark counts, a
        // slightly higher QBER.
        assert!(m.gain_at(0.1) < m.gain());
        assert!(m.expected_qber_at(0.1) > m.expected_qber());
    }

    #[test]
    fn eve_and_noise_raise_e1_as_they_raise_the_qber() {
        let mut m = LinkModel::new(&gys(25.0)).unwrap();
        let (_, e1) = m.single_photon();
        m.set_eve(0.4).unwrap();
        let (_, with_eve) = m.single_photon();
        assert!(close(with_eve, e1 + 0.1 * (1.0 - 2.0 * e1), 1e-12));
        m.set_eve(0.0).unwrap();
        m.set_noise(0.02).unwrap();
        let (_, noisy) = m.single_photon();
        assert!(close(noisy, e1 + 0.02 - 2.0 * e1 * 0.02, 1e-12));
    }

    #[test]
    fn a_seed_reproduces_the_samples() {
        let c = SimLinkConf {
            seed: 42,
            sample_bits: 1000,
            ..gys(50.0)
        };
        let a: Vec<f64> = {
            let mut m = LinkModel::new(&c).unwrap();
            (0..20).map(|_| m.sample()).collect()
        };
        let mut m = LinkModel::new(&c).unwrap();
        let b: Vec<f64> = (0..20).map(|_| m.sample()).collect();
        assert_eq!(a, b);
        let other = SimLinkConf { seed: 43, ..c };
        let mut m = LinkModel::new(&other).unwrap();
        let d: Vec<f64> = (0..20).map(|_| m.sample()).collect();
        assert_ne!(a, d);
    }

    #[test]
    fn sample_mean_is_close_to_expected() {
        let c = SimLinkConf {
            sample_bits: 2000,
            eve: 0.3,
            ..gys(50.0)
        };
        let mut m = LinkModel::new(&c).unwrap();
        let want = m.expected_qber();
        let n = 2000;
        let mean = (0..n).map(|_| m.sample()).sum::<f64>() / n as f64;
        // σ of one sample ≈ sqrt(q(1−q)/2000) ≈ 0.008; of the mean ≈ 2e-4.
        assert!(close(mean, want, 0.002), "mean {mean}, expected {want}");
        for _ in 0..100 {
            let s = m.sample();
            assert!((0.0..=0.5).contains(&s));
        }
    }

    #[test]
    fn tiny_samples_fluctuate_but_stay_in_range() {
        let c = SimLinkConf {
            sample_bits: 4,
            noise: 0.5,
            ..gys(50.0)
        };
        let mut m = LinkModel::new(&c).unwrap();
        let v: Vec<f64> = (0..50).map(|_| m.sample()).collect();
        assert!(v.iter().all(|s| (0.0..=0.5).contains(s)));
        assert!(v.iter().any(|s| *s < 0.5), "all samples clamped to 0.5");
    }
}
