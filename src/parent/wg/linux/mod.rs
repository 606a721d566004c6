//! `linux` WireGuard backend (DESIGN §5), run by the privileged parent:
//! generic netlink to the kernel's "wireguard" family. It touches only an
//! existing peer: its PSK (WG_CMD_SET_DEVICE with WGPEER_F_UPDATE_ONLY,
//! read back with a WG_CMD_GET_DEVICE dump), or the whole peer removed and
//! added back as it was for a new session (`peer.rs`). The same dump gives
//! the interface's own public key (WGDEVICE_A_PUBLIC_KEY).
//!
//! Messages are built by hand in byte buffers (host byte order, attributes
//! padded to 4): the builders and parsers are pure and tested with golden
//! bytes on every platform; only the socket is Linux-only. Buffers that
//! hold a key — a set request, any get reply (it carries the interface's
//! private key) — are zeroized.

use zeroize::Zeroizing;

mod peer;

use super::{PeerConfig, WgBackend, WgError, WgPeer, check_ifname, verify, verify_recreated};
use crate::secret::Psk;
use peer::{recreate_request, scan_peer};

pub const NETLINK_GENERIC: i32 = 16;
pub const GENL_ID_CTRL: u16 = 0x10;
pub const CTRL_CMD_GETFAMILY: u8 = 3;
pub const CTRL_ATTR_FAMILY_ID: u16 = 1;
pub const CTRL_ATTR_FAMILY_NAME: u16 = 2;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_MULTI: u16 = 0x2;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLA_F_NESTED: u16 = 0x8000;
/// A dump the kernel's state changed under (netlink.h).
const NLM_F_DUMP_INTR: u16 = 0x10;
/// Dumps of an interface taken before one that nothing changed under.
const DUMP_TRIES: usize = 3;
const NLA_TYPE_MASK: u16 = !(0x8000 | 0x4000);

pub const WG_GENL_NAME: &str = "wireguard";
pub const WG_GENL_VERSION: u8 = 1;
pub const WG_CMD_GET_DEVICE: u8 = 0;
pub const WG_CMD_SET_DEVICE: u8 = 1;
pub const WGDEVICE_A_IFNAME: u16 = 2;
pub const WGDEVICE_A_PUBLIC_KEY: u16 = 4;
pub const WGDEVICE_A_PEERS: u16 = 8;
pub const WGPEER_A_PUBLIC_KEY: u16 = 1;
pub const WGPEER_A_PRESHARED_KEY: u16 = 2;
pub const WGPEER_A_FLAGS: u16 = 3;
pub const WGPEER_F_REMOVE_ME: u32 = 1 << 0;
pub const WGPEER_F_UPDATE_ONLY: u32 = 1 << 2;

const NLMSG_HDRLEN: usize = 16;
pub(crate) const GENL_HDRLEN: usize = 4;

/// A netlink message under construction: header, a 4-byte family header
/// (generic netlink's cmd/version here, nfnetlink's nfgenmsg for the
/// nftables dead-man switch), attributes. The buffer is zeroized when
/// dropped.
pub(crate) struct Msg {
    buf: Zeroizing<Vec<u8>>,
    nests: Vec<usize>,
}

impl Msg {
    pub(crate) fn new(ty: u16, flags: u16, seq: u32, pid: u32, cmd: u8, version: u8) -> Msg {
        Msg::with_header(ty, flags, seq, pid, [cmd, version, 0, 0])
    }

