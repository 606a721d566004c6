//! The control socket server (DESIGN §7), in the engine. The listening
//! socket was created by the parent (fd 4). Each connection's peer
//! credentials decide what it may do: root everything, `socket_group`
//! members the read-only allow-list, everyone else nothing. Refusals are
//! logged (`ctl_denied`, rate-limited per uid).
//!
//! The socket is a door a read-only member can lean on, so everything is
//! bounded and decided before any parsing: the credentials come with the
//! connection and set how much may be read (a read-only request is a short
//! line; only root sends bundles) and for how long; root has connection
//! slots of its own that no member can fill; each other uid has a few;
//! `monitor` streams are capped and a reader that stops reading is dropped.
//!
//! A root client's request is peeked at, not read: a request the parent
//! runs stays on the connection and the parent reads it from there
//! ([`crate::imsg::creds`]); only what the engine runs itself is consumed.

use crate::imsg::ParentCommand;
use crate::log::{self, Event};
use crate::proto::ctl::{ErrorCode, POLICY_LOAD_PREFIX, Reply, Request};
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Interest};
use tokio::net::unix::OwnedReadHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, oneshot};

/// A request handed to the engine's main loop, with the channel for its answer.
pub struct CtlCall {
    pub uid: u32,
    pub asked: Asked,
    pub reply: oneshot::Sender<Reply>,
    /// The client's connection (a duplicate) with a request the parent
    /// runs still unread on it: the parent asks the kernel who the client
    /// is and reads the request itself.
    pub client: Option<std::os::fd::OwnedFd>,
}

/// What a client asked.
#[derive(Debug, PartialEq)]
pub enum Asked {
    /// A whole line: taken off the connection when the engine runs it,
    /// left on it when the parent does.
    Line(Request),
    /// A `policy-load` longer than the engine looks: left whole on the
    /// connection for the parent.
    PolicyLoad,
}

impl Asked {
    fn name(&self) -> &'static str {
        match self {
            Asked::Line(r) => r.name(),
            Asked::PolicyLoad => ParentCommand::PolicyLoad.name(),
        }
    }

    fn read_only(&self) -> bool {
        matches!(self, Asked::Line(r) if r.read_only())
    }

    /// The parent's command, when the parent runs it.
    pub fn for_parent(&self) -> Option<ParentCommand> {
        match self {
            Asked::Line(r) => ParentCommand::of(r),
            Asked::PolicyLoad => Some(ParentCommand::PolicyLoad),
        }
    }
}

/// Who may use the socket read-only.
#[derive(Clone, Debug, Default)]
pub struct Access {
    pub readonly_uids: Vec<u32>,
    pub readonly_gid: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    Root,
    ReadOnly,
    None,
}

impl Access {
    fn level(&self, uid: u32, gid: u32) -> Level {
        if uid == 0 {
            Level::Root
        } else if self.readonly_uids.contains(&uid) || self.readonly_gid == Some(gid) {
            Level::ReadOnly
        } else {
            Level::None
        }
    }
}

/// Logs `ctl_denied` under the flood rule of DESIGN §8 ([`log::PerMinute`]:
/// the first per uid per minute, then one line with `suppressed=N`).
fn denied(seen: &Shared<log::PerMinute<u32, String>>, uid: u32, command: &str) {
    let noted = || Some(command.to_string());
    let Some(held) = lock(seen).admit_noting(uid, Instant::now(), noted) else {
        return;
    };
    log::event(Event::CtlDenied)
        .kv("uid", uid)
        .kv("command", command)
        .suppressed(held)
        .send();
}

/// Says the `ctl_denied` counts no later refusal carried, a few seconds
/// after their minute ends (a member who stops after a burst of refused
/// commands is still told in full).
async fn denied_overdue(seen: Shared<log::PerMinute<u32, String>>) {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let overdue = lock(&seen).overdue(Instant::now());
        for (uid, n, command) in overdue {
            log::event(Event::CtlDenied)
                .kv("uid", uid)
                .kv("command", command.unwrap_or_default())
                .suppressed(n)
                .send();
        }
    }
}

