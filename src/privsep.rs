//! Process split (DESIGN §2): the parent re-execs itself as the engine with
//! the socketpair on fd 3 and the listening control socket on fd 4; the
//! engine chroots and drops to the configured user.
//!
//! Everything here runs before any runtime or thread exists (the split must
//! happen in a single-threaded process).

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::unistd::{Gid, Uid};
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};

/// The engine's end of the socketpair.
pub const ENGINE_FD: RawFd = 3;
/// The listening control socket, created by the parent.
pub const CONTROL_FD: RawFd = 4;
/// The optional Prometheus listener (`[daemon] metrics`), bound by the parent.
pub const METRICS_FD: RawFd = 5;
/// The peering UDP socket (`[peering] listen`), bound by the parent.
pub const PEERING_FD: RawFd = 6;
/// The second peering socket, IPv4, when `listen` is `[::]` (one socket per
/// address family: OpenBSD's IPv6 sockets never see IPv4).
pub const PEERING4_FD: RawFd = 8;
/// The engine's end of the SOCK_SEQPACKET pair that carries control
/// clients' connections to the parent ([`crate::imsg::creds`]).
pub const CREDS_FD: RawFd = 7;

/// The running engine as the parent sees it.
pub struct EngineProc {
    pub child: Child,
    pub chan: UnixStream,
    /// The parent's end of the credentials pair (non-blocking reads).
    pub creds: OwnedFd,
}

pub use crate::imsg::DropTo;

/// `argv0` must be absolute (as sshd requires): we re-exec that very file.
pub fn check_argv0(argv0: &Path) -> Result<(), String> {
    if argv0.is_absolute() {
        Ok(())
    } else {
        Err(format!(
            "re-exec requires execution with an absolute path (got {})",
            argv0.display()
        ))
    }
}

