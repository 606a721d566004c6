//! pledge(2), emulated on Linux for the tests (`testing` builds only).
//!
//! We cannot boot OpenBSD here, and a process that breaks its pledge is
//! killed there with SIGABRT: that is a failure golden bytes never show.
//! So where the code calls [`crate::sandbox::pledge`], a `testing` build on
//! Linux installs a seccomp filter that allows what the promises allow on
//! OpenBSD, and anything else traps into a handler that prints the system
//! call and aborts, as `pledge_fail()` does.
//!
//! The table is OpenBSD's `pledge_syscalls[]`, `pledge_sockopt()`,
//! `pledge_ioctl()`, `pledge_socket()`, `pledge_sendit()`, `pledge_kill()`,
//! `pledge_fcntl()` and the namei checks of sys/kern/kern_pledge.c
//! [`KERN_PLEDGE_REV`], each Linux system call put where its OpenBSD
//! counterpart is. What seccomp cannot see is allowed, and listed here so
//! that nobody takes the emulation for more than it is: path names (the
//! `/etc/localtime`, `/dev/null`, resolver-file exceptions: we are
//! stricter), SCM_RIGHTS in `sendmsg`/`recvmsg` (`sendfd`/`recvfd`), the
//! address in `sendmsg`, the sysctl MIB names (Linux's `uname`,
//! `sched_getaffinity` and `prctl(PR_SET_NAME)` stand for the sysctls
//! OpenBSD allows under `stdio`). `clone3` answers ENOSYS so that libc
//! falls back to `clone`, whose flags tell a thread (`stdio`) from a fork
//! (`proc`).

// libc's SYS_* and ioctl numbers differ in type between targets.
#![allow(clippy::unnecessary_cast)]

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};
use std::collections::BTreeMap;
use std::sync::Mutex;

mod table;
use table::plain;

/// The kern_pledge.c this table was taken from (openbsd/src, 2025-09-17;
/// see src/OPENBSD-FACTS.md for what else we rely on and where).
pub const KERN_PLEDGE_REV: &str = "1.333";

/// Environment switch: `QKDPFD_PLEDGE_EMULATION=off` disables the
/// emulation in a `testing` build (to compare with and without).
pub const ENV: &str = "QKDPFD_PLEDGE_EMULATION";

// Promise bits: one per promise word the project may use.
const STDIO: u32 = 1 << 0;
const RPATH: u32 = 1 << 1;
const WPATH: u32 = 1 << 2;
const CPATH: u32 = 1 << 3;
const DPATH: u32 = 1 << 4;
const INET: u32 = 1 << 5;
const UNIX: u32 = 1 << 6;
const DNS: u32 = 1 << 7;
const RECVFD: u32 = 1 << 8;
const SENDFD: u32 = 1 << 9;
const PROC: u32 = 1 << 10;
const EXEC: u32 = 1 << 11;
const ID: u32 = 1 << 12;
const FLOCK: u32 = 1 << 13;
const FATTR: u32 = 1 << 14;
const CHOWN: u32 = 1 << 15;
const UNVEIL: u32 = 1 << 16;
const SETTIME: u32 = 1 << 17;
const TTY: u32 = 1 << 18;
const GETPW: u32 = 1 << 19;
const PROTEXEC: u32 = 1 << 20;
const TMPPATH: u32 = 1 << 21;
/// Allowed under every pledge, even the empty one.
const ALWAYS: u32 = u32::MAX;

const WORDS: &[(&str, u32)] = &[
    ("stdio", STDIO),
    ("rpath", RPATH),
    ("wpath", WPATH),
    ("cpath", CPATH),
    ("dpath", DPATH),
    ("inet", INET),
    ("unix", UNIX),
    ("dns", DNS),
    ("recvfd", RECVFD),
    ("sendfd", SENDFD),
    ("proc", PROC),
    ("exec", EXEC),
    ("id", ID),
    ("flock", FLOCK),
    // "fattr" also grants chown of one's own files (kern_pledge.c pledgereq).
    ("fattr", FATTR | CHOWN),
    ("chown", CHOWN),
    ("unveil", UNVEIL),
    ("settime", SETTIME),
    ("tty", TTY),
    ("getpw", GETPW),
    ("prot_exec", PROTEXEC),
    ("tmppath", TMPPATH),
];

/// Parses a promise string as sys_pledge does: words separated by
/// spaces, an unknown word is EINVAL.
pub fn parse(promises: &str) -> Result<u32, String> {
    let mut bits = 0;
    for w in promises.split(' ').filter(|w| !w.is_empty()) {
        let (_, b) = WORDS
            .iter()
            .find(|(name, _)| *name == w)
            .ok_or_else(|| format!("pledge: unknown promise {w:?} (EINVAL)"))?;
        bits |= b;
    }
    Ok(bits)
}

