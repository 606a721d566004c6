//! `userspace` WireGuard backend (DESIGN §5), run by the privileged parent:
//! the cross-platform configuration protocol spoken on
//! `/var/run/wireguard/<if>.sock` by wireguard-go (and wireguard-tools), and
//! boringtun's reading of it ([`boringtun`]).
//! It touches nothing but that socket, and on it only the PSK of one peer.
//!
//! A request is `get=1` or `set=1`, then `key=value` lines and a blank
//! line; the reply ends with `errno=N` and a blank line. Keys are hex.
//! `public_key=` in a set creates a missing peer; `update_only=true` right
//! after it undoes that, which boringtun refuses — so every write is
//! preceded by a get that finds the peer (and tells which of the two
//! answers), and followed by a get that reads it back. On boringtun, which
//! cannot change a peer in place, a PSK is installed by removing the peer
//! and adding it back with what the get read, in one set.
//! A get reply carries the interface's private key too (wireguard-go):
//! every buffer holding a reply or a request is zeroized. That private key
//! is also the only way to learn the interface's own public key there (the
//! protocol has no `public_key` line for the interface): X25519 with the
//! base point. The parsed key lives only in a `Zeroizing` buffer; the one
//! by-value copy curve25519-dalek's `mul_base_clamped` takes is on its stack.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use curve25519_dalek::montgomery::MontgomeryPoint;
use zeroize::Zeroizing;

use super::{
    PeerConfig, WgBackend, WgError, WgPeer, check_ifname, hex_into, hex_key, no_private_key,
    verify, verify_recreated,
};
use crate::secret::Psk;

pub mod boringtun;
pub use boringtun::Server;

/// Default time for a whole request: connect, write, the whole reply. A
/// userspace WireGuard answers in milliseconds; the parent's loop (and
/// the nftables dead-man switch's 3 s) waits meanwhile.
pub const TIMEOUT: Duration = Duration::from_secs(1);

/// After an interface's server did not answer in time, it is not asked
/// again for this long: every request fails at once instead, so that one
/// hung wireguard-go costs the parent's loop one timeout, not one for
/// each of its links due in a tick.
const COOL_DOWN: Duration = Duration::from_secs(10);

/// Largest reply accepted: a few thousand peers with their allowed IPs.
const MAX_REPLY: usize = 4 << 20;

/// The userspace backend: one short connection per request.
pub struct Uapi {
    dir: PathBuf,
    timeout: Duration,
    /// Interfaces whose server timed out, and until when they rest.
    silent: std::sync::Mutex<std::collections::HashMap<String, Instant>>,
}

impl Uapi {
    /// `dir` holds the `<if>.sock` sockets (normally [`crate::conf::UAPI_DIR`]).
    pub fn new(dir: &Path) -> Uapi {
        Uapi::with_timeout(dir, TIMEOUT)
    }

    pub fn with_timeout(dir: &Path, timeout: Duration) -> Uapi {
        Uapi {
            dir: dir.to_path_buf(),
            timeout,
            silent: Default::default(),
        }
    }

    pub fn socket_path(&self, ifname: &str) -> PathBuf {
        self.dir.join(format!("{ifname}.sock"))
    }

    /// Sends one request and returns the whole reply (up to and including
    /// the final blank line).
    fn exchange(&self, ifname: &str, req: &[u8]) -> Result<Zeroizing<Vec<u8>>, WgError> {
        check_ifname(ifname)?;
        let path = self.socket_path(ifname);
        let now = Instant::now();
        {
            let mut silent = self.silent.lock().unwrap_or_else(|p| p.into_inner());
            silent.retain(|_, until| *until > now);
            if let Some(until) = silent.get(ifname) {
                return Err(WgError::Io(format!(
                    "{}: did not answer in time; not asked again for {:?}",
                    path.display(),
                    until.duration_since(now)
                )));
            }
        }
        let r = self.exchange_within(&path, req, now + self.timeout);
        if matches!(&r, Err(WgError::Io(m)) if m.contains("timed out")) {
            let mut silent = self.silent.lock().unwrap_or_else(|p| p.into_inner());
            silent.insert(ifname.to_string(), Instant::now() + COOL_DOWN);
        }
        r
    }

