//! Tests of the engine's own bookkeeping around its links, without the
//! parent's socket: an [`Engine`] fed its config and its inputs directly.

use super::qber::Sample;
use super::qber::poller::{PollResult, Polled};
use super::*;
use crate::conf::{QberConf, QberDriver};
use crate::imsg::{EngineLink, QberNet};
use crate::lock::Reasons;
use crate::policy::params::OnQber;

/// An engine with no sockets, and what it sends the parent.
fn engine() -> (
    Engine,
    mpsc::UnboundedReceiver<Vec<u8>>,
    mpsc::Receiver<Polled>,
) {
    let (tx, to_parent) = crate::imsg::channel(crate::imsg::MAX_QUEUED);
    let (events, _) = broadcast::channel(16);
    let (polls_tx, polls) = mpsc::channel(16);
    let (answers, _) = mpsc::unbounded_channel();
    let keys = keys::Keys::new(tx.clone(), answers, peering::Peering::default());
    (Engine::new(tx, events, polls_tx, keys), to_parent, polls)
}

/// Link `dr` read from section `qber`, an http-json source per link on a
/// loopback port nothing answers on.
fn reading_from(qber: &str, port: u16) -> EngineConfig {
    let mut cfg = EngineConfig::empty();
    cfg.links.push(EngineLink {
        name: "dr".into(),
        qber: qber.into(),
        qber_id: "dr".into(),
        persisted: Default::default(),
        keys: None,
    });
    let conf = QberConf {
        url: Some(format!("http://127.0.0.1:{port}/{{qber_id}}")),
        poll: Duration::from_secs(60),
        pointer: Some("/v".into()),
        ..QberConf::of(QberDriver::HttpJson)
    };
    cfg.qber.insert(qber.into(), conf);
    let net = QberNet {
        ca: None,
        cert: None,
        key: None,
        addr: None,
    };
    cfg.qber_net.insert(qber.into(), net);
    cfg
}

/// Policy serial 1 with `lp` for link `dr`, as the parent sends it.
fn set_policy(eng: &mut Engine, lp: crate::policy::params::LinkPolicy) {
    let policy = crate::imsg::ActivePolicy {
        serial: 1,
        not_after: None,
        expiry_warning: 0,
        signer: "test".into(),
        links: [("dr".to_string(), lp)].into_iter().collect(),
    };
    eng.dispatch_parent(ToEngine::Policy(Some(policy))).unwrap();
}

/// The simulator of link `dr` intercepts-and-resends `fraction` of its
/// photons from its next reading on.
fn eavesdropper(eng: &mut Engine, fraction: f64) {
    let slot = eng.links.get_mut("dr").unwrap();
    let source = slot.source.as_mut().unwrap();
    source
        .control(super::qber::SimControl::Eve(fraction))
        .unwrap();
}

fn reading(poller: u64, qber: f64, seq: u64) -> PollResult {
    PollResult {
        link: "dr".into(),
        result: Ok(Sample { qber, seq }),
        sampled_ns: 1,
        whole: false,
        poller,
    }
}

/// A reading the replaced source's poller left queued is not the new
/// source's: taken, its sequence number (1,000,000 here) would make the
/// new source's readings (from 5) stale until they passed it. The new
/// source's first reading is its baseline (a stalled agent's repeat must
/// not count once as fresh); the next one counts.
#[tokio::test]
async fn a_reload_drops_the_replaced_sources_queued_reading() {
    let (mut eng, _to_parent, _polls) = engine();
    let now = Instant::now();
    eng.configure(reading_from("a", 9), now).unwrap();
    let old = eng.links.get("dr").unwrap().reads_from;
    eng.configure(reading_from("b", 10), now).unwrap();
    let new = eng.links.get("dr").unwrap().reads_from;
    assert_ne!(old, new);
    eng.on_poll(reading(old, 0.04, 1_000_000), now);
    eng.on_poll(reading(new, 0.03, 5), now);
    let qber = |eng: &Engine| eng.links.get("dr").unwrap().link.status(now).qber;
    assert_eq!(
        qber(&eng),
        None,
        "a reopened source's first reading counted"
    );
    eng.on_poll(reading(new, 0.03, 5), now);
    assert_eq!(qber(&eng), None, "a repeat counted");
    eng.on_poll(reading(new, 0.02, 6), now);
    assert_eq!(qber(&eng), Some(0.02));
    // The same source kept across a reload keeps its poller and serial.
    eng.configure(reading_from("b", 10), now).unwrap();
    assert_eq!(eng.links.get("dr").unwrap().reads_from, new);
}

