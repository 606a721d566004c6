//! THE parent <-> engine vocabulary (DESIGN §2): every message that crosses
//! the socketpair on fd 3, its framing, and the receiver's checks.
//!
//! A frame is an 8-byte header — payload length (u32, big endian), protocol
//! version (u8), reserved zero byte, message type (u16) — followed by a JSON
//! body for that type. Receivers refuse a wrong version, an unknown type, an
//! oversized frame, or a body that does not parse as exactly that type with
//! no unknown fields; a malformed frame is fatal for the connection (the
//! parent then locks every link). Semantic checks (known link, ...) are done
//! by the receiver's dispatcher against its own config.

pub mod bytes;
pub mod creds;
mod keys;

pub use keys::{InstallPsk, KeyAck, KeyStep, KmeNet, LinkKeys, PeeringNet, PersistEpoch};

use crate::conf::{QberConf, TestingConf};
use crate::lock::{Enforcement, Reasons};
use crate::policy::params::LinkPolicy;
use crate::proto::ctl::{Reply, Request, Target};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::time::Duration;

/// 2: a `CtlRequest` names its command; the parent reads the request
/// itself from the client's connection ([`creds`]).
pub const VERSION: u8 = 2;
pub const HEADER_LEN: usize = 8;
/// Policy bundles travel in frames: 4 MiB of files, base64, plus slack.
pub const MAX_PAYLOAD: usize = 8 << 20;

/// Messages types. 0 is reserved (never valid), then grouped by direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Type {
    None = 0,
    /* parent -> engine */
    Config = 1,
    Policy = 2,
    LinkState = 3,
    CtlReply = 4,
    Event = 5,
    KeyAck = 6,
    /* engine -> parent */
    Hello = 100,
    Reasons = 101,
    Log = 102,
    CtlRequest = 103,
    PersistEpoch = 104,
    InstallPsk = 105,
    Alive = 106,
    SourceLost = 107,
    PolicyTaken = 108,
}

impl Type {
    fn from_u16(v: u16) -> Option<Type> {
        Some(match v {
            1 => Type::Config,
            2 => Type::Policy,
            3 => Type::LinkState,
            4 => Type::CtlReply,
            5 => Type::Event,
            6 => Type::KeyAck,
            100 => Type::Hello,
            101 => Type::Reasons,
            102 => Type::Log,
            103 => Type::CtlRequest,
            104 => Type::PersistEpoch,
            105 => Type::InstallPsk,
            106 => Type::Alive,
            107 => Type::SourceLost,
            108 => Type::PolicyTaken,
            _ => return None,
        })
    }
}

/// The checked configuration the engine runs on (it reads no files).
/// (Tests start from [`EngineConfig::empty`].)
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    pub links: Vec<EngineLink>,
    pub qber: BTreeMap<String, QberConf>,
    /// uids allowed read-only control commands (socket_group members).
    pub ctl_readonly_uids: Vec<u32>,
    pub ctl_readonly_gid: Option<u32>,
    pub verbose: bool,
    /// chroot and user to drop to (absent when the parent is not root).
    pub drop_to: Option<DropTo>,
    /// The parent bound `[daemon] metrics` and passed it on fd 5.
    pub metrics: bool,
    /// TLS material and resolved address of each network `[qber.X]`, read
    /// and resolved by the parent (the engine has no files and no resolver).
    pub qber_net: BTreeMap<String, QberNet>,
    /// Present when some link runs key agreement.
    pub peering: Option<PeeringNet>,
    /// How many peering sockets the parent passed (fd 6, then fd 8).
    pub peering_sockets: usize,
    /// Every `[kme.X]` a link uses.
    pub kme: BTreeMap<String, KmeNet>,
    /// `[testing]` (only a `testing` build parses it; default otherwise).
    pub testing: TestingConf,
}

