//! The privileged parent (DESIGN §2). Reads qkdpfd.conf, verifies and
//! activates policy bundles, keeps the state file, and is the only process
//! that touches the kernel (firewall). It owns the lock reasons no remote
//! input may clear (operator, no-policy, process-failure, psk-drift) and
//! re-checks every engine request against its own config.
//!
//! Start-up order: config, state file, active bundle, firewall skeleton,
//! control socket, daemonize, re-exec the engine — all before any runtime
//! or thread exists — then a current-thread tokio loop.

pub mod activate;
mod changed;
mod ctl;
mod deadman;
mod engine_conf;
pub mod fw;
mod guardian;
pub mod keys;
pub mod links;
mod lockdown;
mod operator;
mod policy_jobs;
mod reload;
mod reports;
mod run;
mod session;
mod syslog;
mod to_engine;
pub mod wg;

use crate::conf::{self, Config};
use crate::lock::LockReason;
use crate::log::{self, Event};
use crate::parent::links::{LinkCtl, Links};
use crate::policy::{Bundle, PublicKey, Store};
use crate::ruleset::{Checker, targets};
use crate::state;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Command-line options of `qkdpfd [-dLnv] [-f file]`.
#[derive(Clone, Debug, Default)]
pub struct Opts {
    pub argv0: PathBuf,
    pub foreground: bool,
    pub lockdown: bool,
    /// `-B`: print the nftables boot include and exit.
    pub boot: bool,
    pub check: bool,
    pub verbose: u8,
    pub config: Option<PathBuf>,
    /// Arguments to pass on to the engine (the original flags).
    pub args: Vec<OsString>,
}

/// Everything the parent holds.
pub struct Parent {
    pub conf: Config,
    pub opts: Opts,
    pub keys: Vec<PublicKey>,
    pub store: Store,
    pub bundle: Option<Bundle>,
    pub links: Links,
    pub started: std::time::Instant,
    /// What the engine gets: network QBER sources' TLS bytes and
    /// addresses, the peering key, KME credentials and link_ids. Moved
    /// into the engine's config message when that is built: the keys
    /// are the engine's to hold, not the parent's (and at 10,000 links
    /// they were 3.5 MB of its heap).
    pub engine_inputs: Option<engine_conf::EngineInputs>,
    /// WireGuard PSKs of keyed links.
    pub wg: wg::psk::PskWriter,
    /// Epochs the engine asked to persist, written together (group commit).
    pub pending_epochs: Vec<(String, u64)>,
    /// Verifiers of PSKs just installed, written together after the batch.
    /// (link, verifier, installed at in Unix seconds).
    pub pending_verifiers: Vec<(String, String, u64)>,
    /// Links (and epochs) whose master just installed: their peers are
    /// re-created for a new session once the install answers are out.
    pub pending_sessions: Vec<(String, u64)>,
    /// Links held for `no-session`, waiting for a new WireGuard session.
    pub sessions: session::Waits,
    /// Control clients' connections from the engine, and the uids the
    /// kernel gave for them ([`crate::imsg::creds`]).
    pub ctl_creds: Option<(OwnedFd, crate::imsg::creds::Creds)>,
    /// The bundle being verified on a worker thread, and its answer.
    pub job: Option<policy_jobs::Job>,
    pub job_rx: Option<tokio::sync::oneshot::Receiver<activate::Checked>>,
    /// Links still to re-apply after an activation, a few per loop turn
    /// (`Links::turn`).
    pub reapply: std::collections::VecDeque<String>,
    /// Links whose re-application at start waits for the engine's first
    /// report on them (what they should be is unknown until then).
    pub reapply_on_report: std::collections::BTreeSet<String>,
    /// The serial of a bundle activated while links were held for
    /// `no-policy`: they stay held until the engine has judged them under
    /// it ([`policy_jobs::policy_taken`]).
    pub awaiting_judgement: Option<u64>,
    /// Spool entries that could not leave the spool, passed over.
    pub spool: policy_jobs::Spool,
    /// The TCP ports the engine's sandbox allows, fixed at its start.
    pub engine_ports: Vec<u16>,
    /// `ctl_denied uid=unknown` (an engine's request with no client behind
    /// it): one line a minute, the rest counted (DESIGN §8).
    pub ctl_unknown: crate::log::PerMinute<(), String>,
    /// When the parent last ran `qkdctl unlock` for each link: only within
    /// [`links::RELEASE_WINDOW`] of it is the engine's report of a release
    /// "by the operator" logged so (an engine's word alone is not).
    pub operator_unlocks: std::collections::HashMap<String, std::time::Instant>,
    /// pf: the process that locks every link if this one dies unclean.
    pub guardian: Option<guardian::Guardian>,
    /// The state directory's owner lock, held for the daemon's life.
    _owner: Option<state::Owner>,
}

