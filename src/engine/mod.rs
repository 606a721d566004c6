//! The unprivileged engine (DESIGN §2): re-exec'd as `qkdpfd -P engine`,
//! chrooted and running as the configured user. It reads no files: the
//! parent sends a checked config over fd 3. It polls the QBER sources, runs
//! each link's pure state machine ([`link`]), serves the control socket
//! ([`control`]) and asks the parent for everything that touches the kernel
//! by reporting each link's engine-owned lock reasons.
//!
//! If the parent goes away the engine exits at once.

pub mod control;
pub mod https;
pub mod keys;
pub mod kme;
pub mod link;
pub mod metrics;
pub mod peering;
pub mod qber;
mod requests;
pub mod rotate;
mod sources;

use crate::imsg::{self, EngineConfig, Hello, LinkReasons, LogRecord};
use crate::imsg::{ActivePolicy, LinkState, ToEngine, ToParent};
use crate::lock::LockReason;
use crate::log::{self, Prio};
use crate::proto::ctl::Reply;
use control::{Access, CtlCall};
use link::{Action, Input, Link};
use qber::poller::PollResult;
use qber::{Freshness, Source};
use std::collections::{BTreeMap, HashMap};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, oneshot};

type Tx = mpsc::UnboundedSender<Vec<u8>>;

/// One link in the engine: its state machine and its QBER source.
struct LinkSlot {
    link: Link,
    /// The built-in simulator, polled by [`Engine::tick`]; network sources
    /// run as a poller task instead and arrive as [`PollResult`]s.
    source: Option<Source>,
    poller: Option<tokio::task::JoinHandle<()>>,
    fresh: Freshness,
    poll: Duration,
    next_poll: Instant,
    qber_name: String,
    /// The link's id at its QBER source.
    qber_id: String,
    qconf: crate::conf::QberConf,
    parent: Option<LinkState>,
    source_errors: u64,
    /// CLOCK_MONOTONIC when the last sample arrived (flip latency).
    sampled_ns: Option<u64>,
    /// A network source's `/sim/<qber_id>/...` controls (qkdsim serves
    /// them; `qkdctl sim` is forwarded there).
    sim_control: Option<qber::fetch::Getter>,
}

struct Engine {
    links: BTreeMap<String, LinkSlot>,
    policy: Option<ActivePolicy>,
    tx: Tx,
    pending: HashMap<u64, (oneshot::Sender<Reply>, Vec<String>)>,
    next_id: u64,
    events: broadcast::Sender<String>,
    started: Instant,
    /// The Prometheus endpoint's view, when `[daemon] metrics` is set.
    metrics: Option<tokio::sync::watch::Sender<metrics::Snapshot>>,
    /// Where network QBER pollers send their readings.
    polls: mpsc::Sender<PollResult>,
    /// Key agreement of the keyed links.
    keys: keys::Keys,
    /// `[testing]` overrides of policy timing.
    testing: crate::conf::TestingConf,
    /// Where control clients' connections go to the parent (fd 7).
    creds: Option<std::os::fd::OwnedFd>,
    /// When the next [`ToParent::Alive`] is due.
    alive_due: Instant,
}

impl LinkSlot {
    /// Stops the link's network poller (a replaced or removed source).
    fn stop_poller(&mut self) {
        if let Some(p) = self.poller.take() {
            p.abort();
        }
    }
}

fn fatal(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("qkdpfd engine: {msg}");
    ExitCode::FAILURE
}

