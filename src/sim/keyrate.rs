//! Secret key rate of a simulated link (qkdsim process): asymptotic
//! decoy-state BB84 as GLLP give it with the single-photon yield and error
//! rate of Lo, Ma and Chen (reference/qkd-physics.md):
//!
//! R = q·{−Q_μ·f·h(E_μ) + Q1·[1 − h(e1)]} secret bits per pulse,
//!
//! q = 1/2 (BB84 basis sifting, as Gobby, Yuan and Shields use it), Q_μ and
//! E_μ the gain and QBER of the signal pulses, f the error-correction
//! efficiency (1.22 unless configured), Q1 = Y1·μ·e^(−μ) the gain of the
//! single-photon pulses and e1 their error rate. Privacy amplification pays
//! only for what Eve may know about single photons; error correction pays
//! for every detection.
//!
//! Q1 and e1 come from the decoy estimate ([`Decoy`]): `infinite` (the
//! default) takes them exactly, as infinitely many decoy intensities
//! would; `vacuum+weak` bounds them from the vacuum decoy and one weak decoy
//! of mean photon number ν (Ma, Qi, Zhao, Lo, PRA 72, 012326, 2005), a
//! little below the infinite-decoy rate. Both are asymptotic: no
//! finite-key correction, and the pulses spent on decoys are not counted.

use super::model::{E0, LinkModel, binary_entropy};

/// Error-correction efficiency f of the GYS parameter set.
pub const EC_EFFICIENCY: f64 = 1.22;
/// Fraction of detections left after BB84 basis sifting.
pub const SIFTING: f64 = 0.5;
/// Mean photon number of the weak decoy unless configured.
pub const WEAK_DECOY: f64 = 0.1;

/// How Q1 and e1 are known.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decoy {
    /// The true values (the limit of infinitely many decoys).
    Infinite,
    /// Lower bound on Y1 and upper bound on e1 from a vacuum decoy and a
    /// weak decoy of this mean photon number.
    VacuumWeak { weak: f64 },
}

/// The post-processing a link's key rate assumes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KeyRateConf {
    pub ec_efficiency: f64,
    pub decoy: Decoy,
}

impl Default for KeyRateConf {
    fn default() -> KeyRateConf {
        KeyRateConf {
            ec_efficiency: EC_EFFICIENCY,
            decoy: Decoy::Infinite,
        }
    }
}

impl KeyRateConf {
    /// f in [1, 3]; a weak decoy strictly between 0 and the signal's μ.
    pub fn check(&self, mean_photon: f64) -> Result<(), String> {
        let f = self.ec_efficiency;
        if !(1.0..=3.0).contains(&f) {
            return Err(format!("ec_efficiency must be between 1 and 3, found {f}"));
        }
        match self.decoy {
            Decoy::VacuumWeak { weak } if !(weak > 0.0 && weak < mean_photon) => Err(format!(
                "weak_decoy must be above 0 and below mean_photon ({mean_photon}), found {weak}"
            )),
            _ => Ok(()),
        }
    }
}

/// What the rate is computed from, per pulse.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    /// Q_μ, detections per signal pulse.
    pub gain: f64,
    /// E_μ, the signal pulses' QBER.
    pub qber: f64,
    /// Q1 (a lower bound with finite decoys).
    pub single_gain: f64,
    /// e1 (an upper bound with finite decoys).
    pub single_error: f64,
}

/// Q_μ, E_μ, Q1 and e1 of `m` as `decoy` knows them.
pub fn estimate(m: &LinkModel, decoy: Decoy) -> Estimate {
    let mu = m.conf().mean_photon;
    let (gain, qber) = (m.gain(), m.expected_qber());
    let (y1, e1) = match decoy {
        Decoy::Infinite => m.single_photon(),
        Decoy::VacuumWeak { weak: nu } => vacuum_weak(m, mu, nu),
    };
    Estimate {
        gain,
        qber,
        single_gain: y1 * mu * (-mu).exp(),
        single_error: e1,
    }
}

/// Y1 ≥ μ/(μν − ν²)·[Q_ν·e^ν − Q_μ·e^μ·ν²/μ² − (μ² − ν²)/μ²·Y0] and
/// e1 ≤ (E_ν·Q_ν·e^ν − e0·Y0)/(Y1·ν); the vacuum decoy measures Y0.
fn vacuum_weak(m: &LinkModel, mu: f64, nu: f64) -> (f64, f64) {
    let y0 = m.conf().dark_count;
    let (q_mu, q_nu) = (m.gain(), m.gain_at(nu));
    let e_nu = m.expected_qber_at(nu);
    let y1 = mu / (mu * nu - nu * nu)
        * (q_nu * nu.exp()
            - q_mu * mu.exp() * nu * nu / (mu * mu)
            - (mu * mu - nu * nu) / (mu * mu) * y0);
    if y1 <= 0.0 {
        return (0.0, E0);
    }
    let e1 = ((e_nu * q_nu * nu.exp() - E0 * y0) / (y1 * nu)).clamp(0.0, E0);
    (y1, e1)
}