impl Parent {
    /// A stop that leaves the links as `on_stop` wants (or as a failed
    /// engine made them): the guardian goes without touching them.
    pub fn release_guardian(&mut self) {
        if let Some(g) = self.guardian.take() {
            g.release();
        }
    }

    /// After locking every link on the way out: the guardian is released
    /// only if no link's lockdown failed. Else the parent's exit closes its
    /// pipe unannounced and it runs `-L` once more, on its own.
    pub fn release_guardian_if_locked(&mut self) {
        let failed = self.links.links.values().filter(|l| l.lock_failed).count();
        if failed == 0 {
            return self.release_guardian();
        }
        if self.guardian.is_some() {
            log::debug(format!(
                "{failed} link(s) failed to lock: the guardian is left to lock them"
            ));
        }
    }
}

pub fn state_path(conf: &Config) -> PathBuf {
    conf.daemon.state_dir.join("state")
}

fn exit_err(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("qkdpfd: {msg}");
    ExitCode::FAILURE
}

pub fn main(opts: Opts) -> ExitCode {
    crate::privsep::no_core_dumps();
    crate::privsep::fixed_heap_thresholds();
    log::set_verbose(opts.verbose > 0);
    log::set_proc("parent");
    let path = opts
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(conf::CONFFILE));
    let conf = match conf::load(&path) {
        Ok(c) => c,
        Err(e) if opts.lockdown => {
            // -L must lock even when the config does not parse: then every
            // link chain found in the kernel is locked.
            eprint!("{e}");
            return lockdown::without_config(&path);
        }
        Err(e) => {
            eprint!("{e}");
            return exit_err(format!("{}: configuration has errors", path.display()));
        }
    };
    if let Err(e) = check_supported(&conf) {
        return exit_err(e);
    }
    crate::utc::set_offset(conf.testing.wall_clock_offset);
    if opts.check {
        return check(&conf, opts.verbose > 0);
    }
    if opts.lockdown {
        return lockdown::from_config(conf);
    }
    if opts.boot {
        return lockdown::boot_include(&conf);
    }
    if let Err(e) = crate::privsep::check_argv0(&opts.argv0) {
        return exit_err(e);
    }
    // Before the firewall is touched: the kernel keeps what it holds.
    if let Err(e) = engine_conf::engine_files_fit(&conf) {
        return exit_err(e);
    }
    let targets = lock_on_panic(&conf);
    // Before touching the firewall: a live socket means another qkdpfd runs.
    if std::os::unix::net::UnixStream::connect(&conf.daemon.socket).is_ok() {
        return exit_err(format!(
            "already running: control socket {} answers",
            conf.daemon.socket.display()
        ));
    }
    if !opts.foreground {
        // Start-up events (a rejected active bundle, a failed lockdown)
        // must reach syslog too; the run loop replaces this sink.
        syslog::open(&conf.daemon.syslog_facility);
        log::init(Box::new(|prio, line| {
            log::to_stderr("qkdpfd: ", line);
            syslog::write(prio, line);
        }));
    }
    // One daemon per state directory, checked before the firewall too.
    let dir = &conf.daemon.state_dir;
    if let Err(e) = std::fs::create_dir_all(dir) {
        return exit_err(format!("mkdir {}: {e}", dir.display()));
    }
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    let owner = match state::own(dir) {
        Ok(Some(o)) => Some(o),
        Ok(None) => {
            return exit_err(format!(
                "already running: another process holds {}",
                dir.join("lock").display()
            ));
        }
        Err(e) => {
            log::debug(format!(
                "state lock {}: {e} (started without it)",
                dir.display()
            ));
            None
        }
    };
    // A start that fails from here (a state file it cannot read, a key or
    // TLS file, host or interface) leaves no daemon to watch the links:
    // they are locked as `-L` locks them before the exit. On nftables the
    // dead-man switch would lock them within seconds anyway; pf has
    // nothing else, and rc.d runs no `-L` after a failed start.
    let started = Parent::new(conf, opts, targets, owner).and_then(|mut p| {
        p.load_engine_inputs()?;
        Ok(p)
    });
    match started.and_then(Parent::start) {
        Ok(code) => code,
        Err(e) => failed_start(e, &path),
    }
}

