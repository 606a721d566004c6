//! Key agreement in the engine (DESIGN §6): the round driver. One
//! [`Rotation`] per keyed link, the KME calls (`calls.rs`: one ETSI 014
//! client per `[kme.X]`, a bounded queue of calls per KME), and the
//! peering socket ([`Peering`]: signing, the keyring and the door that
//! check every datagram before a rotation sees it, the auth log).
//!
//! The rotations are pure; this file carries out their actions **in
//! order**. An action that needs the parent — persisting an epoch,
//! installing a PSK — suspends that link's queue until the parent's
//! [`KeyAck`] arrives: nothing after a `PersistEpoch` happens before the
//! epoch is durable, no OFFER of an epoch not durable ever leaves (not
//! even a retransmit queued behind a persist that then failed), and the
//! slave's CONFIRM leaves only once its PSK is in the kernel. KME calls run as tasks whose answers come back as inputs.
//! The engine's main loop owns this; nothing here blocks.
//!
//! What it tells the link state machine ([`link::Input::KeyInstalled`],
//! [`link::Input::PeerRound`]) is returned to the caller, which owns the
//! links.

mod calls;
mod timing;

pub use calls::KmeAnswer;

use crate::engine::deadlines::{Deadlines, Registered};
use crate::engine::link;
use crate::engine::peering::{Datagram, Gate, Peering};
use crate::engine::rotate::{self, Action, Input, Params, Rotation, Schedule};
use crate::engine::table::LinkTable;
use crate::imsg::{self, EngineConfig, KeyAck, KeyStep, LinkKeys, ToParent};
use crate::log::{self, Event};
use crate::names::Names;
use crate::proto::peer::{Body, ByLink, LinkId};
use crate::secret::{Fingerprint, Psk};
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use timing::{RoundTiming, Step};
use tokio::sync::mpsc;

/// What `qkdctl show link` and the metrics show of a keyed link.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyView {
    pub status: rotate::RotateStatus,
    pub psk_fingerprint: Option<String>,
    pub key_age: Option<Duration>,
    pub stored_key_count: Option<u64>,
    /// The KME's `keys_low` (`[kme.X]`): a stock below it is low.
    pub keys_low: Option<u64>,
    /// Times fresh keys stopped (a QBER hold or key-stale) since start.
    pub halted: u64,
}

/// Where a keyed link's KME calls and datagrams go: what of its
/// [`LinkKeys`] its rotation's [`Params`] does not already hold. The
/// names are shared by the links that have the same (a hub's links mostly
/// have one KME and few far SAEs).
#[derive(PartialEq)]
struct Route {
    kme: Arc<str>,
    peer_sae_id: Arc<str>,
    role: rotate::Role,
    /// The far qkdpfd (masters send there; slaves answer each datagram's source).
    peer: SocketAddr,
}

impl Route {
    /// `names`: the KME and SAE names made during this configure.
    fn of(k: &LinkKeys, names: &mut Names) -> Route {
        Route {
            kme: names.of(&k.kme),
            peer_sae_id: names.of(&k.peer_sae_id),
            role: k.role,
            peer: k.peer,
        }
    }
}

struct KeyedLink {
    route: Route,
    rot: Rotation,
    /// What the door checks this link's datagrams against.
    gate: Gate,
    /// Batches of actions not yet carried out, oldest first.
    queue: VecDeque<VecDeque<Action>>,
    /// The parent request the queue waits for.
    waiting: Option<(KeyStep, u64)>,
    /// The highest epoch the parent made durable (at start, the persisted
    /// one). No OFFER of a later epoch leaves (DESIGN §6): a retransmit
    /// queued while a persist was pending is in a later batch than the
    /// persist, and outlives that batch when the persist fails.
    durable: u64,
    /// Where a slave sends a CONFIRM that waited for the parent: the
    /// source of the OFFER it answers.
    reply_to: Option<SocketAddr>,
    /// Fingerprint of the PSK sent to the parent, shown once installed.
    pending_fp: Option<Fingerprint>,
    fingerprint: Option<Fingerprint>,
    installed_at: Option<Instant>,
    halted: u64,
    /// Where this round's time went, for the debug `event=round` line.
    timing: RoundTiming,
    /// Its entry in [`Keys::due`].
    due_at: Registered,
}

