//! Two qkdpfd key-agreement endpoints (master and slave) in one process, as
//! rosenpass's protocol/test.rs does: real signing, encoding and checking
//! of every datagram, a fake KME shared by both ends (single-use keys: a
//! second dec_keys of a key_ID fails), and a network the test controls
//! (drop, duplicate, delay/reorder, tamper).

use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use qkdpfd::engine::rotate::{Action, Input, Params, Role, Rotation, Schedule};
use qkdpfd::proto::peer::{self, Body, KeyId, Keyring, LinkId, Message, WireError};
use qkdpfd::secret::{Psk, QkdKey};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

const PERIOD: Duration = Duration::from_secs(300);

/// The fake KME pair: keys by key_ID, each readable once by dec_keys.
#[derive(Default)]
struct Kme {
    keys: HashMap<String, Vec<u8>>,
    issued: u64,
    dec_calls: HashMap<String, u32>,
    fail_enc: bool,
    fail_dec: bool,
    /// The slave's KME hands out a different key (the two KMEs disagree).
    corrupt_dec: bool,
}

impl Kme {
    fn enc_keys(&mut self) -> Input {
        if self.fail_enc {
            return Input::KeyFailed {
                key_id: None,
                why: "HTTP 503".into(),
            };
        }
        self.issued += 1;
        let id = format!("bc490419-7d60-487f-adc1-{:012x}", self.issued);
        let key: Vec<u8> = (0..32u8)
            .map(|i| i ^ (self.issued as u8).wrapping_mul(31))
            .collect();
        self.keys.insert(id.clone(), key.clone());
        Input::KeyReady {
            key_id: KeyId::new(&id).unwrap(),
            key: QkdKey::new(key),
        }
    }

    fn dec_keys(&mut self, id: &KeyId) -> Input {
        *self.dec_calls.entry(id.as_str().to_string()).or_default() += 1;
        let fail = |why: &str| Input::KeyFailed {
            key_id: Some(id.clone()),
            why: why.into(),
        };
        if self.fail_dec {
            return fail("HTTP 503");
        }
        match self.keys.remove(id.as_str()) {
            Some(mut k) => {
                if self.corrupt_dec {
                    k[0] ^= 1;
                }
                Input::KeyReady {
                    key_id: id.clone(),
                    key: QkdKey::new(k),
                }
            }
            None => fail("HTTP 400 key_ID unknown or already used"),
        }
    }

    fn max_dec_calls(&self) -> u32 {
        self.dec_calls.values().copied().max().unwrap_or(0)
    }
}

struct End {
    rot: Rotation,
    key: SigningKey,
    ring: Keyring,
    persisted: u64,
    psk: Option<(u64, Psk)>,
    installs: Vec<(u64, Psk)>,
    actions: Vec<Action>,
    wire_errors: Vec<WireError>,
}

impl End {
    fn auth_failed(&self) -> Vec<&'static str> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::AuthFailed { why } => Some(*why),
                _ => None,
            })
            .collect()
    }
    fn failed_rounds(&self) -> usize {
        self.actions
            .iter()
            .filter(|a| matches!(a, Action::RoundFailed { .. }))
            .count()
    }
    fn sent(&self, name: &str) -> usize {
        self.actions
            .iter()
            .filter(|a| matches!(a, Action::Send(m) if m.body.name() == name))
            .count()
    }
}

/// What the network does with one datagram.
#[derive(Clone, Copy, Debug)]
enum Fate {
    Deliver,
    Drop,
    Duplicate,
    /// Held back until time next advances (reordering).
    Delay,
    /// One byte flipped in transit.
    Tamper(usize),
}

struct Packet {
    to_slave: bool,
    bytes: Vec<u8>,
}

struct World {
    now: Instant,
    m: End,
    s: End,
    kme: Kme,
    wire: VecDeque<Packet>,
    held: Vec<Packet>,
    net: Box<dyn FnMut(&Packet) -> Fate>,
    link_id: LinkId,
}

fn link_id() -> LinkId {
    peer::link_id("SAE-HQ", "SAE-DR", &[0xa1; 32], &[0xb2; 32]).unwrap()
}

impl World {
    fn new() -> World {
        World::with(0, 0, true)
    }

    /// The first round starts at once and periods are exact.
    fn exact() -> World {
        World::with(0, 0, false)
    }