#[cfg(test)]
impl EngineConfig {
    /// No link, source, KME or peering: what a test adds to.
    pub(crate) fn empty() -> EngineConfig {
        EngineConfig {
            links: Vec::new(),
            qber: Default::default(),
            ctl_readonly_uids: Vec::new(),
            ctl_readonly_gid: None,
            verbose: false,
            drop_to: None,
            metrics: false,
            qber_net: Default::default(),
            peering: None,
            peering_sockets: 0,
            kme: Default::default(),
            testing: Default::default(),
        }
    }
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QberNet {
    #[serde(with = "bytes::opt_vec")]
    pub ca: Option<Vec<u8>>,
    #[serde(with = "bytes::opt_vec")]
    pub cert: Option<Vec<u8>>,
    /// Zeroized on drop; the frame that carried it is zeroized too.
    #[serde(with = "bytes::opt_secret")]
    pub key: Option<zeroize::Zeroizing<Vec<u8>>>,
    pub addr: Option<std::net::SocketAddr>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropTo {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    pub chroot: std::path::PathBuf,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineLink {
    pub name: String,
    pub qber: String,
    pub qber_id: String,
    /// Engine-owned reasons persisted in the state file (qber, peer-lost).
    pub persisted: Reasons,
    /// Key agreement, for links with `kme`.
    pub keys: Option<LinkKeys>,
}

/// Debug never shows the TLS key (DESIGN §5 "Secrets").
impl std::fmt::Debug for QberNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QberNet")
            .field("ca", &self.ca.as_ref().map(Vec::len))
            .field("cert", &self.cert.as_ref().map(Vec::len))
            .field("key", &self.key.as_ref().map(|_| "<SECRET>"))
            .field("addr", &self.addr)
            .finish()
    }
}

/// The active policy as the engine needs it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivePolicy {
    pub serial: u64,
    pub not_after: Option<u64>,
    /// `[policy] expiry_warning` in seconds: `policy_expiring` and the
    /// metric an alert compares `not_after` with.
    pub expiry_warning: u64,
    pub signer: String,
    pub links: BTreeMap<String, LinkPolicy>,
}

/// Parent's view of a link, sent whenever it changes (for `show`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkState {
    pub link: String,
    /// What the kernel showed: open only when a read-back proved it.
    pub enforcement: Enforcement,
    /// A lockdown is wanted and no fallback made the kernel show it.
    pub lockdown_failed: bool,
    /// The ladder's last rung removed the link's WireGuard peer.
    #[serde(default)]
    pub wg_peer_removed: bool,
    pub parent_reasons: Reasons,
}

/// The commands only the parent can run, by name: what the engine tells the
/// parent it saw a root client ask (for the log and a cross-check), never
/// what the parent runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ParentCommand {
    Lockdown,
    Unlock,
    Reload,
    PolicyLoad,
    Log,
}

impl ParentCommand {
    /// The parent's command behind `r`; None for what the engine runs.
    pub fn of(r: &Request) -> Option<ParentCommand> {
        Some(match r {
            Request::Lockdown { .. } => ParentCommand::Lockdown,
            Request::Unlock { .. } => ParentCommand::Unlock,
            Request::Reload => ParentCommand::Reload,
            Request::PolicyLoad { .. } => ParentCommand::PolicyLoad,
            Request::Log { .. } => ParentCommand::Log,
            Request::Status
            | Request::ShowLinks
            | Request::ShowLink { .. }
            | Request::ShowPolicy
            | Request::Monitor
            | Request::Rotate { .. }
            | Request::SimEve { .. }
            | Request::SimNoise { .. } => return None,
        })
    }

    /// The command's name, for logs (as `ctl_command command=`).
    pub fn name(self) -> &'static str {
        match self {
            ParentCommand::Lockdown => "lockdown",
            ParentCommand::Unlock => "unlock",
            ParentCommand::Reload => "reload",
            ParentCommand::PolicyLoad => "policy-load",
            ParentCommand::Log => "log",
        }
    }
}

/// A control request the parent runs, as the parent read it from the
/// client's own connection.
#[derive(Clone, Debug, PartialEq)]
pub enum ParentRequest {
    Lockdown {
        target: Target,
    },
    Unlock {
        target: Target,
        force: bool,
    },
    Reload,
    /// The bundle (tar or gzip'd tar) in base64, as qkdctl sent it.
    PolicyLoad {
        bundle_b64: String,
    },
    /// `qkdctl log verbose|brief`: the parent's level too.
    Log {
        verbose: bool,
    },
}