    /// [`Uapi::exchange`] on `path`, all of it by `deadline`.
    fn exchange_within(
        &self,
        path: &Path,
        req: &[u8],
        deadline: Instant,
    ) -> Result<Zeroizing<Vec<u8>>, WgError> {
        let io = |what: &str, e: std::io::Error| match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => WgError::Io(format!(
                "{}: {what} timed out after {:?}",
                path.display(),
                self.timeout
            )),
            _ => WgError::Io(format!("{}: {what}: {e}", path.display())),
        };
        let left = || {
            deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
                .ok_or_else(|| std::io::Error::from(ErrorKind::TimedOut))
        };
        let mut s =
            connect(path, left().map_err(|e| io("connect", e))?).map_err(|e| match e.kind() {
                ErrorKind::NotFound | ErrorKind::ConnectionRefused => WgError::NoSuchInterface,
                _ => io("connect", e),
            })?;
        s.set_write_timeout(Some(left().map_err(|e| io("write", e))?))
            .map_err(|e| io("setsockopt", e))?;
        s.write_all(req).map_err(|e| io("write", e))?;
        // A peer that dribbles bytes gets the deadline for the whole reply.
        let mut reply = Zeroizing::new(Vec::with_capacity(4096));
        let mut chunk = Zeroizing::new([0u8; 4096]);
        while !reply.ends_with(b"\n\n") {
            let wait = left().map_err(|e| io("read", e))?;
            s.set_read_timeout(Some(wait))
                .map_err(|e| io("setsockopt", e))?;
            let n = s.read(&mut chunk[..]).map_err(|e| io("read", e))?;
            if n == 0 {
                return Err(WgError::Protocol(format!(
                    "{}: connection closed before the end of the reply",
                    path.display()
                )));
            }
            if reply.len() + n > MAX_REPLY {
                return Err(WgError::Protocol(format!(
                    "{}: reply larger than {MAX_REPLY} bytes",
                    path.display()
                )));
            }
            append(&mut reply, &chunk[..n]);
        }
        Ok(reply)
    }

    /// `get=1`: the whole reply (zeroized when dropped: it may hold the
    /// interface's private key).
    fn get_reply(&self, ifname: &str) -> Result<Zeroizing<Vec<u8>>, WgError> {
        self.exchange(ifname, b"get=1\n\n")
    }

    /// `get=1`: the peer's PSK, or `None` when the interface has no such peer.
    fn get(&self, peer: &WgPeer) -> Result<Option<Psk>, WgError> {
        parse_get(&self.get_reply(&peer.interface)?, &peer.public_key)
    }

    /// `get=1`, then the peer as it is, or `NoSuchPeer`.
    fn read_peer(&self, peer: &WgPeer) -> Result<PeerConfig, WgError> {
        parse_peer(&self.get_reply(&peer.interface)?, &peer.public_key)?.ok_or(WgError::NoSuchPeer)
    }

    /// `get=1`: the interface's own public key, as boringtun lists it or
    /// derived from the private key wireguard-go lists.
    fn own_public(&self, ifname: &str) -> Result<[u8; 32], WgError> {
        let reply = self.get_reply(ifname)?;
        let key = match Server::of(&reply) {
            Server::Boringtun => boringtun::own_public_key(&reply)?,
            Server::WireguardGo => parse_private_key(&reply)?.map(|k| public_from_private(&k)),
        };
        key.ok_or_else(no_private_key)
    }

    /// One `set=1`; anything but `errno=0` is "`what` refused".
    fn set(&self, ifname: &str, req: &[u8], what: &str) -> Result<(), WgError> {
        match errno_of(&self.exchange(ifname, req)?)? {
            0 => Ok(()),
            n => Err(WgError::Protocol(format!("{what} refused: errno={n}"))),
        }
    }
}

impl WgBackend for Uapi {
    fn name(&self) -> &'static str {
        "userspace"
    }

    fn set_psk(&mut self, peer: &WgPeer, psk: &Psk) -> Result<(), WgError> {
        let reply = self.get_reply(&peer.interface)?;
        match Server::of(&reply) {
            Server::WireguardGo => {
                if parse_get(&reply, &peer.public_key)?.is_none() {
                    return Err(WgError::NoSuchPeer);
                }
                let req = set_request(&peer.public_key, psk);
                self.set(&peer.interface, req.as_bytes(), "set")?;
                verify(self.get(peer)?, psk)
            }
            Server::Boringtun => {
                // Changed in place, boringtun would panic: the peer goes and
                // comes back with what it had and the new PSK, which also
                // ends its sessions (the next packet either end sends makes
                // a new one). The same PSK again changes nothing.
                let before = parse_peer(&reply, &peer.public_key)?.ok_or(WgError::NoSuchPeer)?;
                if super::ct_eq(before.psk.expose(), psk.expose()) {
                    return Ok(());
                }
                let want = PeerConfig {
                    psk: psk.clone(),
                    ..before
                };
                let req =
                    recreate_request(&peer.public_key, &want, want.keepalive, Server::Boringtun);
                self.set(&peer.interface, req.as_bytes(), "set")?;
                verify_recreated(&want, Some(self.read_peer(peer)?))
            }
        }
    }

    fn get_psk(&mut self, peer: &WgPeer) -> Result<Psk, WgError> {
        self.get(peer)?.ok_or(WgError::NoSuchPeer)
    }

    fn public_key(&mut self, interface: &str) -> Result<[u8; 32], WgError> {
        self.own_public(interface)
    }

    fn remove_peer(&mut self, peer: &WgPeer) -> Result<(), WgError> {
        let reply = self.get_reply(&peer.interface)?;
        if parse_get(&reply, &peer.public_key)?.is_none() {
            return Ok(());
        }
        let req = remove_request(&peer.public_key, Server::of(&reply));
        self.set(&peer.interface, req.as_bytes(), "remove")?;
        match self.get(peer)? {
            None => Ok(()),
            Some(_) => Err(WgError::Protocol("peer still there after remove".into())),
        }
    }

    fn new_session(&mut self, peer: &WgPeer, keepalive: u16) -> Result<PeerConfig, WgError> {
        let reply = self.get_reply(&peer.interface)?;
        let server = Server::of(&reply);
        let before = parse_peer(&reply, &peer.public_key)?.ok_or(WgError::NoSuchPeer)?;
        drop(reply);
        // boringtun could take its keepalive back only by another
        // re-creation, which would end the session just made: its peer
        // keeps its own, and handshakes with the first packet either end
        // sends (or its own keepalive).
        let pka = match server {
            Server::WireguardGo if before.keepalive == 0 => keepalive,
            _ => before.keepalive,
        };
        let req = recreate_request(&peer.public_key, &before, pka, server);
        self.set(&peer.interface, req.as_bytes(), "re-create")?;
        verify_recreated(&before, Some(self.read_peer(peer)?))?;
        Ok(before)
    }

    fn last_handshake(&mut self, peer: &WgPeer) -> Result<Option<std::time::SystemTime>, WgError> {
        // Read before the request: boringtun's time since is counted back
        // from a moment no later than its own, so never made later.
        let now = std::time::SystemTime::now();
        let reply = self.get_reply(&peer.interface)?;
        parse_handshake_at(&reply, &peer.public_key, now)?.ok_or(WgError::NoSuchPeer)
    }
}

