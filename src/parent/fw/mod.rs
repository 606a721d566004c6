//! Firewall backends (DESIGN §5). Run by the privileged parent only: these are
//! the one place qkdpfd touches pf anchors or nftables chains.
//!
//! Each backend sits behind [`Firewall`]: `pf` (pfctl, OpenBSD), `nft`
//! (nft(8), Linux) and `dryrun` (writes what it would load under
//! `state_dir/dry-run/`). The rulesets come from a verified policy bundle; the
//! link facts come from the parent's checked config. Both are re-checked here
//! before they reach a command line or a script, because a name that could
//! smuggle syntax into another link's anchor must never get that far.
//!
//! Commands get no secrets (the WireGuard PSK never passes through here), so
//! their argv and stderr may be logged and shown in errors.

use std::fmt;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::conf::{FirewallBackend, FirewallConf, LinkConf};
use crate::lock::Enforcement;

pub mod dryrun;
pub mod nft;
pub mod pf;

/// How long one pfctl/nft invocation may take before it is killed.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(10);

/// Stderr kept in an error: enough for nft's caret diagnostics.
const STDERR_MAX: usize = 4096;

/// One protected link, as the firewall sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkTarget {
    /// `^[a-z][a-z0-9_]{0,30}$`: pf anchor `<root>/<name>`, nft chain `link_<name>`.
    pub name: String,
    pub wg_if: String,
    /// The far gateway's WireGuard UDP port.
    pub wg_port: u16,
    /// pf: the routing domain of the link's states (`pfctl -V`); 0 default.
    pub rdomain: u32,
    pub addrs4: Vec<Ipv4Addr>,
    pub addrs6: Vec<Ipv6Addr>,
}

impl LinkTarget {
    pub fn from_conf(link: &LinkConf) -> LinkTarget {
        let mut t = LinkTarget {
            name: link.name.clone(),
            wg_if: link.wg_interface.clone(),
            wg_port: link.wg_port,
            rdomain: link.rdomain,
            addrs4: Vec::new(),
            addrs6: Vec::new(),
        };
        for a in &link.addresses {
            match a {
                std::net::IpAddr::V4(a) => t.addrs4.push(*a),
                std::net::IpAddr::V6(a) => t.addrs6.push(*a),
            }
        }
        t
    }
}

/// A firewall operation that failed: what, the command, its exit status and
/// the tool's own words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FwError {
    pub what: String,
    /// The command line, or empty when nothing was run (a refused name or ruleset).
    pub command: String,
    /// "exit status 1", "killed after 10s", "could not start: ..."; empty if nothing ran.
    pub status: String,
    pub stderr: String,
}

impl FwError {
    /// The tool was killed at its timeout (it hung).
    pub fn timed_out(&self) -> bool {
        self.status.starts_with("killed after")
    }

    /// An error found before any command ran.
    pub fn refused(what: impl Into<String>) -> FwError {
        FwError {
            what: what.into(),
            command: String::new(),
            status: String::new(),
            stderr: String::new(),
        }
    }
}

impl fmt::Display for FwError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)?;
        if !self.command.is_empty() {
            write!(f, ": `{}`", self.command)?;
        }
        if !self.status.is_empty() {
            write!(f, ": {}", self.status)?;
        }
        let stderr = self.stderr.trim();
        if !stderr.is_empty() {
            write!(f, ": {stderr}")?;
        }
        Ok(())
    }
}

impl std::error::Error for FwError {}