/// A section's shared poller restarted for a new link gives its new serial
/// to the links it kept: the old poller's queued reading is dropped, the
/// new one's taken.
#[tokio::test]
async fn a_restarted_shared_poller_is_the_one_its_kept_links_read() {
    let (mut eng, _to_parent, _polls) = engine();
    let now = Instant::now();
    let mut cfg = reading_from("a", 9);
    let url = cfg.qber.get_mut("a").unwrap().url.as_mut().unwrap();
    *url = url.replace("{qber_id}", "all");
    eng.configure(cfg.clone(), now).unwrap();
    let old = eng.links.get("dr").unwrap().reads_from;
    assert_eq!(eng.shared["a"].serial, old);
    // The first reading after a start only sets the high mark.
    eng.on_poll(reading(old, 0.01, 8), now);
    let mut second = cfg.links[0].clone();
    second.name = "dr2".into();
    second.qber_id = "dr2".into();
    cfg.links.push(second);
    eng.configure(cfg, now).unwrap();
    let new = eng.shared["a"].serial;
    assert_ne!(old, new);
    assert_eq!(eng.links.get("dr").unwrap().reads_from, new);
    assert_eq!(eng.links.get("dr2").unwrap().reads_from, new);
    eng.on_poll(reading(old, 0.04, 9), now);
    let status = eng.links.get("dr").unwrap().link.status(now);
    assert_eq!(status.qber, None);
    eng.on_poll(reading(new, 0.02, 10), now);
    let status = eng.links.get("dr").unwrap().link.status(now);
    assert_eq!(status.qber, Some(0.02));
}

/// What the engine said to the parent about `link`'s reasons, last.
fn said_reasons(to_parent: &mut mpsc::UnboundedReceiver<Vec<u8>>, link: &str) -> Option<Reasons> {
    let mut last = None;
    while let Ok(f) = to_parent.try_recv() {
        let h: [u8; imsg::HEADER_LEN] = f[..imsg::HEADER_LEN].try_into().unwrap();
        let (_, code) = imsg::parse_header(&h).unwrap();
        if let Ok(ToParent::Reasons(r)) = ToParent::decode(code, &f[imsg::HEADER_LEN..]) {
            if r.link == link {
                last = Some(r.reasons);
            }
        }
    }
    last
}

/// A reload to a source that cannot be opened locks the link for
/// `source-lost` and keeps its QBER trip: said to the parent (which keeps
/// it on disk), so a later config that opens the source starts from it.
#[tokio::test]
async fn a_source_that_cannot_open_keeps_the_links_trip() {
    let (mut eng, mut to_parent, _polls) = engine();
    let now = Instant::now();
    let mut cfg = reading_from("a", 9);
    cfg.links[0].persisted = [LockReason::Qber].into_iter().collect();
    eng.configure(cfg, now).unwrap();
    assert!(
        eng.links
            .get("dr")
            .unwrap()
            .link
            .reasons()
            .contains(LockReason::Qber)
    );
    // Section b has no TLS settings from the parent: it cannot open.
    let mut cfg = reading_from("b", 10);
    cfg.qber_net.clear();
    eng.configure(cfg, now).unwrap();
    assert!(
        eng.links.get("dr").is_none(),
        "an unwatched link is not run"
    );
    let said = said_reasons(&mut to_parent, "dr").expect("reasons said");
    assert!(said.contains(LockReason::SourceLost), "{said:?}");
    assert!(
        said.contains(LockReason::Qber),
        "the trip was dropped: {said:?}"
    );
}