/// An endpoint as wireguard-go prints it: `ip:port`, `[ip6]:port`, or a
/// link-local `[fe80::1%eth0]:port` whose zone is an interface name (Rust
/// parses only a numeric zone; the name becomes its index, which the set
/// that writes it back prints as a number wireguard-go accepts).
fn endpoint(value: &str) -> Option<std::net::SocketAddr> {
    if let Ok(a) = value.parse() {
        return Some(a);
    }
    let (host, port) = value.strip_prefix('[')?.split_once("]:")?;
    let (ip, zone) = host.split_once('%')?;
    let name = std::ffi::CString::new(zone).ok()?;
    // SAFETY: a NUL-terminated name; 0 means no such interface.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(())?;
    let a = std::net::SocketAddrV6::new(ip.parse().ok()?, port.parse().ok()?, 0, index);
    Some(a.into())
}

/// A connection to `path` that waits at most `wait`: a server whose
/// accept queue is full makes a plain connect(2) wait for ever on Linux
/// (the socket's send timeout bounds it, so it is set first).
fn connect(path: &Path, wait: Duration) -> std::io::Result<UnixStream> {
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr, sockopt};
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let tv = nix::sys::time::TimeVal::new(wait.as_secs() as _, wait.subsec_micros() as _);
    socket::setsockopt(&fd, sockopt::SendTimeout, &tv)?;
    socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &UnixAddr::new(path)?)?;
    Ok(UnixStream::from(fd))
}

impl std::fmt::Debug for Uapi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Uapi({})", self.dir.display())
    }
}

/// Appends without leaving a copy of the old contents in freed memory: a
/// full buffer moves into a bigger one and the old one is zeroized.
fn append(buf: &mut Zeroizing<Vec<u8>>, data: &[u8]) {
    if buf.len() + data.len() > buf.capacity() {
        let mut bigger = Zeroizing::new(Vec::with_capacity((buf.len() + data.len()) * 2));
        bigger.extend_from_slice(buf);
        *buf = bigger;
    }
    buf.extend_from_slice(data);
}

/// The set request. Zeroized when dropped: it holds the PSK in hex.
pub fn set_request(public_key: &[u8; 32], psk: &Psk) -> Zeroizing<String> {
    let mut s = Zeroizing::new(String::with_capacity(200));
    s.push_str("set=1\npublic_key=");
    hex_into(&mut s, public_key);
    s.push_str("\nupdate_only=true\npreshared_key=");
    hex_into(&mut s, psk.expose());
    s.push_str("\n\n");
    s
}

/// The set request that removes one peer; for wireguard-go `update_only`
/// first, so that a peer gone meanwhile is not created only to be removed
/// (boringtun refuses that line, and removes nothing it does not have).
pub fn remove_request(public_key: &[u8; 32], server: Server) -> String {
    let mut s = String::with_capacity(120);
    s.push_str("set=1\npublic_key=");
    hex_into(&mut s, public_key);
    if server == Server::WireguardGo {
        s.push_str("\nupdate_only=true");
    }
    s.push_str("\nremove=true\n\n");
    s
}

/// Removes the peer and adds it again, in one request (wireguard-go
/// applies a set under one lock): the first block removes it (only if it
/// exists), the second makes a new peer with what was read back and a
/// persistent keepalive of `keepalive` seconds, which on an up interface
/// sends a keepalive at once and so starts a handshake. Zeroized: the PSK.
/// The peer vanishing between the read-back and this request would be
/// re-created: the protocol has no "only if it exists" for the second
/// block; the parent is the only writer that removes peers, and it runs
/// this and its removals in one thread. For boringtun the first block has
/// no `update_only` (refused) and the second ends the removal
/// (`remove=false`: a block's settings hold for the next there).
pub fn recreate_request(
    public_key: &[u8; 32],
    c: &PeerConfig,
    keepalive: u16,
    server: Server,
) -> Zeroizing<String> {
    // Room for the longest lines (an IPv6 endpoint with a scope, each
    // allowed IP at most 55 bytes): a reallocation would leave a copy of
    // the PSK in freed memory.
    let mut s = Zeroizing::new(String::with_capacity(512 + 64 * c.allowed_ips.len()));
    s.push_str("set=1\npublic_key=");
    hex_into(&mut s, public_key);
    s.push_str(match server {
        Server::WireguardGo => "\nupdate_only=true\nremove=true\npublic_key=",
        Server::Boringtun => "\nremove=true\npublic_key=",
    });
    hex_into(&mut s, public_key);
    if server == Server::Boringtun {
        s.push_str("\nremove=false");
    }
    s.push_str("\npreshared_key=");
    hex_into(&mut s, c.psk.expose());
    if let Some(e) = c.endpoint {
        // SocketAddr's Display is the form wireguard-go parses
        // ("[v6]:port" for IPv6).
        s.push_str(&format!("\nendpoint={e}"));
    }
    s.push_str(&format!(
        "\npersistent_keepalive_interval={keepalive}\nreplace_allowed_ips=true"
    ));
    for (ip, len) in &c.allowed_ips {
        s.push_str(&format!("\nallowed_ip={ip}/{len}"));
    }
    // The peer's own keepalive back in the same request: wireguard-go
    // sends the keepalive that starts the handshake when the section above
    // ends (it set one from none), then takes this. In a request of its
    // own the restore could fail and leave ours as the peer's for good.
    if server == Server::WireguardGo && keepalive != c.keepalive {
        s.push_str("\npublic_key=");
        hex_into(&mut s, public_key);
        s.push_str(&format!(
            "\nupdate_only=true\npersistent_keepalive_interval={}",
            c.keepalive
        ));
    }
    s.push_str("\n\n");
    debug_assert!(s.len() <= 512 + 64 * c.allowed_ips.len());
    s
}

/// The `errno=N` that ends every reply.
pub fn errno_of(reply: &[u8]) -> Result<i64, WgError> {
    let text =
        std::str::from_utf8(reply).map_err(|_| WgError::Protocol("reply is not UTF-8".into()))?;
    let last = text
        .trim_end_matches('\n')
        .rsplit('\n')
        .next()
        .unwrap_or("");
    let Some(n) = last.strip_prefix("errno=") else {
        return Err(WgError::Protocol("reply does not end with errno=N".into()));
    };
    n.parse().map_err(|_| {
        let shown = crate::text::printable(n, 32);
        WgError::Protocol(format!("bad errno value \"{shown}\""))
    })
}