    pub(crate) fn with_header(ty: u16, flags: u16, seq: u32, pid: u32, head: [u8; 4]) -> Msg {
        let mut buf = Zeroizing::new(Vec::with_capacity(256));
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by finish
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&pid.to_ne_bytes());
        buf.extend_from_slice(&head);
        Msg {
            buf,
            nests: Vec::new(),
        }
    }

    /// Room for `more` bytes, before a key is written: growing the buffer
    /// later would leave a copy of the key in freed memory.
    pub(crate) fn reserve(&mut self, more: usize) -> &mut Msg {
        self.buf.reserve(more);
        self
    }

    /// An attribute; its length must fit the u16 netlink gives it (the
    /// callers split what could not: `copy::KEYS_A_MESSAGE`).
    pub(crate) fn attr(&mut self, ty: u16, data: &[u8]) -> &mut Msg {
        debug_assert!(
            4 + data.len() <= usize::from(u16::MAX),
            "attribute too long"
        );
        let len = (4 + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
        self
    }

    pub(crate) fn nest(&mut self, ty: u16) -> &mut Msg {
        self.nests.push(self.buf.len());
        self.attr(ty | NLA_F_NESTED, &[])
    }

    pub(crate) fn end(&mut self) -> &mut Msg {
        let at = self.nests.pop().expect("end() after nest()");
        debug_assert!(
            self.buf.len() - at <= usize::from(u16::MAX),
            "nest too long"
        );
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    pub(crate) fn finish(mut self) -> Zeroizing<Vec<u8>> {
        let len = self.buf.len() as u32;
        self.buf[..4].copy_from_slice(&len.to_ne_bytes());
        std::mem::take(&mut self.buf)
    }
}

/// A NUL-terminated string attribute value.
pub(crate) fn c_name(name: &str) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.push(0);
    v
}

/// CTRL_CMD_GETFAMILY for "wireguard".
pub fn get_family_request(seq: u32, pid: u32) -> Zeroizing<Vec<u8>> {
    let mut m = Msg::new(GENL_ID_CTRL, NLM_F_REQUEST, seq, pid, CTRL_CMD_GETFAMILY, 1);
    m.attr(CTRL_ATTR_FAMILY_NAME, &c_name(WG_GENL_NAME));
    m.finish()
}

/// WG_CMD_SET_DEVICE about one peer, acknowledged: its public key, then
/// `attrs` in order (the set requests below, `peer.rs`'s keepalive).
pub(crate) fn one_peer_request(
    family: u16,
    seq: u32,
    pid: u32,
    ifname: &str,
    public_key: &[u8; 32],
    attrs: &[(u16, &[u8])],
) -> Zeroizing<Vec<u8>> {
    let flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut m = Msg::new(family, flags, seq, pid, WG_CMD_SET_DEVICE, WG_GENL_VERSION);
    m.attr(WGDEVICE_A_IFNAME, &c_name(ifname));
    m.nest(WGDEVICE_A_PEERS).nest(0);
    m.attr(WGPEER_A_PUBLIC_KEY, public_key);
    for (ty, data) in attrs {
        m.attr(*ty, data);
    }
    m.end().end();
    m.finish()
}

/// WG_CMD_SET_DEVICE setting one peer's PSK, update-only, acknowledged.
pub fn set_psk_request(
    family: u16,
    seq: u32,
    pid: u32,
    ifname: &str,
    public_key: &[u8; 32],
    psk: &Psk,
) -> Zeroizing<Vec<u8>> {
    let only = WGPEER_F_UPDATE_ONLY.to_ne_bytes();
    let attrs = [
        (WGPEER_A_PRESHARED_KEY, &psk.expose()[..]),
        (WGPEER_A_FLAGS, &only[..]),
    ];
    one_peer_request(family, seq, pid, ifname, public_key, &attrs)
}

/// WG_CMD_SET_DEVICE removing one peer, acknowledged. The kernel skips a
/// peer that does not exist and answers 0 (ENODEV means no interface);
/// it never creates one here. `remove_peer` reads back either way.
pub fn remove_peer_request(
    family: u16,
    seq: u32,
    pid: u32,
    ifname: &str,
    public_key: &[u8; 32],
) -> Zeroizing<Vec<u8>> {
    let remove = WGPEER_F_REMOVE_ME.to_ne_bytes();
    let attrs = [(WGPEER_A_FLAGS, &remove[..])];
    one_peer_request(family, seq, pid, ifname, public_key, &attrs)
}

/// WG_CMD_GET_DEVICE dump of one interface.
pub fn get_device_request(family: u16, seq: u32, pid: u32, ifname: &str) -> Zeroizing<Vec<u8>> {
    let flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut m = Msg::new(family, flags, seq, pid, WG_CMD_GET_DEVICE, WG_GENL_VERSION);
    m.attr(WGDEVICE_A_IFNAME, &c_name(ifname));
    m.finish()
}