impl KeyedLink {
    /// A link reached by `route`, rotating with `rot`, whose epoch
    /// `durable` is the one persisted: no round under way.
    fn new(route: Route, rot: Rotation, durable: u64) -> KeyedLink {
        KeyedLink {
            route,
            rot,
            gate: Gate::default(),
            queue: VecDeque::new(),
            waiting: None,
            durable,
            reply_to: None,
            pending_fp: None,
            fingerprint: None,
            installed_at: None,
            halted: 0,
            timing: RoundTiming::default(),
            due_at: Registered::default(),
        }
    }

    /// Drops the oldest batch; an emptied queue gives its buffer back (a
    /// link is idle between rounds nearly all the time: at 10,000 links
    /// the buffers kept were 1.3 MB).
    fn batch_done(&mut self) {
        self.queue.pop_front();
        if self.queue.is_empty() {
            self.queue = VecDeque::new();
        }
    }
}

/// Every keyed link of the engine.
pub struct Keys {
    /// The peering sockets, keys and logs.
    peer: Peering,
    calls: calls::Calls,
    links: LinkTable<KeyedLink>,
    /// When each rotation is next due, sorted (kept by [`Keys::feed`]).
    due: Deadlines,
    by_id: ByLink<Arc<str>>,
    parent: crate::imsg::Sender,
    /// Source of the datagram being handled (answers go there: NAT-friendly).
    current_from: Option<SocketAddr>,
    no_jitter: bool,
    rotate_override: Option<Duration>,
}

impl Keys {
    pub fn new(
        parent: crate::imsg::Sender,
        answers: mpsc::UnboundedSender<KmeAnswer>,
        peer: Peering,
    ) -> Keys {
        Keys {
            peer,
            calls: calls::Calls::new(answers),
            links: Default::default(),
            due: Deadlines::default(),
            by_id: ByLink::default(),
            parent,
            current_from: None,
            no_jitter: false,
            rotate_override: None,
        }
    }

    pub fn is_keyed(&self, link: &str) -> bool {
        self.links.contains_key(link)
    }

    /// (Re)builds KME clients and rotations from the parent's config. A
    /// link whose settings did not change keeps its rotation (and round).
    /// `period_of` gives each link's policy `rotate`.
    pub fn configure(
        &mut self,
        cfg: &EngineConfig,
        name_of: impl Fn(&str) -> Arc<str>,
        period_of: impl Fn(&str) -> Option<Duration>,
        now: Instant,
    ) -> Result<(), String> {
        self.no_jitter = cfg.testing.no_jitter;
        self.rotate_override = cfg.testing.rotate;
        self.peer.configure(cfg);
        self.calls.configure(&cfg.kme)?;
        let mut old = std::mem::take(&mut self.links).into_map();
        let mut rows: Vec<(Arc<str>, KeyedLink)> = Vec::with_capacity(cfg.links.len());
        let mut names = Names::default();
        // In id order: each link then lands at the end of the maps by id.
        let mut keyed: Vec<_> = (cfg.links.iter())
            .filter_map(|l| Some((l, l.keys.as_ref()?)))
            .collect();
        keyed.sort_unstable_by_key(|(_, k)| k.link_id);
        self.by_id = ByLink::default();
        self.by_id.reserve_exact(keyed.len());
        self.peer.reserve_links(keyed.len());
        for (l, k) in keyed {
            let Some(ours) = self.peer.ours() else {
                return Err(format!("link {} is keyed but [peering] is missing", l.name));
            };
            if !self.calls.knows(&k.kme) {
                return Err(format!("link {} names unknown kme {}", l.name, k.kme));
            }
            self.peer
                .add_link(LinkId(k.link_id), &k.peer_pubkey)
                .map_err(|e| format!("link {}: {e}", l.name))?;
            let name = name_of(&l.name);
            self.by_id.insert(LinkId(k.link_id), name.clone());
            // A reload may bring a new `[peering] key`: then the rotation
            // is made anew. The persisted epoch is the rotation's own.
            let params = Params {
                link_id: LinkId(k.link_id),
                ours,
                peer: k.peer_pubkey,
            };
            let route = Route::of(k, &mut names);
            let keyed = match old.remove(l.name.as_str()) {
                Some(o) if o.route == route && *o.rot.params() == params => o,
                _ => {
                    let period = self.period(period_of(&l.name));
                    let schedule = Schedule {
                        period,
                        jitter: !self.no_jitter,
                        seed: rand::random(),
                    };
                    let rot = Rotation::new(k.role, params, schedule, k.epoch, now);
                    KeyedLink::new(route, rot, k.epoch)
                }
            };
            rows.push((name, keyed));
        }
        self.links = rows.into_iter().collect();
        self.index_deadlines();
        Ok(())
    }

