//! Key agreement in the engine (DESIGN §6): one [`Rotation`] per keyed
//! link, one ETSI 014 [`KmeClient`] per `[kme.X]`, and the peering UDP
//! socket (bound by the parent, fd 6) with the [`Keyring`] that checks
//! every datagram before a rotation sees it.
//!
//! The rotations are pure; this file carries out their actions **in
//! order**. An action that needs the parent — persisting an epoch,
//! installing a PSK — suspends that link's queue until the parent's
//! [`KeyAck`] arrives: nothing after a `PersistEpoch` happens before the
//! epoch is durable, and the slave's CONFIRM leaves only once its PSK is in
//! the kernel. KME calls run as tasks whose answers come back as inputs.
//!
//! What it tells the link state machine ([`link::Input::KeyInstalled`],
//! [`link::Input::PeerRound`]) is returned to the caller, which owns the
//! links.

use super::kme::{self, KmeClient, KmeSettings};
use super::link;
use super::rotate::{self, Action, Input, Params, Rotation, Schedule};
use crate::imsg::{self, EngineConfig, KeyAck, KeyStep, LinkKeys, ToParent};
use crate::log::{self, Prio};
use crate::proto::peer::{self, Keyring, LinkId};
use crate::secret::Psk;
use ed25519_dalek::{SigningKey, VerifyingKey};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Key size asked of the KME, in bits (DESIGN §6: shorter keys refused).
pub const KEY_BITS: u32 = 256;
/// Period used until a policy says otherwise (DESIGN §4 default).
pub const DEFAULT_ROTATE: Duration = Duration::from_secs(300);

/// A KME answer for one link, from its task.
pub struct KmeAnswer {
    pub link: String,
    pub input: Input,
}

/// A received datagram, from the socket task.
pub struct Datagram {
    pub from: SocketAddr,
    pub bytes: Vec<u8>,
}

/// What `qkdctl show link` and the metrics show of a keyed link.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyView {
    pub status: rotate::RotateStatus,
    pub psk_fingerprint: Option<String>,
    pub key_age: Option<Duration>,
    pub stored_key_count: Option<u64>,
    /// Times fresh keys stopped (a QBER hold or key-stale) since start.
    pub halted: u64,
}

struct KeyedLink {
    conf: LinkKeys,
    rot: Rotation,
    /// Batches of actions not yet carried out, oldest first.
    queue: VecDeque<VecDeque<Action>>,
    /// The parent request the queue waits for.
    waiting: Option<(KeyStep, u64)>,
    /// Where a slave sends a CONFIRM that waited for the parent: the
    /// source of the OFFER it answers.
    reply_to: Option<SocketAddr>,
    /// Fingerprint of the PSK sent to the parent, shown once installed.
    pending_fp: Option<String>,
    fingerprint: Option<String>,
    installed_at: Option<Instant>,
    halted: u64,
    /// The KME call of the current round. A new round's call replaces
    /// (aborts) an old one still queued behind a slow KME, so a long KME
    /// outage keeps at most one task per link.
    fetch_task: Option<tokio::task::JoinHandle<()>>,
    /// Master: CLOCK_MONOTONIC when this round's `enc_keys` started, for
    /// the debug `event=round` line (BENCHMARKS.md).
    round_start_ns: Option<u64>,
}

/// Every keyed link of the engine.
pub struct Keys {
    signing: Option<SigningKey>,
    ring: Option<Keyring>,
    socket: Option<Arc<tokio::net::UdpSocket>>,
    kmes: BTreeMap<String, Arc<KmeClient>>,
    kme_net: BTreeMap<String, imsg::KmeNet>,
    links: BTreeMap<String, KeyedLink>,
    by_id: HashMap<LinkId, String>,
    answers: mpsc::UnboundedSender<KmeAnswer>,
    parent: mpsc::UnboundedSender<Vec<u8>>,
    auth_log: AuthLog,
    /// Source of the datagram being handled (answers go there: NAT-friendly).
    current_from: Option<SocketAddr>,
    no_jitter: bool,
    rotate_override: Option<Duration>,
}

impl Keys {
    pub fn new(
        parent: mpsc::UnboundedSender<Vec<u8>>,
        answers: mpsc::UnboundedSender<KmeAnswer>,
    ) -> Keys {
        Keys {
            signing: None,
            ring: None,
            socket: None,
            kmes: BTreeMap::new(),
            kme_net: BTreeMap::new(),
            links: BTreeMap::new(),
            by_id: HashMap::new(),
            answers,
            parent,
            auth_log: AuthLog::default(),
            current_from: None,
            no_jitter: false,
            rotate_override: None,
        }
    }