fn cond(arg: u8, len: SeccompCmpArgLen, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    SeccompCondition::new(arg, len, op, value).expect("argument index below 6")
}

fn eq(arg: u8, value: u64) -> SeccompCondition {
    cond(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
}

fn masked(arg: u8, mask: u64, value: u64) -> SeccompCondition {
    cond(
        arg,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(mask),
        value,
    )
}

fn rule(conds: Vec<SeccompCondition>) -> SeccompRule {
    SeccompRule::new(conds).expect("at least one condition")
}

/// setsockopt/getsockopt (level = arg 1, name = arg 2): pledge_sockopt().
fn sockopt_rules(p: u32) -> Vec<SeccompRule> {
    use libc::*;
    let opt = |level: c_int, name: c_int| rule(vec![eq(1, level as u64), eq(2, name as u64)]);
    // "Too common to reject": under every pledge.
    let mut v = vec![
        opt(SOL_SOCKET, SO_RCVBUF),
        opt(SOL_SOCKET, SO_ERROR),
        opt(IPPROTO_TCP, TCP_NODELAY),
        opt(IPPROTO_IP, IP_TOS),
        opt(IPPROTO_IPV6, IPV6_TCLASS),
    ];
    if p & (INET | UNIX | DNS) != 0 {
        v.push(opt(SOL_SOCKET, SO_TIMESTAMP));
    }
    if p & DNS != 0 {
        v.push(opt(IPPROTO_IPV6, IPV6_RECVPKTINFO));
    }
    if p & (INET | UNIX) != 0 {
        // Any SOL_SOCKET option (SO_RTABLE has no Linux counterpart).
        v.push(rule(vec![eq(1, SOL_SOCKET as u64)]));
    }
    if p & INET != 0 {
        for (level, name) in [
            (IPPROTO_TCP, TCP_MD5SIG),
            (IPPROTO_TCP, TCP_MAXSEG),
            (IPPROTO_TCP, TCP_INFO),
            (IPPROTO_IP, IP_TTL),
            (IPPROTO_IP, IP_MINTTL),
            (IPPROTO_IPV6, IPV6_DONTFRAG),
            (IPPROTO_IPV6, IPV6_UNICAST_HOPS),
            (IPPROTO_IPV6, IPV6_RECVHOPLIMIT),
            (IPPROTO_IPV6, IPV6_RECVPKTINFO),
            (IPPROTO_IPV6, IPV6_RECVTCLASS),
            (IPPROTO_IPV6, IPV6_V6ONLY),
        ] {
            v.push(opt(level, name));
        }
    }
    v
}

/// The argument-dependent system calls, for promises `p`. A call absent
/// from the map traps; one present with rules traps unless a rule holds.
fn rules(p: u32) -> BTreeMap<i64, Vec<SeccompRule>> {
    use libc::*;
    let mut m: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (nr, need) in plain() {
        if need == ALWAYS || p & need != 0 {
            m.insert(nr as i64, Vec::new());
        }
    }
    if p & STDIO == 0 {
        return m;
    }
    let pid = std::process::id() as u64;
    let mut add = |nr: c_long, r: Vec<SeccompRule>| {
        if !r.is_empty() {
            m.insert(nr as i64, r);
        }
    };
    // thrkill: only threads of this process.
    add(SYS_tgkill, vec![rule(vec![eq(0, pid)])]);
    // kill(2): self or the process group with stdio; others need proc.
    add(
        SYS_kill,
        match p & PROC {
            0 => vec![rule(vec![eq(0, 0)]), rule(vec![eq(0, pid)])],
            _ => vec![rule(vec![eq(0, pid)]), rule(vec![masked(0, 0, 0)])],
        },
    );
    // fcntl: F_SETOWN needs proc.
    add(
        SYS_fcntl,
        match p & PROC {
            0 => vec![rule(vec![cond(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Ne,
                F_SETOWN as u64,
            )])],
            _ => vec![rule(vec![masked(1, 0, 0)])],
        },
    );
    // ioctl: FIONREAD, FIONBIO, FIOCLEX, FIONCLEX always. TCGETS is what
    // isatty(3) costs on Linux; OpenBSD's isatty asks fcntl(F_ISATTY),
    // which stdio allows.
    let ioctls = [
        FIONREAD as u64,
        FIONBIO as u64,
        FIOCLEX as u64,
        FIONCLEX as u64,
    ];
    let mut io: Vec<SeccompRule> = ioctls.iter().map(|&c| rule(vec![eq(1, c)])).collect();
    io.push(rule(vec![eq(1, TCGETS as u64)]));
    add(SYS_ioctl, io);
    // socket(2): pledge_socket() by domain.
    let mut dom = Vec::new();
    if p & UNIX != 0 {
        dom.push(rule(vec![eq(0, AF_UNIX as u64)]));
    }
    if p & (INET | DNS) != 0 {
        dom.push(rule(vec![eq(0, AF_INET as u64)]));
        dom.push(rule(vec![eq(0, AF_INET6 as u64)]));
    }
    add(SYS_socket, dom);
    add(SYS_setsockopt, sockopt_rules(p));
    add(SYS_getsockopt, sockopt_rules(p));
    // sendto with an address needs a network promise (pledge_sendit).
    add(
        SYS_sendto,
        match p & (INET | UNIX | DNS) {
            0 => vec![rule(vec![cond(
                4,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::Eq,
                0,
            )])],
            _ => vec![rule(vec![masked(0, 0, 0)])],
        },
    );
    // Memory: no new executable mappings without prot_exec.
    let exec = PROT_EXEC as u64;
    let prot = match p & PROTEXEC {
        0 => vec![rule(vec![masked(2, exec, 0)])],
        _ => vec![rule(vec![masked(2, 0, 0)])],
    };
    add(SYS_mmap, prot.clone());
    add(SYS_mprotect, prot);
    // clone: a thread is __tfork (stdio), anything else a fork (proc).
    let thread = CLONE_THREAD as u64;
    add(
        SYS_clone,
        match p & PROC {
            0 => vec![rule(vec![masked(0, thread, thread)])],
            _ => vec![rule(vec![masked(0, 0, 0)])],
        },
    );
    // Allowed here; the second filter answers ENOSYS (see module docs).
    add(SYS_clone3, vec![rule(vec![masked(0, 0, 0)])]);
    // getrlimit is stdio; setting a limit needs proc or id.
    add(
        SYS_prlimit64,
        match p & (PROC | ID) {
            0 => vec![rule(vec![cond(
                2,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::Eq,
                0,
            )])],
            _ => vec![rule(vec![masked(0, 0, 0)])],
        },
    );
    // setproctitle (sysctl vm.psstrings under stdio); no_new_privs and
    // seccomp belong to pledge itself; dumpable is a getter/setter on self.
    add(
        SYS_prctl,
        [
            PR_SET_NAME,
            PR_GET_NAME,
            PR_SET_NO_NEW_PRIVS,
            PR_SET_SECCOMP,
            PR_GET_DUMPABLE,
        ]
        .iter()
        .map(|&o| rule(vec![eq(0, o as u64)]))
        .collect(),
    );
    // fstat through statx/newfstatat (AT_EMPTY_PATH) is stdio; a path
    // needs rpath or wpath.
    let empty = AT_EMPTY_PATH as u64;
    let stat = match p & (RPATH | WPATH) {
        0 => vec![rule(vec![masked(3, empty, empty)])],
        _ => vec![rule(vec![masked(3, 0, 0)])],
    };
    add(SYS_newfstatat, stat);
    let statx = match p & (RPATH | WPATH) {
        0 => vec![rule(vec![masked(2, empty, empty)])],
        _ => vec![rule(vec![masked(2, 0, 0)])],
    };
    add(SYS_statx, statx);
    // open: namei asks rpath to read, wpath to write, cpath to create.
    add(SYS_openat, open_rules(p, 2));
    #[cfg(target_arch = "x86_64")]
    add(SYS_open, open_rules(p, 1));
    m
}

/// The open flags (argument `arg`) the promises allow.
fn open_rules(p: u32, arg: u8) -> Vec<SeccompRule> {
    let acc = libc::O_ACCMODE as u64;
    let creat = libc::O_CREAT as u64;
    let mut v = Vec::new();
    for (mode, need) in [
        (libc::O_RDONLY, RPATH),
        (libc::O_WRONLY, WPATH),
        (libc::O_RDWR, RPATH | WPATH),
    ] {
        if p & need != need {
            continue;
        }
        v.push(rule(vec![masked(arg, acc | creat, mode as u64)]));
        if p & CPATH != 0 {
            v.push(rule(vec![masked(arg, acc | creat, mode as u64 | creat)]));
        }
    }
    v
}

/// The filter for promises `p`; compiled for this architecture.
fn compile(p: u32) -> Result<BpfProgram, String> {
    let arch = super::seccomp::arch()?;
    let filter = SeccompFilter::new(rules(p), SeccompAction::Trap, SeccompAction::Allow, arch)
        .map_err(|e| e.to_string())?;
    BpfProgram::try_from(filter).map_err(|e| e.to_string())
}

/// The promises in force, for the reduction rule and the abort message.
static CURRENT: Mutex<Option<(u32, String)>> = Mutex::new(None);
/// The promise text for the signal handler (written once per pledge,
/// before the filter that can trap is installed; read only there).
static mut TEXT: [u8; 128] = [0; 128];
static mut TEXT_LEN: usize = 0;

/// pledge(promises) as OpenBSD does it, emulated: a second call may only
/// drop promises (EPERM otherwise), an unknown word is EINVAL.
pub fn pledge(promises: &str) -> Result<(), String> {
    let bits = parse(promises)?;
    let mut cur = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((had, _)) = &*cur {
        if bits | had != *had {
            return Err(format!("pledge {promises:?}: EPERM (only reductions)"));
        }
    }
    let main = compile(bits)?;
    let clone3: BTreeMap<i64, Vec<SeccompRule>> = [(libc::SYS_clone3 as i64, Vec::new())]
        .into_iter()
        .collect();
    let arch = super::seccomp::arch()?;
    let enosys = SeccompFilter::new(
        clone3,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .and_then(BpfProgram::try_from)
    .map_err(|e| e.to_string())?;
    set_text(promises);
    install_handler()?;
    seccompiler::apply_filter_all_threads(&main).map_err(|e| format!("pledge emulation: {e}"))?;
    if cur.is_none() {
        seccompiler::apply_filter_all_threads(&enosys)
            .map_err(|e| format!("pledge emulation: {e}"))?;
    }
    *cur = Some((bits, promises.to_string()));
    Ok(())
}

fn set_text(promises: &str) {
    let b = promises.as_bytes();
    let n = b.len().min(128);
    // SAFETY: written only here, under CURRENT's lock, before the filter
    // that can make the handler run; the handler only reads.
    unsafe {
        let t = &mut *std::ptr::addr_of_mut!(TEXT);
        t[..n].copy_from_slice(&b[..n]);
        TEXT_LEN = n;
    }
}

fn install_handler() -> Result<(), String> {
    // SAFETY: a zeroed sigaction with a valid handler and SA_SIGINFO.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) != 0 {
            return Err(format!(
                "pledge emulation: sigaction: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// A small stack buffer for the message: the handler may not allocate.
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn push(&mut self, s: &[u8]) {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    fn num(&mut self, mut v: u64) {
        let mut d = [0u8; 20];
        let mut i = d.len();
        loop {
            i -= 1;
            d[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&d[i..]);
    }
}

/// SIGSYS from the filter: say which call broke the pledge, then abort,
/// as pledge_fail() does ("pledge \"promise\", syscall N").
extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let mut l = Line {
        buf: [0; 256],
        len: 0,
    };
    l.push(b"pledge emulation (kern_pledge.c ");
    l.push(KERN_PLEDGE_REV.as_bytes());
    l.push(b"): promises \"");
    // SAFETY: TEXT is written before the filter exists (see set_text).
    unsafe {
        let t = &*std::ptr::addr_of!(TEXT);
        l.push(&t[..TEXT_LEN]);
    }
    l.push(b"\" do not allow syscall ");
    // SIGSYS siginfo: signo, errno, code, padding, then call_addr (8
    // bytes) and the system call number (int) at offset 24.
    // SAFETY: the kernel filled a full siginfo for SIGSYS.
    let nr = unsafe { *(info as *const u8).add(24).cast::<i32>() };
    l.num(nr as u64);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SA_SIGINFO handlers get a ucontext_t.
    unsafe {
        let uc = &*(ctx as *const libc::ucontext_t);
        let g = &uc.uc_mcontext.gregs;
        l.push(b" args ");
        for (i, r) in [libc::REG_RDI, libc::REG_RSI, libc::REG_RDX]
            .iter()
            .enumerate()
        {
            if i > 0 {
                l.push(b",");
            }
            l.num(g[*r as usize] as u64);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = ctx;
    l.push(b"\n");
    // SAFETY: write(2), signal(2) and abort(3) are async-signal-safe.
    unsafe {
        libc::write(2, l.buf.as_ptr().cast(), l.len);
        libc::signal(libc::SIGABRT, libc::SIG_DFL);
        libc::abort();
    }
}

#[cfg(test)]
mod tests;