    fn with(master: u64, slave: u64, jitter: bool) -> World {
        let now = Instant::now();
        let (mk, sk) = (
            SigningKey::from_bytes(&[1; 32]),
            SigningKey::from_bytes(&[2; 32]),
        );
        let id = link_id();
        let end = |role, ours: &SigningKey, theirs: &SigningKey, epoch, seed| {
            let params = Params {
                link_id: id,
                ours: ours.verifying_key().to_bytes(),
                peer: theirs.verifying_key().to_bytes(),
            };
            let sched = Schedule {
                period: PERIOD,
                jitter,
                seed,
            };
            let mut ring = Keyring::new(&ours.verifying_key());
            ring.add_link(id, theirs.verifying_key());
            // A second link with another peer (for wrong-peer checks).
            ring.add_link(
                LinkId([0x33; 32]),
                SigningKey::from_bytes(&[3; 32]).verifying_key(),
            );
            End {
                rot: Rotation::new(role, params, sched, epoch, now),
                key: ours.clone(),
                ring,
                persisted: epoch,
                psk: None,
                installs: Vec::new(),
                actions: Vec::new(),
                wire_errors: Vec::new(),
            }
        };
        World {
            now,
            m: end(Role::Master, &mk, &sk, master, 7),
            s: end(Role::Slave, &sk, &mk, slave, 8),
            kme: Kme::default(),
            wire: VecDeque::new(),
            held: Vec::new(),
            net: Box::new(|_| Fate::Deliver),
            link_id: id,
        }
    }

    /// Feeds one input and carries out the actions in order, as the engine would.
    fn feed(&mut self, to_slave: bool, input: Input) {
        let now = self.now;
        let end = if to_slave { &mut self.s } else { &mut self.m };
        let actions = end.rot.handle(now, input);
        let mut kme_answers = Vec::new();
        for a in actions {
            match &a {
                Action::PersistEpoch(e) => {
                    assert!(*e > end.persisted, "epochs persisted must grow");
                    end.persisted = *e;
                }
                Action::Send(m) => {
                    if m.body == Body::Offer {
                        assert_eq!(
                            end.persisted, m.epoch,
                            "OFFER left before its epoch was persisted"
                        );
                    }
                    let bytes = m.encode(&end.key);
                    self.wire.push_back(Packet {
                        to_slave: !to_slave,
                        bytes,
                    });
                }
                Action::FetchEncKey => kme_answers.push(self.kme.enc_keys()),
                Action::FetchDecKey { key_id } => {
                    assert!(
                        end.persisted >= end.rot.status().epoch,
                        "dec_keys before persist"
                    );
                    kme_answers.push(self.kme.dec_keys(key_id));
                }
                Action::InstallPsk { epoch, psk } => {
                    end.psk = Some((*epoch, psk.clone()));
                    end.installs.push((*epoch, psk.clone()));
                    // The parent answers once the PSK is in the kernel.
                    kme_answers.push(Input::Installed { epoch: *epoch });
                }
                _ => {}
            }
            end.actions.push(a);
        }
        for i in kme_answers {
            self.feed(to_slave, i);
        }
    }

    /// Delivers datagrams until the network is quiet (no time passes).
    fn settle(&mut self) {
        let mut budget = 10_000;
        while let Some(mut p) = self.wire.pop_front() {
            budget -= 1;
            assert!(budget > 0, "datagram storm");
            match (self.net)(&p) {
                Fate::Drop => continue,
                Fate::Delay => {
                    self.held.push(p);
                    continue;
                }
                Fate::Duplicate => self.receive(p.to_slave, p.bytes.clone()),
                Fate::Tamper(i) => {
                    let n = i % p.bytes.len();
                    p.bytes[n] ^= 0x04;
                }
                Fate::Deliver => {}
            }
            self.receive(p.to_slave, p.bytes);
        }
    }

    fn receive(&mut self, to_slave: bool, bytes: Vec<u8>) {
        let end = if to_slave { &mut self.s } else { &mut self.m };
        match end.ring.open(&bytes) {
            Ok(m) => self.feed(to_slave, Input::Received(m)),
            Err(e) => end.wire_errors.push(e),
        }
    }

    /// Moves time forward by `d`, ticking at every deadline on the way.
    fn advance(&mut self, d: Duration) {
        let target = self.now + d;
        // Held datagrams arrive late, after newer ones.
        let held = std::mem::take(&mut self.held);
        self.wire.extend(held);
        self.settle();
        loop {
            let due = [self.m.rot.next_deadline(), self.s.rot.next_deadline()]
                .into_iter()
                .flatten()
                .min();
            match due {
                Some(t) if t <= target => {
                    self.now = self.now.max(t);
                    self.feed(false, Input::Tick);
                    self.feed(true, Input::Tick);
                    self.settle();
                }
                _ => break,
            }
        }
        self.now = target;
        self.settle();
    }