/// Root's own connection slots: a lockdown always gets in.
pub const MAX_ROOT: usize = 32;
/// Connections of every other uid together, and of one uid.
pub const MAX_OTHERS: usize = 64;
pub const MAX_PER_UID: usize = 8;
/// `monitor` streams at once, and of them those only root may take.
pub const MAX_MONITORS: usize = 16;
pub const ROOT_MONITORS: usize = 4;
/// A read-only request is one short line (`show link NAME`).
pub const MAX_READONLY_REQUEST: usize = 4096;
/// How far the engine looks into a root client's request: every request
/// but a bundle is one short line, and a bundle shows what it is in its
/// first bytes.
pub const PEEK_WINDOW: usize = 64 << 10;
/// How long a client may take to send its request: root may send a bundle.
const READ_TIMEOUT_ROOT: Duration = Duration::from_secs(30);
const READ_TIMEOUT_OTHERS: Duration = Duration::from_secs(5);
/// A `monitor` reader that does not take a line for this long is dropped.
const MONITOR_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// A client that does not take its reply in this long is dropped.
const REPLY_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections and monitor streams in use.
#[derive(Default)]
pub struct Slots {
    root: usize,
    others: usize,
    per_uid: HashMap<u32, usize>,
    monitors: usize,
}

impl Slots {
    /// Takes a connection slot for `uid`, or None when its class is full.
    pub fn take(&mut self, uid: u32) -> Option<()> {
        if uid == 0 {
            (self.root < MAX_ROOT).then(|| self.root += 1)
        } else {
            let mine = self.per_uid.entry(uid).or_insert(0);
            if self.others >= MAX_OTHERS || *mine >= MAX_PER_UID {
                return None;
            }
            *mine += 1;
            self.others += 1;
            Some(())
        }
    }

    pub fn give(&mut self, uid: u32) {
        if uid == 0 {
            self.root = self.root.saturating_sub(1);
        } else {
            self.others = self.others.saturating_sub(1);
            if let Some(n) = self.per_uid.get_mut(&uid) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_uid.remove(&uid);
                }
            }
        }
    }
}

type Shared<T> = std::sync::Arc<std::sync::Mutex<T>>;

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Gives a connection slot back however the connection ends.
struct SlotGuard {
    slots: Shared<Slots>,
    uid: u32,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        lock(&self.slots).give(self.uid);
    }
}

