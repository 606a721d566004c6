//! The pledge emulation (src/sandbox/linux/pledge.rs) does what OpenBSD's
//! kern_pledge.c does to the calls this project makes: each case runs in a
//! child process (this test binary again, entry [`pledge_case_child`]) that
//! pledges and then makes one call; the parent asserts that the child
//! survived, or died of SIGABRT with the emulation's message, as a process
//! breaking its pledge dies on OpenBSD.
//!
//! `case_ctl_deadline_after_stdio` is qkdctl's sequence before it was fixed
//! (b37f5b8: `pledge("stdio")`, then `SO_SNDTIMEO`): it must abort.

#![cfg(all(target_os = "linux", feature = "testing"))]

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;

mod common;
use std::time::Duration;

const CASE: &str = "QKDPFD_PLEDGE_CASE";

enum Outcome {
    Survives,
    Aborts,
}

/// Runs `case` in a child; asserts the outcome; returns its stderr.
fn run(case: &str, want: Outcome) -> String {
    run_env(case, want, &[]).1
}

/// As [`run`], with more environment; returns stdout and stderr.
fn run_env(case: &str, want: Outcome, env: &[(&str, &Path)]) -> (String, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "pledge_case_child", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(CASE, case)
        .envs(env.iter().copied())
        .env_remove("QKDPFD_PLEDGE_EMULATION")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    match want {
        Outcome::Survives => assert!(
            out.status.success() && stdout.contains("CASE-SURVIVED"),
            "{case}: expected to survive, got {:?}\nstdout: {stdout}\nstderr: {stderr}",
            out.status
        ),
        Outcome::Aborts => {
            assert_eq!(
                out.status.signal(),
                Some(libc::SIGABRT),
                "{case}: expected SIGABRT, got {:?}\nstdout: {stdout}\nstderr: {stderr}",
                out.status
            );
            assert!(!stdout.contains("CASE-SURVIVED"), "{case}: {stdout}");
            assert!(stderr.contains("pledge emulation"), "{case}: {stderr}");
        }
    }
    (stdout, stderr)
}

fn pledge(p: &str) {
    qkdpfd::sandbox::pledge(p).unwrap();
}

fn setsockopt_timeval(fd: i32, opt: libc::c_int) -> libc::c_int {
    let tv = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    // SAFETY: a valid fd and a timeval of the right size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    }
}