/// One received netlink message.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct NlMsg<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub payload: &'a [u8],
}

/// The header and the payload's length only: a payload can hold a PSK (a
/// set request) or the interface's private key (any get reply).
impl std::fmt::Debug for NlMsg<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NlMsg")
            .field("ty", &self.ty)
            .field("flags", &self.flags)
            .field("seq", &self.seq)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Splits a datagram into netlink messages, checking every length.
pub fn messages(mut b: &[u8]) -> Result<Vec<NlMsg<'_>>, WgError> {
    let mut out = Vec::new();
    while !b.is_empty() {
        if b.len() < NLMSG_HDRLEN {
            return Err(WgError::Protocol("netlink: short message header".into()));
        }
        let len = u32_at(b, 0) as usize;
        if len < NLMSG_HDRLEN || len > b.len() {
            return Err(WgError::Protocol("netlink: bad message length".into()));
        }
        out.push(NlMsg {
            ty: u16_at(b, 4),
            flags: u16_at(b, 6),
            seq: u32_at(b, 8),
            payload: &b[NLMSG_HDRLEN..len],
        });
        b = &b[align4(len).min(b.len())..];
    }
    Ok(out)
}

/// Splits attributes: (type without the nested/byte-order bits, data).
pub fn attrs(mut b: &[u8]) -> Result<Vec<(u16, &[u8])>, WgError> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16_at(b, 0) as usize;
        if len < 4 || len > b.len() {
            return Err(WgError::Protocol("netlink: bad attribute length".into()));
        }
        out.push((u16_at(b, 2) & NLA_TYPE_MASK, &b[4..len]));
        b = &b[align4(len).min(b.len())..];
    }
    Ok(out)
}

/// The errno of an NLMSG_ERROR or NLMSG_DONE payload (0 = success/ack).
pub fn errno_of(payload: &[u8]) -> Result<i32, WgError> {
    let raw = payload
        .get(..4)
        .ok_or_else(|| WgError::Protocol("netlink: short error message".into()))?;
    Ok(i32::from_ne_bytes(raw.try_into().expect("4 bytes")))
}

/// What a negative errno from the wireguard family means to us.
pub fn map_errno(what: &str, errno: i32) -> WgError {
    match -errno {
        libc::ENOENT if what == "GETFAMILY" => WgError::Io(
            "no \"wireguard\" generic netlink family (kernel module not loaded?)".into(),
        ),
        libc::ENODEV => WgError::NoSuchInterface,
        libc::EOPNOTSUPP => WgError::Protocol(format!("{what}: not a WireGuard interface")),
        e => WgError::Io(format!("{what}: {}", std::io::Error::from_raw_os_error(e))),
    }
}

/// CTRL_ATTR_FAMILY_ID from a GETFAMILY reply payload.
pub fn parse_family(payload: &[u8]) -> Result<u16, WgError> {
    let body = payload
        .get(GENL_HDRLEN..)
        .ok_or_else(|| WgError::Protocol("netlink: short generic header".into()))?;
    attrs(body)?
        .into_iter()
        .find(|(t, d)| *t == CTRL_ATTR_FAMILY_ID && d.len() == 2)
        .map(|(_, d)| u16_at(d, 0))
        .ok_or_else(|| WgError::Protocol("netlink: family reply without an id".into()))
}

/// Calls `each` with the attributes of every entry for `want` among the
/// peers of one WG_CMD_GET_DEVICE message (a peer with many allowed IPs
/// comes in several messages, each repeating its public key).
pub(crate) fn for_peer(
    payload: &[u8],
    want: &[u8; 32],
    mut each: impl FnMut(&[(u16, &[u8])]) -> Result<(), WgError>,
) -> Result<(), WgError> {
    let body = payload
        .get(GENL_HDRLEN..)
        .ok_or_else(|| WgError::Protocol("netlink: short generic header".into()))?;
    for (t, peers) in attrs(body)? {
        if t != WGDEVICE_A_PEERS {
            continue;
        }
        for (_, peer) in attrs(peers)? {
            let a = attrs(peer)?;
            let key = a
                .iter()
                .find(|(t, d)| *t == WGPEER_A_PUBLIC_KEY && d.len() == 32);
            if key.is_some_and(|(_, d)| *d == want) {
                each(&a)?;
            }
        }
    }
    Ok(())
}

