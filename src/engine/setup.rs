//! The engine's set-up, before and besides its main loop: from the
//! descriptors and config the parent hands over to a running [`Engine`]
//! (sockets registered, log sink and hello to the parent, control server,
//! Prometheus endpoint, peering sockets, channels), and a config applied to
//! the links (at start and on every reload).

use super::control::{self, Access, CtlCall};
use super::link::Link;
use super::qber::poller::Polled;
use super::qber::{Freshness, SharedLink};
use super::{Engine, Inbox, LinkSlot, SharedPoller, Sockets, Tx, keys, metrics, peering, sources};
use crate::imsg::{self, EngineConfig, Hello, LinkReasons, LogRecord, ToEngine, ToParent};
use crate::lock::{LockReason, Reasons};
use crate::log::{self, Event, Prio};
use crate::names::Names;
use crate::policy::params::OnQber;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{broadcast, mpsc};

impl Engine {
    /// Everything the main loop needs, set up in order: a failure is the
    /// engine's end (the caller exits).
    pub(super) fn start(
        cfg: EngineConfig,
        sockets: Sockets,
        metrics_listener: Option<std::net::TcpListener>,
        peering_sockets: Vec<std::net::UdpSocket>,
        dropped: bool,
    ) -> Result<(Engine, Inbox), String> {
        let Sockets {
            chan,
            listener,
            creds,
        } = sockets;
        let setup = chan
            .set_nonblocking(true)
            .and_then(|_| listener.set_nonblocking(true));
        setup.map_err(|e| e.to_string())?;
        let (chan, listener) = match (
            tokio::net::UnixStream::from_std(chan),
            tokio::net::UnixListener::from_std(listener),
        ) {
            (Ok(c), Ok(l)) => (c, l),
            _ => return Err("cannot register sockets".into()),
        };
        let (rd, wr) = chan.into_split();
        // The parent is gone: exit at once (DESIGN §2).
        // A parent that stops reading: ending is the engine's only safe
        // answer (a report it dropped may have been a lockdown).
        let tx = imsg::spawn_writer(wr, || std::process::exit(0), || std::process::exit(1));
        // Every record goes to the parent, which owns syslog/stderr.
        let log_tx = tx.clone();
        log::init(Box::new(move |prio, line| {
            let rec = LogRecord {
                prio: prio as u8,
                line: line.to_string(),
            };
            let _ = log_tx.send(ToParent::Log(rec).encode());
        }));
        let _ = tx.send(
            ToParent::Hello(Hello {
                version: imsg::VERSION,
                pid: std::process::id(),
            })
            .encode(),
        );
        if !dropped {
            log::warn("engine: privilege drop skipped (not started as root)");
        }
        let (events, _) = broadcast::channel(1024);
        let (calls_tx, calls) = mpsc::channel::<CtlCall>(64);
        let access = Access {
            readonly_uids: cfg.ctl_readonly_uids.clone(),
            readonly_gid: cfg.ctl_readonly_gid,
        };
        tokio::spawn(control::serve(listener, access, calls_tx, events.clone()));
        let from_parent = imsg::spawn_reader(rd, ToEngine::decode, "parent closed the channel");
        let metrics = metrics_listener.and_then(|l| {
            let l = l
                .set_nonblocking(true)
                .and_then(|_| tokio::net::TcpListener::from_std(l));
            match l {
                Ok(l) => Some(l),
                Err(e) => {
                    // Monitoring failing must not touch enforcement.
                    log::warn(format!("metrics: {e}"));
                    None
                }
            }
        });
        let metrics = metrics.map(|l| {
            let (tx, rx) = tokio::sync::watch::channel(metrics::Snapshot::empty(
                crate::utc::now_unix(),
                Instant::now(),
            ));
            tokio::spawn(async move {
                let e = metrics::http::serve(l, rx).await;
                log::warn(format!("metrics: stopped: {e}"));
            });
            tx
        });
        // Sized for every link's poller to have a reading in flight.
        let (polls_tx, polls) = mpsc::channel::<Polled>(1024);
        let (answers_tx, answers) = mpsc::unbounded_channel::<keys::KmeAnswer>();
        // Room for a datagram of every link at once (the burst a `rotate
        // all` or a policy activation brings), as the socket's buffer has.
        let room = cfg.links.len().saturating_mul(2).max(1024);
        let (dgram_tx, datagrams) = mpsc::channel::<peering::Datagram>(room);
        // Datagrams from addresses that are no configured peer's: a queue of
        // their own, so a flood of them cannot crowd out the real ones.
        let (other_tx, others) = mpsc::channel::<peering::Datagram>(256);
        let mut peer = peering::Peering::default();
        for sock in peering_sockets {
            let sock = match sock
                .set_nonblocking(true)
                .and_then(|_| tokio::net::UdpSocket::from_std(sock))
            {
                Ok(s) => std::sync::Arc::new(s),
                Err(e) => return Err(format!("peering socket: {e}")),
            };
            peer.add_socket(sock.clone());
            tokio::spawn(peering::receive(
                sock,
                peer.known_peers(),
                dgram_tx.clone(),
                other_tx.clone(),
            ));
        }
        let key_state = keys::Keys::new(tx.clone(), answers_tx, peer);
        let mut eng = Engine::new(tx, events, polls_tx, key_state);
        eng.metrics = metrics;
        eng.creds = Some(creds);
        eng.configure(cfg, Instant::now())?;
        crate::privsep::return_free_memory();
        let inbox = Inbox {
            from_parent,
            calls,
            polls,
            answers,
            datagrams,
            others,
        };
        Ok((eng, inbox))
    }

