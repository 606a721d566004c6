//! Action order and timing of one endpoint; the two-endpoint behaviour is
//! in tests/peer_protocol.rs.

use super::round::Ctx;
use super::*;
use crate::proto::peer::{Body, LinkId};
use crate::secret::QkdKey;

const PERIOD: Duration = Duration::from_secs(300);

fn params(master: bool) -> Params {
    let (a, b) = ([1u8; 32], [2u8; 32]);
    Params {
        link_id: LinkId([9; 32]),
        ours: if master { a } else { b },
        peer: if master { b } else { a },
    }
}

fn rot(role: Role, jitter: bool, seed: u64, now: Instant) -> Rotation {
    let sched = Schedule {
        period: PERIOD,
        jitter,
        seed,
    };
    Rotation::new(role, params(role == Role::Master), sched, 0, now)
}

fn key_id(s: &str) -> KeyId {
    KeyId::new(s).unwrap()
}

fn key_ready(id: &str, len: usize) -> Input {
    Input::KeyReady {
        key_id: key_id(id),
        key: QkdKey::new(vec![0x42; len]),
    }
}

/// A master that has sent its first OFFER at `t0`; returns it and the OFFER.
fn offering(t0: Instant) -> (Rotation, Message) {
    let mut m = rot(Role::Master, false, 1, t0);
    assert_eq!(m.handle(t0, Input::Tick), [Action::FetchEncKey]);
    let out = m.handle(t0, key_ready("k1", 32));
    let [Action::PersistEpoch(1), Action::Send(offer)] = &out[..] else {
        panic!("persist must come before the OFFER: {out:?}");
    };
    assert_eq!((offer.epoch, offer.body), (1, Body::Offer));
    (m, offer.clone())
}

fn from_peer(mut m: Message, body: Body) -> Message {
    std::mem::swap(&mut m.sender, &mut m.receiver);
    m.body = body;
    m
}

#[test]
fn slave_and_master_batches_are_ordered() {
    let t0 = Instant::now();
    let (mut m, offer) = offering(t0);
    let mut s = rot(Role::Slave, false, 2, t0);
    let out = s.handle(t0, Input::Received(offer.clone()));
    assert_eq!(
        out,
        [
            Action::PeerRound,
            Action::PersistEpoch(1),
            Action::FetchDecKey {
                key_id: key_id("k1")
            }
        ]
    );
    let out = s.handle(t0, key_ready("k1", 32));
    let [Action::InstallPsk { epoch: 1, psk }] = &out[..] else {
        panic!("install ends the batch: {out:?}");
    };
    // No CONFIRM before the parent says the PSK is in the kernel.
    assert_eq!(
        s.handle(t0, Input::Received(offer.clone())),
        [Action::Ignored {
            why: "retransmit while fetching"
        }]
    );
    let out = s.handle(t0, Input::Installed { epoch: 1 });
    let [Action::Send(confirm), Action::RoundDone { epoch: 1, .. }] = &out[..] else {
        panic!("CONFIRM once installed: {out:?}");
    };
    let out = m.handle(t0, Input::Received(confirm.clone()));
    assert_eq!(
        out,
        [
            Action::PeerRound,
            Action::InstallPsk {
                epoch: 1,
                psk: psk.clone()
            },
        ]
    );
    assert_eq!(
        m.status().installed,
        None,
        "not installed until the parent says so"
    );
    assert_eq!(
        m.handle(t0, Input::Installed { epoch: 1 }),
        [Action::RoundDone {
            epoch: 1,
            key_id: key_id("k1"),
            fetched: t0,
        }]
    );
    assert_eq!(m.status().installed, Some((1, key_id("k1"))));
    assert_eq!(s.status().rounds_ok, 1);
    // Exactly one period later, the next round (jitter off).
    assert_eq!(m.next_deadline(), Some(t0 + PERIOD));
    // A retransmitted OFFER is answered from the cache, with no fetch.
    assert_eq!(
        s.handle(t0, Input::Received(offer)),
        [Action::Send(confirm.clone())]
    );
}

