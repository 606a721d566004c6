//! qkdpfd: a firewall daemon that enforces quantum key distribution.
//!
//! # Layout
//!
//! The module tree follows the process diagram of DESIGN §2: a privileged
//! parent and an unprivileged engine, re-exec'd from one binary, talking over
//! fd 3; `qkdctl` talks to the engine over the control socket.
//!
//! - [`parent`]: the privileged parent: enforcement as the kernel reads
//!   back ([`parent::links`]), bundle activation, firewall backends
//!   ([`parent::fw`]: what touches the kernel: apply, `observe`, the
//!   nftables dead-man switch; what they load comes from [`ruleset`]),
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
//! - [`ruleset`]: a bundle's pf or nft ruleset for one link
//!   ([`ruleset::LinkTarget`]), checked and rendered as the parent's
//!   backends load it, and [`ruleset::Check`], the tool's own check
//!   (`nft -c`, `pfctl -n`) that `qkdctl policy verify` runs too.
//! - [`state`]: the state file (active bundle, persisted lock reasons,
//!   epochs): written by the parent, read by `qkdctl policy verify` too.
//! - [`ctl`]: the control tool, `qkdctl`, and its `policy verify` (which
//!   uses [`ruleset`] and [`state`]: `qkdctl` links nothing of [`parent`]).
//! - [`sim`]: the simulated QKD link model and `qkdsim`'s config, links
//!   (key pool, QBER clock), KMEs, PKI and QBER feed.
//! - [`tls`]: rustls client settings from PEM bytes (KME and QBER sources).
//! - [`tool`]: one run of pfctl or nft with its stdin, a timeout and an
//!   error naming the command (the parent's backends and ruleset checks).
//! - [`lock`], [`log`], [`names`], [`text`], [`file`], [`duration`], [`utc`],
//!   [`secret`]: lock reasons and bands, the event log helper and its flood
//!   rule, names held once, the text escaper and hex, the atomic file write,
//!   durations, UTC dates (RFC 3339) and the wall clock, key types — shared
//!   by every process.
//!
//! `tests/structure.rs` keeps this shape: no import cycle between these
//! modules or between files.

pub mod conf;
pub mod ctl;
pub mod duration;
pub mod engine;
pub mod file;
pub mod imsg;
pub mod lock;
pub mod log;
pub mod names;
pub mod parent;
pub mod policy;
pub mod privsep;
pub mod proto;
pub mod ruleset;
pub mod sandbox;
pub mod secret;
pub mod sim;
pub mod state;
pub mod text;
pub mod tls;
pub mod tool;
pub mod url;
pub mod utc;