    /// An engine with no link, policy or control socket yet.
    pub(super) fn new(
        tx: Tx,
        events: broadcast::Sender<String>,
        polls: mpsc::Sender<Polled>,
        keys: keys::Keys,
    ) -> Engine {
        Engine {
            links: Default::default(),
            shared: BTreeMap::new(),
            qber_net: BTreeMap::new(),
            pollers: 0,
            reports: Default::default(),
            newly_lost: Default::default(),
            due: Default::default(),
            policy: None,
            tx,
            pending: HashMap::new(),
            next_id: 1,
            events,
            started: Instant::now(),
            metrics: None,
            polls,
            keys,
            testing: Default::default(),
            overridden: Vec::new(),
            creds: None,
            alive_due: Instant::now(),
            trim_due: Instant::now() + std::time::Duration::from_secs(60),
        }
    }

    /// (Re)builds the link set from the parent's config; links whose
    /// settings did not change keep their state machine.
    pub(super) fn configure(&mut self, cfg: EngineConfig, now: Instant) -> Result<(), String> {
        crate::utc::set_offset(cfg.testing.wall_clock_offset);
        log::set_verbose(cfg.verbose);
        self.testing = cfg.testing.clone();
        self.overridden.clear();
        // Each link's name once, shared by every record the engine keeps
        // of it (a link that stays keeps its own).
        let mut names = Names::default();
        for l in &cfg.links {
            match self.links.name(&l.name) {
                Some(n) => names.adopt(n.clone()),
                None => names.of(&l.name),
            };
        }
        // Each section's name once, for all its links.
        let section: BTreeMap<&String, Arc<str>> =
            cfg.qber.keys().map(|n| (n, names.of(n))).collect();
        let name_of = |n: &str| names.get(n).unwrap_or_else(|| Arc::from(n));
        let policy = &self.policy;
        self.keys.configure(
            &cfg,
            name_of,
            |n| {
                policy
                    .as_ref()
                    .and_then(|p| p.links.get(n))
                    .map(|p| p.rotate)
            },
            now,
        )?;
        let mut old = std::mem::take(&mut self.links).into_map();
        let mut rows: Vec<(Arc<str>, LinkSlot)> = Vec::with_capacity(cfg.links.len());
        let shared: BTreeMap<&String, Arc<crate::conf::QberConf>> = cfg
            .qber
            .iter()
            .map(|(n, q)| (n, Arc::new(q.clone())))
            .collect();
        // Sections whose TLS material or address the parent read anew
        // (a renewed certificate at the same path, a moved host): their
        // pollers are opened again, as a changed section's are.
        let renewed: BTreeSet<String> = (cfg.qber.keys())
            .filter(|n| self.qber_net.get(*n) != cfg.qber_net.get(*n))
            .cloned()
            .collect();
        // The links of each section whose links read one document.
        let mut readers: BTreeMap<String, Vec<SharedLink>> = BTreeMap::new();
        for l in cfg.links {
            let qconf = &shared[&l.qber];
            if sources::shares_document(qconf) {
                (readers.entry(l.qber.clone()).or_default())
                    .push(SharedLink::new(name_of(&l.name), &l.qber_id));
            }
            let kept = old.remove(l.name.as_str());
            if let Some(slot) = &kept {
                if *slot.qber_name == *l.qber && slot.qconf == *qconf && !renewed.contains(&l.qber)
                {
                    rows.push((name_of(&l.name), kept.expect("checked")));
                    continue;
                }
            }
            // A shared document's poller is started below, for all its
            // links, and gives them its serial.
            self.pollers += 1;
            let serial = self.pollers;
            let opened = match sources::shares_document(qconf) {
                true => Ok((None, None)),
                false => sources::open(
                    name_of(&l.name),
                    &l.qber,
                    &l.qber_id,
                    qconf,
                    &cfg.qber_net,
                    serial,
                    &self.polls,
                ),
            };
            let sim_control = sources::sim_control(&l.qber, qconf, &cfg.qber_net);
            let (source, poller) = match opened {
                Ok(s) => s,
                Err(e) => {
                    // Fail closed: a link we cannot watch is locked, and
                    // keeps what held it (a QBER trip stays on disk).
                    log::event(Event::QberSourceError)
                        .at(Prio::Err)
                        .kv("link", &l.name)
                        .kv("source", &l.qber)
                        .msg(e)
                        .send();
                    let held = match kept {
                        Some(mut slot) => {
                            slot.stop_poller();
                            slot.link.reasons()
                        }
                        None => l.persisted,
                    };
                    self.lock_unwatched(l.name.clone(), held);
                    continue;
                }
            };
            // A changed source keeps the link's state machine (and its
            // reasons); its first reading is the new source's baseline.
            let link = match kept {
                Some(mut slot) => {
                    slot.stop_poller();
                    slot.link
                }
                None => {
                    let policy = self.link_policy(&l.name);
                    let mut link =
                        Link::new(name_of(&l.name), policy, l.keys.is_some(), l.persisted, now);
                    if let Some(age) = l.keys.as_ref().and_then(|k| k.key_age_secs) {
                        link.key_aged(std::time::Duration::from_secs(age));
                    }
                    link
                }
            };
            let waits_for_qber = !link.determined()
                && (l.keys.as_ref()).is_some_and(|k| k.role == crate::conf::Role::Master);
            rows.push((
                name_of(&l.name),
                LinkSlot {
                    link,
                    source,
                    poller,
                    reads_from: serial,
                    // At start too: a stalled agent's repeated value must
                    // not count once as fresh, or a link it left locked
                    // `source-lost` opens after a restart.
                    fresh: Freshness::baseline(),
                    next_poll: now,
                    qber_name: section[&l.qber].clone(),
                    qber_id: l.qber_id.as_str().into(),
                    qconf: qconf.clone(),
                    parent: None,
                    source_errors: 0,
                    sampled_ns: None,
                    sim_control: sim_control.map(Box::new),
                    due_at: Default::default(),
                    waits_for_qber,
                },
            ));
        }
        self.links = rows.into_iter().collect();
        for (_, mut gone) in old {
            gone.stop_poller();
        }
        self.start_shared(readers, &shared, &cfg.qber_net, &renewed);
        self.qber_net = cfg.qber_net;
        self.hold_rounds(now);
        let due = self.links.iter_mut().map(|(n, slot)| {
            let next = slot.next_deadline();
            (n, &mut slot.due_at, next)
        });
        self.due.rebuild(due);
        Ok(())
    }