/// Accepts connections until the listener fails; never exits on a client error.
pub async fn serve(
    listener: UnixListener,
    access: Access,
    calls: mpsc::Sender<CtlCall>,
    events: broadcast::Sender<String>,
) {
    let limiter: Shared<log::PerMinute<u32, String>> = Default::default();
    tokio::spawn(denied_overdue(limiter.clone()));
    let slots: Shared<Slots> = Default::default();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                log::warn(format!("control: accept: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Credentials first: a connection whose class is full is closed
        // at once, before a task or a byte of it is spent.
        let Ok(cred) = stream.peer_cred() else {
            continue;
        };
        let uid = cred.uid();
        if lock(&slots).take(uid).is_none() {
            denied(&limiter, uid, "too-many-connections");
            continue;
        }
        let guard = SlotGuard {
            slots: slots.clone(),
            uid,
        };
        let (access, calls, events, limiter) = (
            access.clone(),
            calls.clone(),
            events.clone(),
            limiter.clone(),
        );
        let slots = slots.clone();
        tokio::spawn(async move {
            let r = connection(
                stream,
                (uid, cred.gid()),
                access,
                calls,
                events,
                limiter,
                slots,
            )
            .await;
            drop(guard);
            if let Err(e) = r {
                log::debug(format!("control: connection: {e}"));
            }
        });
    }
}

async fn connection(
    stream: UnixStream,
    (uid, gid): (u32, u32),
    access: Access,
    calls: mpsc::Sender<CtlCall>,
    events: broadcast::Sender<String>,
    limiter: Shared<log::PerMinute<u32, String>>,
    slots: Shared<Slots>,
) -> std::io::Result<()> {
    let level = access.level(uid, gid);
    let (mut rd, mut wr) = stream.into_split();
    if level == Level::None {
        // Decided before reading a byte: nothing of theirs is parsed.
        denied(&limiter, uid, "-");
        return send(
            &mut wr,
            &Reply::error(ErrorCode::Denied, "permission denied"),
        )
        .await;
    }
    let got = match level {
        Level::Root => {
            tokio::time::timeout(READ_TIMEOUT_ROOT, root_request(&mut rd, PEEK_WINDOW)).await
        }
        _ => {
            let read = readonly_request(&mut rd, MAX_READONLY_REQUEST);
            tokio::time::timeout(READ_TIMEOUT_OTHERS, read).await
        }
    };
    let asked = match got
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request timeout"))??
    {
        Ok(Some(a)) => a,
        Ok(None) => return Ok(()),
        Err(refusal) => return send(&mut wr, &refusal).await,
    };
    let allowed = match level {
        Level::Root => true,
        Level::ReadOnly => asked.read_only(),
        Level::None => false,
    };
    if !allowed {
        denied(&limiter, uid, asked.name());
        return send(
            &mut wr,
            &Reply::error(ErrorCode::Denied, "permission denied"),
        )
        .await;
    }
    if !asked.read_only() {
        log::event(Event::CtlCommand)
            .kv("uid", uid)
            .kv("command", asked.name())
            .send();
    }
    if asked == Asked::Line(Request::Monitor) {
        let room = {
            let mut s = lock(&slots);
            // Members fill at most MAX_MONITORS - ROOT_MONITORS streams:
            // root can always watch.
            let limit = match level {
                Level::Root => MAX_MONITORS,
                _ => MAX_MONITORS - ROOT_MONITORS,
            };
            let room = s.monitors < limit;
            if room {
                s.monitors += 1;
            }
            room
        };
        if !room {
            let busy = Reply::error(ErrorCode::Refused, "too many monitor streams");
            return send(&mut wr, &busy).await;
        }
        let r = monitor(&mut wr, events.subscribe()).await;
        lock(&slots).monitors -= 1;
        return r;
    }
    // Only root gets this far with a request the parent runs.
    let client = match asked.for_parent() {
        Some(_) => AsFd::as_fd(rd.as_ref()).try_clone_to_owned().ok(),
        None => None,
    };
    let (tx, rx) = oneshot::channel();
    if calls
        .send(CtlCall {
            uid,
            asked,
            reply: tx,
            client,
        })
        .await
        .is_err()
    {
        return Ok(());
    }
    let reply = rx
        .await
        .unwrap_or_else(|_| Reply::error(ErrorCode::Failed, "engine shutting down"));
    send(&mut wr, &reply).await
}

/// What a connection's request came to: `Ok(None)` when the client left
/// without a byte, `Err` with the answer for a request refused unparsed.
type Got = Result<Option<Asked>, Reply>;

/// A read-only member's request: one line of at most `max` bytes, read.
async fn readonly_request(rd: &mut OwnedReadHalf, max: usize) -> std::io::Result<Got> {
    let mut line = String::new();
    let n = BufReader::new(rd.take(max as u64 + 1))
        .read_line(&mut line)
        .await?;
    if n == 0 {
        return Ok(Ok(None));
    }
    if line.len() > max || !line.ends_with('\n') {
        return Ok(Err(Reply::error(ErrorCode::BadRequest, "request too long")));
    }
    Ok(parse(line.as_bytes()).map(|r| Some(Asked::Line(r))))
}

fn parse(line: &[u8]) -> Result<Request, Reply> {
    crate::proto::ctl::parse_request(line)
        .map_err(|e| Reply::error(ErrorCode::BadRequest, format!("bad request: {e}")))
}

/// A root client's request, looked at within `window` bytes: what the
/// engine runs is taken off the connection (exactly its line); what the
/// parent runs is left there for the parent to read.
async fn root_request(rd: &mut OwnedReadHalf, window: usize) -> std::io::Result<Got> {
    let Some((peeked, bytes)) = peek_request(rd.as_ref(), window).await? else {
        return Ok(Ok(None));
    };
    let (len, request) = match peeked {
        Peeked::Line(len) => match parse(&bytes[..len]) {
            Ok(r) => (len, r),
            Err(refusal) => return Ok(Err(refusal)),
        },
        Peeked::PolicyLoad => return Ok(Ok(Some(Asked::PolicyLoad))),
        Peeked::TooLong => {
            return Ok(Err(Reply::error(ErrorCode::BadRequest, "request too long")));
        }
        Peeked::More => {
            return Ok(Err(Reply::error(
                ErrorCode::BadRequest,
                "incomplete request",
            )));
        }
    };
    if ParentCommand::of(&request).is_none() {
        // Ours to run: take the line off, and nothing after it.
        rd.read_exact(&mut vec![0u8; len]).await?;
    }
    Ok(Ok(Some(Asked::Line(request))))
}

/// What a root client's connection holds, judged from the bytes peeked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Peeked {
    /// Not enough to say yet (at the client's end: an unfinished line).
    More,
    /// A whole line of this many bytes, its newline included.
    Line(usize),
    /// A `policy-load` with its end not yet in sight: the parent reads it
    /// whole. Said as soon as the start shows it: a Unix socket may queue
    /// less than the window (OpenBSD's buffers are small), so waiting for
    /// a full window could wait for ever.
    PolicyLoad,
    /// No end of line within the window, and no bundle.
    TooLong,
}