/// The start failed with `e`: every link locked (`-L`, the config read
/// again: a copy kept for this would hold megabytes for the daemon's life
/// at 10,000 links), then exit 1.
fn failed_start(e: String, path: &Path) -> ExitCode {
    eprintln!("qkdpfd: {e}");
    eprintln!("qkdpfd: the start failed: locking every link");
    let _ = match conf::load(path) {
        Ok(conf) => lockdown::lock_all(conf),
        Err(_) => lockdown::without_config(path),
    };
    ExitCode::FAILURE
}

/// `qkdpfd -P guardian` (pf): started by the parent with the config it
/// runs on; see `guardian.rs`.
pub fn guardian_main(opts: Opts) -> ExitCode {
    crate::privsep::no_core_dumps();
    let path = opts
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(conf::CONFFILE));
    match conf::load(&path) {
        Ok(c) => guardian::main(c, opts.foreground),
        Err(e) => {
            eprint!("{e}");
            exit_err(format!(
                "guardian: {}: configuration has errors",
                path.display()
            ))
        }
    }
}

/// `qkdpfd -n`: config and active bundle; `-nv` also prints the config.
fn check(conf: &Config, verbose: bool) -> ExitCode {
    if verbose {
        print!("{}", conf::print::normalised(conf));
    }
    let keys = match read_keys(conf) {
        Ok(k) => k,
        Err(e) => return exit_err(e),
    };
    // What the start refuses before the engine runs: a start that fails
    // there locks every link, so rc.d's configtest must catch it first.
    if let Err(e) = privsep_fits(conf) {
        return exit_err(e);
    }
    // What start-up would read: QBER sources' TLS files and host names,
    // the peering key, KME credentials and the WireGuard interfaces.
    if let Err(e) = engine_conf::engine_files_fit(conf) {
        return exit_err(e);
    }
    let mut backend = wg::new(&conf.wireguard, &conf.daemon.state_dir);
    if let Err(e) = engine_conf::engine_inputs(conf, &keys, backend.as_mut()) {
        return exit_err(e);
    }
    let fw = fw::new(&conf.firewall, &conf.daemon.state_dir);
    let targets = targets(conf);
    let checker = Checker {
        fw: fw.as_ref(),
        targets: &targets,
    };
    let store = Store::new(conf.policy.dir.clone());
    match state::load(&state_path(conf)) {
        Err(e) => return exit_err(format!("state file: {e}")),
        Ok(None) => println!("no state file: no active policy"),
        Ok(Some(st)) => match activate::restore(&keys, &store, &st, &checker) {
            Ok(Some(b)) => println!("active policy serial {} OK", b.policy.serial),
            Ok(None) => println!("no active policy"),
            Err(e) => return exit_err(format!("active policy: {e}")),
        },
    }
    println!("configuration OK");
    ExitCode::SUCCESS
}

/// The engine user and chroot (checked only when run as root, as the
/// start drops privileges only then) and the control socket's group.
fn privsep_fits(conf: &Config) -> Result<(), String> {
    if crate::privsep::is_real_root() {
        crate::privsep::check_chroot(&conf.daemon.chroot)?;
        crate::privsep::resolve_user(&conf.daemon.user, &conf.daemon.chroot)?;
    }
    if let Some(g) = &conf.daemon.socket_group {
        crate::privsep::resolve_group(g)?;
    }
    Ok(())
}

/// What the config may name but this release cannot run yet. Refused here
/// rather than left unwatched in the engine. (Every QBER driver runs now.)
pub fn check_supported(conf: &Config) -> Result<(), String> {
    // `[testing] panic_on_reload`: only a running parent (its loop is up:
    // a reload, never start-up) panics, to prove `lock_on_panic`.
    #[cfg(feature = "testing")]
    if conf.testing.panic_on_reload && tokio::runtime::Handle::try_current().is_ok() {
        panic!("[testing] panic_on_reload");
    }
    #[cfg(not(feature = "testing"))]
    let _ = conf;
    Ok(())
}