pub fn main() -> ExitCode {
    crate::privsep::no_core_dumps();
    crate::privsep::raise_nofile();
    crate::privsep::set_title(c"engine");
    let chan = match crate::privsep::engine_channel() {
        Ok(c) => c,
        Err(e) => return fatal(e),
    };
    let listener = match crate::privsep::control_listener() {
        Ok(l) => l,
        Err(e) => return fatal(e),
    };
    let creds = match crate::privsep::creds_channel() {
        Ok(c) => c,
        Err(e) => return fatal(e),
    };
    let cfg = match imsg::read_frame_blocking(&mut &chan) {
        Ok(Some((code, mut payload))) => match ToEngine::decode(code, &payload) {
            Ok(ToEngine::Config(c)) => {
                // The config carries TLS keys: wipe the raw frame.
                zeroize::Zeroize::zeroize(&mut payload);
                *c
            }
            Ok(_) => return fatal("first message was not the config"),
            Err(e) => return fatal(e),
        },
        Ok(None) => return fatal("parent closed the channel"),
        Err(e) => return fatal(e),
    };
    if let Err(e) = check_config(&cfg) {
        return fatal(e);
    }
    let dropped = match &cfg.drop_to {
        Some(d) => match crate::privsep::drop_privileges(d) {
            Ok(()) => true,
            Err(e) => return fatal(e),
        },
        // Real root with no user to become: refuse rather than run the
        // network-facing process with every privilege (DESIGN §2).
        None if crate::privsep::is_real_root() => {
            return fatal("refusing to run as root: no [daemon] user to drop to".to_string());
        }
        None => false,
    };
    log::set_verbose(cfg.verbose);
    // Before any runtime or thread: landlock + seccomp / pledge. Fail closed.
    let limits = crate::sandbox::EngineLimits {
        tcp_connect_ports: crate::sandbox::connect_ports(&cfg),
    };
    let sandbox = match crate::sandbox::engine(&limits) {
        Ok(r) => r,
        Err(e) => return fatal(format!("sandbox: {e}")),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fatal(e),
    };
    let metrics = match cfg.metrics {
        true => match crate::privsep::metrics_listener() {
            Ok(l) => Some(l),
            Err(e) => return fatal(e),
        },
        false => None,
    };
    let peering = match crate::privsep::peering_sockets(cfg.peering_sockets) {
        Ok(s) => s,
        Err(e) => return fatal(e),
    };
    // Logged once run() has installed the sink to the parent: a spawned
    // task first runs when run() awaits, after its hello.
    rt.spawn(async move { sandbox.log() });
    let sockets = Sockets {
        chan,
        listener,
        creds,
    };
    rt.block_on(run(cfg, sockets, metrics, peering, dropped))
}

/// The engine checks what the parent sent too (names, references, ranges).
fn check_config(cfg: &EngineConfig) -> Result<(), String> {
    for l in &cfg.links {
        let name_ok = crate::conf::valid_link_name(&l.name);
        if !name_ok {
            return Err(format!("bad link name {:?}", l.name));
        }
        if !cfg.qber.contains_key(&l.qber) {
            return Err(format!(
                "link {} names unknown qber source {}",
                l.name, l.qber
            ));
        }
    }
    Ok(())
}

/// The descriptors the parent handed over: channel (fd 3), control
/// listener (fd 4), credentials pair (fd 7).
struct Sockets {
    chan: std::os::unix::net::UnixStream,
    listener: std::os::unix::net::UnixListener,
    creds: std::os::fd::OwnedFd,
}

