//! The parent's event loop (current-thread tokio, started after the engine
//! exists): engine messages, signals, the incoming spool, expiry, retries.
//! `dispatch_engine` hands every engine message to its handler, which
//! re-checks it against the config; a malformed or impossible one is
//! treated like the engine's death: every link locked with
//! `process-failure`, exit non-zero.
//!
//! Handlers return what changed ([`Changed`]); only this loop tells the
//! engine, right after each handler (`to_engine.rs`).

use super::changed::Changed;
use super::to_engine::{Tx, send, send_all_states, send_policy};
use super::{Parent, keys, links, links::OpenedBy};
use crate::imsg::creds::Readers;
use crate::imsg::{self, LogRecord, ToEngine, ToParent};
use crate::lock::LockReason;
use crate::log::{self, Event, Prio};
use crate::privsep::EngineProc;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio::signal::unix::{SignalKind, signal};

pub fn run(p: Parent, engine: EngineProc) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("qkdpfd: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(main_loop(p, engine))
}

fn install_sink(p: &Parent, tx: Tx) {
    let foreground = p.opts.foreground;
    if !foreground {
        super::syslog::open(&p.conf.daemon.syslog_facility);
    }
    log::init(Box::new(move |prio, line| {
        if foreground {
            log::to_stderr("", line);
        } else {
            super::syslog::write(prio, line);
        }
        if line.starts_with("event=") {
            let ev = LogRecord {
                prio: prio as u8,
                line: line.to_string(),
            };
            let _ = tx.send(ToEngine::Event(ev).encode());
        }
    }));
}