pub fn read_keys(conf: &Config) -> Result<Vec<PublicKey>, String> {
    conf.policy
        .pubkeys
        .iter()
        .map(|p| crate::policy::read_pubkey(p).map_err(|e| format!("{}: {e}", p.display())))
        .collect()
}

impl Parent {
    /// Loads state, keys and the active bundle and installs the firewall
    /// skeleton (every link default-deny). Fails closed: without a usable
    /// bundle, links are held by `no-policy`. `tlist`: every link's
    /// target, in name order (as [`lock_on_panic`] returns them).
    pub fn new(
        conf: Config,
        opts: Opts,
        tlist: std::sync::Arc<[crate::ruleset::LinkTarget]>,
        owner: Option<state::Owner>,
    ) -> Result<Parent, String> {
        let keys = read_keys(&conf)?;
        let state_path = state_path(&conf);
        let st = state::load(&state_path)
            .map_err(|e| {
                format!(
                    "state file {}: {e}; repair it, or move it and its .journal aside to \
                     start without them (links stay locked until the engine reports on \
                     them; the operator and QBER lockdowns and key epochs they recorded \
                     are lost)",
                    state_path.display()
                )
            })?
            .unwrap_or_default();
        let store = Store::new(conf.policy.dir.clone());
        let mut fw = fw::new(&conf.firewall, &conf.daemon.state_dir);
        fw.init_shared(&tlist)
            .map_err(|e| format!("firewall init: {e}"))?;
        // A switch that lapsed (no qkdpfd refreshed it: a stop with no
        // restart in time, a crash, a boot) has dropped every link since.
        // Such a start holds every link for process-failure until the
        // engine reports fresh state (QBER may have risen meanwhile), and
        // refreshes the switch only from its loop, once the first reconcile
        // has locked the links the chains show open: refreshed here, they
        // would pass traffic again through the bundle checks.
        let lapsed = fw.switch_lapsed().unwrap_or_else(|e| {
            log::event(Event::DeadmanFailed).msg(e).send();
            true
        });
        if lapsed {
            // At boot (the include's empty set) as after a crash: the links'
            // process-failure says it, not an alert at every boot.
            log::debug(
                "fw: the dead-man switch had lapsed: every link held for process-failure until the engine reports",
            );
        } else if let Err(e) = fw.keep_alive(Some(deadman::TIMEOUT)) {
            // Armed before any slow work (bundle checks, DNS, TLS files):
            // if start-up hangs or dies from here on, every link locks by
            // itself.
            log::event(Event::DeadmanFailed).msg(e).send();
        }
        let bundle = {
            let targets = targets(&conf);
            let checker = Checker {
                fw: fw.as_ref(),
                targets: &targets,
            };
            // A failure: every link stays locked by no-policy, and the
            // operator must know at once (LOG_ALERT).
            activate::restore(&keys, &store, &st, &checker).unwrap_or_else(|e| {
                log::event(Event::PolicyRejected)
                    .at(log::Prio::Alert)
                    .kv("reason", e.reason())
                    .kv("serial", st.active.as_ref().map_or(0, |a| a.serial))
                    .kv("source", "startup")
                    .msg(&e)
                    .send();
                None
            })
        };
        // Built at once, so that its B-tree nodes are packed (inserted one
        // by one in name order they stay half empty).
        let map: BTreeMap<String, LinkCtl> = (conf.link.keys())
            .map(|name| {
                let mut l = LinkCtl::restored(st.links.get(name));
                if bundle.is_none() {
                    l.parent.insert(LockReason::NoPolicy);
                }
                (name.clone(), l)
            })
            .collect();
        let now = std::time::Instant::now();
        let backend: wg::SharedBackend = std::sync::Arc::new(std::sync::Mutex::new(wg::new(
            &conf.wireguard,
            &conf.daemon.state_dir,
        )));
        let peers = wg::Peers::of(&conf);
        let mut wg = wg::psk::PskWriter::new(&conf, peers.clone(), backend.clone(), now);
        // What the kernel holds now is the record; a link it shows neither
        // open nor locked is locked by the first reconcile below, an open
        // one stays open until the engine has fresh state for it.
        let mut links = Links::new(map, tlist, fw, st, state_path);
        links.set_policy(bundle.as_ref());
        links.tunnel = Some(links::Tunnel::new(backend, peers));
        // handshakes: new_session with a firewall that passes them.
        if conf.firewall.handshakes {
            links.session_gate = conf
                .link
                .keys()
                .filter(|n| wg.is_keyed(n))
                .cloned()
                .collect();
        }
        hold_until_keyed(&mut links, &mut wg, now);
        let mut p = Parent {
            conf,
            opts,
            keys,
            store,
            bundle,
            links,
            started: now,
            engine_inputs: None,
            wg,
            pending_epochs: Vec::new(),
            pending_verifiers: Vec::new(),
            pending_sessions: Vec::new(),
            sessions: Default::default(),
            ctl_creds: None,
            job: None,
            job_rx: None,
            reapply: Default::default(),
            reapply_on_report: Default::default(),
            awaiting_judgement: None,
            spool: Default::default(),
            engine_ports: Vec::new(),
            ctl_unknown: Default::default(),
            operator_unlocks: Default::default(),
            guardian: None,
            _owner: owner,
        };
        if lapsed {
            p.links.hold_after_lapse(p.bundle.as_ref());
        } else {
            p.links.reconcile(p.bundle.as_ref(), links::OpenedBy::Auto);
        }
        // The active bundle is applied again to every link (DESIGN §4): a
        // stop or crash in the middle of an activation's re-application
        // left links with the older bundle's chains, which read back open
        // or locked as well as the new ones do. From the loop, a few links
        // a turn, engine reports first, as after an activation; a link
        // only once it is known whether it stays open.
        if p.bundle.is_some() {
            for (name, l) in &p.links.links {
                match l.desired() {
                    Some(_) => p.reapply.push_back(name.clone()),
                    None => _ = p.reapply_on_report.insert(name.clone()),
                }
            }
        }
        Ok(p)
    }