impl ParentRequest {
    /// The parent's part of `r`; None for a request the engine runs.
    pub fn from_request(r: Request) -> Option<ParentRequest> {
        Some(match r {
            Request::Lockdown { target } => ParentRequest::Lockdown { target },
            Request::Unlock { target, force } => ParentRequest::Unlock { target, force },
            Request::Reload => ParentRequest::Reload,
            Request::PolicyLoad { bundle_b64 } => ParentRequest::PolicyLoad { bundle_b64 },
            Request::Log { verbose } => ParentRequest::Log { verbose },
            _ => return None,
        })
    }

    pub fn command(&self) -> ParentCommand {
        match self {
            ParentRequest::Lockdown { .. } => ParentCommand::Lockdown,
            ParentRequest::Unlock { .. } => ParentCommand::Unlock,
            ParentRequest::Reload => ParentCommand::Reload,
            ParentRequest::PolicyLoad { .. } => ParentCommand::PolicyLoad,
            ParentRequest::Log { .. } => ParentCommand::Log,
        }
    }
}

/// A root client asked for `command` on the connection the engine passed
/// with this `id` (fd 7). The request itself is still unread on that
/// connection: the parent reads it from there, so the engine can neither
/// write it nor change it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CtlRequest {
    pub id: u64,
    pub uid: u32,
    pub command: ParentCommand,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CtlReply {
    pub id: u64,
    pub reply: Reply,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    pub version: u8,
    pub pid: u32,
}

/// Every link of QBER section `source` lost it at once (no fresh reading
/// for their `qber_timeout`): the parent locks them together, in one
/// transaction where the firewall can. Their own `Reasons` follow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceLost {
    pub source: String,
    /// CLOCK_MONOTONIC (ns) of the tick that found it.
    pub found_ns: u64,
}

/// The engine has judged every link under the bundle of `serial` and sent
/// what it found (those reports come before this message): links the
/// parent held for `no-policy` may open now, not before.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyTaken {
    pub serial: u64,
}

/// The engine-owned reasons of one link (the whole set, not a delta).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkReasons {
    pub link: String,
    pub reasons: Reasons,
    /// Last QBER for the `lockdown` event line the parent writes.
    pub qber: Option<f64>,
    pub threshold: Option<f64>,
    /// The change came from `qkdctl unlock` (for `unlock by=operator`).
    pub by_operator: bool,
    /// CLOCK_MONOTONIC (ns) when the engine received the sample that caused
    /// this report; system-wide, so the parent can time sample-to-kernel.
    pub sampled_ns: Option<u64>,
}

/// CLOCK_MONOTONIC in nanoseconds (comparable across processes).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogRecord {
    pub prio: u8,
    pub line: String,
}

/// Every message, by direction.
#[derive(Clone, Debug, PartialEq)]
pub enum ToEngine {
    Config(Box<EngineConfig>),
    Policy(Option<ActivePolicy>),
    LinkState(LinkState),
    CtlReply(CtlReply),
    /// An event line the parent logged, for `qkdctl monitor`.
    Event(LogRecord),
    KeyAck(KeyAck),
}

#[derive(Clone, Debug, PartialEq)]
pub enum ToParent {
    Hello(Hello),
    Reasons(LinkReasons),
    Log(LogRecord),
    CtlRequest(CtlRequest),
    PersistEpoch(PersistEpoch),
    InstallPsk(InstallPsk),
    /// Once a second from the engine's main loop: a loop that stalls stops
    /// saying it, and the parent treats the engine as failed
    /// ([`ENGINE_SILENCE`]).
    Alive,
    SourceLost(SourceLost),
    PolicyTaken(PolicyTaken),
}

/// Framing or decoding failure: fatal for the channel.
#[derive(Debug)]
pub enum Error {
    Io(io::Error),
    Version(u8),
    UnknownType(u16),
    WrongDirection(u16),
    TooLarge(usize),
    Body(Type, String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io(e) => write!(f, "imsg: {e}"),
            Error::Version(v) => write!(f, "imsg: version {v}, expected {VERSION}"),
            Error::UnknownType(t) => write!(f, "imsg: unknown type {t}"),
            Error::WrongDirection(t) => write!(f, "imsg: type {t} not valid in this direction"),
            Error::TooLarge(n) => write!(f, "imsg: frame of {n} bytes exceeds {MAX_PAYLOAD}"),
            Error::Body(t, e) => write!(f, "imsg: bad {t:?} body: {e}"),
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::Io(e)
    }
}

