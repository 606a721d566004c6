//! Property tests over random input sequences: the invariants of DESIGN §6
//! that no single example pins down.

use super::*;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Sample(f64, bool),
    Tick,
    Key,
    Peer,
    Unlock(bool),
    NoPolicy,
    /// Index into the run's policy variants.
    Policy(usize),
}

fn op(with_unlock: bool) -> impl Strategy<Value = Op> {
    let qber = prop_oneof![0.0..0.05f64, 0.05..0.08f64, 0.08..0.3f64];
    let unlock_weight = if with_unlock { 1 } else { 0 };
    prop_oneof![
        12 => (qber, prop::bool::weighted(0.8)).prop_map(|(q, f)| Op::Sample(q, f)),
        3 => Just(Op::Tick),
        2 => Just(Op::Key),
        1 => Just(Op::Peer),
        unlock_weight => any::<bool>().prop_map(Op::Unlock),
        1 => Just(Op::NoPolicy),
        1 => (0usize..3).prop_map(Op::Policy),
    ]
}

fn steps(with_unlock: bool) -> impl Strategy<Value = Vec<(u64, Op)>> {
    // Mostly samples within qber_timeout (recoveries need unbroken runs),
    // sometimes a gap past it.
    let dt = prop_oneof![4 => 0u64..4_000, 1 => 0u64..30_000];
    prop::collection::vec((dt, op(with_unlock)), 1..150)
}

/// Short timers so random walks reach every rule. The variants differ in
/// what they do on a trip, never in the recovery numbers the checker uses.
fn policies(trip: u32, unlock: UnlockMode, on_qber: OnQber) -> [LinkPolicy; 3] {
    let base = LinkPolicy {
        on_qber,
        unlock,
        trip_samples: trip,
        qber_timeout: Duration::from_secs(10),
        recover_after: Duration::from_secs(20),
        max_key_age: Duration::from_secs(60),
        peer_timeout: Duration::from_secs(90),
        ..LinkPolicy::default()
    };
    [
        base.clone(),
        LinkPolicy {
            qber_lockdown: 0.06,
            trip_samples: trip + 1,
            ..base.clone()
        },
        LinkPolicy {
            on_qber: OnQber::Lockdown,
            bands: [0.02, 0.04, 0.06, 0.1],
            ..base
        },
    ]
}

fn input(op: &Op, ps: &[LinkPolicy; 3], now: Instant) -> Input {
    match op {
        Op::Sample(q, f) => Input::Sample {
            qber: *q,
            fresh: *f,
        },
        Op::Tick => Input::Tick,
        Op::Key => Input::KeyInstalled { fetched: now },
        Op::Peer => Input::PeerRound,
        Op::Unlock(force) => Input::Unlock { force: *force },
        Op::NoPolicy => Input::Policy(None),
        Op::Policy(i) => Input::Policy(Some(Arc::new(ps[*i].clone()))),
    }
}

/// The tester's own account of the recovery rule: when QBER went below
/// `recover_below` (0.05 in every variant) after the last trip, and whether
/// a key came since. The link may be stricter, never laxer.
#[derive(Default)]
struct Recovery {
    below_since: Option<Instant>,
    key_since: bool,
    policy: bool,
}

impl Recovery {
    fn see(&mut self, now: Instant, op: &Op) {
        match op {
            Op::Sample(q, true) => {
                if !(self.policy && *q < 0.05) {
                    self.below_since = None;
                } else if self.below_since.is_none() {
                    self.below_since = Some(now);
                    self.key_since = false;
                }
            }
            Op::Key => self.key_since |= self.below_since.is_some(),
            Op::NoPolicy => self.policy = false,
            Op::Policy(_) => self.policy = true,
            _ => {}
        }
    }

    fn met(&self, now: Instant, keys: bool) -> bool {
        let window = Duration::from_secs(20);
        let long = self.below_since.is_some_and(|s| now >= s + window);
        self.policy && long && (!keys || self.key_since)
    }
}

fn check_step(
    link: &Link,
    now: Instant,
    before: (Reasons, bool),
    acts: &[Action],
) -> Result<(), TestCaseError> {
    let (prev, was_reporting) = before;
    let reasons = link.reasons();
    let reports: Vec<_> = acts
        .iter()
        .enumerate()
        .filter(|(_, a)| matches!(a, Action::Report(_)))
        .collect();
    // (c) after start-up, Report exactly when the set changed; the first
    // determination reports once; a Report is last and carries the set.
    let reporting = link.status(now).reporting;
    let want_report = reporting && (!was_reporting || prev != reasons);
    prop_assert_eq!(reports.len(), usize::from(want_report), "{:?}", acts);
    if let Some((i, a)) = reports.first() {
        prop_assert_eq!(*i, acts.len() - 1);
        prop_assert_eq!(*a, &Action::Report(reasons));
    }
    // (d) only engine-owned reasons.
    prop_assert_eq!(reasons.owned_by(crate::lock::Owner::Engine), reasons);
    // (e) every due timer was handled.
    if let Some(d) = link.next_deadline() {
        prop_assert!(d > now, "deadline {:?} not after now {:?}", d, now);
    }
    Ok(())
}