#[test]
fn retransmits_back_off_to_30s_then_the_round_is_given_up() {
    let t0 = Instant::now();
    let (mut m, offer) = offering(t0);
    let mut sends = Vec::new();
    let now = loop {
        let now = m.next_deadline().unwrap();
        let out = m.handle(now, Input::Tick);
        match &out[..] {
            [Action::Send(o)] => {
                assert_eq!(o, &offer, "the same OFFER is retransmitted");
                sends.push((now - t0).as_secs());
            }
            [Action::RoundFailed { why }] => {
                assert!(why.contains("no confirm for epoch 1"), "{why}");
                break now;
            }
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        sends,
        [1, 3, 7, 15, 31, 61, 91, 121, 151, 181, 211, 241, 271]
    );
    assert_eq!(now - t0, PERIOD);
    // Failed rounds are retried after 1 s, 2 s, 4 s … with a new key.
    assert_eq!(m.next_deadline(), Some(now + Duration::from_secs(1)));
    assert_eq!(m.status().rounds_failed, 1);
}

#[test]
fn backoff_caps_at_30s() {
    let d: Vec<u64> = (0..8).map(|n| Ctx::backoff(n).as_secs()).collect();
    assert_eq!(d, [1, 2, 4, 8, 16, 30, 30, 30]);
    assert_eq!(Ctx::backoff(u32::MAX), MAX_BACKOFF);
}

#[test]
fn jitter_is_seeded_and_bounded() {
    let t0 = Instant::now();
    let first = |seed| rot(Role::Master, true, seed, t0).next_deadline().unwrap() - t0;
    assert_eq!(first(5), first(5));
    let spread: std::collections::BTreeSet<Duration> = (0..20).map(first).collect();
    assert!(spread.len() > 10, "seeds give different start times");
    assert!(spread.iter().all(|d| *d <= PERIOD / 10));
    let mut ctx_rot = rot(Role::Master, true, 3, t0);
    for _ in 0..200 {
        let p = ctx_rot.ctx.jittered(PERIOD);
        assert!(
            p >= PERIOD.mul_f64(0.9) && p <= PERIOD.mul_f64(1.1),
            "{p:?}"
        );
    }
    assert_eq!(rot(Role::Master, false, 3, t0).next_deadline(), Some(t0));
    // The policy's least period is never jittered below itself.
    let least = Duration::from_secs(120);
    let periods: Vec<Duration> = (0..200).map(|_| ctx_rot.ctx.jittered(least)).collect();
    assert!(periods.iter().all(|p| *p >= least), "{periods:?}");
    assert!(periods.iter().any(|p| *p > least), "still jittered upwards");
}

#[test]
fn short_keys_and_kme_errors_fail_the_round_without_an_offer() {
    let t0 = Instant::now();
    let mut m = rot(Role::Master, false, 1, t0);
    m.handle(t0, Input::Tick);
    let out = m.handle(t0, key_ready("k1", 16));
    assert!(matches!(&out[..], [Action::RoundFailed { why }] if why.contains("128 bits refused")));
    let t1 = m.next_deadline().unwrap();
    assert_eq!(m.handle(t1, Input::Tick), [Action::FetchEncKey]);
    let out = m.handle(
        t1,
        Input::KeyFailed {
            key_id: None,
            why: "HTTP 503".into(),
        },
    );
    assert!(matches!(&out[..], [Action::RoundFailed { why }] if why == "kme: HTTP 503"));
    assert_eq!(m.next_deadline(), Some(t1 + Duration::from_secs(2)));
    assert_eq!(m.status().epoch, 0, "no epoch used");
}

#[test]
fn persist_failure_abandons_the_epoch() {
    let t0 = Instant::now();
    let (mut m, _) = offering(t0);
    let out = m.handle(
        t0,
        Input::PersistFailed {
            epoch: 1,
            why: "EIO".into(),
        },
    );
    assert!(matches!(&out[..], [Action::RoundFailed { .. }]));
    let t1 = m.next_deadline().unwrap();
    m.handle(t1, Input::Tick);
    let out = m.handle(t1, key_ready("k2", 32));
    assert_eq!(out[0], Action::PersistEpoch(2), "epoch 1 is never reused");
}

#[test]
fn datagrams_for_another_link_or_role_are_refused() {
    let t0 = Instant::now();
    let (mut m, offer) = offering(t0);
    let mut other = from_peer(offer.clone(), Body::Confirm { tag: [0; 32] });
    other.link_id = LinkId([8; 32]);
    assert_eq!(
        m.handle(t0, Input::Received(other)),
        [Action::AuthFailed { why: "wrong-link" }]
    );
    let as_offer = from_peer(offer.clone(), Body::Offer);
    assert_eq!(
        m.handle(t0, Input::Received(as_offer)),
        [Action::AuthFailed { why: "wrong-role" }]
    );
    let mut s = rot(Role::Slave, false, 2, t0);
    let confirm = Message {
        sender: [1; 32],
        receiver: [2; 32],
        body: Body::Confirm { tag: [0; 32] },
        ..offer.clone()
    };
    assert_eq!(
        s.handle(t0, Input::Received(confirm)),
        [Action::AuthFailed { why: "wrong-role" }]
    );
    // A CONFIRM for another nonce is stale, not a bad tag.
    let mut stale = from_peer(offer, Body::Confirm { tag: [0; 32] });
    stale.nonce[0] ^= 1;
    assert!(matches!(
        &m.handle(t0, Input::Received(stale))[..],
        [Action::Ignored { .. }]
    ));
    assert!(m.status().in_round);
}

#[test]
fn hold_stops_new_rounds() {
    let t0 = Instant::now();
    let mut m = rot(Role::Master, false, 1, t0);
    assert!(m.handle(t0, Input::Hold(true)).is_empty());
    assert_eq!(m.next_deadline(), None);
    assert!(matches!(
        &m.handle(t0, Input::RotateNow)[..],
        [Action::Ignored { .. }]
    ));
    assert!(m.status().held);
    assert_eq!(m.handle(t0, Input::Hold(false)), [Action::FetchEncKey]);
}

/// A hold that comes while the master fetches its key: the key is never
/// offered; a NACK under the hold starts no round; the hold's end does.
#[test]
fn hold_stops_the_round_before_its_offer() {
    let t0 = Instant::now();
    let mut m = rot(Role::Master, false, 1, t0);
    assert_eq!(m.handle(t0, Input::Tick), [Action::FetchEncKey]);
    assert!(matches!(
        &m.handle(t0, Input::Hold(true))[..],
        [Action::Ignored { .. }]
    ));
    let out = m.handle(t0, key_ready("k1", 32));
    assert!(matches!(&out[..], [Action::Ignored { .. }]), "{out:?}");
    assert!(!m.status().in_round);
    assert_eq!(m.status().epoch, 0, "no epoch spent");
    assert_eq!(m.handle(t0, Input::Hold(false)), [Action::FetchEncKey]);
    // An OFFER already out completes under a hold; its NACK starts nothing.
    let (mut m, offer) = offering(t0);
    assert!(m.handle(t0, Input::Hold(true)).is_empty());
    let nack = from_peer(offer, Body::Nack { last: 7 });
    assert_eq!(m.handle(t0, Input::Received(nack)), [Action::PeerRound]);
    assert!(!m.status().in_round);
    assert_eq!(m.status().epoch, 7);
    assert_eq!(m.handle(t0, Input::Hold(false)), [Action::FetchEncKey]);
}

/// A NACK of the last epoch there is: no round fetches a key it could
/// never offer (each would spend one at both KMEs).
#[test]
fn no_key_is_fetched_once_the_epochs_are_spent() {
    let t0 = Instant::now();
    let (mut m, offer) = offering(t0);
    let nack = from_peer(offer, Body::Nack { last: u64::MAX });
    let out = m.handle(t0, Input::Received(nack));
    assert!(!out.contains(&Action::FetchEncKey), "{out:?}");
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::RoundFailed { why } if why.contains("exhausted"))),
        "{out:?}"
    );
    let later = m.next_deadline().unwrap();
    let out = m.handle(later, Input::Tick);
    assert!(!out.contains(&Action::FetchEncKey), "{out:?}");
}

