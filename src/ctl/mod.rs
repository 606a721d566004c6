//! qkdctl, the control tool (DESIGN §7). Runs as the invoking user, apart
//! from the daemon: it parses the command line, reads any file the command
//! names (`policy load`) itself, connects to the engine's control socket,
//! pledges down to `stdio` (OpenBSD), sends one JSON [`Request`] line and
//! prints the [`Reply`] (or, for `monitor`, the stream of events).
//!
//! Exit status: 0 success, 1 the daemon or a check refused (or could not be
//! reached), 2 usage error. `policy verify` never talks to the daemon: it
//! runs the [`VerifyHook`] the binary passes in, which pledges itself
//! (`verify.rs`).

pub mod output;
pub mod pack;
pub mod parser;
pub mod verify;

use crate::proto::ctl::{Reply, Request};
use output::Output;
use pack::io_msg;
use parser::{Command, Invocation};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub const CTLSOCKET: &str = "/var/run/qkdpfd.sock";
/// How long a request (not `monitor`) waits for its reply; `policy load`
/// runs every ruleset through the backend's check, so this is generous.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest reply line read (a `show links` of many links fits easily).
const MAX_REPLY: usize = 16 << 20;

pub const EXIT_OK: i32 = 0;
pub const EXIT_REFUSED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;

/// What `policy verify` is given.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifyArgs {
    /// `-p pubkey`; otherwise the config's `[policy] pubkeys`.
    pub pubkey: Option<PathBuf>,
    /// qkdctl's `-f config`, if given.
    pub config: Option<PathBuf>,
    /// The bundle directory or archive.
    pub path: PathBuf,
    /// `-j`.
    pub json: bool,
}

/// Runs `policy verify` and returns the exit status (0 ok, 1 refused).
pub type VerifyHook = fn(&VerifyArgs) -> i32;

/// The whole of qkdctl: parses `std::env::args`, runs, exits.
pub fn main_with(verify: VerifyHook) -> ! {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(run(&args, verify))
}

/// Runs qkdctl with `args` (without argv\[0\]); returns the exit status.
pub fn run(args: &[String], verify: VerifyHook) -> i32 {
    let inv = match parser::parse_args(args) {
        Ok(inv) => inv,
        Err(e) => {
            eprintln!("qkdctl: {e}\n{}", parser::USAGE);
            return EXIT_USAGE;
        }
    };
    if let Command::PolicyVerify { pubkey, path } = &inv.command {
        return verify(&VerifyArgs {
            pubkey: pubkey.clone(),
            config: inv.config.clone(),
            path: path.clone(),
            json: inv.json,
        });
    }
    match talk(&inv) {
        Ok(()) => EXIT_OK,
        Err(Fail::Quiet) => EXIT_REFUSED,
        Err(Fail::Msg(m)) => {
            eprintln!("qkdctl: {}", output::printable(&m));
            EXIT_REFUSED
        }
    }
}

/// Why qkdctl exits 1.
enum Fail {
    /// Printed as `qkdctl: <message>`.
    Msg(String),
    /// Already reported, or nobody to tell (stdout closed under `monitor | head`).
    Quiet,
}

impl From<String> for Fail {
    fn from(m: String) -> Fail {
        Fail::Msg(m)
    }
}

