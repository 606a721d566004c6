//! Control-client connections, from the engine to the parent (DESIGN §2:
//! "a ctl client's credentials come from the kernel to the parent, never
//! as a number the engine supplies").
//!
//! For every request only the parent runs (lockdown, unlock, reload,
//! policy load, log level) the engine passes a duplicate of the root
//! client's connection to the parent over a SOCK_SEQPACKET pair (fd 7 in
//! the engine): one message per request, 8 bytes of request id with the
//! descriptor as SCM_RIGHTS. The parent keeps the descriptor only if it is
//! a connection accepted on the control socket (the engine's channels to
//! the parent have the parent, root, at their other end), asks the kernel
//! who is at the other end (SO_PEERCRED on Linux, getpeereid(2) on
//! OpenBSD), and keeps it with that uid until the engine's `CtlRequest` for
//! the id arrives. A request whose id came with no such descriptor, or
//! whose kernel uid is not root, is not run.
//!
//! The rule: **the parent reads a request it runs from the client's own
//! connection.** The engine only peeks at the line to route it and never
//! consumes it; the `CtlRequest` names the command, for the log and a
//! cross-check, and carries nothing the parent runs. A duplicate the
//! engine kept of an earlier root connection (a finished `qkdctl status`,
//! a live `qkdctl monitor`) carries no new request — the parent reads an
//! end of file or nothing until its deadline, and refuses — and the
//! engine cannot write one into it: what it writes goes to the client.
//! What is left: an engine could consume a prefix of a root client's line
//! and leave the parent the rest, but a suffix of a valid request line is
//! practically never itself a valid request.

use std::collections::BTreeMap;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::mpsc;

use super::ParentCommand;
use crate::proto::ctl::{MAX_REQUEST, Request};

/// How many received connections wait for their request at most; older
/// ones are forgotten (closed; their request is then refused).
pub const MAX_PENDING: usize = 64;
/// How many request lines the parent reads at once. Only a bundle takes
/// long, and the parent activates one bundle at a time: more than a few
/// are an engine holding silent connections, refused at once rather than
/// held open.
pub const MAX_READING: usize = 8;
/// How long a passed client may take to deliver its request line: as long
/// as the engine gives a root client (a bundle may be megabytes).
pub const READ_DEADLINE: Duration = Duration::from_secs(30);

/// Engine side: passes the client connection `client` for request `id`.
/// Never blocks: a full channel fails the request.
pub fn send(chan: BorrowedFd<'_>, id: u64, client: BorrowedFd<'_>) -> Result<(), String> {
    let bytes = id.to_le_bytes();
    let iov = [IoSlice::new(&bytes)];
    let fds = [client.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(chan.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_DONTWAIT, None)
        .map(drop)
        .map_err(|e| format!("passing the client to the parent: {e}"))
}

/// A root client's connection as the parent holds it: the kernel's word
/// for who is at the other end, and the connection its request is on.
#[derive(Debug)]
pub struct Client {
    pub uid: u32,
    pub conn: OwnedFd,
}

/// Parent side: what arrived so far, request id -> the client (None: no
/// descriptor, not a control connection, or no credentials).
#[derive(Default)]
pub struct Creds {
    pending: BTreeMap<u64, Option<Client>>,
}

/// Closes a descriptor the engine passed without waiting: a TCP socket
/// it set SO_LINGER on, to a host that stops ACKing, would otherwise hold
/// close(2), and the parent's loop, for the linger time.
fn close_at_once(fd: OwnedFd) {
    let off = libc::linger {
        l_onoff: 0,
        l_linger: 0,
    };
    // SAFETY: a valid descriptor and a linger of the size passed; a
    // descriptor that is not a socket just fails (ENOTSOCK).
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const off).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(fd);
}