    /// One poller per section whose links read one document, restarted
    /// only when its settings or its links changed. A section whose driver
    /// does not open locks its links, as [`Engine::configure`] does for one.
    fn start_shared(
        &mut self,
        readers: BTreeMap<String, Vec<SharedLink>>,
        confs: &BTreeMap<&String, Arc<crate::conf::QberConf>>,
        net: &BTreeMap<String, imsg::QberNet>,
        renewed: &BTreeSet<String>,
    ) {
        let mut old = std::mem::take(&mut self.shared);
        for (qber, links) in readers {
            let conf = confs[&qber].clone();
            let names: Vec<(Arc<str>, String)> = (links.iter())
                .map(|l| (l.link.clone(), l.qber_id.clone()))
                .collect();
            if let Some(p) = old.remove(&qber) {
                if p.conf == conf && p.links == names && !renewed.contains(&qber) {
                    self.read_from(&names, p.serial);
                    self.shared.insert(qber, p);
                    continue;
                }
                p.task.abort();
            }
            self.pollers += 1;
            let serial = self.pollers;
            match sources::open_shared(&qber, links, &conf, net, serial, &self.polls) {
                Ok(task) => {
                    self.read_from(&names, serial);
                    let p = SharedPoller {
                        conf,
                        links: names,
                        task,
                        logged: None,
                        serial,
                    };
                    self.shared.insert(qber, p);
                }
                Err(e) => {
                    log::event(Event::QberSourceError)
                        .at(Prio::Err)
                        .kv("source", &qber)
                        .kv("links", names.len())
                        .msg(e)
                        .send();
                    for (link, _) in names {
                        let mut held = Reasons::EMPTY;
                        if let Some(mut gone) = self.links.remove(&link) {
                            self.due.set(&link, &mut gone.due_at, None);
                            held = gone.link.reasons();
                        }
                        self.lock_unwatched(link.to_string(), held);
                    }
                }
            }
        }
        for (_, gone) in old {
            gone.task.abort();
        }
    }