/// Folds one WG_CMD_GET_DEVICE message into `found`: the PSK of `want`
/// (all zero if the kernel sends none). A peer split over several messages
/// repeats only its public key and allowed IPs, so a later fragment without
/// a PSK does not overwrite the first.
pub fn scan_device(
    payload: &[u8],
    want: &[u8; 32],
    found: &mut Option<Psk>,
) -> Result<(), WgError> {
    for_peer(payload, want, |a| {
        let psk = a
            .iter()
            .find(|(t, d)| *t == WGPEER_A_PRESHARED_KEY && d.len() == 32);
        match psk {
            Some((_, d)) => {
                let mut k = Zeroizing::new([0u8; 32]);
                k.copy_from_slice(d);
                *found = Some(Psk::from_bytes(*k));
            }
            None if found.is_none() => *found = Some(Psk::from_bytes([0; 32])),
            None => {}
        }
        Ok(())
    })
}

/// Folds one WG_CMD_GET_DEVICE message into `found`: the interface's own
/// WGDEVICE_A_PUBLIC_KEY. The kernel sends it (with the private key) only
/// in the first message of a dump and only when the interface has a
/// private key; the private key attribute is not looked at.
pub fn scan_public_key(payload: &[u8], found: &mut Option<[u8; 32]>) -> Result<(), WgError> {
    let body = payload
        .get(GENL_HDRLEN..)
        .ok_or_else(|| WgError::Protocol("netlink: short generic header".into()))?;
    for (t, d) in attrs(body)? {
        if t != WGDEVICE_A_PUBLIC_KEY {
            continue;
        }
        let key: [u8; 32] = d
            .try_into()
            .map_err(|_| WgError::Protocol("netlink: device public key not 32 bytes".into()))?;
        if found.is_some_and(|f| f != key) {
            return Err(WgError::Protocol(
                "netlink: two device public keys in one dump".into(),
            ));
        }
        *found = Some(key);
    }
    Ok(())
}

/// The `linux` backend. Each operation opens its own netlink socket and
/// resolves the family id again (it changes when the module reloads).
#[derive(Debug, Default)]
pub struct Linux {
    seq: u32,
}