/// New TLS material or a new address for the same section (a certificate
/// renewed at the same path, a moved host) opens its poller again; the
/// same material keeps it.
#[tokio::test]
async fn renewed_tls_material_opens_the_source_again() {
    let (mut eng, _to_parent, _polls) = engine();
    let now = Instant::now();
    let cfg = reading_from("a", 9);
    eng.configure(cfg.clone(), now).unwrap();
    let first = eng.links.get("dr").unwrap().reads_from;
    eng.configure(cfg.clone(), now).unwrap();
    assert_eq!(eng.links.get("dr").unwrap().reads_from, first);
    let mut renewed = cfg.clone();
    renewed.qber_net.get_mut("a").unwrap().addr = Some("127.0.0.1:9".parse().unwrap());
    eng.configure(renewed, now).unwrap();
    let second = eng.links.get("dr").unwrap().reads_from;
    assert_ne!(second, first, "the poller kept its old address");
    // The same for a shared document's poller.
    let mut shared = cfg;
    let url = shared.qber.get_mut("a").unwrap().url.as_mut().unwrap();
    *url = url.replace("{qber_id}", "all");
    eng.configure(shared.clone(), now).unwrap();
    let before = eng.shared["a"].serial;
    eng.configure(shared.clone(), now).unwrap();
    assert_eq!(eng.shared["a"].serial, before);
    shared.qber_net.get_mut("a").unwrap().cert = Some(b"renewed".to_vec());
    eng.configure(shared, now).unwrap();
    assert_ne!(eng.shared["a"].serial, before);
}

/// Link `dr` on the built-in simulator, keyed with role `role` against a
/// KME nothing answers for (the test never lets a round reach it).
fn keyed(role: crate::conf::Role, pki: &std::path::Path) -> EngineConfig {
    use crate::imsg::{KmeNet, LinkKeys, PeeringNet};
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    crate::sim::pki::create(pki, &names(&["a"]), &names(&["SAE-A"]), &[]).unwrap();
    let read = |f: &str| std::fs::read(pki.join(f)).unwrap();
    let mut cfg = EngineConfig::empty();
    cfg.peering = Some(PeeringNet {
        secret: zeroize::Zeroizing::new([7; 32]),
    });
    cfg.kme.insert(
        "site".into(),
        KmeNet {
            url: "https://127.0.0.1:9".into(),
            sae_id: "SAE-A".into(),
            ca: read("ca.pem"),
            cert: read("sae-SAE-A.pem"),
            key: zeroize::Zeroizing::new(read("sae-SAE-A.key")),
            addr: "127.0.0.1:9".parse().unwrap(),
            get: false,
            keys_low: 0,
        },
    );
    let far = ed25519_dalek::SigningKey::from_bytes(&[8; 32]).verifying_key();
    cfg.links.push(EngineLink {
        name: "dr".into(),
        qber: "sim".into(),
        qber_id: "dr".into(),
        persisted: Default::default(),
        keys: Some(LinkKeys {
            kme: "site".into(),
            peer_sae_id: "SAE-B".into(),
            role,
            peer: "127.0.0.1:8071".parse().unwrap(),
            peer_pubkey: far.to_bytes(),
            link_id: [1; 32],
            epoch: 0,
            key_age_secs: None,
        }),
    });
    cfg.qber.insert("sim".into(), QberConf::of(QberDriver::Sim));
    cfg
}

