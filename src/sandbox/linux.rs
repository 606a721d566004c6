//! Linux sandbox: landlock for both processes, seccomp for the engine.
//!
//! Runs in the engine (after chroot and setresuid, single-threaded) and in
//! the parent (after the engine is spawned). It opens the parent's allowed
//! paths with `O_PATH` to name them to landlock; nothing else.
//!
//! Landlock access rights are those of [`ABI`] 7, the newest this project
//! was tested on (Linux 6.15+). Newer kernels keep working: rights they
//! add are neither handled nor denied; older kernels enforce what they know
//! (the report says `partially-enforced` or `not-enforced`).

use super::{EngineLimits, ParentPaths, Report, dir_of};
use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, LandlockStatus, NetPort, PathBeneath, PathFd,
    RestrictionStatus, Ruleset, RulesetAttr, RulesetCreated, RulesetCreatedAttr, RulesetStatus,
    Scope,
};
use std::path::PathBuf;

#[cfg(feature = "testing")]
pub mod pledge;
mod seccomp;

/// The landlock ABI whose access rights we handle (see the module docs).
const TESTED_ABI: ABI = ABI::V7;

pub fn engine(limits: &EngineLimits) -> Result<Report, String> {
    set_no_new_privs()?;
    let status = engine_landlock(limits).map_err(|e| format!("landlock: {e}"))?;
    let mut report = Report::new("engine");
    report.kv("no_new_privs", 1);
    landlock_kv(&mut report, &status);
    let net = net_enforced(&status);
    report.kv(
        "tcp_connect",
        match net {
            true if limits.tcp_connect_ports.is_empty() => "none".to_string(),
            true => join_ports(&limits.tcp_connect_ports),
            false => "unrestricted".to_string(),
        },
    );
    report.complete &= net;
    #[cfg(feature = "sandbox-probe")]
    let before = probe::landlock(&limits.tcp_connect_ports);
    let rules = seccomp::apply()?;
    report.kv("seccomp", format!("allow-list:{rules}"));
    report.kv("seccomp_default", "EPERM");
    // The probe tries what OpenBSD's pledge would abort: before the
    // emulation, as the OpenBSD probe reports promises instead of trying.
    #[cfg(feature = "sandbox-probe")]
    {
        report.probe = Some(format!("{before} {}", probe::seccomp()));
    }
    // Stacked on the allow-list: its traps win over EPERM (seccomp takes
    // the strictest answer of all filters).
    if emulate_pledge(super::ENGINE_PROMISES)? {
        report.kv("pledge_emulation", super::ENGINE_PROMISES.replace(' ', ","));
    }
    Ok(report)
}

pub fn pledge(promises: &str) -> Result<(), String> {
    emulate_pledge(promises).map(drop)
}

/// Installs the pledge emulation where the build has it and the
/// environment does not switch it off; true when it did.
#[cfg(feature = "testing")]
fn emulate_pledge(promises: &str) -> Result<bool, String> {
    if std::env::var_os(pledge::ENV).is_some_and(|v| v == "off") {
        return Ok(false);
    }
    pledge::pledge(promises).map(|()| true)
}

#[cfg(not(feature = "testing"))]
fn emulate_pledge(_promises: &str) -> Result<bool, String> {
    Ok(false)
}

pub fn parent(paths: &ParentPaths) -> Result<Report, String> {
    let (rules, missing) = parent_rules(paths)?;
    let status = parent_landlock(rules).map_err(|e| format!("landlock: {e}"))?;
    let mut report = Report::new("parent");
    landlock_kv(&mut report, &status);
    if !missing.is_empty() {
        let m: Vec<String> = missing.iter().map(|p| p.display().to_string()).collect();
        report.kv("missing", m.join(","));
        report.complete = false;
    }
    Ok(report)
}