    /// Holds the rounds of every keyed link that must not rotate now (a
    /// master whose link's QBER is not known yet, a link whose hold trip
    /// stands) and resumes the others: a rotation made anew (a reload's
    /// new peering key) starts unheld, and one held for a link the engine
    /// stopped watching (its source could not open) must not stay held
    /// once the link is watched again without a trip.
    fn hold_rounds(&mut self, now: Instant) {
        let changes: Vec<(String, bool)> = (self.links.iter())
            .filter_map(|(n, s)| {
                let want = s.waits_for_qber || s.link.tripped() == Some(OnQber::Hold);
                let held = self.keys.rounds_held(n)?;
                (held != want).then(|| (n.to_string(), want))
            })
            .collect();
        for (name, want) in changes {
            let inputs = self.keys.hold_rounds(&name, want, now);
            self.feed_keys(inputs, now);
        }
    }

    /// `links` take the readings of poller `serial` (their section's shared
    /// one) and no other's.
    fn read_from(&mut self, links: &[(Arc<str>, String)], serial: u64) {
        for (link, _) in links {
            if let Some(slot) = self.links.get_mut(link) {
                slot.reads_from = serial;
            }
        }
    }

    /// Fail closed: a link whose source cannot be opened is reported
    /// `source-lost` (the engine does not run it), with the reasons `held`
    /// it had: the parent keeps a `qber` trip in force and on disk, and the
    /// next config that opens the source starts the link from it.
    fn lock_unwatched(&self, link: String, held: Reasons) {
        let mut reasons = held;
        reasons.insert(LockReason::SourceLost);
        let m = LinkReasons {
            link,
            reasons,
            qber: None,
            threshold: None,
            by_operator: false,
            sampled_ns: None,
        };
        let _ = self.tx.send(ToParent::Reasons(m).encode());
    }
}
