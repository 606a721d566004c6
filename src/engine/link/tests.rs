//! Unit tests: one per transition of the DESIGN §6 table and the rules in
//! the module docs. Time is an offset in seconds from the link's creation.

use super::*;
use LockReason::{KeyStale, PeerLost, Qber, SourceLost};

fn policy() -> LinkPolicy {
    LinkPolicy::default()
}

fn set(rs: &[LockReason]) -> Reasons {
    rs.iter().copied().collect()
}

struct H {
    link: Link,
    t0: Instant,
}

impl H {
    fn new(policy: Option<LinkPolicy>, keys: bool, persisted: Reasons) -> H {
        let t0 = Instant::now();
        H {
            link: Link::new("dr", policy.map(Arc::new), keys, persisted, t0),
            t0,
        }
    }
    fn with(p: LinkPolicy) -> H {
        H::new(Some(p), false, Reasons::EMPTY)
    }
    fn t(&self, secs: f64) -> Instant {
        self.t0 + Duration::from_secs_f64(secs)
    }
    fn at(&mut self, secs: f64, input: Input) -> Vec<Action> {
        let now = self.t(secs);
        self.link.handle(now, input)
    }
    fn fresh(&mut self, secs: f64, qber: f64) -> Vec<Action> {
        self.at(secs, Input::Sample { qber, fresh: true })
    }
    fn tick(&mut self, secs: f64) -> Vec<Action> {
        self.at(secs, Input::Tick)
    }
    /// Fresh samples of `qber` every second over [from, to].
    fn run(&mut self, from: u32, to: u32, qber: f64) -> Vec<Action> {
        (from..=to)
            .flat_map(|s| self.fresh(s as f64, qber))
            .collect()
    }
}

fn reports(a: &[Action]) -> Vec<Reasons> {
    a.iter()
        .filter_map(|x| match x {
            Action::Report(r) => Some(*r),
            _ => None,
        })
        .collect()
}