    /// Every link's next deadline indexed anew (after `links` changed).
    fn index_deadlines(&mut self) {
        let due = self.links.iter_mut().map(|(n, l)| {
            let next = l.rot.next_deadline();
            (n, &mut l.due_at, next)
        });
        self.due.rebuild(due);
    }

    fn period(&self, policy: Option<Duration>) -> Duration {
        self.rotate_override
            .or(policy)
            .unwrap_or(crate::policy::params::LinkPolicy::DEFAULT.rotate)
    }

    /// The policy changed: new periods apply from the next round.
    pub fn set_periods(&mut self, period_of: impl Fn(&str) -> Option<Duration>) {
        let names: Vec<String> = self.links.keys().map(String::from).collect();
        for n in names {
            let p = self.period(period_of(&n));
            self.links.get_mut(&n).expect("known").rot.set_period(p);
        }
    }

    /// Logs the flood counts no later event carried (DESIGN §8).
    pub fn log_overdue(&mut self, now: Instant) {
        self.peer.log_overdue(now);
    }

    /// Gives back what a burst of rounds grew (see [`calls::Calls::shrink`]).
    pub fn shrink(&mut self) {
        self.calls.shrink();
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        let next = self.due.next();
        // Every test run checks the index against a walk over the links.
        debug_assert_eq!(
            next,
            self.links
                .values()
                .filter_map(|l| l.rot.next_deadline())
                .min()
        );
        next
    }

    /// Ticks every rotation whose deadline passed.
    pub fn tick(&mut self, now: Instant) -> Vec<(String, link::Input)> {
        let mut out = Vec::new();
        for n in self.due.due(now) {
            self.feed(&n, Input::Tick, now, &mut out);
        }
        out
    }

    /// `qkdctl rotate`: start a round on each named link.
    pub fn rotate_now(&mut self, names: &[String], now: Instant) -> Vec<(String, link::Input)> {
        let mut out = Vec::new();
        for n in names {
            self.feed(n, Input::RotateNow, now, &mut out);
        }
        out
    }

    /// Fresh keys stopped on a link (`key-stale`), for the metrics.
    pub fn halted(&mut self, name: &str) {
        if let Some(l) = self.links.get_mut(name) {
            l.halted += 1;
        }
    }

    /// `on_qber = "hold"` started or ended on a link.
    pub fn hold(&mut self, name: &str, on: bool, now: Instant) -> Vec<(String, link::Input)> {
        if on {
            self.halted(name);
        }
        self.hold_rounds(name, on, now)
    }

    /// Holds or resumes `name`'s rounds, uncounted: a master's first round
    /// waits until its link's QBER is known (the engine's `waits_for_qber`).
    pub fn hold_rounds(
        &mut self,
        name: &str,
        on: bool,
        now: Instant,
    ) -> Vec<(String, link::Input)> {
        let mut out = Vec::new();
        self.feed(name, Input::Hold(on), now, &mut out);
        out
    }

    /// Whether `name`'s rounds are held now; None for a link without keys.
    pub fn rounds_held(&self, name: &str) -> Option<bool> {
        self.links.get(name).map(|l| l.rot.held())
    }

    pub fn on_kme(&mut self, a: KmeAnswer, now: Instant) -> Vec<(String, link::Input)> {
        let mut out = Vec::new();
        // An answer to a request a newer round replaced is dropped.
        if let Some((link, input)) = self.calls.answered(a) {
            if let Some(l) = self.links.get_mut(&link) {
                l.timing.end(Step::Kme);
            }
            self.feed(&link, input, now, &mut out);
        }
        out
    }

    /// A datagram from the socket, once [`Peering::open`] passed it (the
    /// keyring, the link's door, the signature).
    pub fn on_datagram(&mut self, d: Datagram, now: Instant) -> Vec<(String, link::Input)> {
        let mut out = Vec::new();
        let (by_id, links) = (&self.by_id, &mut self.links);
        let from = d.from.ip();
        let opened = self.peer.open(&d, now, |claims| {
            let name = by_id.get(&claims.link_id)?;
            let l = links.get_mut(name)?;
            let route = (l.route.peer.ip(), l.route.role);
            let rot = (l.rot.epoch(), l.rot.repeats_busy_offer(claims));
            let verdict = l.gate.check(route, from, claims, rot, now);
            Some((&**name, verdict))
        });
        let Some((name, msg)) = opened else {
            return out;
        };
        let name = name.to_string();
        self.current_from = Some(d.from);
        self.feed(&name, Input::Received(msg), now, &mut out);
        self.current_from = None;
        out
    }