#[test]
fn rotate_now_during_a_round_is_ignored() {
    let t0 = Instant::now();
    let (mut m, _) = offering(t0);
    assert!(matches!(
        &m.handle(t0, Input::RotateNow)[..],
        [Action::Ignored { .. }]
    ));
    let mut s = rot(Role::Slave, false, 2, t0);
    assert!(matches!(
        &s.handle(t0, Input::RotateNow)[..],
        [Action::Ignored { .. }]
    ));
    assert_eq!(s.next_deadline(), None);
}

#[test]
fn slave_never_fetches_twice_and_nacks_stale_epochs() {
    let t0 = Instant::now();
    let (_, offer) = offering(t0);
    let mut s = rot(Role::Slave, false, 2, t0);
    s.handle(t0, Input::Received(offer.clone()));
    // Retransmit while dec_keys is in flight: nothing new.
    assert!(matches!(
        &s.handle(t0, Input::Received(offer.clone()))[..],
        [Action::Ignored { .. }]
    ));
    let failed = Input::KeyFailed {
        key_id: Some(key_id("k1")),
        why: "HTTP 503".into(),
    };
    assert!(matches!(
        &s.handle(t0, failed)[..],
        [Action::RoundFailed { .. }]
    ));
    // A retransmit of the failed round: NACK(1), and still no dec_keys.
    let out = s.handle(t0, Input::Received(offer.clone()));
    let [Action::Send(nack)] = &out[..] else {
        panic!("{out:?}");
    };
    assert_eq!(nack.body, Body::Nack { last: 1 });
    assert_eq!((nack.epoch, nack.nonce), (offer.epoch, offer.nonce));
    // Same epoch, other nonce: the master lost its state; NACK(last).
    let mut again = offer;
    again.nonce[0] ^= 1;
    let out = s.handle(t0, Input::Received(again.clone()));
    let [
        Action::AuthFailed { why: "stale-epoch" },
        Action::Send(nack),
    ] = &out[..]
    else {
        panic!("{out:?}");
    };
    assert_eq!(nack.body, Body::Nack { last: 1 });
    assert_eq!((nack.epoch, nack.nonce), (again.epoch, again.nonce));
}