/// Duplicates `fd` to a number >= 10, close-on-exec, so the child's dup2 to
/// 3 and 4 cannot clobber one source with another.
fn dup_high(fd: RawFd) -> io::Result<OwnedFd> {
    let r = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// Starts `argv0 -P engine args...` with the channel on fd 3 and `control`
/// on fd 4, with an empty environment.
pub fn spawn_engine(
    argv0: &Path,
    args: &[OsString],
    control: &OwnedFd,
    metrics: Option<&OwnedFd>,
    peering: &[OwnedFd],
) -> io::Result<EngineProc> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    let theirs = dup_high(theirs.as_raw_fd())?;
    let (creds_ours, creds_theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    let creds_theirs = dup_high(creds_theirs.as_raw_fd())?;
    let creds_fd = creds_theirs.as_raw_fd();
    let ctl = dup_high(control.as_raw_fd())?;
    let met = metrics.map(|m| dup_high(m.as_raw_fd())).transpose()?;
    let (chan_fd, ctl_fd) = (theirs.as_raw_fd(), ctl.as_raw_fd());
    let met_fd = met.as_ref().map(|m| m.as_raw_fd());
    let peer = peering
        .first()
        .map(|m| dup_high(m.as_raw_fd()))
        .transpose()?;
    let peer_fd = peer.as_ref().map(|m| m.as_raw_fd());
    let peer4 = peering
        .get(1)
        .map(|m| dup_high(m.as_raw_fd()))
        .transpose()?;
    let peer4_fd = peer4.as_ref().map(|m| m.as_raw_fd());
    let mut cmd = Command::new(argv0);
    cmd.arg("-P").arg("engine").args(args).env_clear();
    // SAFETY: only async-signal-safe calls (dup2) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(chan_fd, ENGINE_FD) < 0
                || libc::dup2(ctl_fd, CONTROL_FD) < 0
                || libc::dup2(creds_fd, CREDS_FD) < 0
            {
                return Err(io::Error::last_os_error());
            }
            for (fd, to) in [
                (met_fd, METRICS_FD),
                (peer_fd, PEERING_FD),
                (peer4_fd, PEERING4_FD),
            ] {
                if let Some(fd) = fd {
                    if libc::dup2(fd, to) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop((theirs, ctl, met, peer, peer4, creds_theirs));
    Ok(EngineProc {
        child,
        chan: UnixStream::from(ours),
        creds: creds_ours,
    })
}

/// The engine's channel to the parent (fd 3), taken once at start-up.
pub fn engine_channel() -> io::Result<UnixStream> {
    take_fd(ENGINE_FD).map(UnixStream::from)
}

/// The engine's end of the credentials pair (fd 7).
pub fn creds_channel() -> io::Result<OwnedFd> {
    take_fd(CREDS_FD)
}

/// The Prometheus listener (fd 5), when the parent bound one.
pub fn metrics_listener() -> io::Result<std::net::TcpListener> {
    take_fd(METRICS_FD).map(std::net::TcpListener::from)
}

/// The `count` peering UDP sockets the parent passed: fd 6, then fd 8.
pub fn peering_sockets(count: usize) -> io::Result<Vec<std::net::UdpSocket>> {
    [PEERING_FD, PEERING4_FD]
        .into_iter()
        .take(count)
        .map(|fd| take_fd(fd).map(std::net::UdpSocket::from))
        .collect()
}

/// How many sockets [`bind_peering`] binds for `listen`.
pub fn peering_count(listen: std::net::SocketAddr) -> usize {
    match listen.ip() {
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => 2,
        _ => 1,
    }
}

/// Binds the peering port, one socket per address family and never a
/// v4-mapped one: `[::]:P` gives an IPv6-only socket on `[::]:P` and an
/// IPv4 one on `0.0.0.0:P` (on OpenBSD IPv6 sockets are always IPv6-only,
/// ip6(4); Linux is made to behave the same with IPV6_V6ONLY); any other
/// address gives the one socket of its family.
///
/// Each socket's buffers are sized for `links` (see [`peering_buffer`]).
pub fn bind_peering(listen: std::net::SocketAddr, links: usize) -> io::Result<Vec<OwnedFd>> {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    let mut out = vec![bind_udp(listen)?];
    if peering_count(listen) == 2 {
        let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), listen.port());
        out.push(bind_udp(v4)?);
    }
    let want = peering_buffer(links);
    for fd in &out {
        use nix::sys::socket::{getsockopt, setsockopt, sockopt};
        #[cfg(target_os = "linux")]
        let (rcv_force, snd_force) = (
            |v: usize| setsockopt(fd, sockopt::RcvBufForce, &v).is_ok(),
            |v: usize| setsockopt(fd, sockopt::SndBufForce, &v).is_ok(),
        );
        #[cfg(not(target_os = "linux"))]
        let (rcv_force, snd_force) = (|_: usize| false, |_: usize| false);
        grow_buffer(
            want,
            || getsockopt(fd, sockopt::RcvBuf).unwrap_or(0),
            |v| rcv_force(v) || setsockopt(fd, sockopt::RcvBuf, &v).is_ok(),
        );
        grow_buffer(
            want,
            || getsockopt(fd, sockopt::SndBuf).unwrap_or(0),
            |v| snd_force(v) || setsockopt(fd, sockopt::SndBuf, &v).is_ok(),
        );
    }
    Ok(out)
}

/// Bytes of socket buffer the peering port asks for: one datagram of
/// every link in flight at once, at what the kernel charges for a small
/// datagram (about a kilobyte of bookkeeping with it; Linux doubles the
/// asked size for that, OpenBSD counts mbufs). Every master starts a round
/// at the same moment after a policy activation or `rotate all`, so a hub
/// receives (and sends) one OFFER or CONFIRM per link in a burst; with the
/// systems' default (208 KiB on Linux, about 40 KiB for UDP on OpenBSD)
/// most of a 10,000-link burst was dropped and waited for its retransmit
/// (BENCHMARKS.md). Never below the default; at most 32 MiB.
pub fn peering_buffer(links: usize) -> usize {
    (links.saturating_mul(1280)).clamp(256 * 1024, 32 * 1024 * 1024)
}

/// Raises a socket buffer (`SO_RCVBUF` or `SO_SNDBUF`, read with `get`,
/// set with `set`) towards `want`, never lowering it: the largest size the
/// system allows, down to half of `want` at each refusal. Linux caps the
/// plain option at net.core.[rw]mem_max; the parent is root, so `set`
/// tries the `FORCE` variant first there. A buffer left smaller costs
/// retransmits, not safety: failures are ignored.
fn grow_buffer(want: usize, get: impl Fn() -> usize, set: impl Fn(usize) -> bool) {
    let have = get();
    let mut size = want;
    while size > have {
        // Linux reports twice what was set; a silent cap shows as less.
        if set(size) && get() >= size {
            return;
        }
        size /= 2;
    }
}

fn bind_udp(addr: std::net::SocketAddr) -> io::Result<OwnedFd> {
    use nix::sys::socket::{SockaddrStorage, bind, socket};
    let family = if addr.is_ipv6() {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    let fd = socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)
        .map_err(io::Error::from)?;
    if addr.is_ipv6() {
        use nix::sys::socket::{setsockopt, sockopt};
        setsockopt(&fd, sockopt::Ipv6V6Only, &true).map_err(io::Error::from)?;
    }
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr)).map_err(io::Error::from)?;
    Ok(fd)
}

