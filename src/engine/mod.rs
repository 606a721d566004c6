//! The unprivileged engine (DESIGN §2): re-exec'd as `qkdpfd -P engine`,
//! chrooted and running as the configured user. It reads no files: the
//! parent sends a checked config over fd 3. It polls the QBER sources, runs
//! each link's pure state machine ([`link`]), serves the control socket
//! ([`control`]) and asks the parent for everything that touches the kernel
//! by reporting each link's engine-owned lock reasons.
//!
//! This file holds the process entry, the main loop and the link handling;
//! `setup.rs` the start-up and (re)configuration, `requests.rs` the
//! answers to control requests, `sources.rs` the opening of QBER sources.
//!
//! If the parent goes away the engine exits at once.

pub mod control;
mod deadlines;
pub mod https;
pub mod keys;
pub mod kme;
pub mod link;
pub mod metrics;
pub mod peering;
mod policy;
pub mod qber;
mod reports;
mod requests;
pub mod rotate;
mod setup;
pub(crate) mod sources;
mod table;
#[cfg(test)]
mod tests;

use crate::imsg::{self, EngineConfig, LinkReasons};
use crate::imsg::{LinkState, ToEngine, ToParent};
use crate::lock::LockReason;
use crate::log::{self, Event};
use crate::policy::params::{LinkPolicy, OnQber};
use crate::proto::ctl::Reply;
use control::CtlCall;
use link::{Action, Input, Link};
use qber::poller::{PollResult, Polled};
use qber::{Freshness, Source};
use std::collections::{BTreeMap, HashMap};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use table::LinkTable;
use tokio::sync::{broadcast, mpsc, oneshot};

type Tx = imsg::Sender;

/// One link in the engine: its state machine and its QBER source.
struct LinkSlot {
    link: Link,
    /// The built-in simulator, polled by [`Engine::tick`]; network sources
    /// run as a poller task instead and arrive as [`PollResult`]s. Boxed:
    /// inline, every network-polled link carried its 144 bytes.
    source: Option<Box<Source>>,
    poller: Option<tokio::task::JoinHandle<()>>,
    /// The serial of the poller whose readings the link takes (its own or
    /// its section's shared one): a reading a replaced poller left queued
    /// would be judged by the new source's [`Freshness`].
    reads_from: u64,
    fresh: Freshness,
    next_poll: Instant,
    /// Its `[qber.X]` section, one allocation for all the section's links.
    qber_name: Arc<str>,
    /// The link's id at its QBER source.
    qber_id: Box<str>,
    /// Shared by the links of one `[qber.X]`.
    qconf: Arc<crate::conf::QberConf>,
    /// What the parent last said of the link (`link` left empty).
    parent: Option<LinkState>,
    source_errors: u64,
    /// CLOCK_MONOTONIC when the last sample arrived (flip latency).
    sampled_ns: Option<std::num::NonZeroU64>,
    /// A network source's `/sim/<qber_id>/...` controls (qkdsim serves
    /// them; `qkdctl sim` is forwarded there).
    sim_control: Option<Box<qber::fetch::Getter>>,
    /// Its entry in [`Engine::due`].
    due_at: deadlines::Registered,
    /// A master's rounds are held until its link's QBER is known (its
    /// first fresh reading, or its source found lost); cleared then. A key
    /// fetched before may come from an incident the process did not see:
    /// a hold trip does not survive a restart (a `qber` lockdown does).
    waits_for_qber: bool,
}

struct Engine {
    links: LinkTable<LinkSlot>,
    /// The pollers of the `[qber.X]` sections whose links read one
    /// document, by section.
    shared: BTreeMap<String, SharedPoller>,
    /// When each link is next due: its poll or its state machine's timer
    /// (kept by [`Engine::feed`] and [`Engine::configure`]).
    due: deadlines::Deadlines,
    policy: Option<policy::Policy>,
    tx: Tx,
    pending: HashMap<u64, (oneshot::Sender<Reply>, Vec<String>)>,
    next_id: u64,
    events: broadcast::Sender<String>,
    started: Instant,
    /// The Prometheus endpoint's view, when `[daemon] metrics` is set.
    metrics: Option<tokio::sync::watch::Sender<metrics::Snapshot>>,
    /// Where network QBER pollers send their readings.
    polls: mpsc::Sender<Polled>,
    /// Key agreement of the keyed links.
    keys: keys::Keys,
    /// `[testing]` overrides of policy timing.
    testing: crate::conf::TestingConf,
    /// Each distinct policy with the `[testing]` overrides applied, once
    /// (a copy per link was 1.5 MB of a 10,000-link bench's engine).
    overridden: Vec<(Arc<LinkPolicy>, Arc<LinkPolicy>)>,
    /// Where control clients' connections go to the parent (fd 7).
    creds: Option<std::os::fd::OwnedFd>,
    /// When the next [`ToParent::Alive`] is due.
    alive_due: Instant,
    /// When free memory is next given back ([`Engine::return_memory`]).
    trim_due: Instant,
    /// The TLS material and address of each network `[qber.X]`, as the
    /// config in force gave them (what tells a renewed one).
    qber_net: BTreeMap<String, imsg::QberNet>,
    /// The last serial given to a poller (or a simulator) by
    /// [`Engine::configure`].
    pollers: u64,
    /// Reports to the parent held back while a turn's inputs are handled
    /// ([`Engine::hold`]), so that a section lost by all its links at once
    /// is said first; a lockdown leaves at once.
    reports: reports::Reports,
    /// Sections in which a link was found `source-lost` since [`Engine::hold`].
    newly_lost: std::collections::BTreeSet<String>,
}