impl Linux {
    pub fn new() -> Linux {
        Linux { seq: 0 }
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends `req` and feeds each data message to `each` until the answer
    /// is complete (ack, error, DONE, or a single non-multi message).
    fn transact(
        &self,
        nl: &sys::Nl,
        what: &str,
        req: &[u8],
        seq: u32,
        mut each: impl FnMut(&[u8]) -> Result<(), WgError>,
    ) -> Result<(), WgError> {
        self.transact_flags(nl, what, req, seq, |_, p| each(p))
    }

    /// [`Linux::transact`], with each data message's netlink flags.
    fn transact_flags(
        &self,
        nl: &sys::Nl,
        what: &str,
        req: &[u8],
        seq: u32,
        mut each: impl FnMut(u16, &[u8]) -> Result<(), WgError>,
    ) -> Result<(), WgError> {
        nl.send(req)?;
        let mut buf = Zeroizing::new(vec![0u8; 64 * 1024]);
        loop {
            let n = nl.recv(&mut buf)?;
            for m in messages(&buf[..n])? {
                if m.seq != seq {
                    continue;
                }
                match m.ty {
                    NLMSG_ERROR | NLMSG_DONE => {
                        return match errno_of(m.payload)? {
                            0 => Ok(()),
                            e => Err(map_errno(what, e)),
                        };
                    }
                    _ => each(m.flags, m.payload)?,
                }
                if m.flags & NLM_F_MULTI == 0 && req_wants_single(req) {
                    return Ok(());
                }
            }
        }
    }

    fn family(&mut self, nl: &sys::Nl) -> Result<u16, WgError> {
        let seq = self.next_seq();
        let mut id = None;
        let r = self.transact(
            nl,
            "GETFAMILY",
            &get_family_request(seq, nl.pid),
            seq,
            |p| {
                id = Some(parse_family(p)?);
                Ok(())
            },
        );
        r?;
        id.ok_or_else(|| WgError::Protocol("GETFAMILY: no reply".into()))
    }

    /// One whole WG_CMD_GET_DEVICE dump of `ifname`, each message to
    /// `each`. A dump of many peers spans several messages; one that the
    /// interface changed under (the kernel marks it NLM_F_DUMP_INTR) may
    /// miss a peer or show one twice, so it is taken again, at most
    /// [`DUMP_TRIES`] times, and only a whole one is read.
    fn dump(
        &mut self,
        nl: &sys::Nl,
        family: u16,
        ifname: &str,
        mut each: impl FnMut(&[u8]) -> Result<(), WgError>,
    ) -> Result<(), WgError> {
        for _ in 0..DUMP_TRIES {
            let seq = self.next_seq();
            let req = get_device_request(family, seq, nl.pid, ifname);
            // Payloads hold PSKs: kept wiped-on-drop until read.
            let mut got: Vec<Zeroizing<Vec<u8>>> = Vec::new();
            let mut interrupted = false;
            let r = self.transact_flags(nl, "WG_CMD_GET_DEVICE", &req, seq, |flags, p| {
                interrupted |= flags & NLM_F_DUMP_INTR != 0;
                got.push(Zeroizing::new(p.to_vec()));
                Ok(())
            });
            r?;
            if !interrupted {
                return got.iter().try_for_each(|p| each(p));
            }
        }
        Err(WgError::Io(format!(
            "WG_CMD_GET_DEVICE {ifname}: the interface changed under {DUMP_TRIES} dumps"
        )))
    }

    fn get(&mut self, nl: &sys::Nl, family: u16, peer: &WgPeer) -> Result<Option<Psk>, WgError> {
        let mut found = None;
        self.dump(nl, family, &peer.interface, |p| {
            scan_device(p, &peer.public_key, &mut found)
        })?;
        Ok(found)
    }
}

/// GETFAMILY is answered by one plain message; dumps end with DONE and
/// acknowledged requests with an ACK.
fn req_wants_single(req: &[u8]) -> bool {
    let flags = u16_at(req, 6);
    flags & (NLM_F_DUMP | NLM_F_ACK) == 0
}

impl WgBackend for Linux {
    fn name(&self) -> &'static str {
        "linux"
    }

    fn set_psk(&mut self, peer: &WgPeer, psk: &Psk) -> Result<(), WgError> {
        check_ifname(&peer.interface)?;
        let nl = sys::Nl::open()?;
        let family = self.family(&nl)?;
        if self.get(&nl, family, peer)?.is_none() {
            return Err(WgError::NoSuchPeer);
        }
        let seq = self.next_seq();
        let req = set_psk_request(family, seq, nl.pid, &peer.interface, &peer.public_key, psk);
        self.transact(&nl, "WG_CMD_SET_DEVICE", &req, seq, |_| Ok(()))?;
        drop(req);
        verify(self.get(&nl, family, peer)?, psk)
    }

    fn get_psk(&mut self, peer: &WgPeer) -> Result<Psk, WgError> {
        check_ifname(&peer.interface)?;
        let nl = sys::Nl::open()?;
        let family = self.family(&nl)?;
        self.get(&nl, family, peer)?.ok_or(WgError::NoSuchPeer)
    }

    fn public_key(&mut self, interface: &str) -> Result<[u8; 32], WgError> {
        check_ifname(interface)?;
        let nl = sys::Nl::open()?;
        let family = self.family(&nl)?;
        let mut found = None;
        self.dump(&nl, family, interface, |p| scan_public_key(p, &mut found))?;
        found.ok_or_else(super::no_private_key)
    }

    fn remove_peer(&mut self, peer: &WgPeer) -> Result<(), WgError> {
        check_ifname(&peer.interface)?;
        let nl = sys::Nl::open()?;
        let family = self.family(&nl)?;
        if self.get(&nl, family, peer)?.is_none() {
            return Ok(());
        }
        let seq = self.next_seq();
        let req = remove_peer_request(family, seq, nl.pid, &peer.interface, &peer.public_key);
        self.transact(&nl, "WG_CMD_SET_DEVICE (remove)", &req, seq, |_| Ok(()))?;
        match self.get(&nl, family, peer)? {
            None => Ok(()),
            Some(_) => Err(WgError::Protocol("peer still there after remove".into())),
        }
    }