/// Everything that needs the daemon: read files, connect, pledge, ask, show.
fn talk(inv: &Invocation) -> Result<(), Fail> {
    pledge("stdio rpath unix")?;
    let socket = socket_path(inv)?;
    let request = match &inv.command {
        Command::Send(r) => r.clone(),
        Command::PolicyLoad { path } => pack::policy_load_request(path)?,
        Command::PolicyVerify { .. } => unreachable!("handled before connecting"),
    };
    let mut stream = UnixStream::connect(&socket)
        .map_err(|e| format!("connect {}: {}", socket.display(), io_msg(&e)))?;
    // Deadlines are kept with poll(2) on a non-blocking socket, not with
    // SO_SNDTIMEO/SO_RCVTIMEO: after pledge("stdio") OpenBSD kills a
    // process that sets those (kern_pledge.c pledge_sockopt).
    stream
        .set_nonblocking(true)
        .map_err(|e| format!("connect {}: {}", socket.display(), io_msg(&e)))?;
    // Every file is read and the socket is open: nothing more to reach.
    pledge("stdio")?;
    let out = output::for_mode(inv.json);
    let mut line = serde_json::to_vec(&request).map_err(|e| format!("encode request: {e}"))?;
    line.push(b'\n');
    let deadline = Instant::now() + REPLY_TIMEOUT;
    let sent = send(&mut stream, &line, deadline);
    let mut reader = LineReader::new(stream);
    if let Err(e) = sent {
        // The daemon may have answered and closed before reading the whole
        // request (a denial): its reply says more than EPIPE does.
        return match reader.next_line(Some(deadline)) {
            Ok(Some(l)) => show(&request, decode(&l)?, out.as_ref()),
            _ => Err(e.into()),
        };
    }
    if request == Request::Monitor {
        return monitor(&mut reader, out.as_ref());
    }
    let reply = match reader.next_line(Some(deadline))? {
        Some(l) => decode(&l)?,
        None => {
            return Err("daemon closed the connection without a reply"
                .to_string()
                .into());
        }
    };
    show(&request, reply, out.as_ref())
}

/// `-s`, else the config's `[daemon] socket` when `-f` is given, else the default.
fn socket_path(inv: &Invocation) -> Result<PathBuf, String> {
    if let Some(s) = &inv.socket {
        return Ok(s.clone());
    }
    match &inv.config {
        Some(conf) => crate::conf::load(conf)
            .map(|c| c.daemon.socket)
            .map_err(|e| e.to_string().trim_end().to_string()),
        None => Ok(PathBuf::from(CTLSOCKET)),
    }
}

/// Writes the request line, waiting with poll(2) so the deadline holds
/// for big bundles.
fn send(stream: &mut UnixStream, mut line: &[u8], deadline: Instant) -> Result<(), String> {
    while !line.is_empty() {
        wait_ready(stream, libc::POLLOUT, Some(deadline))?;
        match stream.write(line) {
            Ok(n) => line = &line[n..],
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(format!("send request: {}", io_msg(&e))),
        }
    }
    Ok(())
}

/// Waits until `stream` is ready for `events` (POLLIN, POLLOUT) or the
/// deadline passes; None waits without end (`monitor`). poll(2) is in
/// every pledge.
fn wait_ready(
    stream: &UnixStream,
    events: libc::c_short,
    deadline: Option<Instant>,
) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    loop {
        let ms = match deadline {
            None => -1,
            Some(d) => match d.saturating_duration_since(Instant::now()) {
                left if left.is_zero() => return Err(timeout_msg()),
                left => i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX),
            },
        };
        let mut pfd = libc::pollfd {
            fd: stream.as_raw_fd(),
            events,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        match n {
            n if n > 0 => return Ok(()),
            0 => return Err(timeout_msg()),
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => continue,
            _ => return Err(format!("poll: {}", io_msg(&io::Error::last_os_error()))),
        }
    }
}

fn timeout_msg() -> String {
    format!(
        "no reply from the daemon within {}",
        crate::duration::format(REPLY_TIMEOUT)
    )
}

fn decode(line: &[u8]) -> Result<Reply, String> {
    serde_json::from_slice(line).map_err(|e| format!("bad reply from daemon: {e}"))
}

/// Prints one reply, checking it is the kind the request asks for.
fn show(request: &Request, reply: Reply, out: &dyn Output) -> Result<(), Fail> {
    let mut w = io::stdout().lock();
    let written = match (request, reply) {
        (_, Reply::Error { message, .. }) => return Err(Fail::Msg(message)),
        (Request::Status, Reply::Status(s)) => out.status(&mut w, &s),
        (Request::ShowLinks, Reply::Links(l)) => out.links(&mut w, &l),
        (Request::ShowLink { link }, Reply::Links(l)) => match l.as_slice() {
            [one] if &one.name == link => out.link(&mut w, one),
            _ => return Err(format!("bad reply from daemon: expected link {link} alone").into()),
        },
        (Request::ShowPolicy, Reply::Policy(p)) => out.policy(&mut w, p.as_ref()),
        (r, Reply::Ok { message }) if !returns_data(r) => out.message(&mut w, &message),
        (r, _) => {
            return Err(format!("unexpected reply from daemon to {}", r.name()).into());
        }
    };
    written.and_then(|()| w.flush()).map_err(stdout_fail)
}