/// A frame, or why it cannot be one (a body over [`MAX_PAYLOAD`]: say a
/// config naming megabytes of TLS files).
fn try_frame(ty: Type, body: &impl Serialize) -> Result<Vec<u8>, String> {
    // Measured first, then written once into a buffer of exactly that
    // size: a growing Vec would leave copies of a key's text in the memory
    // it gives back, and nothing would wipe them.
    let mut counted = Counter(0);
    serde_json::to_writer(&mut counted, body).map_err(|e| format!("{ty:?} message: {e}"))?;
    let n = counted.0;
    if n > MAX_PAYLOAD {
        return Err(format!(
            "{ty:?} message of {n} bytes is over the channel's {MAX_PAYLOAD}"
        ));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + n);
    out.extend_from_slice(&[0; 4]);
    out.push(VERSION);
    out.push(0);
    out.extend_from_slice(&(ty as u16).to_be_bytes());
    serde_json::to_writer(&mut out, body).map_err(|e| format!("{ty:?} message: {e}"))?;
    // The length as written (the same as measured: the body is unchanged).
    let len = out.len() - HEADER_LEN;
    if len > MAX_PAYLOAD {
        zeroize::Zeroize::zeroize(&mut out);
        return Err(format!(
            "{ty:?} message of {len} bytes is over the channel's {MAX_PAYLOAD}"
        ));
    }
    out[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// A writer that only counts.
struct Counter(usize);

impl io::Write for Counter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0 += b.len();
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Never panics: a message that cannot be framed is logged and becomes
/// nothing (the far side then misses it: a config never arriving fails
/// the engine's start, closed). The config is checked first with
/// [`ToEngine::try_encode`].
fn frame(ty: Type, body: &impl Serialize) -> Vec<u8> {
    try_frame(ty, body).unwrap_or_else(|e| {
        crate::log::event(crate::log::Event::ImsgTooLarge)
            .msg(e)
            .send();
        Vec::new()
    })
}

fn body<T: DeserializeOwned>(ty: Type, payload: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(payload).map_err(|e| Error::Body(ty, e.to_string()))
}

/// Parses a header; returns (payload length, type code).
pub fn parse_header(h: &[u8; HEADER_LEN]) -> Result<(usize, u16), Error> {
    let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
    if h[4] != VERSION || h[5] != 0 {
        return Err(Error::Version(h[4]));
    }
    if len > MAX_PAYLOAD {
        return Err(Error::TooLarge(len));
    }
    Ok((len, u16::from_be_bytes([h[6], h[7]])))
}

impl ToEngine {
    /// The frame, or why it cannot be sent.
    pub fn try_encode(&self) -> Result<Vec<u8>, String> {
        match self {
            ToEngine::Config(c) => try_frame(Type::Config, c),
            other => Ok(other.encode()),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        match self {
            ToEngine::Config(c) => frame(Type::Config, c),
            ToEngine::Policy(p) => frame(Type::Policy, p),
            ToEngine::LinkState(s) => frame(Type::LinkState, s),
            ToEngine::CtlReply(r) => frame(Type::CtlReply, r),
            ToEngine::Event(e) => frame(Type::Event, e),
            ToEngine::KeyAck(a) => frame(Type::KeyAck, a),
        }
    }

    pub fn decode(code: u16, payload: &[u8]) -> Result<ToEngine, Error> {
        let ty = Type::from_u16(code).ok_or(Error::UnknownType(code))?;
        Ok(match ty {
            Type::Config => ToEngine::Config(body(ty, payload)?),
            Type::Policy => ToEngine::Policy(body(ty, payload)?),
            Type::LinkState => ToEngine::LinkState(body(ty, payload)?),
            Type::CtlReply => ToEngine::CtlReply(body(ty, payload)?),
            Type::Event => ToEngine::Event(body(ty, payload)?),
            Type::KeyAck => ToEngine::KeyAck(body(ty, payload)?),
            _ => return Err(Error::WrongDirection(code)),
        })
    }
}

impl ToParent {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ToParent::Hello(h) => frame(Type::Hello, h),
            ToParent::Reasons(r) => frame(Type::Reasons, r),
            ToParent::Log(l) => frame(Type::Log, l),
            ToParent::CtlRequest(r) => frame(Type::CtlRequest, r),
            ToParent::PersistEpoch(p) => frame(Type::PersistEpoch, p),
            ToParent::InstallPsk(i) => frame(Type::InstallPsk, i),
            ToParent::Alive => frame(Type::Alive, &()),
            ToParent::SourceLost(s) => frame(Type::SourceLost, s),
            ToParent::PolicyTaken(t) => frame(Type::PolicyTaken, t),
        }
    }

    pub fn decode(code: u16, payload: &[u8]) -> Result<ToParent, Error> {
        let ty = Type::from_u16(code).ok_or(Error::UnknownType(code))?;
        Ok(match ty {
            Type::Hello => ToParent::Hello(body(ty, payload)?),
            Type::Reasons => ToParent::Reasons(body(ty, payload)?),
            Type::Log => ToParent::Log(body(ty, payload)?),
            Type::CtlRequest => ToParent::CtlRequest(body(ty, payload)?),
            Type::PersistEpoch => ToParent::PersistEpoch(body(ty, payload)?),
            Type::InstallPsk => ToParent::InstallPsk(body(ty, payload)?),
            Type::Alive => {
                body::<()>(ty, payload)?;
                ToParent::Alive
            }
            Type::SourceLost => ToParent::SourceLost(body(ty, payload)?),
            Type::PolicyTaken => ToParent::PolicyTaken(body(ty, payload)?),
            _ => return Err(Error::WrongDirection(code)),
        })
    }
}

/// Blocking read of one frame (used before any runtime exists). `Ok(None)` on EOF.
pub fn read_frame_blocking(r: &mut impl Read) -> Result<Option<(u16, Vec<u8>)>, Error> {
    let mut h = [0u8; HEADER_LEN];
    match r.read_exact(&mut h) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let (len, code) = parse_header(&h)?;
    // Wiped if the read fails halfway (a PSK frame cut short).
    let mut payload = zeroize::Zeroizing::new(vec![0u8; len]);
    r.read_exact(&mut payload)?;
    Ok(Some((code, std::mem::take(&mut *payload))))
}

pub fn write_frame_blocking(w: &mut impl Write, frame: &[u8]) -> io::Result<()> {
    w.write_all(frame)?;
    w.flush()
}

/// Async read of one frame. `Ok(None)` on EOF at a frame boundary.
pub async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<(u16, Vec<u8>)>, Error> {
    use tokio::io::AsyncReadExt;
    let mut h = [0u8; HEADER_LEN];
    match r.read_exact(&mut h).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let (len, code) = parse_header(&h)?;
    // Wiped if the read fails halfway (a PSK frame cut short).
    let mut payload = zeroize::Zeroizing::new(vec![0u8; len]);
    r.read_exact(&mut payload).await?;
    Ok(Some((code, std::mem::take(&mut *payload))))
}

/// Frames decoded but not yet taken by the receiving loop. Bounded: a
/// peer that sends faster than the loop takes fills it, then the reader
/// stops reading and the sender's writes block (the kernel's socket
/// buffer is the rest of the bound), so nothing grows without end.
pub const READ_QUEUE: usize = 1024;

/// Reads frames in a task of their own (a half-read frame must not be lost
/// to a `select!`), decodes them with `decode` and hands them on; the first
/// error or EOF (`eof` says whose) is sent too and ends the task. Payloads
/// are zeroized once decoded: some carry key material.
pub fn spawn_reader<T: Send + 'static>(
    mut rd: tokio::net::unix::OwnedReadHalf,
    decode: fn(u16, &[u8]) -> Result<T, Error>,
    eof: &'static str,
) -> tokio::sync::mpsc::Receiver<Result<T, String>> {
    let (tx, rx) = tokio::sync::mpsc::channel(READ_QUEUE);
    tokio::spawn(async move {
        loop {
            let r = match read_frame(&mut rd).await {
                Ok(Some((code, mut payload))) => {
                    let m = decode(code, &payload).map_err(|e| e.to_string());
                    zeroize::Zeroize::zeroize(&mut payload);
                    m
                }
                Ok(None) => Err(eof.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let stop = r.is_err();
            if tx.send(r).await.is_err() || stop {
                break;
            }
        }
    });
    rx
}

/// Most bytes queued for the other process before it counts as one that
/// stopped reading (DESIGN §2: every channel between the processes is
/// bounded). Far above any burst a 10,000-link hub sends (its policy and
/// every link's state are a few MB), far below what a stalled engine fed
/// by a flood of its own log lines, each echoed back as an event, would
/// pile up in the parent.
pub const MAX_QUEUED: usize = 32 << 20;

/// The sending end of a channel to the other process: frames queue for
/// its writer task up to [`MAX_QUEUED`] bytes; past that a frame is
/// dropped (zeroized), `on_overflow` runs, and the channel says
/// [`Sender::overflowed`] for good: the parent takes it for a failed
/// engine, and the engine ends (a report it could not send may have been
/// a lockdown; the parent locks every link for an engine that ends).
#[derive(Clone)]
pub struct Sender {
    tx: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
    queued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    overflowed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    limit: usize,
    on_overflow: fn(),
}

/// A frame the channel did not take: its peer is gone or stopped reading.
#[derive(Debug)]
pub struct NotSent;

impl Sender {
    pub fn send(&self, mut frame: Vec<u8>) -> Result<(), NotSent> {
        use std::sync::atomic::Ordering::Relaxed;
        let n = frame.len();
        if self.queued.fetch_add(n, Relaxed).saturating_add(n) > self.limit {
            self.queued.fetch_sub(n, Relaxed);
            self.overflowed.store(true, Relaxed);
            zeroize::Zeroize::zeroize(&mut frame);
            (self.on_overflow)();
            return Err(NotSent);
        }
        self.tx.send(frame).map_err(|mut e| {
            self.queued.fetch_sub(n, Relaxed);
            zeroize::Zeroize::zeroize(&mut e.0);
            NotSent
        })
    }

    /// A frame was refused for the bytes already queued: the other process
    /// stopped reading.
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes queued and not written yet.
    pub fn queued(&self) -> usize {
        self.queued.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A [`Sender`] and the queue its frames go to, for a writer (or a test)
/// to take them from. Taking a frame does not give its room back: the
/// writer does once it is written.
pub(crate) fn channel(limit: usize) -> (Sender, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let sender = Sender {
        tx,
        queued: Default::default(),
        overflowed: Default::default(),
        limit,
        on_overflow: || {},
    };
    (sender, rx)
}

/// Writes queued frames in order; zeroizes each once written. `on_error`
/// runs when the peer is gone, `on_overflow` when it stopped reading
/// ([`Sender`]).
pub fn spawn_writer(
    wr: tokio::net::unix::OwnedWriteHalf,
    on_error: fn(),
    on_overflow: fn(),
) -> Sender {
    let mut sender = spawn_writer_bounded(wr, on_error, MAX_QUEUED);
    sender.on_overflow = on_overflow;
    sender
}

fn spawn_writer_bounded<W>(mut wr: W, on_error: fn(), limit: usize) -> Sender
where
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tokio::io::AsyncWriteExt;
    let (sender, mut rx) = channel(limit);
    let queued = sender.queued.clone();
    tokio::spawn(async move {
        while let Some(mut f) = rx.recv().await {
            let r = wr.write_all(&f).await;
            queued.fetch_sub(f.len(), std::sync::atomic::Ordering::Relaxed);
            zeroize::Zeroize::zeroize(&mut f);
            if r.is_err() {
                on_error();
                break;
            }
        }
        // Whatever is left is never written: wiped, not just freed.
        rx.close();
        while let Ok(mut f) = rx.try_recv() {
            zeroize::Zeroize::zeroize(&mut f);
        }
    });
    sender
}

/// How long the parent waits for the engine's Hello before giving up.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the engine says [`ToParent::Alive`], and how long the parent
/// hears nothing from it before the engine counts as failed (every link
/// locked, `engine_lost`): a stalled engine watches no QBER.
pub const ALIVE_EVERY: Duration = Duration::from_secs(1);
pub const ENGINE_SILENCE: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests;