fn set_no_new_privs() -> Result<(), String> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(format!(
            "prctl(PR_SET_NO_NEW_PRIVS): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// No file access at all; TCP connect only to the given ports, no bind;
/// no signals and no abstract Unix sockets outside the engine.
fn engine_landlock(limits: &EngineLimits) -> Result<RestrictionStatus, landlock::RulesetError> {
    let mut rs = Ruleset::default()
        .handle_access(AccessFs::from_all(TESTED_ABI))?
        .handle_access(AccessNet::from_all(TESTED_ABI))?
        .scope(Scope::from_all(TESTED_ABI))?
        .create()?;
    for &port in &limits.tcp_connect_ports {
        rs = rs.add_rule(NetPort::new(port, AccessNet::ConnectTcp))?;
    }
    rs.restrict_self()
}

/// Whether a missing path stops the parent from starting.
#[derive(Clone, Copy, PartialEq)]
enum Need {
    /// The state and policy directories: the parent cannot work without.
    Required,
    /// Named by the config but possibly created later: logged as missing.
    Reported,
    /// System paths some machines lack (/lib64 on aarch64, the UAPI dir).
    Optional,
}

/// One landlock rule: a path and what may be done beneath it.
struct Rule {
    path: PathBuf,
    access: BitFlags<AccessFs>,
    need: Need,
}

fn rule(path: impl Into<PathBuf>, access: impl Into<BitFlags<AccessFs>>, need: Need) -> Rule {
    Rule {
        path: path.into(),
        access: access.into(),
        need,
    }
}

/// The unveil list ([`ParentPaths`]) in landlock's terms, plus what running
/// nft and glibc need. Returns the rules and the reported paths that do not
/// exist (skipped).
fn parent_rules(paths: &ParentPaths) -> Result<(Vec<Rule>, Vec<PathBuf>), String> {
    let read = AccessFs::ReadFile | AccessFs::ReadDir;
    let exec = read | AccessFs::Execute;
    let all = AccessFs::from_all(TESTED_ABI);
    let mut rules = Vec::new();
    // Files named by the config: their directories (an editor's rename
    // gives the file a new inode; the directory keeps it visible).
    for f in &paths.read {
        rules.push(rule(dir_of(f), read, Need::Reported));
    }
    for d in &paths.rwc {
        rules.push(rule(d, all, Need::Required));
    }
    if let Some(d) = &paths.incoming {
        rules.push(rule(d, all, Need::Reported));
    }
    for t in &paths.exec {
        // The tool's directory, so that a package upgrade (a new inode)
        // does not stop lockdown from being applied.
        rules.push(rule(dir_of(t), exec, Need::Reported));
    }
    rules.push(rule(
        dir_of(&paths.socket),
        AccessFs::RemoveFile,
        Need::Reported,
    ));
    // nft's own files, and glibc's NSS on reload (getpwnam, getgrnam).
    rules.push(rule("/etc", read, Need::Optional));
    for lib in ["/lib", "/lib64", "/usr/lib", "/usr/lib64"] {
        rules.push(rule(lib, exec, Need::Optional));
    }
    let rw = AccessFs::ReadFile | AccessFs::WriteFile;
    rules.push(rule("/dev/null", rw, Need::Optional));
    // is_real_root() on reload reads /proc/self/uid_map.
    rules.push(rule("/proc/self", read, Need::Optional));
    // wireguard-go's UAPI sockets (connect is not a file access before
    // landlock ABI 9; listed so the directory stays readable).
    rules.push(rule(crate::conf::UAPI_DIR, read, Need::Optional));
    let mut missing = Vec::new();
    let mut kept = Vec::new();
    for r in rules {
        match (r.path.try_exists(), r.need) {
            (Ok(true), _) => kept.push(r),
            (_, Need::Required) => {
                return Err(format!(
                    "{} does not exist: the parent cannot be sandboxed without it",
                    r.path.display()
                ));
            }
            (_, Need::Reported) => missing.push(r.path),
            (_, Need::Optional) => {}
        }
    }
    Ok((kept, missing))
}

fn parent_landlock(rules: Vec<Rule>) -> Result<RestrictionStatus, landlock::RulesetError> {
    let mut rs: RulesetCreated = Ruleset::default()
        .handle_access(AccessFs::from_all(TESTED_ABI))?
        // Not Scope::Signal: the engine was started before this ruleset
        // and is outside it; the parent must still be able to stop it.
        .scope(Scope::AbstractUnixSocket)?
        .create()?;
    for r in rules {
        let fd = match PathFd::new(&r.path) {
            Ok(fd) => fd,
            // Vanished between the check and here: skip, as above.
            Err(_) => continue,
        };
        let access = if r.path.is_dir() {
            r.access
        } else {
            r.access & AccessFs::from_file(TESTED_ABI)
        };
        rs = rs.add_rule(PathBeneath::new(fd, access))?;
    }
    rs.restrict_self()
}

fn landlock_kv(report: &mut Report, st: &RestrictionStatus) {
    let word = match st.ruleset {
        RulesetStatus::FullyEnforced => "fully-enforced",
        RulesetStatus::PartiallyEnforced => "partially-enforced",
        RulesetStatus::NotEnforced => "not-enforced",
    };
    report.kv("landlock", word);
    report.complete &= st.ruleset != RulesetStatus::NotEnforced;
    let abi = match st.landlock {
        LandlockStatus::Available {
            effective_abi,
            kernel_abi,
        } => kernel_abi
            .map(|k| k.to_string())
            .unwrap_or_else(|| effective_abi.to_string()),
        LandlockStatus::NotEnabled => "disabled".into(),
        LandlockStatus::NotImplemented => "none".into(),
    };
    report.kv("landlock_abi", abi);
}

/// TCP rules need landlock ABI 4 (Linux 6.7).
fn net_enforced(st: &RestrictionStatus) -> bool {
    match st.landlock {
        LandlockStatus::Available { effective_abi, .. } => {
            st.ruleset != RulesetStatus::NotEnforced && effective_abi >= ABI::V4
        }
        _ => false,
    }
}

fn join_ports(ports: &[u16]) -> String {
    let p: Vec<String> = ports.iter().map(u16::to_string).collect();
    p.join(",")
}

/// `sandbox-probe` builds only (tests/sandbox.rs): what the engine gets when
/// it tries what it must not. Never in a production build.
#[cfg(feature = "sandbox-probe")]
mod probe {
    use nix::errno::Errno;

    fn errno_of(r: libc::c_int) -> String {
        if r >= 0 {
            return "ALLOWED".into();
        }
        format!("{:?}", Errno::last())
    }

    /// Between landlock and seccomp: landlock alone must refuse.
    pub fn landlock(allowed: &[u16]) -> String {
        // "/" exists in every chroot: ENOENT cannot hide the answer.
        let fd = unsafe { libc::open(c"/".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
        let open = errno_of(fd);
        if fd >= 0 {
            unsafe { libc::close(fd) };
        }
        let port = (1..u16::MAX).find(|p| !allowed.contains(p)).unwrap_or(1);
        format!("landlock_open={open} landlock_connect={}", connect(port))
    }

    fn connect(port: u16) -> String {
        let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        if s < 0 {
            return format!("socket-{:?}", Errno::last());
        }
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        let r = unsafe {
            libc::connect(
                s,
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        let out = errno_of(r);
        unsafe { libc::close(s) };
        out
    }

    /// After seccomp: open and exec must fail; a thread (clone3 answered
    /// ENOSYS, then clone with CLONE_THREAD) must still start.
    pub fn seccomp() -> String {
        let thread = match std::thread::Builder::new().spawn(|| 7).map(|h| h.join()) {
            Ok(Ok(7)) => "ok".to_string(),
            Ok(_) => "panicked".to_string(),
            Err(e) => format!("{:?}", e.kind()),
        };
        let fd = unsafe { libc::open(c"/".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
        let open = errno_of(fd);
        let argv = [c"/bin/sh".as_ptr(), std::ptr::null()];
        let envp = [std::ptr::null()];
        let r = unsafe { libc::execve(c"/bin/sh".as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        format!("open={open} exec={} thread={thread}", errno_of(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn parent_rules_need_the_state_dirs_and_report_a_missing_spool() {
        let t = tempfile::tempdir().unwrap();
        let p = |n: &str| t.path().join(n);
        std::fs::create_dir(p("state")).unwrap();
        let paths = ParentPaths {
            read: vec![p("qkdpfd.conf")],
            rwc: vec![p("state"), p("policy")],
            incoming: Some(p("incoming")),
            exec: Vec::new(),
            socket: p("qkdpfd.sock"),
            connect: Vec::new(),
        };
        let err = parent_rules(&paths).err().unwrap();
        assert!(
            err.contains("policy") && err.contains("does not exist"),
            "{err}"
        );
        std::fs::create_dir(p("policy")).unwrap();
        let (rules, missing) = parent_rules(&paths).unwrap();
        assert_eq!(missing, vec![p("incoming")]);
        let state = rules.iter().find(|r| r.path == p("state")).unwrap();
        assert_eq!(state.access, AccessFs::from_all(TESTED_ABI));
        // The config's directory is readable, not writable.
        let conf = rules.iter().find(|r| r.path == t.path()).unwrap();
        assert!(!conf.access.contains(AccessFs::WriteFile));
        assert!(rules.iter().all(|r| r.path != Path::new("/")));
    }
}