/// The listening control socket (fd 4).
pub fn control_listener() -> io::Result<std::os::unix::net::UnixListener> {
    take_fd(CONTROL_FD).map(std::os::unix::net::UnixListener::from)
}

fn take_fd(fd: RawFd) -> io::Result<OwnedFd> {
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("fd {fd} is not open: the engine is started by the parent, not by hand"),
        ));
    }
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Creates the chroot directory if missing (root-owned, 0755) and refuses one
/// that is group- or other-writable or not owned by root (as ntpd does).
pub fn prepare_chroot(dir: &Path) -> Result<(), String> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod {}: {e}", dir.display()))?;
    }
    check_chroot(dir)
}

/// The chroot directory as [`prepare_chroot`] would accept it; a missing
/// one is fine (the start creates it). `qkdpfd -n` checks this.
pub fn check_chroot(dir: &Path) -> Result<(), String> {
    let md = match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        r => r.map_err(|e| format!("{}: {e}", dir.display()))?,
    };
    if !md.is_dir() || md.uid() != 0 || md.mode() & 0o022 != 0 {
        return Err(format!(
            "bad privsep dir {} permissions (want a root-owned directory \
             that neither group nor others may write)",
            dir.display()
        ));
    }
    Ok(())
}

/// chroot, chdir, setgroups, setresgid, setresuid — in that order — and check
/// that root cannot be regained.
pub fn drop_privileges(to: &DropTo) -> Result<(), String> {
    nix::unistd::chroot(&to.chroot).map_err(|e| format!("chroot {}: {e}", to.chroot.display()))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    let gid = Gid::from_raw(to.gid);
    let uid = Uid::from_raw(to.uid);
    nix::unistd::setgroups(&[gid]).map_err(|e| format!("setgroups: {e}"))?;
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| format!("setresgid: {e}"))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| format!("setresuid: {e}"))?;
    if to.uid != 0 && nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err("privilege drop failed: could regain root".into());
    }
    Ok(())
}

/// Fixes glibc's heap thresholds, first thing in each process. Left
/// dynamic, freeing one large buffer (a 10,000-link policy's check script,
/// 6 MB) raises the size from which blocks are mapped on their own to that
/// size, and the free space a heap keeps at its top to twice it: the
/// policy check's worker thread then kept 11 MiB of its freed heap for
/// good (a thread's heap gives its top back only at free, and only past
/// that threshold; `malloc_trim` leaves it). Fixed, a block of 256 KiB
/// or more is mapped and unmapped on its own, and any heap gives back a
/// free top of more than 1 MiB. OpenBSD's malloc needs neither.
pub fn fixed_heap_thresholds() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: takes no pointer; glibc locks its arenas itself.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1024 * 1024);
    }
}