/// One case, in the child, after which it says it survived.
fn child(case: &str) {
    match case {
        "stdio_sndtimeo" => {
            let (a, _b) = UnixStream::pair().unwrap();
            pledge("stdio");
            setsockopt_timeval(a.as_raw_fd(), libc::SO_SNDTIMEO);
        }
        "stdio_rcvbuf" => {
            let (a, _b) = UnixStream::pair().unwrap();
            pledge("stdio");
            let n: libc::c_int = 65536;
            // SAFETY: a valid fd and an int option.
            let rc = unsafe {
                libc::setsockopt(
                    a.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUF,
                    (&n as *const libc::c_int).cast(),
                    4,
                )
            };
            assert_eq!(rc, 0);
        }
        "unix_rcvtimeo" => {
            let (a, _b) = UnixStream::pair().unwrap();
            pledge("stdio unix");
            assert_eq!(setsockopt_timeval(a.as_raw_fd(), libc::SO_RCVTIMEO), 0);
        }
        "ctl_deadline_after_stdio" | "ctl_poll_after_stdio" => {
            // qkdctl's order: promises for the socket, connect, stdio only.
            let dir = std::env::temp_dir().join(format!("pledge-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("s");
            let _l = UnixListener::bind(&path).unwrap();
            pledge("stdio rpath unix");
            let mut s = UnixStream::connect(&path).unwrap();
            pledge("stdio");
            if case == "ctl_deadline_after_stdio" {
                s.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
            } else {
                s.set_nonblocking(true).unwrap();
                let mut p = libc::pollfd {
                    fd: s.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                assert_eq!(unsafe { libc::poll(&mut p, 1, 1000) }, 1);
                s.write_all(b"{}\n").unwrap();
            }
        }
        "stdio_open" => {
            pledge("stdio");
            let _ = std::fs::read("/proc/self/status");
        }
        "rpath_read" => {
            pledge("stdio rpath");
            assert!(!std::fs::read("/proc/self/status").unwrap().is_empty());
        }
        "rpath_write" => {
            let p = std::env::temp_dir().join(format!("pledge-w-{}", std::process::id()));
            pledge("stdio rpath");
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(p);
        }
        "unix_inet_socket" => {
            pledge("stdio unix");
            let _ = std::net::UdpSocket::bind("127.0.0.1:0");
        }
        "inet_socket" => {
            pledge("stdio inet");
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
        }
        "only_reductions" => {
            pledge("stdio rpath");
            let e = qkdpfd::sandbox::pledge("stdio rpath unix").unwrap_err();
            assert!(e.contains("EPERM"), "{e}");
            pledge("stdio");
        }
        "threads_not_fork" => {
            pledge("stdio");
            std::thread::spawn(|| ()).join().unwrap();
            println!("thread ok");
            // SAFETY: the child of this fork only exits.
            if unsafe { libc::fork() } == 0 {
                unsafe { libc::_exit(0) };
            }
        }
        "stdio_kill_other" => {
            pledge("stdio");
            // SAFETY: signal 0 checks only; pid 1 is another process.
            unsafe { libc::kill(1, 0) };
        }
        "stdio_kill_self" => {
            pledge("stdio");
            // SAFETY: signal 0 to ourselves.
            assert_eq!(unsafe { libc::kill(std::process::id() as i32, 0) }, 0);
        }
        "ctl_verify_then_write" => {
            // `qkdctl -p KEY policy verify BUNDLE`, in this process; then
            // a write, which its promises do not hold.
            let var = |k| std::env::var_os(k).map(std::path::PathBuf::from).unwrap();
            let code = qkdpfd::ctl::verify::run(&qkdpfd::ctl::VerifyArgs {
                pubkey: Some(var("PLEDGE_PUBKEY")),
                config: None,
                path: var("PLEDGE_BUNDLE"),
                json: false,
            });
            println!("verify exit {code}");
            let p = std::env::temp_dir().join(format!("pledge-v-{}", std::process::id()));
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(p);
        }
        other => panic!("unknown case {other}"),
    }
    println!("CASE-SURVIVED");
    std::io::stdout().flush().unwrap();
    std::process::exit(0);
}

/// Entry point of the children ([`run`] names it with the case in the
/// environment). Run on its own it checks, as sys_pledge does, that an
/// unknown promise word is refused before anything is put in force.
#[test]
fn pledge_case_child() {
    match std::env::var(CASE) {
        Ok(case) => child(&case),
        Err(_) => {
            let e = qkdpfd::sandbox::pledge("stdio network").unwrap_err();
            assert!(
                e.contains("unknown promise") && e.contains("network"),
                "{e}"
            );
            // Nothing was installed: this process may still open files.
            assert!(std::fs::read("/proc/self/status").is_ok());
        }
    }
}

#[test]
fn qkdctl_before_its_fix_would_abort_on_openbsd() {
    // b37f5b8's order: socket timeouts set after pledge("stdio").
    let e = run("ctl_deadline_after_stdio", Outcome::Aborts);
    // setsockopt(2), from the SIGSYS siginfo (x86_64 number 54).
    #[cfg(target_arch = "x86_64")]
    assert!(e.contains("syscall 54 "), "{e}");
    // Today's order: poll(2) deadlines on a non-blocking socket.
    run("ctl_poll_after_stdio", Outcome::Survives);
}

/// `qkdctl policy verify` parses a bundle anyone may have made: it does so
/// pledged, and what it needs (reading the key and the bundle, checking
/// the signature) is within its promises.
#[test]
fn policy_verify_runs_pledged() {
    let Some(keys) = common::bundle::TestKeys::signify() else {
        return;
    };
    let (_t, dir) = common::bundle::sample_bundle(&keys);
    let env = [
        ("PLEDGE_PUBKEY", keys.pubkey.as_path()),
        ("PLEDGE_BUNDLE", &dir),
    ];
    let (stdout, stderr) = run_env("ctl_verify_then_write", Outcome::Aborts, &env);
    assert!(stdout.contains("OK serial=42\nverify exit 0\n"), "{stdout}");
    assert!(stderr.contains("stdio rpath"), "{stderr}");
}

#[test]
fn socket_options_follow_pledge_sockopt() {
    run("stdio_sndtimeo", Outcome::Aborts);
    run("stdio_rcvbuf", Outcome::Survives);
    run("unix_rcvtimeo", Outcome::Survives);
    run("inet_socket", Outcome::Survives);
}

#[test]
fn files_need_rpath_and_wpath() {
    run("stdio_open", Outcome::Aborts);
    run("rpath_read", Outcome::Survives);
    run("rpath_write", Outcome::Aborts);
}

#[test]
fn sockets_need_their_family_promise() {
    run("unix_inet_socket", Outcome::Aborts);
}

#[test]
fn promises_only_shrink() {
    run("only_reductions", Outcome::Survives);
}

#[test]
fn threads_under_stdio_but_fork_needs_proc() {
    let e = run("threads_not_fork", Outcome::Aborts);
    assert!(e.contains("do not allow syscall"), "{e}");
}

#[test]
fn kill_needs_proc_except_for_self() {
    run("stdio_kill_self", Outcome::Survives);
    run("stdio_kill_other", Outcome::Aborts);
}