    /// Reads and resolves what the engine gets (see
    /// [`engine_conf::engine_inputs`]).
    fn load_engine_inputs(&mut self) -> Result<(), String> {
        let backend = &mut **self.wg.backend();
        self.engine_inputs = Some(engine_conf::engine_inputs(&self.conf, &self.keys, backend)?);
        Ok(())
    }

    /// Runs the daemon. An `Err` is a start that failed before the engine
    /// ran (an engine user or chroot, a socket, a bind): the caller locks
    /// every link, as for a failure in [`Parent::new`].
    fn start(mut self) -> Result<ExitCode, String> {
        if crate::privsep::is_real_root() {
            // Started as root: the engine must be able to drop, or we do not start.
            crate::privsep::prepare_chroot(&self.conf.daemon.chroot).and_then(|_| {
                crate::privsep::resolve_user(&self.conf.daemon.user, &self.conf.daemon.chroot)
            })?;
        }
        let ctl = open_control_socket(&self.conf)?;
        // Bound here, before the drop: a bad address is a start-up error.
        let metrics = match self.conf.daemon.metrics.map(std::net::TcpListener::bind) {
            None => None,
            Some(Ok(l)) => Some(OwnedFd::from(l)),
            Some(Err(e)) => {
                return Err(format!("metrics: bind {:?}: {e}", self.conf.daemon.metrics));
            }
        };
        // The peering port too (it may be privileged), one socket per family.
        let peering = match self
            .conf
            .peering
            .as_ref()
            .map(|p| crate::privsep::bind_peering(p.listen, self.conf.link.len()))
        {
            None => Vec::new(),
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                let at = self.conf.peering.as_ref().map(|p| p.listen);
                return Err(format!("peering: bind {at:?}: {e}"));
            }
        };
        if !self.opts.foreground && unsafe { libc::daemon(0, 0) } != 0 {
            return Err(format!("daemon: {}", std::io::Error::last_os_error()));
        }
        // pf has no dead-man switch in the kernel: a guardian process
        // stands in for it (guardian.rs).
        if self.conf.firewall.backend == conf::FirewallBackend::Pf {
            match guardian::spawn(&self.opts.argv0, &self.opts.args) {
                Ok(g) => {
                    log::debug(format!("guardian started, pid {}", g.pid()));
                    self.guardian = Some(g);
                }
                Err(e) => return Err(format!("starting guardian: {e}")),
            }
        }
        let exe = self.conf.testing.engine.clone();
        let engine = match crate::privsep::spawn_engine(
            exe.as_deref().unwrap_or(&self.opts.argv0),
            &self.opts.args,
            &ctl,
            metrics.as_ref(),
            &peering,
        ) {
            Ok(e) => e,
            Err(e) => return Err(format!("starting engine: {e}")),
        };
        drop((ctl, metrics, peering));
        // Every start-up file is read and the engine is exec'd: from here
        // the parent keeps only what reload, activation and enforcement use.
        match crate::sandbox::parent(&self.conf) {
            Ok(r) => r.log(),
            Err(e) => {
                stop_engine(engine);
                return Err(format!("sandbox: {e}"));
            }
        }
        Ok(run::run(self, engine))
    }
}