/// The interface's `private_key=` from a get reply, or `None` when it has
/// none: wireguard-go leaves the line out then.
fn parse_private_key(reply: &[u8]) -> Result<Option<Zeroizing<[u8; 32]>>, WgError> {
    interface_key(reply, "private_key")
}

/// The interface's key line `name` (`private_key`, boringtun's
/// `own_public_key`) from a get reply (the lines before the first peer), or
/// `None` when there is none; an all-zero key counts as none too. Listed
/// twice or not 64 hex digits is an error; errors quote no line.
pub(crate) fn interface_key(
    reply: &[u8],
    name: &str,
) -> Result<Option<Zeroizing<[u8; 32]>>, WgError> {
    match errno_of(reply)? {
        0 => {}
        n => return Err(WgError::Protocol(format!("get refused: errno={n}"))),
    }
    let text = std::str::from_utf8(reply).expect("checked by errno_of");
    let mut found: Option<Zeroizing<[u8; 32]>> = None;
    for (i, line) in text.lines().enumerate() {
        let (key, value) = line.split_once('=').unwrap_or((line, ""));
        // The peers start here; a key past it is not the interface's.
        if key == "public_key" {
            break;
        }
        if key != name {
            continue;
        }
        if found.is_some() {
            return Err(WgError::Protocol(format!("{name} listed twice")));
        }
        let k = hex_key(value)
            .ok_or_else(|| WgError::Protocol(format!("get reply line {}: bad {name}", i + 1)))?;
        found = Some(k);
    }
    Ok(found.filter(|k| !super::ct_eq(k, &[0; 32])))
}

/// X25519(private, 9): the public key WireGuard announces for `private`
/// (clamped as X25519 requires; WireGuard stores keys unclamped).
fn public_from_private(private: &Zeroizing<[u8; 32]>) -> [u8; 32] {
    MontgomeryPoint::mul_base_clamped(**private).to_bytes()
}

/// Finds `want` among the peers of a get reply: `Some(psk)` (all zero when
/// the peer has no PSK line) or `None`. Errors quote no line: lines hold keys.
pub fn parse_get(reply: &[u8], want: &[u8; 32]) -> Result<Option<Psk>, WgError> {
    match errno_of(reply)? {
        0 => {}
        n => return Err(WgError::Protocol(format!("get refused: errno={n}"))),
    }
    let text = std::str::from_utf8(reply).expect("checked by errno_of");
    let mut in_wanted = false;
    let mut found: Option<Psk> = None;
    for (i, line) in text.lines().enumerate() {
        let Some((key, value)) = line.split_once('=') else {
            if line.is_empty() {
                continue;
            }
            return Err(WgError::Protocol(format!(
                "get reply line {}: no '='",
                i + 1
            )));
        };
        match key {
            "public_key" => {
                let pk = hex_key(value).ok_or_else(|| {
                    WgError::Protocol(format!("get reply line {}: bad public_key", i + 1))
                })?;
                in_wanted = *pk == *want;
                if in_wanted {
                    if found.is_some() {
                        return Err(WgError::Protocol("peer listed twice".into()));
                    }
                    found = Some(Psk::from_bytes([0; 32]));
                }
            }
            "preshared_key" if in_wanted => {
                let k = hex_key(value).ok_or_else(|| {
                    WgError::Protocol(format!("get reply line {}: bad preshared_key", i + 1))
                })?;
                found = Some(Psk::from_bytes(*k));
            }
            _ => {}
        }
    }
    Ok(found)
}

/// Finds `want` among the peers of a get reply with all a re-created peer
/// needs, or `None`. Errors quote no line: lines hold keys.
pub fn parse_peer(reply: &[u8], want: &[u8; 32]) -> Result<Option<PeerConfig>, WgError> {
    let Some(psk) = parse_get(reply, want)? else {
        return Ok(None);
    };
    let text = std::str::from_utf8(reply).expect("checked by parse_get");
    let mut c = PeerConfig {
        psk,
        endpoint: None,
        allowed_ips: Vec::new(),
        keepalive: 0,
    };
    let mut in_wanted = false;
    for (i, line) in text.lines().enumerate() {
        let (key, value) = line.split_once('=').unwrap_or((line, ""));
        let bad = |what: &str| WgError::Protocol(format!("get reply line {}: bad {what}", i + 1));
        match key {
            "public_key" => {
                in_wanted = hex_key(value).is_some_and(|k| *k == *want);
            }
            "endpoint" if in_wanted => {
                c.endpoint = Some(endpoint(value).ok_or_else(|| bad("endpoint"))?);
            }
            "persistent_keepalive_interval" if in_wanted => {
                c.keepalive = value.parse().map_err(|_| bad("keepalive"))?;
            }
            "allowed_ip" if in_wanted => {
                let (ip, len) = value.split_once('/').ok_or_else(|| bad("allowed_ip"))?;
                let ip: std::net::IpAddr = ip.parse().map_err(|_| bad("allowed_ip"))?;
                let len: u8 = len.parse().map_err(|_| bad("allowed_ip"))?;
                if len > if ip.is_ipv4() { 32 } else { 128 } {
                    return Err(bad("allowed_ip"));
                }
                c.allowed_ips.push((ip, len));
            }
            _ => {}
        }
    }
    Ok(Some(c))
}

/// The latest handshake of `want` in a get reply: None when the reply has
/// no such peer, Some(None) when it never handshook (or, on boringtun, has
/// no session).
pub fn parse_handshake(
    reply: &[u8],
    want: &[u8; 32],
) -> Result<Option<Option<std::time::SystemTime>>, WgError> {
    parse_handshake_at(reply, want, std::time::SystemTime::now())
}