fn run_checked(
    keys: bool,
    persisted: bool,
    ps: &[LinkPolicy; 3],
    steps: &[(u64, Op)],
) -> Result<(), TestCaseError> {
    let t0 = Instant::now();
    let initial: Reasons = persisted.then_some(LockReason::Qber).into_iter().collect();
    let mut link = Link::new("dr", Some(Arc::new(ps[0].clone())), keys, initial, t0);
    let mut now = t0;
    let mut rec = Recovery {
        policy: true,
        ..Recovery::default()
    };
    let mut qber_locked = persisted;
    for (dt, op) in steps {
        now += Duration::from_millis(*dt);
        let before = (link.reasons(), link.status(now).reporting);
        rec.see(now, op);
        let acts = link.handle(now, input(op, ps, now));
        check_step(&link, now, before, &acts)?;
        for a in &acts {
            match a {
                Action::Lock {
                    reason: LockReason::Qber,
                    ..
                } => {
                    qber_locked = true;
                    rec.below_since = None;
                }
                Action::Unlock {
                    reason: LockReason::Qber,
                    by,
                } => {
                    // (a) a qber trip ends only by the recovery rule or an unlock.
                    match by {
                        UnlockBy::Auto => prop_assert!(rec.met(now, keys), "{:?}", acts),
                        UnlockBy::Operator => {
                            prop_assert!(matches!(op, Op::Unlock(false)));
                            prop_assert!(rec.met(now, keys));
                        }
                        UnlockBy::Forced => prop_assert!(matches!(op, Op::Unlock(true))),
                    }
                    qber_locked = false;
                }
                Action::Report(r) if qber_locked => {
                    prop_assert!(r.contains(LockReason::Qber), "{:?}", acts)
                }
                _ => {}
            }
        }
        prop_assert_eq!(qber_locked, link.reasons().contains(LockReason::Qber));
    }
    Ok(())
}

fn mode() -> impl Strategy<Value = (UnlockMode, OnQber)> {
    let unlock = prop_oneof![Just(UnlockMode::Auto), Just(UnlockMode::Manual)];
    let on = prop_oneof![
        3 => Just(OnQber::Lockdown),
        1 => Just(OnQber::Hold),
        1 => Just(OnQber::Alert)
    ];
    (unlock, on)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// (a), (c), (d), (e) over every mode.
    #[test]
    fn invariants_hold(
        keys in any::<bool>(),
        persisted in any::<bool>(),
        trip in 1u32..4,
        (unlock, on_qber) in mode(),
        steps in steps(true),
    ) {
        run_checked(keys, persisted, &policies(trip, unlock, on_qber), &steps)?;
    }

    /// (b) with unlock = manual, nothing but an Unlock clears qber.
    #[test]
    fn manual_qber_needs_unlock(
        keys in any::<bool>(),
        persisted in any::<bool>(),
        trip in 1u32..4,
        steps in steps(false),
    ) {
        let ps = policies(trip, UnlockMode::Manual, OnQber::Lockdown);
        let t0 = Instant::now();
        let initial: Reasons = persisted.then_some(LockReason::Qber).into_iter().collect();
        let mut link = Link::new("dr", Some(Arc::new(ps[0].clone())), keys, initial, t0);
        let mut now = t0;
        let mut held = persisted;
        for (dt, op) in &steps {
            now += Duration::from_millis(*dt);
            let acts = link.handle(now, input(op, &ps, now));
            let unlocked = acts.iter().any(|a| matches!(a, Action::Unlock { reason: LockReason::Qber, .. }));
            prop_assert!(!unlocked, "{:?}", acts);
            held |= link.reasons().contains(LockReason::Qber);
            prop_assert_eq!(held, link.reasons().contains(LockReason::Qber));
        }
    }
}

/// The generators do reach trips, recoveries and forced unlocks; without
/// this the properties above could pass vacuously.
#[test]
fn random_walks_reach_every_rule() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let ps = policies(2, UnlockMode::Auto, OnQber::Lockdown);
    let (mut trips, mut auto, mut forced, mut lost) = (0, 0, 0, 0);
    for _ in 0..200 {
        let steps = steps(true).new_tree(&mut runner).unwrap().current();
        let t0 = Instant::now();
        let mut link = Link::new(
            "dr",
            Some(Arc::new(ps[0].clone())),
            false,
            Reasons::EMPTY,
            t0,
        );
        let mut now = t0;
        for (dt, op) in &steps {
            now += Duration::from_millis(*dt);
            for a in link.handle(now, input(op, &ps, now)) {
                match a {
                    Action::Lock {
                        reason: LockReason::Qber,
                        ..
                    } => trips += 1,
                    Action::Lock {
                        reason: LockReason::SourceLost,
                        ..
                    } => lost += 1,
                    Action::Unlock {
                        reason: LockReason::Qber,
                        by: UnlockBy::Auto,
                    } => auto += 1,
                    Action::Unlock {
                        by: UnlockBy::Forced,
                        ..
                    } => forced += 1,
                    _ => {}
                }
            }
        }
    }
    assert!(
        trips > 10 && auto > 0 && forced > 0 && lost > 10,
        "{trips} {auto} {forced} {lost}"
    );
}