    /// The parent's answer to a PersistEpoch or InstallPsk.
    pub fn on_ack(
        &mut self,
        a: KeyAck,
        now: Instant,
    ) -> Result<Vec<(String, link::Input)>, String> {
        let mut out = Vec::new();
        // An answer nobody waits for (a link reconfigured meanwhile) changes
        // nothing; the round it belonged to times out and retries.
        let Some(l) = self.links.get_mut(&a.link) else {
            log::warn(format!("peer: key answer for unknown link {:?}", a.link));
            return Ok(out);
        };
        if l.waiting != Some((a.step, a.epoch)) {
            log::warn(format!("peer: unexpected key answer for link {}", a.link));
            return Ok(out);
        }
        l.waiting = None;
        l.timing.end(match a.step {
            KeyStep::Persist => Step::Persist,
            KeyStep::Install => Step::Install,
        });
        let input = match (a.step, a.error) {
            (KeyStep::Persist, None) => {
                l.durable = l.durable.max(a.epoch);
                self.drain(&a.link, now, &mut out);
                return Ok(out);
            }
            (KeyStep::Persist, Some(why)) => {
                // The rest of the batch must not happen without the epoch.
                l.batch_done();
                Input::PersistFailed {
                    epoch: a.epoch,
                    why,
                }
            }
            (KeyStep::Install, None) => {
                l.fingerprint = l.pending_fp.take();
                l.installed_at = Some(now);
                Input::Installed { epoch: a.epoch }
            }
            (KeyStep::Install, Some(why)) => {
                l.pending_fp = None;
                Input::InstallFailed {
                    epoch: a.epoch,
                    why,
                }
            }
        };
        self.feed(&a.link, input, now, &mut out);
        Ok(out)
    }

    pub fn view(&self, name: &str, now: Instant) -> Option<KeyView> {
        let l = self.links.get(name)?;
        Some(KeyView {
            status: l.rot.status(),
            psk_fingerprint: l.fingerprint.map(|f| f.to_string()),
            key_age: l.installed_at.map(|t| now.saturating_duration_since(t)),
            stored_key_count: self
                .calls
                .stored_key_count(&l.route.kme, &l.route.peer_sae_id),
            keys_low: self.calls.keys_low(&l.route.kme),
            halted: l.halted,
        })
    }

    /// Runs one input through a link's rotation and carries out what it can.
    fn feed(
        &mut self,
        name: &str,
        input: Input,
        now: Instant,
        out: &mut Vec<(String, link::Input)>,
    ) {
        let Some(l) = self.links.get_mut(name) else {
            return;
        };
        let actions = l.rot.handle(now, input);
        let next = l.rot.next_deadline();
        self.due.set(name, &mut l.due_at, next);
        if !actions.is_empty() {
            l.queue.push_back(actions.into());
        }
        self.drain(name, now, out);
    }

    /// Carries out queued actions in order until one must wait for the parent.
    fn drain(&mut self, name: &str, now: Instant, out: &mut Vec<(String, link::Input)>) {
        loop {
            let Some(l) = self.links.get_mut(name) else {
                return;
            };
            if l.waiting.is_some() {
                return;
            }
            let Some(batch) = l.queue.front_mut() else {
                return;
            };
            let Some(action) = batch.pop_front() else {
                l.batch_done();
                continue;
            };
            self.carry_out(name, action, now, out);
        }
    }