async fn main_loop(mut p: Parent, engine: EngineProc) -> ExitCode {
    let EngineProc {
        mut child,
        chan,
        creds,
    } = engine;
    p.ctl_creds = Some((creds, Default::default()));
    if let Err(e) = chan.set_nonblocking(true) {
        eprintln!("qkdpfd: {e}");
        return ExitCode::FAILURE;
    }
    let chan = match tokio::net::UnixStream::from_std(chan) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("qkdpfd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (rd, wr) = chan.into_split();
    // Losing the writer shows up as EOF on the reader: nothing to do here.
    // An engine that stops reading is found by the tick (`overflowed`).
    let tx = imsg::spawn_writer(wr, || {}, || {});
    let mut from_engine = imsg::spawn_reader(rd, ToParent::decode, "lost connection to engine");
    // The config is the engine's first message; only then may events flow.
    let Some(inputs) = p.engine_inputs.take() else {
        return engine_lost(
            &mut p,
            &mut child,
            "engine config: its inputs were not read",
        );
    };
    let cfg = super::engine_conf::engine_config(&p, inputs);
    // The engine's sandbox fixes them at its start (Linux: landlock).
    p.engine_ports = crate::sandbox::connect_ports(&cfg);
    match ToEngine::Config(Box::new(cfg)).try_encode() {
        Ok(f) => {
            let _ = tx.send(f);
        }
        Err(e) => return engine_lost(&mut p, &mut child, &format!("engine config: {e}")),
    }
    install_sink(&p, tx.clone());
    log::event(Event::Startup)
        .kv("version", env!("CARGO_PKG_VERSION"))
        .kv("links", p.links.links.len())
        .kv(
            "policy",
            p.bundle
                .as_ref()
                .map(|b| b.policy.serial.to_string())
                .unwrap_or("none".into()),
        )
        .kv("firewall", p.links.fw.name())
        .send();
    send_policy(&p, &tx);
    send_all_states(&p, &tx);
    // What start-up freed (the config's text and tree, the first
    // reconcile) goes back now; then after each burst, and once a minute.
    crate::privsep::return_free_memory();
    let mut ticks: u32 = 0;

    let (mut hup, mut term, mut int) = match (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(a), Ok(b), Ok(c)) => (a, b, c),
        _ => return ExitCode::FAILURE,
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut session_poll = tokio::time::interval(super::session::POLL);
    session_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heartbeat = super::deadman::Heartbeat::new(Instant::now());
    let hello_deadline = Instant::now() + imsg::HELLO_TIMEOUT;
    let mut hello = false;
    // The engine's last frame, and the last tick (a parent that was itself
    // stuck, say in a hung tool, gives the engine's queued frames a turn
    // before it calls the engine silent).
    let mut last_heard = Instant::now();
    let mut last_tick = Instant::now();
    let mut expiry_log = ExpiryLog::default();
    // A bundle's verification answer (the worker thread's; policy_jobs).
    let mut job_rx = None;
    // Control requests being read from their clients' own connections.
    let mut readers = Readers::default();
    // The tick's read-back of every link is next (`Links::start_reconcile`).
    let mut listing_due = false;
    p.links.defer_opens = true;
    loop {
        if let Some(rx) = p.job_rx.take() {
            job_rx = Some(rx);
        }
        tokio::select! {
            // Engine reports first: a lockdown never waits behind the
            // re-application of a new bundle (the last branch).
            biased;
            m = from_engine.recv() => {
                last_heard = Instant::now();
                let mut m = Some(m.unwrap_or_else(|| Err("engine reader ended".into())));
                // Drain what is already queued so that the epochs of many
                // links share one fsync of the state file (group commit).
                let mut budget = 256;
                while let Some(next) = m.take() {
                    match next {
                        Ok(ToParent::Hello(h)) if h.version == imsg::VERSION && !hello => hello = true,
                        Ok(msg) if hello => match dispatch_engine(&mut p, &mut readers, msg) {
                            Ok(changed) => send(&p, &tx, changed),
                            Err(e) => return engine_lost(&mut p, &mut child, &e),
                        },
                        Ok(_) => return engine_lost(&mut p, &mut child, "engine spoke before hello"),
                        Err(e) => return engine_lost(&mut p, &mut child, &e),
                    }
                    budget -= 1;
                    if budget > 0 {
                        m = from_engine.try_recv().ok();
                    }
                }
                // The install answers sent above leave before what follows
                // an install: an answer needs only the read-back, while a
                // restart that finds the verifier unwritten holds no-key
                // (closed), and a new session is a step after the install.
                if !p.pending_verifiers.is_empty() || !p.pending_sessions.is_empty() {
                    tokio::task::yield_now().await;
                }
                keys::new_sessions(&mut p);
                let changed = keys::flush_epochs(&mut p);
                send(&p, &tx, changed);
            }
            line = readers.next() => {
                let changed = super::ctl::client_request(&mut p, line);
                send(&p, &tx, changed);
            }
            _ = hup.recv() => {
                let (r, changed) = super::reload::reload(&mut p);
                send(&p, &tx, changed);
                crate::privsep::return_free_memory();
                log::debug(format!("SIGHUP: {r:?}"));
            }
            _ = term.recv() => return shutdown(&mut p, &mut child, "SIGTERM"),
            _ = int.recv() => return shutdown(&mut p, &mut child, "SIGINT"),
            _ = tick.tick() => {
                // First: the heartbeat only this loop keeps alive.
                match p.links.may_refresh_switch() {
                    true => heartbeat.beat(p.links.fw.as_mut(), Instant::now()),
                    false => heartbeat.held(Instant::now()),
                }
                if !hello && Instant::now() > hello_deadline {
                    return engine_lost(&mut p, &mut child, "engine did not say hello");
                }
                let now = Instant::now();
                if now.duration_since(last_tick) > 2 * imsg::ALIVE_EVERY {
                    last_heard = last_heard.max(now - imsg::ALIVE_EVERY);
                }
                last_tick = now;
                if hello && now.duration_since(last_heard) > imsg::ENGINE_SILENCE {
                    let why = format!(
                        "engine silent for {} (its loop stalled)",
                        crate::duration::format(now.duration_since(last_heard))
                    );
                    return engine_lost(&mut p, &mut child, &why);
                }
                if tx.overflowed() {
                    let why = format!(
                        "engine stopped reading: {} bytes queued for it",
                        tx.queued()
                    );
                    return engine_lost(&mut p, &mut child, &why);
                }
                // The reconcile's listing has a turn of its own, then a
                // slice of links a turn (below).
                listing_due = true;
                let mut changed = Changed::none();
                for name in keys::lock_drifted(&mut p) {
                    changed.state(&name);
                }
                send(&p, &tx, changed);
                super::policy_jobs::scan_spool(&mut p);
                super::ctl::unknown_overdue(&mut p);
                let changed = check_expiry(&mut p, &mut expiry_log);
                send(&p, &tx, changed);
                ticks = ticks.wrapping_add(1);
                if ticks % 60 == 0 {
                    crate::privsep::return_free_memory();
                }
            }
            _ = session_poll.tick(), if !p.sessions.is_empty() || !p.links.session_due.is_empty() => {
                let changed = super::session::poll(&mut p, Instant::now());
                send(&p, &tx, changed);
            }
            r = async { job_rx.as_mut().expect("guarded").await }, if job_rx.is_some() => {
                job_rx = None;
                let changed = super::policy_jobs::finish(&mut p, r);
                send(&p, &tx, changed);
                // An activation queues its re-application: the memory goes
                // back when that ends (below), not twice.
                if p.reapply.is_empty() {
                    crate::privsep::return_free_memory();
                }
            }
            // The tick's reconcile, a slice of links a turn (fewer once
            // flips took their time), the engine's reports read between
            // slices (a lockdown waited up to 30 ms for all 10,000 links);
            // before the opens it queues.
            _ = std::future::ready(()), if listing_due => {
                listing_due = false;
                p.links.start_reconcile();
                tokio::task::yield_now().await;
            }
            _ = std::future::ready(()), if p.links.reconciling() => {
                let until = Some(Instant::now() + links::SLICE_TIME);
                let at_once = links::RECONCILE_AT_ONCE;
                let mut changed = Changed::none();
                let done = p.links.reconcile_more(p.bundle.as_ref(), OpenedBy::Auto, at_once, until);
                for (name, _) in done {
                    changed.state(&name);
                }
                send(&p, &tx, changed);
                tokio::task::yield_now().await;
            }
            // The opens a tick or installs queued, as many per turn as the
            // firewall takes at once, before a re-application's turn (else
            // the re-application, reaching links whose keys are still on
            // their way, loads a lockdown for each that its open then undoes);
            // yielding as below.
            _ = std::future::ready(()), if !p.links.opening.is_empty() => {
                let at_once = p.links.fw.links_at_once();
                let mut changed = super::changed::Changed::none();
                for (name, c) in p.links.open_queued(p.bundle.as_ref(), at_once) {
                    if c.is_some() {
                        changed.state(&name);
                    }
                }
                send(&p, &tx, changed);
                tokio::task::yield_now().await;
            }
            _ = std::future::ready(()), if !p.reapply.is_empty() => {
                let changed = p.reapply_next();
                send(&p, &tx, changed);
                // An always-ready branch must give the runtime its turn, or
                // its timers and sockets wait (the tick and the dead-man
                // switch's heartbeat, the engine's frames, our own writer):
                // 10,000 opens in one go went 141 s without a heartbeat.
                tokio::task::yield_now().await;
                if p.reapply.is_empty() {
                    crate::privsep::return_free_memory();
                }
            }
            // Preloading left for a later turn (below), when nothing else
            // is ready: each run bounded, reports read between them.
            _ = std::future::ready(()), if p.links.settling() => {
                tokio::task::yield_now().await;
            }
        }
        // The preloading the branches above deferred, many links a run; a
        // re-application's and a tick's opens once they end.
        if p.reapply.is_empty()
            && p.links.opening.is_empty()
            && !listing_due
            && !p.links.reconciling()
        {
            p.links.settle();
        }
    }
}

/// Every engine message is checked against the parent's own config.
fn dispatch_engine(
    p: &mut Parent,
    readers: &mut Readers,
    msg: ToParent,
) -> Result<Changed, String> {
    match msg {
        ToParent::Hello(_) => Err("second hello".into()),
        ToParent::Reasons(r) => super::reports::reasons(p, r),
        ToParent::SourceLost(s) => super::reports::source_lost(p, s),
        ToParent::PolicyTaken(t) => super::policy_jobs::policy_taken(p, t.serial),
        ToParent::Log(rec) => super::reports::log_record(rec),
        ToParent::PersistEpoch(e) => keys::persist_epoch(p, e),
        ToParent::InstallPsk(i) => keys::install_psk(p, i),
        ToParent::CtlRequest(req) => super::ctl::ctl_request(p, readers, req),
        // Heard: the loop above keeps the time.
        ToParent::Alive => Ok(Changed::none()),
    }
}

/// When the expiry events were last said, for the active bundle's serial.
#[derive(Default)]
struct ExpiryLog {
    serial: u64,
    expiring: Option<Instant>,
    expired: Option<Instant>,
}

const DAY: Duration = Duration::from_secs(86400);
const HOUR: Duration = Duration::from_secs(3600);

/// A bundle within `[policy] expiry_warning` of its `not_after` is warned
/// about daily (`policy_expiring`); past it, it stays in force with an
/// hourly alert, unless it says `expired_action = "lockdown"`. A new
/// bundle is told about at once.
fn check_expiry(p: &mut Parent, log: &mut ExpiryLog) -> Changed {
    let mut out = Changed::none();
    let Some(b) = &p.bundle else { return out };
    let Some(na) = b.policy.not_after else {
        return out;
    };
    if log.serial != b.policy.serial {
        *log = ExpiryLog {
            serial: b.policy.serial,
            ..ExpiryLog::default()
        };
    }
    let due = |last: &mut Option<Instant>, every: Duration| {
        let due = last.is_none_or(|t| t.elapsed() >= every);
        if due {
            *last = Some(Instant::now());
        }
        due
    };
    let now = crate::utc::now_unix();
    if now <= na {
        let left = na - now;
        let warn = p.conf.policy.expiry_warning.as_secs();
        if left < warn && due(&mut log.expiring, DAY) {
            log::event(Event::PolicyExpiring)
                .kv("serial", b.policy.serial)
                .kv("not_after", na)
                .kv("days_left", left.div_ceil(86400))
                .send();
        }
        return out;
    }
    if due(&mut log.expired, HOUR) {
        log::event(Event::PolicyExpired)
            .kv("serial", b.policy.serial)
            .kv("not_after", na)
            .send();
    }
    if b.expiry_locks(now)
        && (p.links.links.values()).any(|l| !l.parent.contains(LockReason::NoPolicy))
    {
        p.links
            .lock_all(LockReason::NoPolicy, p.bundle.as_ref(), OpenedBy::Auto);
        out.all_states();
    }
    out
}

fn stop_engine(child: &mut std::process::Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
}

/// The engine died or misbehaved: lock every link, record it, exit non-zero.
fn engine_lost(p: &mut Parent, child: &mut std::process::Child, why: &str) -> ExitCode {
    log::event(Event::EngineLost).msg(why).send();
    p.links.lock_all(
        LockReason::ProcessFailure,
        p.bundle.as_ref(),
        OpenedBy::Auto,
    );
    p.links.persist();
    p.release_guardian_if_locked();
    stop_engine(child);
    log::event(Event::Shutdown)
        .at(Prio::Crit)
        .kv("reason", "process-failure")
        .send();
    ExitCode::FAILURE
}

fn shutdown(p: &mut Parent, child: &mut std::process::Child, sig: &str) -> ExitCode {
    let lock = p.conf.daemon.on_stop == crate::conf::OnStop::Lockdown;
    if lock {
        p.links.lock_all(
            LockReason::ProcessFailure,
            p.bundle.as_ref(),
            OpenedBy::Auto,
        );
    }
    // With `keep` the dead-man switch stays armed (DESIGN §2): the kernel
    // keeps every link as it is while a restart completes within the
    // switch's timeout, and locks them all if none does. A stopped daemon
    // watches no QBER and rotates no key: its links must not stay open.
    match lock {
        true => p.release_guardian_if_locked(),
        false => p.release_guardian(),
    }
    stop_engine(child);
    let _ = std::fs::remove_file(&p.conf.daemon.socket);
    log::event(Event::Shutdown)
        .kv("signal", sig)
        .kv("kernel_state", if lock { "lockdown" } else { "kept" })
        .send();
    ExitCode::SUCCESS
}