/// The one poller of the links that read a section's shared document.
struct SharedPoller {
    conf: Arc<crate::conf::QberConf>,
    /// (link, qber_id), in the order the poller reads them.
    links: Vec<(Arc<str>, String)>,
    task: tokio::task::JoinHandle<()>,
    /// The poll (its `sampled_ns`) whose failure was last said for all.
    logged: Option<u64>,
    /// Stamped on its readings ([`LinkSlot::reads_from`]).
    serial: u64,
}

impl LinkSlot {
    /// When [`Engine::tick`] must next see this link.
    fn next_deadline(&self) -> Option<Instant> {
        let poll = self.source.as_ref().map(|_| self.next_poll);
        poll.into_iter().chain(self.link.next_deadline()).min()
    }

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
    crate::privsep::fixed_heap_thresholds();
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

/// What the main loop waits on besides its timers (set up by
/// [`Engine::start`]).
struct Inbox {
    from_parent: mpsc::Receiver<Result<ToEngine, String>>,
    calls: mpsc::Receiver<CtlCall>,
    /// Readings of the network QBER pollers.
    polls: mpsc::Receiver<Polled>,
    answers: mpsc::UnboundedReceiver<keys::KmeAnswer>,
    /// Datagrams from the configured peers' addresses.
    datagrams: mpsc::Receiver<peering::Datagram>,
    /// Datagrams from everyone else: a queue of their own, so a flood of
    /// them cannot crowd out the real ones.
    others: mpsc::Receiver<peering::Datagram>,
}

/// The engine: set up ([`Engine::start`], in `setup.rs`), then one loop
/// over the parent, control clients, QBER readings, KME answers, peer
/// datagrams and the links' deadlines, ending only with the engine.
async fn run(
    cfg: EngineConfig,
    sockets: Sockets,
    metrics_listener: Option<std::net::TcpListener>,
    peering_sockets: Vec<std::net::UdpSocket>,
    dropped: bool,
) -> ExitCode {
    let started = Engine::start(cfg, sockets, metrics_listener, peering_sockets, dropped);
    let (mut eng, mut inbox) = match started {
        Ok(e) => e,
        Err(e) => return fatal(e),
    };
    loop {
        let wake = eng.next_wakeup();
        tokio::select! {
            m = inbox.from_parent.recv() => match m {
                Some(Ok(msg)) => if let Err(e) = eng.dispatch_parent(msg) { return fatal(e) },
                // The parent is gone: exit at once (DESIGN §2).
                Some(Err(e)) => return fatal(e),
                None => return fatal("parent reader ended"),
            },
            Some(call) = inbox.calls.recv() => eng.control(call),
            Some(polled) = inbox.polls.recv() => {
                let now = Instant::now();
                eng.hold();
                for r in polled {
                    eng.on_poll(r, now);
                    eng.let_lockdown_out().await;
                }
                eng.release();
            }
            Some(a) = inbox.answers.recv() => {
                let now = Instant::now();
                let inputs = eng.keys.on_kme(a, now);
                eng.feed_keys(inputs, now);
            }
            Some(d) = inbox.datagrams.recv() => {
                let now = Instant::now();
                let inputs = eng.keys.on_datagram(d, now);
                eng.feed_keys(inputs, now);
            }
            Some(d) = inbox.others.recv() => {
                let now = Instant::now();
                let inputs = eng.keys.on_datagram(d, now);
                eng.feed_keys(inputs, now);
            }
            _ = tokio::time::sleep_until(wake.into()) => eng.tick(Instant::now()).await,
        }
        eng.keep_alive(Instant::now());
        eng.return_memory(Instant::now());
        eng.publish_metrics(Instant::now());
    }
}

impl Engine {
    /// The policy of a link, with the `[testing]` timing overrides (a
    /// copy then, one per distinct policy: only tests and benches set them).
    fn link_policy(&mut self, name: &str) -> Option<Arc<LinkPolicy>> {
        let p = self.policy.as_ref()?.links.get(name)?;
        if self.testing.rotate.is_none() && self.testing.max_key_age.is_none() {
            return Some(p.clone());
        }
        if let Some((_, o)) = self.overridden.iter().find(|(src, _)| Arc::ptr_eq(src, p)) {
            return Some(o.clone());
        }
        let mut o = (**p).clone();
        if let Some(r) = self.testing.rotate {
            o.rotate = r;
        }
        if let Some(a) = self.testing.max_key_age {
            o.max_key_age = a;
        }
        let o = Arc::new(o);
        // The source is held too, so that its address is never another's.
        self.overridden.push((p.clone(), o.clone()));
        Some(o)
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
            // Once a second too: counts a flood left held back.
            self.keys.log_overdue(now);
        }
    }