    fn same_psk(&self) -> bool {
        matches!((&self.m.psk, &self.s.psk), (Some(a), Some(b)) if a == b)
    }

    fn offer(&self, epoch: u64, key_id: &str) -> Message {
        Message {
            link_id: self.link_id,
            sender: self.m.key.verifying_key().to_bytes(),
            receiver: self.s.key.verifying_key().to_bytes(),
            epoch,
            nonce: [5; 16],
            key_id: KeyId::new(key_id).unwrap(),
            body: Body::Offer,
        }
    }
}

#[test]
fn happy_path_rounds_agree_and_change() {
    let mut w = World::new();
    let mut seen = Vec::new();
    let mut last_round = w.now;
    for round in 1..=6u64 {
        // Second by second until the next round completes.
        let mut waited = 0;
        while w.m.psk.as_ref().map(|p| p.0) != Some(round) {
            w.advance(Duration::from_secs(1));
            waited += 1;
            assert!(waited <= 331, "round {round} late");
        }
        // The first round within 10 % of the period, then period ± 10 %.
        let gap = w.now - last_round;
        last_round = w.now;
        if round == 1 {
            assert!(gap <= PERIOD / 10 + Duration::from_secs(1), "{gap:?}");
        } else {
            assert!(
                gap >= PERIOD * 9 / 10 && gap <= PERIOD * 11 / 10 + Duration::from_secs(1),
                "{gap:?}"
            );
        }
        assert!(w.same_psk(), "round {round}");
        let psk = w.m.psk.clone().unwrap().1;
        assert!(!seen.contains(&psk), "PSK repeated in round {round}");
        seen.push(psk);
    }
    assert_eq!((w.m.persisted, w.s.persisted), (6, 6));
    assert_eq!(w.kme.max_dec_calls(), 1);
    assert!(w.m.auth_failed().is_empty() && w.s.auth_failed().is_empty());
    assert!(w.m.wire_errors.is_empty() && w.s.wire_errors.is_empty());
    assert_eq!(w.m.rot.status().rounds_ok, 6);
    assert_eq!(w.s.rot.status().rounds_ok, 6);
    // Peer rounds: each end saw one fresh authenticated exchange per round.
    let rounds = |e: &End| {
        e.actions
            .iter()
            .filter(|a| **a == Action::PeerRound)
            .count()
    };
    assert_eq!((rounds(&w.m), rounds(&w.s)), (6, 6));
}

#[test]
fn rotate_now_starts_a_round_at_once() {
    let mut w = World::new();
    w.advance(PERIOD / 5);
    assert_eq!(w.m.psk.as_ref().map(|p| p.0), Some(1));
    w.feed(false, Input::RotateNow);
    w.settle();
    assert!(w.same_psk());
    assert_eq!(w.m.psk.as_ref().map(|p| p.0), Some(2));
}

