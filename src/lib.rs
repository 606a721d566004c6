//! qkdpfd: a firewall daemon that enforces quantum key distribution.
//!
//! # Layout
//!
//! The module tree follows the process diagram of DESIGN §2: a privileged
//! parent and an unprivileged engine, re-exec'd from one binary, talking over
//! fd 3; `qkdctl` talks to the engine over the control socket.
//!
//! - [`parent`]: the privileged parent: enforcement as the kernel reads
//!   back ([`parent::links`]), bundle activation, the state file, firewall
//!   backends ([`parent::fw`]: `observe`, the nftables dead-man switch),
//!   WireGuard PSK writers ([`parent::wg`]) and the key requests it answers
//!   ([`parent::keys`]).
//! - [`engine`]: the unprivileged engine: the pure link state machine
//!   ([`engine::link`]), QBER sources, key agreement ([`engine::keys`] runs
//!   the pure [`engine::rotate`] with the ETSI 014 client [`engine::kme`]
//!   and the peering socket [`engine::peering`]: signing, the door, the
//!   auth log), the control socket server, the Prometheus endpoint.
//! - [`imsg`]: every parent <-> engine message, its framing and checks, and
//!   the control clients' connections the engine passes to the parent.
//! - [`privsep`]: socketpair, re-exec, chroot and privilege drop.
//! - [`sandbox`]: pledge/unveil (OpenBSD), landlock and seccomp (Linux).
//! - [`proto`]: the wire protocols: control socket (engine <-> qkdctl) and
//!   the peer protocol between two gateways' engines.
//! - [`conf`]: `qkdpfd.conf`, parsed and checked by the parent.
//! - [`policy`]: signed policy bundles: reading, signatures, digests, parameters, store.
//! - [`ctl`]: the control tool, `qkdctl`, and its `policy verify`.
//! - [`sim`]: the simulated QKD link model and `qkdsim`'s config, links
//!   (key pool, QBER clock), KMEs, PKI and QBER feed.
//! - [`tls`]: rustls client settings from PEM bytes (KME and QBER sources).
//! - [`lock`], [`log`], [`text`], [`duration`], [`utc`], [`secret`]: lock
//!   reasons and bands, the event log helper and its flood rule, the text
//!   escaper, durations, UTC dates (RFC 3339) and the wall clock, key types
//!   — shared by every process.

pub mod conf;
pub mod ctl;
pub mod duration;
pub mod engine;
pub mod imsg;
pub mod lock;
pub mod log;
pub mod parent;
pub mod policy;
pub mod privsep;
pub mod proto;
pub mod sandbox;
pub mod secret;
pub mod sim;
pub mod text;
pub mod tls;
pub mod utc;