#[test]
fn a_repeat_of_the_offer_in_progress_is_known_until_it_is_confirmed() {
    let t0 = Instant::now();
    let (m, offer) = offering(t0);
    // The master never takes an OFFER as its own round's.
    assert!(!m.repeats_busy_offer(&offer));
    let mut s = rot(Role::Slave, false, 2, t0);
    assert!(!s.repeats_busy_offer(&offer));
    s.handle(t0, Input::Received(offer.clone()));
    assert!(s.repeats_busy_offer(&offer), "fetching");
    // Only that OFFER: another nonce or key is a NACK's business.
    let mut other = offer.clone();
    other.nonce[0] ^= 1;
    assert!(!s.repeats_busy_offer(&other));
    let mut other = offer.clone();
    other.key_id = key_id("k2");
    assert!(!s.repeats_busy_offer(&other));
    let out = s.handle(t0, key_ready("k1", 32));
    assert!(
        matches!(&out[..], [Action::InstallPsk { epoch: 1, .. }]),
        "{out:?}"
    );
    assert!(s.repeats_busy_offer(&offer), "installing");
    assert!(matches!(
        &s.handle(t0, Input::Received(offer.clone()))[..],
        [Action::Ignored { .. }]
    ));
    let out = s.handle(t0, Input::Installed { epoch: 1 });
    assert!(out.iter().any(|a| matches!(a, Action::Send(_))), "{out:?}");
    // Confirmed: a repeat now earns the cached CONFIRM, so it is checked.
    assert!(!s.repeats_busy_offer(&offer));
    let out = s.handle(t0, Input::Received(offer.clone()));
    assert!(matches!(&out[..], [Action::Send(c)] if matches!(c.body, Body::Confirm { .. })));
}