    /// What a burst of rounds freed goes back to the system once a
    /// minute (the loop turns at least once a second, for `keep_alive`).
    fn return_memory(&mut self, now: Instant) {
        if now >= self.trim_due {
            self.trim_due = now + Duration::from_secs(60);
            self.keys.shrink();
            crate::privsep::return_free_memory();
        }
    }

    fn next_wakeup(&self) -> Instant {
        let next = self.due.next();
        // Every test run checks the index against a walk over the links.
        debug_assert_eq!(
            next,
            self.links.values().filter_map(|s| s.next_deadline()).min()
        );
        next.into_iter()
            .chain(self.keys.next_deadline())
            .chain(std::iter::once(self.alive_due))
            .min()
            .unwrap_or(self.alive_due)
    }

    /// Runs the links that are due: a poll of the built-in simulator, or a
    /// tick of the state machine's timers.
    async fn tick(&mut self, now: Instant) {
        let inputs = self.keys.tick(now);
        self.feed_keys(inputs, now);
        self.hold();
        for name in self.due.due(now) {
            self.tick_link(name, now);
            self.let_lockdown_out().await;
        }
        self.release();
    }

    /// A lockdown reported during a turn of many links goes to the parent
    /// now, not after the rest of the turn (~15 ms at 10,000 links): the
    /// writer is a task of this thread's runtime, so the turn yields to it.
    /// Then, the first time in a turn, this thread gives up its CPU: the
    /// parent, woken by the write, is often queued on this CPU (the
    /// waker's) and otherwise waits there until the turn's time slice ends
    /// (measured at 10,000 links on a 2-core Linux 6.18: 2-4 ms of
    /// scheduling delay, p50 2.5 ms from sample to the parent reading the
    /// report).
    async fn let_lockdown_out(&mut self) {
        if self.reports.left_early() {
            tokio::task::yield_now().await;
            if self.reports.first_to_leave() {
                std::thread::yield_now();
            }
        }
    }

    /// Link `name`, due: its poll or its timer.
    fn tick_link(&mut self, name: Arc<str>, now: Instant) {
        let Some(slot) = self.links.get_mut(&name) else {
            self.due.forget(&name);
            return;
        };
        match slot.source.as_mut().filter(|_| now >= slot.next_poll) {
            None => {
                self.feed(&name, now, Input::Tick);
            }
            // The simulator is read in line; its reading then takes the
            // same path as a network poller's.
            Some(source) => {
                slot.next_poll = now + slot.qconf.poll;
                let result = source.poll();
                let sampled_ns = imsg::monotonic_ns();
                let poller = slot.reads_from;
                self.on_poll(
                    PollResult {
                        link: name,
                        result,
                        sampled_ns,
                        whole: false,
                        poller,
                    },
                    now,
                );
            }
        }
    }