#[test]
fn lost_offer_is_retransmitted_and_converges() {
    let mut w = World::exact();
    let mut dropped = 0;
    w.net = Box::new(move |p| {
        if p.to_slave && dropped < 2 {
            dropped += 1;
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    w.advance(Duration::from_secs(2)); // OFFERs at 0 s and 1 s lost
    assert!(
        w.m.psk.is_none() && w.s.psk.is_none(),
        "nothing installed while OFFERs are lost"
    );
    w.advance(Duration::from_secs(1)); // the third, at 3 s, arrives
    assert!(w.same_psk());
    assert_eq!(w.m.sent("offer"), 3);
    assert_eq!(w.kme.max_dec_calls(), 1);
    assert_eq!(w.kme.dec_calls.len(), 1);
}

#[test]
fn lost_confirm_converges_within_one_retry_interval_after_healing() {
    let mut w = World::new();
    w.advance(PERIOD / 5);
    let first = w.m.psk.clone().unwrap();
    let down = std::rc::Rc::new(std::cell::Cell::new(true));
    let d = down.clone();
    w.net = Box::new(move |p| {
        if !p.to_slave && d.get() {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    w.feed(false, Input::RotateNow);
    w.settle();
    // The slave installed epoch 2; the master is still on epoch 1.
    assert_eq!(w.s.psk.as_ref().unwrap().0, 2);
    assert_eq!(w.m.psk.as_ref().unwrap(), &first);
    w.advance(Duration::from_secs(20)); // retransmits at 1, 3, 7, 15 s: all CONFIRMs lost
    assert_eq!(w.m.psk.as_ref().unwrap(), &first);
    down.set(false);
    // The next retransmit (31 s after the first OFFER) is at most one
    // retry interval (16 s) away.
    w.advance(Duration::from_secs(11));
    assert!(w.same_psk());
    assert_eq!(w.m.psk.as_ref().unwrap().0, 2);
    assert_eq!(
        w.kme.max_dec_calls(),
        1,
        "the slave answered from its cache"
    );
    assert_eq!(w.s.installs.len(), 2);
    // Round 1, then round 2's first answer, four from the cache, one after healing.
    assert_eq!(w.s.sent("confirm"), 7);
}

#[test]
fn lost_round_leaves_both_on_the_previous_psk_then_recovers() {
    let mut w = World::new();
    w.advance(PERIOD / 5);
    let first = w.m.psk.clone();
    let down = std::rc::Rc::new(std::cell::Cell::new(true));
    let d = down.clone();
    w.net = Box::new(move |p| {
        if p.to_slave && d.get() {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    w.feed(false, Input::RotateNow);
    w.advance(PERIOD + Duration::from_secs(1));
    assert_eq!(w.m.failed_rounds(), 1, "the round was given up");
    assert_eq!((&w.m.psk, &w.s.psk), (&first, &first));
    down.set(false);
    w.advance(Duration::from_secs(2));
    assert!(w.same_psk());
    assert_eq!(
        w.m.psk.as_ref().unwrap().0,
        3,
        "epoch 2 was burnt, epoch 3 agreed"
    );
}

#[test]
fn replayed_old_offer_gets_a_nack_the_master_ignores() {
    let mut w = World::new();
    let mut recorded: Vec<Vec<u8>> = Vec::new();
    w.advance(PERIOD / 5);
    // Capture the epoch-2 OFFER on the wire.
    w.feed(false, Input::RotateNow);
    recorded.extend(
        w.wire
            .iter()
            .filter(|p| p.to_slave)
            .map(|p| p.bytes.clone()),
    );
    w.settle();
    w.advance(PERIOD + PERIOD / 10);
    assert_eq!(w.m.psk.as_ref().unwrap().0, 3);
    let before = (w.m.psk.clone(), w.s.psk.clone());
    w.wire.push_back(Packet {
        to_slave: true,
        bytes: recorded[0].clone(),
    });
    w.settle();
    assert_eq!(w.s.auth_failed(), ["stale-epoch"]);
    assert_eq!(w.s.sent("nack"), 1);
    assert_eq!((w.m.psk.clone(), w.s.psk.clone()), before);
    assert_eq!(
        w.m.rot.status().epoch,
        3,
        "a NACK for another epoch is ignored"
    );
    assert_eq!(w.kme.max_dec_calls(), 1);
}

#[test]
fn nack_makes_a_master_that_lost_its_epoch_jump() {
    let mut w = World::with(0, 41, true);
    w.advance(PERIOD / 5);
    assert_eq!(w.s.sent("nack"), 1);
    assert!(w.same_psk());
    assert_eq!(w.m.psk.as_ref().unwrap().0, 42);
    assert_eq!((w.m.persisted, w.s.persisted), (42, 42));
    // The NACKed key was never fetched by the slave.
    assert_eq!(w.kme.dec_calls.len(), 1);
}

#[test]
fn forged_and_misdirected_datagrams_are_dropped() {
    let mut w = World::new();
    w.advance(PERIOD / 5);
    let before = (w.m.psk.clone(), w.s.psk.clone());
    let mallory = SigningKey::from_bytes(&[9; 32]);
    let other_peer = SigningKey::from_bytes(&[3; 32]);
    // Master's name, Mallory's signature.
    let forged = w.offer(7, "forged-1").encode(&mallory);
    // Mallory's own (unknown) key.
    let mut m = w.offer(7, "forged-2");
    m.sender = mallory.verifying_key().to_bytes();
    let unknown = m.encode(&mallory);
    // A link the slave does not have.
    let mut m = w.offer(7, "forged-3");
    m.link_id = LinkId([0x44; 32]);
    let nolink = m.encode(&w.m.key);
    // A known peer speaking on a link that is not its own.
    let mut m = w.offer(7, "forged-4");
    m.sender = other_peer.verifying_key().to_bytes();
    let wrong_peer = m.encode(&other_peer);
    // Addressed to someone else.
    let mut m = w.offer(7, "forged-5");
    m.receiver = mallory.verifying_key().to_bytes();
    let not_us = m.encode(&w.m.key);
    for b in [forged, unknown, nolink, wrong_peer, not_us] {
        w.wire.push_back(Packet {
            to_slave: true,
            bytes: b,
        });
    }
    w.settle();
    use WireError::*;
    assert_eq!(
        w.s.wire_errors,
        [
            BadSignature,
            UnknownSender,
            UnknownLink,
            WrongPeer,
            NotForUs
        ]
    );
    assert!(w.kme.dec_calls.keys().all(|k| !k.starts_with("forged")));
    assert_eq!((w.m.psk.clone(), w.s.psk.clone()), before);
}

#[test]
fn tampered_confirm_is_dropped_and_the_retransmit_heals() {
    let mut w = World::exact();
    let mut tampered = 0;
    w.net = Box::new(move |p| {
        // Flip a bit of the tag of the first CONFIRM (offset 127 + key_ID).
        if !p.to_slave && p.bytes[5] == 2 && tampered == 0 {
            tampered += 1;
            Fate::Tamper(127 + 36 + 3)
        } else {
            Fate::Deliver
        }
    });
    w.advance(Duration::ZERO);
    assert_eq!(w.m.wire_errors, [WireError::BadSignature]);
    assert!(w.m.psk.is_none(), "no install on a tampered CONFIRM");
    w.advance(Duration::from_secs(1));
    assert!(w.same_psk());
    assert_eq!(w.kme.max_dec_calls(), 1);
}

#[test]
fn bad_tag_from_a_disagreeing_kme_is_not_installed() {
    let mut w = World::new();
    w.advance(PERIOD / 5);
    let first = w.m.psk.clone();
    w.kme.corrupt_dec = true;
    w.feed(false, Input::RotateNow);
    w.settle();
    assert_eq!(w.m.auth_failed(), ["bad-tag"]);
    assert_eq!(w.m.psk, first, "the master keeps its PSK");
    assert_eq!(w.m.failed_rounds(), 1);
    // The next round (after the 1 s retry delay) with agreeing KMEs heals it.
    w.kme.corrupt_dec = false;
    w.advance(Duration::from_secs(2));
    assert!(w.same_psk());
    assert_eq!(w.kme.max_dec_calls(), 1);
}

#[test]
fn kme_errors_keep_the_previous_psk() {
    let mut w = World::new();
    w.advance(PERIOD / 5);
    let first = w.m.psk.clone();
    w.kme.fail_enc = true;
    w.feed(false, Input::RotateNow);
    w.advance(Duration::from_secs(4)); // retries at 1 s, 2 s
    assert_eq!(w.m.failed_rounds(), 3);
    assert_eq!((&w.m.psk, &w.s.psk), (&first, &first));
    w.kme.fail_enc = false;
    w.kme.fail_dec = true;
    w.advance(PERIOD + Duration::from_secs(5));
    assert_eq!((&w.m.psk, &w.s.psk), (&first, &first));
    assert!(w.s.failed_rounds() >= 1);
    assert_eq!(w.kme.max_dec_calls(), 1, "a failed dec_keys is not retried");
    w.kme.fail_dec = false;
    w.advance(PERIOD);
    assert!(w.same_psk());
    assert_ne!(w.m.psk, first);
}

/// Faults for the first datagrams, then a perfect network.
fn fate(c: u8) -> Fate {
    match c % 8 {
        0..=2 => Fate::Deliver,
        3 | 4 => Fate::Drop,
        5 => Fate::Duplicate,
        6 => Fate::Delay,
        _ => Fate::Tamper(c as usize * 7),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn any_fault_pattern_that_heals_converges(
        faults in proptest::collection::vec(any::<u8>(), 0..40),
        steps in proptest::collection::vec(0u64..400, 1..12),
    ) {
        let mut w = World::new();
        let mut faults: VecDeque<u8> = faults.into();
        let pattern = std::rc::Rc::new(std::cell::RefCell::new(std::mem::take(&mut faults)));
        let p = pattern.clone();
        w.net = Box::new(move |_| p.borrow_mut().pop_front().map(fate).unwrap_or(Fate::Deliver));
        for s in steps {
            if s % 5 == 0 {
                w.feed(false, Input::RotateNow);
            }
            w.advance(Duration::from_secs(s));
        }
        pattern.borrow_mut().clear();
        // Heal: every held datagram arrives, then rounds run on a perfect network.
        w.advance(2 * PERIOD + Duration::from_secs(60));
        prop_assert!(w.same_psk());
        let (top, psk) = w.m.installs.last().cloned().unwrap();
        prop_assert!(w.s.installs.iter().any(|(e, p)| *e == top && *p == psk));
        for (e, p) in &w.m.installs {
            prop_assert!(w.s.installs.iter().any(|(se, sp)| se == e && sp == p), "master epoch {} unmatched", e);
        }
        prop_assert_eq!(w.kme.max_dec_calls(), 1);
    }
}