/// Gives the heap's free pages back to the system. glibc keeps what a
/// burst freed (a 10,000-link config parsed, a policy rendered for every
/// link: 36 of the parent's 76 MB at 10,000 links) until told; OpenBSD's
/// malloc unmaps freed pages itself. Called after such bursts; costs a
/// walk over the free lists.
pub fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: takes no pointer; glibc locks its arenas itself.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Root in the initial user namespace (not `unshare -r`'s mapped root):
/// only then is a privilege drop possible and required.
/// No core file and (Linux) no ptrace or /proc peeking by the same uid:
/// both processes hold keys in memory. Called first thing in each process
/// (an exec resets the dumpable flag).
pub fn no_core_dumps() {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a stack value; failure leaves the defaults.
    unsafe {
        libc::setrlimit(libc::RLIMIT_CORE, &zero);
        #[cfg(target_os = "linux")]
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit: the caps on control
/// connections, KME and QBER sockets then leave room below it (accounted
/// in qkdpfd.8).
pub fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit on a stack value.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

pub fn is_real_root() -> bool {
    if !nix::unistd::geteuid().is_root() {
        return false;
    }
    match std::fs::read_to_string("/proc/self/uid_map") {
        // "0 0 4294967295" in the initial namespace; "0 1000 1" under unshare -r.
        Ok(m) => m.split_whitespace().take(2).eq(["0", "0"]),
        // No /proc (OpenBSD): euid 0 is real root.
        Err(_) => true,
    }
}

/// Resolves the engine user (root only; non-root runs skip the drop).
pub fn resolve_user(user: &str, chroot: &Path) -> Result<DropTo, String> {
    let u = nix::unistd::User::from_name(user)
        .map_err(|e| format!("getpwnam {user}: {e}"))?
        .ok_or_else(|| format!("unknown user {user}"))?;
    if u.uid.is_root() {
        return Err(format!("user {user} must not be root"));
    }
    Ok(DropTo {
        user: user.to_string(),
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
        chroot: chroot.to_path_buf(),
    })
}

/// uids and gid allowed read-only control access (`socket_group`).
pub fn resolve_group(group: &str) -> Result<(u32, Vec<u32>), String> {
    let g = nix::unistd::Group::from_name(group)
        .map_err(|e| format!("getgrnam {group}: {e}"))?
        .ok_or_else(|| format!("unknown group {group}"))?;
    let mut uids = Vec::new();
    for m in &g.mem {
        if let Ok(Some(u)) = nix::unistd::User::from_name(m) {
            uids.push(u.uid.as_raw());
        }
    }
    Ok((g.gid.as_raw(), uids))
}

/// ps(1) shows `qkdpfd: engine` or `qkdpfd: guardian`, as OpenBSD daemons
/// name their children (rc.d's default pexp then matches the parent
/// alone, by design). Elsewhere nothing.
#[cfg(target_os = "openbsd")]
pub fn set_title(role: &std::ffi::CStr) {
    // SAFETY: a constant format and a NUL-terminated argument.
    unsafe { libc::setproctitle(c"%s".as_ptr(), role.as_ptr()) };
}

#[cfg(not(target_os = "openbsd"))]
pub fn set_title(_role: &std::ffi::CStr) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv0_must_be_absolute() {
        assert!(check_argv0(Path::new("/usr/sbin/qkdpfd")).is_ok());
        assert!(check_argv0(Path::new("qkdpfd")).is_err());
        assert!(check_argv0(Path::new("./target/qkdpfd")).is_err());
    }

    #[test]
    fn peering_buffers_hold_a_burst_of_every_link() {
        assert_eq!(peering_buffer(0), 256 * 1024, "never below the default");
        assert_eq!(peering_buffer(10_000), 12_800_000);
        assert_eq!(peering_buffer(usize::MAX), 32 * 1024 * 1024);
        use nix::sys::socket::{getsockopt, sockopt};
        let socks = bind_peering("127.0.0.1:0".parse().unwrap(), 10_000).unwrap();
        let fd = &socks[0];
        let (rcv, snd) = (
            getsockopt(fd, sockopt::RcvBuf).unwrap(),
            getsockopt(fd, sockopt::SndBuf).unwrap(),
        );
        if nix::unistd::geteuid().is_root() {
            // Root goes past net.core.rmem_max (the parent binds as root).
            assert!(rcv >= 12_800_000, "SO_RCVBUF {rcv}");
            assert!(snd >= 12_800_000, "SO_SNDBUF {snd}");
        }
        // An IPv6 socket is IPv6-only, as on OpenBSD (ip6(4)).
        if let Ok(v6) = bind_udp("[::1]:0".parse().unwrap()) {
            assert!(getsockopt(&v6, sockopt::Ipv6V6Only).unwrap());
        }
        // One link: never below 256 KiB.
        let one = bind_peering("127.0.0.1:0".parse().unwrap(), 1).unwrap();
        assert!(getsockopt(&one[0], sockopt::RcvBuf).unwrap() >= 256 * 1024);
    }

    #[test]
    fn chroot_dir_checks() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("empty");
        if nix::unistd::geteuid().is_root() {
            prepare_chroot(&d).unwrap();
            assert_eq!(std::fs::metadata(&d).unwrap().mode() & 0o777, 0o755);
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
            assert!(prepare_chroot(&d).unwrap_err().contains("bad privsep dir"));
        } else {
            // Created by us, so not root-owned: refused.
            assert!(prepare_chroot(&d).is_err());
        }
    }
}