fn judge(peeked: &[u8], window: usize) -> Peeked {
    if let Some(i) = peeked.iter().position(|&b| b == b'\n') {
        return Peeked::Line(i + 1);
    }
    if peeked.trim_ascii_start().starts_with(POLICY_LOAD_PREFIX) {
        return Peeked::PolicyLoad;
    }
    if peeked.len() >= window {
        return Peeked::TooLong;
    }
    Peeked::More
}

/// Looks at what a client sent without taking it off the connection,
/// until [`judge`] decides or the client ends (then [`Peeked::More`]).
/// `None`: the client left without sending a byte.
async fn peek_request(
    stream: &UnixStream,
    window: usize,
) -> std::io::Result<Option<(Peeked, Vec<u8>)>> {
    use nix::sys::socket::{MsgFlags, recv};
    let mut buf = vec![0u8; window];
    let mut seen = 0;
    loop {
        let ready = stream.ready(Interest::READABLE).await?;
        let got = stream.try_io(Interest::READABLE, || {
            let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
            let n = recv(stream.as_raw_fd(), &mut buf, flags).map_err(std::io::Error::from)?;
            // Nothing new since the last look, and the client still there:
            // WouldBlock clears the readiness, so the next wake-up is news.
            if n == seen && n > 0 && !ready.is_read_closed() {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        let n = match got {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(None);
        }
        let verdict = judge(&buf[..n], window);
        if verdict != Peeked::More || n == seen {
            buf.truncate(n);
            return Ok(Some((verdict, buf)));
        }
        seen = n;
    }
}

async fn monitor(
    wr: &mut tokio::net::unix::OwnedWriteHalf,
    mut events: broadcast::Receiver<String>,
) -> std::io::Result<()> {
    loop {
        let reply = match events.recv().await {
            Ok(line) => Reply::Event(line),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                // Said to this reader only, never to syslog.
                Reply::Event(
                    log::event(Event::MonitorLagged)
                        .kv("dropped", n)
                        .line()
                        .into(),
                )
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        };
        tokio::time::timeout(MONITOR_WRITE_TIMEOUT, send(wr, &reply))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "monitor reader stalled")
            })??;
    }
}

/// Writes `reply`, within [`REPLY_WRITE_TIMEOUT`]: a client that never
/// reads (a `show links` of a hub is megabytes, the socket buffer a few
/// KiB) must not keep its connection slot and the reply for ever.
async fn send(wr: &mut tokio::net::unix::OwnedWriteHalf, reply: &Reply) -> std::io::Result<()> {
    let mut s = serde_json::to_string(reply).expect("replies serialize");
    s.push('\n');
    match tokio::time::timeout(REPLY_WRITE_TIMEOUT, wr.write_all(s.as_bytes())).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

#[cfg(test)]
mod tests;