    fn carry_out(
        &mut self,
        name: &str,
        action: Action,
        now: Instant,
        out: &mut Vec<(String, link::Input)>,
    ) {
        let l = self.links.get_mut(name).expect("known");
        match action {
            Action::PersistEpoch(epoch) => {
                // The slave's round starts here, with the OFFER.
                if l.timing.started() {
                    l.timing.begin(Step::Persist);
                } else {
                    l.timing.start(Step::Persist);
                }
                l.waiting = Some((KeyStep::Persist, epoch));
                let m = imsg::PersistEpoch {
                    link: name.to_string(),
                    epoch,
                };
                let _ = self.parent.send(ToParent::PersistEpoch(m).encode());
            }
            Action::InstallPsk { epoch, psk } => {
                l.gate.settled();
                l.timing.begin(Step::Install);
                l.waiting = Some((KeyStep::Install, epoch));
                l.pending_fp = Some(psk.fingerprint());
                send_install(&self.parent, name, epoch, &psk);
            }
            Action::FetchEncKey => {
                l.gate.settled();
                l.timing.start(Step::Kme);
                self.calls
                    .request(name, &l.route.kme, &l.route.peer_sae_id, None);
            }
            Action::FetchDecKey { key_id } => {
                l.timing.begin(Step::Kme);
                self.calls
                    .request(name, &l.route.kme, &l.route.peer_sae_id, Some(key_id));
            }
            Action::Send(m) if m.body == Body::Offer && m.epoch > l.durable => {
                log::debug(format!(
                    "peer: {name}: no offer for epoch {}: not persisted",
                    m.epoch
                ));
            }
            Action::Send(m) => {
                let dest = match l.route.role {
                    rotate::Role::Master => l.route.peer,
                    rotate::Role::Slave => self.current_from.or(l.reply_to).unwrap_or(l.route.peer),
                };
                l.gate.sent(&m);
                self.peer.send(&m, dest);
            }
            Action::RoundDone {
                epoch,
                key_id,
                fetched,
            } => {
                log::event(Event::KeyRotated)
                    .kv("link", name)
                    .kv("epoch", epoch)
                    .kv("key_id", key_id.as_str())
                    .kv(
                        "psk_fp",
                        l.fingerprint.map_or("-".into(), |f| f.to_string()),
                    )
                    .send();
                if let Some(t) = l.timing.finish() {
                    let master = l.route.role == rotate::Role::Master;
                    let r = log::event(Event::Round)
                        .kv("link", name)
                        .kv("epoch", epoch)
                        .kv("role", if master { "master" } else { "slave" })
                        .kv("kme_us", t.kme_us)
                        .kv("persist_us", t.persist_us)
                        .kv("install_us", t.install_us);
                    // The master installs after the slave's CONFIRM, so its
                    // install answer (now) is the later of the two.
                    if master {
                        r.kv("peer_us", t.other_us)
                            .kv("enc_keys_to_installed_us", t.total_us)
                            .send();
                    } else {
                        r.kv("offer_to_installed_us", t.total_us).send();
                    }
                }
                out.push((name.to_string(), link::Input::KeyInstalled { fetched }));
            }
            Action::RoundFailed { why } => {
                l.gate.settled();
                l.timing.reset();
                log::event(Event::KeyRotationFailed)
                    .kv("link", name)
                    .kv("reason", reason_word(&why))
                    .msg(why)
                    .send();
            }
            Action::PeerRound => {
                if self.current_from.is_some() {
                    l.reply_to = self.current_from;
                }
                out.push((name.to_string(), link::Input::PeerRound))
            }
            Action::AuthFailed { why } => {
                let from = self.current_from.map(|a| a.ip());
                self.peer
                    .auth_failed(from.unwrap_or(IpAddr::from([0, 0, 0, 0])), name, why, now);
            }
            Action::Ignored { why } => log::debug(format!("peer: {name}: {why}")),
        }
    }
}

fn send_install(parent: &crate::imsg::Sender, link: &str, epoch: u64, psk: &Psk) {
    let m = imsg::InstallPsk {
        link: link.to_string(),
        epoch,
        psk: zeroize::Zeroizing::new(*psk.expose()),
    };
    let _ = parent.send(ToParent::InstallPsk(m).encode());
}

