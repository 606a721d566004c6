//! The engine's seccomp allow-list (Linux, x86_64 and aarch64), installed
//! after landlock and before the tokio runtime exists; every later thread
//! inherits it.
//!
//! What is listed is what a current-thread tokio runtime, std, rustls/ring
//! and hyper use on already-open or new IPv4/IPv6 sockets. Anything else
//! fails with `EPERM`, never a kill: a libc update that starts using a new
//! system call degrades that call, it does not take the gateway down. Not
//! listed, so refused: open/openat, execve/execveat, ptrace, mount, bind,
//! listen, kill, fork (clone without `CLONE_THREAD`), mprotect/mmap with
//! `PROT_EXEC`.

// libc's SYS_* (c_long) and ioctl numbers (c_ulong or c_int) are i64/u64
// on some targets only: the casts are needed on the others.
#![allow(clippy::unnecessary_cast)]

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

#[cfg(target_arch = "x86_64")]
const ARCH: Option<TargetArch> = Some(TargetArch::x86_64);
#[cfg(target_arch = "aarch64")]
const ARCH: Option<TargetArch> = Some(TargetArch::aarch64);
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const ARCH: Option<TargetArch> = None;

/// Allowed whatever their arguments.
const PLAIN: &[libc::c_long] = &[
    // I/O on descriptors the engine holds.
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    // Memory.
    libc::SYS_munmap,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    // Signals (tokio's signal driver, std's stack overflow handler).
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    // Threads and scheduling (a blocking-pool thread may exist).
    libc::SYS_futex,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_restart_syscall,
    libc::SYS_exit,
    libc::SYS_exit_group,
    // Time.
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettimeofday,
    // The event loop.
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_eventfd2,
    libc::SYS_ppoll,
    // Sockets already created, accepted or passed (control socket, metrics
    // listener, fd 3, the peering UDP socket, KME and QBER connections).
    libc::SYS_connect,
    libc::SYS_accept4,
    libc::SYS_accept,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_shutdown,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendmmsg,
    libc::SYS_recvmmsg,
    // rustls/ring and std's hash seeds.
    libc::SYS_getrandom,
    // x86_64 keeps the older entry points glibc may still use.
    #[cfg(target_arch = "x86_64")]
    libc::SYS_epoll_wait,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_poll,
];

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, String> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).map_err(|e| e.to_string())
}

/// One rule per value: `arg == v` for any v.
fn any_of(arg: u8, values: &[u64]) -> Result<Vec<SeccompRule>, String> {
    values
        .iter()
        .map(|&v| {
            SeccompRule::new(vec![cond(arg, SeccompCmpOp::Eq, v)?]).map_err(|e| e.to_string())
        })
        .collect()
}

/// `arg & mask == want`.
fn masked(arg: u8, mask: u64, want: u64) -> Result<Vec<SeccompRule>, String> {
    let c = cond(arg, SeccompCmpOp::MaskedEq(mask), want)?;
    Ok(vec![SeccompRule::new(vec![c]).map_err(|e| e.to_string())?])
}

/// The allow-list: syscall number -> argument rules (empty: any arguments).
fn allow_list() -> Result<BTreeMap<i64, Vec<SeccompRule>>, String> {
    let mut m: BTreeMap<i64, Vec<SeccompRule>> =
        PLAIN.iter().map(|&n| (n as i64, Vec::new())).collect();
    let inet = [libc::AF_INET as u64, libc::AF_INET6 as u64];
    m.insert(libc::SYS_socket as i64, any_of(0, &inet)?);
    // tokio's signal driver makes one AF_UNIX pair at start-up.
    m.insert(
        libc::SYS_socketpair as i64,
        any_of(0, &[libc::AF_UNIX as u64])?,
    );
    let ioctls = [libc::FIONBIO as u64, libc::FIOCLEX as u64];
    m.insert(libc::SYS_ioctl as i64, any_of(1, &ioctls)?);
    // Threads only: clone without CLONE_THREAD would be a fork.
    let thread = libc::CLONE_THREAD as u64;
    m.insert(libc::SYS_clone as i64, masked(0, thread, thread)?);
    // No executable memory: no new code after start-up.
    let exec = libc::PROT_EXEC as u64;
    m.insert(libc::SYS_mmap as i64, masked(2, exec, 0)?);
    m.insert(libc::SYS_mprotect as i64, masked(2, exec, 0)?);
    // A thread name (std names its threads itself); no_new_privs and
    // seccomp itself, which only ever restrict further (our own second
    // filter below is installed through them).
    let prctls = [libc::PR_SET_NAME as u64, libc::PR_SET_NO_NEW_PRIVS as u64];
    m.insert(libc::SYS_prctl as i64, any_of(0, &prctls)?);
    m.insert(libc::SYS_seccomp as i64, Vec::new());
    // abort() signals its own process only.
    let pid = std::process::id() as u64;
    m.insert(libc::SYS_tgkill as i64, any_of(0, &[pid])?);
    Ok(m)
}

/// This architecture's seccomp audit value, or an error naming the gap.
pub fn arch() -> Result<TargetArch, String> {
    ARCH.ok_or_else(|| "seccomp: no allow-list for this architecture".to_string())
}

fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, String> {
    let arch = arch()?;
    let filter = SeccompFilter::new(rules, mismatch, matched, arch).map_err(|e| e.to_string())?;
    BpfProgram::try_from(filter).map_err(|e| e.to_string())
}

/// Installs the allow-list (default `EPERM`) and a second filter that
/// answers clone3 with `ENOSYS`, so that glibc falls back to clone (whose
/// flags the first filter can see). Returns the number of listed syscalls.
pub fn apply() -> Result<usize, String> {
    let rules = allow_list()?;
    let n = rules.len();
    let eperm = SeccompAction::Errno(libc::EPERM as u32);
    let main = compile(rules, eperm, SeccompAction::Allow)?;
    let clone3: BTreeMap<i64, Vec<SeccompRule>> = [(libc::SYS_clone3 as i64, Vec::new())]
        .into_iter()
        .collect();
    let enosys = SeccompAction::Errno(libc::ENOSYS as u32);
    let fallback = compile(clone3, SeccompAction::Allow, enosys)?;
    seccompiler::apply_filter(&main).map_err(|e| format!("seccomp: {e}"))?;
    // Filters run newest first and equal actions keep the first one seen:
    // clone3 gets ENOSYS rather than the allow-list's EPERM.
    seccompiler::apply_filter(&fallback).map_err(|e| format!("seccomp: {e}"))?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_compiles_and_refuses_the_dangerous() {
        let m = allow_list().unwrap();
        for n in [
            libc::SYS_openat,
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_ptrace,
            libc::SYS_mount,
            libc::SYS_bind,
            libc::SYS_listen,
            libc::SYS_kill,
            libc::SYS_clone3,
            libc::SYS_setuid,
            libc::SYS_chroot,
        ] {
            assert!(
                !m.contains_key(&(n as i64)),
                "syscall {n} must not be listed"
            );
        }
        assert!(m.contains_key(&(libc::SYS_epoll_ctl as i64)));
        let eperm = SeccompAction::Errno(libc::EPERM as u32);
        assert!(!compile(m, eperm, SeccompAction::Allow).unwrap().is_empty());
    }
}