    fn new_session(&mut self, peer: &WgPeer, keepalive: u16) -> Result<PeerConfig, WgError> {
        check_ifname(&peer.interface)?;
        let nl = sys::Nl::open()?;
        let family = self.family(&nl)?;
        let read = |me: &mut Self| {
            let mut found = None;
            me.dump(&nl, family, &peer.interface, |p| {
                scan_peer(p, &peer.public_key, &mut found)
            })?;
            Ok::<_, WgError>(found)
        };
        // The read and the set are two calls: a peer removed by someone
        // else between them comes back (`peer.rs`). Our own removal waits
        // for the backend lock our caller holds, never between them.
        let before = read(self)?.ok_or(WgError::NoSuchPeer)?;
        // Refused before anything is removed: its allowed IPs would pass
        // the 64 KiB a netlink attribute's length can say (wg(8) splits
        // them over several requests; ours must be one, remove and add).
        if before.allowed_ips.len() > peer::RECREATE_MAX_ALLOWED_IPS {
            return Err(WgError::Protocol(format!(
                "the peer has {} allowed IPs, more than one request re-creates ({}): \
                 the new PSK is in force from WireGuard's next handshake \
                 (set new_session = false to leave it so)",
                before.allowed_ips.len(),
                peer::RECREATE_MAX_ALLOWED_IPS
            )));
        }
        let pka = if before.keepalive == 0 {
            keepalive
        } else {
            before.keepalive
        };
        let (pid, ifname, key) = (nl.pid, &peer.interface, &peer.public_key);
        let seq = self.next_seq();
        let req = recreate_request(family, seq, pid, ifname, key, &before, pka);
        self.transact(&nl, "WG_CMD_SET_DEVICE (re-create)", &req, seq, |_| Ok(()))?;
        drop(req);
        verify_recreated(&before, read(self)?)?;
        Ok(before)
    }

    fn last_handshake(&mut self, peer: &WgPeer) -> Result<Option<std::time::SystemTime>, WgError> {
        check_ifname(&peer.interface)?;
        let nl = sys::Nl::open()?;
        let family = self.family(&nl)?;
        let mut found = None;
        self.dump(&nl, family, &peer.interface, |p| {
            peer::scan_handshake(p, &peer.public_key, &mut found)
        })?;
        found.ok_or(WgError::NoSuchPeer)
    }
}

/// The netlink socket itself: the only Linux-only code here. Also used by
/// the nftables dead-man switch (`fw::nft::alive`), with NETLINK_NETFILTER.
#[cfg(target_os = "linux")]
pub(crate) mod sys {
    use std::io::Error;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use super::{NETLINK_GENERIC, WgError};

    /// Per read/write: the kernel answers at once or not at all.
    const TIMEOUT_SECS: libc::time_t = 2;

    pub struct Nl {
        fd: OwnedFd,
        /// The port id the kernel gave this socket.
        pub pid: u32,
    }