/// One OS firewall. Every method touches only the link it is given.
pub trait Firewall: Send {
    fn name(&self) -> &'static str;
    /// Extension of the bundle's ruleset files: "nft" or "pf".
    fn extension(&self) -> &'static str;
    /// Makes every configured link default-deny without disturbing a link's
    /// current rules (nft: table, base chains and sets replaced atomically,
    /// missing link chains created empty; pf: pf.conf holds the block rules,
    /// only check that pf is there and enabled). Called at every start and reload.
    fn init(&mut self, links: &[LinkTarget]) -> Result<(), FwError>;
    /// Loads `ruleset` (the bundle's text for `state`) as the link's rules in
    /// one transaction; on lockdown also ends the link's existing states.
    fn apply(
        &mut self,
        link: &LinkTarget,
        state: Enforcement,
        ruleset: &str,
    ) -> Result<(), FwError>;
    /// Replaces the link's chain/anchor with qkdpfd's own explicit drop of
    /// the link's traffic, independent of any bundle text and of the
    /// preloaded lockdown chain (and, on pf, kills its states). The lockdown
    /// without a policy, and the fallback after a failed one.
    fn clear(&mut self, link: &LinkTarget) -> Result<(), FwError>;
    /// Loads `ruleset` ahead of time so that a later `apply` of the same
    /// text for `state` is quick (nft: the lockdown chain is preloaded and
    /// the flip only adds one rule). Off the critical path; a backend without
    /// a fast path does nothing.
    fn stage(
        &mut self,
        link: &LinkTarget,
        state: Enforcement,
        ruleset: &str,
    ) -> Result<(), FwError> {
        let _ = (link, state, ruleset);
        Ok(())
    }
    /// Renders for `link` and checks without applying (`nft -c`, `pfctl -n`).
    fn check(&self, link: &LinkTarget, state: Enforcement, ruleset: &str) -> Result<(), String>;
    /// Reads the kernel back (DESIGN §5 "enforcement is what the kernel
    /// holds"): for each link, in the order given, what its own chain or
    /// anchor holds now, and whether a guard (see [`Firewall::set_guard`])
    /// holds its drops. Never from the backend's own bookkeeping alone.
    /// `links` is every configured link (a base chain holding a rule for
    /// none of them is damage); `only` limits the answer to one link.
    fn observe(
        &mut self,
        links: &[LinkTarget],
        only: Option<&str>,
    ) -> Result<std::collections::BTreeMap<String, Readback>, FwError>;
    /// The dead-man switch (nftables; DESIGN §2): `Some(t)` arms or
    /// refreshes it so the links' jumps live for `t` more; `None` disarms
    /// it (a stop that keeps the kernel state). Backends without one do
    /// nothing.
    fn keep_alive(&mut self, timeout: Option<Duration>) -> Result<(), FwError> {
        let _ = timeout;
        Ok(())
    }
    /// Last resort of a failing lockdown: holds drops for exactly `links`
    /// outside the link's own chain (nftables: a separate table whose
    /// drops are final), replacing any earlier guard; `&[]` removes it.
    /// A backend without one says so.
    fn set_guard(&mut self, links: &[LinkTarget]) -> Result<(), FwError> {
        if links.is_empty() {
            return Ok(());
        }
        Err(FwError::refused(format!(
            "{}: no guard outside the link's anchor",
            self.name()
        )))
    }
}

/// What the kernel showed for one link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    /// The link's own chain or anchor holds an explicit drop of its traffic
    /// (the lockdown ruleset followed by qkdpfd's own drop, or that drop alone).
    Locked,
    /// The link's chain or anchor holds an open ruleset as qkdpfd loaded it
    /// (its tag and rule count), and the default-deny around it is intact.
    Open,
    /// Neither could be proven; says what is missing or changed.
    /// `skeleton` is set when the default-deny around the link is damaged
    /// (a base chain, jump or drop gone; pf disabled or pf.conf without the
    /// anchor or block rules): the cure is to rebuild it.
    Unknown { skeleton: bool, why: String },
}

impl Observed {
    pub fn unknown(why: impl Into<String>) -> Observed {
        Observed::Unknown {
            skeleton: false,
            why: why.into(),
        }
    }

    pub fn damaged(why: impl Into<String>) -> Observed {
        Observed::Unknown {
            skeleton: true,
            why: why.into(),
        }
    }
}

impl fmt::Display for Observed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Observed::Locked => f.write_str("locked"),
            Observed::Open => f.write_str("open"),
            Observed::Unknown { why, .. } => write!(f, "unknown ({why})"),
        }
    }
}

/// One link's read-back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readback {
    pub state: Observed,
    /// A guard outside the link's chain drops its traffic.
    pub guarded: bool,
}

impl Readback {
    /// Whether nothing of the link's traffic can pass.
    pub fn locked(&self) -> bool {
        self.state == Observed::Locked || self.guarded
    }
}

/// The backend the config names.
pub fn new(conf: &FirewallConf, state_dir: &Path) -> Box<dyn Firewall> {
    match conf.backend {
        FirewallBackend::Pf => Box::new(pf::Pf::new(&conf.pfctl, &conf.anchor)),
        FirewallBackend::Nftables => Box::new(nft::Nft::new(&conf.nft, &conf.anchor)),
        FirewallBackend::DryRun => Box::new(dryrun::DryRun::new(
            dryrun::Flavor::native(),
            &conf.anchor,
            state_dir,
        )),
    }
}

/// `^[a-z][a-z0-9_]{0,30}$`: link names and the anchor/table name. They end
/// up inside pf and nft syntax, so nothing else may pass.
pub fn valid_name(s: &str) -> bool {
    crate::conf::valid_link_name(s)
}

/// An interface name as the kernels accept it (IFNAMSIZ 16 incl. NUL), with
/// no character that means something to pf or nft.
pub fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// Re-checks the names that reach a script or argv.
pub fn check_names(anchor: &str, link: &LinkTarget) -> Result<(), FwError> {
    if !valid_name(anchor) {
        return Err(FwError::refused(format!(
            "firewall anchor {anchor:?} is not a valid name ([a-z][a-z0-9_]{{0,30}})"
        )));
    }
    if !valid_name(&link.name) {
        return Err(FwError::refused(format!(
            "link name {:?} is not a valid name ([a-z][a-z0-9_]{{0,30}})",
            link.name
        )));
    }
    if !valid_ifname(&link.wg_if) {
        return Err(FwError::refused(format!(
            "link {}: wg_interface {:?} is not a valid interface name",
            link.name, link.wg_if
        )));
    }
    Ok(())
}