/// Requests answered with data rather than `Reply::Ok`.
fn returns_data(r: &Request) -> bool {
    matches!(
        r,
        Request::Status
            | Request::ShowLinks
            | Request::ShowLink { .. }
            | Request::ShowPolicy
            | Request::Monitor
    )
}

/// `monitor`: prints events as they come until the daemon or stdout closes.
fn monitor(reader: &mut LineReader, out: &dyn Output) -> Result<(), Fail> {
    loop {
        let Some(line) = reader.next_line(None)? else {
            return Err("daemon closed the connection".to_string().into());
        };
        let mut w = io::stdout().lock();
        match decode(&line)? {
            Reply::Event(ev) => out
                .event(&mut w, &ev)
                .and_then(|()| w.flush())
                .map_err(stdout_fail)?,
            Reply::Error { message, .. } => return Err(Fail::Msg(message)),
            _ => return Err("unexpected reply from daemon to monitor".to_string().into()),
        }
    }
}

fn stdout_fail(e: io::Error) -> Fail {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Fail::Quiet
    } else {
        Fail::Msg(format!("stdout: {}", io_msg(&e)))
    }
}

/// Reads newline-terminated lines under an optional overall deadline (a
/// per-read timeout alone would let a trickling peer stretch the wait).
struct LineReader {
    stream: UnixStream,
    buf: Vec<u8>,
    /// Bytes of `buf` already searched for a newline.
    scanned: usize,
}

impl LineReader {
    fn new(stream: UnixStream) -> LineReader {
        LineReader {
            stream,
            buf: Vec::new(),
            scanned: 0,
        }
    }

    /// The next line without its newline; `None` at a clean end of stream.
    fn next_line(&mut self, deadline: Option<Instant>) -> Result<Option<Vec<u8>>, String> {
        loop {
            if let Some(pos) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                let rest = self.buf.split_off(self.scanned + pos + 1);
                let mut line = std::mem::replace(&mut self.buf, rest);
                line.pop();
                self.scanned = 0;
                return Ok(Some(line));
            }
            self.scanned = self.buf.len();
            if self.buf.len() > MAX_REPLY {
                return Err(format!("reply from daemon longer than {MAX_REPLY} bytes"));
            }
            if !self.fill(deadline)? {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err("daemon closed the connection in the middle of a reply".into());
            }
        }
    }

    /// Reads more bytes; false at end of stream.
    fn fill(&mut self, deadline: Option<Instant>) -> Result<bool, String> {
        let mut chunk = [0u8; 64 << 10];
        loop {
            wait_ready(&self.stream, libc::POLLIN, deadline)?;
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(true);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(format!("read reply: {}", io_msg(&e))),
            }
        }
    }
}

fn pledge(promises: &str) -> Result<(), String> {
    crate::sandbox::pledge(promises)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_deadline_is_overall() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut r = LineReader::new(a);
        b.write_all(b"{\"ok\":").unwrap();
        let start = Instant::now();
        let e = r
            .next_line(Some(Instant::now() + Duration::from_millis(200)))
            .unwrap_err();
        assert!(e.starts_with("no reply from the daemon within"), "{e}");
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn lines_split_and_end() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut r = LineReader::new(a);
        b.write_all(b"one\ntwo\nthr").unwrap();
        assert_eq!(r.next_line(None).unwrap().unwrap(), b"one");
        assert_eq!(r.next_line(None).unwrap().unwrap(), b"two");
        b.write_all(b"ee\n").unwrap();
        assert_eq!(r.next_line(None).unwrap().unwrap(), b"three");
        drop(b);
        assert_eq!(r.next_line(None).unwrap(), None);
    }

    #[test]
    fn cut_reply_is_an_error() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut r = LineReader::new(a);
        b.write_all(b"\"status").unwrap();
        drop(b);
        let e = r.next_line(None).unwrap_err();
        assert!(e.contains("middle of a reply"), "{e}");
    }
}