/// [`parse_handshake`], with boringtun's times since taken back from `now`.
pub fn parse_handshake_at(
    reply: &[u8],
    want: &[u8; 32],
    now: std::time::SystemTime,
) -> Result<Option<Option<std::time::SystemTime>>, WgError> {
    if parse_get(reply, want)?.is_none() {
        return Ok(None);
    }
    let text = std::str::from_utf8(reply).expect("checked by parse_get");
    let (mut sec, mut nsec) = (0i64, 0i64);
    let mut in_wanted = false;
    for (i, line) in text.lines().enumerate() {
        let (key, value) = line.split_once('=').unwrap_or((line, ""));
        let bad = || WgError::Protocol(format!("get reply line {}: bad handshake time", i + 1));
        match key {
            "public_key" => in_wanted = hex_key(value).is_some_and(|k| *k == *want),
            "last_handshake_time_sec" if in_wanted => sec = value.parse().map_err(|_| bad())?,
            "last_handshake_time_nsec" if in_wanted => nsec = value.parse().map_err(|_| bad())?,
            _ => {}
        }
    }
    match Server::of(reply) {
        Server::WireguardGo => super::handshake_time(sec, nsec),
        Server::Boringtun => boringtun::handshake_from_elapsed(sec, nsec, now),
    }
    .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::thread;

    pub(super) fn hex(k: &[u8; 32]) -> String {
        let mut s = String::new();
        hex_into(&mut s, k);
        s
    }

    pub(super) fn reply_with(peers: &[([u8; 32], [u8; 32])]) -> String {
        let mut r = format!("private_key={}\nlisten_port=51820\n", hex(&[0xee; 32]));
        for (pk, psk) in peers {
            r += &format!(
                "public_key={}\npreshared_key={}\nprotocol_version=1\nallowed_ip=10.9.0.2/32\n",
                hex(pk),
                hex(psk)
            );
        }
        r + "errno=0\n\n"
    }

    #[test]
    fn set_request_is_exact() {
        let r = set_request(&[0xab; 32], &Psk::from_bytes([0x01; 32]));
        let want = format!(
            "set=1\npublic_key={}\nupdate_only=true\npreshared_key={}\n\n",
            "ab".repeat(32),
            "01".repeat(32)
        );
        assert_eq!(*r, want);
    }

    #[test]
    fn parse_get_finds_the_peer() {
        let r = reply_with(&[([1; 32], [2; 32]), ([3; 32], [4; 32])]);
        let got = parse_get(r.as_bytes(), &[3; 32]).unwrap().unwrap();
        assert_eq!(got.expose(), &[4; 32]);
        assert!(parse_get(r.as_bytes(), &[9; 32]).unwrap().is_none());
        // A peer without a PSK line counts as "exists, no PSK".
        let r = format!("public_key={}\nerrno=0\n\n", hex(&[7; 32]));
        assert_eq!(
            parse_get(r.as_bytes(), &[7; 32]).unwrap().unwrap().expose(),
            &[0; 32]
        );
    }

    #[test]
    fn parse_get_rejects_garbage_without_quoting_keys() {
        let bad = [
            "public_key=zz\nerrno=0\n\n".to_string(),
            "errno=-22\n\n".to_string(),
            "listen_port=1\n\n".to_string(),
            format!("public_key={}\nnonsense\nerrno=0\n\n", hex(&[1; 32])),
            format!(
                "public_key={}\npreshared_key={}\nerrno=0\n\n",
                hex(&[1; 32]),
                &hex(&[0x5a; 32])[..63]
            ),
        ];
        for b in &bad {
            let e = parse_get(b.as_bytes(), &[1; 32]).unwrap_err();
            let s = format!("{e} {e:?}");
            assert!(!s.contains("5a5a") && !s.contains("0101"), "{s}");
        }
        assert_eq!(errno_of(b"errno=-22\n\n").unwrap(), -22);
        assert!(parse_get(&[0xff, b'\n', b'\n'], &[1; 32]).is_err());
    }

    /// RFC 7748 §6.1: Alice's private key and X25519(a, 9).
    const ALICE_PRIVATE: &str = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
    const ALICE_PUBLIC: &str = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";

    fn alice_reply() -> String {
        format!(
            "private_key={ALICE_PRIVATE}\nlisten_port=51820\npublic_key={}\n\
             preshared_key={}\nerrno=0\n\n",
            hex(&[1; 32]),
            hex(&[2; 32])
        )
    }

    #[test]
    fn private_key_gives_rfc7748_public_key() {
        let r = alice_reply();
        let k = parse_private_key(r.as_bytes()).unwrap().unwrap();
        assert_eq!(hex(&k), ALICE_PRIVATE);
        assert_eq!(hex(&public_from_private(&k)), ALICE_PUBLIC);
    }

    fn unhex(s: &str) -> [u8; 32] {
        let v: Vec<u8> = (0..64)
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect();
        v.try_into().unwrap()
    }

    /// RFC 7748 §6.1, Bob's key pair (and the shared secret, to pin the
    /// crate's scalar multiplication on both keys).
    #[test]
    fn rfc7748_bob_public_key() {
        let bob = Zeroizing::new(unhex(
            "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
        ));
        let bob_public = public_from_private(&bob);
        assert_eq!(
            hex(&bob_public),
            "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
        );
        let shared = MontgomeryPoint(bob_public).mul_clamped(unhex(ALICE_PRIVATE));
        assert_eq!(
            hex(&shared.to_bytes()),
            "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
        );
    }

    /// RFC 7748 §5.2: X25519(k, u) for two (k, u), then the iterated test
    /// after 1 and 1000 rounds (k ← X25519(k, u), u ← old k, from k = u = 9).
    /// `public_from_private` is the base-point case of the same function.
    #[test]
    fn rfc7748_scalar_multiplication() {
        let cases = [
            (
                "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
                "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
                "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
            ),
            (
                "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
                "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
                "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
            ),
        ];
        for (k, u, want) in cases {
            let got = MontgomeryPoint(unhex(u)).mul_clamped(unhex(k));
            assert_eq!(hex(&got.to_bytes()), want);
        }
        let mut nine = [0u8; 32];
        nine[0] = 9;
        let (mut k, mut u) = (nine, nine);
        for round in 1..=1000 {
            let next = MontgomeryPoint(u).mul_clamped(k).to_bytes();
            u = k;
            k = next;
            if round == 1 {
                assert_eq!(
                    hex(&k),
                    "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079"
                );
            }
        }
        assert_eq!(
            hex(&k),
            "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51"
        );
        assert_eq!(
            public_from_private(&Zeroizing::new(unhex(ALICE_PRIVATE))),
            MontgomeryPoint(nine)
                .mul_clamped(unhex(ALICE_PRIVATE))
                .to_bytes()
        );
    }

    #[test]
    fn private_key_absent_zero_or_bad() {
        // No key, a zero key, or a "private_key" only among the peers: none.
        let none = [
            "listen_port=1\nerrno=0\n\n".to_string(),
            format!("private_key={}\nerrno=0\n\n", hex(&[0; 32])),
            format!(
                "public_key={}\nprivate_key={ALICE_PRIVATE}\nerrno=0\n\n",
                hex(&[1; 32])
            ),
        ];
        for r in &none {
            assert!(parse_private_key(r.as_bytes()).unwrap().is_none(), "{r}");
        }
        let bad = [
            format!("private_key={}\nerrno=0\n\n", &ALICE_PRIVATE[..63]),
            format!("private_key={ALICE_PRIVATE}\nprivate_key={ALICE_PRIVATE}\nerrno=0\n\n"),
            format!("private_key={ALICE_PRIVATE}\nerrno=-5\n\n"),
            "private_key\nerrno=0\n\n".to_string(),
        ];
        for r in &bad {
            let e = parse_private_key(r.as_bytes()).unwrap_err();
            let s = format!("{e} {e:?}");
            assert!(
                !s.contains("77076d0a") && !s.contains(&ALICE_PRIVATE[..20]),
                "{s}"
            );
        }
    }

    /// A one-shot fake wireguard-go: answers each connection with the next
    /// canned reply and hands back what it was sent.
    pub(super) fn fake(
        dir: &Path,
        ifname: &str,
        replies: Vec<String>,
    ) -> thread::JoinHandle<Vec<String>> {
        let l = UnixListener::bind(dir.join(format!("{ifname}.sock"))).unwrap();
        thread::spawn(move || {
            let mut seen = Vec::new();
            for r in replies {
                let (mut c, _) = l.accept().unwrap();
                let mut req = Vec::new();
                let mut b = [0u8; 1];
                while !req.ends_with(b"\n\n") && c.read(&mut b).unwrap() == 1 {
                    req.push(b[0]);
                }
                seen.push(String::from_utf8(req).unwrap());
                c.write_all(r.as_bytes()).unwrap();
            }
            seen
        })
    }

    fn peer(ifname: &str) -> WgPeer {
        WgPeer {
            interface: ifname.into(),
            public_key: [1; 32],
        }
    }

    #[test]
    fn set_psk_gets_sets_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let psk = Psk::from_bytes([0x42; 32]);
        let srv = fake(
            dir.path(),
            "wgt0",
            vec![
                reply_with(&[([1; 32], [0; 32])]),
                "errno=0\n\n".into(),
                reply_with(&[([1; 32], [0x42; 32])]),
            ],
        );
        let mut u = Uapi::new(dir.path());
        u.set_psk(&peer("wgt0"), &psk).unwrap();
        let seen = srv.join().unwrap();
        assert_eq!(seen[0], "get=1\n\n");
        assert_eq!(seen[1], *set_request(&[1; 32], &psk));
        assert_eq!(seen[2], "get=1\n\n");
    }

    #[test]
    fn remove_peer_removes_reads_back_and_never_creates() {
        let dir = tempfile::tempdir().unwrap();
        let srv = fake(
            dir.path(),
            "wgt2",
            vec![
                reply_with(&[([1; 32], [0x42; 32])]),
                "errno=0\n\n".into(),
                reply_with(&[]),
            ],
        );
        let mut u = Uapi::new(dir.path());
        u.remove_peer(&peer("wgt2")).unwrap();
        let seen = srv.join().unwrap();
        let hex1 = "01".repeat(32);
        assert_eq!(
            seen,
            [
                "get=1\n\n".to_string(),
                format!("set=1\npublic_key={hex1}\nupdate_only=true\nremove=true\n\n"),
                "get=1\n\n".to_string(),
            ]
        );
        // Already gone: one read, nothing written.
        let srv = fake(dir.path(), "wgt3", vec![reply_with(&[])]);
        u.remove_peer(&peer("wgt3")).unwrap();
        assert_eq!(srv.join().unwrap(), ["get=1\n\n".to_string()]);
    }

    #[test]
    fn set_psk_refuses_missing_peer_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let srv = fake(dir.path(), "wgt1", vec![reply_with(&[([3; 32], [0; 32])])]);
        let mut u = Uapi::new(dir.path());
        let e = u.set_psk(&peer("wgt1"), &Psk::from_bytes([5; 32]));
        assert_eq!(e, Err(WgError::NoSuchPeer));
        assert_eq!(srv.join().unwrap(), vec!["get=1\n\n".to_string()]);
    }

    #[test]
    fn read_back_mismatch_and_set_errno_fail() {
        let dir = tempfile::tempdir().unwrap();
        let srv = fake(
            dir.path(),
            "wgt2",
            vec![
                reply_with(&[([1; 32], [0; 32])]),
                "errno=0\n\n".into(),
                reply_with(&[([1; 32], [0x43; 32])]),
                reply_with(&[([1; 32], [0; 32])]),
                "errno=-22\n\n".into(),
            ],
        );
        let mut u = Uapi::new(dir.path());
        let psk = Psk::from_bytes([0x42; 32]);
        assert_eq!(u.set_psk(&peer("wgt2"), &psk), Err(WgError::Mismatch));
        let e = u.set_psk(&peer("wgt2"), &psk).unwrap_err();
        assert_eq!(e, WgError::Protocol("set refused: errno=-22".into()));
        srv.join().unwrap();
    }

    #[test]
    fn public_key_derives_from_the_private_key() {
        let dir = tempfile::tempdir().unwrap();
        let srv = fake(
            dir.path(),
            "wgt3",
            vec![
                alice_reply(),
                reply_with(&[]).replace(&hex(&[0xee; 32]), &hex(&[0; 32])),
                "listen_port=1\nerrno=0\n\n".into(),
            ],
        );
        let mut u = Uapi::new(dir.path());
        assert_eq!(hex(&u.public_key("wgt3").unwrap()), ALICE_PUBLIC);
        for _ in 0..2 {
            let e = u.public_key("wgt3").unwrap_err();
            assert_eq!(e, WgError::Protocol("interface has no private key".into()));
        }
        assert_eq!(srv.join().unwrap(), vec!["get=1\n\n".to_string(); 3]);
        assert_eq!(u.public_key("nope1"), Err(WgError::NoSuchInterface));
        assert!(matches!(u.public_key("a/b"), Err(WgError::Protocol(_))));
    }

    #[test]
    fn a_link_local_endpoint_with_a_named_zone_parses() {
        let a = endpoint("[fe80::1%lo]:51820").unwrap();
        let std::net::SocketAddr::V6(v6) = a else {
            panic!("{a}")
        };
        assert_eq!(v6.port(), 51820);
        assert_ne!(v6.scope_id(), 0);
        assert_eq!(endpoint("[fe80::1%2]:7").unwrap().port(), 7);
        assert_eq!(
            endpoint("192.0.2.2:51820"),
            Some("192.0.2.2:51820".parse().unwrap())
        );
        assert!(endpoint("[fe80::1%no_such_if0]:1").is_none());
        assert!(endpoint("[fe80::1%lo]").is_none());
    }

    #[test]
    fn missing_socket_is_no_such_interface_and_silence_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let mut u = Uapi::with_timeout(dir.path(), Duration::from_millis(200));
        assert_eq!(u.get_psk(&peer("nope0")), Err(WgError::NoSuchInterface));
        assert!(matches!(
            u.get_psk(&peer("../x")),
            Err(WgError::Protocol(_))
        ));
        // A server that accepts and never answers.
        let l = UnixListener::bind(dir.path().join("mute0.sock")).unwrap();
        let t = thread::spawn(move || {
            let c = l.accept().unwrap();
            thread::sleep(Duration::from_millis(800));
            drop(c);
        });
        let e = u.get_psk(&peer("mute0")).unwrap_err();
        assert!(
            matches!(&e, WgError::Io(m) if m.contains("timed out")),
            "{e}"
        );
        // Then it rests: the next request fails at once, not after another
        // timeout (the parent's loop waits meanwhile).
        let t0 = Instant::now();
        let e = u.get_psk(&peer("mute0")).unwrap_err();
        assert!(t0.elapsed() < Duration::from_millis(100), "{e}");
        assert!(
            matches!(&e, WgError::Io(m) if m.contains("not asked again")),
            "{e}"
        );
        t.join().unwrap();
    }

    /// A server that accepts nothing and whose queue is full: connect(2)
    /// alone would wait for ever.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_full_accept_queue_times_out() {
        use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("full0.sock");
        let l = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::empty(),
            None,
        )
        .unwrap();
        socket::bind(
            std::os::fd::AsRawFd::as_raw_fd(&l),
            &UnixAddr::new(&path).unwrap(),
        )
        .unwrap();
        socket::listen(&l, Backlog::new(0).unwrap()).unwrap();
        // Fills the queue (a backlog of 0 holds one).
        let _queued = UnixStream::connect(&path).unwrap();
        let mut u = Uapi::with_timeout(dir.path(), Duration::from_millis(300));
        let t0 = Instant::now();
        let e = u.get_psk(&peer("full0")).unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(2), "{e}");
        assert!(
            matches!(&e, WgError::Io(m) if m.contains("timed out")),
            "{e}"
        );
    }
}