    /// A reading from a QBER source (a network poller's or the simulator's).
    fn on_poll(&mut self, r: PollResult, now: Instant) {
        let Some(slot) = self.links.get_mut(&r.link) else {
            return;
        };
        // Read before a reload replaced the link's source: not the source
        // the link is watched by now (its sequence would set the new one's
        // freshness).
        if r.poller != slot.reads_from {
            return;
        }
        let input = match r.result {
            Ok(s) => {
                slot.sampled_ns = std::num::NonZeroU64::new(r.sampled_ns);
                let fresh = slot.fresh.is_fresh(&s);
                Input::Sample {
                    qber: s.qber,
                    fresh,
                }
            }
            Err(e) => {
                slot.source_errors += 1;
                match self.shared.get_mut(&*slot.qber_name).filter(|_| r.whole) {
                    // A shared document's failure reaches every link from
                    // one poll: said once, not once per link.
                    Some(p) if p.logged == Some(r.sampled_ns) => {}
                    Some(p) => {
                        log::event(Event::QberSourceError)
                            .kv("source", &slot.qber_name)
                            .kv("links", p.links.len())
                            .msg(e)
                            .send();
                        p.logged = Some(r.sampled_ns);
                    }
                    None => log::event(Event::QberSourceError)
                        .kv("link", &r.link)
                        .kv("source", &slot.qber_name)
                        .msg(e)
                        .send(),
                }
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
            Input::Sample { .. } => slot.sampled_ns.take().map(std::num::NonZeroU64::get),
            _ => None,
        };
        let actions = slot.link.handle(now, input);
        let next = slot.next_deadline();
        self.due.set(name, &mut slot.due_at, next);
        let status = slot.link.status(now);
        // Rotation stops and resumes with the link's hold.
        let hold = actions.iter().find_map(|a| match a {
            Action::Hold { on } => Some(*on),
            _ => None,
        });
        // A master's first round, once its link's QBER is known: below the
        // lockdown threshold, or a trip formed (a hold trip keeps it held),
        // or the source found lost. A high first reading is no all-clear:
        // the trip it may start needs trip_samples of them.
        let qber_known = slot.waits_for_qber
            && slot.link.determined()
            && (status.over_threshold == 0 || slot.link.tripped().is_some());
        if qber_known {
            slot.waits_for_qber = false;
        }
        let first_round = qber_known && slot.link.tripped() != Some(OnQber::Hold);
        let threshold = slot.link.policy().map(|p| p.qber_lockdown);
        // A lost source may be the whole section's (said as one at the
        // turn's end); any other lock is not held back.
        let locks = (actions.iter())
            .any(|a| matches!(a, Action::Lock { reason, .. } if *reason != LockReason::SourceLost));
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
                    let frame = ToParent::Reasons(m).encode();
                    for f in self.reports.report(name, frame, locks) {
                        let _ = self.tx.send(f);
                    }
                }
                Action::Band { from, to, qber } => {
                    log::event(Event::Band)
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
                    if reason == LockReason::SourceLost && self.reports.holding() {
                        self.newly_lost.insert(slot.qber_name.to_string());
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
                Action::Hold { on: false } => {
                    log::event(Event::HoldReleased).kv("link", name).send()
                }
                Action::UnlockRefused { why } => refused.push(why),
            }
        }
        if let Some(on) = hold {
            let inputs = self.keys.hold(name, on, now);
            self.feed_keys(inputs, now);
        } else if first_round {
            let inputs = self.keys.hold_rounds(name, false, now);
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
                crate::privsep::return_free_memory();
            }
            ToEngine::Policy(p) => {
                let links = &self.links;
                self.policy = p.map(|p| policy::Policy::new(p, |n| links.name(n).cloned()));
                self.overridden.clear();
                let policy = &self.policy;
                self.keys.set_periods(|n| {
                    policy
                        .as_ref()
                        .and_then(|p| p.links.get(n))
                        .map(|p| p.rotate)
                });
                let names: Vec<String> = self.links.keys().map(String::from).collect();
                for n in names {
                    let lp = self.link_policy(&n);
                    self.feed(&n, now, Input::Policy(lp));
                }
                // After every report the new numbers caused (none is held
                // outside a turn of many links): the parent opens links it
                // held for `no-policy` only now.
                debug_assert!(!self.reports.holding());
                if let Some(serial) = self.policy.as_ref().map(|p| p.serial) {
                    let taken = ToParent::PolicyTaken(imsg::PolicyTaken { serial });
                    let _ = self.tx.send(taken.encode());
                }
                crate::privsep::return_free_memory();
            }
            ToEngine::KeyAck(a) => {
                let inputs = self.keys.on_ack(a, now)?;
                self.feed_keys(inputs, now);
            }
            ToEngine::LinkState(s) => {
                // A state for a link we do not run is ignored, not trusted.
                if let Some(slot) = self.links.get_mut(&s.link) {
                    // Without its name: the slot's row has it, and a copy
                    // made at each state would be one more small chunk
                    // left in the heap per link and round.
                    slot.parent = Some(LinkState {
                        link: String::new(),
                        ..s
                    });
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
    log::event(Event::QberExceeded)
        .kv("link", link)
        .kv("qber", format!("{qber:.4}"))
        .kv("threshold", threshold)
        .kv("action", action)
        .send();
}