/// Secret bits per pulse, never below zero.
pub fn rate_per_pulse(m: &LinkModel, k: &KeyRateConf) -> f64 {
    let e = estimate(m, k.decoy);
    let ec = e.gain * k.ec_efficiency * binary_entropy(e.qber);
    let pa = e.single_gain * (1.0 - binary_entropy(e.single_error));
    (SIFTING * (pa - ec)).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conf::SimLinkConf;

    // Expected values printed by tests/vectors/decoy_rate.py (an independent
    // computation of the same formulas, GYS parameters, q = 1/2, f = 1.22).
    const INFINITE: [(f64, f64); 5] = [
        (0.0, 2.554577e-03),
        (25.0, 7.543932e-04),
        (50.0, 2.225952e-04),
        (100.0, 1.718436e-05),
        (140.0, 2.464546e-07),
    ];
    const VACUUM_WEAK: [(f64, f64); 4] = [
        (0.0, 2.269860e-03),
        (25.0, 6.669787e-04),
        (50.0, 1.962739e-04),
        (100.0, 1.482179e-05),
    ];
    const ZERO_KM_INFINITE: f64 = 142.0144;
    const ZERO_KM_VACUUM_WEAK: f64 = 139.1042;

    fn model(length_km: f64) -> LinkModel {
        LinkModel::new(&SimLinkConf {
            length_km,
            ..SimLinkConf::default()
        })
        .unwrap()
    }

    fn weak() -> KeyRateConf {
        KeyRateConf {
            decoy: Decoy::VacuumWeak { weak: WEAK_DECOY },
            ..KeyRateConf::default()
        }
    }

    fn within_1_percent(got: f64, want: f64) -> bool {
        (got - want).abs() <= 0.01 * want
    }

    /// Where the rate of `k` first reaches zero, by bisection.
    fn zero_key_km(k: &KeyRateConf) -> f64 {
        let (mut lo, mut hi) = (0.0, 300.0);
        for _ in 0..60 {
            let mid = (lo + hi) / 2.0;
            if rate_per_pulse(&model(mid), k) > 0.0 {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo
    }

    #[test]
    fn infinite_decoy_matches_the_vectors() {
        for (km, want) in INFINITE {
            let got = rate_per_pulse(&model(km), &KeyRateConf::default());
            assert!(
                within_1_percent(got, want),
                "{km} km: {got:e}, want {want:e}"
            );
        }
        // reference/qkd-physics.md: about 2.2e-4 per pulse at 50 km.
        let r50 = rate_per_pulse(&model(50.0), &KeyRateConf::default());
        assert!((2.1e-4..2.3e-4).contains(&r50), "{r50:e}");
    }

    #[test]
    fn vacuum_weak_matches_the_vectors_and_stays_below() {
        for (km, want) in VACUUM_WEAK {
            let m = model(km);
            let got = rate_per_pulse(&m, &weak());
            assert!(
                within_1_percent(got, want),
                "{km} km: {got:e}, want {want:e}"
            );
            assert!(got < rate_per_pulse(&m, &KeyRateConf::default()));
        }
        assert_eq!(rate_per_pulse(&model(140.0), &weak()), 0.0);
    }

    #[test]
    fn zero_key_distance() {
        let inf = zero_key_km(&KeyRateConf::default());
        assert!((inf - ZERO_KM_INFINITE).abs() < 0.05, "{inf} km");
        let vw = zero_key_km(&weak());
        assert!((vw - ZERO_KM_VACUUM_WEAK).abs() < 0.05, "{vw} km");
        assert_eq!(rate_per_pulse(&model(145.0), &KeyRateConf::default()), 0.0);
        assert_eq!(rate_per_pulse(&model(500.0), &KeyRateConf::default()), 0.0);
    }

    #[test]
    fn intercept_resend_stops_the_key_where_the_vectors_say() {
        // decoy_rate.py: the eavesdropped fraction at which R reaches 0, and
        // e1 there (about 6 %: f = 1.22 and Q1 ≈ e^(−μ)·Q_μ make the limit
        // lower than the 11 % of 1 − 2h(e) = 0 for single photons).
        for (km, p_zero, e1_zero) in [(25.0, 0.125838, 0.062439), (100.0, 0.108946, 0.060529)] {
            let mut m = model(km);
            let k = KeyRateConf::default();
            m.set_eve(p_zero * 0.99).unwrap();
            assert!(rate_per_pulse(&m, &k) > 0.0, "{km} km");
            m.set_eve(p_zero * 1.01).unwrap();
            assert_eq!(rate_per_pulse(&m, &k), 0.0, "{km} km");
            m.set_eve(p_zero).unwrap();
            let e1 = estimate(&m, Decoy::Infinite).single_error;
            assert!((e1 - e1_zero).abs() < 1e-4, "{km} km: e1 {e1}");
            m.set_eve(1.0).unwrap();
            assert_eq!(rate_per_pulse(&m, &weak()), 0.0);
        }
    }

    #[test]
    fn ec_efficiency_and_checks() {
        let m = model(50.0);
        let ideal = KeyRateConf {
            ec_efficiency: 1.0,
            ..KeyRateConf::default()
        };
        assert!(rate_per_pulse(&m, &ideal) > rate_per_pulse(&m, &KeyRateConf::default()));
        assert!(KeyRateConf::default().check(0.48).is_ok());
        assert!(weak().check(0.48).is_ok());
        assert!(weak().check(0.05).is_err());
        for f in [0.9, 3.5, f64::NAN] {
            let k = KeyRateConf {
                ec_efficiency: f,
                ..KeyRateConf::default()
            };
            assert!(k.check(0.48).is_err(), "{f}");
        }
    }
}