async fn run(
    cfg: EngineConfig,
    sockets: Sockets,
    metrics_listener: Option<std::net::TcpListener>,
    peering_sockets: Vec<std::net::UdpSocket>,
    dropped: bool,
) -> ExitCode {
    let Sockets {
        chan,
        listener,
        creds,
    } = sockets;
    let setup = chan
        .set_nonblocking(true)
        .and_then(|_| listener.set_nonblocking(true));
    if let Err(e) = setup {
        return fatal(e);
    }
    let (chan, listener) = match (
        tokio::net::UnixStream::from_std(chan),
        tokio::net::UnixListener::from_std(listener),
    ) {
        (Ok(c), Ok(l)) => (c, l),
        _ => return fatal("cannot register sockets"),
    };
    let (rd, wr) = chan.into_split();
    // The parent is gone: exit at once (DESIGN §2).
    let tx = imsg::spawn_writer(wr, || std::process::exit(0));
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
    let (calls_tx, mut calls) = mpsc::channel::<CtlCall>(64);
    let access = Access {
        readonly_uids: cfg.ctl_readonly_uids.clone(),
        readonly_gid: cfg.ctl_readonly_gid,
    };
    tokio::spawn(control::serve(listener, access, calls_tx, events.clone()));
    let mut from_parent = imsg::spawn_reader(rd, ToEngine::decode, "parent closed the channel");
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
            let e = metrics::serve(l, rx).await;
            log::warn(format!("metrics: stopped: {e}"));
        });
        tx
    });
    // Sized for every link's poller to have a reading in flight.
    let (polls_tx, mut polls) = mpsc::channel::<PollResult>(1024);
    let (answers_tx, mut answers) = mpsc::unbounded_channel::<keys::KmeAnswer>();
    let (dgram_tx, mut datagrams) = mpsc::channel::<peering::Datagram>(1024);
    // Datagrams from addresses that are no configured peer's: a queue of
    // their own, so a flood of them cannot crowd out the real ones.
    let (other_tx, mut others) = mpsc::channel::<peering::Datagram>(256);
    let mut peer = peering::Peering::default();
    for sock in peering_sockets {
        let sock = match sock
            .set_nonblocking(true)
            .and_then(|_| tokio::net::UdpSocket::from_std(sock))
        {
            Ok(s) => std::sync::Arc::new(s),
            Err(e) => return fatal(format!("peering socket: {e}")),
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
    let mut eng = Engine {
        links: BTreeMap::new(),
        policy: None,
        tx,
        pending: HashMap::new(),
        next_id: 1,
        events,
        started: Instant::now(),
        metrics,
        polls: polls_tx,
        keys: key_state,
        testing: cfg.testing.clone(),
        creds: Some(creds),
        alive_due: Instant::now(),
    };
    if let Err(e) = eng.configure(cfg, Instant::now()) {
        return fatal(e);
    }
    loop {
        let wake = eng.next_wakeup();
        tokio::select! {
            m = from_parent.recv() => match m {
                Some(Ok(msg)) => if let Err(e) = eng.dispatch_parent(msg) { return fatal(e) },
                // The parent is gone: exit at once (DESIGN §2).
                Some(Err(e)) => return fatal(e),
                None => return fatal("parent reader ended"),
            },
            Some(call) = calls.recv() => eng.control(call),
            Some(r) = polls.recv() => eng.on_poll(r, Instant::now()),
            Some(a) = answers.recv() => {
                let now = Instant::now();
                let inputs = eng.keys.on_kme(a, now);
                eng.feed_keys(inputs, now);
            }
            Some(d) = datagrams.recv() => {
                let now = Instant::now();
                let inputs = eng.keys.on_datagram(d, now);
                eng.feed_keys(inputs, now);
            }
            Some(d) = others.recv() => {
                let now = Instant::now();
                let inputs = eng.keys.on_datagram(d, now);
                eng.feed_keys(inputs, now);
            }
            _ = tokio::time::sleep_until(wake.into()) => eng.tick(Instant::now()),
        }
        eng.keep_alive(Instant::now());
        eng.publish_metrics(Instant::now());
    }
}

impl Engine {
    /// (Re)builds the link set from the parent's config; links whose
    /// settings did not change keep their state machine.
    fn configure(&mut self, cfg: EngineConfig, now: Instant) -> Result<(), String> {
        crate::utc::set_offset(cfg.testing.wall_clock_offset);
        log::set_verbose(cfg.verbose);
        self.testing = cfg.testing.clone();
        let policy = self.policy.clone();
        self.keys.configure(
            &cfg,
            |n| {
                policy
                    .as_ref()
                    .and_then(|p| p.links.get(n))
                    .map(|p| p.rotate)
            },
            now,
        )?;
        let mut old = std::mem::take(&mut self.links);
        for l in cfg.links {
            let qconf = &cfg.qber[&l.qber];
            let kept = old.remove(&l.name);
            if let Some(slot) = &kept {
                if slot.qber_name == l.qber && slot.qconf == *qconf {
                    self.links.insert(l.name.clone(), kept.expect("checked"));
                    continue;
                }
            }
            let opened = sources::open(
                &l.name,
                &l.qber,
                &l.qber_id,
                qconf,
                &cfg.qber_net,
                &self.polls,
            );
            let sim_control = sources::sim_control(&l.qber, qconf, &cfg.qber_net);
            let (source, poller) = match opened {
                Ok(s) => s,
                Err(e) => {
                    // Fail closed: a link we cannot watch is locked.
                    log::event(Prio::Err, "qber_source_error")
                        .kv("link", &l.name)
                        .msg(e)
                        .send();
                    let m = LinkReasons {
                        link: l.name.clone(),
                        reasons: [LockReason::SourceLost].into_iter().collect(),
                        qber: None,
                        threshold: None,
                        by_operator: false,
                        sampled_ns: None,
                    };
                    let _ = self.tx.send(ToParent::Reasons(m).encode());
                    continue;
                }
            };
            // A changed source keeps the link's state machine (and its reasons).
            let link = match kept {
                Some(mut slot) => {
                    slot.stop_poller();
                    slot.link
                }
                None => {
                    let policy = self.link_policy(&l.name);
                    Link::new(&l.name, policy, l.keys.is_some(), l.persisted, now)
                }
            };
            self.links.insert(
                l.name.clone(),
                LinkSlot {
                    link,
                    source,
                    poller,
                    fresh: Freshness::new(),
                    poll: qconf.poll,
                    next_poll: now,
                    qber_name: l.qber.clone(),
                    qber_id: l.qber_id.clone(),
                    qconf: qconf.clone(),
                    parent: None,
                    source_errors: 0,
                    sampled_ns: None,
                    sim_control,
                },
            );
        }
        for (_, mut gone) in old {
            gone.stop_poller();
        }
        Ok(())
    }

    /// The policy of a link, with the `[testing]` timing overrides.
    fn link_policy(&self, name: &str) -> Option<crate::policy::params::LinkPolicy> {
        let mut p = self.policy.as_ref()?.links.get(name)?.clone();
        if let Some(r) = self.testing.rotate {
            p.rotate = r;
        }
        if let Some(a) = self.testing.max_key_age {
            p.max_key_age = a;
        }
        Some(p)
    }

    /// Inputs key agreement has for links (KeyInstalled, PeerRound).
    fn feed_keys(&mut self, inputs: Vec<(String, Input)>, now: Instant) {
        for (name, input) in inputs {
            self.feed(&name, now, input);
        }
    }

    /// Tells the parent this loop turns (from the loop itself, never from
    /// a task of its own: a stalled loop must fall silent).
    fn keep_alive(&mut self, now: Instant) {
        if now >= self.alive_due {
            self.alive_due = now + imsg::ALIVE_EVERY;
            let _ = self.tx.send(ToParent::Alive.encode());
        }
    }

    fn next_wakeup(&self) -> Instant {
        self.links
            .values()
            .flat_map(|s| {
                [
                    s.source.as_ref().map(|_| s.next_poll),
                    s.link.next_deadline(),
                ]
            })
            .flatten()
            .chain(self.keys.next_deadline())
            .chain(std::iter::once(self.alive_due))
            .min()
            .unwrap_or(self.alive_due)
    }

    fn tick(&mut self, now: Instant) {
        let inputs = self.keys.tick(now);
        self.feed_keys(inputs, now);
        let names: Vec<String> = self.links.keys().cloned().collect();
        for name in names {
            let slot = self.links.get_mut(&name).expect("known");
            match slot.source.as_mut().filter(|_| now >= slot.next_poll) {
                None => {
                    self.feed(&name, now, Input::Tick);
                }
                // The simulator is read in line; its reading then takes the
                // same path as a network poller's.
                Some(source) => {
                    slot.next_poll = now + slot.poll;
                    let result = source.poll();
                    let sampled_ns = imsg::monotonic_ns();
                    self.on_poll(
                        PollResult {
                            link: name,
                            result,
                            sampled_ns,
                        },
                        now,
                    );
                }
            }
        }
    }

    /// A reading from a QBER source (a network poller's or the simulator's).
    fn on_poll(&mut self, r: PollResult, now: Instant) {
        let Some(slot) = self.links.get_mut(&r.link) else {
            return;
        };
        let input = match r.result {
            Ok(s) => {
                slot.sampled_ns = Some(r.sampled_ns);
                let fresh = slot.fresh.is_fresh(&s);
                Input::Sample {
                    qber: s.qber,
                    fresh,
                }
            }
            Err(e) => {
                slot.source_errors += 1;
                log::event(Prio::Warning, "qber_source_error")
                    .kv("link", &r.link)
                    .kv("source", &slot.qber_name)
                    .msg(e)
                    .send();
                Input::Tick
            }
        };
        self.feed(&r.link, now, input);
    }

    /// Runs one input through a link and carries out its actions.
    fn feed(&mut self, name: &str, now: Instant, input: Input) -> Vec<&'static str> {
        let by_operator = matches!(input, Input::Unlock { .. });
        let Some(slot) = self.links.get_mut(name) else {
            return Vec::new();
        };
        let sampled_ns = match input {
            Input::Sample { .. } => slot.sampled_ns.take(),
            _ => None,
        };
        let actions = slot.link.handle(now, input);
        let status = slot.link.status(now);
        // Rotation stops and resumes with the link's hold.
        let hold = actions.iter().find_map(|a| match a {
            Action::Hold { on } => Some(*on),
            _ => None,
        });
        let threshold = slot.link.policy().map(|p| p.qber_lockdown);
        let mut refused = Vec::new();
        for a in actions {
            match a {
                Action::Report(reasons) => {
                    let m = LinkReasons {
                        link: name.to_string(),
                        reasons,
                        qber: status.qber,
                        threshold,
                        by_operator,
                        sampled_ns,
                    };
                    let _ = self.tx.send(ToParent::Reasons(m).encode());
                }
                Action::Band { from, to, qber } => {
                    log::event(Prio::Info, "band")
                        .kv("link", name)
                        .kv("from", from.map(|b| b.as_str()).unwrap_or("-"))
                        .kv("to", to)
                        .kv("qber", format!("{qber:.4}"))
                        .send();
                }
                Action::Lock { reason, .. } => {
                    if reason == LockReason::KeyStale {
                        self.keys.halted(name);
                    }
                    log::debug(format!("engine: {name}: set {reason}"))
                }
                Action::Unlock { reason, by } => log::debug(format!(
                    "engine: {name}: cleared {reason} by {}",
                    by.as_str()
                )),
                Action::Alert { qber, threshold } => qber_exceeded(name, qber, threshold, "alert"),
                Action::Hold { on: true } => qber_exceeded(
                    name,
                    status.qber.unwrap_or(0.0),
                    threshold.unwrap_or(0.0),
                    "hold",
                ),
                Action::Hold { on: false } => log::event(Prio::Notice, "hold_released")
                    .kv("link", name)
                    .send(),
                Action::UnlockRefused { why } => refused.push(why),
            }
        }
        if let Some(on) = hold {
            let inputs = self.keys.hold(name, on, now);
            self.feed_keys(inputs, now);
        }
        refused
    }

    fn dispatch_parent(&mut self, msg: ToEngine) -> Result<(), String> {
        let now = Instant::now();
        match msg {
            ToEngine::Config(c) => {
                check_config(&c)?;
                self.configure(*c, now)?;
            }
            ToEngine::Policy(p) => {
                self.policy = p;
                let policy = self.policy.clone();
                self.keys.set_periods(|n| {
                    policy
                        .as_ref()
                        .and_then(|p| p.links.get(n))
                        .map(|p| p.rotate)
                });
                let names: Vec<String> = self.links.keys().cloned().collect();
                for n in names {
                    let lp = self.link_policy(&n);
                    self.feed(&n, now, Input::Policy(lp));
                }
            }
            ToEngine::KeyAck(a) => {
                let inputs = self.keys.on_ack(a, now)?;
                self.feed_keys(inputs, now);
            }
            ToEngine::LinkState(s) => {
                // A state for a link we do not run is ignored, not trusted.
                if let Some(slot) = self.links.get_mut(&s.link) {
                    slot.parent = Some(s);
                }
            }
            ToEngine::CtlReply(r) => {
                if let Some((tx, notes)) = self.pending.remove(&r.id) {
                    let reply = match (r.reply, notes.is_empty()) {
                        (Reply::Ok { message }, false) => {
                            Reply::ok(format!("{}\n{message}", notes.join("\n")))
                        }
                        (other, _) => other,
                    };
                    let _ = tx.send(reply);
                }
            }
            ToEngine::Event(e) => {
                let _ = self.events.send(e.line);
            }
        }
        Ok(())
    }
}

fn qber_exceeded(link: &str, qber: f64, threshold: f64, action: &str) {
    log::event(Prio::Alert, "qber_exceeded")
        .kv("link", link)
        .kv("qber", format!("{qber:.4}"))
        .kv("threshold", threshold)
        .kv("action", action)
        .send();
}