impl Creds {
    /// Reads every message waiting on `chan` (non-blocking) and keeps each
    /// descriptor that is a connection accepted on the control socket
    /// `control`, with the uid behind it; any other is closed at once.
    ///
    /// At most [`MAX_PENDING`] messages a call: an engine that refills the
    /// socket as fast as it is read (a thread of its own) does not keep
    /// the parent's loop here; a later call reads on.
    pub fn drain(&mut self, chan: BorrowedFd<'_>, control: &Path) {
        for _ in 0..MAX_PENDING {
            let mut bytes = [0u8; 8];
            let mut space = nix::cmsg_space!([RawFd; 4]);
            let (n, flags, mut fds) = {
                let mut iov = [IoSliceMut::new(&mut bytes)];
                let msg = match recvmsg::<()>(
                    chan.as_raw_fd(),
                    &mut iov,
                    Some(&mut space),
                    MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
                ) {
                    Ok(m) => m,
                    Err(_) => return,
                };
                let mut fds: Vec<OwnedFd> = Vec::new();
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmRights(rs) = c {
                            // SAFETY: descriptors just received are ours to own.
                            fds.extend(rs.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }));
                        }
                    }
                }
                (msg.bytes, msg.flags, fds)
            };
            if n == 0 {
                return;
            }
            let truncated = flags.contains(MsgFlags::MSG_CTRUNC);
            let bytes_ok = n == 8;
            let id = u64::from_le_bytes(bytes);
            let client = match (bytes_ok, truncated, fds.len()) {
                (true, false, 1) => fds.pop().and_then(|conn| {
                    if !is_control_connection(conn.as_fd(), control) {
                        close_at_once(conn);
                        return None;
                    }
                    peer_uid(conn.as_fd()).map(|uid| Client { uid, conn })
                }),
                _ => None,
            };
            fds.into_iter().for_each(close_at_once);
            if bytes_ok {
                self.pending.insert(id, client);
                while self.pending.len() > MAX_PENDING {
                    self.pending.pop_first();
                }
            }
        }
    }

    /// The client behind request `id`, once; None if none came.
    pub fn take(&mut self, id: u64) -> Option<Client> {
        self.pending.remove(&id).flatten()
    }
}

/// True for a connection accepted on the control socket bound at
/// `control`: a connected stream whose own address is that path. Not a
/// listening socket (Linux gives the listener's credentials for it), not
/// the engine's channels to the parent (unnamed, with the parent at the
/// other end), not a socket of the engine's own binding elsewhere.
pub fn is_control_connection(fd: BorrowedFd<'_>, control: &Path) -> bool {
    use nix::sys::socket::{SockType, UnixAddr, getsockname, getsockopt, sockopt};
    let stream = getsockopt(&fd, sockopt::SockType).is_ok_and(|t| t == SockType::Stream);
    let listening = getsockopt(&fd, sockopt::AcceptConn).unwrap_or(true);
    let ours = getsockname::<UnixAddr>(fd.as_raw_fd())
        .ok()
        .is_some_and(|a| a.path() == Some(control));
    stream && !listening && ours
}

/// Why the parent runs nothing from a passed connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Unread {
    /// The connection ended with no request on it (or in the middle of
    /// one): a duplicate kept of a finished client.
    Ended,
    /// No whole line by the deadline: a live client with nothing new to ask.
    TimedOut,
    /// A whole line, but the client had hung up: qkdctl keeps its
    /// connection until the answer comes, so a request found on a closed
    /// one was held back (an engine can keep a duplicate of a finished
    /// client's connection and pass it on days later, under another
    /// command's name), and is not run whatever it asks.
    HungUp,
    /// Over [`MAX_REQUEST`] bytes with no end of line.
    TooLong,
    /// Reading failed (the descriptor is no connection, say).
    Failed(String),
    /// A line, but no request.
    Bad(String),
}

impl std::fmt::Display for Unread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unread::Ended => f.write_str("no request on the client's connection"),
            Unread::TimedOut => f.write_str("no request from the client in time"),
            Unread::HungUp => f.write_str("the client hung up before its request was read"),
            Unread::TooLong => f.write_str("request too long"),
            Unread::Failed(e) => write!(f, "reading the client's request: {e}"),
            Unread::Bad(e) => write!(f, "bad request: {e}"),
        }
    }
}