    fn io(what: &str) -> WgError {
        let e = Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) => WgError::Io(format!("netlink {what}: timed out")),
            _ => WgError::Io(format!("netlink {what}: {e}")),
        }
    }

    fn kernel_addr() -> libc::sockaddr_nl {
        // SAFETY: sockaddr_nl is plain data; all-zero is valid.
        let mut a: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        a.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        a
    }

    const ADDR_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_nl>() as _;

    impl Nl {
        pub fn open() -> Result<Nl, WgError> {
            Nl::open_protocol(NETLINK_GENERIC)
        }

        pub fn open_protocol(protocol: i32) -> Result<Nl, WgError> {
            let ty = libc::SOCK_RAW | libc::SOCK_CLOEXEC;
            // SAFETY: plain socket(2); the fd is owned at once.
            let fd = unsafe { libc::socket(libc::AF_NETLINK, ty, protocol) };
            if fd < 0 {
                return Err(io("socket"));
            }
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let tv = libc::timeval {
                tv_sec: TIMEOUT_SECS,
                tv_usec: 0,
            };
            let tv_len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
            for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
                let p = (&tv as *const libc::timeval).cast();
                // SAFETY: a timeval of the stated length.
                let r =
                    unsafe { libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, opt, p, tv_len) };
                if r < 0 {
                    return Err(io("setsockopt"));
                }
            }
            let mut a = kernel_addr();
            let p = (&a as *const libc::sockaddr_nl).cast();
            // SAFETY: binds to an all-zero sockaddr_nl: the kernel picks the port id.
            if unsafe { libc::bind(fd.as_raw_fd(), p, ADDR_LEN) } < 0 {
                return Err(io("bind"));
            }
            let mut len = ADDR_LEN;
            let p = (&mut a as *mut libc::sockaddr_nl).cast();
            // SAFETY: getsockname writes at most `len` bytes into `a`.
            if unsafe { libc::getsockname(fd.as_raw_fd(), p, &mut len) } < 0 {
                return Err(io("getsockname"));
            }
            Ok(Nl { fd, pid: a.nl_pid })
        }

        pub fn send(&self, req: &[u8]) -> Result<(), WgError> {
            let a = kernel_addr();
            let p = (&a as *const libc::sockaddr_nl).cast();
            // SAFETY: `req` is a valid buffer of its length; `a` a sockaddr_nl.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    req.as_ptr().cast(),
                    req.len(),
                    0,
                    p,
                    ADDR_LEN,
                )
            };
            if n < 0 {
                return Err(io("send"));
            }
            if n as usize != req.len() {
                return Err(WgError::Io("netlink send: short write".into()));
            }
            Ok(())
        }

        /// One datagram from the kernel (port id 0); anything else is dropped.
        pub fn recv(&self, buf: &mut [u8]) -> Result<usize, WgError> {
            self.recv_with(buf, 0)?
                .ok_or_else(|| WgError::Io("netlink recv: timed out".into()))
        }

        /// One datagram from the kernel (port id 0), with recvfrom `flags`
        /// besides MSG_TRUNC; None when none came (EAGAIN: nothing queued
        /// with MSG_DONTWAIT, the receive timeout otherwise). A datagram
        /// larger than `buf` is an error.
        fn recv_with(&self, buf: &mut [u8], flags: i32) -> Result<Option<usize>, WgError> {
            loop {
                let mut a = kernel_addr();
                let mut len = ADDR_LEN;
                let p = (&mut a as *mut libc::sockaddr_nl).cast();
                // SAFETY: `buf` is writable for its length; `a` for `len` bytes.
                let n = unsafe {
                    libc::recvfrom(
                        self.fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        flags | libc::MSG_TRUNC,
                        p,
                        &mut len,
                    )
                };
                if n < 0 {
                    match Error::last_os_error().raw_os_error() {
                        Some(libc::EINTR) => continue,
                        Some(libc::EAGAIN) => return Ok(None),
                        _ => return Err(io("recv")),
                    }
                }
                let n = n as usize;
                if n > buf.len() {
                    return Err(WgError::Protocol(format!(
                        "netlink datagram larger than {} bytes",
                        buf.len()
                    )));
                }
                if a.nl_pid == 0 {
                    return Ok(Some(n));
                }
            }
        }

        /// Raises the send buffer to `bytes` where root may (a batch goes
        /// to the kernel in one datagram, which it bounds); returns the
        /// largest datagram it now takes.
        pub fn raise_sndbuf(&self, bytes: usize) -> Result<usize, WgError> {
            let fd = self.fd.as_raw_fd();
            let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
            let mut int_len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: ints of the stated length. FORCE passes the wmem_max
            // cap for CAP_NET_ADMIN; without it the plain option is capped.
            unsafe {
                let p = (&size as *const libc::c_int).cast();
                if libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, p, int_len) < 0 {
                    libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, p, int_len);
                }
                let mut now: libc::c_int = 0;
                let q = (&mut now as *mut libc::c_int).cast();
                if libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, q, &mut int_len) < 0 {
                    return Err(io("getsockopt"));
                }
                // netlink_sendmsg refuses a datagram over sk_sndbuf - 32.
                Ok(usize::try_from(now).unwrap_or(0).saturating_sub(32))
            }
        }

        /// Joins multicast `group` of the socket's protocol (the kernel's
        /// notifications, e.g. nf_tables' NFNLGRP_NFTABLES), with a receive
        /// buffer of `rcvbuf` bytes where root may set one that large.
        pub fn subscribe(&self, group: u32, rcvbuf: usize) -> Result<(), WgError> {
            let fd = self.fd.as_raw_fd();
            let size = libc::c_int::try_from(rcvbuf).unwrap_or(libc::c_int::MAX);
            let int_len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: an int of the stated length. FORCE passes the rmem_max
            // cap for CAP_NET_ADMIN; without it the plain option is capped.
            unsafe {
                let p = (&size as *const libc::c_int).cast();
                if libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, p, int_len) < 0 {
                    libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, p, int_len);
                }
            }
            let g = group;
            let p = (&g as *const u32).cast();
            let len = std::mem::size_of::<u32>() as libc::socklen_t;
            // SAFETY: a u32 group number of the stated length.
            let r = unsafe {
                libc::setsockopt(fd, libc::SOL_NETLINK, libc::NETLINK_ADD_MEMBERSHIP, p, len)
            };
            if r < 0 {
                return Err(io("join group"));
            }
            Ok(())
        }

        /// One datagram from the kernel if one is queued, without waiting.
        /// An overrun (notifications the kernel dropped: ENOBUFS) and a
        /// datagram larger than `buf` are errors.
        pub fn try_recv(&self, buf: &mut [u8]) -> Result<Option<usize>, WgError> {
            self.recv_with(buf, libc::MSG_DONTWAIT)
        }

        /// Reads and drops whatever is queued (answers to an earlier request
        /// that its caller stopped reading), without waiting: a socket kept
        /// for many requests must not take an old answer for a new one.
        pub fn discard_pending(&self) -> Result<(), WgError> {
            let mut buf = [0u8; 512];
            loop {
                let flags = libc::MSG_DONTWAIT | libc::MSG_TRUNC;
                // SAFETY: `buf` is writable for its length; the datagram is dropped.
                let n = unsafe {
                    libc::recv(
                        self.fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        flags,
                    )
                };
                if n >= 0 {
                    continue;
                }
                match Error::last_os_error().raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EAGAIN) => return Ok(()),
                    _ => return Err(io("recv")),
                }
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) mod sys {
    use super::WgError;

    pub struct Nl {
        pub pid: u32,
    }

    impl Nl {
        pub fn open() -> Result<Nl, WgError> {
            Err(WgError::Io("linux backend on non-Linux".into()))
        }
        pub fn open_protocol(_: i32) -> Result<Nl, WgError> {
            Err(WgError::Io("netlink on non-Linux".into()))
        }
        pub fn send(&self, _: &[u8]) -> Result<(), WgError> {
            Err(WgError::Io("linux backend on non-Linux".into()))
        }
        pub fn recv(&self, _: &mut [u8]) -> Result<usize, WgError> {
            Err(WgError::Io("linux backend on non-Linux".into()))
        }
        pub fn discard_pending(&self) -> Result<(), WgError> {
            Err(WgError::Io("linux backend on non-Linux".into()))
        }
        pub fn raise_sndbuf(&self, _: usize) -> Result<usize, WgError> {
            Err(WgError::Io("netlink on non-Linux".into()))
        }
        pub fn subscribe(&self, _: u32, _: usize) -> Result<(), WgError> {
            Err(WgError::Io("netlink on non-Linux".into()))
        }
        pub fn try_recv(&self, _: &mut [u8]) -> Result<Option<usize>, WgError> {
            Err(WgError::Io("netlink on non-Linux".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_debug_shows_no_payload_byte() {
        // A set request carries a PSK; its bytes must not reach Debug.
        let psk = Psk::from_bytes([0xa7; 32]);
        let req = set_psk_request(0x1b, 7, 0, "wg0", &[0x42; 32], &psk);
        let m = messages(&req).unwrap();
        let shown = format!("{:?}", m[0]);
        assert!(!shown.contains("167"), "{shown}");
        assert!(!shown.contains("66,"), "{shown}");
        assert!(shown.contains("seq: 7"), "{shown}");
    }
}