fn locks(a: &[Action]) -> Vec<LockReason> {
    a.iter()
        .filter_map(|x| match x {
            Action::Lock { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect()
}

fn unlocks(a: &[Action]) -> Vec<(LockReason, UnlockBy)> {
    a.iter()
        .filter_map(|x| match x {
            Action::Unlock { reason, by } => Some((*reason, *by)),
            _ => None,
        })
        .collect()
}

/// A link locked for qber at t = 3 (samples at 1, 2, 3 of 0.09).
fn tripped(p: LinkPolicy, keys: bool) -> H {
    let mut h = H::new(Some(p), keys, Reasons::EMPTY);
    h.run(1, 3, 0.09);
    assert_eq!(h.link.reasons(), set(&[Qber]));
    h
}

/// A gap of silence longer than qber_timeout ended by a sample below, with
/// no tick in between: the gap is not "continuously below".
#[test]
fn a_late_sample_does_not_hide_a_silent_gap() {
    let mut h = tripped(policy(), false);
    h.fresh(4.0, 0.01);
    let a = h.fresh(69.0, 0.01);
    assert!(locks(&a).contains(&SourceLost), "{a:?}");
    assert_eq!(h.link.reasons(), set(&[Qber]), "still tripped");
    assert_eq!(h.link.status(h.t(69.0)).below_for, Some(Duration::ZERO));
    // Recovery counts from the sample that ended the gap.
    h.run(70, 128, 0.01);
    assert_eq!(h.link.reasons(), set(&[Qber]));
    h.run(129, 130, 0.01);
    assert_eq!(h.link.reasons(), Reasons::EMPTY);
}

#[test]
fn trips_after_exactly_trip_samples() {
    let mut h = H::with(policy());
    assert_eq!(reports(&h.fresh(1.0, 0.09)), vec![Reasons::EMPTY]);
    assert!(locks(&h.fresh(2.0, 0.09)).is_empty());
    let a = h.fresh(3.0, 0.08);
    assert!(a.contains(&Action::Lock {
        reason: Qber,
        qber: Some(0.08),
        threshold: Some(0.08)
    }));
    assert_eq!(a.last(), Some(&Action::Report(set(&[Qber]))));
    assert_eq!(h.link.status(h.t(3.0)).trips, 1);
    // Further high samples change nothing.
    assert!(
        h.fresh(4.0, 0.2)
            .iter()
            .all(|x| !matches!(x, Action::Lock { .. }))
    );
}

#[test]
fn a_low_sample_resets_the_count() {
    let mut h = H::with(policy());
    h.run(1, 2, 0.09);
    h.fresh(3.0, 0.079);
    h.run(4, 5, 0.09);
    assert!(h.link.reasons().is_empty());
    assert_eq!(h.link.status(h.t(5.0)).over_threshold, 2);
    h.fresh(6.0, 0.09);
    assert_eq!(h.link.reasons(), set(&[Qber]));
}

#[test]
fn stale_samples_are_ignored_entirely() {
    let mut h = H::with(policy());
    h.run(1, 2, 0.09);
    for s in 3..=8 {
        let a = h.at(
            s as f64,
            Input::Sample {
                qber: 0.3,
                fresh: false,
            },
        );
        assert!(a.is_empty(), "{a:?}");
    }
    assert!(h.link.reasons().is_empty());
    assert_eq!(h.link.status(h.t(8.0)).qber, Some(0.09));
    // ... and do not keep source-lost away: the last fresh one was at 2.
    assert_eq!(locks(&h.tick(12.0)), vec![SourceLost]);
}

#[test]
fn out_of_range_samples_are_ignored() {
    let mut h = H::with(policy());
    for q in [f64::NAN, 0.7, -0.1] {
        assert!(h.fresh(1.0, q).is_empty());
    }
    assert!(!h.link.status(h.t(1.0)).reporting);
}

#[test]
fn recovers_after_recover_after_below_and_window_restarts() {
    let mut h = tripped(policy(), false);
    h.run(4, 30, 0.01); // window from 4
    h.fresh(31.0, 0.05); // >= recover_below: restart
    let a = h.run(32, 91, 0.01); // window from 32, ends at 92
    assert!(unlocks(&a).is_empty(), "{a:?}");
    assert_eq!(h.link.next_deadline(), Some(h.t(92.0)));
    let a = h.tick(92.0);
    assert_eq!(unlocks(&a), vec![(Qber, UnlockBy::Auto)]);
    assert_eq!(reports(&a), vec![Reasons::EMPTY]);
    // A new trip needs trip_samples fresh high samples again.
    h.run(93, 94, 0.09);
    assert!(h.link.reasons().is_empty());
    h.fresh(95.0, 0.09);
    assert_eq!(h.link.status(h.t(95.0)).trips, 2);
}

#[test]
fn with_keys_recovery_waits_for_a_key_after_the_window_started() {
    let mut h = tripped(policy(), true);
    h.at(3.5, Input::KeyInstalled { fetched: h.t(3.5) }); // before the window: does not count
    h.run(4, 70, 0.01);
    assert_eq!(h.link.reasons(), set(&[Qber]));
    let st = h.link.status(h.t(70.0));
    assert!(!st.releasable);
    let a = h.at(70.5, Input::KeyInstalled { fetched: h.t(70.5) });
    assert_eq!(unlocks(&a), vec![(Qber, UnlockBy::Auto)]);
}

/// A key fetched during the incident, its OFFER held back on the path and
/// let through once the QBER came down, installs after the window began:
/// it is no post-incident key, and the trip stays until one comes.
#[test]
fn a_key_fetched_before_the_qber_came_down_does_not_count() {
    let mut h = tripped(policy(), true);
    h.run(4, 60, 0.01);
    let late = h.at(60.5, Input::KeyInstalled { fetched: h.t(3.0) });
    assert!(unlocks(&late).is_empty());
    let a = h.run(61, 70, 0.01);
    assert!(unlocks(&a).is_empty(), "{a:?}");
    assert_eq!(h.link.reasons(), set(&[Qber]));
    assert!(!h.link.status(h.t(70.0)).releasable);
    let a = h.at(70.5, Input::KeyInstalled { fetched: h.t(70.2) });
    assert_eq!(unlocks(&a), vec![(Qber, UnlockBy::Auto)]);
}

#[test]
fn manual_mode_holds_until_an_accepted_unlock() {
    let p = LinkPolicy {
        unlock: UnlockMode::Manual,
        ..policy()
    };
    let mut h = tripped(p, false);
    let a = h.at(4.0, Input::Unlock { force: false });
    assert!(matches!(a[..], [Action::UnlockRefused { .. }]), "{a:?}");
    h.run(4, 200, 0.01);
    assert_eq!(h.link.reasons(), set(&[Qber]));
    assert_eq!(h.link.next_deadline(), Some(h.t(210.0))); // source-lost only
    assert!(h.link.status(h.t(200.0)).releasable);
    let a = h.at(200.5, Input::Unlock { force: false });
    assert_eq!(unlocks(&a), vec![(Qber, UnlockBy::Operator)]);
    assert_eq!(reports(&a), vec![Reasons::EMPTY]);
}

#[test]
fn manual_unlock_is_refused_when_the_window_restarted() {
    let p = LinkPolicy {
        unlock: UnlockMode::Manual,
        ..policy()
    };
    let mut h = tripped(p, false);
    h.run(4, 100, 0.01);
    h.fresh(101.0, 0.06);
    let a = h.at(102.0, Input::Unlock { force: false });
    assert_eq!(
        a,
        vec![Action::UnlockRefused {
            why: "QBER is not below recover_below"
        }]
    );
    h.run(102, 150, 0.01);
    let a = h.at(150.5, Input::Unlock { force: false });
    assert!(matches!(a[..], [Action::UnlockRefused { .. }]), "{a:?}");
    assert_eq!(h.link.reasons(), set(&[Qber]));
}

#[test]
fn unlock_without_a_trip_does_nothing() {
    let mut h = H::with(policy());
    h.fresh(1.0, 0.01);
    assert!(h.at(2.0, Input::Unlock { force: false }).is_empty());
}

#[test]
fn forced_unlock_clears_everything_and_restarts_timers() {
    let mut h = tripped(policy(), true);
    h.tick(20.0); // source-lost since 13
    assert_eq!(h.link.reasons(), set(&[Qber, SourceLost]));
    let a = h.at(21.0, Input::Unlock { force: true });
    assert_eq!(
        unlocks(&a),
        vec![(Qber, UnlockBy::Forced), (SourceLost, UnlockBy::Forced)]
    );
    assert_eq!(reports(&a), vec![Reasons::EMPTY]);
    assert_eq!(h.link.next_deadline(), Some(h.t(31.0)));
    // The high QBER has to trip afresh.
    h.run(22, 23, 0.2);
    assert!(h.link.reasons().is_empty());
    h.fresh(24.0, 0.2);
    assert_eq!(h.link.reasons(), set(&[Qber]));
}

#[test]
fn source_lost_is_set_on_timeout_and_cleared_by_a_fresh_sample() {
    let mut h = H::with(policy());
    h.fresh(1.0, 0.01);
    assert_eq!(h.link.next_deadline(), Some(h.t(11.0)));
    assert!(h.tick(10.9).is_empty());
    let a = h.tick(11.0);
    assert_eq!(locks(&a), vec![SourceLost]);
    assert_eq!(reports(&a), vec![set(&[SourceLost])]);
    assert!(h.tick(30.0).is_empty());
    let a = h.fresh(31.0, 0.01);
    assert_eq!(unlocks(&a), vec![(SourceLost, UnlockBy::Auto)]);
    assert_eq!(reports(&a), vec![Reasons::EMPTY]);
}

#[test]
fn start_up_is_silent_until_a_fresh_sample() {
    let mut h = H::with(policy());
    assert!(h.tick(5.0).is_empty());
    assert!(
        h.at(
            6.0,
            Input::Sample {
                qber: 0.01,
                fresh: false
            }
        )
        .is_empty()
    );
    assert!(!h.link.status(h.t(6.0)).reporting);
    let a = h.fresh(7.0, 0.01);
    assert_eq!(reports(&a), vec![Reasons::EMPTY]);
    assert!(h.fresh(8.0, 0.01).is_empty());
}

#[test]
fn start_up_without_samples_reports_source_lost_after_the_timeout() {
    let mut h = H::with(policy());
    assert_eq!(h.link.next_deadline(), Some(h.t(10.0)));
    assert!(h.tick(9.9).is_empty());
    let a = h.tick(10.0);
    assert_eq!(locks(&a), vec![SourceLost]);
    assert_eq!(reports(&a), vec![set(&[SourceLost])]);
}

#[test]
fn persisted_qber_starts_locked_and_recovers_under_the_rules() {
    let persisted = set(&[Qber, LockReason::Operator]);
    let mut h = H::new(Some(policy()), false, persisted);
    assert_eq!(h.link.reasons(), set(&[Qber]));
    assert_eq!(reports(&h.fresh(1.0, 0.01)), vec![set(&[Qber])]);
    let a = h.run(2, 60, 0.01);
    assert!(reports(&a).is_empty());
    let a = h.fresh(61.0, 0.01);
    assert_eq!(unlocks(&a), vec![(Qber, UnlockBy::Auto)]);
    assert_eq!(reports(&a), vec![Reasons::EMPTY]);
}

/// A link locked `peer-lost` before a restart stays locked until an
/// authenticated round: the new process cannot tell an unreachable peer
/// from a live one for another `peer_timeout`.
#[test]
fn persisted_peer_lost_holds_until_an_authenticated_round() {
    let mut h = H::new(Some(policy()), true, set(&[PeerLost]));
    assert_eq!(h.link.reasons(), set(&[PeerLost]));
    assert_eq!(reports(&h.fresh(1.0, 0.01)), vec![set(&[PeerLost])]);
    assert!(reports(&h.run(2, 30, 0.01)).is_empty());
    let a = h.at(31.0, Input::PeerRound);
    assert_eq!(unlocks(&a), vec![(PeerLost, UnlockBy::Auto)]);
    assert_eq!(reports(&a), vec![Reasons::EMPTY]);
    // A link without keys has no peer to lose.
    let h = H::new(Some(policy()), false, set(&[PeerLost]));
    assert!(h.link.reasons().is_empty());
    assert!(LockReason::PeerLost.persisted());
}

/// A hold stops the rounds, so the peer's silence during it locks nothing;
/// the key's age still does (`max_key_age` bounds how long the last good
/// key serves, hold or not).
#[test]
fn a_hold_pauses_peer_lost_but_not_key_stale() {
    let p = LinkPolicy {
        on_qber: OnQber::Hold,
        peer_timeout: Duration::from_secs(300),
        max_key_age: Duration::from_secs(900),
        ..policy()
    };
    let mut h = H::new(Some(p), true, Reasons::EMPTY);
    assert!(h.run(1, 3, 0.2).contains(&Action::Hold { on: true }));
    let a = h.run(4, 600, 0.2);
    assert!(locks(&a).is_empty(), "{:?}", locks(&a));
    // Released at 661 s: the peer's silence counts from the release.
    let a = h.run(601, 661, 0.01);
    assert!(a.contains(&Action::Hold { on: false }));
    assert!(h.link.reasons().is_empty());
    let a = h.run(662, 899, 0.01);
    assert!(locks(&a).is_empty(), "{:?}", locks(&a));
    assert_eq!(locks(&h.run(900, 900, 0.01)), vec![KeyStale]);
    assert_eq!(locks(&h.run(901, 961, 0.01)), vec![PeerLost]);
}

#[test]
fn hold_stops_rotation_without_a_lock() {
    let p = LinkPolicy {
        on_qber: OnQber::Hold,
        ..policy()
    };
    let mut h = H::with(p);
    let a = h.run(1, 3, 0.2);
    assert!(a.contains(&Action::Hold { on: true }));
    assert!(locks(&a).is_empty());
    assert!(h.link.reasons().is_empty());
    assert_eq!(h.link.status(h.t(3.0)).tripped, Some(OnQber::Hold));
    let a = h.run(4, 64, 0.01);
    assert_eq!(
        a.iter()
            .filter(|x| **x == Action::Hold { on: false })
            .count(),
        1
    );
    assert_eq!(h.link.status(h.t(64.0)).tripped, None);
}

#[test]
fn manual_hold_needs_unlock() {
    let p = LinkPolicy {
        on_qber: OnQber::Hold,
        unlock: UnlockMode::Manual,
        ..policy()
    };
    let mut h = H::with(p);
    h.run(1, 3, 0.2);
    let a = h.run(4, 100, 0.01);
    assert!(!a.contains(&Action::Hold { on: false }));
    let a = h.at(100.5, Input::Unlock { force: false });
    assert_eq!(a, vec![Action::Hold { on: false }]);
}

#[test]
fn alert_logs_once_per_trip() {
    let p = LinkPolicy {
        on_qber: OnQber::Alert,
        unlock: UnlockMode::Manual,
        ..policy()
    };
    let mut h = H::with(p);
    let a = h.run(1, 10, 0.2);
    let alerts: Vec<_> = a
        .iter()
        .filter(|x| matches!(x, Action::Alert { .. }))
        .collect();
    assert_eq!(
        alerts,
        vec![&Action::Alert {
            qber: 0.2,
            threshold: 0.08
        }]
    );
    assert!(h.link.reasons().is_empty());
    h.run(11, 71, 0.01); // an alert recovers by itself even in manual mode
    let a = h.run(72, 74, 0.2);
    assert_eq!(
        a.iter()
            .filter(|x| matches!(x, Action::Alert { .. }))
            .count(),
        1
    );
    assert_eq!(h.link.status(h.t(74.0)).trips, 2);
}

#[test]
fn a_lower_threshold_trips_from_recent_samples() {
    let mut h = H::with(policy());
    h.run(1, 3, 0.07);
    assert!(h.link.reasons().is_empty());
    let p = LinkPolicy {
        qber_lockdown: 0.06,
        ..policy()
    };
    let a = h.at(3.5, Input::Policy(Some(Arc::new(p))));
    assert_eq!(locks(&a), vec![Qber]);
    assert_eq!(reports(&a), vec![set(&[Qber])]);
}

#[test]
fn alert_to_lockdown_policy_locks_a_high_link() {
    let alert = LinkPolicy {
        on_qber: OnQber::Alert,
        ..policy()
    };
    let mut h = H::with(alert);
    h.run(1, 5, 0.2);
    assert!(h.link.reasons().is_empty());
    let a = h.at(5.5, Input::Policy(Some(Arc::new(policy()))));
    assert_eq!(locks(&a), vec![Qber]);
}

#[test]
fn no_policy_holds_no_reasons_but_keeps_a_qber_trip() {
    let mut h = H::new(None, true, Reasons::EMPTY);
    let a = h.fresh(1.0, 0.2);
    assert!(a.contains(&Action::Band {
        from: None,
        to: Band::Compromised,
        qber: 0.2
    }));
    assert_eq!(reports(&a), vec![Reasons::EMPTY]);
    assert!(h.tick(100_000.0).is_empty());
    assert_eq!(h.link.next_deadline(), None);

    let mut h = tripped(policy(), false);
    h.tick(20.0);
    assert_eq!(h.link.reasons(), set(&[Qber, SourceLost]));
    let a = h.at(21.0, Input::Policy(None));
    assert_eq!(unlocks(&a), vec![(SourceLost, UnlockBy::Auto)]);
    assert_eq!(h.link.reasons(), set(&[Qber]));
    let a = h.at(22.0, Input::Unlock { force: false });
    assert_eq!(
        a,
        vec![Action::UnlockRefused {
            why: "no active policy"
        }]
    );
    // The policy returns: the old silence counts.
    let a = h.at(23.0, Input::Policy(Some(Arc::new(policy()))));
    assert_eq!(locks(&a), vec![SourceLost]);
}

#[test]
fn the_same_policy_again_changes_nothing() {
    let mut h = tripped(policy(), false);
    h.run(4, 30, 0.01);
    assert!(
        h.at(30.5, Input::Policy(Some(Arc::new(policy()))))
            .is_empty()
    );
    // The window from 4 survived: recovery at 64.
    h.run(31, 63, 0.01);
    assert_eq!(unlocks(&h.fresh(64.0, 0.01)), vec![(Qber, UnlockBy::Auto)]);
}

#[test]
fn band_changes_are_reported() {
    let mut h = H::with(policy());
    let b = |from, to, qber| Action::Band { from, to, qber };
    assert!(h.fresh(1.0, 0.01).contains(&b(None, Band::Nominal, 0.01)));
    assert_eq!(
        h.fresh(2.0, 0.04),
        vec![b(Some(Band::Nominal), Band::Degraded, 0.04)]
    );
    assert!(h.fresh(3.0, 0.045).is_empty());
    assert_eq!(
        h.fresh(4.0, 0.12),
        vec![b(Some(Band::Degraded), Band::Compromised, 0.12)]
    );
    let wide = LinkPolicy {
        bands: [0.05, 0.1, 0.15, 0.2],
        ..policy()
    };
    let a = h.at(4.5, Input::Policy(Some(Arc::new(wide))));
    assert_eq!(a, vec![b(Some(Band::Compromised), Band::Warning, 0.12)]);
}

fn key_policy() -> LinkPolicy {
    LinkPolicy {
        qber_timeout: Duration::from_secs(10_000),
        max_key_age: Duration::from_secs(100),
        peer_timeout: Duration::from_secs(200),
        ..policy()
    }
}

#[test]
fn key_stale_and_peer_lost_with_keys() {
    let mut h = H::new(Some(key_policy()), true, Reasons::EMPTY);
    h.fresh(1.0, 0.01);
    assert_eq!(h.link.next_deadline(), Some(h.t(100.0)));
    let a = h.tick(100.0);
    assert_eq!(locks(&a), vec![KeyStale]);
    assert_eq!(reports(&a), vec![set(&[KeyStale])]);
    let a = h.at(
        150.0,
        Input::KeyInstalled {
            fetched: h.t(150.0),
        },
    );
    assert_eq!(unlocks(&a), vec![(KeyStale, UnlockBy::Auto)]);
    assert_eq!(locks(&h.tick(200.0)), vec![PeerLost]);
    let a = h.at(201.0, Input::PeerRound);
    assert_eq!(unlocks(&a), vec![(PeerLost, UnlockBy::Auto)]);
    assert_eq!(reports(&a), vec![Reasons::EMPTY]);
    assert_eq!(h.link.next_deadline(), Some(h.t(250.0)));
}

/// A key installed before a restart keeps its age: 70 s old at start, it
/// goes stale 30 s later (max_key_age 100 s), not 100 s later; a key that
/// cannot be dated (the clock went back) is stale at once; a new key
/// counts from its install again.
#[test]
fn a_key_from_before_a_restart_keeps_its_age() {
    let mut h = H::new(Some(key_policy()), true, Reasons::EMPTY);
    h.link.key_aged(Duration::from_secs(70));
    h.fresh(1.0, 0.01);
    assert_eq!(h.link.next_deadline(), Some(h.t(30.0)));
    assert!(h.tick(29.0).is_empty());
    assert_eq!(locks(&h.tick(30.0)), vec![KeyStale]);
    let a = h.at(31.0, Input::KeyInstalled { fetched: h.t(31.0) });
    assert_eq!(unlocks(&a), vec![(KeyStale, UnlockBy::Auto)]);
    assert_eq!(h.link.next_deadline(), Some(h.t(131.0)));
    let mut h = H::new(Some(key_policy()), true, Reasons::EMPTY);
    h.link.key_aged(Duration::from_secs(u64::MAX));
    assert_eq!(locks(&h.tick(0.5)), vec![KeyStale]);
}

#[test]
fn never_key_stale_or_peer_lost_without_keys() {
    let mut h = H::new(Some(key_policy()), false, Reasons::EMPTY);
    h.fresh(1.0, 0.01);
    assert_eq!(h.link.next_deadline(), Some(h.t(10_001.0)));
    assert!(h.tick(5000.0).is_empty());
    assert!(
        h.at(
            5001.0,
            Input::KeyInstalled {
                fetched: h.t(5001.0)
            }
        )
        .is_empty()
    );
    assert!(h.link.reasons().is_empty());
}

#[test]
fn time_never_runs_backwards() {
    let mut h = H::with(policy());
    h.fresh(5.0, 0.01);
    // An earlier `now` is taken as the latest one seen.
    h.fresh(1.0, 0.01);
    assert_eq!(h.link.next_deadline(), Some(h.t(15.0)));
}