/// Reads the one request line a client left on `conn`: at most `limit`
/// bytes, within `deadline`.
pub async fn read_request(
    conn: OwnedFd,
    limit: usize,
    deadline: Duration,
) -> Result<Request, Unread> {
    let failed = |e: std::io::Error| Unread::Failed(e.to_string());
    let conn = std::os::unix::net::UnixStream::from(conn);
    conn.set_nonblocking(true).map_err(failed)?;
    let conn = tokio::net::UnixStream::from_std(conn).map_err(failed)?;
    let mut line = Vec::new();
    let mut conn = BufReader::new(conn.take(limit as u64 + 1));
    let read = conn.read_until(b'\n', &mut line);
    let n = tokio::time::timeout(deadline, read)
        .await
        .map_err(|_| Unread::TimedOut)?
        .map_err(failed)?;
    if n == 0 {
        return Err(Unread::Ended);
    }
    if line.len() > limit {
        return Err(Unread::TooLong);
    }
    if !line.ends_with(b"\n") {
        return Err(Unread::Ended);
    }
    let request = crate::proto::ctl::parse_request(&line).map_err(Unread::Bad)?;
    // Nothing more to read and the end of the stream: the client is gone
    // (a live one has nothing more to say, so the peek would block).
    let fd = conn.get_ref().get_ref().as_raw_fd();
    let peek = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
    if conn.buffer().is_empty() && nix::sys::socket::recv(fd, &mut [0u8; 1], peek) == Ok(0) {
        return Err(Unread::HungUp);
    }
    Ok(request)
}

/// A request line the parent read (or could not read) from a client.
#[derive(Debug)]
pub struct ClientLine {
    pub id: u64,
    /// The kernel's uid for the client.
    pub uid: u32,
    /// What the engine said the client asked.
    pub command: ParentCommand,
    pub request: Result<Request, Unread>,
}

/// Parent side: the request lines being read, each in a task of its own so
/// that the main loop never waits for a client.
pub struct Readers {
    tx: mpsc::Sender<ClientLine>,
    rx: mpsc::Receiver<ClientLine>,
    under_way: usize,
}

impl Default for Readers {
    fn default() -> Readers {
        // Room for every read under way: a finished read never waits.
        let (tx, rx) = mpsc::channel(MAX_READING);
        Readers {
            tx,
            rx,
            under_way: 0,
        }
    }
}

impl Readers {
    /// Starts reading request `id` from `client`; false (and the
    /// connection closed) when [`MAX_READING`] reads are under way.
    pub fn start(&mut self, id: u64, command: ParentCommand, client: Client) -> bool {
        if self.under_way >= MAX_READING {
            return false;
        }
        self.under_way += 1;
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let request = read_request(client.conn, MAX_REQUEST, READ_DEADLINE).await;
            let line = ClientLine {
                id,
                uid: client.uid,
                command,
                request,
            };
            let _ = tx.send(line).await;
        });
        true
    }

    /// The next finished read (cancel-safe, for `select!`).
    pub async fn next(&mut self) -> ClientLine {
        match self.rx.recv().await {
            Some(line) => {
                self.under_way -= 1;
                line
            }
            // Never: `self` holds a sender.
            None => std::future::pending().await,
        }
    }

    pub fn under_way(&self) -> usize {
        self.under_way
    }
}

/// Who is at the other end of a Unix socket, as the kernel says.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn peer_uid(fd: BorrowedFd<'_>) -> Option<u32> {
    nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::PeerCredentials)
        .ok()
        .map(|c| c.uid())
}

