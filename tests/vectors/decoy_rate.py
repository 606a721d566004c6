#!/usr/bin/env python3
"""Expected values for the decoy-state key rate tests in src/sim/model.rs.

An independent computation of the textbook formulas, standard library only:

  Gottesman, Lo, Lütkenhaus, Preskill (GLLP), Quant. Inf. Comput. 4, 325
  (2004); Lo, Ma, Chen, "Decoy state quantum key distribution", PRL 94,
  230504 (2005); Ma, Qi, Zhao, Lo, "Practical decoy state for quantum key
  distribution", PRA 72, 012326 (2005), section IV (vacuum + weak decoy);
  parameters of Gobby, Yuan, Shields (GYS), APL 84, 3762 (2004), as in
  reference/qkd-physics.md.

  eta   = eta_Bob * 10^(-alpha L / 10)
  Q_mu  = Y0 + 1 - exp(-eta mu)            E_mu Q_mu = e0 Y0 + e_d (1 - exp(-eta mu))
  Y1    = Y0 + eta - Y0 eta                e1 Y1 = e0 Y0 + e_d eta
  Q1    = Y1 mu exp(-mu)
  R     = q { -Q_mu f h(E_mu) + Q1 [1 - h(e1)] },  q = 1/2 (BB84 sifting)

An intercept-resend eavesdropper on a fraction p of the pulses flips a
further p/4 of the bits, E_mu and e1 alike: e -> e + p/4 - 2 e p/4.

Run: python3 tests/vectors/decoy_rate.py
"""

import math

ALPHA = 0.21  # dB/km
ETA_BOB = 0.045
Y0 = 1.7e-6
E_DET = 0.033
MU = 0.48
F = 1.22
Q = 0.5
E0 = 0.5
NU = 0.1  # weak decoy of the vacuum + weak estimate


def h(x):
    if x <= 0 or x >= 1:
        return 0.0
    return -x * math.log2(x) - (1 - x) * math.log2(1 - x)


def flip(e, p):
    return e + p - 2 * e * p


def eta_at(km):
    return ETA_BOB * 10 ** (-ALPHA * km / 10)


def gain_err(eta, mu, eve):
    qm = Y0 + 1 - math.exp(-eta * mu)
    em = (E0 * Y0 + E_DET * (1 - math.exp(-eta * mu))) / qm
    return qm, flip(em, eve / 4)


def rate_infinite(km, eve=0.0, f=F):
    eta = eta_at(km)
    qm, em = gain_err(eta, MU, eve)
    y1 = Y0 + eta - Y0 * eta
    e1 = flip((E0 * Y0 + E_DET * eta) / y1, eve / 4)
    q1 = y1 * MU * math.exp(-MU)
    return max(0.0, Q * (-qm * f * h(em) + q1 * (1 - h(e1)))), e1


def rate_vacuum_weak(km, eve=0.0, f=F):
    eta = eta_at(km)
    qm, em = gain_err(eta, MU, eve)
    qn, en = gain_err(eta, NU, eve)
    y1 = MU / (MU * NU - NU * NU) * (
        qn * math.exp(NU) - qm * math.exp(MU) * NU * NU / (MU * MU)
        - (MU * MU - NU * NU) / (MU * MU) * Y0)
    if y1 <= 0:
        return 0.0, 0.5
    e1 = min(0.5, (en * qn * math.exp(NU) - E0 * Y0) / (y1 * NU))
    q1 = y1 * MU * math.exp(-MU)
    return max(0.0, Q * (-qm * f * h(em) + q1 * (1 - h(e1)))), e1


def rate_old(km, eve=0.0):
    """What the simulator computed before: Q_mu/2 (1 - 1.16 h(E) - h(E))."""
    qm, em = gain_err(eta_at(km), MU, eve)
    return qm / 2 * max(0.0, 1 - 1.16 * h(em) - h(em))


def bisect(fn, lo, hi):
    """The point where fn turns from > 0 to 0, lo positive, hi zero."""
    for _ in range(200):
        mid = (lo + hi) / 2
        if fn(mid) > 0:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def main():
    print("km    old/pulse     infinite/pulse  vacuum+weak/pulse  e1(inf)")
    for km in (0, 25, 50, 100, 140):
        r, e1 = rate_infinite(km)
        rv, _ = rate_vacuum_weak(km)
        print(f"{km:<5} {rate_old(km):.6e}  {r:.6e}    {rv:.6e}       {e1:.6f}")
    print(f"zero-key distance, infinite decoy: {bisect(lambda d: rate_infinite(d)[0], 0, 300):.4f} km")
    print(f"zero-key distance, vacuum+weak nu={NU}: "
          f"{bisect(lambda d: rate_vacuum_weak(d)[0], 0, 300):.4f} km")
    print(f"zero-key distance, old model: {bisect(rate_old, 0, 300):.4f} km")
    for km in (25, 100):
        p = bisect(lambda p: rate_infinite(km, p)[0], 0, 1)
        _, e1 = rate_infinite(km, p)
        _, em = gain_err(eta_at(km), MU, p)
        print(f"eve fraction for zero key at {km} km: {p:.6f} (e1 {e1:.6f}, E_mu {em:.6f})")
    # f = 1 and a single-photon source (Q1 = Q_mu, e1 = E_mu): the Shor-Preskill 11 %
    print(f"Shor-Preskill limit 1 - 2h(e) = 0 at e = {bisect(lambda e: 1 - 2 * h(e), 0, 0.5):.6f}")
    for pulse_rate, km in ((1e9, 25), (1e7, 25)):
        print(f"{pulse_rate:g} Hz at {km} km: old {pulse_rate * rate_old(km) / 256:.2f} keys/s, "
              f"new {pulse_rate * rate_infinite(km)[0] / 256:.2f} keys/s (256-bit keys)")


if __name__ == "__main__":
    main()
