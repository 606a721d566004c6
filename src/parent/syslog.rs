//! syslog sink for the parent and the guardian. On OpenBSD syslog(3), which
//! uses sendsyslog(2): it never blocks (a full syslogd drops and counts).
//! On Linux glibc's syslog(3) sends on a blocking socket: a stopped or
//! stalled syslogd (or journald) whose queue is full would stop the
//! parent's loop in the middle of a lockdown, and the dead-man switch would
//! then lock every link. There lines go to `/dev/log` on a non-blocking
//! socket instead, in the format glibc writes. A line the queue has no room
//! for waits a little for it ([`WAIT`]: the queue is 10 lines by default,
//! and a burst must not lose lines to a syslogd that is only busy); once a
//! wait was in vain, later lines are dropped at once until one gets
//! through. Dropped lines are counted, and the count is said
//! (`log_dropped`) with the next line that gets through.

use crate::log::Prio;

fn facility(name: &str) -> libc::c_int {
    match name {
        "user" => libc::LOG_USER,
        "auth" => libc::LOG_AUTH,
        "authpriv" => libc::LOG_AUTHPRIV,
        "local0" => libc::LOG_LOCAL0,
        "local1" => libc::LOG_LOCAL1,
        "local2" => libc::LOG_LOCAL2,
        "local3" => libc::LOG_LOCAL3,
        "local4" => libc::LOG_LOCAL4,
        "local5" => libc::LOG_LOCAL5,
        "local6" => libc::LOG_LOCAL6,
        "local7" => libc::LOG_LOCAL7,
        _ => libc::LOG_DAEMON,
    }
}

#[cfg(not(target_os = "linux"))]
mod sink {
    use super::Prio;
    use std::ffi::CString;

    /// Opens the log with ident "qkdpfd" and the configured facility.
    pub fn open(fac: &str) {
        static IDENT: &[u8] = b"qkdpfd\0";
        unsafe {
            libc::openlog(
                IDENT.as_ptr().cast(),
                libc::LOG_PID | libc::LOG_NDELAY,
                super::facility(fac),
            )
        };
    }

    pub fn write(prio: Prio, line: &str) {
        let Ok(c) = CString::new(line.replace('\0', "\\x00")) else {
            return;
        };
        unsafe { libc::syslog(prio as libc::c_int, c"%s".as_ptr(), c.as_ptr()) };
    }
}

#[cfg(target_os = "linux")]
mod sink {
    use super::Prio;
    use crate::log::{self, Event};
    use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    /// How long one line may wait for room in syslog's queue.
    const WAIT: std::time::Duration = std::time::Duration::from_millis(100);

    pub(super) struct DevLog {
        path: PathBuf,
        fd: Option<OwnedFd>,
        facility: libc::c_int,
        /// A wait for room was in vain: no more waits until a line gets in.
        stalled: bool,
        /// Lines the socket had no room for since the last one it took.
        pub(super) dropped: u64,
    }

    static SINK: Mutex<Option<DevLog>> = Mutex::new(None);

    /// Opens `/dev/log` with the configured facility (connected now: the
    /// parent's sandbox comes later).
    pub fn open(fac: &str) {
        let dev = DevLog::open(Path::new("/dev/log"), super::facility(fac));
        *SINK.lock().unwrap_or_else(|p| p.into_inner()) = Some(dev);
    }

