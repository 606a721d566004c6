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

use crate::log::{self, Prio};
use crate::proto::ctl::{ErrorCode, MAX_REQUEST, Reply, Request};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, oneshot};

/// A request handed to the engine's main loop, with the channel for its answer.
pub struct CtlCall {
    pub uid: u32,
    pub request: Request,
    pub reply: oneshot::Sender<Reply>,
    /// The client's connection (a duplicate), for a request the parent
    /// runs: the parent asks the kernel who the client is.
    pub client: Option<std::os::fd::OwnedFd>,
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

/// First `ctl_denied` per uid per minute, then one line with `suppressed=N`.
#[derive(Default)]
pub struct RateLimit {
    seen: log::PerMinute<u32>,
}

impl RateLimit {
    pub fn denied(&mut self, uid: u32, command: &str, now: Instant) {
        let Some(held) = self.seen.admit(uid, now) else {
            return;
        };
        let mut ev = log::event(Prio::Warning, "ctl_denied")
            .kv("uid", uid)
            .kv("command", command);
        if held > 0 {
            ev = ev.kv("suppressed", held);
        }
        ev.send();
    }
}

/// Root's own connection slots: a lockdown always gets in.
pub const MAX_ROOT: usize = 32;
/// Connections of every other uid together, and of one uid.
pub const MAX_OTHERS: usize = 64;
pub const MAX_PER_UID: usize = 8;
/// `monitor` streams at once.
pub const MAX_MONITORS: usize = 16;
/// A read-only request is one short line (`show link NAME`).
pub const MAX_READONLY_REQUEST: usize = 4096;
/// How long a client may take to send its request: root may send a bundle.
const READ_TIMEOUT_ROOT: Duration = Duration::from_secs(30);
const READ_TIMEOUT_OTHERS: Duration = Duration::from_secs(5);
/// A `monitor` reader that does not take a line for this long is dropped.
const MONITOR_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

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
    let limiter: Shared<RateLimit> = Default::default();
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
            lock(&limiter).denied(uid, "too-many-connections", Instant::now());
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
    limiter: Shared<RateLimit>,
    slots: Shared<Slots>,
) -> std::io::Result<()> {
    let level = access.level(uid, gid);
    let client = if level == Level::Root {
        std::os::fd::AsFd::as_fd(&stream).try_clone_to_owned().ok()
    } else {
        None
    };
    let (rd, mut wr) = stream.into_split();
    if level == Level::None {
        // Decided before reading a byte: nothing of theirs is parsed.
        lock(&limiter).denied(uid, "-", Instant::now());
        return send(
            &mut wr,
            &Reply::error(ErrorCode::Denied, "permission denied"),
        )
        .await;
    }
    let (max, wait) = match level {
        Level::Root => (MAX_REQUEST, READ_TIMEOUT_ROOT),
        _ => (MAX_READONLY_REQUEST, READ_TIMEOUT_OTHERS),
    };
    let mut line = String::new();
    let n = tokio::time::timeout(
        wait,
        BufReader::new(rd.take(max as u64 + 1)).read_line(&mut line),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request timeout"))??;
    if n == 0 {
        return Ok(());
    }
    if line.len() > max || !line.ends_with('\n') {
        return send(
            &mut wr,
            &Reply::error(ErrorCode::BadRequest, "request too long"),
        )
        .await;
    }
    let request: Request = match serde_json::from_str(line.trim_end()) {
        Ok(r) => r,
        Err(e) => {
            return send(
                &mut wr,
                &Reply::error(ErrorCode::BadRequest, format!("bad request: {e}")),
            )
            .await;
        }
    };
    let allowed = match level {
        Level::Root => true,
        Level::ReadOnly => request.read_only(),
        Level::None => false,
    };
    if !allowed {
        limiter.lock().unwrap_or_else(|e| e.into_inner()).denied(
            uid,
            request.name(),
            Instant::now(),
        );
        return send(
            &mut wr,
            &Reply::error(ErrorCode::Denied, "permission denied"),
        )
        .await;
    }
    if !request.read_only() {
        log::event(Prio::Info, "ctl_command")
            .kv("uid", uid)
            .kv("command", request.name())
            .send();
    }
    if request == Request::Monitor {
        let room = {
            let mut s = lock(&slots);
            let room = s.monitors < MAX_MONITORS;
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
    let (tx, rx) = oneshot::channel();
    if calls
        .send(CtlCall {
            uid,
            request,
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

async fn monitor(
    wr: &mut tokio::net::unix::OwnedWriteHalf,
    mut events: broadcast::Receiver<String>,
) -> std::io::Result<()> {
    loop {
        let reply = match events.recv().await {
            Ok(line) => Reply::Event(line),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                Reply::Event(format!("event=monitor_lagged dropped={n}"))
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

async fn send(wr: &mut tokio::net::unix::OwnedWriteHalf, reply: &Reply) -> std::io::Result<()> {
    let mut s = serde_json::to_string(reply).expect("replies serialize");
    s.push('\n');
    wr.write_all(s.as_bytes()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_keeps_its_slots_whatever_members_do() {
        let mut s = Slots::default();
        for _ in 0..MAX_PER_UID {
            assert!(s.take(65534).is_some());
        }
        assert!(s.take(65534).is_none(), "per-uid cap");
        let mut uid = 1000;
        while s.take(uid).is_some() {
            uid += 1;
        }
        assert_eq!(s.others, MAX_OTHERS);
        for _ in 0..MAX_ROOT {
            assert!(s.take(0).is_some(), "root crowded out");
        }
        assert!(s.take(0).is_none());
        s.give(65534);
        assert!(s.take(65534).is_some());
        s.give(0);
        assert!(s.take(0).is_some());
    }

    #[test]
    fn access_levels() {
        let a = Access {
            readonly_uids: vec![1000],
            readonly_gid: Some(50),
        };
        assert_eq!(a.level(0, 0), Level::Root);
        assert_eq!(a.level(1000, 1000), Level::ReadOnly);
        assert_eq!(a.level(1001, 50), Level::ReadOnly);
        assert_eq!(a.level(1001, 1001), Level::None);
    }
}