    /// The peering socket (taken from fd 6 once at start-up).
    pub fn set_socket(&mut self, s: Arc<tokio::net::UdpSocket>) {
        self.socket = Some(s);
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
        period_of: impl Fn(&str) -> Option<Duration>,
        now: Instant,
    ) -> Result<(), String> {
        self.no_jitter = cfg.testing.no_jitter;
        self.rotate_override = cfg.testing.rotate;
        self.signing = cfg
            .peering
            .as_ref()
            .map(|p| SigningKey::from_bytes(&p.secret));
        if self.kme_net != cfg.kme {
            self.kmes.clear();
            for (name, k) in &cfg.kme {
                let client = KmeClient::new(name, &k.url, &k.ca, &k.cert, k.key.clone(), None)
                    .map_err(|e| e.to_string())?
                    .with_settings(KmeSettings {
                        addr: Some(k.addr),
                        ..KmeSettings::default()
                    });
                self.kmes.insert(name.clone(), Arc::new(client));
            }
            self.kme_net = cfg.kme.clone();
        }
        let mut old = std::mem::take(&mut self.links);
        let mut ring = self
            .signing
            .as_ref()
            .map(|s| Keyring::new(&s.verifying_key()));
        self.by_id.clear();
        for l in &cfg.links {
            let Some(k) = &l.keys else { continue };
            let (Some(sk), Some(ring)) = (&self.signing, ring.as_mut()) else {
                return Err(format!("link {} is keyed but [peering] is missing", l.name));
            };
            if !self.kmes.contains_key(&k.kme) {
                return Err(format!("link {} names unknown kme {}", l.name, k.kme));
            }
            let peer = VerifyingKey::from_bytes(&k.peer_pubkey)
                .map_err(|_| format!("link {}: bad peer_pubkey", l.name))?;
            ring.add_link(LinkId(k.link_id), peer);
            self.by_id.insert(LinkId(k.link_id), l.name.clone());
            let same = |o: &KeyedLink| {
                LinkKeys {
                    epoch: 0,
                    ..o.conf.clone()
                } == LinkKeys {
                    epoch: 0,
                    ..k.clone()
                }
            };
            let keyed = match old.remove(&l.name) {
                Some(o) if same(&o) => o,
                _ => {
                    let params = Params {
                        link_id: LinkId(k.link_id),
                        ours: sk.verifying_key().to_bytes(),
                        peer: k.peer_pubkey,
                    };
                    let period = self.period(period_of(&l.name));
                    let schedule = Schedule {
                        period,
                        jitter: !self.no_jitter,
                        seed: rand::random(),
                    };
                    KeyedLink {
                        conf: k.clone(),
                        rot: Rotation::new(k.role, params, schedule, k.epoch, now),
                        queue: VecDeque::new(),
                        waiting: None,
                        reply_to: None,
                        pending_fp: None,
                        fingerprint: None,
                        installed_at: None,
                        halted: 0,
                        fetch_task: None,
                        round_start_ns: None,
                    }
                }
            };
            self.links.insert(l.name.clone(), keyed);
        }
        self.ring = ring;
        Ok(())
    }

    fn period(&self, policy: Option<Duration>) -> Duration {
        self.rotate_override.or(policy).unwrap_or(DEFAULT_ROTATE)
    }