/// The first word of a failure, for `reason=` (the rest goes in `msg=`).
fn reason_word(why: &str) -> &'static str {
    // A failed install carries the WireGuard backend's reason word
    // (`install of epoch N: no-such-peer`, DESIGN §5).
    const WG: &[&str] = &[
        "no-such-peer",
        "no-such-interface",
        "wg-io",
        "wg-protocol",
        "psk-mismatch",
        "weak-psk",
    ];
    if why.starts_with("kme") {
        "kme"
    } else if let Some(rest) = why.strip_prefix("install of epoch ") {
        // `install of epoch N: <word>: <what the backend said>`
        let word = rest.split(": ").nth(1).unwrap_or("");
        WG.iter()
            .find(|w| **w == word)
            .copied()
            .unwrap_or("install")
    } else if why.contains("confirm") {
        "no-confirm"
    } else if why.contains("persist") {
        "persist"
    } else {
        "round"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imsg::PeeringNet;
    use crate::proto::peer::{KeyId, Message};
    use crate::secret::QkdKey;

    /// Keys with one master link "dr" whose OFFERs go to `far`; no KME
    /// (the test hands the rotation its key), the parent's end returned.
    async fn one_master(far: SocketAddr, now: Instant) -> (Keys, mpsc::UnboundedReceiver<Vec<u8>>) {
        let (parent, from_engine) = crate::imsg::channel(crate::imsg::MAX_QUEUED);
        let (answers, _) = mpsc::unbounded_channel();
        let mut peer = Peering::default();
        let cfg = EngineConfig {
            peering: Some(PeeringNet {
                secret: zeroize::Zeroizing::new([7; 32]),
            }),
            peering_sockets: 1,
            ..EngineConfig::empty()
        };
        peer.configure(&cfg);
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        peer.add_socket(Arc::new(sock));
        let mut keys = Keys::new(parent, answers, peer);
        let params = Params {
            link_id: LinkId([1; 32]),
            ours: keys.peer.ours().unwrap(),
            peer: [2; 32],
        };
        let schedule = Schedule {
            period: Duration::from_secs(3600),
            jitter: false,
            seed: 1,
        };
        let route = Route {
            kme: "site".into(),
            peer_sae_id: "SAE-B".into(),
            role: rotate::Role::Master,
            peer: far,
        };
        let rot = Rotation::new(rotate::Role::Master, params, schedule, 4, now);
        let link = KeyedLink::new(route, rot, 4);
        keys.links = vec![(Arc::<str>::from("dr"), link)].into_iter().collect();
        keys.index_deadlines();
        (keys, from_engine)
    }

    /// Every datagram `far` has received by now.
    async fn received(far: &std::net::UdpSocket) -> Vec<Message> {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok(n) = far.recv(&mut buf) {
            got.push(crate::proto::peer::parse(&buf[..n]).unwrap().0);
        }
        got
    }

    /// DESIGN §6: an epoch is persisted before its OFFER leaves. A parent
    /// slower than the first retransmit, then a failed persist: neither
    /// the OFFER nor its retransmit leaves; the next epoch's does, once
    /// persisted.
    #[tokio::test]
    async fn no_offer_leaves_for_an_epoch_whose_persist_failed() {
        let far = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        far.set_nonblocking(true).unwrap();
        let t0 = Instant::now();
        let (mut keys, _parent) = one_master(far.local_addr().unwrap(), t0).await;
        let mut out = Vec::new();
        let key = || Input::KeyReady {
            key_id: KeyId::new("k1").unwrap(),
            key: QkdKey::new(vec![9; 32]),
        };
        keys.feed("dr", Input::RotateNow, t0, &mut out);
        keys.feed("dr", key(), t0, &mut out);
        // The parent takes two seconds: the OFFER's retransmit is due.
        let t1 = t0 + Duration::from_secs(2);
        keys.feed("dr", Input::Tick, t1, &mut out);
        assert!(received(&far).await.is_empty());
        let failed = KeyAck {
            link: "dr".into(),
            epoch: 5,
            step: KeyStep::Persist,
            error: Some("state file: disk full".into()),
        };
        keys.on_ack(failed, t1).unwrap();
        let got = received(&far).await;
        assert!(
            got.is_empty(),
            "OFFERs of an epoch never persisted: {got:?}"
        );
        // The next round: epoch 6, persisted, offered.
        let t2 = t1 + Duration::from_secs(60);
        keys.feed("dr", Input::RotateNow, t2, &mut out);
        keys.feed("dr", key(), t2, &mut out);
        let done = KeyAck {
            link: "dr".into(),
            epoch: 6,
            step: KeyStep::Persist,
            error: None,
        };
        keys.on_ack(done, t2).unwrap();
        let got = received(&far).await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!((got[0].epoch, &got[0].body), (6, &Body::Offer));
    }

    #[test]
    fn failure_reasons_name_the_wireguard_error() {
        use super::reason_word;
        assert_eq!(
            reason_word("install of epoch 7: no-such-peer"),
            "no-such-peer"
        );
        assert_eq!(
            reason_word("install of epoch 7: psk-mismatch"),
            "psk-mismatch"
        );
        assert_eq!(reason_word("install of epoch 7: something else"), "install");
        assert_eq!(
            reason_word("install of epoch 7: weak-psk: refused a PSK of one byte repeated"),
            "weak-psk"
        );
        assert_eq!(
            reason_word("install of epoch 7: wg-io: WireGuard I/O: disk full"),
            "wg-io"
        );
        assert_eq!(reason_word("kme: kme site: enc_keys: HTTP 503"), "kme");
        assert_eq!(
            reason_word("no confirm for epoch 3 after 6 offers"),
            "no-confirm"
        );
        assert_eq!(reason_word("epoch 3 not persisted: state file"), "persist");
    }
}
