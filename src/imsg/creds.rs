//! Control-client credentials, from the kernel to the parent (DESIGN §2:
//! "a ctl client's credentials come from the kernel to the parent, never
//! as a number the engine supplies").
//!
//! For every request it forwards, the engine first passes a duplicate of
//! the client's connection to the parent over a SOCK_SEQPACKET pair (fd 7
//! in the engine): one message per request, 8 bytes of request id with the
//! descriptor as SCM_RIGHTS. The parent asks the kernel who is at the other
//! end (SO_PEERCRED on Linux, getpeereid(2) on OpenBSD), keeps only the
//! uid, and closes the descriptor at once. A request whose id came with no
//! descriptor, or whose kernel uid is not root, is not run.
//!
//! Limit: the engine still reads the request, so a compromised engine
//! that kept a duplicate of an earlier root client's connection could
//! pass it with a request of its own. Closing that needs the parent to
//! read the request from the passed connection itself.

use std::collections::BTreeMap;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// How many received credentials wait for their request at most; older
/// ones are forgotten (their request is then refused).
pub const MAX_PENDING: usize = 64;

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

/// Parent side: what arrived so far, request id -> the client's uid as the
/// kernel reports it (None: no descriptor, or no credentials).
#[derive(Default)]
pub struct Creds {
    pending: BTreeMap<u64, Option<u32>>,
}

impl Creds {
    /// Reads every message waiting on `chan` (non-blocking) and records the
    /// uid behind each descriptor; descriptors are closed at once.
    pub fn drain(&mut self, chan: BorrowedFd<'_>) {
        loop {
            let mut bytes = [0u8; 8];
            let mut space = nix::cmsg_space!([RawFd; 4]);
            let (n, flags, fds) = {
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
            let uid = match (bytes_ok, truncated, fds.as_slice()) {
                (true, false, [one]) => peer_uid(one.as_fd()),
                _ => None,
            };
            drop(fds);
            if bytes_ok {
                self.pending.insert(id, uid);
                while self.pending.len() > MAX_PENDING {
                    self.pending.pop_first();
                }
            }
        }
    }

    /// The kernel's uid for request `id`, once; None if it never came.
    pub fn take(&mut self, id: u64) -> Option<u32> {
        self.pending.remove(&id).flatten()
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

    #[test]
    fn a_passed_connection_gives_the_kernels_uid_once() {
        let (engine, parent) = pair();
        let (client, _server) = std::os::unix::net::UnixStream::pair().unwrap();
        send(engine.as_fd(), 42, client.as_fd()).unwrap();
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
        c.drain(parent.as_fd());
        assert_eq!(c.take(42), Some(nix::unistd::geteuid().as_raw()));
        assert_eq!(c.take(42), None, "used once");
        assert_eq!(c.take(7), None);
        assert_eq!(c.take(8), None, "never sent");
    }

    #[test]
    fn pending_is_bounded() {
        let (engine, parent) = pair();
        let (client, _server) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut c = Creds::default();
        for id in 0..(MAX_PENDING as u64 + 10) {
            send(engine.as_fd(), id, client.as_fd()).unwrap();
            c.drain(parent.as_fd());
        }
        assert_eq!(c.pending.len(), MAX_PENDING);
        assert_eq!(c.take(0), None, "the oldest were forgotten");
        assert!(c.take(MAX_PENDING as u64 + 9).is_some());
    }
}