/// A master that has just started waits for its link's QBER before its
/// first round (a hold trip does not survive a restart: the key of a round
/// started blind may come from the incident); the slave, which starts no
/// round, does not wait.
#[tokio::test]
async fn a_masters_first_round_waits_for_the_links_qber() {
    let pki = tempfile::tempdir().unwrap();
    let (mut eng, _to_parent, _polls) = engine();
    let now = Instant::now();
    eng.configure(keyed(crate::conf::Role::Master, pki.path()), now)
        .unwrap();
    assert_eq!(
        eng.keys.rounds_held("dr"),
        Some(true),
        "the first round went ahead blind"
    );
    // The simulator's first reading sets the high mark; the next is
    // known, and low.
    eng.tick_link("dr".into(), now);
    assert!(!eng.links.get("dr").unwrap().link.determined());
    assert_eq!(eng.keys.rounds_held("dr"), Some(true));
    eng.tick_link("dr".into(), now + Duration::from_secs(1));
    assert!(eng.links.get("dr").unwrap().link.determined());
    assert_eq!(eng.keys.rounds_held("dr"), Some(false));
    // A reload changes nothing for a link whose QBER is known.
    eng.configure(keyed(crate::conf::Role::Master, pki.path()), now)
        .unwrap();
    assert_eq!(eng.keys.rounds_held("dr"), Some(false));

    let (mut eng, _to_parent, _polls) = engine();
    eng.configure(keyed(crate::conf::Role::Slave, pki.path()), now)
        .unwrap();
    assert_eq!(eng.keys.rounds_held("dr"), Some(false));
}

/// A high first reading is no all-clear: the master waits while the
/// trailing readings are at or above the lockdown threshold (the trip they
/// may form needs trip_samples of them), and rotates once they are not.
#[tokio::test]
async fn a_high_first_reading_keeps_the_master_waiting() {
    use crate::policy::params::LinkPolicy;
    let pki = tempfile::tempdir().unwrap();
    let (mut eng, _to_parent, _polls) = engine();
    let now = Instant::now();
    eng.configure(keyed(crate::conf::Role::Master, pki.path()), now)
        .unwrap();
    set_policy(&mut eng, LinkPolicy::DEFAULT);
    eavesdropper(&mut eng, 1.0);
    let mut t = now;
    eng.tick_link("dr".into(), t);
    t += Duration::from_secs(1);
    eng.tick_link("dr".into(), t);
    assert!(eng.links.get("dr").unwrap().link.determined());
    assert_eq!(
        eng.keys.rounds_held("dr"),
        Some(true),
        "released on a high reading"
    );
    // Readings low again: once none of the trailing ones is high, it rotates.
    eavesdropper(&mut eng, 0.0);
    for _ in 0..=LinkPolicy::DEFAULT.trip_samples {
        t += Duration::from_secs(1);
        eng.tick_link("dr".into(), t);
    }
    assert_eq!(eng.keys.rounds_held("dr"), Some(false));
}

/// A slave whose rotation a hold trip held, then whose source could not be
/// opened on a reload (the engine stops running the link, the trip is
/// kept on disk by the parent), then opened again without a trip: its
/// rotation is not left held for good (it would ignore every OFFER).
#[tokio::test]
async fn a_link_watched_again_without_a_trip_rotates_again() {
    use crate::policy::params::LinkPolicy;
    let pki = tempfile::tempdir().unwrap();
    let (mut eng, _to_parent, _polls) = engine();
    let now = Instant::now();
    let cfg = keyed(crate::conf::Role::Slave, pki.path());
    eng.configure(cfg.clone(), now).unwrap();
    let hold = LinkPolicy {
        on_qber: OnQber::Hold,
        ..LinkPolicy::DEFAULT
    };
    set_policy(&mut eng, hold);
    eavesdropper(&mut eng, 1.0);
    let mut t = now;
    eng.tick_link("dr".into(), t);
    for _ in 0..LinkPolicy::DEFAULT.trip_samples {
        t += Duration::from_secs(1);
        eng.tick_link("dr".into(), t);
    }
    assert_eq!(eng.keys.rounds_held("dr"), Some(true), "no hold trip");
    // A source that cannot open (no TLS settings from the parent).
    let mut unwatched = cfg.clone();
    let mut net = reading_from("net", 9);
    unwatched.links[0].qber = "net".into();
    unwatched.qber.append(&mut net.qber);
    eng.configure(unwatched, t).unwrap();
    assert!(eng.links.get("dr").is_none());
    // Watched again, its trip gone with the state machine.
    eng.configure(cfg, t).unwrap();
    assert_eq!(eng.keys.rounds_held("dr"), Some(false));
}