#[cfg(test)]
mod new_session_tests {
    use super::tests::{fake, hex, reply_with};
    use super::*;

    #[test]
    fn handshake_time_of_the_wanted_peer_only() {
        let r = full_reply(0);
        let t = parse_handshake(r.as_bytes(), &[1; 32]).unwrap().unwrap();
        assert_eq!(
            t,
            Some(std::time::UNIX_EPOCH + Duration::new(1, 2)),
            "peer 1's time"
        );
        // Peer 2 lists no time: it never handshook.
        assert_eq!(parse_handshake(r.as_bytes(), &[2; 32]).unwrap(), Some(None));
        assert_eq!(parse_handshake(r.as_bytes(), &[3; 32]).unwrap(), None);
        let bad = r.replace(
            "last_handshake_time_nsec=2",
            "last_handshake_time_nsec=1000000000",
        );
        assert!(parse_handshake(bad.as_bytes(), &[1; 32]).is_err());
        let bad = r.replace("last_handshake_time_sec=1", "last_handshake_time_sec=x");
        assert!(parse_handshake(bad.as_bytes(), &[1; 32]).is_err());
    }

    fn full_reply(keepalive: u16) -> String {
        let mut r = format!("private_key={}\nlisten_port=51820\n", hex(&[0xee; 32]));
        r += &format!(
            "public_key={}\npreshared_key={}\nprotocol_version=1\nendpoint=192.0.2.2:51820\n\
             last_handshake_time_sec=1\nlast_handshake_time_nsec=2\ntx_bytes=3\nrx_bytes=4\n\
             persistent_keepalive_interval={keepalive}\nallowed_ip=10.99.0.2/32\nallowed_ip=fd00::/64\n",
            hex(&[1; 32]),
            hex(&[0x42; 32])
        );
        r + &format!(
            "public_key={}\nendpoint=[2001:db8::1]:7\nallowed_ip=10.0.0.0/8\n",
            hex(&[2; 32])
        ) + "errno=0\n\n"
    }