    pub fn write(prio: Prio, line: &str) {
        if let Some(dev) = SINK.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            dev.write(prio, line);
        }
    }

    impl DevLog {
        pub(super) fn open(path: &Path, facility: libc::c_int) -> DevLog {
            let mut dev = DevLog {
                path: path.to_path_buf(),
                fd: None,
                facility,
                stalled: false,
                dropped: 0,
            };
            dev.connect();
            dev
        }

        fn connect(&mut self) {
            let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
            let fd = socket::socket(AddressFamily::Unix, SockType::Datagram, flags, None);
            self.fd = fd.ok().filter(|fd| {
                UnixAddr::new(&self.path)
                    .and_then(|a| socket::connect(fd.as_raw_fd(), &a))
                    .is_ok()
            });
        }

        pub(super) fn write(&mut self, prio: Prio, line: &str) {
            if self.dropped > 0 {
                let said = log::event(Event::LogDropped).kv("dropped", self.dropped);
                if !self.send(Prio::Warning, said.line()) {
                    self.dropped += 1;
                    return;
                }
                self.dropped = 0;
            }
            if !self.send(prio, line) {
                self.dropped += 1;
            }
        }

        /// One datagram as glibc writes it: `<PRI>Mmm dd hh:mm:ss
        /// qkdpfd[pid]: line`. False when it could not be sent now.
        fn send(&mut self, prio: Prio, line: &str) -> bool {
            let msg = format!(
                "<{}>{} qkdpfd[{}]: {}",
                self.facility | prio as libc::c_int,
                stamp(),
                std::process::id(),
                line.replace('\0', "\\x00")
            );
            let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
            for attempt in 0..2 {
                let Some(fd) = &self.fd else {
                    self.connect();
                    if self.fd.is_none() {
                        return false;
                    }
                    continue;
                };
                match socket::send(fd.as_raw_fd(), msg.as_bytes(), flags) {
                    Ok(_) => {
                        self.stalled = false;
                        return true;
                    }
                    // The queue is full: wait a little for room, once.
                    Err(nix::errno::Errno::EAGAIN) if !self.stalled => {
                        let fd = fd.as_raw_fd();
                        if room_within(fd, WAIT) && socket::send(fd, msg.as_bytes(), flags).is_ok()
                        {
                            return true;
                        }
                        self.stalled = true;
                        return false;
                    }
                    Err(nix::errno::Errno::EAGAIN) => return false,
                    // syslogd restarted: a new socket, once.
                    Err(_) if attempt == 0 => self.connect(),
                    Err(_) => return false,
                }
            }
            false
        }
    }

    /// Whether `fd` can take a datagram within `wait`.
    fn room_within(fd: std::os::fd::RawFd, wait: std::time::Duration) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        let ms = wait.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one pollfd, owned here.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        n == 1 && p.revents & libc::POLLOUT != 0
    }

    /// Local time as syslog(3) writes it, `Dec  7 18:41:18`.
    fn stamp() -> String {
        // SAFETY: time(NULL) and localtime_r into a zeroed tm.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        unsafe {
            let t = libc::time(std::ptr::null_mut());
            libc::localtime_r(&t, &mut tm);
        }
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let month = MONTHS[tm.tm_mon.clamp(0, 11) as usize];
        format!(
            "{month} {:>2} {:02}:{:02}:{:02}",
            tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec
        )
    }
}

pub use sink::{open, write};

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::sink::DevLog;
    use crate::log::Prio;
    use std::os::unix::net::UnixDatagram;

    /// A stand-in syslogd's socket and a sink connected to it (the
    /// directory holds the socket).
    fn syslogd() -> (tempfile::TempDir, UnixDatagram, DevLog) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let server = UnixDatagram::bind(&path).unwrap();
        let dev = DevLog::open(&path, libc::LOG_DAEMON);
        (dir, server, dev)
    }

    /// A syslogd that stopped reading: every write returns at once, the
    /// lines it had no room for are counted, and said with the next line
    /// it takes.
    #[test]
    fn a_full_syslog_queue_drops_lines_and_says_so() {
        let (_dir, server, mut dev) = syslogd();
        let t0 = std::time::Instant::now();
        for i in 0..5000 {
            dev.write(Prio::Info, &format!("event=x n={i}"));
        }
        // One wait in vain (100 ms), then every line dropped at once.
        assert!(t0.elapsed() < std::time::Duration::from_secs(2));
        let dropped = dev.dropped;
        assert!(dropped > 0, "the queue never filled");
        // Reads everything queued; the next line carries the count.
        server.set_nonblocking(true).unwrap();
        let mut buf = vec![0u8; 4096];
        let mut first = None;
        let mut n = 0;
        while let Ok(len) = server.recv(&mut buf) {
            let line = String::from_utf8_lossy(&buf[..len]).to_string();
            first.get_or_insert(line);
            n += 1;
        }
        assert_eq!(n as u64 + dropped, 5000);
        let first = first.unwrap();
        assert!(first.starts_with("<30>"), "{first}");
        assert!(
            first.contains(&format!(" qkdpfd[{}]: event=x n=0", std::process::id())),
            "{first}"
        );
        dev.write(Prio::Alert, "event=y");
        let len = server.recv(&mut buf).unwrap();
        let said = String::from_utf8_lossy(&buf[..len]).to_string();
        assert!(said.starts_with("<28>"), "{said}");
        assert!(said.contains(": event=log_dropped "), "{said}");
        assert!(said.ends_with(&format!(" dropped={dropped}")), "{said}");
        let len = server.recv(&mut buf).unwrap();
        let next = String::from_utf8_lossy(&buf[..len]).to_string();
        assert!(
            next.starts_with("<25>") && next.ends_with(": event=y"),
            "{next}"
        );
        assert_eq!(dev.dropped, 0);
    }

    /// A burst longer than syslog's queue (10 lines by default), read by a
    /// syslogd that is only busy: no line is lost.
    #[test]
    fn a_burst_to_a_busy_syslog_loses_nothing() {
        let (_dir, server, mut dev) = syslogd();
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            server
                .set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .unwrap();
            while server.recv(&mut buf).is_ok() {
                n += 1;
                std::thread::sleep(std::time::Duration::from_micros(300));
            }
            n
        });
        for i in 0..300 {
            dev.write(Prio::Warning, &format!("event=x n={i}"));
        }
        assert_eq!(dev.dropped, 0);
        assert_eq!(reader.join().unwrap(), 300);
    }
}