/// What a finished tool said.
#[derive(Debug)]
pub struct ToolOutput {
    pub stdout: String,
    pub stderr: String,
}

/// One command to run: program, arguments, stdin.
#[derive(Clone, Debug)]
pub struct Tool {
    pub argv: Vec<String>,
    pub program: PathBuf,
}

impl Tool {
    pub fn new(program: &Path, args: &[&str]) -> Tool {
        let mut argv = vec![program.display().to_string()];
        argv.extend(args.iter().map(|s| s.to_string()));
        Tool {
            argv,
            program: program.to_path_buf(),
        }
    }

    /// The command line, for logs and errors.
    pub fn line(&self) -> String {
        self.argv.join(" ")
    }

    /// Runs with `stdin`, kills it after `timeout`; Err unless it exits 0.
    pub fn run(&self, what: &str, stdin: &str, timeout: Duration) -> Result<ToolOutput, FwError> {
        let fail = |status: String, stderr: String| FwError {
            what: what.to_string(),
            command: self.line(),
            status,
            stderr,
        };
        let mut child = Command::new(&self.program)
            .args(&self.argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .spawn()
            .map_err(|e| fail(format!("could not start: {e}"), String::new()))?;
        // Feed and drain in threads so a chatty tool cannot deadlock us on a
        // full pipe; the threads end when the child's pipes close.
        let mut input = child.stdin.take();
        let data = stdin.as_bytes().to_vec();
        let feeder = std::thread::spawn(move || {
            if let Some(mut w) = input.take() {
                // A tool that exits early closes the pipe: its status tells why.
                let _ = w.write_all(&data);
            }
        });
        let out = drain(child.stdout.take());
        let err = drain(child.stderr.take());
        // Wait in a thread so the result arrives the moment the tool exits
        // (a lockdown flip is timed in milliseconds), with a hard timeout.
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        let status = match rx.recv_timeout(timeout) {
            Ok(Ok(st)) => Ok(st),
            Ok(Err(e)) => Err(format!("wait failed: {e}")),
            Err(_) => {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                let _ = rx.recv();
                Err(format!("killed after {}", crate::duration::format(timeout)))
            }
        };
        let _ = waiter.join();
        let _ = feeder.join();
        let stdout = out.join().unwrap_or_default();
        let stderr = clip(err.join().unwrap_or_default());
        match status {
            Ok(st) if st.success() => Ok(ToolOutput { stdout, stderr }),
            Ok(st) => Err(fail(describe_status(st), stderr)),
            Err(s) => Err(fail(s, stderr)),
        }
    }
}

fn drain<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

fn describe_status(st: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "abnormal exit".to_string(),
    }
}

/// Keeps the head of a long stderr (where nft and pfctl put the first error).
fn clip(mut s: String) -> String {
    if s.len() > STDERR_MAX {
        let mut end = STDERR_MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str(" [...]");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("dr"));
        assert!(valid_name("a_1"));
        assert!(!valid_name("1a"));
        assert!(!valid_name("Dr"));
        assert!(!valid_name("dr;"));
        assert!(!valid_name(&"a".repeat(32)));
        assert!(valid_ifname("wg0"));
        assert!(valid_ifname("veth-a.1"));
        assert!(!valid_ifname("wg0\""));
        assert!(!valid_ifname("wg 0"));
        assert!(!valid_ifname(&"w".repeat(16)));
    }

    #[test]
    fn error_display_names_command_status_and_stderr() {
        let t = Tool::new(Path::new("/bin/sh"), &["-c", "echo oops >&2; exit 3"]);
        let e = t.run("load link dr", "", TOOL_TIMEOUT).unwrap_err();
        assert_eq!(
            e.to_string(),
            "load link dr: `/bin/sh -c echo oops >&2; exit 3`: exit status 3: oops"
        );
    }

    #[test]
    fn tool_feeds_stdin_and_times_out() {
        let t = Tool::new(Path::new("/bin/cat"), &[]);
        let big = "x".repeat(300_000);
        let out = t.run("cat", &big, TOOL_TIMEOUT).unwrap();
        assert_eq!(out.stdout.len(), big.len());
        let t = Tool::new(Path::new("/bin/sleep"), &["30"]);
        let e = t.run("sleep", "", Duration::from_millis(200)).unwrap_err();
        assert_eq!(e.status, "killed after 200ms");
        let t = Tool::new(Path::new("/nonexistent/tool"), &[]);
        let e = t.run("x", "", TOOL_TIMEOUT).unwrap_err();
        assert!(e.status.starts_with("could not start"), "{e}");
    }
}