    #[test]
    fn parse_peer_reads_only_the_wanted_peer() {
        let c = parse_peer(full_reply(0).as_bytes(), &[1; 32])
            .unwrap()
            .unwrap();
        assert_eq!(c.psk.expose(), &[0x42; 32]);
        assert_eq!(c.endpoint, Some("192.0.2.2:51820".parse().unwrap()));
        assert_eq!(
            c.allowed_ips,
            vec![
                ("10.99.0.2".parse().unwrap(), 32),
                ("fd00::".parse().unwrap(), 64)
            ]
        );
        assert_eq!(c.keepalive, 0);
        let other = parse_peer(full_reply(0).as_bytes(), &[2; 32])
            .unwrap()
            .unwrap();
        assert_eq!(other.endpoint, Some("[2001:db8::1]:7".parse().unwrap()));
        assert!(
            parse_peer(full_reply(0).as_bytes(), &[3; 32])
                .unwrap()
                .is_none()
        );
        let bad = full_reply(0).replace("10.99.0.2/32", "10.99.0.2/33");
        assert!(parse_peer(bad.as_bytes(), &[1; 32]).is_err());
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("42424242") && dbg.contains("hidden"), "{dbg}");
    }

    /// The peer's own keepalive comes back in the same set: no second
    /// request that could fail and leave ours.
    #[test]
    fn new_session_removes_re_adds_and_restores_keepalive_in_one_set() {
        let dir = tempfile::tempdir().unwrap();
        let srv = fake(
            dir.path(),
            "wgt9",
            vec![full_reply(0), "errno=0\n\n".into(), full_reply(0)],
        );
        let mut u = Uapi::with_timeout(dir.path(), Duration::from_secs(2));
        let p = WgPeer {
            interface: "wgt9".into(),
            public_key: [1; 32],
        };
        let got = u.new_session(&p, 25).unwrap();
        assert_eq!(got.keepalive, 0);
        let seen = srv.join().unwrap();
        let pk = hex(&[1; 32]);
        assert_eq!(seen[0], "get=1\n\n");
        assert_eq!(
            seen[1],
            format!(
                "set=1\npublic_key={pk}\nupdate_only=true\nremove=true\npublic_key={pk}\n\
                 preshared_key={}\nendpoint=192.0.2.2:51820\npersistent_keepalive_interval=25\n\
                 replace_allowed_ips=true\nallowed_ip=10.99.0.2/32\nallowed_ip=fd00::/64\n\
                 public_key={pk}\nupdate_only=true\npersistent_keepalive_interval=0\n\n",
                hex(&[0x42; 32])
            )
        );
        assert_eq!(seen[2], "get=1\n\n");
        assert_eq!(seen.len(), 3);
    }

    /// Long lines everywhere: the request fits the room reserved before the
    /// PSK went in (the debug assertion in recreate_request).
    #[test]
    fn recreate_request_fits_its_room() {
        let mut c = parse_peer(full_reply(0).as_bytes(), &[1; 32])
            .unwrap()
            .unwrap();
        c.endpoint = Some(
            "[fe80::1234:5678:9abc:def0%4294967295]:65535"
                .parse()
                .unwrap(),
        );
        c.allowed_ips = (0..300u16)
            .map(|i| {
                let ip = std::net::Ipv6Addr::new(
                    0xfd00, i, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff,
                );
                (std::net::IpAddr::V6(ip), 128)
            })
            .collect();
        let r = recreate_request(&[1; 32], &c, 25, Server::WireguardGo);
        assert_eq!(r.matches("allowed_ip=").count(), 300);
    }

    #[test]
    fn new_session_keeps_an_own_keepalive_and_never_creates_an_absent_peer() {
        let dir = tempfile::tempdir().unwrap();
        let srv = fake(
            dir.path(),
            "wgt8",
            vec![full_reply(15), "errno=0\n\n".into(), full_reply(15)],
        );
        let mut u = Uapi::with_timeout(dir.path(), Duration::from_secs(2));
        let p = WgPeer {
            interface: "wgt8".into(),
            public_key: [1; 32],
        };
        u.new_session(&p, 25).unwrap();
        let seen = srv.join().unwrap();
        assert_eq!(seen.len(), 3);
        assert!(seen[1].contains("persistent_keepalive_interval=15\n"));
        // Absent: one get, nothing written.
        let dir = tempfile::tempdir().unwrap();
        let srv = fake(dir.path(), "wgt7", vec![reply_with(&[([2; 32], [0; 32])])]);
        let mut u = Uapi::with_timeout(dir.path(), Duration::from_secs(2));
        let p = WgPeer {
            interface: "wgt7".into(),
            public_key: [1; 32],
        };
        assert_eq!(u.new_session(&p, 25).unwrap_err(), WgError::NoSuchPeer);
        assert_eq!(srv.join().unwrap(), vec!["get=1\n\n".to_string()]);
        // A read-back that differs (here the endpoint) is an error.
        let dir = tempfile::tempdir().unwrap();
        let moved = full_reply(15).replace("192.0.2.2:51820", "192.0.2.9:51820");
        let srv = fake(
            dir.path(),
            "wgt6",
            vec![full_reply(15), "errno=0\n\n".into(), moved],
        );
        let mut u = Uapi::with_timeout(dir.path(), Duration::from_secs(2));
        let p = WgPeer {
            interface: "wgt6".into(),
            public_key: [1; 32],
        };
        let e = u.new_session(&p, 25).unwrap_err();
        assert!(!format!("{e}").contains("4242"), "{e}");
        assert_eq!(srv.join().unwrap().len(), 3);
    }
}
