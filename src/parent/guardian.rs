//! The guardian (pf): a third process that locks every link when the
//! parent dies without saying goodbye (DESIGN §5).
//!
//! nftables has the dead-man switch (`deadman.rs`): the kernel itself stops
//! a dead parent's links within seconds. pf has no timeout on a rule, a
//! table or an anchor, so the best achievable there is a process: the
//! parent starts `qkdpfd -P guardian` (as it starts the engine) holding
//! the write end of a pipe that is the guardian's stdin, and never writes
//! to it but once, `clean`, when it stops on a signal (it then keeps or
//! locks the links itself, per `on_stop`). Any other end of the parent —
//! SIGKILL, a panic, an abort, the OOM killer — closes the pipe with
//! nothing said, and the guardian runs what `qkdpfd -L` runs: every link
//! locked from the config it read at start (no name resolved, no TLS file
//! read), then read back; it exits 0 only when every link reads back
//! locked.
//!
//! The guardian ignores SIGTERM, SIGINT and SIGHUP, so that a stop that
//! signals every process of the daemon still lets it see how the parent
//! ended. It runs as root (it drives pfctl) and is not sandboxed: it reads
//! one pipe and, once, runs the same code as `qkdpfd -L`. Its command line
//! does not match the parent's (`rcctl check` sees the parent only).

use crate::conf::Config;
use crate::log::{self, Event};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};

/// What the parent writes before a clean exit.
const CLEAN: &[u8] = b"clean\n";

/// The parent's side: the guardian process and the pipe to it.
pub struct Guardian {
    child: Child,
    tx: Option<std::fs::File>,
}

/// Starts the guardian: `argv0 -P guardian <args>`, its stdin a pipe
/// whose write end only the parent holds (close-on-exec, so the engine
/// never inherits it).
pub fn spawn(argv0: &Path, args: &[std::ffi::OsString]) -> Result<Guardian, String> {
    let (rx, tx): (OwnedFd, OwnedFd) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let child = Command::new(argv0)
        .args(["-P", "guardian"])
        .args(args)
        .stdin(Stdio::from(rx))
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", argv0.display()))?;
    Ok(Guardian {
        child,
        tx: Some(std::fs::File::from(tx)),
    })
}

impl Guardian {
    /// The parent stops on a signal and has kept or locked the links
    /// itself: the guardian goes without touching them.
    pub fn release(mut self) {
        if let Some(mut tx) = self.tx.take() {
            let _ = tx.write_all(CLEAN);
        }
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// The guardian process (`qkdpfd -P guardian`): waits for the parent's end.
pub fn main(conf: Config, foreground: bool) -> ExitCode {
    log::set_proc("guardian");
    crate::privsep::set_title(c"guardian");
    if !foreground {
        super::syslog::open(&conf.daemon.syslog_facility);
        log::init(Box::new(super::syslog::write));
    } else {
        log::init(Box::new(|_, line| log::to_stderr("qkdpfd: ", line)));
    }
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGPIPE] {
        // SAFETY: SIG_IGN for a standard signal.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    let mut said = Vec::new();
    let mut buf = [0u8; 64];
    let mut stdin = std::io::stdin().lock();
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            // Only the first bytes matter; a parent never writes more.
            Ok(n) if said.len() < CLEAN.len() => said.extend_from_slice(&buf[..n]),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if said.starts_with(CLEAN) {
        return ExitCode::SUCCESS;
    }
    log::event(Event::GuardianLockdown)
        .msg("the parent ended without a clean stop: locking every link")
        .send();
    let code = super::lockdown::lock_all(conf);
    if code != ExitCode::SUCCESS {
        log::event(Event::GuardianLockdownFailed)
            .msg("not every link reads back locked")
            .send();
    }
    code
}