    /// The policy changed: new periods apply from the next round.
    pub fn set_periods(&mut self, period_of: impl Fn(&str) -> Option<Duration>) {
        let names: Vec<String> = self.links.keys().cloned().collect();
        for n in names {
            let p = self.period(period_of(&n));
            self.links.get_mut(&n).expect("known").rot.set_period(p);
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.links
            .values()
            .filter_map(|l| l.rot.next_deadline())
            .min()
    }

    /// Ticks every rotation whose deadline passed.
    pub fn tick(&mut self, now: Instant) -> Vec<(String, link::Input)> {
        let due: Vec<String> = self
            .links
            .iter()
            .filter(|(_, l)| l.rot.next_deadline().is_some_and(|d| d <= now))
            .map(|(n, _)| n.clone())
            .collect();
        let mut out = Vec::new();
        for n in due {
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
        let mut out = Vec::new();
        self.feed(name, Input::Hold(on), now, &mut out);
        out
    }

    pub fn on_kme(&mut self, a: KmeAnswer, now: Instant) -> Vec<(String, link::Input)> {
        let mut out = Vec::new();
        self.feed(&a.link, a.input, now, &mut out);
        out
    }

    /// A datagram from the socket: checked by the keyring, then given to
    /// the link it names. Drops are logged, rate-limited per source.
    pub fn on_datagram(&mut self, d: Datagram, now: Instant) -> Vec<(String, link::Input)> {
        let mut out = Vec::new();
        let Some(ring) = &self.ring else {
            return out;
        };
        let msg = match ring.open(&d.bytes) {
            Ok(m) => m,
            Err(e) => {
                self.auth_log.failed(d.from.ip(), None, e.as_str(), now);
                return out;
            }
        };
        let Some(name) = self.by_id.get(&msg.link_id).cloned() else {
            return out;
        };
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
        let input = match (a.step, a.error) {
            (KeyStep::Persist, None) => {
                self.drain(&a.link, now, &mut out);
                return Ok(out);
            }
            (KeyStep::Persist, Some(why)) => {
                // The rest of the batch must not happen without the epoch.
                l.queue.pop_front();
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
            psk_fingerprint: l.fingerprint.clone(),
            key_age: l.installed_at.map(|t| now.saturating_duration_since(t)),
            stored_key_count: self
                .kmes
                .get(&l.conf.kme)
                .and_then(|k| k.stored_key_count()),
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
                l.queue.pop_front();
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
                l.waiting = Some((KeyStep::Persist, epoch));
                let m = imsg::PersistEpoch {
                    link: name.to_string(),
                    epoch,
                };
                let _ = self.parent.send(ToParent::PersistEpoch(m).encode());
            }
            Action::InstallPsk { epoch, psk } => {
                l.waiting = Some((KeyStep::Install, epoch));
                l.pending_fp = Some(psk.fingerprint());
                send_install(&self.parent, name, epoch, &psk);
            }
            Action::FetchEncKey => {
                l.round_start_ns = Some(imsg::monotonic_ns());
                self.fetch(name, None)
            }
            Action::FetchDecKey { key_id } => self.fetch(name, Some(key_id)),
            Action::Send(m) => {
                let dest = match l.conf.role {
                    rotate::Role::Master => l.conf.peer,
                    rotate::Role::Slave => self.current_from.or(l.reply_to).unwrap_or(l.conf.peer),
                };
                if let (Some(sk), Some(sock)) = (&self.signing, &self.socket) {
                    // Lost datagrams are what retransmits are for.
                    if let Err(e) = sock.try_send_to(&m.encode(sk), dest) {
                        log::debug(format!("peer: send to {dest}: {e}"));
                    }
                }
            }
            Action::RoundDone { epoch, key_id } => {
                log::event(Prio::Notice, "key_rotated")
                    .kv("link", name)
                    .kv("epoch", epoch)
                    .kv("key_id", key_id.as_str())
                    .kv("psk_fp", l.fingerprint.as_deref().unwrap_or("-"))
                    .send();
                if let Some(t0) = l.round_start_ns.take() {
                    // The slave installed before it CONFIRMed, so the
                    // master's install answer (now) is the later of the two.
                    let us = imsg::monotonic_ns().saturating_sub(t0) / 1000;
                    log::event(Prio::Debug, "round")
                        .kv("link", name)
                        .kv("epoch", epoch)
                        .kv("enc_keys_to_installed_us", us)
                        .send();
                }
                out.push((name.to_string(), link::Input::KeyInstalled));
            }
            Action::RoundFailed { why } => {
                log::event(Prio::Warning, "key_rotation_failed")
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
                self.auth_log.failed(
                    from.unwrap_or(IpAddr::from([0, 0, 0, 0])),
                    Some(name),
                    why,
                    now,
                );
            }
            Action::Ignored { why } => log::debug(format!("peer: {name}: {why}")),
        }
    }

    /// Starts the KME call of a round as a task; its answer comes back
    /// through `answers`.
    fn fetch(&mut self, name: &str, key_id: Option<peer::KeyId>) {
        let Some(l) = self.links.get_mut(name) else {
            return;
        };
        let Some(kme) = self.kmes.get(&l.conf.kme).cloned() else {
            return;
        };
        if let Some(old) = l.fetch_task.take() {
            old.abort();
        }
        let sae = l.conf.peer_sae_id.clone();
        let tx = self.answers.clone();
        let link = name.to_string();
        l.fetch_task = Some(tokio::spawn(async move {
            let input = fetch_key(&kme, &sae, key_id).await;
            if let Input::KeyFailed { why, .. } = &input {
                log::event(Prio::Warning, "kme_error")
                    .kv("link", &link)
                    .kv("kme", kme.name())
                    .msg(why)
                    .send();
            }
            let ok = matches!(input, Input::KeyReady { .. });
            let _ = tx.send(KmeAnswer { link, input });
            if ok {
                // stored_key_count for `show link` and metrics; a failure
                // here changes nothing.
                let _ = kme.status(&sae).await;
            }
        }));
    }
}

/// One `enc_keys` (no key_ID) or `dec_keys` call, as a rotation input.
async fn fetch_key(kme: &KmeClient, peer_sae: &str, key_id: Option<peer::KeyId>) -> Input {
    let failed = |key_id: Option<peer::KeyId>, why: String| Input::KeyFailed { key_id, why };
    let got = match &key_id {
        None => kme.enc_keys(peer_sae, 1, KEY_BITS).await,
        Some(id) => match kme::KeyId::parse(id.as_str()) {
            Ok(kid) => kme.dec_keys(peer_sae, &[kid], KEY_BITS).await,
            Err(e) => return failed(key_id, format!("key_ID refused: {e:?}")),
        },
    };
    let mut keys = match got {
        Ok(k) => k,
        Err(e) => return failed(key_id, e.to_string()),
    };
    let Some((id, key)) = keys.pop().filter(|_| keys.is_empty()) else {
        return failed(key_id, "expected exactly one key".into());
    };
    match peer::KeyId::new(id.as_str()) {
        Ok(k) => Input::KeyReady { key_id: k, key },
        Err(_) => failed(key_id, "the KME's key_ID is not usable on the wire".into()),
    }
}

fn send_install(parent: &mpsc::UnboundedSender<Vec<u8>>, link: &str, epoch: u64, psk: &Psk) {
    let m = imsg::InstallPsk {
        link: link.to_string(),
        epoch,
        psk: zeroize::Zeroizing::new(*psk.expose()),
    };
    let _ = parent.send(ToParent::InstallPsk(m).encode());
}

/// The first word of a failure, for `reason=` (the rest goes in `msg=`).
fn reason_word(why: &str) -> &'static str {
    if why.starts_with("kme") {
        "kme"
    } else if why.starts_with("install") {
        "install"
    } else if why.contains("confirm") {
        "no-confirm"
    } else if why.contains("persist") {
        "persist"
    } else {
        "round"
    }
}

/// `peer_auth_failed`: the first per source per minute, then one line with
/// `suppressed=N` (DESIGN §8).
#[derive(Default)]
struct AuthLog {
    seen: HashMap<IpAddr, (Instant, u64)>,
}

impl AuthLog {
    fn failed(&mut self, from: IpAddr, link: Option<&str>, why: &str, now: Instant) {
        if self.seen.len() > 4096 {
            // A spoofing flood must not grow this without bound.
            self.seen
                .retain(|_, (t, _)| now.duration_since(*t) < Duration::from_secs(60));
        }
        match self.seen.get_mut(&from) {
            Some((t, n)) if now.duration_since(*t) < Duration::from_secs(60) => *n += 1,
            slot => {
                let suppressed = slot.map(|(_, n)| *n).unwrap_or(0);
                let mut ev = log::event(Prio::Warning, "peer_auth_failed")
                    .kv("from", from)
                    .kv("reason", why);
                if let Some(l) = link {
                    ev = ev.kv("link", l);
                }
                if suppressed > 0 {
                    ev = ev.kv("suppressed", suppressed);
                }
                ev.send();
                self.seen.insert(from, (now, 0));
            }
        }
    }
}

/// Reads the peering socket until it fails; datagrams of the wrong size
/// are dropped here (the keyring checks everything else).
pub async fn receive(sock: Arc<tokio::net::UdpSocket>, tx: mpsc::Sender<Datagram>) {
    let mut buf = vec![0u8; 2048];
    loop {
        match sock.recv_from(&mut buf).await {
            Ok((n, from)) if n <= peer::MAX_DATAGRAM => {
                let d = Datagram {
                    from,
                    bytes: buf[..n].to_vec(),
                };
                // A full queue drops the datagram, as a busy network would.
                let _ = tx.try_send(d);
            }
            Ok(_) => {}
            Err(e) => {
                log::warn(format!("peer: receive: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