#[test]
fn a_failed_install_is_a_failed_round_and_never_confirmed() {
    let t0 = Instant::now();
    let (mut m, offer) = offering(t0);
    let mut s = rot(Role::Slave, false, 2, t0);
    s.handle(t0, Input::Received(offer.clone()));
    let out = s.handle(t0, key_ready("k1", 32));
    assert!(matches!(out[..], [Action::InstallPsk { epoch: 1, .. }]));
    let out = s.handle(
        t0,
        Input::InstallFailed {
            epoch: 1,
            why: "no-such-peer".into(),
        },
    );
    assert!(matches!(&out[..], [Action::RoundFailed { why }] if why.contains("no-such-peer")));
    // A retransmitted OFFER gets no CONFIRM for a PSK not installed, but
    // NACK(1): the master counts the round failed and retries after its
    // backoff, not at once and not after the whole round.
    let out = s.handle(t0, Input::Received(offer.clone()));
    let [Action::Send(nack)] = &out[..] else {
        panic!("{out:?}");
    };
    assert_eq!(nack.body, Body::Nack { last: 1 });
    assert_eq!(s.status().installed, None);
    // A slave that accepted epoch 1 and restarted before it confirmed
    // answers the same.
    let mut restarted = Rotation::new(
        Role::Slave,
        params(false),
        Schedule {
            period: PERIOD,
            jitter: false,
            seed: 2,
        },
        1,
        t0,
    );
    let out = restarted.handle(t0, Input::Received(offer.clone()));
    let [Action::AuthFailed { .. }, Action::Send(restarted_nack)] = &out[..] else {
        panic!("{out:?}");
    };
    assert_eq!(restarted_nack.body, Body::Nack { last: 1 });
    let mut m2 = offering(t0).0;
    let out = m2.handle(t0, Input::Received(nack.clone()));
    assert!(
        matches!(&out[..], [Action::PeerRound, Action::RoundFailed { why }] if why.contains("epoch 1")),
        "{out:?}"
    );
    assert!(!m2.status().in_round);
    let retry = m2.next_deadline().unwrap();
    assert!(retry > t0 && retry <= t0 + MIN_BACKOFF, "{retry:?}");
    assert_eq!(m2.handle(retry, Input::Tick), [Action::FetchEncKey]);
    // The master's side: a failed install retries with a new key later.
    let mut s2 = rot(Role::Slave, false, 2, t0);
    s2.handle(t0, Input::Received(offer.clone()));
    s2.handle(t0, key_ready("k1", 32));
    let out = s2.handle(t0, Input::Installed { epoch: 1 });
    let [Action::Send(confirm), ..] = &out[..] else {
        panic!("{out:?}");
    };
    m.handle(t0, Input::Received(confirm.clone()));
    let out = m.handle(
        t0,
        Input::InstallFailed {
            epoch: 1,
            why: "mismatch".into(),
        },
    );
    assert!(matches!(&out[..], [Action::RoundFailed { .. }]));
    let st = m.status();
    assert_eq!((st.installed, st.rounds_ok, st.rounds_failed), (None, 0, 1));
    assert_eq!(m.next_deadline(), Some(t0 + MIN_BACKOFF));
}

/// The door (engine/keys/door.rs) lets replays of the current round
/// through within its budget: they must change nothing.
#[test]
fn replays_of_a_finished_round_change_nothing() {
    let t0 = Instant::now();
    let (mut m, offer) = offering(t0);
    let mut s = rot(Role::Slave, false, 2, t0);
    s.handle(t0, Input::Received(offer.clone()));
    s.handle(t0, key_ready("k1", 32));
    let out = s.handle(t0, Input::Installed { epoch: 1 });
    let [Action::Send(confirm), ..] = &out[..] else {
        panic!("{out:?}");
    };
    m.handle(t0, Input::Received(confirm.clone()));
    m.handle(t0, Input::Installed { epoch: 1 });
    let (ms, ss) = (m.status(), s.status());
    let (md, sd) = (m.next_deadline(), s.next_deadline());
    let stale = Message {
        epoch: 0,
        ..offer.clone()
    };
    for i in 0..100 {
        let t = t0 + Duration::from_millis(i);
        // The slave: the cached CONFIRM again, or a NACK; never a fetch.
        assert_eq!(
            s.handle(t, Input::Received(offer.clone())),
            [Action::Send(confirm.clone())]
        );
        let out = s.handle(t, Input::Received(stale.clone()));
        assert!(
            matches!(&out[..], [Action::AuthFailed { why: "stale-epoch" }, Action::Send(n)]
                if n.body == Body::Nack { last: 1 }),
            "{out:?}"
        );
        // The master: an answer to no OFFER in flight.
        let out = m.handle(t, Input::Received(confirm.clone()));
        assert!(matches!(&out[..], [Action::Ignored { .. }]), "{out:?}");
    }
    assert_eq!((m.status(), s.status()), (ms, ss));
    assert_eq!((m.next_deadline(), s.next_deadline()), (md, sd));
}
