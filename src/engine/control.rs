//! The control socket server (DESIGN §7), in the engine. The listening
//! socket was created by the parent (fd 4). Each connection's peer
//! credentials decide what it may do: root everything, `socket_group`
//! members the read-only allow-list, everyone else nothing. Refusals are
//! logged (`ctl_denied`, rate-limited per uid).

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
    seen: HashMap<u32, (Instant, u64)>,
}

impl RateLimit {
    pub fn denied(&mut self, uid: u32, command: &str, now: Instant) {
        let e = self
            .seen
            .entry(uid)
            .or_insert((now - Duration::from_secs(61), 0));
        if now.duration_since(e.0) >= Duration::from_secs(60) {
            let mut ev = log::event(Prio::Warning, "ctl_denied")
                .kv("uid", uid)
                .kv("command", command);
            if e.1 > 0 {
                ev = ev.kv("suppressed", e.1);
            }
            ev.send();
            *e = (now, 0);
        } else {
            e.1 += 1;
        }
    }
}

/// Accepts connections until the listener fails; never exits on a client error.
pub async fn serve(
    listener: UnixListener,
    access: Access,
    calls: mpsc::Sender<CtlCall>,
    events: broadcast::Sender<String>,
) {
    let limiter = std::sync::Arc::new(std::sync::Mutex::new(RateLimit::default()));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                log::warn(format!("control: accept: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (access, calls, events, limiter) = (
            access.clone(),
            calls.clone(),
            events.clone(),
            limiter.clone(),
        );
        tokio::spawn(async move {
            if let Err(e) = connection(stream, access, calls, events, limiter).await {
                log::debug(format!("control: connection: {e}"));
            }
        });
    }
}

async fn connection(
    stream: UnixStream,
    access: Access,
    calls: mpsc::Sender<CtlCall>,
    events: broadcast::Sender<String>,
    limiter: std::sync::Arc<std::sync::Mutex<RateLimit>>,
) -> std::io::Result<()> {
    let cred = stream.peer_cred()?;
    let (uid, gid) = (cred.uid(), cred.gid());
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    let n = tokio::time::timeout(
        Duration::from_secs(30),
        BufReader::new(rd.take(MAX_REQUEST as u64 + 1)).read_line(&mut line),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request timeout"))??;
    if n == 0 {
        return Ok(());
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
    let allowed = match access.level(uid, gid) {
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
        return monitor(&mut wr, events.subscribe()).await;
    }
    let (tx, rx) = oneshot::channel();
    if calls
        .send(CtlCall {
            uid,
            request,
            reply: tx,
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
        match events.recv().await {
            Ok(line) => send(wr, &Reply::Event(line)).await?,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                send(
                    wr,
                    &Reply::Event(format!("event=monitor_lagged dropped={n}")),
                )
                .await?
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
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