/// A parent that panics locks what it can before it goes: every configured
/// link locked in one transaction (nft: set `site`; pf: one anchor load of
/// qkdpfd's own block rules, which is already the next step), then given
/// qkdpfd's own drop, as many links a run as the backend takes (one run a
/// link took minutes at 10,000 links, and the parent answered no SIGTERM
/// meanwhile). On nftables the dead-man switch would drop them
/// within seconds anyway; on pf the guardian locks them again. Then it
/// goes, whatever thread panicked: a panic in a task or a verification
/// thread must not leave a parent running whose links were just locked
/// behind its back (the next tick would reopen them).
/// Every link's target, in name order: the hook's, and the one copy the
/// parent keeps ([`Links::target`]).
fn lock_on_panic(conf: &Config) -> std::sync::Arc<[crate::ruleset::LinkTarget]> {
    let fw_conf = conf.firewall.clone();
    let state_dir = conf.daemon.state_dir.clone();
    let targets: std::sync::Arc<[crate::ruleset::LinkTarget]> =
        targets(conf).into_values().collect();
    let hooked = targets.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        let mut fw = fw::new(&fw_conf, &state_dir);
        let site = fw.lock_site(&hooked, None);
        if !(site.is_ok_and(|s| s) && fw.site_lock_clears()) {
            let all: Vec<&crate::ruleset::LinkTarget> = hooked.iter().collect();
            let _ = fw.clear_many(&all);
        }
        std::process::abort();
    }));
    targets
}

/// `no-key` (DESIGN §6): a keyed link stays locked until a QKD-derived PSK
/// is installed and read back on this end. After a restart that is proven
/// by the PSK on the interface matching the state file's verifier.
fn hold_until_keyed(links: &mut Links, wg: &mut wg::psk::PskWriter, now: std::time::Instant) {
    let names: Vec<String> = links
        .links
        .keys()
        .filter(|n| wg.is_keyed(n))
        .cloned()
        .collect();
    for name in &names {
        let verifier = links.state.links.get(name).and_then(|r| r.verifier.clone());
        let proven = verifier.is_some_and(|v| wg.verify_persisted(name, &v, now));
        if !proven {
            links.set_parent_reason(name, LockReason::NoKey, true);
        }
    }
}

/// The parent could not sandbox itself: the engine goes too.
fn stop_engine(mut engine: crate::privsep::EngineProc) {
    let pid = nix::unistd::Pid::from_raw(engine.child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let _ = engine.child.wait();
}

/// Creates the control socket (0660 root:socket_group). A socket that still
/// accepts connections means another qkdpfd runs: refuse to start.
fn open_control_socket(conf: &Config) -> Result<OwnedFd, String> {
    let path = &conf.daemon.socket;
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(format!(
            "already running: control socket {} answers",
            path.display()
        ));
    }
    if let Ok(md) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !md.file_type().is_socket() {
            return Err(format!("{} exists and is not a socket", path.display()));
        }
        std::fs::remove_file(path).map_err(|e| format!("unlink {}: {e}", path.display()))?;
    }
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let old = unsafe { libc::umask(0o117) };
    let l = std::os::unix::net::UnixListener::bind(path);
    unsafe { libc::umask(old) };
    let l = l.map_err(|e| format!("bind {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| format!("chmod {}: {e}", path.display()))?;
    if let Some(g) = &conf.daemon.socket_group {
        let (gid, _) = crate::privsep::resolve_group(g)?;
        nix::unistd::chown(path.as_path(), None, Some(nix::unistd::Gid::from_raw(gid)))
            .map_err(|e| format!("chown {}: {e}", path.display()))?;
    }
    Ok(OwnedFd::from(l))
}