/// Who is at the other end of a Unix socket, as the kernel says.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub fn peer_uid(fd: BorrowedFd<'_>) -> Option<u32> {
    nix::unistd::getpeereid(fd).ok().map(|(u, _)| u.as_raw())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    use std::io::Write;
    use std::os::unix::net::{UnixListener, UnixStream};

    /// The engine's and the parent's ends, as privsep makes them.
    fn pair() -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap()
    }

    /// A control socket, as the parent binds it.
    struct Control {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
        listener: UnixListener,
    }

    impl Control {
        fn new() -> Control {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("qkdpfd.sock");
            let listener = UnixListener::bind(&path).unwrap();
            Control {
                _dir: dir,
                path,
                listener,
            }
        }

        /// (the client's end, the engine's accepted end)
        fn connect(&self) -> (UnixStream, UnixStream) {
            let c = UnixStream::connect(&self.path).unwrap();
            (c, self.listener.accept().unwrap().0)
        }
    }

    #[test]
    fn a_passed_connection_gives_the_kernels_uid_once() {
        let ctl = Control::new();
        let (engine, parent) = pair();
        let (_client, accepted) = ctl.connect();
        send(engine.as_fd(), 42, accepted.as_fd()).unwrap();
        // A message with no descriptor (a lying engine) gives no uid.
        sendmsg::<()>(
            engine.as_raw_fd(),
            &[IoSlice::new(&7u64.to_le_bytes())],
            &[],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let mut c = Creds::default();
        c.drain(parent.as_fd(), &ctl.path);
        let got = c.take(42).unwrap();
        assert_eq!(got.uid, nix::unistd::geteuid().as_raw());
        assert!(c.take(42).is_none(), "used once");
        assert!(c.take(7).is_none());
        assert!(c.take(8).is_none(), "never sent");
    }

    #[test]
    fn only_a_connection_accepted_on_the_control_socket_is_kept() {
        let ctl = Control::new();
        let other = Control::new();
        let (engine, parent) = pair();
        // The engine's own channels have the parent (root) at their other
        // end; a socketpair, a listener, another socket's connection, a
        // client's end: none is a control client.
        let (a, _b) = UnixStream::pair().unwrap();
        let (_c, elsewhere) = other.connect();
        let (client_end, _accepted) = ctl.connect();
        send(engine.as_fd(), 1, parent.as_fd()).unwrap();
        send(engine.as_fd(), 2, a.as_fd()).unwrap();
        send(engine.as_fd(), 3, ctl.listener.as_fd()).unwrap();
        send(engine.as_fd(), 4, elsewhere.as_fd()).unwrap();
        send(engine.as_fd(), 5, client_end.as_fd()).unwrap();
        let mut c = Creds::default();
        c.drain(parent.as_fd(), &ctl.path);
        for id in 1..=5 {
            assert!(c.take(id).is_none(), "{id}");
        }
    }

    #[test]
    fn pending_is_bounded() {
        let ctl = Control::new();
        let (engine, parent) = pair();
        let (_client, accepted) = ctl.connect();
        let mut c = Creds::default();
        for id in 0..(MAX_PENDING as u64 + 10) {
            send(engine.as_fd(), id, accepted.as_fd()).unwrap();
            c.drain(parent.as_fd(), &ctl.path);
        }
        assert_eq!(c.pending.len(), MAX_PENDING);
        assert!(c.take(0).is_none(), "the oldest were forgotten");
        assert!(c.take(MAX_PENDING as u64 + 9).is_some());
    }

    /// One call reads at most MAX_PENDING messages; the next reads on.
    #[test]
    fn a_drain_reads_a_bounded_number_of_messages() {
        let ctl = Control::new();
        let (engine, parent) = pair();
        let (_client, accepted) = ctl.connect();
        let total = MAX_PENDING as u64 + 20;
        for id in 0..total {
            send(engine.as_fd(), id, accepted.as_fd()).unwrap();
        }
        let mut c = Creds::default();
        c.drain(parent.as_fd(), &ctl.path);
        assert!(c.take(MAX_PENDING as u64).is_none(), "not read yet");
        c.drain(parent.as_fd(), &ctl.path);
        assert!(c.take(total - 1).is_some(), "read by the next call");
    }

    /// A socket the engine set to linger is closed without lingering: the
    /// engine's own copy shows the setting cleared.
    #[test]
    fn a_passed_socket_is_closed_without_lingering() {
        let ctl = Control::new();
        let (engine, parent) = pair();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let linger = |fd: BorrowedFd<'_>| {
            nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::Linger).unwrap()
        };
        let on = libc::linger {
            l_onoff: 1,
            l_linger: 30,
        };
        nix::sys::socket::setsockopt(&tcp, nix::sys::socket::sockopt::Linger, &on).unwrap();
        assert_eq!(linger(tcp.as_fd()).l_onoff, 1);
        send(engine.as_fd(), 9, tcp.as_fd()).unwrap();
        let mut c = Creds::default();
        c.drain(parent.as_fd(), &ctl.path);
        assert!(c.take(9).is_none());
        assert_eq!(linger(tcp.as_fd()).l_onoff, 0);
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// What the parent reads from the engine's end after the client wrote
    /// `sent` (and closed, when `close`).
    fn read_after(sent: &[u8], close: bool, limit: usize) -> Result<Request, Unread> {
        let (mut client, server) = UnixStream::pair().unwrap();
        client.write_all(sent).unwrap();
        if close {
            drop(client);
            return rt().block_on(read_request(server.into(), limit, Duration::from_secs(5)));
        }
        let r = rt().block_on(read_request(
            server.into(),
            limit,
            Duration::from_millis(200),
        ));
        drop(client);
        r
    }

    #[test]
    fn the_parent_reads_the_clients_line() {
        let line = b"{\"unlock\":{\"target\":\"all\",\"force\":true}}\n";
        let want = Request::Unlock {
            target: crate::proto::ctl::Target::All,
            force: true,
        };
        // A live client: the line is enough, the end is not awaited.
        assert_eq!(read_after(line, false, MAX_REQUEST), Ok(want));
        // A client that hung up waits for no answer: its line, held back
        // by an engine and passed on later, runs nothing.
        assert_eq!(read_after(line, true, MAX_REQUEST), Err(Unread::HungUp));
    }

    #[test]
    fn a_connection_with_no_new_request_runs_nothing() {
        // A finished client whose line the engine took: the end, at once.
        assert_eq!(read_after(b"", true, MAX_REQUEST), Err(Unread::Ended));
        // A live one (monitor) that says nothing more: the deadline.
        assert_eq!(read_after(b"", false, MAX_REQUEST), Err(Unread::TimedOut));
        // Half a line, then the end; half a line and silence.
        assert_eq!(read_after(b"\"rel", true, MAX_REQUEST), Err(Unread::Ended));
        assert_eq!(
            read_after(b"\"rel", false, MAX_REQUEST),
            Err(Unread::TimedOut)
        );
    }

    #[test]
    fn a_long_or_bad_line_runs_nothing() {
        assert_eq!(read_after(b"\"reload\"\n", true, 4), Err(Unread::TooLong));
        assert_eq!(read_after(&[b'x'; 100], false, 10), Err(Unread::TooLong));
        assert!(matches!(
            read_after(b"reload\n", true, MAX_REQUEST),
            Err(Unread::Bad(_))
        ));
        // A suffix of a valid line is no request.
        assert!(matches!(
            read_after(b"\"target\":\"all\",\"force\":true}}\n", true, MAX_REQUEST),
            Err(Unread::Bad(_))
        ));
        // Not a connection at all.
        let (_w, r) = nix::unistd::pipe().unwrap();
        let got = rt().block_on(read_request(r, MAX_REQUEST, Duration::from_millis(200)));
        assert!(got.is_err(), "{got:?}");
    }

    #[test]
    fn reads_under_way_are_bounded_and_each_is_answered() {
        let ctl = Control::new();
        rt().block_on(async {
            let mut readers = Readers::default();
            let mut clients = Vec::new();
            for id in 0..MAX_READING as u64 {
                let (c, accepted) = ctl.connect();
                clients.push(c);
                let client = Client {
                    uid: 0,
                    conn: accepted.into(),
                };
                assert!(readers.start(id, ParentCommand::Reload, client));
            }
            let (_c, accepted) = ctl.connect();
            let extra = Client {
                uid: 0,
                conn: accepted.into(),
            };
            assert!(!readers.start(99, ParentCommand::Reload, extra), "bounded");
            clients[3].write_all(b"\"reload\"\n").unwrap();
            let line = readers.next().await;
            assert_eq!((line.id, line.request), (3, Ok(Request::Reload)));
            assert_eq!(readers.under_way(), MAX_READING - 1);
            clients.truncate(2);
            for _ in 2..MAX_READING - 1 {
                let line = readers.next().await;
                assert!(line.id >= 2, "{line:?}");
                assert_eq!(line.request, Err(Unread::Ended));
            }
            assert_eq!(readers.under_way(), 2);
        });
    }
}
